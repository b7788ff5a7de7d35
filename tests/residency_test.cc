// The probe that tells a batch coming from memory from one in cache
// (engine/parallel/residency.h): it decides only whether rows read the next
// row ahead (never results), but a probe that could not tell the two apart
// would leave ReadAhead::kAuto's gain to chance. The verdict's rule is
// tested on given times; on the machine's own reads, only what holds on
// every machine: a read from memory is slower than the same read from L1,
// and a read from L1 is not kMemoryRatio times slower than itself. How much
// slower memory is differs between machines (5.6-20x for flushed rows on
// the development machine, mostly under 8x on another), so the verdict on flushed
// rows is recorded, not asserted. Each case is tried several times and most
// tries must agree: the machine may stall any one of them.
#include "engine/parallel/residency.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <emmintrin.h>
#endif

namespace nucleus::detail {
namespace {

constexpr int64_t kRowBytes = 2 * kProbeBytes;
constexpr int kTries = 9;

// Two rows of kRowBytes, the second one's bytes all read (so in L1 and L2).
struct Batch {
  std::vector<char> bytes = std::vector<char>(2 * kRowBytes, 1);
  const char* data() const { return bytes.data(); }
  void read_second_row() {
    uint64_t sum = 0;
    for (int64_t i = kRowBytes; i < 2 * kRowBytes; i += 64) {
      sum += static_cast<unsigned char>(bytes[static_cast<size_t>(i)]);
    }
    ASSERT_EQ(sum, static_cast<uint64_t>(kRowBytes / 64));
  }
#if defined(__x86_64__) || defined(_M_X64)
  // The second row's lines flushed from every cache.
  void flush_second_row() {
    for (int64_t i = kRowBytes; i < 2 * kRowBytes; i += 64) _mm_clflush(bytes.data() + i);
    _mm_mfence();
  }
#endif
};

TEST(Residency, TheVerdictIsTheRatioOfTheTwoReads) {
  const auto ticks = [](double second) { return static_cast<uint64_t>(kMemoryRatio * second); };
  EXPECT_TRUE(looks_from_memory({ticks(200), 200}));
  EXPECT_TRUE(looks_from_memory({ticks(200) + 1, 200}));
  EXPECT_FALSE(looks_from_memory({ticks(200) - 1, 200}));
  EXPECT_FALSE(looks_from_memory({200, 200}));
  EXPECT_FALSE(looks_from_memory({100, 200}));
  EXPECT_TRUE(looks_from_memory({1, 0}));
  // (a clock that could not tell the two reads apart says nothing)
  EXPECT_FALSE(looks_from_memory({0, 0}));
}

TEST(Residency, RowsJustReadAreFoundInCache) {
  Batch batch;
  int cached = 0;
  for (int t = 0; t < kTries; ++t) {
    batch.read_second_row();
    batch.read_second_row();
    cached += rows_from_memory(batch.data(), kRowBytes, kRowBytes) ? 0 : 1;
  }
  EXPECT_GT(cached, kTries / 2);
}

TEST(Residency, RowsFromMemoryReadSlowerTheFirstTime) {
  {
    Batch hot;
    hot.read_second_row();
    const ProbeTimes t = probe_read(hot.data() + kRowBytes);
    if (2 * clock_overhead() > t.second) {
      GTEST_SKIP() << "the clock's overhead (" << clock_overhead() << ") rivals a read from L1 ("
                   << t.second << "): no probe can tell here";
    }
  }
  // A batch of 64 MiB (more than the caches hold), written whole; then
  // batches of two rows taken from its start, where the write began long
  // ago, and flushed from every cache too (x86-64) before each probe.
  constexpr int64_t kBatch = int64_t{64} << 20;
  std::vector<char> big(static_cast<size_t>(kBatch), 1);
  int slower_first = 0;
  auto flush = [](const char* rows) {
#if defined(__x86_64__) || defined(_M_X64)
    for (int64_t i = kRowBytes; i < 2 * kRowBytes; i += 64) _mm_clflush(rows + i);
    _mm_mfence();
#else
    (void)rows;
#endif
  };
  for (int t = 0; t < kTries; ++t) {
    const char* rows = big.data() + t * 2 * kRowBytes;
    flush(rows);
    // The probe rows_from_memory takes (of the second row), its times and
    // verdict recorded. (A majority: an interrupt in one try's second read
    // may outlast its first.)
    const ProbeTimes times = probe_read(rows + kRowBytes);
    RecordProperty("try" + std::to_string(t),
                   std::to_string(times.first) + " " + std::to_string(times.second) +
                       (looks_from_memory(times) ? " memory" : " cache"));
    slower_first += times.first > times.second ? 1 : 0;
  }
  EXPECT_GT(slower_first, kTries / 2);
}

TEST(Residency, RowsShorterThanTheProbeAreNotProbed) {
  // (the probe would read past the row's readable bytes)
  Batch batch;
  for (int t = 0; t < kTries; ++t) {
#if defined(__x86_64__) || defined(_M_X64)
    batch.flush_second_row();
#endif
    EXPECT_FALSE(rows_from_memory(batch.data(), kRowBytes, kProbeBytes - 1));
  }
}

}  // namespace
}  // namespace nucleus::detail
