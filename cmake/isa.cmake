# Kernel sources compiled once per x86-64 instruction set and chosen at run
# time (engine/kernels/dispatch.cc). Each build lives in its own namespace,
# Eigen's included (engine/kernels/isa_prologue.h), and its objects are linked
# into `target` after the target's own, the lowest set first.
if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$")
  message(FATAL_ERROR "nucleus's row kernels are written for x86-64 (found ${CMAKE_SYSTEM_PROCESSOR})")
endif()
set(NUCLEUS_ISAS sse2 avx2 avx512)
set(NUCLEUS_ISA_ENUM_sse2 kSSE2)
set(NUCLEUS_ISA_ENUM_avx2 kAVX2)
set(NUCLEUS_ISA_ENUM_avx512 kAVX512)
set(NUCLEUS_ISA_FLAGS_sse2 -march=x86-64 -mtune=generic)
set(NUCLEUS_ISA_FLAGS_avx2 -march=x86-64-v3 -mtune=generic)
set(NUCLEUS_ISA_FLAGS_avx512 -march=x86-64-v4 -mtune=generic -mprefer-vector-width=512)

# nucleus_add_isa_sources(<target> <name> <source>...): object libraries
# <name>_<isa>, one per instruction set, linked into <target>.
function(nucleus_add_isa_sources target name)
  foreach(isa IN LISTS NUCLEUS_ISAS)
    set(objects ${name}_${isa})
    add_library(${objects} OBJECT ${ARGN})
    target_compile_features(${objects} PRIVATE cxx_std_20)
    target_include_directories(${objects}
      PRIVATE ${PROJECT_SOURCE_DIR} ${PROJECT_SOURCE_DIR}/include)
    target_link_libraries(${objects} PRIVATE Eigen3::Eigen nucleus_warnings)
    target_compile_definitions(${objects}
      PRIVATE NUCLEUS_KERNEL_ISA=${isa} NUCLEUS_KERNEL_ISA_ENUM=${NUCLEUS_ISA_ENUM_${isa}})
    target_compile_options(${objects} PRIVATE ${NUCLEUS_ISA_FLAGS_${isa}})
    # GCC 12 reports its own AVX-512 intrinsic header (`__m512 __Y = __Y;`,
    # the idiom for an undefined register) as (maybe-)uninitialised when the
    # intrinsics are inlined into ours (GCC bug 105593, fixed in GCC 13); the
    # warning is about GCC's header.
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      target_compile_options(${objects} PRIVATE -Wno-maybe-uninitialized)
      if(CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
        target_compile_options(${objects} PRIVATE -Wno-uninitialized)
      endif()
    endif()
    target_sources(${target} PRIVATE $<TARGET_OBJECTS:${objects}>)
  endforeach()
endfunction()
