// anyctx/slab/slab_internal.h — internal: the slab layer's data structures
// and small helpers, shared by slab.cc, slab_check.cc, the slab tests and
// the inline fast paths (slab_fast.h, which slab.h includes). Not part of
// the API.
//
// Metadata placement: out of band. A slab's descriptor (Slab) lives in a
// table with one entry per page frame, indexed by the pfn of the slab's head
// frame, and every frame of the slab's block points at it through
// Page::owner_private. So kfree finds its slab with one load after
// virt_to_page, objects start at the block's first byte (power-of-two
// classes fill it exactly and stay aligned to their size), no object
// overflow can reach allocator metadata, and ASan can poison a free object
// whole. The table costs sizeof(Slab) per frame of address space (reserved
// with MAP_NORESERVE, touched only for frames that head a slab).
//
// Who guards what:
//  - CpuSlab (slab, free, retired, allocs, frees): a CPU has two sets of
//    them (CpuSlabs::sets), one for its task frames and one for its IRQ
//    and NMI frames; a frame uses its own set only (frame_cpu_slab).
//    - The task set: only the CPU's task frames use it, and a task frame
//      never interrupts another, so nothing can land inside a task frame's
//      section that uses the same CpuSlab. The fast paths take no lock
//      there. The slow paths take the CpuSlab's LocalTryLock all the same,
//      which reports a nested section (a path that re-enters the slab while
//      it holds the lock); debug builds' fast paths check it too.
//    - The interrupt set: an NMI may interrupt an IRQ, and the CPU's task
//      frame flushes it (drains, offline), so it is used under the
//      LocalTryLock, taken by try_lock without masking IRQs (no RMW, no
//      mask). A try_lock fails only in a frame that interrupted the holder;
//      that frame leaves the CPU slab alone (kmalloc: a partial or new slab
//      under list_lock; kmalloc_nolock: the next size class; frees: into
//      the slab or the deferred list).
//    Their fields are plain (the counters are relaxed atomics only so that
//    snapshots from other CPUs may read them).
//  - Slab::free, Slab::cpu, Slab::on_partial, KmemCache::partial: the
//    cache's list_lock (taken with IRQs masked). A slab that is some CPU's
//    CPU slab or on its retired chain ("frozen", cpu != kNoCpu) is on no
//    list; remote frees still go to its Slab::free. On the retired chain its
//    Slab::next belongs to that CPU's lock. Lock order: CPU slab lock ->
//    list_lock -> page allocator locks; never two list_locks at once.
//  - Slab::allocated: one bit per object, atomic RMW from any CPU, in builds
//    with kSlabExactFree (debug and sanitizer builds; the hardened CMake
//    option ANYCTX_SLAB_EXACT_FREE elsewhere). Without it the bitmap stays
//    clear and a double free is caught only when the object is on top of
//    the CPU freelist it is freed to.
//  - Deferred lists: lock-free stacks through the first word of the objects.
//    Pushes go to the pushing CPU's own list; the push that finds it empty
//    raises an IRQ on that CPU, whose exit drains it once the pushing frame
//    (and a frame it interrupted with IRQs masked) is done. The fast paths
//    never read the list (that IRQ is what bounds the wait); the slow paths
//    of kmalloc and kfree drain it first. Any CPU may take a whole list
//    (slab_drain_all); it is one exchange.
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "anyctx/ctx/config.h"
#include "anyctx/ctx/context.h"
#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/fastpath.h"
#include "anyctx/ctx/gfp.h"
#include "anyctx/lock/local_lock.h"
#include "anyctx/lock/spinlock.h"
#include "anyctx/page/page.h"
#include "anyctx/slab/slab_classes.h"

// Exact double-free detection: on in debug and sanitizer builds, the CMake
// option ANYCTX_SLAB_EXACT_FREE in release builds.
#ifndef ANYCTX_SLAB_EXACT_FREE
#define ANYCTX_SLAB_EXACT_FREE (ANYCTX_DEBUG || ANYCTX_ASAN || ANYCTX_TSAN)
#endif

