// The planner: candidates are valid and a function of their arguments; a
// switch is planned where a CPU takes a lock, a copy of a CPU's ops on
// another CPU meets that lock held, and over the program with that
// switch, the interrupts that complete the interleaving (where the other CPU
// waits for the lock); the executor marks where a CPU resumed inside a
// section; the queue serves follow-ups first, then the tiers in turn; the fuzz
// targets' mutator feeds the queue from the observer, and fuzz_one feeds it
// from a run that reached a new interleaving.
#include "harness/planner.h"

#include <gtest/gtest.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <new>
#include <random>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "harness/executor.h"
#include "harness/feedback.h"
#include "harness/interleave.h"
#include "harness/mutator.h"
#include "harness/test_helpers.h"
#include "harness/text.h"

namespace anyctx::harness {
namespace {

using test::parse_or_fail;
using test::site_of;

// Two CPUs allocate from the same cache; each first kmalloc takes list_lock
// to find a slab.
constexpr const char* kTwoCpusOneCache = R"(# anyctx program v2
target slab_ops
cpu 0
  kmalloc spinning size=96 slot=0
cpu 1
  kmalloc spinning size=96 slot=1
)";

// One CPU allocates from a cache and frees.
constexpr const char* kOneCpuOneCache = R"(# anyctx program v2
target slab_ops
cpu 0
  kmalloc spinning size=96 slot=0
  kfree spinning slot=0
)";

// Two CPUs that each free two order-3 pages nolock: each parks a batch on
// the deferred stack.
constexpr const char* kTwoCpusPark = R"(# anyctx program v2
target page_smp
cpu 0
  alloc_pages spinning order=3 slot=0
  alloc_pages spinning order=3 slot=1
  free_pages nolock slot=0
  free_pages nolock slot=1
cpu 1
  alloc_pages spinning order=3 slot=2
  alloc_pages spinning order=3 slot=3
  free_pages nolock slot=2
  free_pages nolock slot=3
)";

// One CPU charges two cgroups: its stock switches cgroup in the second.
constexpr const char* kOneCpuTwoCgroups = R"(# anyctx program v2
target memcg_ops
cpu 0
  memcg_charge spinning cgroup=2 pages=1 slot=0
  memcg_charge spinning cgroup=3 pages=1 slot=1
)";

TEST(PlannerTest, CandidatesAreValidAndAFunctionOfTheirArguments) {
  const char* names[] = {"page_ops", "page_smp", "slab_ops", "memcg_ops", "lock_ops"};
  std::mt19937 bytes_rng(23);
  int candidates = 0;
  for (const char* name : names) {
    const TargetSpec& t = *target_spec(name);
    for (int i = 0; i < 60; ++i) {
      std::vector<std::uint8_t> bytes(16 + bytes_rng() % 200);
      for (auto& b : bytes) b = static_cast<std::uint8_t>(bytes_rng());
      Program p = decode(t, bytes);
      RunStats stats = run_program(t, p);
      std::vector<Planned> a = plan(t, p, stats.sites, static_cast<std::uint64_t>(i));
      std::vector<Planned> b = plan(t, p, stats.sites, static_cast<std::uint64_t>(i));
      ASSERT_EQ(a.size(), b.size());
      int per_tier[kPlanTiers] = {};
      for (std::size_t k = 0; k < a.size(); ++k) {
        ASSERT_EQ(validate(t, a[k].program), "") << name << " input " << i << " candidate " << k;
        EXPECT_EQ(a[k].tier, b[k].tier);
        EXPECT_TRUE(a[k].program == b[k].program) << name << " input " << i << " candidate " << k;
        EXPECT_FALSE(a[k].program == p) << "a candidate adds something";
        ++per_tier[a[k].tier];
      }
      for (int tier = 0; tier < kPlanTiers; ++tier) EXPECT_LE(per_tier[tier], kPlanPerInput[tier]);
      candidates += static_cast<int>(a.size());
    }
  }
  EXPECT_GT(candidates, 1000);
}

// The two placements of a depth-3 interleaving, one plan at a time: a
// switch while CPU 0 holds list_lock, then, over the program with that
// switch, an NMI on CPU 1 while it spins on list_lock, running a kmalloc of
// the same cache.
TEST(PlannerTest, ASwitchIsPlannedThenTheInterruptsThatCompleteIt) {
  const TargetSpec& t = *target_spec("slab_ops");
  Program base = parse_or_fail(kTwoCpusOneCache);
  RunStats stats = run_program(t, base);
  const int list_locked = site_of("SlabListLocked"), spin_wait = site_of("SpinWait");
  const Program* with_switch = nullptr;
  std::vector<Planned> first = plan(t, base, stats.sites, 1);
  for (const Planned& c : first) {
    if (c.tier != 1) continue;
    const AnchoredSwitch& a = c.program.anchored.back();
    if (a.on == 0 && a.site == list_locked && a.level == Ctx::kTask && a.nth == 1 && a.cpu == 1)
      with_switch = &c.program;
  }
  ASSERT_NE(with_switch, nullptr) << "no switch planned where cpu 0 has just taken list_lock";

  RunStats second = run_program(t, *with_switch);
  ASSERT_NE(second.sites.held_elsewhere[1][spin_wait][0], 0u) << "cpu 1 never spun while cpu 0 held list_lock";
  int nmis = 0, echoing = 0;
  for (const Planned& c : plan(t, *with_switch, second.sites, 2)) {
    if (c.tier != 0) continue;
    const Injection& inj = c.program.injections.back();
    if (inj.cpu != 1 || inj.site != spin_wait || inj.kind != Ctx::kNmi) continue;
    ++nmis;
    for (const Op& op : inj.ops) echoing += op.kind == OpKind::kKmalloc && op.order == base.cpus[0][0].order;
  }
  EXPECT_GT(nmis, 0) << "no NMI planned on cpu 1 while it waits for list_lock";
  EXPECT_GT(echoing, 0) << "the planned NMI allocates from another cache";

  // The follow-ups of that switch: interrupts only at the moments it
  // opened, where cpu 0 resumed inside its section and where cpu 1 met it
  // open; the NMI on cpu 1 while it waits among them.
  std::vector<Planned> followups = plan_followup(t, *with_switch, second.sites, 2);
  ASSERT_LE(followups.size(), kFollowUps);
  bool nmi_at_spin = false;
  for (const Planned& c : followups) {
    ASSERT_EQ(validate(t, c.program), "");
    EXPECT_EQ(c.tier, 0);
    EXPECT_TRUE(c.program.anchored == with_switch->anchored);
    ASSERT_EQ(c.program.injections.size(), with_switch->injections.size() + 1);
    const Injection& inj = c.program.injections.back();
    const int l = static_cast<int>(inj.level), bit = inj.nth - 1;
    const bool opened = inj.cpu == 0 ? (second.sites.resumed_inside[0][inj.site][l] >> bit & 1u) != 0
                                     : (second.sites.held_elsewhere[1][inj.site][l] >> bit & 1u) != 0;
    EXPECT_TRUE(opened) << "an interrupt at cpu " << int{inj.cpu} << " " << injection_site_name(inj.site) << " nth "
                        << int{inj.nth} << ", a moment the switch did not open";
    nmi_at_spin |= inj.cpu == 1 && inj.site == spin_wait && inj.kind == Ctx::kNmi;
  }
  EXPECT_TRUE(nmi_at_spin);
  Program unswitched = *with_switch;
  unswitched.anchored.clear();
  EXPECT_TRUE(plan_followup(t, unswitched, second.sites, 2).empty()) << "nothing to follow";
}

