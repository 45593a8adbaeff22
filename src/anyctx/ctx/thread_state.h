// anyctx/ctx/thread_state.h — internal: the per-thread execution state that
// the context queries, soft IRQ masking and the signal wrappers share.
//
// Contract (internal):
//  - One instance per thread, constant-initialised (constinit), so touching it
//    from a signal handler never allocates or runs a constructor.
//  - Only its own thread and that thread's signal handlers access it. Fields a
//    handler may change under the feet of the interrupted frame are relaxed
//    atomics, ordered against the frame's own accesses with signal fences.
//  - Interrupts nest strictly (an NMI returns before the frame it interrupted
//    resumes), so read-then-write sequences need no RMW.
#pragma once

#include <atomic>
#include <cstdint>

#include "anyctx/ctx/config.h"

namespace anyctx::detail {

struct ThreadState {
  int cpu = kNoCpu;                           // logical CPU id or kNoCpu
  // `cpu` while no IRQ or NMI handler runs on this thread (depths == 0),
  // kNoCpu inside one: what the slab's fast paths read, so that one load
  // tells a task frame of a CPU (set with depths and with cpu).
  std::atomic<int> task_cpu{kNoCpu};
  // Handler nesting, one word so that in_task() is one load: IRQ-class
  // handlers count in the low byte (kIrqDepthOne), NMI-class ones in the
  // high byte (kNmiDepthOne).
  std::atomic<std::uint16_t> depths{0};
  std::atomic<bool> irqs_masked{false};       // soft mask (irq_save)
  std::atomic<bool> irq_pending{false};       // an IRQ arrived while masked
  std::atomic<std::uint16_t> irq_save_depth{0};  // nesting of irq_save()
  std::atomic<std::uint16_t> preempt_count{0};   // local-lock sections (debug)
  // Set while the CPU goes offline (~CpuScope): the interrupt entries drop
  // what arrives, as they do on a thread that is no CPU.
  std::atomic<bool> going_offline{false};
};

inline constexpr int kIrqDepthOne = 1;
inline constexpr int kNmiDepthOne = 1 << 8;

extern thread_local constinit ThreadState t_state;

inline ThreadState& this_thread() { return t_state; }

// Return: whether an interrupt that reaches this thread now runs (or waits
// for the unmask): the thread is a CPU that is not going offline.
inline bool takes_interrupts(const ThreadState& t) {
  return t.cpu != kNoCpu && !t.going_offline.load(std::memory_order_relaxed);
}

// Orders this frame's accesses against a signal handler on the same thread.
ANYCTX_ALWAYS_INLINE void barrier_against_interrupts() {
  std::atomic_signal_fence(std::memory_order_seq_cst);
}

}  // namespace anyctx::detail
