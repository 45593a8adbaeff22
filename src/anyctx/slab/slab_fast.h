// anyctx/slab/slab_fast.h — internal: the inline fast paths of kmalloc,
// kmalloc_nolock, kfree and kfree_nolock (slab.h includes this header at
// its end, so a call site inlines them). Not part of the API.
//
// Contract (the entry points' own is in slab.h):
//  - Each entry point is one fast path, inline, that either completes on
//    this CPU's CpuSlab or falls back to exactly one out-of-line, cold slow
//    path (detail::kmalloc_slow, kmalloc_nolock_slow, kfree_slow,
//    kfree_nolock_slow in slab.cc). A fast path that gives up has changed
//    nothing: the slow path starts over and does the reporting.
//  - Only a task frame of a CPU takes a fast path (current_task_cpu():
//    IRQ and NMI frames, and threads that are not CPUs, go to the slow
//    path), on the CPU's task set of CPU slabs (slab_internal.h). No other
//    frame uses that set, and a task frame never interrupts another, so the
//    fast paths take no lock: they store the freelist's head and one
//    counter, nothing else. The sites kSlabCpuLocked and kSlabCpuUnlock
//    still mark where such a section begins and ends.
//  - It makes no call inside the section (site hits are compiled out of
//    release builds), so it needs no saved registers.
//  - What it reads and writes is the layout of slab_internal.h, which the
//    ABI switches of ctx/config.h fix; every file that includes slab.h
//    must be built with the library's values, as config.h enforces.
//  - The allocation bitmap (kSlabExactFree), ASan poisoning and the
//    lock validator are compiled in or out by the same switches as in the
//    library, so an inlined fast path and the slow path it falls back to
//    agree on them.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "anyctx/ctx/context.h"
#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/fastpath.h"
#include "anyctx/ctx/site.h"
#include "anyctx/lock/validator.h"
#include "anyctx/slab/slab.h"
#include "anyctx/slab/slab_internal.h"

