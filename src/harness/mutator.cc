#include "harness/mutator.h"

#include <algorithm>
#include <bit>
#include <string_view>

#include "harness/interleave.h"
#include "harness/planner.h"
#include "harness/text.h"

namespace anyctx::harness {
namespace {

using K = OpKind;

constexpr const char* kMutationNames[] = {
#define ANYCTX_MUTATION_NAME(name, text) text,
    ANYCTX_MUTATION_LIST(ANYCTX_MUTATION_NAME)
#undef ANYCTX_MUTATION_NAME
};
static_assert(sizeof kMutationNames / sizeof kMutationNames[0] == kMutationKinds);

// Relative weights of the kinds, in list order. Anchored switches weigh more
// than event switches; argument edits and inserts most.
constexpr std::uint8_t kWeights[] = {
    10,  // insert_op
    6,   // delete_op
    4,   // duplicate_op
    5,   // replace_op
    3,   // swap_ops
    10,  // change_op_args
    4,   // byte_mutate_op_args
    4,   // move_op_to_cpu
    3,   // mirror_ops
    2,   // remote_frees
    3,   // release_held
    4,   // move_op_into_injection
    3,   // move_op_out_of_injection
    6,   // add_injection
    3,   // delete_injection
    8,   // retarget_injection
    8,   // add_anchored_switch
    8,   // retarget_anchored_switch
    3,   // delete_anchored_switch
    2,   // add_event_switch
    3,   // move_event_switch
    2,   // delete_event_switch
    2,   // change_cpu_count
    2,   // toggle_pct
    4,   // change_pct
    3,   // change_fault
    5,   // byte_mutate_encoding
};
static_assert(sizeof kWeights == kMutationKinds, "one weight per kind");

static_assert(kInjectionSites <= 64, "site masks are 64-bit");

constexpr std::uint64_t site_bit(Site s) { return std::uint64_t{1} << static_cast<int>(s); }
constexpr std::uint64_t kBoundaryBit = std::uint64_t{1} << kOpBoundary;

constexpr std::uint64_t kLockSites =
    site_bit(Site::kSpinWait) | site_bit(Site::kLocalLockHeld) | site_bit(Site::kLocalLockRelease);
constexpr std::uint64_t kPageSites = []() {
  std::uint64_t m = 0;
#define ANYCTX_MUT_SITE_BIT(name, text) m |= site_bit(Site::name);
  ANYCTX_PAGE_SITES(ANYCTX_MUT_SITE_BIT)
  ANYCTX_PCP_REQUEST_SITES(ANYCTX_MUT_SITE_BIT)
  return m;
}();
constexpr std::uint64_t kMemcgSites = []() {
  std::uint64_t m = 0;
  ANYCTX_MEMCG_SITES(ANYCTX_MUT_SITE_BIT)
  return m;
}();
constexpr std::uint64_t kSlabSites = []() {
  std::uint64_t m = 0;
  ANYCTX_SLAB_SITES(ANYCTX_MUT_SITE_BIT)
#undef ANYCTX_MUT_SITE_BIT
  return m;
}();
constexpr std::uint64_t kInsideSites = []() {
  std::uint64_t m = 0;
  for (int s = 0; s < kInjectionSites; ++s)
    if (site_inside_update(s)) m |= std::uint64_t{1} << s;
  return m;
}();

// The sites an op of `kind` can reach through the layers it calls (spin
// loops and local locks everywhere a lock is taken; accounted allocations
// reach memcg; slabs get their pages from the page allocator).
constexpr std::uint64_t op_reach(OpKind kind) {
  switch (kind) {
    case K::kAllocPages: case K::kFreePages: return kPageSites | kLockSites | kMemcgSites;
    case K::kGetPage: case K::kPutPage: case K::kDrainLocal: case K::kDrainAll:
      return kPageSites | kLockSites;
    case K::kCpuCycle: return kPageSites | kLockSites | kSlabSites | kMemcgSites;
    case K::kKmalloc: case K::kKfree: return kSlabSites | kPageSites | kLockSites | kMemcgSites;
    case K::kMemcgSetMax: case K::kMemcgCharge: case K::kMemcgUncharge: case K::kMemcgSwitch:
      return kMemcgSites | kLockSites;
    case K::kSpinLock: case K::kSpinTryLock: case K::kSpinUnlock: case K::kLocalLock: case K::kLocalTryLock:
    case K::kLocalUnlock:
      return kLockSites;
    default: return 0;
  }
}

// Return: the sites the target's ops can reach, kOpBoundary included.
std::uint64_t target_reach(const TargetSpec& t) {
  std::uint64_t m = kBoundaryBit;
  for (OpKind k : t.task_ops) m |= op_reach(k);
  return m;
}

// Return: a uniformly chosen set bit of `mask` (not 0).
int pick_bit(std::uint64_t mask, Rng& rng) {
  int skip = static_cast<int>(rng.below(static_cast<std::uint32_t>(std::popcount(mask))));
  for (; skip > 0; --skip) mask &= mask - 1;
  return std::countr_zero(mask);
}

std::uint16_t pick_site(const TargetSpec& t, Rng& rng) {
  std::uint64_t reach = target_reach(t);
  std::uint64_t inside = reach & kInsideSites;
  std::uint32_t r = rng.below(100);
  if (r < kInsideUpdatePercent && inside != 0) return static_cast<std::uint16_t>(pick_bit(inside, rng));
  if (r < 95) return static_cast<std::uint16_t>(pick_bit(reach, rng));
  return static_cast<std::uint16_t>(rng.below(kInjectionSites));
}

// 1 most of the time, then small, now and then anything up to `max`.
std::uint8_t pick_nth(Rng& rng, int max) {
  std::uint32_t r = rng.below(100);
  if (r < 50) return 1;
  if (r < 85) return static_cast<std::uint8_t>(2 + rng.below(std::min(3, max - 1)));
  return static_cast<std::uint8_t>(1 + rng.below(static_cast<std::uint32_t>(max)));
}

const std::vector<OpKind>& kinds_for(const TargetSpec& t, Ctx ctx) {
  return ctx == Ctx::kTask ? t.task_ops : ctx == Ctx::kIrq ? t.irq_ops : t.nmi_ops;
}

bool produces_slot(OpKind k) { return k == K::kAllocPages || k == K::kKmalloc || k == K::kMemcgCharge; }

// Return: the op kind that gives back what a producer of `kind` fills a
// slot with (free_pages, kfree, memcg_uncharge).
OpKind release_of(OpKind kind) {
  return kind == K::kAllocPages ? K::kFreePages : kind == K::kKmalloc ? K::kKfree : K::kMemcgUncharge;
}

// Slots that some op of the program fills.
std::uint8_t filled_slots(const Program& p) {
  std::uint8_t mask = 0;
  auto scan = [&](const std::vector<Op>& ops) {
    for (const Op& op : ops)
      if (produces_slot(op.kind)) mask = static_cast<std::uint8_t>(mask | 1u << op.slot);
  };
  for (const auto& ops : p.cpus) scan(ops);
  for (const Injection& inj : p.injections) scan(inj.ops);
  return mask;
}

// A slot for an op of `kind`: a consumer (free, get, put, verify, uncharge)
// mostly names a slot that some op fills; a producer mostly a free one.
std::uint8_t pick_slot(const Program& p, OpKind kind, Rng& rng) {
  std::uint8_t filled = filled_slots(p);
  if (produces_slot(kind)) {
    std::uint8_t empty = static_cast<std::uint8_t>(~filled);
    if (empty != 0 && rng.chance(70)) return static_cast<std::uint8_t>(pick_bit(empty, rng));
  } else if (filled != 0 && rng.chance(85)) {
    return static_cast<std::uint8_t>(pick_bit(filled, rng));
  }
  return static_cast<std::uint8_t>(rng.below(kSlots));
}

Op random_op_of(OpKind kind, Ctx ctx, const Program& p, Rng& rng) {
  Op op;
  op.kind = kind;
  op.path = rng.chance(50) ? Path::kNolock : Path::kSpinning;
  switch (kind) {
    case K::kAllocPages: op.order = static_cast<std::uint8_t>(rng.chance(60) ? 0 : rng.below(6)); break;
    case K::kKmalloc: op.order = static_cast<std::uint8_t>(rng.below(kKmallocSizeCount)); break;
    default: op.order = static_cast<std::uint8_t>(rng.below(kCgroups)); break;  // cgroup or lock
  }
  switch (kind) {
    case K::kAllocPages: case K::kKmalloc: op.arg = static_cast<std::uint8_t>(rng.chance(60) ? 0 : rng.below(4)); break;
    case K::kMemcgSetMax: op.arg = static_cast<std::uint8_t>(rng.below(kMemcgLimitCount)); break;
    case K::kMemcgCharge: op.arg = static_cast<std::uint8_t>(1 + rng.below(kMaxChargePages)); break;
    default: break;
  }
  if (op_has_slot(kind)) op.slot = pick_slot(p, kind, rng);
  return normalize_op(op, ctx);
}

Op random_op(const TargetSpec& t, Ctx ctx, const Program& p, Rng& rng) {
  const auto& kinds = kinds_for(t, ctx);
  return random_op_of(kinds[rng.below(static_cast<std::uint32_t>(kinds.size()))], ctx, p, rng);
}

}  // namespace

// An interrupt that touches what the code it interrupts touches (the same
// cache, the same cgroup's stock, the same free list) is where the races
// are; a random op rarely does.
bool echo_op(const TargetSpec& t, Ctx ctx, const Program& p, int cpu, Rng& rng, Op& out) {
  const Op* all[kMaxProgramCpus * kMaxOps + kMaxInjections * kMaxInjectionOps];
  int nall = 0, nmine = 0;
  for (int pass = 0; pass < 2; ++pass) {  // the CPU's own ops first
    for (int c = 0; c < static_cast<int>(p.cpus.size()); ++c) {
      if ((c == cpu) != (pass == 0)) continue;
      for (const Op& op : p.cpus[c])
        if (op_allowed(t, ctx, op.kind)) all[nall++] = &op;
    }
    if (pass == 0) nmine = nall;
  }
  for (const Injection& inj : p.injections)
    for (const Op& op : inj.ops)
      if (op_allowed(t, ctx, op.kind)) all[nall++] = &op;
  if (nall == 0) return false;
  int i = nmine != 0 && rng.chance(60) ? static_cast<int>(rng.below(static_cast<std::uint32_t>(nmine)))
                                       : static_cast<int>(rng.below(static_cast<std::uint32_t>(nall)));
  out = *all[i];
  if (produces_slot(out.kind)) out.slot = pick_slot(p, out.kind, rng);
  if (op_has_path(out.kind) && ctx != Ctx::kTask && rng.chance(50)) out.path = Path::kNolock;
  out = normalize_op(out, ctx);
  return true;
}

// Two CPUs contend only when both reach the same structure while one is
// inside it; a copy of one CPU's ops is the shortest way to make that so.
// Return: whether `from` is a CPU of `p` and `to` another one, or the next
// new one the target allows (mirror_ops, request_ops).
namespace {
bool other_cpu_allowed(const TargetSpec& t, const Program& p, int from, int to) {
  const int ncpus = static_cast<int>(p.cpus.size());
  return from >= 0 && from < ncpus && to >= 0 && to != from && to <= ncpus && to < t.max_cpus;
}
}  // namespace

bool mirror_ops(const TargetSpec& t, Program& p, int from, int to, Rng& rng) {
  const int ncpus = static_cast<int>(p.cpus.size());
  if (!other_cpu_allowed(t, p, from, to) || p.cpus[static_cast<std::size_t>(from)].empty()) return false;
  if (to == ncpus) p.cpus.emplace_back();
  std::vector<Op>& dst = p.cpus[static_cast<std::size_t>(to)];
  dst.clear();
  // Producers of the copy take slots nothing else fills, while there are
  // any; consumers follow the producer they consumed from.
  std::uint8_t free_slots = static_cast<std::uint8_t>(~filled_slots(p));
  std::uint8_t renamed[kSlots];
  for (int s = 0; s < kSlots; ++s) renamed[s] = static_cast<std::uint8_t>(s);
  for (Op op : p.cpus[static_cast<std::size_t>(from)]) {
    if (produces_slot(op.kind) && free_slots != 0) {
      int s = pick_bit(free_slots, rng);
      free_slots = static_cast<std::uint8_t>(free_slots & ~(1u << s));
      renamed[op.slot] = static_cast<std::uint8_t>(s);
      op.slot = static_cast<std::uint8_t>(s);
    } else if (op_has_slot(op.kind) && !produces_slot(op.kind)) {
      op.slot = renamed[op.slot];
    }
    if (op_has_path(op.kind) && rng.chance(33))
      op.path = op.path == Path::kNolock ? Path::kSpinning : Path::kNolock;
    dst.push_back(normalize_op(op, Ctx::kTask));
  }
  return true;
}

// A drain request reaches a section only from another CPU, and only for
// what that section holds: a limit over the cgroup its stock caches, a pcp.
bool request_ops(const TargetSpec& t, Program& p, int from, int to, int site, Rng& rng) {
  const int ncpus = static_cast<int>(p.cpus.size());
  if (!other_cpu_allowed(t, p, from, to)) return false;
  const std::uint8_t held = site_effect(site).takes;
  const Site s = static_cast<Site>(site);
  const bool stock =
      held == kHeldStock || s == Site::kStockEdit || s == Site::kStockDrain || s == Site::kChargeWalk;
  const bool pcp = held == kHeldPcp || s == Site::kPcpListEdit || s == Site::kPcpRefill || s == Site::kPcpBulkFree ||
                   s == Site::kPcpDrainServe || s == Site::kPcpPark;
  std::vector<Op> ops;
  if (stock) {
    if (!op_allowed(t, Ctx::kTask, K::kMemcgSetMax) || !op_allowed(t, Ctx::kTask, K::kMemcgCharge)) return false;
    // A limit on the top (below the root) of each subtree `from` charges,
    // with a charge over it: the stock caches whichever cgroup `from`
    // charged last before `site`, and one of the charges meets the limit
    // over it and posts the request (one subtree drawn at random missed
    // half the time: busy-stock-drain's base charges two).
    int charged[kCgroups][kMaxOps], n[kCgroups] = {}, tops[kCgroups], ntops = 0;
    for (const Op& op : p.cpus[static_cast<std::size_t>(from)]) {
      if (op.kind != K::kMemcgCharge || kCgroupParent[op.order] < 0) continue;
      int top = op.order;
      while (kCgroupParent[top] > 0) top = kCgroupParent[top];
      if (n[top] == 0) tops[ntops++] = top;
      charged[top][n[top]++] = op.order;
    }
    if (ntops == 0) return false;
    std::uint8_t empty = static_cast<std::uint8_t>(~filled_slots(p));
    for (int i = 0; i < ntops; ++i) {
      const int top = tops[i];
      ops.push_back(normalize_op(Op{K::kMemcgSetMax, Path::kSpinning, static_cast<std::uint8_t>(top), 1, 0}, Ctx::kTask));
      Op charge{K::kMemcgCharge, Path::kSpinning,
                static_cast<std::uint8_t>(charged[top][rng.below(static_cast<std::uint32_t>(n[top]))]), kMaxChargePages,
                0};
      charge.slot = static_cast<std::uint8_t>(empty != 0 ? pick_bit(empty, rng) : rng.below(kSlots));
      empty = static_cast<std::uint8_t>(empty & ~(1u << charge.slot));
      ops.push_back(normalize_op(charge, Ctx::kTask));
    }
  } else if (pcp) {
    if (!op_allowed(t, Ctx::kTask, K::kDrainAll)) return false;
    ops.push_back(normalize_op(Op{K::kDrainAll, Path::kSpinning, 0, 0, 0}, Ctx::kTask));
  } else {
    return false;
  }
  if (to == ncpus) p.cpus.emplace_back();
  p.cpus[static_cast<std::size_t>(to)] = std::move(ops);
  return true;
}

bool remote_free_ops(const TargetSpec& t, Program& p, int from, int to, Rng& rng) {
  if (!other_cpu_allowed(t, p, from, to)) return false;
  // The kind of what each slot is filled with (the first producer's).
  OpKind filled[kSlots];
  bool any[kSlots] = {};
  auto scan = [&](const std::vector<Op>& ops) {
    for (const Op& op : ops)
      if (produces_slot(op.kind) && !any[op.slot]) {
        any[op.slot] = true;
        filled[op.slot] = op.kind;
      }
  };
  for (const auto& ops : p.cpus) scan(ops);
  for (const Injection& inj : p.injections) scan(inj.ops);
  std::vector<Op> ops;
  for (int s = 0; s < kSlots; ++s) {
    if (!any[s]) continue;
    const OpKind release = release_of(filled[s]);
    if (!op_allowed(t, Ctx::kTask, release)) continue;
    Op op{release, rng.chance(50) ? Path::kNolock : Path::kSpinning, 0, 0, static_cast<std::uint8_t>(s)};
    ops.push_back(normalize_op(op, Ctx::kTask));
  }
  if (ops.empty()) return false;
  if (to == static_cast<int>(p.cpus.size())) p.cpus.emplace_back();
  p.cpus[static_cast<std::size_t>(to)] = std::move(ops);
  return true;
}

bool release_held_ops(const TargetSpec& t, Program& p, int cpu) {
  if (cpu < 0 || cpu >= static_cast<int>(p.cpus.size())) return false;
  std::vector<Op>& ops = p.cpus[static_cast<std::size_t>(cpu)];
  OpKind holds[kSlots];
  bool held[kSlots] = {};
  for (const Op& op : ops) {
    if (produces_slot(op.kind)) {
      held[op.slot] = true;
      holds[op.slot] = op.kind;
    } else if (op_has_slot(op.kind) && held[op.slot] && op.kind == release_of(holds[op.slot])) {
      held[op.slot] = false;
    }
  }
  bool added = false;
  for (int slot = 0; slot < kSlots && static_cast<int>(ops.size()) < kMaxOps; ++slot) {
    if (!held[slot] || !op_allowed(t, Ctx::kTask, release_of(holds[slot]))) continue;
    ops.push_back(normalize_op(Op{release_of(holds[slot]), Path::kNolock, 0, 0, static_cast<std::uint8_t>(slot)},
                               Ctx::kTask));
    added = true;
  }
  return added;
}

namespace {

// A new op for a list in `ctx`: an echo of the program's ops (echo_op,
// `echo_percent` of the time), else a random one.
Op new_op(const TargetSpec& t, Ctx ctx, const Program& p, int cpu, int echo_percent, Rng& rng) {
  Op op;
  if (rng.chance(static_cast<unsigned>(echo_percent)) && echo_op(t, ctx, p, cpu, rng, op)) return op;
  return random_op(t, ctx, p, rng);
}

// An op list of the program: a CPU's (task context) or an injection's.
struct OpList {
  std::vector<Op>* ops = nullptr;
  Ctx ctx = Ctx::kTask;
  int max = 0;
  int cpu = -1;  // the CPU (its own, or the injection's)
  bool injection = false;
};

enum class Need { kAny, kNonEmpty, kRoom };

// Picks a list that has ops (kNonEmpty) or room (kRoom): a CPU's list 75 %
// of the time when there is one. Return: false when none qualifies.
bool pick_list(Program& p, Rng& rng, Need need, OpList& out) {
  OpList cpus[kMaxProgramCpus];
  OpList injs[kMaxInjections];
  int ncpu = 0, ninj = 0;
  auto ok = [&](const std::vector<Op>& ops, int max) {
    return need == Need::kAny || (need == Need::kNonEmpty ? !ops.empty() : static_cast<int>(ops.size()) < max);
  };
  for (int c = 0; c < static_cast<int>(p.cpus.size()); ++c)
    if (ok(p.cpus[c], kMaxOps)) cpus[ncpu++] = OpList{&p.cpus[c], Ctx::kTask, kMaxOps, c};
  for (Injection& inj : p.injections)
    if (ok(inj.ops, kMaxInjectionOps)) injs[ninj++] = OpList{&inj.ops, inj.kind, kMaxInjectionOps, inj.cpu, true};
  if (ncpu == 0 && ninj == 0) return false;
  bool use_cpu = ninj == 0 || (ncpu != 0 && rng.chance(75));
  out = use_cpu ? cpus[rng.below(static_cast<std::uint32_t>(ncpu))] : injs[rng.below(static_cast<std::uint32_t>(ninj))];
  return true;
}

// A CPU with ops other than `except` (or any other CPU when none has ops).
// Return: -1 when the program has no other CPU.
int pick_busy_cpu(const Program& p, Rng& rng, int except) {
  int busy[kMaxProgramCpus], nbusy = 0, any[kMaxProgramCpus], nany = 0;
  for (int c = 0; c < static_cast<int>(p.cpus.size()); ++c) {
    if (c == except) continue;
    any[nany++] = c;
    if (!p.cpus[c].empty()) busy[nbusy++] = c;
  }
  if (nany == 0) return -1;
  if (nbusy != 0 && rng.chance(90)) return busy[rng.below(static_cast<std::uint32_t>(nbusy))];
  return any[rng.below(static_cast<std::uint32_t>(nany))];
}

template <typename T>
void insert_at(std::vector<T>& v, std::size_t i, T x) {
  v.insert(v.begin() + static_cast<std::ptrdiff_t>(i), std::move(x));
}

template <typename T>
void erase_at(std::vector<T>& v, std::size_t i) {
  v.erase(v.begin() + static_cast<std::ptrdiff_t>(i));
}

std::uint32_t index_in(Rng& rng, std::size_t size) { return rng.below(static_cast<std::uint32_t>(size)); }

// Keeps event switches strictly increasing with gaps of at most 255.
void fix_schedule(std::vector<Switch>& schedule) {
  std::uint32_t next = 0;
  for (Switch& s : schedule) {
    if (s.event < next) s.event = next;
    if (s.event - next > 255) s.event = next + 255;
    next = s.event + 1;
  }
}

// Makes any program of the target's ops valid for the target: counts,
// CPUs named, contexts, argument ranges, PCT against written switches.
void repair(const TargetSpec& t, Program& p) {
  if (static_cast<int>(p.cpus.size()) < t.min_cpus) p.cpus.resize(static_cast<std::size_t>(t.min_cpus));
  if (static_cast<int>(p.cpus.size()) > t.max_cpus) p.cpus.resize(static_cast<std::size_t>(t.max_cpus));
  const int n = static_cast<int>(p.cpus.size());
  auto fix_ops = [&](std::vector<Op>& ops, Ctx ctx, int max) {
    std::erase_if(ops, [&](const Op& op) { return !op_allowed(t, ctx, op.kind); });
    if (static_cast<int>(ops.size()) > max) ops.resize(static_cast<std::size_t>(max));
    for (Op& op : ops) op = normalize_op(op, ctx);
  };
  for (auto& ops : p.cpus) fix_ops(ops, Ctx::kTask, kMaxOps);
  if (!t.injections) p.injections.clear();
  if (static_cast<int>(p.injections.size()) > kMaxInjections) p.injections.resize(kMaxInjections);
  for (Injection& inj : p.injections) {
    if (inj.kind != Ctx::kIrq) inj.kind = Ctx::kNmi;
    if (inj.level != Ctx::kIrq) inj.level = Ctx::kTask;
    inj.cpu = static_cast<std::uint8_t>(inj.cpu % n);
    inj.site = static_cast<std::uint16_t>(inj.site % kInjectionSites);
    inj.nth = static_cast<std::uint8_t>(1 + (inj.nth + 7) % 8);
    fix_ops(inj.ops, inj.kind, kMaxInjectionOps);
  }
  if (n == 1) {
    p.schedule.clear();
    p.anchored.clear();
    p.pct = PctSpec{};
  }
  if (static_cast<int>(p.schedule.size()) > kMaxSwitches) p.schedule.resize(kMaxSwitches);
  for (Switch& s : p.schedule) s.cpu = static_cast<std::uint8_t>(s.cpu % n);
  fix_schedule(p.schedule);
  if (static_cast<int>(p.anchored.size()) > kMaxAnchoredSwitches) p.anchored.resize(kMaxAnchoredSwitches);
  for (AnchoredSwitch& a : p.anchored) {
    a.on = static_cast<std::uint8_t>(a.on % n);
    a.cpu = static_cast<std::uint8_t>(a.cpu % n);
    if (a.cpu == a.on) a.cpu = static_cast<std::uint8_t>((a.on + 1) % n);
    a.site = static_cast<std::uint16_t>(a.site % kInjectionSites);
    if (static_cast<int>(a.level) > 2) a.level = Ctx::kTask;
    a.nth = static_cast<std::uint8_t>(1 + (a.nth + kMaxAnchorNth - 1) % kMaxAnchorNth);
  }
  if (p.pct.on()) {
    if (p.pct.depth > kMaxPctDepth) p.pct.depth = kMaxPctDepth;
    p.pct.steps = static_cast<std::uint16_t>(1 + (p.pct.steps + kMaxPctSteps - 1) % kMaxPctSteps);
    p.schedule.clear();
    p.anchored.clear();
  } else {
    p.pct = PctSpec{};
  }
  if (!t.faults) p.fault = FaultSpec{};
}

// --- the mutations -----------------------------------------------------------------
// Each returns whether it changed the program; the program stays valid.

struct Mutator {
  const TargetSpec& t;
  Program& p;
  Rng& rng;
  ByteMutator bytes;
  const SiteMap* sites;  // where the input went, or nullptr

