// Memory cgroups on one CPU: hierarchical limits, the stock and its slack,
// the two charge paths, limit events, current-cgroup scopes, NMIs at every
// memcg site, misuse reports and the invariant oracle.
#include "anyctx/memcg/memcg.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "anyctx/ctx/context.h"
#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/site.h"
#include "anyctx/memcg/memcg_test_util.h"
#include "anyctx/testing/interrupts.h"

namespace anyctx {
namespace {

using testing::g_shrinker_calls;
using testing::g_shrinker_uncharges;
using testing::MemcgTest;

const Gfp kNolock{};

TEST_F(MemcgTest, RootIsUnlimitedAndEveryChargeReachesIt) {
  MemCgroup* root = root_mem_cgroup();
  EXPECT_TRUE(root->is_root());
  EXPECT_STREQ(root->name(), "root");
  EXPECT_EQ(root->max(), kMemcgUnlimited);
  MemCgroup a("a");
  EXPECT_EQ(a.parent(), root);
  std::uint64_t before = root->usage();
  ASSERT_TRUE(memcg_try_charge(&a, kNolock, 5));
  EXPECT_EQ(root->usage(), before + 5);
  ASSERT_TRUE(memcg_try_charge(root, kNolock, 2)) << "the root itself can be charged";
  EXPECT_EQ(root->usage(), before + 7);
  memcg_uncharge(root, 2);
  memcg_uncharge(&a, 5);
  EXPECT_EQ(root->usage(), before);
}

TEST_F(MemcgTest, NamesAreCutAndPathsNameTheHierarchy) {
  MemCgroup a("a-name-that-is-much-longer-than-thirty-one-bytes");
  EXPECT_EQ(std::string(a.name()).size(), kMemcgNameMax - 1);
  MemCgroup b("b", a);
  EXPECT_TRUE(b.is_descendant_of(a));
  EXPECT_TRUE(b.is_descendant_of(*root_mem_cgroup()));
  EXPECT_TRUE(b.is_descendant_of(b));
  EXPECT_FALSE(a.is_descendant_of(b));
}

// root > a (max 100) > { b (max 60) > c (no limit), d (no limit) }
TEST_F(MemcgTest, LimitsAreEnforcedThroughThreeLevels) {
  MemCgroup a("a");
  a.set_max(100);
  MemCgroup b("b", a);
  b.set_max(60);
  MemCgroup c("c", b);
  MemCgroup d("d", a);

  ASSERT_TRUE(memcg_try_charge(&c, kNolock, 60));
  EXPECT_EQ(c.usage(), 60u);
  EXPECT_EQ(b.usage(), 60u);
  EXPECT_EQ(a.usage(), 60u);
  EXPECT_FALSE(memcg_try_charge(&c, kNolock, 1)) << "b is full";
  EXPECT_EQ(c.usage(), 60u) << "c's charge was rolled back";
  EXPECT_EQ(a.usage(), 60u) << "a was never reached";
  EXPECT_EQ(memcg_stats(b).limit_events, 1u) << "the refusing level counts the event";
  EXPECT_EQ(memcg_stats(c).limit_events, 0u);
  EXPECT_EQ(memcg_stats(c).charge_failures[1][0], 1u);

  ASSERT_TRUE(memcg_try_charge(&d, kNolock, 40));
  EXPECT_FALSE(memcg_try_charge(&d, kNolock, 1)) << "a is full";
  EXPECT_EQ(d.usage(), 40u);
  EXPECT_EQ(memcg_stats(a).limit_events, 1u);
  EXPECT_FALSE(memcg_try_charge(&c, kNolock, 1)) << "b is full, and so is a";

  memcg_uncharge(&c, 10);  // b 50, a 90
  EXPECT_TRUE(memcg_try_charge(&d, kNolock, 10)) << "room under a again";
  EXPECT_FALSE(memcg_try_charge(&c, kNolock, 1)) << "a is full although b has room";
  EXPECT_EQ(memcg_stats(a).limit_events, 2u);
  EXPECT_EQ(b.usage(), 50u);
  expect_invariants("full hierarchy");

  // A spinning charge near the limit falls back from a batch to the exact size.
  memcg_uncharge(&d, 50);  // a 50, b 50
  ASSERT_TRUE(memcg_try_charge(&c, kGfpAtomic, 3));
  EXPECT_EQ(b.usage(), 53u) << "no batch fits under b's limit";
  EXPECT_EQ(memcg_stock(cpu_.id()).pages, 0u);
  memcg_uncharge(&c, 53);
  EXPECT_EQ(a.usage(), 0u);
  EXPECT_EQ(b.usage(), 0u);
}

TEST_F(MemcgTest, SetMaxReturnsTheOldLimitAndDoesNotTouchUsage) {
  MemCgroup a("a");
  EXPECT_EQ(a.set_max(10), kMemcgUnlimited);
  ASSERT_TRUE(memcg_try_charge(&a, kNolock, 10));
  EXPECT_EQ(a.set_max(4), 10u);
  EXPECT_EQ(a.usage(), 10u) << "usage above a lowered limit stays";
  expect_invariants("usage above a lowered max");
  EXPECT_FALSE(memcg_try_charge(&a, kNolock, 1));
  memcg_uncharge(&a, 7);
  EXPECT_FALSE(memcg_try_charge(&a, kNolock, 2)) << "3 + 2 > 4";
  EXPECT_TRUE(memcg_try_charge(&a, kNolock, 1));
  memcg_uncharge(&a, 4);
}

TEST_F(MemcgTest, SpinningChargesBatchAndTheStockServesTheNext) {
  MemCgroup a("a");
  ASSERT_TRUE(memcg_try_charge(&a, kGfpKernel, 1));
  EXPECT_EQ(a.usage(), kMemcgChargeBatch);
  MemcgStockView v = memcg_stock(cpu_.id());
  EXPECT_EQ(v.cached, &a);
  EXPECT_EQ(v.pages, kMemcgChargeBatch - 1);
  expect_invariants("after a batch");
  for (unsigned i = 1; i < kMemcgChargeBatch; ++i) ASSERT_TRUE(memcg_try_charge(&a, i % 2 ? kGfpKernel : kNolock, 1));
  EXPECT_EQ(a.usage(), kMemcgChargeBatch) << "all served from the stock";
  EXPECT_EQ(memcg_stock(cpu_.id()).pages, 0u);
  MemcgStats s = memcg_stats(a);
  EXPECT_EQ(s.stock_hits, kMemcgChargeBatch - 1);
  EXPECT_EQ(s.charged, static_cast<std::int64_t>(kMemcgChargeBatch));
  EXPECT_EQ(s.charges[0][0] + s.charges[1][0], kMemcgChargeBatch);
  ASSERT_TRUE(memcg_try_charge(&a, kGfpKernel, 1));
  EXPECT_EQ(a.usage(), 2 * kMemcgChargeBatch);
  memcg_uncharge(&a, kMemcgChargeBatch + 1);
  EXPECT_EQ(drain_local_stock(), kMemcgChargeBatch - 1);
  EXPECT_EQ(a.usage(), 0u);
  EXPECT_EQ(memcg_stock(cpu_.id()).cached, nullptr);
}

TEST_F(MemcgTest, NolockChargesNeverBatchAndNeverFillTheStock) {
  MemCgroup a("a");
  ASSERT_TRUE(memcg_try_charge(&a, kNolock, 3));
  EXPECT_EQ(a.usage(), 3u);
  EXPECT_EQ(memcg_stock(cpu_.id()).cached, nullptr);
  memcg_uncharge(&a, 3);
}

TEST_F(MemcgTest, LargeChargesBypassTheStock) {
  MemCgroup a("a");
  ASSERT_TRUE(memcg_try_charge(&a, kGfpKernel, kMemcgChargeBatch + 7));
  EXPECT_EQ(a.usage(), kMemcgChargeBatch + 7);
  EXPECT_EQ(memcg_stock(cpu_.id()).pages, 0u);
  memcg_uncharge(&a, kMemcgChargeBatch + 7);
}

TEST_F(MemcgTest, StockSwitchingCgroupDrainsTheOldOne) {
  MemCgroup a("a"), b("b");
  ASSERT_TRUE(memcg_try_charge(&a, kGfpKernel, 1));
  EXPECT_EQ(a.usage(), kMemcgChargeBatch);
  std::uint64_t drains = memcg_global_stats().stock_drains;
  ASSERT_TRUE(memcg_try_charge(&b, kGfpKernel, 1));
  EXPECT_EQ(a.usage(), 1u) << "a's stock pages were given back";
  EXPECT_EQ(memcg_stock(cpu_.id()).cached, &b);
  EXPECT_EQ(memcg_global_stats().stock_drains, drains + 1);
  memcg_uncharge(&a, 1);
  memcg_uncharge(&b, 1);
}

// The stock's slack: pages pre-charged in a stock count against the limit.
// A nolock charge fails while they sit there; a spinning charge with direct
// reclaim drains this CPU's stock and succeeds.
TEST_F(MemcgTest, StockSlackIsGivenBackBeforeASpinningChargeFails) {
  MemCgroup a("a");
  a.set_max(100);
  ASSERT_TRUE(memcg_try_charge(&a, kGfpKernel, 1));          // usage 64, stock 63
  ASSERT_TRUE(memcg_try_charge(&a, kNolock, 40));            // from the stock: 23 left
  EXPECT_EQ(memcg_stock(cpu_.id()).pages, kMemcgChargeBatch - 41);
  EXPECT_FALSE(memcg_try_charge(&a, kNolock, 50)) << "64 + 50 > 100: the slack is not given back";
  EXPECT_FALSE(memcg_try_charge(&a, kGfpAtomic, 50)) << "no direct reclaim: no drain either";
  EXPECT_EQ(g_shrinker_calls.load(), 0);
  ASSERT_TRUE(memcg_try_charge(&a, kGfpKernel, 50));
  EXPECT_EQ(memcg_stats(a).reclaim_runs, 1u);
  EXPECT_EQ(g_shrinker_calls.load(), 1);
  EXPECT_EQ(a.usage(), 91u);
  EXPECT_EQ(memcg_stock(cpu_.id()).pages, 0u);
  memcg_uncharge(&a, 91);
}

TEST_F(MemcgTest, SpinningChargeAtTheLimitReclaimsAndRetriesABoundedNumberOfTimes) {
  MemCgroup a("a");
  a.set_max(4);
  ASSERT_TRUE(memcg_try_charge(&a, kNolock, 4));
  EXPECT_FALSE(memcg_try_charge(&a, kGfpKernel, 1));
  EXPECT_EQ(g_shrinker_calls.load(), kMemcgChargeRetries);
  EXPECT_EQ(memcg_stats(a).reclaim_runs, static_cast<std::uint64_t>(kMemcgChargeRetries));
  EXPECT_EQ(memcg_stats(a).charge_failures[0][0], 1u);
  EXPECT_EQ(memcg_stats(a).limit_events, 1u) << "one event per refused charge, not per retry";
  // Reclaim that frees charged memory lets the retry through.
  g_shrinker_uncharges.store(&a);
  g_shrinker_calls.store(0);
  EXPECT_TRUE(memcg_try_charge(&a, kGfpKernel, 1));
  EXPECT_EQ(g_shrinker_calls.load(), 1);
  g_shrinker_uncharges.store(nullptr);
  EXPECT_EQ(a.usage(), 4u);
  memcg_uncharge(&a, 4);  // 4 + 1 charged, 1 uncharged by the shrinker
}

TEST_F(MemcgTest, AtomicChargeAtTheLimitFailsWithoutReclaim) {
  MemCgroup a("a");
  a.set_max(2);
  ASSERT_TRUE(memcg_try_charge(&a, kNolock, 2));
  EXPECT_FALSE(memcg_try_charge(&a, kGfpAtomic, 1));
  EXPECT_FALSE(memcg_try_charge(&a, kGfpNowait, 1));
  EXPECT_EQ(g_shrinker_calls.load(), 0);
  EXPECT_EQ(memcg_stats(a).reclaim_runs, 0u);
  memcg_uncharge(&a, 2);
}

// --- a nolock charge at the limit returns at once ------------------------------

std::atomic<bool> g_hold_notifier{false};
std::atomic<bool> g_in_notifier{false};
std::atomic<int> g_spin_waits{0};

void holding_notifier(MemCgroup&, std::uint64_t) {
  g_in_notifier.store(true);
  while (g_hold_notifier.load()) std::this_thread::yield();
}

void count_spin_waits(Site site) {
  if (site == Site::kSpinWait) g_spin_waits.fetch_add(1);
}

// Another CPU sits in the event notifier, holding the event lock. A nolock
// charge at the limit (task and NMI) must fail at once: no reclaim, no
// spinning on that lock, no notification.
TEST_F(MemcgTest, NolockChargeAtTheLimitFailsAtOnceWithoutSpinningOrReclaim) {
  MemCgroup full("full"), blocker("blocker");
  full.set_max(1);
  blocker.set_max(0);
  g_in_notifier.store(false);
  g_spin_waits.store(0);
  set_memcg_event_notifier(holding_notifier);
  g_hold_notifier.store(true);
  std::thread holder([&] {
    CpuScope cpu;
    EXPECT_FALSE(memcg_try_charge(&blocker, kGfpAtomic, 1));  // delivers, and waits inside the notifier
  });
  while (!g_in_notifier.load()) std::this_thread::yield();

  set_site_hook(count_spin_waits);
  ASSERT_TRUE(memcg_try_charge(&full, kNolock, 1));
  EXPECT_FALSE(memcg_try_charge(&full, kNolock, 1));
  bool nmi_charged = true;
  testing::run_in_nmi([&] { nmi_charged = memcg_try_charge(&full, kNolock, 1); });
  EXPECT_FALSE(nmi_charged);
  set_site_hook(nullptr);

  EXPECT_EQ(g_spin_waits.load(), 0);
  EXPECT_EQ(g_shrinker_calls.load(), 0);
  MemcgStats s = memcg_stats(full);
  EXPECT_EQ(s.reclaim_runs, 0u);
  EXPECT_EQ(s.limit_events, 2u);
  EXPECT_EQ(s.events_notified, 0u) << "the nolock path never notifies";
  EXPECT_EQ(s.charge_failures[1][0], 1u);
  EXPECT_EQ(s.charge_failures[1][2], 1u);
  EXPECT_TRUE(memcg_events_pending());

  g_hold_notifier.store(false);
  holder.join();
  set_memcg_event_notifier(nullptr);
  EXPECT_EQ(memcg_flush_events(), 1);
  EXPECT_EQ(memcg_stats(full).events_notified, 1u);
  memcg_uncharge(&full, 1);
}

// --- limit events: counted anywhere, delivered from a spinning context -----------

std::atomic<int> g_notified{0};
std::atomic<MemCgroup*> g_notified_cgroup{nullptr};
std::atomic<std::uint64_t> g_notified_events{0};
std::atomic<int> g_notified_in_nmi{0};

void recording_notifier(MemCgroup& m, std::uint64_t events) {
  g_notified.fetch_add(1);
  g_notified_cgroup.store(&m);
  g_notified_events.store(events);
  if (in_nmi()) g_notified_in_nmi.fetch_add(1);
}

TEST_F(MemcgTest, LimitEventCountedInNolockContextIsDeliveredLaterFromASpinningOne) {
  MemCgroup a("a"), other("other");
  a.set_max(2);
  g_notified.store(0);
  set_memcg_event_notifier(recording_notifier);
  ASSERT_TRUE(memcg_try_charge(&a, kNolock, 2));

  bool nmi_charged = true;
  testing::run_in_nmi([&] { nmi_charged = memcg_try_charge(&a, kNolock, 1); });
  EXPECT_FALSE(nmi_charged);
  EXPECT_FALSE(memcg_try_charge(&a, kNolock, 1));
  EXPECT_EQ(memcg_stats(a).limit_events, 2u);
  EXPECT_EQ(g_notified.load(), 0) << "nolock charges only mark the event pending";
  EXPECT_TRUE(memcg_events_pending());

  // The next spinning charge, of any cgroup, delivers.
  ASSERT_TRUE(memcg_try_charge(&other, kGfpKernel, 1));
  EXPECT_EQ(g_notified.load(), 1) << "one notification for the two events";
  EXPECT_EQ(g_notified_cgroup.load(), &a);
  EXPECT_EQ(g_notified_events.load(), 2u);
  EXPECT_EQ(g_notified_in_nmi.load(), 0);
  EXPECT_FALSE(memcg_events_pending());
  EXPECT_EQ(memcg_stats(a).events_notified, 1u);

  // Or an explicit flush.
  EXPECT_FALSE(memcg_try_charge(&a, kNolock, 1));
  EXPECT_EQ(g_notified.load(), 1);
  EXPECT_EQ(memcg_flush_events(), 1);
  EXPECT_EQ(g_notified.load(), 2);
  EXPECT_EQ(memcg_flush_events(), 0) << "nothing pending";

  // A spinning charge at the limit delivers its own event at once (IRQ too).
  EXPECT_FALSE(memcg_try_charge(&a, kGfpAtomic, 1));
  EXPECT_EQ(g_notified.load(), 3);
  bool irq_charged = true;
  testing::run_in_irq([&] { irq_charged = memcg_try_charge(&a, kGfpAtomic, 1); });
  EXPECT_FALSE(irq_charged);
  EXPECT_EQ(g_notified.load(), 4);
  EXPECT_EQ(g_notified_events.load(), 5u);

  memcg_uncharge(&a, 2);
  memcg_uncharge(&other, 1);
}

// --- current cgroup -------------------------------------------------------------

TEST_F(MemcgTest, ScopesSetTheCurrentCgroupPerContextLevel) {
  MemCgroup t("t"), i("i"), n("n"), inner("inner");
  MemCgroup* root = root_mem_cgroup();
  EXPECT_EQ(current_mem_cgroup(), root);
  {
    MemcgScope task_scope(t);
    EXPECT_EQ(current_mem_cgroup(), &t);
    {
      MemcgScope nested(inner);
      EXPECT_EQ(current_mem_cgroup(), &inner);
    }
    EXPECT_EQ(current_mem_cgroup(), &t);
    MemCgroup* seen[6] = {};
    testing::run_in_irq([&] {
      seen[0] = current_mem_cgroup();  // interrupt work does not bill the task
      MemcgScope irq_scope(i);
      seen[1] = current_mem_cgroup();
      testing::run_in_nmi([&] {
        seen[2] = current_mem_cgroup();
        MemcgScope nmi_scope(n);
        seen[3] = current_mem_cgroup();
      });
      seen[4] = current_mem_cgroup();
    });
    seen[5] = current_mem_cgroup();
    EXPECT_EQ(seen[0], root);
    EXPECT_EQ(seen[1], &i);
    EXPECT_EQ(seen[2], root);
    EXPECT_EQ(seen[3], &n);
    EXPECT_EQ(seen[4], &i);
    EXPECT_EQ(seen[5], &t);
  }
  EXPECT_EQ(current_mem_cgroup(), root);
}

// --- NMIs at every memcg site ------------------------------------------------------

struct SiteRun {
  std::atomic<int> target{-1};
  std::atomic<bool> fired{false};
  std::atomic<int> nmi_ok{0};
  std::atomic<unsigned> nmi_pages{0};
  std::atomic<MemCgroup*> nmi_cg{nullptr};
  std::atomic<MemCgroup*> nmi_full{nullptr};
};
SiteRun g_run;

void nmi_charges(InterruptKind kind) {
  if (kind != InterruptKind::kNmi) return;
  MemcgScope scope(*g_run.nmi_cg.load());
  for (unsigned pages = 1; pages <= 2; ++pages) {
    if (memcg_try_charge(current_mem_cgroup(), Gfp{}, pages)) {
      g_run.nmi_ok.fetch_add(1);
      g_run.nmi_pages.fetch_add(pages);
    }
  }
  // And one refused charge: a limit event queued from NMI context.
  if (memcg_try_charge(g_run.nmi_full.load(), Gfp{}, 1)) g_run.nmi_ok.fetch_add(100);
}

void nmi_at_target(Site site) {
  if (!in_task() || static_cast<int>(site) != g_run.target.load()) return;
  if (g_run.fired.exchange(true)) return;
  raise_nmi();
}

class MemcgSiteTest : public MemcgTest, public ::testing::WithParamInterface<Site> {};

// The task runs consume, refill (with a cgroup switch), drains, a refused
// nolock charge; an NMI at the chosen site charges its own cgroup. Inside
// the stock section the NMI's try_lock fails and its charge goes to the
// counters; nothing is lost either way.
TEST_P(MemcgSiteTest, NmiAtTheSiteChargesWithoutCorruptingTheStock) {
  const Site site = GetParam();
  MemCgroup task_cg("task"), other("other"), full("full"), nmi_cg("nmi"), nmi_full("nmi-full");
  full.set_max(1);
  nmi_full.set_max(0);
  g_run.target.store(static_cast<int>(site));
  g_run.nmi_cg.store(&nmi_cg);
  g_run.nmi_full.store(&nmi_full);
  const std::uint64_t busy_before = memcg_global_stats().stock_busy[2];
  set_interrupt_handler(InterruptKind::kNmi, nmi_charges);
  set_site_hook(nmi_at_target);

  ASSERT_TRUE(memcg_try_charge(&task_cg, kGfpKernel, 1));  // miss, batch, refill (switch)
  ASSERT_TRUE(memcg_try_charge(&task_cg, kGfpKernel, 2));  // consume
  ASSERT_TRUE(memcg_try_charge(&other, kGfpKernel, 1));    // refill switches: drains task_cg
  ASSERT_TRUE(memcg_try_charge(&task_cg, kNolock, 1));     // miss: to the counters
  EXPECT_FALSE(memcg_try_charge(&full, kNolock, 2));       // a limit event
  drain_local_stock();
  set_site_hook(nullptr);

  ASSERT_TRUE(g_run.fired.load()) << "the workload never reached " << site_name(site);
  EXPECT_EQ(g_run.nmi_ok.load(), 2) << "the NMI's charges go to the counters when the stock is busy";
  EXPECT_EQ(nmi_cg.usage(), 3u);
  EXPECT_EQ(memcg_stats(nmi_cg).stock_hits, 0u);
  if (site == Site::kStockLocked || site == Site::kStockEdit || site == Site::kStockDrain ||
      site == Site::kStockUnlock) {
    EXPECT_GT(memcg_global_stats().stock_busy[2], busy_before) << "the NMI must find the stock held";
  }
  if (site == Site::kEventPush) {
    EXPECT_EQ(memcg_flush_events(), 2) << "both pushes landed: the task's and the NMI's";
  }
  EXPECT_EQ(memcg_stats(nmi_full).limit_events, 1u);
  expect_invariants("after the workload");

  memcg_uncharge(&task_cg, 4);
  memcg_uncharge(&other, 1);
  memcg_uncharge(&nmi_cg, g_run.nmi_pages.load());
  EXPECT_EQ(task_cg.usage(), 0u);
  EXPECT_EQ(nmi_cg.usage(), 0u);
  g_run.fired.store(false);
  g_run.nmi_ok.store(0);
  g_run.nmi_pages.store(0);
}

INSTANTIATE_TEST_SUITE_P(EverySite, MemcgSiteTest,
                         ::testing::Values(Site::kStockLocked, Site::kStockEdit, Site::kStockDrain, Site::kStockUnlock,
                                           Site::kChargeWalk, Site::kEventPush),
                         [](const ::testing::TestParamInfo<Site>& info) { return std::string(site_name(info.param)); });

// A frame that re-enters the charge path while it holds the stock (here the
// site hook itself, as an interrupt handler would): the nested spinning
// charge cannot refill the stock, so its surplus is uncharged at once.
std::atomic<bool> g_reenter_armed{false};
std::atomic<MemCgroup*> g_reenter_cg{nullptr};
std::atomic<int> g_reenter_result{-1};

void reenter_at_stock_locked(Site site) {
  if (site != Site::kStockLocked || !g_reenter_armed.exchange(false)) return;
  g_reenter_result.store(memcg_try_charge(g_reenter_cg.load(), kGfpAtomic, 1) ? 1 : 0);
}

TEST_F(MemcgTest, RefillThatFindsTheStockHeldUnchargesTheSurplus) {
  MemCgroup a("a");
  g_reenter_cg.store(&a);
  g_reenter_armed.store(true);
  MemcgGlobalStats before = memcg_global_stats();
  set_site_hook(reenter_at_stock_locked);
  ASSERT_TRUE(memcg_try_charge(&a, kNolock, 1));
  set_site_hook(nullptr);
  EXPECT_EQ(g_reenter_result.load(), 1);
  MemcgGlobalStats after = memcg_global_stats();
  EXPECT_EQ(after.refill_uncharged - before.refill_uncharged, kMemcgChargeBatch - 1);
  EXPECT_EQ(after.stock_busy[0] - before.stock_busy[0], 2u) << "the nested consume and the nested refill";
  EXPECT_EQ(a.usage(), 2u);
  EXPECT_EQ(memcg_stock(cpu_.id()).pages, 0u);
  memcg_uncharge(&a, 2);
}

// drain_local_stock() from an NMI that interrupted a consume cannot take the
// stock: it leaves a request, which the interrupted consume honours.
std::atomic<bool> g_drain_armed{false};
std::atomic<unsigned> g_drain_result{99};

TEST_F(MemcgTest, DrainFromAnNmiInsideTheStockSectionIsLeftToTheHolder) {
  MemCgroup a("a");
  ASSERT_TRUE(memcg_try_charge(&a, kGfpKernel, 1));  // usage 64, 63 in the stock
  g_drain_armed.store(true);
  set_interrupt_handler(InterruptKind::kNmi, [](InterruptKind) { g_drain_result.store(drain_local_stock()); });
  set_site_hook([](Site site) {
    if (site == Site::kStockLocked && in_task() && g_drain_armed.exchange(false)) raise_nmi();
  });
  ASSERT_TRUE(memcg_try_charge(&a, kNolock, 1));  // the NMI lands inside this consume
  set_site_hook(nullptr);
  EXPECT_EQ(g_drain_result.load(), 0u);
  MemcgStockView v = memcg_stock(cpu_.id());
  EXPECT_FALSE(v.drain_requested) << "the consume honoured the request";
  EXPECT_EQ(v.cached, nullptr);
  EXPECT_EQ(a.usage(), 2u) << "drained first, then charged to the counters";
  memcg_uncharge(&a, 2);
}

// --- the invariant oracle ----------------------------------------------------------

TEST_F(MemcgTest, InvariantCheckNamesTheUnbalancedCgroup) {
  MemCgroup a("a");
  MemCgroup b("b", a);
  ASSERT_TRUE(memcg_try_charge(&b, kNolock, 5));
  expect_invariants("balanced");

  MemcgTestAccess::usage(b).fetch_add(1);
  MemcgInvariantResult r = memcg_check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.what, "memory cgroup 'root/a/b': usage 6 but its subtree has 5 pages charged by callers + 0 in stocks = 5");
  MemcgTestAccess::usage(b).fetch_sub(1);

