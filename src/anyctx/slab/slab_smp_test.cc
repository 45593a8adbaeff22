// Several CPUs allocating and freeing each other's objects on both paths
// while IRQ- and NMI-class signals arrive from another thread; the handlers
// allocate, and free objects that other CPUs left in a mailbox.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <random>
#include <thread>
#include <vector>

#include "anyctx/slab/slab_test_fixture.h"

namespace anyctx {
namespace {

using testing::SlabTest;
using testing::stamp_intact;
using testing::stamp_object;

constexpr std::size_t kMailboxSize = 48;
constexpr int kMailboxes = 8;
std::atomic<void*> g_mailbox[kMailboxes];
std::atomic<int> g_handler_allocs{0};
std::atomic<int> g_handler_frees_from_mailbox{0};
std::atomic<int> g_handler_corrupt{0};

void take_from_mailbox(InterruptKind kind) {
  for (auto& slot : g_mailbox) {
    void* p = slot.exchange(nullptr, std::memory_order_acq_rel);
    if (p == nullptr) continue;
    if (!stamp_intact(p, kMailboxSize)) g_handler_corrupt.fetch_add(1);
    if (kind == InterruptKind::kIrq) kfree(p); else kfree_nolock(p);
    g_handler_frees_from_mailbox.fetch_add(1, std::memory_order_relaxed);
    return;
  }
}

void allocating_handler(InterruptKind kind) {
  static constexpr std::size_t kSizes[] = {24, 64, 700};
  void* objs[std::size(kSizes)];
  for (std::size_t i = 0; i < std::size(kSizes); ++i) {
    objs[i] = kind == InterruptKind::kIrq ? kmalloc(kSizes[i], kGfpAtomic) : kmalloc_nolock(kSizes[i], Gfp{});
    if (objs[i] == nullptr) continue;
    g_handler_allocs.fetch_add(1, std::memory_order_relaxed);
    stamp_object(objs[i], kSizes[i]);
  }
  take_from_mailbox(kind);
  for (std::size_t i = 0; i < std::size(kSizes); ++i) {
    if (objs[i] == nullptr) continue;
    if (!stamp_intact(objs[i], kSizes[i])) g_handler_corrupt.fetch_add(1);
    if (kind == InterruptKind::kIrq && i % 2 == 0) kfree(objs[i]); else kfree_nolock(objs[i]);
  }
}

TEST_F(SlabTest, CpusFreeEachOthersObjectsWithInterruptsArriving) {
  init_slab(4096);
  for (auto& slot : g_mailbox) slot.store(nullptr);
  for (auto* counter : {&g_handler_allocs, &g_handler_frees_from_mailbox, &g_handler_corrupt}) counter->store(0);
  set_interrupt_handler(InterruptKind::kIrq, allocating_handler);
  set_interrupt_handler(InterruptKind::kNmi, allocating_handler);
  constexpr int kWorkers = 3;
  constexpr int kIters = 3000;
  constexpr int kInterrupts = 300;  // the workers keep going until all are sent
  constexpr std::size_t kSizes[] = {8, 16, 40, 64, 100, 128, 256, 300, 1024, 2000, 4096, 8192};
  struct Obj {
    void* p;
    std::size_t size;
  };
  std::mutex mu;
  std::vector<Obj> shared;
  std::atomic<int> cpu_ids[kWorkers];
  for (auto& id : cpu_ids) id.store(-1);
  std::atomic<int> corrupt{0};
  std::atomic<int> nolock_null{0};
  std::atomic<bool> done{false};

  std::vector<std::thread> workers;
  for (int w = 0; w < kWorkers; ++w) {
    workers.emplace_back([&, w] {
      CpuScope cpu;
      cpu_ids[w].store(cpu.id());
      std::mt19937 rng(static_cast<unsigned>(w) + 1);
      for (int i = 0; i < kIters || !done.load(); ++i) {
        std::size_t size = kSizes[rng() % std::size(kSizes)];
        bool nolock = rng() % 2 == 0;
        void* p = nolock ? kmalloc_nolock(size, Gfp{}) : kmalloc(size, kGfpKernel);
        if (p != nullptr) {
          stamp_object(p, size);
          std::lock_guard<std::mutex> guard(mu);
          shared.push_back({p, size});
        } else if (nolock) {
          nolock_null.fetch_add(1, std::memory_order_relaxed);
        }
        Obj victim{nullptr, 0};
        {
          std::lock_guard<std::mutex> guard(mu);
          if (shared.size() > 32) {
            std::size_t k = rng() % shared.size();
            victim = shared[k];
            shared[k] = shared.back();
            shared.pop_back();
          }
        }
        if (victim.p != nullptr) {
          if (!stamp_intact(victim.p, victim.size)) corrupt.fetch_add(1);
          if (rng() % 2 == 0) kfree(victim.p); else kfree_nolock(victim.p);
        }
        if (i % 16 == 0) {
          void* m = kmalloc(kMailboxSize, kGfpKernel);
          stamp_object(m, kMailboxSize);
          if (void* old = g_mailbox[rng() % kMailboxes].exchange(m, std::memory_order_acq_rel)) {
            if (!stamp_intact(old, kMailboxSize)) corrupt.fetch_add(1);
            kfree(old);
          }
        }
        if (i % 500 == 499) slab_drain_local();
      }
    });
  }
  std::atomic<int> delivered{0};
  std::thread interrupter([&] {
    for (int n = 0; n < kInterrupts; ++n) {
      int id = cpu_ids[n % kWorkers].load();
      if (id >= 0 && send_interrupt(id, n % 2 == 0 ? InterruptKind::kIrq : InterruptKind::kNmi)) delivered.fetch_add(1);
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
    done.store(true);
  });
  interrupter.join();
  for (auto& t : workers) t.join();

  EXPECT_EQ(corrupt.load(), 0) << "an object's content changed while another CPU owned it";
  EXPECT_EQ(g_handler_corrupt.load(), 0);
  EXPECT_GT(delivered.load(), kInterrupts / 2) << "the workers were not online";
  EXPECT_GT(g_handler_allocs.load(), 0) << "no interrupt handler allocated";
  expect_slab_invariants();
  for (Obj o : shared) {
    EXPECT_TRUE(stamp_intact(o.p, o.size));
    kfree(o.p);
  }
  for (auto& slot : g_mailbox)
    if (void* p = slot.exchange(nullptr)) kfree(p);
  expect_all_returned();
}

}  // namespace
}  // namespace anyctx
