// anyctx/slab/slab_classes.h — the kmalloc size classes (slab.h includes
// this header; the slab internals use it without slab.h).
//
// Contract:
//  - The classes are the powers of two kKmallocMinSize..kKmallocMaxSize;
//    an object of class N is N bytes, aligned to N.
//  - Each class has two caches: plain (index = class) and accounted
//    (index = class + kKmallocClasses, kGfpAccount objects).
#pragma once

#include <cstddef>

namespace anyctx {

inline constexpr std::size_t kKmallocMinSize = 8;
inline constexpr std::size_t kKmallocMaxSize = 8192;
inline constexpr int kKmallocClasses = 11;                    // 8, 16, ..., 8192
inline constexpr int kKmallocCaches = 2 * kKmallocClasses;  // plain, then accounted

}  // namespace anyctx
