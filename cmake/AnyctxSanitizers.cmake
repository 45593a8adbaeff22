# AnyctxSanitizers.cmake: the one place where sanitizer, fuzzer and coverage
# flags live. Presets pick a mode by setting ANYCTX_SANITIZER; nothing else
# (presets, scripts, target CMakeLists) adds -fsanitize or coverage flags.
#
#   none      plain build
#   asan      AddressSanitizer + UndefinedBehaviorSanitizer, abort on first error
#   tsan      ThreadSanitizer
#   fuzz      libFuzzer instrumentation + ASan + UBSan; fuzz targets link
#             libFuzzer (see anyctx_fuzz_link_flags)
#   afl       AFL++ (compiler afl-clang-fast++, set by the preset) + ASan + UBSan
#   coverage  clang source-based coverage (llvm-profdata / llvm-cov)
#   external  flags come from outside: the compiler and CMAKE_CXX_FLAGS as
#             given (CXX, CXXFLAGS from the environment at the first
#             configure), fuzz targets linked with ANYCTX_FUZZ_LINK_FLAGS
#             (default $LIB_FUZZING_ENGINE). For OSS-Fuzz / ClusterFuzzLite
#             (.clusterfuzzlite/build.sh), whose engine owns every flag.
#
# Provides:
#   ANYCTX_SANITIZER            cache STRING, validated
#   ANYCTX_FUZZ_LINK_FLAGS      cache STRING, external mode only: what fuzz_NAME
#                               links with (e.g. -fsanitize=fuzzer, or a path
#                               to libAFLDriver.a); defaults to $LIB_FUZZING_ENGINE
#   ANYCTX_FUZZING_BUILD        TRUE in fuzz, afl and external modes (fuzz_NAME
#                               targets exist)
#   anyctx_fuzz_link_flags(OUT_VAR)
#                               sets OUT_VAR to the link options of a fuzz_NAME
#                               executable, or to "" outside fuzz/afl/external modes

include_guard(GLOBAL)

set(ANYCTX_SANITIZER_VALUES none asan tsan fuzz afl coverage external)
set(ANYCTX_SANITIZER "none" CACHE STRING
    "Instrumentation mode: one of ${ANYCTX_SANITIZER_VALUES}")
set_property(CACHE ANYCTX_SANITIZER PROPERTY STRINGS ${ANYCTX_SANITIZER_VALUES})

if(NOT ANYCTX_SANITIZER IN_LIST ANYCTX_SANITIZER_VALUES)
  string(REPLACE ";" ", " _anyctx_allowed "${ANYCTX_SANITIZER_VALUES}")
  message(FATAL_ERROR
    "ANYCTX_SANITIZER='${ANYCTX_SANITIZER}' is not a known mode; "
    "allowed values: ${_anyctx_allowed}")
endif()

if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang" AND NOT ANYCTX_SANITIZER MATCHES "^(none|external)$")
  message(FATAL_ERROR
    "ANYCTX_SANITIZER=${ANYCTX_SANITIZER} needs clang (compiler is "
    "${CMAKE_CXX_COMPILER_ID} ${CMAKE_CXX_COMPILER}); use a preset")
endif()

set(ANYCTX_FUZZING_BUILD FALSE)

# fuzz/coverage.ignorelist keeps the fuzzers' coverage on the code under test
# (see the file). Sets _anyctx_ignorelist; the file's hash becomes a compile
# definition, so editing the list reconfigures and recompiles everything.
macro(anyctx_use_coverage_ignorelist)
  set(_anyctx_ignorelist "${PROJECT_SOURCE_DIR}/fuzz/coverage.ignorelist")
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS "${_anyctx_ignorelist}")
  file(MD5 "${_anyctx_ignorelist}" _anyctx_ignorelist_md5)
  add_compile_definitions(ANYCTX_COVERAGE_IGNORELIST_MD5=${_anyctx_ignorelist_md5})
endmacro()

if(ANYCTX_SANITIZER STREQUAL "asan")
  set(_anyctx_san_flags
      -fsanitize=address,undefined -fno-sanitize-recover=all
      -fno-omit-frame-pointer -g)
  add_compile_options(${_anyctx_san_flags})
  add_link_options(-fsanitize=address,undefined -fno-sanitize-recover=all)

elseif(ANYCTX_SANITIZER STREQUAL "tsan")
  add_compile_options(-fsanitize=thread -g -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)

