// The benchmark's baselines (floor_kernels.h), compiled once per instruction set.
#include "engine/kernels/isa_prologue.h"
// (the prologue must come first)
#include <Eigen/Core>

#include "bench/core/floor_kernels.h"

namespace nucleus::bench::NUCLEUS_KERNEL_ISA {
namespace {

double read_f32(const float* x, int64_t n) {
  return static_cast<double>(Eigen::Map<const Eigen::ArrayXf>(x, n).sum());
}

double read_u16(const uint16_t* x, int64_t n) {
  uint32_t acc = 0;
  for (int64_t j = 0; j < n; ++j) acc += x[j];
  return acc;
}

template <typename T>
double softmax_of(const T* p, int64_t vocab) {
  Eigen::Map<const Eigen::Array<T, Eigen::Dynamic, 1>> a(p, vocab);
  if constexpr (std::is_same_v<T, float>) {
    const float m = a.maxCoeff();
    return static_cast<double>((a - m).exp().sum());
  } else {
    const float m = a.template cast<float>().maxCoeff();
    return static_cast<double>((a.template cast<float>() - m).exp().sum());
  }
}

double softmax_floor(const void* row, DType dtype, int64_t vocab) {
  switch (dtype) {
    case DType::kFloat16:
      return softmax_of(static_cast<const Eigen::half*>(row), vocab);
    case DType::kBFloat16:
      return softmax_of(static_cast<const Eigen::bfloat16*>(row), vocab);
    case DType::kFloat32:
      break;
  }
  return softmax_of(static_cast<const float*>(row), vocab);
}

}  // namespace
}  // namespace nucleus::bench::NUCLEUS_KERNEL_ISA

namespace nucleus::bench {

extern const FloorKernels NUCLEUS_CAT(floor_kernels_, NUCLEUS_KERNEL_ISA);
const FloorKernels NUCLEUS_CAT(floor_kernels_, NUCLEUS_KERNEL_ISA) = {
    Isa::NUCLEUS_KERNEL_ISA_ENUM,
    &NUCLEUS_KERNEL_ISA::read_f32,
    &NUCLEUS_KERNEL_ISA::read_u16,
    &NUCLEUS_KERNEL_ISA::softmax_floor,
};

}  // namespace nucleus::bench
