// anyctx/page/page_alloc_fast.h — internal: the inline fast paths of
// alloc_pages, free_pages, alloc_pages_nolock and free_pages_nolock
// (page_alloc.h includes this header at its end, so a call site inlines
// them). Not part of the API.
//
// Contract (the entry points' own is in page_alloc.h):
//  - Each entry point is one fast path, inline, that completes on this
//    CPU's pcp or falls back to one out-of-line, cold slow path in
//    page_alloc.cc (alloc_pages_slow, alloc_pages_nolock_slow;
//    free_pages_slow before the last reference is taken, free_taken_slow
//    after it). A fast path that gives up before it takes the reference
//    has changed nothing.
//  - The pcp is taken by try_lock (no atomic RMW, no IRQ mask): it fails
//    only in a frame that interrupted the holder, which then goes to the
//    buddy lists. A drain request that came meanwhile is served after the
//    release (pcp_serve_request); that and the zeroing of a kGfpZero block
//    (clear_pages, every alloc_pages_nolock block) are the fast paths'
//    only other calls.
//  - What it reads and writes is the layout of page_alloc_internal.h, which
//    the ABI switches of ctx/config.h fix; every file that includes
//    page_alloc.h must be built with the library's values, as config.h
//    enforces. Double-free checking (kExactDoubleFree) and ASan poisoning
//    follow the same switches as in the library.
#pragma once

#include <bit>

#include "anyctx/ctx/context.h"
#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/fastpath.h"
#include "anyctx/ctx/site.h"
#include "anyctx/lock/validator.h"
#include "anyctx/page/page_alloc.h"
#include "anyctx/page/page_alloc_internal.h"
#include "anyctx/page/page_clear.h"

