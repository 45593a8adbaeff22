// The lock validator: each report fires from a plain single-thread sequence
// (no second thread, no interleaving: the pattern alone), and the patterns
// that cannot deadlock stay quiet. Class names are unique per test: classes
// (and what the validator learnt about them) live for the whole process.
#include "anyctx/lock/validator.h"

#include <gtest/gtest.h>

#include "anyctx/ctx/cpu.h"
#include "anyctx/lock/local_lock.h"
#include "anyctx/lock/spinlock.h"
#include "anyctx/testing/interrupts.h"

namespace anyctx {
namespace {

using testing::run_in_irq;
using testing::run_in_nmi;

class ValidatorTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

#if ANYCTX_DEBUG

// --- 1. order inversion ------------------------------------------------------------

TEST_F(ValidatorTest, OrderInversionIsReportedWhenTheSecondOrderFirstAppears) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        Spinlock a("test.order_a");
        Spinlock b("test.order_b");
        a.lock();
        b.lock();  // a -> b
        b.unlock();
        a.unlock();
        b.lock();
        a.lock();  // b -> a: a cycle, on one CPU, with no contention at all
        a.unlock();
        b.unlock();
      },
      "anyctx: lock validator: order inversion: cpu 0 \\(task\\) takes 'test.order_a' with lock\\(\\) at "
      ".*validator_test.cc:[0-9]+ while holding 'test.order_b' \\(taken at .*validator_test.cc:[0-9]+\\): .* "
      "Cycle: 'test.order_b' -> 'test.order_a' \\(held since .*validator_test.cc:[0-9]+, then lock\\(\\) at "
      ".*validator_test.cc:[0-9]+, task, cpu 0\\); 'test.order_a' -> 'test.order_b' \\(held since "
      ".*validator_test.cc:[0-9]+, then lock\\(\\) at .*validator_test.cc:[0-9]+, task, cpu 0\\)");
}

TEST_F(ValidatorTest, ALongerCycleIsReportedWithEveryEdge) {
  EXPECT_DEATH(
      {
        Spinlock a("test.ring_a");
        Spinlock b("test.ring_b");
        Spinlock c("test.ring_c");
        auto nest = [](Spinlock& outer, Spinlock& inner) {
          outer.lock();
          inner.lock();
          inner.unlock();
          outer.unlock();
        };
        nest(a, b);
        nest(b, c);
        nest(c, a);  // closes a -> b -> c -> a
      },
      "order inversion: .* takes 'test.ring_a' .* Cycle: 'test.ring_c' -> 'test.ring_a' .*; "
      "'test.ring_a' -> 'test.ring_b' .*; 'test.ring_b' -> 'test.ring_c'");
}

TEST_F(ValidatorTest, TryLockAddsNoEdge) {
  CpuScope cpu;
  Spinlock a("test.try_a"), b("test.try_b");
  a.lock();
  ASSERT_TRUE(b.try_lock());  // a then b, but b never waits: no a -> b
  b.unlock();
  a.unlock();
  b.lock();
  a.lock();  // b -> a: the only edge
  a.unlock();
  b.unlock();
  // A trylock-held lock still orders what is taken waiting under it.
  ASSERT_TRUE(a.try_lock());
  EXPECT_DEATH(b.lock(), "order inversion: .* takes 'test.try_b' with lock\\(\\) .* while holding 'test.try_a'");
  a.unlock();
}

TEST_F(ValidatorTest, ConsistentOrderAcrossContextsIsQuiet) {
  CpuScope cpu;
  Spinlock a("test.consistent_a"), b("test.consistent_b");
  for (int i = 0; i < 3; ++i) {
    IrqFlags fa = a.lock_irqsave();
    b.lock();
    b.unlock();
    a.unlock_irqrestore(fa);
    run_in_irq([&] {
      a.lock();
      b.lock();
      b.unlock();
      a.unlock();
    });
  }
  EXPECT_GE(lock_validator_stats().edges, 1);
  EXPECT_EQ(held_lock_count(), 0);
}

// Edges are per frame: an IRQ that takes b while its interrupted task frame
// holds a does not order a before b (that hazard is the IRQ-safety check).
TEST_F(ValidatorTest, AnInterruptedFramesLocksOrderNothing) {
  CpuScope cpu;
  Spinlock a("test.frame_a"), b("test.frame_b");
  IrqFlags fb = b.lock_irqsave();
  a.lock();  // b -> a in task context
  a.unlock();
  b.unlock_irqrestore(fb);
  // Other locks of the same classes: TSan's own lock-order check knows
  // nothing of frames and would see the same two instances in both orders.
  Spinlock a2("test.frame_a"), b2("test.frame_b");
  ASSERT_TRUE(a2.try_lock());  // IRQs on, but no IRQ ever waits for a
  run_in_irq([&] {
    EXPECT_EQ(held_lock_count(), 1) << "the IRQ sees the task frame's lock";
    b2.lock();  // not a -> b: the task frame, not this one, holds a
    b2.unlock();
  });
  a2.unlock();
  EXPECT_EQ(held_lock_count(), 0);
}

