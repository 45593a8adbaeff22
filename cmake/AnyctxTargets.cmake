# AnyctxTargets.cmake: helpers that src/, fuzz/, props/, tools/ and bench/
# CMakeLists call to declare targets. Instrumentation flags come from
# AnyctxSanitizers.cmake (included first); nothing here adds -fsanitize flags
# except through anyctx_fuzz_link_flags().
#
#   anyctx_add_test(NAME SOURCES <src...> [LIBS <lib...>])
#   anyctx_add_compile_fail_test(NAME SOURCE <src> [LIBS <lib...>] [EXPECT <regex>])
#   anyctx_add_fuzz_target(NAME SOURCES <src...> [LIBS <lib...>])

include_guard(GLOBAL)
include(GoogleTest)

# replay_main.cc lives in the repository's fuzz/ directory, next to the targets.
set(ANYCTX_REPLAY_MAIN "${CMAKE_CURRENT_LIST_DIR}/../fuzz/replay_main.cc")
cmake_path(NORMAL_PATH ANYCTX_REPLAY_MAIN)

# Where fuzz_NAME and replay_NAME land: build/<preset>/fuzz/.
set(ANYCTX_FUZZ_OUTPUT_DIR "${CMAKE_BINARY_DIR}/fuzz")

function(_anyctx_reject_unparsed fn)
  if(ARGN)
    message(FATAL_ERROR "${fn}: unexpected arguments: ${ARGN}")
  endif()
endfunction()

# anyctx_add_test(NAME SOURCES <src...> [LIBS <lib...>])
#   A gtest executable NAME linked with GTest::gtest_main and LIBS. Its tests
#   are listed when ctest runs (PRE_TEST discovery, so a sanitizer build's
#   environment applies to discovery too) and carry the label NAME.
#   Does nothing when ANYCTX_BUILD_TESTS is OFF.
function(anyctx_add_test name)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "" "" "SOURCES;LIBS")
  _anyctx_reject_unparsed(anyctx_add_test ${ARG_UNPARSED_ARGUMENTS})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "anyctx_add_test(${name}): SOURCES is required")
  endif()
  if(NOT ANYCTX_BUILD_TESTS)
    return()
  endif()
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE ${ARG_LIBS} GTest::gtest_main)
  gtest_discover_tests(${name}
    DISCOVERY_MODE PRE_TEST
    DISCOVERY_TIMEOUT 60
    PROPERTIES LABELS ${name})
endfunction()

# anyctx_add_compile_fail_test(NAME SOURCE <src> [LIBS <lib...>] [EXPECT <regex>])
#   Proves that SOURCE does not compile, and that the reason is the forbidden
#   code rather than a broken include or a typo:
#     NAME_control  object target, SOURCE with -DANYCTX_COMPILE_FAIL_CONTROL=1
#                   (SOURCE must hide the forbidden code under that macro)
#     NAME          object target, SOURCE as written
#   Both are EXCLUDE_FROM_ALL. ctest runs
#     NAME.control  builds NAME_control: must succeed
#     NAME          builds NAME: must fail (WILL_FAIL), and is only run when
#                   NAME.control passed (fixture). With EXPECT, the build
#                   output must also match <regex> (then WILL_FAIL is not used:
#                   the regex can only appear when the compiler rejects it).
#   Both tests hold the resource lock "anyctx_build_tree" so that no two
#   builds of the tree run at once. Does nothing when ANYCTX_BUILD_TESTS is OFF.
function(anyctx_add_compile_fail_test name)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "" "SOURCE;EXPECT" "LIBS")
  _anyctx_reject_unparsed(anyctx_add_compile_fail_test ${ARG_UNPARSED_ARGUMENTS})
  if(NOT ARG_SOURCE)
    message(FATAL_ERROR "anyctx_add_compile_fail_test(${name}): SOURCE is required")
  endif()
  if(NOT ANYCTX_BUILD_TESTS)
    return()
  endif()

  foreach(variant IN ITEMS ${name}_control ${name})
    add_library(${variant} OBJECT EXCLUDE_FROM_ALL ${ARG_SOURCE})
    if(ARG_LIBS)
      target_link_libraries(${variant} PRIVATE ${ARG_LIBS})
    endif()
  endforeach()
  target_compile_definitions(${name}_control PRIVATE ANYCTX_COMPILE_FAIL_CONTROL=1)

  add_test(NAME ${name}.control
    COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target ${name}_control)
  set_tests_properties(${name}.control PROPERTIES
    LABELS "compile-fail"
    FIXTURES_SETUP ${name}.fixture
    RESOURCE_LOCK anyctx_build_tree)

  add_test(NAME ${name}
    COMMAND ${CMAKE_COMMAND} --build ${CMAKE_BINARY_DIR} --target ${name})
  set_tests_properties(${name} PROPERTIES
    LABELS "compile-fail"
    FIXTURES_REQUIRED ${name}.fixture
    RESOURCE_LOCK anyctx_build_tree)
  if(ARG_EXPECT)
    set_tests_properties(${name} PROPERTIES PASS_REGULAR_EXPRESSION "${ARG_EXPECT}")
  else()
    set_tests_properties(${name} PROPERTIES WILL_FAIL TRUE)
  endif()
