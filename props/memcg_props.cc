// props/memcg_props.cc — memory-cgroup charging against a reference model.
//
// The model holds the charges callers own (plain memcg_try_charge charges
// and accounted page blocks), CPU 0's stock (cached cgroup, pages, drain
// request), each level's max, the pending limit events and every
// statistic. Usage is not a model variable: at every level it is derived as
// "pages charged by callers in the subtree + the stock if it caches a
// cgroup of the subtree", and compared with MemCgroup::usage().
//
// The tree: root, a, b (child of a), c. Commands: charges on both paths
// (nolock, spinning without reclaim (kGfpAtomic, also in IRQs), spinning
// with direct reclaim (kGfpKernel, task)), sizes within and above the stock
// batch, uncharges, set_max (also below usage), drain_local_stock, event
// flushes, accounted page allocations under a MemcgScope (or none) and
// their frees, interrupts at an op boundary (IRQ/NMI, an NMI inside an IRQ,
// a task-level MemcgScope around them), an NMI delivered while the task
// frame holds the stock (at its consume or its drain), and NMIs inside a
// charge: at the stock refill (the batch charged, the surplus not yet in the
// stock) and between reading the pending-event list and the CAS of a
// refused nolock charge.
//
// Postconditions after every command: each charge succeeds or fails
// exactly as predicted (a nolock charge at the limit fails at once: no
// reclaim pass, no notification, no stock refill); usage at every level;
// usage never above max (beyond the usage found by a set_max that lowered
// it); the stock; per-cgroup and global statistics; pending events;
// memcg_check_invariants().
#include <array>
#include <vector>

#include "anyctx/memcg/memcg.h"
#include "props_common.h"

namespace anyctx::props {
namespace {

constexpr int kCgroups = 4;  // 0 root, 1 a, 2 b (a's child), 3 c
constexpr int kParent[kCgroups] = {-1, 0, 1, 0};
inline const char* cg_name(int i) { return i == 0 ? "root" : i == 1 ? "a" : i == 2 ? "b" : "c"; }
constexpr std::uint64_t kMaxChoices[] = {0, 1, 4, 8, 16, 40, 64, 66, 70, 72, 80, 100, 200, kMemcgUnlimited};
constexpr std::size_t kArena = 1024;
constexpr unsigned kMaxAccountedOrder = 2;
constexpr unsigned kMaxAccountedPages = 24;  // live accounted pages (keeps page allocations certain)
constexpr int kMaxSubSteps = 6;

enum class Mode : std::uint8_t { kNolock, kAtomic, kKernel };
inline const char* mode_name(Mode m) {
  return m == Mode::kNolock ? "nolock" : m == Mode::kAtomic ? "atomic" : "kernel";
}
inline Gfp gfp_of(Mode m) { return m == Mode::kNolock ? Gfp{} : m == Mode::kAtomic ? kGfpAtomic : kGfpKernel; }
inline int path_of(Mode m) { return m == Mode::kNolock ? 1 : 0; }

enum class Breakage : std::uint8_t {
  kNone,
  kStockNotInUsage,  // the model forgets that stock pages count in usage
  kLimitOffByOne,    // the model lets a nolock charge reach max + 1
  kNolockReclaims,   // the model thinks a nolock charge at the limit runs a reclaim pass
  kNoSlack,          // the bound check forgets the set_max exception and wants usage < max
  kIrqBillsTask,     // the model thinks IRQ work charges the interrupted task's cgroup
};

struct Charge {
  int id;
  int cg;
  unsigned pages;
  int order;  // >= 0: an accounted page block of this order; -1: a plain charge
};

struct CgStats {
  std::int64_t charged = 0;
  std::uint64_t ok[2][3]{};
  std::uint64_t failed[2][3]{};
  std::uint64_t stock_hits = 0, limit_events = 0, notified = 0, reclaim_runs = 0;
};

struct Prediction {
  bool ok = true;
  int id = -1;  // the new charge
};

struct MemcgModel {
  Breakage broken = Breakage::kNone;
  std::vector<Charge> charges;
  int next_id = 0;
  std::array<std::uint64_t, kCgroups> max{kMemcgUnlimited, kMemcgUnlimited, kMemcgUnlimited, kMemcgUnlimited};
  std::array<std::uint64_t, kCgroups> at_set_max{};
  int stock_cg = -1;
  unsigned stock_pages = 0;
  // A batch surplus charged to the counters, on its way into the stock (an
  // NMI between the charge and the refill sees it in usage).
  int inflight_cg = -1;
  unsigned inflight_pages = 0;
  bool drain_requested = false;
  std::array<bool, kCgroups> queued{};
  std::array<CgStats, kCgroups> st{};
  std::uint64_t busy[3]{};
  std::uint64_t refill_uncharged = 0, stock_drains = 0, requested_drains = 0;
  std::uint64_t page_charge_failed[2][3]{};

  static bool in_subtree(int x, int level) {
    for (int c = x; c >= 0; c = kParent[c])
      if (c == level) return true;
    return false;
  }
  std::uint64_t charged_in(int level) const {
    std::uint64_t n = 0;
    for (const Charge& c : charges)
      if (in_subtree(c.cg, level)) n += c.pages;
    return n;
  }
  std::uint64_t usage(int level) const {
    std::uint64_t n = charged_in(level);
    if (stock_cg >= 0 && in_subtree(stock_cg, level)) n += stock_pages;
    if (inflight_cg >= 0 && in_subtree(inflight_cg, level)) n += inflight_pages;
    return n;
  }
  unsigned accounted_pages() const {
    unsigned n = 0;
    for (const Charge& c : charges)
      if (c.order >= 0) n += c.pages;
    return n;
  }
  const Charge* find(int id) const {
    for (const Charge& c : charges)
      if (c.id == id) return &c;
    return nullptr;
  }
  bool events_pending() const {
    for (bool q : queued)
      if (q) return true;
    return false;
  }