namespace anyctx {
namespace detail {

// The slow paths and what the fast paths call out of line (page_alloc.cc).
ANYCTX_COLD Page* alloc_pages_slow(Gfp gfp, unsigned order, int cpu);
ANYCTX_COLD Page* alloc_pages_nolock_slow(Gfp gfp, unsigned order);
ANYCTX_COLD Page* pcp_serve_request_then(Pcp& pcp, Gfp gfp, Page* page);
ANYCTX_COLD void pcp_serve_request(Pcp& pcp, Gfp gfp);
ANYCTX_COLD void pcp_trim_unlock_slow(Pcp& pcp, Gfp gfp);
ANYCTX_COLD bool free_pages_bad(const char* entry, Page* page, unsigned order);
ANYCTX_COLD void free_taken_slow(Page* page, unsigned order, Gfp gfp, int path);
ANYCTX_COLD void free_pages_slow(const char* entry, Page* page, unsigned order, Gfp gfp, int path);
// Debug builds' entry checks: fatal `not a cpu` and `context rule` reports.
ANYCTX_COLD void alloc_pages_check_context(Gfp gfp);
ANYCTX_COLD void free_pages_check_context();

inline bool pcp_trylock(Pcp& pcp) ANYCTX_NO_TSA {
  if (!pcp.lock.try_lock()) return false;
  ANYCTX_SITE(kPcpLocked);
  return true;
}

inline void pcp_release(Pcp& pcp) ANYCTX_NO_TSA {
  ANYCTX_SITE(kPcpUnlock);
  pcp.lock.unlock();
  ANYCTX_SITE(kPcpUnlocked);
}

inline Page* prep_new_page(Page* page, unsigned order, Gfp gfp) {
  set_head(page, PageState::kAllocated, order);
  page->refcount.store(1, std::memory_order_relaxed);
  void* addr = block_address(page);
  ANYCTX_UNPOISON(addr, block_pages(order) * kPageSize);
  if (gfp.has(kGfpZero)) clear_pages(addr, block_pages(order));
  return page;
}

// The pcp hit shared by alloc_pages() and alloc_pages_nolock(): a block
// from `cpu`'s list of `order` (<= kPcpMaxOrder) when no fault plan is set,
// counted in the pcp's slot of kStatAllocOk for `path` and context level
// `ctx`, prepared with `gfp` (its kGfpZero), and a drain request that came
// meanwhile served after that with `gfp` (its reclaim bits say whether the
// drain may wait), so the hit itself makes no call. Return: the block, or
// nullptr for anything else (a plan, an empty list, a pcp held by an
// interrupted frame), which the slow path handles.
ANYCTX_ALWAYS_INLINE Page* pcp_alloc_fast(int cpu, unsigned order, int ctx, int path, Gfp gfp) {
  Pcp& pcp = *one_register(&g_pcp.on(cpu));
  if (ANYCTX_UNLIKELY(pcp.fault_plan.load(std::memory_order_relaxed))) return nullptr;
  if (ANYCTX_UNLIKELY(!pcp_trylock(pcp))) return nullptr;
  PcpList& list = pcp.lists[order];
  Page* page = list.head;
  if (ANYCTX_LIKELY(page != nullptr)) {
    list.pop();
    ANYCTX_SITE(kPcpListEdit);
    pcp_count_add(pcp, -static_cast<long>(block_pages(order)));
    count_one(pcp.stats.v[ctx][kStatAllocOk + path]);
  }
  pcp_release(pcp);
  if (ANYCTX_UNLIKELY(page == nullptr)) return nullptr;
  prep_new_page(page, order, gfp);
  if (ANYCTX_UNLIKELY(pcp.drain_requested.load(std::memory_order_relaxed)))
    return pcp_serve_request_then(pcp, gfp, page);
  return page;
}

// Validates a free of `page` at `order` and takes the last reference; any
// doubt goes to free_pages_bad(). The caller owns the block, so release
// builds take the reference with a plain check and store; debug and
// sanitizer builds with a compare-exchange, so that two CPUs freeing one
// block at once are reported exactly (a block freed twice in sequence is
// kAllocated no more, and that is checked in every build).
// Alignment to the order: checked builds test it; release builds test that
// `page` is a descriptor of the arena (the rotate sends an offset that is
// not a multiple of sizeof(Page) above the bound) and trust that a head in
// state kAllocated with `order` is aligned to it (every block the buddy
// lists hand out is; check_invariants() checks it). A misaligned free in
// release is still reported when the frame is a tail or heads a block of
// another order, which it is unless descriptors were corrupted.
// Return: true when the block is now the caller's to free.
ANYCTX_ALWAYS_INLINE bool free_pages_take(const char* entry, Page* page, unsigned order) {
  std::uintptr_t off = reinterpret_cast<std::uintptr_t>(page) - reinterpret_cast<std::uintptr_t>(g_arena.descs);
  bool in_place;
  if constexpr (kExactDoubleFree) {
    // In the arena, on a descriptor, aligned to the order: one mask.
    in_place = order <= kMaxOrder && off < g_arena.pages * sizeof(Page) &&
               (off & ((sizeof(Page) << order) - 1)) == 0;
  } else {
    static_assert(sizeof(Page) == 64);
    in_place = order <= kMaxOrder && std::rotr(off, 6) < g_arena.pages;
  }
  // The order compared as the byte it is stored in (in_place bounds it).
  if (ANYCTX_LIKELY(in_place && state_of(page) == PageState::kAllocated &&
                    page->order.load(std::memory_order_relaxed) == static_cast<std::uint8_t>(order))) {
    if constexpr (kExactDoubleFree) {
      std::int32_t one = 1;
      if (ANYCTX_LIKELY(page->refcount.compare_exchange_strong(one, 0, std::memory_order_acq_rel))) return true;
    } else if (ANYCTX_LIKELY(page->refcount.load(std::memory_order_relaxed) == 1)) {
      page->refcount.store(0, std::memory_order_relaxed);
      return true;
    }
  }
  return free_pages_bad(entry, page, order);
}

// The shared free: the common case (a CPU in task context, order <= 3, no
// cgroup, the pcp free and within `high` after the push) inline, without
// calls but tail calls; the rest in the *_slow functions above. Statistics
// of the fast path go to the task slot of this CPU, like stat_inc().
ANYCTX_ALWAYS_INLINE void free_pages_common(const char* entry, Page* page, unsigned order, Gfp gfp, int path) {
  int cpu = current_cpu();
  if (ANYCTX_UNLIKELY(order > kPcpMaxOrder || cpu == kNoCpu || !in_task()))
    return free_pages_slow(entry, page, order, gfp, path);
  if (ANYCTX_UNLIKELY(!free_pages_take(entry, page, order))) return;
  if (ANYCTX_UNLIKELY(page->memcg.load(std::memory_order_relaxed) != nullptr))
    return free_taken_slow(page, order, gfp, path);
  Pcp& pcp = *one_register(&g_pcp.on(cpu));
  if (ANYCTX_UNLIKELY(!pcp_trylock(pcp))) return free_taken_slow(page, order, gfp, path);
  count_one(pcp.stats.v[kTaskSlot][kStatFreed + path]);
  poison_block(page, order);
  set_head(page, PageState::kPcp, order);
  pcp.lists[order].push(page);
  ANYCTX_SITE(kPcpListEdit);
  int count = pcp.count.load(std::memory_order_relaxed) + (1 << order);
  pcp.count.store(count, std::memory_order_relaxed);
  if (ANYCTX_UNLIKELY(count > pcp.high)) return pcp_trim_unlock_slow(pcp, gfp);
  pcp_release(pcp);
  if (ANYCTX_UNLIKELY(pcp.drain_requested.load(std::memory_order_relaxed))) return pcp_serve_request(pcp, gfp);
}

}  // namespace detail

ANYCTX_ALWAYS_INLINE Page* alloc_pages(Gfp gfp, unsigned order) {
  int cpu = current_cpu();  // a thread that is not a CPU: reported by the slow path
  if constexpr (kDebug) detail::alloc_pages_check_context(gfp);
  // The common case first, one test each: the kswapd bit set (every
  // spinning composite has it; a gfp with the direct bit alone spins too and
  // takes the slow path), neither zeroed nor accounted, order <= 3, a CPU
  // in task context (the statistics' slot is known), then no fault plan
  // (the pcp's copy of the flag).
  if (ANYCTX_LIKELY((gfp & (kGfpAccount | kGfpZero | kGfpKswapdReclaim)) == kGfpKswapdReclaim &&
                    order <= kPcpMaxOrder && cpu != kNoCpu && in_task())) {
    // gfp has no kGfpZero here, and its reclaim bits let a drain wait.
    if (Page* page = detail::pcp_alloc_fast(cpu, order, detail::kTaskSlot, 0, gfp); ANYCTX_LIKELY(page != nullptr))
      return page;
  }
  return detail::alloc_pages_slow(gfp, order, cpu);
}

ANYCTX_ALWAYS_INLINE void free_pages(Page* page, unsigned order) {
  if constexpr (kDebug) detail::free_pages_check_context();
  detail::free_pages_common("free_pages", page, order, kGfpKernel, 0);
}

ANYCTX_ALWAYS_INLINE Page* alloc_pages_nolock(Gfp gfp, unsigned order) {
  NolockScope nolock("alloc_pages_nolock");  // the lock validator: nothing below may wait
  // The common case: no gfp bit (kGfpAccount and bad bits go to the slow
  // path), order <= 3, a CPU, no fault plan; any context, counted in the
  // slot of the context level it runs at.
  int cpu = current_cpu();
  if (ANYCTX_LIKELY(gfp.empty() && order <= kPcpMaxOrder && cpu != kNoCpu)) {
    // kGfpZero zeroes the block; without a reclaim bit a drain never waits.
    int ctx = static_cast<int>(context_level());
    if (Page* page = detail::pcp_alloc_fast(cpu, order, ctx, 1, kGfpZero); ANYCTX_LIKELY(page != nullptr)) return page;
  }
  return detail::alloc_pages_nolock_slow(gfp, order);
}

ANYCTX_ALWAYS_INLINE void free_pages_nolock(Page* page, unsigned order) {
  NolockScope nolock("free_pages_nolock");
  detail::free_pages_common("free_pages_nolock", page, order, Gfp{}, 1);
}

}  // namespace anyctx
