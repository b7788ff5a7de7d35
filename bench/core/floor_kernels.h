// The benchmark's baselines (bench_core.h): a streaming read and the softmax
// floor, compiled once per instruction set like the engine's passes, so that a
// run compares the engine with baselines built for the same instruction set.
#pragma once

#include <cmath>
#include <cstdint>

#include "nucleus/engine.h"
#include "nucleus/sampling.h"

namespace nucleus::bench {

// A slice's max and Σ exp(x - max): slices combine into their row's as
// Σ sum_i · exp(max_i - max).
struct Mass {
  float max = 0.0f;
  double sum = 0.0;
};

// The mass of two slices together.
inline Mass combined(const Mass& a, const Mass& b) {
  const float max = a.max < b.max ? b.max : a.max;
  return Mass{max, a.sum * std::exp(static_cast<double>(a.max) - max) +
                       b.sum * std::exp(static_cast<double>(b.max) - max)};
}

struct FloorKernels {
  Isa isa;
  // Σ x over one slice (float32), or Σ of the 16-bit words (f16 / bf16): one
  // vectorised read.
  double (*read_f32)(const float* x, int64_t n);
  double (*read_u16)(const uint16_t* x, int64_t n);
  // One pass over a row or a slice of one (the floor of a row split across
  // threads, as the engine splits one): its max and Σ exp(x - max).
  Mass (*slice_mass)(const void* x, DType dtype, int64_t n);
};

const FloorKernels& floor_kernels_for(Isa isa);

}  // namespace nucleus::bench