  MemcgTestAccess::usage(a).fetch_sub(2);
  r = memcg_check_invariants();
  EXPECT_EQ(r.what, "memory cgroup 'root/a': usage 3 but its subtree has 5 pages charged by callers + 0 in stocks = 5");
  MemcgTestAccess::usage(a).fetch_add(2);

  MemcgTestAccess::max(a).store(4);  // below usage, not through set_max()
  r = memcg_check_invariants();
  EXPECT_EQ(r.what, "memory cgroup 'root/a': usage 5 above its max 4");
  MemcgTestAccess::max(a).store(kMemcgUnlimited);

  // Uncharging more than was charged, while the stock covers the counter.
  memcg_uncharge(&b, 5);
  ASSERT_TRUE(memcg_try_charge(&b, kGfpKernel, 1));  // usage 64, 63 in the stock
  memcg_uncharge(&b, 2);
  r = memcg_check_invariants();
  EXPECT_EQ(r.what, "memory cgroup 'root/a/b': 1 more pages uncharged than charged");
  ASSERT_TRUE(memcg_try_charge(&b, kNolock, 1));  // rebalance: 0 charged, 63 in the stock... from the stock
  expect_invariants("rebalanced");
}

// A refused charge leaves its cgroup pending and listed until a flush: the
// check accepts that, and names a cgroup marked pending on no list (the
// state a lost push leaves: it never notifies again).
TEST_F(MemcgTest, InvariantCheckNamesALostLimitEvent) {
  MemCgroup a("a");
  MemCgroup b("b", a);
  a.set_max(1);
  ASSERT_FALSE(memcg_try_charge(&b, kNolock, 2));  // refused at a: a limit event there
  ASSERT_TRUE(memcg_events_pending());
  expect_invariants("a pending event, listed");

  MemcgTestAccess::event_queued(b).store(true);
  MemcgInvariantResult r = memcg_check_invariants();
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.what, "memory cgroup 'root/a/b' has a limit event marked pending but is on no pending list (lost)");
  MemcgTestAccess::event_queued(b).store(false);

