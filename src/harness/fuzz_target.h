// harness/fuzz_target.h — defines a fuzz target's LLVMFuzzerTestOneInput:
// the input (bytes, or a text program) becomes a program for the named
// target and runs under the deterministic executor. The same source builds
// for libFuzzer (`fuzz` preset), AFL++ (`afl`) and the replayer (any preset).
//
// It also defines libFuzzer's LLVMFuzzerCustomMutator and
// LLVMFuzzerCustomCrossOver: the structure-aware mutator (mutator.h), with
// LLVMFuzzerMutate as its byte mutator, so the dictionary and libFuzzer's
// comparison tracing still reach the bytes, and fuzz_site_map as its
// SiteObserver, so injections and anchored switches land where the input
// goes (the input just run, or a corpus input run once more when it is
// first picked). LLVMFuzzerMutate is declared
// weak: a replay_NAME (no libFuzzer) links, and passes nullptr. AFL++'s
// driver never calls these; AFL++ loads the same mutator as a custom
// mutator library (fuzz/afl_mutator.cc). With the planner (fuzz_plans()):
// a run that reached a new interleaving, and a corpus input picked for the
// first time, have their moments planned (planner.h), and a quarter of the
// calls run a planned candidate while any is queued. ANYCTX_MUTATOR=bytes in the
// environment turns the custom mutator into plain LLVMFuzzerMutate
// (libFuzzer as it is without one), and ANYCTX_MUTATOR=unplanned into the
// structural mutator without the planner, for comparisons
// (fuzz_mutator_mode()).
#pragma once

#include <cstddef>
#include <cstdint>

#include "harness/executor.h"
#include "harness/mutator.h"
#include "harness/planner.h"
#include "harness/program.h"

extern "C" __attribute__((weak)) std::size_t LLVMFuzzerMutate(std::uint8_t* data, std::size_t size,
                                                              std::size_t max_size);

#define ANYCTX_FUZZ_TARGET(target_name)                                                       \
  static const ::anyctx::harness::TargetSpec& anyctx_fuzz_target() {                          \
    static const ::anyctx::harness::TargetSpec& target = *::anyctx::harness::target_spec(target_name); \
    return target;                                                                            \
  }                                                                                           \
  extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {         \
    return ::anyctx::harness::fuzz_one(anyctx_fuzz_target(), data, size);                     \
  }                                                                                           \
  extern "C" std::size_t LLVMFuzzerCustomMutator(std::uint8_t* data, std::size_t size,        \
                                                 std::size_t max_size, unsigned int seed) {   \
    using ::anyctx::harness::MutatorMode;                                                     \
    if (::anyctx::harness::fuzz_mutator_mode() == MutatorMode::kBytes && LLVMFuzzerMutate != nullptr) \
      return LLVMFuzzerMutate(data, size, max_size);                                          \
    ::anyctx::harness::fuzz_plan_last_run(anyctx_fuzz_target());                              \
    return ::anyctx::harness::mutate_input(anyctx_fuzz_target(), data, size, max_size, seed,  \
                                           LLVMFuzzerMutate, nullptr,                         \
                                           ::anyctx::harness::fuzz_site_map,                  \
                                           ::anyctx::harness::fuzz_plans());                  \
  }                                                                                           \
  extern "C" std::size_t LLVMFuzzerCustomCrossOver(const std::uint8_t* data1, std::size_t size1, \
                                                   const std::uint8_t* data2, std::size_t size2, \
                                                   std::uint8_t* out, std::size_t max_out_size, \
                                                   unsigned int seed) {                       \
    ::anyctx::harness::fuzz_plan_last_run(anyctx_fuzz_target());                              \
    return ::anyctx::harness::cross_over(anyctx_fuzz_target(), data1, size1, data2, size2, out, \
                                         max_out_size, seed);                                 \
  }
