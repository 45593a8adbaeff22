// anyctx/ctx/site.h — named interrupt points ("sites") for the harness.
//
// Contract:
//  - ANYCTX_SITE(kName) marks a point where the harness may deliver an IRQ or
//    NMI synchronously, switch to another CPU, or inject a fault: after a lock
//    is taken, inside list surgery, before a release, inside spin loops.
//  - Compiled in only when ANYCTX_SITES is 1 (harness and test builds); with
//    0 the macro is empty: zero cost in `release`.
//  - The hook is process-wide; it runs in whatever context hit the site
//    (task, IRQ or NMI), so it must be async-signal-safe.
//  - Every layer adds its sites to ANYCTX_SITE_LIST, so ids are dense and
//    every site has a printable name.
// Context: any.
#pragma once

#include <atomic>
#include <cstdint>

#include "anyctx/ctx/config.h"

// X(name, "description"), one list per layer; ANYCTX_SITE_LIST joins them.
#define ANYCTX_LOCK_SITES(X)                                               \
  X(kSpinWait, "spinning on a busy spinlock (between plain reads)")       \
  X(kLocalLockHeld, "just after a local lock or local trylock is taken")  \
  X(kLocalLockRelease, "just before a local lock or local trylock is released")

#define ANYCTX_PAGE_SITES(X)                                                 \
  X(kPcpLocked, "a pcp.lock was just taken")                                 \
  X(kPcpListEdit, "in the middle of a pcp list insert or removal")           \
  X(kPcpUnlock, "just before a pcp.lock is released")                        \
  X(kZoneLocked, "zone.lock was just taken")                                 \
  X(kZoneListEdit, "in the middle of a buddy split or merge")                \
  X(kZoneUnlock, "just before zone.lock is released")                        \
  X(kPcpRefill, "between pages of a pcp refill from the buddy lists")        \
  X(kPcpBulkFree, "between pages of a bulk free or drain of a pcp list")    \
  X(kDeferredPush, "between reading the deferred-free head and the CAS")     \
  X(kDeferredDrain, "between pages of a deferred-free drain")               \
  X(kZoneUnlocked, "just after zone.lock is released")                       \
  X(kPcpUnlocked, "just after a pcp.lock is released")

// The memcg layer's sites (memcg/).
#define ANYCTX_MEMCG_SITES(X)                                                  \
  X(kStockLocked, "a CPU's memcg stock was just taken (consume, refill, drain)") \
  X(kStockEdit, "a memcg stock switched cgroup, before its pages are stored")  \
  X(kStockUnlock, "just before a memcg stock is released")                     \
  X(kChargeWalk, "between levels of a memcg charge, rollback or uncharge")     \
  X(kEventPush, "between reading the memcg pending-event head and the CAS")

// The slab layer's sites (slab/).
#define ANYCTX_SLAB_SITES(X)                                                      \
  X(kSlabCpuLocked, "a CPU slab section just began (lock taken, or fast path)")   \
  X(kSlabFreelistEdit, "in the middle of a CPU freelist push or pop")             \
  X(kSlabCpuUnlock, "just before a CPU slab section ends")                        \
  X(kSlabListLocked, "a cache's list_lock was just taken")                        \
  X(kSlabListEdit, "in the middle of a slab freelist or partial list edit")       \
  X(kSlabListUnlock, "just before a cache's list_lock is released")               \
  X(kSlabNewSlab, "a new slab's pages arrived, before it becomes a CPU slab")     \
  X(kSlabDeferredPush, "between reading a CPU's deferred-free head and the CAS")  \
  X(kSlabDeferredDrain, "between objects of a slab deferred-free drain")

// The page allocator's drain requests (page/): the owner serving one, and
// the requester waiting for it.
#define ANYCTX_PCP_REQUEST_SITES(X)                                                     \
  X(kPcpDrainServe, "a CPU holding its pcp is about to serve another CPU's drain request") \
  X(kPcpDrainWait, "waiting for other CPUs to serve pcp drain requests (between polls)")

// The page allocator's parked batches (page/): a nolock trim parking a
// batch on the deferred-free stack, a nolock refill taking it.
#define ANYCTX_PARK_SITES(X)                                                                 \
  X(kPcpPark, "between blocks a nolock trim moves from the pcp lists to its parked chain")    \
  X(kDeferredTake, "a nolock refill took the deferred-free stack, before it keeps its blocks")

// The slab layer's CPU slab without an IRQ mask (slab/): an interrupt that
// found its CPU slab held by the frame it interrupted goes around it.
#define ANYCTX_SLAB_AROUND_SITES(X) \
  X(kSlabAroundCpuSlab, "an IRQ found its CPU slab held by the interrupted frame, before it allocates around it")

// The memcg stock's drain (memcg/): its pages taken, not yet uncharged from
// the cgroup it caches. A site of its own, not StockEdit: a drain inside a
// refill that changes the stock's cgroup and the cgroup switch after it are
// two half-done updates, and one name made the harness count, plan and
// reward them as one moment (docs/mutants.md, Two sharper moments).
#define ANYCTX_MEMCG_DRAIN_SITES(X) \
  X(kStockDrain, "a memcg stock's pages were just taken for a drain, before they are uncharged")

// New lists go at the end, so existing ids stay put.
#define ANYCTX_SITE_LIST(X)                                                                                        \
  ANYCTX_LOCK_SITES(X) ANYCTX_PAGE_SITES(X) ANYCTX_MEMCG_SITES(X) ANYCTX_SLAB_SITES(X) ANYCTX_PCP_REQUEST_SITES(X) \
  ANYCTX_PARK_SITES(X) ANYCTX_SLAB_AROUND_SITES(X) ANYCTX_MEMCG_DRAIN_SITES(X)

namespace anyctx {

enum class Site : std::uint16_t {
#define ANYCTX_SITE_ENUM(name, text) name,
  ANYCTX_SITE_LIST(ANYCTX_SITE_ENUM)
#undef ANYCTX_SITE_ENUM
  kCount
};

inline constexpr int kSiteCount = static_cast<int>(Site::kCount);

// Return: the site's name without the k ("SpinWait"), or nullptr when out of
// range.
const char* site_name(Site site);
const char* site_description(Site site);

using SiteHook = void (*)(Site site);

// Installs the hook every ANYCTX_SITE calls (nullptr removes it).
// Context: any. Return: the previous hook.
SiteHook set_site_hook(SiteHook hook);

namespace detail {
extern std::atomic<SiteHook> g_site_hook;
}  // namespace detail

ANYCTX_ALWAYS_INLINE void site_hit(Site site) {
  SiteHook hook = detail::g_site_hook.load(std::memory_order_acquire);
  if (ANYCTX_UNLIKELY(hook != nullptr)) hook(site);
}

}  // namespace anyctx

#if ANYCTX_SITES
#define ANYCTX_SITE(name) ::anyctx::site_hit(::anyctx::Site::name)
#else
#define ANYCTX_SITE(name) ((void)0)
#endif
