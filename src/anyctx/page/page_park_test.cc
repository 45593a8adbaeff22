// Parked batches: a nolock free above `high` parks a batch on the deferred
// stack without zone.lock; a nolock refill takes its order's blocks from
// there first (keeping the pcp within `high`) and returns the rest to the
// buddy lists; a park above the limit (2 * high), every holder of zone.lock
// and drain_all_pages() return parked pages to the buddy lists.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/site.h"
#include "anyctx/page/page_alloc.h"
#include "anyctx/testing/page_fixture.h"

namespace anyctx {
namespace {

using testing::config_of;
using testing::PageAllocTest;

constexpr int kHigh = 24;  // config_of()
constexpr int kBatch = 8;

// `n` order-`order` blocks from the spinning path, this CPU's pcp emptied
// afterwards, so that frees start from an empty pcp.
std::vector<Page*> take_blocks(int n, unsigned order) {
  std::vector<Page*> blocks;
  for (int i = 0; i < n; ++i) blocks.push_back(alloc_pages(kGfpKernel, order));
  drain_local_pages();
  return blocks;
}

// Runs `work` on a second CPU (a thread registered for its duration).
template <class Work>
void on_other_cpu(Work work) {
  std::thread other([&] {
    CpuScope cpu;
    work();
  });
  other.join();
}

TEST_F(PageAllocTest, NolockFreeAboveHighParksABatchWithoutZoneLock) {
  init(config_of(512));
  std::vector<Page*> pages = take_blocks(kHigh + 1, 0);
  const std::size_t zone_before = zone_free_pages();
  const std::uint64_t pushed_before = page_stats().deferred_pushed;
  for (int i = 0; i < kHigh; ++i) free_pages_nolock(pages[i], 0);
  EXPECT_EQ(pcp_count(cpu_.id()), kHigh) << "at high: no trim yet";
  EXPECT_EQ(deferred_free_pages(), 0u);
  free_pages_nolock(pages[kHigh], 0);
  // One page above high: a batch beyond it leaves the pcp for the stack.
  EXPECT_EQ(pcp_count(cpu_.id()), kHigh - kBatch);
  EXPECT_EQ(deferred_free_pages(), static_cast<std::size_t>(kBatch + 1));
  EXPECT_EQ(page_stats().deferred_pushed - pushed_before, static_cast<std::uint64_t>(kBatch + 1));
  EXPECT_EQ(zone_free_pages(), zone_before) << "no buddy merge: the park took no zone.lock";
  InvariantResult r = check_invariants();
  EXPECT_TRUE(r.ok) << r.what;
  expect_everything_free();
}

// The producer/consumer shape: what one CPU parks, another CPU's nolock
// refill takes, with neither touching the buddy lists.
TEST_F(PageAllocTest, NolockRefillTakesParkedBlocksBeforeZoneLock) {
  init(config_of(512));
  std::vector<Page*> pages = take_blocks(kHigh + 1, 0);
  for (Page* p : pages) free_pages_nolock(p, 0);
  ASSERT_EQ(deferred_free_pages(), static_cast<std::size_t>(kBatch + 1));
  const std::size_t zone_before = zone_free_pages();
  const PageStats before = page_stats();
  on_other_cpu([&] {
    Page* p = alloc_pages_nolock(Gfp{}, 0);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(pcp_count(current_cpu()), kBatch) << "kept all nine parked pages, handed out one";
    free_pages(p, 0);
  });
  EXPECT_EQ(page_stats().deferred_taken - before.deferred_taken, static_cast<std::uint64_t>(kBatch + 1));
  EXPECT_EQ(page_stats().deferred_drained, before.deferred_drained);
  EXPECT_EQ(zone_free_pages(), zone_before + static_cast<std::size_t>(kBatch + 1))
      << "the other CPU went offline: its pcp drained, nothing came from the buddy lists";
  EXPECT_EQ(deferred_free_pages(), 0u);
  expect_everything_free();
}

// A refill keeps blocks of its own order only, and only while its pcp stays
// within `high` (one block at least); the rest goes to the buddy lists
// (zone.lock is free here), nothing lost.
TEST_F(PageAllocTest, NolockRefillKeepsItsOrderWithinHighAndGivesTheRestBack) {
  init(config_of(512));
  // Every block first: a spinning refill would drain the stack.
  std::vector<Page*> pairs = take_blocks(kHigh / 2, 1);
  std::vector<Page*> single = take_blocks(1, 0);
  std::vector<Page*> others = take_blocks(kHigh / 2, 1);
  std::vector<Page*> zeros = take_blocks(kHigh + 1, 0);
  // Park one order-0 block and four order-1 blocks: the trim walks the
  // orders round-robin from 0 until it has moved a batch and one.
  for (Page* p : pairs) free_pages_nolock(p, 1);
  free_pages_nolock(single[0], 0);
  ASSERT_EQ(deferred_free_pages(), static_cast<std::size_t>(kBatch + 1));
  std::size_t zone_before = zone_free_pages();
  on_other_cpu([&] {
    Page* p = alloc_pages_nolock(Gfp{}, 1);
    ASSERT_NE(p, nullptr);
    EXPECT_EQ(pcp_count(current_cpu()), 6) << "kept the four order-1 blocks, handed out one";
    EXPECT_EQ(deferred_free_pages(), 0u);
    EXPECT_EQ(zone_free_pages(), zone_before + 1) << "the order-0 block went to the buddy lists";
    free_pages(p, 1);
    InvariantResult r = check_invariants();
    EXPECT_TRUE(r.ok) << r.what;
  });
  drain_all_pages();
  ASSERT_EQ(deferred_free_pages(), 0u);

  // Nine order-0 pages parked; a CPU whose pcp is at `high` keeps one.
  for (Page* p : zeros) free_pages_nolock(p, 0);
  ASSERT_EQ(deferred_free_pages(), static_cast<std::size_t>(kBatch + 1));
  zone_before = zone_free_pages();
  on_other_cpu([&] {
    for (Page* o : others) free_pages_nolock(o, 1);
    ASSERT_EQ(pcp_count(current_cpu()), kHigh);
    Page* q = alloc_pages_nolock(Gfp{}, 0);
    ASSERT_NE(q, nullptr);
    EXPECT_EQ(pcp_count(current_cpu()), kHigh) << "no room: one block kept";
    EXPECT_EQ(deferred_free_pages(), 0u);
    EXPECT_EQ(zone_free_pages(), zone_before + kBatch);
    InvariantResult r = check_invariants();
    EXPECT_TRUE(r.ok) << r.what;
    free_pages(q, 0);
  });
  expect_everything_free();
}

// Parking is bounded: a park that leaves more than 2 * `high` pages on the
// stack drains it.
TEST_F(PageAllocTest, ParkAboveTheLimitDrains) {
  init(config_of(512));
  std::vector<Page*> pages = take_blocks(3 * kHigh, 0);
  std::size_t parked_max = 0;
  for (Page* p : pages) {
    free_pages_nolock(p, 0);
    parked_max = std::max(parked_max, deferred_free_pages());
  }
  EXPECT_GT(page_stats().deferred_drained, 0u) << "a park above the limit drained";
  EXPECT_LE(parked_max, static_cast<std::size_t>(2 * kHigh)) << "never more than the limit left parked";
  expect_everything_free();
}

// Parked pages are free memory for the spinning path too: a holder of
// zone.lock drains them before it allocates.
TEST_F(PageAllocTest, ParkedPagesServeASpinningAllocation) {
  init(config_of(64));
  std::vector<Page*> pages;
  while (Page* p = alloc_pages(kGfpAtomic, 0)) pages.push_back(p);
  ASSERT_EQ(pages.size(), 64u);
  // Freed in allocation order (ascending pfns): the batch parked is the
  // last nine freed, pfns 16..24, which hold the aligned block 16..23.
  for (int i = 0; i <= kHigh; ++i) free_pages_nolock(pages[static_cast<std::size_t>(i)], 0);
  ASSERT_EQ(deferred_free_pages(), static_cast<std::size_t>(kBatch + 1));
  ASSERT_EQ(zone_free_pages(), 0u);
  Page* block = alloc_pages(kGfpAtomic, 3);
  EXPECT_NE(block, nullptr) << "the buddy lists were empty but for the parked pages";
  if (block != nullptr) free_pages(block, 3);
  for (std::size_t i = kHigh + 1; i < pages.size(); ++i) free_pages(pages[i], 0);
  expect_everything_free();
}

}  // namespace
}  // namespace anyctx
