// Drain requests: drain_all_pages() never touches another CPU's pcp; it asks
// the owner (a flag and an IRQ) and waits. The owner serves the request at
// the IRQ's exit, or — when the frame the IRQ interrupted holds the pcp —
// when that frame releases it; a CPU that keeps IRQs masked past the bound
// leaves the requester with a counted timeout, not a hang.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "anyctx/ctx/site.h"
#include "anyctx/testing/page_fixture.h"

namespace anyctx {
namespace {

using testing::config_of;
using testing::PageAllocTest;

enum Phase : int { kStart, kFilled, kParked, kRelease, kDone };

// A second CPU: fills its pcp with `pages` order-0 pages, then runs `hold`
// (the test's moment), then waits for kDone.
template <class Hold>
std::thread owner_cpu(std::atomic<int>& phase, std::atomic<int>& id, int pages, Hold hold) {
  return std::thread([&phase, &id, pages, hold] {
    CpuScope cpu;
    id.store(cpu.id());
    std::vector<Page*> mine;
    for (int i = 0; i < pages; ++i) mine.push_back(alloc_pages(kGfpKernel, 0));
    for (Page* p : mine) free_pages(p, 0);
    phase.store(kFilled);
    hold();
    while (phase.load() != kDone) std::this_thread::yield();
  });
}

TEST_F(PageAllocTest, DrainAllPagesAsksTheOwnerWhoServesAtIrqExit) {
  init(config_of(256));
  std::atomic<int> phase{kStart};
  std::atomic<int> id{-1};
  std::thread other = owner_cpu(phase, id, 20, [] {});
  while (phase.load() != kFilled) std::this_thread::yield();
  const int held = pcp_count(id.load());  // the 20 and what was left of the last refill batch
  ASSERT_GE(held, 20);
  PageStats before = page_stats();
  EXPECT_EQ(drain_all_pages(), static_cast<std::size_t>(held));
  EXPECT_EQ(pcp_count(id.load()), 0);
  PageStats after = page_stats();
  EXPECT_EQ(after.drain_requests - before.drain_requests, 1u);
  EXPECT_EQ(after.drains_served - before.drains_served, 1u);
  EXPECT_EQ(after.drain_timeouts, before.drain_timeouts);
  phase.store(kDone);
  other.join();
  expect_everything_free();
}

TEST_F(PageAllocTest, AThreadThatIsNotACpuOnlyRequests) {
  init(config_of(256));
  std::atomic<int> phase{kStart};
  std::atomic<int> id{-1};
  std::thread other = owner_cpu(phase, id, 12, [] {});
  while (phase.load() != kFilled) std::this_thread::yield();
  const int held = pcp_count(id.load());
  ASSERT_GE(held, 12);
  std::size_t moved = 0;
  std::thread([&] { moved = drain_all_pages(); }).join();  // no CpuScope
  EXPECT_EQ(moved, static_cast<std::size_t>(held));
  EXPECT_EQ(pcp_count(id.load()), 0);
  phase.store(kDone);
  other.join();
  expect_everything_free();
}

// The owner is parked inside its pcp section (kPcpListEdit of a free) when
// the request's IRQ arrives: the IRQ may not drain under it; the owner's
// unlock serves the request, and only then does the requester return.
std::atomic<int>* g_phase = nullptr;
std::atomic<int> g_owner{-1};

void park_owner_in_pcp(Site site) {
  if (site != Site::kPcpListEdit || current_cpu() != g_owner.load() || !in_task()) return;
  if (g_phase->load() != kFilled) return;
  g_phase->store(kParked);
  while (g_phase->load() != kRelease) std::this_thread::yield();
}

TEST_F(PageAllocTest, ARequestMeetingTheHeldPcpIsServedAtItsUnlock) {
  PageAllocatorConfig c = config_of(256);
  c.drain_timeout_ms = 600'000;  // only a served request ends the wait, however loaded the machine
  init(c);
  std::atomic<int> phase{kStart};
  std::atomic<int> id{-1};
  g_phase = &phase;
  set_site_hook(park_owner_in_pcp);  // before the owner runs: it must not pass the site unparked
  std::thread other = owner_cpu(phase, id, 10, [&] {
    g_owner.store(id.load());
    Page* p = alloc_pages(kGfpKernel, 0);  // parks at kPcpListEdit, holding the pcp
    free_pages(p, 0);
  });
  while (phase.load() != kParked) std::this_thread::yield();
  std::atomic<bool> returned{false};
  std::size_t moved = 0;
  std::thread requester([&] {
    moved = drain_all_pages();
    returned.store(true);
  });
  // The IRQ arrived (and found the pcp held) while the owner is parked.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_FALSE(returned.load()) << "the requester returned before the owner released its pcp";
  EXPECT_GT(pcp_count(id.load()), 0) << "drained under the frame that holds the pcp";
  phase.store(kRelease);
  requester.join();
  set_site_hook(nullptr);
  g_owner.store(-1);
  EXPECT_EQ(page_stats().drain_timeouts, 0u);
  EXPECT_GE(moved, 9u);
  EXPECT_LE(pcp_count(id.load()), 1) << "only the page freed after the drain may be left";
  phase.store(kDone);
  other.join();
  expect_everything_free();
}

// IRQs masked for longer than the bound: the requester gives up, counts it,
// and the pages stay on the owner's pcp (nothing touched them).
TEST_F(PageAllocTest, AnOwnerWithIrqsMaskedTimesTheRequestOut) {
  PageAllocatorConfig c = config_of(256);
  c.drain_timeout_ms = 100;
  init(c);
  std::atomic<int> phase{kStart};
  std::atomic<int> id{-1};
  std::thread other = owner_cpu(phase, id, 8, [&] {
    IrqSaveScope masked;
    phase.store(kParked);
    while (phase.load() != kRelease) std::this_thread::yield();
  });
  while (phase.load() != kParked) std::this_thread::yield();
  const int held = pcp_count(id.load());
  ASSERT_GE(held, 8);
  EXPECT_EQ(drain_all_pages(), 0u);
  EXPECT_EQ(page_stats().drain_timeouts, 1u);
  EXPECT_EQ(pcp_count(id.load()), held);
  phase.store(kRelease);  // the IRQ recorded while masked runs now and serves the request
  while (page_stats().drains_served == 0) std::this_thread::yield();
  EXPECT_EQ(pcp_count(id.load()), 0);
  phase.store(kDone);
  other.join();
  expect_everything_free();
}

}  // namespace
}  // namespace anyctx
