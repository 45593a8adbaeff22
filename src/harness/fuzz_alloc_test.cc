// A fuzz run allocates nothing that outlives it. libFuzzer counts the mallocs
// and frees of each input and runs the input a second time, for a leak
// check, when it malloced more than it freed; a harness whose runs leave
// buffers behind (a queue that grows, a decoder that reallocates) pays for
// that in most runs. This binary replaces operator new and delete to count
// them (it has its own process so that the other harness tests keep the
// sanitizers' own new and delete).
#include <gtest/gtest.h>

#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include "harness/executor.h"
#include "harness/feedback.h"
#include "harness/planner.h"
#include "harness/program.h"

namespace {

thread_local bool t_counting = false;
thread_local long t_news = 0;
thread_local long t_deletes = 0;

}  // namespace

void* operator new(std::size_t n) {
  if (t_counting) ++t_news;
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept {
  if (t_counting && p != nullptr) ++t_deletes;
  std::free(p);
}
void operator delete(void* p, std::size_t) noexcept { operator delete(p); }

namespace anyctx::harness {
namespace {

// Every target's runs, the same random inputs twice, each followed by what
// the custom mutator does first (fuzz_plan_last_run, outside the count).
// The first pass grows every buffer to what these inputs need; in the
// second, which repeats the first exactly (the interleavings seen are
// forgotten before each pass, so the same runs are new and planned), no run
// may allocate more than it frees.
TEST(FuzzAllocTest, ASecondPassOverTheSameInputsAllocatesNothingThatOutlivesARun) {
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
        t_news = t_deletes = 0;
        t_counting = true;
        fuzz_one(t, inputs[i].data(), inputs[i].size());
        t_counting = false;
        if (pass == 1) EXPECT_LE(t_news, t_deletes) << "input " << i << " left " << t_news - t_deletes << " blocks";
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
