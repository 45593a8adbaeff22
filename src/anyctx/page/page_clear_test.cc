// clear_pages: every method that runs on this machine zeroes exactly the
// pages it is given; the method chosen is one that runs here; and the
// allocator's zeroed blocks (kGfpZero, alloc_pages_nolock) of every order
// come back zero after a free of dirty ones.
#include "anyctx/page/page_clear.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "anyctx/page/page_alloc.h"
#include "anyctx/testing/page_fixture.h"

namespace anyctx {
namespace {

using detail::PageClear;

constexpr PageClear kMethods[] = {PageClear::kMemset, PageClear::kAvx2};

// Return: the index of the first byte of [p, p + n) that is not `value`, or n.
std::size_t first_not(const unsigned char* p, std::size_t n, unsigned char value) {
  for (std::size_t i = 0; i < n; ++i)
    if (p[i] != value) return i;
  return n;
}

TEST(PageClearTest, EveryMethodThatRunsHereZeroesExactlyItsPages) {
  constexpr std::size_t kPages = 8;
  std::unique_ptr<unsigned char, decltype(&std::free)> buf(
      static_cast<unsigned char*>(std::aligned_alloc(kPageSize, kPages * kPageSize)), &std::free);
  ASSERT_NE(buf, nullptr);
  int ran = 0;
  for (PageClear method : kMethods) {
    if (!detail::page_clear_runs_here(method)) continue;
    ++ran;
    for (std::size_t first = 0; first < 3; ++first) {
      for (std::size_t count = 1; first + count + 1 <= kPages; count += 2) {
        std::memset(buf.get(), 0xa5, kPages * kPageSize);
        detail::clear_pages_with(method, buf.get() + first * kPageSize, count);
        SCOPED_TRACE(::testing::Message() << "method " << static_cast<int>(method) << ", pages " << first << ".."
                                          << first + count - 1);
        EXPECT_EQ(first_not(buf.get(), first * kPageSize, 0xa5), first * kPageSize) << "a page before was written";
        EXPECT_EQ(first_not(buf.get() + first * kPageSize, count * kPageSize, 0), count * kPageSize)
            << "a byte of the cleared pages is not zero";
        std::size_t after = (first + count) * kPageSize;
        EXPECT_EQ(first_not(buf.get() + after, kPages * kPageSize - after, 0xa5), kPages * kPageSize - after)
            << "a page after was written";
      }
    }
  }
  EXPECT_GE(ran, 1);  // kMemset runs everywhere
}

TEST(PageClearTest, TheChosenMethodRunsHereAndMemsetRunsEverywhere) {
  EXPECT_TRUE(detail::page_clear_runs_here(detail::page_clear_method()));
  EXPECT_TRUE(detail::page_clear_runs_here(PageClear::kMemset));
#if !defined(__x86_64__)
  EXPECT_FALSE(detail::page_clear_runs_here(PageClear::kAvx2));
#else
  EXPECT_EQ(detail::page_clear_runs_here(PageClear::kAvx2), static_cast<bool>(__builtin_cpu_supports("avx2")));
  EXPECT_EQ(detail::page_clear_method(),
            __builtin_cpu_supports("avx2") ? PageClear::kAvx2 : PageClear::kMemset);
#endif
}

using PageClearAllocTest = testing::PageAllocTest;

// Dirty blocks of each order go back to the pcp or the buddy lists; the
// zeroed allocations that follow reuse them (LIFO) and must be all zero,
// every page of the block, not only the head page.
TEST_F(PageClearAllocTest, ZeroedBlocksOfEveryOrderAreZeroOnEveryPage) {
  init(testing::config_of(256));
  for (unsigned order = 0; order <= 3; ++order) {
    for (bool nolock : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "order " << order << (nolock ? ", alloc_pages_nolock" : ", kGfpZero"));
      std::vector<Page*> dirty;
      for (int i = 0; i < 4; ++i) {
        Page* p = alloc_pages(kGfpKernel, order);
        ASSERT_NE(p, nullptr);
        std::memset(page_address(p), 0x5a, (std::size_t{1} << order) * kPageSize);
        dirty.push_back(p);
      }
      for (Page* p : dirty) free_pages(p, order);
      for (int i = 0; i < 4; ++i) {
        Page* p = nolock ? alloc_pages_nolock(Gfp{}, order) : alloc_pages(kGfpKernel | kGfpZero, order);
        ASSERT_NE(p, nullptr);
        EXPECT_TRUE(testing::all_zero(p, order));
        dirty[i] = p;
      }
      for (Page* p : dirty) nolock ? free_pages_nolock(p, order) : free_pages(p, order);
    }
  }
  expect_everything_free();
}

}  // namespace
}  // namespace anyctx