elseif(ANYCTX_SANITIZER STREQUAL "fuzz")
  # Every object carries libFuzzer's coverage instrumentation; only fuzz_NAME
  # executables link the libFuzzer runtime (its main()). replay_NAME and any
  # other executable link without it: the ASan runtime supplies the coverage
  # callbacks.
  anyctx_use_coverage_ignorelist()
  add_compile_options(
      -fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -g
      "-fsanitize-coverage-ignorelist=${_anyctx_ignorelist}")
  add_link_options(-fsanitize=address,undefined -fno-sanitize-recover=all)
  add_compile_definitions(ANYCTX_FUZZING=1)
  set(ANYCTX_FUZZING_BUILD TRUE)

elseif(ANYCTX_SANITIZER STREQUAL "afl")
  # afl-clang-fast++ instruments every object itself; the sanitizers come on top.
  get_filename_component(_anyctx_cxx_name "${CMAKE_CXX_COMPILER}" NAME)
  if(NOT _anyctx_cxx_name MATCHES "^afl-clang-(fast|lto)\\+\\+")
    message(FATAL_ERROR
      "ANYCTX_SANITIZER=afl needs CMAKE_CXX_COMPILER=afl-clang-fast++ "
      "(got ${CMAKE_CXX_COMPILER}); use the 'afl' preset in a fresh build dir")
  endif()
  # AFL++'s own pass ignores clang's ignorelist flag and reads the same file
  # (sancov format) from AFL_LLVM_DENYLIST at compile time.
  anyctx_use_coverage_ignorelist()
  set(CMAKE_CXX_COMPILER_LAUNCHER "${CMAKE_COMMAND}" -E env "AFL_LLVM_DENYLIST=${_anyctx_ignorelist}")
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=all -g)
  add_link_options(-fsanitize=address,undefined -fno-sanitize-recover=all)
  add_compile_definitions(ANYCTX_FUZZING=1)
  set(ANYCTX_FUZZING_BUILD TRUE)

elseif(ANYCTX_SANITIZER STREQUAL "coverage")
  add_compile_options(-fprofile-instr-generate -fcoverage-mapping)
  add_link_options(-fprofile-instr-generate)

elseif(ANYCTX_SANITIZER STREQUAL "external")
  # Nothing added: the fuzzing engine's CXXFLAGS (sanitizers, coverage
  # instrumentation such as -fsanitize=fuzzer-no-link) already sit in
  # CMAKE_CXX_FLAGS and apply to every compile and link.
  set(ANYCTX_FUZZ_LINK_FLAGS "$ENV{LIB_FUZZING_ENGINE}" CACHE STRING
      "external mode: link options of fuzz_NAME executables (the engine's LIB_FUZZING_ENGINE)")
  if(ANYCTX_FUZZ_LINK_FLAGS STREQUAL "")
    message(FATAL_ERROR
      "ANYCTX_SANITIZER=external needs the fuzzing engine's link flags: set "
      "LIB_FUZZING_ENGINE in the environment or -DANYCTX_FUZZ_LINK_FLAGS=...")
  endif()
  add_compile_definitions(ANYCTX_FUZZING=1)
  set(ANYCTX_FUZZING_BUILD TRUE)
  message(STATUS "anyctx: external flags: CXX=${CMAKE_CXX_COMPILER} "
                 "CXXFLAGS='${CMAKE_CXX_FLAGS}' fuzz link='${ANYCTX_FUZZ_LINK_FLAGS}'")
endif()

message(STATUS "anyctx: ANYCTX_SANITIZER=${ANYCTX_SANITIZER}")

# anyctx_fuzz_link_flags(OUT_VAR)
#   OUT_VAR <- link options for a fuzz_NAME executable (a list), "" when this
#   build has no fuzzers. In 'fuzz' mode -fsanitize=fuzzer links libFuzzer and
#   its main(). In 'afl' mode afl-clang-fast++ turns -fsanitize=fuzzer into its
#   own libFuzzer-compatible driver (libAFLDriver: fork server, persistent
#   mode, and "binary FILE..." runs each file once), checked with AFL++ 4.04c.
#   In 'external' mode: ANYCTX_FUZZ_LINK_FLAGS, split like a shell would.
function(anyctx_fuzz_link_flags out_var)
  if(ANYCTX_SANITIZER STREQUAL "fuzz" OR ANYCTX_SANITIZER STREQUAL "afl")
    set(${out_var} -fsanitize=fuzzer PARENT_SCOPE)
  elseif(ANYCTX_SANITIZER STREQUAL "external")
    separate_arguments(_anyctx_link UNIX_COMMAND "${ANYCTX_FUZZ_LINK_FLAGS}")
    set(${out_var} ${_anyctx_link} PARENT_SCOPE)
  else()
    set(${out_var} "" PARENT_SCOPE)
  endif()
endfunction()