  int ncpus() const { return static_cast<int>(p.cpus.size()); }

  // A moment the input reached: a CPU, site and level, and the nth hit there.
  struct Spot {
    int cpu = 0;
    std::uint16_t site = kOpBoundary;
    Ctx level = Ctx::kTask;
    std::uint8_t nth = 1;
  };

  // Draws a moment of the input at levels up to `top` (nth at most
  // `max_nth`): kHeldElsewherePercent of the time one where another CPU,
  // switched out, held a lock or was inside an update (the last step of a
  // depth-3 bug), else any hit; inside an update kInsideUpdatePercent of the
  // time, when the input reached one. Return: false (the caller draws from
  // the site tables) when the map is unknown, kObservedSitePercent was not
  // drawn, or nothing qualifies.
  bool observed_spot(Ctx top, int max_nth, Spot& out) {
    if (sites == nullptr || !rng.chance(kObservedSitePercent)) return false;
    const bool want_inside = rng.chance(kInsideUpdatePercent);
    const bool want_elsewhere = rng.chance(kHeldElsewherePercent);
    const int levels = static_cast<int>(top) + 1;
    // In order: held elsewhere and inside an update; held elsewhere; inside
    // an update; any hit. What was not drawn is skipped.
    for (int pass = 0; pass < 4; ++pass) {
      const bool elsewhere = pass < 2, inside = pass % 2 == 0;
      if ((elsewhere && !want_elsewhere) || (inside && !want_inside)) continue;
      // A candidate: one set bit of held_elsewhere (that hit), or one
      // (CPU, site, level) with hits (an nth among them).
      auto each = [&](auto&& visit) {
        for (int c = 0; c < ncpus(); ++c)
          for (int site = 0; site < kInjectionSites; ++site) {
            if (inside && !site_inside_update(site)) continue;
            for (int l = 0; l < levels; ++l) {
              int n = std::min<int>(sites->hits[c][site][l], max_nth);
              if (n == 0) continue;
              if (!elsewhere) {
                if (visit(c, site, l, 0, n)) return;
                continue;
              }
              std::uint32_t bits = sites->held_elsewhere[c][site][l] & (n >= 32 ? ~0u : (1u << n) - 1);
              for (; bits != 0; bits &= bits - 1)
                if (visit(c, site, l, std::countr_zero(bits) + 1, n)) return;
            }
          }
      };
      std::uint32_t count = 0;
      each([&](int, int, int, int, int) { ++count; return false; });
      if (count == 0) continue;
      std::uint32_t k = rng.below(count);
      each([&](int c, int site, int l, int nth, int n) {
        if (k-- != 0) return false;
        out = Spot{c, static_cast<std::uint16_t>(site), static_cast<Ctx>(l),
                   static_cast<std::uint8_t>(nth != 0 ? nth : 1 + static_cast<int>(rng.below(static_cast<std::uint32_t>(n))))};
        return true;
      });
      return true;
    }
    return false;
  }