  MemcgTestAccess::event_queued(a).store(false);
  r = memcg_check_invariants();
  EXPECT_EQ(r.what, "memory cgroup 'root/a' is on the pending limit-event list but not marked pending");
  MemcgTestAccess::event_queued(a).store(true);

  EXPECT_EQ(memcg_flush_events(), 1);
  expect_invariants("flushed");
  a.set_max(kMemcgUnlimited);
}

// --- misuse reports ----------------------------------------------------------------

TEST_F(MemcgTest, UnderflowIsReportedNamingTheCgroup) {
  MemCgroup a("a");
  MemCgroup b("b", a);
  EXPECT_DEATH(memcg_uncharge(&b, 3),
               "memcg underflow: uncharging 3 pages from memory cgroup 'root/a/b' takes 'root/a/b' below zero "
               "\\(its usage was 0\\): more pages uncharged than charged");
  ASSERT_TRUE(memcg_try_charge(&b, kNolock, 2));
  MemcgTestAccess::usage(a).fetch_sub(2);  // an ancestor out of step
  EXPECT_DEATH(memcg_uncharge(&b, 1), "uncharging 1 pages from memory cgroup 'root/a/b' takes 'root/a' below zero");
  MemcgTestAccess::usage(a).fetch_add(2);
  memcg_uncharge(&b, 2);
}

