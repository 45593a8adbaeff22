// Spinlock: mutual exclusion, trylock from an NMI that interrupted the holder,
// and the debug reports that replace a hang.
#include "anyctx/lock/spinlock.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

#include "anyctx/ctx/cpu.h"
#include "anyctx/testing/interrupts.h"

namespace anyctx {
namespace {

using testing::run_in_irq;
using testing::run_in_nmi;

class SpinlockTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(SpinlockTest, TryLockTakesAFreeLockOnly) {
  Spinlock l("test.lock");
  EXPECT_FALSE(l.is_locked());
  ASSERT_TRUE(l.try_lock());
  EXPECT_TRUE(l.is_locked());
  EXPECT_FALSE(l.try_lock());
  l.unlock();
  EXPECT_FALSE(l.is_locked());
  EXPECT_STREQ(l.class_name(), "test.lock");
}

// Threads hammer a plain counter under the lock; some are CPUs, some not.
TEST_F(SpinlockTest, MutualExclusionUnderContention) {
  Spinlock l("test.counter");
  long counter = 0;
  constexpr int kThreads = 4;
  constexpr int kIters = 20000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::optional<CpuScope> cpu;
      if (t % 2 == 0) cpu.emplace();
      for (int i = 0; i < kIters; ++i) {
        l.lock();
        long v = counter;
        std::atomic_signal_fence(std::memory_order_seq_cst);
        counter = v + 1;
        l.unlock();
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(counter, long{kThreads} * kIters);
  EXPECT_FALSE(l.is_locked());
}

TEST_F(SpinlockTest, TryLockFromAnNmiThatInterruptedTheHolderFails) {
  CpuScope cpu;
  Spinlock l("test.lock");
  int protected_value = 0;
  l.lock();
  protected_value = 1;
  bool nmi_got_it = true;
  run_in_nmi([&] {
    nmi_got_it = l.try_lock();
    if (nmi_got_it) l.unlock();
  });
  protected_value = 2;  // the holder finishes its section intact
  l.unlock();
  EXPECT_FALSE(nmi_got_it);
  EXPECT_EQ(protected_value, 2);
  EXPECT_FALSE(l.is_locked());
  run_in_nmi([&] {
    nmi_got_it = l.try_lock();
    if (nmi_got_it) l.unlock();
  });
  EXPECT_TRUE(nmi_got_it) << "a free lock is taken from NMI context by try_lock";
}

TEST_F(SpinlockTest, IrqsaveKeepsIrqsOutUntilUnlock) {
  CpuScope cpu;
  Spinlock l("test.irq_lock");
  int irq_saw_locked = -1;
  IrqFlags flags = l.lock_irqsave();
  EXPECT_TRUE(irqs_disabled());
  // The IRQ cannot run inside the section; it runs at unlock_irqrestore.
  testing::set_fallback_handler(nullptr);
  static Spinlock* s_lock;
  static int* s_saw;
  s_lock = &l;
  s_saw = &irq_saw_locked;
  set_interrupt_handler(InterruptKind::kIrq, [](InterruptKind) {
    *s_saw = s_lock->is_locked() ? 1 : 0;
    s_lock->lock();  // allowed: the task frame released it before the replay
    s_lock->unlock();
  });
  raise_irq();
  EXPECT_EQ(irq_saw_locked, -1);
  l.unlock_irqrestore(flags);
  EXPECT_EQ(irq_saw_locked, 0);
  EXPECT_FALSE(irqs_disabled());
  set_interrupt_handler(InterruptKind::kIrq, nullptr);
}

TEST_F(SpinlockTest, TryLockIrqsaveFailureLeavesTheMaskAsItWas) {
  CpuScope cpu;
  Spinlock l("test.lock");
  l.lock();
  IrqFlags flags;
  EXPECT_FALSE(l.try_lock_irqsave(flags));
  EXPECT_FALSE(irqs_disabled());
  l.unlock();
  ASSERT_TRUE(l.try_lock_irqsave(flags));
  EXPECT_TRUE(irqs_disabled());
  l.unlock_irqrestore(flags);
  EXPECT_FALSE(irqs_disabled());
}

#if ANYCTX_DEBUG
TEST_F(SpinlockTest, SelfDeadlockIsReportedInsteadOfHanging) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        Spinlock l("test.zone_lock");
        l.lock();
        run_in_irq([&] { l.lock(); });
      },
      "anyctx: self-deadlock: cpu 0 \\(irq\\) spins on spinlock 'test.zone_lock' \\(0x[0-9a-f]+\\) at "
      ".*spinlock_test.cc:[0-9]+, which the same cpu already holds in the interrupted task frame, "
      "taken at .*spinlock_test.cc:[0-9]+");
}

TEST_F(SpinlockTest, RecursiveLockIsReported) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        Spinlock l("test.lock");
        l.lock();
        l.lock();
      },
      "self-deadlock: .* in this task frame \\(recursive lock\\)");
}

TEST_F(SpinlockTest, LockInNmiContextIsReportedEvenWhenFree) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        Spinlock l("test.lock");
        run_in_nmi([&] {
          l.lock();
          l.unlock();
        });
      },
      "spinlock misuse: 'test.lock' .*: lock\\(\\) in NMI context: an NMI may only try_lock\\(\\) "
      "\\(context rule\\) at .*spinlock_test.cc:[0-9]+ \\(cpu 0, nmi context\\)");
}

TEST_F(SpinlockTest, UnlockOfAFreeLockIsReported) {
  EXPECT_DEATH(
      {
        Spinlock l("test.lock");
        l.unlock();
      },
      "spinlock misuse: 'test.lock' .*: unlock\\(\\) of a spinlock that is not locked");
}
#endif

#if ANYCTX_LOCK_STATS
TEST_F(SpinlockTest, UncontendedAcquisitionIsOneRmw) {
  Spinlock l("test.lock");
  std::uint64_t before = lock_rmw_count();
  l.lock();
  l.unlock();
  EXPECT_EQ(lock_rmw_count() - before, 1u);
}
#endif

}  // namespace
}  // namespace anyctx