// A program with one CPU has no contention to plan over: tier 2 copies its
// ops onto a second CPU and switches to the copy where the first holds
// list_lock, and the copy then waits for it; where the first is inside its
// pcp, tier 4 switches to a drain_all.
TEST(PlannerTest, OneCpuIsPlannedIntoTwoThatContend) {
  const TargetSpec& t = *target_spec("slab_ops");
  Program base = parse_or_fail(kOneCpuOneCache);
  RunStats stats = run_program(t, base);
  const int list_locked = site_of("SlabListLocked"), spin_wait = site_of("SpinWait");
  int contended = 0, waiting = 0;
  std::vector<Planned> candidates;
  for (std::uint64_t seed = 0; seed < 8; ++seed)  // each keeps a draw of the moments
    for (Planned& c : plan(t, base, stats.sites, seed)) candidates.push_back(std::move(c));
  int requests = 0, remote_frees = 0;
  for (const Planned& c : candidates) {
    if (c.tier != 2 && c.tier != 4) continue;
    ASSERT_EQ(c.program.cpus.size(), 2u);
    const AnchoredSwitch& a = c.program.anchored.back();
    EXPECT_EQ(a.on, 0);
    EXPECT_EQ(a.cpu, 1);
    const bool drain_all = c.program.cpus[1].size() == 1 && c.program.cpus[1][0].kind == OpKind::kDrainAll;
    EXPECT_EQ(drain_all, c.tier == 4) << "drain requests, and only they, are tier 4";
    if (drain_all) {
      ++requests;  // request_ops: cpu 0 is inside its pcp
      continue;
    }
    if (c.program.cpus[1].size() == 1 && c.program.cpus[1][0].kind == OpKind::kKfree) {
      EXPECT_EQ(c.program.cpus[1][0].slot, 0) << "remote_free_ops: the object cpu 0 allocated";
      ++remote_frees;
      continue;
    }
    ASSERT_EQ(c.program.cpus[1].size(), base.cpus[0].size()) << "cpu 1 runs a copy of cpu 0's ops";
    EXPECT_EQ(c.program.cpus[1][0].order, base.cpus[0][0].order) << "of the same cache";
    if (a.site != list_locked || c.program.cpus[1][0].path != Path::kSpinning) continue;
    ++contended;
    waiting += run_program(t, c.program).sites.held_elsewhere[1][spin_wait][0] != 0;
  }
  EXPECT_GT(requests, 0) << "no drain asked of cpu 0's pcp section";
  EXPECT_GT(remote_frees, 0) << "no free of cpu 0's object from the other CPU";
  ASSERT_GT(contended, 0) << "no copy switched to where cpu 0 has just taken list_lock";
  EXPECT_EQ(waiting, contended) << "the copy's kmalloc waits for cpu 0's list_lock";
}

// Every place a switch can anchor at gets a turn before any place gets a
// second. CPU 0 takes its pcp six times and parks a batch once (one
// deferred push); for the contention tier's twelve moments, a draw uniform
// over moments left the push out of 7 of these 16 seeds' plans.
TEST(PlannerTest, ASiteHitOnceIsPlannedBesideSitesHitManyTimes) {
  const TargetSpec& t = *target_spec("page_smp");
  Program base = parse_or_fail(R"(# anyctx program v2
target page_smp
cpu 0
  alloc_pages spinning order=3 slot=1
  alloc_pages spinning order=3 slot=5
  free_pages nolock slot=1
  free_pages nolock slot=5
cpu 1
  drain_local
)");
  RunStats stats = run_program(t, base);
  const int push = site_of("DeferredPush"), pcp_locked = site_of("PcpLocked");
  ASSERT_EQ(stats.sites.hits[0][push][0], 1u) << "cpu 0's park pushes once";
  ASSERT_GE(stats.sites.hits[0][pcp_locked][0], 5u);
  // The places of the first rank (a lock of a class of its own, or inside
  // an update, not a CAS window: tier 5's): fewer than the tier's moments,
  // so each must be planned.
  std::set<std::pair<int, int>> places;
  for (int on = 0; on < 2; ++on)
    for (int site = 0; site < kSiteCount; ++site) {
      const SiteEffect e = site_effect(site);
      if (stats.sites.hits[on][site][0] != 0 && !site_in_cas_window(site) &&
          (e.mid_update || (e.takes != 0 && e.takes != kHeldLocal)))
        places.insert({on, site});
    }
  ASSERT_LE(places.size(), static_cast<std::size_t>(kPlanPerInput[2] / 2));
  for (std::uint64_t seed = 0; seed < 16; ++seed) {
    std::set<std::pair<int, int>> planned;
    int at_push = 0;
    for (const Planned& c : plan(t, base, stats.sites, seed)) {
      if (c.tier != 2 && c.tier != 5) continue;
      const AnchoredSwitch& a = c.program.anchored.back();
      if (c.tier == 5) at_push += a.on == 0 && a.site == push;
      if (c.tier == 2) planned.insert({a.on, a.site});
    }
    for (const auto& [on, site] : places)
      EXPECT_EQ(planned.count({on, site}), 1u) << "seed " << seed << ": no switch at cpu " << on << " "
                                               << injection_site_name(site);
    EXPECT_GT(at_push, 0) << "seed " << seed;
  }
}

