// The page allocator: whole-arena round trips, nolock semantics, NMIs at
// every site, cross-CPU frees with IRQs, fault sweeps, misuse reports.
#include "anyctx/page/page_alloc.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/site.h"
#include "anyctx/page/fault.h"
#include "anyctx/testing/interrupts.h"
#include "anyctx/testing/page_fixture.h"

namespace anyctx {
namespace {

using testing::all_zero;
using testing::config_of;
using testing::PageAllocTest;

TEST_F(PageAllocTest, WholeArenaAtOrderZeroAndBack) {
  PageAllocatorConfig c;  // the default 16384-page arena
  c.watermark_min = c.watermark_low = c.watermark_high = 0;
  init(c);
  std::vector<Page*> pages;
  while (Page* p = alloc_pages(kGfpKernel, 0)) pages.push_back(p);
  EXPECT_EQ(pages.size(), arena_pages());
  InvariantResult full = check_invariants();
  EXPECT_TRUE(full.ok) << full.what;
  for (Page* p : pages) free_pages(p, 0);
  expect_everything_free();
  EXPECT_EQ(zone_free_blocks(kMaxOrder), arena_pages() >> kMaxOrder);
  for (unsigned o = 0; o < kMaxOrder; ++o) EXPECT_EQ(zone_free_blocks(o), 0u) << "order " << o;
}

TEST_F(PageAllocTest, MixedOrdersComeBackFullyCoalesced) {
  init(config_of(4096));
  std::mt19937 rng(7);
  std::vector<std::pair<Page*, unsigned>> live;
  for (int step = 0; step < 4000; ++step) {
    if (live.empty() || rng() % 3 != 0) {
      unsigned order = rng() % (kMaxOrder + 1);
      bool nolock = order <= kPcpMaxOrder && rng() % 2 == 0;
      Page* p = nolock ? alloc_pages_nolock(Gfp{}, order) : alloc_pages(kGfpKernel, order);
      if (p != nullptr) {
        EXPECT_EQ(page_to_pfn(p) % (std::size_t{1} << order), 0u);
        live.emplace_back(p, order);
      }
    } else {
      std::size_t i = rng() % live.size();
      auto [p, order] = live[i];
      live[i] = live.back();
      live.pop_back();
      if (rng() % 2 == 0) free_pages(p, order); else free_pages_nolock(p, order);
    }
    InvariantResult cheap = check_free_lists();
    ASSERT_TRUE(cheap.ok) << "step " << step << ": " << cheap.what;
    if (step % 500 == 0) {
      InvariantResult r = check_invariants();
      ASSERT_TRUE(r.ok) << "step " << step << ": " << r.what;
    }
  }
  for (auto [p, order] : live) free_pages(p, order);
  expect_everything_free();
  EXPECT_EQ(zone_free_blocks(kMaxOrder), 4u);
}

TEST_F(PageAllocTest, ArenaThatIsNotAPowerOfTwoEndsInSmallerBlocks) {
  init(config_of(1024 + 512 + 3));
  EXPECT_EQ(zone_free_blocks(10), 1u);
  EXPECT_EQ(zone_free_blocks(9), 1u);
  EXPECT_EQ(zone_free_blocks(1), 1u);
  EXPECT_EQ(zone_free_blocks(0), 1u);
  std::size_t n = 0;
  std::vector<Page*> pages;
  while (Page* p = alloc_pages(kGfpKernel, 0)) pages.push_back(p), ++n;
  EXPECT_EQ(n, arena_pages());
  for (Page* p : pages) free_pages(p, 0);
  expect_everything_free();
}

TEST_F(PageAllocTest, ConversionsRoundTrip) {
  init(config_of(64));
  Page* p = alloc_pages(kGfpKernel, 2);
  ASSERT_NE(p, nullptr);
  std::size_t pfn = page_to_pfn(p);
  EXPECT_EQ(pfn_to_page(pfn), p);
  EXPECT_EQ(virt_to_page(page_address(p)), p);
  EXPECT_EQ(virt_to_page(static_cast<char*>(page_address(p)) + 3 * kPageSize + 17), pfn_to_page(pfn + 3));
  EXPECT_EQ(pfn_to_page(64), nullptr);
  int local = 0;
  EXPECT_EQ(virt_to_page(&local), nullptr);
  free_pages(p, 2);
}

TEST_F(PageAllocTest, BadConfigurationsAreNamed) {
  PageAllocatorConfig c = config_of(0);
  EXPECT_EQ(page_allocator_init(c), "pages must be 1..2^26");
  c = config_of(64);
  c.pcp_high = 1;
  EXPECT_EQ(page_allocator_init(c), "pcp_high must be at least pcp_batch");
  c = config_of(64, 10, 5, 20);
  EXPECT_EQ(page_allocator_init(c), "watermarks must satisfy min <= low <= high <= pages");
  c = config_of(64);
  c.drain_timeout_ms = 0;
  EXPECT_EQ(page_allocator_init(c), "drain_timeout_ms must be 1..3600000");
  init(config_of(64));
  EXPECT_EQ(page_allocator_init(config_of(64)), "the page allocator is already initialised");
}

TEST_F(PageAllocTest, NolockPagesAreZeroedWithRefcountOne) {
  init(config_of(256));
  for (unsigned order = 0; order <= kPcpMaxOrder; ++order) {
    Page* p = alloc_pages_nolock(Gfp{}, order);
    ASSERT_NE(p, nullptr) << "order " << order;
    EXPECT_EQ(page_refcount(p), 1);
    EXPECT_TRUE(all_zero(p, order));
    std::memset(page_address(p), 0xab, kPageSize << order);
    free_pages_nolock(p, order);
    Page* again = alloc_pages_nolock(Gfp{}, order);
    ASSERT_EQ(again, p) << "the pcp list hands the hot block back";
    EXPECT_TRUE(all_zero(again, order)) << "order " << order;
    free_pages_nolock(again, order);
  }
  EXPECT_EQ(alloc_pages_nolock(Gfp{}, kPcpMaxOrder + 1), nullptr) << "orders above 3 are refused";
  expect_everything_free();
}

TEST_F(PageAllocTest, SpinningAllocZeroesOnlyWhenAsked) {
  init(config_of(64));
  Page* p = alloc_pages(kGfpKernel, 0);
  std::memset(page_address(p), 0xcd, kPageSize);
  free_pages(p, 0);
  Page* q = alloc_pages(kGfpKernel | kGfpZero, 0);
  ASSERT_EQ(q, p);
  EXPECT_TRUE(all_zero(q, 0));
  free_pages(q, 0);
}

TEST_F(PageAllocTest, ThreadThatIsNotACpuGetsNullFromNolockAndCanStillFree) {
  init(config_of(64));
  Page* p = alloc_pages_nolock(Gfp{}, 0);
  ASSERT_NE(p, nullptr);
  Page* got = p;
  std::thread([&] {
    got = alloc_pages_nolock(Gfp{}, 0);
    free_pages_nolock(p, 0);  // no pcp: straight to the buddy lists
  }).join();
  EXPECT_EQ(got, nullptr);
  expect_everything_free();
}

TEST_F(PageAllocTest, NolockGfpWithOtherBitsIsReported) {
  init(config_of(64));
  EXPECT_DEATH((void)alloc_pages_nolock(kGfpKernel, 0),
               "bad gfp: alloc_pages_nolock\\(\\): gfp may carry only kGfpAccount, got 0x3");
}

TEST_F(PageAllocTest, SpinningAllocFromNotACpuOrNmiIsReported) {
  init(config_of(64));
  EXPECT_DEATH(std::thread([] { (void)alloc_pages(kGfpKernel, 0); }).join(),
               "not a cpu: alloc_pages\\(\\) called on a thread that is not a logical CPU");
  EXPECT_DEATH(testing::run_in_nmi([] { (void)alloc_pages(kGfpAtomic, 0); }),
               "context rule: alloc_pages\\(\\) in NMI context: use alloc_pages_nolock\\(\\)");
  EXPECT_DEATH(testing::run_in_irq([] { (void)alloc_pages(kGfpKernel, 0); }),
               "context rule: alloc_pages\\(\\) with kGfpDirectReclaim in irq context");
}

TEST_F(PageAllocTest, WatermarksGateEachKindOfCaller) {
  init(config_of(1024, 64, 128, 192));
  std::vector<Page*> pages;
  while (Page* p = alloc_pages(kGfpNowait, 0)) pages.push_back(p);
  EXPECT_EQ(pages.size(), 1024u - 64) << "plain callers stop at min";
  EXPECT_EQ(alloc_pages_nolock(Gfp{}, 0), nullptr) << "nolock never takes reserves";
  std::size_t reserve = 0;
  while (Page* p = alloc_pages(kGfpAtomic, 0)) pages.push_back(p), ++reserve;
  EXPECT_EQ(reserve, 32u) << "kGfpHigh callers go down to min/2";
  EXPECT_EQ(alloc_pages(kGfpAtomic | kGfpNomemalloc, 0), nullptr);
  EXPECT_EQ(alloc_pages(kGfpKernel, 0), nullptr) << "reclaim finds nothing to give back";
  EXPECT_GT(page_stats().reclaim_runs, 0u);
  for (Page* p : pages) free_pages(p, 0);
  expect_everything_free();
}

TEST_F(PageAllocTest, DirectReclaimDrainsAnotherCpusPcp) {
  init(config_of(256));
  std::atomic<int> phase{0};
  std::thread other([&] {
    CpuScope cpu;
    std::vector<Page*> mine;
    for (int i = 0; i < 20; ++i) mine.push_back(alloc_pages(kGfpKernel, 0));
    for (Page* p : mine) free_pages(p, 0);  // 20 <= high: they stay on this pcp
    phase.store(1);
    while (phase.load() != 2) std::this_thread::yield();
  });
  while (phase.load() != 1) std::this_thread::yield();
  std::vector<Page*> pages;
  while (Page* p = alloc_pages(kGfpAtomic, 0)) pages.push_back(p);
  EXPECT_LT(pages.size(), 256u);
  Page* reclaimed = alloc_pages(kGfpKernel, 0);
  EXPECT_NE(reclaimed, nullptr) << "direct reclaim drains the other CPU's pcp";
  EXPECT_GT(page_stats().reclaim_runs, 0u);
  if (reclaimed) pages.push_back(reclaimed);
  phase.store(2);
  other.join();
  for (Page* p : pages) free_pages(p, 0);
  expect_everything_free();
}

TEST_F(PageAllocTest, CpuGoingOfflineDrainsItsPcp) {
  init(config_of(256));
  int id = -1;
  std::thread([&] {
    CpuScope cpu;
    id = cpu.id();
    Page* p = alloc_pages(kGfpKernel, 1);
    free_pages(p, 1);
    EXPECT_GT(pcp_count(id), 0);
  }).join();
  EXPECT_EQ(pcp_count(id), 0);
  InvariantResult r = check_invariants();
  EXPECT_TRUE(r.ok) << r.what;
}

TEST_F(PageAllocTest, GetAndPutPage) {
  init(config_of(64));
  Page* p = alloc_pages(kGfpKernel, 1);
  get_page(p);
  EXPECT_EQ(page_refcount(p), 2);
  put_page(p);
  EXPECT_EQ(page_refcount(p), 1);
  put_page(p);  // the last reference frees it
  expect_everything_free();
}

// The oracle itself: a corrupted descriptor is named, not passed over.
TEST_F(PageAllocTest, InvariantCheckNamesACorruptedPage) {
  init(config_of(64));
  Page* p = alloc_pages(kGfpKernel, 0);
  std::size_t pfn = page_to_pfn(p);
  p->state.store(PageState::kBuddy);  // claims to be free, but is on no list
  InvariantResult r = check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.what, "pfn " + std::to_string(pfn) + " has state buddy but is on no list");
  p->state.store(PageState::kTail);  // now nobody accounts for it
  r = check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.what, "1 of 64 frames are in no place (lost: neither free on a list nor allocated)");
  p->state.store(PageState::kAllocated);
  p->order.store(1);  // claims its neighbour, which sits on a free list
  r = check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.what.find("already found in another block or list"), std::string::npos) << r.what;
  p->order.store(0);
  free_pages(p, 0);
  expect_everything_free();
}

