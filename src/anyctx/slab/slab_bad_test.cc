// Bad input and context rules: every bad free gets a report naming the
// cache, the slab and the reason (abort by default, report-count-and-leak by
// policy); a corrupted freelist link is reported, not followed; misuse of
// the spinning entry points is a context-rule report.
#include <gtest/gtest.h>

#include <thread>
#include <vector>

#include "anyctx/slab/slab_test_fixture.h"
#include "anyctx/testing/interrupts.h"

namespace anyctx {
namespace {

using testing::SlabTest;

TEST_F(SlabTest, DefaultPolicyAbortsInDebugAndSanitizerBuilds) {
  if (kDebug || ANYCTX_ASAN || ANYCTX_TSAN) EXPECT_EQ(slab_bad_free_policy(), BadPagePolicy::kAbort);
}

// The task frames' fast paths take no lock, but a fast path inside a
// section of its own frame's slow path (a path that re-entered the slab
// while it held the CPU slab lock) is reported in debug builds, as a lock()
// of the held lock would be.
void kmalloc_holding(detail::CpuSlab& cs) ANYCTX_NO_TSA {
  cs.lock.lock();
  (void)kmalloc(64, kGfpKernel);
}

void kfree_holding(detail::CpuSlab& cs, void* p) ANYCTX_NO_TSA {
  cs.lock.lock();
  kfree(p);
}

TEST_F(SlabTest, FastPathInsideItsOwnSlowPathSectionIsReportedInDebugBuilds) {
  if (!kDebug) GTEST_SKIP() << "a debug-build check";
  init_slab();
  void* p = kmalloc(64, kGfpKernel);
  int idx = kmalloc_cache_index(64, kGfpKernel);
  detail::CpuSlab& cs = detail::g_cpu_slabs.on(current_cpu()).sets[detail::kTaskCpuSlabs][idx];
  EXPECT_DEATH(kmalloc_holding(cs), "nested critical section: local lock 'slab.cpu_lock'");
  EXPECT_DEATH(kfree_holding(cs, p), "nested critical section: local lock 'slab.cpu_lock'");
  kfree(p);
}

TEST_F(SlabTest, FreeOfAPointerOutsideTheArenaIsReported) {
  init_slab();
  int local = 0;
  EXPECT_DEATH(kfree(&local),
               "bad slab free: kfree\\(0x[0-9a-f]+\\): no cache: not a slab object: outside the page arena");
  EXPECT_DEATH(kfree_nolock(&local),
               "bad slab free: kfree_nolock\\(0x[0-9a-f]+\\): no cache: not a slab object: outside the page arena");
}

TEST_F(SlabTest, FreeOfAPageThatIsNotASlabIsReported) {
  init_slab();
  Page* page = alloc_pages(kGfpKernel, 1);
  void* inside = static_cast<char*>(page_address(page)) + kPageSize + 64;
  EXPECT_DEATH(kfree(inside), "bad slab free: kfree\\(0x[0-9a-f]+\\): no cache: not a slab object: pfn [0-9]+ "
                              "\\(page state tail\\) is not a slab page");
  EXPECT_DEATH(kfree_nolock(page_address(page)),
               "bad slab free: kfree_nolock\\(0x[0-9a-f]+\\): no cache: not a slab object: pfn [0-9]+ \\(page state "
               "allocated\\) is not a slab page");
  // A page that was a slab and went back is no slab any more.
  void* obj = kmalloc(512, kGfpKernel);
  kfree(obj);
  slab_drain_all();
  EXPECT_DEATH(kfree(obj), "bad slab free: kfree\\(0x[0-9a-f]+\\): no cache: not a slab object: pfn [0-9]+ "
                           "\\(page state (pcp|buddy|tail)\\) is not a slab page");
  free_pages(page, 1);
  expect_all_returned();
}

TEST_F(SlabTest, FreeInsideAnObjectIsReported) {
  init_slab();
  auto* p = static_cast<char*>(kmalloc(100, kGfpKernel));
  EXPECT_DEATH(kfree(p + 8), "bad slab free: kfree\\(0x[0-9a-f]+\\): cache kmalloc-128, slab pfn [0-9]+: not the start "
                             "of an object: 8 bytes into object 0");
  auto* q = static_cast<char*>(kmalloc(100, kGfpKernel));
  EXPECT_DEATH(kfree_nolock(q + 127), "bad slab free: kfree_nolock\\(0x[0-9a-f]+\\): cache kmalloc-128, slab pfn "
                                      "[0-9]+: not the start of an object: 127 bytes into object 1");
  kfree(p);
  kfree(q);
  expect_all_returned();
}

TEST_F(SlabTest, DoubleFreeIsReportedOnEveryPath) {
  init_slab();
  void* p = kmalloc(64, kGfpKernel);
  void* keep = kmalloc(64, kGfpKernel);
  kfree(p);
  EXPECT_DEATH(kfree(p), "bad slab free: kfree\\(0x[0-9a-f]+\\): cache kmalloc-64, slab pfn [0-9]+: double free: "
                         "object 0 is already free");
  EXPECT_DEATH(kfree_nolock(p), "bad slab free: kfree_nolock\\(0x[0-9a-f]+\\): cache kmalloc-64, slab pfn [0-9]+: "
                                "double free: object 0 is already free");
  // A second free while the first still waits on the deferred list.
  std::vector<void*> fill;
  void* deferred = kmalloc(64, kGfpKernel);
  while (testing::in_cpu_slab(deferred, current_cpu())) fill.push_back(kmalloc(64, kGfpKernel));
  IrqFlags masked = irq_save();  // keeps the deferred list's IRQ pending
  testing::kfree_nolock_list_locked(kmalloc_cache_index(64, kGfpKernel), {deferred});
  ASSERT_EQ(slab_deferred_pending(), 1u);
  EXPECT_DEATH(testing::run_in_nmi([&] { kfree_nolock(deferred); }),
               "bad slab free: kfree_nolock\\(0x[0-9a-f]+\\): cache kmalloc-64, slab pfn [0-9]+: double free: object "
               "[0-9]+ is already free");
  irq_restore(masked);
  kfree(keep);
  for (void* f : fill) kfree(f);
  expect_all_returned();
}

TEST_F(SlabTest, ReportAndLeakPolicyCountsAndLeavesTheObjectAlone) {
  init_slab();
  set_slab_bad_free_policy(BadPagePolicy::kReportAndLeak);
  auto* p = static_cast<char*>(kmalloc(32, kGfpKernel));
  int local = 0;
  std::uint64_t before = slab_bad_free_reports();
  ::testing::internal::CaptureStderr();
  kfree(p + 4);
  kfree_nolock(&local);
  kfree(p);
  kfree(p);  // double
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(slab_bad_free_reports() - before, 3u);
  EXPECT_NE(err.find("not the start of an object: 4 bytes into object 0"), std::string::npos) << err;
  EXPECT_NE(err.find("outside the page arena"), std::string::npos) << err;
  EXPECT_NE(err.find("double free: object 0 is already free"), std::string::npos) << err;
  expect_all_returned();
}

// A use-after-free write lands on the link inside a free object: the next
// allocation that follows it reports the cache and slab instead of handing
// out a pointer of the attacker's choosing.
void corrupt_link(void* obj) {
  ANYCTX_UNPOISON(obj, sizeof(std::uintptr_t));
  auto* link = static_cast<volatile std::uintptr_t*>(obj);
  *link = *link ^ 0x0000100000000040ull;
  ANYCTX_POISON(obj, sizeof(std::uintptr_t));
}

TEST_F(SlabTest, CorruptedFreelistLinkIsReportedNotFollowed) {
  init_slab();
  void* a = kmalloc(64, kGfpKernel);
  void* b = kmalloc(64, kGfpKernel);
  kfree(a);  // a heads the CPU freelist; its link leads to object 2
  corrupt_link(a);
  EXPECT_DEATH((void)kmalloc(64, kGfpKernel),
               "slab freelist corruption: cache kmalloc-64, slab pfn [0-9]+, CPU freelist \\(on cpu 0\\): free object "
               "0x[0-9a-f]+ \\(object 0\\): its link decodes to 0x[0-9a-f]+, which is not an object of this slab; "
               "not followed");
  EXPECT_DEATH((void)kmalloc_nolock(64, Gfp{}), "slab freelist corruption: cache kmalloc-64");
  // Moved along with its list into the slab, it is still caught when used.
  EXPECT_DEATH(
      {
        slab_drain_local();
        (void)kmalloc(64, kGfpKernel);
      },
      "slab freelist corruption: cache kmalloc-64, slab pfn [0-9]+, CPU freelist");

  // Under the leak policy: reported once, the list abandoned, allocation
  // goes on from a new slab, and the oracle still holds.
  set_slab_bad_free_policy(BadPagePolicy::kReportAndLeak);
  std::uint64_t before = slab_bad_free_reports();
  ::testing::internal::CaptureStderr();
  void* c = kmalloc(64, kGfpKernel);
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(slab_bad_free_reports() - before, 1u);
  EXPECT_NE(err.find("slab freelist corruption: cache kmalloc-64"), std::string::npos) << err;
  ASSERT_NE(c, nullptr);
  EXPECT_NE(virt_to_page(c), virt_to_page(a)) << "the corrupted slab is not used again";
  expect_slab_invariants();
  kfree(b);
  kfree(c);
  slab_drain_all();
  expect_slab_invariants();
}

TEST_F(SlabTest, CorruptedDeferredLinkIsReportedNotFollowed) {
  init_slab();
  std::vector<void*> fill;
  void* a = kmalloc(64, kGfpKernel);
  void* b = kmalloc(64, kGfpKernel);
  while (testing::in_cpu_slab(a, current_cpu())) fill.push_back(kmalloc(64, kGfpKernel));
  IrqFlags masked = irq_save();  // keeps the deferred list's IRQ pending
  testing::kfree_nolock_list_locked(kmalloc_cache_index(64, kGfpKernel), {a, b});  // b heads, its link leads to a
  corrupt_link(b);
  EXPECT_DEATH(slab_drain_local(),
               "slab freelist corruption: deferred-free list: the link in object 0x[0-9a-f]+ \\(cache kmalloc-64, "
               "slab pfn [0-9]+\\) decodes to 0x[0-9a-f]+, which is not a free slab object; not followed");
  corrupt_link(b);  // repaired
  irq_restore(masked);
  for (void* f : fill) kfree(f);
  expect_all_returned();
}

TEST_F(SlabTest, NolockGfpWithOtherBitsIsReported) {
  init_slab();
  EXPECT_DEATH((void)kmalloc_nolock(64, kGfpAtomic),
               "bad gfp: kmalloc_nolock\\(\\): gfp may carry only kGfpZero and kGfpAccount, got 0x6");
  EXPECT_DEATH((void)kmalloc_nolock(64, kGfpNowarn | kGfpZero), "bad gfp: kmalloc_nolock\\(\\): .*got 0x28");
}

TEST_F(SlabTest, SpinningCallsOutsideTheirContextsAreReported) {
  init_slab();
  EXPECT_DEATH(std::thread([] { (void)kmalloc(16, kGfpKernel); }).join(),
               "not a cpu: kmalloc\\(\\) called on a thread that is not a logical CPU");
  void* p = kmalloc(16, kGfpKernel);
  EXPECT_DEATH(std::thread([&] { kfree(p); }).join(), "not a cpu: kfree\\(\\) called on a thread that is not a logical CPU");
  EXPECT_DEATH(testing::run_in_nmi([] { (void)kmalloc(16, kGfpAtomic); }),
               "context rule: kmalloc\\(\\) in NMI context: use kmalloc_nolock\\(\\)");
  EXPECT_DEATH(testing::run_in_nmi([&] { kfree(p); }), "context rule: kfree\\(\\) in NMI context: use kfree_nolock\\(\\)");
  EXPECT_DEATH(testing::run_in_irq([] { (void)kmalloc(16, kGfpKernel); }),
               "context rule: kmalloc\\(\\) with kGfpDirectReclaim in irq context");
  // The same calls in their own contexts are fine.
  testing::run_in_irq([&] {
    void* q = kmalloc(16, kGfpAtomic);
    kfree(q);
  });
  kfree(p);
  expect_all_returned();
}

#if ANYCTX_ASAN
TEST_F(SlabTest, AsanCatchesUseAfterFreeAndWritesPastTheRequestedSize) {
  init_slab();
  auto* p = static_cast<volatile char*>(kmalloc(100, kGfpKernel));
  p[99] = 1;  // fine: inside the request
  EXPECT_DEATH(p[100] = 2, "AddressSanitizer: use-after-poison");
  kfree(const_cast<char*>(p));
  EXPECT_DEATH(p[50] = 3, "AddressSanitizer: use-after-poison");
  EXPECT_DEATH(p[0] = 3, "AddressSanitizer: use-after-poison");
  expect_all_returned();
}
#endif

}  // namespace
}  // namespace anyctx
