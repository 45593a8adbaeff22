// Memory cgroups. Map of this file:
//   state        the root, the registry, the stocks, statistics, events
//   stats        per-(CPU, context) single-writer slots
//   counters     the hierarchical charge / rollback / uncharge walks
//   stock        consume, refill, drain; drain requests; offline and IRQ exit
//   events       the lock-free pending list and its delivery
//   charge       memcg_try_charge and its two slow paths
//   current      per-context-level active cgroup and MemcgScope
//   lifecycle    construction, set_max, destruction
//   inspection   stats, stock views
//   invariants
#include "anyctx/memcg/memcg.h"

#include <algorithm>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "anyctx/ctx/context.h"
#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/reclaim.h"
#include "anyctx/ctx/report.h"
#include "anyctx/ctx/site.h"
#include "anyctx/lock/local_lock.h"
#include "anyctx/lock/spinlock.h"

namespace anyctx {

// The internals' view of a MemCgroup's private state.
struct MemcgAccess {
  using Stat = MemCgroup::Stat;
  using StatSlots = MemCgroup::StatSlots;
  static constexpr int kStatCount = MemCgroup::kStatCount;
  static constexpr int kStatCharged = MemCgroup::kStatCharged;
  static constexpr int kStatChargeOk = MemCgroup::kStatChargeOk;
  static constexpr int kStatChargeFailed = MemCgroup::kStatChargeFailed;
  static constexpr int kStatStockHits = MemCgroup::kStatStockHits;
  static constexpr int kStatLimitEvents = MemCgroup::kStatLimitEvents;
  static constexpr int kStatReclaimRuns = MemCgroup::kStatReclaimRuns;

  static std::atomic<std::uint64_t>& usage(MemCgroup* m) { return m->usage_; }
  static std::atomic<std::uint64_t>& max(MemCgroup* m) { return m->max_; }
  static std::atomic<std::uint64_t>& usage_at_set_max(MemCgroup* m) { return m->usage_at_set_max_; }
  static std::atomic<int>& children(MemCgroup* m) { return m->children_; }
  static std::atomic<int>& scopes(MemCgroup* m) { return m->scopes_; }
  static MemCgroup*& registry_next(MemCgroup* m) { return m->registry_next_; }
  static MemCgroup*& registry_prev(MemCgroup* m) { return m->registry_prev_; }
  static std::atomic<bool>& event_queued(MemCgroup* m) { return m->event_queued_; }
  static std::atomic<MemCgroup*>& event_next(MemCgroup* m) { return m->event_next_; }
  static std::atomic<std::uint64_t>& events_notified(MemCgroup* m) { return m->events_notified_; }
  static StatSlots& cpu_stats(MemCgroup* m, int cpu) { return m->cpu_stats_[cpu]; }
  static StatSlots& shared_stats(MemCgroup* m) { return m->shared_stats_; }

  static std::int64_t stat_sum(const MemCgroup* m, int stat, int ctx) {
    std::int64_t sum = m->shared_stats_.v[ctx][stat].load(std::memory_order_relaxed);
    for (int cpu = 0, used = cpu_ids_used(); cpu < used; ++cpu)
      sum += m->cpu_stats_[cpu].v[ctx][stat].load(std::memory_order_relaxed);
    return sum;
  }
  static std::int64_t stat_sum(const MemCgroup* m, int stat) {
    return stat_sum(m, stat, 0) + stat_sum(m, stat, 1) + stat_sum(m, stat, 2);
  }

