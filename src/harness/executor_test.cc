// The executor: programs run, the same program runs the same way, and every
// oracle fires when its condition is made true on purpose.
#include "harness/executor.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <set>
#include <sstream>

#include "anyctx/memcg/memcg.h"
#include "anyctx/page/page_alloc.h"
#include "harness/feedback.h"
#include "harness/interleave.h"
#include "harness/test_helpers.h"
#include "harness/text.h"

namespace anyctx::harness {
namespace {

using test::parse_or_fail;

class ExecutorTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

constexpr const char* kPagesWithNmiInsideZoneLock = R"(# anyctx program v1
target page_ops
cpu 0
  alloc_pages spinning order=0 slot=0
  alloc_pages spinning order=5 slot=1
  free_pages nolock slot=0
  free_pages spinning slot=1
  drain_all
inject nmi cpu=0 site=ZoneLocked level=task nth=1
  alloc_pages nolock order=0 slot=2
  free_pages nolock slot=2
  alloc_pages nolock order=3 slot=3
)";

TEST_F(ExecutorTest, RunsAProgramWithAnInjectedNmi) {
  Program p = parse_or_fail(kPagesWithNmiInsideZoneLock);
  RunStats s = run_program(*target_spec("page_ops"), p);
  EXPECT_EQ(s.injections_fired, 1);
  EXPECT_EQ(s.ops_run + s.ops_skipped, 5 + 3);
  EXPECT_GT(s.events, 8u);
}

// The flags the fuzzer reads besides edges: a site by context level, an
// injection by site, kind and level, a switch by site.
TEST_F(ExecutorTest, FeedbackCountsContextsInjectionsAndSwitches) {
  const int zone_locked = static_cast<int>(Site::kZoneLocked);
  const int task = static_cast<int>(Ctx::kTask);
  const int nmi = static_cast<int>(Ctx::kNmi);
  feedback::reset();
  run_program(*target_spec("page_ops"), parse_or_fail(kPagesWithNmiInsideZoneLock));
  const feedback::Counters& c = feedback::counters();
  EXPECT_GE(c.reached[zone_locked][task], 1);
  EXPECT_EQ(c.fired[zone_locked][1][task], 1) << "one NMI at ZoneLocked in task context";
  EXPECT_EQ(c.fired[zone_locked][0][task], 0) << "no IRQ was injected";
  EXPECT_EQ(c.reached[kOpBoundary][nmi], 1) << "the NMI ran ops: a flag, not a count";
  int switches = 0;
  for (std::uint8_t n : c.switched) switches += n;
  EXPECT_EQ(switches, 0) << "a one-CPU program never switches";

  feedback::reset();
  const char* two_cpus = R"(# anyctx program v1
target page_smp
cpu 0
  alloc_pages spinning order=0 slot=0
  free_pages spinning slot=0
cpu 1
  drain_all
switch event=1 cpu=1
)";
  RunStats s = run_program(*target_spec("page_smp"), parse_or_fail(two_cpus));
  switches = 0;
  for (std::uint8_t n : c.switched) switches += n;
  EXPECT_EQ(switches, 1) << "the scheduled switch, flagged at its site";
  EXPECT_GE(s.switches, switches);
  for (int site = 0; site < kInjectionSites; ++site)
    for (int kind = 0; kind < 2; ++kind) EXPECT_EQ(c.fired[site][kind][task], 0) << site;
}

// drain_all asks the other CPUs to drain (a flag and an IRQ). A CPU that
// has finished its ops is lent a turn to take the IRQ, as an idle CPU would;
// one switched out inside its pcp section serves the request at its unlock,
// after it resumes. Either way the requester's wait ends and the run passes.
TEST_F(ExecutorTest, DrainRequestsAreServedByFinishedAndBusyCpus) {
  const char* to_finished = R"(# anyctx program v2
target page_smp
cpu 0
  drain_all
cpu 1
  alloc_pages spinning order=0 slot=1
  free_pages spinning slot=1
switch on=0 site=OpBoundary level=task nth=1 cpu=1
)";
  PageStats before = page_stats();
  run_program(*target_spec("page_smp"), parse_or_fail(to_finished));
  PageStats after = page_stats();
  EXPECT_EQ(after.drain_requests - before.drain_requests, 1u);
  EXPECT_EQ(after.drains_served - before.drains_served, 1u) << "served in a lent turn";
  EXPECT_EQ(after.drain_timeouts, before.drain_timeouts);

  const char* to_holder = R"(# anyctx program v2
