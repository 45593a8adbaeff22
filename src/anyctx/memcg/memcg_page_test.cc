// The page allocator's kGfpAccount: both entry points charge the current
// cgroup 2^order pages, every free path uncharges, a cgroup at its limit
// refuses (nolock at once, spinning after reclaim), a failed allocation
// gives its charge back.
#include <gtest/gtest.h>

#include <vector>

#include "anyctx/memcg/memcg.h"
#include "anyctx/memcg/memcg_test_util.h"
#include "anyctx/page/page_alloc.h"
#include "anyctx/testing/interrupts.h"
#include "anyctx/testing/page_fixture.h"

namespace anyctx {
namespace {

using testing::config_of;
using testing::g_shrinker_calls;

class MemcgPageTest : public testing::PageAllocTest {
 protected:
  void SetUp() override {
    PageAllocTest::SetUp();
    drain_local_stock();
    memcg_flush_events();
    g_shrinker_calls.store(0);
    ASSERT_TRUE(reclaim_register(testing::counting_shrinker));
  }
  void TearDown() override {
    reclaim_unregister(testing::counting_shrinker);
    drain_local_stock();
    MemcgInvariantResult r = memcg_check_invariants();
    EXPECT_TRUE(r.ok) << r.what;
    PageAllocTest::TearDown();
  }
  static MemCgroup* memcg_of(const Page* p) { return p->memcg.load(); }
};

TEST_F(MemcgPageTest, AccountedAllocationsChargeTheCurrentCgroupOnBothPaths) {
  init(config_of(1024));
  MemCgroup cg("pages");
  MemcgScope scope(cg);
  for (unsigned order = 0; order <= kPcpMaxOrder; ++order) {
    const std::int64_t pages = std::int64_t{1} << order;
    Page* p = alloc_pages(kGfpKernel | kGfpAccount, order);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(memcg_of(p), &cg);
    EXPECT_EQ(memcg_stats(cg).charged, pages) << "order " << order;
    free_pages(p, order);
    EXPECT_EQ(memcg_of(p), nullptr);
    EXPECT_EQ(memcg_stats(cg).charged, 0);

    Page* q = alloc_pages_nolock(kGfpAccount, order);
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(memcg_of(q), &cg);
    EXPECT_EQ(memcg_stats(cg).charged, pages);
    free_pages_nolock(q, order);
    EXPECT_EQ(memcg_stats(cg).charged, 0);

    // Freed on the other path, and by the last put_page.
    Page* r = alloc_pages_nolock(kGfpAccount, order);
    Page* s = alloc_pages(kGfpAtomic | kGfpAccount, order);
    ASSERT_NE(r, nullptr);
    ASSERT_NE(s, nullptr);
    EXPECT_EQ(memcg_stats(cg).charged, 2 * pages);
    free_pages(r, order);
    get_page(s);
    put_page(s);
    EXPECT_EQ(memcg_stats(cg).charged, pages);
    put_page(s);
    EXPECT_EQ(memcg_stats(cg).charged, 0);
  }
  Page* plain = alloc_pages(kGfpKernel, 0);
  EXPECT_EQ(memcg_of(plain), nullptr) << "no kGfpAccount, no charge";
  free_pages(plain, 0);
  EXPECT_EQ(memcg_stats(cg).charged, 0);
  drain_local_stock();
  EXPECT_EQ(cg.usage(), 0u);
  expect_everything_free();
}

TEST_F(MemcgPageTest, NolockAccountedAllocationIsExactAndNeverBatches) {
  init(config_of(256));
  MemCgroup cg("exact");
  MemcgScope scope(cg);
  Page* p = alloc_pages_nolock(kGfpAccount, 2);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(cg.usage(), 4u);
  EXPECT_EQ(memcg_stock(cpu_.id()).cached, nullptr);
  free_pages_nolock(p, 2);
  EXPECT_EQ(cg.usage(), 0u);
}

TEST_F(MemcgPageTest, CgroupAtItsLimitRefusesNolockAtOnceAndSpinningAfterReclaim) {
  init(config_of(256));
  MemCgroup cg("limited");
  cg.set_max(4);
  MemcgScope scope(cg);
  Page* four = alloc_pages_nolock(kGfpAccount, 2);
  ASSERT_NE(four, nullptr);

  EXPECT_EQ(alloc_pages_nolock(kGfpAccount, 0), nullptr) << "the cgroup is full";
  Page* unaccounted = alloc_pages_nolock(Gfp{}, 0);
  EXPECT_NE(unaccounted, nullptr) << "memory itself is there";
  free_pages_nolock(unaccounted, 0);
  Page* from_nmi = four;
  testing::run_in_nmi([&] {
    MemcgScope nmi_scope(cg);
    from_nmi = alloc_pages_nolock(kGfpAccount, 0);
  });
  EXPECT_EQ(from_nmi, nullptr);
  EXPECT_EQ(g_shrinker_calls.load(), 0) << "nolock never reclaims";
  PageStats ps = page_stats();
  EXPECT_EQ(ps.charge_failed[1][0], 1u);
  EXPECT_EQ(ps.charge_failed[1][2], 1u);
  EXPECT_EQ(ps.alloc_failed[1][0], 1u);

  EXPECT_EQ(alloc_pages(kGfpKernel | kGfpAccount, 0), nullptr);
  EXPECT_EQ(g_shrinker_calls.load(), kMemcgChargeRetries) << "a spinning charge reclaims before it fails";
  EXPECT_EQ(memcg_stats(cg).reclaim_runs, static_cast<std::uint64_t>(kMemcgChargeRetries));
  EXPECT_EQ(page_stats().charge_failed[0][0], 1u);
  EXPECT_EQ(alloc_pages(kGfpAtomic | kGfpAccount, 0), nullptr);
  EXPECT_EQ(g_shrinker_calls.load(), kMemcgChargeRetries) << "kGfpAtomic does not reclaim";

  free_pages_nolock(four, 2);
  EXPECT_EQ(cg.usage(), 0u);
  Page* p = alloc_pages(kGfpKernel | kGfpAccount, 0);
  ASSERT_NE(p, nullptr);
  EXPECT_EQ(cg.usage(), 1u) << "no batch fits under a limit of 4";
  free_pages(p, 0);
  expect_everything_free();
}

TEST_F(MemcgPageTest, FailedAllocationGivesTheChargeBack) {
  init(config_of(64));
  MemCgroup cg("nomem");
  MemcgScope scope(cg);
  std::vector<Page*> pages;
  while (Page* p = alloc_pages(kGfpAtomic, 0)) pages.push_back(p);
  EXPECT_EQ(alloc_pages(kGfpAtomic | kGfpAccount, 0), nullptr);
  EXPECT_EQ(alloc_pages_nolock(kGfpAccount, 1), nullptr);
  EXPECT_EQ(memcg_stats(cg).charged, 0) << "no page, no charge";
  EXPECT_EQ(page_stats().charge_failed[0][0] + page_stats().charge_failed[1][0], 0u) << "the cgroup did not refuse";
  drain_local_stock();
  EXPECT_EQ(cg.usage(), 0u);
  for (Page* p : pages) free_pages(p, 0);
  expect_everything_free();
}

TEST_F(MemcgPageTest, InterruptWorkChargesItsOwnScopeOrTheRoot) {
  init(config_of(256));
  MemCgroup task_cg("task"), irq_cg("irq");
  MemcgScope scope(task_cg);
  MemCgroup* seen[3] = {};
  testing::run_in_nmi([&] {
    Page* p = alloc_pages_nolock(kGfpAccount, 0);
    seen[0] = p != nullptr ? p->memcg.load() : nullptr;
    if (p != nullptr) free_pages_nolock(p, 0);
  });
  testing::run_in_irq([&] {
    MemcgScope irq_scope(irq_cg);
    Page* p = alloc_pages(kGfpAtomic | kGfpAccount, 1);
    seen[1] = p != nullptr ? p->memcg.load() : nullptr;
    if (p != nullptr) free_pages(p, 1);
  });
  Page* p = alloc_pages(kGfpKernel | kGfpAccount, 0);
  seen[2] = p->memcg.load();
  free_pages(p, 0);
  EXPECT_EQ(seen[0], root_mem_cgroup());
  EXPECT_EQ(seen[1], &irq_cg);
  EXPECT_EQ(seen[2], &task_cg);
  EXPECT_EQ(memcg_stats(irq_cg).charges[0][1], 1u);
  EXPECT_EQ(memcg_stats(irq_cg).charged, 0);
  EXPECT_EQ(memcg_stats(task_cg).charged, 0);
  expect_everything_free();
}

}  // namespace
}  // namespace anyctx
