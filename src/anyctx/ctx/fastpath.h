// ctx/fastpath.h — two helpers the per-CPU fast paths (page_alloc.cc's pcp,
// slab.cc's CPU slab) share. Internal: not part of the library's API.
//
//  - one_register(v): `v`, hidden from the optimiser, so that it stays one
//    register, computed where it is. Left visible, a fast path folds the
//    per-CPU base and the structure's offset into every access, keeps both
//    live and runs out of caller-saved registers (three pushes and pops on
//    kmalloc); a key folded into the XOR that applies it adds an XOR to the
//    chain it sits on (slab_internal.h's link_key).
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
ANYCTX_ALWAYS_INLINE T one_register(T v) {
  asm("" : "+r"(v));
  return v;
}

ANYCTX_ALWAYS_INLINE void count_one(std::atomic<std::uint64_t>& counter) {
  counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

}  // namespace anyctx::detail