// The cheap form sees what the lists say — a listed block in the wrong state,
// two listed blocks overlapping — and, by its contract, not a frame that is
// on no list at all.
TEST_F(PageAllocTest, FreeListCheckNamesListedBlocksOnly) {
  init(config_of(64));
  Page* a = alloc_pages(kGfpKernel, 1);
  Page* b = alloc_pages(kGfpKernel, 0);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_TRUE(check_free_lists().ok);

  b->state.store(PageState::kBuddy);  // free by its state, on no list
  EXPECT_TRUE(check_free_lists().ok) << "the cheap form does not visit allocated frames";
  EXPECT_FALSE(check_invariants().ok);
  b->state.store(PageState::kAllocated);

  // a's second frame poses as an allocated order-0 page and is freed to the
  // pcp list: a listed block inside an allocated one. Then a itself: two
  // listed blocks share a frame.
  std::size_t apfn = page_to_pfn(a);
  Page* inner = pfn_to_page(apfn + 1);
  inner->order.store(0);
  inner->refcount.store(1);
  inner->state.store(PageState::kAllocated);
  free_pages(inner, 0);
  InvariantResult r = check_free_lists();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.what, "pfn " + std::to_string(apfn + 1) + " on the pcp list lies inside the order-1 block at pfn " +
                        std::to_string(apfn) + " (state allocated)");
  free_pages(a, 1);
  r = check_free_lists();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.what, "pfn " + std::to_string(apfn + 1) + " on the pcp list lies inside the order-1 block at pfn " +
                        std::to_string(apfn) + " (state pcp)");

  // A listed block whose state no longer says where it is.
  inner->state.store(PageState::kAllocated);
  r = check_free_lists();
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.what.find("pfn " + std::to_string(apfn + 1) + " on the pcp list has state allocated order 0, expected"),
            std::string::npos)
      << r.what;
  // The arena is beyond repair: leave it to TearDown's shutdown.
}

