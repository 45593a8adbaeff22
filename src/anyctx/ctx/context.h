// anyctx/ctx/context.h — where am I running? Execution-context queries and
// soft IRQ masking (the userspace local_irq_save / local_irq_restore).
//
// Contract:
//  - A thread is a logical CPU while a CpuScope (cpu.h) lives on it.
//  - in_nmi(): inside an NMI-class handler. in_irq(): inside an IRQ-class
//    handler (still true when an NMI interrupted that handler). in_task():
//    neither. context_level() is the innermost of the three.
//  - irq_save() masks IRQ-class signals for this thread without a syscall;
//    an IRQ that arrives while masked is recorded and its handler runs once,
//    from irq_restore(), when the outermost save is restored (lazy masking).
//    Several IRQs that arrive during one masked section run the handler once
//    (a pending line, as hardware has), after which it sees all queued work.
//  - NMIs ignore the mask. Inside IRQ and NMI handlers irqs_disabled() is true.
//  - irq_save()/irq_restore() pair strictly (LIFO) within a frame. An
//    irq_restore() without its irq_save(), or out of order, is a fatal report.
// Context: any. All of these are async-signal-safe.
#pragma once

#include <cstdint>

#include "anyctx/ctx/config.h"
#include "anyctx/ctx/thread_state.h"

namespace anyctx {

enum class ContextLevel : std::uint8_t { kTask = 0, kIrq = 1, kNmi = 2 };

const char* context_name(ContextLevel level);

// Return: this thread's logical CPU id, or kNoCpu when it is not a CPU.
inline int current_cpu() { return detail::this_thread().cpu; }

// Return: current_cpu() in task context, kNoCpu inside an IRQ or NMI handler
// (one load: what a fast path that only task frames may take checks).
inline int current_task_cpu() { return detail::this_thread().task_cpu.load(std::memory_order_relaxed); }

inline bool in_nmi() {
  return detail::this_thread().depths.load(std::memory_order_relaxed) >= detail::kNmiDepthOne;
}
inline bool in_irq() {
  return (detail::this_thread().depths.load(std::memory_order_relaxed) & (detail::kNmiDepthOne - 1)) != 0;
}
inline bool in_task() { return detail::this_thread().depths.load(std::memory_order_relaxed) == 0; }
inline bool irqs_disabled() {
  return detail::this_thread().irqs_masked.load(std::memory_order_relaxed);
}
inline ContextLevel context_level() {
  std::uint16_t depths = detail::this_thread().depths.load(std::memory_order_relaxed);
  if (depths >= detail::kNmiDepthOne) return ContextLevel::kNmi;
  if (depths != 0) return ContextLevel::kIrq;
  return ContextLevel::kTask;
}

// The state irq_save() returns and irq_restore() consumes. Opaque.
class [[nodiscard]] IrqFlags {
 public:
  IrqFlags() = default;

 private:
  friend IrqFlags irq_save();
  friend void irq_restore(IrqFlags flags);
  IrqFlags(bool was_masked, std::uint16_t depth) : was_masked_(was_masked), depth_(depth) {}
  bool was_masked_ = false;
  std::uint16_t depth_ = 0;  // 1-based nesting level of this save, 0 = none
};

namespace detail {
ANYCTX_COLD void irq_restore_unbalanced(std::uint16_t expected, std::uint16_t current);
ANYCTX_COLD void irq_replay_pending();
}  // namespace detail

// Masks IRQs on this thread. Context: any. Return: the state to restore.
inline IrqFlags irq_save() {
  auto& t = detail::this_thread();
  bool was = t.irqs_masked.load(std::memory_order_relaxed);
  std::uint16_t depth = static_cast<std::uint16_t>(t.irq_save_depth.load(std::memory_order_relaxed) + 1);
  t.irq_save_depth.store(depth, std::memory_order_relaxed);
  t.irqs_masked.store(true, std::memory_order_relaxed);
  detail::barrier_against_interrupts();
  return IrqFlags(was, depth);
}

// Restores the mask saved by `flags`; runs an IRQ recorded while masked when
// this unmasks. Context: any (in the frame that saved `flags`).
inline void irq_restore(IrqFlags flags) {
  auto& t = detail::this_thread();
  detail::barrier_against_interrupts();
  std::uint16_t depth = t.irq_save_depth.load(std::memory_order_relaxed);
  if (ANYCTX_UNLIKELY(flags.depth_ == 0 || flags.depth_ != depth))
    detail::irq_restore_unbalanced(flags.depth_, depth);
  t.irq_save_depth.store(static_cast<std::uint16_t>(depth - 1), std::memory_order_relaxed);
  if (flags.was_masked_) return;
  t.irqs_masked.store(false, std::memory_order_relaxed);
  detail::barrier_against_interrupts();
  if (ANYCTX_UNLIKELY(t.irq_pending.load(std::memory_order_relaxed))) detail::irq_replay_pending();
}

// RAII form of irq_save()/irq_restore().
class IrqSaveScope {
 public:
  IrqSaveScope() : flags_(irq_save()) {}
  ~IrqSaveScope() { irq_restore(flags_); }
  IrqSaveScope(const IrqSaveScope&) = delete;
  IrqSaveScope& operator=(const IrqSaveScope&) = delete;

 private:
  IrqFlags flags_;
};

}  // namespace anyctx
