// props/program_props.cc — the program IR: its binary and text forms are
// exact.
//
// A generator builds structured programs for each fuzz target (CPUs, ops
// drawn from the target's tables per context and normalised the way the
// decoder does, injections at sites with their own ops, a fault plan, a
// schedule), so every field of the IR takes every value it can. Properties:
//  - the generator's programs are valid (validate() == "");
//  - decode(encode(p)) == p;
//  - parse(print(p)) == p, on the same target;
//  - and from the decoder's side, for arbitrary bytes b: decode(b) is valid
//    and is a fixed point of both round trips.
// The *_CatchesBrokenModel tests feed the same properties a codec with one
// deliberate defect and must see them fail.
#include <functional>
#include <string>
#include <vector>

#include "harness/program.h"
#include "harness/text.h"
#include "props_common.h"

namespace anyctx::harness {

// How rapidcheck prints a counterexample: the program's text form (target
// `all`, which allows every op).
inline void showValue(const Program& p, std::ostream& os) { os << "\n" << print(*target_spec("all"), p); }

}  // namespace anyctx::harness

namespace anyctx::props {
namespace {

using harness::Ctx;
using harness::FaultSpec;
using harness::Injection;
using harness::Op;
using harness::OpKind;
using harness::Program;
using harness::Switch;
using harness::TargetSpec;

const char* const kTargets[] = {"page_ops", "page_smp", "slab_ops", "memcg_ops", "lock_ops", "all"};

const std::vector<OpKind>& kinds_for(const TargetSpec& t, Ctx ctx) {
  return ctx == Ctx::kTask ? t.task_ops : ctx == Ctx::kIrq ? t.irq_ops : t.nmi_ops;
}

// An op of `target` legal in `ctx`, every field drawn over its raw range and
// then normalised as the decoder does (so out-of-range values are covered
// by the normalisation, and the result is canonical).
rc::Gen<Op> gen_op(const TargetSpec& target, Ctx ctx) {
  return rc::gen::exec([&target, ctx] {
    const auto& kinds = kinds_for(target, ctx);
    Op op;
    op.kind = kinds[*rc::gen::inRange<std::size_t>(0, kinds.size())];
    op.path = *rc::gen::element(harness::Path::kSpinning, harness::Path::kNolock);
    op.order = *rc::gen::arbitrary<std::uint8_t>();
    op.arg = *rc::gen::inRange<std::uint8_t>(0, 16);
    op.slot = *rc::gen::inRange<std::uint8_t>(0, harness::kSlots);
    return harness::normalize_op(op, ctx);
  });
}

rc::Gen<std::vector<Op>> gen_ops(const TargetSpec& target, Ctx ctx, int max) {
  return rc::gen::exec([&target, ctx, max] {
    int n = *rc::gen::inRange(0, max + 1);
    std::vector<Op> ops;
    for (int i = 0; i < n; ++i) ops.push_back(*gen_op(target, ctx));
    return ops;
  });
}

rc::Gen<FaultSpec> gen_fault() {
  return rc::gen::exec([] {
    FaultSpec f;
    if (*rc::gen::inRange(0, 3) == 0) return f;  // none
    f.nth = *rc::gen::inRange<std::uint8_t>(0, 33);
    f.percent = *rc::gen::inRange<std::uint8_t>(0, 101);
    f.contexts = *rc::gen::inRange<std::uint8_t>(1, 8);
    f.paths = *rc::gen::inRange<std::uint8_t>(1, 4);
    f.seed = *rc::gen::arbitrary<std::uint8_t>();
    return f;
  });
}

rc::Gen<Program> gen_program(const TargetSpec& target) {
  return rc::gen::exec([&target] {
    Program p;
    int ncpus = *rc::gen::inRange(target.min_cpus, target.max_cpus + 1);
    p.cpus.clear();
    for (int c = 0; c < ncpus; ++c) p.cpus.push_back(*gen_ops(target, Ctx::kTask, harness::kMaxOps));
    if (target.faults) p.fault = *gen_fault();
    if (target.injections) {
      int n = *rc::gen::inRange(0, harness::kMaxInjections + 1);
      for (int i = 0; i < n; ++i) {
        Injection inj;
        inj.kind = *rc::gen::element(Ctx::kIrq, Ctx::kNmi);
        inj.cpu = static_cast<std::uint8_t>(*rc::gen::inRange(0, ncpus));
        inj.site = static_cast<std::uint16_t>(*rc::gen::inRange(0, harness::kInjectionSites));
        inj.level = *rc::gen::element(Ctx::kTask, Ctx::kIrq);
        inj.nth = static_cast<std::uint8_t>(*rc::gen::inRange(1, 9));
        inj.ops = *gen_ops(target, inj.kind, harness::kMaxInjectionOps);
        p.injections.push_back(std::move(inj));
      }
    }
    if (ncpus > 1) {
      int n = *rc::gen::inRange(0, harness::kMaxSwitches + 1);
      std::uint32_t next = 0;
      for (int i = 0; i < n; ++i) {
        Switch s;
        s.event = next + static_cast<std::uint32_t>(*rc::gen::inRange(0, 256));
        s.cpu = static_cast<std::uint8_t>(*rc::gen::inRange(0, ncpus));
        next = s.event + 1;
        p.schedule.push_back(s);
      }
      int na = *rc::gen::inRange(0, harness::kMaxAnchoredSwitches + 1);
      for (int i = 0; i < na; ++i) {
        harness::AnchoredSwitch a;
        a.on = static_cast<std::uint8_t>(*rc::gen::inRange(0, ncpus));
        a.cpu = static_cast<std::uint8_t>((a.on + *rc::gen::inRange(1, ncpus)) % ncpus);
        a.site = static_cast<std::uint16_t>(*rc::gen::inRange(0, harness::kInjectionSites));
        a.level = *rc::gen::element(Ctx::kTask, Ctx::kIrq, Ctx::kNmi);
        a.nth = static_cast<std::uint8_t>(*rc::gen::inRange(1, harness::kMaxAnchorNth + 1));
        p.anchored.push_back(a);
      }
      if (*rc::gen::inRange(0, 4) == 0) {  // a PCT schedule instead of the written one
        p.schedule.clear();
        p.anchored.clear();
        p.pct.seed = *rc::gen::arbitrary<std::uint16_t>();
        p.pct.depth = static_cast<std::uint8_t>(*rc::gen::inRange(1, harness::kMaxPctDepth + 1));
        p.pct.steps = static_cast<std::uint16_t>(*rc::gen::inRange(1, harness::kMaxPctSteps + 1));
      }
    }
    return p;
  });
}

// The codec under test; the broken-model tests swap in a defective one.
struct Codec {
  std::function<std::vector<std::uint8_t>(const TargetSpec&, const Program&)> encode = harness::encode;
  std::function<Program(const TargetSpec&, std::span<const std::uint8_t>)> decode = harness::decode;
  std::function<std::string(const TargetSpec&, const Program&)> print = harness::print;
  std::function<harness::ParseResult(std::string_view, const TargetSpec&)> parse = harness::parse;
};

const TargetSpec& pick_target() {
  const char* name = *rc::gen::elementOf(std::vector<const char*>(std::begin(kTargets), std::end(kTargets)));
  RC_TAG(name);
  return *harness::target_spec(name);
}

void check_round_trips(const Codec& codec, const TargetSpec& t, const Program& p) {
  if (std::string e = harness::validate(t, p); !e.empty()) prop_fail(std::string("validate: ") + e);
  Program back = codec.decode(t, codec.encode(t, p));
  if (!(back == p))
    prop_fail("decode(encode(p)) != p for target " + std::string(t.name) + ": got\n" + harness::print(t, back));
  std::string text = codec.print(t, p);
  harness::ParseResult r = codec.parse(text, *harness::target_spec("all"));
  if (!r.ok()) prop_fail("parse(print(p)) failed: " + r.error + "\n" + text);
  if (r.target != &t) prop_fail("parse(print(p)) read target " + std::string(r.target->name) + ", not " + t.name);
  if (!(r.program == p))
    prop_fail("parse(print(p)) != p: printed\n" + text + "parsed back as\n" + harness::print(t, r.program));
}

void structured_round_trip(const Codec& codec) {
  const TargetSpec& t = pick_target();
  Program p = *gen_program(t);
  check_round_trips(codec, t, p);
}

void decoded_round_trip(const Codec& codec) {
  const TargetSpec& t = pick_target();
  auto bytes = *rc::gen::container<std::vector<std::uint8_t>>(rc::gen::arbitrary<std::uint8_t>());
  Program p = codec.decode(t, bytes);
  check_round_trips(codec, t, p);
}

// --- deliberately broken codecs ------------------------------------------------------

Codec truncating_encoder() {
  Codec c;
  c.encode = [](const TargetSpec& t, const Program& p) {
    auto bytes = harness::encode(t, p);
    if (!bytes.empty()) bytes.pop_back();  // the last byte never reaches the decoder
    return bytes;
  };
  return c;
}

Codec printer_without_switches() {
  Codec c;
  c.print = [](const TargetSpec& t, const Program& p) {
    std::string text = harness::print(t, p);
    std::string out;
    std::size_t pos = 0;
    while (pos < text.size()) {
      std::size_t nl = text.find('\n', pos);
      std::string line = text.substr(pos, nl == std::string::npos ? std::string::npos : nl + 1 - pos);
      if (line.rfind("switch ", 0) != 0) out += line;
      pos = nl == std::string::npos ? text.size() : nl + 1;
    }
    return out;
  };
  return c;
}

Codec printer_losing_fault_seed() {
  Codec c;
  c.print = [](const TargetSpec& t, const Program& p) {
    Program q = p;
    if (!(q.fault == FaultSpec{})) q.fault.seed = 0;
    return harness::print(t, q);
  };
  return c;
}

}  // namespace

RC_GTEST_PROP(ProgramProps, StructuredProgramsRoundTrip, ()) { structured_round_trip(Codec{}); }

RC_GTEST_PROP(ProgramProps, DecodedBytesRoundTrip, ()) { decoded_round_trip(Codec{}); }

// The in-place forms reuse what their output held: nothing of it may remain.
RC_GTEST_PROP(ProgramProps, InPlaceCodecLeavesNothingOfTheOldValue, ()) {
  const TargetSpec& t = pick_target();
  Program reused = *gen_program(t);  // an earlier value of the output
  std::vector<std::uint8_t> buffer = harness::encode(t, reused);
  buffer.resize(buffer.size() + 3, 0x5a);
  const Program p = *gen_program(t);
  harness::encode_into(t, p, buffer);
  if (buffer != harness::encode(t, p)) prop_fail("encode_into kept bytes of the buffer's old value");
  harness::decode_into(t, buffer, reused);
  if (!(reused == p)) prop_fail("decode_into kept part of the old program: got\n" + harness::print(t, reused));
}

TEST(ProgramProps, BinaryRoundTrip_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("program/truncating-encoder", [] { structured_round_trip(truncating_encoder()); }),
                       "decode(encode(p)) != p");
}

TEST(ProgramProps, TextRoundTrip_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("program/no-switches", [] { structured_round_trip(printer_without_switches()); }),
                       "parse(print(p)) != p");
}

TEST(ProgramProps, TextRoundTripOfDecodedBytes_CatchesBrokenModel) {
  ANYCTX_EXPECT_CAUGHT(run_broken("program/fault-seed", [] { decoded_round_trip(printer_losing_fault_seed()); }),
                       "parse(print(p)) != p");
}

}  // namespace anyctx::props
