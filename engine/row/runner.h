// Runs a pass over a row's segments, in parallel when the row has the cores to
// itself, with the engine's instruction set's passes. Each segment writes only
// its own partial result; callers combine the partials in segment order, so
// the outcome never depends on the thread count.
#pragma once

#include <tbb/parallel_for.h>

#include <cstdint>

#include "engine/kernels/row_kernels.h"

namespace nucleus::detail {

struct Runner {
  bool parallel = false;
  const Kernels* k = nullptr;

  template <typename F>
  void operator()(int64_t n, F&& f) const {
    if (parallel && n > 1) {
      tbb::parallel_for(int64_t{0}, n, [&](int64_t i) { f(i); });
    } else {
      for (int64_t i = 0; i < n; ++i) f(i);
    }
  }
};

}  // namespace nucleus::detail
