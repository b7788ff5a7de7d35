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

  // A pass with an exp (or as much work) per token: split across threads.
  template <typename F>
  void operator()(int64_t n, F&& f) const {
    if (parallel && n > 1) {
      tbb::parallel_for(
          int64_t{0}, n, [&](int64_t i) { f(i); }, tbb::static_partitioner{});
    } else {
      for (int64_t i = 0; i < n; ++i) f(i);
    }
  }
  // A pass with a compare or two per token (a scan, a gather), or one that
  // skips most of its blocks: on one 128k row it takes a few microseconds, less
  // than handing chunks to other threads costs, so it runs on this one.
  template <typename F>
  void serial(int64_t n, F&& f) const {
    for (int64_t i = 0; i < n; ++i) f(i);
  }
  // Heavy per token, but only over `tokens()` of them: split when that is
  // enough to pay for it (counted only when there are threads to split over).
  template <typename Tokens, typename F>
  void over(Tokens&& tokens, int64_t n, F&& f) const {
    constexpr int64_t kSplitFrom = 32768;
    if (parallel && n > 1 && tokens() >= kSplitFrom) {
      (*this)(n, f);
    } else {
      serial(n, f);
    }
  }
};

}  // namespace nucleus::detail
