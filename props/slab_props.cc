// props/slab_props.cc — kmalloc / kfree on both paths against a model of
// live objects.
//
// The model knows every live object (its cache: the smallest class that
// fits, or the next class when kmalloc_nolock found its CPU lock held by
// the frame it interrupted), the objects in use per cache, and how many
// kfree_nolock calls may still sit on deferred lists: none after a
// spinning kmalloc/kfree on the task (the IRQ a deferral raises has run by
// then; their slow paths drain first), after an IRQ returns (IRQ exit
// drains), or after slab_drain_*. None is certainly
// deferred: a kfree_nolock that cannot use the CPU slab (an NMI's, while
// an IRQ holds that cache's CPU lock) frees into the slab under list_lock,
// and defers only when list_lock is busy, which no step here holds across
// an interrupt.
//
// Interrupts: IRQs and NMIs at an op boundary (an NMI may nest in an IRQ),
// an NMI while an IRQ's kmalloc or kfree holds a CPU slab lock (the task
// frames' fast paths take none), and an
// NMI inside the lock-free deferred lists (between reading the head and
// the CAS of the task's deferred push; between objects of the drain a
// spinning call starts with).
//
// Allocations always find memory: the model bounds the pages slabs can pin
// (live objects + one CPU slab + kSlabKeepPartial spares per cache, + one
// per kfree_nolock since the last slab_drain_all: a nolock free that empties
// a slab leaves it on the partial list) so that
// alloc_pages_nolock of a slab's order cannot fail for want of a free block
// (the pigeonhole argument of page_props.cc), and checks that bound.
//
// Postconditions after every command: each result as predicted (object
// size, alignment, zeroing, contents intact until freed), every live object
// distinct (no two overlap), objects in use per cache, next-class and
// failure counters, the deferred bound, slab_check_invariants(). After the
// sequence: everything freed and slab_drain_all(): nothing deferred,
// nothing in use, every page back in the page allocator.
#include <algorithm>
#include <array>
#include <cstring>
#include <utility>
#include <vector>

#include "anyctx/slab/slab.h"
#include "props_common.h"

namespace anyctx::props {
namespace {

constexpr std::size_t kArena = 2048;
constexpr int kClasses = kKmallocClasses;
constexpr std::size_t kSizes[] = {1,   8,   13,  16,   24,   32,   64,   96,   128, 200,
                                  256, 500, 512, 1000, 1024, 2048, 4000, 4096, 8192};
constexpr int kMaxSubSteps = 6;
constexpr int kKeptPerCache = 3;            // a CPU slab + kSlabKeepPartial spares
constexpr std::size_t kPinnedBudget = 200;  // pages slabs may pin (see alloc_safe)

enum class Breakage : std::uint8_t {
  kNone,
  kInUseOffByOne,    // the model counts one object too many in kmalloc-8
  kNoNextClass,      // the model thinks kmalloc_nolock under a held CPU lock keeps its class
  kKeepFreedRanges,  // the overlap oracle is fed objects already freed
  kHeldFreeDefers,   // the model thinks an NMI's kfree_nolock into a held CPU slab is deferred
};

int class_of(std::size_t size) {
  int c = 0;
  while ((std::size_t{8} << c) < std::max<std::size_t>(size, 1)) ++c;
  return c;
}
unsigned order_of_class(int c) {
  unsigned o = 0;
  while (o < kPcpMaxOrder && (kPageSize << o) / (std::size_t{8} << c) < 8) ++o;
  return o;
}
std::size_t object_size(int cache) { return std::size_t{8} << (cache % kClasses); }
std::string cache_name(int cache) {
  return std::string(cache >= kClasses ? "kmalloc-cg-" : "kmalloc-") + std::to_string(object_size(cache));
}

enum class Mode : std::uint8_t { kNolock, kSpinning };

struct Obj {
  int id;
  int cache;
  std::size_t size;
};

struct Prediction {
  bool ok = false;
  int id = -1;
  int cache = -1;
};

struct SlabModel {
  Breakage broken = Breakage::kNone;
  std::vector<Obj> live;
  int next_id = 0;
  std::array<std::int64_t, kKmallocCaches> in_use{};
  std::array<bool, kKmallocCaches> touched{};
  std::array<std::uint64_t, kKmallocCaches> next_class{};
  std::array<std::uint64_t, kKmallocCaches> failed{};
  std::array<std::size_t, kPcpMaxOrder + 1> high_water{};  // pinned pages per slab order
  int pending_min = 0;                                     // kfree_nolock calls certainly still deferred
  int pending_bound = 0;                                   // kfree_nolock calls since the last point that drains them
  // kfree_nolock calls since the last slab_drain_all: each may have emptied
  // a slab and left it on the partial list (a nolock free gives no pages back).
  std::array<std::size_t, kKmallocCaches> nolock_emptied{};

