// harness/feedback.h — what the executor tells a coverage-guided fuzzer on
// purpose.
//
// The library's edges say which code ran, not in which context: a nolock
// allocation from an NMI that interrupted zone.lock's holder runs the same
// edges as one from a task. The executor knows the difference and reports it
// through flags that the fuzzer reads like edge counters:
//
//   reached[site][level]        a site hit at context level task / irq / nmi
//   fired[site][kind][level]    an IRQ or NMI injection delivered at the site,
//                               at that level (an NMI at irq: nested)
//   switched[site]              a schedule switch taken at the site
//   held_at_injection[h]        an injection delivered at a site while its CPU
//                               held a set of lock classes (interleave.h),
//                               h = hash(site, held set, kind, level)
//   held_elsewhere[h]           a site reached while another CPU (switched
//                               out) held a set of lock classes or was inside
//                               an update, h = hash(site, level, that set)
//   resumed[h]                  a CPU got the turn back inside a section it
//                               holds, h = hash(the site it left at, its held
//                               set, whether an interrupt another CPU sent it
//                               meanwhile is pending: a drain request that
//                               met the section)
//
// The last three see interleavings, not code: the same edges run whether or
// not CPU 1 was switched out holding zone.lock when CPU 0 got there.
//
// Sites are the library's Site values and kOpBoundary. In fuzzing builds
// (ANYCTX_FUZZING) the counters sit in libFuzzer's
// __libfuzzer_extra_counters section: libFuzzer clears them before every
// input and turns each one set into a feature. AFL++ does not read
// that section (the flags are then plain bytes). Every build keeps them, so
// tests check what they say.
//
// Each counter is a flag (0 or 1), not a count: the fuzzer buckets counts
// into features, and counts of site hits only grow with a program's length,
// which the library's own edge counters already reward. A flag rewards what
// is new: a site reached in a context not seen before, an injection kind at
// a new site or level, a switch at a new site.
//
// Contract: written only by the thread that runs the program (one at a
// time) and its signal handlers: plain byte stores, no allocation, no lock.
// Context: any (the executor's CPUs, in a program).
#pragma once

#include <cstdint>

#include "harness/program.h"

namespace anyctx::harness::feedback {

inline constexpr int kStateCounters = 8192;  // per state table (a power of two)
inline constexpr int kResumedCounters = 1024;  // few states: a site, a held set, a bit

struct Counters {
  std::uint8_t reached[kInjectionSites][3];
  std::uint8_t fired[kInjectionSites][2][3];
  std::uint8_t switched[kInjectionSites];
  std::uint8_t held_at_injection[kStateCounters];
  std::uint8_t held_elsewhere[kStateCounters];
  std::uint8_t resumed[kResumedCounters];
};

namespace detail {
extern Counters g_counters;
}  // namespace detail

// The flags set since the last reset (libFuzzer resets them before each input
// itself; run_program does not).
inline const Counters& counters() { return detail::g_counters; }
void reset();

// Return: whether the interleaving flags set since the last reset (the
// held_at_injection, held_elsewhere and resumed tables) include one that no
// earlier call saw set; they are then remembered as seen. The code tables
// (reached, fired, switched) do not count: every program reaches new code
// early on, and the planner (planner.h) wants the runs that reached a new
// interleaving, which libFuzzer keeps for the same flags.
// Context: task; the thread that runs programs, between runs.
bool novel_interleaving();
// Forgets what novel_interleaving() saw (for tests).
void forget_interleavings();

inline void site_reached(int site, Ctx level) { detail::g_counters.reached[site][static_cast<int>(level)] = 1; }
inline void injection_fired(int site, Ctx kind, Ctx level) {
  detail::g_counters.fired[site][kind == Ctx::kNmi ? 1 : 0][static_cast<int>(level)] = 1;
}
inline void switched(int site) { detail::g_counters.switched[site] = 1; }

// Return: a counter index for a tuple of small values.
constexpr unsigned state_index(unsigned a, unsigned b, unsigned c) {
  return ((a * 0x9e3779b1u) ^ (b * 0x85ebca77u) ^ (c * 0xc2b2ae3du)) >> 7 & (kStateCounters - 1);
}
inline void injected_holding(int site, std::uint8_t held, Ctx kind, Ctx level) {
  detail::g_counters.held_at_injection[state_index(static_cast<unsigned>(site), held,
                                                   static_cast<unsigned>(kind) << 2 | static_cast<unsigned>(level))] = 1;
}
inline void reached_while_held_elsewhere(int site, Ctx level, std::uint8_t held) {
  detail::g_counters.held_elsewhere[state_index(static_cast<unsigned>(site), held, static_cast<unsigned>(level))] = 1;
}
inline void resumed_inside(int site, std::uint8_t held, bool interrupt_pending) {
  detail::g_counters.resumed[state_index(static_cast<unsigned>(site), held, interrupt_pending ? 1u : 0u) &
                             (kResumedCounters - 1)] = 1;
}

}  // namespace anyctx::harness::feedback
