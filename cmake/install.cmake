# Installation: headers, the library both static and shared, the nucleus
# program, a CMake package (find_package(nucleus) -> nucleus::nucleus) and a
# pkg-config file. Included from the top-level CMakeLists.txt after the
# library and the tools are defined.
#
# The installed libraries are two targets of their own, nucleus_static and
# nucleus_shared, archived / linked from the object files of the `nucleus`
# target (nothing is compiled twice). `nucleus` itself links Eigen and the
# warning flags privately; for a static library CMake would export those as
# link dependencies, and consumers would need Eigen. The two installed targets
# link only what the object files need (oneTBB), so Eigen and Random123 stay
# build-time dependencies.

option(NUCLEUS_INSTALL "Generate the install rules (library, headers, program, package files)"
       ${NUCLEUS_TOP_LEVEL})
if(NOT NUCLEUS_INSTALL)
  return()
endif()

include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(NUCLEUS_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/nucleus)

# The baseline objects, then each instruction set's kernels, lowest first
# (cmake/isa.cmake).
set(NUCLEUS_ALL_OBJECTS $<TARGET_OBJECTS:nucleus>)
foreach(isa IN LISTS NUCLEUS_ISAS)
  list(APPEND NUCLEUS_ALL_OBJECTS $<TARGET_OBJECTS:nucleus_kernels_${isa}>)
endforeach()
foreach(kind IN ITEMS static shared)
  string(TOUPPER ${kind} KIND)
  set(target nucleus_${kind})
  add_library(${target} ${KIND} ${NUCLEUS_ALL_OBJECTS})
  add_library(nucleus::${target} ALIAS ${target})
  # Only object files, so CMake cannot infer the link language.
  set_target_properties(${target} PROPERTIES
    OUTPUT_NAME nucleus
    LINKER_LANGUAGE CXX
    EXPORT_NAME ${target}
    ARCHIVE_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/lib
    LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/lib)
  target_include_directories(${target} INTERFACE
    $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
    $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
  # The C++ headers use std::span; C consumers only need nucleus.h.
  target_compile_features(${target} INTERFACE cxx_std_20)
  target_link_libraries(${target} PRIVATE TBB::tbb)
endforeach()
# Before 1.0 a minor release may change the ABI, so the soname carries it:
# the installed library's, and the build's `nucleus` too when it is shared
# (BUILD_SHARED_LIBS), since the installed program links that one and must
# need the installed library's soname, not the bare development link.
set_target_properties(nucleus_shared nucleus PROPERTIES
  VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR})

# nucleus::nucleus in the package is the same kind as the build's `nucleus`.
get_target_property(NUCLEUS_LIBRARY_TYPE nucleus TYPE)
if(NUCLEUS_LIBRARY_TYPE STREQUAL "SHARED_LIBRARY")
  set(NUCLEUS_DEFAULT_KIND shared)
else()
  set(NUCLEUS_DEFAULT_KIND static)
endif()

install(TARGETS nucleus_static nucleus_shared
  EXPORT nucleusTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/nucleus
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  FILES_MATCHING PATTERN "*.h")
if(TARGET nucleus_cli)
  install(TARGETS nucleus_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  if(NUCLEUS_DEFAULT_KIND STREQUAL "shared")
    # The program links the shared library: find it next to itself once installed.
    file(RELATIVE_PATH NUCLEUS_BIN_TO_LIB ${CMAKE_INSTALL_FULL_BINDIR} ${CMAKE_INSTALL_FULL_LIBDIR})
    set_target_properties(nucleus_cli PROPERTIES INSTALL_RPATH "$ORIGIN/${NUCLEUS_BIN_TO_LIB}")
  endif()
endif()

install(EXPORT nucleusTargets
  NAMESPACE nucleus::
  DESTINATION ${NUCLEUS_CMAKE_DIR})
configure_package_config_file(
  ${CMAKE_CURRENT_LIST_DIR}/nucleusConfig.cmake.in
  ${PROJECT_BINARY_DIR}/nucleusConfig.cmake
  INSTALL_DESTINATION ${NUCLEUS_CMAKE_DIR})
# Before 1.0 only the same minor version is compatible.
write_basic_package_version_file(
  ${PROJECT_BINARY_DIR}/nucleusConfigVersion.cmake
  VERSION ${PROJECT_VERSION}
  COMPATIBILITY SameMinorVersion)
install(FILES
  ${PROJECT_BINARY_DIR}/nucleusConfig.cmake
  ${PROJECT_BINARY_DIR}/nucleusConfigVersion.cmake
  DESTINATION ${NUCLEUS_CMAKE_DIR})

# pkg-config: paths relative to the .pc file's own directory, so the install
# can be moved (or given another prefix at `cmake --install` time).
set(NUCLEUS_PC_DIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}" OR IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  # A distribution layout with absolute directories cannot be relocated.
  set(NUCLEUS_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(NUCLEUS_PC_INCLUDEDIR "${CMAKE_INSTALL_FULL_INCLUDEDIR}")
  set(NUCLEUS_PC_LIBDIR "${CMAKE_INSTALL_FULL_LIBDIR}")
else()
  file(RELATIVE_PATH NUCLEUS_PC_UP /prefix/${NUCLEUS_PC_DIR} /prefix)
  string(REGEX REPLACE "/$" "" NUCLEUS_PC_UP "${NUCLEUS_PC_UP}")
  set(NUCLEUS_PC_PREFIX "\${pcfiledir}/${NUCLEUS_PC_UP}")
  set(NUCLEUS_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
  set(NUCLEUS_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
endif()
configure_file(${CMAKE_CURRENT_LIST_DIR}/nucleus.pc.in ${PROJECT_BINARY_DIR}/nucleus.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/nucleus.pc DESTINATION ${NUCLEUS_PC_DIR})
