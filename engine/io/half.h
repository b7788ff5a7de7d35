// Bit-exact conversions between float32 and the two 16-bit float formats a
// dump may hold. The row kernels widen halves with Eigen; these scalar forms
// serve the I/O layer, the dump writers (which must round float32 down to
// half) and the tests, none of which is on a hot path.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

#include "nucleus/sampling.h"

namespace nucleus::detail {

// IEEE binary16 bits to float32 (exact: every half is a float).
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  uint32_t bits;
  if (exponent == 0x1f) {  // inf or NaN: keep the payload
    bits = sign | 0x7f800000u | (mantissa << 13);
  } else if (exponent != 0) {  // normal
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13);
  } else if (mantissa == 0) {  // signed zero
    bits = sign;
  } else {  // subnormal: normalise it, since every half subnormal is a float normal
    int shift = 0;
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      ++shift;
    }
    mantissa &= 0x3ffu;
    bits = sign | (static_cast<uint32_t>(113 - shift) << 23) | (mantissa << 13);
  }
  return std::bit_cast<float>(bits);
}

// float32 to IEEE binary16 bits, rounding to nearest even (what NumPy's
// astype(float16) does); overflow gives inf, NaN stays NaN.
inline uint16_t float_to_half_bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t abs = x & 0x7fffffffu;
  if (abs >= 0x7f800000u) {  // inf or NaN
    return static_cast<uint16_t>(sign | 0x7c00u | (abs > 0x7f800000u ? 0x200u : 0u));
  }
  if (abs >= 0x47800000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65536: inf
  if (abs < 0x38800000u) {  // below the smallest half normal: a subnormal or zero
    // Add 0.5 so that the float adder performs the round-to-nearest-even
    // at the half subnormal step (2^-24), then read the low mantissa bits.
    const float shifted = std::bit_cast<float>(abs) + 0.5f;
    return static_cast<uint16_t>(sign | (std::bit_cast<uint32_t>(shifted) - 0x3f000000u));
  }
  const uint32_t mantissa_odd = (abs >> 13) & 1u;
  // Rebias the exponent (-112 << 23) and round to nearest even; a carry out
  // of the mantissa correctly bumps the exponent (up to inf past 65504).
  const uint32_t rounded = abs + 0xc8000fffu + mantissa_odd;
  return static_cast<uint16_t>(sign | (rounded >> 13));
}

// bfloat16 bits to float32 (exact: bfloat16 is the top half of a float).
inline float bfloat16_bits_to_float(uint16_t b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

// The 16-bit float `bits` of a row of `dtype` (kFloat16 or kBFloat16) as
// float32.
inline float half_to_float(uint16_t bits, DType dtype) {
  return dtype == DType::kFloat16 ? half_bits_to_float(bits) : bfloat16_bits_to_float(bits);
}

// Element i of a row of `dtype` (any of the three) as float32.
inline float value_to_float(const void* data, DType dtype, int64_t i) {
  if (dtype == DType::kFloat32) return static_cast<const float*>(data)[i];
  return half_to_float(static_cast<const uint16_t*>(data)[i], dtype);
}

// float32 to bfloat16 bits, rounding to nearest even; NaN stays NaN.
inline uint16_t float_to_bfloat16_bits(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  const uint32_t rounding = 0x7fffu + ((x >> 16) & 1u);
  return static_cast<uint16_t>((x + rounding) >> 16);
}

}  // namespace nucleus::detail
