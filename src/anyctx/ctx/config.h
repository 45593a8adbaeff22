// anyctx/ctx/config.h — build-time configuration and the attribute macros
// every layer uses.
//
// Contract:
//  - ANYCTX_DEBUG (0/1): owner tracking, context assertions, misuse reports.
//    On in every preset except `release`.
//  - ANYCTX_SITES (0/1): harness interrupt points (see site.h). Zero cost
//    when 0.
//  - kMaxCpus bounds the logical CPUs online at once (ANYCTX_MAX_CPUS, a
//    decimal literal).
//  - The three switches are part of the ABI: ANYCTX_DEBUG changes the
//    layout of LocalLock and Spinlock, ANYCTX_MAX_CPUS that of the per-CPU
//    arrays (PerCpu<T>, MemCgroup), ANYCTX_SITES the inline code
//    (site hits). Every file that includes an anyctx header must see the
//    values libanyctx was built with. The CMake target
//    anyctx::anyctx and anyctx.pc carry ANYCTX_DEBUG and ANYCTX_SITES; a
//    file compiled with other values fails to link, the undefined symbol
//    naming the switch:
//      undefined reference to
//        `anyctx_built_with_ANYCTX_DEBUG_0_but_this_file_has_ANYCTX_DEBUG_1'
//      (ANYCTX_SITES likewise; ANYCTX_MAX_CPUS:
//        `anyctx_built_with_other_ANYCTX_MAX_CPUS_than_this_file_has_128')
//    Every public anyctx header includes this one, and each file that does
//    keeps a reference to the symbols named for its own values
//    (kConfigCheck below, 24 bytes per file, nothing at run time);
//    ctx/config.cc defines the ones of the build. Each name is written for
//    the only reader who sees it: the linker error of a mismatched file.
#pragma once

#include <cstddef>
#include <cstdint>

#ifndef ANYCTX_DEBUG
#define ANYCTX_DEBUG 1
#endif
#ifndef ANYCTX_SITES
#define ANYCTX_SITES ANYCTX_DEBUG
#endif
#ifndef ANYCTX_MAX_CPUS
#define ANYCTX_MAX_CPUS 64
#endif

#define ANYCTX_LIKELY(x) __builtin_expect(!!(x), 1)
#define ANYCTX_UNLIKELY(x) __builtin_expect(!!(x), 0)
#define ANYCTX_COLD __attribute__((cold, noinline))
#define ANYCTX_ALWAYS_INLINE inline __attribute__((always_inline))
// On a variable that inline fast paths in the headers read: hidden
// visibility, so a position-independent caller addresses it PC-relative
// instead of loading its address from the GOT (libanyctx is static, so it
// is always part of the caller's module).
#define ANYCTX_FAST_PATH_DATA __attribute__((visibility("hidden")))

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define ANYCTX_TSAN 1
#endif
#if __has_feature(address_sanitizer)
#define ANYCTX_ASAN 1
#endif
#endif
#ifndef ANYCTX_TSAN
#define ANYCTX_TSAN 0
#endif
#ifndef ANYCTX_ASAN
#define ANYCTX_ASAN 0
#endif

// ASan's poisoning of memory the allocator holds (free pages, free slab
// objects, the bytes past a kmalloc's size); nothing in other builds.
#if ANYCTX_ASAN
#include <sanitizer/asan_interface.h>
#define ANYCTX_POISON(addr, size) ASAN_POISON_MEMORY_REGION(addr, size)
#define ANYCTX_UNPOISON(addr, size) ASAN_UNPOISON_MEMORY_REGION(addr, size)
#else
#define ANYCTX_POISON(addr, size) ((void)(addr), (void)(size))
#define ANYCTX_UNPOISON(addr, size) ((void)(addr), (void)(size))
#endif

// Clang thread-safety analysis (-Wthread-safety).
#if defined(__clang__)
#define ANYCTX_TSA(x) __attribute__((x))
#else
#define ANYCTX_TSA(x)
#endif
#define ANYCTX_CAPABILITY(name) ANYCTX_TSA(capability(name))
#define ANYCTX_ACQUIRE(...) ANYCTX_TSA(acquire_capability(__VA_ARGS__))
#define ANYCTX_RELEASE(...) ANYCTX_TSA(release_capability(__VA_ARGS__))
#define ANYCTX_TRY_ACQUIRE(...) ANYCTX_TSA(try_acquire_capability(__VA_ARGS__))
#define ANYCTX_GUARDED_BY(x) ANYCTX_TSA(guarded_by(x))
#define ANYCTX_NO_TSA ANYCTX_TSA(no_thread_safety_analysis)

namespace anyctx {

inline constexpr int kMaxCpus = ANYCTX_MAX_CPUS;
inline constexpr int kNoCpu = -1;
inline constexpr std::size_t kCacheLine = 64;
inline constexpr bool kDebug = ANYCTX_DEBUG != 0;

static_assert(kMaxCpus > 0 && kMaxCpus < 0xffff, "CPU ids must fit 16 bits");

}  // namespace anyctx

// --- the link-time configuration check (see the contract) -------------------
#if ANYCTX_DEBUG
#define ANYCTX_CONFIG_DEBUG_SYMBOL anyctx_built_with_ANYCTX_DEBUG_0_but_this_file_has_ANYCTX_DEBUG_1
#else
#define ANYCTX_CONFIG_DEBUG_SYMBOL anyctx_built_with_ANYCTX_DEBUG_1_but_this_file_has_ANYCTX_DEBUG_0
#endif
#if ANYCTX_SITES
#define ANYCTX_CONFIG_SITES_SYMBOL anyctx_built_with_ANYCTX_SITES_0_but_this_file_has_ANYCTX_SITES_1
#else
#define ANYCTX_CONFIG_SITES_SYMBOL anyctx_built_with_ANYCTX_SITES_1_but_this_file_has_ANYCTX_SITES_0
#endif
#define ANYCTX_CONFIG_CAT_(a, b) a##b
#define ANYCTX_CONFIG_CAT(a, b) ANYCTX_CONFIG_CAT_(a, b)
#define ANYCTX_CONFIG_MAX_CPUS_SYMBOL \
  ANYCTX_CONFIG_CAT(anyctx_built_with_other_ANYCTX_MAX_CPUS_than_this_file_has_, ANYCTX_MAX_CPUS)

extern "C" {
extern const char ANYCTX_CONFIG_DEBUG_SYMBOL;
extern const char ANYCTX_CONFIG_SITES_SYMBOL;
extern const char ANYCTX_CONFIG_MAX_CPUS_SYMBOL;
}

#if defined(__has_attribute)
#if __has_attribute(retain)
#define ANYCTX_CONFIG_RETAIN __attribute__((retain))
#endif
#endif
#ifndef ANYCTX_CONFIG_RETAIN
#define ANYCTX_CONFIG_RETAIN
#endif

namespace anyctx::detail {
// One copy per file (static), kept by the compiler (used) and by
// --gc-sections (retain): its relocations are what the linker checks.
__attribute__((used)) ANYCTX_CONFIG_RETAIN static const char* const kConfigCheck[] = {
    &ANYCTX_CONFIG_DEBUG_SYMBOL, &ANYCTX_CONFIG_SITES_SYMBOL, &ANYCTX_CONFIG_MAX_CPUS_SYMBOL};
}  // namespace anyctx::detail