  // The root lives in a union so that it is constant-initialised and never
  // destroyed (a charge may reach it from any context at any time).
  union RootStorage {
    constexpr RootStorage() : value(MemCgroup::RootTag{}) {}
    ~RootStorage() {}
    MemCgroup value;
  };
};

namespace {

using A = MemcgAccess;

// --- state -----------------------------------------------------------------

constinit A::RootStorage g_root;

// Live cgroups other than the root, for the invariants and for safe reads
// of another CPU's cached cgroup (a cgroup leaves the registry only after no
// stock caches it). Task context only.
std::mutex g_registry_mu;
MemCgroup* g_registry_head = nullptr;  // guarded by g_registry_mu
// Serialises set_max() (its usage snapshot must belong to the limit that wins).
std::mutex g_limit_mu;

struct Stock {
  LocalTryLock lock{"memcg.stock"};
  // Written only by the owning CPU under `lock` (the offline drain: by the
  // departing thread); atomics so other CPUs may inspect them.
  std::atomic<MemCgroup*> cached{nullptr};
  std::atomic<unsigned> pages{0};
  // Set by other CPUs (drain_all_stock); cleared by the owner when it drains.
  std::atomic<bool> drain_requested{false};
};

PerCpu<Stock> g_stock;

enum GlobalStat : int {
  kGStockBusy,
  kGRefillUncharged,
  kGStockDrains,
  kGDrainRequests,
  kGRequestedDrains,
  kGStatCount
};
struct GlobalSlots {
  std::atomic<std::uint64_t> v[3][kGStatCount]{};
};
PerCpu<GlobalSlots> g_cpu_gstats;
GlobalSlots g_shared_gstats;

// Cgroups with undelivered limit events: a lock-free stack (push by CAS from
// any context, take-all by exchange under g_event_lock).
std::atomic<MemCgroup*> g_event_pending{nullptr};
std::atomic<MemcgEventFn> g_event_fn{nullptr};
Spinlock g_event_lock{"memcg.event_lock"};

// The active cgroup of each context level of this thread (MemcgScope);
// nullptr: the default (task: root; interrupts: root). Each level's slot is
// written only by frames of that level, which never overlap.
thread_local constinit MemCgroup* t_active[3] = {nullptr, nullptr, nullptr};

constexpr int kPathSpinning = 0;
constexpr int kPathNolock = 1;

int context_index() { return static_cast<int>(context_level()); }

// --- stats -----------------------------------------------------------------

// This frame's statistics row of one cgroup: resolved once, added to many
// times. The slot of (CPU, context) has one writer at a time, so load +
// store is exact; threads that are not CPUs share a row updated by RMW.
class StatRow {
 public:
  explicit StatRow(MemCgroup* m) {
    int cpu = current_cpu();
    int ctx = context_index();
    shared_ = cpu == kNoCpu;
    row_ = shared_ ? A::shared_stats(m).v[ctx] : A::cpu_stats(m, cpu).v[ctx];
  }
  void add(int stat, std::int64_t delta) {
    std::atomic<std::int64_t>& slot = row_[stat];
    if (ANYCTX_UNLIKELY(shared_)) {
      slot.fetch_add(delta, std::memory_order_relaxed);
    } else {
      slot.store(slot.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
    }
  }

 private:
  std::atomic<std::int64_t>* row_;
  bool shared_;
};

void gstat_add(int stat, std::uint64_t delta) {
  int cpu = current_cpu();
  int ctx = context_index();
  if (cpu == kNoCpu) {
    g_shared_gstats.v[ctx][stat].fetch_add(delta, std::memory_order_relaxed);
    return;
  }
  std::atomic<std::uint64_t>& slot = g_cpu_gstats.on(cpu).v[ctx][stat];
  slot.store(slot.load(std::memory_order_relaxed) + delta, std::memory_order_relaxed);
}

std::uint64_t gstat_sum(int stat, int ctx) {
  std::uint64_t sum = g_shared_gstats.v[ctx][stat].load(std::memory_order_relaxed);
  g_cpu_gstats.for_each([&](int, GlobalSlots& s) { sum += s.v[ctx][stat].load(std::memory_order_relaxed); });
  return sum;
}

std::uint64_t gstat_sum(int stat) { return gstat_sum(stat, 0) + gstat_sum(stat, 1) + gstat_sum(stat, 2); }

// --- reports -------------------------------------------------------------------

// Writes "root/a/b".
void put_path(Report& r, const MemCgroup* m) {
  if (m->parent() != nullptr) {
    put_path(r, m->parent());
    r << '/';
  }
  r << m->name();
}

std::string path_of(const MemCgroup* m) {
  std::string path = m->name();
  for (const MemCgroup* p = m->parent(); p != nullptr; p = p->parent()) path = std::string(p->name()) + "/" + path;
  return path;
}

[[noreturn]] ANYCTX_COLD void report_misuse(const char* entry, const MemCgroup* m, const char* what) {
  Report r("memcg misuse");
  r << entry << "(): memory cgroup '";
  put_path(r, m);
  r << "': " << what;
  r.fatal();
}

[[noreturn]] ANYCTX_COLD void report_null(const char* entry) {
  (Report("memcg misuse") << entry << "(): null memory cgroup").fatal();
}

[[noreturn]] ANYCTX_COLD void report_underflow(const MemCgroup* level, const MemCgroup* target, std::uint64_t usage,
                                               std::uint64_t pages) {
  Report r("memcg underflow");
  r << "uncharging " << pages << " pages from memory cgroup '";
  put_path(r, target);
  r << "' takes '";
  put_path(r, level);
  r << "' below zero (its usage was " << usage << "): more pages uncharged than charged";
  r.fatal();
}

[[maybe_unused]] ANYCTX_COLD void check_spinning_context(Gfp gfp) {
  if (in_nmi())
    (Report("context rule") << "memcg_try_charge() with a spinning gfp in NMI context: use a gfp without "
                               "reclaim bits (nolock)")
        .fatal();
  if (allows_direct_reclaim(gfp) && !in_task())
    (Report("context rule") << "memcg_try_charge() with kGfpDirectReclaim in " << context_name(context_level())
                            << " context: reclaim runs only in task context (use kGfpAtomic)")
        .fatal();
}

// --- counters ----------------------------------------------------------------------

// One level: usage += n unless that passes max. Return: whether it did.
bool level_try_charge(MemCgroup* c, std::uint64_t n) {
  std::atomic<std::uint64_t>& usage = A::usage(c);
  if (c->is_root()) {  // unlimited, and every charge comes here: no CAS loop
    usage.fetch_add(n, std::memory_order_relaxed);
    return true;
  }
  std::uint64_t u = usage.load(std::memory_order_relaxed);
  do {
    std::uint64_t max = A::max(c).load(std::memory_order_relaxed);
    if (u > max || n > max - u) return false;
  } while (!usage.compare_exchange_weak(u, u + n, std::memory_order_seq_cst, std::memory_order_relaxed));
  // A set_max() that lowered max meanwhile either saw this charge in its
  // usage snapshot or is seen here (both sides are seq_cst): then give back.
  if (ANYCTX_UNLIKELY(u + n > A::max(c).load(std::memory_order_seq_cst))) {
    usage.fetch_sub(n, std::memory_order_relaxed);
    return false;
  }
  return true;
}

// Charges n pages at every level from `memcg` to the root. Return: nullptr
// on success, else the level that refused (the levels below it are rolled
// back).
MemCgroup* counter_try_charge(MemCgroup* memcg, std::uint64_t n) {
  for (MemCgroup* c = memcg; c != nullptr; c = c->parent()) {
    if (!level_try_charge(c, n)) {
      for (MemCgroup* r = memcg; r != c; r = r->parent()) {
        A::usage(r).fetch_sub(n, std::memory_order_relaxed);
        ANYCTX_SITE(kChargeWalk);
      }
      return c;
    }
    ANYCTX_SITE(kChargeWalk);
  }
  return nullptr;
}

void counter_uncharge(MemCgroup* memcg, std::uint64_t n) {
  for (MemCgroup* c = memcg; c != nullptr; c = c->parent()) {
    std::uint64_t old = A::usage(c).fetch_sub(n, std::memory_order_relaxed);
    if (ANYCTX_UNLIKELY(old < n)) report_underflow(c, memcg, old, n);
    ANYCTX_SITE(kChargeWalk);
  }
}

// --- stock ----------------------------------------------------------------------------

// The stock is only ever taken with try_lock_irqsave(): in task context the
// mask keeps IRQs out of the section, and a frame that interrupted the
// holder (an NMI, or a site-hook reentry) fails instead of nesting.

// Uncharges the stock's pages and forgets its cgroup. Stock lock held.
// Return: pages uncharged.
unsigned drain_stock_locked(Stock& stock) {
  MemCgroup* old = stock.cached.load(std::memory_order_relaxed);
  unsigned n = stock.pages.load(std::memory_order_relaxed);
  if (n != 0) {
    stock.pages.store(0, std::memory_order_relaxed);
    ANYCTX_SITE(kStockDrain);
    counter_uncharge(old, n);
    gstat_add(kGStockDrains, 1);
  }
  // Release: a destructor that sees the cgroup gone from the stock sees the
  // uncharge before it.
  stock.cached.store(nullptr, std::memory_order_release);
  return n;
}

// Another CPU asked this one to drain. Stock lock held.
ANYCTX_COLD unsigned drain_requested_locked_slow(Stock& stock) {
  stock.drain_requested.store(false, std::memory_order_relaxed);  // first: a later request drains again
  gstat_add(kGRequestedDrains, 1);
  return drain_stock_locked(stock);
}

ANYCTX_COLD void stock_busy_slow() { gstat_add(kGStockBusy, 1); }

// Takes `pages` from this CPU's stock if it caches `memcg` and holds enough.
ANYCTX_ALWAYS_INLINE bool consume_stock(MemCgroup* memcg, unsigned pages, int path) ANYCTX_NO_TSA {
  int cpu = current_cpu();
  if (ANYCTX_UNLIKELY(cpu == kNoCpu) || pages > kMemcgStockMax) return false;
  Stock& stock = g_stock.on(cpu);
  IrqFlags flags;
  if (ANYCTX_UNLIKELY(!stock.lock.try_lock_irqsave(flags))) {
    stock_busy_slow();  // an interrupted frame of this CPU is inside the stock
    return false;
  }
  ANYCTX_SITE(kStockLocked);
  if (ANYCTX_UNLIKELY(stock.drain_requested.load(std::memory_order_relaxed))) drain_requested_locked_slow(stock);
  bool hit = false;
  unsigned have = stock.pages.load(std::memory_order_relaxed);
  if (stock.cached.load(std::memory_order_relaxed) == memcg && have >= pages) {
    stock.pages.store(have - pages, std::memory_order_relaxed);
    hit = true;
  }
  ANYCTX_SITE(kStockUnlock);
  stock.lock.unlock_irqrestore(flags);
  if (hit) {
    StatRow row(memcg);
    row.add(A::kStatCharged, pages);
    row.add(A::kStatChargeOk + path, 1);
    row.add(A::kStatStockHits, 1);
  }
  return hit;
}

// Puts `pages` already charged to `memcg` into this CPU's stock, switching
// the stock to `memcg` (draining the old cgroup) if needed and keeping it
// within kMemcgStockMax. What does not fit, or finds the stock held, is
// uncharged at once.
void refill_stock(MemCgroup* memcg, unsigned pages) ANYCTX_NO_TSA {
  int cpu = current_cpu();
  unsigned excess = pages;
  if (cpu != kNoCpu) {
    Stock& stock = g_stock.on(cpu);
    IrqFlags flags;
    if (stock.lock.try_lock_irqsave(flags)) {
      ANYCTX_SITE(kStockLocked);
      if (ANYCTX_UNLIKELY(stock.drain_requested.load(std::memory_order_relaxed))) drain_requested_locked_slow(stock);
      if (stock.cached.load(std::memory_order_relaxed) != memcg) {
        drain_stock_locked(stock);
        stock.cached.store(memcg, std::memory_order_relaxed);
        ANYCTX_SITE(kStockEdit);
      }
      unsigned total = stock.pages.load(std::memory_order_relaxed) + pages;
      excess = total > kMemcgStockMax ? total - kMemcgStockMax : 0;
      stock.pages.store(total - excess, std::memory_order_relaxed);
      ANYCTX_SITE(kStockUnlock);
      stock.lock.unlock_irqrestore(flags);
    } else {
      stock_busy_slow();
    }
  }
  if (excess != 0) {
    counter_uncharge(memcg, excess);
    gstat_add(kGRefillUncharged, excess);
  }
}

// IRQ exit on this CPU: honour a drain request. The stock cannot be held by
// the interrupted frame (task holders mask IRQs), but a failed try_lock just
// leaves the request for the next stock use.
void irq_exit_drain() ANYCTX_NO_TSA {
  int cpu = current_cpu();
  if (cpu == kNoCpu) return;
  Stock& stock = g_stock.on(cpu);
  if (ANYCTX_LIKELY(!stock.drain_requested.load(std::memory_order_relaxed))) return;
  IrqFlags flags;
  if (!stock.lock.try_lock_irqsave(flags)) return;
  ANYCTX_SITE(kStockLocked);
  drain_requested_locked_slow(stock);
  ANYCTX_SITE(kStockUnlock);
  stock.lock.unlock_irqrestore(flags);
}

// The departing CPU's thread, IRQs masked: no frame of it is inside the
// stock, so lock() (which reports a nested section if one were).
void offline_drain(int cpu) ANYCTX_NO_TSA {
  Stock& stock = g_stock.on(cpu);
  IrqFlags flags = stock.lock.lock_irqsave();
  ANYCTX_SITE(kStockLocked);
  stock.drain_requested.store(false, std::memory_order_relaxed);
  drain_stock_locked(stock);
  ANYCTX_SITE(kStockUnlock);
  stock.lock.unlock_irqrestore(flags);
}

bool register_callbacks() {
  if (!cpu_offline_callback_add(offline_drain) || !irq_exit_callback_add(irq_exit_drain)) {
    (Report("memcg setup") << "no room to register the stock drain (CPU-offline or IRQ-exit callback registry "
                              "full)")
        .fatal();
  }
  return true;
}

// Registered before main (both registries are constant-initialised), so the
// stocks drain on offline even when only the root is ever charged.
[[maybe_unused]] const bool g_callbacks_registered = register_callbacks();

// Posts drain requests to the other online CPUs whose stock caches a cgroup
// of `under`'s subtree (every cgroup when nullptr) and drains this CPU's.
// Context: task. Return: CPUs asked.
int drain_stocks_under(const MemCgroup* under) {
  int self = current_cpu();
  if (self != kNoCpu) {
    const MemCgroup* mine = g_stock.on(self).cached.load(std::memory_order_relaxed);
    if (mine != nullptr && (under == nullptr || mine->is_descendant_of(*under))) drain_local_stock();
  }
  int asked = 0;
  // The registry lock keeps every cached cgroup alive while it is read.
  std::lock_guard<std::mutex> guard(g_registry_mu);
  for (int cpu = 0; cpu < kMaxCpus; ++cpu) {
    if (cpu == self || !cpu_is_online(cpu)) continue;
    Stock& stock = g_stock.on(cpu);
    const MemCgroup* cached = stock.cached.load(std::memory_order_acquire);
    if (cached == nullptr || (under != nullptr && !cached->is_descendant_of(*under))) continue;
    stock.drain_requested.store(true, std::memory_order_release);
    if (send_interrupt(cpu, InterruptKind::kIrq)) {
      ++asked;
      gstat_add(kGDrainRequests, 1);
    }
  }
  return asked;
}

// --- events ---------------------------------------------------------------------

// Counts a refused charge at `level` and queues its notification. Any context.
void limit_event(MemCgroup* level) {
  StatRow(level).add(A::kStatLimitEvents, 1);
  if (A::event_queued(level).exchange(true, std::memory_order_acq_rel)) return;  // already pending
  MemCgroup* head = g_event_pending.load(std::memory_order_relaxed);
  do {
    A::event_next(level).store(head, std::memory_order_relaxed);
    ANYCTX_SITE(kEventPush);
  } while (!g_event_pending.compare_exchange_weak(head, level, std::memory_order_release, std::memory_order_relaxed));
}

// --- charge -------------------------------------------------------------------------

void record_charge(MemCgroup* memcg, unsigned pages, int path) {
  StatRow row(memcg);
  row.add(A::kStatCharged, pages);
  row.add(A::kStatChargeOk + path, 1);
}

ANYCTX_COLD bool charge_nolock_slow(MemCgroup* memcg, unsigned pages) {
  MemCgroup* over = counter_try_charge(memcg, pages);
  if (over == nullptr) {
    record_charge(memcg, pages, kPathNolock);
    return true;
  }
  limit_event(over);  // delivered later, from a context that may spin
  StatRow(memcg).add(A::kStatChargeFailed + kPathNolock, 1);
  return false;
}

ANYCTX_COLD bool charge_spinning_slow(MemCgroup* memcg, Gfp gfp, unsigned pages) {
  unsigned batch = pages < kMemcgChargeBatch ? kMemcgChargeBatch : pages;
  bool met_limit = false;
  bool asked_others = false;
  for (int attempt = 0;; ++attempt) {
    if (batch > pages) {
      if (counter_try_charge(memcg, batch) == nullptr) {
        record_charge(memcg, pages, kPathSpinning);
        refill_stock(memcg, batch - pages);
        return true;
      }
      batch = pages;  // near the limit: the exact size may still fit
    }
    MemCgroup* over = counter_try_charge(memcg, pages);
    if (over == nullptr) {
      record_charge(memcg, pages, kPathSpinning);
      return true;
    }
    if (!met_limit) {
      met_limit = true;
      limit_event(over);
    }
    if (memcg_events_pending()) memcg_flush_events();  // this context may spin: deliver now
    if (!allows_direct_reclaim(gfp) || attempt == kMemcgChargeRetries) break;
    // Pages pre-charged in stocks count against the limit: give this CPU's
    // back now, ask the others once (they drain asynchronously), reclaim.
    drain_local_stock();
    if (!asked_others) {
      asked_others = true;
      drain_stocks_under(over);
    }
    StatRow(memcg).add(A::kStatReclaimRuns, 1);
    reclaim_run();
  }
  StatRow(memcg).add(A::kStatChargeFailed + kPathSpinning, 1);
  return false;
}

}  // namespace

MemCgroup* root_mem_cgroup() { return &g_root.value; }

bool memcg_try_charge(MemCgroup* memcg, Gfp gfp, unsigned pages) {
  if (ANYCTX_UNLIKELY(memcg == nullptr)) report_null("memcg_try_charge");
  if (ANYCTX_UNLIKELY(pages == 0)) return true;
  // Branch on the path first: the two never share a lock decision.
  if (allows_spinning(gfp)) {
    if constexpr (kDebug) {
      if (ANYCTX_UNLIKELY(!in_task())) check_spinning_context(gfp);
    }
    if (ANYCTX_UNLIKELY(g_event_pending.load(std::memory_order_relaxed) != nullptr)) memcg_flush_events();
    if (ANYCTX_LIKELY(consume_stock(memcg, pages, kPathSpinning))) return true;
    return charge_spinning_slow(memcg, gfp, pages);
  }
  NolockScope nolock("memcg_try_charge (nolock)");  // the lock validator: nothing below may wait
  if (consume_stock(memcg, pages, kPathNolock)) return true;
  return charge_nolock_slow(memcg, pages);
}

void memcg_uncharge(MemCgroup* memcg, unsigned pages) {
  if (ANYCTX_UNLIKELY(memcg == nullptr)) report_null("memcg_uncharge");
  if (pages == 0) return;
  counter_uncharge(memcg, pages);
  StatRow(memcg).add(A::kStatCharged, -static_cast<std::int64_t>(pages));
}

unsigned drain_local_stock() ANYCTX_NO_TSA {
  Stock& stock = g_stock.on(require_cpu("drain_local_stock"));
  IrqFlags flags;
  if (!stock.lock.try_lock_irqsave(flags)) {
    // The frame this one interrupted holds it: it drains at its next use.
    stock.drain_requested.store(true, std::memory_order_relaxed);
    stock_busy_slow();
    return 0;
  }
  ANYCTX_SITE(kStockLocked);
  stock.drain_requested.store(false, std::memory_order_relaxed);
  unsigned n = drain_stock_locked(stock);
  ANYCTX_SITE(kStockUnlock);
  stock.lock.unlock_irqrestore(flags);
  return n;
}

int drain_all_stock() { return drain_stocks_under(nullptr); }

MemcgStockView memcg_stock(int cpu) {
  MemcgStockView view;
  if (cpu < 0 || cpu >= kMaxCpus) return view;
  const Stock& stock = g_stock.on(cpu);
  view.cached = stock.cached.load(std::memory_order_acquire);
  view.pages = stock.pages.load(std::memory_order_relaxed);
  view.drain_requested = stock.drain_requested.load(std::memory_order_relaxed);
  return view;
}

// --- events -------------------------------------------------------------------------

MemcgEventFn set_memcg_event_notifier(MemcgEventFn fn) {
  return g_event_fn.exchange(fn, std::memory_order_acq_rel);
}

int memcg_flush_events() ANYCTX_NO_TSA {
  if constexpr (kDebug) {
    if (in_nmi())
      (Report("context rule") << "memcg_flush_events() in NMI context: delivery takes a spinlock").fatal();
  }
  IrqFlags flags = g_event_lock.lock_irqsave();
  MemCgroup* m = g_event_pending.exchange(nullptr, std::memory_order_acquire);
  MemcgEventFn fn = g_event_fn.load(std::memory_order_acquire);
  int notified = 0;
  while (m != nullptr) {
    MemCgroup* next = A::event_next(m).load(std::memory_order_relaxed);
    // Clear before delivery: an event from now on queues it again.
    A::event_queued(m).store(false, std::memory_order_release);
    std::uint64_t events = static_cast<std::uint64_t>(A::stat_sum(m, A::kStatLimitEvents));
    if (fn != nullptr) fn(*m, events);
    A::events_notified(m).fetch_add(1, std::memory_order_relaxed);
    ++notified;
    m = next;
  }
  g_event_lock.unlock_irqrestore(flags);
  return notified;
}

bool memcg_events_pending() { return g_event_pending.load(std::memory_order_relaxed) != nullptr; }

// --- current ----------------------------------------------------------------------------

MemCgroup* current_mem_cgroup() {
  MemCgroup* m = t_active[context_index()];
  return m != nullptr ? m : root_mem_cgroup();
}

MemcgScope::MemcgScope(MemCgroup& memcg)
    : memcg_(&memcg), level_(static_cast<std::uint8_t>(context_index())) {
  previous_ = t_active[level_];
  A::scopes(&memcg).fetch_add(1, std::memory_order_relaxed);
  t_active[level_] = &memcg;
}

MemcgScope::~MemcgScope() {
  if (ANYCTX_UNLIKELY(context_index() != level_ || t_active[level_] != memcg_)) {
    Report r("memcg misuse");
    r << "MemcgScope of memory cgroup '";
    put_path(r, memcg_);
    r << "' opened in " << context_name(static_cast<ContextLevel>(level_)) << " context ends ";
    if (context_index() != level_) {
      r << "in " << context_name(context_level()) << " context";
    } else {
      r << "out of order (an inner scope of '";
      put_path(r, t_active[level_] != nullptr ? t_active[level_] : root_mem_cgroup());
      r << "' is still open)";
    }
    r.fatal();
  }
  t_active[level_] = previous_;
  A::scopes(memcg_).fetch_sub(1, std::memory_order_relaxed);
}

// --- lifecycle --------------------------------------------------------------------------

MemCgroup::MemCgroup(const char* name) { init(name, root_mem_cgroup()); }

MemCgroup::MemCgroup(const char* name, MemCgroup& parent) { init(name, &parent); }

void MemCgroup::init(const char* name, MemCgroup* parent) {
  if (name == nullptr) name = "(unnamed)";
  std::size_t i = 0;
  for (; i + 1 < kMemcgNameMax && name[i] != '\0'; ++i) name_[i] = name[i];
  name_[i] = '\0';
  parent_ = parent;
  register_callbacks();  // idempotent; covers an unusual static-initialisation order
  std::lock_guard<std::mutex> guard(g_registry_mu);
  registry_next_ = g_registry_head;
  if (g_registry_head != nullptr) A::registry_prev(g_registry_head) = this;
  g_registry_head = this;
  A::children(parent).fetch_add(1, std::memory_order_relaxed);
}

bool MemCgroup::is_descendant_of(const MemCgroup& ancestor) const {
  for (const MemCgroup* c = this; c != nullptr; c = c->parent_)
    if (c == &ancestor) return true;
  return false;
}

std::uint64_t MemCgroup::set_max(std::uint64_t pages) {
  if (is_root()) report_misuse("set_max", this, "the root cgroup has no limit (the page allocator's watermarks bound it)");
  std::lock_guard<std::mutex> guard(g_limit_mu);
  std::uint64_t old = max_.exchange(pages, std::memory_order_seq_cst);
  // After the new max is visible: every charge not counted here sees it.
  usage_at_set_max_.store(usage_.load(std::memory_order_seq_cst), std::memory_order_relaxed);
  return old;
}

// Removes `m` from every stock: this CPU's now, the others' by drain request
// and IRQ, waiting until they have drained.
static void forget_in_stocks(MemCgroup* m) ANYCTX_NO_TSA {
  int self = current_cpu();
  if (self != kNoCpu && g_stock.on(self).cached.load(std::memory_order_relaxed) == m) {
    drain_local_stock();
    if (g_stock.on(self).cached.load(std::memory_order_relaxed) == m)
      report_misuse("~MemCgroup", m, "destroyed inside this CPU's stock section");
  }
  validator_note_wait("waiting for other CPUs to drain their memcg stocks");
  using Clock = std::chrono::steady_clock;
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  auto next_ask = Clock::now();
  for (;;) {
    int waiting_for = kNoCpu;
    bool ask = Clock::now() >= next_ask;
    for (int cpu = 0; cpu < kMaxCpus; ++cpu) {
      if (cpu == self) continue;
      Stock& stock = g_stock.on(cpu);
      if (stock.cached.load(std::memory_order_acquire) != m) continue;
      if (!cpu_is_online(cpu)) {
        // Offline callbacks drain before the CPU reads as offline: look again.
        if (stock.cached.load(std::memory_order_acquire) == m) {
          Report r("memcg invariant");
          r << "cpu " << cpu << " is offline but its stock caches memory cgroup '";
          put_path(r, m);
          r << "'";
          r.fatal();
        }
        continue;
      }
      waiting_for = cpu;
      if (ask) {
        stock.drain_requested.store(true, std::memory_order_release);
        if (send_interrupt(cpu, InterruptKind::kIrq)) gstat_add(kGDrainRequests, 1);
      }
    }
    if (waiting_for == kNoCpu) return;
    if (ask) next_ask = Clock::now() + std::chrono::milliseconds(100);
    if (Clock::now() > deadline) {
      Report r("memcg misuse");
      r << "~MemCgroup(): memory cgroup '";
      put_path(r, m);
      r << "': cpu " << waiting_for
        << " has not drained its stock for 60 s (IRQs masked on that CPU all along?)";
      r.fatal();
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

MemCgroup::~MemCgroup() {
  if (is_root()) return;
  if (int n = children_.load(std::memory_order_relaxed); n != 0) {
    Report r("memcg misuse");
    r << "~MemCgroup(): memory cgroup '";
    put_path(r, this);
    r << "' destroyed while it has " << n << " child cgroups";
    r.fatal();
  }
  if (int n = scopes_.load(std::memory_order_relaxed); n != 0) {
    Report r("memcg misuse");
    r << "~MemCgroup(): memory cgroup '";
    put_path(r, this);
    r << "' destroyed while " << n << " MemcgScope(s) make it current";
    r.fatal();
  }
  forget_in_stocks(this);
  // Delivers anything pending, and waits out a delivery in flight (the lock).
  memcg_flush_events();
  if (std::uint64_t u = usage_.load(std::memory_order_acquire); u != 0) {
    Report r("memcg misuse");
    r << "~MemCgroup(): memory cgroup '";
    put_path(r, this);
    r << "' destroyed with " << u << " pages still charged";
    r.fatal();
  }
  std::lock_guard<std::mutex> guard(g_registry_mu);
  if (registry_prev_ != nullptr) A::registry_next(registry_prev_) = registry_next_;
  else g_registry_head = registry_next_;
  if (registry_next_ != nullptr) A::registry_prev(registry_next_) = registry_prev_;
  A::children(parent_).fetch_sub(1, std::memory_order_relaxed);
}

// --- inspection -------------------------------------------------------------------------

MemcgStats memcg_stats(const MemCgroup& memcg) {
  const MemCgroup* m = &memcg;
  MemcgStats s;
  s.usage = m->usage();
  s.max = m->max();
  s.charged = A::stat_sum(m, A::kStatCharged);
  for (int p = 0; p < 2; ++p) {
    for (int c = 0; c < 3; ++c) {
      s.charges[p][c] = static_cast<std::uint64_t>(A::stat_sum(m, A::kStatChargeOk + p, c));
      s.charge_failures[p][c] = static_cast<std::uint64_t>(A::stat_sum(m, A::kStatChargeFailed + p, c));
    }
  }
  s.stock_hits = static_cast<std::uint64_t>(A::stat_sum(m, A::kStatStockHits));
  s.limit_events = static_cast<std::uint64_t>(A::stat_sum(m, A::kStatLimitEvents));
  s.events_notified = A::events_notified(const_cast<MemCgroup*>(m)).load(std::memory_order_relaxed);
  s.reclaim_runs = static_cast<std::uint64_t>(A::stat_sum(m, A::kStatReclaimRuns));
  return s;
}

MemcgGlobalStats memcg_global_stats() {
  MemcgGlobalStats s;
  for (int c = 0; c < 3; ++c) s.stock_busy[c] = gstat_sum(kGStockBusy, c);
  s.refill_uncharged = gstat_sum(kGRefillUncharged);
  s.stock_drains = gstat_sum(kGStockDrains);
  s.drain_requests = gstat_sum(kGDrainRequests);
  s.requested_drains = gstat_sum(kGRequestedDrains);
  return s;
}

// --- invariants -------------------------------------------------------------------------

MemcgInvariantResult memcg_check_invariants() {
  MemcgInvariantResult result;
  auto fail = [&](std::string what) {
    if (result.ok) {
      result.ok = false;
      result.what = std::move(what);
    }
  };
  auto cg = [](const MemCgroup* m) { return "memory cgroup '" + path_of(m) + "'"; };

  std::lock_guard<std::mutex> guard(g_registry_mu);
  // What is tallied per live cgroup, in the thread's scratch: a fuzzer
  // checks after every program, and under ASan every allocation of a check
  // costs as much as a step of the program.
  struct Tally {
    MemCgroup* cgroup;
    std::int64_t charged = 0;   // by callers, over the subtree
    std::uint64_t stocked = 0;  // in stocks, over the subtree
    int children = 0;
    bool listed = false;        // on the pending limit-event list
  };
  thread_local std::vector<Tally> all;  // the root, then the registry's order
  thread_local std::vector<std::pair<const MemCgroup*, std::size_t>> by_address;
  all.clear();
  all.push_back(Tally{root_mem_cgroup()});
  for (MemCgroup* m = g_registry_head; m != nullptr; m = A::registry_next(m)) all.push_back(Tally{m});
  by_address.clear();
  for (std::size_t i = 0; i < all.size(); ++i) by_address.emplace_back(all[i].cgroup, i);
  std::sort(by_address.begin(), by_address.end());
  // Return: the tally of `c`, or nullptr when `c` is no live cgroup.
  auto tally_of = [&](const MemCgroup* c) -> Tally* {
    auto it = std::lower_bound(by_address.begin(), by_address.end(), std::make_pair(c, std::size_t{0}));
    return it != by_address.end() && it->first == c ? &all[it->second] : nullptr;
  };

  for (Tally& t : all) {
    MemCgroup* m = t.cgroup;
    std::int64_t own = A::stat_sum(m, A::kStatCharged);
    if (own < 0) fail(cg(m) + ": " + std::to_string(-own) + " more pages uncharged than charged");
    for (const MemCgroup* c = m; c != nullptr; c = c->parent()) {
      Tally* up = tally_of(c);
      if (up == nullptr) {
        fail(cg(m) + " has an ancestor that is not a live cgroup");
        break;
      }
      up->charged += own;
    }
    if (m->parent() != nullptr)
      if (Tally* parent = tally_of(m->parent())) ++parent->children;
  }

  for (int cpu = 0, used = cpu_ids_used(); cpu < used; ++cpu) {
    MemcgStockView v = memcg_stock(cpu);
    auto where = [cpu] { return "cpu " + std::to_string(cpu) + "'s stock"; };
    if (v.pages > kMemcgStockMax)
      fail(where() + " holds " + std::to_string(v.pages) + " pages, more than kMemcgStockMax (" +
           std::to_string(kMemcgStockMax) + ")");
    if (v.cached == nullptr) {
      if (v.pages != 0) fail(where() + " holds " + std::to_string(v.pages) + " pages but caches no cgroup");
      continue;
    }
    if (tally_of(v.cached) == nullptr) {
      fail(where() + " caches a cgroup that is not live (destroyed?)");
      continue;
    }
    if (!cpu_is_online(cpu))
      fail("cpu " + std::to_string(cpu) + " is offline but its stock caches " + cg(v.cached) + " with " +
           std::to_string(v.pages) + " pages");
    for (const MemCgroup* c = v.cached; c != nullptr; c = c->parent()) {
      Tally* up = tally_of(c);
      if (up == nullptr) {
        fail(where() + " caches " + cg(v.cached) + ", which has an ancestor that is not a live cgroup");
        break;
      }
      up->stocked += v.pages;
    }
  }

  for (std::size_t i = 0; i < all.size() && result.ok; ++i) {
    const Tally& t = all[i];
    MemCgroup* m = t.cgroup;
    std::uint64_t usage = m->usage();
    std::int64_t expected = t.charged + static_cast<std::int64_t>(t.stocked);
    if (static_cast<std::int64_t>(usage) != expected)
      fail(cg(m) + ": usage " + std::to_string(usage) + " but its subtree has " + std::to_string(t.charged) +
           " pages charged by callers + " + std::to_string(t.stocked) + " in stocks = " + std::to_string(expected));
    std::uint64_t max = m->max();
    if (usage > max && usage > A::usage_at_set_max(m).load(std::memory_order_relaxed))
      fail(cg(m) + ": usage " + std::to_string(usage) + " above its max " + std::to_string(max));
    if (t.children != A::children(m).load(std::memory_order_relaxed))
      fail(cg(m) + ": " + std::to_string(t.children) + " live children, its count says " +
           std::to_string(A::children(m).load()));
  }

  // The pending limit events: each live cgroup marked pending is on the
  // list once, and nothing else is (a repeat also ends a cycle's walk).
  for (MemCgroup* m = g_event_pending.load(std::memory_order_acquire); m != nullptr && result.ok;
       m = A::event_next(m).load(std::memory_order_relaxed)) {
    Tally* t = tally_of(m);
    if (t == nullptr) fail("the pending limit-event list holds a cgroup that is not live (destroyed?)");
    else if (t->listed) fail(cg(m) + " is on the pending limit-event list twice");
    else t->listed = true;
  }
  for (std::size_t i = 0; i < all.size() && result.ok; ++i) {
    const Tally& t = all[i];
    const bool pending = A::event_queued(t.cgroup).load(std::memory_order_relaxed);
    if (pending && !t.listed) fail(cg(t.cgroup) + " has a limit event marked pending but is on no pending list (lost)");
    if (!pending && t.listed) fail(cg(t.cgroup) + " is on the pending limit-event list but not marked pending");
  }
  return result;
}

}  // namespace anyctx
