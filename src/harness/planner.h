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
// When a run reaches an interleaving no run reached before, and when the
// fuzzer first picks an input from its corpus, plan() lists programs that
// each add one thing at one moment that input's run reached:
//
//   tier 0 (depth 3): an interrupt where another CPU, switched out, holds a
//     lock or is inside an update (SiteMap::held_elsewhere), or where this
//     CPU is back inside a section that another CPU ran in the middle of
//     (SiteMap::resumed_inside): an NMI, and an IRQ where one can land (task
//     level, IRQs not masked: SiteMap::irqs_off), running ops that echo the
//     program's (echo_op: the same cache, order, cgroup; the interrupted
//     CPU's first).
//   tier 1 (depth 2): a switch anchored where a CPU has just taken a lock or
//     is inside an update (its first four hits of the site and its last),
//     to each other CPU that has ops.
//   tier 2 (contention): the same switch to a copy of the switching CPU's
//     ops on another CPU (mirror_ops: a new CPU when the target allows one),
//     which meets the section open, and to a free there of everything live
//     (remote_free_ops: a remote free into the section), 24 at most (12
//     moments): the base a depth-3 interleaving needs, two CPUs on one
//     structure, which a program with one CPU, or two that touch different
//     things, does not have.
//   tier 3 (depth 2, one CPU): an interrupt where its CPU holds a lock or is
//     inside an update, at any of the first eight hits of the site.
//   tier 4 (drain requests): at tier 2's moments where the section is a
//     memcg stock or a pcp, the switch to ops that ask it for a drain
//     (request_ops). A tier of their own: they are the only candidates that
//     make another CPU wait for the section's owner, and inside tier 2 they
//     were a third of the lists of a few of its sites.
//   tier 5 (CAS windows): the switches of tiers 1 and 2 at moments where a
//     CPU is inside a lock-free push, between its read of the head and its
//     CAS (site_in_cas_window), to the other CPUs (first those whose run
//     pushed on the same list: the second pusher) and to a copy of its ops
//     and a free of everything live on another CPU. A tier of their own:
//     no lock keeps a second pusher out of the window, so every CAS loop
//     has this race, and as one site among the dozen of tiers 1 and 2 its
//     moments ran a few times a second in a page_smp run that queued
//     thousands of candidates a second.
//
// A candidate that reaches something new joins the corpus and is planned at
// once; a switch planned at tier 1, 2, 4 or 5 that ran is followed, within a few
// runs, by the interrupts at the moments it opened (plan_followup: a chain).
//
// Contract:
//  - plan() is a pure function of its arguments: the same program, map and
//    seed give the same candidates, each valid for the target
//    (validate().empty()), at most kPlanPerInput[tier] per tier.
//  - PlanQueue holds at most kPlanQueueDepth candidates per tier and chain
//    level; a full one drops from its longest site list, at level 0 the
//    noisiest of kNoiseDraws draws, at level 1 the oldest; take()
//    serves the follow-ups and the inputs' own plans in turn (either alone
//    when the other has none): at level 0 the tiers in turn, within a tier
//    the sites of the moments in turn, within a site the least noisy
//    (plan_noise) of kNoiseDraws draws (newest first, at level 1).
//  - The fuzz targets plan a run that reached a new interleaving before
//    the next mutation (fuzz_one marks it, fuzz_plan_last_run plans it;
//    executor.h: fuzz_plans). Their custom mutator (mutate_input
//    with a PlanQueue) plans for an input when its SiteObserver ran it for
//    the first time, and for its bare base (bare_base) when that differs and
//    is new too, and emits a planned candidate instead of a random
//    mutation kPlannedPercent of the time while any is queued. AFL++'s
//    mutator library runs outside the target and has no site map: it does
//    not plan.
// Context: task; allocates. Not async-signal-safe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <vector>

#include "harness/mutator.h"
#include "harness/program.h"

