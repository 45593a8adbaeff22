// anyctx/lock/local_lock.h — per-CPU locks: LocalLock and LocalTryLock.
//
// A local lock protects data of the CPU it belongs to (it lives inside a
// PerCpu<T> slot) against other frames of that same CPU. Threads are CPUs, so
// no other CPU ever contends for it: taking it needs no atomic RMW.
//
// Contract:
//  - LocalLock: lock()/unlock() mark a non-preemptible section; the *_irqsave
//    forms also soft-mask IRQs, which is what keeps IRQ handlers out of the
//    section. There is no try_lock(): a LocalLock cannot tell whether an
//    interrupted frame holds it, so it must never be taken from a context
//    that may interrupt its holder. (A compile-fail test keeps it that way.)
//  - LocalTryLock: a LocalLock plus an `acquired` byte, usable from any
//    context: lock() expects the byte clear and sets it, unlock() clears it,
//    try_lock() fails when it is set — that is, when an NMI or IRQ interrupted
//    the frame holding it on this CPU. Check-then-set needs no RMW because
//    interrupts nest strictly on one CPU. is_locked() reads the byte.
//  - Both types name their operations alike (lock, unlock, lock_irqsave,
//    unlock_irqrestore), the way the kernel dispatches on the lock type.
//  - lock() on either type and every operation of LocalLock require a CPU.
//    ANYCTX_DEBUG builds report (fatal): lock() in NMI context (context rule:
//    an NMI may interrupt the holder; use LocalTryLock::try_lock()); lock()
//    while the lock is held (nested critical section: an interrupt took a
//    lock its interrupted frame holds), naming both sites; unlock() of a lock
//    that is not held, or on another CPU than the one that took it.
//  - ANYCTX_DEBUG builds feed the lock validator (validator.h): lock() is a
//    waiting acquisition (reported inside a nolock call, and from IRQ context
//    when task context holds the class with IRQs enabled), try_lock() is not.
//  - Harness sites kLocalLockHeld after taking, kLocalLockRelease before
//    releasing.
// Signal safety: all operations are async-signal-safe.
#pragma once

#include <atomic>
#include <cstdint>

#include "anyctx/ctx/config.h"
#include "anyctx/ctx/context.h"
#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/site.h"
#include "anyctx/ctx/src_loc.h"
#include "anyctx/lock/validator.h"

namespace anyctx {

class LocalTryLock;

class ANYCTX_CAPABILITY("local lock") LocalLock {
 public:
  explicit constexpr LocalLock(const char* class_name) : class_name_(class_name) {}
  LocalLock(const LocalLock&) = delete;
  LocalLock& operator=(const LocalLock&) = delete;

  // Context: task or IRQ, on the CPU that owns this lock.
  void lock(SrcLoc at = SrcLoc::here()) ANYCTX_ACQUIRE() {
    if constexpr (kDebug) check_may_wait(at);
    enter(at, LockAcquire::kWait);
  }
  void unlock() ANYCTX_RELEASE() { exit(); }

  [[nodiscard]] IrqFlags lock_irqsave(SrcLoc at = SrcLoc::here()) ANYCTX_ACQUIRE() {
    IrqFlags flags = irq_save();
    lock(at);
    return flags;
  }
  void unlock_irqrestore(IrqFlags flags) ANYCTX_RELEASE() {
    unlock();
    irq_restore(flags);
  }

  const char* class_name() const { return class_name_; }

 private:
  friend class LocalTryLock;

  void check_may_wait(SrcLoc at) const;
  void enter(SrcLoc at, LockAcquire how);
  void exit();
  [[noreturn]] ANYCTX_COLD void report_nested(SrcLoc at) const;
  [[noreturn]] ANYCTX_COLD void report_misuse(const char* what, SrcLoc at) const;

  const char* class_name_;
#if ANYCTX_DEBUG
  std::atomic<bool> held_{false};
  std::atomic<std::int16_t> owner_cpu_{kNoCpu};
  std::atomic<std::uint8_t> owner_level_{0};
  std::atomic<const char*> owner_file_{nullptr};
  std::atomic<std::uint32_t> owner_line_{0};
  mutable LockClassCache class_id_{0};  // the lock validator's class id
#endif
};

class ANYCTX_CAPABILITY("local trylock") LocalTryLock {
 public:
  explicit constexpr LocalTryLock(const char* class_name) : base_(class_name) {}
  LocalTryLock(const LocalTryLock&) = delete;
  LocalTryLock& operator=(const LocalTryLock&) = delete;

