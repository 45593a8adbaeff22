// Where the counters live: in fuzzing builds, libFuzzer's extra-counters
// section (its __start_/__stop_ symbols bound the array it reads).
#include "harness/feedback.h"

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace anyctx::harness::feedback {

#if ANYCTX_FUZZING && defined(__linux__)
__attribute__((section("__libfuzzer_extra_counters"), used))
#endif
constinit Counters detail::g_counters{};

void reset() { std::memset(&detail::g_counters, 0, sizeof detail::g_counters); }

namespace {

// The interleaving flags that novel_interleaving() has seen set.
struct Seen {
  std::uint8_t held_at_injection[kStateCounters];
  std::uint8_t held_elsewhere[kStateCounters];
  std::uint8_t resumed[kResumedCounters];
};
constinit Seen g_seen{};

// Return: whether `now` has a flag that `seen` lacks; ORs it into `seen`.
template <std::size_t N>
bool merge_new(const std::uint8_t (&now)[N], std::uint8_t (&seen)[N]) {
  bool fresh = false;
  for (std::size_t i = 0; i < N; ++i) {
    fresh |= now[i] > seen[i];
    seen[i] |= now[i];
  }
  return fresh;
}

}  // namespace

bool novel_interleaving() {
  const Counters& c = detail::g_counters;
  bool fresh = merge_new(c.held_at_injection, g_seen.held_at_injection);
  fresh |= merge_new(c.held_elsewhere, g_seen.held_elsewhere);
  fresh |= merge_new(c.resumed, g_seen.resumed);
  return fresh;
}

void forget_interleavings() { std::memset(&g_seen, 0, sizeof g_seen); }

}  // namespace anyctx::harness::feedback
