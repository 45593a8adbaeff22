// anyctx/ctx/reclaim.h — the reclaim-hook registry ("shrinkers").
//
// Contract:
//  - Layers that cache memory (pcp lists, deferred lists, slab caches)
//    register a shrinker; a spinning allocation that allows direct reclaim
//    runs them all (reclaim_run) and retries.
//  - A shrinker returns how many pages it gave back. It runs in task context
//    and may take spinning locks.
//  - At most kMaxShrinkers; registration is idempotent.
// Context: task.
#pragma once

#include <cstddef>

#include "anyctx/ctx/config.h"  // the link-time configuration check

namespace anyctx {

using Shrinker = std::size_t (*)();

inline constexpr int kMaxShrinkers = 8;

// Return: false when kMaxShrinkers are already registered.
[[nodiscard]] bool reclaim_register(Shrinker shrinker);
// Return: false when `shrinker` was not registered.
bool reclaim_unregister(Shrinker shrinker);
// Runs every shrinker once. Return: pages given back, summed.
std::size_t reclaim_run();

}  // namespace anyctx