  // Return: the input's hits of `site` on `cpu` at `level` (0 when unknown).
  int observed_hits(int cpu, int site, Ctx level) const {
    return sites == nullptr || cpu >= ncpus() ? 0 : sites->hits[cpu][site][static_cast<int>(level)];
  }

  // Return: an nth among `n` observed hits (uniform), at most `max`.
  std::uint8_t observed_nth(int n, int max) {
    return static_cast<std::uint8_t>(1 + rng.below(static_cast<std::uint32_t>(std::min(n, max))));
  }

  // Moves `inj` to an observed moment (an IRQ lands in task context only:
  // IRQs are masked in an IRQ). Return: false when observed_spot() drew none.
  bool place_observed(Injection& inj) {
    Spot at;
    if (!observed_spot(inj.kind == Ctx::kIrq ? Ctx::kTask : Ctx::kIrq, 8, at)) return false;
    inj.cpu = static_cast<std::uint8_t>(at.cpu);
    inj.site = at.site;
    inj.level = at.level;
    inj.nth = at.nth;
    return true;
  }

  // Anchors `a` at an observed moment (on, site, level, nth; the caller
  // chooses the CPU it switches to). Return: false when observed_spot() drew
  // none.
  bool place_observed(AnchoredSwitch& a) {
    Spot at;
    if (!observed_spot(Ctx::kNmi, kMaxAnchorNth, at)) return false;
    a.on = static_cast<std::uint8_t>(at.cpu);
    a.site = at.site;
    a.level = at.level;
    a.nth = at.nth;
    return true;
  }

