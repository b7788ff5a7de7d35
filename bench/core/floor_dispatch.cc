#include "bench/core/floor_kernels.h"

namespace nucleus::bench {

extern const FloorKernels floor_kernels_sse2;
extern const FloorKernels floor_kernels_avx2;
extern const FloorKernels floor_kernels_avx512;

const FloorKernels& floor_kernels_for(Isa isa) {
  switch (isa) {
    case Isa::kAVX512:
      return floor_kernels_avx512;
    case Isa::kAVX2:
      return floor_kernels_avx2;
    case Isa::kSSE2:
    case Isa::kAuto:
      break;
  }
  return floor_kernels_sse2;
}

}  // namespace nucleus::bench