  // counter_try_charge(): the level that refuses, or -1.
  int try_charge(int cg, std::uint64_t n, bool nolock = false) const {
    for (int l = cg; l > 0; l = kParent[l]) {
      std::uint64_t limit = max[l];
      if (nolock && broken == Breakage::kLimitOffByOne && limit != kMemcgUnlimited) ++limit;
      std::uint64_t u = usage(l);
      if (u > limit || n > limit - u) return l;
    }
    return -1;
  }

  void drain_stock() {
    if (stock_pages != 0) ++stock_drains;
    stock_pages = 0;
    stock_cg = -1;
  }
  void limit_event(int level) {
    ++st[level].limit_events;
    queued[level] = true;
  }
  void flush() {
    for (int l = 0; l < kCgroups; ++l)
      if (queued[l]) {
        queued[l] = false;
        ++st[l].notified;
      }
  }
  void record(int cg, unsigned pages, int path, Ctx ctx) {
    st[cg].charged += pages;
    ++st[cg].ok[path][ctx_index(ctx)];
  }

  bool consume(int cg, unsigned pages, int path, Ctx ctx, bool stock_busy) {
    if (pages > kMemcgStockMax) return false;
    if (stock_busy) {
      ++busy[ctx_index(ctx)];
      return false;
    }
    if (drain_requested) {
      drain_requested = false;
      ++requested_drains;
      drain_stock();
    }
    if (stock_cg != cg || stock_pages < pages) return false;
    stock_pages -= pages;
    record(cg, pages, path, ctx);
    ++st[cg].stock_hits;
    return true;
  }

  void refill(int cg, unsigned pages) {
    if (drain_requested) {
      drain_requested = false;
      ++requested_drains;
      drain_stock();
    }
    if (stock_cg != cg) {
      drain_stock();
      stock_cg = cg;
    }
    unsigned total = stock_pages + pages;
    unsigned excess = total > kMemcgStockMax ? total - kMemcgStockMax : 0;
    stock_pages = total - excess;
    refill_uncharged += excess;
  }

  // drain_local_stock() (the stock is free unless `stock_busy`).
  void drain_local(Ctx ctx, bool stock_busy) {
    if (stock_busy) {
      drain_requested = true;
      ++busy[ctx_index(ctx)];
      return;
    }
    drain_requested = false;
    drain_stock();
  }

  // memcg_try_charge() up to the consume (for a spinning charge: the flush
  // before it). Separate so that an NMI at the stock can run in between.
  void charge_prologue(Mode mode) {
    if (mode != Mode::kNolock && events_pending()) flush();
  }

  // The rest of memcg_try_charge(). Return: charged.
  bool charge_body(int cg, Mode mode, unsigned pages, Ctx ctx, bool stock_busy) {
    int path = path_of(mode);
    if (consume(cg, pages, path, ctx, stock_busy)) return true;
    if (mode == Mode::kNolock) {
      int over = try_charge(cg, pages, true);
      if (over < 0) {
        record(cg, pages, path, ctx);
        return true;
      }
      limit_event(over);
      ++st[cg].failed[path][ctx_index(ctx)];
      if (broken == Breakage::kNolockReclaims) ++st[cg].reclaim_runs;  // "one reclaim pass first"
      return false;
    }
    unsigned batch = pages < kMemcgChargeBatch ? kMemcgChargeBatch : pages;
    bool met_limit = false;
    for (int attempt = 0;; ++attempt) {
      if (batch > pages) {
        if (try_charge(cg, batch) < 0) {
          record(cg, pages, path, ctx);
          refill(cg, batch - pages);
          return true;
        }
        batch = pages;
      }
      int over = try_charge(cg, pages);
      if (over < 0) {
        record(cg, pages, path, ctx);
        return true;
      }
      if (!met_limit) {
        met_limit = true;
        limit_event(over);
      }
      if (events_pending()) flush();
      if (mode != Mode::kKernel || attempt == kMemcgChargeRetries) break;
      drain_local(ctx, false);
      if (stock_cg >= 0 && in_subtree(stock_cg, over)) drain_local(ctx, false);
      ++st[cg].reclaim_runs;
    }
    ++st[cg].failed[path][ctx_index(ctx)];
    return false;
  }

  Prediction charge(int cg, Mode mode, unsigned pages, Ctx ctx, bool stock_busy, int order = -1) {
    charge_prologue(mode);
    Prediction p;
    p.ok = charge_body(cg, mode, pages, ctx, stock_busy);
    if (p.ok) {
      p.id = next_id++;
      charges.push_back(Charge{p.id, cg, pages, order});
    }
    return p;
  }

  void uncharge(int id) {
    const Charge* c = find(id);
    st[c->cg].charged -= c->pages;
    charges.erase(charges.begin() + (c - charges.data()));
  }

  // An accounted page allocation: the charge, then the page (which the
  // arena always has: see kMaxAccountedPages).
  Prediction alloc_accounted(int cg, Mode mode, unsigned order, Ctx ctx, bool stock_busy) {
    Prediction p = charge(cg, mode, 1u << order, ctx, stock_busy, static_cast<int>(order));
    if (!p.ok) ++page_charge_failed[path_of(mode)][ctx_index(ctx)];
    return p;
  }

