// props/page_props.cc — the page allocator against a reference model.
//
// The model knows, per order, how many blocks sit on CPU 0's pcp lists and
// on the deferred stack (the refill size; the trim above `high`, which a
// nolock free parks on the stack; a nolock refill taking its order's parked
// blocks first, within `high`, the rest to the buddy lists unless zone.lock
// is held — all simple enough to model exactly), which blocks are live with
// which reference counts, the fault plan's call counter, and the statistics.
// It does not know addresses: the buddy lists are the allocator's business.
// That is enough to predict every result exactly, because the arena is big
// enough that an allocation the model asks for always finds memory: the
// pages not on the buddy lists (live + pcp) stay below arena >> order, so
// by pigeonhole some aligned 2^order group is wholly free, and a fully
// coalesced zone has it as (part of) one free block (see alloc_safe()).
//
// Commands: alloc / free on both paths (orders 0..3 nolock, 0..4 spinning;
// 4 bypasses pcp), get_page / put_page, drain_local / drain_all, fault
// plans, interrupts at an op boundary (run_in_irq / run_in_nmi running a
// sub-list of nolock ops; an IRQ may also use the spinning path and nest an
// NMI), and interrupts delivered from the allocator's own sites while the
// task frame holds zone.lock, pcp.lock or both (an NMI), or only pcp.lock
// (an IRQ too: pcp.lock does not mask IRQs).
//
// Postconditions after every command: each step's result as predicted (an
// allocation succeeds or fails exactly when the model says; nolock blocks
// are zeroed; refcounts), no overlap of live blocks, their contents intact,
// pcp count, conservation (zone_free_pages + pcp + deferred + live ==
// arena), the deferred stack as the model says, statistics and fault counters,
// check_invariants(). After the sequence: everything freed and drained, the
// zone is one free block per 1024 pages again.
#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "props_common.h"

namespace anyctx::props {
namespace {

constexpr std::size_t kArena = 1024;
constexpr int kBatch = 8;
constexpr int kHigh = 24;
constexpr unsigned kMaxSpinOrder = 4;  // 4 bypasses the pcp lists
constexpr int kMaxRefs = 3;
constexpr int kMaxSubSteps = 6;

enum class Path : std::uint8_t { kSpinning = 0, kNolock = 1 };
inline const char* path_name(Path p) { return p == Path::kSpinning ? "spinning" : "nolock"; }

// Locks that the interrupted task frame holds while an injected NMI runs.
enum class Held : std::uint8_t { kNone, kZone, kPcp, kBoth };
inline const char* held_name(Held h) {
  switch (h) {
    case Held::kNone:
      return "nothing";
    case Held::kZone:
      return "zone.lock";
    case Held::kPcp:
      return "pcp.lock";
    case Held::kBoth:
      return "pcp.lock+zone.lock";
  }
  return "?";
}
inline bool pcp_held(Held h) { return h == Held::kPcp || h == Held::kBoth; }
inline bool zone_held(Held h) { return h == Held::kZone || h == Held::kBoth; }

// The deliberate mistakes of the *_CatchesBrokenModel tests.
enum class Breakage : std::uint8_t {
  kNone,
  kConservationOffByOne,  // the model counts one page too many as live
  kNoPcpTrim,             // the model forgets the free's trim above `high`
  kHeldZoneIgnored,       // the model thinks a nolock refill works while zone.lock is held
  kFaultContextIgnored,   // the model's fault plan counts calls from every context
  kGetPageNotCounted,     // the model forgets that get_page adds a reference
  kKeepFreedRanges,       // the overlap oracle is fed ranges of freed blocks as if live
  kLeakAtTeardown,        // the final free-everything pass forgets one block
  kHolderLeavesPushes,    // the model thinks what an NMI pushes while the task holds zone.lock waits for the next holder
  kParkedNotTaken,        // the model thinks a nolock refill ignores parked blocks and goes to zone.lock
};

struct Block {
  int id;
  unsigned order;
  int refs;
};

struct FaultModel {
  bool active = false;
  std::uint64_t nth = 0;
  bool always = false;  // probability 100% for the weighted orders
  std::array<bool, kMaxOrder + 1> weighted{};
  std::uint8_t contexts = kAllContexts;
  std::uint8_t paths = kAllPaths;
  std::uint64_t calls = 0;
  std::uint64_t fired = 0;
};

// One modelled step, as run() plans it: where and what, and the prediction.
struct Prediction {
  bool ok = false;  // alloc: a block comes back
  int id = -1;      // the block (alloc: its new id)
  int refs_after = 0;
};

struct PageModel {
  Breakage broken = Breakage::kNone;
  std::vector<Block> live;  // in id order
  int next_id = 0;
  std::array<int, kPcpMaxOrder + 1> pcp{};  // blocks per order on CPU 0's lists
  FaultModel fault;
  std::uint64_t alloc_ok[2][3]{};
  std::uint64_t alloc_failed[2][3]{};
  std::uint64_t freed[2][3]{};
  std::uint64_t deferred_pushed = 0;   // blocks
  std::uint64_t deferred_drained = 0;  // blocks
  std::uint64_t deferred_taken = 0;    // blocks
  std::array<int, kMaxOrder + 1> deferred{};  // blocks per order on the stack now
  std::size_t deferred_pages = 0;

  int pcp_pages() const {
    int n = 0;
    for (unsigned o = 0; o <= kPcpMaxOrder; ++o) n += pcp[o] << o;
    return n;
  }
  int deferred_blocks() const {
    int n = 0;
    for (int b : deferred) n += b;
    return n;
  }
  void defer(unsigned order) {
    ++deferred[order];
    deferred_pages += std::size_t{1} << order;
  }
  std::size_t live_pages() const {
    std::size_t n = 0;
    for (const Block& b : live) n += std::size_t{1} << b.order;
    return n;
  }
  // Pages off the buddy lists.
  std::size_t pressure() const { return live_pages() + static_cast<std::size_t>(pcp_pages()) + deferred_pages; }
  // An allocation of `order` (with a refill of up to a batch) is sure to
  // find memory: fewer pages off the buddy lists than aligned groups.
  bool alloc_safe(unsigned order) const { return pressure() + kBatch + (1u << order) < (kArena >> order); }

