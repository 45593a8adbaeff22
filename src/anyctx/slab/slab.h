// anyctx/slab/slab.h — kmalloc: size-class object caches over the page
// allocator, with entry points that are safe to call from any context.
//
// Contract:
//  - slab_init() after page_allocator_init(); slab_shutdown() before
//    page_allocator_shutdown(). Both task context, quiesced.
//  - Size classes are the powers of two 8..8192 bytes. An object of class N
//    is N bytes, aligned to N. kmalloc(n) returns an object of the smallest
//    class >= n (n = 0 counts as 1); above kKmallocMaxSize it returns nullptr
//    (there is no large-kmalloc path: use alloc_pages).
//  - kmalloc(size, gfp) / kfree(p) may spin: task or IRQ context, on a CPU
//    (a thread that is not a CPU gets a fatal `not a cpu` report). gfp as for
//    alloc_pages: kGfpDirectReclaim only in task context; a gfp without
//    either reclaim bit takes every slab lock by trylock as nolock does.
//    A CPU has two CPU slabs per size class: one for its task frames, used
//    by the inline fast paths without any lock (no task frame interrupts
//    another, and no other frame uses it), and one for its IRQ and NMI
//    frames, guarded by a local trylock taken without masking IRQs (no
//    atomic RMW, no mask). An NMI may land while the IRQ it interrupted
//    holds that lock: such a kmalloc_nolock goes on as below, a kfree frees
//    into the object's slab. A kfree in an interrupt of an object of the
//    task frames' CPU slab frees into that slab under list_lock.
//  - kmalloc_nolock(size, gfp): any context. gfp may carry only kGfpZero and
//    kGfpAccount (anything else is a fatal `bad gfp` report). Never spins:
//    the CPU slab lock and the cache's list_lock by trylock, new slabs from
//    alloc_pages_nolock. When this CPU's lock of the size class is held by
//    the frame this call interrupted, it tries once in the next class (so it
//    may return a larger object). When its CPU slab is used up and list_lock
//    is busy, it sets that slab aside (still this CPU's, given back at the
//    next list_lock) and takes a new one. nullptr means "no memory in this
//    context": the CPU locks of both classes were held, the page allocator
//    said no, or the thread is not a CPU.
//  - kfree_nolock(p): any context, also on a thread that is not a CPU.
//    Frees into this CPU's slab when p belongs to it and its lock is free;
//    otherwise into p's slab under the cache's list_lock taken by trylock
//    (a slab that this free empties stays on the partial list: nolock frees
//    give no pages back). When list_lock is busy, p goes on this CPU's
//    lock-free deferred list (CAS push, take-all by exchange), and the push
//    that finds the list empty raises an IRQ on this CPU: it runs once the
//    current frame is done (at once in task context with IRQs on; when IRQs
//    are unmasked; after the NMI or IRQ handler returns), and its exit frees
//    the list. The kmalloc/kfree fast paths do not look at the list (one
//    on the fast path inside the pushing frame, or inside the IRQ-masked
//    section that frame runs in, leaves it to that IRQ); their slow paths
//    (kGfpZero, a CPU freelist to refill, an object outside the CPU slab,
//    bad input) free it first. A CPU also frees its deferred objects at
//    slab_drain_*() and when it goes offline; the shrinker and
//    slab_drain_all() take every CPU's. A thread that is not a CPU has no
//    per-CPU list: when list_lock is busy it pushes on one shared deferred
//    list that spinning slow paths, drains and the shrinker empty. Never
//    spins, never loses an object, and on a CPU never strands one.
//  - Accounting: kGfpAccount objects come from separate caches
//    ("kmalloc-cg-N") whose slab pages are allocated with kGfpAccount. Slabs
//    are charged, not objects: a slab is charged whole to the cgroup that is
//    current on the thread that allocates its pages, and uncharged when its
//    pages go back; objects carved from it later share that charge.
//  - Bad input: kfree / kfree_nolock of a pointer that is not a live object
//    (outside the arena, on a page that is not a slab, not the start of an
//    object, already free) is a `bad slab free` report naming the cache, the
//    slab and the reason; then, by policy, abort (the default in debug and
//    sanitizer builds) or count the report and leave the memory alone.
//    Double frees are detected exactly in debug and sanitizer builds (and
//    with the CMake option ANYCTX_SLAB_EXACT_FREE): each slab has an
//    allocation bitmap updated with one atomic RMW per kmalloc and one per
//    kfree. Other builds keep the CPU-local paths free of atomic RMWs and
//    catch a double free only when the object is the last one freed to its
//    CPU freelist (as production SLUB does); a later one may corrupt the
//    slab.
//  - Hardened freelists: the link in a free object is stored encoded with a
//    per-cache secret and the object's own address; a link that decodes
//    outside its slab or off an object boundary is a `slab freelist
//    corruption` report naming the cache and the slab, and is not followed
//    (under the leak policy the rest of that list is abandoned).
//  - ASan builds poison free objects and the bytes past the requested size.
//  - Empty slabs go back to the page allocator (each cache keeps up to
//    kSlabKeepPartial partial or empty slabs on its list; drains return all
//    empty ones).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "anyctx/ctx/gfp.h"
#include "anyctx/page/page_alloc.h"
#include "anyctx/slab/slab_classes.h"