// An NMI on CPU 0 pushes a page on the deferred stack (its task holds
// zone.lock in a pcp refill); among the CAS-window tier's candidates, the
// switch there to a CPU that frees the order-4 page CPU 0 still holds,
// nolock: that free finds zone.lock held too and pushes while the NMI's
// push is half done (the race of the `deferred-push-single-pusher`
// mutant; its own CAS retry makes it harmless here).
TEST(PlannerTest, ARemoteFreePushesWhileAnNmiIsInsideItsPush) {
  const TargetSpec& t = *target_spec("page_smp");
  Program base = parse_or_fail(R"(# anyctx program v2
target page_smp
cpu 0
  alloc_pages spinning order=4 slot=2
  alloc_pages spinning order=0 slot=1
  drain_local
  alloc_pages spinning order=0 slot=0
cpu 1
inject nmi cpu=0 site=PcpRefill level=task nth=6
  free_pages nolock slot=1
)");
  RunStats stats = run_program(t, base);
  const int push = site_of("DeferredPush");
  ASSERT_EQ(stats.sites.hits[0][push][static_cast<int>(Ctx::kNmi)], 1u) << "the NMI pushes";
  int met = 0;
  for (std::uint64_t seed = 0; seed < 16 && met == 0; ++seed)
    for (const Planned& c : plan(t, base, stats.sites, seed)) {
      if (c.tier != 5 || c.site != push) continue;
      const std::vector<Op>& other = c.program.cpus.back();
      const bool frees_big_page_nolock = std::any_of(other.begin(), other.end(), [](const Op& op) {
        return op.kind == OpKind::kFreePages && op.slot == 2 && op.path == Path::kNolock;
      });
      if (!frees_big_page_nolock) continue;
      RunStats r = run_program(t, c.program);
      const int to = static_cast<int>(c.program.cpus.size()) - 1;
      met += r.sites.held_elsewhere[to][push][0] != 0;
    }
  EXPECT_GT(met, 0) << "no remote free pushed while cpu 0's NMI was inside its push";
}

// CPU 0 is switched out while it holds zone.lock and gets the turn back
// inside that section: its later hits there are marked resumed, its hits
// before the switch and after the section are not.
TEST(PlannerTest, TheExecutorMarksWhereACpuResumedInsideASection) {
  const TargetSpec& t = *target_spec("page_smp");
  Program p = parse_or_fail(R"(# anyctx program v2
target page_smp
cpu 0
  alloc_pages spinning order=4 slot=0
  free_pages spinning slot=0
cpu 1
  alloc_pages spinning order=0 slot=1
  free_pages spinning slot=1
switch on=0 site=ZoneLocked level=task nth=1 cpu=1
)");
  RunStats stats = run_program(t, p);
  const int zone_locked = site_of("ZoneLocked"), zone_unlock = site_of("ZoneUnlock"),
            list_edit = site_of("ZoneListEdit");
  EXPECT_EQ(stats.sites.resumed_inside[0][zone_locked][0], 0u) << "the switch itself is before the resume";
  EXPECT_NE(stats.sites.resumed_inside[0][zone_unlock][0] & 1u, 0u) << "the first unlock closes the resumed section";
  EXPECT_NE(stats.sites.resumed_inside[0][list_edit][0], 0u);
  // The second zone.lock section (the free) began after the resumed one ended.
  if (stats.sites.hits[0][zone_unlock][0] >= 2) EXPECT_EQ(stats.sites.resumed_inside[0][zone_unlock][0] & 2u, 0u);
}

// The executor marks the hits that came with IRQs masked (the memcg stock
// is taken with irqsave; the pcp is a local trylock that leaves them on),
// and the planner plans no IRQ there, only the NMI: an IRQ injected inside
// the stock section would run at its unmask, one moment for every hit.
TEST(PlannerTest, NoIrqIsPlannedWhereIrqsAreMasked) {
  const TargetSpec& t = *target_spec("memcg_ops");
  Program p = parse_or_fail(R"(# anyctx program v2
target memcg_ops
cpu 0
  memcg_charge spinning cgroup=2 pages=2 slot=0
  memcg_charge spinning cgroup=3 pages=2 slot=1
  alloc_pages spinning order=0 slot=2
  free_pages spinning slot=2
)");
  RunStats stats = run_program(t, p);
  const int stock_edit = site_of("StockEdit"), stock_drain = site_of("StockDrain"), pcp_locked = site_of("PcpLocked");
  ASSERT_EQ(stats.sites.hits[0][stock_edit][0], 2) << "two refills switched the stock's cgroup";
  ASSERT_EQ(stats.sites.hits[0][stock_drain][0], 1) << "the second drained the first's pages";
  EXPECT_EQ(stats.sites.irqs_off[0][stock_edit], 3u);
  EXPECT_EQ(stats.sites.irqs_off[0][stock_drain], 1u);
  ASSERT_GT(stats.sites.hits[0][pcp_locked][0], 0);
  EXPECT_EQ(stats.sites.irqs_off[0][pcp_locked], 0u) << "the pcp's local trylock leaves IRQs on";
  int nmis = 0, irqs_inside = 0, irqs_elsewhere = 0;
  for (std::uint64_t seed = 0; seed < 8; ++seed)
    for (const Planned& c : plan(t, p, stats.sites, seed)) {
      if (c.tier != 3) continue;
      const Injection& inj = c.program.injections.back();
      const bool masked = (stats.sites.irqs_off[inj.cpu][inj.site] >> (inj.nth - 1) & 1u) != 0;
      if (inj.kind == Ctx::kNmi) ++nmis;
      if (inj.kind == Ctx::kIrq) ++(masked ? irqs_inside : irqs_elsewhere);
    }
  EXPECT_GT(nmis, 0);
  EXPECT_GT(irqs_elsewhere, 0) << "IRQs are still planned where they land";
  EXPECT_EQ(irqs_inside, 0);
}

