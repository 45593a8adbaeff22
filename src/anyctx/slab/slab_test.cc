// The slab layer: size classes, alignment, zeroing, content, accounting
// caches, empty slabs going back, the deferred list and each point that
// drains it, the next-size-class retry, threads that are not CPUs, the
// shrinker, and the invariant oracle itself.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <set>
#include <thread>
#include <vector>

#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/reclaim.h"
#include "anyctx/slab/slab_test_fixture.h"
#include "anyctx/testing/interrupts.h"

namespace anyctx {
namespace {

using testing::all_zero_bytes;
using testing::in_cpu_slab;
using testing::in_cpu_slab_of;
using testing::SlabTest;
using testing::stamp_intact;
using testing::stamp_object;

constexpr std::size_t kSizes[] = {0, 1, 7, 8, 9, 16, 17, 31, 32, 33, 64, 65, 100, 128, 129, 200, 256,
                                  257, 500, 512, 513, 1000, 1024, 1025, 2048, 2049, 4000, 4096, 4097, 8000, 8192};

std::size_t class_of(std::size_t size) { return std::max<std::size_t>(8, std::bit_ceil(std::max<std::size_t>(size, 1))); }

TEST_F(SlabTest, CacheIndexMapsEverySizeToTheSmallestClassThatFits) {
  for (std::size_t size = 0; size <= kKmallocMaxSize; ++size) {
    int idx = kmalloc_cache_index(size, kGfpKernel);
    ASSERT_GE(idx, 0);
    ASSERT_EQ(std::size_t{8} << idx, class_of(size)) << "size " << size;
    ASSERT_EQ(kmalloc_cache_index(size, kGfpKernel | kGfpAccount), idx + kKmallocClasses);
  }
  EXPECT_EQ(kmalloc_cache_index(kKmallocMaxSize + 1, kGfpKernel), -1);
}

TEST_F(SlabTest, EverySizeClassOnBothPathsGivesAlignedDistinctObjectsThatKeepTheirContent) {
  init_slab();
  struct Live {
    void* p;
    std::size_t size;
    bool nolock;
  };
  std::vector<Live> live;
  for (int round = 0; round < 3; ++round) {
    for (std::size_t size : kSizes) {
      for (bool nolock : {false, true}) {
        void* p = nolock ? kmalloc_nolock(size, Gfp{}) : kmalloc(size, kGfpKernel);
        ASSERT_NE(p, nullptr) << "size " << size;
        std::size_t cls = class_of(size);
        EXPECT_EQ(kmalloc_object_size(p), cls) << "size " << size;
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(p) % cls, 0u) << "size " << size << " not aligned to its class";
        stamp_object(p, std::max<std::size_t>(size, 1));
        live.push_back({p, std::max<std::size_t>(size, 1), nolock});
      }
    }
  }
  // Distinct and non-overlapping.
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges;
  for (const Live& l : live) {
    auto a = reinterpret_cast<std::uintptr_t>(l.p);
    ranges.emplace_back(a, a + kmalloc_object_size(l.p));
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i) EXPECT_LE(ranges[i - 1].second, ranges[i].first) << "objects overlap";
  expect_slab_invariants();
  for (const Live& l : live) {
    EXPECT_TRUE(stamp_intact(l.p, l.size)) << "content of a " << l.size << "-byte object changed";
    if (l.nolock) kfree_nolock(l.p); else kfree(l.p);
  }
  expect_all_returned();
}

TEST_F(SlabTest, ZeroedOnRequestOnBothPaths) {
  init_slab();
  for (std::size_t size : {8, 64, 1000, 4096, 8192}) {  // 4096 and 8192: clear_pages
    void* p = kmalloc(size, kGfpKernel);
    std::memset(p, 0xab, size);
    kfree(p);
    void* q = kmalloc(size, kGfpKernel | kGfpZero);
    ASSERT_EQ(q, p) << "the CPU freelist hands the hot object back";
    EXPECT_TRUE(all_zero_bytes(q, size)) << size;
    std::memset(q, 0xcd, size);
    kfree_nolock(q);
    void* r = kmalloc_nolock(size, kGfpZero);
    ASSERT_EQ(r, p);
    EXPECT_TRUE(all_zero_bytes(r, size)) << size;
    kfree(r);
  }
  expect_all_returned();
}

TEST_F(SlabTest, SizesAboveTheLargestClassGetNull) {
  init_slab();
  EXPECT_EQ(kmalloc(kKmallocMaxSize + 1, kGfpKernel), nullptr);
  EXPECT_EQ(kmalloc_nolock(1 << 20, Gfp{}), nullptr);
  kfree(nullptr);
  kfree_nolock(nullptr);
  expect_all_returned();
}

TEST_F(SlabTest, AccountedObjectsComeFromSeparateCachesAndSlabs) {
  init_slab();
  void* plain = kmalloc(64, kGfpKernel);
  void* charged = kmalloc(64, kGfpKernel | kGfpAccount);
  void* charged_nolock = kmalloc_nolock(64, kGfpAccount | kGfpZero);
  ASSERT_NE(charged_nolock, nullptr);
  int plain_idx = kmalloc_cache_index(64, kGfpKernel);
  int cg_idx = kmalloc_cache_index(64, kGfpAccount);
  EXPECT_STREQ(slab_cache_stats(plain_idx).name, "kmalloc-64");
  EXPECT_STREQ(slab_cache_stats(cg_idx).name, "kmalloc-cg-64");
  EXPECT_EQ(slab_cache_stats(plain_idx).objects_in_use, 1u);
  EXPECT_EQ(slab_cache_stats(cg_idx).objects_in_use, 2u);
  EXPECT_NE(virt_to_page(plain), virt_to_page(charged)) << "accounted objects never share a slab with plain ones";
  kfree(plain);
  kfree(charged);
  kfree_nolock(charged_nolock);
  expect_all_returned();
}

TEST_F(SlabTest, EmptySlabsGoBackToThePageAllocator) {
  init_slab(4096);
  std::vector<void*> objs;
  for (int i = 0; i < kKmallocClasses; ++i)
    for (unsigned n = 0; n < 3 * slab_cache_stats(i).objects_per_slab + 1; ++n) objs.push_back(kmalloc(8u << i, kGfpKernel));
  for (void* p : objs) ASSERT_NE(p, nullptr);
  std::size_t zone_before = zone_free_pages();
  for (int i = 0; i < kKmallocClasses; ++i) EXPECT_GE(slab_cache_stats(i).slabs, 4u) << slab_cache_stats(i).name;
  for (void* p : objs) kfree(p);
  // Without a drain each cache keeps at most kSlabKeepPartial empty slabs
  // plus its CPU slab; the rest went back as they emptied.
  for (int i = 0; i < kKmallocClasses; ++i) {
    SlabCacheStats s = slab_cache_stats(i);
    EXPECT_LE(s.slabs, static_cast<std::uint64_t>(kSlabKeepPartial) + 1) << s.name;
    EXPECT_GT(s.slabs_freed, 0u) << s.name;
  }
  drain_all_pages();
  EXPECT_GT(zone_free_pages(), zone_before);
  EXPECT_GT(slab_drain_all(), 0u);
  drain_all_pages();
  EXPECT_EQ(zone_free_pages(), arena_pages()) << "every slab page is back";
  expect_all_returned();
}

TEST_F(SlabTest, FreesFromAnotherCpuGoToTheSlabAndComeBackToItsCpu) {
  init_slab();
  std::vector<void*> objs;
  for (int i = 0; i < 40; ++i) objs.push_back(kmalloc(128, kGfpKernel));
  int idx = kmalloc_cache_index(128, kGfpKernel);
  std::thread([&] {
    CpuScope cpu;
    for (int i = 0; i < 20; ++i) kfree(objs[i]);  // remote: into the slab, under list_lock
    for (int i = 20; i < 30; ++i) kfree_nolock(objs[i]);  // not its CPU slab: deferred, drained at offline
  }).join();
  EXPECT_EQ(slab_deferred_pending(), 0u) << "the other CPU drained its deferred list going offline";
  EXPECT_EQ(slab_cache_stats(idx).objects_in_use, 10u);
  expect_slab_invariants();
  // Allocating past what this CPU's freelist holds brings the remotely
  // freed objects back into use.
  std::vector<void*> again;
  for (int i = 0; i < 60; ++i) again.push_back(kmalloc(128, kGfpKernel));
  std::set<void*> seen(again.begin(), again.end());
  EXPECT_EQ(seen.size(), again.size());
  for (int i = 0; i < 30; ++i) EXPECT_TRUE(seen.count(objs[i])) << "freed object " << i << " was not reused";
  for (void* p : again) kfree(p);
  for (int i = 30; i < 40; ++i) kfree(objs[i]);
  expect_all_returned();
}

// --- deferred frees and where they are drained ---------------------------------------

// Return: an object of kmalloc-64 that is not in this CPU's slab (its slab
// filled up), plus the rest of what was allocated to get it.
void* object_outside_cpu_slab(std::vector<void*>& rest) {
  void* first = kmalloc(64, kGfpKernel);
  unsigned per_slab = slab_cache_stats(kmalloc_cache_index(64, kGfpKernel)).objects_per_slab;
  for (unsigned i = 0; i < per_slab; ++i) rest.push_back(kmalloc(64, kGfpKernel));
  EXPECT_FALSE(in_cpu_slab(first, current_cpu()));
  return first;
}

// Return: an object of `rest` (in a full slab, not the CPU slab), taken out.
void* take_one(std::vector<void*>& rest) {
  void* p = rest.front();
  rest.erase(rest.begin());
  return p;
}

TEST_F(SlabTest, KfreeNolockOutsideTheCpuSlabFreesIntoItsSlab) {
  init_slab();
  std::vector<void*> rest;
  void* a = object_outside_cpu_slab(rest);
  void* b = take_one(rest);
  testing::run_in_nmi([&] { kfree_nolock(a); });
  kfree_nolock(b);  // task context, also outside the CPU slab
  int idx = kmalloc_cache_index(64, kGfpKernel);
  EXPECT_EQ(slab_cache_stats(idx).deferred_pushed, 0u) << "list_lock was free: no deferral";
  EXPECT_EQ(slab_cache_stats(idx).objects_in_use, rest.size());
  expect_slab_invariants();
  for (void* p : rest) kfree(p);
  expect_all_returned();
}

TEST_F(SlabTest, KfreeNolockWithTheListLockBusyDefersAndItsIrqDrains) {
  init_slab();
  std::vector<void*> rest;
  void* a = object_outside_cpu_slab(rest);
  void* b = take_one(rest);
  int idx = kmalloc_cache_index(64, kGfpKernel);
  {
    IrqSaveScope masked;  // the IRQ the first push raises waits for the unmask
    testing::kfree_nolock_list_locked(idx, {a, b});
    EXPECT_EQ(slab_deferred_pending(), 2u);
    EXPECT_EQ(slab_cache_stats(idx).deferred_pushed, 2u);
    EXPECT_EQ(slab_cache_stats(idx).objects_in_use, rest.size()) << "a deferred object already counts as freed";
    expect_slab_invariants();
  }
  EXPECT_EQ(slab_deferred_pending(), 0u) << "the raised IRQ ran at the unmask and its exit drained the list";
  EXPECT_EQ(slab_cache_stats(idx).deferred_freed, 2u);
  expect_slab_invariants();
  void* c = take_one(rest);
  testing::kfree_nolock_list_locked(idx, {c});
  EXPECT_EQ(slab_deferred_pending(), 0u) << "IRQs on: drained when the lock was dropped";
  for (void* p : rest) kfree(p);
  expect_all_returned();
}

// The fast paths never read the deferred list: the IRQ its first push
// raised frees it once the pushing frame (here: the masked section) is
// done. A kmalloc or kfree that leaves its fast path frees it first.
TEST_F(SlabTest, SlowPathsDrainTheDeferredListFastPathsLeaveItToItsIrq) {
  init_slab();
  std::vector<void*> rest;
  void* a = object_outside_cpu_slab(rest);
  int idx = kmalloc_cache_index(64, kGfpKernel);
  void* warm = kmalloc(16, kGfpKernel);  // kmalloc-16 has a CPU slab now: the next kmalloc(16) is a fast one
  IrqFlags masked = irq_save();          // keeps the raised IRQ pending
  testing::kfree_nolock_list_locked(idx, {a});
  EXPECT_EQ(slab_deferred_pending(), 1u);
  void* p = kmalloc(16, kGfpAtomic);
  kfree(warm);
  EXPECT_EQ(slab_deferred_pending(), 1u) << "the fast paths leave the list to its IRQ";
  void* z = kmalloc(16, kGfpAtomic | kGfpZero);
  EXPECT_EQ(slab_deferred_pending(), 0u) << "kmalloc's slow path drains first";
  testing::kfree_nolock_list_locked(idx, {take_one(rest)});
  EXPECT_EQ(slab_deferred_pending(), 1u);
  kfree(take_one(rest));  // in a full slab, not the CPU slab: the slow path
  EXPECT_EQ(slab_deferred_pending(), 0u) << "kfree's slow path drains first";
  testing::kfree_nolock_list_locked(idx, {take_one(rest)});
  EXPECT_EQ(slab_deferred_pending(), 1u);
  irq_restore(masked);
  EXPECT_EQ(slab_deferred_pending(), 0u) << "the raised IRQ ran at the unmask";
  kfree(p);
  kfree(z);
  for (void* q : rest) kfree(q);
  expect_all_returned();
}

TEST_F(SlabTest, DrainsTakeTheDeferredLists) {
  init_slab();
  std::vector<void*> rest;
  void* a = object_outside_cpu_slab(rest);
  int idx = kmalloc_cache_index(64, kGfpKernel);
  {
    IrqSaveScope masked;
    testing::kfree_nolock_list_locked(idx, {a});
    EXPECT_EQ(slab_drain_local(), 0u);
    EXPECT_EQ(slab_deferred_pending(), 0u) << "slab_drain_local";
  }
  std::vector<void*> others;
  std::atomic<int> phase{0};
  std::thread other([&] {
    CpuScope cpu;
    void* first = object_outside_cpu_slab(others);
    IrqSaveScope masked;
    testing::kfree_nolock_list_locked(idx, {first});
    phase.store(1);
    while (phase.load() != 2) std::this_thread::yield();
  });  // offline: its CPU slabs go back
  while (phase.load() != 1) std::this_thread::yield();
  EXPECT_EQ(slab_deferred_pending(), 1u);
  slab_drain_all();  // takes the other CPU's deferred list from here
  EXPECT_EQ(slab_deferred_pending(), 0u) << "slab_drain_all";
  phase.store(2);
  other.join();
  EXPECT_EQ(slab_deferred_pending(), 0u) << "CPU offline";
  expect_slab_invariants();
  for (void* p : rest) kfree(p);
  for (void* p : others) kfree(p);
  expect_all_returned();
}

TEST_F(SlabTest, TheShrinkerReturnsCachedSlabs) {
  init_slab();
  std::vector<void*> objs;
  for (int i = 0; i < 300; ++i) objs.push_back(kmalloc(256, kGfpKernel));
  for (void* p : objs) kfree(p);
  EXPECT_GT(slab_cache_stats(kmalloc_cache_index(256, kGfpKernel)).slabs, 0u);
  EXPECT_GT(reclaim_run(), 0u);
  EXPECT_EQ(slab_cache_stats(kmalloc_cache_index(256, kGfpKernel)).slabs, 0u);
  expect_all_returned();
}

TEST_F(SlabTest, KmallocReclaimsSlabsWhenTheArenaIsFull) {
  init_slab(256);
  // Fill the arena with empty slabs held as spares and CPU slabs of many
  // classes, then ask for pages: reclaim must give the empty slabs back.
  std::vector<void*> objs;
  for (int i = 0; i < kKmallocClasses; ++i)
    for (unsigned n = 0; n < slab_cache_stats(i).objects_per_slab * 2; ++n)
      if (void* p = kmalloc(8u << i, kGfpKernel)) objs.push_back(p);
  for (void* p : objs) kfree(p);
  std::vector<Page*> pages;
  while (Page* pg = alloc_pages(kGfpKernel, 0)) pages.push_back(pg);
  EXPECT_EQ(pages.size(), arena_pages()) << "reclaim emptied the slab caches";
  for (Page* pg : pages) free_pages(pg, 0);
  expect_all_returned();
}

// --- the next size class ----------------------------------------------------------------

std::atomic<int> g_retry_site_hits{0};
std::atomic<void*> g_nmi_result{nullptr};
std::atomic<std::size_t> g_nmi_size{0};

// An NMI at the first CPU slab lock an IRQ takes: the NMI interrupts the
// holder of the interrupt set's lock (task frames take none on their fast
// paths, and the NMI would not share their set anyway).
void nmi_once_at_cpu_locked(Site site) {
  if (site != Site::kSlabCpuLocked || !in_irq() || in_nmi() || g_retry_site_hits.fetch_add(1) != 0) return;
  testing::run_in_nmi([] { g_nmi_result.store(kmalloc_nolock(g_nmi_size.load(), Gfp{})); });
}

TEST_F(SlabTest, NolockRetriesOnceInTheNextClassWhenTheCpuLockIsHeld) {
  init_slab();
  int idx64 = kmalloc_cache_index(64, kGfpKernel);
  g_retry_site_hits.store(0);
  g_nmi_result.store(nullptr);
  g_nmi_size.store(64);
  void* irq_obj = nullptr;
  set_site_hook(nmi_once_at_cpu_locked);
  testing::run_in_irq([&] { irq_obj = kmalloc(64, kGfpAtomic); });  // holds kmalloc-64's CPU lock at the site
  set_site_hook(nullptr);
  void* nmi_obj = g_nmi_result.exchange(nullptr);
  ASSERT_NE(nmi_obj, nullptr);
  EXPECT_EQ(kmalloc_object_size(irq_obj), 64u);
  EXPECT_EQ(kmalloc_object_size(nmi_obj), 128u) << "served by kmalloc-128";
  EXPECT_EQ(slab_cache_stats(idx64).next_class_allocs, 1u);

  // The largest class has no next class.
  g_retry_site_hits.store(0);
  g_nmi_size.store(kKmallocMaxSize);
  int idx_max = kmalloc_cache_index(kKmallocMaxSize, kGfpKernel);
  std::uint64_t failed = slab_cache_stats(idx_max).alloc_failed;
  void* big = nullptr;
  set_site_hook(nmi_once_at_cpu_locked);
  testing::run_in_irq([&] { big = kmalloc(kKmallocMaxSize, kGfpAtomic); });
  set_site_hook(nullptr);
  EXPECT_EQ(g_nmi_result.load(), nullptr);
  EXPECT_EQ(slab_cache_stats(idx_max).alloc_failed, failed + 1);
  kfree(big);
  kfree(irq_obj);
  kfree_nolock(nmi_obj);
  expect_all_returned();
}

// --- the CPU freelist's count, derived from the pop and push counters ------------------

// The count is count_base + (frees - allocs) mod 2^32: it stays exact when
// the 64-bit counters wrap, through the fast paths (inline kmalloc, kfree)
// and the slow ones (a refill, the freeze of a new slab).
TEST_F(SlabTest, CpuFreelistCountStaysExactWhenTheCountersWrap) {
  init_slab();
  int idx = kmalloc_cache_index(64, kGfpKernel);
  detail::CpuSlab& cs = detail::g_cpu_slabs.on(current_cpu()).sets[detail::kTaskCpuSlabs][idx];
  std::vector<void*> objs{kmalloc(64, kGfpKernel)};
  std::uint32_t count = detail::cpu_free_count(cs);
  ASSERT_GT(count, 4u);
  // Move both counters by the same amount (the statistics' allocs - frees
  // stays), to 3 pops short of the 64-bit wrap of allocs, with frees far
  // from it: the count must not move.
  std::uint64_t allocs = cs.allocs.load();
  std::uint64_t shift = ~std::uint64_t{0} - 2 - allocs;
  cs.allocs.store(allocs + shift);
  cs.frees.store(cs.frees.load() + shift);
  ASSERT_EQ(detail::cpu_free_count(cs), count);
  expect_slab_invariants();

  for (int i = 0; i < 6; ++i) {
    objs.push_back(kmalloc(64, kGfpKernel));
    EXPECT_EQ(detail::cpu_free_count(cs), count - 1 - i) << "pop " << i;
  }
  EXPECT_LT(cs.allocs.load(), allocs + shift) << "allocs wrapped";
  expect_slab_invariants();
  for (int i = 0; i < 3; ++i) {
    kfree(objs.back());
    objs.pop_back();
    EXPECT_EQ(detail::cpu_free_count(cs), count - 5 + i) << "push " << i;
  }
  expect_slab_invariants();
  // Empty the CPU freelist: the refill that follows sets the count from
  // the slab it freezes, against the wrapped counters.
  while (detail::cpu_free_count(cs) > 0) objs.push_back(kmalloc(64, kGfpKernel));
  objs.push_back(kmalloc(64, kGfpKernel));
  EXPECT_GT(detail::cpu_free_count(cs), 0u);
  expect_slab_invariants();
  for (void* p : objs) kfree(p);
  expect_slab_invariants();
  cs.allocs.store(cs.allocs.load() - shift);
  cs.frees.store(cs.frees.load() - shift);
  expect_all_returned();
}

// --- kmalloc_nolock refills while list_lock is busy ------------------------------------

TEST_F(SlabTest, NolockRefillWithTheListLockBusyRetiresTheCpuSlab) {
  init_slab();
  int idx = kmalloc_cache_index(64, kGfpKernel);
  detail::CpuSlab& cs = detail::g_cpu_slabs.on(current_cpu()).sets[detail::kTaskCpuSlabs][idx];
  std::vector<void*> objs{kmalloc(64, kGfpKernel)};
  detail::Slab* first = detail::slab_of(objs[0]);
  while (detail::cpu_free_count(cs) > 0) objs.push_back(kmalloc(64, kGfpKernel));
  Spinlock& lock = detail::g_caches[idx].list_lock;
  IrqFlags flags = lock.lock_irqsave();  // as an NMI finds it when it interrupted a slow path
  void* p = kmalloc_nolock(64, Gfp{});
  lock.unlock_irqrestore(flags);
  ASSERT_NE(p, nullptr) << "a new CPU slab; the old one retired, still frozen";
  EXPECT_NE(detail::slab_of(p), first);
  EXPECT_EQ(cs.retired, first);
  EXPECT_EQ(first->cpu, current_cpu());
  expect_slab_invariants();
  objs.push_back(p);
  for (void* q : objs) kfree(q);  // the retired slab's objects go to its own freelist
  EXPECT_EQ(first->free.count, first->objects);
  expect_slab_invariants();
  expect_all_returned();  // the drain unfreezes and releases it
}

// --- an NMI frees into a CPU slab whose lock the task holds -----------------------------

std::atomic<void*> g_given{nullptr};
std::atomic<int> g_target{-1};
std::atomic<bool> g_fired{false};

void nmi_frees_given_at_target(Site site) {
  if (static_cast<int>(site) != g_target.load() || !in_task() || g_fired.exchange(true)) return;
  testing::run_in_nmi([] { kfree_nolock(g_given.exchange(nullptr)); });
}

class SlabLockedFreeTest : public SlabTest, public ::testing::WithParamInterface<Site> {};

// The NMI lands while the task holds kmalloc-64's CPU lock, first in a
// push (kfree), then in a pop (kmalloc); each time the object it frees is
// in that very CPU slab, so it may not touch the CPU freelist: it frees into
// the slab's own freelist under list_lock, where remote frees go.
TEST_P(SlabLockedFreeTest, KfreeNolockIntoTheHeldCpuSlabGoesToTheSlabFreelist) {
  init_slab();
  int idx = kmalloc_cache_index(64, kGfpKernel);
  void* objs[3];
  for (void*& p : objs) {
    p = kmalloc(64, kGfpKernel);
    ASSERT_TRUE(in_cpu_slab(p, current_cpu()));
  }
  const detail::Slab* slab = detail::slab_of(objs[0]);
  g_target.store(static_cast<int>(GetParam()));
  set_site_hook(nmi_frees_given_at_target);

  g_given.store(objs[0]);
  g_fired.store(false);
  kfree(objs[1]);  // a push onto the CPU freelist
  EXPECT_TRUE(g_fired.load());
  EXPECT_EQ(g_given.load(), nullptr) << "the NMI ran";
  EXPECT_EQ(slab->free.count, 1u) << "the NMI found the CPU slab lock held and freed into the slab";
  EXPECT_EQ(slab_cache_stats(idx).deferred_pushed, 0u);
  expect_slab_invariants();

  g_given.store(objs[2]);
  g_fired.store(false);
  void* again = kmalloc(64, kGfpKernel);  // a pop
  EXPECT_TRUE(g_fired.load());
  EXPECT_EQ(g_given.load(), nullptr) << "the NMI ran";
  EXPECT_EQ(slab->free.count, 2u);
  EXPECT_EQ(slab_cache_stats(idx).objects_in_use, 1u);
  set_site_hook(nullptr);
  expect_slab_invariants();

  kfree(again);
  expect_all_returned();
}

INSTANTIATE_TEST_SUITE_P(WhileHeld, SlabLockedFreeTest,
                         ::testing::Values(Site::kSlabCpuLocked, Site::kSlabFreelistEdit, Site::kSlabCpuUnlock),
                         [](const ::testing::TestParamInfo<Site>& info) { return std::string(site_name(info.param)); });

// --- an IRQ lands inside a task frame's CPU slab section ------------------------------

std::atomic<void*> g_irq_objs[3];

void irq_allocates_and_frees_at_target(Site site) {
  if (static_cast<int>(site) != g_target.load() || !in_task() || g_fired.exchange(true)) return;
  testing::run_in_irq([] {
    for (auto& slot : g_irq_objs) slot.store(kmalloc(64, kGfpAtomic));
    kfree(g_irq_objs[2].exchange(nullptr));
    kfree(g_given.exchange(nullptr));
  });
}

class SlabIrqInCpuSectionTest : public SlabTest, public ::testing::WithParamInterface<Site> {};

// The task frames' fast paths take no lock and mask no IRQs: an IRQ lands
// inside the task's kmalloc or kfree of kmalloc-64, in the middle of its
// section on the task CPU slab. The IRQ's kmallocs come from the interrupt
// frames' CPU slab, never the task's; its kfree of an object of the task's
// CPU slab goes into that slab under list_lock; nothing overlaps, nothing is
// lost, and the counters still add up.
TEST_P(SlabIrqInCpuSectionTest, IrqInATaskSectionUsesTheInterruptCpuSlabs) {
  init_slab();
  int idx = kmalloc_cache_index(64, kGfpKernel);
  std::vector<void*> mine;
  for (int i = 0; i < 3; ++i) mine.push_back(kmalloc(64, kGfpKernel));
  g_target.store(static_cast<int>(GetParam()));
  for (bool in_free : {false, true}) {
    for (auto& slot : g_irq_objs) slot.store(nullptr);
    g_given.store(mine.back());  // in the CPU slab: the IRQ's kfree must not touch its freelist
    mine.pop_back();
    g_fired.store(false);
    set_site_hook(irq_allocates_and_frees_at_target);
    if (in_free) {
      ASSERT_TRUE(in_cpu_slab(mine.front(), current_cpu()));
      kfree(mine.front());  // a push onto the CPU freelist
      mine.erase(mine.begin());
    } else {
      mine.push_back(kmalloc(64, kGfpKernel));
    }
    set_site_hook(nullptr);
    ASSERT_TRUE(g_fired.load()) << site_name(GetParam());
    EXPECT_EQ(g_given.load(), nullptr) << "the IRQ ran inside the section";
    for (int i = 0; i < 2; ++i) {
      void* p = g_irq_objs[i].load();
      ASSERT_NE(p, nullptr);
      EXPECT_FALSE(in_cpu_slab_of(p, current_cpu(), detail::kTaskCpuSlabs)) << "the IRQ used the task CPU slab";
      EXPECT_TRUE(in_cpu_slab_of(p, current_cpu(), detail::kInterruptCpuSlabs)) << "the IRQ's own CPU slab";
      for (void* q : mine) EXPECT_NE(p, q);
      mine.push_back(p);
    }
    EXPECT_NE(g_irq_objs[0].load(), g_irq_objs[1].load());
    EXPECT_EQ(slab_cache_stats(idx).objects_in_use, mine.size());
    expect_slab_invariants();
  }
  for (void* p : mine) kfree(p);
  expect_all_returned();
}

INSTANTIATE_TEST_SUITE_P(WhileHeld, SlabIrqInCpuSectionTest,
                         ::testing::Values(Site::kSlabCpuLocked, Site::kSlabFreelistEdit, Site::kSlabCpuUnlock),
                         [](const ::testing::TestParamInfo<Site>& info) { return std::string(site_name(info.param)); });

// --- threads that are not CPUs ------------------------------------------------------------

TEST_F(SlabTest, ThreadThatIsNotACpuGetsNullFromNolockAndCanStillFree) {
  init_slab();
  std::vector<void*> objs;
  for (int i = 0; i < 100; ++i) objs.push_back(kmalloc(32, kGfpKernel));
  void* got = &got;
  std::thread([&] {
    got = kmalloc_nolock(32, Gfp{});
    for (void* p : objs) kfree_nolock(p);  // no CPU lists: into the slabs under list_lock
  }).join();
  EXPECT_EQ(got, nullptr);
  EXPECT_EQ(slab_cache_stats(kmalloc_cache_index(32, kGfpKernel)).objects_in_use, 0u);
  expect_all_returned();
}

// The list_lock is busy (another CPU parks inside it): a thread that is not
// a CPU defers onto the shared list, which a drain empties.
std::atomic<int> g_parker_cpu{-1};
std::atomic<bool> g_park{false};
std::atomic<bool> g_parked{false};

void park_in_list_lock(Site site) {
  if (site == Site::kSlabListLocked && current_cpu() == g_parker_cpu.load() && g_park.load()) {
    g_parked.store(true);
    while (g_park.load()) std::this_thread::yield();
  }
}

TEST_F(SlabTest, ThreadThatIsNotACpuDefersOntoTheSharedListWhenListLockIsBusy) {
  init_slab();
  void* a = kmalloc(32, kGfpKernel);
  void* b = kmalloc(32, kGfpKernel);
  g_parker_cpu.store(-1);
  g_parked.store(false);
  set_site_hook(park_in_list_lock);
  g_park.store(true);
  std::thread parker([&] {
    CpuScope cpu;
    g_parker_cpu.store(cpu.id());
    kfree(a);  // not its CPU slab: free_slow parks holding kmalloc-32's list_lock
  });
  while (!g_parked.load()) std::this_thread::yield();
  std::thread([&] { kfree_nolock(b); }).join();
  EXPECT_EQ(slab_deferred_pending(), 1u) << "on the shared deferred list";
  g_park.store(false);
  parker.join();
  set_site_hook(nullptr);
  EXPECT_EQ(slab_deferred_pending(), 1u);
  slab_drain_all();
  EXPECT_EQ(slab_deferred_pending(), 0u);
  expect_all_returned();
}

// --- the oracle itself --------------------------------------------------------------------

TEST_F(SlabTest, InvariantCheckNamesACorruptedCounterListAndLostObject) {
  init_slab();
  std::vector<void*> objs;
  for (int i = 0; i < 10; ++i) objs.push_back(kmalloc(64, kGfpKernel));
  int idx = kmalloc_cache_index(64, kGfpKernel);
  expect_slab_invariants();

  detail::slab_stat_add(idx, detail::kSlabStatAllocs, 1);
  InvariantResult r = slab_check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.what, "kmalloc-64: 10 objects marked allocated, the counters say 11 are in use (allocs - frees)");
  detail::slab_stat_add(idx, detail::kSlabStatFrees, 1);
  expect_slab_invariants();