  void set_max(int cg, std::uint64_t value) {
    max[cg] = value;
    at_set_max[cg] = usage(cg);
  }
};

// --- steps ------------------------------------------------------------------------

struct Step {
  enum Kind : std::uint8_t {
    kCharge,
    kUncharge,
    kDrainStock,
    kFlush,
    kSetMax,
    kAlloc,
    kFree,
    kIrq,
    kNmi
  } kind = kCharge;
  Mode mode = Mode::kNolock;
  int cg = 0;               // charge / set_max / alloc: the cgroup (alloc: its MemcgScope, -1 none)
  unsigned pages = 1;       // charge: pages; alloc: order
  std::uint64_t value = 0;  // set_max
  int id = -1;              // uncharge / free
  int task_scope = -1;      // irq / nmi: a MemcgScope the task opens around the interrupt
  std::vector<Step> nested;
};

void show_steps(std::ostream& os, const std::vector<Step>& steps);

void show_step(std::ostream& os, const Step& s) {
  switch (s.kind) {
    case Step::kCharge:
      os << "charge " << mode_name(s.mode) << " " << cg_name(s.cg) << " pages=" << s.pages;
      break;
    case Step::kUncharge:
      os << "uncharge #" << s.id;
      break;
    case Step::kDrainStock:
      os << "drain_local_stock";
      break;
    case Step::kFlush:
      os << "memcg_flush_events";
      break;
    case Step::kSetMax:
      os << "set_max " << cg_name(s.cg) << " ";
      if (s.value == kMemcgUnlimited)
        os << "unlimited";
      else
        os << s.value;
      break;
    case Step::kAlloc:
      os << "alloc_pages " << mode_name(s.mode) << "|account order=" << s.pages
         << " scope=" << (s.cg < 0 ? "none" : cg_name(s.cg));
      break;
    case Step::kFree:
      os << "free_pages" << (s.mode == Mode::kNolock ? "_nolock" : "") << " #" << s.id;
      break;
    case Step::kIrq:
    case Step::kNmi:
      os << (s.kind == Step::kIrq ? "irq" : "nmi");
      if (s.task_scope >= 0) os << "(task scope " << cg_name(s.task_scope) << ")";
      os << "{";
      show_steps(os, s.nested);
      os << "}";
      break;
  }
}

void show_steps(std::ostream& os, const std::vector<Step>& steps) {
  for (std::size_t i = 0; i < steps.size(); ++i) {
    if (i) os << "; ";
    show_step(os, steps[i]);
  }
}

// Whether `s` may run in `ctx` (stock_busy: an NMI while the task holds
// the stock).
bool step_valid(const MemcgModel& m, const Step& s, Ctx ctx, bool stock_busy) {
  switch (s.kind) {
    case Step::kCharge:
      if (s.cg < 0 || s.cg >= kCgroups || s.pages == 0) return false;
      if (s.mode == Mode::kKernel) return ctx == Ctx::kTask && !stock_busy;
      if (s.mode == Mode::kAtomic) return ctx != Ctx::kNmi && !stock_busy;
      return true;
    case Step::kUncharge: {
      const Charge* c = m.find(s.id);
      return c != nullptr && c->order < 0;
    }
    case Step::kDrainStock:
      return true;
    case Step::kFlush:
      return ctx != Ctx::kNmi && !stock_busy;
    case Step::kSetMax:
      return ctx == Ctx::kTask && !stock_busy && s.cg > 0 && s.cg < kCgroups;
    case Step::kAlloc:
      if (s.pages > kMaxAccountedOrder || m.accounted_pages() + (1u << s.pages) > kMaxAccountedPages) return false;
      if (s.mode == Mode::kKernel) return ctx == Ctx::kTask && !stock_busy;
      if (s.mode == Mode::kAtomic) return ctx == Ctx::kIrq && !stock_busy;
      return true;
    case Step::kFree: {
      const Charge* c = m.find(s.id);
      if (c == nullptr || c->order < 0) return false;
      return s.mode == Mode::kNolock || (ctx != Ctx::kNmi && !stock_busy);
    }
    case Step::kIrq:
      return ctx == Ctx::kTask && !stock_busy;
    case Step::kNmi:
      return ctx != Ctx::kNmi;
  }
  return false;
}

// Simulates `steps` in `ctx`; `scope_task` is the cgroup a task-level scope
// makes current (-1: none). Appends predictions in pre-order to `out`.
bool simulate(MemcgModel& m, const std::vector<Step>& steps, Ctx ctx, bool stock_busy, int task_scope,
              std::vector<Prediction>* out) {
  for (const Step& s : steps) {
    if (!step_valid(m, s, ctx, stock_busy)) return false;
    Prediction p;
    switch (s.kind) {
      case Step::kCharge:
        p = m.charge(s.cg, s.mode, s.pages, ctx, stock_busy);
        break;
      case Step::kUncharge:
        m.uncharge(s.id);
        break;
      case Step::kDrainStock:
        m.drain_local(ctx, stock_busy);
        break;
      case Step::kFlush:
        m.flush();
        break;
      case Step::kSetMax:
        m.set_max(s.cg, s.value);
        break;
      case Step::kAlloc: {
        // The cgroup charged: the step's own scope; else the task's scope in
        // task context; else the root (interrupt work bills no task).
        int cg = s.cg >= 0 ? s.cg : ctx == Ctx::kTask ? (task_scope >= 0 ? task_scope : 0) : 0;
        if (s.cg < 0 && ctx != Ctx::kTask && m.broken == Breakage::kIrqBillsTask && task_scope >= 0) cg = task_scope;
        p = m.alloc_accounted(cg, s.mode, s.pages, ctx, stock_busy);
        break;
      }
      case Step::kFree:
        m.uncharge(s.id);
        break;
      case Step::kIrq:
      case Step::kNmi:
        break;
    }
    if (out) out->push_back(p);
    if (s.kind == Step::kIrq || s.kind == Step::kNmi) {
      int scope = s.task_scope >= 0 ? s.task_scope : task_scope;
      if (!simulate(m, s.nested, s.kind == Step::kIrq ? Ctx::kIrq : Ctx::kNmi, false, scope, out)) return false;
    }
  }
  return true;
}

std::vector<Step> gen_steps(MemcgModel& m, Ctx ctx, bool stock_busy, int task_scope, int max) {
  std::vector<Step> steps;
  int n = uniform(0, max + 1);
  for (int i = 0; i < n; ++i) {
    Step s;
    int pick = uniform(0, 21);
    if (pick < 8) {
      s.kind = Step::kCharge;
      s.cg = uniform(0, kCgroups);
      int mode = uniform(0, 3);
      s.mode = mode == 0 ? Mode::kNolock : mode == 1 ? Mode::kAtomic : Mode::kKernel;
      if (ctx == Ctx::kNmi || stock_busy) s.mode = Mode::kNolock;
      if (ctx == Ctx::kIrq && s.mode == Mode::kKernel) s.mode = Mode::kAtomic;
      s.pages = uniform(0, 6) == 0 ? static_cast<unsigned>(uniform(60, 80)) : static_cast<unsigned>(uniform(1, 9));
    } else if (pick < 11) {
      std::vector<int> ids;
      for (const Charge& c : m.charges)
        if (c.order < 0) ids.push_back(c.id);
      if (ids.empty()) continue;
      s.kind = Step::kUncharge;
      s.id = ids[uniform<std::size_t>(0, ids.size())];
    } else if (pick < 12) {
      s.kind = Step::kDrainStock;
    } else if (pick < 13) {
      s.kind = Step::kFlush;
    } else if (pick < 14 || pick == 20) {
      if (ctx != Ctx::kTask || stock_busy) continue;
      s.kind = Step::kSetMax;
      s.cg = uniform(1, kCgroups);
      s.value = kMaxChoices[uniform<std::size_t>(0, std::size(kMaxChoices))];
    } else if (pick < 17) {
      s.kind = Step::kAlloc;
      s.cg = uniform(-1, kCgroups);
      s.pages = uniform(0u, kMaxAccountedOrder + 1);
      s.mode = coin() ? Mode::kNolock : ctx == Ctx::kTask ? Mode::kKernel : Mode::kAtomic;
      if (ctx == Ctx::kNmi || stock_busy) s.mode = Mode::kNolock;
    } else if (pick < 19) {
      std::vector<int> ids;
      for (const Charge& c : m.charges)
        if (c.order >= 0) ids.push_back(c.id);
      if (ids.empty()) continue;
      s.kind = Step::kFree;
      s.id = ids[uniform<std::size_t>(0, ids.size())];
      s.mode = coin() ? Mode::kNolock : Mode::kKernel;
    } else {
      if (ctx != Ctx::kIrq) continue;
      s.kind = Step::kNmi;
      MemcgModel trial = m;
      s.nested = gen_steps(trial, Ctx::kNmi, false, task_scope, max / 2);
    }
    MemcgModel trial = m;
    if (!simulate(trial, {s}, ctx, stock_busy, task_scope, nullptr)) continue;
    m = std::move(trial);
    steps.push_back(std::move(s));
  }
  return steps;
}

// --- the system under test ----------------------------------------------------------

struct Observed {
  bool ran = false;
  bool ok = false;
  Page* page = nullptr;
};

struct MemcgSut {
  MemcgSut() : a("props-a"), b("props-b", a), c("props-c") {
    drain_local_stock();
    memcg_flush_events();
    cg = {root_mem_cgroup(), &a, &b, &c};
    root_base = memcg_stats(*root_mem_cgroup());
    global_base = memcg_global_stats();
    root_usage_base = root_mem_cgroup()->usage();
  }
  // Gives back what the case still holds, so the cgroups can go.
  ~MemcgSut() {
    for (std::size_t id = 0; id < charge_cg.size(); ++id) {
      if (charge_cg[id] == kNone) continue;
      if (pages[id] != nullptr) {
        free_pages(pages[id], orders[id]);
      } else {
        memcg_uncharge(cg[charge_cg[id]], charge_pages[id]);
      }
    }
    drain_local_stock();
    memcg_flush_events();
  }

