// Helpers shared by the fuzz targets: a reader that turns the fuzzer's bytes
// into choices, and a check that stops the run when an invariant breaks.
//
// The targets are plain functions (fuzz/dump_targets.h, fuzz/engine_targets.h)
// so that tests/fuzz_regression_test.cc can replay the seed corpus and every
// saved crash under GCC without libFuzzer; the *_fuzzer.cc files only wrap
// them in LLVMFuzzerTestOneInput.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

namespace nucleus::fuzz {

// An invariant of the library broke: report it and abort, which libFuzzer
// records as a crash (and a replaying test as a failure).
[[noreturn]] inline void Fail(const char* what, long long a = 0, long long b = 0) {
  std::fprintf(stderr, "fuzz invariant broken: %s (%lld, %lld)\n", what, a, b);
  std::fflush(stderr);
  std::abort();
}

// The same, with a message (a Status text) that explains the failure.
[[noreturn]] inline void FailWith(const char* what, const char* message) {
  std::fprintf(stderr, "fuzz invariant broken: %s: %s\n", what, message);
  std::fflush(stderr);
  std::abort();
}

#define NUCLEUS_FUZZ_CHECK(cond, ...)                                     \
  do {                                                                    \
    if (!(cond)) ::nucleus::fuzz::Fail(#cond __VA_OPT__(, ) __VA_ARGS__); \
  } while (0)

// Consumes the input from the front. Once it is exhausted every read gives
// zero, so any input, even an empty one, is a valid case: the fuzzer never
// wastes time on inputs that are "too short".
class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  size_t remaining() const { return size_ - pos_; }

  uint8_t Byte() { return pos_ < size_ ? data_[pos_++] : 0; }

  template <typename T>
  T Bits() {
    T value{};
    unsigned char bytes[sizeof(T)] = {};
    const size_t n = sizeof(T) < remaining() ? sizeof(T) : remaining();
    if (n > 0) std::memcpy(bytes, data_ + pos_, n);
    pos_ += n;
    std::memcpy(&value, bytes, sizeof(T));
    return value;
  }

  // A value in [lo, hi] (inclusive); lo when the input is exhausted.
  int64_t Range(int64_t lo, int64_t hi) {
    const uint64_t span = static_cast<uint64_t>(hi) - static_cast<uint64_t>(lo);
    uint64_t v = span < 0x100 ? Byte() : span < 0x10000 ? Bits<uint16_t>() : Bits<uint32_t>();
    if (span != UINT64_MAX) v %= span + 1;
    return static_cast<int64_t>(static_cast<uint64_t>(lo) + v);
  }

  bool Bool() { return (Byte() & 1) != 0; }
  // True about once in `n` draws (n >= 1).
  bool OneIn(int n) { return Range(0, n - 1) == 0; }

  // Up to `max` bytes, length first.
  std::vector<uint8_t> Bytes(size_t max) {
    const auto n = static_cast<size_t>(Range(0, static_cast<int64_t>(max)));
    const size_t take = n < remaining() ? n : remaining();
    std::vector<uint8_t> out(data_ + pos_, data_ + pos_ + take);
    pos_ += take;
    return out;
  }

  std::vector<uint8_t> Rest() {
    std::vector<uint8_t> out(data_ + pos_, data_ + size_);
    pos_ = size_;
    return out;
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// A small, fast generator for bulk values the fuzzer should not have to
// spell out byte by byte (a 20000-token row is made from one seed).
class SplitMix {
 public:
  explicit SplitMix(uint64_t seed) : state_(seed) {}
  uint64_t Next() {
    uint64_t z = (state_ += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // Roughly normal (sum of four uniforms), mean 0, standard deviation ~1.
  float Normal() {
    double s = 0.0;
    for (int i = 0; i < 4; ++i) s += static_cast<double>(Next() >> 11) * 0x1.0p-53;
    return static_cast<float>((s - 2.0) * 1.7320508);
  }

 private:
  uint64_t state_;
};

}  // namespace nucleus::fuzz