  bool insert_op() {
    OpList l;
    if (!pick_list(p, rng, Need::kRoom, l)) return false;
    Op op = new_op(t, l.ctx, p, l.cpu, l.injection ? kEchoOpPercent : kEchoOpPercent / 2, rng);
    insert_at(*l.ops, rng.below(static_cast<std::uint32_t>(l.ops->size() + 1)), op);
    return true;
  }

  bool delete_op() {
    OpList l;
    if (!pick_list(p, rng, Need::kNonEmpty, l)) return false;
    erase_at(*l.ops, index_in(rng, l.ops->size()));
    return true;
  }

  bool duplicate_op() {
    OpList l;
    if (!pick_list(p, rng, Need::kRoom, l) || l.ops->empty()) return false;
    std::size_t i = index_in(rng, l.ops->size());
    Op copy = (*l.ops)[i];
    insert_at(*l.ops, i + 1 + rng.below(static_cast<std::uint32_t>(l.ops->size() - i)), copy);
    return true;
  }

  bool replace_op() {
    OpList l;
    if (!pick_list(p, rng, Need::kNonEmpty, l)) return false;
    Op& op = (*l.ops)[index_in(rng, l.ops->size())];
    const auto& kinds = kinds_for(t, l.ctx);
    if (kinds.size() < 2) return false;
    OpKind kind = kinds[rng.below(static_cast<std::uint32_t>(kinds.size()))];
    if (kind == op.kind) kind = kinds[(std::find(kinds.begin(), kinds.end(), kind) - kinds.begin() + 1) % kinds.size()];
    Op fresh = random_op_of(kind, l.ctx, p, rng);
    if (op_has_path(kind) && op_has_path(op.kind)) fresh.path = op.path;
    if (op_has_slot(kind) && op_has_slot(op.kind)) fresh.slot = op.slot;
    op = normalize_op(fresh, l.ctx);
    return true;
  }

  bool swap_ops() {
    OpList l;
    if (!pick_list(p, rng, Need::kNonEmpty, l) || l.ops->size() < 2) return false;
    std::size_t i = index_in(rng, l.ops->size());
    std::size_t j = index_in(rng, l.ops->size() - 1);
    if (j >= i) ++j;
    if ((*l.ops)[i] == (*l.ops)[j]) return false;
    std::swap((*l.ops)[i], (*l.ops)[j]);
    return true;
  }

  bool change_op_args() {
    OpList l;
    if (!pick_list(p, rng, Need::kNonEmpty, l)) return false;
    Op& op = (*l.ops)[index_in(rng, l.ops->size())];
    enum Field { kPath, kOrder, kArg, kSlot };
    Field fields[4];
    int n = 0;
    if (op_has_path(op.kind) && l.ctx != Ctx::kNmi) fields[n++] = kPath;
    switch (op.kind) {
      case K::kAllocPages: case K::kKmalloc: case K::kMemcgSetMax: case K::kMemcgCharge:
        fields[n++] = kOrder;
        fields[n++] = kArg;
        break;
      case K::kMemcgSwitch: case K::kSpinLock: case K::kSpinTryLock: case K::kSpinUnlock:
        fields[n++] = kOrder;
        break;
      default: break;
    }
    if (op_has_slot(op.kind)) fields[n++] = kSlot;
    if (n == 0) return false;
    Op before = op;
    switch (fields[rng.below(static_cast<std::uint32_t>(n))]) {
      case kPath: op.path = op.path == Path::kNolock ? Path::kSpinning : Path::kNolock; break;
      case kOrder:
        if (op.kind == K::kAllocPages && rng.chance(50))
          op.order = static_cast<std::uint8_t>(op.order + (rng.chance(50) ? 1 : op.order == 0 ? 1 : -1));
        else
          op.order = static_cast<std::uint8_t>(op.order + 1 + rng.below(16));
        break;
      case kArg:
        if (op.kind == K::kAllocPages || op.kind == K::kKmalloc)
          op.arg = static_cast<std::uint8_t>(op.arg ^ (1 + rng.below(3)));
        else
          op.arg = static_cast<std::uint8_t>(op.arg + 1 + rng.below(kMaxChargePages));
        break;
      case kSlot: op.slot = pick_slot(p, op.kind, rng); break;
    }
    op = normalize_op(op, l.ctx);
    return !(op == before);
  }