  void size_for(int ids) {
    std::size_t n = static_cast<std::size_t>(ids) + 1;
    if (charge_cg.size() < n) {
      charge_cg.resize(n, kNone);
      charge_pages.resize(n, 0);
      pages.resize(n, nullptr);
      orders.resize(n, 0);
    }
  }

  MemCgroup a, b, c;
  std::array<MemCgroup*, kCgroups> cg{};
  MemcgStats root_base;
  MemcgGlobalStats global_base;
  std::uint64_t root_usage_base = 0;
  // By charge id: which cgroup (kNone: not live; kPage: an accounted block,
  // which uncharges itself when freed), pages, the block if any.
  static constexpr int kNone = -1;
  static constexpr int kPage = -2;
  std::vector<int> charge_cg;
  std::vector<unsigned> charge_pages;
  std::vector<Page*> pages;
  std::vector<unsigned> orders;
};

struct Executor {
  MemcgSut& sut;
  const std::vector<Prediction>& expect;
  std::vector<Observed>& seen;
  std::size_t cursor = 0;
  bool stop = false;

  void keep(const Prediction& e, int cg, unsigned pages, Page* page, unsigned order) {
    if (!e.ok) return;  // (a surprise: the case fails; the charge is left to the arena's end)
    sut.charge_cg[e.id] = cg;
    sut.charge_pages[e.id] = pages;
    sut.pages[e.id] = page;
    sut.orders[e.id] = order;
  }