target page_smp
cpu 0
  drain_all
cpu 1
  alloc_pages spinning order=0 slot=1
  free_pages spinning slot=1
  alloc_pages spinning order=0 slot=2
switch on=0 site=OpBoundary level=task nth=1 cpu=1
switch on=1 site=PcpListEdit level=task nth=2 cpu=0
)";
  before = page_stats();
  run_program(*target_spec("page_smp"), parse_or_fail(to_holder));
  after = page_stats();
  EXPECT_EQ(after.drain_requests - before.drain_requests, 1u);
  EXPECT_EQ(after.drains_served - before.drains_served, 1u) << "served at the holder's unlock";
  EXPECT_EQ(after.drain_timeouts, before.drain_timeouts);
}

// Which site the program's switches were taken at (the feedback flags).
std::vector<int> switch_sites() {
  std::vector<int> out;
  for (int site = 0; site < kInjectionSites; ++site)
    if (feedback::counters().switched[site] != 0) out.push_back(site);
  return out;
}

// A switch anchored to "the first ZoneLocked of cpu 0" stays there when an op
// is inserted before it; one written at a global event count moves.
TEST_F(ExecutorTest, AnAnchoredSwitchSurvivesAnOpInsertedBeforeIt) {
  const int zone_locked = static_cast<int>(Site::kZoneLocked);
  const char* anchored = R"(# anyctx program v2
target page_smp
cpu 0
  alloc_pages spinning order=2 slot=0
  free_pages spinning slot=0
cpu 1
  drain_all
switch on=0 site=ZoneLocked level=task nth=1 cpu=1
)";
  Program p = parse_or_fail(anchored);
  feedback::reset();
  RunStats stats = run_program(*target_spec("page_smp"), p);
  ASSERT_EQ(switch_sites(), std::vector<int>{zone_locked});
  // The site map marks that hit as one made while another CPU held a lock,
  // and cpu 0's, made before cpu 1 ran, as not.
  const int spin = static_cast<int>(Site::kSpinWait);
  EXPECT_GE(stats.sites.hits[1][spin][0], 1);
  EXPECT_EQ(stats.sites.held_elsewhere[1][spin][0] & 1u, 1u) << "cpu 1's first spin, zone.lock held by cpu 0";
  EXPECT_EQ(stats.sites.held_elsewhere[0][zone_locked][0] & 1u, 0u) << "cpu 0 took zone.lock before cpu 1 ran";
  // drain_all on cpu 1 found zone.lock held by switched-out cpu 0: the
  // interleaving feedback saw it.
  bool seen = false;
  for (unsigned held = 0; held < 256; ++held)
    if ((held & kHeldZone) != 0)
      seen |= feedback::counters().held_elsewhere[feedback::state_index(
                  static_cast<unsigned>(Site::kSpinWait), held, static_cast<unsigned>(Ctx::kTask))] != 0;
  EXPECT_TRUE(seen) << "cpu 1 spun while cpu 0 held zone.lock";

  // The same moment written as a global event count...
  std::uint64_t event = 0;
  for (std::uint64_t e = 1; e < 40 && event == 0; ++e) {
    Program q = p;
    q.anchored.clear();
    q.schedule.push_back(Switch{static_cast<std::uint32_t>(e), 1});
    feedback::reset();
    run_program(*target_spec("page_smp"), q);
    if (switch_sites() == std::vector<int>{zone_locked}) event = e;
  }
  ASSERT_NE(event, 0u) << "some event count is cpu 0's first ZoneLocked";

  // ...and both after an op inserted at the start of cpu 0.
  const Op inserted{OpKind::kWriteVerify, Path::kSpinning, 0, 0, 5};
  Program moved = p;
  moved.cpus[0].insert(moved.cpus[0].begin(), inserted);
  feedback::reset();
  run_program(*target_spec("page_smp"), moved);
  EXPECT_EQ(switch_sites(), std::vector<int>{zone_locked}) << "the anchored switch kept its moment";

  moved.anchored.clear();
  moved.schedule.push_back(Switch{static_cast<std::uint32_t>(event), 1});
  feedback::reset();
  run_program(*target_spec("page_smp"), moved);
  EXPECT_NE(switch_sites(), std::vector<int>{zone_locked}) << "the event switch moved off it";
}

