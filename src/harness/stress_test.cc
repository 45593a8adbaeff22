// The stress executor: a short run counts interrupts and calls in every
// context and passes its oracles; the watchdog fires (instead of hanging)
// on a lock never released and on an ABBA deadlock, and names them.
#include "harness/stress.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace anyctx::harness {
namespace {

class StressTest : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

TEST_F(StressTest, ShortRunCountsEveryContextAndPassesTheOracles) {
  StressOptions o;
  o.seconds = 2.5;
  o.threads = 2;
  o.irq_rate = 20000;
  o.nmi_rate = 8000;
  o.seed = 11;
  StressResult r = run_stress(o);  // returns only when every oracle held
  std::string table = format_stress_table(r);
  SCOPED_TRACE(table);
  EXPECT_EQ(r.options.threads, 2);
  EXPECT_GT(r.elapsed_seconds, 2.0);
  const int task = 0, irq = 1, nmi = 2;
  EXPECT_GT(r.counts.interrupts[irq], 0u);
  EXPECT_GT(r.counts.interrupts[nmi], 0u);
  for (int lv : {task, irq, nmi}) {
    EXPECT_GT(r.counts.ops[lv], 0u) << "context " << lv;
    for (StressApi api : {StressApi::kAllocPagesNolock, StressApi::kKmallocNolock, StressApi::kChargeNolock}) {
      EXPECT_GT(r.counts.ok[lv][static_cast<int>(api)], 0u) << stress_api_name(api) << " in context " << lv;
    }
  }
  for (int lv : {task, irq}) {
    for (StressApi api : {StressApi::kAllocPages, StressApi::kKmalloc, StressApi::kCharge}) {
      EXPECT_GT(r.counts.ok[lv][static_cast<int>(api)], 0u) << stress_api_name(api) << " in context " << lv;
    }
  }
  for (StressApi api : {StressApi::kAllocPages, StressApi::kKmalloc, StressApi::kCharge}) {
    int a = static_cast<int>(api);
    EXPECT_EQ(r.counts.ok[nmi][a] + r.counts.failed[nmi][a], 0u) << "a spinning call in NMI context";
  }
  EXPECT_GT(r.counts.mailbox_posts, 0u);
  EXPECT_GT(r.counts.mailbox_frees, 0u);
  EXPECT_GT(r.counts.shared_refs, 0u);
  EXPECT_NE(table.find("interrupts/s"), std::string::npos);
  EXPECT_NE(table.find("alloc_pages_nolock"), std::string::npos);
}

TEST_F(StressTest, RunsTwiceInOneProcess) {
  StressOptions o;
  o.seconds = 0.5;
  o.threads = 3;  // more CPUs than cores
  o.seed = 5;
  o.arena_pages = 512;  // memory pressure: failures are counted, not errors
  for (int i = 0; i < 2; ++i) {
    StressResult r = run_stress(o);
    EXPECT_GT(r.counts.ops[0], 0u);
  }
}

TEST_F(StressTest, WatchdogNamesALockNeverReleased) {
  StressOptions o;
  o.seconds = 60;
  o.threads = 2;
  o.watchdog_seconds = 1;
  o.seam = StressSeam::kLockNeverReleased;
  EXPECT_DEATH(run_stress(o),
               "watchdog: lock never released: cpu [0-9]+ \\(task\\) waits on 'stress.seam_a' \\(0x[0-9a-f]+\\) held "
               "by cpu [0-9]+; cpu [0-9]+ waits on no spinlock");
}

TEST_F(StressTest, WatchdogNamesAnAbbaCycle) {
  StressOptions o;
  o.seconds = 60;
  o.threads = 2;
  o.watchdog_seconds = 1;
  o.seam = StressSeam::kAbbaDeadlock;
#if ANYCTX_TSAN
  // TSan's own deadlock detector may report the lock-order inversion first
  // (and halt_on_error stops the process there): no hang either way.
  const char* expected = "watchdog: suspected cycle|lock-order-inversion";
#else
  const char* expected =
      "every cpu:(.|\n)*spinning on 'stress.seam_(.|\n)*watchdog: suspected cycle: cpu [0-9]+ \\(task\\) waits on "
      "'stress.seam_[ab]' \\(0x[0-9a-f]+\\) held by cpu [0-9]+; cpu [0-9]+ \\(task\\) waits on 'stress.seam_[ab]'";
#endif
  EXPECT_DEATH(run_stress(o), expected);
}

// A CPU stalled, its last site `site` (outside the spinlocks, unless
// spinning() makes it spin).
StallView stalled_at(int cpu, const char* site) {
  StallView v;
  v.worker = cpu;
  v.cpu = cpu;
  v.stalled = true;
  v.stalled_seconds = 12;
  v.site = site;
  return v;
}

StallView spinning(int cpu, const char* lock_name, const void* lock, int owner, const char* level = "task") {
  StallView v = stalled_at(cpu, "SpinWait");
  v.level = level;
  v.lock = lock;
  v.lock_name = lock_name;
  v.lock_owner = owner;
  return v;
}

// Levels: task, irq, nmi; a CPU stalled for 1 s. The CI cases: the task
// spins on a seam lock another CPU never releases, and an IRQ on top of it
// has just begun to spin on a busy lock of its own (one whose holder had let
// go when sampled, one held by the other CPU's task for a moment). The
// task's spin is the wait. An interrupt stuck in its spin explains the stall
// whether or not its task spins too.
TEST(StressDiagnosis, ExplainingSpinIsTheOneAsOldAsTheStall) {
  struct Row {
    LevelSpin task, irq, nmi;
    int expected;
  };
  const LevelSpin none{}, stuck{true, 1.0}, moment{true, 0.01}, ended{false, 1.0}, half{true, 0.5};
  const Row rows[] = {
      {none, none, none, -1},
      {ended, ended, none, -1},
      {stuck, none, none, 0},
      {moment, none, none, 0},
      {stuck, moment, none, 0},
      {stuck, moment, moment, 0},
      {none, stuck, none, 1},
      {stuck, stuck, none, 1},
      {stuck, stuck, moment, 1},
      {moment, stuck, moment, 1},
      {moment, moment, stuck, 2},
      {half, moment, none, 0},
      {moment, {true, 0.2}, moment, 1},
      {moment, moment, moment, 2},
      {ended, moment, none, 1},
  };
  for (const Row& r : rows) {
    const LevelSpin spins[] = {r.task, r.irq, r.nmi};
    EXPECT_EQ(explaining_spin(spins, 1.0), r.expected)
        << "task " << r.task.fresh << "/" << r.task.seconds << ", irq " << r.irq.fresh << "/" << r.irq.seconds
        << ", nmi " << r.nmi.fresh << "/" << r.nmi.seconds;
  }
}

TEST(StressDiagnosis, NamesACycleOfThree) {
  int a, b, c;
  std::vector<StallView> v = {spinning(0, "A", &a, 1), spinning(1, "B", &b, 2), spinning(2, "C", &c, 0)};
  std::string d = diagnose_stall(v, 1);
  EXPECT_EQ(d.rfind("suspected cycle: cpu 1 (task) waits on 'B'", 0), 0u) << d;
  EXPECT_NE(d.find("cpu 2 (task) waits on 'C'"), std::string::npos) << d;
  EXPECT_NE(d.find("held by cpu 1"), std::string::npos) << d;
}

TEST(StressDiagnosis, NamesACycleThatTheStalledCpuWaitsOn) {
  int a, b, c;
  std::vector<StallView> v = {spinning(0, "A", &a, 1), spinning(1, "B", &b, 2), spinning(2, "C", &c, 1)};
  std::string d = diagnose_stall(v, 0);
  EXPECT_EQ(d.rfind("suspected cycle: cpu 1 (task) waits on 'B'", 0), 0u) << d;
  EXPECT_NE(d.find("waiting on the cycle: cpu 0 (task) waits on 'A'"), std::string::npos) << d;
}

TEST(StressDiagnosis, NamesASelfDeadlock) {
  // What a build without the library's own self-deadlock check would hang on.
  int zone;
  std::vector<StallView> v = {spinning(0, "zone.lock", &zone, 0, "nmi"), spinning(1, "zone.lock", &zone, 0)};
  v[1].stalled_seconds = 3;
  std::string d = diagnose_stall(v, 1);
  EXPECT_EQ(d.rfind("self-deadlock: cpu 0 (nmi) waits on 'zone.lock'", 0), 0u) << d;
  EXPECT_NE(d.find("which cpu 0 itself holds"), std::string::npos) << d;
  EXPECT_NE(d.find("waiting behind it: cpu 1 (task) waits on 'zone.lock'"), std::string::npos) << d;
}

TEST(StressDiagnosis, NamesAHolderThatRunsOn) {
  int l;
  std::vector<StallView> v = {spinning(0, "pcp.lock", &l, 1), StallView{}};
  v[1].worker = 1;
  v[1].cpu = 1;
  v[1].site = "ZoneUnlock";
  std::string d = diagnose_stall(v, 0);
  EXPECT_EQ(d.rfind("lock never released: cpu 0 (task) waits on 'pcp.lock'", 0), 0u) << d;
  EXPECT_NE(d.find("cpu 1 waits on no spinlock (last site ZoneUnlock in task context"), std::string::npos) << d;
}

// cpu 1 stalled holding the lock cpu 0 spins on, waiting for something that
// is not a spinlock (a drain request cpu 0 cannot serve). Asked about cpu 1,
// the report follows cpu 0's wait, whether or not cpu 0 has passed the limit
// yet.
TEST(StressDiagnosis, NamesTheLockWhenTheStalledCpuHoldsIt) {
  int l;
  for (bool waiter_stalled : {true, false}) {
    std::vector<StallView> v = {spinning(0, "stress.seam_a", &l, 1), stalled_at(1, "PcpDrainWait")};
    v[0].stalled = waiter_stalled;
    std::string d = diagnose_stall(v, 1);
    EXPECT_EQ(d.rfind("lock never released: cpu 0 (task) waits on 'stress.seam_a'", 0), 0u) << d;
    EXPECT_NE(d.find("cpu 1 waits on no spinlock (last site PcpDrainWait in task context"), std::string::npos) << d;
  }
  // A CPU that is not stalled and spins on a lock the stalled one does not
  // hold is not the story.
  int other;
  std::vector<StallView> v = {spinning(0, "zone.lock", &other, 2), stalled_at(1, "PcpDrainWait")};
  v[0].stalled = false;
  EXPECT_EQ(diagnose_stall(v, 1).rfind("no progress: cpu 1 (task)", 0), 0u);
}

TEST(StressDiagnosis, NamesAStallOutsideTheSpinlocks) {
  StallView v;
  v.worker = 0;
  v.cpu = 3;
  v.stalled = true;
  v.stalled_seconds = 10;
  v.level = "irq";
  v.site = "StockLocked";
  std::vector<StallView> views = {v};
  std::string d = diagnose_stall(views, 0);
  EXPECT_EQ(d.rfind("no progress: cpu 3 (irq)", 0), 0u) << d;
  EXPECT_NE(d.find("last site StockLocked in irq context"), std::string::npos) << d;
}

TEST(StressDiagnosis, NamesAnOwnerThatIsNotAStressCpu) {
  int l;
  std::vector<StallView> v = {spinning(0, "zone.lock", &l, 7)};
  std::string d = diagnose_stall(v, 0);
  EXPECT_EQ(d.rfind("lock never released: cpu 0 (task) waits on 'zone.lock'", 0), 0u) << d;
  EXPECT_NE(d.find("cpu 7 is not a running stress cpu"), std::string::npos) << d;
}

}  // namespace
}  // namespace anyctx::harness
