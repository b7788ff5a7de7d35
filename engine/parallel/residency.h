// Whether a batch's rows come from memory or from cache, told by how fast a
// piece of one of them reads (ReadAhead::kAuto's rule below 32 MiB).
#pragma once

#include <cstdint>

namespace nucleus::detail {

// The probe: kProbeBytes of the batch's second row read twice, timed each
// time. Read from memory, the first read takes many times the second (which
// finds the bytes in L1): on the development machine (Zen 5) 21-31x for
// rows of batches sampled in turn, 5.6-20x for rows flushed from the
// caches (so about half of those count as cached), against
// ~2-7x for rows in L3 (a batch of 8-16 rows of 128256 float32 sampled again
// and again) and ~1x in L2. From kMemoryRatio on, the rows count as coming
// from memory.
inline constexpr int64_t kProbeBytes = 32 * 1024;
inline constexpr double kMemoryRatio = 8.0;

// The two reads' times (time-stamp counter ticks, or nanoseconds without
// one) of the kProbeBytes from `at`.
struct ProbeTimes {
  uint64_t first = 0;
  uint64_t second = 0;
};
ProbeTimes probe_read(const char* at);

// The least time between two readings of the probe's clock (of five): what
// every timed read includes. Where it rivals the second read's time (a
// virtual machine that traps the time-stamp counter), it dilutes the ratio
// below kMemoryRatio, so rows count as cached, and a test of the probe can
// say nothing (tests/residency_test.cc skips).
uint64_t clock_overhead();

// The verdict on one probe: the first read took kMemoryRatio times the
// second or more (and longer than it: two reads the clock could not tell
// apart say nothing).
bool looks_from_memory(ProbeTimes t);

// Whether a batch of two rows or more (`row_bytes` apart from `data`, the
// first `valid_bytes` of each readable) looks like coming from memory: the
// probe of its second row reads kMemoryRatio times slower the first time.
// False when its rows are shorter than the probe.
bool rows_from_memory(const char* data, int64_t row_bytes, int64_t valid_bytes);

}  // namespace nucleus::detail
