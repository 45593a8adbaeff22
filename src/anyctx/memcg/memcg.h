// anyctx/memcg/memcg.h — memory cgroups: hierarchical page counters, a
// per-CPU stock of pre-charged pages, and charging that is safe from any
// context.
//
// Contract:
//  - A MemCgroup is a node of one tree under the root (root_mem_cgroup()).
//    Each level has a page counter: usage and max. A charge of n pages walks
//    from the cgroup to the root and adds n at every level with a
//    compare-exchange that never takes a level above its max; a level that
//    would go over refuses, the levels already charged are rolled back, and
//    the refusing level counts a limit event. An uncharge walks to the root
//    and subtracts. No locks: every counter operation is NMI-safe.
//  - The root is unlimited (set_max() on it is a misuse report); its usage
//    is every page charged anywhere, since every charge reaches it.
//  - Each CPU has a stock: one cached cgroup and up to kMemcgStockMax pages
//    already charged to it. The stock is a LocalTryLock ("memcg.stock") taken
//    with try_lock_irqsave() only, in every context, so a frame that finds
//    it held by the frame it interrupted goes to the counters instead (the
//    one exception: the CPU-offline drain, which owns the whole CPU).
//  - memcg_try_charge() branches on allows_spinning(gfp) first.
//      spinning (a reclaim bit set): served from the stock when it caches
//      this cgroup and holds enough; else charges max(pages, kMemcgChargeBatch)
//      to the counters and puts the surplus in the stock (a refill that finds
//      the stock held uncharges the surplus at once); near the limit the exact
//      size is tried; at the limit, with kGfpDirectReclaim, it drains this
//      CPU's stock, asks the CPUs whose stocks cache the refusing subtree to
//      drain theirs, runs reclaim_run() and retries, kMemcgChargeRetries times
//      at most. Limit-event notifications are delivered here (see events).
//      Task or IRQ context (direct reclaim: task only), never NMI.
//      nolock (no reclaim bit): served from the stock, else exactly `pages`
//      to the counters; at the limit it fails at once. Never reclaims, never
//      refills the stock, never takes a lock other than the stock's trylock,
//      never notifies. Any context.
//  - Stock slack: pages in a stock count in usage (and against max) but
//    belong to no caller. So a charge can be refused while up to
//    kMemcgStockMax pages per CPU (one stock per CPU, caching one cgroup)
//    sit unused in stocks for the refusing subtree; usage itself never
//    exceeds max. Spinning charges with direct reclaim drain stocks before
//    they give up; nolock charges do not.
//  - A stock drains (its pages uncharged, its cgroup forgotten) when it
//    switches cgroup, when its CPU goes offline (so stocks of offline CPUs are
//    empty), on drain_local_stock(), and on a drain request. Another CPU's
//    stock cannot be taken from here: drain_all_stock() posts a request flag
//    and sends that CPU an IRQ; the CPU drains in its IRQ-exit callback or at
//    its next stock use. Remote drains are therefore asynchronous.
//  - Events: a charge refused at a level counts a limit event there, in any
//    context. Delivering it to the notifier takes a spinlock, so a nolock
//    charge only marks the cgroup pending (a lock-free list); delivery
//    happens from the next spinning charge anywhere, or memcg_flush_events().
//  - Current cgroup: what an accounted allocation charges. Per thread and per
//    context level (task, IRQ, NMI): the innermost MemcgScope opened at this
//    level, or the root when none is open. So interrupt work does not bill
//    the task it interrupted unless it opens a scope. Scopes nest strictly.
//  - Statistics are per-CPU, per-context single-writer slots: NMI-safe.
//  - memcg_check_invariants() (quiesced): at every level, usage equals the
//    pages charged by callers in its subtree plus the stock pages cached for
//    cgroups of its subtree; usage <= max (or, after set_max() lowered max
//    below usage, no more than the usage it found then); stocks within
//    kMemcgStockMax; offline CPUs' stocks empty; the pending limit-event
//    list holds, once each, exactly the live cgroups marked pending (a
//    cgroup marked pending but on no list never notifies again).
//  - Misuse is a fatal report naming the cgroup: an uncharge that takes a
//    level below zero, destroying a cgroup that still has pages charged,
//    children or open scopes, set_max() on the root, scopes ending out of
//    order, a null cgroup; in ANYCTX_DEBUG builds also a spinning charge in
//    NMI context or with direct reclaim outside task context.
//  - memcg knows nothing of pages: the page allocator charges through it and
//    keeps the cgroup in the page (DESIGN.md §7).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <string>

