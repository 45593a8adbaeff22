// LocalLock and LocalTryLock: the acquired byte against interrupts, the
// irqsave forms, and the debug reports.
#include "anyctx/lock/local_lock.h"

#include <gtest/gtest.h>

#include "anyctx/ctx/cpu.h"
#include "anyctx/testing/interrupts.h"

namespace anyctx {
namespace {

using testing::run_in_irq;
using testing::run_in_nmi;

struct Stock {
  LocalTryLock lock{"test.stock"};
  int cached = 0;
};

class LocalLockTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(LocalLockTest, NmiThatInterruptsTheHolderCannotTakeIt) {
  CpuScope cpu;
  static PerCpu<Stock> stocks;
  Stock& s = stocks.this_cpu();
  s.lock.lock();
  s.cached = 1;
  bool nmi_got_it = true;
  run_in_nmi([&] {
    nmi_got_it = stocks.this_cpu().lock.try_lock();
    if (nmi_got_it) stocks.this_cpu().lock.unlock();
  });
  EXPECT_FALSE(nmi_got_it);
  EXPECT_TRUE(s.lock.is_locked());
  s.cached = 2;
  s.lock.unlock();
  EXPECT_FALSE(s.lock.is_locked());
  EXPECT_EQ(s.cached, 2);
}

TEST_F(LocalLockTest, IrqAndNmiTakeItWhenNoFrameHoldsIt) {
  CpuScope cpu;
  LocalTryLock l("test.lock");
  bool irq_got = false, nmi_got = false, nested_nmi_got = true;
  run_in_irq([&] {
    irq_got = l.try_lock();
    run_in_nmi([&] {
      nested_nmi_got = l.try_lock();  // the IRQ below holds it
      if (nested_nmi_got) l.unlock();
    });
    if (irq_got) l.unlock();
  });
  run_in_nmi([&] {
    nmi_got = l.try_lock();
    if (nmi_got) l.unlock();
  });
  EXPECT_TRUE(irq_got);
  EXPECT_FALSE(nested_nmi_got);
  EXPECT_TRUE(nmi_got);
  EXPECT_FALSE(l.is_locked());
}

TEST_F(LocalLockTest, AcquiredIsClearAfterEveryPath) {
  CpuScope cpu;
  LocalTryLock l("test.lock");
  l.lock();
  l.unlock();
  EXPECT_FALSE(l.is_locked());
  ASSERT_TRUE(l.try_lock());
  l.unlock();
  EXPECT_FALSE(l.is_locked());
  IrqFlags flags = l.lock_irqsave();
  EXPECT_TRUE(l.is_locked());
  EXPECT_TRUE(irqs_disabled());
  l.unlock_irqrestore(flags);
  EXPECT_FALSE(l.is_locked());
  EXPECT_FALSE(irqs_disabled());
  ASSERT_TRUE(l.try_lock_irqsave(flags));
  l.unlock_irqrestore(flags);
  EXPECT_FALSE(l.is_locked());
  EXPECT_FALSE(irqs_disabled());
}

TEST_F(LocalLockTest, TryLockIrqsaveFailureRestoresTheMask) {
  CpuScope cpu;
  LocalTryLock l("test.lock");
  l.lock();
  bool got = true, masked_after = true;
  run_in_nmi([&] {
    // Inside an NMI IRQs are masked already; the failed try must not unmask.
    IrqFlags flags;
    got = l.try_lock_irqsave(flags);
    if (got) l.unlock_irqrestore(flags);
    masked_after = irqs_disabled();
  });
  EXPECT_FALSE(got);
  EXPECT_TRUE(masked_after);
  IrqFlags outer;
  EXPECT_FALSE(l.try_lock_irqsave(outer));
  EXPECT_FALSE(irqs_disabled());
  l.unlock();
}

TEST_F(LocalLockTest, LockIrqsaveDefersIrqsUntilRestore) {
  CpuScope cpu;
  static LocalTryLock l("test.lock");
  static int irq_result = -1;
  testing::set_fallback_handler([](InterruptKind kind) {
    if (kind != InterruptKind::kIrq) return;
    irq_result = l.try_lock() ? 1 : 0;
    if (irq_result == 1) l.unlock();
  });
  IrqFlags flags = l.lock_irqsave();
  raise_irq();
  EXPECT_EQ(irq_result, -1) << "the IRQ must wait for unlock_irqrestore";
  l.unlock_irqrestore(flags);
  EXPECT_EQ(irq_result, 1) << "replayed after the unlock, it finds the lock free";
  testing::set_fallback_handler(nullptr);
}

TEST_F(LocalLockTest, LocalLockIrqsaveMasks) {
  CpuScope cpu;
  LocalLock l("test.local");
  IrqFlags flags = l.lock_irqsave();
  EXPECT_TRUE(irqs_disabled());
  l.unlock_irqrestore(flags);
  EXPECT_FALSE(irqs_disabled());
  l.lock();
  l.unlock();
  EXPECT_STREQ(l.class_name(), "test.local");
}

#if ANYCTX_DEBUG
TEST_F(LocalLockTest, LockWhileHeldByTheInterruptedFrameIsReported) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        LocalTryLock l("test.stock");
        l.lock();
        run_in_irq([&] { l.lock(); });
      },
      "anyctx: nested critical section: local lock 'test.stock' \\(0x[0-9a-f]+\\) lock\\(\\) at "
      ".*local_lock_test.cc:[0-9]+ on cpu 0 \\(irq\\) while it is held by cpu 0 \\(task, the "
      "interrupted frame\\) since .*local_lock_test.cc:[0-9]+");
}

TEST_F(LocalLockTest, LocalLockNestedInIrqIsReported) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        LocalLock l("test.local");
        l.lock();
        run_in_irq([&] { l.lock(); });
      },
      "nested critical section: local lock 'test.local'.*\\(irq\\) while it is held by cpu 0 \\(task, "
      "the interrupted frame\\)");
}

TEST_F(LocalLockTest, LockInNmiContextIsReported) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        LocalTryLock l("test.stock");
        run_in_nmi([&] { l.lock(); });
      },
      "local lock misuse: 'test.stock' .*: lock\\(\\) in NMI context: an NMI may interrupt the "
      "holder; use LocalTryLock::try_lock\\(\\) \\(context rule\\)");
}

TEST_F(LocalLockTest, UnlockWithoutLockIsReported) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        LocalTryLock l("test.stock");
        l.unlock();
      },
      "local lock misuse: 'test.stock' .*: unlock\\(\\) of a local trylock that is not held");
  EXPECT_DEATH(
      {
        CpuScope cpu;
        LocalLock l("test.local");
        l.unlock();
      },
      "local lock misuse: 'test.local' .*: unlock\\(\\) of a local lock that is not held");
}

TEST_F(LocalLockTest, ThreadThatIsNotACpuIsReported) {
  EXPECT_DEATH(
      {
        LocalLock l("test.local");
        l.lock();
      },
      "not a cpu: LocalLock::lock\\(\\) called on a thread that is not a logical CPU");
}

TEST_F(LocalLockTest, OfflineInsideALocalLockSectionIsReported) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        static LocalLock l("test.local");
        l.lock();
      },
      "cpu offline: CpuScope of cpu 0 ends inside a local-lock section");
}
#endif

}  // namespace
}  // namespace anyctx
