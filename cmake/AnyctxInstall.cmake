# AnyctxInstall.cmake: `cmake --install <build> --prefix P` lays anyctx out
# for other projects (included by the top-level CMakeLists.txt when
# ANYCTX_INSTALL is ON, the default for a top-level build):
#
#   P/include/anyctx/**.h, P/include/harness/*.h   the public headers
#   P/lib/libanyctx.a, P/lib/libanyctx_harness.a
#   P/lib/cmake/anyctx/anyctxConfig.cmake (+ Version, Targets)
#       find_package(anyctx 0.2) -> anyctx::anyctx, anyctx::harness
#   P/lib/pkgconfig/anyctx.pc
#       pkg-config --cflags --libs anyctx
#
# (lib is CMAKE_INSTALL_LIBDIR, include CMAKE_INSTALL_INCLUDEDIR.) Both the
# targets and anyctx.pc carry the ANYCTX_DEBUG / ANYCTX_SITES values of this
# build; a user file compiled with others fails to link (anyctx/ctx/config.h).

include_guard(GLOBAL)
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(ANYCTX_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/anyctx")

install(TARGETS anyctx anyctx_harness
  EXPORT anyctxTargets
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  FILE_SET HEADERS DESTINATION "${CMAKE_INSTALL_INCLUDEDIR}")
install(EXPORT anyctxTargets
  NAMESPACE anyctx::
  DESTINATION "${ANYCTX_INSTALL_CMAKEDIR}")

configure_package_config_file(
  "${CMAKE_CURRENT_LIST_DIR}/anyctxConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/anyctxConfig.cmake"
  INSTALL_DESTINATION "${ANYCTX_INSTALL_CMAKEDIR}")
# 0.x: a minor version may break the API, so 0.2 accepts 0.2.* only.
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/anyctxConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES
  "${PROJECT_BINARY_DIR}/anyctxConfig.cmake"
  "${PROJECT_BINARY_DIR}/anyctxConfigVersion.cmake"
  DESTINATION "${ANYCTX_INSTALL_CMAKEDIR}")

# anyctx.pc finds the prefix from its own place (${pcfiledir}), so the tree
# installed with --prefix P can be used from P, wherever P is.
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  message(FATAL_ERROR "anyctx.pc: give CMAKE_INSTALL_LIBDIR and CMAKE_INSTALL_INCLUDEDIR "
                      "relative to the prefix")
endif()
file(RELATIVE_PATH _anyctx_pc_to_prefix "/P/${CMAKE_INSTALL_LIBDIR}/pkgconfig" "/P")
string(REGEX REPLACE "/$" "" _anyctx_pc_to_prefix "${_anyctx_pc_to_prefix}")
set(ANYCTX_PC_PREFIX "\${pcfiledir}/${_anyctx_pc_to_prefix}")
list(TRANSFORM ANYCTX_CONFIG_DEFINITIONS PREPEND "-D" OUTPUT_VARIABLE _anyctx_pc_defs)
list(JOIN _anyctx_pc_defs " " ANYCTX_PC_DEFINITIONS)
configure_file("${CMAKE_CURRENT_LIST_DIR}/anyctx.pc.in" "${PROJECT_BINARY_DIR}/anyctx.pc" @ONLY)
install(FILES "${PROJECT_BINARY_DIR}/anyctx.pc"
  DESTINATION "${CMAKE_INSTALL_LIBDIR}/pkgconfig")
