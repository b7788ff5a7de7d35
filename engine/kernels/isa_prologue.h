// Included first by every kernel source that is compiled once per
// instruction set (engine/CMakeLists.txt passes NUCLEUS_KERNEL_ISA, the
// namespace of that build, e.g. avx512, and NUCLEUS_KERNEL_ISA_ENUM, its Isa).
//
// Inline functions and templates compiled with different -march flags must
// never be merged by the linker: the copy it keeps could carry instructions
// the CPU running another path lacks. So everything these sources define
// lives in nucleus::detail::<isa>, Eigen included: its namespace is renamed
// per build below, which makes each build's Eigen instantiations distinct
// symbols. tests/isa_symbols_test checks the objects for anything that
// escapes.
#pragma once

#if !defined(NUCLEUS_KERNEL_ISA) || !defined(NUCLEUS_KERNEL_ISA_ENUM)
#error "a kernel source is compiled once per instruction set by engine/CMakeLists.txt"
#endif

#define NUCLEUS_CAT_(a, b) a##b
#define NUCLEUS_CAT(a, b) NUCLEUS_CAT_(a, b)
#define Eigen NUCLEUS_CAT(nucleus_eigen_, NUCLEUS_KERNEL_ISA)
// The build's table of passes (engine/kernels/row_kernels.h), e.g. kernels_avx512.
#define NUCLEUS_KERNEL_TABLE NUCLEUS_CAT(kernels_, NUCLEUS_KERNEL_ISA)