endfunction()

# anyctx_add_fuzz_target(NAME SOURCES <src...> [LIBS <lib...>])
#   SOURCES define extern "C" LLVMFuzzerTestOneInput (and may define
#   LLVMFuzzerInitialize). They are compiled once (object library) and linked:
#     fuzz_NAME    in the fuzz and afl presets only: the fuzzer (libFuzzer, or
#                  AFL++'s libFuzzer-compatible driver), in build/<preset>/fuzz/
#                  with fuzz/NAME.dict and fuzz/NAME.options copied beside it
#     replay_NAME  in every preset: SOURCES + fuzz/replay_main.cc; runs each
#                  file argument and each file of each directory argument once
#   ctest: replay.NAME over corpus/NAME and replay.NAME-regressions over
#   corpus/NAME-regressions, for those that exist when cmake configures.
#   Aggregate targets: anyctx_replayers builds every replay_NAME,
#   anyctx_fuzzers every fuzz_NAME (ci/fuzz --coverage and
#   .clusterfuzzlite/build.sh build just those).
#   Does nothing when ANYCTX_BUILD_FUZZ is OFF.
function(anyctx_add_fuzz_target name)
  cmake_parse_arguments(PARSE_ARGV 1 ARG "" "" "SOURCES;LIBS")
  _anyctx_reject_unparsed(anyctx_add_fuzz_target ${ARG_UNPARSED_ARGUMENTS})
  if(NOT ARG_SOURCES)
    message(FATAL_ERROR "anyctx_add_fuzz_target(${name}): SOURCES is required")
  endif()
  if(NOT ANYCTX_BUILD_FUZZ)
    return()
  endif()

  set(objs anyctx_fuzz_${name}_objects)
  add_library(${objs} OBJECT ${ARG_SOURCES})
  target_link_libraries(${objs} PUBLIC ${ARG_LIBS})

  add_executable(replay_${name} ${ANYCTX_REPLAY_MAIN})
  target_link_libraries(replay_${name} PRIVATE ${objs})
  set_target_properties(replay_${name} PROPERTIES
    RUNTIME_OUTPUT_DIRECTORY "${ANYCTX_FUZZ_OUTPUT_DIR}")
  if(NOT TARGET anyctx_replayers)
    add_custom_target(anyctx_replayers)
  endif()
  add_dependencies(anyctx_replayers replay_${name})

  if(ANYCTX_FUZZING_BUILD)
    anyctx_fuzz_link_flags(fuzz_link_flags)
    add_executable(fuzz_${name})
    target_link_libraries(fuzz_${name} PRIVATE ${objs})
    if(ANYCTX_SANITIZER STREQUAL "external")
      # After the objects: $LIB_FUZZING_ENGINE may be an archive (AFL++'s
      # libAFLDriver.a on OSS-Fuzz) as well as a flag.
      target_link_libraries(fuzz_${name} PRIVATE ${fuzz_link_flags})
    else()
      target_link_options(fuzz_${name} PRIVATE ${fuzz_link_flags})
    endif()
    # add_executable needs a source on some generators; the object library
    # provides every object, so give it the linker language explicitly.
    set_target_properties(fuzz_${name} PROPERTIES
      LINKER_LANGUAGE CXX
      RUNTIME_OUTPUT_DIRECTORY "${ANYCTX_FUZZ_OUTPUT_DIR}")
    if(NOT TARGET anyctx_fuzzers)
      add_custom_target(anyctx_fuzzers)
    endif()
    add_dependencies(anyctx_fuzzers fuzz_${name})
    foreach(ext IN ITEMS dict options)
      set(side "${PROJECT_SOURCE_DIR}/fuzz/${name}.${ext}")
      if(EXISTS "${side}")
        configure_file("${side}" "${ANYCTX_FUZZ_OUTPUT_DIR}/fuzz_${name}.${ext}" COPYONLY)
      endif()
    endforeach()
  endif()

  foreach(corpus IN ITEMS ${name} ${name}-regressions)
    set(dir "${PROJECT_SOURCE_DIR}/corpus/${corpus}")
    if(IS_DIRECTORY "${dir}")
      add_test(NAME replay.${corpus} COMMAND replay_${name} "${dir}")
      set_tests_properties(replay.${corpus} PROPERTIES LABELS "replay;${name}")
    endif()
  endforeach()
  # A corpus directory added later shows up at the next build: the build
  # re-runs cmake when corpus/ gains or loses an entry. Likewise a NAME.dict
  # or NAME.options added to fuzz/ later is copied at the next build.
  if(IS_DIRECTORY "${PROJECT_SOURCE_DIR}/corpus")
    set_property(DIRECTORY "${PROJECT_SOURCE_DIR}" APPEND PROPERTY
      CMAKE_CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/corpus")
  endif()
  set_property(DIRECTORY "${PROJECT_SOURCE_DIR}" APPEND PROPERTY
    CMAKE_CONFIGURE_DEPENDS "${PROJECT_SOURCE_DIR}/fuzz")
endfunction()