// The fuzzer sees the moment a request met a section: CPU 1 charges over a
// limit while CPU 0 is switched out inside its stock section with the
// cgroup cached, and asks CPU 0 to drain (an IRQ, pending when CPU 0
// resumes). The same program without the limit resumes there too, but with
// no interrupt pending: a resumed flag of the first is missing from the
// second.
TEST(PlannerTest, FeedbackSeesARequestThatMetASection) {
  const TargetSpec& t = *target_spec("memcg_ops");
  auto resumed_flags = [&](const char* limit) {
    std::string text = std::string(R"(# anyctx program v2
target memcg_ops
cpu 0
  memcg_charge spinning cgroup=1 pages=1 slot=0
  memcg_charge spinning cgroup=2 pages=1 slot=1
cpu 1
  memcg_set_max cgroup=1 limit=)") + limit + R"(
  memcg_charge spinning cgroup=1 pages=8 slot=2
switch on=0 site=StockEdit level=task nth=2 cpu=1
)";
    feedback::reset();
    run_program(t, parse_or_fail(text.c_str()));
    std::vector<int> set;
    for (int i = 0; i < feedback::kResumedCounters; ++i)
      if (feedback::counters().resumed[i] != 0) set.push_back(i);
    return set;
  };
  std::vector<int> asked = resumed_flags("1"), unasked = resumed_flags("unlimited");
  EXPECT_FALSE(unasked.empty()) << "cpu 0 resumes inside its stock section";
  bool extra = false;
  for (int i : asked) extra |= std::find(unasked.begin(), unasked.end(), i) == unasked.end();
  EXPECT_TRUE(extra) << "the pending drain request is a state of its own";
}

TEST(PlannerTest, TheQueueServesLevelsAndTiersInTurnAndKeepsItsDepth) {
  auto tagged = [](int tier, int tag) {
    Planned c;
    c.tier = tier;
    c.program.cpus[0].push_back(Op{OpKind::kAllocPages, Path::kSpinning, static_cast<std::uint8_t>(tag % 6), 0, 0});
    c.program.fault.seed = static_cast<std::uint8_t>(tag);
    return c;
  };
  PlanQueue q;
  q.add({tagged(2, 1), tagged(1, 2), tagged(2, 3)});
  q.add({tagged(0, 4), tagged(1, 5)});
  Program out;
  std::vector<int> order;
  auto tier_of_tag = [](int tag) { return tag == 4 || tag == 6 ? 0 : tag == 2 || tag == 5 || tag == 9 || tag == 10 ? 1 : 2; };
  std::vector<int> tiers;
  while (q.take(out)) {
    order.push_back(out.fault.seed);
    tiers.push_back(tier_of_tag(out.fault.seed));
  }
  // The inputs' own plans: the tiers take turns (0, 1, 2, 3, ...), a turn
  // that finds its tier empty passes to the next; within a tier, a draw.
  EXPECT_EQ(tiers, (std::vector<int>{0, 1, 2, 1, 2}));
  std::sort(order.begin(), order.end());
  EXPECT_EQ(order, (std::vector<int>{1, 2, 3, 4, 5}));

  // The follow-ups (level 1, highest tier first) and the inputs' own plans
  // take turns, either alone when the other is empty; after a level-0
  // take, the follow-ups' turn. A level beyond the last is level 0.
  q.add({tagged(0, 6), tagged(2, 7)});
  q.add({tagged(2, 8)}, 1);
  q.add({tagged(1, 9)}, kPlanChainLevels - 1);
  q.add({tagged(1, 10)}, kPlanChainLevels);
  order.clear();
  while (q.take(out)) order.push_back(out.fault.seed);
  EXPECT_EQ(order, (std::vector<int>{9, 6, 8, 10, 7}));

  std::vector<Planned> many;
  for (std::size_t i = 0; i < kPlanQueueDepth + 10; ++i) many.push_back(tagged(1, static_cast<int>(i % 200)));
  q.add(std::move(many));
  EXPECT_EQ(q.size(), kPlanQueueDepth);

  // Within a tier the sites of the moments take turns: one candidate at a
  // site few inputs reach is served within two takes, not after the
  // hundred at a site every input hits; a full tier drops from its longest
  // site list.
  PlanQueue r;
  std::vector<Planned> common;
  for (int i = 0; i < 100; ++i) {
    common.push_back(tagged(2, i));
    common.back().site = site_of("ZoneLocked");
  }
  r.add(std::move(common));
  Planned rare = tagged(2, 150);
  rare.site = site_of("DeferredPush");
  r.add({rare});
  bool served = false;
  for (int i = 0; i < 2 && r.take(out); ++i) served |= out.fault.seed == 150;
  EXPECT_TRUE(served);
  std::vector<Planned> more;
  for (std::size_t i = 0; i < kPlanQueueDepth; ++i) {
    more.push_back(tagged(2, 1));
    more.back().site = site_of("ZoneLocked");
  }
  rare.program.fault.seed = 151;
  r.add({rare});
  r.add(std::move(more));
  EXPECT_EQ(r.size(), kPlanQueueDepth);
  served = false;
  for (int i = 0; i < 2 && r.take(out); ++i) served |= out.fault.seed == 151;
  EXPECT_TRUE(served) << "the rare site's candidate was dropped";
}

