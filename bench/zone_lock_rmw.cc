// zone_lock_rmw: lock-word RMWs per zone.lock acquisition under contention.
//
// Threads (default 2, or argv[1]) allocate and free order-4 blocks, which
// bypass the per-CPU lists, so every call takes zone.lock once. Built against
// the ANYCTX_LOCK_STATS library, which counts every compare-exchange on a
// lock word. Branching first (option (b)) or a read-only spinning slow path
// (option (a)) costs about one RMW per acquisition; try_lock-then-lock costs
// two whenever the first try loses. ci/mutants compares this figure between
// the tree and the double-acquire mutant.
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <thread>
#include <vector>

#include "anyctx/ctx/cpu.h"
#include "anyctx/lock/lock_stats.h"
#include "anyctx/page/page_alloc.h"

int main(int argc, char** argv) {
  using namespace anyctx;
  int threads = argc > 1 ? std::atoi(argv[1]) : 2;
  constexpr int kPairs = 200000;
  if (!page_allocator_init({}).empty()) return 1;
  std::atomic<std::uint64_t> rmw{0};
  std::atomic<int> ready{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&] {
      CpuScope cpu;
      ready.fetch_add(1);
      while (ready.load() < threads) {
      }
      std::uint64_t before = lock_rmw_count();
      for (int i = 0; i < kPairs; ++i) {
        Page* p = alloc_pages(kGfpKernel, 4);
        if (p != nullptr) free_pages(p, 4);
      }
      rmw.fetch_add(lock_rmw_count() - before);
    });
  }
  for (auto& t : pool) t.join();
  double per = static_cast<double>(rmw.load()) / (2.0 * kPairs * threads);
  std::printf("threads %d, zone.lock acquisitions %d, rmw_per_acquisition %.4f\n", threads, 2 * kPairs * threads, per);
  page_allocator_shutdown();
  return 0;
}