  bool byte_mutate_op_args() {
    if (bytes == nullptr) return false;
    OpList l;
    if (!pick_list(p, rng, Need::kNonEmpty, l)) return false;
    Op& op = (*l.ops)[index_in(rng, l.ops->size())];
    std::uint8_t buf[4] = {static_cast<std::uint8_t>(op.path), op.order, op.arg, op.slot};
    std::size_t n = bytes(buf, sizeof buf, sizeof buf);
    for (std::size_t i = std::min(n, sizeof buf); i < sizeof buf; ++i) buf[i] = 0;
    Op m = op;
    m.path = (buf[0] & 1) != 0 ? Path::kNolock : Path::kSpinning;
    m.order = buf[1];
    m.arg = buf[2];
    m.slot = buf[3];
    op = normalize_op(m, l.ctx);
    return true;
  }

  bool move_op_to_cpu() {
    if (ncpus() < 2) return false;
    OpList from[kMaxProgramCpus];
    int n = 0;
    for (int c = 0; c < ncpus(); ++c)
      if (!p.cpus[c].empty()) from[n++] = OpList{&p.cpus[c], Ctx::kTask, kMaxOps, c};
    if (n == 0) return false;
    OpList src = from[rng.below(static_cast<std::uint32_t>(n))];
    int dst = static_cast<int>(rng.below(static_cast<std::uint32_t>(ncpus() - 1)));
    if (dst >= src.cpu) ++dst;
    if (static_cast<int>(p.cpus[dst].size()) >= kMaxOps) return false;
    std::size_t i = index_in(rng, src.ops->size());
    Op op = (*src.ops)[i];
    erase_at(*src.ops, i);
    insert_at(p.cpus[dst], rng.below(static_cast<std::uint32_t>(p.cpus[dst].size() + 1)), op);
    return true;
  }

  // A copy of a busy CPU's ops on another CPU, or on a new one.
  bool mirror() {
    int from = pick_busy_cpu(p, rng, -1);
    return from >= 0 && mirror_ops(t, p, from, other_cpu(from), rng);
  }

  // Another CPU, or a new one, that frees what the program holds.
  bool remote_frees() {
    int from = pick_busy_cpu(p, rng, -1);
    return from >= 0 && remote_free_ops(t, p, from, other_cpu(from), rng);
  }

  // A burst of frees on a busy CPU (release_held_ops). In a 20 s page_smp
  // corpus, 58 of 669 programs had a CPU that allocated 13 pages or more of
  // the orders a pcp keeps, and none of the 669 parked a batch.
  bool release_held() {
    const int c = pick_busy_cpu(p, rng, -1);
    return c >= 0 && release_held_ops(t, p, c);
  }

  // A CPU other than `from`: a new one 30 % of the time while the target
  // allows one (always when `from` is the only one).
  int other_cpu(int from) {
    int to = ncpus() < t.max_cpus && (ncpus() == 1 || rng.chance(30))
                 ? ncpus()
                 : static_cast<int>(rng.below(static_cast<std::uint32_t>(ncpus() - 1)));
    if (to < ncpus() && to >= from) ++to;
    return to;
  }

  Injection new_injection(Ctx kind, int cpu) {
    Injection inj;
    inj.kind = kind;
    if (place_observed(inj)) return inj;
    inj.cpu = static_cast<std::uint8_t>(cpu);
    inj.site = pick_site(t, rng);
    inj.level = rng.chance(80) ? Ctx::kTask : Ctx::kIrq;
    inj.nth = pick_nth(rng, 8);
    return inj;
  }

  // A CPU for an interrupt: one with ops, mostly.
  int interrupt_cpu() {
    int c = pick_busy_cpu(p, rng, -1);
    return c < 0 ? 0 : c;
  }

  bool move_op_into_injection() {
    if (!t.injections) return false;
    OpList src;
    int tries = 0;
    do {
      if (++tries > 4) return false;
      int c = static_cast<int>(rng.below(static_cast<std::uint32_t>(ncpus())));
      src = OpList{&p.cpus[c], Ctx::kTask, kMaxOps, c};
    } while (src.ops->empty());
    std::size_t i = index_in(rng, src.ops->size());
    Op op = (*src.ops)[i];
    int fits[kMaxInjections], n = 0;
    for (int j = 0; j < static_cast<int>(p.injections.size()); ++j) {
      const Injection& inj = p.injections[j];
      if (static_cast<int>(inj.ops.size()) < kMaxInjectionOps && op_allowed(t, inj.kind, op.kind)) fits[n++] = j;
    }
    Injection* dst = nullptr;
    if (n != 0 && (rng.chance(70) || static_cast<int>(p.injections.size()) >= kMaxInjections)) {
      dst = &p.injections[fits[rng.below(static_cast<std::uint32_t>(n))]];
    } else if (static_cast<int>(p.injections.size()) < kMaxInjections) {
      bool nmi = op_allowed(t, Ctx::kNmi, op.kind), irq = op_allowed(t, Ctx::kIrq, op.kind);
      if (!nmi && !irq) return false;
      Ctx kind = nmi && (!irq || rng.chance(50)) ? Ctx::kNmi : Ctx::kIrq;
      p.injections.push_back(new_injection(kind, rng.chance(70) ? src.cpu : interrupt_cpu()));
      dst = &p.injections.back();
    } else {
      return false;
    }
    erase_at(*src.ops, i);
    insert_at(dst->ops, rng.below(static_cast<std::uint32_t>(dst->ops.size() + 1)), normalize_op(op, dst->kind));
    return true;
  }

  bool move_op_out_of_injection() {
    int from[kMaxInjections], n = 0;
    for (int j = 0; j < static_cast<int>(p.injections.size()); ++j)
      if (!p.injections[j].ops.empty()) from[n++] = j;
    if (n == 0) return false;
    Injection& inj = p.injections[from[rng.below(static_cast<std::uint32_t>(n))]];
    int c = rng.chance(60) ? inj.cpu : static_cast<int>(rng.below(static_cast<std::uint32_t>(ncpus())));
    if (static_cast<int>(p.cpus[c].size()) >= kMaxOps) return false;
    std::size_t i = index_in(rng, inj.ops.size());
    Op op = inj.ops[i];
    erase_at(inj.ops, i);
    insert_at(p.cpus[c], rng.below(static_cast<std::uint32_t>(p.cpus[c].size() + 1)), normalize_op(op, Ctx::kTask));
    return true;
  }

  bool add_injection() {
    if (!t.injections || static_cast<int>(p.injections.size()) >= kMaxInjections) return false;
    Injection inj = new_injection(rng.chance(55) ? Ctx::kNmi : Ctx::kIrq, interrupt_cpu());
    int nops = 1 + static_cast<int>(rng.below(3));
    for (int i = 0; i < nops; ++i) inj.ops.push_back(new_op(t, inj.kind, p, inj.cpu, kEchoOpPercent, rng));
    insert_at(p.injections, rng.below(static_cast<std::uint32_t>(p.injections.size() + 1)), std::move(inj));
    return true;
  }

  bool delete_injection() {
    if (p.injections.empty()) return false;
    erase_at(p.injections, index_in(rng, p.injections.size()));
    return true;
  }

  bool retarget_injection() {
    if (p.injections.empty()) return false;
    Injection& inj = p.injections[index_in(rng, p.injections.size())];
    Injection before = inj;
    std::uint32_t r = rng.below(100);
    if (r >= 90 && ncpus() < 2) r = 0;
    if (r < 40) {
      if (!place_observed(inj)) inj.site = pick_site(t, rng);
    } else if (r < 60) {
      int n = observed_hits(inj.cpu, inj.site, inj.level);
      inj.nth = n > 0 && rng.chance(kObservedSitePercent) ? observed_nth(n, 8) : pick_nth(rng, 8);
    } else if (r < 75) {
      inj.level = inj.level == Ctx::kTask ? Ctx::kIrq : Ctx::kTask;
    } else if (r < 90) {
      inj.kind = inj.kind == Ctx::kNmi ? Ctx::kIrq : Ctx::kNmi;
      std::erase_if(inj.ops, [&](const Op& op) { return !op_allowed(t, inj.kind, op.kind); });
      for (Op& op : inj.ops) op = normalize_op(op, inj.kind);
    } else {
      inj.cpu = static_cast<std::uint8_t>(pick_busy_cpu(p, rng, inj.cpu));
    }
    return !(inj == before);
  }

