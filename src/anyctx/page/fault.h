// anyctx/page/fault.h — fault injection for the allocation entry points.
//
// Contract:
//  - A FaultPlan makes chosen allocation calls fail as if memory were
//    exhausted: the n-th matching call, and/or each matching call with a
//    probability (per million, scaled per order by order_weight_pct), decided
//    by a hash of (seed, call number): the same plan over the same calls
//    fails the same calls.
//  - A call matches when its context (task / IRQ / NMI) is in `contexts` and
//    its path (spinning / nolock) is in `paths`.
//  - The injector is itself signal-safe (atomics only: no lock, no
//    allocation), so it also covers the nolock path from NMI context.
//  - fault_plan_stats() records the matching calls seen and the failures
//    injected, and the call number of the first one ("did it fire, where").
//  - With no plan set, the cost at each allocation is one relaxed load (on
//    alloc_pages' fast path, of its CPU's copy of the flag, on a line the
//    call loads anyway).
// Context: fault_should_fail() any; set / clear task, while no allocation runs.
#pragma once

#include <cstdint>

#include "anyctx/ctx/context.h"
#include "anyctx/page/page.h"

namespace anyctx {

enum class FaultPath : std::uint8_t { kSpinning = 0, kNolock = 1 };

inline constexpr std::uint8_t context_bit(ContextLevel level) {
  return static_cast<std::uint8_t>(1u << static_cast<unsigned>(level));
}
inline constexpr std::uint8_t path_bit(FaultPath path) {
  return static_cast<std::uint8_t>(1u << static_cast<unsigned>(path));
}
inline constexpr std::uint8_t kAllContexts = 0x7;
inline constexpr std::uint8_t kAllPaths = 0x3;

struct FaultPlan {
  std::uint64_t fail_nth = 0;         // 1-based among matching calls; 0 = off
  std::uint32_t probability_ppm = 0;  // 0..1'000'000
  std::uint16_t order_weight_pct[kMaxOrder + 1] = {100, 100, 100, 100, 100, 100,
                                                   100, 100, 100, 100, 100};
  std::uint8_t contexts = kAllContexts;  // context_bit() mask
  std::uint8_t paths = kAllPaths;        // path_bit() mask
  std::uint64_t seed = 1;
};

struct FaultStats {
  std::uint64_t calls = 0;       // matching calls seen
  std::uint64_t fired = 0;       // failures injected
  std::uint64_t first_fired = 0; // call number of the first failure, 0 = none
};

void fault_plan_set(const FaultPlan& plan);
void fault_plan_clear();
FaultStats fault_plan_stats();

namespace detail {
extern std::atomic<bool> g_fault_plan_active;
bool fault_should_fail_slow(unsigned order, FaultPath path);
// Sets every CPU's pcp copy of g_fault_plan_active (page_alloc.cc), which
// alloc_pages' fast path tests instead. Context: as fault_plan_set().
void pcp_fault_plan_set(bool active);
}  // namespace detail

// Context: any. Return: true when this allocation must fail.
inline bool fault_should_fail(unsigned order, FaultPath path) {
  if (ANYCTX_LIKELY(!detail::g_fault_plan_active.load(std::memory_order_relaxed))) return false;
  return detail::fault_should_fail_slow(order, path);
}

}  // namespace anyctx