TEST_F(ExecutorTest, SameProgramSameTrace) {
  std::mt19937 rng(9);
  for (const char* name : {"page_ops", "page_smp", "lock_ops"}) {
    const TargetSpec& t = *target_spec(name);
    for (int i = 0; i < 25; ++i) {
      std::vector<std::uint8_t> bytes(rng() % 200);
      for (auto& b : bytes) b = static_cast<std::uint8_t>(rng());
      Program p = decode(t, bytes);
      RunStats a = run_program(t, p);
      RunStats b = run_program(t, p);
      ASSERT_EQ(a.trace_hash, b.trace_hash) << name << " input " << i << "\n" << print(t, p);
      ASSERT_EQ(a.events, b.events);
    }
  }
}

// A run leaves nothing pending for the next: a nolock charge refused at a
// limit marks its level pending (no spinning charge delivers it), and the
// same program run again pushes it again, as the first run did.
TEST_F(ExecutorTest, ALimitEventLeftPendingDoesNotReachTheNextRun) {
  const TargetSpec& t = *target_spec("memcg_ops");
  const Program p = test::parse_or_fail(R"(# anyctx program v2
target memcg_ops
cpu 0
  memcg_set_max cgroup=3 limit=1
  memcg_charge nolock cgroup=3 pages=4 slot=0
)");
  const int push = test::site_of("EventPush");
  RunStats a = run_program(t, p);
  EXPECT_EQ(a.sites.hits[0][push][0], 1u) << "the refusal pushes its level";
  EXPECT_FALSE(memcg_events_pending()) << "the run delivered what it left pending";
  RunStats b = run_program(t, p);
  EXPECT_EQ(b.sites.hits[0][push][0], 1u) << "the second run pushes it again";
  EXPECT_EQ(a.trace_hash, b.trace_hash);
}

TEST_F(ExecutorTest, CpusHandOverWhereTheScheduleSaysAndWhileSpinning) {
  const char* text = R"(# anyctx program v1
target lock_ops
cpu 0
  spin_lock lock=A
  local_lock
  spin_unlock lock=A
cpu 1
  spin_lock lock=A
  spin_trylock lock=B
switch event=2 cpu=1
)";
  RunStats s = run_program(*target_spec("lock_ops"), parse_or_fail(text));
  EXPECT_GE(s.switches, 2) << "cpu 1 spins on A, so cpu 0 gets the CPU back";
  EXPECT_EQ(s.ops_skipped, 0);
}

// memcg asks other CPUs to drain their stocks with a real IRQ. A CPU that is
// not running (here: finished, waiting to go offline) takes it when it runs
// again, never while another CPU holds the turn (found by memcg_ops: the
// handler's site events ran beside CPU 0's and switched CPUs under it).
TEST_F(ExecutorTest, AnInterruptSentToAWaitingCpuRunsWhenItRunsAgain) {
  const char* text = R"(# anyctx program v1
target memcg_ops
cpu 0
  memcg_set_max cgroup=1 limit=64
  memcg_charge spinning cgroup=1 pages=8 slot=0
cpu 1
  memcg_charge spinning cgroup=1 pages=1 slot=1
switch event=1 cpu=1
)";
  Program p = parse_or_fail(text);
  const TargetSpec& t = *target_spec("memcg_ops");
  RunStats first = run_program(t, p);
  for (int i = 0; i < 10; ++i) {
    RunStats again = run_program(t, p);
    ASSERT_EQ(again.trace_hash, first.trace_hash) << "run " << i;
  }
}

