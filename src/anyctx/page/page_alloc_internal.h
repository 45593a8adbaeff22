// anyctx/page/page_alloc_internal.h — internal: the page allocator's
// per-CPU lists, statistics slots and arena, which page_alloc.cc and the
// inline fast paths of page_alloc_fast.h share. Not part of the API.
//
// Who guards what:
//  - Pcp: its CPU's LocalTryLock, taken by try_lock without masking IRQs
//    (no atomic RMW). Only the owning CPU's frames take it, and they nest
//    strictly, so a try_lock fails only in a frame that interrupted the
//    holder. Other CPUs read `count`, `drains`, `drained_pages` and the
//    statistics (snapshots) and set `drain_requested`.
//  - The statistics slots: one writer per slot (a CPU's frames of one
//    context level), so a relaxed load and store counts exactly; threads
//    that are not CPUs share g_shared_stats (page_alloc.cc), updated with
//    fetch_add.
//  - g_arena: written by page_allocator_init / shutdown only (quiesced).
#pragma once

#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>

#include "anyctx/ctx/config.h"
#include "anyctx/ctx/context.h"
#include "anyctx/ctx/cpu.h"
#include "anyctx/lock/local_lock.h"
#include "anyctx/page/page.h"

namespace anyctx::detail {

// A CPU's free blocks of one order: a stack through Page::next, so the block
// freed last (cache-warm) goes out first, and push and pop touch the block
// and the head only. Guarded by the pcp lock.
struct PcpList {
  Page* head = nullptr;

  bool empty() const { return head == nullptr; }
  void push(Page* p) {
    p->next = head;
    head = p;
  }
  Page* pop() {
    Page* p = head;
    head = p->next;
    return p;
  }
};

// Statistics without an atomic RMW on the fast paths: a slot per CPU and
// context level. On one CPU only one frame of each level runs at a time
// (interrupts nest strictly and never at their own level), so each slot has
// a single writer and load + store is exact. Threads that are not CPUs share
// slots updated with fetch_add.
enum Stat : int {
  kStatAllocOk,  // + path index (0 spinning, 1 nolock)
  kStatAllocFailed = kStatAllocOk + 2,
  kStatFreed = kStatAllocFailed + 2,
  kStatDeferredPushed = kStatFreed + 2,
  kStatDeferredDrained,
  kStatDeferredTaken,   // deferred blocks a nolock refill kept for its pcp
  kStatPcpRefills,
  kStatPcpBulkFrees,
  kStatReclaimRuns,
  kStatDrainRequests,   // drain requests sent to other CPUs
  kStatDrainsServed,    // requests this CPU served
  kStatDrainTimeouts,   // requests not served within the config's drain_timeout_ms
  kStatChargeFailed,  // + path index: kGfpAccount allocations the cgroup refused
  kStatCount = kStatChargeFailed + 2
};

struct StatSlots {
  std::atomic<std::uint64_t> v[3][kStatCount]{};
};

// A CPU's page lists. Only that CPU touches them, from any of its frames
// (task, IRQ, NMI), so the lock is a LocalTryLock: no atomic RMW, and a
// frame that interrupted the holder fails its try_lock instead of nesting.
// Other CPUs never take it: they ask the owner to drain (drain_requested +
// an IRQ, DESIGN.md "pcp drain requests") and wait for `drains` to move.
struct Pcp {
  LocalTryLock lock{"pcp.lock"};
  std::atomic<int> count{0};  // pages on the lists; written under lock, read anywhere (a snapshot)
  int high = 0;
  int batch = 0;
  // A copy of detail::g_fault_plan_active, written for every CPU (used or
  // not, so page_allocator_init() need not) by fault_plan_set() when the
  // flag changes (plans change while no allocation runs): alloc_pages'
  // fast path tests it on the line it loads for the lock rather than on a
  // line of its own, which cost 0.4 ns of a 4.5 ns pair (docs/benchmarks.md).
  // check_invariants() compares it with the flag.
  std::atomic<bool> fault_plan{false};
  PcpList lists[kPcpMaxOrder + 1];  // guarded by lock
  // Set by a requester (release), cleared by the owner under lock before it
  // drains; any frame that unlocks the pcp, the IRQ-exit callback and the
  // offline drain serve it.
  std::atomic<bool> drain_requested{false};
  // Completed drains and the pages they moved: stores by the owner under
  // lock (one writer at a time, so no RMW), loads by requesters.
  std::atomic<std::uint32_t> drains{0};
  std::atomic<std::uint64_t> drained_pages{0};
  StatSlots stats;  // this CPU's statistics, beside the lists the fast paths touch
};

struct Arena {
  char* base = nullptr;
  Page* descs = nullptr;
  std::size_t pages = 0;
};

extern ANYCTX_FAST_PATH_DATA Arena g_arena;
extern ANYCTX_FAST_PATH_DATA PerCpu<Pcp> g_pcp;

// Whether a free takes the last reference with a compare-exchange (see
// free_pages_prepare).
inline constexpr bool kExactDoubleFree = kDebug || ANYCTX_ASAN || ANYCTX_TSAN;

inline std::size_t block_pages(unsigned order) { return std::size_t{1} << order; }

inline void pcp_count_add(Pcp& pcp, long delta) {
  pcp.count.store(static_cast<int>(pcp.count.load(std::memory_order_relaxed) + delta),
                  std::memory_order_relaxed);
}

inline constexpr int kTaskSlot = static_cast<int>(ContextLevel::kTask);

inline PageState state_of(const Page* p) { return p->state.load(std::memory_order_relaxed); }
inline unsigned order_of(const Page* p) { return p->order.load(std::memory_order_relaxed); }
inline void set_head(Page* p, PageState s, unsigned order) {
  p->order.store(static_cast<std::uint8_t>(order), std::memory_order_relaxed);
  p->state.store(s, std::memory_order_relaxed);
}

// page_address() for the fast paths (no call).
inline void* block_address(const Page* p) {
  return g_arena.base + static_cast<std::size_t>(p - g_arena.descs) * kPageSize;
}

inline void poison_block(Page* p, unsigned order) {
  ANYCTX_POISON(block_address(p), block_pages(order) * kPageSize);
}

}  // namespace anyctx::detail