  // Written switches replace a PCT schedule.
  void pct_off() { p.pct = PctSpec{}; }

  AnchoredSwitch new_anchored() {
    AnchoredSwitch a;
    if (place_observed(a)) {
      a.cpu = static_cast<std::uint8_t>(pick_busy_cpu(p, rng, a.on));
      return a;
    }
    int on = pick_busy_cpu(p, rng, -1);
    a.on = static_cast<std::uint8_t>(on);
    a.cpu = static_cast<std::uint8_t>(pick_busy_cpu(p, rng, on));
    a.site = pick_site(t, rng);
    std::uint32_t r = rng.below(100);
    a.level = r < 75 ? Ctx::kTask : r < 90 ? Ctx::kIrq : Ctx::kNmi;
    a.nth = pick_nth(rng, kMaxAnchorNth);
    return a;
  }

  bool add_anchored_switch() {
    if (ncpus() < 2) return false;
    pct_off();
    AnchoredSwitch a = new_anchored();
    if (static_cast<int>(p.anchored.size()) >= kMaxAnchoredSwitches)
      p.anchored[index_in(rng, p.anchored.size())] = a;
    else
      insert_at(p.anchored, rng.below(static_cast<std::uint32_t>(p.anchored.size() + 1)), a);
    return true;
  }

  bool retarget_anchored_switch() {
    if (p.anchored.empty()) return false;
    AnchoredSwitch& a = p.anchored[index_in(rng, p.anchored.size())];
    AnchoredSwitch before = a;
    std::uint32_t r = rng.below(100);
    if (r < 35) {
      if (!place_observed(a))
        a.site = pick_site(t, rng);
      else if (a.cpu == a.on)
        a.cpu = static_cast<std::uint8_t>(pick_busy_cpu(p, rng, a.on));
    } else if (r < 60) {
      int n = observed_hits(a.on, a.site, a.level);
      if (rng.chance(50))
        a.nth = static_cast<std::uint8_t>(a.nth % kMaxAnchorNth + 1);  // the next hit
      else
        a.nth = n > 0 && rng.chance(kObservedSitePercent) ? observed_nth(n, kMaxAnchorNth) : pick_nth(rng, kMaxAnchorNth);
    } else if (r < 80) {
      if (rng.chance(50)) {
        a.cpu = static_cast<std::uint8_t>(pick_busy_cpu(p, rng, a.on));
      } else {
        a.on = static_cast<std::uint8_t>(pick_busy_cpu(p, rng, a.on));
        if (a.cpu == a.on) a.cpu = static_cast<std::uint8_t>(pick_busy_cpu(p, rng, a.on));
      }
    } else {
      a.level = static_cast<Ctx>((static_cast<int>(a.level) + 1 + rng.below(2)) % 3);
    }
    return !(a == before);
  }

  bool delete_anchored_switch() {
    if (p.anchored.empty()) return false;
    erase_at(p.anchored, index_in(rng, p.anchored.size()));
    return true;
  }

  bool add_event_switch() {
    if (ncpus() < 2 || static_cast<int>(p.schedule.size()) >= kMaxSwitches) return false;
    pct_off();
    std::size_t i = rng.below(static_cast<std::uint32_t>(p.schedule.size() + 1));
    std::uint32_t lo = i == 0 ? 0 : p.schedule[i - 1].event + 1;
    std::uint32_t hi = i == p.schedule.size() ? lo + 255 : p.schedule[i].event;  // exclusive
    if (hi <= lo) return false;
    Switch s;
    s.event = lo + rng.below(std::min<std::uint32_t>(hi - lo, rng.chance(50) ? 16 : 256));
    s.cpu = static_cast<std::uint8_t>(pick_busy_cpu(p, rng, -1));
    insert_at(p.schedule, i, s);
    return true;
  }

  bool move_event_switch() {
    if (p.schedule.empty()) return false;
    std::size_t i = index_in(rng, p.schedule.size());
    Switch before = p.schedule[i];
    if (rng.chance(30)) {
      p.schedule[i].cpu = static_cast<std::uint8_t>(pick_busy_cpu(p, rng, p.schedule[i].cpu));
    } else {
      std::uint32_t lo = i == 0 ? 0 : p.schedule[i - 1].event + 1;
      std::uint32_t hi = lo + 256;  // exclusive
      if (i + 1 < p.schedule.size()) {
        std::uint32_t next = p.schedule[i + 1].event;
        hi = std::min(hi, next);
        if (next > 256) lo = std::max(lo, next - 256);  // keep the next gap <= 255
      }
      if (hi <= lo) return false;
      std::int64_t delta = rng.chance(60) ? static_cast<std::int64_t>(rng.below(9)) - 4 : 0;
      std::int64_t e = delta != 0 ? static_cast<std::int64_t>(before.event) + delta : lo + rng.below(hi - lo);
      e = std::clamp<std::int64_t>(e, lo, static_cast<std::int64_t>(hi) - 1);
      p.schedule[i].event = static_cast<std::uint32_t>(e);
    }
    fix_schedule(p.schedule);
    return !(p.schedule[i] == before);
  }

  bool delete_event_switch() {
    if (p.schedule.empty()) return false;
    erase_at(p.schedule, index_in(rng, p.schedule.size()));
    fix_schedule(p.schedule);
    return true;
  }

  bool change_cpu_count() {
    if (t.max_cpus <= t.min_cpus) return false;
    int n = ncpus();
    int want = t.min_cpus + static_cast<int>(rng.below(static_cast<std::uint32_t>(t.max_cpus - t.min_cpus)));
    if (want >= n) ++want;
    if (want > n) {
      while (ncpus() < want) {
        std::vector<Op> ops;
        if (rng.chance(50)) {  // part of another CPU's ops
          const auto& from = p.cpus[index_in(rng, p.cpus.size())];
          std::size_t a = rng.below(static_cast<std::uint32_t>(from.size() + 1));
          std::size_t b = a + rng.below(static_cast<std::uint32_t>(from.size() - a + 1));
          ops.assign(from.begin() + static_cast<std::ptrdiff_t>(a), from.begin() + static_cast<std::ptrdiff_t>(b));
        }
        if (ops.empty()) {
          int k = 1 + static_cast<int>(rng.below(4));
          for (int i = 0; i < k; ++i) ops.push_back(random_op(t, Ctx::kTask, p, rng));
        }
        p.cpus.push_back(std::move(ops));
      }
      return true;
    }
    while (ncpus() > want) {  // remove a CPU; what named it moves to another
      int gone = static_cast<int>(rng.below(static_cast<std::uint32_t>(ncpus())));
      int left = ncpus() - 1;
      erase_at(p.cpus, static_cast<std::size_t>(gone));
      auto remap = [&](std::uint8_t c) {
        return static_cast<std::uint8_t>(c == gone ? rng.below(static_cast<std::uint32_t>(left)) : c > gone ? c - 1 : c);
      };
      for (Injection& inj : p.injections) inj.cpu = remap(inj.cpu);
      for (Switch& s : p.schedule) s.cpu = remap(s.cpu);
      for (AnchoredSwitch& a : p.anchored) {
        a.on = remap(a.on);
        a.cpu = remap(a.cpu);
      }
      std::erase_if(p.anchored, [](const AnchoredSwitch& a) { return a.on == a.cpu; });
    }
    repair(t, p);  // a one-CPU program has no schedule
    return true;
  }

  void random_pct() {
    p.pct.depth = static_cast<std::uint8_t>(1 + rng.below(kMaxPctDepth));
    p.pct.seed = static_cast<std::uint16_t>(rng.next());
    p.pct.steps = random_steps();
  }

  // Log-uniform in 1..kMaxPctSteps: programs run tens to thousands of events.
  std::uint16_t random_steps() {
    std::uint32_t top = std::min<std::uint32_t>(kMaxPctSteps, 8u << rng.below(10));
    return static_cast<std::uint16_t>(1 + rng.below(top));
  }

