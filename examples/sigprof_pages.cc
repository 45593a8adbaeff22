// A profiler-style signal handler that takes a page from the allocator that
// the interrupted thread is itself using — the case where malloc deadlocks.
//
// A worker thread (a logical CPU) allocates and frees pages in a loop; the
// main thread fires SIGPROF at it; each handler run takes a page with the
// nolock API, writes a sample into it and frees it. At the end the
// allocator's invariants hold and no page is missing. Exit 0 on success.
#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>

#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/page/page_alloc.h"

namespace {

std::atomic<long> g_samples{0};
std::atomic<long> g_no_memory{0};

// --- the part the README shows -----------------------------------------------
void on_sigprof(int) {
  anyctx::NmiScope nmi;  // our own signal, treated as NMI context
  anyctx::Page* page = anyctx::alloc_pages_nolock(anyctx::Gfp{}, 0);
  if (page == nullptr) {  // no memory in this context right now
    g_no_memory.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  long sample = g_samples.fetch_add(1, std::memory_order_relaxed);
  std::memcpy(anyctx::page_address(page), &sample, sizeof sample);  // zeroed 4 KiB, ours
  anyctx::free_pages_nolock(page, 0);  // never waits, never loses the page
}
// -----------------------------------------------------------------------------

}  // namespace

int main() {
  if (std::string_view err = anyctx::page_allocator_init({}); !err.empty()) {
    std::fprintf(stderr, "page_allocator_init: %.*s\n", static_cast<int>(err.size()), err.data());
    return 1;
  }
  struct sigaction sa {};
  sa.sa_handler = on_sigprof;
  sigaction(SIGPROF, &sa, nullptr);

  std::atomic<bool> stop{false};
  pthread_t worker_thread{};
  std::atomic<bool> started{false};
  std::thread worker([&] {
    anyctx::CpuScope cpu;  // this thread is a logical CPU until it returns
    worker_thread = pthread_self();
    started.store(true);
    while (!stop.load(std::memory_order_relaxed)) {
      anyctx::Page* p = anyctx::alloc_pages(anyctx::kGfpKernel, 0);
      if (p != nullptr) anyctx::free_pages(p, 0);
    }
  });
  while (!started.load()) std::this_thread::yield();
  for (int i = 0; i < 2000; ++i) {
    pthread_kill(worker_thread, SIGPROF);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  stop.store(true);
  worker.join();

  anyctx::drain_all_pages();
  anyctx::InvariantResult r = anyctx::check_invariants();
  bool all_back = anyctx::zone_free_pages() == anyctx::arena_pages();
  std::printf("samples %ld, no-memory %ld, invariants %s, all pages back %s\n", g_samples.load(),
              g_no_memory.load(), r.ok ? "ok" : r.what.c_str(), all_back ? "yes" : "no");
  anyctx::page_allocator_shutdown();
  return r.ok && all_back && g_samples.load() > 0 ? 0 : 1;
}
