// bad_page: each misuse gets a report naming the pfn, its state and the
// reason; abort by default, report-count-and-leak by policy.
#include <gtest/gtest.h>

#include "anyctx/testing/interrupts.h"
#include "anyctx/testing/page_fixture.h"

namespace anyctx {
namespace {

using testing::config_of;
using testing::PageAllocTest;

TEST_F(PageAllocTest, DefaultPolicyAbortsInDebugAndSanitizerBuilds) {
  if (kDebug || ANYCTX_ASAN || ANYCTX_TSAN) EXPECT_EQ(bad_page_policy(), BadPagePolicy::kAbort);
}

TEST_F(PageAllocTest, DescriptorOutsideTheArenaIsReported) {
  init(config_of(64));
  Page stray;
  EXPECT_DEATH(free_pages(&stray, 0),
               "bad page: free_pages\\(\\): descriptor 0x[0-9a-f]+: not a page descriptor of the arena");
  Page* p = alloc_pages(kGfpKernel, 0);
  Page* inside = reinterpret_cast<Page*>(reinterpret_cast<char*>(p) + 8);
  EXPECT_DEATH(free_pages_nolock(inside, 0), "bad page: free_pages_nolock\\(\\): descriptor .*: not a page descriptor");
  free_pages(p, 0);
}

TEST_F(PageAllocTest, MisalignedFreeIsReported) {
  init(config_of(64));
  Page* a = alloc_pages(kGfpKernel, 0);
  Page* b = alloc_pages(kGfpKernel, 0);
  Page* odd = page_to_pfn(a) % 2 == 1 ? a : b;
  EXPECT_DEATH(free_pages(odd, 1),
               "bad page: free_pages\\(\\): pfn [0-9]+ \\(state allocated, order 0, refcount 1\\): misaligned free: "
               "pfn is not a multiple of 2\\^1");
  free_pages(a, 0);
  free_pages(b, 0);
}

TEST_F(PageAllocTest, WrongOrderFreeIsReported) {
  init(config_of(64));
  Page* p = alloc_pages(kGfpKernel, 2);
  EXPECT_DEATH(free_pages(p, 1),
               "bad page: free_pages\\(\\): pfn [0-9]+ \\(state allocated, order 2, refcount 1\\): freed with order 1 "
               "but allocated with order 2");
  EXPECT_DEATH(free_pages(p + 1, 0),
               "bad page: free_pages\\(\\): pfn [0-9]+ \\(state tail, .*\\): not the head of a block: inside the "
               "allocated block at pfn [0-9]+ of order 2");
  free_pages(p, 2);
}

TEST_F(PageAllocTest, DoubleFreeIsReported) {
  init(config_of(64));
  Page* p = alloc_pages(kGfpKernel, 0);
  free_pages(p, 0);
  EXPECT_DEATH(free_pages(p, 0),
               "bad page: free_pages\\(\\): pfn [0-9]+ \\(state pcp, order 0, refcount 0\\): double free: already free "
               "on a pcp list");
  drain_all_pages();  // now it is merged into a larger free block
  EXPECT_DEATH(free_pages_nolock(p, 0),
               "bad page: free_pages_nolock\\(\\): pfn [0-9]+ \\(state (tail|buddy), .*\\): double free: "
               "(inside the free block at pfn [0-9]+ of order [0-9]+|already free on the buddy lists)");
}

TEST_F(PageAllocTest, FreeWithReferencesLeftIsReported) {
  init(config_of(64));
  Page* p = alloc_pages(kGfpKernel, 0);
  get_page(p);
  EXPECT_DEATH(free_pages(p, 0),
               "bad page: free_pages\\(\\): pfn [0-9]+ \\(state allocated, order 0, refcount 2\\): freed with "
               "references left: refcount 2");
  put_page(p);
  free_pages(p, 0);
}

TEST_F(PageAllocTest, ReportAndLeakPolicyCountsAndLeavesThePageAlone) {
  init(config_of(64));
  set_bad_page_policy(BadPagePolicy::kReportAndLeak);
  Page* p = alloc_pages(kGfpKernel, 1);
  std::uint64_t before = bad_page_reports();
  ::testing::internal::CaptureStderr();
  free_pages(p, 0);      // wrong order: reported, leaked
  free_pages(p + 1, 0);  // tail: reported
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(bad_page_reports() - before, 2u);
  EXPECT_NE(err.find("freed with order 0 but allocated with order 1"), std::string::npos) << err;
  EXPECT_EQ(page_refcount(p), 1) << "the page is left as it was";
  InvariantResult r = check_invariants();
  EXPECT_TRUE(r.ok) << r.what;
  free_pages(p, 1);
  set_bad_page_policy(BadPagePolicy::kAbort);
  expect_everything_free();
}

TEST_F(PageAllocTest, SpinningFreeFromNmiIsReported) {
  init(config_of(64));
  Page* p = alloc_pages(kGfpKernel, 0);
  EXPECT_DEATH(testing::run_in_nmi([&] { free_pages(p, 0); }),
               "context rule: free_pages\\(\\) in NMI context: use free_pages_nolock\\(\\)");
  free_pages(p, 0);
}

#if ANYCTX_ASAN
TEST_F(PageAllocTest, AsanReportsUseAfterFreeIntoAFreedPage) {
  init(config_of(64));
  Page* p = alloc_pages(kGfpKernel, 0);
  auto* bytes = static_cast<volatile char*>(page_address(p));
  bytes[100] = 1;  // fine while allocated
  free_pages(p, 0);
  EXPECT_DEATH(bytes[100] = 2, "AddressSanitizer: use-after-poison");
}
#endif

}  // namespace
}  // namespace anyctx
