// pair_loop: N alloc+free pairs of each fast path, nothing else, for counting
// instructions per call with callgrind (perf counters do not work on every
// machine this runs on):
//
//   valgrind --tool=callgrind --callgrind-out-file=cg.out build/release/bench/pair_loop 100000
//   callgrind_annotate --inclusive=yes cg.out | grep -E '_pairs\('
//
// The fast paths are inline, so each loop below holds its pair's
// instructions: a loop's inclusive count divided by N + 1000 (the warm-up)
// is the cost of one pair, loop included. alloc_pages_nolock and the slow
// paths are calls, counted inclusively; the nolock page pair zeroes its
// page, so its count is mostly memset.
#include <cstdio>
#include <cstdlib>
#include <string_view>

#include "anyctx/ctx/cpu.h"
#include "anyctx/page/page_alloc.h"
#include "anyctx/slab/slab.h"

namespace {

using namespace anyctx;

__attribute__((noinline)) void page_pairs(int n) {
  for (int i = 0; i < n; ++i) {
    Page* p = alloc_pages(kGfpKernel, 0);
    asm volatile("" ::"r"(p));
    free_pages(p, 0);
  }
}

__attribute__((noinline)) void page_nolock_pairs(int n) {
  for (int i = 0; i < n; ++i) {
    Page* p = alloc_pages_nolock(Gfp{}, 0);
    asm volatile("" ::"r"(p));
    free_pages_nolock(p, 0);
  }
}

__attribute__((noinline)) void kmalloc_pairs(int n) {
  for (int i = 0; i < n; ++i) {
    void* p = kmalloc(64, kGfpKernel);
    asm volatile("" ::"r"(p));
    kfree(p);
  }
}

__attribute__((noinline)) void kmalloc_nolock_pairs(int n) {
  for (int i = 0; i < n; ++i) {
    void* p = kmalloc_nolock(64, Gfp{});
    asm volatile("" ::"r"(p));
    kfree_nolock(p);
  }
}

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 100000;
  if (n < 1) {
    std::fprintf(stderr, "usage: pair_loop [N >= 1]\n");
    return 2;
  }
  if (std::string_view err = page_allocator_init({}); !err.empty()) {
    std::fprintf(stderr, "pair_loop: page_allocator_init: %.*s\n", static_cast<int>(err.size()), err.data());
    return 1;
  }
  if (std::string_view err = slab_init(); !err.empty()) {
    std::fprintf(stderr, "pair_loop: slab_init: %.*s\n", static_cast<int>(err.size()), err.data());
    return 1;
  }
  {
    CpuScope cpu;
    for (int round : {1000, n}) {  // warm-up, then the measured loops
      page_pairs(round);
      page_nolock_pairs(round);
      kmalloc_pairs(round);
      kmalloc_nolock_pairs(round);
    }
  }
  slab_shutdown();
  page_allocator_shutdown();
  return 0;
}