namespace anyctx {
namespace detail {

// The slow paths: everything the fast paths do not do (slab.cc).
ANYCTX_COLD void* kmalloc_slow(std::size_t size, Gfp gfp);
ANYCTX_COLD void* kmalloc_nolock_slow(std::size_t size, Gfp gfp);
ANYCTX_COLD void kfree_slow(const void* p);
ANYCTX_COLD void kfree_nolock_slow(const void* p);
// A fatal `context rule` report (debug builds' entry checks).
[[noreturn]] ANYCTX_COLD void report_slab_context(const char* what);
// Zeroes the whole of `p`, an object of `c` (kGfpZero; slab.cc).
void clear_object(const KmemCache& c, void* p);

// The size class of every multiple of 8 bytes up to kKmallocMaxSize, by
// (size + 7) / 8: one load instead of a bit scan and its corrections.
inline constexpr auto kSizeClassOf = [] {
  std::array<std::uint8_t, kKmallocMaxSize / kKmallocMinSize + 1> t{};
  for (std::size_t i = 0; i < t.size(); ++i) {
    std::size_t size = std::max<std::size_t>(i * kKmallocMinSize, 1);
    t[i] = static_cast<std::uint8_t>(std::bit_width(size - 1) < 3 ? 0 : std::bit_width(size - 1) - 3);
  }
  return t;
}();

ANYCTX_ALWAYS_INLINE int size_index(std::size_t size, Gfp gfp) {
  if (ANYCTX_UNLIKELY(size > kKmallocMaxSize)) return -1;
  int cls = kSizeClassOf[(size + kKmallocMinSize - 1) / kKmallocMinSize];
  return gfp.has(kGfpAccount) ? cls + kKmallocClasses : cls;
}

// A site hit where the site is a value, not a name (ANYCTX_SITE's case).
ANYCTX_ALWAYS_INLINE void slab_site(Site s) {
#if ANYCTX_SITES
  site_hit(s);
#else
  (void)s;
#endif
}

ANYCTX_ALWAYS_INLINE std::uint64_t object_bit(unsigned index) { return std::uint64_t{1} << (index & 63); }

// The allocation bits (kSlabExactFree builds only).
// Return: false when the object's bit was already set.
ANYCTX_ALWAYS_INLINE bool mark_allocated(Slab* s, unsigned index) {
  std::uint64_t bit = object_bit(index);
  return (s->allocated[index >> 6].fetch_or(bit, std::memory_order_relaxed) & bit) == 0;
}

// Return: false when the object's bit was already clear (a double free).
ANYCTX_ALWAYS_INLINE bool mark_free(Slab* s, unsigned index) {
  std::uint64_t bit = object_bit(index);
  return (s->allocated[index >> 6].fetch_and(~bit, std::memory_order_relaxed) & bit) != 0;
}

// The CPU slab lock, which the slow paths take (the task frames' fast paths
// need none): a LocalTryLock taken without masking IRQs, so it costs
// neither an atomic RMW nor an IRQ mask. Only this CPU's frames take it,
// and they nest strictly: a try_lock fails only in a frame that
// interrupted the holder (IRQ or NMI), which must then leave the CPU slab
// alone and go around it (alloc_around_cpu_slab, free_slow, the deferred
// list). Return: whether it was taken.
ANYCTX_ALWAYS_INLINE bool cpu_trylock(CpuSlab& cs) ANYCTX_NO_TSA {
  if (ANYCTX_UNLIKELY(!cs.lock.try_lock())) return false;
  ANYCTX_SITE(kSlabCpuLocked);
  return true;
}

ANYCTX_ALWAYS_INLINE void cpu_unlock(CpuSlab& cs) ANYCTX_NO_TSA {
  ANYCTX_SITE(kSlabCpuUnlock);
  cs.lock.unlock();
}

// kmalloc's pop (in a task frame's section, or the CPU lock held), counted.
// The checks of slab_pop, with the cache's constants and the slab's base
// read from `cs` (copies).
// Return: the object, or 0 when the list is empty or anything is wrong with
// it (the slow path pops again and reports).
ANYCTX_ALWAYS_INLINE std::uintptr_t cpu_pop_fast(CpuSlab& cs) {
  std::uintptr_t obj = cs.free.head;
  if (ANYCTX_UNLIKELY(obj == 0)) return 0;
  std::uintptr_t next = decode_link(cs.secret, load_link_word(obj), obj);
  slab_site(Site::kSlabFreelistEdit);
  // link_ok() with the common case first: more follow and `next` is an
  // object of the slab (next == 0 fails that test too: 0 - base, for any
  // base in the address space, has bits set above the largest block).
  std::uint64_t allocs = cs.allocs.load(std::memory_order_relaxed);
  std::uint32_t count = cpu_free_count(cs, allocs);
  if (ANYCTX_LIKELY(count > 1)) {
    if (ANYCTX_UNLIKELY(((next - cs.base) & cs.object_mask) != 0)) return 0;
  } else if (ANYCTX_UNLIKELY(count != 1 || next != 0)) {
    return 0;
  }
  if (kSlabExactFree && ANYCTX_UNLIKELY(!mark_allocated(cs.slab, object_index(cs.slab, obj)))) return 0;
  cs.free.head = next;
  cs.allocs.store(allocs + 1, std::memory_order_relaxed);  // count_one, the count with it
  return obj;
}

// Hands out `obj`, just allocated from `c` for `size` bytes: opens it,
// clears the encoded link (it stays ours) or the whole object with
// `zero`, poisons the bytes past `size`. The fast paths pass false: a
// call would make them save registers.
ANYCTX_ALWAYS_INLINE void* finish_alloc(const KmemCache& c, std::uintptr_t obj, std::size_t size, bool zero) {
  void* p = reinterpret_cast<void*>(obj);
  ANYCTX_UNPOISON(p, c.size);
  if (zero) {
    clear_object(c, p);
  } else {
    std::memset(p, 0, sizeof(std::uintptr_t));
  }
  if (size == 0) size = 1;
  ANYCTX_POISON(static_cast<char*>(p) + size, c.size - size);
  return p;
}

// The CPU slab `idx` of the task set of `cpu`, kept in one register. Debug
// builds check that its lock is free: a task frame's slow path holds it, so
// a fast path that finds it held runs inside that section (a path that
// re-entered the slab), which lock() reports as a nested critical section.
ANYCTX_ALWAYS_INLINE CpuSlab& task_cpu_slab(int cpu, int idx) ANYCTX_NO_TSA {
  CpuSlab& cs = *one_register(&g_cpu_slabs.on(cpu).sets[kTaskCpuSlabs][idx]);
  if constexpr (kDebug) {
    if (ANYCTX_UNLIKELY(cs.lock.is_locked())) cs.lock.lock();  // fatal: names both sites
  }
  return cs;
}

// The fast path shared by kmalloc and kmalloc_nolock, for a gfp without
// kGfpZero (and, for kmalloc_nolock, already checked): an object popped off
// the task CPU slab's freelist of the size class. Return: it, or nullptr
// (not a task frame of a CPU, too large, an empty or suspect freelist),
// having changed nothing.
ANYCTX_ALWAYS_INLINE void* kmalloc_fast(std::size_t size, Gfp gfp) {
  int cpu = current_task_cpu();
  int idx = size_index(size, gfp);
  if (ANYCTX_LIKELY(cpu != kNoCpu && idx >= 0)) {
    CpuSlab& cs = task_cpu_slab(cpu, idx);
    ANYCTX_SITE(kSlabCpuLocked);
    std::uintptr_t obj = cpu_pop_fast(cs);
    ANYCTX_SITE(kSlabCpuUnlock);
    if (ANYCTX_LIKELY(obj != 0)) return finish_alloc(g_caches[idx], obj, size, false);
  }
  return nullptr;
}

// The fast free of `p` in a task frame of `cpu` (current_task_cpu(), maybe
// kNoCpu): onto the task CPU freelist when p starts an object of its page's
// slab table entry (the checks of free_prepare, without reporting), that
// entry is the task set's CPU slab (and so live: no slab is released while
// it is a CPU slab) and p is not on top of the CPU freelist (with
// kSlabExactFree: its allocation bit is set). Anything else returns false
// untouched: the slow path frees again and reports. It reads no KmemCache
// (the slab's and the CpuSlab's copies of its constants), keeps the CpuSlab
// in one register and has an early out per test. Return: whether it was
// freed.
ANYCTX_ALWAYS_INLINE bool free_fast(const void* p, int cpu) {
  if (ANYCTX_UNLIKELY(cpu == kNoCpu)) return false;
  Slab* s = slab_entry_of(p);  // nullptr for nullptr; live if it is cs.slab below
  if (ANYCTX_UNLIKELY(s == nullptr)) return false;
  std::uintptr_t obj = reinterpret_cast<std::uintptr_t>(p);
  if (ANYCTX_UNLIKELY(((obj - reinterpret_cast<std::uintptr_t>(s->base)) & s->object_mask) != 0)) return false;
  CpuSlab& cs = task_cpu_slab(cpu, s->cache_index);
  if (ANYCTX_UNLIKELY(cs.slab != s) || ANYCTX_UNLIKELY(obj == cs.free.head) ||
      (kSlabExactFree && ANYCTX_UNLIKELY(!mark_free(s, object_index(s, obj))))) {
    return false;
  }
  ANYCTX_SITE(kSlabCpuLocked);
  ANYCTX_POISON(reinterpret_cast<void*>(obj), s->cache->size);
  store_link_word(obj, encode_link(cs.secret, cs.free.head, obj));
  slab_site(Site::kSlabFreelistEdit);
  cs.free.head = obj;
  count_one(cs.frees);  // the count with it
  ANYCTX_SITE(kSlabCpuUnlock);
  return true;
}

}  // namespace detail

// The entry points: one CPU, context and slab lookup each, shared by the
// lock, the counters and the freelist; anything unusual goes to the one
// *_slow.

ANYCTX_ALWAYS_INLINE void* kmalloc(std::size_t size, Gfp gfp) {
  if constexpr (kDebug) {
    if (ANYCTX_UNLIKELY(in_nmi())) detail::report_slab_context("kmalloc() in NMI context: use kmalloc_nolock()");
    if (ANYCTX_UNLIKELY(allows_direct_reclaim(gfp) && !in_task()))
      detail::report_slab_context(
          "kmalloc() with kGfpDirectReclaim in irq context: reclaim runs only in task context (use kGfpAtomic)");
  }
  // kGfpZero goes to the slow path too: its memset is a call, and a fast
  // path without calls (other than the tail call to the slow path) saves
  // no registers.
  if (ANYCTX_LIKELY(!gfp.has(kGfpZero))) {
    if (void* p = detail::kmalloc_fast(size, gfp); ANYCTX_LIKELY(p != nullptr)) return p;
  }
  return detail::kmalloc_slow(size, gfp);
}

ANYCTX_ALWAYS_INLINE void* kmalloc_nolock(std::size_t size, Gfp gfp) {
  NolockScope nolock("kmalloc_nolock");  // the lock validator: nothing below may wait
  // kGfpZero (as in kmalloc) and a bad gfp go to the slow path.
  if (ANYCTX_LIKELY((gfp & ~kGfpAccount).empty())) {
    if (void* p = detail::kmalloc_fast(size, gfp); ANYCTX_LIKELY(p != nullptr)) return p;
  }
  return detail::kmalloc_nolock_slow(size, gfp);
}

ANYCTX_ALWAYS_INLINE void kfree(const void* p) {
  if constexpr (kDebug) {
    if (ANYCTX_UNLIKELY(in_nmi() && p != nullptr))
      detail::report_slab_context("kfree() in NMI context: use kfree_nolock()");
  }
  if (ANYCTX_LIKELY(detail::free_fast(p, current_task_cpu()))) return;
  detail::kfree_slow(p);
}

ANYCTX_ALWAYS_INLINE void kfree_nolock(const void* p) {
  NolockScope nolock("kfree_nolock");
  if (ANYCTX_LIKELY(detail::free_fast(p, current_task_cpu()))) return;
  detail::kfree_nolock_slow(p);
}

}  // namespace anyctx
