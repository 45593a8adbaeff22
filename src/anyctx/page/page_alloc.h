// anyctx/page/page_alloc.h — the page allocator: one zone of buddy free
// lists, per-CPU page lists (pcp), and the entry points that are safe from
// any context.
//
// Contract:
//  - One allocator per process, over one arena: page_allocator_init() before
//    use, page_allocator_shutdown() after (both task context, quiesced).
//  - Lock order: pcp.lock -> zone.lock. zone.lock is a Spinlock, always
//    taken with IRQs soft-masked. pcp.lock is a LocalTryLock (no atomic RMW):
//    only its own CPU takes it, by try_lock on the allocation and free paths
//    (a pcp held by an interrupted frame sends the call to the buddy lists),
//    by lock() only to drain itself. Every choice between waiting and not
//    waiting branches on allows_spinning(gfp) first (no try_lock-then-lock).
//  - Other CPUs never touch a pcp: drain_all_pages() (and reclaim, which
//    calls it) *requests* each CPU with pages to drain — a flag and an IRQ
//    (send_interrupt) — and waits for all of them, up to a bound. The owner serves
//    the request at the IRQ's exit, or, when the interrupted frame holds the
//    pcp, when that frame releases it; a CPU going offline drains itself and
//    serves it. A request still unserved after drain_timeout_ms is counted
//    (PageStats::drain_timeouts) and its pages stay put. A thread that is not
//    a CPU only requests.
//  - Spinning entry points (alloc_pages, free_pages, put_page, drains) may
//    wait for locks; with kGfpDirectReclaim, alloc_pages runs the registered
//    shrinkers (reclaim.h) and retries. Task or IRQ context, never NMI.
//  - alloc_pages_nolock / free_pages_nolock never wait: trylocks only, any
//    context. nullptr from alloc_pages_nolock means "no memory in this
//    context now" (ENOMEM), not "retry". A free never loses a page: when
//    zone.lock is busy it goes on the lock-free deferred stack, which the
//    holder of zone.lock empties before it releases it (any holder, any
//    context). Nothing is stranded: a request that a nolock frame cannot
//    serve is served by an IRQ it raises on its own CPU.
//  - A nolock free that takes the pcp above `high` parks a batch on the
//    deferred stack without zone.lock, and a nolock refill takes its
//    order's blocks from that stack (an exchange) before it tries
//    zone.lock (what it does not keep goes to the buddy lists, or back on
//    the stack when zone.lock is busy), so a nolock producer on one CPU and
//    a nolock consumer on another do not make each other fail. Parked pages
//    are free memory for every path: a refill takes them, a holder of
//    zone.lock drains them before it allocates and before it releases,
//    drain_all_pages() too, and a park that leaves more than 2 * `pcp_high`
//    pages on the stack drains it.
//  - Misuse (a descriptor outside the arena, a misaligned or wrong-order
//    free, a double free, a free with references left) is a `bad page`
//    report naming the pfn, its state and the reason; then, by policy, abort
//    or count the report and leak the page. Debug and sanitizer builds check
//    every case directly (and take the last reference with a compare-
//    exchange, so two CPUs freeing one block at once are reported). Release
//    builds check that the descriptor is one of the arena's, allocated, of
//    the freed order, with one reference, and trust that such a head is
//    aligned to its order (every block the allocator hands out is): a
//    misaligned free is still reported there, as misaligned, because the
//    frame it names is a tail or heads a block of another order.
//  - ASan builds poison free frames and unpoison them on allocation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "anyctx/ctx/gfp.h"
#include "anyctx/page/page.h"