namespace anyctx {

inline constexpr int kSlabKeepPartial = 2;

// Sets up the kmalloc caches over the page allocator's arena and registers
// the IRQ-exit, CPU-offline and shrinker hooks. Context: task, after
// page_allocator_init. Return: empty on success, else what went wrong.
std::string_view slab_init();
// Unregisters the hooks and forgets every slab (their pages stay allocated).
// Context: task, quiesced. Return: nothing.
void slab_shutdown();

// Context: task or IRQ, on a CPU (kGfpDirectReclaim: task). Return: an
// object of at least `size` bytes (zeroed with kGfpZero), or nullptr when
// size > kKmallocMaxSize or memory is exhausted.
inline void* kmalloc(std::size_t size, Gfp gfp);
// Frees an object from kmalloc or kmalloc_nolock; nullptr is ignored.
// Context: task or IRQ, on a CPU. Return: nothing (bad input is reported).
inline void kfree(const void* p);

// Context: any; gfp may carry only kGfpZero and kGfpAccount. Return: an
// object of at least `size` bytes, or nullptr (no memory in this context).
inline void* kmalloc_nolock(std::size_t size, Gfp gfp);
// Frees like kfree without ever waiting; nullptr is ignored. Context: any,
// also a thread that is not a CPU. Return: nothing.
inline void kfree_nolock(const void* p);

// Context: any (arithmetic). Return: the cache index (0..kKmallocCaches-1)
// kmalloc(size, gfp) uses, or -1 above kKmallocMaxSize.
int kmalloc_cache_index(std::size_t size, Gfp gfp);
// Context: any. Return: the object size of the cache holding live object
// `p`, or 0 when p is not inside a slab.
std::size_t kmalloc_object_size(const void* p);

// Frees this CPU's deferred objects and returns its CPU slabs to their
// caches, giving empty slabs back. Context: task, on a CPU. Return: pages
// given back to the page allocator.
std::size_t slab_drain_local();
// slab_drain_local() when called on a CPU, then every CPU's deferred list and
// the shared one, then every empty slab on the partial lists. Other CPUs'
// CPU slabs stay with them (no cross-CPU call here: they are returned at
// their own drain or offline). It is also the shrinker. Context: task.
// Return: pages given back to the page allocator.
std::size_t slab_drain_all();

// Sets what a bad free or a corrupt freelist does after its report.
// Context: task. Return: nothing.
void set_slab_bad_free_policy(BadPagePolicy policy);
// Context: any. Return: the policy in force.
BadPagePolicy slab_bad_free_policy();
// Context: any. Return: bad-free and freelist-corruption reports so far.
std::uint64_t slab_bad_free_reports();

struct SlabCacheStats {
  const char* name;            // "kmalloc-64", "kmalloc-cg-64"
  std::size_t object_size;
  unsigned order;              // of each slab's page block
  unsigned objects_per_slab;
  std::uint64_t slabs;           // slabs_allocated - slabs_freed
  std::uint64_t objects_in_use;  // allocs - frees
  std::uint64_t allocs, frees, alloc_failed;
  std::uint64_t slabs_allocated, slabs_freed;
  std::uint64_t deferred_pushed, deferred_freed;
  std::uint64_t next_class_allocs;  // kmalloc_nolock calls served by the next class
};
// Context: any (a snapshot of NMI-safe per-CPU counters). Return: the
// counters of cache `index` (0..kKmallocCaches-1).
SlabCacheStats slab_cache_stats(int index);
// Context: any (a snapshot). Return: objects pushed on deferred lists and
// not yet freed from them, over all caches.
std::uint64_t slab_deferred_pending();

// Checks, per cache, each under its list_lock: every live slab's frames
// point at it; slab counts match the counters; objects in use (allocation
// bits) equal allocs - frees; every free object is on exactly one list (its
// slab's freelist, the CPU freelist of the CPU owning its slab, or a
// deferred list) exactly once and no allocated object is on any; list
// lengths match their counts; the partial lists hold exactly the slabs that
// are neither a CPU's nor full; deferred lists hold what the counters say;
// the copies of a cache's constants and of a slab's base that the fast
// paths read (in each slab and CPU slab) equal the originals.
// Context: task, quiesced (no slab call in flight on any CPU).
// Return: ok, or the first violation naming the cache and slab.
InvariantResult slab_check_invariants();

}  // namespace anyctx

// The four entry points above are inline: their fast paths, and the
// internals those read, follow (slab_fast.h, slab_internal.h).
#include "anyctx/slab/slab_fast.h"