namespace anyctx::detail {

inline constexpr bool kSlabExactFree = ANYCTX_SLAB_EXACT_FREE != 0;
inline constexpr unsigned kSlabMaxObjects = 512;  // kmalloc-8 in one page
inline constexpr unsigned kSlabBitmapWords = kSlabMaxObjects / 64;

// A list of free objects of one slab. `head` is a plain address (metadata);
// each object's first word holds the encoded address of the next.
struct Freelist {
  std::uintptr_t head = 0;
  std::uint32_t count = 0;
};

struct KmemCache;

struct alignas(64) Slab {
  KmemCache* cache = nullptr;  // nullptr: this table entry is not a live slab
  char* base = nullptr;        // first object = first byte of the block
  Slab* next = nullptr;        // partial list (list_lock); release chains
  Slab* prev = nullptr;
  Freelist free;               // objects freed back to the slab (list_lock)
  std::int16_t cpu = kNoCpu;   // whose CPU slab this is, or kNoCpu
  std::uint16_t objects = 0;
  std::uint8_t on_partial = 0;
  std::uint8_t corrupted = 0;  // a freelist of it was abandoned (leak policy)
  // Copies of its cache's index and object_mask (set by new_slab, checked
  // by slab_check_invariants), so that kfree's fast path reads no
  // KmemCache: its line also holds list_lock, written by every CPU.
  std::uint8_t cache_index = 0;
  std::uintptr_t object_mask = 0;
  alignas(64) std::atomic<std::uint64_t> allocated[kSlabBitmapWords]{};
};
static_assert(sizeof(Slab) == 128);

struct KmemCache {
  char name[24] = {};
  std::uint32_t size = 0;
  std::uint8_t shift = 0;
  std::uint8_t order = 0;
  std::uint16_t objects = 0;
  int index = 0;
  Gfp page_gfp;               // kGfpAccount for the accounted caches
  std::uintptr_t secret = 0;  // freelist link key
  // Bits that are clear in (addr - slab base) exactly when addr starts an
  // object: those above the block and those below the object size.
  std::uintptr_t object_mask = 0;
  Spinlock list_lock{"slab.list_lock"};
  Slab* partial = nullptr;    // circular, through Slab::next/prev (list_lock)
  std::size_t nr_partial = 0;
};

// The CPU freelist: a Freelist whose count is not stored but follows from
// the CpuSlab's counters of pops and pushes,
//   count = count_base + (frees - allocs)   (mod 2^32),
// so that a pop and a push store the head and one counter each, not a
// count as well. Read and replaced whole through cpu_freelist() and
// set_cpu_freelist(); a pop or push counted in allocs / frees moves the
// count by itself.
struct CpuFreelist {
  std::uintptr_t head = 0;
  std::uint32_t count_base = 0;
};

// Two cache lines: the first holds everything a fast path writes and the
// slab's base; the second the cache's constants the fast paths read (copies,
// so that they read no KmemCache: its line also holds list_lock, written by
// every CPU) and the retired chain.
struct alignas(kCacheLine) CpuSlab {
  LocalTryLock lock{"slab.cpu_lock"};
  Slab* slab = nullptr;  // this CPU's slab of the cache, frozen
  CpuFreelist free;      // objects of `slab` only
  // slab->base, or 0 without a slab (set with `slab`, by set_cpu_slab): the
  // pop's link check without a load through `slab`.
  std::uintptr_t base = 0;
  // Objects popped from and pushed onto `free` (kmalloc, kfree): the CPU
  // slabs' share of kSlabStatAllocs and kSlabStatFrees, and the terms of
  // the CPU freelist's count.
  std::atomic<std::uint64_t> allocs{0};
  std::atomic<std::uint64_t> frees{0};
  // The cache's secret and object_mask (set by slab_init; checked by
  // slab_check_invariants).
  alignas(kCacheLine) std::uintptr_t secret = 0;
  std::uintptr_t object_mask = 0;
  // Former CPU slabs, still frozen, chained through Slab::next: retired by
  // kmalloc_nolock when list_lock was busy, unfrozen at the next list_lock.
  Slab* retired = nullptr;
};
// (Debug builds' locks carry the validator's state: larger, laid out anyhow.)
static_assert(kDebug || (sizeof(CpuSlab) == 2 * kCacheLine && offsetof(CpuSlab, frees) < kCacheLine));

// Return: how far the counted pops and pushes have moved the CPU
// freelist's count, (frees - allocs) mod 2^32, for `allocs` as the caller
// loaded cs.allocs.
ANYCTX_ALWAYS_INLINE std::uint32_t cpu_free_moved(const CpuSlab& cs, std::uint64_t allocs) {
  return static_cast<std::uint32_t>(cs.frees.load(std::memory_order_relaxed) - allocs);
}

// Return: the number of objects on the CPU freelist of `cs`; the first form
// for a pop that has loaded cs.allocs once, to store it plus one after.
ANYCTX_ALWAYS_INLINE std::uint32_t cpu_free_count(const CpuSlab& cs, std::uint64_t allocs) {
  return cs.free.count_base + cpu_free_moved(cs, allocs);
}
ANYCTX_ALWAYS_INLINE std::uint32_t cpu_free_count(const CpuSlab& cs) {
  return cpu_free_count(cs, cs.allocs.load(std::memory_order_relaxed));
}

// Return: the CPU freelist of `cs` as a Freelist, for the code that edits
// any freelist (a copy: set_cpu_freelist() puts it back).
inline Freelist cpu_freelist(const CpuSlab& cs) { return Freelist{cs.free.head, cpu_free_count(cs)}; }

// Makes `fl` the CPU freelist of `cs`, its count as it is with the counters
// as they are now: a pop or push is counted before, not after.
inline void set_cpu_freelist(CpuSlab& cs, const Freelist& fl) {
  cs.free.head = fl.head;
  cs.free.count_base = fl.count - cpu_free_moved(cs, cs.allocs.load(std::memory_order_relaxed));
}

// Makes `s` (or nullptr) the CPU slab of `cs`, keeping cs.base in step.
inline void set_cpu_slab(CpuSlab& cs, Slab* s) {
  cs.slab = s;
  cs.base = s != nullptr ? reinterpret_cast<std::uintptr_t>(s->base) : 0;
}

// The frames of a CPU that use one set of its CPU slabs.
enum CpuSlabSet : int { kTaskCpuSlabs = 0, kInterruptCpuSlabs = 1, kCpuSlabSets = 2 };

struct CpuSlabs {
  CpuSlab sets[kCpuSlabSets][kKmallocCaches];  // [CpuSlabSet][cache index]
  std::atomic<std::uintptr_t> deferred{0};     // head of this CPU's deferred list
};

// Return: the set of CPU slabs that the running frame uses.
inline CpuSlabSet frame_cpu_slab_set() { return in_task() ? kTaskCpuSlabs : kInterruptCpuSlabs; }

// Return: the CpuSlab of cache `idx` that the running frame uses on `cpu`
// (its own CPU).
inline CpuSlab& frame_cpu_slab(CpuSlabs& cpu, int idx) { return cpu.sets[frame_cpu_slab_set()][idx]; }

// Calls fn(cs, cache index) for every CpuSlab of `cpu`, both sets.
template <class Fn>
void for_each_cpu_slab(CpuSlabs& cpu, Fn&& fn) {
  for (auto& set : cpu.sets)
    for (int i = 0; i < kKmallocCaches; ++i) fn(set[i], i);
}

// Statistics: a slot per CPU, context level and cache; one writer per slot
// (interrupts nest strictly and never at their own level), so a relaxed load
// and store count exactly without an RMW. Threads that are not CPUs share
// slots updated with fetch_add.
enum SlabStat : int {
  kSlabStatAllocs,
  kSlabStatAllocFailed,
  kSlabStatFrees,
  kSlabStatSlabsAllocated,
  kSlabStatSlabsFreed,
  kSlabStatDeferredPushed,
  kSlabStatDeferredFreed,
  kSlabStatNextClass,
  kSlabStatCount
};

struct SlabStatSlots {
  std::atomic<std::uint64_t> v[3][kKmallocCaches][kSlabStatCount]{};
};

extern ANYCTX_FAST_PATH_DATA KmemCache g_caches[kKmallocCaches];
extern ANYCTX_FAST_PATH_DATA PerCpu<CpuSlabs> g_cpu_slabs;
extern std::atomic<std::uintptr_t> g_shared_deferred;
extern std::uintptr_t g_deferred_secret;
extern ANYCTX_FAST_PATH_DATA Slab* g_slab_table;
extern ANYCTX_FAST_PATH_DATA std::size_t g_slab_table_entries;
// The page arena as slab_init found it, so that kfree finds a slab without
// a call into the page allocator: frame n's descriptor is g_arena_descs + n.
extern ANYCTX_FAST_PATH_DATA std::uintptr_t g_arena_base;
extern ANYCTX_FAST_PATH_DATA std::size_t g_arena_bytes;
extern ANYCTX_FAST_PATH_DATA Page* g_arena_descs;
extern PerCpu<SlabStatSlots> g_stats;  // a slot per CPU (see SlabStatSlots)
extern SlabStatSlots g_shared_stats;   // threads that are not CPUs

std::uint64_t slab_stat_sum(int cache, int stat);
// Return: the CpuSlab counters' share of `stat` (kSlabStatAllocs,
// kSlabStatFrees; 0 for the others) over every CPU.
std::uint64_t cpu_slab_count(int cache, int stat);
void slab_stat_add(int cache, int stat, std::uint64_t delta);

// --- links inside free objects ----------------------------------------------

// The key is computed apart from the link it applies to: a pop loads the
// link that the push before it stored, so only the one XOR with the key is
// on that chain (left to the optimiser, the XOR with the secret's load
// comes last and there are two).
inline std::uintptr_t link_key(std::uintptr_t secret, std::uintptr_t slot) {
  return one_register(secret ^ std::rotl(slot, 29));
}
inline std::uintptr_t encode_link(std::uintptr_t secret, std::uintptr_t next, std::uintptr_t slot) {
  return next ^ link_key(secret, slot);
}
inline std::uintptr_t decode_link(std::uintptr_t secret, std::uintptr_t stored, std::uintptr_t slot) {
  return stored ^ link_key(secret, slot);
}

// Free objects stay poisoned; only the link word is opened around an access.
ANYCTX_ALWAYS_INLINE std::uintptr_t load_link_word(std::uintptr_t slot) {
  void* p = reinterpret_cast<void*>(slot);
  ANYCTX_UNPOISON(p, sizeof(std::uintptr_t));
  std::uintptr_t v;
  std::memcpy(&v, p, sizeof v);
  ANYCTX_POISON(p, sizeof(std::uintptr_t));
  return v;
}
ANYCTX_ALWAYS_INLINE void store_link_word(std::uintptr_t slot, std::uintptr_t v) {
  void* p = reinterpret_cast<void*>(slot);
  ANYCTX_UNPOISON(p, sizeof(std::uintptr_t));
  std::memcpy(p, &v, sizeof v);
  ANYCTX_POISON(p, sizeof(std::uintptr_t));
}

// Return: whether `addr` is the start of an object of `s`.
ANYCTX_ALWAYS_INLINE bool is_object_of(const Slab* s, std::uintptr_t addr) {
  return ((addr - reinterpret_cast<std::uintptr_t>(s->base)) & s->cache->object_mask) == 0;
}

inline unsigned object_index(const Slab* s, std::uintptr_t addr) {
  return static_cast<unsigned>((addr - reinterpret_cast<std::uintptr_t>(s->base)) >> s->cache->shift);
}

// Return: the slab table entry whose frames hold `addr`, live or not, or
// nullptr (outside the arena, not a slab page). Only the slab layer writes
// owner_private (a table entry, or nullptr), so only a corrupt page
// descriptor holds anything else: builds with kSlabExactFree (debug,
// sanitizers, the hardened option) check it against the table; release
// trusts it. An entry that is not live keeps the cache_index, base and
// object_mask of its last slab (or zeros): safe to read, but they say
// nothing. The caller checks that the entry is live (slab_of), or that it
// is the slab it holds (kfree's fast path: a CPU slab is live).
ANYCTX_ALWAYS_INLINE Slab* slab_entry_of(const void* addr) {
  std::uintptr_t rel = reinterpret_cast<std::uintptr_t>(addr) - g_arena_base;
  if (ANYCTX_UNLIKELY(rel >= g_arena_bytes)) return nullptr;
  void* owner = g_arena_descs[rel >> kPageShift].owner_private.load(std::memory_order_acquire);
  if constexpr (kSlabExactFree) {
    std::uintptr_t off = reinterpret_cast<std::uintptr_t>(owner) - reinterpret_cast<std::uintptr_t>(g_slab_table);
    if (ANYCTX_UNLIKELY(off >= g_slab_table_entries * sizeof(Slab) || off % sizeof(Slab) != 0)) return nullptr;
  } else if (ANYCTX_UNLIKELY(owner == nullptr)) {
    return nullptr;
  }
  return static_cast<Slab*>(owner);
}

// Return: the live slab whose frames hold `addr`, or nullptr.
ANYCTX_ALWAYS_INLINE Slab* slab_of(const void* addr) {
  Slab* s = slab_entry_of(addr);
  return ANYCTX_LIKELY(s != nullptr && s->cache != nullptr) ? s : nullptr;
}

inline std::size_t slab_pfn(const Slab* s) { return static_cast<std::size_t>(s - g_slab_table); }

}  // namespace anyctx::detail
