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

// A read of every 16-bit word into 16-bit lanes that wrap (the sum is only
// a sink): a byte costs what read_f32's does. (Widening each word to 32 bits
// first made the half-precision roofline bound by its shuffles, 30-45 %
// below the float32 one at equal bytes.)
double read_u16(const uint16_t* x, int64_t n) {
  constexpr int64_t kLanes = 64;
  alignas(64) uint16_t acc[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) acc[l] = static_cast<uint16_t>(acc[l] + x[j + l]);
  }
  uint32_t total = 0;
  for (; j < n; ++j) total += x[j];
  for (const uint16_t a : acc) total += a;
  return total;
}

// Half types are widened a chunk at a time (Eigen's vectorised cast) into a
// buffer that stays in L1, once for the max and once for the exp-sum; an exp
// over the cast expression itself would not be vectorised.
constexpr int64_t kWiden = 4096;

template <typename T>
void widen(const T* p, int64_t n, float* buf) {
  using ArrF = Eigen::ArrayXf;
  using ArrT = Eigen::Array<T, Eigen::Dynamic, 1>;
  if constexpr (std::is_same_v<T, Eigen::bfloat16>) {
    // The top half of a float32 (Eigen 3.4 casts these one at a time).
    const auto* h = reinterpret_cast<const uint16_t*>(p);
    for (int64_t i = 0; i < n; ++i) buf[i] = std::bit_cast<float>(uint32_t{h[i]} << 16);
  } else {
    // float16: F16C's conversion where the build has it, as the engine.
    int64_t i = 0;
#if defined(__F16C__)
    const auto* h = reinterpret_cast<const uint16_t*>(p);
    for (; i + 8 <= n; i += 8) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + i));
      _mm256_storeu_ps(buf + i, _mm256_cvtph_ps(v));
    }
#endif
    Eigen::Map<ArrF>(buf + i, n - i) = Eigen::Map<const ArrT>(p + i, n - i).template cast<float>();
  }
}

template <typename T>
float max_of(const T* p, int64_t n) {
  using ArrF = Eigen::ArrayXf;
  if constexpr (std::is_same_v<T, float>) {
    return Eigen::Map<const ArrF>(p, n).maxCoeff();
  } else {
    alignas(64) float buf[kWiden];
    float m = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < n; j += kWiden) {
      const int64_t len = std::min(kWiden, n - j);
      widen(p + j, len, buf);
      m = std::max(m, Eigen::Map<const ArrF>(buf, len).maxCoeff());
    }
    return m;
  }
}

template <typename T>
double exp_sum(const T* p, int64_t n, float m) {
  using ArrF = Eigen::ArrayXf;
  if constexpr (std::is_same_v<T, float>) {
    return static_cast<double>((Eigen::Map<const ArrF>(p, n) - m).exp().sum());
  } else {
    alignas(64) float buf[kWiden];
    double z = 0.0;
    for (int64_t j = 0; j < n; j += kWiden) {
      const int64_t len = std::min(kWiden, n - j);
      widen(p + j, len, buf);
      z += static_cast<double>((Eigen::Map<const ArrF>(buf, len) - m).exp().sum());
    }
    return z;
  }
}

// Calls f with the row pointer typed by its dtype.
template <typename F>
auto typed(const void* x, DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat16:
      return f(static_cast<const Eigen::half*>(x));
    case DType::kBFloat16:
      return f(static_cast<const Eigen::bfloat16*>(x));
    case DType::kFloat32:
      break;
  }
  return f(static_cast<const float*>(x));
}

float slice_max(const void* x, DType dtype, int64_t n) {
  return typed(x, dtype, [n](const auto* p) { return max_of(p, n); });
}

double slice_exp_sum(const void* x, DType dtype, int64_t n, float m) {
  return typed(x, dtype, [n, m](const auto* p) { return exp_sum(p, n, m); });
}

double softmax_floor(const void* row, DType dtype, int64_t vocab) {
  return slice_exp_sum(row, dtype, vocab, slice_max(row, dtype, vocab));
}

}  // namespace
}  // namespace nucleus::bench::NUCLEUS_KERNEL_ISA

namespace nucleus::bench {

extern const FloorKernels NUCLEUS_CAT(floor_kernels_, NUCLEUS_KERNEL_ISA);
const FloorKernels NUCLEUS_CAT(floor_kernels_, NUCLEUS_KERNEL_ISA) = {
    Isa::NUCLEUS_KERNEL_ISA_ENUM,   &NUCLEUS_KERNEL_ISA::read_f32,
    &NUCLEUS_KERNEL_ISA::read_u16,  &NUCLEUS_KERNEL_ISA::softmax_floor,
    &NUCLEUS_KERNEL_ISA::slice_max, &NUCLEUS_KERNEL_ISA::slice_exp_sum,
};

}  // namespace nucleus::bench
