#include "anyctx/page/fault.h"

namespace anyctx {

namespace detail {
std::atomic<bool> g_fault_plan_active{false};
}  // namespace detail

namespace {

// The plan, field by field, so a handler reads it without a lock.
std::atomic<std::uint64_t> g_fail_nth{0};
std::atomic<std::uint32_t> g_probability_ppm{0};
std::atomic<std::uint16_t> g_order_weight_pct[kMaxOrder + 1]{};
std::atomic<std::uint8_t> g_contexts{0};
std::atomic<std::uint8_t> g_paths{0};
std::atomic<std::uint64_t> g_seed{0};

std::atomic<std::uint64_t> g_calls{0};
std::atomic<std::uint64_t> g_fired{0};
std::atomic<std::uint64_t> g_first_fired{0};

// SplitMix64 finaliser: a well-mixed 64-bit hash of the call number.
std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace

void fault_plan_set(const FaultPlan& plan) {
  // The pcps' copies follow the flag; they are swept only when it changes
  // (a harness clears the plan after every run, most of them planless).
  if (detail::g_fault_plan_active.load(std::memory_order_relaxed)) {
    detail::g_fault_plan_active.store(false, std::memory_order_relaxed);
    detail::pcp_fault_plan_set(false);
  }
  g_fail_nth.store(plan.fail_nth, std::memory_order_relaxed);
  g_probability_ppm.store(plan.probability_ppm, std::memory_order_relaxed);
  for (unsigned o = 0; o <= kMaxOrder; ++o)
    g_order_weight_pct[o].store(plan.order_weight_pct[o], std::memory_order_relaxed);
  g_contexts.store(plan.contexts, std::memory_order_relaxed);
  g_paths.store(plan.paths, std::memory_order_relaxed);
  g_seed.store(plan.seed, std::memory_order_relaxed);
  g_calls.store(0, std::memory_order_relaxed);
  g_fired.store(0, std::memory_order_relaxed);
  g_first_fired.store(0, std::memory_order_relaxed);
  bool active = plan.fail_nth != 0 || plan.probability_ppm != 0;
  detail::g_fault_plan_active.store(active, std::memory_order_release);
  if (active) detail::pcp_fault_plan_set(true);
}

void fault_plan_clear() { fault_plan_set(FaultPlan{}); }

FaultStats fault_plan_stats() {
  return FaultStats{g_calls.load(), g_fired.load(), g_first_fired.load()};
}

bool detail::fault_should_fail_slow(unsigned order, FaultPath path) {
  if ((g_contexts.load(std::memory_order_relaxed) & context_bit(context_level())) == 0) return false;
  if ((g_paths.load(std::memory_order_relaxed) & path_bit(path)) == 0) return false;
  std::uint64_t n = g_calls.fetch_add(1, std::memory_order_relaxed) + 1;
  bool fail = n == g_fail_nth.load(std::memory_order_relaxed);
  std::uint64_t ppm = g_probability_ppm.load(std::memory_order_relaxed);
  if (!fail && ppm != 0) {
    std::uint64_t weight = order <= kMaxOrder ? g_order_weight_pct[order].load(std::memory_order_relaxed) : 100;
    std::uint64_t threshold = ppm * weight / 100;
    fail = mix(g_seed.load(std::memory_order_relaxed) ^ mix(n)) % 1'000'000 < threshold;
  }
  if (fail) {
    g_fired.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t none = 0;
    g_first_fired.compare_exchange_strong(none, n, std::memory_order_relaxed);
  }
  return fail;
}

}  // namespace anyctx
