#include "bench/core/floor_kernels.h"

#include "engine/kernels/row_kernels.h"

namespace nucleus::bench {

extern const FloorKernels floor_kernels_sse2;
extern const FloorKernels floor_kernels_avx2;
extern const FloorKernels floor_kernels_avx512;

const FloorKernels& floor_kernels_for(Isa isa) {
  return detail::for_isa(isa, floor_kernels_sse2, floor_kernels_avx2, floor_kernels_avx512);
}

}  // namespace nucleus::bench
