// Order-0..3 page allocation pairs through the spinning and the nolock entry
// points, and the zeroing that the nolock path always does.
//
//   cmake --workflow --preset release && build/release/bench/page_bench
#include <benchmark/benchmark.h>

#include <cstring>

#include "anyctx/ctx/cpu.h"
#include "anyctx/page/page_alloc.h"

namespace {

using namespace anyctx;

// The allocator and this thread's CPU live for the whole run.
struct Setup {
  Setup() {
    PageAllocatorConfig c;
    std::string_view err = page_allocator_init(c);
    if (!err.empty()) std::abort();
  }
} g_setup;

void BM_AllocPages(benchmark::State& state) {
  CpuScope cpu;
  unsigned order = static_cast<unsigned>(state.range(0));
  for (auto _ : state) {
    Page* p = alloc_pages(kGfpKernel, order);
    benchmark::DoNotOptimize(p);
    free_pages(p, order);
  }
}

void BM_AllocPagesNolock(benchmark::State& state) {
  CpuScope cpu;
  unsigned order = static_cast<unsigned>(state.range(0));
  for (auto _ : state) {
    Page* p = alloc_pages_nolock(Gfp{}, order);
    benchmark::DoNotOptimize(p);
    free_pages_nolock(p, order);
  }
}

// What the nolock pair pays for zeroing: one memset of the block.
void BM_ZeroBlock(benchmark::State& state) {
  CpuScope cpu;
  unsigned order = static_cast<unsigned>(state.range(0));
  Page* p = alloc_pages(kGfpKernel, order);
  void* addr = page_address(p);
  for (auto _ : state) {
    std::memset(addr, 0, kPageSize << order);
    benchmark::ClobberMemory();
  }
  free_pages(p, order);
}

BENCHMARK(BM_AllocPages)->DenseRange(0, 3);
BENCHMARK(BM_AllocPagesNolock)->DenseRange(0, 3);
BENCHMARK(BM_ZeroBlock)->DenseRange(0, 3);

}  // namespace

BENCHMARK_MAIN();