// Every checked-in input (seeds and regressions) runs twice the same way.
TEST_F(ExecutorTest, EveryCorpusInputReplaysIdentically) {
  namespace fs = std::filesystem;
  int files = 0;
  for (const auto& dir : fs::directory_iterator(fs::path(ANYCTX_SOURCE_DIR) / "corpus")) {
    std::string name = dir.path().filename().string();
    std::string base = name.substr(0, name.find("-regressions"));
    const TargetSpec* t = target_spec(base == "program_text" ? "all" : base);
    if (t == nullptr) continue;
    for (const auto& file : fs::directory_iterator(dir.path())) {
      std::ifstream in(file.path(), std::ios::binary);
      std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      Program p;
      const TargetSpec* target = t;
      ParseResult r;
      if (is_text_program(bytes) && (r = parse(bytes, *t)).ok()) {
        p = r.program;
        target = r.target;
      } else {  // as fuzz_one does: what does not parse is bytes
        p = decode(*t, std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
      }
      RunStats a = run_program(*target, p);
      RunStats b = run_program(*target, p);
      EXPECT_EQ(a.trace_hash, b.trace_hash) << file.path();
      EXPECT_EQ(a.events, b.events) << file.path();
      ++files;
    }
  }
  EXPECT_GT(files, 5);
}

// Program v2 changed the executor (anchored switches, PCT, interleaving
// state); a v1 program still runs exactly as before: src/harness/testdata/v1-traces.txt
// holds each v1 text's trace hash and event count. (A deliberate change to
// what runs — a library path, a site — regenerates that table with
// `anyctx-repro --trace`, as its header shows, and says so in its commit.)
TEST_F(ExecutorTest, V1ProgramsReplayTheSameExecution) {
  std::ifstream table(std::string(ANYCTX_SOURCE_DIR) + "/src/harness/testdata/v1-traces.txt");
  ASSERT_TRUE(table) << "src/harness/testdata/v1-traces.txt";
  int checked = 0;
  for (std::string line; std::getline(table, line);) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream fields(line);
    std::string path, hash;
    std::uint64_t events = 0;
    ASSERT_TRUE(fields >> path >> hash >> events) << line;
    std::ifstream in(std::string(ANYCTX_SOURCE_DIR) + "/" + path, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ASSERT_EQ(text.rfind(kTextMagicV1, 0), 0u) << path << " is not a v1 program";
    ParseResult r = parse(text, *target_spec("all"));
    ASSERT_TRUE(r.ok()) << path << ": " << r.error;
    RunStats s = run_program(*r.target, r.program);
    EXPECT_EQ(s.trace_hash, std::stoull(hash, nullptr, 16)) << path;
    EXPECT_EQ(s.events, events) << path;
    ++checked;
  }
  EXPECT_GE(checked, 15);
}

// --- every oracle fires --------------------------------------------------------------------

TEST_F(ExecutorTest, ShadowMapFiresOnChangedContent) {
  RunOptions o;
  o.sabotage = Sabotage::kCorruptLiveBlock;
  o.sabotage_event = 3;
  const char* text = "cpu 0\n  alloc_pages spinning order=0 slot=0\n  write_verify slot=0\n  free_pages spinning slot=0\n";
  EXPECT_DEATH(run_program(*target_spec("page_ops"), parse_or_fail(text), o),
               "harness: shadow map: slot 0 \\(page block at pfn [0-9]+ order 0\\): content changed while "
               "allocated: byte 1 is [0-9]+, expected [0-9]+ \\[program cpu 0 \\(anyctx cpu 0\\): task op [0-9] "
               "(write_verify|free_pages)");
}

TEST_F(ExecutorTest, InvariantsFireOnACorruptedFrame) {
  RunOptions o;
  o.sabotage = Sabotage::kCorruptFreePage;
  o.sabotage_event = 2;
  const char* text = "cpu 0\n  alloc_pages spinning order=0 slot=0\n  drain_local\n";
  EXPECT_DEATH(run_program(*target_spec("page_ops"), parse_or_fail(text), o),
               "harness: invariants: page: pfn [0-9]+ .*\\[program cpu 0");
}

TEST_F(ExecutorTest, ConservationFiresOnALostPage) {
  RunOptions o;
  o.sabotage = Sabotage::kLeakPage;
  o.sabotage_event = 1;
  o.invariants_each_op = false;
  const char* text = "cpu 0\n  drain_local\n";
  EXPECT_DEATH(run_program(*target_spec("page_ops"), parse_or_fail(text), o),
               "harness: after quiesce: conservation: 1 pages are neither free nor held by the program");
}

TEST_F(ExecutorTest, LockModelFiresOnAWrongTryLock) {
  RunOptions o;
  o.sabotage = Sabotage::kLockModelLie;
  o.sabotage_event = 1;
  const char* text = "target lock_ops\ncpu 0\n  spin_trylock lock=A\n";
  EXPECT_DEATH(run_program(*target_spec("lock_ops"), parse_or_fail(text), o),
               "harness: lock model: spin_trylock A returned true but the model says the lock is held by program "
               "cpu 0 frame 0");
}

TEST_F(ExecutorTest, SelfDeadlockIsReportedWithTheStep) {
  RunOptions o;
  o.sabotage = Sabotage::kNoLockLegalization;
  const char* text = R"(target lock_ops
cpu 0
  spin_lock lock=A
  spin_unlock lock=A
inject irq cpu=0 site=OpBoundary level=task nth=2
  spin_lock lock=A
)";
  EXPECT_DEATH(run_program(*target_spec("lock_ops"), parse_or_fail(text), o),
               "anyctx: self-deadlock: cpu 0 \\(irq\\) spins on spinlock 'harness.A'.*interrupted task frame(.|\n)*"
               "harness step: .*task op 1 spin_unlock > irq injection 0 op 0 spin_lock");
}

