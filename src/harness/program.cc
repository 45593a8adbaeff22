#include "harness/program.h"

#include <algorithm>

namespace anyctx::harness {
namespace {

constexpr const char* kOpNames[] = {
#define ANYCTX_OP_NAME(name, text) text,
    ANYCTX_OP_LIST(ANYCTX_OP_NAME)
#undef ANYCTX_OP_NAME
};

// Legal in `ctx` at all (before a target narrows it): task ops that may
// sleep or reconfigure stay in task context; an NMI only has nolock forms.
bool legal_in(Ctx ctx, OpKind k) {
  if (ctx == Ctx::kTask) return true;
  switch (k) {
    case OpKind::kDrainLocal: case OpKind::kDrainAll: case OpKind::kCpuCycle: case OpKind::kMemcgSetMax:
      return false;
    case OpKind::kPutPage: case OpKind::kSpinLock: case OpKind::kLocalLock:
      return ctx == Ctx::kIrq;
    default:
      return true;
  }
}

std::vector<OpKind> kinds_where(Ctx ctx, std::initializer_list<OpKind> pool) {
  std::vector<OpKind> out;
  for (OpKind k : pool)
    if (legal_in(ctx, k)) out.push_back(k);
  return out;
}

TargetSpec make_target(const char* name, int min_cpus, int max_cpus, std::initializer_list<OpKind> pool,
                       bool injections) {
  return TargetSpec{name,
                    min_cpus,
                    max_cpus,
                    kinds_where(Ctx::kTask, pool),
                    kinds_where(Ctx::kIrq, pool),
                    kinds_where(Ctx::kNmi, pool),
                    /*faults=*/true,
                    injections};
}

using K = OpKind;
#define PAGE_OPS K::kAllocPages, K::kFreePages, K::kGetPage, K::kPutPage, K::kWriteVerify, K::kDrainLocal, \
                 K::kDrainAll, K::kCpuCycle
#define SLAB_OPS K::kKmalloc, K::kKfree
#define MEMCG_OPS K::kMemcgSetMax, K::kMemcgCharge, K::kMemcgUncharge, K::kMemcgSwitch
#define LOCK_OPS K::kSpinLock, K::kSpinTryLock, K::kSpinUnlock, K::kLocalLock, K::kLocalTryLock, K::kLocalUnlock

const TargetSpec& target_page_ops() {
  static const TargetSpec t = make_target("page_ops", 1, 1, {PAGE_OPS}, true);
  return t;
}
const TargetSpec& target_page_smp() {
  static const TargetSpec t = make_target("page_smp", 2, 4, {PAGE_OPS}, true);
  return t;
}
const TargetSpec& target_slab_ops() {
  static const TargetSpec t = make_target("slab_ops", 1, 2, {SLAB_OPS, K::kWriteVerify, K::kDrainLocal, K::kDrainAll,
                                                            K::kCpuCycle, K::kAllocPages, K::kFreePages}, true);
  return t;
}
const TargetSpec& target_memcg_ops() {
  static const TargetSpec t = make_target("memcg_ops", 1, 2, {MEMCG_OPS, K::kAllocPages, K::kFreePages, K::kKmalloc,
                                                              K::kKfree, K::kDrainAll, K::kCpuCycle}, true);
  return t;
}
const TargetSpec& target_lock_ops() {
  static const TargetSpec t = make_target("lock_ops", 1, 2, {LOCK_OPS}, true);
  return t;
}
const TargetSpec& target_all() {
  static const TargetSpec t = make_target("all", 1, kMaxProgramCpus, {PAGE_OPS, SLAB_OPS, MEMCG_OPS, LOCK_OPS}, true);
  return t;
}

const std::vector<OpKind>& table(const TargetSpec& t, Ctx ctx) {
  return ctx == Ctx::kTask ? t.task_ops : ctx == Ctx::kIrq ? t.irq_ops : t.nmi_ops;
}

// Reads bytes; past the end every read is 0 (the decoder is total).
class ByteReader {
 public:
  explicit ByteReader(std::span<const std::uint8_t> bytes) : bytes_(bytes) {}
  std::uint8_t u8() { return pos_ < bytes_.size() ? bytes_[pos_++] : 0; }

