// harness/fuzz_target.h — defines a fuzz target's LLVMFuzzerTestOneInput:
// the input (bytes, or a text program) becomes a program for the named
// target and runs under the deterministic executor. The same source builds
// for libFuzzer (`fuzz` preset), AFL++ (`afl`) and the replayer (any preset).
#pragma once

#include <cstddef>
#include <cstdint>

#include "harness/executor.h"
#include "harness/program.h"

#define ANYCTX_FUZZ_TARGET(target_name)                                                       \
  extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {         \
    static const ::anyctx::harness::TargetSpec& target = *::anyctx::harness::target_spec(target_name); \
    return ::anyctx::harness::fuzz_one(target, data, size);                                   \
  }
