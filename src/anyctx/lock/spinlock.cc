#include "anyctx/lock/spinlock.h"

#include <sched.h>

#include "anyctx/ctx/report.h"
#include "anyctx/ctx/site.h"

namespace anyctx {

namespace detail {
thread_local constinit std::uint64_t t_lock_rmw = 0;
}  // namespace detail

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

// Spins between yields: long enough for a short critical section on another
// core, short enough that an oversubscribed machine hands over the core.
constexpr unsigned kSpinsPerYield = 128;

}  // namespace

namespace {
thread_local constinit const Spinlock* t_spinning_on = nullptr;
}  // namespace

const Spinlock* spinlock_spinning_on() { return t_spinning_on; }

void Spinlock::lock_slow(SrcLoc at) {
  // Interrupts nest strictly, so saving and restoring keeps the innermost.
  const Spinlock* outer = t_spinning_on;
  if constexpr (kDebug) t_spinning_on = this;
  unsigned spins = 0;
  for (;;) {
    std::uint32_t word;
    while ((word = word_.load(std::memory_order_relaxed)) != 0) {
      if constexpr (kDebug) {
        int cpu = current_cpu();
        if (cpu != kNoCpu && (word & 0xffff) == static_cast<std::uint32_t>(cpu))
          report_self_deadlock(word, at);
      }
      // The site runs harness code (a hand-over to another CPU, an injected
      // NMI): TSan must see it as ordinary code, not as part of lock().
      ANYCTX_TSAN_MUTEX(__tsan_mutex_pre_divert(this, 0));
      ANYCTX_SITE(kSpinWait);
      ANYCTX_TSAN_MUTEX(__tsan_mutex_post_divert(this, 0));
      cpu_relax();
      if (++spins % kSpinsPerYield == 0) sched_yield();
    }
    if (acquire_word(at)) break;
  }
  if constexpr (kDebug) t_spinning_on = outer;
}

void Spinlock::check_may_spin(SrcLoc at) const {
#if ANYCTX_DEBUG
  // First: inside a nolock call its report names the entry point and what
  // the frame holds, which says more than the NMI context rule below.
  validator_wait(this, class_name_, class_id_, LockFamily::kSpin, at);
#endif
  if (ANYCTX_UNLIKELY(in_nmi()))
    report_misuse("lock() in NMI context: an NMI may only try_lock() (context rule)", at);
}

void Spinlock::report_self_deadlock(std::uint32_t word, SrcLoc at) const {
  auto owner_level = static_cast<ContextLevel>((word >> 16) & 0x3);
  ContextLevel level = context_level();
  Report r("self-deadlock");
  r << "cpu " << current_cpu() << " (" << context_name(level) << ") spins on spinlock '"
    << class_name_ << "' (" << static_cast<const void*>(this) << ") at " << at
    << ", which the same cpu already holds ";
  if (owner_level < level) {
    r << "in the interrupted " << context_name(owner_level) << " frame";
  } else {
    r << "in this " << context_name(owner_level) << " frame (recursive lock)";
  }
  if (SrcLoc taken = owner_site(); taken.known()) r << ", taken at " << taken;
  r.fatal();
}

void Spinlock::report_misuse(const char* what, SrcLoc at) const {
  Report r("spinlock misuse");
  r << "'" << class_name_ << "' (" << static_cast<const void*>(this) << "): " << what;
  if (at.known()) r << " at " << at;
  r << " (cpu " << current_cpu() << ", " << context_name(context_level()) << " context)";
  r.fatal();
}

}  // namespace anyctx
