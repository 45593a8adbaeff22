// FaultPlan: n-th call, probability, order weights, context and path
// filters, determinism; and a sweep that fails each call of a workload once.
#include "anyctx/page/fault.h"

#include <gtest/gtest.h>

#include <vector>

#include "anyctx/testing/interrupts.h"
#include "anyctx/testing/page_fixture.h"

namespace anyctx {
namespace {

using testing::config_of;
using testing::PageAllocTest;

TEST_F(PageAllocTest, FailsExactlyTheNthCall) {
  init(config_of(256));
  FaultPlan plan;
  plan.fail_nth = 3;
  fault_plan_set(plan);
  std::vector<Page*> got;
  for (int i = 0; i < 5; ++i) got.push_back(alloc_pages(kGfpKernel, 0));
  EXPECT_NE(got[0], nullptr);
  EXPECT_NE(got[1], nullptr);
  EXPECT_EQ(got[2], nullptr);
  EXPECT_NE(got[3], nullptr);
  EXPECT_NE(got[4], nullptr);
  FaultStats st = fault_plan_stats();
  EXPECT_EQ(st.calls, 5u);
  EXPECT_EQ(st.fired, 1u);
  EXPECT_EQ(st.first_fired, 3u);
  for (Page* p : got)
    if (p) free_pages(p, 0);
  expect_everything_free();
}

// alloc_pages' fast path tests its CPU's pcp copy of the flag: a plan set
// after the pcp is stocked still fails its fast-path hits, and the
// invariant check compares each copy with the flag.
TEST_F(PageAllocTest, APlanReachesTheFastPathThroughEachPcpsCopyOfTheFlag) {
  init(config_of(256));
  free_pages(alloc_pages(kGfpKernel, 0), 0);  // stock this CPU's pcp
  FaultPlan plan;
  plan.fail_nth = 1;
  fault_plan_set(plan);
  EXPECT_EQ(alloc_pages(kGfpKernel, 0), nullptr);
  EXPECT_TRUE(check_invariants().ok) << check_invariants().what;
  detail::g_fault_plan_active.store(false);  // behind the copies' back
  InvariantResult r = check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.what.find("cpu 0's pcp copy of the fault-plan flag says active, the flag says inactive"), std::string::npos)
      << r.what;
  detail::g_fault_plan_active.store(true);  // undone, so that the clear sweeps the copies
  fault_plan_clear();
  EXPECT_TRUE(check_invariants().ok) << check_invariants().what;
  expect_everything_free();
}

TEST_F(PageAllocTest, ProbabilityIsDeterministicPerSeed) {
  init(config_of(256));
  auto pattern = [](std::uint64_t seed) {
    FaultPlan plan;
    plan.probability_ppm = 300'000;
    plan.seed = seed;
    fault_plan_set(plan);
    std::vector<bool> failed;
    for (int i = 0; i < 200; ++i) {
      Page* p = alloc_pages_nolock(Gfp{}, 0);
      failed.push_back(p == nullptr);
      if (p) free_pages_nolock(p, 0);
    }
    return failed;
  };
  std::vector<bool> a = pattern(11), b = pattern(11), c = pattern(12);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  long fails = std::count(a.begin(), a.end(), true);
  EXPECT_GT(fails, 30);
  EXPECT_LT(fails, 100) << "about 30% of 200";
  fault_plan_clear();
  expect_everything_free();
}

TEST_F(PageAllocTest, OrderWeightsScaleTheProbability) {
  init(config_of(256));
  FaultPlan plan;
  plan.probability_ppm = 1'000'000;
  plan.order_weight_pct[0] = 0;  // never at order 0, always elsewhere
  fault_plan_set(plan);
  Page* zero = alloc_pages(kGfpKernel, 0);
  EXPECT_NE(zero, nullptr);
  EXPECT_EQ(alloc_pages(kGfpKernel, 1), nullptr);
  EXPECT_EQ(alloc_pages_nolock(Gfp{}, 2), nullptr);
  free_pages(zero, 0);
  fault_plan_clear();
  expect_everything_free();
}

TEST_F(PageAllocTest, FiltersByContextAndPath) {
  init(config_of(256));
  FaultPlan plan;
  plan.probability_ppm = 1'000'000;
  plan.contexts = context_bit(ContextLevel::kNmi);
  plan.paths = path_bit(FaultPath::kNolock);
  fault_plan_set(plan);
  Page* task_nolock = alloc_pages_nolock(Gfp{}, 0);
  EXPECT_NE(task_nolock, nullptr) << "task context is filtered out";
  Page* nmi_nolock = task_nolock;
  Page* irq_spinning = nullptr;
  testing::run_in_nmi([&] { nmi_nolock = alloc_pages_nolock(Gfp{}, 0); });
  testing::run_in_irq([&] { irq_spinning = alloc_pages(kGfpAtomic, 0); });
  EXPECT_EQ(nmi_nolock, nullptr) << "an NMI on the nolock path fails";
  EXPECT_NE(irq_spinning, nullptr) << "IRQ context is filtered out";
  EXPECT_EQ(fault_plan_stats().calls, 1u) << "only matching calls are counted";
  free_pages_nolock(task_nolock, 0);
  free_pages(irq_spinning, 0);
  fault_plan_clear();
  expect_everything_free();
}

// A fixed workload with a failure injected at call n, for every n: each
// failure is handled, nothing leaks, the invariants hold.
int sweep_workload() {
  std::vector<std::pair<Page*, unsigned>> live;
  int failures = 0;
  for (int i = 0; i < 24; ++i) {
    unsigned order = static_cast<unsigned>(i % 5);
    Page* p = (i % 2 == 0 && order <= kPcpMaxOrder) ? alloc_pages_nolock(Gfp{}, order)
                                                     : alloc_pages(kGfpKernel, order);
    if (p == nullptr) {
      ++failures;
      continue;
    }
    live.emplace_back(p, order);
    if (i % 4 == 3) {
      auto [q, o] = live.front();
      live.erase(live.begin());
      free_pages_nolock(q, o);
    }
  }
  for (auto [p, o] : live) free_pages(p, o);
  return failures;
}

TEST_F(PageAllocTest, FaultSweepFailsEachCallOnceWithoutLeaks) {
  init(config_of(512));
  for (std::uint64_t n = 1; n <= 25; ++n) {
    FaultPlan plan;
    plan.fail_nth = n;
    fault_plan_set(plan);
    int failures = sweep_workload();
    FaultStats st = fault_plan_stats();
    EXPECT_EQ(st.calls, 24u);
    EXPECT_EQ(st.fired, n <= 24 ? 1u : 0u) << "n=" << n;
    EXPECT_EQ(failures, static_cast<int>(st.fired)) << "n=" << n;
    fault_plan_clear();
    drain_all_pages();
    InvariantResult r = check_invariants();
    ASSERT_TRUE(r.ok) << "n=" << n << ": " << r.what;
    ASSERT_EQ(zone_free_pages(), arena_pages()) << "n=" << n;
  }
  expect_everything_free();
}

}  // namespace
}  // namespace anyctx