  void run(const std::vector<Step>& steps) {
    for (const Step& s : steps) {
      if (stop) return;
      std::size_t at = cursor++;
      Observed& o = seen[at];
      const Prediction& e = expect[at];
      o.ran = true;
      switch (s.kind) {
        case Step::kCharge:
          o.ok = memcg_try_charge(sut.cg[s.cg], gfp_of(s.mode), s.pages);
          if (o.ok != e.ok) {
            stop = true;
            if (o.ok) memcg_uncharge(sut.cg[s.cg], s.pages);  // keep the books straight
          } else {
            keep(e, s.cg, s.pages, nullptr, 0);
          }
          break;
        case Step::kUncharge:
          memcg_uncharge(sut.cg[sut.charge_cg[s.id]], sut.charge_pages[s.id]);
          sut.charge_cg[s.id] = MemcgSut::kNone;
          break;
        case Step::kDrainStock:
          drain_local_stock();
          break;
        case Step::kFlush:
          memcg_flush_events();
          break;
        case Step::kSetMax:
          sut.cg[s.cg]->set_max(s.value);
          break;
        case Step::kAlloc: {
          auto alloc = [&] {
            Gfp gfp = gfp_of(s.mode) | kGfpAccount;
            return s.mode == Mode::kNolock ? alloc_pages_nolock(kGfpAccount, s.pages) : alloc_pages(gfp, s.pages);
          };
          Page* p;
          if (s.cg >= 0) {
            MemcgScope scope(*sut.cg[s.cg]);
            p = alloc();
          } else {
            p = alloc();
          }
          o.ok = p != nullptr;
          o.page = p;
          if (o.ok != e.ok) {
            stop = true;
            if (p != nullptr) {
              if (s.mode == Mode::kNolock)
                free_pages_nolock(p, s.pages);
              else
                free_pages(p, s.pages);
            }
          } else if (p != nullptr) {
            // Which cgroup the page charged is checked through the stats.
            keep(e, MemcgSut::kPage, 1u << s.pages, p, s.pages);
          }
          break;
        }
        case Step::kFree:
          if (s.mode == Mode::kNolock) {
            free_pages_nolock(sut.pages[s.id], sut.orders[s.id]);
          } else {
            free_pages(sut.pages[s.id], sut.orders[s.id]);
          }
          sut.pages[s.id] = nullptr;
          sut.charge_cg[s.id] = MemcgSut::kNone;
          break;
        case Step::kIrq:
        case Step::kNmi: {
          auto body = [&] { run(s.nested); };
          auto raise = [&] {
            if (s.kind == Step::kIrq)
              testing::run_in_irq(body);
            else
              testing::run_in_nmi(body);
          };
          if (s.task_scope >= 0) {
            MemcgScope scope(*sut.cg[s.task_scope]);
            raise();
          } else {
            raise();
          }
          break;
        }
      }
    }
  }
};

void check_steps(const std::vector<Step>& steps, const std::vector<Prediction>& expect,
                 const std::vector<Observed>& seen, std::size_t& at, const char* where) {
  for (const Step& s : steps) {
    std::size_t i = at++;
    std::ostringstream what;
    show_step(what, s);
    if (!seen[i].ran) prop_fail("step '" + what.str() + "' in " + where + " did not run (an earlier surprise)");
    if ((s.kind == Step::kCharge || s.kind == Step::kAlloc) && seen[i].ok != expect[i].ok) {
      std::string kind = s.mode == Mode::kNolock ? "nolock charge" : "spinning charge";
      prop_fail("charge result: " + kind + " '" + what.str() + "' in " + where +
                (seen[i].ok ? " succeeded" : " failed") + " but the model says it " +
                (expect[i].ok ? "succeeds" : "fails"));
    }
    if (s.kind == Step::kIrq || s.kind == Step::kNmi)
      check_steps(s.nested, expect, seen, at, s.kind == Step::kIrq ? "irq" : "nmi");
  }
}

void check_state(const MemcgModel& m, const MemcgSut& sut, const std::string& after) {
  // Usage at every level, and the bound.
  for (int l = 0; l < kCgroups; ++l) {
    std::uint64_t expected = m.usage(l);
    if (m.broken == Breakage::kStockNotInUsage) expected = m.charged_in(l);
    std::uint64_t usage = sut.cg[l]->usage() - (l == 0 ? sut.root_usage_base : 0);
    if (usage != expected)
      prop_fail("usage of " + std::string(cg_name(l)) + " is " + std::to_string(usage) + ", the model says " +
                std::to_string(m.charged_in(l)) + " charged + " + std::to_string(m.usage(l) - m.charged_in(l)) +
                " in the stock after " + after);
    if (l > 0) {
      std::uint64_t max = sut.cg[l]->max();
      bool within = m.broken == Breakage::kNoSlack ? usage < max || max == kMemcgUnlimited
                                                   : usage <= max || usage <= m.at_set_max[l];
      if (!within)
        prop_fail("above max: usage of " + std::string(cg_name(l)) + " is " + std::to_string(usage) + ", max " +
                  std::to_string(max) + " after " + after);
    }
  }
  // The stock.
  MemcgStockView v = memcg_stock(0);
  const MemCgroup* want = m.stock_cg >= 0 ? sut.cg[m.stock_cg] : nullptr;
  if (v.cached != want || v.pages != m.stock_pages || v.drain_requested != m.drain_requested)
    prop_fail("stock: caches " + std::string(v.cached ? v.cached->name() : "nothing") + " with " +
              std::to_string(v.pages) + " pages (drain requested " + std::to_string(v.drain_requested) +
              "), the model says " + (m.stock_cg >= 0 ? cg_name(m.stock_cg) : "nothing") + " with " +
              std::to_string(m.stock_pages) + " after " + after);
  // Statistics.
  for (int l = 0; l < kCgroups; ++l) {
    MemcgStats s = memcg_stats(*sut.cg[l]);
    const CgStats& e = m.st[l];
    MemcgStats base = l == 0 ? sut.root_base : MemcgStats{};
    std::string who = std::string(cg_name(l)) + " after " + after;
    if (s.charged - base.charged != e.charged)
      prop_fail("charged: " + who + ": " + std::to_string(s.charged - base.charged) + ", the model says " +
                std::to_string(e.charged));
    for (int p = 0; p < 2; ++p)
      for (int c = 0; c < 3; ++c) {
        std::string slot = std::string(p ? "nolock" : "spinning") + "/" + ctx_name(static_cast<Ctx>(c));
        if (s.charges[p][c] - base.charges[p][c] != e.ok[p][c] ||
            s.charge_failures[p][c] - base.charge_failures[p][c] != e.failed[p][c])
          prop_fail("charges ok/failed " + slot + " of " + who + ": " +
                    std::to_string(s.charges[p][c] - base.charges[p][c]) + "/" +
                    std::to_string(s.charge_failures[p][c] - base.charge_failures[p][c]) + ", the model says " +
                    std::to_string(e.ok[p][c]) + "/" + std::to_string(e.failed[p][c]));
      }
    if (s.reclaim_runs - base.reclaim_runs != e.reclaim_runs)
      prop_fail("reclaim_runs of " + who + ": " + std::to_string(s.reclaim_runs - base.reclaim_runs) +
                ", the model says " + std::to_string(e.reclaim_runs));
    if (s.stock_hits - base.stock_hits != e.stock_hits)
      prop_fail("stock_hits of " + who + ": " + std::to_string(s.stock_hits - base.stock_hits) + ", the model says " +
                std::to_string(e.stock_hits));
    if (s.limit_events - base.limit_events != e.limit_events || s.events_notified - base.events_notified != e.notified)
      prop_fail("events of " + who + ": limit events/notified " + std::to_string(s.limit_events - base.limit_events) +
                "/" + std::to_string(s.events_notified - base.events_notified) + ", the model says " +
                std::to_string(e.limit_events) + "/" + std::to_string(e.notified));
  }
  if (memcg_events_pending() != m.events_pending())
    prop_fail("events pending: " + std::to_string(memcg_events_pending()) + ", the model says " +
              std::to_string(m.events_pending()) + " after " + after);
  MemcgGlobalStats g = memcg_global_stats();
  const MemcgGlobalStats& gb = sut.global_base;
  for (int c = 0; c < 3; ++c)
    if (g.stock_busy[c] - gb.stock_busy[c] != m.busy[c])
      prop_fail("stock_busy in " + std::string(ctx_name(static_cast<Ctx>(c))) + ": " +
                std::to_string(g.stock_busy[c] - gb.stock_busy[c]) + ", the model says " + std::to_string(m.busy[c]));
  if (g.refill_uncharged - gb.refill_uncharged != m.refill_uncharged ||
      g.stock_drains - gb.stock_drains != m.stock_drains ||
      g.requested_drains - gb.requested_drains != m.requested_drains || g.drain_requests != gb.drain_requests)
    prop_fail("stock statistics: refill_uncharged/drains/requested drains " +
              std::to_string(g.refill_uncharged - gb.refill_uncharged) + "/" +
              std::to_string(g.stock_drains - gb.stock_drains) + "/" +
              std::to_string(g.requested_drains - gb.requested_drains) + ", the model says " +
              std::to_string(m.refill_uncharged) + "/" + std::to_string(m.stock_drains) + "/" +
              std::to_string(m.requested_drains) + " after " + after);
  PageStats ps = page_stats();
  for (int p = 0; p < 2; ++p)
    for (int c = 0; c < 3; ++c)
      if (ps.charge_failed[p][c] != m.page_charge_failed[p][c])
        prop_fail("page charge_failed " + std::to_string(p) + "/" + std::to_string(c) + ": " +
                  std::to_string(ps.charge_failed[p][c]) + ", the model says " +
                  std::to_string(m.page_charge_failed[p][c]));
  MemcgInvariantResult inv = memcg_check_invariants();
  if (!inv.ok) prop_fail("memcg_check_invariants: " + inv.what + " after " + after);
}

// --- commands ------------------------------------------------------------------------

using MemcgCmd = rc::state::Command<MemcgModel, MemcgSut>;

class RunSteps : public MemcgCmd {
 public:
  explicit RunSteps(std::vector<Step> steps) : steps_(std::move(steps)) {}
  void checkPreconditions(const MemcgModel& s0) const override {
    MemcgModel m = s0;
    RC_PRE(simulate(m, steps_, Ctx::kTask, false, -1, nullptr));
  }
  void apply(MemcgModel& s0) const override { simulate(s0, steps_, Ctx::kTask, false, -1, nullptr); }
  void run(const MemcgModel& s0, MemcgSut& sut) const override {
    MemcgModel m = s0;
    std::vector<Prediction> expect;
    simulate(m, steps_, Ctx::kTask, false, -1, &expect);
    sut.size_for(m.next_id);
    std::vector<Observed> seen(expect.size());
    Executor ex{sut, expect, seen};
    ex.run(steps_);
    std::size_t at = 0;
    check_steps(steps_, expect, seen, at, "task");
    std::ostringstream after;
    show(after);
    check_state(m, sut, "'" + after.str() + "'");
  }
  void show(std::ostream& os) const override { show_steps(os, steps_); }