  // Context: task or IRQ, on the owning CPU, never while this CPU holds it.
  void lock(SrcLoc at = SrcLoc::here()) ANYCTX_ACQUIRE() {
    if (ANYCTX_UNLIKELY(is_locked())) base_.report_nested(at);
    if constexpr (kDebug) base_.check_may_wait(at);
    set_acquired(1);
    base_.enter(at, LockAcquire::kWait);
  }

  // Context: any, on the owning CPU. Return: false when a frame of this CPU
  // (one that this call interrupted) holds the lock.
  [[nodiscard]] bool try_lock(SrcLoc at = SrcLoc::here()) ANYCTX_TRY_ACQUIRE(true) {
    if (is_locked()) return false;
    set_acquired(1);  // before the bookkeeping: an IRQ from here on sees it taken
    base_.enter(at, LockAcquire::kTry);
    return true;
  }

  void unlock() ANYCTX_RELEASE() {
    if constexpr (kDebug) {
      if (ANYCTX_UNLIKELY(!is_locked())) base_.report_misuse("unlock() of a local trylock that is not held", SrcLoc{});
    }
    base_.exit();
    set_acquired(0);
  }

  [[nodiscard]] IrqFlags lock_irqsave(SrcLoc at = SrcLoc::here()) ANYCTX_ACQUIRE() {
    IrqFlags flags = irq_save();
    lock(at);
    return flags;
  }
  [[nodiscard]] bool try_lock_irqsave(IrqFlags& flags, SrcLoc at = SrcLoc::here())
      ANYCTX_TRY_ACQUIRE(true) {
    flags = irq_save();
    if (try_lock(at)) return true;
    irq_restore(flags);
    return false;
  }
  void unlock_irqrestore(IrqFlags flags) ANYCTX_RELEASE() {
    unlock();
    irq_restore(flags);
  }

  // Context: any. Return: whether a frame of the owning CPU holds the lock.
  bool is_locked() const { return acquired_.load(std::memory_order_relaxed) != 0; }
  const char* class_name() const { return base_.class_name(); }

 private:
  void set_acquired(std::uint8_t value) {
    detail::barrier_against_interrupts();
    acquired_.store(value, std::memory_order_relaxed);
    detail::barrier_against_interrupts();
  }

  LocalLock base_;
  std::atomic<std::uint8_t> acquired_{0};
};

// --- LocalLock bookkeeping ------------------------------------------------------

inline void LocalLock::enter(SrcLoc at, LockAcquire how) {
#if ANYCTX_DEBUG
  auto& t = detail::this_thread();
  int cpu = require_cpu("LocalLock::lock");
  if (ANYCTX_UNLIKELY(held_.load(std::memory_order_relaxed))) report_nested(at);
  t.preempt_count.store(static_cast<std::uint16_t>(t.preempt_count.load(std::memory_order_relaxed) + 1),
                        std::memory_order_relaxed);
  owner_cpu_.store(static_cast<std::int16_t>(cpu), std::memory_order_relaxed);
  owner_level_.store(static_cast<std::uint8_t>(context_level()), std::memory_order_relaxed);
  owner_file_.store(at.file, std::memory_order_relaxed);
  owner_line_.store(at.line, std::memory_order_relaxed);
  held_.store(true, std::memory_order_relaxed);
  validator_acquired(this, class_name_, class_id_, LockFamily::kLocal, how, at);
#else
  (void)at;
  (void)how;
#endif
  detail::barrier_against_interrupts();
  ANYCTX_SITE(kLocalLockHeld);
}

inline void LocalLock::exit() {
  ANYCTX_SITE(kLocalLockRelease);
  detail::barrier_against_interrupts();
#if ANYCTX_DEBUG
  auto& t = detail::this_thread();
  if (ANYCTX_UNLIKELY(!held_.load(std::memory_order_relaxed)))
    report_misuse("unlock() of a local lock that is not held", SrcLoc{});
  if (ANYCTX_UNLIKELY(owner_cpu_.load(std::memory_order_relaxed) != current_cpu()))
    report_misuse("unlock() on another cpu than the one that took the lock", SrcLoc{});
  validator_released(this);
  held_.store(false, std::memory_order_relaxed);
  t.preempt_count.store(static_cast<std::uint16_t>(t.preempt_count.load(std::memory_order_relaxed) - 1),
                        std::memory_order_relaxed);
#endif
}

}  // namespace anyctx
