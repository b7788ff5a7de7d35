// Runs a pass over a row's segments, in parallel when the row has the cores to
// itself, with the engine's instruction set's passes. Each segment writes only
// its own partial result; callers combine the partials in segment order, so
// the outcome never depends on the thread count.
#pragma once

#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <thread>

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
  // Two passes over the same n segments, the second needing every result of
  // the first (a scan's max, then the exp pass): first(i) for every i, then
  // between() once, then second(i) for every i. Split, they cost one fork
  // and join instead of two. Threads claim segments, each its own share
  // first (its cache holds what its first pass read), then what is left of
  // the others'; a thread that runs out waits only for segments another
  // thread has claimed and is running, so the passes never wait on a thread
  // that has not started (oneTBB may run every part on one thread).
  template <typename F, typename B, typename G>
  void two_passes(int64_t n, F&& first, B&& between, G&& second) const {
    const int64_t parts =
        std::min<int64_t>(n, std::max(tbb::this_task_arena::max_concurrency(), 1));
    if (!parallel || parts < 2 || n > kMaxClaimed) {
      (*this)(n, first);
      between();
      (*this)(n, second);
      return;
    }
    std::array<std::atomic<bool>, kMaxClaimed> first_claimed{}, second_claimed{};
    std::atomic<int64_t> first_done{0};
    std::atomic<int> stage{0};  // 0: first passes, 1: between() running, 2: second passes
    auto claim_all = [&](std::array<std::atomic<bool>, kMaxClaimed>& claimed, int64_t p, auto&& f,
                         std::atomic<int64_t>* done) {
      // (own share first, then the rest in order)
      const int64_t lo = p * n / parts, hi = (p + 1) * n / parts;
      for (int64_t k = 0; k < n; ++k) {
        const int64_t i = k < hi - lo ? lo + k : (k - (hi - lo) < lo ? k - (hi - lo) : k);
        if (claimed[static_cast<size_t>(i)].exchange(true, std::memory_order_relaxed)) continue;
        f(i);
        if (done) done->fetch_add(1, std::memory_order_release);
      }
    };
    auto wait_until = [](auto&& ready) {
      for (int spins = 0; !ready(); ++spins) {
        if (spins >= 64) std::this_thread::yield();
      }
    };
    tbb::parallel_for(
        int64_t{0}, parts,
        [&](int64_t p) {
          claim_all(first_claimed, p, first, &first_done);
          wait_until([&] { return first_done.load(std::memory_order_acquire) == n; });
          int expected = 0;
          if (stage.compare_exchange_strong(expected, 1, std::memory_order_acquire)) {
            between();
            stage.store(2, std::memory_order_release);
          } else {
            wait_until([&] { return stage.load(std::memory_order_acquire) == 2; });
          }
          claim_all(second_claimed, p, second, nullptr);
        },
        tbb::static_partitioner{});
  }
  // The most segments two_passes claims one by one (16 of a 256k row).
  static constexpr int64_t kMaxClaimed = 64;

  // A pass with a compare or two per token (a scan, a gather), or one that
  // skips most of its blocks: on one 128k row it takes a few microseconds, less
  // than handing chunks to other threads costs, so it runs on this one.
  template <typename F>
  void serial(int64_t n, F&& f) const {
    for (int64_t i = 0; i < n; ++i) f(i);
  }
  // Heavy per token, but only over `tokens()` of them: split when that is
  // enough to pay for it (counted only when there are threads to split over).
  static constexpr int64_t kSplitFrom = 32768;
  template <typename Tokens, typename F>
  void over(Tokens&& tokens, int64_t n, F&& f) const {
    if (parallel && n > 1 && tokens() >= kSplitFrom) {
      (*this)(n, f);
    } else {
      serial(n, f);
    }
  }
};

}  // namespace nucleus::detail
