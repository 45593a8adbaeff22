// The program-level tools of anyctx-repro: the minimizer shrinks a padded
// failing program to its core and keeps the oracle; the injection sweep finds
// a bug visible at one site hit only; PCT schedules find a depth-2 ordering
// bug within the PCT bound. Programs run only in child processes here.
#include <gtest/gtest.h>

#include "harness/child.h"
#include "harness/executor.h"
#include "harness/explore.h"
#include "harness/minimize.h"
#include "harness/test_helpers.h"
#include "harness/text.h"

namespace anyctx::harness {
namespace {

using test::parse_or_fail;

TEST(StepKind, DropsTheNumbers) {
  EXPECT_EQ(step_kind_of("[program cpu 1 (anyctx cpu 2): task op 3 alloc_pages > nmi injection 0 op 1 free_pages; "
                         "event 57]"),
            "task alloc_pages > nmi free_pages");
  Signature s = signature_of_output(
      "anyctx: harness: invariants: page: pfn 3 is wrong [program cpu 0 (anyctx cpu 0): task op 2 drain_all; event 9]\n");
  EXPECT_EQ(s.oracle, "harness: invariants");
  EXPECT_EQ(s.step_kind, "task drain_all");
}

// A fake predicate: "fails" while some op is a kmalloc of size index >= 2.
TEST(Minimize, ReducesToTheCoreWithAFakePredicate) {
  const TargetSpec& t = *target_spec("all");
  Program p = parse_or_fail(R"(# anyctx program v2
target all
fault nth=3 percent=0 contexts=task,irq,nmi paths=spinning,nolock seed=7
cpu 0
  alloc_pages spinning order=3 zero slot=0
  drain_all
  free_pages spinning slot=0
cpu 1
  drain_local
  kmalloc spinning size=4096 zero account slot=3
  kfree spinning slot=3
  alloc_pages nolock order=2 slot=4
cpu 2
  drain_all
inject nmi cpu=2 site=ZoneLocked level=task nth=4
  alloc_pages nolock order=1 slot=5
switch event=5 cpu=1
switch on=0 site=ZoneListEdit level=task nth=2 cpu=2
)");
  auto fails = [](const Program& q) {
    for (const auto& ops : q.cpus)
      for (const Op& op : ops)
        if (op.kind == OpKind::kKmalloc && op.order >= 2) return true;
    return false;
  };
  ASSERT_TRUE(fails(p));
  MinimizeStats stats;
  Program m = minimize(t, p, fails, {}, &stats);
  EXPECT_TRUE(fails(m));
  EXPECT_EQ(validate(t, m), "");
  ASSERT_EQ(m.cpus.size(), 1u);
  ASSERT_EQ(m.cpus[0].size(), 1u);
  EXPECT_EQ(m.cpus[0][0].kind, OpKind::kKmalloc);
  EXPECT_EQ(m.cpus[0][0].order, 2) << "the size index is lowered to the least that fails";
  EXPECT_EQ(m.cpus[0][0].arg, 0) << "flags cleared";
  EXPECT_TRUE(m.injections.empty());
  EXPECT_TRUE(m.schedule.empty());
  EXPECT_TRUE(m.anchored.empty());
  EXPECT_EQ(m.fault, FaultSpec{});
  EXPECT_FALSE(stats.stopped);

  // A budget stops it early, with a program the predicate accepted.
  int calls = 0;
  MinimizeOptions o;
  o.stop = [&calls] { return calls >= 3; };
  Program early = minimize(t, p, [&](const Program& q) { ++calls; return fails(q); }, o, &stats);
  EXPECT_TRUE(stats.stopped);
  EXPECT_TRUE(fails(early));
}

// The core: the IRQ at op 1's boundary spins on lock A that its interrupted
// frame holds (with lock legalisation sabotaged): a self-deadlock report.
// Padded with CPUs, ops, injections and switches that do not touch lock A.
TEST(Minimize, ShrinksAPaddedSelfDeadlockToItsCoreInChildren) {
  const TargetSpec& t = *target_spec("all");
  RunOptions o;
  o.sabotage = Sabotage::kNoLockLegalization;
  Program padded = parse_or_fail(R"(# anyctx program v2
target all
cpu 0
  spin_lock lock=A
  spin_unlock lock=A
  alloc_pages spinning order=2 slot=0
  kmalloc spinning size=64 slot=1
  write_verify slot=0
  drain_local
  kfree spinning slot=1
  free_pages spinning slot=0
  alloc_pages nolock order=1 slot=2
  free_pages nolock slot=2
cpu 1
  alloc_pages spinning order=0 slot=3
  drain_all
  kmalloc nolock size=128 zero slot=4
  kfree nolock slot=4
  free_pages spinning slot=3
  alloc_pages spinning order=3 account slot=5
  free_pages spinning slot=5
cpu 2
  drain_local
  alloc_pages spinning order=1 slot=6
  free_pages spinning slot=6
inject irq cpu=0 site=OpBoundary level=task nth=2
  spin_lock lock=A
inject nmi cpu=1 site=ZoneLocked level=task nth=1
  alloc_pages nolock order=0 slot=7
  free_pages nolock slot=7
inject irq cpu=2 site=OpBoundary level=task nth=2
  kmalloc spinning size=32 slot=6
  kfree spinning slot=6
switch event=4 cpu=1
switch event=9 cpu=2
switch event=14 cpu=0
)");
  ChildRun first = run_in_child(t, padded, o);
  ASSERT_TRUE(first.failed) << first.output;
  Signature want = signature_of(first);
  EXPECT_EQ(want.oracle, "self-deadlock") << first.output;
  EXPECT_EQ(want.step_kind, "task spin_unlock > irq spin_lock") << first.output;

  MinimizeStats stats;
  Program m = minimize(t, padded, fails_like(t, want, o), {}, &stats);
  SCOPED_TRACE(print(t, m));
  EXPECT_EQ(validate(t, m), "");
  EXPECT_TRUE(signature_of(run_in_child(t, m, o)).same_failure(want));
  EXPECT_EQ(m.cpus.size(), 1u);
  EXPECT_EQ(m.injections.size(), 1u);
  EXPECT_TRUE(m.schedule.empty());
  EXPECT_LE(total_ops(m), 3) << "spin_lock, spin_unlock, and the IRQ's spin_lock";
  EXPECT_GE(total_ops(padded), 24);
  EXPECT_FALSE(stats.stopped);
}

// Reaches ZoneListEdit (buddy split and merge) more than three times on CPU 0.
constexpr const char* kSplitsAndMerges = R"(# anyctx program v2
target page_ops
cpu 0
  alloc_pages spinning order=3 slot=0
  alloc_pages spinning order=1 slot=1
  free_pages spinning slot=0
  free_pages spinning slot=1
  drain_all
)";

TEST(Sweep, FindsABugVisibleAtOneSiteHitAndPrintsAReproducer) {
  const TargetSpec& t = *target_spec("page_ops");
  Program p = parse_or_fail(kSplitsAndMerges);
  SweepOptions o;
  o.run.sabotage = Sabotage::kThirdZoneListEdit;
  SweepResult r = sweep(t, p, o);
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(r.runs, r.points);
  const int edit = static_cast<int>(Site::kZoneListEdit);
  // The planted points: ZoneListEdit, 3rd hit, every kind that may land there.
  std::vector<SweepPoint> points;
  ChildRun plain = run_in_child(t, p, o.run);
  ASSERT_TRUE(plain.have_stats) << plain.output;
  ASSERT_GE(plain.stats.sites.hits[0][edit][0], 3) << "the program must split or merge three times";
  int planted = 0;
  for (const SweepPoint& at : sweep_points(t, p, plain.stats)) planted += at.site == edit && at.nth == 3;
  EXPECT_EQ(planted, 2) << "an IRQ and an NMI at level task";
  ASSERT_EQ(static_cast<int>(r.findings.size()), planted);
  for (const SweepFinding& f : r.findings) {
    SCOPED_TRACE(f.point.text() + "\n" + f.output);
    EXPECT_EQ(f.point.site, edit);
    EXPECT_EQ(f.point.nth, 3);
    EXPECT_EQ(f.signature.oracle, "harness: invariants");
    // The printed program, parsed and replayed, fails the same way.
    ParseResult back = parse(print(t, f.program), t);
    ASSERT_TRUE(back.ok()) << back.error;
    EXPECT_EQ(back.program, f.program);
    EXPECT_TRUE(signature_of(run_in_child(t, back.program, o.run)).same_failure(f.signature));
  }
}

TEST(Sweep, WorkloadUsesFreeSlotsAndAllowedOps) {
  Program p = parse_or_fail(kSplitsAndMerges);
  std::vector<Op> nmi = sweep_workload(*target_spec("page_ops"), p, Ctx::kNmi);
  ASSERT_EQ(nmi.size(), 4u) << "page_ops has no kmalloc or memcg: two allocations and their frees";
  for (const Op& op : nmi) {
    EXPECT_TRUE(op.kind == OpKind::kAllocPages || op.kind == OpKind::kFreePages);
    EXPECT_EQ(op.path, Path::kNolock);
    EXPECT_GE(op.slot, 2) << "slots 0 and 1 are the program's";
  }
  std::vector<Op> all = sweep_workload(*target_spec("all"), p, Ctx::kNmi);
  EXPECT_EQ(all.size(), 8u);
  Program with = with_sweep_injection(*target_spec("all"), p, SweepPoint{0, kOpBoundary, Ctx::kTask, 1, Ctx::kNmi});
  EXPECT_EQ(validate(*target_spec("all"), with), "");
}

// CPU 1 runs an op while CPU 0 is inside its op 1: a bug of depth 2 (CPU 0
// runs first, and is preempted inside op 1). PCT finds it with probability at
// least 1/(n·k) per schedule; 4·n·k deterministic seeds.
TEST(Schedules, FindADepthTwoOrderingBugWithinThePctBound) {
  const TargetSpec& t = *target_spec("page_smp");
  Program p = parse_or_fail(R"(# anyctx program v2
target page_smp
cpu 0
  alloc_pages spinning order=0 slot=0
  alloc_pages spinning order=1 slot=1
  free_pages spinning slot=0
  free_pages spinning slot=1
cpu 1
  alloc_pages nolock order=0 slot=2
  free_pages nolock slot=2
switch event=3 cpu=1
)");
  SchedulesOptions o;
  o.run.sabotage = Sabotage::kAtomicityCpu0Op1;
  o.depth = 2;
  SchedulesResult probe = schedules(t, p, 1, o);
  ASSERT_EQ(probe.error, "");
  const int n = 2, k = probe.steps;
  ASSERT_GT(k, 4);
  SchedulesResult r = schedules(t, p, 4 * n * k, o);
  ASSERT_EQ(r.error, "");
  EXPECT_EQ(r.runs, 4 * n * k);
  ASSERT_GT(r.failed, 0);
  EXPECT_LT(r.first_failing, n * k) << "PCT's bound for depth 2: probability >= 1/(n k) per schedule";
  RecordProperty("pct", std::to_string(r.failed) + " of " + std::to_string(r.runs) + " failed, first seed " +
                            std::to_string(r.first_failing) + ", k " + std::to_string(k));
  EXPECT_TRUE(r.first.pct.on());
  EXPECT_TRUE(r.first.schedule.empty());
  // Replaying the printed program replays the schedule.
  std::string text = print(t, r.first);
  EXPECT_NE(text.find("pct seed=" + std::to_string(r.first_failing) + " depth=2 steps=" + std::to_string(k)),
            std::string::npos)
      << text;
  ParseResult back = parse(text, t);
  ASSERT_TRUE(back.ok()) << back.error;
  EXPECT_TRUE(signature_of(run_in_child(t, back.program, o.run)).same_failure(r.signature));
  // Without the sabotage no schedule fails.
  SchedulesOptions clean = o;
  clean.run.sabotage = Sabotage::kNone;
  EXPECT_EQ(schedules(t, p, n * k, clean).failed, 0);
}

// The same depth-2 bug, without a written schedule: the planner's switch
// inside CPU 0's op 1 (a lock just taken) to CPU 1 shows it at level 1, and
// the printed candidate replays it.
TEST(PlanSearch, FindsADepthTwoOrderingBugWithAPlannedSwitch) {
  const TargetSpec& t = *target_spec("page_smp");
  Program p = parse_or_fail(R"(# anyctx program v2
target page_smp
cpu 0
  alloc_pages spinning order=0 slot=0
  alloc_pages spinning order=1 slot=1
  free_pages spinning slot=0
  free_pages spinning slot=1
cpu 1
  alloc_pages nolock order=0 slot=2
  free_pages nolock slot=2
)");
  PlanSearchOptions o;
  o.run.sabotage = Sabotage::kAtomicityCpu0Op1;
  o.depth = 1;
  PlanSearchResult r = plan_search(t, p, o);
  ASSERT_EQ(r.error, "");
  ASSERT_TRUE(r.failed) << r.runs << " candidates ran clean";
  EXPECT_EQ(r.level, 1);
  EXPECT_EQ(r.signature.oracle, "harness: invariants");
  ASSERT_FALSE(r.first.anchored.empty());
  EXPECT_EQ(r.first.anchored.back().on, 0);
  EXPECT_EQ(r.first.anchored.back().cpu, 1);
  ParseResult back = parse(print(t, r.first), t);
  ASSERT_TRUE(back.ok()) << back.error;
  EXPECT_TRUE(signature_of(run_in_child(t, back.program, o.run)).same_failure(r.signature));
  // Without the sabotage no candidate fails, to depth 2 (the first 300:
  // each runs in a child, and all of them took 491 s under tsan).
  PlanSearchOptions clean;
  clean.max_runs = 300;
  PlanSearchResult none = plan_search(t, p, clean);
  EXPECT_EQ(none.error, "");
  EXPECT_FALSE(none.failed) << none.signature.text() << "\n" << none.output;
  EXPECT_GT(none.runs, 20);
}

}  // namespace
}  // namespace anyctx::harness
