// The benchmark's baselines (bench_core.h): a streaming read and the softmax
// floor, compiled once per instruction set like the engine's passes, so that a
// run compares the engine with baselines built for the same instruction set.
#pragma once

#include <cstdint>

#include "nucleus/engine.h"
#include "nucleus/sampling.h"

namespace nucleus::bench {

struct FloorKernels {
  Isa isa;
  // Σ x over one slice (float32), or Σ of the 16-bit words (f16 / bf16): one
  // vectorised read.
  double (*read_f32)(const float* x, int64_t n);
  double (*read_u16)(const uint16_t* x, int64_t n);
  // One fused max pass and one exp-sum pass over a row: Σ exp(x - max).
  double (*softmax_floor)(const void* row, DType dtype, int64_t vocab);
  // Its two passes over a slice of a row (the floor of a row split across
  // threads, as the engine splits one): the max, and Σ exp(x - m).
  float (*slice_max)(const void* x, DType dtype, int64_t n);
  double (*slice_exp_sum)(const void* x, DType dtype, int64_t n, float m);
};

const FloorKernels& floor_kernels_for(Isa isa);

}  // namespace nucleus::bench
