// anyctx/page/page_clear.h — internal: zeroing whole pages (kGfpZero, and
// every alloc_pages_nolock block). Not part of the API.
//
// Contract:
//  - clear_pages(addr, pages) writes zero to `pages` whole pages starting at
//    `addr`, which is page-aligned, and nothing else.
//  - How is chosen once, when the library is loaded, from what the CPU has:
//    32-byte vector stores where it has AVX2 (on the AMD EPYC measured,
//    twice as fast as glibc's memset of a 4 KiB page, which uses
//    `rep stosb` there: docs/benchmarks.md), else memset.
//  - The page arrives unpoisoned (prep_new_page): the stores are ordinary
//    ones, so ASan and TSan see them as they see memset's.
// Context: any. No lock, no allocation, no call that could take one.
// Signal safety: async-signal-safe.
#pragma once

#include <cstddef>
#include <cstdint>

namespace anyctx::detail {

enum class PageClear : std::uint8_t {
  kMemset = 0,  // the C library's memset; zero, so before the choice is made
  kAvx2,    // 32-byte aligned vector stores (x86-64 with AVX2)
};

void clear_pages(void* addr, std::size_t pages);

// Return: the method clear_pages() uses on this machine.
PageClear page_clear_method();

// Return: whether `method` runs on this machine (kMemset: always).
bool page_clear_runs_here(PageClear method);

// clear_pages() with `method` (tests: every method that runs on the
// machine is checked, not only the one chosen). A method that does not run
// here is a fatal report (page misuse), not an illegal instruction.
void clear_pages_with(PageClear method, void* addr, std::size_t pages);

}  // namespace anyctx::detail