TEST_F(MemcgTest, DestroyingACgroupInUseIsReported) {
  EXPECT_DEATH(
      {
        MemCgroup busy("busy");
        (void)memcg_try_charge(&busy, kNolock, 3);
      },
      "memcg misuse: ~MemCgroup\\(\\): memory cgroup 'root/busy' destroyed with 3 pages still charged");
  EXPECT_DEATH(
      {
        auto* parent = new MemCgroup("parent");
        new MemCgroup("child", *parent);
        delete parent;
      },
      "memory cgroup 'root/parent' destroyed while it has 1 child cgroups");
  EXPECT_DEATH(
      {
        auto* m = new MemCgroup("scoped");
        MemcgScope scope(*m);
        delete m;
      },
      "memory cgroup 'root/scoped' destroyed while 1 MemcgScope\\(s\\) make it current");
  // The stock's pages are not a user's: a cgroup that only the stock holds goes quietly.
  {
    MemCgroup stocked("stocked");
    ASSERT_TRUE(memcg_try_charge(&stocked, kGfpKernel, 1));
    memcg_uncharge(&stocked, 1);
    EXPECT_EQ(stocked.usage(), kMemcgChargeBatch - 1);
  }
  EXPECT_EQ(memcg_stock(cpu_.id()).cached, nullptr);
}

