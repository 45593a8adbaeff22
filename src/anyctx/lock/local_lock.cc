#include "anyctx/lock/local_lock.h"

#include "anyctx/ctx/report.h"

namespace anyctx {

void LocalLock::check_may_wait(SrcLoc at) const {
#if ANYCTX_DEBUG
  // First: inside a nolock call its report names the entry point and what
  // the frame holds, which says more than the NMI context rule below.
  validator_wait(this, class_name_, class_id_, LockFamily::kLocal, at);
#endif
  if (ANYCTX_UNLIKELY(in_nmi()))
    report_misuse("lock() in NMI context: an NMI may interrupt the holder; use LocalTryLock::try_lock() (context rule)", at);
}

void LocalLock::report_nested(SrcLoc at) const {
  Report r("nested critical section");
  r << "local lock '" << class_name_ << "' (" << static_cast<const void*>(this) << ") lock() at " << at
    << " on cpu " << current_cpu() << " (" << context_name(context_level()) << ") while it is held";
#if ANYCTX_DEBUG
  int owner = owner_cpu_.load(std::memory_order_relaxed);
  auto owner_level = static_cast<ContextLevel>(owner_level_.load(std::memory_order_relaxed));
  r << " by cpu " << owner << " (" << context_name(owner_level);
  if (owner == current_cpu() && owner_level < context_level()) r << ", the interrupted frame";
  r << ") since " << SrcLoc{owner_file_.load(std::memory_order_relaxed), owner_line_.load(std::memory_order_relaxed)};
#endif
  r << "; an interrupt that may find its own CPU's lock held must use try_lock()";
  r.fatal();
}

void LocalLock::report_misuse(const char* what, SrcLoc at) const {
  Report r("local lock misuse");
  r << "'" << class_name_ << "' (" << static_cast<const void*>(this) << "): " << what;
  if (at.known()) r << " at " << at;
  r << " (cpu " << current_cpu() << ", " << context_name(context_level()) << " context)";
  r.fatal();
}

}  // namespace anyctx