// A program's noise: its ops, 3 per injection and switch (anchored or by
// event), 10 for a fault plan; a bare base keeps the ops and drops the rest.
TEST(PlannerTest, NoiseCountsWhatAProgramCarriesBesidesItsOps) {
  Program p = parse_or_fail(R"(# anyctx program v2
target slab_ops
fault nth=3 percent=0 contexts=task paths=spinning seed=1
cpu 0
  kmalloc spinning size=96 slot=0
  kfree spinning slot=0
cpu 1
  kmalloc spinning size=96 slot=1
inject nmi cpu=0 site=SlabCpuLocked level=task nth=1
  kmalloc nolock size=96 slot=2
switch on=0 site=SlabListLocked level=task nth=1 cpu=1
)");
  EXPECT_EQ(plan_noise(Program{}), 0);
  EXPECT_EQ(plan_noise(p), 4 + 3 * 2 + 10) << "4 ops (one in the NMI), an injection, a switch, a fault plan";
  Program bare = bare_base(p);
  EXPECT_EQ(plan_noise(bare), 3);
  EXPECT_EQ(bare.cpus, p.cpus);
  EXPECT_TRUE(bare.injections.empty() && bare.anchored.empty() && bare.schedule.empty());
  EXPECT_EQ(bare.fault, FaultSpec{});
  EXPECT_EQ(bare_base(bare), bare);
  Program percent = bare;
  percent.fault.percent = 5;
  EXPECT_EQ(plan_noise(percent), 3 + 10) << "a fault plan by percent is one too";
  Program seed_only = bare;
  seed_only.fault.seed = 9;
  EXPECT_EQ(plan_noise(seed_only), 3) << "a seed without nth or percent fails nothing";
}

// Level 0 serves the least noisy of its draws: of 100 clean and 100 noisy
// candidates at one site, the first hundred taken are nearly all clean (a
// plain draw takes about fifty).
TEST(PlannerTest, LevelZeroServesTheLeastNoisyOfItsDraws) {
  PlanQueue q;
  std::vector<Planned> batch;
  for (int i = 0; i < 200; ++i) {
    Planned c;
    c.tier = 1;
    c.site = site_of("ZoneLocked");
    c.program.cpus[0].push_back(Op{OpKind::kAllocPages, Path::kSpinning, 0, 0, 0});
    if (i % 2 == 1) c.program.fault.percent = 5;
    batch.push_back(std::move(c));
  }
  q.add(std::move(batch));
  Program out;
  int clean = 0;
  for (int i = 0; i < 100 && q.take(out); ++i) clean += out.fault.percent == 0;
  EXPECT_GE(clean, 90);
}

// The queue compares the bases candidates were planned on, not the
// candidates: a drain request adds a limit and a charge per subtree where a
// copy of a one-op CPU adds one op, and compared as candidates, the least
// noisy of eight draws served the bigger edit of an even mix once in 256
// takes (every draw the smaller). Of one base, they tie.
TEST(PlannerTest, TheQueueComparesBasesNotTheirEdits) {
  const Program base = parse_or_fail(R"(# anyctx program v2
target memcg_ops
cpu 0
  memcg_charge spinning cgroup=2 pages=1 slot=0
)");
  std::vector<Planned> batch;
  for (int i = 0; i < 200; ++i) {
    Planned c{2, base, site_of("StockEdit"), plan_noise(base)};
    c.program.cpus.emplace_back();
    const int ops = i % 2 == 0 ? 1 : 4;
    for (int k = 0; k < ops; ++k) c.program.cpus[1].push_back(Op{OpKind::kMemcgCharge, Path::kSpinning, 2, 1, 1});
    batch.push_back(std::move(c));
  }
  PlanQueue q;
  q.add(std::move(batch));
  Program out;
  int bigger = 0;
  for (int i = 0; i < 50 && q.take(out); ++i) bigger += out.cpus[1].size() == 4;
  EXPECT_GE(bigger, 15) << "the candidates that add more ops were passed over";
}

// Drain requests are a tier of their own (4): from busy-stock-drain's base
// (one CPU charging two cgroups), every planned request is a switch inside
// the stock section to a CPU that limits a subtree the stock's CPU charges
// and charges over it, and every seed plans some.
TEST(PlannerTest, DrainRequestsAreATierOfTheirOwn) {
  const TargetSpec& t = *target_spec("memcg_ops");
  const Program base = parse_or_fail(kOneCpuTwoCgroups);
  RunStats stats = run_program(t, base);
  for (std::uint64_t seed = 0; seed < 8; ++seed) {
    int requests = 0;
    for (const Planned& c : plan(t, base, stats.sites, seed)) {
      EXPECT_EQ(c.base_noise, plan_noise(base));
      if (c.tier != 4) continue;
      ++requests;
      ASSERT_EQ(c.program.cpus.size(), 2u);
      ASSERT_FALSE(c.program.cpus[1].empty());
      EXPECT_EQ(c.program.cpus[1][0].kind, OpKind::kMemcgSetMax);
      const AnchoredSwitch& a = c.program.anchored.back();
      EXPECT_EQ(a.on, 0);
      EXPECT_EQ(a.cpu, 1);
      EXPECT_TRUE(tier_adds_switch(c.tier));
    }
    EXPECT_GT(requests, 0) << "seed " << seed;
  }
}