TEST_F(MemcgTest, SetMaxOnTheRootIsReported) {
  EXPECT_DEATH(root_mem_cgroup()->set_max(10),
               "memcg misuse: set_max\\(\\): memory cgroup 'root': the root cgroup has no limit");
}

TEST_F(MemcgTest, ScopesEndingOutOfOrderOrInAnotherContextAreReported) {
  MemCgroup x("x"), y("y");
  EXPECT_DEATH(
      {
        auto* outer = new MemcgScope(x);
        new MemcgScope(y);
        delete outer;
      },
      "memcg misuse: MemcgScope of memory cgroup 'root/x' opened in task context ends out of order \\(an inner "
      "scope of 'root/y' is still open\\)");
  EXPECT_DEATH(
      {
        auto* scope = new MemcgScope(x);
        testing::run_in_irq([&] { delete scope; });
      },
      "MemcgScope of memory cgroup 'root/x' opened in task context ends in irq context");
}

TEST_F(MemcgTest, ContextRulesAreReported) {
  if (!kDebug) GTEST_SKIP() << "context rules are checked in debug builds";
  MemCgroup a("a");
  EXPECT_DEATH(testing::run_in_nmi([&] { (void)memcg_try_charge(&a, kGfpAtomic, 1); }),
               "context rule: memcg_try_charge\\(\\) with a spinning gfp in NMI context");
  EXPECT_DEATH(testing::run_in_irq([&] { (void)memcg_try_charge(&a, kGfpKernel, 1); }),
               "context rule: memcg_try_charge\\(\\) with kGfpDirectReclaim in irq context");
  EXPECT_DEATH(testing::run_in_nmi([] { memcg_flush_events(); }),
               "context rule: memcg_flush_events\\(\\) in NMI context");
  EXPECT_DEATH((void)memcg_try_charge(nullptr, kNolock, 1), "memcg misuse: memcg_try_charge\\(\\): null memory cgroup");
  EXPECT_DEATH(memcg_uncharge(nullptr, 1), "memcg misuse: memcg_uncharge\\(\\): null memory cgroup");
}

}  // namespace
}  // namespace anyctx
