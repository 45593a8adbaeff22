// anyctx/ctx/src_loc.h — the source location of a lock acquisition, for
// diagnostics. Empty (and free) when ANYCTX_DEBUG is 0.
//
// Use as a defaulted last parameter: `void lock(SrcLoc at = SrcLoc::here())`.
#pragma once

#include <cstdint>

#include "anyctx/ctx/config.h"

namespace anyctx {

#if ANYCTX_DEBUG
struct SrcLoc {
  const char* file = nullptr;
  std::uint32_t line = 0;

  static constexpr SrcLoc here(const char* file = __builtin_FILE(),
                               std::uint32_t line = __builtin_LINE()) {
    return SrcLoc{file, line};
  }
  constexpr bool known() const { return file != nullptr; }
};
#else
struct SrcLoc {
  static constexpr SrcLoc here() { return SrcLoc{}; }
  constexpr bool known() const { return false; }
};
#endif

}  // namespace anyctx