// The moments inside a CAS window are a tier of their own (5), and the
// CPU that pushes on the same list goes first: both CPUs park a batch
// (a nolock free above `high`); every seed plans the switch inside CPU 0's
// push to CPU 1, whose park then lands in CPU 0's window (the race of the
// `deferred-push-single-pusher` mutant, which the CAS retry makes
// harmless here), and neither tier 1 nor 2 plans a CAS window.
TEST(PlannerTest, CasWindowsAreATierOfTheirOwnAndTheSecondPusherGoesFirst) {
  const TargetSpec& t = *target_spec("page_smp");
  const Program base = parse_or_fail(kTwoCpusPark);
  RunStats stats = run_program(t, base);
  const int push = site_of("DeferredPush");
  ASSERT_EQ(stats.sites.hits[0][push][0], 1u) << "cpu 0 parks";
  ASSERT_EQ(stats.sites.hits[1][push][0], 1u) << "cpu 1 parks";
  for (std::uint64_t seed = 0; seed < 8; ++seed) {
    int second_pusher = 0, met = 0;
    for (const Planned& c : plan(t, base, stats.sites, seed)) {
      if (c.tier == 1 || c.tier == 2) EXPECT_FALSE(site_in_cas_window(c.program.anchored.back().site));
      if (c.tier != 5) continue;
      EXPECT_TRUE(tier_adds_switch(c.tier));
      const AnchoredSwitch& a = c.program.anchored.back();
      EXPECT_TRUE(site_in_cas_window(a.site));
      if (a.on != 0 || a.cpu != 1 || c.program.cpus.size() != 2u) continue;
      ++second_pusher;
      RunStats r = run_program(t, c.program);
      met += r.sites.held_elsewhere[1][push][0] != 0;
    }
    EXPECT_GT(second_pusher, 0) << "seed " << seed;
    EXPECT_EQ(met, second_pusher) << "seed " << seed << ": cpu 1's park did not land inside cpu 0's push";
  }
}

// The truth table of tier_adds_switch, and what it stands for: a
// candidate of a tier it names adds one anchored switch to its base, one of
// any other tier adds none.
TEST(PlannerTest, TierAddsSwitchIsTrueForTheTiersWhoseCandidatesAddOne) {
  const bool expected[kPlanTiers] = {false, true, true, false, true, true};
  for (int tier = 0; tier < kPlanTiers; ++tier) EXPECT_EQ(tier_adds_switch(tier), expected[tier]) << "tier " << tier;
  const std::string park_switched =
      std::string(kTwoCpusPark) + "switch on=0 site=ZoneLocked level=task nth=1 cpu=1\n";  // tier 0's moments
  const std::pair<const char*, std::string> bases[] = {
      {"slab_ops", kTwoCpusOneCache},
      {"page_smp", park_switched}, {"memcg_ops", kOneCpuTwoCgroups}};
  bool seen[kPlanTiers] = {};
  for (const auto& [name, text] : bases) {
    const TargetSpec& t = *target_spec(name);
    const Program base = parse_or_fail(text);
    RunStats stats = run_program(t, base);
    for (const Planned& c : plan(t, base, stats.sites, 1)) {
      seen[c.tier] = true;
      EXPECT_EQ(c.program.anchored.size(), base.anchored.size() + (tier_adds_switch(c.tier) ? 1u : 0u))
          << name << " tier " << c.tier;
    }
  }
  for (int tier = 0; tier < kPlanTiers; ++tier) EXPECT_TRUE(seen[tier]) << "no candidate of tier " << tier;
}

// The truth table of site_in_cas_window: the three lock-free pushes, and
// no other site (kOpBoundary included).
TEST(PlannerTest, CasWindowsAreTheThreeLockFreePushes) {
  const std::set<std::string> windows = {"DeferredPush", "EventPush", "SlabDeferredPush"};
  for (int site = 0; site < kInjectionSites; ++site)
    EXPECT_EQ(site_in_cas_window(site), windows.count(injection_site_name(site)) == 1) << injection_site_name(site);
}

// A full level-0 tier drops the noisiest of its draws, not the oldest: a
// clean candidate outlives a stream of noisy ones that would have pushed it
// out (in memcg_ops runs, nine in ten of the candidates that complete
// busy-stock-drain were dropped, unserved, from the stock sites' lists,
// which every charge fills).
TEST(PlannerTest, AFullQueueDropsItsNoisiestCandidates) {
  auto candidate = [](bool noisy) {
    Planned c;
    c.tier = 2;
    c.site = site_of("StockEdit");
    c.program.cpus[0].push_back(Op{OpKind::kMemcgCharge, Path::kSpinning, 1, 1, 0});
    if (noisy) c.program.fault.percent = 5;
    return c;
  };
  PlanQueue q;
  q.add({candidate(false)});
  for (std::size_t i = 0; i < 3 * kPlanQueueDepth; ++i) q.add({candidate(true)});
  ASSERT_EQ(q.size(), kPlanQueueDepth);
  Program out;
  int clean = 0;
  while (q.take(out)) clean += out.fault.percent == 0;
  EXPECT_EQ(clean, 1) << "the clean candidate was dropped";

  // At level 1 (follow-ups, served newest first) the oldest goes.
  PlanQueue f;
  f.add({candidate(false)}, 1);
  for (std::size_t i = 0; i < kPlanQueueDepth; ++i) f.add({candidate(true)}, 1);
  clean = 0;
  while (f.take(out)) clean += out.fault.percent == 0;
  EXPECT_EQ(clean, 0);
}

