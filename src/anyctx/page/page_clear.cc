// anyctx/page/page_clear.cc — zeroing whole pages (page_clear.h).
#include "anyctx/page/page_clear.h"

#include <cstring>

#include "anyctx/ctx/config.h"
#include "anyctx/ctx/report.h"
#include "anyctx/page/page.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace anyctx::detail {
namespace {

#if defined(__x86_64__)
// Four aligned 32-byte stores per turn, 32 turns (not unrolled further:
// 1 KiB of stores would buy nothing a loop branch costs). no_builtin keeps
// clang from seeing a loop of zero stores and calling memset instead, which
// is what this function exists to avoid (GCC keeps the loop as written, and
// does not know the attribute).
#if defined(__clang__)
#define ANYCTX_NO_MEMSET_CALL __attribute__((no_builtin("memset")))
#else
#define ANYCTX_NO_MEMSET_CALL
#endif
[[gnu::target("avx2")]] ANYCTX_NO_MEMSET_CALL void clear_page_avx2(void* addr) {
  auto* p = static_cast<__m256i*>(addr);
  const __m256i zero = _mm256_setzero_si256();
#if defined(__clang__)
#pragma clang loop unroll(disable)
#endif
  for (std::size_t i = 0; i < kPageSize / sizeof(__m256i); i += 4) {
    _mm256_store_si256(p + i, zero);
    _mm256_store_si256(p + i + 1, zero);
    _mm256_store_si256(p + i + 2, zero);
    _mm256_store_si256(p + i + 3, zero);
  }
}

bool cpu_has_avx2() {
  __builtin_cpu_init();  // may run before the runtime's own initializer
  return __builtin_cpu_supports("avx2");
}
#else
bool cpu_has_avx2() { return false; }
#endif

// Chosen when the library is loaded (a dynamic initializer: never from a
// signal handler). Before it runs the variable is zero, which is kMemset:
// a page zeroed from another file's static initializer is zeroed all the
// same.
const PageClear g_method = cpu_has_avx2() ? PageClear::kAvx2 : PageClear::kMemset;

// Zeroes with `method`, which runs here (unchecked: the hot path).
void clear_with(PageClear method, char* page, std::size_t pages) {
#if defined(__x86_64__)
  if (method == PageClear::kAvx2) {
    for (std::size_t i = 0; i < pages; ++i) clear_page_avx2(page + i * kPageSize);
    return;
  }
#endif
  std::memset(page, 0, pages * kPageSize);
}

}  // namespace

PageClear page_clear_method() { return g_method; }

bool page_clear_runs_here(PageClear method) {
  switch (method) {
    case PageClear::kMemset: return true;
    case PageClear::kAvx2: return cpu_has_avx2();
  }
  return false;
}

void clear_pages_with(PageClear method, void* addr, std::size_t pages) {
  if (!page_clear_runs_here(method)) {
    (Report("page misuse") << "clear_pages_with(): method " << static_cast<int>(method)
                           << " does not run on this machine (page_clear_runs_here() says which do)")
        .fatal();
  }
  clear_with(method, static_cast<char*>(addr), pages);
}

void clear_pages(void* addr, std::size_t pages) { clear_with(g_method, static_cast<char*>(addr), pages); }

}  // namespace anyctx::detail
