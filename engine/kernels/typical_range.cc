// typical_e_range (engine/kernels/row_kernels.h), compiled once for the
// baseline instruction set: the kernel builds call it once a pass.
#include <algorithm>
#include <bit>
#include <cstdint>

#include "engine/kernels/row_kernels.h"

namespace nucleus::detail {

ERange typical_e_range(double mu, float c) {
  if (!(c < kInf)) return {-kInf, kInf};
  const auto m = static_cast<float>(mu);
  auto ok = [&](float e) { return typical_key(e, mu) <= c; };
  if (!ok(m)) return {kInf, -kInf};  // (c below every key)
  // Floats in order as integers (-0 and +0 as one).
  auto ord = [](float f) -> int64_t {
    const auto b = std::bit_cast<int32_t>(f);
    return b >= 0 ? b : -static_cast<int64_t>(b & 0x7fffffff);
  };
  auto flt = [](int64_t o) {
    return o >= 0 ? std::bit_cast<float>(static_cast<uint32_t>(o))
                  : std::bit_cast<float>(static_cast<uint32_t>(-o) | 0x80000000u);
  };
  // Each side: `in` holds, `out` does not (or lies past the finite floats).
  auto bisect = [&](int64_t in, int64_t out) {
    while (in - out > 1 || out - in > 1) {
      const int64_t mid = in + (out - in) / 2;
      (ok(flt(mid)) ? in : out) = mid;
    }
    return flt(in);
  };
  const float lo = bisect(ord(m), ord(-kMaxFloat) - 1);
  const float hi = bisect(ord(m), ord(kMaxFloat) + 1);
  return {lo, std::min(hi, kUnderflow)};
}

}  // namespace nucleus::detail