// The queue knows the chain level and tier of the candidate written last,
// and only of those bytes.
TEST(PlannerTest, TheQueueKnowsTheChainAndTierOfTheCandidateWrittenLast) {
  PlanQueue q;
  const std::uint8_t bytes[] = {1, 2, 3}, other[] = {1, 2, 4};
  EXPECT_EQ(q.chain_of(bytes, 3), -1) << "nothing written yet";
  Planned c;
  c.program.cpus[0].push_back(Op{});
  c.tier = 2;
  q.add({c}, 1);
  Program out;
  ASSERT_TRUE(q.take(out));
  q.wrote(bytes, 3);
  EXPECT_EQ(q.chain_of(bytes, 3), 1);
  EXPECT_EQ(q.tier_of(bytes, 3), 2);
  EXPECT_EQ(q.chain_of(other, 3), -1);
  EXPECT_EQ(q.tier_of(other, 3), -1);
  EXPECT_EQ(q.chain_of(bytes, 2), -1);
}

// The fuzz targets' wiring: an observer that reports a first sighting fills
// the queue, and the mutator then writes planned candidates.
const SiteMap* observe_fresh(const TargetSpec& t, const std::uint8_t* data, std::size_t size, bool* first_seen) {
  if (first_seen != nullptr) *first_seen = true;
  return fuzz_site_map(t, data, size, nullptr);
}

TEST(PlannerTest, TheMutatorPlansForAnInputSeenTheFirstTime) {
  const TargetSpec& t = *target_spec("slab_ops");
  std::vector<std::uint8_t> input = encode(t, parse_or_fail(kTwoCpusOneCache));
  PlanQueue q;
  std::vector<std::uint8_t> buf(input);
  buf.resize(1024);
  mutate_input(t, buf.data(), input.size(), buf.size(), 7, nullptr, nullptr, observe_fresh, &q);
  std::vector<Planned> expected = plan(t, decode(t, input), run_program(t, decode(t, input)).sites, 0);
  EXPECT_GT(q.size() + 1, expected.size() / 2) << "the queue holds the input's plan";
  std::size_t before = q.size();
  int planned = 0;
  for (unsigned seed = 0; seed < 40 && q.size() > 0; ++seed) {
    std::vector<std::uint8_t> b(input);
    b.resize(1024);
    std::size_t n = mutate_input(t, b.data(), input.size(), b.size(), seed, nullptr, nullptr, nullptr, &q);
    ASSERT_GT(n, 0u);
    ASSERT_EQ(validate(t, decode(t, std::span<const std::uint8_t>(b.data(), n))), "");
    planned += q.size() < before;
    before = q.size();
  }
  EXPECT_GT(planned, 5) << "half the calls write a planned candidate";
}

// An input that carries injections, switches or a fault plan is planned
// twice on its first sighting: as it is, and over its bare base, which the
// observer runs once (and not again for the next input with that base).
std::vector<Program> g_observed_programs;
const SiteMap* observe_recording(const TargetSpec& t, const std::uint8_t* data, std::size_t size,
                                 bool* first_seen) {
  g_observed_programs.push_back(decode(t, std::span<const std::uint8_t>(data, size)));
  if (first_seen != nullptr)
    *first_seen = g_observed_programs.size() == 1 ||
                  !(g_observed_programs.back() == g_observed_programs[g_observed_programs.size() - 2]);
  return fuzz_site_map(t, data, size, nullptr);
}

TEST(PlannerTest, TheMutatorAlsoPlansTheBareBaseOfAnInput) {
  const TargetSpec& t = *target_spec("slab_ops");
  Program noisy = parse_or_fail(kTwoCpusOneCache);
  noisy.fault.percent = 3;
  std::vector<std::uint8_t> input = encode(t, noisy);
  std::vector<std::uint8_t> buf(input);
  buf.resize(1024);
  PlanQueue q;
  g_observed_programs.clear();
  mutate_input(t, buf.data(), input.size(), buf.size(), 7, nullptr, nullptr, observe_recording, &q);
  ASSERT_EQ(g_observed_programs.size(), 3u) << "the input, its bare base, the input again";
  EXPECT_EQ(g_observed_programs[1], bare_base(noisy));
  EXPECT_EQ(g_observed_programs[2], noisy);
  int with_fault = 0, bare = 0;
  Program out;
  while (q.take(out)) {
    ASSERT_EQ(validate(t, out), "");
    (out.fault == noisy.fault ? with_fault : bare) += 1;
  }
  EXPECT_GT(with_fault, 0) << "candidates over the input";
  EXPECT_GT(bare, 0) << "candidates over its bare base";

  // A bare input has no other base: the observer runs it alone.
  std::vector<std::uint8_t> bare_input = encode(t, bare_base(noisy));
  std::vector<std::uint8_t> b(bare_input);
  b.resize(1024);
  g_observed_programs.clear();
  mutate_input(t, b.data(), bare_input.size(), b.size(), 7, nullptr, nullptr, observe_recording, &q);
  EXPECT_EQ(g_observed_programs.size(), 1u);
}

// A SiteObserver's map is valid until its next call, and planning the bare
// base calls it again. This observer puts each map on pages of its own and
// makes the one before unreadable: a mutation that read the input's first
// map after the bare base was observed faults. (The fuzz targets' observer
// freed that map when its cache filled: a use after free that a 20-minute
// memcg_ops campaign found.)
const SiteMap* observe_sealing(const TargetSpec& t, const std::uint8_t* data, std::size_t size, bool* first_seen) {
  static void* before = nullptr;
  const std::size_t bytes = (sizeof(SiteMap) + 4095) & ~std::size_t{4095};
  if (first_seen != nullptr) *first_seen = true;
  void* mem = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (mem == MAP_FAILED) std::abort();
  SiteMap* map = new (mem) SiteMap(run_program(t, decode(t, std::span<const std::uint8_t>(data, size))).sites);
  if (before != nullptr) mprotect(before, bytes, PROT_NONE);  // kept mapped: no later map lands there
  before = mem;
  return map;
}

