// Where the counters live: in fuzzing builds, libFuzzer's extra-counters
// section (its __start_/__stop_ symbols bound the array it reads).
#include "harness/feedback.h"

#include <cstring>

namespace anyctx::harness::feedback {

#if ANYCTX_FUZZING && defined(__linux__)
__attribute__((section("__libfuzzer_extra_counters"), used))
#endif
constinit Counters detail::g_counters{};

void reset() { std::memset(&detail::g_counters, 0, sizeof detail::g_counters); }

}  // namespace anyctx::harness::feedback
