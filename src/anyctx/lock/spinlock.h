// anyctx/lock/spinlock.h — a 32-bit test-and-test-and-set spinlock.
//
// Contract:
//  - try_lock() is one atomic RMW (a compare-exchange). Callable from any
//    context, including NMI: it never waits.
//  - lock() is try_lock() and, only when that fails, the cold lock_slow(),
//    which spins on plain loads (pausing, yielding now and then) until the
//    word reads free and only then retries the RMW: never two blind RMWs in a
//    row (the seed's option (a)). lock() may spin: task and IRQ context only.
//  - Callers that must not spin branch first (the seed's option (b)):
//        if (!allows_spinning(gfp)) { if (!l.try_lock()) return nullptr; }
//        else l.lock();
//    never `if (!l.try_lock()) l.lock();`.
//  - unlock() is one release store.
//  - The *_irqsave forms also soft-mask IRQs (context.h) around the section.
//  - A lock has a class name ("zone.lock") for diagnostics.
//  - ANYCTX_DEBUG builds record the owner CPU and context in the lock word
//    and the acquisition site beside it, and report (fatal) at once:
//      * lock() in NMI context, even when it would not have waited;
//      * a CPU spinning on a lock that the same CPU holds — in an interrupted
//        frame (self-deadlock) or in this very frame (recursion) — naming the
//        lock class and both acquisition sites, instead of hanging;
//      * unlock() of a lock that is not locked;
//    and feed the lock validator (validator.h): lock() is a waiting
//    acquisition, try_lock() is not.
//  - TSan builds annotate the lock as a mutex. Inside the slow path every
//    spin iteration passes the harness site kSpinWait, so the deterministic
//    executor can hand the CPU to the lock holder.
// Signal safety: all operations are async-signal-safe.
#pragma once

#include <atomic>
#include <cstdint>

#include "anyctx/ctx/config.h"
#include "anyctx/ctx/context.h"
#include "anyctx/ctx/src_loc.h"
#include "anyctx/lock/lock_stats.h"
#include "anyctx/lock/tsan_mutex.h"
#include "anyctx/lock/validator.h"

namespace anyctx {

class ANYCTX_CAPABILITY("spinlock") Spinlock {
 public:
  explicit constexpr Spinlock(const char* class_name) : class_name_(class_name) {}
#if ANYCTX_TSAN
  ~Spinlock() { __tsan_mutex_destroy(this, 0); }
#endif
  Spinlock(const Spinlock&) = delete;
  Spinlock& operator=(const Spinlock&) = delete;

  // Context: any. Return: true when this call took the lock.
  [[nodiscard]] bool try_lock(SrcLoc at = SrcLoc::here()) ANYCTX_TRY_ACQUIRE(true);
  // Context: task or IRQ (never NMI). Spins until the lock is taken.
  void lock(SrcLoc at = SrcLoc::here()) ANYCTX_ACQUIRE();
  // Context: the frame that holds the lock.
  void unlock() ANYCTX_RELEASE();

  // As lock()/try_lock(), with IRQs soft-masked until unlock_irqrestore().
  [[nodiscard]] IrqFlags lock_irqsave(SrcLoc at = SrcLoc::here()) ANYCTX_ACQUIRE();
  [[nodiscard]] bool try_lock_irqsave(IrqFlags& flags, SrcLoc at = SrcLoc::here())
      ANYCTX_TRY_ACQUIRE(true);
  void unlock_irqrestore(IrqFlags flags) ANYCTX_RELEASE();

  // Context: any. Return: whether some frame holds the lock (a snapshot).
  bool is_locked() const { return word_.load(std::memory_order_relaxed) != 0; }
  // Context: any. Return: the CPU holding the lock, or kNoCpu when it is free,
  // held by a thread that is not a CPU, or ANYCTX_DEBUG is 0 (a snapshot).
  int owner_cpu() const {
    std::uint32_t w = word_.load(std::memory_order_relaxed);
    return !kDebug || w == 0 || (w & 0xffff) == kUnknownCpu ? kNoCpu : static_cast<int>(w & 0xffff);
  }
  // Context: any. Return: where the holder took the lock (a snapshot; empty
  // when the lock is free or ANYCTX_DEBUG is 0). For deadlock reports.
  SrcLoc owner_site() const {
#if ANYCTX_DEBUG
    if (is_locked()) return SrcLoc{owner_file_.load(std::memory_order_relaxed), owner_line_.load(std::memory_order_relaxed)};
#endif
    return SrcLoc{};
  }
  const char* class_name() const { return class_name_; }

