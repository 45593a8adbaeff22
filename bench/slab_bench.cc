// kmalloc + kfree and kmalloc_nolock + kfree_nolock pairs per size class,
// beside glibc malloc + free; zeroed ones (kmalloc with kGfpZero, a slow
// path) beside glibc calloc + free; and a batch of 256 allocations then 256
// frees, which runs the refill and retire slow paths as well.
//
//   cmake --preset release -B build/release && cmake --build build/release &&
//   build/release/bench/slab_bench
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <vector>

#include "anyctx/ctx/cpu.h"
#include "anyctx/page/page_alloc.h"
#include "anyctx/slab/slab.h"

namespace {

using namespace anyctx;

// The allocators live for the whole run; each benchmark is a CPU.
struct Setup {
  Setup() {
    PageAllocatorConfig c;
    if (!page_allocator_init(c).empty() || !slab_init().empty()) std::abort();
  }
} g_setup;

void BM_Kmalloc(benchmark::State& state) {
  CpuScope cpu;
  auto size = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = kmalloc(size, kGfpKernel);
    benchmark::DoNotOptimize(p);
    kfree(p);
  }
}

void BM_KmallocNolock(benchmark::State& state) {
  CpuScope cpu;
  auto size = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = kmalloc_nolock(size, Gfp{});
    benchmark::DoNotOptimize(p);
    kfree_nolock(p);
  }
}

void BM_Malloc(benchmark::State& state) {
  auto size = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::malloc(size);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}

void BM_KmallocZeroed(benchmark::State& state) {
  CpuScope cpu;
  auto size = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = kmalloc(size, kGfpKernel | kGfpZero);
    benchmark::DoNotOptimize(p);
    kfree(p);
  }
}

void BM_Calloc(benchmark::State& state) {
  auto size = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = std::calloc(1, size);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}

constexpr int kBatch = 256;

void BM_KmallocBatch(benchmark::State& state) {
  CpuScope cpu;
  auto size = static_cast<std::size_t>(state.range(0));
  std::vector<void*> objs(kBatch);
  for (auto _ : state) {
    for (void*& p : objs) p = kmalloc(size, kGfpKernel);
    benchmark::DoNotOptimize(objs.data());
    for (void* p : objs) kfree(p);
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}

void BM_KmallocNolockBatch(benchmark::State& state) {
  CpuScope cpu;
  auto size = static_cast<std::size_t>(state.range(0));
  std::vector<void*> objs(kBatch);
  for (auto _ : state) {
    for (void*& p : objs) p = kmalloc_nolock(size, Gfp{});
    benchmark::DoNotOptimize(objs.data());
    for (void* p : objs) kfree_nolock(p);
  }
  state.SetItemsProcessed(state.iterations() * kBatch);
}

#define ANYCTX_SLAB_SIZES Arg(16)->Arg(64)->Arg(256)->Arg(1024)->Arg(4096)
BENCHMARK(BM_Kmalloc)->ANYCTX_SLAB_SIZES;
BENCHMARK(BM_KmallocNolock)->ANYCTX_SLAB_SIZES;
BENCHMARK(BM_Malloc)->ANYCTX_SLAB_SIZES;
BENCHMARK(BM_KmallocZeroed)->ANYCTX_SLAB_SIZES->Arg(8192);
BENCHMARK(BM_Calloc)->ANYCTX_SLAB_SIZES->Arg(8192);
BENCHMARK(BM_KmallocBatch)->ANYCTX_SLAB_SIZES;
BENCHMARK(BM_KmallocNolockBatch)->ANYCTX_SLAB_SIZES;

}  // namespace

BENCHMARK_MAIN();
