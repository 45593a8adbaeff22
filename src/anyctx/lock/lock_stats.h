// anyctx/lock/lock_stats.h — counts atomic read-modify-write attempts on lock
// words, for the lock benchmarks (the seed's "two ownership requests" cost).
//
// Contract: compiled in only when ANYCTX_LOCK_STATS is 1 (a benchmark-only
// build); otherwise ANYCTX_COUNT_LOCK_RMW() is empty and the counter reads 0.
// The counter is per thread. Context: any.
#pragma once

#include <cstdint>

#include "anyctx/ctx/config.h"  // the link-time configuration check

#ifndef ANYCTX_LOCK_STATS
#define ANYCTX_LOCK_STATS 0
#endif

namespace anyctx {

namespace detail {
extern thread_local constinit std::uint64_t t_lock_rmw;
}  // namespace detail

// Return: lock-word RMW attempts made by this thread so far.
inline std::uint64_t lock_rmw_count() { return detail::t_lock_rmw; }

}  // namespace anyctx

#if ANYCTX_LOCK_STATS
#define ANYCTX_COUNT_LOCK_RMW() (++::anyctx::detail::t_lock_rmw)
#else
#define ANYCTX_COUNT_LOCK_RMW() ((void)0)
#endif
