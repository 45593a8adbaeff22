// A fuzz run allocates nothing that outlives it. libFuzzer counts the mallocs
// and frees of each input and runs the input a second time, for a leak
// check, when it malloced more than it freed; a harness whose runs leave
// buffers behind (a queue that grows, a decoder that reallocates) pays for
// that in most runs. The count: under a sanitizer, its malloc and free hooks
// (what libFuzzer itself uses; operator new goes through them); otherwise a
// replaced operator new and delete, in this binary of its own so that the
// other harness tests keep the allocator they have.
#include <gtest/gtest.h>

#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include "harness/executor.h"
#include "harness/feedback.h"
#include "harness/planner.h"
#include "harness/program.h"

#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define ANYCTX_COUNT_BY_SANITIZER_HOOKS 1
#endif
#endif

namespace {

thread_local bool t_counting = false;
thread_local long t_allocs = 0;
thread_local long t_frees = 0;

}  // namespace

#ifdef ANYCTX_COUNT_BY_SANITIZER_HOOKS
#include <sanitizer/allocator_interface.h>

namespace {
void count_alloc(const volatile void*, std::size_t) {
  if (t_counting) ++t_allocs;
}
void count_free(const volatile void* p) {
  if (t_counting && p != nullptr) ++t_frees;
}
const int kHooksInstalled = __sanitizer_install_malloc_and_free_hooks(count_alloc, count_free);
}  // namespace
#else
void* operator new(std::size_t n) {
  if (t_counting) ++t_allocs;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  if (t_counting && p != nullptr) ++t_frees;
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept { operator delete(p); }
#endif

namespace anyctx::harness {
namespace {

// Every target's runs, the same random inputs twice, each followed by what
// the custom mutator does first (fuzz_plan_last_run, outside the count).
// The first pass grows every buffer to what these inputs need; in the
// second, which repeats the first exactly (the interleavings seen are
// forgotten before each pass, so the same runs are new and planned), no run
// may allocate more than it frees.
TEST(FuzzAllocTest, ASecondPassOverTheSameInputsAllocatesNothingThatOutlivesARun) {
#ifdef ANYCTX_COUNT_BY_SANITIZER_HOOKS
  ASSERT_NE(kHooksInstalled, 0) << "the sanitizer took no malloc hook";
#endif
  t_allocs = t_frees = 0;
  t_counting = true;
  ::operator delete(::operator new(16));
  t_counting = false;
  ASSERT_EQ(t_allocs, 1) << "the count misses operator new";
  ASSERT_EQ(t_frees, 1) << "the count misses operator delete";
  for (const char* name : {"page_ops", "page_smp", "slab_ops", "memcg_ops", "lock_ops"}) {
    SCOPED_TRACE(name);
    const TargetSpec& t = *target_spec(name);
    std::mt19937 rng(7);
    std::vector<std::vector<std::uint8_t>> inputs(150);
    for (auto& in : inputs) {
      in.resize(rng() % 400);
      for (auto& b : in) b = static_cast<std::uint8_t>(rng());
    }
    ASSERT_NE(fuzz_plans(), nullptr) << "the planner is on unless ANYCTX_MUTATOR says otherwise";
    fuzz_site_map(t, inputs[0].data(), inputs[0].size(), nullptr);  // a custom mutator asked: plans are made
    int planned = 0;
    for (int pass = 0; pass < 2; ++pass) {
      feedback::forget_interleavings();
      for (std::size_t i = 0; i < inputs.size(); ++i) {
        feedback::reset();
        t_allocs = t_frees = 0;
        t_counting = true;
        fuzz_one(t, inputs[i].data(), inputs[i].size());
        t_counting = false;
        if (pass == 1) EXPECT_LE(t_allocs, t_frees) << "input " << i << " left " << t_allocs - t_frees << " blocks";
        const std::size_t before = fuzz_plans()->size();
        fuzz_plan_last_run(t);
        planned += fuzz_plans()->size() != before;
        Program drop;
        while (fuzz_plans()->take(drop)) {
        }
      }
    }
    EXPECT_GT(planned, 0) << "some runs were new and planned: the pending plan's path ran";
  }
}

}  // namespace
}  // namespace anyctx::harness