namespace anyctx {

enum class BadPagePolicy : std::uint8_t {
  kAbort,          // report and abort (default when ANYCTX_DEBUG or a sanitizer)
  kReportAndLeak,  // report, count, leave the page alone
};

struct PageAllocatorConfig {
  std::size_t pages = 16384;  // arena size in 4 KiB frames
  int pcp_batch = 32;         // pages moved per pcp refill / bulk free
  int pcp_high = 192;         // a free above this returns a batch
  // Watermarks in free buddy pages. Allocations stop at `min` (kGfpHigh
  // callers at min/2); direct-reclaim callers reclaim first below `low`.
  // kAutoWatermark: min = pages/512, low = 2*min, high = 3*min.
  static constexpr std::size_t kAutoWatermark = ~std::size_t{0};
  std::size_t watermark_min = kAutoWatermark;
  std::size_t watermark_low = kAutoWatermark;
  std::size_t watermark_high = kAutoWatermark;
  // How long drain_all_pages() waits for the other CPUs to serve its drain
  // requests (1..3,600,000 ms); then it counts PageStats::drain_timeouts.
  std::uint32_t drain_timeout_ms = 1000;
};

// Context: task, nothing allocated. Return: empty on success, else what was
// wrong with the config or the system.
std::string_view page_allocator_init(const PageAllocatorConfig& config);
// Unmaps the arena. Context: task, no other CPU using the allocator.
void page_allocator_shutdown();

// With kGfpAccount it first charges current_mem_cgroup() 2^order pages
// (memcg.h; a spinning charge, which may reclaim), gives the charge back if
// no block is found, and keeps the cgroup in the block's head frame.
// Context: task or IRQ (direct reclaim: task). Return: a block of 2^order
// frames with refcount 1 (zeroed with kGfpZero), or nullptr when memory is
// exhausted even after reclaim, the cgroup refused the charge, or
// order > kMaxOrder.
inline Page* alloc_pages(Gfp gfp, unsigned order);
// Frees a block from alloc_pages / alloc_pages_nolock; the caller holds the
// last reference. A charged block is uncharged from its cgroup (on every
// free path: free_pages, free_pages_nolock, the last put_page). Context:
// task or IRQ.
inline void free_pages(Page* page, unsigned order);

// With kGfpAccount the charge of current_mem_cgroup() is nolock as well:
// exactly 2^order pages, no reclaim, refused at once at the limit.
// Context: any; gfp may carry only kGfpAccount; order <= kPcpMaxOrder.
// Return: a zeroed block with refcount 1, or nullptr (no memory in this
// context: a lock was busy, the lists were empty, the cgroup is at its
// limit, order > 3, or the thread is not a CPU).
inline Page* alloc_pages_nolock(Gfp gfp, unsigned order);
// Frees like free_pages without ever waiting. Context: any.
inline void free_pages_nolock(Page* page, unsigned order);

// Adds a reference. Context: any.
void get_page(Page* page);
// Drops a reference; the last one frees the block. Context: task or IRQ.
void put_page(Page* page);
// Return: the current reference count. Context: any.
int page_refcount(const Page* page);

// Returns this CPU's pcp pages to the buddy lists. Context: task.
void drain_local_pages();
// Returns every CPU's pcp pages and the deferred stack to the buddy lists:
// this CPU's directly, the others' by request (see the contract above).
// Context: task. Return: pages moved (by this call and the drains it waited for).
std::size_t drain_all_pages();

// Return: the CPU whose drain request this thread waits for inside
// drain_all_pages(), or kNoCpu. For the harness, which must let that CPU run.
// Context: any.
int pcp_drain_waiting_on();

void set_bad_page_policy(BadPagePolicy policy);
BadPagePolicy bad_page_policy();
// Return: bad-page reports so far.
std::uint64_t bad_page_reports();

struct PageStats {
  // [path][context]: path 0 spinning, 1 nolock; context as ContextLevel.
  std::uint64_t alloc_ok[2][3];
  std::uint64_t alloc_failed[2][3];
  std::uint64_t freed[2][3];
  std::uint64_t charge_failed[2][3];  // kGfpAccount calls refused by the cgroup (also in alloc_failed)
  std::uint64_t deferred_pushed;   // blocks frees pushed (busy zone.lock) or parked (nolock trims)
  std::uint64_t deferred_drained;  // blocks returned to the buddy lists
  std::uint64_t deferred_taken;    // blocks nolock refills took for their pcp
  std::uint64_t pcp_refills;
  std::uint64_t pcp_bulk_frees;
  std::uint64_t reclaim_runs;
  std::uint64_t drain_requests;   // sent to other CPUs by drain_all_pages
  std::uint64_t drains_served;    // requests served by their CPU
  std::uint64_t drain_timeouts;   // requests not served within the bound
};
// Context: any (a snapshot of NMI-safe counters).
PageStats page_stats();

// Free pages on the buddy lists (not counting pcp lists or the deferred
// stack). Context: any (a snapshot).
std::size_t zone_free_pages();
// Free blocks of `order` on the buddy lists. Context: task (takes zone.lock).
std::size_t zone_free_blocks(unsigned order);
// Pages on this CPU's pcp lists / on `cpu`'s. Context: any (a snapshot).
int pcp_count(int cpu);
// Pages waiting on the deferred stack. Context: task (walks the stack under
// zone.lock).
std::size_t deferred_free_pages();

struct InvariantResult {
  bool ok = true;
  std::string what;  // the first violation, naming the pfn
};

// The full check. Each CPU's pcp, then the zone under zone.lock:
// every frame is in exactly one place (buddy, a pcp list, the deferred stack,
// allocated) and the counts add up to the arena; free blocks are aligned to
// their order, in range and not overlapping; no two free buddies of one order
// sit uncoalesced on the buddy lists; per-order and pcp counts match their
// lists. Cost: O(arena pages). Context: task, quiesced (no allocation or free
// in flight).
InvariantResult check_invariants();

// The cheap check: everything check_invariants() says about the free lists
// (each listed block in range, aligned, in its list's state and order, no two
// listed blocks overlapping, nothing uncoalesced, lengths and counts), without
// visiting allocated frames, so a frame lost from every list goes unseen.
// Overlap is found by looking up each listed block's aligned ancestors, so a
// listed block inside an allocated one is reported too. Allocates nothing.
// Cost: O(free blocks · kMaxOrder). Context: task, quiesced.
InvariantResult check_free_lists();

}  // namespace anyctx

// alloc_pages, free_pages, alloc_pages_nolock and free_pages_nolock are
// inline: their fast paths, and the internals those read, follow.
#include "anyctx/page/page_alloc_fast.h"
