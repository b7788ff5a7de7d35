// The benchmark's baselines (floor_kernels.h), compiled once per instruction set.
#include "engine/kernels/isa_prologue.h"
// (the prologue must come first)
#include <immintrin.h>

#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <cstdint>
#include <limits>
#include <type_traits>

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
  using ArrF = Eigen::ArrayXf;
  if constexpr (std::is_same_v<T, float>) {
    Eigen::Map<const ArrF> a(p, vocab);
    const float m = a.maxCoeff();
    return static_cast<double>((a - m).exp().sum());
  } else {
    // Half types: widened a chunk at a time (Eigen's vectorised cast) into
    // a buffer that stays in L1, once for the max and once for the exp-sum;
    // an exp over the cast expression itself would not be vectorised.
    constexpr int64_t kChunk = 4096;
    alignas(64) float buf[kChunk];
    using ArrT = Eigen::Array<T, Eigen::Dynamic, 1>;
    float m = -std::numeric_limits<float>::infinity();
    auto widen = [&](int64_t j, int64_t n) {
      if constexpr (std::is_same_v<T, Eigen::bfloat16>) {
        // The top half of a float32 (Eigen 3.4 casts these one at a time).
        const auto* h = reinterpret_cast<const uint16_t*>(p + j);
        for (int64_t i = 0; i < n; ++i) buf[i] = std::bit_cast<float>(uint32_t{h[i]} << 16);
      } else {
        // float16: F16C's conversion where the build has it, as the engine.
        int64_t i = 0;
#if defined(__F16C__)
        const auto* h = reinterpret_cast<const uint16_t*>(p + j);
        for (; i + 8 <= n; i += 8) {
          const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i));
          _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(v));
        }
#endif
        Eigen::Map<ArrF>(buf + i, n - i) =
            Eigen::Map<const ArrT>(p + j + i, n - i).template cast<float>();
      }
    };
    for (int64_t j = 0; j < vocab; j += kChunk) {
      const int64_t n = std::min(kChunk, vocab - j);
      widen(j, n);
      m = std::max(m, Eigen::Map<const ArrF>(buf, n).maxCoeff());
    }
    double z = 0.0;
    for (int64_t j = 0; j < vocab; j += kChunk) {
      const int64_t n = std::min(kChunk, vocab - j);
      widen(j, n);
      z += static_cast<double>((Eigen::Map<const ArrF>(buf, n) - m).exp().sum());
    }
    return z;
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
