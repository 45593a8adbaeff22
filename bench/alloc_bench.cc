// Allocation pairs and a producer/consumer hand-off, anyctx against the
// malloc a user would otherwise link. One source, one binary per subject
// (bench/subject.h): alloc_bench_anyctx, alloc_bench_glibc,
// alloc_bench_jemalloc, alloc_bench_tcmalloc, alloc_bench_mimalloc. A row of
// the anyctx binary and its counterpart in a peer binary do the same work:
//
//   anyctx                                  peer
//   page/alloc_pages          (order 0)     page/malloc_4096
//   page/alloc_pages_nolock   (zeroes)      page/calloc_4096
//   small/kmalloc/N                         small/malloc/N      N = 16..4096
//   small/kmalloc_nolock/N                  small/malloc/N
//   prodcons/kmalloc/64                     prodcons/malloc/64
//   prodcons/kmalloc_nolock/64              prodcons/malloc/64
//   prodcons/alloc_pages                    prodcons/malloc_4096
//   prodcons/alloc_pages_nolock             prodcons/calloc_4096
//   ref/atomic_or_and_pair, ref/memset_4096, ref/clear_pages_4096 (anyctx
//   binary only: what two atomic RMWs, the C library's memset of a page and
//   the page allocator's own zeroing of one (page_clear.h, the method this
//   machine gets) cost here, to explain the rows above)
//
// Pair rows: each thread allocates and frees one object per iteration
// (threads independent; for anyctx each thread is its own CPU). Prodcons
// rows: two threads, thread 0 allocates and hands the object over a
// single-producer/single-consumer ring to thread 1, which frees it (for
// anyctx on another CPU, so every free is remote). Every result goes through
// benchmark::DoNotOptimize, so clang cannot pair up and delete a
// malloc/free.
//
//   build/release/bench/alloc_bench_jemalloc [--threads=1,2] [benchmark flags]
//
// --threads lists the thread counts of the pair rows (default 1,2).
#include <benchmark/benchmark.h>
#include <sched.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "subject.h"

#if ANYCTX_BENCH_ANYCTX
#include "anyctx/ctx/cpu.h"
#include "anyctx/page/page_alloc.h"
#include "anyctx/page/page_clear.h"
#include "anyctx/slab/slab.h"
#endif

namespace {

#if ANYCTX_BENCH_ANYCTX
using namespace anyctx;

// A benchmark thread is a logical CPU for the duration of one run.
using ThreadCpu = CpuScope;

void init_allocator() {
  PageAllocatorConfig c;
  std::string_view err = page_allocator_init(c);
  if (!err.empty() || !slab_init().empty()) {
    std::fprintf(stderr, "alloc_bench: init failed: %.*s\n", static_cast<int>(err.size()), err.data());
    std::exit(1);
  }
}
#else
struct ThreadCpu {};
void init_allocator() {}
#endif

[[maybe_unused]] constexpr std::size_t kPage = 4096;

// --- pair rows -----------------------------------------------------------------

#if ANYCTX_BENCH_ANYCTX
void BM_AllocPages(benchmark::State& state) {
  ThreadCpu cpu;
  for (auto _ : state) {
    Page* p = alloc_pages(kGfpKernel, 0);
    benchmark::DoNotOptimize(p);
    free_pages(p, 0);
  }
}

void BM_AllocPagesNolock(benchmark::State& state) {
  ThreadCpu cpu;
  std::int64_t failed = 0;
  for (auto _ : state) {
    Page* p = alloc_pages_nolock(Gfp{}, 0);
    benchmark::DoNotOptimize(p);
    if (ANYCTX_UNLIKELY(p == nullptr)) {
      ++failed;
      continue;
    }
    free_pages_nolock(p, 0);
  }
  state.counters["failed"] = benchmark::Counter(static_cast<double>(failed));
}

void BM_Kmalloc(benchmark::State& state) {
  ThreadCpu cpu;
  auto size = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) {
    void* p = kmalloc(size, kGfpKernel);
    benchmark::DoNotOptimize(p);
    kfree(p);
  }
}