 private:
  std::vector<Step> steps_;
};

// An NMI while the task frame is inside the stock (site kStockLocked): a
// spinning charge at its consume, or drain_local_stock.
class NmiInStock : public MemcgCmd {
 public:
  NmiInStock(Step task_op, std::vector<Step> nmi) : task_(std::move(task_op)), nmi_(std::move(nmi)) {}

  bool simulate_all(MemcgModel& m, std::vector<Prediction>* nmi_out, Prediction* task_out) const {
    if (task_.kind == Step::kCharge) {
      if (task_.mode == Mode::kNolock || task_.pages > kMemcgStockMax || !step_valid(m, task_, Ctx::kTask, false))
        return false;
      m.charge_prologue(task_.mode);
      if (!simulate(m, nmi_, Ctx::kNmi, true, -1, nmi_out)) return false;
      Prediction p;
      p.ok = m.charge_body(task_.cg, task_.mode, task_.pages, Ctx::kTask, false);
      if (p.ok) {
        p.id = m.next_id++;
        m.charges.push_back(Charge{p.id, task_.cg, task_.pages, -1});
      }
      if (task_out) *task_out = p;
      return true;
    }
    if (task_.kind != Step::kDrainStock) return false;
    if (!simulate(m, nmi_, Ctx::kNmi, true, -1, nmi_out)) return false;
    m.drain_local(Ctx::kTask, false);
    return true;
  }

  void checkPreconditions(const MemcgModel& s0) const override {
    MemcgModel m = s0;
    RC_PRE(simulate_all(m, nullptr, nullptr));
  }
  void apply(MemcgModel& s0) const override { simulate_all(s0, nullptr, nullptr); }

  using Work = NestedSteps<Executor, Step>;

  void run(const MemcgModel& s0, MemcgSut& sut) const override {
    MemcgModel m = s0;
    std::vector<Prediction> expect;
    Prediction task_expect;
    simulate_all(m, &expect, &task_expect);
    sut.size_for(m.next_id);
    std::vector<Observed> seen(expect.size());
    Executor ex{sut, expect, seen};
    Work work{&ex, &nmi_};
    InterruptAtSite::arm(Site::kStockLocked, &Work::run_in_interrupt, &work);
    bool ok = true;
    if (task_.kind == Step::kCharge) {
      ok = memcg_try_charge(sut.cg[task_.cg], gfp_of(task_.mode), task_.pages);
      if (ok && task_expect.ok) {
        sut.charge_cg[task_expect.id] = task_.cg;
        sut.charge_pages[task_expect.id] = task_.pages;
      } else if (ok) {
        memcg_uncharge(sut.cg[task_.cg], task_.pages);
      }
    } else {
      drain_local_stock();
    }
    bool fired = InterruptAtSite::disarm();
    std::ostringstream what;
    show(what);
    if (!fired) prop_fail("the NMI at the stock did not run: " + what.str());
    std::size_t at = 0;
    check_steps(nmi_, expect, seen, at, "nmi in the stock");
    if (task_.kind == Step::kCharge && ok != task_expect.ok)
      prop_fail("charge result: spinning charge of the interrupted task " + what.str() +
                (ok ? " succeeded" : " failed") + " but the model says otherwise");
    check_state(m, sut, "'" + what.str() + "'");
  }