  bool toggle_pct() {
    if (ncpus() < 2) return false;
    if (p.pct.on()) {
      p.pct = PctSpec{};
    } else {
      p.schedule.clear();
      p.anchored.clear();
      random_pct();
    }
    return true;
  }

  bool change_pct() {
    if (!p.pct.on()) return false;
    PctSpec before = p.pct;
    std::uint32_t r = rng.below(100);
    if (r < 60)
      p.pct.seed = static_cast<std::uint16_t>(rng.next());
    else if (r < 80)
      p.pct.depth = static_cast<std::uint8_t>(1 + (p.pct.depth + rng.below(kMaxPctDepth - 1)) % kMaxPctDepth);
    else
      p.pct.steps = random_steps();
    return !(p.pct == before);
  }

  bool change_fault() {
    if (!t.faults) return false;
    FaultSpec before = p.fault;
    FaultSpec& f = p.fault;
    if (f == FaultSpec{} || rng.chance(10)) {
      if (!(f == FaultSpec{}) && rng.chance(50)) {
        f = FaultSpec{};
      } else {
        f = FaultSpec{};
        if (rng.chance(70))
          f.nth = static_cast<std::uint8_t>(1 + rng.below(32));
        else
          f.percent = static_cast<std::uint8_t>(1 + rng.below(rng.chance(50) ? 10 : 100));
        f.seed = static_cast<std::uint8_t>(rng.next());
      }
    } else {
      switch (rng.below(5)) {
        case 0: f.nth = static_cast<std::uint8_t>(rng.below(33)); break;
        case 1: f.percent = static_cast<std::uint8_t>(rng.chance(40) ? 0 : 1 + rng.below(100)); break;
        case 2: f.contexts = static_cast<std::uint8_t>(1 + rng.below(7)); break;
        case 3: f.paths = static_cast<std::uint8_t>(1 + rng.below(3)); break;
        default: f.seed = static_cast<std::uint8_t>(rng.next()); break;
      }
    }
    return !(f == before);
  }

  bool byte_mutate_encoding() {
    if (bytes == nullptr) return false;
    thread_local std::vector<std::uint8_t> buf;
    buf = encode(t, p);
    std::size_t size = buf.size();
    buf.resize(size + 16);
    std::size_t n = bytes(buf.data(), size, buf.size());
    p = decode(t, std::span<const std::uint8_t>(buf.data(), std::min(n, buf.size())));
    return true;
  }