// --- 2. IRQ-safety inversion ----------------------------------------------------------

TEST_F(ValidatorTest, IrqSafetyInversionTakenInIrqFirst) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        Spinlock l("test.irq_first");
        run_in_irq([&] {
          l.lock();
          l.unlock();
        });
        l.lock();  // IRQs enabled: an IRQ landing here would spin forever
        l.unlock();
      },
      "anyctx: lock validator: irq-safety inversion: spinlock 'test.irq_first' is taken with lock\\(\\) in IRQ "
      "context \\(first at .*validator_test.cc:[0-9]+ \\(cpu 0\\)\\) and held in task context with IRQs enabled "
      "\\(first at .*validator_test.cc:[0-9]+ \\(cpu 0\\)\\)");
}

TEST_F(ValidatorTest, IrqSafetyInversionHeldWithIrqsOnFirst) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        Spinlock l("test.irqs_on_first");
        if (l.try_lock()) l.unlock();  // a trylock holds it just the same
        run_in_irq([&] {
          l.lock();
          l.unlock();
        });
      },
      "irq-safety inversion: spinlock 'test.irqs_on_first' .*; now cpu 0 \\(irq\\) at .*validator_test.cc");
}

// Takes `l` with IRQs masked in task context, then with lock() in an IRQ:
// the irq-safe pattern.
template <typename Lock>
void lock_irqsave_then_in_irq(Lock& l) {
  IrqFlags f = l.lock_irqsave();
  l.unlock_irqrestore(f);
  run_in_irq([&] {
    l.lock();
    l.unlock();
  });
}

TEST_F(ValidatorTest, IrqsaveEverywhereIsIrqSafe) {
  CpuScope cpu;
  Spinlock l("test.irqsave");
  for (int i = 0; i < 3; ++i) {
    lock_irqsave_then_in_irq(l);
  }
  // Only try_lock in IRQ context: it never waits, so IRQs may stay on.
  Spinlock t("test.irq_trylock_only");
  t.lock();
  run_in_irq([&] { EXPECT_FALSE(t.try_lock()); });
  t.unlock();
}

// --- 3. a wait inside a nolock call --------------------------------------------------

TEST_F(ValidatorTest, SpinlockLockInsideANolockCallIsReportedInTaskContext) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        Spinlock held("test.nolock_held");
        Spinlock l("test.nolock_lock");
        NolockScope nolock("test_nolock_entry");
        ASSERT_TRUE(held.try_lock());
        l.lock();  // free, uncontended, task context: still a wait in a no-wait call
      },
      "anyctx: lock validator: wait in a nolock call: cpu 0 \\(task\\) lock\\(\\) on spinlock 'test.nolock_lock' at "
      ".*validator_test.cc:[0-9]+ inside test_nolock_entry\\(\\), which must never wait .*; this frame holds "
      "'test.nolock_held' \\(try_lock\\(\\)\\) taken at .*validator_test.cc:[0-9]+");
}

TEST_F(ValidatorTest, LocalLockInsideANolockCallIsReported) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        LocalTryLock l("test.nolock_local");
        NolockScope nolock("test_nolock_entry");
        IrqFlags f = l.lock_irqsave();
        l.unlock_irqrestore(f);
      },
      "wait in a nolock call: cpu 0 \\(task\\) lock\\(\\) on local lock 'test.nolock_local' .* inside "
      "test_nolock_entry\\(\\)");
}

TEST_F(ValidatorTest, ARetryLoopInsideANolockCallIsReported) {
  EXPECT_DEATH(
      {
        NolockScope outer("test_outer_nolock");
        NolockScope inner("test_inner_nolock");
        validator_note_wait("seqcount read retry");
      },
      "wait in a nolock call: cpu -1 \\(task\\) seqcount read retry at .*validator_test.cc:[0-9]+ inside "
      "test_outer_nolock\\(\\)");
}

TEST_F(ValidatorTest, TheNolockMarkIsPerFrame) {
  CpuScope cpu;
  Spinlock l("test.nolock_irq");
  {
    NolockScope nolock("test_nolock_entry");
    EXPECT_TRUE(in_nolock_call());
    IrqFlags f;
    ASSERT_TRUE(l.try_lock_irqsave(f));  // a trylock is what a nolock call does
    l.unlock_irqrestore(f);
    // An IRQ that interrupts the nolock call is not inside it: it may spin.
    run_in_irq([&] {
      EXPECT_FALSE(in_nolock_call());
      l.lock();
      l.unlock();
      NolockScope irq_nolock("test_nolock_in_irq");
      EXPECT_TRUE(in_nolock_call());
    });
    EXPECT_TRUE(in_nolock_call());
  }
  EXPECT_FALSE(in_nolock_call());
  IrqFlags f = l.lock_irqsave();
  l.unlock_irqrestore(f);
}

