# The steps of the install tests, run by ctest as `cmake -D... -P run.cmake`.
#
#   STEP=install          cmake --install the build tree into PREFIX; check the layout
#   STEP=find_package     build consumer/ against PREFIX with find_package; run it
#   STEP=pkg_config       compile consumer.c with the flags pkg-config gives; run it
#   STEP=add_subdirectory build consumer/ with the source tree added as a subdirectory
#
# Inputs: STEP, PREFIX, LIBDIR, WORK, BUILD_DIR, SOURCE_DIR, CONFIG, VERSION,
# GENERATOR, CXX_COMPILER, C_COMPILER, HAS_CLI.
cmake_minimum_required(VERSION 3.25)

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(JOIN " " line ${ARGN})
    message(FATAL_ERROR "failed (${rc}): ${line}\n${out}\n${err}")
  endif()
  set(run_output "${out}" PARENT_SCOPE)
endfunction()

# Every consumer prints this one line; the tokens are compared across builds.
set(expected_line "^nucleus ${VERSION} tokens:( [0-9]+)+\n$")
function(check_consumers)
  set(first "")
  foreach(program ${ARGN})
    run(${program})
    if(NOT run_output MATCHES "${expected_line}")
      message(FATAL_ERROR "${program} printed '${run_output}', expected '${expected_line}'")
    endif()
    if(first STREQUAL "")
      set(first "${run_output}")
    elseif(NOT run_output STREQUAL first)
      message(FATAL_ERROR "${program} printed '${run_output}' but the first consumer '${first}'")
    endif()
    message(STATUS "${program}: ${run_output}")
  endforeach()
endfunction()

set(configure_args -G "${GENERATOR}" -DCMAKE_BUILD_TYPE=${CONFIG}
    -DCMAKE_CXX_COMPILER=${CXX_COMPILER} -DCMAKE_C_COMPILER=${C_COMPILER})

if(STEP STREQUAL "install")
  file(REMOVE_RECURSE "${PREFIX}")
  run(${CMAKE_COMMAND} --install "${BUILD_DIR}" --prefix "${PREFIX}" --config ${CONFIG})
  set(files
    include/nucleus/nucleus.h include/nucleus/engine.h include/nucleus/sampling.h
    include/nucleus/status.h include/nucleus/dump.h
    ${LIBDIR}/libnucleus.a ${LIBDIR}/libnucleus.so
    ${LIBDIR}/cmake/nucleus/nucleusConfig.cmake
    ${LIBDIR}/cmake/nucleus/nucleusConfigVersion.cmake
    ${LIBDIR}/cmake/nucleus/nucleusTargets.cmake
    ${LIBDIR}/pkgconfig/nucleus.pc)
  if(HAS_CLI)
    list(APPEND files bin/nucleus)
  endif()
  foreach(file ${files})
    if(NOT EXISTS "${PREFIX}/${file}")
      message(FATAL_ERROR "not installed: ${PREFIX}/${file}")
    endif()
  endforeach()
  if(HAS_CLI)
    run("${PREFIX}/bin/nucleus" --version)
    if(NOT run_output MATCHES "nucleus ${VERSION}")
      message(FATAL_ERROR "nucleus --version printed '${run_output}'")
    endif()
  endif()

elseif(STEP STREQUAL "find_package")
  set(build "${WORK}/find_package")
  file(REMOVE_RECURSE "${build}")
  run(${CMAKE_COMMAND} -S "${SOURCE_DIR}/tests/install/consumer" -B "${build}" ${configure_args}
      "-DCMAKE_PREFIX_PATH=${PREFIX}" "-DCONSUMER_EXPECTED_PREFIX=${PREFIX}")
  run(${CMAKE_COMMAND} --build "${build}" --config ${CONFIG})
  check_consumers("${build}/consumer_c_shared" "${build}/consumer_c_static" "${build}/consumer_cxx")

elseif(STEP STREQUAL "pkg_config")
  set(build "${WORK}/pkg_config")
  file(REMOVE_RECURSE "${build}")
  file(MAKE_DIRECTORY "${build}")
  find_program(PKG_CONFIG NAMES pkg-config pkgconf REQUIRED)
  set(ENV{PKG_CONFIG_PATH} "${PREFIX}/${LIBDIR}/pkgconfig")
  run(${PKG_CONFIG} --modversion nucleus)
  if(NOT run_output STREQUAL "${VERSION}\n")
    message(FATAL_ERROR "pkg-config --modversion nucleus printed '${run_output}'")
  endif()
  run(${PKG_CONFIG} --cflags --libs nucleus)
  separate_arguments(flags UNIX_COMMAND "${run_output}")
  message(STATUS "pkg-config --cflags --libs nucleus: ${run_output}")
  set(source "${SOURCE_DIR}/tests/install/consumer/consumer.c")
  set(c_flags -std=c99 -Wall -Wextra -Wpedantic -Werror)
  # Shared: -lnucleus finds libnucleus.so, which names its own dependencies.
  run(${C_COMPILER} ${c_flags} "${source}" ${flags} -o "${build}/consumer_shared")
  # Static: the archive plus what --static adds (oneTBB, the C++ runtime).
  run(${PKG_CONFIG} --static --libs nucleus)
  separate_arguments(static_flags UNIX_COMMAND "${run_output}")
  if(NOT "-ltbb" IN_LIST static_flags)
    message(FATAL_ERROR "pkg-config --static --libs nucleus lacks -ltbb: ${run_output}")
  endif()
  list(TRANSFORM static_flags REPLACE "^-lnucleus$" "${PREFIX}/${LIBDIR}/libnucleus.a")
  run(${PKG_CONFIG} --cflags nucleus)
  separate_arguments(cflags UNIX_COMMAND "${run_output}")
  run(${C_COMPILER} ${c_flags} ${cflags} "${source}" ${static_flags} -o "${build}/consumer_static")
  # The C++ headers through -I (not CMake's -isystem, which hides warnings
  # a consumer's own flags would raise: designated initialisers that leave
  # out a member, under -Wextra).
  run(${CXX_COMPILER} -std=c++20 -Wall -Wextra -Wpedantic -Werror -fsyntax-only ${cflags}
      "${SOURCE_DIR}/tests/install/consumer/consumer.cc")
  set(ENV{LD_LIBRARY_PATH} "${PREFIX}/${LIBDIR}")
  check_consumers("${build}/consumer_shared" "${build}/consumer_static")

elseif(STEP STREQUAL "add_subdirectory")
  set(build "${WORK}/add_subdirectory")
  file(REMOVE_RECURSE "${build}")
  run(${CMAKE_COMMAND} -S "${SOURCE_DIR}/tests/install/consumer" -B "${build}" ${configure_args}
      "-DCONSUMER_NUCLEUS_SOURCE_DIR=${SOURCE_DIR}")
  # Only the consumers and the library they need.
  run(${CMAKE_COMMAND} --build "${build}" --config ${CONFIG} --parallel 2
      --target consumer_cxx consumer_c_static)
  check_consumers("${build}/consumer_c_static" "${build}/consumer_cxx")

else()
  message(FATAL_ERROR "unknown STEP '${STEP}'")
endif()
