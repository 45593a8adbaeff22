// Properties checked outside anyctx, on the installed harness, with plain
// checks (no test framework): for pseudo-random bytes b and each target,
//  - p = decode(b) is valid for the target;
//  - decode(encode(p)) == p and parse(print(p)) == p (both forms exact);
//  - run_program(p) twice gives the same trace hash (the executor is
//    deterministic), for the page_ops programs.
// Exit 0 when every property held; each failure is printed with its program.
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <vector>

#include "harness/executor.h"
#include "harness/program.h"
#include "harness/text.h"

namespace {

int g_failures = 0;

void check(bool ok, const char* what, const anyctx::harness::TargetSpec& target,
           const anyctx::harness::Program& program) {
  if (ok) return;
  ++g_failures;
  std::fprintf(stderr, "program_props: %s fails for\n%s\n", what,
               anyctx::harness::print(target, program).c_str());
}

std::vector<std::uint8_t> random_bytes(std::uint64_t& state, std::size_t size) {
  std::vector<std::uint8_t> bytes(size);
  for (auto& b : bytes) {
    state = state * 6364136223846793005u + 1442695040888963407u;  // LCG, high byte
    b = static_cast<std::uint8_t>(state >> 56);
  }
  return bytes;
}

}  // namespace

int main() {
  namespace h = anyctx::harness;
  std::uint64_t state = 42;
  int programs = 0, runs = 0, ops = 0;
  for (const char* name : {"page_ops", "page_smp", "slab_ops", "memcg_ops", "lock_ops"}) {
    const h::TargetSpec* target = h::target_spec(name);
    if (target == nullptr) {
      std::fprintf(stderr, "program_props: no target %s\n", name);
      return 1;
    }
    for (int i = 0; i < 100; ++i) {
      h::Program p = h::decode(*target, random_bytes(state, 8 + i * 3));
      ++programs;
      check(h::validate(*target, p).empty(), "validate(decode(b)) == \"\"", *target, p);
      check(h::decode(*target, h::encode(*target, p)) == p, "decode(encode(p)) == p", *target, p);
      h::ParseResult parsed = h::parse(h::print(*target, p), *target);
      check(parsed.ok() && parsed.target == target && parsed.program == p, "parse(print(p)) == p", *target,
            p);
      if (std::string_view(name) == "page_ops" && i % 10 == 0) {
        h::RunStats first = h::run_program(*target, p);
        h::RunStats second = h::run_program(*target, p);
        runs += 2;
        ops += first.ops_run;
        check(first.trace_hash == second.trace_hash && first.events == second.events,
              "run_program(p) is deterministic", *target, p);
      }
    }
  }
  std::printf("program_props: %d programs, %d runs (%d ops each time), %d failures\n", programs, runs, ops,
              g_failures);
  return g_failures == 0 && ops > 0 ? 0 : 1;
}