// --- NMIs at every site -------------------------------------------------------------

std::atomic<Page*> g_given{nullptr};
std::atomic<int> g_nmi_alloc_ok{0};
std::atomic<int> g_nmi_alloc_null{0};
std::atomic<int> g_nmi_not_zeroed{0};
std::atomic<int> g_target[2]{-1, -1};
std::atomic<int> g_hits[kSiteCount]{};
std::atomic<bool> g_fired[kSiteCount]{};

void nmi_allocates_and_frees(InterruptKind kind) {
  if (kind != InterruptKind::kNmi) return;
  for (unsigned order = 0; order <= kPcpMaxOrder; ++order) {
    Page* p = alloc_pages_nolock(Gfp{}, order);
    if (p == nullptr) {
      g_nmi_alloc_null.fetch_add(1);
      continue;
    }
    g_nmi_alloc_ok.fetch_add(1);
    if (!all_zero(p, order)) g_nmi_not_zeroed.fetch_add(1);
    std::memset(page_address(p), 0x5a, kPageSize << order);
    free_pages_nolock(p, order);
  }
  if (Page* given = g_given.exchange(nullptr)) free_pages_nolock(given, 0);
}

void nmi_at_target_sites(Site site) {
  int s = static_cast<int>(site);
  g_hits[s].fetch_add(1);
  if (!in_task() || (s != g_target[0].load() && s != g_target[1].load())) return;
  if (g_fired[s].exchange(true)) return;
  raise_nmi();
}

