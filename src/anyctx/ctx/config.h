// anyctx/ctx/config.h — build-time configuration and the attribute macros
// every layer uses.
//
// Contract:
//  - ANYCTX_DEBUG (0/1): owner tracking, context assertions, misuse reports.
//    On in every preset except `release`.
//  - ANYCTX_SITES (0/1): harness interrupt points (see site.h). Zero cost
//    when 0.
//  - kMaxCpus bounds the logical CPUs online at once (ANYCTX_MAX_CPUS).
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
