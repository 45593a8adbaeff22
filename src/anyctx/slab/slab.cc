// The slab layer. Map of this file:
//   state        caches, per-CPU slabs, the slab table, statistics
//   reports      bad free, freelist corruption, context rules
//   freelists    push / pop through encoded, validated links; allocation bits
//   locks        branch on allows_spinning() first, then lock or trylock
//   slabs        new, release, partial list, deactivate
//   deferred     push, drain
//   alloc        fast path, alloc_slow
//   free         fast paths, free_slow, kfree_nolock_slow
//   hooks        IRQ exit, CPU offline, drains (the shrinker)
//   entry points and lifecycle
#include "anyctx/slab/slab.h"

#include <sys/mman.h>
#include <sys/random.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdio>
#include <new>

#include "anyctx/ctx/fastpath.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/reclaim.h"
#include "anyctx/ctx/report.h"
#include "anyctx/ctx/site.h"
#include "anyctx/page/page_clear.h"
#include "anyctx/slab/slab_internal.h"

namespace anyctx {

// --- state -------------------------------------------------------------------

namespace detail {
KmemCache g_caches[kKmallocCaches];
PerCpu<CpuSlabs> g_cpu_slabs;
std::atomic<std::uintptr_t> g_shared_deferred{0};
std::uintptr_t g_deferred_secret = 0;
Slab* g_slab_table = nullptr;
std::size_t g_slab_table_entries = 0;
std::uintptr_t g_arena_base = 0;
std::size_t g_arena_bytes = 0;
Page* g_arena_descs = nullptr;
PerCpu<SlabStatSlots> g_stats;
SlabStatSlots g_shared_stats;
}  // namespace detail

namespace {

using namespace detail;

std::atomic<BadPagePolicy> g_policy{kDebug || ANYCTX_ASAN || ANYCTX_TSAN ? BadPagePolicy::kAbort
                                                                       : BadPagePolicy::kReportAndLeak};
std::atomic<std::uint64_t> g_reports{0};
bool g_initialised = false;  // task context only (init / shutdown)

// What a retired CPU slab does when it turns out empty.
enum class EmptySlab : std::uint8_t {
  kKeepSpare,  // stay on the partial list while it is short
  kRelease,    // back to the page allocator
};

void stat_add(int cache, int stat, std::uint64_t delta = 1) {
  int cpu = current_cpu();
  int ctx = static_cast<int>(context_level());
  if (cpu == kNoCpu) {
    g_shared_stats.v[ctx][cache][stat].fetch_add(delta, std::memory_order_relaxed);
    return;
  }
  std::atomic<std::uint64_t>& slot = g_stats.on(cpu).v[ctx][cache][stat];
  slot.store(slot.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}


std::size_t block_pages(const KmemCache& c) { return std::size_t{1} << c.order; }

// --- reports -----------------------------------------------------------------

enum class BadFree : std::uint8_t { kOutsideArena, kNotSlabPage, kNotObjectStart, kDoubleFree };

void finish_report(const Report& r) {
  g_reports.fetch_add(1, std::memory_order_relaxed);
  if (g_policy.load(std::memory_order_relaxed) == BadPagePolicy::kAbort) r.fatal();
  r.emit();
}

ANYCTX_COLD void bad_free(const char* entry, const void* p, BadFree why) {
  Report r("bad slab free");
  r << entry << "(" << p << "): ";
  switch (why) {
    case BadFree::kOutsideArena:
      r << "no cache: not a slab object: outside the page arena";
      break;
    case BadFree::kNotSlabPage: {
      const Page* pg = virt_to_page(p);
      r << "no cache: not a slab object: pfn " << page_to_pfn(pg) << " (page state "
        << page_state_name(pg->state.load(std::memory_order_relaxed)) << ") is not a slab page";
      break;
    }
    case BadFree::kNotObjectStart: {
      const Slab* s = slab_of(p);
      const KmemCache& c = *s->cache;
      std::uintptr_t rel = reinterpret_cast<std::uintptr_t>(p) - reinterpret_cast<std::uintptr_t>(s->base);
      r << "cache " << c.name << ", slab pfn " << slab_pfn(s) << ": not the start of an object: "
        << static_cast<unsigned long long>(rel & (c.size - 1)) << " bytes into object "
        << static_cast<unsigned long long>(rel >> c.shift);
      break;
    }
    case BadFree::kDoubleFree: {
      const Slab* s = slab_of(p);
      r << "cache " << s->cache->name << ", slab pfn " << slab_pfn(s) << ": double free: object "
        << object_index(s, reinterpret_cast<std::uintptr_t>(p)) << " is already free";
      break;
    }
  }
  finish_report(r);
}

// Reports a bad link (or a bad object) on `fl`, a freelist of `s`, and
// abandons the list: the rest of it is leaked, the slab never released.
ANYCTX_COLD void freelist_corrupt(Slab* s, Freelist& fl, const char* which, std::uintptr_t obj,
                                  std::uintptr_t next, const char* what) {
  Report r("slab freelist corruption");
  r << "cache " << s->cache->name << ", slab pfn " << slab_pfn(s) << ", " << which;
  if (current_cpu() != kNoCpu) r << " (on cpu " << current_cpu() << ")";
  r << ": free object " << reinterpret_cast<const void*>(obj) << " (object " << object_index(s, obj) << "): ";
  if (what == nullptr) {
    r << "its link decodes to " << reinterpret_cast<const void*>(next)
      << ", which is not an object of this slab; not followed";
  } else {
    r << what;
  }
  fl = Freelist{};
  s->corrupted = 1;
  finish_report(r);
}

ANYCTX_COLD void deferred_corrupt(std::uintptr_t obj, std::uintptr_t next) {
  Report r("slab freelist corruption");
  const Slab* s = slab_of(reinterpret_cast<void*>(obj));
  r << "deferred-free list: the link in object " << reinterpret_cast<const void*>(obj);
  if (s != nullptr) r << " (cache " << s->cache->name << ", slab pfn " << slab_pfn(s) << ")";
  r << " decodes to " << reinterpret_cast<const void*>(next) << ", which is not a free slab object; not followed";
  finish_report(r);
}

[[noreturn]] ANYCTX_COLD void report_bad_gfp(Gfp gfp) {
  (Report("bad gfp") << "kmalloc_nolock(): gfp may carry only kGfpZero and kGfpAccount, got ").hex(gfp.bits()).fatal();
}

// --- freelists ---------------------------------------------------------------

ANYCTX_ALWAYS_INLINE void freelist_push(const KmemCache& c, Freelist& fl, std::uintptr_t obj, Site at) {
  store_link_word(obj, encode_link(c.secret, fl.head, obj));
  slab_site(at);
  fl.head = obj;
  ++fl.count;
}

// Return: whether `next`, the decoded link of the first object of `fl` (a
// list of `s`, a slab of `c`), agrees with the list's count and points into
// `s`.
ANYCTX_ALWAYS_INLINE bool link_ok(const KmemCache& c, const Slab* s, const Freelist& fl, std::uintptr_t next) {
  bool last = fl.count == 1;
  return next == 0 ? last : !last && ((next - reinterpret_cast<std::uintptr_t>(s->base)) & c.object_mask) == 0;
}
ANYCTX_ALWAYS_INLINE bool link_ok(const Slab* s, const Freelist& fl, std::uintptr_t next) {
  return link_ok(*s->cache, s, fl, next);
}

// Return: the first object of `fl` (a list of `s`), or 0 when the list is
// empty or its link is bad (reported; the list is then abandoned).
ANYCTX_ALWAYS_INLINE std::uintptr_t freelist_pop(Slab* s, Freelist& fl, Site at, const char* which) {
  std::uintptr_t obj = fl.head;
  if (obj == 0) return 0;
  std::uintptr_t next = decode_link(s->cache->secret, load_link_word(obj), obj);
  slab_site(at);
  if (ANYCTX_UNLIKELY(!link_ok(s, fl, next))) {
    bool last = fl.count == 1;
    freelist_corrupt(s, fl, which, obj, next,
                     next == 0 ? "its link ends the list, but the list's count says more follow"
                     : last    ? "its link goes on, but the list's count says it is the last"
                               : nullptr);
    return 0;
  }
  fl.head = next;
  --fl.count;
  return obj;
}

// Takes the first object off `fl`, a freelist of `s` (under the lock that
// guards it); with kSlabExactFree, marks it allocated. Return: the object,
// or 0 when the list is empty (or was found corrupt and abandoned).
std::uintptr_t slab_pop(Slab* s, Freelist& fl, Site at, const char* which) {
  std::uintptr_t obj = freelist_pop(s, fl, at, which);
  if (ANYCTX_UNLIKELY(obj == 0)) return 0;
  if (kSlabExactFree && ANYCTX_UNLIKELY(!mark_allocated(s, object_index(s, obj)))) {
    freelist_corrupt(s, fl, which, obj, 0,
                     "it is on the freelist but marked allocated (a free into a busy list, or a use after free); "
                     "not handed out");
    return 0;
  }
  return obj;
}

// Takes an object off the CPU freelist (the CPU lock held) and counts it.
// Return: the object, or 0 (see slab_pop).
std::uintptr_t cpu_pop(CpuSlab& cs) {
  Freelist fl = cpu_freelist(cs);
  std::uintptr_t obj = slab_pop(cs.slab, fl, Site::kSlabFreelistEdit, "CPU freelist");
  if (obj != 0) count_one(cs.allocs);
  set_cpu_freelist(cs, fl);
  return obj;
}

// kfree / kfree_nolock of `obj`, an object of the CPU slab of `cs`, onto
// the CPU freelist (the CPU lock held), counted. Without kSlabExactFree, a
// free of the object on top of that list is the double free caught here.
ANYCTX_ALWAYS_INLINE void cpu_push(const char* entry, const KmemCache& c, CpuSlab& cs, std::uintptr_t obj) {
  if (!kSlabExactFree && ANYCTX_UNLIKELY(obj == cs.free.head)) {
    bad_free(entry, reinterpret_cast<const void*>(obj), BadFree::kDoubleFree);
    return;
  }
  Freelist fl = cpu_freelist(cs);
  freelist_push(c, fl, obj, Site::kSlabFreelistEdit);
  count_one(cs.frees);
  set_cpu_freelist(cs, fl);
}

// --- locks -------------------------------------------------------------------

// Branch first (the seed's option (b)): a caller that may not spin tries once.
bool list_lock(KmemCache& c, Gfp gfp, IrqFlags& flags) ANYCTX_NO_TSA {
  if (!allows_spinning(gfp)) {
    if (!c.list_lock.try_lock_irqsave(flags)) return false;
  } else {
    flags = c.list_lock.lock_irqsave();
  }
  ANYCTX_SITE(kSlabListLocked);
  return true;
}

void list_unlock(KmemCache& c, IrqFlags flags) ANYCTX_NO_TSA {
  ANYCTX_SITE(kSlabListUnlock);
  c.list_lock.unlock_irqrestore(flags);
}

// The CPU slab lock for a frame that no frame below it can hold it in:
// task context (nothing interrupted), or a frame that held it a moment ago
// and let it go (the frames it interrupted did not hold it then, and they
// do not run until it returns). try_lock(), never lock(): an IRQ may take
// it, and the lock validator rightly reports a waiting acquisition of a
// lock that task context holds with IRQs on. A failure is a nested
// critical section: lock() reports it with both sites.
void cpu_lock_unheld(CpuSlab& cs) ANYCTX_NO_TSA {
  if (ANYCTX_UNLIKELY(!cpu_trylock(cs))) cs.lock.lock();  // reports the nesting
}

// --- slabs -------------------------------------------------------------------

void partial_add(KmemCache& c, Slab* s) {
  if (c.partial == nullptr) {
    s->next = s->prev = s;
    c.partial = s;
  } else {
    Slab* tail = c.partial->prev;
    s->prev = tail;
    s->next = c.partial;
    tail->next = s;
    c.partial->prev = s;
  }
  s->on_partial = 1;
  ++c.nr_partial;
  ANYCTX_SITE(kSlabListEdit);
}

void partial_remove(KmemCache& c, Slab* s) {
  if (s->next == s) {
    c.partial = nullptr;
  } else {
    s->prev->next = s->next;
    s->next->prev = s->prev;
    if (c.partial == s) c.partial = s->next;
  }
  s->next = s->prev = nullptr;
  s->on_partial = 0;
  --c.nr_partial;
}

// A slab of `c` with every object on its own freelist, or nullptr. Spinning
// callers get pages from alloc_pages (which may reclaim: no slab lock may be
// held), others from alloc_pages_nolock.
Slab* new_slab(KmemCache& c, Gfp gfp) {
  Page* page = allows_spinning(gfp) ? alloc_pages((gfp & ~(kGfpZero | kGfpAccount)) | c.page_gfp, c.order)
                                    : alloc_pages_nolock(c.page_gfp, c.order);
  if (page == nullptr) return nullptr;
  std::size_t pfn = page_to_pfn(page);
  Slab* s = new (&g_slab_table[pfn]) Slab();
  s->cache = &c;
  s->base = static_cast<char*>(page_address(page));
  s->objects = c.objects;
  s->cache_index = static_cast<std::uint8_t>(c.index);
  s->object_mask = c.object_mask;
  // Address order, the first object on top. The block is unpoisoned here.
  std::uintptr_t base = reinterpret_cast<std::uintptr_t>(s->base);
  std::uintptr_t next = 0;
  for (unsigned i = c.objects; i-- > 0;) {
    std::uintptr_t obj = base + (std::uintptr_t{i} << c.shift);
    std::uintptr_t link = encode_link(c.secret, next, obj);
    std::memcpy(reinterpret_cast<void*>(obj), &link, sizeof link);
    next = obj;
  }
  s->free = Freelist{base, c.objects};
  ANYCTX_POISON(s->base, std::size_t{c.objects} << c.shift);
  for (std::size_t i = 0; i < block_pages(c); ++i) pfn_to_page(pfn + i)->owner_private.store(s, std::memory_order_release);
  stat_add(c.index, kSlabStatSlabsAllocated);
  ANYCTX_SITE(kSlabNewSlab);
  return s;
}

// Gives a chain of empty slabs (through Slab::next) back to the page
// allocator. Return: pages given back.
std::size_t release_slabs(Slab* chain, Gfp gfp) {
  std::size_t pages = 0;
  while (chain != nullptr) {
    Slab* s = chain;
    chain = s->next;
    KmemCache& c = *s->cache;
    std::size_t pfn = slab_pfn(s);
    for (std::size_t i = 0; i < block_pages(c); ++i) pfn_to_page(pfn + i)->owner_private.store(nullptr, std::memory_order_relaxed);
    s->cache = nullptr;
    s->next = nullptr;
    stat_add(c.index, kSlabStatSlabsFreed);
    if (allows_spinning(gfp)) {
      free_pages(pfn_to_page(pfn), c.order);
    } else {
      free_pages_nolock(pfn_to_page(pfn), c.order);
    }
    pages += block_pages(c);
  }
  return pages;
}

// Makes `s` the CPU slab of `cs`: its freelist becomes the CPU freelist.
void freeze(CpuSlab& cs, Slab* s, int cpu) {
  s->cpu = static_cast<std::int16_t>(cpu);
  set_cpu_slab(cs, s);
  set_cpu_freelist(cs, s->free);
  s->free = Freelist{};
}

// Frees `obj` into its slab (list_lock held), moving the slab onto the
// partial list when it was full. Return: the slab when it became empty, the
// partial list is long enough to let it go and `gfp` allows spinning. (An
// empty slab that a nolock free leaves on the list is reused, or released
// by a drain: its pages freed with free_pages_nolock would sit on this
// CPU's pcp list, out of reach of the CPU that allocates.)
Slab* free_to_slab_locked(KmemCache& c, Slab* s, std::uintptr_t obj, Gfp gfp) {
  freelist_push(c, s->free, obj, Site::kSlabListEdit);
  if (s->cpu != kNoCpu) return nullptr;  // a CPU slab: its CPU takes these back
  if (!s->on_partial) {
    partial_add(c, s);
    return nullptr;
  }
  if (s->free.count == s->objects && c.nr_partial > kSlabKeepPartial && !s->corrupted && allows_spinning(gfp)) {
    partial_remove(c, s);
    return s;
  }
  return nullptr;
}

// A frozen slab stops being a CPU's (list_lock held): it goes on the
// partial list unless it is full, or is chained on `release` when empty and
// `empty` allows.
void unfreeze_locked(KmemCache& c, Slab* s, EmptySlab empty, Slab*& release) {
  s->cpu = kNoCpu;
  if (s->free.count == s->objects && !s->corrupted &&
      (empty == EmptySlab::kRelease || c.nr_partial >= static_cast<std::size_t>(kSlabKeepPartial))) {
    s->next = release;
    release = s;
    return;
  }
  if (s->free.count > 0) partial_add(c, s);
}

// Unfreezes the slabs that kmalloc_nolock retired while list_lock was busy
// (the CPU lock and list_lock held).
void unfreeze_retired_locked(KmemCache& c, CpuSlab& cs, EmptySlab empty, Slab*& release) {
  while (Slab* s = cs.retired) {
    cs.retired = s->next;
    unfreeze_locked(c, s, empty, release);
  }
}

// Retires the CPU slab of `cs` and the retired ones (its lock and list_lock
// held): the CPU freelist goes back into the slab; each is unfrozen.
void deactivate_locked(KmemCache& c, CpuSlab& cs, EmptySlab empty, Slab*& release) {
  unfreeze_retired_locked(c, cs, empty, release);
  Slab* s = cs.slab;
  if (s == nullptr) return;
  Freelist fl = cpu_freelist(cs);
  if (s->free.count == 0) {
    s->free = fl;
  } else {
    while (std::uintptr_t obj = freelist_pop(s, fl, Site::kSlabFreelistEdit, "CPU freelist"))
      freelist_push(c, s->free, obj, Site::kSlabListEdit);
  }
  set_cpu_freelist(cs, Freelist{});
  set_cpu_slab(cs, nullptr);
  unfreeze_locked(c, s, empty, release);
}

// --- deferred ----------------------------------------------------------------

// Return: whether the list was empty (the push that has to get it drained).
bool deferred_push(std::atomic<std::uintptr_t>& head, std::uintptr_t obj, int cache) {
  std::uintptr_t old = head.load(std::memory_order_relaxed);
  do {
    store_link_word(obj, encode_link(g_deferred_secret, old, obj));
    ANYCTX_SITE(kSlabDeferredPush);
  } while (!head.compare_exchange_weak(old, obj, std::memory_order_release, std::memory_order_relaxed));
  stat_add(cache, kSlabStatDeferredPushed);
  return old == 0;
}

// Return: whether `next` may follow on a deferred list: an object of a live
// slab (with kSlabExactFree: a free one).
bool deferred_link_ok(std::uintptr_t next) {
  if (next == 0) return true;
  Slab* s = slab_of(reinterpret_cast<void*>(next));
  if (s == nullptr || !is_object_of(s, next)) return false;
  unsigned i = object_index(s, next);
  return !kSlabExactFree || (s->allocated[i >> 6].load(std::memory_order_relaxed) & object_bit(i)) == 0;
}

void free_deferred(Slab* s, std::uintptr_t obj, int cpu);

// Takes a whole deferred list and frees its objects the spinning way, from
// `cpu` (kNoCpu: a thread that is not a CPU, straight into the slabs).
// Return: objects freed.
ANYCTX_COLD std::size_t drain_deferred(std::atomic<std::uintptr_t>& head, int cpu) {
  std::uintptr_t obj = head.exchange(0, std::memory_order_acquire);
  std::size_t n = 0;
  while (obj != 0) {
    std::uintptr_t next = decode_link(g_deferred_secret, load_link_word(obj), obj);
    if (ANYCTX_UNLIKELY(!deferred_link_ok(next))) {
      deferred_corrupt(obj, next);
      next = 0;
    }
    Slab* s = slab_of(reinterpret_cast<void*>(obj));
    int cache = s->cache->index;
    free_deferred(s, obj, cpu);
    stat_add(cache, kSlabStatDeferredFreed);
    ++n;
    ANYCTX_SITE(kSlabDeferredDrain);
    obj = next;
  }
  return n;
}

// --- alloc -------------------------------------------------------------------

// The CPU freelist is empty (the CPU lock held).
// In order: objects freed remotely into the CPU slab; a partial slab; a new
// slab. A spinning caller drops the CPU lock around the page allocation
// (reclaim may drain this CPU's slabs) and retires whatever CPU slab was
// installed meanwhile (in the interrupt frames' set, by an NMI that
// interrupted the IRQ making this call). A nolock caller that finds list_lock busy
// puts the CPU slab, still frozen, on the CPU's retired chain (unfrozen at
// the next list_lock here) and goes on to a new slab. Releases the CPU lock.
// Return: an allocated object, or 0.
ANYCTX_COLD std::uintptr_t alloc_slow(KmemCache& c, CpuSlab& cs, int cpu, Gfp gfp) ANYCTX_NO_TSA {
  if (ANYCTX_UNLIKELY(g_slab_table == nullptr))
    (Report("slab misuse") << "kmalloc before slab_init() (or after slab_shutdown())").fatal();
  Slab* release = nullptr;
  IrqFlags lf;
  if (list_lock(c, gfp, lf)) {
    if (ANYCTX_UNLIKELY(cs.retired != nullptr)) unfreeze_retired_locked(c, cs, EmptySlab::kKeepSpare, release);
    Slab* s = cs.slab;
    if (s != nullptr && s->free.count > 0) {
      set_cpu_freelist(cs, s->free);  // remote frees come home
      s->free = Freelist{};
      ANYCTX_SITE(kSlabListEdit);
    } else {
      if (s != nullptr) {  // full: on no list until a free makes it partial
        s->cpu = kNoCpu;
        set_cpu_slab(cs, nullptr);
      }
      while (Slab* p = c.partial) {
        partial_remove(c, p);
        if (p->free.count == 0) continue;  // a list abandoned as corrupt: leaked
        freeze(cs, p, cpu);
        break;
      }
    }
    list_unlock(c, lf);
  } else if (cs.slab != nullptr) {
    // Nolock and list_lock busy: the CPU slab cannot be unfrozen now. Frozen,
    // remote frees still keep it off the lists.
    cs.slab->next = cs.retired;
    cs.retired = cs.slab;
    set_cpu_slab(cs, nullptr);
  }

  if (cs.free.head == 0) {
    Slab* fresh;
    if (allows_spinning(gfp)) {
      cpu_unlock(cs);
      fresh = new_slab(c, gfp);
      cpu_lock_unheld(cs);
      if (fresh != nullptr && cs.slab != nullptr) {
        list_lock(c, gfp, lf);
        deactivate_locked(c, cs, EmptySlab::kKeepSpare, release);
        list_unlock(c, lf);
      }
    } else {
      fresh = new_slab(c, gfp);  // alloc_pages_nolock: never waits, never reclaims
    }
    if (fresh != nullptr) freeze(cs, fresh, cpu);
  }

  std::uintptr_t obj = cpu_pop(cs);
  cpu_unlock(cs);
  if (release != nullptr) release_slabs(release, gfp);
  if (allows_spinning(gfp) && g_shared_deferred.load(std::memory_order_relaxed) != 0)
    drain_deferred(g_shared_deferred, cpu);
  return obj;
}

// Pops from the CPU freelist (lock held on entry, released on return).
ANYCTX_ALWAYS_INLINE std::uintptr_t alloc_locked(KmemCache& c, CpuSlab& cs, int cpu, Gfp gfp) {
  std::uintptr_t obj = cpu_pop(cs);
  if (ANYCTX_UNLIKELY(obj == 0)) return alloc_slow(c, cs, cpu, gfp);
  cpu_unlock(cs);
  return obj;
}

// kmalloc in a frame that interrupted the holder of this CPU's slab lock of
// `c`: that frame may be in the middle of a CPU freelist edit, so the CPU
// slab is not to be touched. An object straight from a partial slab under
// list_lock (the way `gfp` allows), else from a new slab, which then goes on
// the partial list. Counted. Return: the object, or 0.
ANYCTX_COLD std::uintptr_t alloc_around_cpu_slab(KmemCache& c, Gfp gfp) ANYCTX_NO_TSA {
  ANYCTX_SITE(kSlabAroundCpuSlab);
  IrqFlags lf;
  if (!list_lock(c, gfp, lf)) return 0;
  std::uintptr_t obj = 0;
  while (obj == 0 && c.partial != nullptr) {
    Slab* s = c.partial;
    obj = slab_pop(s, s->free, Site::kSlabListEdit, "slab freelist");
    if (s->free.count == 0) partial_remove(c, s);  // full now (or abandoned as corrupt)
  }
  list_unlock(c, lf);
  if (obj == 0) {
    Slab* fresh = new_slab(c, gfp);
    if (fresh == nullptr) return 0;
    if (!list_lock(c, gfp, lf)) {
      release_slabs(fresh, gfp);
      return 0;
    }
    obj = slab_pop(fresh, fresh->free, Site::kSlabListEdit, "slab freelist");
    partial_add(c, fresh);  // at least 8 objects a slab: never full here
    list_unlock(c, lf);
  }
  if (obj != 0) stat_add(c.index, kSlabStatAllocs);
  return obj;
}

}  // namespace

// An object of a class of a page or more is whole aligned pages (objects
// are aligned to their power-of-two size): zeroed the way the page
// allocator zeroes its blocks, at twice memset's speed where clear_pages
// has vector stores (docs/benchmarks.md, Zeroing a page).
void detail::clear_object(const KmemCache& c, void* p) {
  if (c.size >= kPageSize) {
    clear_pages(p, c.size >> kPageShift);
  } else {
    std::memset(p, 0, c.size);
  }
}

// Everything kmalloc's fast path does not do: kGfpZero, not a CPU, too
// large, the CPU slab held by the frame this call interrupted
// (alloc_around_cpu_slab), an empty CPU freelist (alloc_slow). It frees
// this CPU's deferred objects first (the fast paths never look: the IRQ
// their first push raised frees them once the pushing frame is done; here
// they may refill the CPU freelist before a new slab is taken).
void* detail::kmalloc_slow(std::size_t size, Gfp gfp) {
  int cpu = require_cpu("kmalloc");
  int idx = size_index(size, gfp);
  if (idx < 0) return nullptr;
  CpuSlabs& mine = g_cpu_slabs.on(cpu);
  if (mine.deferred.load(std::memory_order_relaxed) != 0) drain_deferred(mine.deferred, cpu);
  KmemCache& c = g_caches[idx];
  CpuSlab& cs = frame_cpu_slab(mine, idx);
  std::uintptr_t obj;
  if (cpu_trylock(cs)) {
    obj = alloc_locked(c, cs, cpu, gfp);
  } else {
    if (in_task()) cpu_lock_unheld(cs);  // nothing can hold it below task context: reports the nesting
    obj = alloc_around_cpu_slab(c, gfp);
  }
  if (obj == 0) {
    stat_add(idx, kSlabStatAllocFailed);
    return nullptr;
  }
  return finish_alloc(c, obj, size, gfp.has(kGfpZero));
}

// Everything kmalloc_nolock's fast path does not do: kGfpZero, a bad gfp,
// not a CPU, too large, the CPU lock held by the interrupted frame (then
// the next size class, once), an empty CPU freelist (alloc_slow).
void* detail::kmalloc_nolock_slow(std::size_t size, Gfp gfp) {
  if (!(gfp & ~(kGfpZero | kGfpAccount)).empty()) report_bad_gfp(gfp);
  int idx = size_index(size, gfp);
  int cpu = current_cpu();
  if (idx < 0 || cpu == kNoCpu) {
    if (idx >= 0) stat_add(idx, kSlabStatAllocFailed);
    return nullptr;
  }
  CpuSlab* mine = g_cpu_slabs.on(cpu).sets[frame_cpu_slab_set()];
  CpuSlab* cs = &mine[idx];
  if (!cpu_trylock(*cs)) {
    // The frame this call interrupted holds it: once, the next size class.
    bool last_class = idx % kKmallocClasses == kKmallocClasses - 1;
    if (last_class || !cpu_trylock(mine[idx + 1])) {
      stat_add(idx, kSlabStatAllocFailed);
      return nullptr;
    }
    stat_add(idx, kSlabStatNextClass);
    cs = &mine[++idx];
  }
  KmemCache& c = g_caches[idx];
  std::uintptr_t obj = alloc_locked(c, *cs, cpu, gfp);
  if (obj == 0) {
    stat_add(idx, kSlabStatAllocFailed);
    return nullptr;
  }
  return finish_alloc(c, obj, size, gfp.has(kGfpZero));
}

namespace {

// --- free --------------------------------------------------------------------

// Validates `p` (with kSlabExactFree: clears its allocation bit). Return:
// its slab, or nullptr after a report (p is then left alone).
ANYCTX_ALWAYS_INLINE Slab* free_prepare(const char* entry, const void* p) {
  Slab* s = slab_of(p);
  std::uintptr_t obj = reinterpret_cast<std::uintptr_t>(p);
  if (ANYCTX_UNLIKELY(s == nullptr)) {
    bad_free(entry, p, virt_to_page(p) == nullptr ? BadFree::kOutsideArena : BadFree::kNotSlabPage);
    return nullptr;
  }
  if (ANYCTX_UNLIKELY(!is_object_of(s, obj))) {
    bad_free(entry, p, BadFree::kNotObjectStart);
    return nullptr;
  }
  if (kSlabExactFree && ANYCTX_UNLIKELY(!mark_free(s, object_index(s, obj)))) {
    bad_free(entry, p, BadFree::kDoubleFree);
    return nullptr;
  }
  ANYCTX_POISON(const_cast<void*>(p), s->cache->size);
  return s;
}

// Frees into the slab itself under list_lock (waits for it); releases the
// slab when that emptied it. Counts nothing.
ANYCTX_COLD void free_slow(KmemCache& c, Slab* s, std::uintptr_t obj) {
  IrqFlags lf;
  list_lock(c, kGfpKernel, lf);
  Slab* release = free_to_slab_locked(c, s, obj, kGfpKernel);
  list_unlock(c, lf);
  if (release != nullptr) release_slabs(release, kGfpKernel);
}

// The slow frees' CPU slab attempt, after free_prepare(): onto the CPU
// freelist when `s` is the CPU slab of `cs` and no frame below this one
// (an interrupted one) holds its lock. Return: whether it was.
bool cpu_free_prepared(const char* entry, CpuSlab& cs, Slab* s, std::uintptr_t obj) {
  if (!cpu_trylock(cs)) {
    if (in_task()) cpu_lock_unheld(cs);  // nothing can hold it below task context: reports the nesting
    return false;
  }
  bool in_cpu_slab = cs.slab == s;
  if (in_cpu_slab) cpu_push(entry, *s->cache, cs, obj);
  cpu_unlock(cs);
  return in_cpu_slab;
}

}  // namespace

// Everything kfree's fast path does not do: nullptr, not a CPU, bad input,
// an object outside the CPU slab (counted, into its slab under list_lock).
// Frees this CPU's deferred objects first, as kmalloc_slow does.
void detail::kfree_slow(const void* p) {
  if (p == nullptr) return;
  int cpu = require_cpu("kfree");
  CpuSlabs& mine = g_cpu_slabs.on(cpu);
  if (mine.deferred.load(std::memory_order_relaxed) != 0) drain_deferred(mine.deferred, cpu);
  Slab* s = free_prepare("kfree", p);
  if (s == nullptr) return;
  std::uintptr_t obj = reinterpret_cast<std::uintptr_t>(p);
  KmemCache& c = *s->cache;
  if (cpu_free_prepared("kfree", frame_cpu_slab(mine, c.index), s, obj)) return;
  stat_add(c.index, kSlabStatFrees);
  free_slow(c, s, obj);
}

namespace {

// A deferred object (counted as freed when it was deferred): onto this CPU's
// freelist when it is the CPU slab and no interrupted frame holds its lock
// (the IRQ exit may have interrupted the holder), else into the slab.
void free_deferred(Slab* s, std::uintptr_t obj, int cpu) {
  KmemCache& c = *s->cache;
  if (cpu != kNoCpu) {
    CpuSlab& cs = frame_cpu_slab(g_cpu_slabs.on(cpu), c.index);
    if (cpu_trylock(cs)) {
      bool in_cpu_slab = cs.slab == s;
      if (in_cpu_slab) {
        Freelist fl = cpu_freelist(cs);
        freelist_push(c, fl, obj, Site::kSlabFreelistEdit);
        set_cpu_freelist(cs, fl);
      }
      cpu_unlock(cs);
      if (in_cpu_slab) return;
    }
  }
  free_slow(c, s, obj);
}

}  // namespace

// Everything kfree_nolock's fast path does not do: nullptr, bad input, an
// object outside the CPU slab or a CPU lock held by the interrupted frame:
// counted, into the slab under list_lock by trylock. When that is busy,
// onto this CPU's deferred list; the push that finds the list empty raises
// an IRQ here, whose exit drains the list once this frame is done (so
// nothing is stranded on a CPU that makes no further slab call). A thread
// that is not a CPU defers on the shared list.
void detail::kfree_nolock_slow(const void* p) {
  if (p == nullptr) return;
  Slab* s = free_prepare("kfree_nolock", p);
  if (s == nullptr) return;
  std::uintptr_t obj = reinterpret_cast<std::uintptr_t>(p);
  KmemCache& c = *s->cache;
  int cpu = current_cpu();
  if (cpu != kNoCpu && cpu_free_prepared("kfree_nolock", frame_cpu_slab(g_cpu_slabs.on(cpu), c.index), s, obj))
    return;
  stat_add(c.index, kSlabStatFrees);
  IrqFlags lf;
  if (list_lock(c, Gfp{}, lf)) {
    free_to_slab_locked(c, s, obj, Gfp{});  // never returns a slab to release
    list_unlock(c, lf);
    return;
  }
  if (cpu == kNoCpu) {
    deferred_push(g_shared_deferred, obj, c.index);
    return;
  }
  if (deferred_push(g_cpu_slabs.on(cpu).deferred, obj, c.index)) raise_irq();
}

namespace {

// --- hooks -------------------------------------------------------------------

// Returns every CPU slab of `cpu` (the calling CPU, in task context), both
// sets, to its cache; empty ones go back to the page allocator. A CpuSlab
// without a slab is passed over without its lock: only this CPU's own
// frames install one, and one installed by an interrupt just after the
// peek is no different from one installed just after the flush. Return:
// pages given back.
std::size_t flush_cpu_slabs(int cpu) ANYCTX_NO_TSA {
  Slab* release = nullptr;
  for_each_cpu_slab(g_cpu_slabs.on(cpu), [&](CpuSlab& cs, int i) ANYCTX_NO_TSA {
    if (std::atomic_ref<Slab*>(cs.slab).load(std::memory_order_relaxed) == nullptr &&
        std::atomic_ref<Slab*>(cs.retired).load(std::memory_order_relaxed) == nullptr)
      return;
    KmemCache& c = g_caches[i];
    IrqFlags lf;
    cpu_lock_unheld(cs);  // task context
    list_lock(c, kGfpKernel, lf);
    deactivate_locked(c, cs, EmptySlab::kRelease, release);
    list_unlock(c, lf);
    cpu_unlock(cs);
  });
  return release_slabs(release, kGfpKernel);
}

// Return: pages given back from empty slabs on the partial lists.
std::size_t release_empty_partials() {
  std::size_t pages = 0;
  for (KmemCache& c : g_caches) {
    Slab* release = nullptr;
    IrqFlags lf;
    list_lock(c, kGfpKernel, lf);
    for (std::size_t n = c.nr_partial; n > 0; --n) {
      Slab* s = c.partial;
      c.partial = s->next;  // rotate: every slab is looked at once
      if (s->free.count == s->objects && !s->corrupted) {
        partial_remove(c, s);
        s->next = release;
        release = s;
      }
    }
    list_unlock(c, lf);
    pages += release_slabs(release, kGfpKernel);
  }
  return pages;
}

// Leaving IRQ context (IRQs masked, so no frame below holds a list_lock;
// the interrupted frame may hold a CPU slab lock, and free_deferred then
// frees into the slab): free what NMIs and nolock frees deferred.
void slab_irq_exit() {
  int cpu = current_cpu();
  if (cpu == kNoCpu) return;
  std::atomic<std::uintptr_t>& deferred = g_cpu_slabs.on(cpu).deferred;
  if (ANYCTX_LIKELY(deferred.load(std::memory_order_relaxed) == 0)) return;
  drain_deferred(deferred, cpu);
}

void slab_cpu_offline(int cpu) {
  drain_deferred(g_cpu_slabs.on(cpu).deferred, cpu);
  // Registered after the page allocator's drain, so run before it: the
  // pages of the slabs released here are drained with the rest.
  flush_cpu_slabs(cpu);
}

}  // namespace

// --- entry points ---------------------------------------------------------------

namespace detail {

std::uint64_t slab_stat_sum(int cache, int stat) {
  std::uint64_t sum = 0;
  for (int ctx = 0; ctx < 3; ++ctx) {
    sum += g_shared_stats.v[ctx][cache][stat].load(std::memory_order_relaxed);
    g_stats.for_each_used([&](int, SlabStatSlots& s) { sum += s.v[ctx][cache][stat].load(std::memory_order_relaxed); });
  }
  return sum + cpu_slab_count(cache, stat);
}

std::uint64_t cpu_slab_count(int cache, int stat) {
  std::uint64_t sum = 0;
  g_cpu_slabs.for_each_used([&](int, CpuSlabs& cpu) {
    for (const auto& set : cpu.sets) {
      const CpuSlab& cs = set[cache];
      if (stat == kSlabStatAllocs) sum += cs.allocs.load(std::memory_order_relaxed);
      if (stat == kSlabStatFrees) sum += cs.frees.load(std::memory_order_relaxed);
    }
  });
  return sum;
}

void slab_stat_add(int cache, int stat, std::uint64_t delta) { stat_add(cache, stat, delta); }

void report_slab_context(const char* what) { (Report("context rule") << what).fatal(); }

}  // namespace detail

int kmalloc_cache_index(std::size_t size, Gfp gfp) { return size_index(size, gfp); }

std::size_t kmalloc_object_size(const void* p) {
  Slab* s = slab_of(p);
  return s != nullptr ? s->cache->size : 0;
}

std::size_t slab_drain_local() {
  int cpu = require_cpu("slab_drain_local");
  drain_deferred(g_cpu_slabs.on(cpu).deferred, cpu);
  return flush_cpu_slabs(cpu);
}

std::size_t slab_drain_all() {
  if (!g_initialised) return 0;
  int cpu = current_cpu();
  for (int other = 0, used = cpu_ids_used(); other < used; ++other) drain_deferred(g_cpu_slabs.on(other).deferred, cpu);
  drain_deferred(g_shared_deferred, cpu);
  std::size_t pages = cpu != kNoCpu ? flush_cpu_slabs(cpu) : 0;
  return pages + release_empty_partials();
}

void set_slab_bad_free_policy(BadPagePolicy policy) { g_policy.store(policy); }
BadPagePolicy slab_bad_free_policy() { return g_policy.load(); }
std::uint64_t slab_bad_free_reports() { return g_reports.load(); }

SlabCacheStats slab_cache_stats(int index) {
  const KmemCache& c = g_caches[index];
  SlabCacheStats s{};
  s.name = c.name;
  s.object_size = c.size;
  s.order = c.order;
  s.objects_per_slab = c.objects;
  s.allocs = slab_stat_sum(index, kSlabStatAllocs);
  s.frees = slab_stat_sum(index, kSlabStatFrees);
  s.alloc_failed = slab_stat_sum(index, kSlabStatAllocFailed);
  s.slabs_allocated = slab_stat_sum(index, kSlabStatSlabsAllocated);
  s.slabs_freed = slab_stat_sum(index, kSlabStatSlabsFreed);
  s.deferred_pushed = slab_stat_sum(index, kSlabStatDeferredPushed);
  s.deferred_freed = slab_stat_sum(index, kSlabStatDeferredFreed);
  s.next_class_allocs = slab_stat_sum(index, kSlabStatNextClass);
  s.slabs = s.slabs_allocated - s.slabs_freed;
  s.objects_in_use = s.allocs - s.frees;
  return s;
}

std::uint64_t slab_deferred_pending() {
  std::uint64_t pushed = 0, freed = 0;
  for (int i = 0; i < kKmallocCaches; ++i) {
    pushed += slab_stat_sum(i, kSlabStatDeferredPushed);
    freed += slab_stat_sum(i, kSlabStatDeferredFreed);
  }
  return pushed - freed;
}

// --- lifecycle ------------------------------------------------------------------

namespace {

std::uintptr_t random_word() {
  std::uintptr_t v = 0;
  if (getrandom(&v, sizeof v, 0) != static_cast<ssize_t>(sizeof v)) {
    auto t = static_cast<std::uintptr_t>(std::chrono::steady_clock::now().time_since_epoch().count());
    v = t * 0x9e3779b97f4a7c15ull ^ reinterpret_cast<std::uintptr_t>(&v);
  }
  return v | 1;  // never 0, so an all-zero word never decodes to its own slot
}

void reset_state() {
  g_cpu_slabs.for_each([](int, CpuSlabs& cpu) {
    for_each_cpu_slab(cpu, [](CpuSlab& cs, int) {
      set_cpu_slab(cs, nullptr);
      cs.retired = nullptr;
      cs.allocs.store(0);
      cs.frees.store(0);
      set_cpu_freelist(cs, Freelist{});
    });
    cpu.deferred.store(0);
  });
  g_shared_deferred.store(0);
  auto clear = [](SlabStatSlots& slots) {
    for (auto& per_ctx : slots.v)
      for (auto& per_cache : per_ctx)
        for (auto& v : per_cache) v.store(0);
  };
  clear(g_shared_stats);
  g_stats.for_each([&](int, SlabStatSlots& slots) { clear(slots); });
}

}  // namespace

std::string_view slab_init() {
  if (g_initialised) return "the slab layer is already initialised";
  std::size_t pages = arena_pages();
  if (pages == 0) return "the page allocator is not initialised (page_allocator_init first)";
  void* table = mmap(nullptr, pages * sizeof(Slab), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                     -1, 0);
  if (table == MAP_FAILED) return "mmap of the slab table failed";
  g_slab_table = static_cast<Slab*>(table);
  g_slab_table_entries = pages;
  g_arena_descs = pfn_to_page(0);
  g_arena_base = reinterpret_cast<std::uintptr_t>(page_address(g_arena_descs));
  g_arena_bytes = pages * kPageSize;
  reset_state();
  g_deferred_secret = random_word();
  for (int i = 0; i < kKmallocCaches; ++i) {
    KmemCache& c = g_caches[i];
    bool accounted = i >= kKmallocClasses;
    c.shift = static_cast<std::uint8_t>(3 + i % kKmallocClasses);
    c.size = 1u << c.shift;
    // At least 8 objects a slab, within the nolock page orders.
    unsigned order = 0;
    while (order < kPcpMaxOrder && (kPageSize << order) / c.size < 8) ++order;
    c.order = static_cast<std::uint8_t>(order);
    c.objects = static_cast<std::uint16_t>((kPageSize << order) >> c.shift);
    c.object_mask = ~((std::uintptr_t{kPageSize} << order) - 1) | (c.size - 1);
    c.index = i;
    c.page_gfp = accounted ? kGfpAccount : Gfp{};
    c.secret = random_word();
    c.partial = nullptr;
    c.nr_partial = 0;
    std::snprintf(c.name, sizeof c.name, "kmalloc-%s%u", accounted ? "cg-" : "", c.size);
  }
  g_cpu_slabs.for_each([](int, CpuSlabs& cpu) {
    for_each_cpu_slab(cpu, [](CpuSlab& cs, int i) {
      cs.secret = g_caches[i].secret;
      cs.object_mask = g_caches[i].object_mask;
    });
  });
  if (!irq_exit_callback_add(slab_irq_exit) || !cpu_offline_callback_add(slab_cpu_offline) ||
      !reclaim_register(slab_drain_all)) {
    irq_exit_callback_remove(slab_irq_exit);
    cpu_offline_callback_remove(slab_cpu_offline);
    reclaim_unregister(slab_drain_all);
    munmap(g_slab_table, pages * sizeof(Slab));
    g_slab_table = nullptr;
    g_slab_table_entries = 0;
    g_arena_bytes = 0;
    return "no room to register the slab hooks (IRQ-exit, offline or shrinker registry full)";
  }
  g_initialised = true;
  return {};
}

void slab_shutdown() {
  if (!g_initialised) return;
  irq_exit_callback_remove(slab_irq_exit);
  cpu_offline_callback_remove(slab_cpu_offline);
  reclaim_unregister(slab_drain_all);
  // Forget live slabs: their frames no longer point at the table.
  for (std::size_t pfn = 0; pfn < g_slab_table_entries; ++pfn) {
    Slab& s = g_slab_table[pfn];
    if (s.cache == nullptr) continue;
    for (std::size_t i = 0; i < block_pages(*s.cache); ++i)
      if (Page* pg = pfn_to_page(pfn + i)) pg->owner_private.store(nullptr);
  }
  reset_state();
  munmap(g_slab_table, g_slab_table_entries * sizeof(Slab));
  g_slab_table = nullptr;
  g_slab_table_entries = 0;
  g_arena_bytes = 0;
  g_initialised = false;
}

}  // namespace anyctx
