#include "anyctx/ctx/reclaim.h"

#include <atomic>
#include <mutex>

namespace anyctx {
namespace {
std::mutex g_mu;
std::atomic<Shrinker> g_shrinkers[kMaxShrinkers]{};  // written under g_mu
}  // namespace

bool reclaim_register(Shrinker shrinker) {
  std::lock_guard<std::mutex> guard(g_mu);
  for (auto& s : g_shrinkers)
    if (s.load(std::memory_order_relaxed) == shrinker) return true;
  for (auto& s : g_shrinkers) {
    if (s.load(std::memory_order_relaxed) == nullptr) {
      s.store(shrinker, std::memory_order_release);
      return true;
    }
  }
  return false;
}

bool reclaim_unregister(Shrinker shrinker) {
  std::lock_guard<std::mutex> guard(g_mu);
  for (auto& s : g_shrinkers) {
    if (s.load(std::memory_order_relaxed) == shrinker) {
      s.store(nullptr, std::memory_order_release);
      return true;
    }
  }
  return false;
}

std::size_t reclaim_run() {
  std::size_t freed = 0;
  for (auto& s : g_shrinkers)
    if (Shrinker fn = s.load(std::memory_order_acquire)) freed += fn();
  return freed;
}

}  // namespace anyctx
