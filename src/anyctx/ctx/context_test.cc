// Context queries and soft IRQ masking, with real signals.
#include "anyctx/ctx/context.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/testing/interrupts.h"

namespace anyctx {
namespace {

using testing::run_in_irq;
using testing::run_in_nmi;

// What a handler saw, recorded from inside it.
struct Seen {
  int irq_runs = 0;
  int nmi_runs = 0;
  bool irq_in_irq = false, irq_in_nmi = true, irq_in_task = true, irq_disabled = false;
  bool nmi_in_nmi = false, nmi_in_task = true, nmi_disabled = false, nmi_in_irq = false;
  int irq_task_cpu = 0, nmi_task_cpu = 0;  // current_task_cpu() in each handler
};
Seen g_seen;
bool g_nmi_from_irq = false;

void recording_handler(InterruptKind kind) {
  if (kind == InterruptKind::kIrq) {
    ++g_seen.irq_runs;
    g_seen.irq_in_irq = in_irq();
    g_seen.irq_in_nmi = in_nmi();
    g_seen.irq_in_task = in_task();
    g_seen.irq_disabled = irqs_disabled();
    if (g_nmi_from_irq) raise_nmi();
    g_seen.irq_task_cpu = current_task_cpu();  // after the NMI it raised returned
  } else {
    ++g_seen.nmi_runs;
    g_seen.nmi_in_nmi = in_nmi();
    g_seen.nmi_in_task = in_task();
    g_seen.nmi_disabled = irqs_disabled();
    g_seen.nmi_in_irq = in_irq();
    g_seen.nmi_task_cpu = current_task_cpu();
  }
}

class ContextTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    g_seen = Seen{};
    g_nmi_from_irq = false;
    set_interrupt_handler(InterruptKind::kIrq, recording_handler);
    set_interrupt_handler(InterruptKind::kNmi, recording_handler);
    testing::set_fallback_handler(recording_handler);
  }
  void TearDown() override {
    set_interrupt_handler(InterruptKind::kIrq, nullptr);
    set_interrupt_handler(InterruptKind::kNmi, nullptr);
    testing::set_fallback_handler(nullptr);
  }
  CpuScope cpu_;
};

TEST_F(ContextTest, TaskContextOutsideHandlers) {
  EXPECT_TRUE(in_task());
  EXPECT_FALSE(in_irq());
  EXPECT_FALSE(in_nmi());
  EXPECT_FALSE(irqs_disabled());
  EXPECT_EQ(context_level(), ContextLevel::kTask);
  EXPECT_EQ(current_cpu(), cpu_.id());
}

TEST_F(ContextTest, IrqHandlerSeesIrqContext) {
  raise_irq();
  EXPECT_EQ(g_seen.irq_runs, 1);
  EXPECT_TRUE(g_seen.irq_in_irq);
  EXPECT_FALSE(g_seen.irq_in_nmi);
  EXPECT_FALSE(g_seen.irq_in_task);
  EXPECT_TRUE(g_seen.irq_disabled);
  EXPECT_TRUE(in_task());
  EXPECT_FALSE(irqs_disabled());
}

TEST_F(ContextTest, NmiHandlerSeesNmiContext) {
  raise_nmi();
  EXPECT_EQ(g_seen.nmi_runs, 1);
  EXPECT_TRUE(g_seen.nmi_in_nmi);
  EXPECT_FALSE(g_seen.nmi_in_task);
  EXPECT_FALSE(g_seen.nmi_in_irq);
  EXPECT_TRUE(g_seen.nmi_disabled);
  EXPECT_FALSE(irqs_disabled());
}

TEST_F(ContextTest, IrqDeferredWhileMaskedAndReplayedOnceOnRestore) {
  IrqFlags flags = irq_save();
  EXPECT_TRUE(irqs_disabled());
  raise_irq();
  raise_irq();  // a second one while masked: one pending line, one replay
  EXPECT_EQ(g_seen.irq_runs, 0);
  irq_restore(flags);
  EXPECT_EQ(g_seen.irq_runs, 1);
  EXPECT_TRUE(g_seen.irq_in_irq);
  EXPECT_FALSE(irqs_disabled());
  // Nothing left over: the next restore does not replay again.
  IrqFlags again = irq_save();
  irq_restore(again);
  EXPECT_EQ(g_seen.irq_runs, 1);
}

TEST_F(ContextTest, NestedSaveReplaysOnlyAtTheOutermostRestore) {
  IrqFlags outer = irq_save();
  IrqFlags inner = irq_save();
  raise_irq();
  irq_restore(inner);
  EXPECT_EQ(g_seen.irq_runs, 0);
  EXPECT_TRUE(irqs_disabled());
  irq_restore(outer);
  EXPECT_EQ(g_seen.irq_runs, 1);
}

TEST_F(ContextTest, NmiRunsWhileIrqsMasked) {
  IrqFlags flags = irq_save();
  raise_nmi();
  EXPECT_EQ(g_seen.nmi_runs, 1);
  EXPECT_TRUE(irqs_disabled()) << "the NMI must leave the mask as it found it";
  irq_restore(flags);
}