TEST_F(ExecutorTest, GlobalDeadlockNamesEachCpusLock) {
  RunOptions o;
  o.sabotage = Sabotage::kNoLockLegalization;
  const char* text = R"(target lock_ops
cpu 0
  spin_lock lock=B
  spin_lock lock=A
cpu 1
  spin_lock lock=A
  spin_lock lock=B
switch event=2 cpu=1
)";
  EXPECT_DEATH(run_program(*target_spec("lock_ops"), parse_or_fail(text), o),
               "harness: global deadlock: every unfinished cpu spins: program cpu 0 on 'harness.A' held by anyctx cpu "
               "1 \\(taken at [^)]*executor.cc:[0-9]+\\); program cpu 1 on 'harness.B' held by anyctx cpu 0 "
               "\\(taken at [^)]*executor.cc:[0-9]+\\);");
}

TEST_F(ExecutorTest, ContextRuleFiresOnSpinningInNmi) {
  RunOptions o;
  o.sabotage = Sabotage::kSpinningInNmi;
  const char* text = R"(cpu 0
  drain_local
inject nmi cpu=0 site=OpBoundary level=task nth=1
  alloc_pages nolock order=0 slot=1
)";
  EXPECT_DEATH(run_program(*target_spec("page_ops"), parse_or_fail(text), o),
               "anyctx: context rule: alloc_pages\\(\\) in NMI context(.|\n)*harness step: .*nmi injection 0 op 0 "
               "alloc_pages");
}

TEST_F(ExecutorTest, FuzzEntryTakesTextAndBytes) {
  const std::string text = kPagesWithNmiInsideZoneLock;
  EXPECT_EQ(fuzz_one(*target_spec("page_ops"), reinterpret_cast<const std::uint8_t*>(text.data()), text.size()), 0);
  const std::uint8_t bytes[] = {0, 0, 4, 0, 0x02, 1, 1, 0x02, 0};
  EXPECT_EQ(fuzz_one(*target_spec("page_ops"), bytes, sizeof bytes), 0);
}

// PCT: the seed alone decides the schedule — one seed, one trace; other
// seeds, other traces (a program with enough events to differ).
TEST_F(ExecutorTest, OnePctSeedGivesOneTrace) {
  const TargetSpec& t = *target_spec("page_smp");
  Program p = parse_or_fail(R"(# anyctx program v2
target page_smp
cpu 0
  alloc_pages spinning order=2 slot=0
  alloc_pages spinning order=0 slot=1
  free_pages spinning slot=0
  free_pages nolock slot=1
cpu 1
  alloc_pages nolock order=1 slot=2
  drain_all
  free_pages spinning slot=2
cpu 2
  alloc_pages spinning order=3 slot=3
  free_pages spinning slot=3
pct seed=0 depth=3 steps=60
)");
  std::set<std::uint64_t> traces;
  for (std::uint16_t seed = 0; seed < 8; ++seed) {
    p.pct.seed = seed;
    RunStats a = run_program(t, p);
    RunStats b = run_program(t, p);
    ASSERT_EQ(a.trace_hash, b.trace_hash) << "seed " << seed;
    ASSERT_EQ(a.events, b.events) << "seed " << seed;
    traces.insert(a.trace_hash);
  }
  EXPECT_GE(traces.size(), 4u) << "8 seeds, 3 cpus, 2 change points: most schedules differ";
}

}  // namespace
}  // namespace anyctx::harness
