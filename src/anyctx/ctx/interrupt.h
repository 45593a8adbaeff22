// anyctx/ctx/interrupt.h — IRQ-class and NMI-class signals: the userspace
// hard interrupt and NMI.
//
// Contract:
//  - Two real-time signals carry the two classes (defaults SIGRTMIN+2 and
//    SIGRTMIN+3: clear of SIGUSR1/2 and every signal that the sanitizers,
//    libFuzzer and AFL++ use). Handlers run on the CPU's alternate signal
//    stack, SA_RESTART, errno preserved.
//  - Nesting: no IRQ inside an IRQ (its own signal is blocked while it runs),
//    an NMI anywhere (also inside an IRQ), no NMI inside an NMI and no IRQ
//    inside an NMI (both blocked until the NMI returns).
//  - An IRQ that arrives while IRQs are soft-masked is recorded and run from
//    irq_restore() (context.h). NMIs ignore the mask.
//  - What a handler does is pluggable: set_interrupt_handler(). The handler
//    runs with in_irq() / in_nmi() true; it must be async-signal-safe (no
//    malloc, no locks other than anyctx trylocks, no stdio).
//  - A signal of either class that reaches a thread that is not a CPU is
//    dropped and counted (interrupts_dropped()).
//  - raise_irq()/raise_nmi() deliver to the calling thread synchronously: the
//    handler has run when they return (unless the class is masked or blocked
//    at that moment, in which case it runs when unmasked / unblocked).
//    TSan holds a signal raised inside a handler until the handler returns;
//    so that an NMI raised inside an IRQ handler still nests, TSan builds
//    enter the NMI handler directly in that one case.
#pragma once

#include <pthread.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "anyctx/ctx/config.h"

namespace anyctx {

enum class InterruptKind : std::uint8_t { kIrq, kNmi };

struct InterruptConfig {
  int irq_signal;
  int nmi_signal;
  std::size_t altstack_bytes;  // per CPU; sanitizers need 64 KiB or more

  // SIGRTMIN+2, SIGRTMIN+3, 256 KiB.
  static InterruptConfig defaults();
};

// Validates and applies `config` for the next install. Context: task, with no
// CPU online. Return: empty on success, otherwise what was wrong.
std::string_view interrupts_configure(const InterruptConfig& config);

// Context: any. Return: the configuration in force.
InterruptConfig interrupts_config();

// Installs the two handlers with sigaction (idempotent; CpuScope calls it).
// Context: task.
void interrupts_install();

using InterruptHandler = void (*)(InterruptKind kind);

// Sets what IRQs (or NMIs) do; nullptr = nothing. Context: any.
void set_interrupt_handler(InterruptKind kind, InterruptHandler handler);

// Work that runs each time an IRQ handler finishes, still in IRQ context
// with IRQs masked (the userspace irq_exit): a layer that defers work from
// interrupt context (slab's deferred frees) processes it here. It must be
// IRQ-safe: trylocks, or locks whose holders mask IRQs.
using IrqExitFn = void (*)();
inline constexpr int kMaxIrqExitCallbacks = 8;
// Context: task. Return: false when kMaxIrqExitCallbacks are registered.
[[nodiscard]] bool irq_exit_callback_add(IrqExitFn fn);
// Context: task. Return: false when `fn` was not registered.
bool irq_exit_callback_remove(IrqExitFn fn);

// Delivers to this thread. Context: any.
void raise_irq();
void raise_nmi();

// Delivers to the thread of `cpu` (asynchronously unless it is this thread).
// Context: task. Return: false when `cpu` is not online.
bool send_interrupt(int cpu, InterruptKind kind);

// Return: signals of either class dropped because their thread was not a CPU.
std::uint64_t interrupts_dropped();

// Marks a handler of one of your own signals (a SIGPROF profiler, a crash
// handler) as NMI context, so in_nmi() is true and anyctx behaves as in an
// NMI: nolock entry points only. A handler that calls anyctx without one
// runs as the task frame it interrupted, and the slab's fast paths, which
// only task frames take and which take no lock, may then be entered twice
// at once on one CPU: open the scope first. Context: a signal handler.
namespace detail {
int interrupt_signal(InterruptKind kind);

// Return: the kernel's id of the calling thread (asked once per thread, and
// again in a fork's child). Context: any.
pid_t this_thread_tid();

// Sends `signo` to a thread of this process, `thread` as pthreads knows it
// and `tid` as the kernel does. One tgkill system call: glibc's pthread_kill
// asks for both ids each time it signals the calling thread (three calls)
// and blocks every signal around one to another thread (four). TSan builds
// call pthread_kill: TSan runs a signal the thread sends itself inside its
// pthread_kill interceptor, and one that arrives by a bare tgkill only at its
// next interceptor, after raise_irq() has returned. The caller keeps the
// thread alive (it is the caller, or an online CPU under the registry lock).
// Return: whether the signal was sent (errno says why not).
// Context: any.
bool signal_thread(pthread_t thread, pid_t tid, int signo);
}  // namespace detail

class NmiScope {
 public:
  NmiScope();
  ~NmiScope();
  NmiScope(const NmiScope&) = delete;
  NmiScope& operator=(const NmiScope&) = delete;

 private:
  bool was_masked_;
};

}  // namespace anyctx
