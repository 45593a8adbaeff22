// anyctx/testing/page_fixture.h — test helpers for the page allocator:
// a fixture that owns the allocator and a CPU, small configurations, and the
// end-of-test check that nothing was lost.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>

#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/site.h"
#include "anyctx/page/fault.h"
#include "anyctx/page/page_alloc.h"

namespace anyctx::testing {

inline PageAllocatorConfig config_of(std::size_t pages, std::size_t min = 0, std::size_t low = 0, std::size_t high = 0) {
  PageAllocatorConfig c;
  c.pages = pages;
  c.pcp_batch = 8;
  c.pcp_high = 24;
  c.watermark_min = min;
  c.watermark_low = low;
  c.watermark_high = high;
  return c;
}

inline bool all_zero(const Page* page, unsigned order) {
  const auto* bytes = static_cast<const unsigned char*>(page_address(page));
  return std::all_of(bytes, bytes + (kPageSize << order), [](unsigned char b) { return b == 0; });
}

class PageAllocTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
  void TearDown() override {
    set_site_hook(nullptr);
    set_interrupt_handler(InterruptKind::kIrq, nullptr);
    set_interrupt_handler(InterruptKind::kNmi, nullptr);
    fault_plan_clear();
    page_allocator_shutdown();
  }
  void init(const PageAllocatorConfig& c) { ASSERT_EQ(page_allocator_init(c), ""); }

  // Quiesce, then: invariants hold and every frame is back on the buddy lists.
  void expect_everything_free() {
    drain_all_pages();
    InvariantResult r = check_invariants();
    EXPECT_TRUE(r.ok) << r.what;
    EXPECT_EQ(zone_free_pages(), arena_pages()) << "pages lost";
    EXPECT_EQ(deferred_free_pages(), 0u);
    // Liveness: with memory free, a nolock allocation succeeds.
    Page* p = alloc_pages_nolock(Gfp{}, 0);
    EXPECT_NE(p, nullptr) << "nolock allocation fails although the zone is free";
    if (p != nullptr) free_pages_nolock(p, 0);
    drain_all_pages();
  }

  CpuScope cpu_;
};

}  // namespace anyctx::testing
