// The program IR: the decoder is total, encode/decode and print/parse round
// trip, and bad text gets an error naming the line and what was expected.
#include "harness/program.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>

#include "harness/text.h"

namespace anyctx::harness {
namespace {

std::vector<std::uint8_t> random_bytes(std::mt19937& rng) {
  std::vector<std::uint8_t> bytes(rng() % 400);
  for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
  return bytes;
}

const char* kTargets[] = {"page_ops", "page_smp", "slab_ops", "memcg_ops", "lock_ops", "all"};

TEST(ProgramTest, EveryByteStringDecodesToAValidProgram) {
  std::mt19937 rng(1);
  for (const char* name : kTargets) {
    const TargetSpec& t = *target_spec(name);
    EXPECT_EQ(validate(t, decode(t, {})), "") << name << ": the empty input";
    for (int i = 0; i < 2000; ++i) {
      std::vector<std::uint8_t> bytes = random_bytes(rng);
      Program p = decode(t, bytes);
      ASSERT_EQ(validate(t, p), "") << name << " input " << i;
    }
  }
}

TEST(ProgramTest, DecodeOfEncodeIsIdentity) {
  std::mt19937 rng(2);
  for (const char* name : kTargets) {
    const TargetSpec& t = *target_spec(name);
    for (int i = 0; i < 2000; ++i) {
      Program p = decode(t, random_bytes(rng));
      std::vector<std::uint8_t> bytes = encode(t, p);
      ASSERT_TRUE(decode(t, bytes) == p) << name << " input " << i << "\n" << print(t, p);
      ASSERT_EQ(encode(t, decode(t, bytes)), bytes) << "encode is canonical";
    }
  }
}

TEST(ProgramTest, ParseOfPrintIsIdentity) {
  std::mt19937 rng(3);
  for (const char* name : kTargets) {
    const TargetSpec& t = *target_spec(name);
    for (int i = 0; i < 1000; ++i) {
      Program p = decode(t, random_bytes(rng));
      std::string text = print(t, p);
      ParseResult r = parse(text, *target_spec("all"));
      ASSERT_TRUE(r.ok()) << r.error << "\n" << text;
      EXPECT_EQ(r.target, &t);
      ASSERT_TRUE(r.program == p) << text;
    }
  }
}

TEST(ProgramTest, DecodedProgramsUseEveryOpAndBothInterruptKinds) {
  std::mt19937 rng(4);
  const TargetSpec& t = *target_spec("all");
  bool seen_kind[kOpKinds] = {};
  bool seen_irq = false, seen_nmi = false, seen_nested = false;
  for (int i = 0; i < 3000; ++i) {
    Program p = decode(t, random_bytes(rng));
    for (const auto& ops : p.cpus)
      for (const Op& op : ops) seen_kind[static_cast<int>(op.kind)] = true;
    for (const Injection& inj : p.injections) {
      (inj.kind == Ctx::kIrq ? seen_irq : seen_nmi) = true;
      seen_nested = seen_nested || (inj.kind == Ctx::kNmi && inj.level == Ctx::kIrq);
    }
  }
  for (int k = 0; k < kOpKinds; ++k) EXPECT_TRUE(seen_kind[k]) << op_name(static_cast<OpKind>(k));
  EXPECT_TRUE(seen_irq);
  EXPECT_TRUE(seen_nmi);
  EXPECT_TRUE(seen_nested) << "an NMI inside an IRQ";
}

TEST(ProgramTest, NmiOpsAreNolockOnly) {
  std::mt19937 rng(5);
  const TargetSpec& t = *target_spec("all");
  for (int i = 0; i < 2000; ++i) {
    Program p = decode(t, random_bytes(rng));
    for (const Injection& inj : p.injections) {
      if (inj.kind != Ctx::kNmi) continue;
      for (const Op& op : inj.ops) {
        EXPECT_NE(op.kind, OpKind::kSpinLock);
        EXPECT_NE(op.kind, OpKind::kLocalLock);
        EXPECT_NE(op.kind, OpKind::kPutPage);
        EXPECT_NE(op.kind, OpKind::kDrainAll);
        if (op.kind == OpKind::kAllocPages || op.kind == OpKind::kKmalloc || op.kind == OpKind::kFreePages)
          EXPECT_EQ(op.path, Path::kNolock);
      }
    }
  }
}

TEST(ProgramTest, TextFormReadsAsDocumented) {
  const char* text = R"(# anyctx program v1
target page_smp
fault nth=3 percent=0 contexts=task,irq,nmi paths=spinning,nolock seed=7
cpu 0
  alloc_pages nolock order=2 zero slot=1   # zero is implied on the nolock path
  free_pages spinning slot=1
cpu 1
  drain_all
inject nmi cpu=0 site=ZoneLocked level=task nth=1
  alloc_pages nolock order=0 slot=2
switch event=5 cpu=1
)";
  ParseResult r = parse(text, *target_spec("all"));
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_STREQ(r.target->name, "page_smp");
  const Program& p = r.program;
  ASSERT_EQ(p.cpus.size(), 2u);
  EXPECT_EQ(p.fault.nth, 3);
  EXPECT_EQ(p.fault.seed, 7);
  EXPECT_TRUE((p.cpus[0][0] == Op{OpKind::kAllocPages, Path::kNolock, 2, kFlagZero, 1}));
  EXPECT_TRUE((p.cpus[1][0] == Op{OpKind::kDrainAll, Path::kSpinning, 0, 0, 0}));
  ASSERT_EQ(p.injections.size(), 1u);
  EXPECT_EQ(p.injections[0].site, static_cast<int>(Site::kZoneLocked));
  ASSERT_EQ(p.schedule.size(), 1u);
  EXPECT_EQ(p.schedule[0].event, 5u);
}

struct BadText {
  const char* text;
  const char* error;
};

TEST(ProgramTest, BadTextGetsTheLineAndWhatWasExpected) {
  const BadText cases[] = {
      {"cpu 0\n  frobnicate slot=1\n",
       "line 2: expected an op (alloc_pages, free_pages, kmalloc, kfree, ...), 'cpu', 'inject' or 'switch', got "
       "'frobnicate'"},
      {"cpu 0\n  alloc_pages spinning order=9 slot=0\n", "line 2: order=9 is out of range 0..5"},
      {"cpu 0\n  alloc_pages nolock order=5 slot=0\n", "line 2: alloc_pages nolock takes order 0..3"},
      {"cpu 0\n  alloc_pages order=1 slot=0\n", "line 2: alloc_pages needs a path: spinning or nolock"},
      {"cpu 0\n  free_pages nolock slot=8\n", "line 2: slot=8 is out of range 0..7"},
      {"cpu 0\n  drain_all slot=1\n", "line 2: drain_all takes no argument 'slot'"},
      {"cpu 1\n", "line 1: cpus must be listed in order: expected cpu 0"},
      {"target nope\n", "line 1: expected a target (page_ops, page_smp, slab_ops, memcg_ops, lock_ops, all), got 'nope'"},
      {"inject nmi cpu=0 site=Nowhere\n", "line 1: expected a site name (ZoneLocked, PcpLocked, ..., OpBoundary), got 'Nowhere'"},
      {"cpu 0\ninject nmi cpu=0 site=ZoneLocked\n  alloc_pages spinning order=0 slot=1\n",
       "line 3: alloc_pages spinning cannot run in an NMI: use nolock"},
      {"fault nth=3 contexts=task,bogus\n", "line 1: expected one of task, irq, nmi in contexts, got 'bogus'"},
      {"cpu 0\n  kmalloc nolock size=100 slot=1\n",
       "line 2: expected one of the program sizes 1,8,16,24,32,64,96,128,200,256,500,1024,2048,4000,4096,8192, got '100'"},
      {"hello\n", "line 1: expected target, fault, cpu, inject, switch or pct, got 'hello'"},
      {"# anyctx program v1\ncpu 0\ncpu 1\nswitch on=0 site=ZoneLocked level=task nth=1 cpu=1\n",
       "line 4: a switch anchored to a site needs '# anyctx program v2' as the first line"},
      {"# anyctx program v1\ncpu 0\ncpu 1\npct seed=1 depth=2 steps=10\n",
       "line 4: pct needs '# anyctx program v2' as the first line"},
      {"target page_smp\ncpu 0\ncpu 1\nswitch on=0 site=ZoneLocked event=3 cpu=1\n",
       "line 4: a switch is at event=N or at on=, site=, ..., not both"},
      {"target page_smp\ncpu 0\ncpu 1\nswitch on=1 site=ZoneLocked level=task nth=1 cpu=1\n",
       "schedule: anchored switch 0: switches cpu 1 to itself"},
      {"target page_smp\ncpu 0\ncpu 1\nswitch on=0 site=ZoneLocked level=softirq nth=1 cpu=1\n",
       "line 4: expected level=task, irq or nmi, got 'softirq'"},
      {"target page_smp\ncpu 0\ncpu 1\nswitch on=0 site=ZoneLocked nth=33 cpu=1\n", "line 4: nth=33 is out of range 1..32"},
      {"target page_smp\ncpu 0\ncpu 1\npct seed=3 depth=2\n", "line 4: pct needs depth=D and steps=K"},
      {"target page_smp\ncpu 0\ncpu 1\npct seed=3 depth=2 steps=9\nswitch event=1 cpu=1\n",
       "pct: a PCT schedule replaces the written switches"},
      {"target page_ops\ncpu 0\npct seed=3 depth=2 steps=9\n", "schedule: a one-cpu program has no switches"},
      {"target page_ops\ncpu 0\ncpu 1\n", "cpus: 2 is outside 1..1 for target page_ops"},
      {"target page_ops\ncpu 0\n  kmalloc nolock size=64 slot=1\n",
       "cpu 0 op 0: kmalloc is not allowed in task context for target page_ops"},
      {"target page_smp\ncpu 0\ncpu 1\nswitch event=4 cpu=1\nswitch event=2 cpu=0\n",
       "schedule: switch 1 is not after the one before"},
  };
  for (const BadText& c : cases) {
    ParseResult r = parse(c.text, *target_spec("all"));
    EXPECT_EQ(r.error, c.error) << c.text;
  }
}

TEST(ProgramTest, TextV2ReadsAnchoredSwitchesAndPct) {
  ParseResult r = parse(R"(# anyctx program v2
target page_smp
cpu 0
  alloc_pages spinning order=0 slot=1
cpu 1
  free_pages nolock slot=1
switch event=3 cpu=1
switch on=0 site=ZoneListEdit level=irq nth=2 cpu=1
)", *target_spec("all"));
  ASSERT_TRUE(r.ok()) << r.error;
  ASSERT_EQ(r.program.anchored.size(), 1u);
  EXPECT_TRUE((r.program.anchored[0] ==
               AnchoredSwitch{0, static_cast<std::uint16_t>(Site::kZoneListEdit), Ctx::kIrq, 2, 1}));
  ASSERT_EQ(r.program.schedule.size(), 1u);
  EXPECT_EQ(print(*r.target, r.program).substr(0, kTextMagic.size()), kTextMagic);

  ParseResult pct = parse("target page_smp\ncpu 0\ncpu 1\npct seed=300 depth=3 steps=1000\n", *target_spec("all"));
  ASSERT_TRUE(pct.ok()) << pct.error;
  EXPECT_TRUE((pct.program.pct == PctSpec{300, 3, 1000}));
  EXPECT_NE(print(*pct.target, pct.program).find("pct seed=300 depth=3 steps=1000\n"), std::string::npos);
}

// A v1 text (the regressions kept before v2) reads as the same program, and a
// program without v2 features encodes to the same bytes as before.
TEST(ProgramTest, V1TextAndBytesStillMeanTheSameProgram) {
  const char* v1 = "# anyctx program v1\ntarget page_smp\ncpu 0\n  drain_all\ncpu 1\nswitch event=2 cpu=1\n";
  ParseResult r = parse(v1, *target_spec("all"));
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_TRUE(r.program.anchored.empty());
  EXPECT_FALSE(r.program.pct.on());
  // ncpus-2, no fault, 1 op (kind index of drain_all, 0, 0), 0 ops, 0 injections, 1 switch (+2, cpu 1)
  const TargetSpec& t = *target_spec("page_smp");
  std::vector<std::uint8_t> bytes = encode(t, r.program);
  std::uint8_t drain_all = static_cast<std::uint8_t>(
      std::find(t.task_ops.begin(), t.task_ops.end(), OpKind::kDrainAll) - t.task_ops.begin());
  EXPECT_EQ(bytes, (std::vector<std::uint8_t>{0, 0, 1, drain_all, 0, 0, 0, 0, 1, 2, 1}));
}

TEST(ProgramTest, DetectsTextByItsFirstLine) {
  EXPECT_TRUE(is_text_program("# anyctx program v1\ncpu 0\n"));
  EXPECT_TRUE(is_text_program("# anyctx program v2\ncpu 0\n"));
  EXPECT_FALSE(is_text_program("\x01\x02"));
  EXPECT_FALSE(is_text_program(""));
}

TEST(ProgramTest, PrintsARegressionTestHoldingTheProgram) {
  const TargetSpec& t = *target_spec("page_ops");
  Program p;
  p.cpus[0].push_back(Op{OpKind::kAllocPages, Path::kNolock, 1, 0, 3});
  std::string test = print_regression_test(t, p, "NolockOrderOne");
  EXPECT_NE(test.find("TEST(Regression, NolockOrderOne)"), std::string::npos);
  EXPECT_NE(test.find("alloc_pages nolock order=1 slot=3"), std::string::npos);
  EXPECT_NE(test.find("run_text_or_die(kProgram)"), std::string::npos);
}

// A fuzz dictionary that names a site beyond the lock layer's (`site=NAME`,
// for text programs) names every site: a site added to the list without
// its word is one the byte mutator cannot spell (lock_ops reaches only the
// lock sites). Its binary injection headers (`bin_..._at_NAME`) carry NAME's
// index, which moves when a site list grows.
TEST(Dictionaries, NameEverySiteAndItsIndex) {
  namespace fs = std::filesystem;
  int checked = 0;
  for (const auto& entry : fs::directory_iterator(fs::path(ANYCTX_SOURCE_DIR) / "fuzz")) {
    if (entry.path().extension() != ".dict") continue;
    std::ifstream in(entry.path());
    std::string line, dict;
    while (std::getline(in, line)) {
      dict += line + "\n";
      std::size_t at = line.find("_at_");
      if (line.rfind("bin_", 0) != 0 || at == std::string::npos) continue;
      std::size_t eq = line.find("=\"", at);
      ASSERT_NE(eq, std::string::npos) << line;
      std::string name = line.substr(at + 4, eq - at - 4);
      ASSERT_EQ(line.substr(eq + 6, 2), "\\x") << line;
      int index = std::stoi(line.substr(eq + 8, 2), nullptr, 16);
      ASSERT_LT(index, kInjectionSites) << entry.path().filename() << ": " << line;
      EXPECT_EQ(injection_site_name(index), name) << entry.path().filename() << ": " << line;
    }
    if (dict.find("\"site=ZoneLocked\"") == std::string::npos) continue;
    ++checked;
    for (int s = 0; s < kInjectionSites; ++s) {
      std::string word = std::string("\"site=") + injection_site_name(s) + "\"";
      EXPECT_NE(dict.find(word), std::string::npos) << entry.path().filename() << " lacks " << word;
    }
  }
  EXPECT_GE(checked, 5);
}

}  // namespace
}  // namespace anyctx::harness
