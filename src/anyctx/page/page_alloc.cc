// The page allocator. Map of this file:
//   state           the arena, the zone, the pcp sets
//   lists           PageList, intrusive and circular
//   buddy           split and merge under zone.lock
//   locks           zone_lock(): branch on allows_spinning() first
//   deferred        the lock-free stack of frees that found zone.lock busy
//                   and of batches that nolock trims park for nolock refills
//   pcp             refill, bulk free, drain; drain requests from other CPUs
//   alloc / free    the shared cores and the entry points
//   accounting      kGfpAccount: charge first, uncharge on failure and free
//   bad page        validation and reports
//   invariants
#include "anyctx/page/page_alloc.h"

#include <sys/mman.h>
#include <time.h>

#include <bit>
#include <chrono>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/fastpath.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/reclaim.h"
#include "anyctx/ctx/report.h"
#include "anyctx/ctx/site.h"
#include "anyctx/lock/local_lock.h"
#include "anyctx/lock/spinlock.h"
#include "anyctx/lock/validator.h"
#include "anyctx/memcg/memcg.h"
#include "anyctx/page/fault.h"

namespace anyctx {

namespace detail {
Arena g_arena;
PerCpu<Pcp> g_pcp;
}  // namespace detail

using namespace detail;

namespace {

// --- lists -----------------------------------------------------------------

// A circular doubly linked list of block heads through Page::next/prev;
// head->prev is the tail. Callers hold the lock of the list's owner.
struct PageList {
  Page* head = nullptr;
  std::size_t length = 0;

  bool empty() const { return head == nullptr; }