  const Obj* find(int id) const {
    for (const Obj& o : live)
      if (o.id == id) return &o;
    return nullptr;
  }
  // Pages the slabs of each order may pin now, high-water marks included.
  std::array<std::size_t, kPcpMaxOrder + 1> pinned_with(int extra_cache) const {
    std::array<std::size_t, kPcpMaxOrder + 1> pages{};
    for (int c = 0; c < kKmallocCaches; ++c) {
      if (!touched[c] && c != extra_cache) continue;
      unsigned o = order_of_class(c % kClasses);
      std::size_t n = static_cast<std::size_t>(in_use[c]) + (c == extra_cache ? 1 : 0) + kKeptPerCache + nolock_emptied[c];
      pages[o] += n << o;
    }
    for (unsigned o = 0; o <= kPcpMaxOrder; ++o) pages[o] = std::max(pages[o], high_water[o]);
    return pages;
  }
  // An object of `cache` may be allocated without any chance of a page
  // allocation failing: the pages off the buddy lists stay below
  // arena >> 3 - a refill - a block (page_props.cc's argument), counting
  // for each order its high-water mark plus a pcp batch.
  bool alloc_safe(int cache) const {
    std::size_t total = 0;
    for (std::size_t p : pinned_with(cache)) total += p + 8;
    return total <= kPinnedBudget && total + 16 < (kArena >> kPcpMaxOrder);
  }
  void note_alloc(int cache, std::size_t size, Prediction& p) {
    auto pinned = pinned_with(cache);
    high_water = pinned;
    touched[cache] = true;
    ++in_use[cache];
    p.ok = true;
    p.id = next_id++;
    p.cache = cache;
    live.push_back(Obj{p.id, cache, size});
  }

  // `held`: the task holds this cache's CPU lock (an NMI interrupted it).
  Prediction alloc(std::size_t size, bool account, Mode mode, int held) {
    int cache = class_of(size) + (account ? kClasses : 0);
    Prediction p;
    if (mode == Mode::kSpinning) {
      // Nothing is deferred at a task op boundary: the IRQ each deferral
      // raised has run (and kmalloc's slow path drains first).
      pending_min = pending_bound = 0;
    }
    if (cache == held && broken != Breakage::kNoNextClass) {
      if (cache % kClasses == kClasses - 1) {
        ++failed[cache];
        return p;
      }
      ++next_class[cache];
      note_alloc(cache + 1, size, p);
      return p;
    }
    note_alloc(cache, size, p);
    return p;
  }

  void free(int id, Mode mode, int held) {
    const Obj* o = find(id);
    int cache = o->cache;
    --in_use[cache];
    live.erase(live.begin() + (o - live.data()));
    if (mode == Mode::kSpinning) {
      pending_min = pending_bound = 0;  // as in alloc(): the IRQ has run; kfree's slow path drains first
    } else {
      ++nolock_emptied[cache];
      ++pending_bound;
      if (cache == held && broken == Breakage::kHeldFreeDefers) ++pending_min;
    }
  }