 private:
  std::span<const std::uint8_t> bytes_;
  std::size_t pos_ = 0;
};

// Two bytes after the kind: path | slot << 1 | x << 4, and y.
struct OpBytes {
  std::uint8_t kind_index, b1, b2;
};

Op op_from_bytes(const TargetSpec& t, Ctx ctx, OpBytes b) {
  const auto& kinds = table(t, ctx);
  Op op;
  op.kind = kinds[b.kind_index % kinds.size()];
  op.path = static_cast<Path>(b.b1 & 1);
  op.slot = static_cast<std::uint8_t>((b.b1 >> 1) & 7);
  std::uint8_t x = static_cast<std::uint8_t>(b.b1 >> 4);
  op.order = b.b2;
  switch (op.kind) {
    case K::kAllocPages: case K::kKmalloc: op.arg = x & 3; break;
    case K::kMemcgSetMax: op.arg = static_cast<std::uint8_t>(x % kMemcgLimitCount); break;
    case K::kMemcgCharge: op.arg = static_cast<std::uint8_t>(1 + x % kMaxChargePages); break;
    default: op.arg = 0; break;
  }
  return normalize_op(op, ctx);
}

OpBytes op_to_bytes(const TargetSpec& t, Ctx ctx, const Op& op) {
  const auto& kinds = table(t, ctx);
  auto at = std::find(kinds.begin(), kinds.end(), op.kind);
  std::uint8_t x = 0;
  switch (op.kind) {
    case K::kAllocPages: case K::kKmalloc: case K::kMemcgSetMax: x = op.arg; break;
    case K::kMemcgCharge: x = static_cast<std::uint8_t>(op.arg - 1); break;
    default: break;
  }
  return OpBytes{static_cast<std::uint8_t>(at - kinds.begin()),
                 static_cast<std::uint8_t>(static_cast<unsigned>(op.path) | op.slot << 1 | x << 4), op.order};
}

std::string where(int cpu, int index) {
  return (cpu >= 0 ? "cpu " + std::to_string(cpu) : "injection " + std::to_string(-cpu - 1)) + " op " +
         std::to_string(index);
}

}  // namespace

int total_ops(const Program& p) {
  int n = 0;
  for (const auto& ops : p.cpus) n += static_cast<int>(ops.size());
  for (const Injection& inj : p.injections) n += static_cast<int>(inj.ops.size());
  return n;
}

bool op_has_path(OpKind k) {
  return k == OpKind::kAllocPages || k == OpKind::kFreePages || k == OpKind::kKmalloc || k == OpKind::kKfree ||
         k == OpKind::kMemcgCharge;
}

bool op_has_slot(OpKind k) {
  switch (k) {
    case OpKind::kAllocPages: case OpKind::kFreePages: case OpKind::kGetPage: case OpKind::kPutPage:
    case OpKind::kWriteVerify: case OpKind::kKmalloc: case OpKind::kKfree: case OpKind::kMemcgCharge:
    case OpKind::kMemcgUncharge:
      return true;
    default:
      return false;
  }
}

const char* op_name(OpKind kind) {
  int i = static_cast<int>(kind);
  return i >= 0 && i < kOpKinds ? kOpNames[i] : "?";
}

const TargetSpec* target_spec(std::string_view name) {
  for (const TargetSpec* t : {&target_page_ops(), &target_page_smp(), &target_slab_ops(), &target_memcg_ops(),
                              &target_lock_ops(), &target_all()})
    if (name == t->name) return t;
  return nullptr;
}

bool op_allowed(const TargetSpec& target, Ctx ctx, OpKind kind) {
  const auto& kinds = table(target, ctx);
  return std::find(kinds.begin(), kinds.end(), kind) != kinds.end();
}

Op normalize_op(Op op, Ctx ctx) {
  Op out;
  out.kind = op.kind;
  if (op_has_path(op.kind)) out.path = ctx == Ctx::kNmi ? Path::kNolock : op.path;
  if (op_has_slot(op.kind)) out.slot = static_cast<std::uint8_t>(op.slot % kSlots);
  switch (op.kind) {
    case K::kAllocPages:
      out.order = static_cast<std::uint8_t>(op.order % (out.path == Path::kNolock ? 4 : kMaxSpinningOrder + 1));
      out.arg = op.arg & 3;
      break;
    case K::kKmalloc:
      out.order = static_cast<std::uint8_t>(op.order % kKmallocSizeCount);
      out.arg = op.arg & 3;
      break;
    case K::kMemcgSetMax:
      out.order = static_cast<std::uint8_t>(op.order % kCgroups);
      out.arg = static_cast<std::uint8_t>(op.arg % kMemcgLimitCount);
      break;
    case K::kMemcgCharge:
      out.order = static_cast<std::uint8_t>(op.order % kCgroups);
      out.arg = static_cast<std::uint8_t>(op.arg < 1 || op.arg > kMaxChargePages ? 1 + op.arg % kMaxChargePages
                                                                                   : op.arg);
      break;
    case K::kMemcgSwitch:
      out.order = static_cast<std::uint8_t>(op.order % kCgroups);
      break;
    case K::kSpinLock: case K::kSpinTryLock: case K::kSpinUnlock:
      out.order = static_cast<std::uint8_t>(op.order % 2);
      break;
    default:
      break;
  }
  return out;
}

Program decode(const TargetSpec& t, std::span<const std::uint8_t> bytes) {
  Program p;
  decode_into(t, bytes, p);
  return p;
}

namespace {

// Op lists that decode_into dropped (a CPU or an injection fewer than the
// program before), kept for the lists it adds later. A fuzz target decodes
// every input into the same Program: without them, a run whose program has
// more CPUs or injections than the one before allocates more than it frees,
// and libFuzzer runs it a second time to look for a leak.
thread_local std::vector<std::vector<Op>> t_spare_ops;

// Sizes `v` to `n`, with `ops_of(element)` the element's op list: a dropped
// element's list goes to t_spare_ops, an added element takes one from there.
template <class T, class OpsOf>
void resize_recycling_ops(std::vector<T>& v, std::size_t n, OpsOf ops_of) {
  while (v.size() > n) {
    t_spare_ops.push_back(std::move(ops_of(v.back())));
    v.pop_back();
  }
  while (v.size() < n) {
    v.emplace_back();
    if (!t_spare_ops.empty()) {
      ops_of(v.back()) = std::move(t_spare_ops.back());
      t_spare_ops.pop_back();
    }
  }
}

// Clears `ops` and gives it room for `capacity` ops once, so that refilling
// it never reallocates.
void clear_for(std::vector<Op>& ops, std::size_t capacity) {
  ops.clear();
  if (ops.capacity() < capacity) ops.reserve(capacity);
}

}  // namespace

void decode_into(const TargetSpec& t, std::span<const std::uint8_t> bytes, Program& p) {
  ByteReader r(bytes);
  // Every field is written or cleared; the vectors keep their storage, and
  // in steady state a decode allocates nothing.
  p.schedule.clear();
  p.anchored.clear();
  p.pct = PctSpec{};
  p.fault = FaultSpec{};
  int ncpus = t.min_cpus + r.u8() % (t.max_cpus - t.min_cpus + 1);
  if (t.faults && (r.u8() & 1) != 0) {
    p.fault.nth = static_cast<std::uint8_t>(r.u8() % 33);
    p.fault.percent = static_cast<std::uint8_t>(r.u8() % 101);
    p.fault.contexts = static_cast<std::uint8_t>(1 + r.u8() % 7);
    p.fault.paths = static_cast<std::uint8_t>(1 + r.u8() % 3);
    p.fault.seed = r.u8();
  }
  resize_recycling_ops(p.cpus, static_cast<std::size_t>(ncpus), [](std::vector<Op>& ops) -> std::vector<Op>& { return ops; });
  for (auto& ops : p.cpus) {
    clear_for(ops, kMaxOps);
    int n = r.u8() % (kMaxOps + 1);
    for (int i = 0; i < n; ++i) ops.push_back(op_from_bytes(t, Ctx::kTask, OpBytes{r.u8(), r.u8(), r.u8()}));
  }
  resize_recycling_ops(p.injections, t.injections ? r.u8() % (kMaxInjections + 1) : 0,
                       [](Injection& inj) -> std::vector<Op>& { return inj.ops; });
  for (Injection& inj : p.injections) {
    std::uint8_t b0 = r.u8();
    clear_for(inj.ops, kMaxInjectionOps);
    inj.kind = (b0 & 1) != 0 ? Ctx::kNmi : Ctx::kIrq;
    inj.level = (b0 & 2) != 0 ? Ctx::kIrq : Ctx::kTask;
    inj.nth = static_cast<std::uint8_t>(1 + ((b0 >> 2) & 7));
    inj.cpu = static_cast<std::uint8_t>(((b0 >> 5) & 3) % ncpus);
    inj.site = static_cast<std::uint16_t>(r.u8() % kInjectionSites);
    int nops = r.u8() % (kMaxInjectionOps + 1);
    for (int j = 0; j < nops; ++j) inj.ops.push_back(op_from_bytes(t, inj.kind, OpBytes{r.u8(), r.u8(), r.u8()}));
  }
  if (ncpus > 1) {
    int n = r.u8() % (kMaxSwitches + 1);
    std::uint32_t next = 0;
    for (int i = 0; i < n; ++i) {
      Switch s;
      s.event = next + r.u8();
      s.cpu = static_cast<std::uint8_t>(r.u8() % ncpus);
      next = s.event + 1;
      p.schedule.push_back(s);
    }
    // Appended in the second version of the format: an older input ends
    // before these bytes and decodes as it always did (no anchors, no PCT).
    int nanchored = r.u8() % (kMaxAnchoredSwitches + 1);
    for (int i = 0; i < nanchored; ++i) {
      std::uint8_t b0 = r.u8();
      AnchoredSwitch a;
      a.on = static_cast<std::uint8_t>((b0 & 3) % ncpus);
      a.cpu = static_cast<std::uint8_t>(((b0 >> 2) & 3) % ncpus);
      if (a.cpu == a.on) a.cpu = static_cast<std::uint8_t>((a.on + 1) % ncpus);
      a.level = static_cast<Ctx>(((b0 >> 4) & 3) % 3);
      a.site = static_cast<std::uint16_t>(r.u8() % kInjectionSites);
      a.nth = static_cast<std::uint8_t>(1 + r.u8() % kMaxAnchorNth);
      p.anchored.push_back(a);
    }
    std::uint8_t depth = r.u8() % (kMaxPctDepth + 1);
    if (depth != 0) {
      p.pct.depth = depth;
      p.pct.seed = static_cast<std::uint16_t>(r.u8() | r.u8() << 8);
      p.pct.steps = static_cast<std::uint16_t>(1 + (r.u8() | r.u8() << 8) % kMaxPctSteps);
      p.schedule.clear();  // a PCT schedule replaces the written switches
      p.anchored.clear();
    }
  }
}

std::vector<std::uint8_t> encode(const TargetSpec& t, const Program& p) {
  std::vector<std::uint8_t> out;
  encode_into(t, p, out);
  return out;
}

void encode_into(const TargetSpec& t, const Program& p, std::vector<std::uint8_t>& out) {
  out.clear();
  auto put = [&](unsigned v) { out.push_back(static_cast<std::uint8_t>(v)); };
  auto put_op = [&](Ctx ctx, const Op& op) {
    OpBytes b = op_to_bytes(t, ctx, op);
    put(b.kind_index);
    put(b.b1);
    put(b.b2);
  };
  int ncpus = static_cast<int>(p.cpus.size());
  put(static_cast<unsigned>(ncpus - t.min_cpus));
  if (t.faults) {
    if (p.fault == FaultSpec{}) {
      put(0);
    } else {
      put(1);
      put(p.fault.nth);
      put(p.fault.percent);
      put(p.fault.contexts - 1u);
      put(p.fault.paths - 1u);
      put(p.fault.seed);
    }
  }
  for (const auto& ops : p.cpus) {
    put(static_cast<unsigned>(ops.size()));
    for (const Op& op : ops) put_op(Ctx::kTask, op);
  }
  if (t.injections) {
    put(static_cast<unsigned>(p.injections.size()));
    for (const Injection& inj : p.injections) {
      put((inj.kind == Ctx::kNmi ? 1u : 0u) | (inj.level == Ctx::kIrq ? 2u : 0u) | (inj.nth - 1u) << 2 |
          static_cast<unsigned>(inj.cpu) << 5);
      put(inj.site);
      put(static_cast<unsigned>(inj.ops.size()));
      for (const Op& op : inj.ops) put_op(inj.kind, op);
    }
  }
  if (ncpus > 1) {
    put(static_cast<unsigned>(p.schedule.size()));
    std::uint32_t next = 0;
    for (const Switch& s : p.schedule) {
      put(s.event - next);
      put(s.cpu);
      next = s.event + 1;
    }
    put(static_cast<unsigned>(p.anchored.size()));
    for (const AnchoredSwitch& a : p.anchored) {
      put(a.on | static_cast<unsigned>(a.cpu) << 2 | static_cast<unsigned>(a.level) << 4);
      put(a.site);
      put(a.nth - 1u);
    }
    put(p.pct.depth);
    if (p.pct.on()) {
      put(p.pct.seed & 0xff);
      put(p.pct.seed >> 8);
      put((p.pct.steps - 1u) & 0xff);
      put((p.pct.steps - 1u) >> 8);
    }
  }
  // Trailing zero bytes decode to nothing: drop them, so the canonical form
  // of a program without anchors or PCT is the first version's bytes.
  while (!out.empty() && out.back() == 0) out.pop_back();
}

std::string validate(const TargetSpec& t, const Program& p) {
  int ncpus = static_cast<int>(p.cpus.size());
  if (ncpus < t.min_cpus || ncpus > t.max_cpus)
    return "cpus: " + std::to_string(ncpus) + " is outside " + std::to_string(t.min_cpus) + ".." +
           std::to_string(t.max_cpus) + " for target " + t.name;
  const FaultSpec& f = p.fault;
  if (!(f == FaultSpec{})) {
    if (!t.faults) return std::string("fault: target ") + t.name + " takes no fault plan";
    if (f.nth > 32) return "fault: nth must be 0..32";
    if (f.percent > 100) return "fault: percent must be 0..100";
    if (f.contexts < 1 || f.contexts > 7) return "fault: contexts must name at least one of task, irq, nmi";
    if (f.paths < 1 || f.paths > 3) return "fault: paths must name spinning, nolock or both";
  }
  auto check_ops = [&](const std::vector<Op>& ops, Ctx ctx, int owner, int max) -> std::string {
    if (static_cast<int>(ops.size()) > max)
      return where(owner, max) + ": more than " + std::to_string(max) + " ops";
    for (std::size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      if (static_cast<int>(op.kind) >= kOpKinds) return where(owner, static_cast<int>(i)) + ": unknown op";
      if (!op_allowed(t, ctx, op.kind))
        return where(owner, static_cast<int>(i)) + ": " + op_name(op.kind) + " is not allowed in " +
               (ctx == Ctx::kTask ? "task" : ctx == Ctx::kIrq ? "irq" : "nmi") + " context for target " + t.name;
      if (!(normalize_op(op, ctx) == op))
        return where(owner, static_cast<int>(i)) + ": " + op_name(op.kind) + " has an argument out of range";
    }
    return {};
  };
  for (int c = 0; c < ncpus; ++c)
    if (std::string e = check_ops(p.cpus[c], Ctx::kTask, c, kMaxOps); !e.empty()) return e;
  if (!p.injections.empty() && !t.injections) return std::string("target ") + t.name + " takes no injections";
  if (static_cast<int>(p.injections.size()) > kMaxInjections)
    return "more than " + std::to_string(kMaxInjections) + " injections";
  for (std::size_t i = 0; i < p.injections.size(); ++i) {
    const Injection& inj = p.injections[i];
    std::string at = "injection " + std::to_string(i);
    if (inj.kind != Ctx::kIrq && inj.kind != Ctx::kNmi) return at + ": kind must be irq or nmi";
    if (inj.level != Ctx::kTask && inj.level != Ctx::kIrq) return at + ": level must be task or irq";
    if (inj.cpu >= ncpus) return at + ": cpu " + std::to_string(inj.cpu) + " does not exist";
    if (inj.site >= kInjectionSites) return at + ": unknown site";
    if (inj.nth < 1 || inj.nth > 8) return at + ": nth must be 1..8";
    if (std::string e = check_ops(inj.ops, inj.kind, -static_cast<int>(i) - 1, kMaxInjectionOps); !e.empty())
      return e;
  }
  if (ncpus == 1 && !p.schedule.empty()) return "schedule: a one-cpu program has no switches";
  if (static_cast<int>(p.schedule.size()) > kMaxSwitches)
    return "schedule: more than " + std::to_string(kMaxSwitches) + " switches";
  std::uint32_t next = 0;
  for (std::size_t i = 0; i < p.schedule.size(); ++i) {
    const Switch& s = p.schedule[i];
    if (s.event < next) return "schedule: switch " + std::to_string(i) + " is not after the one before";
    if (s.event - next > 255) return "schedule: switch " + std::to_string(i) + " is more than 255 events after the one before";
    if (s.cpu >= ncpus) return "schedule: switch " + std::to_string(i) + " names cpu " + std::to_string(s.cpu);
    next = s.event + 1;
  }
  if (ncpus == 1 && (!p.anchored.empty() || p.pct.on())) return "schedule: a one-cpu program has no switches";
  if (static_cast<int>(p.anchored.size()) > kMaxAnchoredSwitches)
    return "schedule: more than " + std::to_string(kMaxAnchoredSwitches) + " anchored switches";
  for (std::size_t i = 0; i < p.anchored.size(); ++i) {
    const AnchoredSwitch& a = p.anchored[i];
    std::string at = "schedule: anchored switch " + std::to_string(i);
    if (a.on >= ncpus) return at + ": on=" + std::to_string(a.on) + " names no cpu";
    if (a.cpu >= ncpus) return at + ": cpu=" + std::to_string(a.cpu) + " names no cpu";
    if (a.cpu == a.on) return at + ": switches cpu " + std::to_string(a.on) + " to itself";
    if (a.site >= kInjectionSites) return at + ": unknown site";
    if (static_cast<int>(a.level) > 2) return at + ": level must be task, irq or nmi";
    if (a.nth < 1 || a.nth > kMaxAnchorNth) return at + ": nth must be 1.." + std::to_string(kMaxAnchorNth);
  }
  if (p.pct.on()) {
    if (p.pct.depth > kMaxPctDepth) return "pct: depth must be 1.." + std::to_string(kMaxPctDepth);
    if (p.pct.steps < 1 || p.pct.steps > kMaxPctSteps) return "pct: steps must be 1.." + std::to_string(kMaxPctSteps);
    if (!p.schedule.empty() || !p.anchored.empty()) return "pct: a PCT schedule replaces the written switches";
  } else if (!(p.pct == PctSpec{})) {
    return "pct: seed and steps must be 0 when depth is 0";
  }
  return {};
}

}  // namespace anyctx::harness