#include "anyctx/ctx/config.h"
#include "anyctx/ctx/gfp.h"

namespace anyctx {

inline constexpr unsigned kMemcgChargeBatch = 64;  // pages a spinning charge takes at once
inline constexpr unsigned kMemcgStockMax = kMemcgChargeBatch;  // pages a stock holds at most
inline constexpr int kMemcgChargeRetries = 3;  // reclaim passes before a charge fails
inline constexpr std::uint64_t kMemcgUnlimited = ~std::uint64_t{0};
inline constexpr std::size_t kMemcgNameMax = 32;  // bytes kept of a name, with the NUL

class MemCgroup {
 public:
  // A child of the root. Context: task.
  explicit MemCgroup(const char* name);
  // A child of `parent`. Context: task.
  MemCgroup(const char* name, MemCgroup& parent);
  // Drains every stock that caches it (other CPUs: waits for their drain);
  // then reports if pages are still charged, children or scopes remain.
  // Context: task; nothing charges it concurrently.
  ~MemCgroup();
  MemCgroup(const MemCgroup&) = delete;
  MemCgroup& operator=(const MemCgroup&) = delete;

  // Context: any. Return: the name (cut to kMemcgNameMax - 1 bytes).
  const char* name() const { return name_; }
  // Context: any. Return: the parent, nullptr for the root.
  MemCgroup* parent() const { return parent_; }
  // Context: any. Return: whether this is the root cgroup.
  bool is_root() const { return parent_ == nullptr; }
  // Context: any. Return: whether `ancestor` is this cgroup or above it.
  bool is_descendant_of(const MemCgroup& ancestor) const;
  // Context: any. Return: pages charged at this level (a snapshot).
  std::uint64_t usage() const { return usage_.load(std::memory_order_relaxed); }
  // Context: any. Return: the limit in pages (kMemcgUnlimited: none).
  std::uint64_t max() const { return max_.load(std::memory_order_relaxed); }
  // Sets the limit (the root has none: a misuse report). Charges racing
  // with it complete against the old or the new limit; usage above a
  // lowered limit is left alone and only shrinks until it is under.
  // Context: task (calls are serialised). Return: the previous limit.
  std::uint64_t set_max(std::uint64_t pages);

 private:
  friend struct MemcgAccess;      // memcg.cc's internals
  friend struct MemcgTestAccess;  // tests that corrupt a counter on purpose

  struct RootTag {};
  explicit constexpr MemCgroup(RootTag) : parent_(nullptr) {
    const char root[] = "root";
    for (std::size_t i = 0; i < sizeof root; ++i) name_[i] = root[i];
  }
  void init(const char* name, MemCgroup* parent);

  // Per-cgroup statistics: one slot per (CPU, context level), each written
  // by one frame at a time (interrupts nest strictly and never at their own
  // level), plus slots shared with fetch_add by threads that are not CPUs.
  enum Stat : int {
    kStatCharged,  // pages charged by callers minus pages uncharged (signed)
    kStatChargeOk,  // + path (0 spinning, 1 nolock)
    kStatChargeFailed = kStatChargeOk + 2,
    kStatStockHits = kStatChargeFailed + 2,
    kStatLimitEvents,
    kStatReclaimRuns,
    kStatCount
  };
  struct alignas(kCacheLine) StatSlots {
    std::atomic<std::int64_t> v[3][kStatCount]{};
  };

