#include "anyctx/ctx/interrupt.h"

#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <mutex>

#include "anyctx/ctx/context.h"
#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/report.h"

namespace anyctx {
namespace {

constexpr std::size_t kMinAltstackBytes = 64 * 1024;

// Both signal numbers in one word, so a reader never sees half a
// configuration: irq << 8 | nmi; 0 until configured or defaulted.
std::atomic<std::uint32_t> g_signals{0};
std::atomic<std::size_t> g_altstack_bytes{256 * 1024};
std::atomic<InterruptHandler> g_handler[2]{};
std::atomic<std::uint64_t> g_dropped{0};

std::atomic<IrqExitFn> g_irq_exit_fns[kMaxIrqExitCallbacks]{};  // written under g_install_mu

std::mutex g_install_mu;
bool g_installed = false;           // guarded by g_install_mu
struct sigaction g_old_irq, g_old_nmi;  // guarded by g_install_mu

using detail::barrier_against_interrupts;
using detail::ThreadState;

// One depth of `depths` (detail::kIrqDepthOne or kNmiDepthOne, signed),
// then task_cpu from the new depth. Loads and stores: a handler that
// interrupts between them returns both words as it found them (strict
// nesting), except task_cpu between the two stores, which it sets from the
// depth that is already stored, as the second store does. So task_cpu is
// the CPU only while no handler runs, outside these few instructions.
void depth_add(ThreadState& t, int delta) {
  auto depths = static_cast<std::uint16_t>(t.depths.load(std::memory_order_relaxed) + delta);
  t.depths.store(depths, std::memory_order_relaxed);
  barrier_against_interrupts();
  t.task_cpu.store(depths == 0 ? t.cpu : kNoCpu, std::memory_order_relaxed);
}

void call_handler(InterruptKind kind) {
  InterruptHandler h = g_handler[static_cast<int>(kind)].load(std::memory_order_acquire);
  if (h != nullptr) h(kind);
}

// Runs the IRQ handler with IRQs masked, again for every IRQ recorded while
// it ran, then unmasks. Precondition: IRQs are not masked by any frame.
void run_irqs_then_unmask(ThreadState& t) {
  do {
    t.irqs_masked.store(true, std::memory_order_relaxed);
    t.irq_pending.store(false, std::memory_order_relaxed);
    depth_add(t, +detail::kIrqDepthOne);
    barrier_against_interrupts();
    call_handler(InterruptKind::kIrq);
    for (auto& fn : g_irq_exit_fns)
      if (IrqExitFn f = fn.load(std::memory_order_acquire)) f();
    barrier_against_interrupts();
    depth_add(t, -detail::kIrqDepthOne);
    t.irqs_masked.store(false, std::memory_order_relaxed);
    barrier_against_interrupts();
  } while (t.irq_pending.load(std::memory_order_relaxed));
}

void irq_signal_entry(int, siginfo_t*, void*) {
  int saved_errno = errno;
  ThreadState& t = detail::this_thread();
  if (!takes_interrupts(t)) {
    g_dropped.fetch_add(1, std::memory_order_relaxed);
  } else if (t.irqs_masked.load(std::memory_order_relaxed)) {
    t.irq_pending.store(true, std::memory_order_relaxed);
  } else {
    run_irqs_then_unmask(t);
  }
  errno = saved_errno;
}

void nmi_signal_entry(int, siginfo_t*, void*) {
  int saved_errno = errno;
  if (!takes_interrupts(detail::this_thread())) {
    g_dropped.fetch_add(1, std::memory_order_relaxed);
  } else {
    NmiScope nmi;
    call_handler(InterruptKind::kNmi);
  }
  errno = saved_errno;
}

std::uint32_t encode_signals(int irq, int nmi) {
  return static_cast<std::uint32_t>(irq) << 8 | static_cast<std::uint32_t>(nmi);
}
int irq_signal_of(std::uint32_t word) { return static_cast<int>(word >> 8); }
int nmi_signal_of(std::uint32_t word) { return static_cast<int>(word & 0xff); }

// Return: the configured signals, the defaults on first use.
std::uint32_t signals() {
  std::uint32_t word = g_signals.load(std::memory_order_acquire);
  if (ANYCTX_LIKELY(word != 0)) return word;
  InterruptConfig d = InterruptConfig::defaults();
  std::uint32_t expected = 0;
  std::uint32_t wanted = encode_signals(d.irq_signal, d.nmi_signal);
  return g_signals.compare_exchange_strong(expected, wanted, std::memory_order_acq_rel) ? wanted : expected;
}

void install_one(int signo, void (*entry)(int, siginfo_t*, void*), const sigset_t& mask,
                 struct sigaction* old) {
  struct sigaction sa {};
  sa.sa_sigaction = entry;
  sa.sa_mask = mask;
  sa.sa_flags = SA_SIGINFO | SA_ONSTACK | SA_RESTART;
  if (sigaction(signo, &sa, old) != 0) {
    (Report("interrupt setup") << "sigaction(" << signo << ") failed, errno " << errno).fatal();
  }
}

// The kernel's ids of this process and of the calling thread, asked once
// and asked again in the child of a fork (whose one thread has new ones).
std::atomic<pid_t> g_pid{0};
thread_local constinit pid_t t_tid = 0;

void forget_ids_in_fork_child() {
  g_pid.store(0, std::memory_order_relaxed);
  t_tid = 0;
}

pid_t process_id() {
  pid_t pid = g_pid.load(std::memory_order_relaxed);
  if (ANYCTX_UNLIKELY(pid == 0)) {
    pid = getpid();
    g_pid.store(pid, std::memory_order_relaxed);
  }
  return pid;
}

void send_to_self(int signo) {
  if (!detail::signal_thread(pthread_self(), detail::this_thread_tid(), signo))
    (Report("interrupt delivery") << "signal " << signo << " to the calling thread failed, errno " << errno).fatal();
}

}  // namespace

InterruptConfig InterruptConfig::defaults() {
  return InterruptConfig{SIGRTMIN + 2, SIGRTMIN + 3, 256 * 1024};
}

std::string_view interrupts_configure(const InterruptConfig& c) {
  auto is_rt = [](int s) { return s >= SIGRTMIN && s <= SIGRTMAX; };
  if (!is_rt(c.irq_signal))
    return "irq_signal is not a real-time signal (SIGRTMIN..SIGRTMAX); the classic signals "
           "belong to the sanitizers, libFuzzer and AFL++";
  if (!is_rt(c.nmi_signal))
    return "nmi_signal is not a real-time signal (SIGRTMIN..SIGRTMAX); the classic signals "
           "belong to the sanitizers, libFuzzer and AFL++";
  if (c.irq_signal == c.nmi_signal) return "irq_signal and nmi_signal are the same signal";
  if (c.altstack_bytes < kMinAltstackBytes)
    return "altstack_bytes is below 64 KiB, too small for sanitizer builds";
  if (cpus_online() != 0) return "cannot reconfigure interrupts while CPUs are online";
  std::lock_guard<std::mutex> guard(g_install_mu);
  if (g_installed) {
    std::uint32_t old = signals();
    sigaction(irq_signal_of(old), &g_old_irq, nullptr);
    sigaction(nmi_signal_of(old), &g_old_nmi, nullptr);
    g_installed = false;
  }
  g_signals.store(encode_signals(c.irq_signal, c.nmi_signal), std::memory_order_release);
  g_altstack_bytes.store(c.altstack_bytes);
  return {};
}

InterruptConfig interrupts_config() {
  std::uint32_t word = signals();
  return InterruptConfig{irq_signal_of(word), nmi_signal_of(word), g_altstack_bytes.load()};
}

void interrupts_install() {
  std::lock_guard<std::mutex> guard(g_install_mu);
  if (g_installed) return;
  std::uint32_t word = signals();
  int irq = irq_signal_of(word);
  int nmi = nmi_signal_of(word);
  sigset_t irq_mask, nmi_mask;
  sigemptyset(&irq_mask);
  sigaddset(&irq_mask, irq);  // no IRQ inside an IRQ
  sigemptyset(&nmi_mask);
  sigaddset(&nmi_mask, irq);  // nothing inside an NMI
  sigaddset(&nmi_mask, nmi);
  install_one(irq, irq_signal_entry, irq_mask, &g_old_irq);
  install_one(nmi, nmi_signal_entry, nmi_mask, &g_old_nmi);
  if (int rc = pthread_atfork(nullptr, nullptr, forget_ids_in_fork_child); rc != 0)
    (Report("interrupt setup") << "pthread_atfork failed, error " << rc).fatal();
  g_installed = true;
}

void set_interrupt_handler(InterruptKind kind, InterruptHandler handler) {
  g_handler[static_cast<int>(kind)].store(handler, std::memory_order_release);
}

bool irq_exit_callback_add(IrqExitFn fn) {
  std::lock_guard<std::mutex> guard(g_install_mu);
  for (auto& slot : g_irq_exit_fns)
    if (slot.load(std::memory_order_relaxed) == fn) return true;
  for (auto& slot : g_irq_exit_fns) {
    if (slot.load(std::memory_order_relaxed) == nullptr) {
      slot.store(fn, std::memory_order_release);
      return true;
    }
  }
  return false;
}

bool irq_exit_callback_remove(IrqExitFn fn) {
  std::lock_guard<std::mutex> guard(g_install_mu);
  for (auto& slot : g_irq_exit_fns) {
    if (slot.load(std::memory_order_relaxed) == fn) {
      slot.store(nullptr, std::memory_order_release);
      return true;
    }
  }
  return false;
}

void raise_irq() { send_to_self(interrupts_config().irq_signal); }

void raise_nmi() {
#if ANYCTX_TSAN
  // TSan holds a signal raised inside a signal handler until that handler
  // returns. An NMI raised inside an IRQ handler would then arrive after the
  // IRQ instead of inside it; enter it directly so nesting is the same in
  // every build.
  if (in_irq() && !in_nmi()) {
    nmi_signal_entry(interrupts_config().nmi_signal, nullptr, nullptr);
    return;
  }
#endif
  send_to_self(interrupts_config().nmi_signal);
}

std::uint64_t interrupts_dropped() { return g_dropped.load(std::memory_order_relaxed); }

namespace detail {
void irq_replay_pending() { run_irqs_then_unmask(this_thread()); }

int interrupt_signal(InterruptKind kind) {
  InterruptConfig c = interrupts_config();
  return kind == InterruptKind::kIrq ? c.irq_signal : c.nmi_signal;
}

pid_t this_thread_tid() {
  if (ANYCTX_UNLIKELY(t_tid == 0)) t_tid = gettid();
  return t_tid;
}

bool signal_thread(pthread_t thread, pid_t tid, int signo) {
#if ANYCTX_TSAN
  (void)tid;
  int rc = pthread_kill(thread, signo);
  if (rc != 0) errno = rc;
  return rc == 0;
#else
  (void)thread;
  return syscall(SYS_tgkill, process_id(), tid, signo) == 0;
#endif
}
}  // namespace detail

NmiScope::NmiScope() {
  ThreadState& t = detail::this_thread();
  was_masked_ = t.irqs_masked.load(std::memory_order_relaxed);
  t.irqs_masked.store(true, std::memory_order_relaxed);
  depth_add(t, +detail::kNmiDepthOne);
  barrier_against_interrupts();
}

NmiScope::~NmiScope() {
  ThreadState& t = detail::this_thread();
  barrier_against_interrupts();
  depth_add(t, -detail::kNmiDepthOne);
  if (was_masked_) return;
  t.irqs_masked.store(false, std::memory_order_relaxed);
  barrier_against_interrupts();
  // An IRQ recorded while this (user-signal) NMI ran: run it on the way out.
  if (t.irq_pending.load(std::memory_order_relaxed) && t.cpu != kNoCpu) run_irqs_then_unmask(t);
}

}  // namespace anyctx
