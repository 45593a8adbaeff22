// bench/subject.h — which allocator a benchmark binary measures, and proof
// at run time that it is really the one serving malloc.
//
// Every comparative benchmark source is compiled once per subject; CMake
// defines exactly one of
//   ANYCTX_BENCH_ANYCTX    the anyctx entry points (the process's own malloc
//                          is glibc's and is not what is measured)
//   ANYCTX_BENCH_GLIBC     malloc/free from glibc
//   ANYCTX_BENCH_JEMALLOC  linked against libjemalloc
//   ANYCTX_BENCH_TCMALLOC  linked against libtcmalloc_minimal (gperftools)
//   ANYCTX_BENCH_MIMALLOC  linked against libmimalloc
// and ANYCTX_BENCH_SUBJECT_NAME ("jemalloc" ...).
//
// verify_subject() checks, before any measurement, that malloc resolves into
// the expected shared object (dladdr of the global `malloc` symbol) and that
// a pointer returned by malloc is owned by that allocator (its own ownership
// query: jemalloc "arenas.lookup", tcmalloc GetOwnership, mimalloc
// mi_is_in_heap_region; glibc: chunk header arithmetic via
// malloc_usable_size). Any mismatch is fatal: a benchmark that silently
// measured glibc under another name would be worse than none.
#pragma once

#include <dlfcn.h>
#include <malloc.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#ifndef ANYCTX_BENCH_SUBJECT_NAME
#error "define ANYCTX_BENCH_SUBJECT_NAME and one ANYCTX_BENCH_<SUBJECT> (see bench/CMakeLists.txt)"
#endif

#if ANYCTX_BENCH_JEMALLOC
extern "C" int mallctl(const char* name, void* oldp, std::size_t* oldlenp, void* newp, std::size_t newlen);
#elif ANYCTX_BENCH_TCMALLOC
extern "C" const char* tc_version(int* major, int* minor, const char** patch);
extern "C" int MallocExtension_GetOwnership(const void* p);  // 1 = owned
#elif ANYCTX_BENCH_MIMALLOC
extern "C" int mi_version(void);
extern "C" bool mi_is_in_heap_region(const void* p);
#endif

namespace bench {

inline constexpr const char* kSubject = ANYCTX_BENCH_SUBJECT_NAME;

// Where results go so that the compiler keeps the calls that made them.
inline void* volatile probe_sink = nullptr;

// Return: the path of the shared object that defines the `malloc` this
// process calls, or "?" when it cannot be told.
inline std::string malloc_library() {
  void* sym = dlsym(RTLD_DEFAULT, "malloc");
  Dl_info info{};
  if (sym == nullptr || dladdr(sym, &info) == 0 || info.dli_fname == nullptr) return "?";
  return info.dli_fname;
}

[[noreturn]] inline void subject_mismatch(const std::string& what) {
  std::fprintf(stderr, "bench: subject '%s' is not the allocator serving malloc: %s\n", kSubject,
               what.c_str());
  std::exit(2);
}

// Aborts the process (exit 2) when the allocator under test does not serve
// malloc. Context: task, before any benchmark. Return: a one-line
// description ("jemalloc 5.3.0-0-g54eaed1d... in /usr/lib/.../libjemalloc.so.2").
inline std::string verify_subject() {
  std::string lib = malloc_library();
  void* probe = std::malloc(24);
  if (probe == nullptr) subject_mismatch("malloc(24) returned nullptr");
  std::string desc;
#if ANYCTX_BENCH_ANYCTX || ANYCTX_BENCH_GLIBC
  // glibc: malloc comes from libc.so.6 and a 24-byte request gets a 32-byte
  // chunk whose usable size is 24 (jemalloc, tcmalloc and mimalloc round to
  // a 32-byte class and report 32).
  if (lib.find("libc.so") == std::string::npos) subject_mismatch("malloc is defined in " + lib);
  std::size_t usable = malloc_usable_size(probe);
  if (usable != 24) subject_mismatch("malloc_usable_size(malloc(24)) = " + std::to_string(usable));
#if ANYCTX_BENCH_ANYCTX
  desc = "anyctx (process malloc: glibc in " + lib + ", not measured)";
#else
  desc = "glibc malloc in " + lib;
#endif
#elif ANYCTX_BENCH_JEMALLOC
  if (lib.find("libjemalloc") == std::string::npos) subject_mismatch("malloc is defined in " + lib);
  const char* version = nullptr;
  std::size_t len = sizeof(version);
  if (mallctl("version", &version, &len, nullptr, 0) != 0) subject_mismatch("mallctl(\"version\") failed");
  unsigned arena = 0;
  len = sizeof(arena);
  void* ptr = probe;
  if (mallctl("arenas.lookup", &arena, &len, &ptr, sizeof(ptr)) != 0)
    subject_mismatch("malloc's pointer is not in a jemalloc arena");
  desc = std::string("jemalloc ") + version + " in " + lib;
#elif ANYCTX_BENCH_TCMALLOC
  if (lib.find("libtcmalloc") == std::string::npos) subject_mismatch("malloc is defined in " + lib);
  int major = 0, minor = 0;
  const char* patch = nullptr;
  const char* version = tc_version(&major, &minor, &patch);
  if (MallocExtension_GetOwnership(probe) != 1) subject_mismatch("malloc's pointer is not owned by tcmalloc");
  desc = std::string(version ? version : "tcmalloc") + " in " + lib;
#elif ANYCTX_BENCH_MIMALLOC
  if (lib.find("libmimalloc") == std::string::npos) subject_mismatch("malloc is defined in " + lib);
  if (!mi_is_in_heap_region(probe)) subject_mismatch("malloc's pointer is not in a mimalloc heap");
  int v = mi_version();
  desc = "mimalloc " + std::to_string(v / 100) + "." + std::to_string(v / 10 % 10) + "." +
         std::to_string(v % 10) + " in " + lib;
#else
#error "no ANYCTX_BENCH_<SUBJECT> defined"
#endif
  // Keep the probe's malloc/free pair: it is the point of the check.
  probe_sink = probe;
  std::free(probe);
  return desc;
}

}  // namespace bench