  void drained() {
    pending_min = pending_bound = 0;
  }
};

// --- steps ----------------------------------------------------------------------------

struct Step {
  enum Kind : std::uint8_t { kAlloc, kFree, kDrainLocal, kDrainAll, kIrq, kNmi } kind = kAlloc;
  Mode mode = Mode::kNolock;
  std::size_t size = 8;
  bool zero = false;
  bool account = false;
  int id = -1;
  std::vector<Step> nested;
};

void show_steps(std::ostream& os, const std::vector<Step>& steps);

void show_step(std::ostream& os, const Step& s) {
  switch (s.kind) {
    case Step::kAlloc:
      os << (s.mode == Mode::kNolock ? "kmalloc_nolock" : "kmalloc") << "(" << s.size << (s.zero ? " zero" : "")
         << (s.account ? " account" : "") << ")";
      break;
    case Step::kFree:
      os << (s.mode == Mode::kNolock ? "kfree_nolock" : "kfree") << " #" << s.id;
      break;
    case Step::kDrainLocal:
      os << "slab_drain_local";
      break;
    case Step::kDrainAll:
      os << "slab_drain_all";
      break;
    case Step::kIrq:
    case Step::kNmi:
      os << (s.kind == Step::kIrq ? "irq{" : "nmi{");
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

bool step_valid(const SlabModel& m, const Step& s, Ctx ctx, int held) {
  bool spinning_ok = ctx != Ctx::kNmi && held < 0;
  switch (s.kind) {
    case Step::kAlloc: {
      if (s.mode == Mode::kSpinning && !spinning_ok) return false;
      int cache = class_of(s.size) + (s.account ? kClasses : 0);
      if (cache == held && cache % kClasses != kClasses - 1) ++cache;
      return m.alloc_safe(cache);
    }
    case Step::kFree:
      return m.find(s.id) != nullptr && (s.mode == Mode::kNolock || spinning_ok);
    case Step::kDrainLocal:
    case Step::kDrainAll:
      return ctx == Ctx::kTask && held < 0;
    case Step::kIrq:
      return ctx == Ctx::kTask && held < 0;
    case Step::kNmi:
      return ctx == Ctx::kIrq && held < 0;
  }
  return false;
}

bool simulate(SlabModel& m, const std::vector<Step>& steps, Ctx ctx, int held, std::vector<Prediction>* out) {
  for (const Step& s : steps) {
    if (!step_valid(m, s, ctx, held)) return false;
    Prediction p;
    switch (s.kind) {
      case Step::kAlloc:
        p = m.alloc(s.size, s.account, s.mode, held);
        break;
      case Step::kFree:
        m.free(s.id, s.mode, held);
        break;
      case Step::kDrainLocal:
        m.drained();
        break;
      case Step::kDrainAll:
        m.drained();
        m.nolock_emptied = {};  // it gives every empty slab back
        break;
      case Step::kIrq:
      case Step::kNmi:
        break;
    }
    if (out) out->push_back(p);
    if (s.kind == Step::kIrq || s.kind == Step::kNmi) {
      if (!simulate(m, s.nested, s.kind == Step::kIrq ? Ctx::kIrq : Ctx::kNmi, -1, out)) return false;
      if (s.kind == Step::kIrq) m.drained();  // IRQ exit frees what was deferred
    }
  }
  return true;
}

std::vector<Step> gen_steps(SlabModel& m, Ctx ctx, int held, int max) {
  std::vector<Step> steps;
  int n = uniform(0, max + 1);
  for (int i = 0; i < n; ++i) {
    Step s;
    bool spinning_ok = ctx != Ctx::kNmi && held < 0;
    int pick = uniform(0, 10);
    if (pick < 5) {
      s.kind = Step::kAlloc;
      s.mode = spinning_ok && coin() ? Mode::kSpinning : Mode::kNolock;
      // Mostly small objects; the large classes (order-3 slabs) now and then.
      s.size =
          uniform(0, 4) == 0 ? kSizes[uniform<std::size_t>(0, std::size(kSizes))] : kSizes[uniform<std::size_t>(0, 12)];
      s.zero = coin();
      s.account = uniform(0, 4) == 0;
    } else if (pick < 9) {
      if (m.live.empty()) continue;
      s.kind = Step::kFree;
      s.id = m.live[uniform<std::size_t>(0, m.live.size())].id;
      s.mode = spinning_ok && coin() ? Mode::kSpinning : Mode::kNolock;
    } else {
      if (ctx != Ctx::kIrq) continue;
      s.kind = Step::kNmi;
      SlabModel trial = m;
      s.nested = gen_steps(trial, Ctx::kNmi, -1, max / 2);
    }
    SlabModel trial = m;
    if (!simulate(trial, {s}, ctx, held, nullptr)) continue;
    m = std::move(trial);
    steps.push_back(std::move(s));
  }
  return steps;
}

// --- the system under test ------------------------------------------------------------

void stamp(void* p, std::size_t size, int id) {
  auto* b = static_cast<unsigned char*>(p);
  for (std::size_t i = 0; i < size; ++i) b[i] = static_cast<unsigned char>(id * 7 + i * 13 + 1);
}
bool stamp_intact(const void* p, std::size_t size, int id) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < size; ++i)
    if (b[i] != static_cast<unsigned char>(id * 7 + i * 13 + 1)) return false;
  return true;
}
bool zeroed(const void* p, std::size_t size) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < size; ++i)
    if (b[i] != 0) return false;
  return true;
}

struct Observed {
  bool ran = false;
  void* p = nullptr;
  std::size_t object_size = 0;
  bool zero = true;
  bool stamp_ok = true;
};

struct SlabSut {
  std::vector<void*> objs;                                        // by id
  std::vector<std::size_t> sizes;                                 // requested, by id
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ghosts;  // Breakage::kKeepFreedRanges
  void size_for(int ids) {
    if (objs.size() < static_cast<std::size_t>(ids) + 1) {
      objs.resize(static_cast<std::size_t>(ids) + 1, nullptr);
      sizes.resize(objs.size(), 0);
    }
  }
};

struct Executor {
  SlabSut& sut;
  const std::vector<Prediction>& expect;
  std::vector<Observed>& seen;
  std::size_t cursor = 0;
  bool stop = false;