  void show(std::ostream& os) const override {
    os << "while the task holds the stock in '";
    show_step(os, task_);
    os << "': nmi{";
    show_steps(os, nmi_);
    os << "}";
  }

 private:
  Step task_;
  std::vector<Step> nmi_;
};

// An NMI inside a charge, at one of two points the model can place
// exactly:
//  - kRefill: the second kStockLocked of a spinning charge without reclaim
//    (kGfpAtomic), the refill of the stock with the batch surplus, which is
//    already charged to the counters but not yet in the stock;
//  - kEventPush: kEventPush of a nolock charge that the limit refused,
//    between reading the pending-event list's head and the CAS (the NMI's
//    own refused charges push too, so the task's CAS must retry).
// When the model says the task does not get there (a stock hit, a batch
// that does not fit, an event already pending), the NMI runs right after
// the task's charge, and the hook must not have fired.
class NmiInCharge : public MemcgCmd {
 public:
  enum class Point : std::uint8_t { kRefill, kEventPush };
  NmiInCharge(Point point, Step task_op, std::vector<Step> nmi)
      : point_(point), task_(std::move(task_op)), nmi_(std::move(nmi)) {}

  // Return: false when not valid on `m`; *fires: whether the site is reached.
  bool simulate_all(MemcgModel& m, std::vector<Prediction>* nmi_out, Prediction* task_out, bool* fires) const {
    if (task_.kind != Step::kCharge || !step_valid(m, task_, Ctx::kTask, false)) return false;
    Prediction p;
    *fires = false;
    if (point_ == Point::kRefill) {
      if (task_.mode != Mode::kAtomic || task_.pages >= kMemcgChargeBatch) return false;
      m.charge_prologue(task_.mode);
      MemcgModel probe = m;
      bool hit = probe.consume(task_.cg, task_.pages, 0, Ctx::kTask, false);
      if (!hit && m.try_charge(task_.cg, kMemcgChargeBatch) < 0) {
        // consume() missed, the batch fits: charge it, NMI, then refill.
        m.consume(task_.cg, task_.pages, 0, Ctx::kTask, false);
        m.record(task_.cg, task_.pages, 0, Ctx::kTask);
        p.ok = true;
        m.inflight_cg = task_.cg;  // the whole batch: the task's pages join `charges` below
        m.inflight_pages = kMemcgChargeBatch;
        *fires = true;
        if (!simulate(m, nmi_, Ctx::kNmi, true, -1, nmi_out)) return false;
        m.inflight_cg = -1;
        m.inflight_pages = 0;
        m.refill(task_.cg, kMemcgChargeBatch - task_.pages);
      } else {
        p.ok = m.charge_body(task_.cg, task_.mode, task_.pages, Ctx::kTask, false);
      }
    } else {
      if (task_.mode != Mode::kNolock) return false;
      auto queued = m.queued;
      p.ok = m.charge_body(task_.cg, task_.mode, task_.pages, Ctx::kTask, false);
      *fires = m.queued != queued;  // a refused charge queued a level that was not pending
    }
    if (p.ok) {
      p.id = m.next_id++;
      m.charges.push_back(Charge{p.id, task_.cg, task_.pages, -1});
    }
    // At the event push the task's charge has done everything the model
    // sees (it was refused, its level is queued): the NMI comes after it.
    bool after = point_ == Point::kEventPush || !*fires;
    if (after && !simulate(m, nmi_, Ctx::kNmi, false, -1, nmi_out)) return false;
    if (task_out) *task_out = p;
    return true;
  }

  void checkPreconditions(const MemcgModel& s0) const override {
    MemcgModel m = s0;
    bool fires;
    RC_PRE(simulate_all(m, nullptr, nullptr, &fires));
  }
  void apply(MemcgModel& s0) const override {
    bool fires;
    simulate_all(s0, nullptr, nullptr, &fires);
  }

  using Work = NestedSteps<Executor, Step>;

  void run(const MemcgModel& s0, MemcgSut& sut) const override {
    MemcgModel m = s0;
    std::vector<Prediction> expect;
    Prediction task_expect;
    bool fires = false;
    simulate_all(m, &expect, &task_expect, &fires);
    sut.size_for(m.next_id);
    std::vector<Observed> seen(expect.size());
    Executor ex{sut, expect, seen};
    Work work{&ex, &nmi_};
    if (point_ == Point::kRefill) {
      InterruptAtSite::arm(Site::kStockLocked, &Work::run_in_interrupt, &work, InterruptKind::kNmi, 2);
    } else {
      InterruptAtSite::arm(Site::kEventPush, &Work::run_in_interrupt, &work);
    }
    bool ok = memcg_try_charge(sut.cg[task_.cg], gfp_of(task_.mode), task_.pages);
    bool fired = InterruptAtSite::disarm();
    if (ok && task_expect.ok) {
      sut.charge_cg[task_expect.id] = task_.cg;
      sut.charge_pages[task_expect.id] = task_.pages;
    } else if (ok) {
      memcg_uncharge(sut.cg[task_.cg], task_.pages);
    }
    if (!fired) testing::run_in_nmi([&] { ex.run(nmi_); });
    std::ostringstream what;
    show(what);
    if (fired != fires)
      prop_fail(std::string("the NMI at ") + (point_ == Point::kRefill ? "the stock refill" : "the event push") +
                (fired ? " ran" : " did not run") + " but the model says the charge " +
                (fires ? "gets there" : "does not get there") + ": " + what.str());
    if (ok != task_expect.ok)
      prop_fail(std::string("charge result: ") + (task_.mode == Mode::kNolock ? "nolock" : "spinning") +
                " charge of the interrupted task " + what.str() + (ok ? " succeeded" : " failed") +
                " but the model says otherwise");
    std::size_t at = 0;
    check_steps(nmi_, expect, seen, at, fired ? "nmi in the charge" : "nmi after the charge");
    check_state(m, sut, "'" + what.str() + "'");
  }