// current_task_cpu(), every row: the CPU in task context (again after each
// handler returns), kNoCpu in an IRQ, in an NMI, in an NMI inside an IRQ and
// in the IRQ after that NMI returned, and on a thread that is not a CPU.
TEST_F(ContextTest, TaskCpuIsTheCpuOnlyInTaskContext) {
  EXPECT_EQ(current_task_cpu(), cpu_.id());
  raise_irq();
  EXPECT_EQ(g_seen.irq_task_cpu, kNoCpu);
  EXPECT_EQ(current_task_cpu(), cpu_.id());
  raise_nmi();
  EXPECT_EQ(g_seen.nmi_task_cpu, kNoCpu);
  EXPECT_EQ(current_task_cpu(), cpu_.id());
  g_nmi_from_irq = true;
  g_seen.nmi_task_cpu = 0;
  raise_irq();
  EXPECT_EQ(g_seen.nmi_runs, 2);
  EXPECT_EQ(g_seen.nmi_task_cpu, kNoCpu) << "an NMI inside an IRQ";
  EXPECT_EQ(g_seen.irq_task_cpu, kNoCpu) << "the IRQ, after the NMI inside it returned";
  EXPECT_EQ(current_task_cpu(), cpu_.id());
  int other = 0;
  std::thread([&] { other = current_task_cpu(); }).join();
  EXPECT_EQ(other, kNoCpu) << "a thread that is not a CPU";
}

TEST_F(ContextTest, NmiInterruptsIrq) {
  g_nmi_from_irq = true;
  raise_irq();
  EXPECT_EQ(g_seen.irq_runs, 1);
  EXPECT_EQ(g_seen.nmi_runs, 1);
  EXPECT_TRUE(g_seen.nmi_in_nmi);
  EXPECT_TRUE(g_seen.nmi_in_irq) << "an NMI that interrupted an IRQ is inside both";
  EXPECT_EQ(context_level(), ContextLevel::kTask);
}

TEST_F(ContextTest, NoIrqInsideIrqNoNmiInsideNmi) {
  int irq_depth_max = 0, nmi_depth_max = 0;
  run_in_irq([&] {
    raise_irq();  // blocked while this IRQ runs: must not nest
    irq_depth_max = in_irq() ? 1 : 0;
    EXPECT_EQ(g_seen.irq_runs, 0);
  });
  // The blocked IRQ arrives once the handler returns.
  EXPECT_EQ(g_seen.irq_runs, 1);
  run_in_nmi([&] {
    raise_nmi();
    nmi_depth_max = in_nmi() ? 1 : 0;
    EXPECT_EQ(g_seen.nmi_runs, 0);
  });
  EXPECT_EQ(g_seen.nmi_runs, 1);
  EXPECT_EQ(irq_depth_max, 1);
  EXPECT_EQ(nmi_depth_max, 1);
}

TEST_F(ContextTest, IrqSaveInsideNmiNeverReplays) {
  IrqFlags task = irq_save();
  raise_irq();  // pending in the task frame
  run_in_nmi([] {
    IrqFlags f = irq_save();
    irq_restore(f);
    EXPECT_EQ(g_seen.irq_runs, 0) << "an NMI must not run the interrupted frame's IRQ";
  });
  EXPECT_EQ(g_seen.irq_runs, 0);
  irq_restore(task);
  EXPECT_EQ(g_seen.irq_runs, 1);
}

TEST_F(ContextTest, IrqSaveScopeRestores) {
  {
    IrqSaveScope masked;
    EXPECT_TRUE(irqs_disabled());
    raise_irq();
  }
  EXPECT_FALSE(irqs_disabled());
  EXPECT_EQ(g_seen.irq_runs, 1);
}

int g_exit_runs = 0;
bool g_exit_in_irq = false;
bool g_exit_masked = false;
int g_exit_after_handler = -1;
void record_irq_exit() {
  ++g_exit_runs;
  g_exit_in_irq = in_irq();
  g_exit_masked = irqs_disabled();
  g_exit_after_handler = g_seen.irq_runs;
}

TEST_F(ContextTest, IrqExitCallbacksRunAfterEachIrqHandler) {
  ASSERT_TRUE(irq_exit_callback_add(record_irq_exit));
  raise_irq();
  EXPECT_EQ(g_exit_runs, 1);
  EXPECT_TRUE(g_exit_in_irq);
  EXPECT_TRUE(g_exit_masked);
  EXPECT_EQ(g_exit_after_handler, 1) << "after the handler ran";
  {
    IrqSaveScope masked;
    raise_irq();
    EXPECT_EQ(g_exit_runs, 1);
  }
  EXPECT_EQ(g_exit_runs, 2) << "a replayed IRQ exits through the callbacks too";
  raise_nmi();
  EXPECT_EQ(g_exit_runs, 2) << "NMIs do not";
  EXPECT_TRUE(irq_exit_callback_remove(record_irq_exit));
  raise_irq();
  EXPECT_EQ(g_exit_runs, 2);
}

TEST_F(ContextTest, ContextNames) {
  EXPECT_STREQ(context_name(ContextLevel::kTask), "task");
  EXPECT_STREQ(context_name(ContextLevel::kIrq), "irq");
  EXPECT_STREQ(context_name(ContextLevel::kNmi), "nmi");
}

TEST_F(ContextTest, RestoreWithoutSaveIsReported) {
  EXPECT_DEATH(irq_restore(IrqFlags{}), "bad irq_restore: irq_restore\\(\\) with flags that no irq_save\\(\\) returned");
  EXPECT_DEATH(
      {
        IrqFlags f = irq_save();
        irq_restore(f);
        irq_restore(f);
      },
      "bad irq_restore: irq_restore\\(\\) without a matching irq_save\\(\\)");
}

TEST_F(ContextTest, RestoreOutOfOrderIsReported) {
  EXPECT_DEATH(
      {
        IrqFlags outer = irq_save();
        IrqFlags inner = irq_save();
        irq_restore(outer);
        irq_restore(inner);
      },
      "bad irq_restore: irq_restore\\(\\) out of order: these flags come from save level 1 but the "
      "innermost unrestored irq_save\\(\\) is level 2");
}

}  // namespace
}  // namespace anyctx
