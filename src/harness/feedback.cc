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
// Eight flags a step: this runs after every input over 17 KB of tables, and
// a byte loop (each byte load checked by ASan in fuzzing builds) took 12 %
// of a page_ops campaign's time.
template <std::size_t N>
bool merge_new(const std::uint8_t (&now)[N], std::uint8_t (&seen)[N]) {
  static_assert(N % sizeof(std::uint64_t) == 0);
  std::uint64_t fresh = 0;
  for (std::size_t i = 0; i < N; i += sizeof(std::uint64_t)) {
    std::uint64_t n, s;
    std::memcpy(&n, now + i, sizeof n);
    if (n == 0) continue;
    std::memcpy(&s, seen + i, sizeof s);
    fresh |= n & ~s;
    s |= n;
    std::memcpy(seen + i, &s, sizeof s);
  }
  return fresh != 0;
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
