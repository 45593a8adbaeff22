#include "harness/text.h"

#include <charconv>
#include <sstream>
#include <vector>

namespace anyctx::harness {
namespace {

std::string mask_words(std::uint8_t mask, std::initializer_list<const char*> names) {
  std::string out;
  int bit = 0;
  for (const char* n : names) {
    if (mask & (1u << bit)) {
      if (!out.empty()) out += ',';
      out += n;
    }
    ++bit;
  }
  return out;
}

std::string print_op(const Op& op) {
  std::string s = op_name(op.kind);
  if (op_has_path(op.kind)) s += op.path == Path::kNolock ? " nolock" : " spinning";
  switch (op.kind) {
    case OpKind::kAllocPages: s += " order=" + std::to_string(op.order); break;
    case OpKind::kKmalloc: s += " size=" + std::to_string(kKmallocSizes[op.order]); break;
    case OpKind::kMemcgSetMax:
      s += " cgroup=" + std::to_string(op.order) + " limit=" +
           (kMemcgLimits[op.arg] == kLimitUnlimited ? std::string("unlimited") : std::to_string(kMemcgLimits[op.arg]));
      break;
    case OpKind::kMemcgCharge: s += " cgroup=" + std::to_string(op.order) + " pages=" + std::to_string(op.arg); break;
    case OpKind::kMemcgSwitch: s += " cgroup=" + std::to_string(op.order); break;
    case OpKind::kSpinLock: case OpKind::kSpinTryLock: case OpKind::kSpinUnlock:
      s += op.order == 0 ? " lock=A" : " lock=B";
      break;
    default: break;
  }
  if (op.kind == OpKind::kAllocPages || op.kind == OpKind::kKmalloc) {
    if (op.arg & kFlagZero) s += " zero";
    if (op.arg & kFlagAccount) s += " account";
  }
  if (op_has_slot(op.kind)) s += " slot=" + std::to_string(op.slot);
  return s;
}

// --- parsing ---------------------------------------------------------------------

std::vector<std::string_view> words_of(std::string_view line) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) ++i;
    std::size_t start = i;
    while (i < line.size() && line[i] != ' ' && line[i] != '\t' && line[i] != '\r') ++i;
    if (i > start) out.push_back(line.substr(start, i - start));
  }
  return out;
}

struct Error {
  std::string text;
};

class Parser {
 public:
  Parser(std::string_view text, const TargetSpec& target) : text_(text), target_(&target) {}

  ParseResult run() {
    ParseResult result;
    try {
      parse_all();
      result.target = target_;
      result.program = std::move(program_);
      if (std::string e = validate(*target_, result.program); !e.empty()) result.error = e;
    } catch (const Error& e) {
      result.error = e.text;
    }
    return result;
  }

 private:
  [[noreturn]] void fail(const std::string& what) { throw Error{"line " + std::to_string(line_no_) + ": " + what}; }
  [[noreturn]] void expected(const std::string& what, std::string_view got) {
    fail("expected " + what + ", got '" + std::string(got) + "'");
  }

