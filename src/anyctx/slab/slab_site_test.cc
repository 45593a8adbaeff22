// NMIs at every slab site: at each task-context hit of the site an NMI
// allocates and frees with the nolock entry points (and once frees an object
// of the CPU slab the task may be holding). Nothing may be lost, handed out
// twice or corrupted, and everything goes back at the end.
#include <gtest/gtest.h>

#include <atomic>
#include <vector>

#include "anyctx/slab/slab_test_fixture.h"

namespace anyctx {
namespace {

using testing::all_zero_bytes;
using testing::SlabTest;
using testing::stamp_intact;
using testing::stamp_object;

constexpr int kMaxNmisPerTest = 400;
constexpr std::size_t kNmiSizes[] = {16, 64, 200, 4096};

std::atomic<void*> g_given{nullptr};
std::atomic<int> g_target{-1};
std::atomic<int> g_fired{0};
std::atomic<int> g_nmi_ok{0};
std::atomic<int> g_nmi_null{0};
std::atomic<int> g_nmi_not_zeroed{0};
std::atomic<int> g_nmi_corrupt{0};

void nmi_allocates_and_frees(InterruptKind kind) {
  if (kind != InterruptKind::kNmi) return;
  void* objs[std::size(kNmiSizes)];
  for (std::size_t i = 0; i < std::size(kNmiSizes); ++i) {
    objs[i] = kmalloc_nolock(kNmiSizes[i], kGfpZero);
    if (objs[i] == nullptr) {
      g_nmi_null.fetch_add(1);
      continue;
    }
    g_nmi_ok.fetch_add(1);
    if (!all_zero_bytes(objs[i], kNmiSizes[i])) g_nmi_not_zeroed.fetch_add(1);
    stamp_object(objs[i], kNmiSizes[i]);
  }
  for (std::size_t i = 0; i < std::size(kNmiSizes); ++i) {
    if (objs[i] == nullptr) continue;
    if (!stamp_intact(objs[i], kNmiSizes[i])) g_nmi_corrupt.fetch_add(1);
    kfree_nolock(objs[i]);
  }
  if (void* given = g_given.exchange(nullptr)) kfree_nolock(given);
}

void nmi_at_target_site(Site site) {
  if (static_cast<int>(site) != g_target.load() || !in_task()) return;
  if (g_fired.fetch_add(1) >= kMaxNmisPerTest) return;
  raise_nmi();
}

// Reaches every slab site in task context: new slabs, CPU freelist pushes
// and pops, frees into full slabs under list_lock, nolock frees that defer,
// the drain at the start of a spinning slow path, partial slabs becoming
// CPU slabs again, the drains.
void slab_workload(std::vector<void*>& live) {
  std::vector<void*> a;
  for (int i = 0; i < 200; ++i) a.push_back(kmalloc(64, kGfpKernel));
  for (int i = 0; i < 90; i += 2) kfree(a[i]);
  for (int i = 1; i < 90; i += 2) kfree_nolock(a[i]);
  IrqFlags masked = irq_save();  // the deferrals' IRQ waits: kmalloc's slow path (kGfpZero) drains
  for (int i = 90; i < 100; ++i) testing::kfree_nolock_list_locked(kmalloc_cache_index(64, kGfpKernel), {a[i]});
  void* x = kmalloc(64, kGfpAtomic | kGfpZero);
  irq_restore(masked);
  std::vector<void*> b;
  for (int i = 0; i < 150; ++i) b.push_back(kmalloc(64, kGfpKernel | kGfpZero));
  for (int i = 0; i < 40; ++i) b.push_back(kmalloc_nolock(500, Gfp{}));
  for (int i = 100; i < 200; ++i) live.push_back(a[i]);
  for (void* p : b) live.push_back(p);
  live.push_back(x);
  for (void* p : live) {
    ASSERT_NE(p, nullptr);
    stamp_object(p, 64);
  }
  for (std::size_t i = 0; i < live.size(); ++i) {
    EXPECT_TRUE(stamp_intact(live[i], 64)) << "object " << i << " changed under the task";
    if (i % 3 == 0) kfree_nolock(live[i]); else kfree(live[i]);
  }
  slab_drain_local();
  slab_drain_all();
}

class SlabSiteTest : public SlabTest, public ::testing::WithParamInterface<Site> {};

TEST_P(SlabSiteTest, NmisAtTheSiteAllocateAndFreeWithoutLoss) {
  init_slab(2048);
  const Site site = GetParam();
  const int idx64 = kmalloc_cache_index(64, kGfpKernel);
  for (auto* counter : {&g_fired, &g_nmi_ok, &g_nmi_null, &g_nmi_not_zeroed, &g_nmi_corrupt}) counter->store(0);
  g_given.store(kmalloc(64, kGfpKernel));
  ASSERT_TRUE(testing::in_cpu_slab(g_given.load(), current_cpu()));
  g_target.store(static_cast<int>(site));
  set_interrupt_handler(InterruptKind::kNmi, nmi_allocates_and_frees);
  set_site_hook(nmi_at_target_site);
  std::vector<void*> live;
  slab_workload(live);
  set_site_hook(nullptr);

  EXPECT_GT(g_fired.load(), 0) << "the workload never reached " << site_name(site);
  EXPECT_EQ(g_given.load(), nullptr) << "the NMI ran";
  EXPECT_GT(g_nmi_ok.load(), 0);
  EXPECT_EQ(g_nmi_not_zeroed.load(), 0);
  EXPECT_EQ(g_nmi_corrupt.load(), 0);
  EXPECT_EQ(g_nmi_ok.load() + g_nmi_null.load(),
            static_cast<int>(std::size(kNmiSizes)) * std::min(g_fired.load(), kMaxNmisPerTest));
  if (site == Site::kSlabCpuLocked || site == Site::kSlabFreelistEdit || site == Site::kSlabCpuUnlock) {
    // The NMIs interrupted the task inside its section on its kmalloc-64
    // CPU slab: they allocate from the interrupt frames' CPU slabs, whose
    // locks no frame below them holds, so none went to the next class.
    EXPECT_EQ(slab_cache_stats(idx64).next_class_allocs, 0u) << site_name(site);
  }
  if (site == Site::kSlabDeferredPush || site == Site::kSlabDeferredDrain) {
    // NMIs that interrupted a deferral or a drain deferred their own frees.
    EXPECT_GT(slab_cache_stats(idx64).deferred_pushed, 0u) << site_name(site);
  }
  expect_all_returned();
}

INSTANTIATE_TEST_SUITE_P(EverySite, SlabSiteTest,
                         ::testing::Values(Site::kSlabCpuLocked, Site::kSlabFreelistEdit, Site::kSlabCpuUnlock,
                                           Site::kSlabListLocked, Site::kSlabListEdit, Site::kSlabListUnlock,
                                           Site::kSlabNewSlab, Site::kSlabDeferredPush, Site::kSlabDeferredDrain),
                         [](const ::testing::TestParamInfo<Site>& info) { return std::string(site_name(info.param)); });

}  // namespace
}  // namespace anyctx
