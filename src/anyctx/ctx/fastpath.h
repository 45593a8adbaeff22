// ctx/fastpath.h — two helpers the per-CPU fast paths (page_alloc.cc's pcp,
// slab.cc's CPU slab) share. Internal: not part of the library's API.
//
//  - one_register(p): `p`, hidden from the optimiser, so that it stays one
//    register. Left visible, a fast path folds the per-CPU base and the
//    structure's offset into every access, keeps both live and runs out of
//    caller-saved registers (three pushes and pops on kmalloc).
//  - count_one(c): c + 1 by a relaxed load and store, no RMW. Only for a
//    counter with one writer at a time (a per-CPU slot written under that
//    CPU's local lock, or by its task context alone); readers may see it
//    lag, never tear.
// Context: any.
#pragma once

#include <atomic>
#include <cstdint>

#include "anyctx/ctx/config.h"

namespace anyctx::detail {

template <class T>
ANYCTX_ALWAYS_INLINE T* one_register(T* p) {
  asm("" : "+r"(p));
  return p;
}

ANYCTX_ALWAYS_INLINE void count_one(std::atomic<std::uint64_t>& counter) {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

}  // namespace anyctx::detail