  long number(std::string_view key, std::string_view value, long lo, long hi) {
    long v = 0;
    auto [p, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
    if (ec != std::errc() || p != value.data() + value.size())
      expected("a number for " + std::string(key), value);
    if (v < lo || v > hi)
      fail(std::string(key) + "=" + std::string(value) + " is out of range " + std::to_string(lo) + ".." +
           std::to_string(hi));
    return v;
  }

  static bool split(std::string_view word, std::string_view& key, std::string_view& value) {
    std::size_t eq = word.find('=');
    if (eq == std::string_view::npos) return false;
    key = word.substr(0, eq);
    value = word.substr(eq + 1);
    return true;
  }

  std::uint8_t mask(std::string_view key, std::string_view value, std::initializer_list<const char*> names) {
    std::uint8_t m = 0;
    std::size_t i = 0;
    while (i <= value.size()) {
      std::size_t comma = value.find(',', i);
      std::string_view item = value.substr(i, comma == std::string_view::npos ? std::string_view::npos : comma - i);
      int bit = 0;
      bool found = false;
      std::string all;
      for (const char* n : names) {
        if (item == n) {
          m = static_cast<std::uint8_t>(m | 1u << bit);
          found = true;
        }
        all += (all.empty() ? "" : ", ") + std::string(n);
        ++bit;
      }
      if (!found) expected("one of " + all + " in " + std::string(key), item);
      if (comma == std::string_view::npos) break;
      i = comma + 1;
    }
    return m;
  }

  void parse_fault(const std::vector<std::string_view>& w) {
    FaultSpec f;
    for (std::size_t i = 1; i < w.size(); ++i) {
      std::string_view k, v;
      if (!split(w[i], k, v)) expected("key=value (nth, percent, contexts, paths, seed)", w[i]);
      if (k == "nth") f.nth = static_cast<std::uint8_t>(number(k, v, 0, 32));
      else if (k == "percent") f.percent = static_cast<std::uint8_t>(number(k, v, 0, 100));
      else if (k == "contexts") f.contexts = mask(k, v, {"task", "irq", "nmi"});
      else if (k == "paths") f.paths = mask(k, v, {"spinning", "nolock"});
      else if (k == "seed") f.seed = static_cast<std::uint8_t>(number(k, v, 0, 255));
      else expected("nth, percent, contexts, paths or seed", k);
    }
    program_.fault = f;
  }

  Op parse_op(const std::vector<std::string_view>& w, Ctx ctx) {
    Op op;
    int kind = -1;
    for (int k = 0; k < kOpKinds; ++k)
      if (w[0] == op_name(static_cast<OpKind>(k))) kind = k;
    if (kind < 0) expected("an op (alloc_pages, free_pages, kmalloc, kfree, ...), 'cpu', 'inject' or 'switch'", w[0]);
    op.kind = static_cast<OpKind>(kind);
    bool path_given = false;
    for (std::size_t i = 1; i < w.size(); ++i) {
      std::string_view k, v;
      if (w[i] == "nolock" || w[i] == "spinning") {
        if (!op_has_path(op.kind)) fail(std::string(op_name(op.kind)) + " takes no path");
        op.path = w[i] == "nolock" ? Path::kNolock : Path::kSpinning;
        path_given = true;
      } else if (w[i] == "zero" || w[i] == "account") {
        if (op.kind != OpKind::kAllocPages && op.kind != OpKind::kKmalloc)
          fail(std::string(op_name(op.kind)) + " takes no flags");
        op.arg = static_cast<std::uint8_t>(op.arg | (w[i] == "zero" ? kFlagZero : kFlagAccount));
      } else if (split(w[i], k, v)) {
        if (k == "slot" && op_has_slot(op.kind)) {
          op.slot = static_cast<std::uint8_t>(number(k, v, 0, kSlots - 1));
        } else if (k == "order" && op.kind == OpKind::kAllocPages) {
          op.order = static_cast<std::uint8_t>(number(k, v, 0, kMaxSpinningOrder));
        } else if (k == "size" && op.kind == OpKind::kKmalloc) {
          long size = number(k, v, 1, 8192);
          int idx = -1;
          std::string sizes;
          for (int s = 0; s < kKmallocSizeCount; ++s) {
            if (kKmallocSizes[s] == static_cast<std::uint32_t>(size)) idx = s;
            sizes += (s ? "," : "") + std::to_string(kKmallocSizes[s]);
          }
          if (idx < 0) expected("one of the program sizes " + sizes, v);
          op.order = static_cast<std::uint8_t>(idx);
        } else if (k == "cgroup" && (op.kind == OpKind::kMemcgSetMax || op.kind == OpKind::kMemcgCharge ||
                                     op.kind == OpKind::kMemcgSwitch)) {
          op.order = static_cast<std::uint8_t>(number(k, v, 0, kCgroups - 1));
        } else if (k == "limit" && op.kind == OpKind::kMemcgSetMax) {
          int idx = -1;
          for (int l = 0; l < kMemcgLimitCount; ++l) {
            if (kMemcgLimits[l] == kLimitUnlimited ? v == "unlimited" : v == std::to_string(kMemcgLimits[l])) idx = l;
          }
          if (idx < 0) expected("a limit of 0, 1, 4, 16, 64 or unlimited", v);
          op.arg = static_cast<std::uint8_t>(idx);
        } else if (k == "pages" && op.kind == OpKind::kMemcgCharge) {
          op.arg = static_cast<std::uint8_t>(number(k, v, 1, kMaxChargePages));
        } else if (k == "lock" && (op.kind == OpKind::kSpinLock || op.kind == OpKind::kSpinTryLock ||
                                   op.kind == OpKind::kSpinUnlock)) {
          if (v != "A" && v != "B") expected("lock=A or lock=B", v);
          op.order = v == "A" ? 0 : 1;
        } else {
          fail(std::string(op_name(op.kind)) + " takes no argument '" + std::string(k) + "'");
        }
      } else {
        expected("a word of " + std::string(op_name(op.kind)), w[i]);
      }
    }
    if (op_has_path(op.kind) && !path_given) fail(std::string(op_name(op.kind)) + " needs a path: spinning or nolock");
    if (ctx == Ctx::kNmi && op_has_path(op.kind) && op.path == Path::kSpinning)
      fail(std::string(op_name(op.kind)) + " spinning cannot run in an NMI: use nolock");
    if (op.kind == OpKind::kAllocPages && op.path == Path::kNolock && op.order > 3)
      fail("alloc_pages nolock takes order 0..3");
    return op;
  }

  void parse_inject(const std::vector<std::string_view>& w) {
    Injection inj;
    if (w.size() < 2 || (w[1] != "irq" && w[1] != "nmi")) expected("inject irq|nmi", w.size() < 2 ? "" : w[1]);
    inj.kind = w[1] == "irq" ? Ctx::kIrq : Ctx::kNmi;
    for (std::size_t i = 2; i < w.size(); ++i) {
      std::string_view k, v;
      if (!split(w[i], k, v)) expected("key=value (cpu, site, level, nth)", w[i]);
      if (k == "cpu") {
        inj.cpu = static_cast<std::uint8_t>(number(k, v, 0, kMaxProgramCpus - 1));
      } else if (k == "site") {
        inj.site = site_number(v);
      } else if (k == "level") {
        if (v != "task" && v != "irq") expected("level=task or level=irq", v);
        inj.level = v == "task" ? Ctx::kTask : Ctx::kIrq;
      } else if (k == "nth") {
        inj.nth = static_cast<std::uint8_t>(number(k, v, 1, 8));
      } else {
        expected("cpu, site, level or nth", k);
      }
    }
    program_.injections.push_back(std::move(inj));
  }

  // `switch event=N cpu=C` (v1 and v2) or, v2 only,
  // `switch on=D site=S level=L nth=N cpu=C`.
  void parse_switch(const std::vector<std::string_view>& w) {
    Switch s;
    AnchoredSwitch a;
    bool has_event = false, has_anchor = false, has_cpu = false;
    for (std::size_t i = 1; i < w.size(); ++i) {
      std::string_view k, v;
      if (!split(w[i], k, v)) expected("event=N or on=, site=, level=, nth=, and cpu=N", w[i]);
      if (k == "event") {
        s.event = static_cast<std::uint32_t>(number(k, v, 0, 1 << 20));
        has_event = true;
      } else if (k == "cpu") {
        s.cpu = a.cpu = static_cast<std::uint8_t>(number(k, v, 0, kMaxProgramCpus - 1));
        has_cpu = true;
      } else if (k == "on" || k == "site" || k == "level" || k == "nth") {
        if (version_ < 2) fail("a switch anchored to a site needs '" + std::string(kTextMagic) + "' as the first line");
        has_anchor = true;
        if (k == "on") a.on = static_cast<std::uint8_t>(number(k, v, 0, kMaxProgramCpus - 1));
        else if (k == "site") a.site = site_number(v);
        else if (k == "nth") a.nth = static_cast<std::uint8_t>(number(k, v, 1, kMaxAnchorNth));
        else if (v == "task" || v == "irq" || v == "nmi") a.level = v == "task" ? Ctx::kTask : v == "irq" ? Ctx::kIrq : Ctx::kNmi;
        else expected("level=task, irq or nmi", v);
      } else {
        expected("event, on, site, level, nth or cpu", k);
      }
    }
    if (!has_cpu) fail("switch needs cpu=N, the cpu to run");
    if (has_event && has_anchor) fail("a switch is at event=N or at on=, site=, ..., not both");
    if (has_anchor) program_.anchored.push_back(a);
    else program_.schedule.push_back(s);
  }

  void parse_pct(const std::vector<std::string_view>& w) {
    PctSpec pct;
    for (std::size_t i = 1; i < w.size(); ++i) {
      std::string_view k, v;
      if (!split(w[i], k, v)) expected("key=value (seed, depth, steps)", w[i]);
      if (k == "seed") pct.seed = static_cast<std::uint16_t>(number(k, v, 0, 65535));
      else if (k == "depth") pct.depth = static_cast<std::uint8_t>(number(k, v, 1, kMaxPctDepth));
      else if (k == "steps") pct.steps = static_cast<std::uint16_t>(number(k, v, 1, kMaxPctSteps));
      else expected("seed, depth or steps", k);
    }
    if (pct.depth == 0 || pct.steps == 0) fail("pct needs depth=D and steps=K");
    program_.pct = pct;
  }

  std::uint16_t site_number(std::string_view v) {
    for (int s = 0; s < kInjectionSites; ++s)
      if (v == injection_site_name(s)) return static_cast<std::uint16_t>(s);
    expected("a site name (ZoneLocked, PcpLocked, ..., OpBoundary)", v);
  }

  void parse_all() {
    version_ = text_.substr(0, kTextMagicV1.size()) == kTextMagicV1 ? 1 : 2;
    program_.cpus.clear();
    enum { kNone, kCpu, kInject } block = kNone;
    std::size_t pos = 0;
    while (pos <= text_.size()) {
      std::size_t nl = text_.find('\n', pos);
      std::string_view line = text_.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
      pos = nl == std::string_view::npos ? text_.size() + 1 : nl + 1;
      ++line_no_;
      if (std::size_t hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
      std::vector<std::string_view> w = words_of(line);
      if (w.empty()) continue;
      if (w[0] == "target") {
        if (w.size() != 2) expected("target NAME", line);
        const TargetSpec* t = target_spec(w[1]);
        if (t == nullptr) expected("a target (page_ops, page_smp, slab_ops, memcg_ops, lock_ops, all)", w[1]);
        target_ = t;
      } else if (w[0] == "fault") {
        parse_fault(w);
      } else if (w[0] == "cpu") {
        if (w.size() != 2) expected("cpu N", line);
        long n = number("cpu", w[1], 0, kMaxProgramCpus - 1);
        if (n != static_cast<long>(program_.cpus.size()))
          fail("cpus must be listed in order: expected cpu " + std::to_string(program_.cpus.size()));
        program_.cpus.emplace_back();
        block = kCpu;
      } else if (w[0] == "inject") {
        parse_inject(w);
        block = kInject;
      } else if (w[0] == "switch") {
        parse_switch(w);
        block = kNone;
      } else if (w[0] == "pct") {
        if (version_ < 2) fail("pct needs '" + std::string(kTextMagic) + "' as the first line");
        parse_pct(w);
        block = kNone;
      } else if (block == kCpu) {
        program_.cpus.back().push_back(parse_op(w, Ctx::kTask));
      } else if (block == kInject) {
        program_.injections.back().ops.push_back(parse_op(w, program_.injections.back().kind));
      } else {
        expected("target, fault, cpu, inject, switch or pct", w[0]);
      }
    }
    if (program_.cpus.empty()) program_.cpus.emplace_back();
  }

  std::string_view text_;
  const TargetSpec* target_;
  Program program_;
  int line_no_ = 0;
  int version_ = 2;  // 1 for a text that starts with kTextMagicV1
};

}  // namespace

std::string print(const TargetSpec& target, const Program& p) {
  std::ostringstream out;
  out << kTextMagic << "\n";
  out << "target " << target.name << "\n";
  if (!(p.fault == FaultSpec{})) {
    out << "fault nth=" << int{p.fault.nth} << " percent=" << int{p.fault.percent}
        << " contexts=" << mask_words(p.fault.contexts, {"task", "irq", "nmi"})
        << " paths=" << mask_words(p.fault.paths, {"spinning", "nolock"}) << " seed=" << int{p.fault.seed} << "\n";
  }
  for (std::size_t c = 0; c < p.cpus.size(); ++c) {
    out << "cpu " << c << "\n";
    for (const Op& op : p.cpus[c]) out << "  " << print_op(op) << "\n";
  }
  for (const Injection& inj : p.injections) {
    out << "inject " << ctx_word(inj.kind) << " cpu=" << int{inj.cpu} << " site=" << injection_site_name(inj.site)
        << " level=" << ctx_word(inj.level) << " nth=" << int{inj.nth} << "\n";
    for (const Op& op : inj.ops) out << "  " << print_op(op) << "\n";
  }
  for (const Switch& s : p.schedule) out << "switch event=" << s.event << " cpu=" << int{s.cpu} << "\n";
  for (const AnchoredSwitch& a : p.anchored)
    out << "switch on=" << int{a.on} << " site=" << injection_site_name(a.site) << " level=" << ctx_word(a.level)
        << " nth=" << int{a.nth} << " cpu=" << int{a.cpu} << "\n";
  if (p.pct.on())
    out << "pct seed=" << p.pct.seed << " depth=" << int{p.pct.depth} << " steps=" << p.pct.steps << "\n";
  return out.str();
}

ParseResult parse(std::string_view text, const TargetSpec& default_target) {
  return Parser(text, default_target).run();
}

bool is_text_program(std::string_view bytes) {
  return bytes.substr(0, kTextMagic.size()) == kTextMagic || bytes.substr(0, kTextMagicV1.size()) == kTextMagicV1;
}

void read_fuzz_input(const TargetSpec& target, const std::uint8_t* data, std::size_t size, Program& out) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  if (size != 0 && is_text_program(bytes)) {
    ParseResult parsed = parse(bytes, target);
    if (parsed.ok() && parsed.target == &target) {
      out = std::move(parsed.program);
      return;
    }
  }
  decode_into(target, std::span<const std::uint8_t>(data, size), out);
}

std::string print_regression_test(const TargetSpec& target, const Program& p, std::string_view test_name) {
  std::ostringstream out;
  out << "// Regression test printed by anyctx-repro --emit-test: the program must run clean.\n"
      << "#include <gtest/gtest.h>\n\n#include <cstdlib>\n\n#include \"harness/executor.h\"\n\n"
      << "TEST(Regression, " << test_name << ") {\n"
      << "  GTEST_FLAG_SET(death_test_style, \"threadsafe\");\n"
      << "  static const char kProgram[] = R\"anyctx(" << print(target, p) << ")anyctx\";\n"
      << "  EXPECT_EXIT(\n"
      << "      {\n"
      << "        anyctx::harness::run_text_or_die(kProgram);\n"
      << "        std::exit(0);\n"
      << "      },\n"
      << "      ::testing::ExitedWithCode(0), \"\");\n"
      << "}\n";
  return out.str();
}

}  // namespace anyctx::harness