 private:
  static constexpr std::uint32_t kLockedBit = 1u << 31;
  static constexpr std::uint32_t kUnknownCpu = 0xffff;

  static std::uint32_t owner_word();
  bool acquire_word(SrcLoc at);
  ANYCTX_COLD void lock_slow(SrcLoc at);
  void check_may_spin(SrcLoc at) const;
  [[noreturn]] ANYCTX_COLD void report_self_deadlock(std::uint32_t word, SrcLoc at) const;
  [[noreturn]] ANYCTX_COLD void report_misuse(const char* what, SrcLoc at) const;

  std::atomic<std::uint32_t> word_{0};
  const char* class_name_;
#if ANYCTX_DEBUG
  std::atomic<const char*> owner_file_{nullptr};
  std::atomic<std::uint32_t> owner_line_{0};
  mutable LockClassCache class_id_{0};  // the lock validator's class id
#endif
};

// Context: any. Return: the spinlock this thread is spinning on in lock_slow
// (innermost frame), or nullptr; always nullptr when ANYCTX_DEBUG is 0. For
// deadlock reports.
const Spinlock* spinlock_spinning_on();

// --- inline fast paths -------------------------------------------------------

inline std::uint32_t Spinlock::owner_word() {
  if constexpr (kDebug) {
    int cpu = current_cpu();
    std::uint32_t id = cpu == kNoCpu ? kUnknownCpu : static_cast<std::uint32_t>(cpu);
    return kLockedBit | (static_cast<std::uint32_t>(context_level()) << 16) | id;
  } else {
    return kLockedBit;
  }
}

inline bool Spinlock::acquire_word(SrcLoc at) {
  std::uint32_t expected = 0;
  ANYCTX_COUNT_LOCK_RMW();
  if (!word_.compare_exchange_strong(expected, owner_word(), std::memory_order_acquire,
                                     std::memory_order_relaxed))
    return false;
#if ANYCTX_DEBUG
  owner_file_.store(at.file, std::memory_order_relaxed);
  owner_line_.store(at.line, std::memory_order_relaxed);
#else
  (void)at;
#endif
  return true;
}

inline bool Spinlock::try_lock(SrcLoc at) {
  ANYCTX_TSAN_MUTEX(__tsan_mutex_pre_lock(this, __tsan_mutex_try_lock));
  bool taken = acquire_word(at);
#if ANYCTX_DEBUG
  if (taken) validator_acquired(this, class_name_, class_id_, LockFamily::kSpin, LockAcquire::kTry, at);
#endif
  ANYCTX_TSAN_MUTEX(__tsan_mutex_post_lock(
      this, taken ? __tsan_mutex_try_lock : __tsan_mutex_try_lock | __tsan_mutex_try_lock_failed, 0));
  return taken;
}

inline void Spinlock::lock(SrcLoc at) {
  if constexpr (kDebug) check_may_spin(at);
  ANYCTX_TSAN_MUTEX(__tsan_mutex_pre_lock(this, 0));
  if (ANYCTX_UNLIKELY(!acquire_word(at))) lock_slow(at);
#if ANYCTX_DEBUG
  validator_acquired(this, class_name_, class_id_, LockFamily::kSpin, LockAcquire::kWait, at);
#endif
  ANYCTX_TSAN_MUTEX(__tsan_mutex_post_lock(this, 0, 0));
}

inline void Spinlock::unlock() {
  if constexpr (kDebug) {
    if (ANYCTX_UNLIKELY(word_.load(std::memory_order_relaxed) == 0))
      report_misuse("unlock() of a spinlock that is not locked", SrcLoc{});
  }
#if ANYCTX_DEBUG
  validator_released(this);
#endif
  ANYCTX_TSAN_MUTEX(__tsan_mutex_pre_unlock(this, 0));
  word_.store(0, std::memory_order_release);
  ANYCTX_TSAN_MUTEX(__tsan_mutex_post_unlock(this, 0));
}

inline IrqFlags Spinlock::lock_irqsave(SrcLoc at) {
  IrqFlags flags = irq_save();
  lock(at);
  return flags;
}

inline bool Spinlock::try_lock_irqsave(IrqFlags& flags, SrcLoc at) {
  flags = irq_save();
  if (try_lock(at)) return true;
  irq_restore(flags);
  return false;
}

inline void Spinlock::unlock_irqrestore(IrqFlags flags) {
  unlock();
  irq_restore(flags);
}

}  // namespace anyctx
