// harness/bytes.h — comparing memory against a fill byte, for the oracles
// that write a pattern into live allocations and check it later (the
// executor's shadow map, the stress executor's stamps).
//
// Contract: reads p[0, n) only; allocates nothing, takes no lock, so it may
// run in a signal handler.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace anyctx::harness {

// Return: the index of the first byte of p[0, n) that is not `want`, or n.
inline std::size_t first_mismatch(const unsigned char* p, std::size_t n, std::uint8_t want) {
  const std::uint64_t word = 0x0101010101010101ull * want;
  std::size_t k = 0;
  for (; k + 8 <= n; k += 8) {
    std::uint64_t v;
    std::memcpy(&v, p + k, 8);
    if (v != word) break;
  }
  while (k < n && p[k] == want) ++k;
  return k;
}

}  // namespace anyctx::harness
