#include "engine/parallel/residency.h"

#include <algorithm>
#include <chrono>

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#include <x86intrin.h>
#define NUCLEUS_HAS_TSC 1
#endif

namespace nucleus::detail {
namespace {

// The time-stamp counter, read after every earlier instruction has completed
// (loads included) and before any later one starts; elsewhere the steady
// clock in nanoseconds.
inline uint64_t now() {
#if defined(NUCLEUS_HAS_TSC)
  _mm_lfence();
  const uint64_t t = __rdtsc();
  _mm_lfence();
  return t;
#else
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   std::chrono::steady_clock::now().time_since_epoch())
                                   .count());
#endif
}

// Every line of [at, at + kProbeBytes) loaded, in four independent chains
// (the library's baseline instructions: the probe is not a kernel).
uint64_t read_ticks(const char* at) {
  const uint64_t t0 = now();
  uint64_t a = 0, b = 0, c = 0, d = 0;
  for (int64_t i = 0; i < kProbeBytes; i += 256) {
    a += *reinterpret_cast<const volatile unsigned char*>(at + i);
    b += *reinterpret_cast<const volatile unsigned char*>(at + i + 64);
    c += *reinterpret_cast<const volatile unsigned char*>(at + i + 128);
    d += *reinterpret_cast<const volatile unsigned char*>(at + i + 192);
  }
  uint64_t sum = (a + b) + (c + d);
  asm volatile("" : "+r"(sum));
  return now() - t0;
}

}  // namespace

uint64_t clock_overhead() {
  uint64_t least = ~uint64_t{0};
  for (int i = 0; i < 5; ++i) {
    const uint64_t t0 = now();
    least = std::min(least, now() - t0);
  }
  return least;
}

ProbeTimes probe_read(const char* at) {
  ProbeTimes t;
  t.first = read_ticks(at);
  t.second = read_ticks(at);
  return t;
}

bool looks_from_memory(ProbeTimes t) {
  return t.first > t.second &&
         static_cast<double>(t.first) >= kMemoryRatio * static_cast<double>(t.second);
}

bool rows_from_memory(const char* data, int64_t row_bytes, int64_t valid_bytes) {
  if (valid_bytes < kProbeBytes) return false;
  return looks_from_memory(probe_read(data + row_bytes));
}

}  // namespace nucleus::detail