namespace anyctx::harness {

inline constexpr int kPlanTiers = 6;
inline constexpr std::array<int, kPlanTiers> kPlanPerInput = {24, 24, 24, 12, 12, 12};

// Return: whether `tier`'s candidates add an anchored switch (tiers 1, 2,
// 4 and 5), which plan_followup() completes.
constexpr bool tier_adds_switch(int tier) { return tier == 1 || tier == 2 || tier == 4 || tier == 5; }
inline constexpr std::size_t kPlanQueueDepth = 1024;

// Percent of custom-mutator calls that emit a planned candidate while one
// is queued. At 50, the random mutations of one-CPU programs that find a
// one-CPU interrupt bug ran too seldom: `kfree-nolock-no-defer`, seeds-free,
// 20 s of fuzz_slab_ops, was found with 0 libFuzzer seeds of 8; at 25, with
// 4 of 6, while `deferred-take-not-atomic` (depth 2, two CPUs; 40 s of
// fuzz_page_smp) was found with 3 seeds of 4 at either share.
inline constexpr int kPlannedPercent = 25;

// What a program carries besides its ops' own moments: its ops, 3 for each
// injection and switch (anchored or by event), 10 for a fault plan. The
// corpus's programs pile these up (each mutation and each plan adds one,
// and a noisy program reaches new interleaving features most easily); a
// candidate built on such a base meets its moment among a dozen others.
// Return: the noise of `p` (0 for an empty program).
int plan_noise(const Program& p);

// Level 0 serves the least noisy of this many draws within a site. From the
// two-charge base of `busy-stock-drain` as the only seed, with bare bases
// planned as well: found in 8 runs of 8 (1.8–9.6 s) against 5 of 8 with a
// plain draw (docs/mutants.md, Where the runs go).
inline constexpr int kNoiseDraws = 8;

// The program's ops alone: `p` without its injections, switches, PCT and
// fault plan. The mutator plans over it too (beside `p`), so that the
// candidates of an input that reached a state by a pile of earlier
// mutations also come on its clean base.
Program bare_base(const Program& p);

struct Planned {
  int tier = 0;
  Program program;
  int site = kOpBoundary;  // the site of the moment it adds to the program
  // plan_noise of the program it was planned on (before the planned edit),
  // which the queue's draws compare: the candidates of one base tie, so a
  // draw does not prefer the edit that adds fewer ops (a copy of one op
  // over a drain request's limit and charge per subtree) to the one that
  // adds more. -1: plan_noise(program).
  int base_noise = -1;
};

// Return: the candidates for `p`, whose run went where `sites` says,
// highest tier first.
std::vector<Planned> plan(const TargetSpec& target, const Program& p, const SiteMap& sites, std::uint64_t seed);

// The interrupts that complete the switch that a candidate of a tier that
// adds one (tier_adds_switch) added (p.anchored.back()): an NMI, and an IRQ
// at task level, where the switched CPU resumed inside its section and
// where the CPU it switched to met that section open (waiting for its lock
// first), at most kFollowUps, half of them on each side while both have
// moments.
// Planned for every such candidate the fuzzer runs, new interleaving or
// not: what makes the third event matter (a request pending in the section,
// a push half done) is seldom an interleaving flag of its own, and the
// flags a switch sets were mostly set before by a switch on another input.
// Return: empty when `p` has no anchored switch.
inline constexpr std::size_t kFollowUps = 4;
std::vector<Planned> plan_followup(const TargetSpec& target, const Program& p, const SiteMap& sites,
                                   std::uint64_t seed);

// Chain levels: 0 holds the inputs' own plans (an input the fuzzer picked,
// or a run that reached a new interleaving, planned or not); 1 holds the
// follow-ups of the planned switches that ran (plan_followup). The two take
// turns: a switch is judged with the interrupts that complete it within a
// few runs, and the inputs' own plans keep half the planned runs (with the
// follow-ups first, four per switch took two thirds of them, and a
// one-CPU interrupt bug, `kfree-nolock-no-defer`, went from 11.2 s to not
// found in 60 s seeds-free, twice). A chain stops there. Following a planned run's whole plan when it was
// new (67e40c4, three levels) ran the first candidates' plans depth first
// while the base of the bug waited: from the `busy-stock-drain` base,
// 20,000 executions of levels 1 and 2 and not the one switch that opens it
// (docs/fuzzing.md, Chains).
inline constexpr int kPlanChainLevels = 2;

class PlanQueue {
 public:
  // Queues the candidates of one input at chain level `chain` (0: an
  // input's own plans; 1: follow-ups; kPlanChainLevels or more: 0).
  void add(std::vector<Planned> candidates, int chain = 0);
  // Moves the next candidate into `out`: from the follow-ups and the
  // inputs' own plans in turn (the other when one has none); at level 1
  // the highest tier first; at level 0 the tiers
  // take turns (an input's planned switches, the first step of every
  // depth-3 chain, would otherwise wait behind every other input's
  // interrupts). Within a tier the sites take turns: the queue holds about
  // twenty times what the fuzzer runs, and a moment at a site few inputs
  // reach (a nolock trim parking pages: 9 inputs of 982 in a page_smp
  // corpus) would otherwise wait behind the lock sites every input hits.
  // Within a site, newest first above level 0 (a follow-up belongs to the
  // switch that just ran); at level 0 the least noisy of kNoiseDraws draws
  // (newest first would follow whatever was new last, plans of plans, and
  // not come back to a base; a plain draw served the corpus's noisy
  // programs as often as the clean bases a chain grows from).
  // Return: false when none is queued.
  bool take(Program& out);
  std::size_t size() const;

  // The custom mutator says which bytes it wrote for the candidate take()
  // gave last; fuzz_one asks for the input it runs.
  // Return (chain_of): the chain level of the candidate whose bytes are
  // `data` (the last one written), or -1 when `data` is not a candidate;
  // (tier_of): its tier, or -1.
  void wrote(const std::uint8_t* data, std::size_t size);
  int chain_of(const std::uint8_t* data, std::size_t size) const;
  int tier_of(const std::uint8_t* data, std::size_t size) const;

 private:
  bool is_written(const std::uint8_t* data, std::size_t size) const;
  struct Queued {
    Program program;
    int base_noise = 0;
  };
  // Which of kNoiseDraws random draws from a site list: the one on the
  // least noisy base (Planned::base_noise) is served, the one on the
  // noisiest dropped.
  enum class Noisiness { kLeast, kMost };
  // Return: the index in `list` (not empty) of that draw.
  std::size_t draw_by_noise(const std::deque<Queued>& list, Noisiness which);

  // One tier of one level: a list per site of the moment the candidates
  // add; take() serves the sites in turn.
  struct TierQueue {
    std::array<std::deque<Queued>, kInjectionSites> by_site;
    std::size_t size = 0;
    int next_site = 0;
  };
  std::array<std::array<TierQueue, kPlanTiers>, kPlanChainLevels> queues_;
  int next_tier_ = 0;                     // level 0's turn
  bool follow_up_turn_ = true;            // the levels' turn
  Rng rng_{0x706c616e};                   // level 0's draw
  int taken_chain_ = -1;                  // the chain level and tier of the last take()
  int taken_tier_ = -1;
  std::vector<std::uint8_t> written_;     // the bytes of the last candidate written
  int written_chain_ = -1;
  int written_tier_ = -1;
};

}  // namespace anyctx::harness