void BM_KmallocNolock(benchmark::State& state) {
  ThreadCpu cpu;
  auto size = static_cast<std::size_t>(state.range(0));
  std::int64_t failed = 0;
  for (auto _ : state) {
    void* p = kmalloc_nolock(size, Gfp{});
    benchmark::DoNotOptimize(p);
    // A predicted branch, as in BM_AllocPagesNolock: `failed += p ==
    // nullptr` costs the row three instructions a pair that the peers'
    // rows, which count nothing, do not pay.
    if (ANYCTX_UNLIKELY(p == nullptr)) {
      ++failed;
      continue;
    }
    kfree_nolock(p);
  }
  state.counters["failed"] = benchmark::Counter(static_cast<double>(failed));
}
// Reference costs that explain the rows above (not compared with peers):
// the two atomic RMWs that each kmalloc+kfree pair makes on its slab's
// allocation bitmap, and zeroing a 4 KiB page, as the C library's memset
// does it and as alloc_pages_nolock does it (clear_pages).
void BM_RefRmwPair(benchmark::State& state) {
  alignas(64) static std::atomic<std::uint64_t> word{0};
  for (auto _ : state) {
    word.fetch_or(1, std::memory_order_relaxed);
    word.fetch_and(~std::uint64_t{1}, std::memory_order_relaxed);
  }
}

void zero_with_memset(void* page) { std::memset(page, 0, kPage); }
void zero_with_clear_pages(void* page) { detail::clear_pages(page, 1); }

template <void (*Zero)(void*)>
void BM_RefZeroPage(benchmark::State& state) {
  ThreadCpu cpu;
  Page* p = alloc_pages(kGfpKernel, 0);
  void* addr = page_address(p);
  for (auto _ : state) {
    Zero(addr);
    benchmark::ClobberMemory();
  }
  free_pages(p, 0);
}
#else
void BM_Malloc4096(benchmark::State& state) {
  for (auto _ : state) {
    void* p = std::malloc(kPage);
    benchmark::DoNotOptimize(p);
    std::free(p);
  }
}

void BM_Calloc4096(benchmark::State& state) {
  for (auto _ : state) {
    void* p = std::calloc(1, kPage);
    benchmark::DoNotOptimize(p);
    std::free(p);
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
#endif

// --- producer / consumer ------------------------------------------------------

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Waits politely: the two threads may share a core with other work.
struct Backoff {
  unsigned spins = 0;
  void wait() {
    cpu_relax();
    if (++spins % 64 == 0) sched_yield();
  }
};

// Single producer, single consumer; both threads run the same number of
// iterations, so the ring is empty whenever a run ends.
struct Ring {
  static constexpr std::size_t kCapacity = 256;
  alignas(64) std::atomic<std::size_t> head{0};  // producer writes
  alignas(64) std::atomic<std::size_t> tail{0};  // consumer writes
  alignas(64) void* slots[kCapacity];

  void push(void* p, std::size_t& h, std::size_t& tail_seen) {
    Backoff b;
    while (h - tail_seen == kCapacity) {
      tail_seen = tail.load(std::memory_order_acquire);
      if (h - tail_seen == kCapacity) b.wait();
    }
    slots[h % kCapacity] = p;
    head.store(++h, std::memory_order_release);
  }
  void* pop(std::size_t& t, std::size_t& head_seen) {
    Backoff b;
    while (head_seen == t) {
      head_seen = head.load(std::memory_order_acquire);
      if (head_seen == t) b.wait();
    }
    void* p = slots[t % kCapacity];
    tail.store(++t, std::memory_order_release);
    return p;
  }
};
Ring g_ring;

// Alloc and Free are callables; Alloc returns an object (nullptr counts as a
// failed allocation and is handed over all the same; Free ignores it).
template <class Alloc, class Free>
void producer_consumer(benchmark::State& state, Alloc alloc, Free free_fn) {
  [[maybe_unused]] ThreadCpu cpu;
  std::int64_t failed = 0;
  if (state.thread_index() == 0) {
    std::size_t h = g_ring.head.load(std::memory_order_relaxed);
    std::size_t tail_seen = g_ring.tail.load(std::memory_order_acquire);
    for (auto _ : state) {
      void* p = alloc();
      benchmark::DoNotOptimize(p);
      failed += p == nullptr;
      g_ring.push(p, h, tail_seen);
    }
  } else {
    std::size_t t = g_ring.tail.load(std::memory_order_relaxed);
    std::size_t head_seen = g_ring.head.load(std::memory_order_acquire);
    for (auto _ : state) {
      void* p = g_ring.pop(t, head_seen);
      benchmark::DoNotOptimize(p);
      if (p != nullptr) free_fn(p);
    }
  }
  state.counters["failed"] = benchmark::Counter(static_cast<double>(failed));
}

#if ANYCTX_BENCH_ANYCTX
void BM_PcKmalloc(benchmark::State& state) {
  producer_consumer(state, [] { return kmalloc(64, kGfpKernel); }, [](void* p) { kfree(p); });
}
void BM_PcKmallocNolock(benchmark::State& state) {
  producer_consumer(state, [] { return kmalloc_nolock(64, Gfp{}); }, [](void* p) { kfree_nolock(p); });
}
void BM_PcAllocPages(benchmark::State& state) {
  producer_consumer(
      state, [] { return static_cast<void*>(alloc_pages(kGfpKernel, 0)); },
      [](void* p) { free_pages(static_cast<Page*>(p), 0); });
}
void BM_PcAllocPagesNolock(benchmark::State& state) {
  producer_consumer(
      state, [] { return static_cast<void*>(alloc_pages_nolock(Gfp{}, 0)); },
      [](void* p) { free_pages_nolock(static_cast<Page*>(p), 0); });
}
#else
void BM_PcMalloc64(benchmark::State& state) {
  producer_consumer(state, [] { return std::malloc(64); }, [](void* p) { std::free(p); });
}
void BM_PcMalloc4096(benchmark::State& state) {
  producer_consumer(state, [] { return std::malloc(kPage); }, [](void* p) { std::free(p); });
}
void BM_PcCalloc4096(benchmark::State& state) {
  producer_consumer(state, [] { return std::calloc(1, kPage); }, [](void* p) { std::free(p); });
}
#endif

// --- registration ---------------------------------------------------------------

std::vector<int> parse_threads(int& argc, char** argv) {
  std::vector<int> threads{1, 2};
  int out = 1;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind("--threads=", 0) == 0) {
      threads.clear();
      std::string list = a.substr(10);
      std::size_t pos = 0;
      while (pos <= list.size()) {
        std::size_t comma = list.find(',', pos);
        if (comma == std::string::npos) comma = list.size();
        int n = std::atoi(list.substr(pos, comma - pos).c_str());
        if (n > 0) threads.push_back(n);
        pos = comma + 1;
      }
    } else {
      argv[out++] = argv[i];
    }
  }
  argc = out;
  return threads;
}