  const Block* find(int id) const {
    for (const Block& b : live)
      if (b.id == id) return &b;
    return nullptr;
  }
  Block* find(int id) {
    for (Block& b : live)
      if (b.id == id) return &b;
    return nullptr;
  }
  void remove(int id) {
    live.erase(std::remove_if(live.begin(), live.end(), [&](const Block& b) { return b.id == id; }), live.end());
  }

  // fault_should_fail(): counts a matching call, says whether it fails.
  bool fault_fires(Path path, Ctx ctx, unsigned order) {
    if (!fault.active) return false;
    bool ctx_ok = (fault.contexts & (1u << ctx_index(ctx))) != 0 || broken == Breakage::kFaultContextIgnored;
    if (!ctx_ok || (fault.paths & (1u << static_cast<unsigned>(path))) == 0) return false;
    std::uint64_t n = ++fault.calls;
    bool fail = n == fault.nth || (fault.always && fault.weighted[order]);
    if (fail) ++fault.fired;
    return fail;
  }

  // pcp_free_bulk_locked() and pcp_park_locked(): at least `pages` pages,
  // one block per order in turn, starting at order 0; `to_stack` parks them.
  void bulk_free(int pages, bool to_stack = false) {
    int moved = 0;
    unsigned o = 0;
    while (moved < pages && pcp_pages() > 0) {
      unsigned list = o;
      o = (o + 1) % (kPcpMaxOrder + 1);
      if (pcp[list] == 0) continue;
      --pcp[list];
      moved += 1 << list;
      if (to_stack) {
        defer(list);
        ++deferred_pushed;
      }
    }
  }

  // A path took zone.lock (spinning, or a nolock try that succeeded): it
  // empties the deferred stack before it releases it.
  void zone_unlocked() {
    deferred_drained += static_cast<std::uint64_t>(deferred_blocks());
    deferred.fill(0);
    deferred_pages = 0;
  }

  // A nolock free above `high` parks a batch; beyond twice `high` on the
  // stack it drains, unless the interrupted frame holds zone.lock (that
  // holder drains at its unlock: the task op that follows in the model).
  void park(int pages, Held held) {
    bulk_free(pages, true);
    if (deferred_pages > static_cast<std::size_t>(2 * kHigh) && !zone_held(held)) zone_unlocked();
  }

  // A nolock refill of `order` with parked blocks of that order: keeps them
  // while the pcp stays within `high` (one at least); the rest of the stack
  // goes to the buddy lists, or back when zone.lock is held.
  void take_parked(unsigned order, Held held) {
    int room = (kHigh - pcp_pages()) >> order;
    int keep = std::min(deferred[order], std::max(1, room));
    deferred[order] -= keep;
    deferred_pages -= static_cast<std::size_t>(keep) << order;
    deferred_taken += static_cast<std::uint64_t>(keep);
    pcp[order] += keep - 1;  // one goes out
    if (!zone_held(held)) zone_unlocked();
  }

  // The block is gone from `live`; where do its pages go?
  void return_block(unsigned order, Path path, Held held) {
    if (order <= kPcpMaxOrder && !pcp_held(held)) {
      ++pcp[order];
      int over = pcp_pages() - kHigh;
      // Above high: a batch goes back; a nolock free parks it.
      if (over > 0 && broken != Breakage::kNoPcpTrim) {
        if (path == Path::kNolock) {
          park(over + kBatch, held);
        } else {
          zone_unlocked();
          bulk_free(over + kBatch);
        }
      }
    } else if (!zone_held(held)) {
      zone_unlocked();  // to the buddy lists
    } else {
      // zone.lock busy: onto the deferred stack, until the holder (the
      // interrupted task frame) empties it before its release.
      ++deferred_pushed;
      defer(order);
    }
  }

  // The allocation after its fault check.
  Prediction alloc_after_fault(Path path, unsigned order, Ctx ctx, Held held) {
    bool ok;
    if (order <= kPcpMaxOrder && !pcp_held(held)) {
      if (pcp[order] > 0) {
        --pcp[order];
        ok = true;
      } else if (path == Path::kNolock && deferred[order] > 0 && broken != Breakage::kParkedNotTaken) {
        take_parked(order, held);
        ok = true;
      } else if (zone_held(held) && broken != Breakage::kHeldZoneIgnored) {
        ok = false;  // the refill finds zone.lock busy
      } else {
        zone_unlocked();
        int blocks = std::max(1, kBatch >> order);
        pcp[order] += blocks - 1;
        ok = true;
      }
    } else {
      ok = !zone_held(held);  // straight to the buddy lists
      if (ok) zone_unlocked();
    }
    int p = static_cast<int>(path), c = ctx_index(ctx);
    Prediction r;
    if (!ok) {
      ++alloc_failed[p][c];
      return r;
    }
    ++alloc_ok[p][c];
    r.ok = true;
    r.id = next_id++;
    r.refs_after = 1;
    live.push_back(Block{r.id, order, 1});
    return r;
  }

  Prediction alloc(Path path, unsigned order, Ctx ctx, Held held) {
    if (fault_fires(path, ctx, order)) {
      ++alloc_failed[static_cast<int>(path)][ctx_index(ctx)];
      return Prediction{};
    }
    return alloc_after_fault(path, order, ctx, held);
  }

  // free_pages_prepare() and the statistic: the block leaves `live`.
  unsigned take_for_free(int id, Path path, Ctx ctx) {
    unsigned order = find(id)->order;
    remove(id);
    ++freed[static_cast<int>(path)][ctx_index(ctx)];
    return order;
  }

  Prediction free(int id, Path path, Ctx ctx, Held held) {
    unsigned order = take_for_free(id, path, ctx);
    return_block(order, path, held);
    return Prediction{true, id, 0};
  }

  Prediction get(int id) {
    Block* b = find(id);
    if (broken != Breakage::kGetPageNotCounted) ++b->refs;
    return Prediction{true, id, b->refs};
  }