TEST(PlannerTest, TheMutatorReadsNoMapTheObserverHasEnded) {
  const TargetSpec& t = *target_spec("slab_ops");
  Program noisy = parse_or_fail(kTwoCpusOneCache);
  noisy.fault.percent = 3;  // so that its bare base differs
  const std::vector<std::uint8_t> input = encode(t, noisy);
  int placed = 0;
  for (unsigned seed = 0; seed < 200; ++seed) {  // a read of an ended map faults: the test crashes
    PlanQueue q;
    std::vector<std::uint8_t> b(input);
    b.resize(1024);
    const std::size_t n =
        mutate_input(t, b.data(), input.size(), b.size(), seed, nullptr, nullptr, observe_sealing, &q);
    ASSERT_GT(n, 0u);
    const Program out = decode(t, std::span<const std::uint8_t>(b.data(), n));
    placed += static_cast<int>(out.anchored.size() + out.injections.size());
  }
  EXPECT_GT(placed, 20) << "the mutations that place by the map ran";
}

// The predicate that starts planning on discovery, row by row: no flag set;
// a held_elsewhere flag the first time and the second; a resumed flag; an
// injection flag; code flags alone.
TEST(PlannerTest, NovelInterleavingIsTrueOnlyForAnInterleavingFlagNotSeenBefore) {
  feedback::forget_interleavings();
  auto after = [](auto set) {
    feedback::reset();
    set();
    return feedback::novel_interleaving();
  };
  EXPECT_FALSE(after([] {}));
  EXPECT_TRUE(after([] { feedback::reached_while_held_elsewhere(3, Ctx::kTask, 1); }));
  EXPECT_FALSE(after([] { feedback::reached_while_held_elsewhere(3, Ctx::kTask, 1); }));
  EXPECT_TRUE(after([] { feedback::reached_while_held_elsewhere(3, Ctx::kTask, 2); }));
  EXPECT_TRUE(after([] { feedback::resumed_inside(3, 1, true); }));
  EXPECT_FALSE(after([] { feedback::resumed_inside(3, 1, true); }));
  EXPECT_TRUE(after([] { feedback::injected_holding(3, 1, Ctx::kNmi, Ctx::kTask); }));
  EXPECT_FALSE(after([] {
    feedback::site_reached(3, Ctx::kIrq);
    feedback::injection_fired(3, Ctx::kNmi, Ctx::kIrq);
    feedback::switched(3);
  }));
  feedback::forget_interleavings();
  EXPECT_TRUE(after([] { feedback::reached_while_held_elsewhere(3, Ctx::kTask, 1); })) << "forgotten";
  feedback::reset();
}

// fuzz_one plans a run that reached a new interleaving before the next
// mutation (once a custom mutator has asked for a site map), and not the
// same run again; a run of one CPU without interrupts reaches none. The run
// itself queues nothing (libFuzzer would take the queue's growth for a leak
// and run the input again): its plans are added by fuzz_plan_last_run, which
// the custom mutator calls first, or by the next fuzz_one.
TEST(PlannerTest, FuzzOnePlansARunThatReachedANewInterleaving) {
  const TargetSpec& t = *target_spec("slab_ops");
  PlanQueue* q = fuzz_plans();
  ASSERT_NE(q, nullptr) << "the planner is on unless ANYCTX_MUTATOR says otherwise";
  Program out;
  while (q->take(out)) {
  }
  std::vector<std::uint8_t> one_cpu = encode(t, parse_or_fail(kOneCpuOneCache));
  fuzz_site_map(t, one_cpu.data(), one_cpu.size(), nullptr);  // what the custom mutator does
  feedback::forget_interleavings();
  auto run = [&](const std::vector<std::uint8_t>& input) {
    feedback::reset();  // what libFuzzer does before each input
    const std::size_t before = q->size();
    fuzz_one(t, input.data(), input.size());
    EXPECT_EQ(q->size(), before) << "the run itself queues nothing";
    fuzz_plan_last_run(t);  // what the custom mutator does first
    return q->size();
  };
  EXPECT_EQ(run(one_cpu), 0u);
  Program switched = parse_or_fail(kTwoCpusOneCache);
  switched.anchored.push_back(AnchoredSwitch{0, static_cast<std::uint16_t>(site_of("SlabListLocked")), Ctx::kTask, 1, 1});
  std::vector<std::uint8_t> input = encode(t, switched);
  std::size_t planned = run(input);
  EXPECT_GT(planned, 0u) << "cpu 1 spun on list_lock while cpu 0 held it: a new interleaving";
  bool nmi_at_spin = false;
  while (q->take(out))
    for (const Injection& inj : out.injections) nmi_at_spin |= inj.cpu == 1 && inj.site == site_of("SpinWait");
  EXPECT_TRUE(nmi_at_spin) << "the planned candidates include an interrupt on the spinning cpu";
  EXPECT_EQ(run(input), 0u) << "the same interleaving again is not planned again";

  // A planned switch that ran is followed up, new interleaving or not
  // (this one is not new any more), and after that level-0 take the next
  // turn is the follow-ups', before a newer plan of an input no plan made.
  q->add({Planned{1, switched}});
  ASSERT_TRUE(q->take(out));
  q->wrote(input.data(), input.size());
  ASSERT_GT(run(input), 0u) << "the planned switch is followed up";
  q->add({Planned{0, parse_or_fail(kTwoCpusOneCache)}});  // a newer plan of an unplanned input
  ASSERT_TRUE(q->take(out));
  ASSERT_FALSE(out.injections.empty()) << "the unplanned input's plan came first";
  EXPECT_TRUE(out.anchored == switched.anchored) << "the follow-up builds on the switch";
  while (q->take(out)) {
  }

  // Two runs without a mutation between them: the second adds the plans the
  // first left pending before it runs.
  feedback::forget_interleavings();
  feedback::reset();
  fuzz_one(t, input.data(), input.size());
  ASSERT_EQ(q->size(), 0u);
  feedback::reset();
  fuzz_one(t, one_cpu.data(), one_cpu.size());
  EXPECT_GT(q->size(), 0u) << "the first run's plans were lost";
  while (q->take(out)) {
  }
  feedback::reset();
}

}  // namespace
}  // namespace anyctx::harness