// Runs every path that has a site: refill, list edits, bulk free, drains,
// buddy splits and merges, the deferred drain, a park and a take.
void page_workload() {
  std::vector<std::pair<Page*, unsigned>> live;
  for (int i = 0; i < 40; ++i) live.emplace_back(alloc_pages(kGfpKernel, 0), 0);
  for (unsigned order = 1; order <= 5; ++order) live.emplace_back(alloc_pages(kGfpKernel, order), order);
  for (std::size_t i = 0; i < live.size(); ++i) {
    auto [p, order] = live[i];
    if (p == nullptr) continue;
    if (i % 3 == 0) free_pages_nolock(p, order); else free_pages(p, order);
  }
  // A nolock trim parks a batch; a nolock refill of another order takes
  // the stack, keeps nothing and gives it back.
  drain_local_pages();
  std::vector<Page*> more;
  for (int i = 0; i < 30; ++i) more.push_back(alloc_pages(kGfpKernel, 0));
  drain_local_pages();
  for (Page* p : more) free_pages_nolock(p, 0);
  if (Page* p = alloc_pages_nolock(Gfp{}, 2)) free_pages_nolock(p, 2);
  drain_local_pages();
  drain_all_pages();
}

class PageSiteTest : public PageAllocTest, public ::testing::WithParamInterface<Site> {};