  Prediction put(int id, Ctx ctx, Held held) {
    Block* b = find(id);
    if (--b->refs > 0) return Prediction{true, id, b->refs};
    free(id, Path::kSpinning, ctx, held);
    return Prediction{true, id, 0};
  }

  // drain_local_pages(): a bulk free under zone.lock when there is anything.
  void drain_local() {
    if (pcp_pages() > 0) zone_unlocked();
    pcp.fill(0);
  }
  // drain_all_pages(): every pcp, then zone.lock once more for the stack.
  void drain_all() {
    drain_local();
    zone_unlocked();
  }
};

// --- steps ------------------------------------------------------------------------

// One operation of a command, possibly an interrupt that runs nested steps.
struct Step {
  enum Kind : std::uint8_t { kAlloc, kFree, kGet, kPut, kDrainLocal, kDrainAll, kIrq, kNmi } kind = kAlloc;
  Path path = Path::kSpinning;
  unsigned order = 0;
  int id = -1;
  std::vector<Step> nested;
};

Step make_step(Step::Kind kind, Path path = Path::kSpinning, unsigned order = 0, int id = -1) {
  Step s;
  s.kind = kind;
  s.path = path;
  s.order = order;
  s.id = id;
  return s;
}

void show_steps(std::ostream& os, const std::vector<Step>& steps);

void show_step(std::ostream& os, const Step& s) {
  switch (s.kind) {
    case Step::kAlloc:
      os << "alloc " << path_name(s.path) << " order=" << s.order;
      break;
    case Step::kFree:
      os << "free " << path_name(s.path) << " #" << s.id;
      break;
    case Step::kGet:
      os << "get_page #" << s.id;
      break;
    case Step::kPut:
      os << "put_page #" << s.id;
      break;
    case Step::kDrainLocal:
      os << "drain_local";
      break;
    case Step::kDrainAll:
      os << "drain_all";
      break;
    case Step::kIrq:
      os << "irq{";
      show_steps(os, s.nested);
      os << "}";
      break;
    case Step::kNmi:
      os << "nmi{";
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

// Whether `s` may run next in `ctx` with `held` on model `m` (the same
// rules the generator follows; shrinking may have removed what it relied
// on).
bool step_valid(const PageModel& m, const Step& s, Ctx ctx, Held held) {
  // Spinning: not in an NMI, and not over a zone.lock the interrupted frame
  // holds (an IRQ cannot be there anyway: zone.lock masks IRQs).
  bool spinning_ok = ctx != Ctx::kNmi && !zone_held(held);
  switch (s.kind) {
    case Step::kAlloc:
      if (s.path == Path::kSpinning && (!spinning_ok || s.order > kMaxSpinOrder)) return false;
      if (s.path == Path::kNolock && s.order > kPcpMaxOrder) return false;
      return m.alloc_safe(s.order);
    case Step::kFree: {
      const Block* b = m.find(s.id);
      if (b == nullptr || b->refs != 1) return false;
      return s.path == Path::kNolock || spinning_ok;
    }
    case Step::kGet: {
      const Block* b = m.find(s.id);
      return b != nullptr && b->refs < kMaxRefs;
    }
    case Step::kPut:
      return spinning_ok && m.find(s.id) != nullptr;
    case Step::kDrainLocal:
    case Step::kDrainAll:
      return ctx == Ctx::kTask && held == Held::kNone;
    case Step::kIrq:
      return ctx == Ctx::kTask && held == Held::kNone;
    case Step::kNmi:
      return ctx != Ctx::kNmi;
  }
  return false;
}

// Simulates `steps` on `m`; appends each step's prediction in execution
// order (pre-order) to `out` when given. Return: false when a step is not
// valid where it stands.
bool simulate(PageModel& m, const std::vector<Step>& steps, Ctx ctx, Held held, std::vector<Prediction>* out) {
  for (const Step& s : steps) {
    if (!step_valid(m, s, ctx, held)) return false;
    Prediction p;
    switch (s.kind) {
      case Step::kAlloc:
        p = m.alloc(s.path, s.order, ctx, held);
        break;
      case Step::kFree:
        p = m.free(s.id, s.path, ctx, held);
        break;
      case Step::kGet:
        p = m.get(s.id);
        break;
      case Step::kPut:
        p = m.put(s.id, ctx, held);
        break;
      case Step::kDrainLocal:
        m.drain_local();
        break;
      case Step::kDrainAll:
        m.drain_all();
        break;
      case Step::kIrq:
      case Step::kNmi:
        break;
    }
    if (out) out->push_back(p);
    if (s.kind == Step::kIrq || s.kind == Step::kNmi) {
      Ctx inner = s.kind == Step::kIrq ? Ctx::kIrq : Ctx::kNmi;
      if (!simulate(m, s.nested, inner, held, out)) return false;  // the task still holds what it held
    }
  }
  return true;
}

// Picks a live block with refs == 1 (for a free), or -1.
int gen_free_target(const PageModel& m) {
  std::vector<int> ids;
  for (const Block& b : m.live)
    if (b.refs == 1) ids.push_back(b.id);
  if (ids.empty()) return -1;
  return ids[uniform<std::size_t>(0, ids.size())];
}

// Generates up to `max` valid steps for `ctx`, simulating them on `m`.
std::vector<Step> gen_steps(PageModel& m, Ctx ctx, Held held, int max) {
  std::vector<Step> steps;
  int n = uniform(0, max + 1);
  for (int i = 0; i < n; ++i) {
    Step s;
    bool spinning_ok = ctx != Ctx::kNmi && !zone_held(held);
    int pick = uniform(0, 10);
    if (pick < 4) {
      s.kind = Step::kAlloc;
      s.path = spinning_ok && coin() ? Path::kSpinning : Path::kNolock;
      s.order = uniform(0u, (s.path == Path::kSpinning ? kMaxSpinOrder : kPcpMaxOrder) + 1);
    } else if (pick < 7) {
      s.kind = Step::kFree;
      s.path = spinning_ok && coin() ? Path::kSpinning : Path::kNolock;
      s.id = gen_free_target(m);
    } else if (pick < 8) {
      s.kind = Step::kGet;
      if (m.live.empty()) continue;
      s.id = m.live[uniform<std::size_t>(0, m.live.size())].id;
    } else if (pick < 9) {
      if (!spinning_ok || m.live.empty()) continue;
      s.kind = Step::kPut;
      s.id = m.live[uniform<std::size_t>(0, m.live.size())].id;
    } else {
      if (ctx != Ctx::kIrq) continue;  // an NMI inside this IRQ
      s.kind = Step::kNmi;
      PageModel trial = m;
      s.nested = gen_steps(trial, Ctx::kNmi, held, kMaxSubSteps / 2);
    }
    PageModel trial = m;
    if (!simulate(trial, {s}, ctx, held, nullptr)) continue;  // not valid here: skip it
    m = std::move(trial);
    steps.push_back(std::move(s));
  }
  return steps;
}

// --- the system under test ----------------------------------------------------------

constexpr std::uint64_t kStampMagic = 0xa11c'0c7e'9a9e'0000ull;

void stamp(Page* p, unsigned order, int id) {
  for (std::size_t i = 0; i < (std::size_t{1} << order); ++i) {
    auto* w = static_cast<std::uint64_t*>(page_address(p + i));
    w[0] = kStampMagic ^ static_cast<std::uint64_t>(id);
    w[1] = page_to_pfn(p + i);
  }
}

bool stamp_intact(const Page* p, unsigned order, int id) {
  for (std::size_t i = 0; i < (std::size_t{1} << order); ++i) {
    const auto* w = static_cast<const std::uint64_t*>(page_address(p + i));
    if (w[0] != (kStampMagic ^ static_cast<std::uint64_t>(id)) || w[1] != page_to_pfn(p + i)) return false;
  }
  return true;
}

bool block_zero(const Page* p, unsigned order) {
  const auto* bytes = static_cast<const unsigned char*>(page_address(p));
  std::size_t n = kPageSize << order;
  for (std::size_t i = 0; i < n; ++i)
    if (bytes[i] != 0) return false;
  return true;
}

// What a step did, recorded by the executor (no allocation there).
struct Observed {
  bool ran = false;
  Page* page = nullptr;  // alloc: the result
  bool zero = true;      // nolock alloc: the block was zeroed
  bool stamp_ok = true;  // free / last put: the contents were intact
  int refcount = -1;     // get / put: page_refcount() after
};

struct PageSut {
  std::vector<Page*> pages;                                 // by block id
  std::vector<unsigned> orders;                             // by block id
  std::vector<std::pair<std::size_t, std::size_t>> ghosts;  // Breakage::kKeepFreedRanges
  std::vector<Page*> strays;                                // allocations the model did not expect
  std::size_t strays_used = 0;
};

// Runs steps in whatever context it is called from; async-signal-safe as
// long as `sut` buffers were sized in task context.
struct Executor {
  PageSut& sut;
  const std::vector<Prediction>& expect;
  std::vector<Observed>& seen;
  std::size_t cursor = 0;
  bool stop = false;  // after a surprise: the rest would act on a wrong picture

  void run(const std::vector<Step>& steps) {
    for (const Step& s : steps) {
      if (stop) return;
      std::size_t at = cursor++;
      Observed& o = seen[at];
      const Prediction& e = expect[at];
      o.ran = true;
      switch (s.kind) {
        case Step::kAlloc: {
          Page* p;
          if (s.path == Path::kNolock) {
            p = alloc_pages_nolock(Gfp{}, s.order);
          } else {
            p = alloc_pages(in_task() ? kGfpKernel : kGfpAtomic, s.order);
          }
          o.page = p;
          if (p != nullptr && s.path == Path::kNolock) o.zero = block_zero(p, s.order);
          if (p != nullptr && e.ok) {
            sut.pages[e.id] = p;
            sut.orders[e.id] = s.order;
            stamp(p, s.order, e.id);
          } else if (p != nullptr) {
            if (sut.strays_used < sut.strays.size()) sut.strays[sut.strays_used++] = p;
            stop = true;
          } else if (e.ok) {
            stop = true;
          }
          break;
        }
        case Step::kFree: {
          Page* p = sut.pages[s.id];
          if (p == nullptr) {
            stop = true;
            break;
          }
          o.stamp_ok = stamp_intact(p, sut.orders[s.id], s.id);
          sut.pages[s.id] = nullptr;
          if (s.path == Path::kNolock) {
            free_pages_nolock(p, sut.orders[s.id]);
          } else {
            free_pages(p, sut.orders[s.id]);
          }
          break;
        }
        case Step::kGet: {
          Page* p = sut.pages[s.id];
          if (p == nullptr) {
            stop = true;
            break;
          }
          get_page(p);
          o.refcount = page_refcount(p);
          break;
        }
        case Step::kPut: {
          Page* p = sut.pages[s.id];
          if (p == nullptr) {
            stop = true;
            break;
          }
          if (page_refcount(p) == 1) o.stamp_ok = stamp_intact(p, sut.orders[s.id], s.id);
          put_page(p);
          o.refcount = page_refcount(p);
          if (e.refs_after == 0) sut.pages[s.id] = nullptr;
          break;
        }
        case Step::kDrainLocal:
          drain_local_pages();
          break;
        case Step::kDrainAll:
          drain_all_pages();
          break;
        case Step::kIrq:
          testing::run_in_irq([&] { run(s.nested); });
          break;
        case Step::kNmi:
          testing::run_in_nmi([&] { run(s.nested); });
          break;
      }
    }
  }
};

// Compares what the steps did with the predictions (task context).
void check_steps(const std::vector<Step>& steps, const std::vector<Prediction>& expect,
                 const std::vector<Observed>& seen, std::size_t& at, const char* where) {
  for (const Step& s : steps) {
    std::size_t i = at++;
    const Prediction& e = expect[i];
    const Observed& o = seen[i];
    std::ostringstream what;
    show_step(what, s);
    if (!o.ran) prop_fail(std::string("step '") + what.str() + "' in " + where + " did not run (an earlier surprise)");
    switch (s.kind) {
      case Step::kAlloc:
        if ((o.page != nullptr) != e.ok) {
          FaultStats f = fault_plan_stats();
          prop_fail(std::string("alloc result: '") + what.str() + "' in " + where + (e.ok ? " failed" : " succeeded") +
                    " but the model says it " + (e.ok ? "succeeds" : "fails") +
                    " (fault plan calls=" + std::to_string(f.calls) + " fired=" + std::to_string(f.fired) + ")");
        }
        if (o.page != nullptr && !o.zero)
          prop_fail("nolock alloc: '" + what.str() + "' returned a block that is not zeroed");
        break;
      case Step::kFree:
      case Step::kPut:
        if (!o.stamp_ok) prop_fail("contents: the block of '" + what.str() + "' was overwritten while live");
        if (s.kind == Step::kPut && o.refcount != e.refs_after)
          prop_fail("refcount after '" + what.str() + "' is " + std::to_string(o.refcount) + ", the model says " +
                    std::to_string(e.refs_after));
        break;
      case Step::kGet:
        if (o.refcount != e.refs_after)
          prop_fail("refcount after '" + what.str() + "' is " + std::to_string(o.refcount) + ", the model says " +
                    std::to_string(e.refs_after));
        break;
      default:
        break;
    }
    if (s.kind == Step::kIrq || s.kind == Step::kNmi)
      check_steps(s.nested, expect, seen, at, s.kind == Step::kIrq ? "irq" : "nmi");
  }
}

// Every postcondition that holds at an op boundary (task context).
void check_state(const PageModel& m, PageSut& sut) {
  // Live blocks: present, refcounts, contents, alignment, no overlap.
  std::vector<std::pair<std::size_t, std::size_t>> ranges = sut.ghosts;
  for (const Block& b : m.live) {
    Page* p = sut.pages[b.id];
    if (p == nullptr) prop_fail("live block #" + std::to_string(b.id) + " is missing in the SUT");
    if (page_refcount(p) != b.refs)
      prop_fail("refcount of #" + std::to_string(b.id) + " is " + std::to_string(page_refcount(p)) +
                ", the model says " + std::to_string(b.refs));
    if (!stamp_intact(p, b.order, b.id)) prop_fail("contents of live block #" + std::to_string(b.id) + " overwritten");
    std::size_t pfn = page_to_pfn(p);
    if (pfn % (std::size_t{1} << b.order) != 0) prop_fail("block #" + std::to_string(b.id) + " is misaligned");
    ranges.emplace_back(pfn, pfn + (std::size_t{1} << b.order));
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      prop_fail("overlap: live blocks [" + std::to_string(ranges[i - 1].first) + "," +
                std::to_string(ranges[i - 1].second) + ") and [" + std::to_string(ranges[i].first) + "," +
                std::to_string(ranges[i].second) + ")");

  int pcp = pcp_count(0);
  if (pcp != m.pcp_pages())
    prop_fail("pcp count is " + std::to_string(pcp) + ", the model says " + std::to_string(m.pcp_pages()));
  std::size_t deferred = deferred_free_pages();
  if (deferred != m.deferred_pages)
    prop_fail("deferred stack holds " + std::to_string(deferred) + " pages, the model says " +
              std::to_string(m.deferred_pages));
  std::size_t live = m.live_pages() + (m.broken == Breakage::kConservationOffByOne ? 1 : 0);
  std::size_t total = zone_free_pages() + static_cast<std::size_t>(pcp) + deferred + live;
  if (total != kArena)
    prop_fail("conservation: zone " + std::to_string(zone_free_pages()) + " + pcp " + std::to_string(pcp) +
              " + deferred " + std::to_string(deferred) + " + live " + std::to_string(live) + " = " +
              std::to_string(total) + " != arena " + std::to_string(kArena));

  PageStats st = page_stats();
  for (int p = 0; p < 2; ++p)
    for (int c = 0; c < 3; ++c) {
      std::string where = std::string(path_name(static_cast<Path>(p))) + "/" + ctx_name(static_cast<Ctx>(c));
      if (st.alloc_ok[p][c] != m.alloc_ok[p][c] || st.alloc_failed[p][c] != m.alloc_failed[p][c])
        prop_fail("stats: " + where + " allocations ok/failed " + std::to_string(st.alloc_ok[p][c]) + "/" +
                  std::to_string(st.alloc_failed[p][c]) + ", the model says " + std::to_string(m.alloc_ok[p][c]) + "/" +
                  std::to_string(m.alloc_failed[p][c]));
      if (st.freed[p][c] != m.freed[p][c])
        prop_fail("stats: " + where + " frees " + std::to_string(st.freed[p][c]) + ", the model says " +
                  std::to_string(m.freed[p][c]));
    }
  if (st.deferred_pushed != m.deferred_pushed || st.deferred_drained != m.deferred_drained ||
      st.deferred_taken != m.deferred_taken)
    prop_fail("deferred stack: pushed/drained/taken " + std::to_string(st.deferred_pushed) + "/" +
              std::to_string(st.deferred_drained) + "/" + std::to_string(st.deferred_taken) + " blocks, the model says " +
              std::to_string(m.deferred_pushed) + "/" + std::to_string(m.deferred_drained) + "/" +
              std::to_string(m.deferred_taken));
  if (m.fault.active) {
    FaultStats f = fault_plan_stats();
    if (f.calls != m.fault.calls || f.fired != m.fault.fired)
      prop_fail("fault plan: calls/fired " + std::to_string(f.calls) + "/" + std::to_string(f.fired) +
                ", the model says " + std::to_string(m.fault.calls) + "/" + std::to_string(m.fault.fired));
  }
  InvariantResult inv = check_invariants();
  if (!inv.ok) prop_fail("check_invariants: " + inv.what);
}

// --- commands --------------------------------------------------------------------------

using PageCmd = rc::state::Command<PageModel, PageSut>;

void size_buffers(PageSut& sut, const PageModel& after, std::size_t steps) {
  std::size_t ids = static_cast<std::size_t>(after.next_id) + 1;
  if (sut.pages.size() < ids) {
    sut.pages.resize(ids, nullptr);
    sut.orders.resize(ids, 0);
  }
  sut.strays.resize(sut.strays_used + steps + 1, nullptr);
}

// A list of steps at an op boundary of the task (interrupts among them).
class RunSteps : public PageCmd {
 public:
  explicit RunSteps(std::vector<Step> steps) : steps_(std::move(steps)) {}

  void checkPreconditions(const PageModel& s0) const override {
    PageModel m = s0;
    RC_PRE(simulate(m, steps_, Ctx::kTask, Held::kNone, nullptr));
  }
  void apply(PageModel& s0) const override { simulate(s0, steps_, Ctx::kTask, Held::kNone, nullptr); }

  void run(const PageModel& s0, PageSut& sut) const override {
    PageModel m = s0;
    std::vector<Prediction> expect;
    simulate(m, steps_, Ctx::kTask, Held::kNone, &expect);
    size_buffers(sut, m, expect.size());
    std::vector<Observed> seen(expect.size());
    // Ranges that a broken oracle keeps after the free (see Breakage).
    std::vector<std::pair<std::size_t, std::size_t>> freed;
    if (s0.broken == Breakage::kKeepFreedRanges) collect_freed(s0, sut, steps_, freed);
    Executor ex{sut, expect, seen};
    ex.run(steps_);
    std::size_t at = 0;
    check_steps(steps_, expect, seen, at, "task");
    sut.ghosts.insert(sut.ghosts.end(), freed.begin(), freed.end());
    check_state(m, sut);
  }

  void show(std::ostream& os) const override { show_steps(os, steps_); }

 private:
  static void collect_freed(const PageModel& s0, const PageSut& sut, const std::vector<Step>& steps,
                            std::vector<std::pair<std::size_t, std::size_t>>& out) {
    for (const Step& s : steps) {
      if (s.kind == Step::kFree && s.id >= 0 && static_cast<std::size_t>(s.id) < sut.pages.size() &&
          sut.pages[s.id] != nullptr) {
        std::size_t pfn = page_to_pfn(sut.pages[s.id]);
        out.emplace_back(pfn, pfn + (std::size_t{1} << sut.orders[s.id]));
      }
      collect_freed(s0, sut, s.nested, out);
    }
  }

  std::vector<Step> steps_;
};

// An NMI delivered while the task frame is inside the allocator holding
// zone.lock, pcp.lock or both (from the allocator's own site), or an IRQ
// while it holds only pcp.lock (taken without masking IRQs). With both held
// the NMI comes either at kZoneLocked or `late`, at kPcpBulkFree, in the
// middle of the drain: either way the holder empties the deferred stack,
// what the NMI pushed included, before it releases zone.lock.
class InterruptWhileHolding : public PageCmd {
 public:
  InterruptWhileHolding(Held held, Ctx kind, Step task_op, std::vector<Step> nmi, bool late = false)
      : held_(held), kind_(kind), late_(late), task_(std::move(task_op)), nmi_(std::move(nmi)) {}

  // Return: false when the task op cannot produce `held_` on `m`.
  bool task_op_fits(const PageModel& m) const {
    if (kind_ == Ctx::kIrq && held_ != Held::kPcp) return false;  // zone.lock masks IRQs
    if (kind_ == Ctx::kTask) return false;
    if (late_ && held_ != Held::kBoth) return false;
    switch (held_) {
      case Held::kZone:
        if (task_.kind == Step::kAlloc) return task_.order == kMaxSpinOrder && m.alloc_safe(task_.order);
        return task_.kind == Step::kFree && m.find(task_.id) && m.find(task_.id)->refs == 1 &&
               m.find(task_.id)->order > kPcpMaxOrder;
      case Held::kPcp:
        if (task_.kind == Step::kAlloc) return task_.order <= kPcpMaxOrder && m.pcp[task_.order] > 0;
        return task_.kind == Step::kFree && m.find(task_.id) && m.find(task_.id)->refs == 1 &&
               m.find(task_.id)->order <= kPcpMaxOrder;
      case Held::kBoth:
        return task_.kind == Step::kDrainLocal && m.pcp_pages() > 0;
      case Held::kNone:
        return false;
    }
    return false;
  }

  // Simulates the whole command. Return: false when not valid on `m`.
  bool simulate_all(PageModel& m, std::vector<Prediction>* nmi_out, Prediction* task_out, bool* nmi_ran) const {
    if (!task_op_fits(m)) return false;
    *nmi_ran = true;
    Prediction task;
    switch (task_.kind) {
      case Step::kAlloc:
        // The fault check comes before any lock: a faulted call never
        // reaches the site, so the NMI does not happen.
        if (m.fault_fires(Path::kSpinning, Ctx::kTask, task_.order)) {
          ++m.alloc_failed[0][0];
          *nmi_ran = false;
          break;
        }
        if (!simulate(m, nmi_, kind_, held_, nmi_out)) return false;
        task = m.alloc_after_fault(Path::kSpinning, task_.order, Ctx::kTask, Held::kNone);
        break;
      case Step::kFree: {
        unsigned order = m.take_for_free(task_.id, Path::kSpinning, Ctx::kTask);
        if (!simulate(m, nmi_, kind_, held_, nmi_out)) return false;
        m.return_block(order, Path::kSpinning, Held::kNone);
        task = Prediction{true, task_.id, 0};
        break;
      }
      case Step::kDrainLocal:
        if (!simulate(m, nmi_, kind_, held_, nmi_out)) return false;
        if (m.broken == Breakage::kHolderLeavesPushes) m.pcp.fill(0);  // pushes left for a later holder
        else m.drain_local();
        break;
      default:
        return false;
    }
    if (task_out) *task_out = task;
    return true;
  }

  void checkPreconditions(const PageModel& s0) const override {
    PageModel m = s0;
    bool ran;
    RC_PRE(simulate_all(m, nullptr, nullptr, &ran));
  }
  void apply(PageModel& s0) const override {
    bool ran;
    simulate_all(s0, nullptr, nullptr, &ran);
  }

  using Work = NestedSteps<Executor, Step>;

  void run(const PageModel& s0, PageSut& sut) const override {
    PageModel m = s0;
    std::vector<Prediction> expect;
    Prediction task_expect;
    bool nmi_expected = true;
    simulate_all(m, &expect, &task_expect, &nmi_expected);
    if (!nmi_expected) expect.assign(count_steps(nmi_), Prediction{});
    size_buffers(sut, m, expect.size() + 1);
    std::vector<Observed> seen(expect.size());
    Executor ex{sut, expect, seen};
    Work work{&ex, &nmi_};

    Site site = held_ == Held::kPcp ? Site::kPcpLocked : late_ ? Site::kPcpBulkFree : Site::kZoneLocked;
    InterruptAtSite::arm(site, &Work::run_in_interrupt, &work, kind_ == Ctx::kIrq ? InterruptKind::kIrq : InterruptKind::kNmi);
    Page* got = nullptr;
    bool stamp_ok = true;
    switch (task_.kind) {
      case Step::kAlloc:
        got = alloc_pages(kGfpKernel, task_.order);
        if (got != nullptr && task_expect.ok) {
          sut.pages[task_expect.id] = got;
          sut.orders[task_expect.id] = task_.order;
          stamp(got, task_.order, task_expect.id);
        } else if (got != nullptr) {
          sut.strays[sut.strays_used++] = got;
        }
        break;
      case Step::kFree: {
        Page* p = sut.pages[task_.id];
        RC_ASSERT(p != nullptr);
        stamp_ok = stamp_intact(p, sut.orders[task_.id], task_.id);
        sut.pages[task_.id] = nullptr;
        free_pages(p, sut.orders[task_.id]);
        break;
      }
      case Step::kDrainLocal:
        drain_local_pages();
        break;
      default:
        break;
    }
    bool fired = InterruptAtSite::disarm();

    std::ostringstream what;
    show(what);
    if (fired != nmi_expected) {
      FaultStats f = fault_plan_stats();
      prop_fail(std::string("the ") + ctx_name(kind_) + " at " + held_name(held_) + (fired ? " ran" : " did not run") +
                " but the model says it " + (nmi_expected ? "runs" : "does not") + " (in the model the interrupted " +
                "alloc " + (nmi_expected ? "passes" : "fails") + " the fault plan; fault plan calls=" +
                std::to_string(f.calls) + " fired=" + std::to_string(f.fired) + "): " + what.str());
    }
    if (task_.kind == Step::kAlloc && (got != nullptr) != task_expect.ok)
      prop_fail("alloc result of the interrupted task op: " + what.str() + (got ? " succeeded" : " failed") +
                " but the model says otherwise");
    if (!stamp_ok) prop_fail("contents: the block freed by the interrupted task op was overwritten: " + what.str());
    if (fired) {
      std::size_t at = 0;
      check_steps(nmi_, expect, seen, at, kind_ == Ctx::kIrq ? "irq while holding" : "nmi while holding");
    }
    check_state(m, sut);
  }

  void show(std::ostream& os) const override {
    os << "while the task holds " << held_name(held_) << (late_ ? " (mid-drain)" : "") << " in '";
    show_step(os, task_);
    os << "': " << ctx_name(kind_) << "{";
    show_steps(os, nmi_);
    os << "}";
  }

 private:
  static std::size_t count_steps(const std::vector<Step>& steps) {
    std::size_t n = 0;
    for (const Step& s : steps) n += 1 + count_steps(s.nested);
    return n;
  }

  Held held_;
  Ctx kind_;
  bool late_;
  Step task_;
  std::vector<Step> nmi_;
};

class SetFault : public PageCmd {
 public:
  explicit SetFault(FaultModel plan) : plan_(plan) {}
  void apply(PageModel& s0) const override { s0.fault = plan_; }
  void run(const PageModel&, PageSut&) const override {
    FaultPlan p;
    p.fail_nth = plan_.nth;
    p.probability_ppm = plan_.always ? 1'000'000 : 0;
    for (unsigned o = 0; o <= kMaxOrder; ++o) p.order_weight_pct[o] = plan_.weighted[o] ? 100 : 0;
    p.contexts = plan_.contexts;
    p.paths = plan_.paths;
    p.seed = 7;
    fault_plan_set(p);
  }
  void show(std::ostream& os) const override {
    os << "fault_plan nth=" << plan_.nth << " always=" << plan_.always << " orders=";
    for (unsigned o = 0; o <= kMaxSpinOrder; ++o) os << (plan_.weighted[o] ? '1' : '0');
    os << " contexts=" << int{plan_.contexts} << " paths=" << int{plan_.paths};
  }

 private:
  FaultModel plan_;
};

// The generator: one command for the current model.
rc::Gen<std::shared_ptr<const PageCmd>> gen_command(const PageModel& model) {
  return rc::gen::exec([model]() -> std::shared_ptr<const PageCmd> {
    PageModel m = model;
    int pick = uniform(0, 20);
    if (pick < 9) {  // one task op
      std::vector<Step> steps;
      for (int tries = 0; tries < 20 && steps.empty(); ++tries) steps = gen_steps(m, Ctx::kTask, Held::kNone, 1);
      RC_PRE(!steps.empty());
      return std::make_shared<RunSteps>(std::move(steps));
    }
    if (pick < 10) {
      Step s;
      s.kind = coin() ? Step::kDrainLocal : Step::kDrainAll;
      return std::make_shared<RunSteps>(std::vector<Step>{s});
    }
    if (pick < 14) {  // an interrupt at an op boundary
      Step s;
      s.kind = coin() ? Step::kIrq : Step::kNmi;
      PageModel trial = m;
      s.nested = gen_steps(trial, s.kind == Step::kIrq ? Ctx::kIrq : Ctx::kNmi, Held::kNone, kMaxSubSteps);
      return std::make_shared<RunSteps>(std::vector<Step>{s});
    }
    if (pick < 18) {  // an NMI while the task holds allocator locks
      std::vector<std::pair<Held, Step>> options;
      if (m.alloc_safe(kMaxSpinOrder))
        options.push_back({Held::kZone, make_step(Step::kAlloc, Path::kSpinning, kMaxSpinOrder)});
      for (const Block& b : m.live) {
        if (b.refs != 1) continue;
        Step f = make_step(Step::kFree, Path::kSpinning, 0, b.id);
        options.push_back({b.order > kPcpMaxOrder ? Held::kZone : Held::kPcp, f});
      }
      for (unsigned o = 0; o <= kPcpMaxOrder; ++o)
        if (m.pcp[o] > 0) options.push_back({Held::kPcp, make_step(Step::kAlloc, Path::kSpinning, o)});
      if (m.pcp_pages() > 0) options.push_back({Held::kBoth, make_step(Step::kDrainLocal)});
      RC_PRE(!options.empty());
      auto [held, task] = options[uniform<std::size_t>(0, options.size())];
      // The NMI's steps, generated on the model as it will be when the NMI
      // runs (after the task op took its block out, before it finishes).
      // An IRQ where the task holds only pcp.lock (IRQs unmasked there).
      Ctx kind = held == Held::kPcp && coin() ? Ctx::kIrq : Ctx::kNmi;
      bool late = held == Held::kBoth && coin();
      PageModel at_nmi = m;
      if (task.kind == Step::kFree) at_nmi.take_for_free(task.id, Path::kSpinning, Ctx::kTask);
      std::vector<Step> nmi = gen_steps(at_nmi, kind, held, kMaxSubSteps);
      return std::make_shared<InterruptWhileHolding>(held, kind, task, std::move(nmi), late);
    }
    // A fault plan (or none).
    FaultModel f;
    if (uniform(0, 4) != 0) {
      f.nth = uniform<std::uint64_t>(0, 6);
      f.always = uniform(0, 3) == 0;
      if (f.always)
        for (unsigned o = 0; o <= kMaxOrder; ++o) f.weighted[o] = coin();
      f.contexts = static_cast<std::uint8_t>(uniform(1, 8));
      f.paths = static_cast<std::uint8_t>(uniform(1, 4));
      f.active = f.nth != 0 || f.always;
    }
    return std::make_shared<SetFault>(f);
  });
}

// --- the property ------------------------------------------------------------------

void page_state_machine(Breakage broken) {
  PageWorld world(kArena, kBatch, kHigh);
  PageModel m0;
  m0.broken = broken;
  const auto commands = *rc::gen::scale(0.5, rc::state::gen::commands(m0, &gen_command));
  PageSut sut;
  rc::state::runAll(commands, m0, sut);

  // Everything freed and drained: one coalesced zone again.
  PageModel end = m0;
  rc::state::applyAll(commands, end);
  fault_plan_clear();
  std::size_t n = end.live.size();
  if (broken == Breakage::kLeakAtTeardown && n > 0) --n;  // "forgets" the last block
  for (std::size_t i = 0; i < n; ++i) {
    const Block& b = end.live[i];
    Page* p = sut.pages[b.id];
    for (int r = 1; r < b.refs; ++r) put_page(p);
    free_pages(p, b.order);
  }
  for (Page* p : sut.strays)
    if (p != nullptr) prop_fail("an allocation the model did not expect is still live");
  drain_all_pages();
  InvariantResult inv = check_invariants();
  if (!inv.ok) prop_fail("check_invariants after freeing everything: " + inv.what);
  if (deferred_free_pages() != 0 || pcp_count(0) != 0) prop_fail("drained, but pcp or deferred pages remain");
  if (zone_free_pages() != kArena)
    prop_fail("coalesced: " + std::to_string(zone_free_pages()) + " of " + std::to_string(kArena) +
              " pages free after freeing everything");
  for (unsigned o = 0; o < kMaxOrder; ++o)
    if (zone_free_blocks(o) != 0)
      prop_fail("coalesced: " + std::to_string(zone_free_blocks(o)) + " free blocks of order " + std::to_string(o) +
                " after freeing everything");
  if (zone_free_blocks(kMaxOrder) != kArena >> kMaxOrder)
    prop_fail("coalesced: " + std::to_string(zone_free_blocks(kMaxOrder)) + " blocks of order 10, expected " +
              std::to_string(kArena >> kMaxOrder));
  // Liveness: with everything free, a nolock allocation succeeds.
  Page* p = alloc_pages_nolock(Gfp{}, kPcpMaxOrder);
  if (p == nullptr) prop_fail("liveness: a nolock allocation fails although the zone is free");
  free_pages_nolock(p, kPcpMaxOrder);
}

}  // namespace

RC_GTEST_PROP(PageProps, AllocatorMatchesModel, ()) { page_state_machine(Breakage::kNone); }

TEST(PageProps, Conservation_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("page/conservation", [] { page_state_machine(Breakage::kConservationOffByOne); }),
                       "conservation");
}

TEST(PageProps, PcpCount_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("page/pcp-trim", [] { page_state_machine(Breakage::kNoPcpTrim); }), "pcp count");
}

TEST(PageProps, NolockUnderHeldZoneLock_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("page/held-zone", [] { page_state_machine(Breakage::kHeldZoneIgnored); }),
                       "alloc result");
}

TEST(PageProps, FaultPlan_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("page/fault-context", [] { page_state_machine(Breakage::kFaultContextIgnored); }),
                       "fault plan");
}

TEST(PageProps, Refcount_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("page/refcount", [] { page_state_machine(Breakage::kGetPageNotCounted); }),
                       "refcount");
}

TEST(PageProps, Overlap_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("page/overlap", [] { page_state_machine(Breakage::kKeepFreedRanges); }), "overlap");
}

TEST(PageProps, DeferredStack_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("page/holder-leaves-pushes", [] { page_state_machine(Breakage::kHolderLeavesPushes); }),
                       "deferred stack");
}

TEST(PageProps, ParkedTake_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("page/parked-not-taken", [] { page_state_machine(Breakage::kParkedNotTaken); }),
                       "deferred stack");
}

TEST(PageProps, Coalesced_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("page/leak", [] { page_state_machine(Breakage::kLeakAtTeardown); }), "coalesced");
}

}  // namespace anyctx::props