  char name_[kMemcgNameMax]{};
  MemCgroup* parent_ = nullptr;
  std::atomic<std::uint64_t> usage_{0};
  std::atomic<std::uint64_t> max_{kMemcgUnlimited};
  // The usage set_max() found above a lowered max (the invariant's bound).
  std::atomic<std::uint64_t> usage_at_set_max_{0};
  std::atomic<int> children_{0};
  std::atomic<int> scopes_{0};
  // The registry of live cgroups (not the root), under its mutex.
  MemCgroup* registry_next_ = nullptr;
  MemCgroup* registry_prev_ = nullptr;
  // Pending limit-event notification: on the lock-free pending list.
  std::atomic<bool> event_queued_{false};
  std::atomic<MemCgroup*> event_next_{nullptr};
  std::atomic<std::uint64_t> events_notified_{0};
  StatSlots cpu_stats_[kMaxCpus]{};
  StatSlots shared_stats_{};
};

// Context: any. Return: the root cgroup (unlimited, never destroyed).
MemCgroup* root_mem_cgroup();

// Charges `pages` to `memcg` (see the contract for the two paths).
// Context: spinning gfp task or IRQ (direct reclaim: task); nolock gfp any.
// Return: true when charged; false at the limit (nolock: at once; spinning:
// after the retries).
[[nodiscard]] bool memcg_try_charge(MemCgroup* memcg, Gfp gfp, unsigned pages);

// Uncharges `pages` from `memcg` and every level above (atomics only).
// Context: any. Return: nothing; an uncharge below zero is a fatal report.
void memcg_uncharge(MemCgroup* memcg, unsigned pages);

// Context: any. Return: the cgroup an accounted allocation here charges.
MemCgroup* current_mem_cgroup();

// Makes `memcg` current for this context level until the scope ends
// (the kernel's set_active_memcg). Scopes end in reverse order, in the
// context level that opened them. Context: any.
class MemcgScope {
 public:
  explicit MemcgScope(MemCgroup& memcg);
  ~MemcgScope();
  MemcgScope(const MemcgScope&) = delete;
  MemcgScope& operator=(const MemcgScope&) = delete;

 private:
  MemCgroup* memcg_;
  MemCgroup* previous_;
  std::uint8_t level_;
};

// Drains this CPU's stock (when an interrupted frame holds it, posts a drain
// request that the holder's next stock use honours). Context: any CPU.
// Return: pages uncharged now.
unsigned drain_local_stock();
// Drains this CPU's stock now and posts drain requests (with an IRQ) to
// every other online CPU whose stock is not empty; those drain
// asynchronously. Context: task. Return: CPUs asked to drain.
int drain_all_stock();

struct MemcgStockView {
  const MemCgroup* cached = nullptr;  // nullptr: an empty stock
  unsigned pages = 0;
  bool drain_requested = false;
};
// Context: any (a snapshot; exact for this CPU or a quiesced one).
// Return: `cpu`'s stock.
MemcgStockView memcg_stock(int cpu);

// Called for each cgroup with limit events not yet delivered; `events` is
// its limit-event count so far. Runs in task or IRQ context with the event
// spinlock held and IRQs masked: it must not charge.
using MemcgEventFn = void (*)(MemCgroup& memcg, std::uint64_t events);
// Context: any. Return: the previous notifier.
MemcgEventFn set_memcg_event_notifier(MemcgEventFn fn);
// Delivers pending limit-event notifications. Context: task or IRQ (takes a
// spinlock). Return: cgroups notified.
int memcg_flush_events();
// Context: any. Return: whether some notification waits for delivery.
bool memcg_events_pending();

struct MemcgStats {
  std::uint64_t usage = 0;
  std::uint64_t max = 0;
  std::int64_t charged = 0;  // pages charged by callers now (stock pages excluded)
  // [path][context]: path 0 spinning, 1 nolock; context as ContextLevel.
  std::uint64_t charges[2][3]{};          // successful memcg_try_charge calls
  std::uint64_t charge_failures[2][3]{};  // refused ones
  std::uint64_t stock_hits = 0;           // charges served by a stock
  std::uint64_t limit_events = 0;         // charges this level refused
  std::uint64_t events_notified = 0;      // notifier calls for this cgroup
  std::uint64_t reclaim_runs = 0;         // reclaim passes of charges to it
};
// Context: any (a snapshot of NMI-safe counters). Return: `memcg`'s stats.
MemcgStats memcg_stats(const MemCgroup& memcg);

struct MemcgGlobalStats {
  std::uint64_t stock_busy[3]{};  // [context] stock held by the interrupted frame
  std::uint64_t refill_uncharged = 0;  // surplus pages a refill gave back
  std::uint64_t stock_drains = 0;      // drains that uncharged pages
  std::uint64_t drain_requests = 0;    // requests posted to other CPUs
  std::uint64_t requested_drains = 0;  // requests honoured
};
// Context: any (a snapshot). Return: statistics over all cgroups.
MemcgGlobalStats memcg_global_stats();

struct MemcgInvariantResult {
  bool ok = true;
  std::string what;  // the first violation, naming the cgroup
};
// Checks the invariants above over the root and every live cgroup.
// Context: task, quiesced (no charge, uncharge or drain in flight; remote
// drain requests honoured). Return: the first violation.
MemcgInvariantResult memcg_check_invariants();

}  // namespace anyctx
