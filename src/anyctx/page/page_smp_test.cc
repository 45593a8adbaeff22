// Several CPUs allocating and freeing each other's pages while IRQ- and
// NMI-class signals arrive from another thread, whose handlers allocate too.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "anyctx/testing/page_fixture.h"

namespace anyctx {
namespace {

using testing::config_of;
using testing::PageAllocTest;

constexpr std::uint64_t kTagMagic = 0x616e796374780000ull;

std::uint64_t tag_of(const Page* p) { return kTagMagic ^ page_to_pfn(p); }

void stamp(Page* p) {
  std::uint64_t tag = tag_of(p);
  std::memcpy(page_address(p), &tag, sizeof tag);
}

bool stamp_intact(const Page* p) {
  std::uint64_t v;
  std::memcpy(&v, page_address(p), sizeof v);
  return v == tag_of(p);
}

std::atomic<int> g_handler_allocs{0};
std::atomic<int> g_handler_corrupt{0};

void allocating_handler(InterruptKind kind) {
  for (unsigned order = 0; order <= 1; ++order) {
    Page* p = kind == InterruptKind::kIrq ? alloc_pages(kGfpAtomic, order) : alloc_pages_nolock(Gfp{}, order);
    if (p == nullptr) continue;
    g_handler_allocs.fetch_add(1, std::memory_order_relaxed);
    stamp(p);
    if (!stamp_intact(p)) g_handler_corrupt.fetch_add(1);
    if (kind == InterruptKind::kIrq) free_pages(p, order); else free_pages_nolock(p, order);
  }
}

TEST_F(PageAllocTest, CpusFreeEachOthersPagesWithInterruptsArriving) {
  init(config_of(2048));
  set_interrupt_handler(InterruptKind::kIrq, allocating_handler);
  set_interrupt_handler(InterruptKind::kNmi, allocating_handler);
  constexpr int kWorkers = 3;
  constexpr int kIters = 3000;
  constexpr int kInterrupts = 300;  // the workers keep going until all are sent
  std::mutex mu;
  std::vector<std::pair<Page*, unsigned>> shared;
  std::atomic<int> cpu_ids[kWorkers];
  for (auto& id : cpu_ids) id.store(-1);
  std::atomic<int> corrupt{0};
  std::atomic<bool> done{false};

  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      CpuScope cpu;
      cpu_ids[w].store(cpu.id());
      for (int i = 0; i < kIters || !done.load(); ++i) {
        unsigned order = static_cast<unsigned>(i % 3);
        Page* p = i % 2 == 0 ? alloc_pages(kGfpKernel, order) : alloc_pages_nolock(Gfp{}, order);
        if (p != nullptr) {
          stamp(p);
          std::lock_guard<std::mutex> guard(mu);
          shared.emplace_back(p, order);
        }
        std::pair<Page*, unsigned> victim{nullptr, 0};
        {
          std::lock_guard<std::mutex> guard(mu);
          if (shared.size() > 16) {
            victim = shared.front();
            shared.front() = shared.back();
            shared.pop_back();
          }
        }
        if (victim.first != nullptr) {
          if (!stamp_intact(victim.first)) corrupt.fetch_add(1);
          if (i % 4 < 2) free_pages(victim.first, victim.second); else free_pages_nolock(victim.first, victim.second);
        }
      }
    });
  }
  std::atomic<int> delivered{0};
  std::thread interrupter([&] {
    for (int n = 0; n < kInterrupts; ++n) {
      int id = cpu_ids[n % kWorkers].load();
      if (id >= 0 && send_interrupt(id, n % 2 == 0 ? InterruptKind::kIrq : InterruptKind::kNmi))
        delivered.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    done.store(true);
  });
  interrupter.join();
  for (auto& t : workers) t.join();

  EXPECT_EQ(corrupt.load(), 0) << "a page's content changed while another CPU owned it";
  EXPECT_EQ(g_handler_corrupt.load(), 0);
  EXPECT_GT(delivered.load(), kInterrupts / 2) << "the workers were not online";
  EXPECT_GT(g_handler_allocs.load(), 0) << "no interrupt handler allocated";
  for (auto [p, order] : shared) free_pages(p, order);
  expect_everything_free();
}

// Blocks above the pcp orders come straight from the buddy lists: CPUs
// allocating and freeing them race on merges with each other's blocks.
TEST_F(PageAllocTest, CpusAllocatingBuddyBlocksConcurrently) {
  init(config_of(1024));
  constexpr int kThreads = 4;
  constexpr int kPairs = 20000;
  std::atomic<int> corrupt{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      CpuScope cpu;
      for (int i = 0; i < kPairs; ++i) {
        unsigned order = 4 + static_cast<unsigned>((i + t) % 3);
        Page* p = alloc_pages(kGfpKernel, order);
        if (p == nullptr) continue;
        stamp(p);
        if (!stamp_intact(p)) corrupt.fetch_add(1);
        free_pages(p, order);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(corrupt.load(), 0);
  expect_everything_free();
}

}  // namespace
}  // namespace anyctx