  bool apply(Mutation m) {
    switch (m) {
      case Mutation::kInsertOp: return insert_op();
      case Mutation::kDeleteOp: return delete_op();
      case Mutation::kDuplicateOp: return duplicate_op();
      case Mutation::kReplaceOp: return replace_op();
      case Mutation::kSwapOps: return swap_ops();
      case Mutation::kChangeOpArgs: return change_op_args();
      case Mutation::kByteMutateOpArgs: return byte_mutate_op_args();
      case Mutation::kMoveOpToCpu: return move_op_to_cpu();
      case Mutation::kMirrorOps: return mirror();
      case Mutation::kRemoteFrees: return remote_frees();
      case Mutation::kReleaseHeld: return release_held();
      case Mutation::kMoveOpIntoInjection: return move_op_into_injection();
      case Mutation::kMoveOpOutOfInjection: return move_op_out_of_injection();
      case Mutation::kAddInjection: return add_injection();
      case Mutation::kDeleteInjection: return delete_injection();
      case Mutation::kRetargetInjection: return retarget_injection();
      case Mutation::kAddAnchoredSwitch: return add_anchored_switch();
      case Mutation::kRetargetAnchoredSwitch: return retarget_anchored_switch();
      case Mutation::kDeleteAnchoredSwitch: return delete_anchored_switch();
      case Mutation::kAddEventSwitch: return add_event_switch();
      case Mutation::kMoveEventSwitch: return move_event_switch();
      case Mutation::kDeleteEventSwitch: return delete_event_switch();
      case Mutation::kChangeCpuCount: return change_cpu_count();
      case Mutation::kTogglePct: return toggle_pct();
      case Mutation::kChangePct: return change_pct();
      case Mutation::kChangeFault: return change_fault();
      case Mutation::kByteMutateEncoding: return byte_mutate_encoding();
      case Mutation::kCount: break;
    }
    return false;
  }
};

// Drops the end of the program (ops of the longest list first, then
// injections, switches, PCT, fault plan, CPUs) until its encoding fits.
void shrink_to_fit(const TargetSpec& t, Program& p, std::size_t max_size, std::vector<std::uint8_t>& out) {
  for (;;) {
    encode_into(t, p, out);
    if (out.size() <= max_size) return;
    std::vector<Op>* longest = nullptr;
    for (auto& ops : p.cpus)
      if (longest == nullptr || ops.size() > longest->size()) longest = &ops;
    for (Injection& inj : p.injections)
      if (inj.ops.size() > longest->size()) longest = &inj.ops;
    std::size_t excess = out.size() - max_size;
    if (!longest->empty()) {
      longest->resize(longest->size() - std::min(longest->size(), (excess + 2) / 3));
    } else if (!p.injections.empty()) {
      p.injections.pop_back();
    } else if (!p.anchored.empty()) {
      p.anchored.pop_back();
    } else if (!p.schedule.empty()) {
      p.schedule.pop_back();
    } else if (p.pct.on()) {
      p.pct = PctSpec{};
    } else if (!(p.fault == FaultSpec{})) {
      p.fault = FaultSpec{};
    } else if (static_cast<int>(p.cpus.size()) > t.min_cpus) {
      p.cpus.pop_back();
    } else {
      return;  // cannot shrink further; out is still too big
    }
  }
}

// Writes `bytes` when non-empty and within max_size. Return: its size or 0.
std::size_t put(const std::vector<std::uint8_t>& bytes, std::uint8_t* data, std::size_t max_size) {
  if (bytes.empty() || bytes.size() > max_size) return 0;
  std::copy(bytes.begin(), bytes.end(), data);
  return bytes.size();
}

// The last resort: a shrunk `p`, or one op on CPU 0 (the smallest non-empty
// canonical encoding). Return: the size written, 0 when nothing fits.
std::size_t put_fallback(const TargetSpec& t, Program& p, std::uint8_t* data, std::size_t max_size,
                         std::vector<std::uint8_t>& scratch) {
  shrink_to_fit(t, p, max_size, scratch);
  if (std::size_t n = put(scratch, data, max_size); n != 0) return n;
  Program one;
  one.cpus.assign(static_cast<std::size_t>(t.min_cpus), {});
  one.cpus[0].push_back(normalize_op(Op{t.task_ops[0]}, Ctx::kTask));
  return put(encode(t, one), data, max_size);
}

std::uint64_t mix_seed(unsigned seed, std::uint64_t salt) {
  Rng r(seed ^ (salt * 0x9e3779b97f4a7c15ull));
  return r.next();
}

}  // namespace

const char* mutation_name(Mutation m) {
  int i = static_cast<int>(m);
  return i >= 0 && i < kMutationKinds ? kMutationNames[i] : "?";
}

bool mutation_applies(const TargetSpec& t, Mutation m, bool have_byte_mutator) {
  bool smp = t.max_cpus >= 2;
  switch (m) {
    case Mutation::kByteMutateOpArgs: case Mutation::kByteMutateEncoding: return have_byte_mutator;
    case Mutation::kRemoteFrees:
      return smp && (op_allowed(t, Ctx::kTask, K::kFreePages) || op_allowed(t, Ctx::kTask, K::kKfree) ||
                     op_allowed(t, Ctx::kTask, K::kMemcgUncharge));
    case Mutation::kReleaseHeld:
      return (op_allowed(t, Ctx::kTask, K::kAllocPages) && op_allowed(t, Ctx::kTask, K::kFreePages)) ||
             (op_allowed(t, Ctx::kTask, K::kKmalloc) && op_allowed(t, Ctx::kTask, K::kKfree)) ||
             (op_allowed(t, Ctx::kTask, K::kMemcgCharge) && op_allowed(t, Ctx::kTask, K::kMemcgUncharge));
    case Mutation::kMoveOpToCpu: case Mutation::kMirrorOps: case Mutation::kAddAnchoredSwitch: case Mutation::kRetargetAnchoredSwitch:
    case Mutation::kDeleteAnchoredSwitch: case Mutation::kAddEventSwitch: case Mutation::kMoveEventSwitch:
    case Mutation::kDeleteEventSwitch: case Mutation::kTogglePct: case Mutation::kChangePct:
      return smp;
    case Mutation::kChangeCpuCount: return t.max_cpus > t.min_cpus;
    case Mutation::kMoveOpIntoInjection: case Mutation::kMoveOpOutOfInjection: case Mutation::kAddInjection:
    case Mutation::kDeleteInjection: case Mutation::kRetargetInjection:
      return t.injections;
    case Mutation::kChangeFault: return t.faults;
    case Mutation::kCount: return false;
    default: return true;
  }
}

Mutation mutate_program(const TargetSpec& target, Program& p, Rng& rng, ByteMutator bytes,
                        const SiteMap* sites) {
  Mutator mut{target, p, rng, bytes, sites};
  unsigned total = 0;
  unsigned weights[kMutationKinds];
  for (int i = 0; i < kMutationKinds; ++i) {
    weights[i] = mutation_applies(target, static_cast<Mutation>(i), bytes != nullptr) ? kWeights[i] : 0;
    total += weights[i];
  }
  for (int attempt = 0; attempt < 32; ++attempt) {
    unsigned r = rng.below(total);
    int i = 0;
    while (r >= weights[i]) r -= weights[i++];
    Mutation m = static_cast<Mutation>(i);
    if (mut.apply(m)) return m;
  }
  // Every draw missed (a program full or empty everywhere they looked).
  if (mut.insert_op()) return Mutation::kInsertOp;
  mut.delete_op();
  return Mutation::kDeleteOp;
}

namespace {

// Queues the plans of an input the observer ran for the first time (`sites`:
// its run), and those of its bare base when that differs from it and the
// observer, running it, sees it for the first time too. Return: whether it
// asked the observer about the bare base (which ends `sites`).
bool plan_first_sighting(const TargetSpec& target, const Program& input, const SiteMap& sites, SiteObserver observe,
                         PlanQueue& plans, Rng& rng) {
  plans.add(plan(target, input, sites, rng.next()));
  const Program bare = bare_base(input);
  if (bare == input) return false;
  const std::vector<std::uint8_t> bytes = encode(target, bare);
  bool first_seen = false;
  const SiteMap* bare_sites = observe(target, bytes.data(), bytes.size(), &first_seen);
  if (first_seen && bare_sites != nullptr) plans.add(plan(target, bare, *bare_sites, rng.next()));
  return true;
}

}  // namespace

std::size_t mutate_input(const TargetSpec& target, std::uint8_t* data, std::size_t size, std::size_t max_size,
                         unsigned seed, ByteMutator bytes, MutationCounts* counts, SiteObserver observe,
                         PlanQueue* plans) {
  if (max_size == 0) return 0;
  // Reused between calls: a fuzzer calls this once per execution.
  thread_local Program original;
  thread_local Program p;
  thread_local std::vector<std::uint8_t> out;
  read_fuzz_input(target, data, size, original);
  bool first_seen = false;
  const SiteMap* sites = observe != nullptr && (target.injections || target.max_cpus >= 2)
                             ? observe(target, data, size, &first_seen)
                             : nullptr;
  Rng rng(mix_seed(seed, 1));
  if (plans != nullptr) {
    // Observing the bare base ended the input's map (a SiteObserver's map
    // is valid until its next call): ask again. The fuzz targets' observer
    // answers from its cache, or runs the input again when the bare base's
    // run filled the cache and it started afresh (a use after free in a
    // 20-minute memcg_ops campaign before).
    if (first_seen && sites != nullptr && plan_first_sighting(target, original, *sites, observe, *plans, rng))
      sites = observe(target, data, size, nullptr);
    if (rng.chance(kPlannedPercent) && plans->take(p)) {
      encode_into(target, p, out);
      if (std::size_t n = put(out, data, max_size); n != 0) {
        plans->wrote(data, n);
        return n;
      }
    }
  }
  for (int attempt = 0; attempt < 4; ++attempt) {
    p = original;
    std::uint32_t r = rng.below(100);
    int stacked = r < 50 ? 1 : r < 75 ? 2 : r < 90 ? 3 : 4;
    Mutation applied[4];
    for (int i = 0; i < stacked; ++i) applied[i] = mutate_program(target, p, rng, bytes, sites);
    encode_into(target, p, out);
    if (std::size_t n = put(out, data, max_size); n != 0) {
      if (counts != nullptr)
        for (int i = 0; i < stacked; ++i) ++(*counts)[static_cast<int>(applied[i])];
      return n;
    }
  }
  return put_fallback(target, p, data, max_size, out);
}

std::size_t cross_over(const TargetSpec& target, const std::uint8_t* a, std::size_t asize, const std::uint8_t* b,
                       std::size_t bsize, std::uint8_t* out, std::size_t max_out, unsigned seed) {
  if (max_out == 0) return 0;
  thread_local Program pa;
  thread_local Program pb;
  thread_local std::vector<std::uint8_t> bytes;
  read_fuzz_input(target, a, asize, pa);
  read_fuzz_input(target, b, bsize, pb);
  Rng rng(mix_seed(seed, 2));
  Program& p = pa;
  switch (rng.below(4)) {
    case 0: {  // a's CPUs, b's interrupts, schedule and fault plan
      std::swap(p.cpus, pb.cpus);
      std::swap(p, pb);
      break;
    }
    case 1: {  // op sequences cut and joined: a's head, b's tail
      int lists = 1 + static_cast<int>(rng.below(static_cast<std::uint32_t>(p.cpus.size())));
      for (int k = 0; k < lists; ++k) {
        auto& x = p.cpus[index_in(rng, p.cpus.size())];
        const auto& y = pb.cpus[index_in(rng, pb.cpus.size())];
        std::size_t i = rng.below(static_cast<std::uint32_t>(x.size() + 1));
        std::size_t j = rng.below(static_cast<std::uint32_t>(y.size() + 1));
        x.resize(i);
        x.insert(x.end(), y.begin() + static_cast<std::ptrdiff_t>(j), y.end());
      }
      if (!p.injections.empty() && !pb.injections.empty() && rng.chance(50)) {
        auto& x = p.injections[index_in(rng, p.injections.size())];
        const auto& y = pb.injections[index_in(rng, pb.injections.size())];
        if (x.kind == y.kind) {
          x.ops.resize(rng.below(static_cast<std::uint32_t>(x.ops.size() + 1)));
          x.ops.insert(x.ops.end(), y.ops.begin() + rng.below(static_cast<std::uint32_t>(y.ops.size() + 1)),
                       y.ops.end());
        }
      }
      break;
    }
    case 2: {  // injections and anchored switches merged
      for (const Injection& inj : pb.injections)
        if (static_cast<int>(p.injections.size()) < kMaxInjections && rng.chance(60)) p.injections.push_back(inj);
      if (!p.pct.on())
        for (const AnchoredSwitch& s : pb.anchored)
          if (static_cast<int>(p.anchored.size()) < kMaxAnchoredSwitches && rng.chance(60)) p.anchored.push_back(s);
      break;
    }
    default: {  // one of b's CPUs in place of one of a's
      p.cpus[index_in(rng, p.cpus.size())] = pb.cpus[index_in(rng, pb.cpus.size())];
      break;
    }
  }
  repair(target, p);
  encode_into(target, p, bytes);
  if (std::size_t n = put(bytes, out, max_out); n != 0) return n;
  return put_fallback(target, p, out, max_out, bytes);
}

std::size_t simple_byte_mutator(std::uint8_t* data, std::size_t size, std::size_t max_size) {
  thread_local Rng rng(0x616e79637478ull);
  if (size == 0) {
    if (max_size == 0) return 0;
    data[0] = static_cast<std::uint8_t>(rng.next());
    return 1;
  }
  std::size_t i = rng.below(static_cast<std::uint32_t>(size));
  switch (rng.below(4)) {
    case 0: data[i] = static_cast<std::uint8_t>(data[i] ^ (1u << rng.below(8))); break;
    case 1: data[i] = static_cast<std::uint8_t>(rng.next()); break;
    case 2: {
      constexpr std::uint8_t kInteresting[] = {0, 1, 2, 3, 4, 7, 8, 16, 31, 32, 64, 127, 128, 255};
      data[i] = kInteresting[rng.below(sizeof kInteresting)];
      break;
    }
    default: data[i] = static_cast<std::uint8_t>(data[i] + rng.below(9) - 4); break;
  }
  return size;
}

}  // namespace anyctx::harness