TEST_P(PageSiteTest, NmiAtTheSiteAllocatesAndFreesWithoutLoss) {
  init(config_of(1024));
  const Site site = GetParam();
  // Each instance counts from zero, also when one process runs them all.
  g_nmi_alloc_ok.store(0);
  g_nmi_alloc_null.store(0);
  g_nmi_not_zeroed.store(0);
  for (int i = 0; i < kSiteCount; ++i) {
    g_hits[i].store(0);
    g_fired[i].store(false);
  }
  g_given.store(alloc_pages_nolock(Gfp{}, 0));
  ASSERT_NE(g_given.load(), nullptr);
  g_target[0].store(static_cast<int>(site));
  // A deferred drain needs something deferred first: an NMI inside zone.lock.
  g_target[1].store(site == Site::kDeferredDrain ? static_cast<int>(Site::kZoneLocked) : -1);
  std::uint64_t deferred_before = page_stats().deferred_pushed;
  set_interrupt_handler(InterruptKind::kNmi, nmi_allocates_and_frees);
  set_site_hook(nmi_at_target_sites);
  page_workload();
  set_site_hook(nullptr);

  EXPECT_TRUE(g_fired[static_cast<int>(site)].load()) << "the workload never reached " << site_name(site);
  EXPECT_EQ(g_nmi_not_zeroed.load(), 0);
  EXPECT_EQ(g_nmi_alloc_ok.load() + g_nmi_alloc_null.load(), static_cast<int>(kPcpMaxOrder + 1) * (g_target[1] >= 0 ? 2 : 1));
  if (site == Site::kZoneLocked || site == Site::kZoneListEdit || site == Site::kZoneUnlock ||
      site == Site::kPcpRefill || site == Site::kPcpBulkFree) {
    // zone.lock is held: the NMI's free of the given page must defer.
    EXPECT_GT(page_stats().deferred_pushed, deferred_before) << site_name(site);
  }
  if (site == Site::kDeferredDrain) EXPECT_GT(page_stats().deferred_drained, 0u);
  expect_everything_free();
  EXPECT_EQ(deferred_free_pages(), 0u);
}

INSTANTIATE_TEST_SUITE_P(EverySite, PageSiteTest,
                         ::testing::Values(Site::kPcpLocked, Site::kPcpListEdit, Site::kPcpUnlock, Site::kZoneLocked,
                                           Site::kZoneListEdit, Site::kZoneUnlock, Site::kPcpRefill,
                                           Site::kPcpBulkFree, Site::kDeferredDrain, Site::kPcpPark,
                                           Site::kDeferredTake),
                         [](const ::testing::TestParamInfo<Site>& info) { return std::string(site_name(info.param)); });

// An NMI lands inside a deferred push (between reading the head and the CAS)
// and pushes too: the task's CAS must fail and retry, losing neither page.
// Deterministic: a second CPU holds zone.lock (parked at kZoneLocked) while
// this CPU frees without locks.
std::atomic<int> g_parker_cpu{-1};
std::atomic<bool> g_park{false};
std::atomic<bool> g_parked{false};

// The zone holder's part of a site hook: park at kZoneLocked while g_park.
void park_if_zone_holder(Site site) {
  if (site == Site::kZoneLocked && current_cpu() == g_parker_cpu.load() && g_park.load()) {
    g_parked.store(true);
    while (g_park.load()) std::this_thread::yield();
  }
}

