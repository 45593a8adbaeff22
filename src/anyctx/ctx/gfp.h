// anyctx/ctx/gfp.h — allocation flags (Gfp) and the one predicate every
// allocator path branches on: allows_spinning().
//
// Contract:
//  - Gfp is a bit mask type, never a bare bool or int. Flags:
//      kGfpDirectReclaim  the caller may run reclaim itself (task context)
//      kGfpKswapdReclaim  the caller may ask for background reclaim
//      kGfpHigh           may use the reserve below the min watermark
//      kGfpZero           return zeroed memory
//      kGfpAccount        charge the current memory cgroup
//      kGfpNowarn         no report on failure
//      kGfpNomemalloc     never use reserves, even with kGfpHigh
//      kGfpComp           a compound (multi-page) allocation
//  - Composites: kGfpKernel (both reclaim bits), kGfpAtomic (kswapd + high:
//    no waiting, may dip into reserves), kGfpNowait (kswapd + nowarn).
//  - allows_spinning(gfp) is true iff either reclaim bit is set: a caller
//    that may reclaim may also wait for a lock. A gfp without either bit is a
//    "nolock" request: trylocks only, nullptr when a lock is busy. (The
//    kernel once shipped this predicate inverted; the truth-table test keeps
//    it right.)
// Context: any (constexpr).
#pragma once

#include <cstdint>

#include "anyctx/ctx/config.h"  // the link-time configuration check

namespace anyctx {

class Gfp {
 public:
  constexpr Gfp() = default;
  constexpr explicit Gfp(std::uint32_t bits) : bits_(bits) {}
  constexpr std::uint32_t bits() const { return bits_; }
  // Return: whether every bit of `flags` is set.
  constexpr bool has(Gfp flags) const { return (bits_ & flags.bits_) == flags.bits_; }
  // Return: whether any bit of `flags` is set.
  constexpr bool has_any(Gfp flags) const { return (bits_ & flags.bits_) != 0; }
  constexpr Gfp operator|(Gfp o) const { return Gfp(bits_ | o.bits_); }
  constexpr Gfp operator&(Gfp o) const { return Gfp(bits_ & o.bits_); }
  constexpr Gfp operator~() const { return Gfp(~bits_); }
  constexpr Gfp& operator|=(Gfp o) { bits_ |= o.bits_; return *this; }
  constexpr bool operator==(const Gfp&) const = default;
  constexpr bool empty() const { return bits_ == 0; }

 private:
  std::uint32_t bits_ = 0;
};

inline constexpr Gfp kGfpDirectReclaim{1u << 0};
inline constexpr Gfp kGfpKswapdReclaim{1u << 1};
inline constexpr Gfp kGfpHigh{1u << 2};
inline constexpr Gfp kGfpZero{1u << 3};
inline constexpr Gfp kGfpAccount{1u << 4};
inline constexpr Gfp kGfpNowarn{1u << 5};
inline constexpr Gfp kGfpNomemalloc{1u << 6};
inline constexpr Gfp kGfpComp{1u << 7};
inline constexpr int kGfpFlagCount = 8;

inline constexpr Gfp kGfpReclaim = kGfpDirectReclaim | kGfpKswapdReclaim;
inline constexpr Gfp kGfpKernel = kGfpReclaim;
inline constexpr Gfp kGfpAtomic = kGfpKswapdReclaim | kGfpHigh;
inline constexpr Gfp kGfpNowait = kGfpKswapdReclaim | kGfpNowarn;

// Return: true iff the caller may wait for a lock (either reclaim bit set).
constexpr bool allows_spinning(Gfp gfp) { return gfp.has_any(kGfpReclaim); }

// Return: true iff the caller may run reclaim itself.
constexpr bool allows_direct_reclaim(Gfp gfp) { return gfp.has(kGfpDirectReclaim); }

// Return: true iff the caller may take pages below the min watermark.
constexpr bool allows_reserves(Gfp gfp) { return gfp.has(kGfpHigh) && !gfp.has(kGfpNomemalloc); }

}  // namespace anyctx
