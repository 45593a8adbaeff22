// anyctx/memcg/memcg_test_util.h — test helpers for the memcg layer: a
// fixture that owns a CPU and checks the invariants at the end of each test,
// a counting shrinker, and a peek into a cgroup's counters.
#pragma once

#include <gtest/gtest.h>

#include <atomic>
#include <cstdint>

#include "anyctx/ctx/cpu.h"
#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/reclaim.h"
#include "anyctx/ctx/site.h"
#include "anyctx/memcg/memcg.h"

namespace anyctx {

// Friend of MemCgroup: lets the oracle tests unbalance a counter on purpose.
struct MemcgTestAccess {
  static std::atomic<std::uint64_t>& usage(MemCgroup& m) { return m.usage_; }
  static std::atomic<std::uint64_t>& max(MemCgroup& m) { return m.max_; }
  static std::atomic<bool>& event_queued(MemCgroup& m) { return m.event_queued_; }
};

namespace testing {

// Counts reclaim passes (a shrinker that frees nothing unless told to).
inline std::atomic<int> g_shrinker_calls{0};
inline std::atomic<MemCgroup*> g_shrinker_uncharges{nullptr};  // uncharge 1 page of it per call
inline std::size_t counting_shrinker() {
  g_shrinker_calls.fetch_add(1);
  if (MemCgroup* m = g_shrinker_uncharges.load()) {
    memcg_uncharge(m, 1);
    return 1;
  }
  return 0;
}

class MemcgTest : public ::testing::Test {
 protected:
  void SetUp() override {
    GTEST_FLAG_SET(death_test_style, "threadsafe");
    drain_local_stock();
    memcg_flush_events();
    g_shrinker_calls.store(0);
    g_shrinker_uncharges.store(nullptr);
    ASSERT_TRUE(reclaim_register(counting_shrinker));
  }
  void TearDown() override {
    reclaim_unregister(counting_shrinker);
    set_site_hook(nullptr);
    set_interrupt_handler(InterruptKind::kIrq, nullptr);
    set_interrupt_handler(InterruptKind::kNmi, nullptr);
    set_memcg_event_notifier(nullptr);
    memcg_flush_events();
    drain_local_stock();
    MemcgInvariantResult r = memcg_check_invariants();
    EXPECT_TRUE(r.ok) << r.what;
  }

  // Quiesce this CPU, then the invariants must hold.
  static void expect_invariants(const char* when) {
    MemcgInvariantResult r = memcg_check_invariants();
    EXPECT_TRUE(r.ok) << when << ": " << r.what;
  }

  CpuScope cpu_;
};

}  // namespace testing
}  // namespace anyctx