// A second CPU that takes zone.lock (an order-6 allocation, straight from
// the buddy lists) and parks holding it until g_park goes false; the site
// hook must call park_if_zone_holder(). Return: once it is parked; *block
// gets its block when it goes on.
std::thread start_zone_holder(Page** block) {
  g_parked.store(false);
  g_park.store(true);
  std::thread holder([block] {
    CpuScope cpu;
    g_parker_cpu.store(cpu.id());
    *block = alloc_pages(kGfpKernel, 6);
  });
  while (!g_parked.load()) std::this_thread::yield();
  return holder;
}

void park_or_interrupt(Site site) {
  park_if_zone_holder(site);
  if (site == Site::kDeferredPush && in_task() && current_cpu() != g_parker_cpu.load() &&
      !g_fired[static_cast<int>(site)].exchange(true))
    raise_nmi();
}

TEST_F(PageAllocTest, NmiInsideADeferredPushLosesNothing) {
  init(config_of(256));
  // Order 4 bypasses the pcp lists, so a nolock free meets zone.lock directly.
  Page* task_block = alloc_pages(kGfpKernel, 4);
  g_given.store(alloc_pages(kGfpKernel, 4));
  set_interrupt_handler(InterruptKind::kNmi, [](InterruptKind) {
    if (Page* given = g_given.exchange(nullptr)) free_pages_nolock(given, 4);
  });
  set_site_hook(park_or_interrupt);
  Page* parker_block = nullptr;
  std::thread parker = start_zone_holder(&parker_block);
  std::uint64_t pushed_before = page_stats().deferred_pushed;
  free_pages_nolock(task_block, 4);  // zone.lock busy: deferred, and the NMI defers inside the push
  EXPECT_TRUE(g_fired[static_cast<int>(Site::kDeferredPush)].load());
  EXPECT_EQ(g_given.load(), nullptr) << "the NMI ran";
  EXPECT_EQ(page_stats().deferred_pushed - pushed_before, 2u);
  g_park.store(false);
  parker.join();
  set_site_hook(nullptr);
  // The parker, a spinning holder of zone.lock, drained both blocks once
  // it went on from kZoneLocked.
  EXPECT_EQ(page_stats().deferred_drained, 2u);
  EXPECT_EQ(deferred_free_pages(), 0u);
  InvariantResult r = check_invariants();
  EXPECT_TRUE(r.ok) << r.what;
  free_pages(parker_block, 6);
  expect_everything_free();
  EXPECT_EQ(deferred_free_pages(), 0u);
}

// The statistics count every call in the slot of its path and of the
// context it ran in, whichever way it went: the fast paths (a pcp hit, a
// push) count in their own slots, the slow paths (an empty list refilled,
// IRQ and NMI frames, a second order) through stat_inc.
void pairs_in_this_context(InterruptKind) {
  Page* a[2];
  if (!in_nmi()) {
    for (unsigned order : {0u, 1u}) {
      for (Page*& p : a) p = alloc_pages(kGfpAtomic, order);
      for (Page* p : a) free_pages(p, order);
    }
  }
  for (unsigned order : {0u, 1u}) {
    for (Page*& p : a) p = alloc_pages_nolock(Gfp{}, order);
    for (Page* p : a) free_pages_nolock(p, order);
  }
}

TEST_F(PageAllocTest, EveryCallIsCountedInTheSlotOfItsPathAndContext) {
  init(config_of(1024));
  set_interrupt_handler(InterruptKind::kIrq, pairs_in_this_context);
  set_interrupt_handler(InterruptKind::kNmi, pairs_in_this_context);
  PageStats before = page_stats();
  pairs_in_this_context(InterruptKind::kIrq);  // task context (the kind is not read)
  raise_irq();
  raise_nmi();
  PageStats after = page_stats();
  for (int path = 0; path < 2; ++path) {
    for (int ctx = 0; ctx < 3; ++ctx) {
      // Two pairs of each of two orders, except spinning calls in NMI context.
      std::uint64_t expected = path == 0 && ctx == static_cast<int>(ContextLevel::kNmi) ? 0 : 4;
      SCOPED_TRACE("path " + std::to_string(path) + ", " + context_name(static_cast<ContextLevel>(ctx)));
      EXPECT_EQ(after.alloc_ok[path][ctx] - before.alloc_ok[path][ctx], expected);
      EXPECT_EQ(after.freed[path][ctx] - before.freed[path][ctx], expected);
      EXPECT_EQ(after.alloc_failed[path][ctx], before.alloc_failed[path][ctx]);
    }
  }
  expect_everything_free();
}