void register_all(const std::vector<int>& threads) {
  using benchmark::RegisterBenchmark;
  std::vector<benchmark::internal::Benchmark*> pairs;
  const int sizes[] = {16, 32, 64, 128, 256, 512, 1024, 2048, 4096};
#if ANYCTX_BENCH_ANYCTX
  pairs.push_back(RegisterBenchmark("page/alloc_pages", BM_AllocPages));
  pairs.push_back(RegisterBenchmark("page/alloc_pages_nolock", BM_AllocPagesNolock));
  for (int s : sizes) pairs.push_back(RegisterBenchmark("small/kmalloc", BM_Kmalloc)->Arg(s));
  for (int s : sizes) pairs.push_back(RegisterBenchmark("small/kmalloc_nolock", BM_KmallocNolock)->Arg(s));
  RegisterBenchmark("prodcons/kmalloc/64", BM_PcKmalloc)->Threads(2)->UseRealTime();
  RegisterBenchmark("prodcons/kmalloc_nolock/64", BM_PcKmallocNolock)->Threads(2)->UseRealTime();
  RegisterBenchmark("prodcons/alloc_pages", BM_PcAllocPages)->Threads(2)->UseRealTime();
  RegisterBenchmark("prodcons/alloc_pages_nolock", BM_PcAllocPagesNolock)->Threads(2)->UseRealTime();
  RegisterBenchmark("ref/atomic_or_and_pair", BM_RefRmwPair)->UseRealTime();
  RegisterBenchmark("ref/memset_4096", BM_RefZeroPage<zero_with_memset>)->UseRealTime();
  RegisterBenchmark("ref/clear_pages_4096", BM_RefZeroPage<zero_with_clear_pages>)->UseRealTime();
#else
  pairs.push_back(RegisterBenchmark("page/malloc_4096", BM_Malloc4096));
  pairs.push_back(RegisterBenchmark("page/calloc_4096", BM_Calloc4096));
  for (int s : sizes) pairs.push_back(RegisterBenchmark("small/malloc", BM_Malloc)->Arg(s));
  RegisterBenchmark("prodcons/malloc/64", BM_PcMalloc64)->Threads(2)->UseRealTime();
  RegisterBenchmark("prodcons/malloc_4096", BM_PcMalloc4096)->Threads(2)->UseRealTime();
  RegisterBenchmark("prodcons/calloc_4096", BM_PcCalloc4096)->Threads(2)->UseRealTime();
#endif
  for (auto* b : pairs) {
    for (int t : threads) b->Threads(t);
    b->UseRealTime();
  }
}

}  // namespace

int main(int argc, char** argv) {
  std::string subject = bench::verify_subject();
  benchmark::AddCustomContext("subject", bench::kSubject);
  benchmark::AddCustomContext("subject_check", subject);
  std::vector<int> threads = parse_threads(argc, argv);
  init_allocator();
  register_all(threads);
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
