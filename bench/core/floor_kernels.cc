// The benchmark's baselines (floor_kernels.h), compiled once per instruction set.
#include "engine/kernels/isa_prologue.h"
// (the prologue must come first)
#include <immintrin.h>

#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>

#include "bench/core/floor_kernels.h"

namespace nucleus::bench::NUCLEUS_KERNEL_ISA {
namespace {

namespace ei = Eigen::internal;

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
// buffer that stays in L1; an exp over the cast expression itself would not
// be vectorised.
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

// One pass over float32 values: each lane keeps its running max and its sum
// of exp(x - that max); where some lane's max rises (rarely, after the first
// packets of a row), every lane's sum is rescaled by exp(old - new max)
// before the packet's terms are added. Two sums hide the adds' latency.
// Eigen's own exp (pexp), as before. (Starting from the lowest finite
// float, not -inf, keeps -inf values, and lanes that have seen only them,
// from making NaN.)
struct Online {
  using Packet = ei::packet_traits<float>::type;
  static constexpr int64_t kP = ei::packet_traits<float>::size;
  Packet m = ei::pset1<Packet>(std::numeric_limits<float>::lowest());
  Packet s0 = ei::pset1<Packet>(0.0f), s1 = ei::pset1<Packet>(0.0f);
  float tail_max = std::numeric_limits<float>::lowest();
  double tail = 0.0;  // the values past the last whole pair of packets

  void add(const float* x, int64_t n) {
    int64_t i = 0;
    for (; i + 2 * kP <= n; i += 2 * kP) {
      const Packet a = ei::ploadu<Packet>(x + i), b = ei::ploadu<Packet>(x + i + kP);
      const Packet top = ei::pmax(a, b);
      if (ei::predux_any(ei::pcmp_lt(m, top))) {
        const Packet risen = ei::pmax(m, top);
        const Packet scale = ei::pexp(ei::psub(m, risen));
        s0 = ei::pmul(s0, scale);
        s1 = ei::pmul(s1, scale);
        m = risen;
      }
      s0 = ei::padd(s0, ei::pexp(ei::psub(a, m)));
      s1 = ei::padd(s1, ei::pexp(ei::psub(b, m)));
    }
    for (; i < n; ++i) {
      if (x[i] > tail_max) {
        tail *= std::exp(static_cast<double>(tail_max) - x[i]);
        tail_max = x[i];
      }
      tail += std::exp(static_cast<double>(x[i]) - tail_max);
    }
  }

  // {max, Σ exp(x - max)} of everything added.
  Mass mass() const {
    const float lanes_max = ei::predux_max(m);
    const Packet to_max = ei::pexp(ei::psub(m, ei::pset1<Packet>(lanes_max)));
    return combined(Mass{lanes_max, ei::predux(ei::pmul(ei::padd(s0, s1), to_max))},
                    Mass{tail_max, tail});
  }
};

// Half types are widened a chunk at a time into a buffer in L1 (widen), and
// the chunk goes through the same pass.
Mass slice_mass(const void* x, DType dtype, int64_t n) {
  return typed(x, dtype, [n](const auto* p) {
    using T = std::remove_cv_t<std::remove_pointer_t<decltype(p)>>;
    Online online;
    if constexpr (std::is_same_v<T, float>) {
      online.add(p, n);
    } else {
      alignas(64) float buf[kWiden];
      for (int64_t j = 0; j < n; j += kWiden) {
        const int64_t len = std::min(kWiden, n - j);
        widen(p + j, len, buf);
        online.add(buf, len);
      }
    }
    return online.mass();
  });
}

}  // namespace
}  // namespace nucleus::bench::NUCLEUS_KERNEL_ISA

namespace nucleus::bench {

extern const FloorKernels NUCLEUS_CAT(floor_kernels_, NUCLEUS_KERNEL_ISA);
const FloorKernels NUCLEUS_CAT(floor_kernels_, NUCLEUS_KERNEL_ISA) = {
    Isa::NUCLEUS_KERNEL_ISA_ENUM,
    &NUCLEUS_KERNEL_ISA::read_f32,
    &NUCLEUS_KERNEL_ISA::read_u16,
    &NUCLEUS_KERNEL_ISA::slice_mass,
};

}  // namespace nucleus::bench