// Above `high` every free returns a batch: a spinning free waits for
// zone.lock and returns it to the buddy lists; a nolock free parks it on the
// deferred stack, needing no lock, so it trims while zone.lock is busy too.
TEST_F(PageAllocTest, PcpAboveHighReturnsABatchFromEveryFree) {
  init(config_of(512));  // high 24
  std::vector<Page*> pages;
  for (int i = 0; i < 91; ++i) pages.push_back(alloc_pages(kGfpKernel, 0));
  for (int i = 0; i < 30; ++i) free_pages_nolock(pages[i], 0);
  EXPECT_LE(pcp_count(cpu_.id()), 24) << "the nolock frees trimmed";

  set_site_hook(park_if_zone_holder);
  Page* parker_block = nullptr;
  std::thread parker = start_zone_holder(&parker_block);
  std::uint64_t pushed_before = page_stats().deferred_pushed;
  for (int i = 30; i < 60; ++i) free_pages_nolock(pages[i], 0);
  EXPECT_LE(pcp_count(cpu_.id()), 24) << "zone.lock was busy: the nolock frees trimmed all the same";
  EXPECT_GT(page_stats().deferred_pushed, pushed_before) << "by parking";
  g_park.store(false);
  parker.join();
  set_site_hook(nullptr);
  g_parker_cpu.store(-1);
  EXPECT_EQ(deferred_free_pages(), 0u) << "the holder drained the stack at its unlock";

  std::uint64_t bulk_before = page_stats().pcp_bulk_frees;
  for (int i = 60; i < 91; ++i) free_pages(pages[i], 0);
  EXPECT_LE(pcp_count(cpu_.id()), 24);
  EXPECT_GT(page_stats().pcp_bulk_frees, bulk_before);
  free_pages(parker_block, 6);
  expect_everything_free();
}

// A nolock refill that takes the stack while zone.lock is busy cannot
// return what it does not keep to the buddy lists: it pushes it back by the
// protocol, and the holder drains it at its unlock.
TEST_F(PageAllocTest, NolockRefillPushesTheRestBackWhileZoneLockIsBusy) {
  init(config_of(512));
  std::vector<Page*> pairs, single;
  for (int i = 0; i < 12; ++i) pairs.push_back(alloc_pages(kGfpKernel, 1));
  single.push_back(alloc_pages(kGfpKernel, 0));
  drain_local_pages();
  for (Page* p : pairs) free_pages_nolock(p, 1);
  free_pages_nolock(single[0], 0);  // parks one order-0 and four order-1 blocks
  ASSERT_EQ(deferred_free_pages(), 9u);

  set_site_hook(park_if_zone_holder);
  Page* parker_block = nullptr;
  std::thread parker = start_zone_holder(&parker_block);
  std::thread other([] {
    CpuScope cpu;
    Page* p = alloc_pages_nolock(Gfp{}, 1);
    EXPECT_NE(p, nullptr) << "the parked order-1 blocks need no lock";
    EXPECT_EQ(pcp_count(cpu.id()), 6);
    EXPECT_EQ(page_stats().deferred_pushed, 5u) << "five blocks parked; the one pushed back is no new free";
    if (p != nullptr) free_pages_nolock(p, 1);
    g_park.store(false);  // the holder goes on: its unlock drains the stack
  });
  other.join();
  parker.join();
  set_site_hook(nullptr);
  g_parker_cpu.store(-1);
  EXPECT_EQ(deferred_free_pages(), 0u);
  free_pages(parker_block, 6);
  expect_everything_free();
}

}  // namespace
}  // namespace anyctx