// --- 4. a local lock its own interrupts can find taken ---------------------------------

TEST_F(ValidatorTest, LocalLockTakenInIrqAndHeldWithIrqsOnIsReported) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        static LocalLock l("test.local_irq");
        l.lock();  // IRQs enabled
        l.unlock();
        run_in_irq([&] {
          l.lock();
          l.unlock();
        });
      },
      "anyctx: lock validator: interruptible local lock: local lock 'test.local_irq' is taken with lock\\(\\) in "
      "IRQ context \\(first at .*validator_test.cc:[0-9]+ \\(cpu 0\\)\\) and held in task context with IRQs "
      "enabled \\(first at .*validator_test.cc:[0-9]+ \\(cpu 0\\)\\)");
}

TEST_F(ValidatorTest, LocalTryLockLockInIrqAfterATrylockWithIrqsOnIsReported) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        LocalTryLock l("test.localtry_irq");
        run_in_irq([&] {
          l.lock();
          l.unlock();
        });
        if (l.try_lock()) l.unlock();
      },
      "interruptible local lock: local lock 'test.localtry_irq'");
}

TEST_F(ValidatorTest, LocalLockWithIrqsMaskedIsQuiet) {
  CpuScope cpu;
  LocalTryLock l("test.local_masked");
  for (int i = 0; i < 3; ++i) {
    lock_irqsave_then_in_irq(l);
    run_in_nmi([&] {
      if (l.try_lock()) l.unlock();
    });
  }
}

// --- exemptions and the switch --------------------------------------------------------

TEST_F(ValidatorTest, UncheckedClassesAreLeftToTheirOwner) {
  CpuScope cpu;
  ASSERT_TRUE(set_lock_class_unchecked("test.unchecked_a"));
  ASSERT_TRUE(set_lock_class_unchecked("test.unchecked_b"));
  Spinlock a("test.unchecked_a"), b("test.unchecked_b");
  Spinlock a2("test.unchecked_a"), b2("test.unchecked_b");  // for TSan: other instances
  a.lock(), b.lock(), b.unlock(), a.unlock();
  b2.lock(), a2.lock(), a2.unlock(), b2.unlock();
  run_in_irq([&] {
    a.lock();
    a.unlock();
  });
  // The nolock rule still holds for them.
  EXPECT_DEATH(
      {
        NolockScope nolock("test_nolock_entry");
        a.lock();
      },
      "wait in a nolock call: .* 'test.unchecked_a'");
}

TEST_F(ValidatorTest, OffMeansOff) {
  CpuScope cpu;
  set_lock_validator(LockValidator::kOff);
  EXPECT_FALSE(lock_validator_on());
  Spinlock l("test.off");
  {
    NolockScope nolock("test_nolock_entry");
    l.lock();
    EXPECT_EQ(held_lock_count(), 0);
    l.unlock();
  }
  set_lock_validator(LockValidator::kOn);
  EXPECT_TRUE(lock_validator_on());
}

TEST_F(ValidatorTest, ForgetStartsOver) {
  CpuScope cpu;
  Spinlock a("test.forget_a");
  Spinlock b("test.forget_b");
  auto nest = [](Spinlock& outer, Spinlock& inner) {
    IrqFlags f = outer.lock_irqsave();
    inner.lock();
    inner.unlock();
    outer.unlock_irqrestore(f);
  };
  nest(a, b);
  run_in_irq([&] {
    a.lock();
    a.unlock();
  });
  lock_validator_forget();
  EXPECT_EQ(lock_validator_stats().edges, 0);
  Spinlock a2("test.forget_a");  // the same classes, other instances (for TSan)
  Spinlock b2("test.forget_b");
  nest(b2, a2);  // only b -> a now
  a2.lock();     // IRQs on: the IRQ usage was forgotten too
  a2.unlock();
  EXPECT_DEATH(nest(a, b), "order inversion: .* takes 'test.forget_b' .* while holding 'test.forget_a'");
}

// The lock's own report wins when the deadlock is real, not just possible.
TEST_F(ValidatorTest, ARealSelfDeadlockKeepsItsOwnReport) {
  EXPECT_DEATH(
      {
        CpuScope cpu;
        Spinlock l("test.real_self_deadlock");
        l.lock();
        run_in_irq([&] { l.lock(); });
      },
      "anyctx: self-deadlock: cpu 0 \\(irq\\) spins on spinlock 'test.real_self_deadlock'");
}

#else

TEST_F(ValidatorTest, CompiledOutInRelease) {
  EXPECT_FALSE(lock_validator_on());
  NolockScope nolock("test_nolock_entry");
  EXPECT_FALSE(in_nolock_call());
  EXPECT_EQ(held_lock_count(), 0);
}

#endif

}  // namespace
}  // namespace anyctx
