// harness/planner.h — planned mutations: the moments a new corpus input
// reached, tried one at a time.
//
// A depth-3 bug needs two placements on one input: a switch while one CPU is
// inside an update, then an interrupt on the other CPU at a moment that
// exists only under that switch. The random mutator draws each with odds of
// a few in a thousand on the right input, and the right input is one of
// thousands in the corpus: minutes per bug on two cores. The planner makes
// the placements systematic, the way AFL's deterministic stage and
// syzkaller's fail-nth sweep are, but over moments of a run instead of bytes.
// When the fuzzer first picks an input from its corpus, plan() lists
// programs that each add one thing at one moment that input's run reached:
//
//   tier 0 (depth 3): an interrupt where another CPU, switched out, holds a
//     lock or is inside an update (SiteMap::held_elsewhere), or where this
//     CPU is back inside a section that another CPU ran in the middle of
//     (SiteMap::resumed_inside): an NMI, and an IRQ where one can land at
//     task level, running ops that echo the program's (echo_op: the same
//     cache, order, cgroup; the interrupted CPU's first).
//   tier 1 (depth 2): a switch anchored where a CPU has just taken a lock or
//     is inside an update (its first four hits of the site and its last),
//     to each other CPU that has ops.
//   tier 2 (depth 2, one CPU): an interrupt where its CPU holds a lock or is
//     inside an update.
//
// A candidate that reaches something new joins the corpus, and its own first
// pick plans over it: a switch planned at tier 1 is followed by the tier-0
// interrupts that complete the interleaving.
//
// Contract:
//  - plan() is a pure function of its arguments: the same program, map and
//    seed give the same candidates, each valid for the target
//    (validate().empty()), at most kPlanPerInput[tier] per tier.
//  - PlanQueue holds at most kPlanQueueDepth candidates per tier; take()
//    returns the newest of the highest non-empty tier (a new input's plans
//    come first; a full tier drops its oldest).
//  - The fuzz targets' custom mutator (mutate_input with a PlanQueue) plans
//    for an input when its SiteObserver ran it for the first time, and emits
//    a planned candidate instead of a random mutation kPlannedPercent of the
//    time while any is queued. AFL++'s mutator library runs outside the
//    target and has no site map: it does not plan.
// Context: task; allocates. Not async-signal-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include "harness/program.h"

namespace anyctx::harness {

inline constexpr int kPlanTiers = 3;
inline constexpr std::array<int, kPlanTiers> kPlanPerInput = {24, 24, 12};
inline constexpr std::size_t kPlanQueueDepth = 1024;

// Percent of custom-mutator calls that emit a planned candidate while one
// is queued.
inline constexpr int kPlannedPercent = 50;

struct Planned {
  int tier = 0;
  Program program;
};

// Return: the candidates for `p`, whose run went where `sites` says,
// highest tier first.
std::vector<Planned> plan(const TargetSpec& target, const Program& p, const SiteMap& sites, std::uint64_t seed);

class PlanQueue {
 public:
  void add(std::vector<Planned> candidates);
  // Moves the next candidate into `out`. Return: false when none is queued.
  bool take(Program& out);
  std::size_t size() const;

 private:
  std::array<std::deque<Program>, kPlanTiers> tiers_;
};

}  // namespace anyctx::harness