  void run(const std::vector<Step>& steps) {
    for (const Step& s : steps) {
      if (stop) return;
      std::size_t at = cursor++;
      Observed& o = seen[at];
      const Prediction& e = expect[at];
      o.ran = true;
      switch (s.kind) {
        case Step::kAlloc: {
          Gfp flags = (s.zero ? kGfpZero : Gfp{}) | (s.account ? kGfpAccount : Gfp{});
          void* p = s.mode == Mode::kNolock ? kmalloc_nolock(s.size, flags)
                                            : kmalloc(s.size, flags | (in_task() ? kGfpKernel : kGfpAtomic));
          o.p = p;
          if (p == nullptr) {
            if (e.ok) stop = true;
            break;
          }
          o.object_size = kmalloc_object_size(p);
          if (s.zero) o.zero = zeroed(p, s.size);
          if (!e.ok) {
            stop = true;
            break;
          }
          stamp(p, s.size, e.id);
          sut.objs[e.id] = p;
          sut.sizes[e.id] = s.size;
          break;
        }
        case Step::kFree: {
          void* p = sut.objs[s.id];
          if (p == nullptr) {
            stop = true;
            break;
          }
          o.stamp_ok = stamp_intact(p, sut.sizes[s.id], s.id);
          sut.objs[s.id] = nullptr;
          if (s.mode == Mode::kNolock)
            kfree_nolock(p);
          else
            kfree(p);
          break;
        }
        case Step::kDrainLocal:
          slab_drain_local();
          break;
        case Step::kDrainAll:
          slab_drain_all();
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

void check_steps(const std::vector<Step>& steps, const std::vector<Prediction>& expect,
                 const std::vector<Observed>& seen, std::size_t& at, const char* where) {
  for (const Step& s : steps) {
    std::size_t i = at++;
    const Prediction& e = expect[i];
    const Observed& o = seen[i];
    std::ostringstream what;
    show_step(what, s);
    if (!o.ran) prop_fail("step '" + what.str() + "' in " + where + " did not run (an earlier surprise)");
    if (s.kind == Step::kAlloc) {
      if ((o.p != nullptr) != e.ok)
        prop_fail("alloc result: '" + what.str() + "' in " + where + (o.p ? " succeeded" : " failed") +
                  " but the model says it " + (e.ok ? "succeeds" : "fails"));
      if (o.p != nullptr) {
        if (o.object_size != object_size(e.cache))
          prop_fail("object size: '" + what.str() + "' in " + where + " returned an object of " +
                    std::to_string(o.object_size) + " bytes, the model says " + cache_name(e.cache));
        if (reinterpret_cast<std::uintptr_t>(o.p) % o.object_size != 0)
          prop_fail("alignment: '" + what.str() + "' returned an object not aligned to its size");
        if (!o.zero) prop_fail("zeroing: '" + what.str() + "' returned an object that is not zeroed");
      }
    }
    if (s.kind == Step::kFree && !o.stamp_ok)
      prop_fail("contents: the object of '" + what.str() + "' was overwritten while live");
    if (s.kind == Step::kIrq || s.kind == Step::kNmi)
      check_steps(s.nested, expect, seen, at, s.kind == Step::kIrq ? "irq" : "nmi");
  }
}

void check_state(const SlabModel& m, SlabSut& sut, const std::string& after) {
  std::vector<std::pair<std::uintptr_t, std::uintptr_t>> ranges = sut.ghosts;
  for (const Obj& o : m.live) {
    void* p = sut.objs[o.id];
    if (p == nullptr) prop_fail("live object #" + std::to_string(o.id) + " is missing in the SUT");
    if (!stamp_intact(p, o.size, o.id))
      prop_fail("contents of live object #" + std::to_string(o.id) + " overwritten after " + after);
    auto a = reinterpret_cast<std::uintptr_t>(p);
    ranges.emplace_back(a, a + object_size(o.cache));
  }
  std::sort(ranges.begin(), ranges.end());
  for (std::size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].first < ranges[i - 1].second)
      prop_fail("overlap: two live objects share bytes at " + std::to_string(ranges[i].first) + " after " + after);
  for (int c = 0; c < kKmallocCaches; ++c) {
    SlabCacheStats st = slab_cache_stats(c);
    std::int64_t want = m.in_use[c] + (m.broken == Breakage::kInUseOffByOne && c == 0 ? 1 : 0);
    if (static_cast<std::int64_t>(st.objects_in_use) != want)
      prop_fail("objects in use: " + cache_name(c) + " has " + std::to_string(st.objects_in_use) + ", the model says " +
                std::to_string(want) + " after " + after);
    if (st.next_class_allocs != m.next_class[c] || st.alloc_failed != m.failed[c])
      prop_fail("next class: " + cache_name(c) + " next-class allocations/failures " +
                std::to_string(st.next_class_allocs) + "/" + std::to_string(st.alloc_failed) + ", the model says " +
                std::to_string(m.next_class[c]) + "/" + std::to_string(m.failed[c]) + " after " + after);
    if (st.slabs > static_cast<std::uint64_t>(m.in_use[c] + kKeptPerCache) + m.nolock_emptied[c])
      prop_fail("slab count: " + cache_name(c) + " holds " + std::to_string(st.slabs) + " slabs for " +
                std::to_string(m.in_use[c]) + " objects in use (at most one CPU slab, " +
                std::to_string(kSlabKeepPartial) + " spares and " + std::to_string(m.nolock_emptied[c]) +
                " slabs emptied by kfree_nolock may be empty) after " + after);
  }
  std::uint64_t pending = slab_deferred_pending();
  if (pending < static_cast<std::uint64_t>(m.pending_min) || pending > static_cast<std::uint64_t>(m.pending_bound))
    prop_fail("deferred: " + std::to_string(pending) + " frees pending, the model says " +
              std::to_string(m.pending_min) + ".." + std::to_string(m.pending_bound) + " after " + after);
  InvariantResult inv = slab_check_invariants();
  if (!inv.ok) prop_fail("slab_check_invariants: " + inv.what + " after " + after);
}

// --- commands -----------------------------------------------------------------------------

using SlabCmd = rc::state::Command<SlabModel, SlabSut>;

void collect_freed(const SlabSut& sut, const SlabModel& m, const std::vector<Step>& steps,
                   std::vector<std::pair<std::uintptr_t, std::uintptr_t>>& out) {
  for (const Step& s : steps) {
    if (s.kind == Step::kFree && s.id >= 0 && static_cast<std::size_t>(s.id) < sut.objs.size() && sut.objs[s.id]) {
      auto a = reinterpret_cast<std::uintptr_t>(sut.objs[s.id]);
      const Obj* o = m.find(s.id);
      if (o != nullptr) out.emplace_back(a, a + object_size(o->cache));
    }
    collect_freed(sut, m, s.nested, out);
  }
}

class RunSteps : public SlabCmd {
 public:
  explicit RunSteps(std::vector<Step> steps) : steps_(std::move(steps)) {}
  void checkPreconditions(const SlabModel& s0) const override {
    SlabModel m = s0;
    RC_PRE(simulate(m, steps_, Ctx::kTask, -1, nullptr));
  }
  void apply(SlabModel& s0) const override { simulate(s0, steps_, Ctx::kTask, -1, nullptr); }
  void run(const SlabModel& s0, SlabSut& sut) const override {
    SlabModel m = s0;
    std::vector<Prediction> expect;
    simulate(m, steps_, Ctx::kTask, -1, &expect);
    sut.size_for(m.next_id);
    std::vector<std::pair<std::uintptr_t, std::uintptr_t>> freed;
    if (s0.broken == Breakage::kKeepFreedRanges) collect_freed(sut, s0, steps_, freed);
    std::vector<Observed> seen(expect.size());
    Executor ex{sut, expect, seen};
    ex.run(steps_);
    std::size_t at = 0;
    check_steps(steps_, expect, seen, at, "task");
    sut.ghosts.insert(sut.ghosts.end(), freed.begin(), freed.end());
    std::ostringstream after;
    show(after);
    check_state(m, sut, "'" + after.str() + "'");
  }
  void show(std::ostream& os) const override { show_steps(os, steps_); }

 private:
  std::vector<Step> steps_;
};

// An NMI while an IRQ holds a cache's CPU lock (site kSlabCpuLocked of a
// spinning kmalloc or kfree, the command's op, run in an IRQ: only
// interrupt frames lock their CPU slabs): kmalloc_nolock of that class
// moves to the next one, kfree_nolock of its objects goes into their slab
// under list_lock. The deferred bound is checked inside the IRQ too, before
// its exit drains.
class NmiInCpuSlab : public SlabCmd {
 public:
  NmiInCpuSlab(Step task_op, int held, std::vector<Step> nmi)
      : task_(std::move(task_op)), held_(held), nmi_(std::move(nmi)) {}

  // `in_irq`: the deferred bounds (min, bound) when the IRQ's op returns,
  // before the IRQ's exit drains.
  bool simulate_all(SlabModel& m, std::vector<Prediction>* nmi_out, Prediction* task_out,
                    std::pair<int, int>* in_irq = nullptr) const {
    // The hook must see the task op's own CPU lock first: nothing may be
    // deferred (their slow paths would drain it, taking CPU locks, before).
    if (task_.mode != Mode::kSpinning || m.pending_bound != 0) return false;
    Prediction p;
    if (task_.kind == Step::kAlloc) {
      if (class_of(task_.size) + (task_.account ? kClasses : 0) != held_) return false;
      if (!m.alloc_safe(held_)) return false;
      if (!simulate(m, nmi_, Ctx::kNmi, held_, nmi_out)) return false;
      if (!m.alloc_safe(held_)) return false;
      int min = m.pending_min, bound = m.pending_bound;
      p = m.alloc(task_.size, task_.account, Mode::kNolock, -1);  // no drain after its start
      m.pending_min = min;
      m.pending_bound = bound;
    } else if (task_.kind == Step::kFree) {
      const Obj* o = m.find(task_.id);
      if (o == nullptr || o->cache != held_) return false;
      m.free(task_.id, Mode::kSpinning, -1);  // drains, then clears the object's bit: before the lock
      if (!simulate(m, nmi_, Ctx::kNmi, held_, nmi_out)) return false;
    } else {
      return false;
    }
    if (in_irq) *in_irq = {m.pending_min, m.pending_bound};
    m.drained();  // the IRQ's exit frees what the NMI deferred
    if (task_out) *task_out = p;
    return true;
  }

  void checkPreconditions(const SlabModel& s0) const override {
    SlabModel m = s0;
    RC_PRE(simulate_all(m, nullptr, nullptr));
  }
  void apply(SlabModel& s0) const override { simulate_all(s0, nullptr, nullptr); }

  using Work = NestedSteps<Executor, Step>;

  void run(const SlabModel& s0, SlabSut& sut) const override {
    SlabModel m = s0;
    std::vector<Prediction> expect;
    Prediction task_expect;
    std::pair<int, int> pending_expect;
    simulate_all(m, &expect, &task_expect, &pending_expect);
    sut.size_for(m.next_id);
    std::vector<Observed> seen(expect.size());
    Executor ex{sut, expect, seen};
    Work work{&ex, &nmi_};
    // The holder is an IRQ: only interrupt frames lock a CPU slab on their
    // way (task frames' fast paths take none, and use another set).
    InterruptAtSite::arm(Site::kSlabCpuLocked, &Work::run_in_interrupt, &work, InterruptKind::kNmi, 1,
                         ContextLevel::kIrq);
    void* p = nullptr;
    bool stamp_ok = true;
    std::uint64_t pending_in_irq = 0;
    testing::run_in_irq([&] {
      if (task_.kind == Step::kAlloc) {
        Gfp flags = (task_.zero ? kGfpZero : Gfp{}) | (task_.account ? kGfpAccount : Gfp{}) | kGfpAtomic;
        p = kmalloc(task_.size, flags);
      } else {
        void* obj = sut.objs[task_.id];
        stamp_ok = obj != nullptr && stamp_intact(obj, sut.sizes[task_.id], task_.id);
        sut.objs[task_.id] = nullptr;
        kfree(obj);
      }
      pending_in_irq = slab_deferred_pending();
    });
    bool fired = InterruptAtSite::disarm();
    std::ostringstream what;
    show(what);
    if (p != nullptr) {
      stamp(p, task_.size, task_expect.id);
      sut.objs[task_expect.id] = p;
      sut.sizes[task_expect.id] = task_.size;
    }
    if (!fired) prop_fail("the NMI at the CPU slab lock did not run: " + what.str());
    if (pending_in_irq < static_cast<std::uint64_t>(pending_expect.first) ||
        pending_in_irq > static_cast<std::uint64_t>(pending_expect.second))
      prop_fail("deferred: " + std::to_string(pending_in_irq) + " frees pending in the irq, the model says " +
                std::to_string(pending_expect.first) + ".." + std::to_string(pending_expect.second) + " in '" +
                what.str() + "'");
    std::size_t at = 0;
    check_steps(nmi_, expect, seen, at, "nmi in the CPU slab");
    if (task_.kind == Step::kAlloc) {
      if (p == nullptr) prop_fail("alloc result: the interrupted kmalloc failed: " + what.str());
      if (kmalloc_object_size(p) != object_size(task_expect.cache))
        prop_fail("object size: the interrupted kmalloc returned " + std::to_string(kmalloc_object_size(p)) +
                  " bytes: " + what.str());
    } else if (!stamp_ok) {
      prop_fail("contents: the object freed by the interrupted kfree was overwritten while live: " + what.str());
    }
    check_state(m, sut, "'" + what.str() + "'");
  }

  void show(std::ostream& os) const override {
    os << "while an irq holds the CPU lock of " << cache_name(held_) << " in '";
    show_step(os, task_);
    os << "': nmi{";
    show_steps(os, nmi_);
    os << "}";
  }

 private:
  Step task_;
  int held_;
  std::vector<Step> nmi_;
};

// An NMI in the middle of the lock-free deferred lists: at
// kSlabDeferredPush (between reading a deferred list's head and the CAS of
// the task's kfree_nolock: the NMI's own deferred pushes make that CAS fail
// and retry) or at kSlabDeferredDrain (between objects of the drain a
// spinning kmalloc/kfree slow path starts with). Whether the task reaches the site
// depends on which slab its object is in (the model does not know), so
// when the site is not reached the NMI runs right after the task op: the
// model's predictions are the same either way (nothing is held).
class NmiInDeferredList : public SlabCmd {
 public:
  NmiInDeferredList(Step task_op, Site site, std::vector<Step> nmi)
      : task_(std::move(task_op)), site_(site), nmi_(std::move(nmi)) {}

  bool simulate_all(SlabModel& m, std::vector<Prediction>* nmi_out, Prediction* task_out) const {
    std::vector<Prediction> task;
    if (!simulate(m, {task_}, Ctx::kTask, -1, &task)) return false;
    if (task_out) *task_out = task[0];
    // At kSlabDeferredDrain the NMI runs before the task's kmalloc returns:
    // it cannot know that object.
    if (task[0].ok && references(nmi_, task[0].id)) return false;
    return simulate(m, nmi_, Ctx::kNmi, -1, nmi_out);
  }
  static bool references(const std::vector<Step>& steps, int id) {
    for (const Step& s : steps)
      if ((s.kind == Step::kFree && s.id == id) || references(s.nested, id)) return true;
    return false;
  }
  void checkPreconditions(const SlabModel& s0) const override {
    SlabModel m = s0;
    RC_PRE(task_.kind == Step::kAlloc || task_.kind == Step::kFree);
    RC_PRE(simulate_all(m, nullptr, nullptr));
  }
  void apply(SlabModel& s0) const override { simulate_all(s0, nullptr, nullptr); }

  using Work = NestedSteps<Executor, Step>;

  void run(const SlabModel& s0, SlabSut& sut) const override {
    SlabModel m = s0;
    std::vector<Prediction> expect;
    Prediction task_expect;
    simulate_all(m, &expect, &task_expect);
    sut.size_for(m.next_id);
    std::vector<Observed> seen(expect.size());
    Executor ex{sut, expect, seen};
    Work work{&ex, &nmi_};
    std::vector<Prediction> task_expects{task_expect};
    std::vector<Observed> task_seen(1);
    Executor task_ex{sut, task_expects, task_seen};
    InterruptAtSite::arm(site_, &Work::run_in_interrupt, &work);
    task_ex.run({task_});
    bool fired = InterruptAtSite::disarm();
    if (!fired) testing::run_in_nmi([&] { ex.run(nmi_); });
    std::ostringstream what;
    show(what);
    std::size_t at = 0;
    check_steps({task_}, task_expects, task_seen, at, "task");
    at = 0;
    check_steps(nmi_, expect, seen, at, fired ? "nmi at the site" : "nmi after the task op");
    check_state(m, sut, "'" + what.str() + "'");
  }

  void show(std::ostream& os) const override {
    os << "at " << site_name(site_) << " in '";
    show_step(os, task_);
    os << "' (or right after): nmi{";
    show_steps(os, nmi_);
    os << "}";
  }

 private:
  Step task_;
  Site site_;
  std::vector<Step> nmi_;
};

rc::Gen<std::shared_ptr<const SlabCmd>> gen_command(const SlabModel& model) {
  return rc::gen::exec([model]() -> std::shared_ptr<const SlabCmd> {
    SlabModel m = model;
    int pick = uniform(0, 10);
    if (pick < 5) {
      std::vector<Step> steps;
      for (int tries = 0; tries < 20 && steps.empty(); ++tries) steps = gen_steps(m, Ctx::kTask, -1, 1);
      RC_PRE(!steps.empty());
      return std::make_shared<RunSteps>(std::move(steps));
    }
    if (pick < 6) {
      Step s;
      s.kind = coin() ? Step::kDrainLocal : Step::kDrainAll;
      return std::make_shared<RunSteps>(std::vector<Step>{s});
    }
    if (pick == 8 && !m.live.empty()) {
      // An NMI inside the deferred-list code of the task op.
      Step task;
      SlabModel at_nmi = m;
      Site site;
      const Obj o = m.live[uniform<std::size_t>(0, m.live.size())];
      if (coin()) {
        task.kind = Step::kFree;
        task.mode = Mode::kNolock;
        task.id = o.id;
        site = Site::kSlabDeferredPush;
      } else {
        site = Site::kSlabDeferredDrain;
        task.mode = Mode::kSpinning;
        if (coin()) {
          task.kind = Step::kFree;
          task.id = o.id;
        } else {
          task.kind = Step::kAlloc;
          task.size = kSizes[uniform<std::size_t>(0, 12)];
        }
      }
      std::vector<Prediction> task_expect;
      RC_PRE(simulate(at_nmi, {task}, Ctx::kTask, -1, &task_expect));
      // The NMI's steps may not free the task's new object (it may run before
      // the kmalloc returns): generate them without it, simulate them with it.
      SlabModel gen_model = at_nmi;
      if (task_expect[0].ok) {
        gen_model.live.erase(std::remove_if(gen_model.live.begin(), gen_model.live.end(),
                                            [&](const Obj& x) { return x.id == task_expect[0].id; }),
                             gen_model.live.end());
      }
      std::vector<Step> nmi = gen_steps(gen_model, Ctx::kNmi, -1, kMaxSubSteps);
      return std::make_shared<NmiInDeferredList>(task, site, std::move(nmi));
    }
    if (pick < 9 || m.pending_bound != 0) {
      Step s;
      s.kind = coin() ? Step::kIrq : Step::kNmi;
      SlabModel trial = m;
      s.nested = gen_steps(trial, s.kind == Step::kIrq ? Ctx::kIrq : Ctx::kNmi, -1, kMaxSubSteps);
      return std::make_shared<RunSteps>(std::vector<Step>{s});
    }
    // The task's kmalloc (mostly of a class that has live objects, so that
    // the NMI can free some of them into the held cache) or kfree.
    Step task;
    task.mode = Mode::kSpinning;
    int held;
    SlabModel at_nmi = m;
    if (!m.live.empty() && coin()) {
      const Obj o = m.live[uniform<std::size_t>(0, m.live.size())];
      held = o.cache;
      if (coin()) {
        task.kind = Step::kFree;
        task.id = o.id;
        at_nmi.free(o.id, Mode::kSpinning, -1);
      } else {
        task.kind = Step::kAlloc;
        task.size = object_size(o.cache);
        task.account = o.cache >= kClasses;
      }
    } else {
      task.kind = Step::kAlloc;
      task.size = kSizes[uniform<std::size_t>(0, 12)];
      task.account = uniform(0, 4) == 0;
      held = class_of(task.size) + (task.account ? kClasses : 0);
    }
    std::vector<Step> nmi;
    // Often first a kfree_nolock of an object of the held cache: it may not
    // touch the held CPU freelist.
    std::vector<int> same;
    for (const Obj& x : at_nmi.live)
      if (x.cache == held) same.push_back(x.id);
    if (!same.empty() && coin()) {
      Step f;
      f.kind = Step::kFree;
      f.mode = Mode::kNolock;
      f.id = same[uniform<std::size_t>(0, same.size())];
      if (simulate(at_nmi, {f}, Ctx::kNmi, held, nullptr)) nmi.push_back(f);
    }
    for (Step& x : gen_steps(at_nmi, Ctx::kNmi, held, kMaxSubSteps)) nmi.push_back(std::move(x));
    return std::make_shared<NmiInCpuSlab>(task, held, std::move(nmi));
  });
}

void slab_state_machine(Breakage broken) {
  PageWorld world(kArena);
  if (std::string_view e = slab_init(); !e.empty()) prop_fail("slab_init: " + std::string(e));
  struct SlabDown {
    ~SlabDown() {
      reset_hooks();
      slab_shutdown();
    }
  } slab_down;
  SlabModel m0;
  m0.broken = broken;
  const auto commands = *rc::gen::scale(0.5, rc::state::gen::commands(m0, &gen_command));
  SlabSut sut;
  rc::state::runAll(commands, m0, sut);

  // Everything freed, then quiesce: nothing deferred, nothing in use, every
  // page back.
  SlabModel end = m0;
  rc::state::applyAll(commands, end);
  for (const Obj& o : end.live) kfree(sut.objs[o.id]);
  slab_drain_all();
  drain_all_pages();
  std::uint64_t pending = slab_deferred_pending();
  if (pending != 0) prop_fail("deferred: " + std::to_string(pending) + " frees still pending after slab_drain_all()");
  for (int c = 0; c < kKmallocCaches; ++c) {
    SlabCacheStats st = slab_cache_stats(c);
    if (st.objects_in_use != 0 || st.slabs != 0)
      prop_fail("quiesced: " + cache_name(c) + " still has " + std::to_string(st.objects_in_use) + " objects, " +
                std::to_string(st.slabs) + " slabs after freeing everything and slab_drain_all()");
  }
  InvariantResult inv = slab_check_invariants();
  if (!inv.ok) prop_fail("slab_check_invariants after slab_drain_all: " + inv.what);
  if (zone_free_pages() != kArena)
    prop_fail("quiesced: " + std::to_string(zone_free_pages()) + " of " + std::to_string(kArena) +
              " pages free after freeing everything");
}

}  // namespace

RC_GTEST_PROP(SlabProps, KmallocMatchesModel, ()) { slab_state_machine(Breakage::kNone); }

TEST(SlabProps, ObjectsInUse_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("slab/in-use", [] { slab_state_machine(Breakage::kInUseOffByOne); }),
                       "objects in use");
}

TEST(SlabProps, NextClassUnderHeldLock_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("slab/next-class", [] { slab_state_machine(Breakage::kNoNextClass); }),
                       "object size|next class");
}

TEST(SlabProps, LiveObjectsDistinct_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("slab/overlap", [] { slab_state_machine(Breakage::kKeepFreedRanges); }), "overlap");
}

TEST(SlabProps, HeldFreeNotDeferred_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("slab/deferred", [] { slab_state_machine(Breakage::kHeldFreeDefers); }), "deferred");
}

}  // namespace anyctx::props