  void show(std::ostream& os) const override {
    os << "at " << (point_ == Point::kRefill ? "the stock refill" : "the event push") << " of '";
    show_step(os, task_);
    os << "' (or right after): nmi{";
    show_steps(os, nmi_);
    os << "}";
  }

 private:
  Point point_;
  Step task_;
  std::vector<Step> nmi_;
};

rc::Gen<std::shared_ptr<const MemcgCmd>> gen_command(const MemcgModel& model) {
  return rc::gen::exec([model]() -> std::shared_ptr<const MemcgCmd> {
    MemcgModel m = model;
    int pick = uniform(0, 10);
    if (pick < 5) {
      std::vector<Step> steps;
      for (int tries = 0; tries < 20 && steps.empty(); ++tries) steps = gen_steps(m, Ctx::kTask, false, -1, 1);
      RC_PRE(!steps.empty());
      return std::make_shared<RunSteps>(std::move(steps));
    }
    if (pick < 8) {
      Step s;
      s.kind = coin() ? Step::kIrq : Step::kNmi;
      s.task_scope = uniform(-1, kCgroups);
      MemcgModel trial = m;
      s.nested = gen_steps(trial, s.kind == Step::kIrq ? Ctx::kIrq : Ctx::kNmi, false, s.task_scope, kMaxSubSteps);
      return std::make_shared<RunSteps>(std::vector<Step>{s});
    }
    if (coin()) {  // an NMI inside a charge: at its refill or its event push
      auto point = coin() ? NmiInCharge::Point::kRefill : NmiInCharge::Point::kEventPush;
      Step task;
      task.kind = Step::kCharge;
      task.cg = uniform(1, kCgroups);
      task.mode = point == NmiInCharge::Point::kRefill ? Mode::kAtomic : Mode::kNolock;
      task.pages = static_cast<unsigned>(uniform(1, 9));
      if (point == NmiInCharge::Point::kEventPush) {
        // Mostly a charge the limit refuses at a level with nothing pending,
        // so that the task gets to the push.
        std::vector<int> refused;
        for (int cg = 1; cg < kCgroups; ++cg) {
          int over = m.try_charge(cg, task.pages, true);
          if (over >= 0 && !m.queued[over]) refused.push_back(cg);
        }
        if (!refused.empty() && uniform(0, 4) != 0) task.cg = refused[uniform<std::size_t>(0, refused.size())];
      }
      MemcgModel at_nmi = m;
      std::vector<Prediction> ignored;
      bool fires = false;
      NmiInCharge probe(point, task, {});
      RC_PRE(probe.simulate_all(at_nmi, &ignored, nullptr, &fires));
      // The NMI's steps from the model as it will be when the NMI runs: for
      // a refill, before it (the stock busy, the surplus in flight).
      MemcgModel gen_model = m;
      bool busy = false;
      if (fires && point == NmiInCharge::Point::kRefill) {
        gen_model.charge_prologue(task.mode);
        gen_model.consume(task.cg, task.pages, 0, Ctx::kTask, false);
        gen_model.record(task.cg, task.pages, 0, Ctx::kTask);
        gen_model.inflight_cg = task.cg;
        gen_model.inflight_pages = kMemcgChargeBatch;
        busy = true;
      } else {
        gen_model = at_nmi;
      }
      std::vector<Step> nmi = gen_steps(gen_model, Ctx::kNmi, busy, -1, kMaxSubSteps);
      return std::make_shared<NmiInCharge>(point, task, std::move(nmi));
    }
    Step task;
    if (coin()) {
      task.kind = Step::kCharge;
      task.cg = uniform(0, kCgroups);
      task.mode = coin() ? Mode::kAtomic : Mode::kKernel;
      task.pages = static_cast<unsigned>(uniform(1, 9));
    } else {
      task.kind = Step::kDrainStock;
    }
    MemcgModel at_nmi = m;
    if (task.kind == Step::kCharge) at_nmi.charge_prologue(task.mode);
    std::vector<Step> nmi = gen_steps(at_nmi, Ctx::kNmi, true, -1, kMaxSubSteps);
    return std::make_shared<NmiInStock>(task, std::move(nmi));
  });
}

void memcg_state_machine(Breakage broken) {
  PageWorld world(kArena);
  MemcgModel m0;
  m0.broken = broken;
  const auto commands = *rc::gen::scale(0.5, rc::state::gen::commands(m0, &gen_command));
  MemcgSut sut;
  rc::state::runAll(commands, m0, sut);
}

}  // namespace

RC_GTEST_PROP(MemcgProps, ChargingMatchesModel, ()) { memcg_state_machine(Breakage::kNone); }

TEST(MemcgProps, UsageIncludesStock_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("memcg/stock-usage", [] { memcg_state_machine(Breakage::kStockNotInUsage); }),
                       "usage of|charges ok/failed|charge result");
}

TEST(MemcgProps, NolockFailsExactlyAtLimit_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("memcg/limit", [] { memcg_state_machine(Breakage::kLimitOffByOne); }),
                       "charge result: nolock charge|the NMI at the event push|limit events");
}

TEST(MemcgProps, NolockNeverReclaims_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("memcg/nolock-reclaims", [] { memcg_state_machine(Breakage::kNolockReclaims); }),
                       "reclaim_runs");
}

TEST(MemcgProps, NeverAboveMax_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("memcg/no-slack", [] { memcg_state_machine(Breakage::kNoSlack); }), "above max");
}

TEST(MemcgProps, InterruptBillsRootNotTask_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("memcg/irq-bills-task", [] { memcg_state_machine(Breakage::kIrqBillsTask); }),
                       "usage of|charges ok/failed|charge result");
}

}  // namespace anyctx::props
