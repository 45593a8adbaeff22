// Signal configuration, delivery across CPUs, dropping on non-CPU threads,
// and NmiScope for a user's own signal handler.
#include "anyctx/ctx/interrupt.h"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "anyctx/ctx/context.h"
#include "anyctx/ctx/cpu.h"

namespace anyctx {
namespace {

std::atomic<int> g_irqs{0};
std::atomic<int> g_nmis{0};
std::atomic<int> g_cpu_in_handler{-2};

// Records the CPU before it counts: a test that waits for the count then
// reads the CPU this handler stored (seq_cst orders the two).
void counting_handler(InterruptKind kind) {
  g_cpu_in_handler.store(current_cpu());
  (kind == InterruptKind::kIrq ? g_irqs : g_nmis).fetch_add(1);
}

class InterruptTest : public ::testing::Test {
 protected:
  void SetUp() override {
    g_irqs = 0;
    g_nmis = 0;
    g_cpu_in_handler = -2;
    set_interrupt_handler(InterruptKind::kIrq, counting_handler);
    set_interrupt_handler(InterruptKind::kNmi, counting_handler);
  }
  void TearDown() override {
    set_interrupt_handler(InterruptKind::kIrq, nullptr);
    set_interrupt_handler(InterruptKind::kNmi, nullptr);
  }
};

TEST_F(InterruptTest, DefaultsAreDistinctRealTimeSignals) {
  InterruptConfig c = InterruptConfig::defaults();
  EXPECT_GE(c.irq_signal, SIGRTMIN);
  EXPECT_LE(c.irq_signal, SIGRTMAX);
  EXPECT_GE(c.nmi_signal, SIGRTMIN);
  EXPECT_LE(c.nmi_signal, SIGRTMAX);
  EXPECT_NE(c.irq_signal, c.nmi_signal);
  for (int reserved : {SIGUSR1, SIGUSR2, SIGALRM, SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE, SIGINT,
                       SIGTERM, SIGXFSZ, SIGPIPE, SIGPROF}) {
    EXPECT_NE(c.irq_signal, reserved);
    EXPECT_NE(c.nmi_signal, reserved);
  }
  EXPECT_GE(c.altstack_bytes, 64u * 1024);
}

TEST_F(InterruptTest, BadConfigurationsAreNamed) {
  InterruptConfig c = InterruptConfig::defaults();
  c.irq_signal = SIGUSR1;
  EXPECT_NE(interrupts_configure(c).find("irq_signal is not a real-time signal"), std::string_view::npos);
  c = InterruptConfig::defaults();
  c.nmi_signal = SIGPROF;
  EXPECT_NE(interrupts_configure(c).find("nmi_signal is not a real-time signal"), std::string_view::npos);
  c = InterruptConfig::defaults();
  c.nmi_signal = c.irq_signal;
  EXPECT_EQ(interrupts_configure(c), "irq_signal and nmi_signal are the same signal");
  c = InterruptConfig::defaults();
  c.altstack_bytes = 4096;
  EXPECT_EQ(interrupts_configure(c), "altstack_bytes is below 64 KiB, too small for sanitizer builds");
  c = InterruptConfig::defaults();
  {
    CpuScope cpu;
    EXPECT_EQ(interrupts_configure(c), "cannot reconfigure interrupts while CPUs are online");
  }
}

TEST_F(InterruptTest, ReconfiguredSignalsAreUsed) {
  InterruptConfig c = InterruptConfig::defaults();
  c.irq_signal = SIGRTMIN + 6;
  c.nmi_signal = SIGRTMIN + 7;
  ASSERT_EQ(interrupts_configure(c), "");
  {
    CpuScope cpu;
    raise_irq();
    raise_nmi();
    EXPECT_EQ(g_irqs.load(), 1);
    EXPECT_EQ(g_nmis.load(), 1);
  }
  EXPECT_EQ(interrupts_config().irq_signal, SIGRTMIN + 6);
  ASSERT_EQ(interrupts_configure(InterruptConfig::defaults()), "");
  CpuScope cpu;
  raise_irq();
  EXPECT_EQ(g_irqs.load(), 2);
}

TEST_F(InterruptTest, SignalsToThreadsThatAreNotCpusAreDropped) {
  interrupts_install();
  std::uint64_t before = interrupts_dropped();
  raise_irq();
  raise_nmi();
  EXPECT_EQ(g_irqs.load(), 0);
  EXPECT_EQ(g_nmis.load(), 0);
  EXPECT_EQ(interrupts_dropped(), before + 2);
}

TEST_F(InterruptTest, SendInterruptReachesTheOtherCpu) {
  std::atomic<int> target{-1};
  std::atomic<bool> done{false};
  std::thread other([&] {
    CpuScope cpu;
    target.store(cpu.id());
    while (!done.load()) std::this_thread::yield();
  });
  while (target.load() < 0) std::this_thread::yield();
  ASSERT_TRUE(send_interrupt(target.load(), InterruptKind::kNmi));
  while (g_nmis.load() == 0) std::this_thread::yield();
  EXPECT_EQ(g_cpu_in_handler.load(), target.load());
  done.store(true);
  other.join();
  EXPECT_FALSE(send_interrupt(target.load(), InterruptKind::kIrq)) << "the CPU is offline";
  EXPECT_FALSE(send_interrupt(-1, InterruptKind::kIrq));
  EXPECT_FALSE(send_interrupt(kMaxCpus, InterruptKind::kIrq));
}

// The sender keeps the process's and the thread's ids: a fork's child, whose
// one thread has new ones, must not use the parent's, or its interrupts
// would go to the parent's thread. The child raises an IRQ and an NMI as a
// CPU and exits with what its handlers saw.
TEST_F(InterruptTest, AForksChildInterruptsItselfNotItsParent) {
  {
    CpuScope cpu;
    raise_irq();  // the ids of this process and thread are now known
    ASSERT_EQ(g_irqs.load(), 1);
  }
  const std::uint64_t dropped = interrupts_dropped();
  pid_t child = fork();
  ASSERT_NE(child, -1);
  if (child == 0) {
    g_irqs = 0;
    g_nmis = 0;
    {
      CpuScope cpu;
      raise_irq();
      raise_nmi();
    }
    _exit(g_irqs.load() == 1 && g_nmis.load() == 1 ? 0 : 1);
  }
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0) << "the child's handlers did not run";
  EXPECT_EQ(interrupts_dropped(), dropped) << "the parent (no CPU now) was sent the child's interrupts";
  EXPECT_EQ(g_irqs.load(), 1);
}

// A user's own signal (a profiler's SIGPROF, say) marked as NMI context.
std::atomic<bool> g_user_saw_nmi{false};
std::atomic<bool> g_user_saw_task{true};
void user_signal_handler(int) {
  NmiScope nmi;
  g_user_saw_nmi.store(in_nmi());
  g_user_saw_task.store(in_task());
}

TEST_F(InterruptTest, NmiScopeMarksAUsersHandler) {
  CpuScope cpu;
  struct sigaction sa {}, old {};
  sa.sa_handler = user_signal_handler;
  ASSERT_EQ(sigaction(SIGRTMIN + 8, &sa, &old), 0);
  pthread_kill(pthread_self(), SIGRTMIN + 8);
  EXPECT_TRUE(g_user_saw_nmi.load());
  EXPECT_FALSE(g_user_saw_task.load());
  EXPECT_TRUE(in_task());
  EXPECT_FALSE(irqs_disabled());
  sigaction(SIGRTMIN + 8, &old, nullptr);
}

TEST_F(InterruptTest, IrqPendingDuringNmiScopeRunsOnItsExit) {
  CpuScope cpu;
  {
    NmiScope nmi;
    raise_irq();  // masked inside the NMI: recorded
    EXPECT_EQ(g_irqs.load(), 0);
  }
  EXPECT_EQ(g_irqs.load(), 1);
}

}  // namespace
}  // namespace anyctx
