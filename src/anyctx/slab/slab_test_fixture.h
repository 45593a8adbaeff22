// anyctx/slab/slab_test_fixture.h — test helpers for the slab layer: a
// fixture that owns the page allocator, the slab layer and a CPU, content
// stamps, and the end-of-test check that everything went back.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>

#include "anyctx/ctx/interrupt.h"
#include "anyctx/ctx/site.h"
#include "anyctx/slab/slab.h"
#include "anyctx/slab/slab_internal.h"
#include "anyctx/testing/page_fixture.h"

namespace anyctx::testing {

// Writes a pattern derived from the address over the first `size` bytes.
inline void stamp_object(void* p, std::size_t size) {
  auto* bytes = static_cast<unsigned char*>(p);
  auto seed = static_cast<unsigned char>(reinterpret_cast<std::uintptr_t>(p) >> 3);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<unsigned char>(seed + i * 31);
}

// Return: whether the pattern of stamp_object() is intact.
inline bool stamp_intact(const void* p, std::size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(p);
  auto seed = static_cast<unsigned char>(reinterpret_cast<std::uintptr_t>(p) >> 3);
  for (std::size_t i = 0; i < size; ++i)
    if (bytes[i] != static_cast<unsigned char>(seed + i * 31)) return false;
  return true;
}

inline bool all_zero_bytes(const void* p, std::size_t size) {
  const auto* bytes = static_cast<const unsigned char*>(p);
  for (std::size_t i = 0; i < size; ++i)
    if (bytes[i] != 0) return false;
  return true;
}

// Return: whether `p` lies in the current CPU slab of its cache in set
// `set` of `cpu`.
inline bool in_cpu_slab_of(const void* p, int cpu, detail::CpuSlabSet set) {
  detail::Slab* s = detail::slab_of(p);
  return s != nullptr && detail::g_cpu_slabs.on(cpu).sets[set][s->cache->index].slab == s;
}

// Return: whether `p` lies in a current CPU slab of its cache on `cpu` (of
// either set).
inline bool in_cpu_slab(const void* p, int cpu) {
  return in_cpu_slab_of(p, cpu, detail::kTaskCpuSlabs) || in_cpu_slab_of(p, cpu, detail::kInterruptCpuSlabs);
}

// Frees `objs` (objects of cache `idx` outside this CPU's slab) with
// kfree_nolock while this CPU holds that cache's list_lock, as a nolock free
// from an NMI finds it when the NMI interrupted a slab slow path: they go on
// this CPU's deferred list, and the IRQ that the first push raises runs when
// the lock is dropped (or, when the caller masked IRQs, when it unmasks).
inline void kfree_nolock_list_locked(int idx, std::initializer_list<void*> objs) ANYCTX_NO_TSA {
  Spinlock& lock = detail::g_caches[idx].list_lock;
  IrqFlags flags = lock.lock_irqsave();
  for (void* p : objs) kfree_nolock(p);
  lock.unlock_irqrestore(flags);
}

class SlabTest : public PageAllocTest {
 protected:
  void SetUp() override {
    PageAllocTest::SetUp();
    policy_ = slab_bad_free_policy();
  }
  void TearDown() override {
    set_site_hook(nullptr);
    set_interrupt_handler(InterruptKind::kIrq, nullptr);
    set_interrupt_handler(InterruptKind::kNmi, nullptr);
    slab_shutdown();
    set_slab_bad_free_policy(policy_);
    PageAllocTest::TearDown();
  }

  void init_slab(std::size_t pages = 2048) {
    init(config_of(pages));
    ASSERT_EQ(slab_init(), "");
  }

  void expect_slab_invariants() {
    InvariantResult r = slab_check_invariants();
    EXPECT_TRUE(r.ok) << r.what;
  }

  // Quiesce, then: the invariants hold, nothing is deferred or in use, no
  // slab is left, and every frame is back in the page allocator.
  void expect_all_returned() {
    slab_drain_all();
    expect_slab_invariants();
    EXPECT_EQ(slab_deferred_pending(), 0u);
    for (int i = 0; i < kKmallocCaches; ++i) {
      SlabCacheStats s = slab_cache_stats(i);
      EXPECT_EQ(s.objects_in_use, 0u) << s.name;
      EXPECT_EQ(s.slabs, 0u) << s.name;
    }
    expect_everything_free();
  }

  BadPagePolicy policy_ = BadPagePolicy::kAbort;
};

}  // namespace anyctx::testing