  detail::slab_stat_add(idx, detail::kSlabStatSlabsAllocated, 1);
  r = slab_check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.what, "kmalloc-64: 1 live slabs, the counters say 2");
  detail::slab_stat_add(idx, detail::kSlabStatSlabsFreed, 1);
  expect_slab_invariants();

  detail::CpuSlab& cs = detail::g_cpu_slabs.on(current_cpu()).sets[detail::kTaskCpuSlabs][idx];
  cs.free.count_base += 1;
  r = slab_check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.what.find("kmalloc-64 CPU freelist holds 54 objects, its count says 55"), std::string::npos) << r.what;
  cs.free.count_base -= 1;

  // Lose the head of the CPU freelist: the object is free but on no list.
  std::uintptr_t head = cs.free.head;
  std::uintptr_t next = detail::decode_link(detail::g_caches[idx].secret, detail::load_link_word(head), head);
  cs.free.head = next;
  cs.free.count_base -= 1;
  r = slab_check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.what.find(": object 10 is free but on no freelist or deferred list (lost)"), std::string::npos) << r.what;
  cs.free.head = head;
  cs.free.count_base += 1;
  expect_slab_invariants();

  // The copies the fast paths read instead of the cache and the slab.
  cs.base += 64;
  r = slab_check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.what.find("CPU freelist: its copy of the slab's base differs from the slab's"), std::string::npos) << r.what;
  cs.base -= 64;
  cs.object_mask ^= 8;
  r = slab_check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.what.find("its copies of the cache's secret and object mask differ"), std::string::npos) << r.what;
  cs.object_mask ^= 8;
  cs.slab->cache_index ^= 1;
  r = slab_check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.what.find("its copies of the cache's index and object mask differ"), std::string::npos) << r.what;
  cs.slab->cache_index ^= 1;
  expect_slab_invariants();

  for (void* p : objs) kfree(p);
  expect_all_returned();
}

}  // namespace
}  // namespace anyctx