  void push_front(Page* p) {
    push_back(p);
    head = p;
  }
  void push_back(Page* p) {
    if (head == nullptr) {
      p->next = p->prev = p;
      head = p;
    } else {
      Page* tail = head->prev;
      p->prev = tail;
      p->next = head;
      tail->next = p;
      head->prev = p;
    }
    ++length;
  }
  void remove(Page* p) {
    if (p->next == p) {
      head = nullptr;
    } else {
      p->prev->next = p->next;
      p->next->prev = p->prev;
      if (head == p) head = p->next;
    }
    p->next = p->prev = nullptr;
    --length;
  }
  Page* pop_front() {
    Page* p = head;
    remove(p);
    return p;
  }
  Page* pop_back() {
    Page* p = head->prev;
    remove(p);
    return p;
  }
};

// --- state -----------------------------------------------------------------

struct Zone {
  Spinlock lock{"zone.lock"};
  PageList free_area[kMaxOrder + 1];  // guarded by lock
  std::atomic<std::size_t> free_pages{0};
  std::size_t watermark_min = 0, watermark_low = 0, watermark_high = 0;
  // The deferred-free stack: pushed by CAS (a block, or a chain of them),
  // taken whole by exchange (a drain under lock, or a nolock refill).
  std::atomic<Page*> deferred_free{nullptr};
  // Pages on it: added after a push, taken off after a take, so a snapshot
  // is off by the chains in flight. It only decides when a parking frame
  // drains (above park_limit); check_invariants() checks it quiesced.
  std::atomic<long> deferred_pages{0};
  long park_limit = 0;  // twice the config's pcp_high (deferred_park)
};

Zone g_zone;
StatSlots g_shared_stats;
std::atomic<BadPagePolicy> g_policy{kDebug || ANYCTX_ASAN || ANYCTX_TSAN ? BadPagePolicy::kAbort
                                                                       : BadPagePolicy::kReportAndLeak};
std::atomic<std::uint64_t> g_bad_page_reports{0};

constexpr int kMaxReclaimRetries = 3;

// How long drain_all_pages() waits for the other CPUs (the config's
// drain_timeout_ms).
std::chrono::milliseconds g_drain_timeout{1000};

int path_index(Gfp gfp) { return allows_spinning(gfp) ? 0 : 1; }

// Where a call runs, looked up once per entry point and shared by the pcp,
// the statistics and the new block's owner fields.
struct Caller {
  int cpu;  // kNoCpu: a thread that is not a CPU
  int ctx;  // ContextLevel as an index
};
Caller this_caller() { return Caller{current_cpu(), static_cast<int>(context_level())}; }

void stat_add(Caller at, int stat, std::uint64_t n) {
  if (ANYCTX_UNLIKELY(at.cpu == kNoCpu)) {
    g_shared_stats.v[at.ctx][stat].fetch_add(n, std::memory_order_relaxed);
    return;
  }
  std::atomic<std::uint64_t>& slot = g_pcp.on(at.cpu).stats.v[at.ctx][stat];
  slot.store(slot.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
}
void stat_inc(Caller at, int stat) { stat_add(at, stat, 1); }
void stat_inc(int stat) { stat_inc(this_caller(), stat); }

std::uint64_t stat_sum(int stat, int ctx) {
  std::uint64_t sum = g_shared_stats.v[ctx][stat].load(std::memory_order_relaxed);
  g_pcp.for_each_used([&](int, Pcp& pcp) { sum += pcp.stats.v[ctx][stat].load(std::memory_order_relaxed); });
  return sum;
}

std::uint64_t stat_sum(int stat) { return stat_sum(stat, 0) + stat_sum(stat, 1) + stat_sum(stat, 2); }

// --- buddy (zone.lock held) -----------------------------------------------------

bool watermark_ok(unsigned order, std::size_t mark) {
  std::size_t free = g_zone.free_pages.load(std::memory_order_relaxed);
  return free >= block_pages(order) && free - block_pages(order) >= mark;
}

void buddy_free_locked(Page* page, unsigned order) {
  std::size_t pfn = page_to_pfn(page);
  g_zone.free_pages.fetch_add(block_pages(order), std::memory_order_relaxed);
  while (order < kMaxOrder) {
    std::size_t buddy_pfn = pfn ^ block_pages(order);
    if (buddy_pfn + block_pages(order) > g_arena.pages) break;
    Page* buddy = &g_arena.descs[buddy_pfn];
    if (state_of(buddy) != PageState::kBuddy || order_of(buddy) != order) break;
    g_zone.free_area[order].remove(buddy);
    ANYCTX_SITE(kZoneListEdit);
    // The higher half's head becomes a tail of the merged block.
    std::size_t upper = pfn > buddy_pfn ? pfn : buddy_pfn;
    g_arena.descs[upper].state.store(PageState::kTail, std::memory_order_relaxed);
    pfn = pfn < buddy_pfn ? pfn : buddy_pfn;
    ++order;
  }
  Page* head = &g_arena.descs[pfn];
  set_head(head, PageState::kBuddy, order);
  g_zone.free_area[order].push_front(head);
}

Page* buddy_alloc_locked(unsigned order, std::size_t mark) {
  if (!watermark_ok(order, mark)) return nullptr;
  unsigned have = order;
  while (have <= kMaxOrder && g_zone.free_area[have].empty()) ++have;
  if (have > kMaxOrder) return nullptr;
  Page* page = g_zone.free_area[have].pop_front();
  while (have > order) {  // split: the upper half goes back, one order down
    --have;
    Page* upper = page + block_pages(have);
    set_head(upper, PageState::kBuddy, have);
    g_zone.free_area[have].push_front(upper);
    ANYCTX_SITE(kZoneListEdit);
  }
  // Off the lists, so no longer kBuddy before zone.lock is released: a CPU
  // freeing this block's buddy must not take it for a free block to merge
  // with. The caller makes it kPcp (refill) or prepares it (kAllocated).
  set_head(page, PageState::kAllocated, order);
  g_zone.free_pages.fetch_sub(block_pages(order), std::memory_order_relaxed);
  return page;
}

// --- locks -------------------------------------------------------------------

void deferred_drain_locked();

// Takes zone.lock with IRQs masked. Branch first (the seed's option (b)): a
// caller that may not spin tries once; one that may, waits. Return: false
// only for a nolock caller that found the lock busy.
bool zone_lock(Gfp gfp, IrqFlags& flags) ANYCTX_NO_TSA {
  if (!allows_spinning(gfp)) {
    if (!g_zone.lock.try_lock_irqsave(flags)) return false;
  } else {
    flags = g_zone.lock.lock_irqsave();
  }
  ANYCTX_SITE(kZoneLocked);
  return true;
}

// Releases zone.lock. Every holder, in any context, first empties the
// deferred stack (buddy surgery: nothing waits), so a page pushed while it
// held the lock is not left for a stranger. A push that lands after that
// drain is seen by the check after the release, or its pusher's own retry
// (deferred_push) takes the lock: each side stores, fences, then loads.
void zone_unlock(IrqFlags flags) ANYCTX_NO_TSA {
  for (;;) {
    deferred_drain_locked();
    ANYCTX_SITE(kZoneUnlock);
    g_zone.lock.unlock_irqrestore(flags);
    // After the release too: what a caller does with a block it took out from
    // under the lock races with the other CPUs from here on.
    ANYCTX_SITE(kZoneUnlocked);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    if (ANYCTX_LIKELY(g_zone.deferred_free.load(std::memory_order_relaxed) == nullptr)) return;
    if (!g_zone.lock.try_lock_irqsave(flags)) return;  // the holder now drains it at its unlock
    ANYCTX_SITE(kZoneLocked);
  }
}

// --- deferred ----------------------------------------------------------------

// Pushes the chain first..last (linked through deferred_next, each head
// kDeferred; `pages` pages in all) with one CAS. A push has no ABA problem:
// whatever the head is when the CAS succeeds, the chain goes on top of it.
void deferred_push_chain(Page* first, Page* last, long pages) ANYCTX_NO_TSA {
  Page* head = g_zone.deferred_free.load(std::memory_order_relaxed);
  do {
    last->deferred_next = head;
    ANYCTX_SITE(kDeferredPush);
  } while (!g_zone.deferred_free.compare_exchange_weak(head, first, std::memory_order_release,
                                                       std::memory_order_relaxed));
  g_zone.deferred_pages.fetch_add(pages, std::memory_order_relaxed);
}

// The pusher's half of the protocol (zone_unlock has the holder's): after
// the push, a fence, then zone.lock by try_lock. Either this frame gets it
// and drains, or a holder has it, whose check after its release sees the push.
void deferred_push_recheck() ANYCTX_NO_TSA {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  IrqFlags flags;
  if (g_zone.lock.try_lock_irqsave(flags)) {
    ANYCTX_SITE(kZoneLocked);
    zone_unlock(flags);  // drains
  }
}

// A free that found zone.lock busy in a context that may not wait.
void deferred_push(Page* page, unsigned order) {
  set_head(page, PageState::kDeferred, order);
  deferred_push_chain(page, page, static_cast<long>(block_pages(order)));
  stat_inc(kStatDeferredPushed);
  deferred_push_recheck();  // the holder may have drained and released since this frame's try_lock
}

// Parks a chain on the stack for the nolock refills of any CPU
// (pcp_refill_deferred_locked), without zone.lock. Parked pages wait for a
// refill, the next holder of zone.lock, or drain_all_pages(); a park that
// leaves more than park_limit pages there drains like a push, so a CPU that
// only frees parks no more than that. Why twice `high`: a nolock producer
// takes the stack each time its list runs dry, at most `high` pages apart,
// and its consumer parks meanwhile what it frees: about `high` pages plus
// what the hand-off between them holds. At `high` the consumer drained
// (holding zone.lock, the stack empty) often enough that the producer's
// refills still failed now and then; at twice `high`, never in our runs.
void deferred_park(Page* first, Page* last, long pages) {
  deferred_push_chain(first, last, pages);
  if (g_zone.deferred_pages.load(std::memory_order_relaxed) > g_zone.park_limit) deferred_push_recheck();
}

// Returns a chain taken off the stack to the buddy lists. Return: its pages.
long deferred_merge_locked(Page* page) {
  long pages = 0;
  while (page != nullptr) {
    Page* next = page->deferred_next;
    page->deferred_next = nullptr;
    unsigned order = order_of(page);
    buddy_free_locked(page, order);
    pages += static_cast<long>(block_pages(order));
    stat_inc(kStatDeferredDrained);
    ANYCTX_SITE(kDeferredDrain);
    page = next;
  }
  return pages;
}

void deferred_drain_locked() {
  if (ANYCTX_LIKELY(g_zone.deferred_free.load(std::memory_order_relaxed) == nullptr)) return;
  Page* page = g_zone.deferred_free.exchange(nullptr, std::memory_order_acquire);
  g_zone.deferred_pages.fetch_sub(deferred_merge_locked(page), std::memory_order_relaxed);
}

// Blocks a nolock refill took off the stack but does not keep go back as a
// nolock free would: to the buddy lists when zone.lock is free, else onto
// the stack again by the push protocol.
void deferred_return(Page* first, Page* last, long pages) {
  IrqFlags flags;
  if (zone_lock(Gfp{}, flags)) {
    deferred_merge_locked(first);
    zone_unlock(flags);
    return;
  }
  deferred_push_chain(first, last, pages);
  deferred_push_recheck();
}

// --- pcp (pcp.lock held) -------------------------------------------------------


// Takes the next block of a round-robin walk over the orders (`order` is
// where the walk stands; each list from its top) off the pcp. Return:
// nullptr when the pcp is empty.
Page* pcp_pop_next(Pcp& pcp, unsigned& order) {
  while (pcp.count.load(std::memory_order_relaxed) > 0) {
    PcpList& list = pcp.lists[order];
    order = (order + 1) % (kPcpMaxOrder + 1);
    if (list.empty()) continue;
    Page* page = list.pop();
    pcp_count_add(pcp, -static_cast<long>(block_pages(order_of(page))));
    return page;
  }
  return nullptr;
}

// A nolock refill takes parked blocks before it tries zone.lock: the whole
// stack by exchange (a lock-free take with no ABA problem), its blocks of
// `order` onto the pcp list while the pcp stays within `high` (one at
// least), the rest to the buddy lists (deferred_return). Return: whether it
// kept a block.
bool pcp_refill_deferred_locked(Pcp& pcp, unsigned order) ANYCTX_NO_TSA {
  if (ANYCTX_LIKELY(g_zone.deferred_free.load(std::memory_order_relaxed) == nullptr)) return false;
  Page* page = g_zone.deferred_free.exchange(nullptr, std::memory_order_acquire);
  ANYCTX_SITE(kDeferredTake);
  const long room = pcp.high - pcp.count.load(std::memory_order_relaxed);
  long taken = 0, kept = 0, rest_pages = 0;
  std::uint64_t kept_blocks = 0;
  Page* rest = nullptr;
  Page* rest_last = nullptr;
  while (page != nullptr) {
    Page* next = page->deferred_next;
    unsigned o = order_of(page);
    long n = static_cast<long>(block_pages(o));
    taken += n;
    if (o == order && (kept == 0 || kept + n <= room)) {
      page->deferred_next = nullptr;
      set_head(page, PageState::kPcp, o);
      pcp.lists[o].push(page);
      kept += n;
      ++kept_blocks;
    } else {
      page->deferred_next = rest;
      if (rest == nullptr) rest_last = page;
      rest = page;
      rest_pages += n;
    }
    page = next;
  }
  g_zone.deferred_pages.fetch_sub(taken, std::memory_order_relaxed);
  pcp_count_add(pcp, kept);
  if (rest != nullptr) deferred_return(rest, rest_last, rest_pages);
  if (kept_blocks == 0) return false;
  stat_add(this_caller(), kStatDeferredTaken, kept_blocks);
  return true;
}

// Refills the pcp list of `order`: a nolock caller first from the parked
// blocks, then up to a batch from the buddy lists, on top in the order the
// buddy lists gave them (ascending addresses go out first, as the kernel's
// refill keeps them).
bool pcp_refill_locked(Pcp& pcp, unsigned order, Gfp gfp, std::size_t mark) {
  if (!allows_spinning(gfp) && pcp_refill_deferred_locked(pcp, order)) {
    stat_inc(kStatPcpRefills);
    return true;
  }
  IrqFlags flags;
  if (!zone_lock(gfp, flags)) return false;
  deferred_drain_locked();  // parked pages count as free memory here too
  int blocks = pcp.batch >> order;
  if (blocks < 1) blocks = 1;
  int got = 0;
  PcpList& list = pcp.lists[order];
  Page* below = list.head;  // the batch goes above what is there
  Page** link = &list.head;
  for (; got < blocks; ++got) {
    Page* page = buddy_alloc_locked(order, mark);
    if (page == nullptr) break;
    set_head(page, PageState::kPcp, order);
    *link = page;
    link = &page->next;
    *link = below;
    pcp_count_add(pcp, static_cast<long>(block_pages(order)));
    ANYCTX_SITE(kPcpRefill);
  }
  zone_unlock(flags);
  if (got > 0) stat_inc(kStatPcpRefills);
  return got > 0;
}

// Returns at least `pages` pages (orders round-robin, each list from its
// top; all of them if there are fewer) to the buddy lists, taking zone.lock as `gfp`
// allows. Return: false when a nolock caller found zone.lock busy (nothing
// moved); else true, with the pages moved added to *moved.
bool pcp_free_bulk_locked(Pcp& pcp, long pages, Gfp gfp, std::size_t* moved) {
  if (pages <= 0 || pcp.count.load(std::memory_order_relaxed) == 0) return true;
  IrqFlags flags;
  if (!zone_lock(gfp, flags)) return false;
  std::size_t done = 0;
  unsigned order = 0;
  while (static_cast<long>(done) < pages) {
    Page* page = pcp_pop_next(pcp, order);
    if (page == nullptr) break;
    unsigned o = order_of(page);
    buddy_free_locked(page, o);
    done += block_pages(o);
    ANYCTX_SITE(kPcpBulkFree);
  }
  zone_unlock(flags);
  stat_inc(kStatPcpBulkFrees);
  *moved += done;
  return true;
}

// A full drain of this CPU's pcp is done: requests made before it began are
// served. Release: a requester that sees `drains` move sees the pages back
// on the buddy lists.
void pcp_drain_done_locked(Pcp& pcp, std::size_t moved) {
  pcp.drained_pages.store(pcp.drained_pages.load(std::memory_order_relaxed) + moved, std::memory_order_relaxed);
  pcp.drains.store(pcp.drains.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

// Returns all of this CPU's pcp pages to the buddy lists, answering any
// request made before it began. Return: false when a nolock frame found
// zone.lock busy (nothing moved, the request stays pending); else true, with
// the pages moved added to *moved.
bool pcp_drain_all_locked(Pcp& pcp, Gfp gfp, std::size_t* moved) {
  pcp.drain_requested.store(false, std::memory_order_relaxed);  // first: a request from now on drains again
  std::size_t done = 0;
  if (!pcp_free_bulk_locked(pcp, pcp.count.load(std::memory_order_relaxed), gfp, &done)) {
    pcp.drain_requested.store(true, std::memory_order_relaxed);
    return false;
  }
  pcp_drain_done_locked(pcp, done);
  *moved += done;
  return true;
}

// Serves another CPU's drain request. Return: as pcp_drain_all_locked().
ANYCTX_COLD bool pcp_serve_request_locked(Pcp& pcp, Gfp gfp) {
  ANYCTX_SITE(kPcpDrainServe);
  std::size_t moved = 0;
  if (!pcp_drain_all_locked(pcp, gfp, &moved)) return false;
  stat_inc(kStatDrainsServed);
  return true;
}

// Releases the pcp, then serves a drain request that arrived meanwhile. The
// check comes after the release: an IRQ carrying a request that lands before
// it finds the pcp held and leaves the request to this check; one that lands
// after it takes the pcp and serves the request itself.
void pcp_unlock(Pcp& pcp, Gfp gfp) {
  pcp_release(pcp);
  if (ANYCTX_UNLIKELY(pcp.drain_requested.load(std::memory_order_relaxed))) pcp_serve_request(pcp, gfp);
}

}  // namespace

// Serves a drain request from a frame that does not hold the pcp (it just
// released it, or it is the IRQ exit): the try_lock fails only when the
// interrupted frame holds it, whose unlock then serves. A nolock frame that
// cannot serve the request (zone.lock busy) raises an IRQ on this CPU: it
// runs once this frame and those it interrupted allow, and serves the
// request at its exit (pcp_irq_exit).
void detail::pcp_serve_request(Pcp& pcp, Gfp gfp) {
  if (!pcp_trylock(pcp)) return;
  if (pcp_serve_request_locked(pcp, gfp)) {
    pcp_unlock(pcp, gfp);  // a request that came during the drain is served too
    return;
  }
  pcp_release(pcp);
  raise_irq();
}

namespace {

// Returns all of this CPU's pcp pages to the buddy lists and serves any
// request. Context: task (or the offline path), on `cpu`. Return: pages moved.
std::size_t drain_pcp_local(int cpu) ANYCTX_NO_TSA {
  Pcp& pcp = g_pcp.on(cpu);
  pcp.lock.lock();
  ANYCTX_SITE(kPcpLocked);
  std::size_t moved = 0;
  pcp_drain_all_locked(pcp, kGfpKernel, &moved);  // spinning: it always drains
  pcp_unlock(pcp, kGfpKernel);
  return moved;
}

// The departing CPU's thread, IRQs masked: no frame of it holds the pcp.
void drain_on_offline(int cpu) { drain_pcp_local(cpu); }

// IRQ exit on this CPU: serve a drain request, unless the frame this IRQ
// interrupted holds the pcp (its pcp_unlock serves it).
void pcp_irq_exit() {
  int cpu = current_cpu();
  if (cpu == kNoCpu) return;
  Pcp& pcp = g_pcp.on(cpu);
  if (ANYCTX_LIKELY(!pcp.drain_requested.load(std::memory_order_relaxed))) return;
  pcp_serve_request(pcp, kGfpAtomic);  // IRQ context may wait for zone.lock
}

// A drain request to another CPU, as drain_all_pages() waits for it.
struct DrainTicket {
  int cpu;
  std::uint32_t generation;  // of that CPU id's time online
  std::uint32_t drains;      // its drains before the request
  std::uint64_t pages;       // its drained pages before the request
};

thread_local constinit int t_drain_waiting_on = kNoCpu;

// Asks `cpu` to drain its pcp. Return: false when there is nothing to wait
// for (its pcp was empty, or it is offline: its offline drain emptied it).
bool drain_request(int cpu, DrainTicket& t) {
  Pcp& pcp = g_pcp.on(cpu);
  t.cpu = cpu;
  t.generation = cpu_online_generation(cpu);
  if (!cpu_is_online(cpu) || pcp.count.load(std::memory_order_relaxed) == 0) return false;
  t.drains = pcp.drains.load(std::memory_order_acquire);
  t.pages = pcp.drained_pages.load(std::memory_order_relaxed);
  pcp.drain_requested.store(true, std::memory_order_release);
  stat_inc(kStatDrainRequests);
  return send_interrupt(cpu, InterruptKind::kIrq);
}

// Return: whether the CPU of `t` drained after the request, or left (its
// offline drain emptied the pcp that was asked).
bool drain_served(const DrainTicket& t) {
  return g_pcp.on(t.cpu).drains.load(std::memory_order_acquire) != t.drains || !cpu_is_online(t.cpu) ||
         cpu_online_generation(t.cpu) != t.generation;
}

// Waits until every ticket is served or g_drain_timeout passes (a CPU
// that keeps IRQs masked that long: counted in drain_request_timeouts, its
// pages stay where they are). Meanwhile this CPU (`self`, when it is one)
// serves what is asked of it: two CPUs that drain at once with IRQs masked
// (reclaim inside an irq_save section) would otherwise each wait out the
// bound for the other. Return: pages the served drains moved.
std::size_t drain_wait(int self, DrainTicket* tickets, int n) {
  validator_note_wait("waiting for other CPUs to drain their pcp lists");
  const auto deadline = std::chrono::steady_clock::now() + g_drain_timeout;
  std::size_t moved = 0;
  for (int polls = 0; n > 0; ++polls) {
    for (int i = 0; i < n;) {
      if (!drain_served(tickets[i])) {
        ++i;
        continue;
      }
      moved += g_pcp.on(tickets[i].cpu).drained_pages.load(std::memory_order_relaxed) - tickets[i].pages;
      tickets[i] = tickets[--n];
    }
    if (n == 0) break;
    if (self != kNoCpu && ANYCTX_UNLIKELY(g_pcp.on(self).drain_requested.load(std::memory_order_relaxed)))
      pcp_serve_request(g_pcp.on(self), kGfpKernel);
    t_drain_waiting_on = tickets[0].cpu;
    ANYCTX_SITE(kPcpDrainWait);
    if (std::chrono::steady_clock::now() > deadline) {
      for (int i = 0; i < n; ++i) stat_inc(kStatDrainTimeouts);
      break;
    }
    if (polls < 64) {
      std::this_thread::yield();
    } else {
      // One nanosleep, not sleep_for(): an interrupt ends it early and the
      // loop looks again. sleep_for() resumes the remaining time after each
      // signal, so under a storm of interrupts it may never return and the
      // deadline is never checked (seen in ci/stress under ASan).
      timespec pause{0, 50'000};
      nanosleep(&pause, nullptr);
    }
  }
  t_drain_waiting_on = kNoCpu;
  return moved;
}

std::size_t drain_shrinker() { return drain_all_pages(); }

// --- alloc / free cores -----------------------------------------------------------

// Refills an empty pcp list and takes its first block; releases the pcp.
ANYCTX_COLD Page* rmqueue_refill_slow(Pcp& pcp, unsigned order, Gfp gfp, std::size_t mark) {
  Page* page = nullptr;
  if (pcp_refill_locked(pcp, order, gfp, mark)) {
    page = pcp.lists[order].pop();
    ANYCTX_SITE(kPcpListEdit);
    pcp_count_add(pcp, -static_cast<long>(block_pages(order)));
  }
  pcp_unlock(pcp, gfp);
  return page;
}

// Takes a block straight from the buddy lists.
ANYCTX_COLD Page* rmqueue_buddy_slow(Gfp gfp, unsigned order, std::size_t mark) {
  IrqFlags flags;
  if (!zone_lock(gfp, flags)) return nullptr;
  deferred_drain_locked();  // parked pages count as free memory here too
  Page* page = buddy_alloc_locked(order, mark);
  zone_unlock(flags);
  return page;
}

// Takes a block: from this CPU's pcp list when the pcp is free (refilling it
// from the buddy lists if empty), else straight from the buddy lists.
ANYCTX_ALWAYS_INLINE Page* rmqueue(Gfp gfp, unsigned order, int cpu, std::size_t mark) {
  if (order <= kPcpMaxOrder && cpu != kNoCpu) {
    Pcp& pcp = g_pcp.on(cpu);
    if (ANYCTX_LIKELY(pcp_trylock(pcp))) {
      PcpList& list = pcp.lists[order];
      if (ANYCTX_UNLIKELY(list.empty())) return rmqueue_refill_slow(pcp, order, gfp, mark);
      Page* page = list.pop();
      ANYCTX_SITE(kPcpListEdit);
      pcp_count_add(pcp, -static_cast<long>(block_pages(order)));
      pcp_unlock(pcp, gfp);
      return page;
    }
    // An interrupted frame of this CPU holds the pcp.
  }
  return rmqueue_buddy_slow(gfp, order, mark);
}

// The pcp was busy or the block too large: to the buddy lists, or — nolock
// and zone.lock busy — onto the deferred stack.
ANYCTX_COLD void free_block_slow(Page* page, unsigned order, Gfp gfp) {
  IrqFlags flags;
  if (zone_lock(gfp, flags)) {
    buddy_free_locked(page, order);
    zone_unlock(flags);
    return;
  }
  deferred_push(page, order);
}

// A nolock free took the pcp above `high`: a batch beyond it goes onto the
// deferred stack as one chain (deferred_park), without zone.lock, for the
// next nolock refill of any CPU or the next holder of zone.lock. A trim that
// took zone.lock for a batch of buddy merges failed every nolock refill of
// the other CPUs meanwhile (a nolock producer/consumer pair lost a quarter
// of its allocations that way); a parked batch is what such a refill takes.
void pcp_park_locked(Pcp& pcp, long pages) {
  Page* first = nullptr;
  Page* last = nullptr;
  long parked = 0;
  std::uint64_t blocks = 0;
  unsigned order = 0;
  while (parked < pages) {
    Page* page = pcp_pop_next(pcp, order);
    if (page == nullptr) break;
    unsigned o = order_of(page);
    set_head(page, PageState::kDeferred, o);
    page->deferred_next = first;
    if (first == nullptr) last = page;
    first = page;
    parked += static_cast<long>(block_pages(o));
    ++blocks;
    ANYCTX_SITE(kPcpPark);
  }
  if (first == nullptr) return;
  deferred_park(first, last, parked);
  stat_add(this_caller(), kStatDeferredPushed, blocks);
}

// The pcp went above `high`: return a batch beyond it, to the buddy lists
// (spinning) or parked on the deferred stack (nolock: pcp_park_locked).
ANYCTX_COLD void pcp_trim_locked(Pcp& pcp, Gfp gfp) {
  long pages = pcp.count.load(std::memory_order_relaxed) - pcp.high + pcp.batch;
  if (!allows_spinning(gfp)) return pcp_park_locked(pcp, pages);
  std::size_t moved = 0;
  pcp_free_bulk_locked(pcp, pages, gfp, &moved);
}

}  // namespace

// A free took the pcp above `high`: trim it, release it, serve a request.
// Every free path (free_block, the fast path of free_pages_common) ends here.
void detail::pcp_trim_unlock_slow(Pcp& pcp, Gfp gfp) {
  pcp_trim_locked(pcp, gfp);
  pcp_unlock(pcp, gfp);
}

namespace {

// A block whose last reference is gone goes back: to this CPU's pcp when
// free (trimmed above `high`), else through free_block_slow().
ANYCTX_ALWAYS_INLINE void free_block(Page* page, unsigned order, Gfp gfp, int cpu) {
  poison_block(page, order);
  if (order <= kPcpMaxOrder && cpu != kNoCpu) {
    Pcp& pcp = g_pcp.on(cpu);
    if (ANYCTX_LIKELY(pcp_trylock(pcp))) {
      set_head(page, PageState::kPcp, order);
      pcp.lists[order].push(page);
      ANYCTX_SITE(kPcpListEdit);
      pcp_count_add(pcp, static_cast<long>(block_pages(order)));
      if (ANYCTX_UNLIKELY(pcp.count.load(std::memory_order_relaxed) > pcp.high))
        return pcp_trim_unlock_slow(pcp, gfp);
      pcp_unlock(pcp, gfp);
      return;
    }
  }
  free_block_slow(page, order, gfp);
}

// --- alloc cores and accounting --------------------------------------------------

// The first attempt found nothing: with kGfpDirectReclaim, reclaim and
// retry (down to the `min` watermark), up to kMaxReclaimRetries times.
ANYCTX_COLD Page* alloc_pages_reclaim_slow(Gfp gfp, unsigned order, Caller at) {
  int path = path_index(gfp);
  if (allows_direct_reclaim(gfp)) {
    std::size_t min = allows_reserves(gfp) ? g_zone.watermark_min / 2 : g_zone.watermark_min;
    for (int attempt = 1; attempt <= kMaxReclaimRetries; ++attempt) {
      stat_inc(at, kStatReclaimRuns);
      reclaim_run();
      if (Page* page = rmqueue(gfp, order, at.cpu, min)) {
        stat_inc(at, kStatAllocOk + path);
        return prep_new_page(page, order, gfp);
      }
    }
  }
  stat_inc(at, kStatAllocFailed + path);
  return nullptr;
}

// alloc_pages() after its context checks: one attempt here, the rest in
// alloc_pages_reclaim_slow().
ANYCTX_ALWAYS_INLINE Page* alloc_pages_core(Gfp gfp, unsigned order, Caller at) {
  int path = path_index(gfp);
  if (ANYCTX_UNLIKELY(order > kMaxOrder || fault_should_fail(order, FaultPath::kSpinning))) {
    stat_inc(at, kStatAllocFailed + path);
    return nullptr;
  }
  std::size_t mark = allows_direct_reclaim(gfp)  ? g_zone.watermark_low
                     : allows_reserves(gfp)      ? g_zone.watermark_min / 2
                                                 : g_zone.watermark_min;
  if (Page* page = rmqueue(gfp, order, at.cpu, mark); ANYCTX_LIKELY(page != nullptr)) {
    stat_inc(at, kStatAllocOk + path);
    return prep_new_page(page, order, gfp);
  }
  return alloc_pages_reclaim_slow(gfp, order, at);
}

// alloc_pages_nolock() after its gfp check.
ANYCTX_ALWAYS_INLINE Page* alloc_pages_nolock_core(unsigned order, Caller at) {
  if (order > kPcpMaxOrder || at.cpu == kNoCpu || fault_should_fail(order, FaultPath::kNolock)) {
    stat_inc(at, kStatAllocFailed + 1);
    return nullptr;
  }
  // No reclaim bit: allows_spinning() is false, so every lock is a trylock.
  Gfp nolock = kGfpZero | kGfpNomemalloc | kGfpNowarn | kGfpComp;
  Page* page = rmqueue(nolock, order, at.cpu, g_zone.watermark_min);
  if (page == nullptr) {
    stat_inc(at, kStatAllocFailed + 1);
    return nullptr;
  }
  stat_inc(at, kStatAllocOk + 1);
  return prep_new_page(page, order, nolock);
}

Page* alloc_pages_accounted_slow(Gfp gfp, unsigned order, Caller at);

}  // namespace

// pcp_unlock()'s request check, for a fast path that released the pcp and
// finished its work first. Return: `page`.
Page* detail::pcp_serve_request_then(Pcp& pcp, Gfp gfp, Page* page) {
  pcp_serve_request(pcp, gfp);
  // Hidden: a caller that knows `page` comes back keeps it in a callee-saved
  // register across a call instead of making a tail call.
  return one_register(page);
}

// Everything alloc_pages() does but the pcp hit: accounting, zeroing, fault
// plans, refills, the buddy lists, reclaim.
Page* detail::alloc_pages_slow(Gfp gfp, unsigned order, int cpu) {
  if (ANYCTX_UNLIKELY(cpu == kNoCpu)) require_cpu("alloc_pages");  // reports
  Caller at{cpu, static_cast<int>(context_level())};
  if (gfp.has(kGfpAccount)) return alloc_pages_accounted_slow(gfp, order, at);
  return alloc_pages_core(gfp, order, at);
}

namespace {

// kGfpAccount: charge current_mem_cgroup() 2^order pages first (on the path
// gfp says: spinning, or nolock), give the charge back when no block is
// found, keep the cgroup in the head frame.
bool charge_current(Gfp gfp, unsigned order, MemCgroup** memcg, Caller at) {
  *memcg = current_mem_cgroup();
  if (memcg_try_charge(*memcg, gfp, 1u << order)) return true;
  stat_inc(at, kStatChargeFailed + path_index(gfp));
  stat_inc(at, kStatAllocFailed + path_index(gfp));
  return false;
}

Page* commit_charge(Page* page, MemCgroup* memcg, unsigned order) {
  if (page == nullptr) {
    memcg_uncharge(memcg, 1u << order);
    return nullptr;
  }
  page->memcg.store(memcg, std::memory_order_relaxed);
  return page;
}

ANYCTX_COLD Page* alloc_pages_accounted_slow(Gfp gfp, unsigned order, Caller at) {
  Gfp plain = gfp & ~kGfpAccount;
  if (order > kMaxOrder) return alloc_pages_core(plain, order, at);  // fails and counts there
  MemCgroup* memcg;
  if (!charge_current(gfp, order, &memcg, at)) return nullptr;
  return commit_charge(alloc_pages_core(plain, order, at), memcg, order);
}

ANYCTX_COLD Page* alloc_pages_nolock_accounted_slow(Gfp gfp, unsigned order, Caller at) {
  if (order > kPcpMaxOrder || at.cpu == kNoCpu) return alloc_pages_nolock_core(order, at);  // fails, counts
  MemCgroup* memcg;
  if (!charge_current(gfp, order, &memcg, at)) return nullptr;  // gfp has no reclaim bit: a nolock charge
  return commit_charge(alloc_pages_nolock_core(order, at), memcg, order);
}

// A charged block goes back to its cgroup (atomics only: any context, every
// free path).
ANYCTX_COLD void uncharge_slow(Page* page, MemCgroup* memcg, unsigned order) {
  page->memcg.store(nullptr, std::memory_order_relaxed);
  memcg_uncharge(memcg, 1u << order);
}

ANYCTX_ALWAYS_INLINE void uncharge_page(Page* page, unsigned order) {
  MemCgroup* memcg = page->memcg.load(std::memory_order_relaxed);
  if (ANYCTX_UNLIKELY(memcg != nullptr)) uncharge_slow(page, memcg, order);
}

// --- bad page -----------------------------------------------------------------

// Finds the head of the block that contains tail frame `pfn`. Diagnostics.
Page* block_head_of(std::size_t pfn) {
  for (unsigned o = 1; o <= kMaxOrder; ++o) {
    std::size_t head = pfn & ~(block_pages(o) - 1);
    Page* p = &g_arena.descs[head];
    if (state_of(p) != PageState::kTail && order_of(p) >= o) return p;
  }
  return nullptr;
}

// Return: false (after a report) when the caller must not touch the page.
bool bad_page(const char* entry, const Page* page, const char* reason_a, unsigned long long num_a = ~0ull,
              const char* reason_b = nullptr, unsigned long long num_b = ~0ull) {
  g_bad_page_reports.fetch_add(1, std::memory_order_relaxed);
  Report r("bad page");
  r << entry << "(): ";
  std::uintptr_t off = reinterpret_cast<std::uintptr_t>(page) - reinterpret_cast<std::uintptr_t>(g_arena.descs);
  bool in_arena = page != nullptr && off < g_arena.pages * sizeof(Page) && off % sizeof(Page) == 0;
  if (in_arena) {
    r << "pfn " << page_to_pfn(page) << " (state " << page_state_name(state_of(page)) << ", order "
      << order_of(page) << ", refcount " << page->refcount.load(std::memory_order_relaxed) << "): ";
  } else {
    r << "descriptor " << static_cast<const void*>(page) << ": ";
  }
  r << reason_a;
  if (num_a != ~0ull) r << num_a;
  if (reason_b != nullptr) r << reason_b;
  if (num_b != ~0ull) r << num_b;
  if (g_policy.load(std::memory_order_relaxed) == BadPagePolicy::kAbort) r.fatal();
  r.emit();
  return false;
}

bool page_in_arena(const Page* page) {
  std::uintptr_t off = reinterpret_cast<std::uintptr_t>(page) - reinterpret_cast<std::uintptr_t>(g_arena.descs);
  return page != nullptr && off < g_arena.pages * sizeof(Page) && off % sizeof(Page) == 0;
}

}  // namespace

// A free that failed free_pages_take(): names what is wrong. Return: false.
bool detail::free_pages_bad(const char* entry, Page* page, unsigned order) {
  if (!page_in_arena(page)) return bad_page(entry, page, "not a page descriptor of the arena");
  if (order > kMaxOrder) return bad_page(entry, page, "order ", order, " above kMaxOrder");
  std::size_t pfn = page_to_pfn(page);
  if (pfn % block_pages(order) != 0)
    return bad_page(entry, page, "misaligned free: pfn is not a multiple of 2^", order);
  PageState s = state_of(page);
  if (s == PageState::kTail) {
    Page* head = block_head_of(pfn);
    if (head != nullptr && state_of(head) == PageState::kAllocated)
      return bad_page(entry, page, "not the head of a block: inside the allocated block at pfn ",
                      page_to_pfn(head), " of order ", order_of(head));
    if (head == nullptr) return bad_page(entry, page, "double free: not the head of any block");
    return bad_page(entry, page, "double free: inside the free block at pfn ", page_to_pfn(head), " of order ",
                    order_of(head));
  }
  if (s != PageState::kAllocated) {
    return bad_page(entry, page, s == PageState::kBuddy      ? "double free: already free on the buddy lists"
                                 : s == PageState::kPcp      ? "double free: already free on a pcp list"
                                                             : "double free: already on the deferred-free stack");
  }
  if (order_of(page) != order)
    return bad_page(entry, page, "freed with order ", order, " but allocated with order ", order_of(page));
  std::int32_t refs = page->refcount.load(std::memory_order_relaxed);
  if (refs <= 0) return bad_page(entry, page, "double free: refcount already 0");
  return bad_page(entry, page, "freed with references left: refcount ", static_cast<unsigned>(refs));
}

// --- free slow paths ---------------------------------------------------------------

// A free whose last reference is taken: uncharge, count and return the
// block, any context, any CPU or none (the fast path's other cases).
void detail::free_taken_slow(Page* page, unsigned order, Gfp gfp, int path) {
  uncharge_page(page, order);
  Caller at = this_caller();
  stat_inc(at, kStatFreed + path);
  free_block(page, order, gfp, at.cpu);
}

// Everything free_pages() and free_pages_nolock() do.
void detail::free_pages_slow(const char* entry, Page* page, unsigned order, Gfp gfp, int path) {
  if (!free_pages_take(entry, page, order)) return;
  free_taken_slow(page, order, gfp, path);
}

// --- arena --------------------------------------------------------------------

const char* page_state_name(PageState state) {
  switch (state) {
    case PageState::kTail: return "tail";
    case PageState::kBuddy: return "buddy";
    case PageState::kPcp: return "pcp";
    case PageState::kDeferred: return "deferred";
    case PageState::kAllocated: return "allocated";
  }
  return "?";
}

void* page_address(const Page* page) { return block_address(page); }

Page* virt_to_page(const void* addr) {
  std::uintptr_t off = reinterpret_cast<std::uintptr_t>(addr) - reinterpret_cast<std::uintptr_t>(g_arena.base);
  if (g_arena.base == nullptr || off >= g_arena.pages * kPageSize) return nullptr;
  return &g_arena.descs[off >> kPageShift];
}

std::size_t page_to_pfn(const Page* page) { return static_cast<std::size_t>(page - g_arena.descs); }

Page* pfn_to_page(std::size_t pfn) { return pfn < g_arena.pages ? &g_arena.descs[pfn] : nullptr; }

std::size_t arena_pages() { return g_arena.pages; }

// --- lifecycle --------------------------------------------------------------------

std::string_view page_allocator_init(const PageAllocatorConfig& c) {
  if (g_arena.base != nullptr) return "the page allocator is already initialised";
  if (c.pages == 0 || c.pages > (std::size_t{1} << 26)) return "pages must be 1..2^26";
  if (c.pcp_batch < 1) return "pcp_batch must be at least 1";
  if (c.pcp_high < c.pcp_batch) return "pcp_high must be at least pcp_batch";
  if (c.drain_timeout_ms < 1 || c.drain_timeout_ms > 3'600'000) return "drain_timeout_ms must be 1..3600000";
  constexpr auto kAuto = PageAllocatorConfig::kAutoWatermark;
  std::size_t min = c.watermark_min == kAuto ? c.pages / 512 : c.watermark_min;
  std::size_t low = c.watermark_low == kAuto ? 2 * min : c.watermark_low;
  std::size_t high = c.watermark_high == kAuto ? 3 * min : c.watermark_high;
  if (!(min <= low && low <= high && high <= c.pages)) return "watermarks must satisfy min <= low <= high <= pages";

  std::size_t bytes = c.pages * kPageSize;
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (base == MAP_FAILED) return "mmap of the arena failed";
  void* descs = mmap(nullptr, c.pages * sizeof(Page), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (descs == MAP_FAILED) {
    munmap(base, bytes);
    return "mmap of the page descriptors failed";
  }
  g_arena.base = static_cast<char*>(base);
  g_arena.descs = static_cast<Page*>(descs);
  g_arena.pages = c.pages;
  for (std::size_t i = 0; i < c.pages; ++i) new (&g_arena.descs[i]) Page();

  for (auto& list : g_zone.free_area) list = PageList{};
  g_zone.free_pages.store(0);
  g_zone.watermark_min = min;
  g_zone.watermark_low = low;
  g_zone.watermark_high = high;
  g_drain_timeout = std::chrono::milliseconds(c.drain_timeout_ms);
  g_zone.deferred_free.store(nullptr);
  g_zone.deferred_pages.store(0);
  g_zone.park_limit = 2L * c.pcp_high;
  g_pcp.for_each([&](int, Pcp& pcp) {
    for (auto& list : pcp.lists) list = PcpList{};
    pcp.count.store(0);
    pcp.drain_requested.store(false);
    pcp.high = c.pcp_high;
    pcp.batch = c.pcp_batch;
  });
  auto clear = [](StatSlots& slots) {
    for (auto& row : slots.v)
      for (auto& v : row) v.store(0);
  };
  clear(g_shared_stats);
  g_pcp.for_each([&](int, Pcp& pcp) { clear(pcp.stats); });

  // Largest aligned blocks first; an arena that is not a multiple of 2^10
  // ends in smaller blocks.
  IrqFlags flags = g_zone.lock.lock_irqsave();
  for (std::size_t pfn = 0; pfn < c.pages;) {
    unsigned order = kMaxOrder;
    while (pfn % block_pages(order) != 0 || pfn + block_pages(order) > c.pages) --order;
    buddy_free_locked(&g_arena.descs[pfn], order);
    pfn += block_pages(order);
  }
  g_zone.lock.unlock_irqrestore(flags);
  ANYCTX_POISON(g_arena.base, bytes);

  if (!cpu_offline_callback_add(drain_on_offline) || !irq_exit_callback_add(pcp_irq_exit) ||
      !reclaim_register(drain_shrinker)) {
    page_allocator_shutdown();
    return "no room to register the pcp drain (offline callback, IRQ-exit callback or shrinker registry full)";
  }
  return {};
}

void page_allocator_shutdown() {
  cpu_offline_callback_remove(drain_on_offline);
  irq_exit_callback_remove(pcp_irq_exit);
  reclaim_unregister(drain_shrinker);
  if (g_arena.base == nullptr) return;
  ANYCTX_UNPOISON(g_arena.base, g_arena.pages * kPageSize);
  munmap(g_arena.base, g_arena.pages * kPageSize);
  munmap(g_arena.descs, g_arena.pages * sizeof(Page));
  g_arena = Arena{};
}

void detail::pcp_fault_plan_set(bool active) {
  g_pcp.for_each([&](int, Pcp& pcp) { pcp.fault_plan.store(active, std::memory_order_relaxed); });
}

// --- entry points ---------------------------------------------------------------

void detail::alloc_pages_check_context(Gfp gfp) {
  require_cpu("alloc_pages");
  if (in_nmi()) (Report("context rule") << "alloc_pages() in NMI context: use alloc_pages_nolock()").fatal();
  if (allows_direct_reclaim(gfp) && !in_task())
    (Report("context rule") << "alloc_pages() with kGfpDirectReclaim in " << context_name(context_level())
                            << " context: reclaim runs only in task context (use kGfpAtomic)")
        .fatal();
}

void detail::free_pages_check_context() {
  if (in_nmi()) (Report("context rule") << "free_pages() in NMI context: use free_pages_nolock()").fatal();
}

// Everything alloc_pages_nolock() does but the pcp hit (inside its
// NolockScope): a bad gfp, accounting, order > 3, not a CPU, fault plans,
// refills.
Page* detail::alloc_pages_nolock_slow(Gfp gfp, unsigned order) {
  if (ANYCTX_UNLIKELY(!(gfp & ~kGfpAccount).empty())) {
    (Report("bad gfp") << "alloc_pages_nolock(): gfp may carry only kGfpAccount, got ").hex(gfp.bits()).fatal();
  }
  Caller at = this_caller();
  if (ANYCTX_UNLIKELY(gfp.has(kGfpAccount))) return alloc_pages_nolock_accounted_slow(gfp, order, at);
  return alloc_pages_nolock_core(order, at);
}

void get_page(Page* page) {
  if (!page_in_arena(page)) {
    bad_page("get_page", page, "not a page descriptor of the arena");
    return;
  }
  std::int32_t old = page->refcount.fetch_add(1, std::memory_order_relaxed);
  if (old <= 0 || state_of(page) != PageState::kAllocated) {
    page->refcount.fetch_sub(1, std::memory_order_relaxed);
    bad_page("get_page", page, "reference to a page that is not allocated");
  }
}

void put_page(Page* page) {
  if (!page_in_arena(page)) {
    bad_page("put_page", page, "not a page descriptor of the arena");
    return;
  }
  if (state_of(page) != PageState::kAllocated) {
    bad_page("put_page", page, "reference dropped on a page that is not allocated");
    return;
  }
  std::int32_t old = page->refcount.load(std::memory_order_relaxed);
  while (old > 1 && !page->refcount.compare_exchange_weak(old, old - 1, std::memory_order_acq_rel)) {
  }
  if (old > 1) return;
  free_pages(page, order_of(page));  // the last reference: validates and frees
}

int page_refcount(const Page* page) { return page->refcount.load(std::memory_order_relaxed); }

void drain_local_pages() { drain_pcp_local(require_cpu("drain_local_pages")); }

std::size_t drain_all_pages() {
  int self = current_cpu();
  std::size_t moved = self != kNoCpu ? drain_pcp_local(self) : 0;
  // Every other CPU drains its own pcp: ask them all, then wait for all, so
  // the drains run at once. An empty pcp is passed over (a snapshot, as the
  // kernel's has_pcps check): a drain costs nothing for idle CPUs.
  DrainTicket tickets[kMaxCpus];
  int asked = 0;
  for (int cpu = 0, used = cpu_ids_used(); cpu < used; ++cpu)
    if (cpu != self && drain_request(cpu, tickets[asked])) ++asked;
  if (asked > 0) moved += drain_wait(self, tickets, asked);
  std::uint64_t before = stat_sum(kStatDeferredDrained);
  IrqFlags flags;
  zone_lock(kGfpKernel, flags);
  zone_unlock(flags);  // drains the deferred stack
  return moved + (stat_sum(kStatDeferredDrained) - before);
}

int pcp_drain_waiting_on() { return t_drain_waiting_on; }

void set_bad_page_policy(BadPagePolicy policy) { g_policy.store(policy); }
BadPagePolicy bad_page_policy() { return g_policy.load(); }
std::uint64_t bad_page_reports() { return g_bad_page_reports.load(); }

PageStats page_stats() {
  PageStats s{};
  for (int p = 0; p < 2; ++p) {
    for (int c = 0; c < 3; ++c) {
      s.alloc_ok[p][c] = stat_sum(kStatAllocOk + p, c);
      s.alloc_failed[p][c] = stat_sum(kStatAllocFailed + p, c);
      s.freed[p][c] = stat_sum(kStatFreed + p, c);
      s.charge_failed[p][c] = stat_sum(kStatChargeFailed + p, c);
    }
  }
  s.deferred_pushed = stat_sum(kStatDeferredPushed);
  s.deferred_drained = stat_sum(kStatDeferredDrained);
  s.deferred_taken = stat_sum(kStatDeferredTaken);
  s.pcp_refills = stat_sum(kStatPcpRefills);
  s.pcp_bulk_frees = stat_sum(kStatPcpBulkFrees);
  s.reclaim_runs = stat_sum(kStatReclaimRuns);
  s.drain_requests = stat_sum(kStatDrainRequests);
  s.drains_served = stat_sum(kStatDrainsServed);
  s.drain_timeouts = stat_sum(kStatDrainTimeouts);
  return s;
}

std::size_t zone_free_pages() { return g_zone.free_pages.load(std::memory_order_relaxed); }

std::size_t zone_free_blocks(unsigned order) {
  IrqFlags flags = g_zone.lock.lock_irqsave();
  std::size_t n = order <= kMaxOrder ? g_zone.free_area[order].length : 0;
  g_zone.lock.unlock_irqrestore(flags);
  return n;
}

int pcp_count(int cpu) { return g_pcp.on(cpu).count.load(std::memory_order_relaxed); }

std::size_t deferred_free_pages() {
  IrqFlags flags = g_zone.lock.lock_irqsave();
  std::size_t n = 0;
  for (Page* p = g_zone.deferred_free.load(std::memory_order_acquire); p != nullptr; p = p->deferred_next)
    n += block_pages(order_of(p));
  g_zone.lock.unlock_irqrestore(flags);
  return n;
}

// --- invariants ----------------------------------------------------------------------

namespace {

// What a walk found wrong first; later failures are dropped.
class InvariantFailure {
 public:
  void fail(std::string what) {
    if (result_.ok) {
      result_.ok = false;
      result_.what = std::move(what);
    }
  }
  bool ok() const { return result_.ok; }
  InvariantResult take() { return std::move(result_); }

 private:
  InvariantResult result_;
};

std::string pfn_str(std::size_t pfn) { return "pfn " + std::to_string(pfn); }

// Walks every free block: each CPU's pcp lists (without their locks: only
// their own CPU may take them, and the caller keeps every CPU between
// calls), then the buddy lists and the deferred stack under zone.lock (the
// allocator is quiet, so the parts add up to one picture).
// Checks what the lists themselves say: each block is inside the arena,
// aligned to its order, in range, in the state and order its list implies;
// list lengths, pcp counts and the zone's free count match the lists; no two
// free buddies of one order sit uncoalesced. Hands each block that passed to
// on_block(head, order, where); runs under_zone_lock() last, zone.lock still
// held. Cost: O(free blocks) plus what the callbacks do.
template <class OnBlock, class UnderZoneLock>
void walk_free_blocks(InvariantFailure& f, OnBlock&& on_block, UnderZoneLock&& under_zone_lock) ANYCTX_NO_TSA {
  const std::size_t n = g_arena.pages;
  // Return: whether the block at `p` (found on `where`) is well formed.
  auto block_ok = [&](const Page* p, PageState want, unsigned order, const char* where) {
    if (!page_in_arena(p)) {
      f.fail(std::string(where) + ": a pointer outside the arena");
      return false;
    }
    std::size_t pfn = page_to_pfn(p);
    if (state_of(p) != want || order_of(p) != order) {
      f.fail(pfn_str(pfn) + " on the " + where + " has state " + page_state_name(state_of(p)) + " order " +
             std::to_string(order_of(p)) + ", expected " + page_state_name(want) + " order " + std::to_string(order));
      return false;
    }
    if (order > kMaxOrder || pfn % block_pages(order) != 0 || pfn + block_pages(order) > n) {
      f.fail(pfn_str(pfn) + " on the " + where + ": block of order " + std::to_string(order) +
             " misaligned or beyond the arena");
      return false;
    }
    on_block(p, order, where);
    return f.ok();
  };

  for (int cpu = 0, used = cpu_ids_used(); cpu < used && f.ok(); ++cpu) {
    const Pcp& pcp = g_pcp.on(cpu);
    std::size_t pages = 0;
    for (unsigned o = 0; o <= kPcpMaxOrder && f.ok(); ++o) {
      std::size_t length = 0;
      for (Page* p = pcp.lists[o].head; p != nullptr; p = p->next) {
        if (++length > n) {
          f.fail("cpu " + std::to_string(cpu) + "'s order-" + std::to_string(o) + " pcp list does not end");
          break;
        }
        if (!block_ok(p, PageState::kPcp, o, "pcp list")) break;
        pages += block_pages(o);
      }
    }
    if (f.ok() && static_cast<int>(pages) != pcp.count.load())
      f.fail("cpu " + std::to_string(cpu) + "'s pcp lists hold " + std::to_string(pages) + " pages, its count says " +
             std::to_string(pcp.count.load()));
    if (f.ok() && pcp.fault_plan.load() != detail::g_fault_plan_active.load())
      f.fail("cpu " + std::to_string(cpu) + "'s pcp copy of the fault-plan flag says " +
             (pcp.fault_plan.load() ? "active" : "inactive") + ", the flag says " +
             (detail::g_fault_plan_active.load() ? "active" : "inactive"));
  }

  IrqFlags flags = g_zone.lock.lock_irqsave();
  std::size_t buddy_pages = 0;
  for (unsigned o = 0; o <= kMaxOrder && f.ok(); ++o) {
    const PageList& list = g_zone.free_area[o];
    std::size_t length = 0;
    for (Page* p = list.head; p != nullptr; p = p->next == list.head ? nullptr : p->next) {
      if (++length > n) {
        f.fail("order-" + std::to_string(o) + " buddy list does not end");
        break;
      }
      if (!block_ok(p, PageState::kBuddy, o, "buddy list")) break;
      buddy_pages += block_pages(o);
      std::size_t buddy = page_to_pfn(p) ^ block_pages(o);
      if (o < kMaxOrder && buddy + block_pages(o) <= n) {
        const Page* b = &g_arena.descs[buddy];
        if (state_of(b) == PageState::kBuddy && order_of(b) == o) {
          f.fail(pfn_str(page_to_pfn(p)) + " and its buddy " + pfn_str(buddy) + " are both free at order " +
                 std::to_string(o) + " but not coalesced");
          break;
        }
      }
    }
    if (f.ok() && length != list.length)
      f.fail("order-" + std::to_string(o) + " buddy list holds " + std::to_string(length) +
             " blocks, its count says " + std::to_string(list.length));
  }
  if (f.ok() && buddy_pages != g_zone.free_pages.load())
    f.fail("buddy lists hold " + std::to_string(buddy_pages) + " pages, zone free count says " +
           std::to_string(g_zone.free_pages.load()));

  std::size_t deferred = 0, deferred_pages = 0;
  for (Page* p = g_zone.deferred_free.load(); p != nullptr && f.ok(); p = p->deferred_next) {
    if (++deferred > n) {
      f.fail("the deferred stack does not end");
      break;
    }
    if (block_ok(p, PageState::kDeferred, order_of(p), "deferred stack")) deferred_pages += block_pages(order_of(p));
  }
  if (f.ok() && static_cast<long>(deferred_pages) != g_zone.deferred_pages.load())
    f.fail("the deferred stack holds " + std::to_string(deferred_pages) + " pages, its count says " +
           std::to_string(g_zone.deferred_pages.load()));

  if (f.ok()) under_zone_lock();
  g_zone.lock.unlock_irqrestore(flags);
}

}  // namespace

InvariantResult check_free_lists() {
  InvariantFailure f;
  // Blocks are aligned to their order, so a block containing the listed
  // block at `pfn` starts at one of its aligned ancestors, pfn rounded down
  // to 2^k frames; inside a block every frame but the head is a tail. A head
  // there (free or allocated) whose order reaches `pfn` overlaps it.
  auto inside_another = [&](const Page* p, unsigned order, const char* where) {
    const std::size_t pfn = page_to_pfn(p);
    for (unsigned k = order + 1; k <= kMaxOrder; ++k) {
      std::size_t up = pfn & ~(block_pages(k) - 1);
      if (up == pfn) continue;
      const Page* head = &g_arena.descs[up];
      PageState s = state_of(head);
      unsigned reach = order_of(head);
      if (s != PageState::kTail && (reach > kMaxOrder || up + block_pages(reach) > pfn))
        return f.fail(pfn_str(pfn) + " on the " + where + " lies inside the order-" + std::to_string(reach) +
                      " block at " + pfn_str(up) + " (state " + page_state_name(s) + ")");
    }
  };
  walk_free_blocks(f, inside_another, [] {});
  return f.take();
}

InvariantResult check_invariants() ANYCTX_NO_TSA {
  InvariantFailure f;
  const std::size_t n = g_arena.pages;
  thread_local std::vector<std::uint8_t> seen;  // kept: a fuzzer checks after every program
  seen.assign(n, 0);
  std::size_t accounted = 0;
  // Marks the 2^order frames of a block as found in one place (the head
  // was checked in range and aligned).
  auto claim = [&](const Page* head, unsigned order, const char* where) {
    std::size_t pfn = page_to_pfn(head);
    for (std::size_t i = 0; i < block_pages(order); ++i) {
      if (seen[pfn + i] != 0)
        return f.fail(pfn_str(pfn + i) + " " + where + ": frame already found in another block or list");
      seen[pfn + i] = 1;
      if (i > 0 && state_of(&g_arena.descs[pfn + i]) != PageState::kTail)
        return f.fail(pfn_str(pfn + i) + " " + where + ": inside a block of order " + std::to_string(order) +
                      " but its state is " + page_state_name(state_of(&g_arena.descs[pfn + i])));
    }
    accounted += block_pages(order);
  };
  // Every frame: allocated blocks are claimed here, the rest must have been
  // found on a list (or be the tail of a block that was).
  auto walk_arena = [&] {
    for (std::size_t pfn = 0; pfn < n && f.ok(); ++pfn) {
      const Page* p = &g_arena.descs[pfn];
      PageState s = state_of(p);
      if (s == PageState::kAllocated) {
        if (p->refcount.load() <= 0)
          f.fail(pfn_str(pfn) + " is allocated with refcount " + std::to_string(p->refcount.load()));
        else if (unsigned o = order_of(p); o > kMaxOrder || pfn % block_pages(o) != 0 || pfn + block_pages(o) > n)
          f.fail(pfn_str(pfn) + " is allocated as a block of order " + std::to_string(o) +
                 " misaligned or beyond the arena");
        else
          claim(p, o, "allocated block");
      } else if (s != PageState::kTail && seen[pfn] == 0) {
        f.fail(pfn_str(pfn) + " has state " + page_state_name(s) + " but is on no list");
      }
    }
    if (f.ok() && accounted != n)
      f.fail(std::to_string(n - accounted) + " of " + std::to_string(n) +
             " frames are in no place (lost: neither free on a list nor allocated)");
  };
  walk_free_blocks(f, claim, walk_arena);
  return f.take();
}

}  // namespace anyctx
