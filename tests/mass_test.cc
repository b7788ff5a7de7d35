// The masses exp(-(d - d0)) that every pass forms (engine/kernels/block_ops.h,
// mass_exp), on every instruction set this machine runs: within a few float
// ulps of the exact exp wherever they are kept, exactly 0 past kUnderflow, and the
// same bits from a row pass (moments) as from the pass over a gathered list
// (entry_masses), which the selects rely on when they total a list's masses
// against the row's.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "engine/io/half.h"
#include "engine/kernels/row_kernels.h"
#include "nucleus/engine.h"

namespace nucleus {
namespace {

using detail::kUnderflow;

// n values in [lo, hi) from a fixed linear congruential sequence.
std::vector<float> LcgRow(size_t n, uint32_t seed, float lo, float hi) {
  std::vector<float> x(n);
  uint32_t state = seed;
  for (float& v : x) {
    state = state * 1664525u + 1013904223u;
    v = static_cast<float>(state >> 8) / static_cast<float>(1 << 24) * (hi - lo) + lo;
  }
  return x;
}

// Every `step`-th float from 0 up to kUnderflow, and the edges.
std::vector<float> Exponents(uint32_t step) {
  std::vector<float> e;
  const uint32_t last = std::bit_cast<uint32_t>(kUnderflow);
  for (uint32_t b = 0; b <= last; b += step) e.push_back(std::bit_cast<float>(b));
  e.push_back(kUnderflow);
  e.push_back(1.0f);
  e.push_back(0.5f);
  return e;
}

TEST(Masses, WithinFourUlpsAndZeroPastUnderflow) {
  for (Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const detail::Kernels& k = detail::kernels_for(isa);
    std::vector<float> e = Exponents(97);
    // Past kUnderflow (the least of them one float above it): exactly 0.
    const std::vector<float> past = {std::nextafter(kUnderflow, 100.0f), 87.5f, 100.0f, 1e30f,
                                     std::numeric_limits<float>::infinity()};
    const size_t kept = e.size();
    e.insert(e.end(), past.begin(), past.end());
    std::vector<detail::SelectEntry> list;
    for (float v : e) list.push_back(detail::SelectEntry{v, v});
    k.entry_masses(list.data(), static_cast<int64_t>(list.size()));
    // The polynomial's ulp or so, 2^-22 (measured over every float of the
    // interval: 1.3e-7 on SSE2 and AVX2; 1.65e-7 on AVX-512, whose table
    // entries are rounded too).
    double worst = 0.0;
    float worst_at = 0.0f;
    for (size_t i = 0; i < kept; ++i) {
      const double exact = std::exp(-static_cast<double>(e[i]));
      const double err = std::abs(static_cast<double>(list[i].weight) - exact) / exact;
      if (err > worst) worst = err, worst_at = e[i];
    }
    EXPECT_LE(worst, std::ldexp(1.0, -22)) << "at e = " << worst_at;
    for (size_t i = kept; i < e.size(); ++i) EXPECT_EQ(list[i].weight, 0.0f) << "e = " << e[i];
  }
}

TEST(Masses, RowPassesAndListsAgreeToTheBit) {
  for (Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const detail::Kernels& k = detail::kernels_for(isa);
    // A row whose distances from its max (0) are the exponents: x = -e, in a
    // length that leaves a tail after the last whole packet and pass block.
    std::vector<float> e = Exponents(1031);
    e.resize(e.size() - e.size() % 512 + 333);
    std::vector<float> x;
    for (float v : e) x.push_back(-v);
    const auto n = static_cast<int64_t>(x.size());
    const detail::Segment seg{x.data(), nullptr, n, 0, nullptr, nullptr};
    detail::SetSpec set;  // xmax 0, scales 1, every token a member
    std::vector<float> e_out(x.size()), w_out(x.size());
    k.moments(seg, set, 0.0f, detail::MomentKind::kEntropy, e_out.data(), w_out.data());
    std::vector<detail::SelectEntry> list;
    for (float v : e) list.push_back(detail::SelectEntry{v, v});
    k.entry_masses(list.data(), n);
    int64_t differ = 0;
    for (int64_t j = 0; j < n; ++j) {
      differ += std::bit_cast<uint32_t>(list[j].weight) != std::bit_cast<uint32_t>(w_out[j]);
    }
    EXPECT_EQ(differ, 0) << "of " << n;
  }
}

}  // namespace
// The draw's walk: a target past the row's summed mass (rounding) gives the
// last member of positive mass, not the first of the last block (the walk
// had counted that block's mass as before it); a target inside it walks to
// the member whose share reaches it. Members at 0, 5, 600, 700, 1000.
TEST(Walk, PastTheMassIsTheLastMember) {
  std::vector<float> x(1024, -std::numeric_limits<float>::infinity());
  x[0] = 0.0f, x[5] = -1.0f, x[600] = 0.0f, x[700] = -2.0f, x[1000] = -3.0f;
  detail::Segment s;
  s.x = x.data();
  s.n = static_cast<int64_t>(x.size());
  detail::SetSpec set;
  set.xmax = 0.0f;
  for (Isa isa : runnable_isas()) {
    const detail::Kernels& k = detail::kernels_for(isa);
    std::vector<double> sums(2);
    int64_t members = 0;
    const double z = k.sum_mass(s, set, 0.0f, &members, sums.data());
    ASSERT_EQ(members, 5);
    for (double target :
         {z * (1 + 1e-15), z * (1 + 1e-6), std::numeric_limits<double>::infinity()}) {
      EXPECT_EQ(k.walk(s, set, 0.0f, sums.data(), 0.0, target), 1000)
          << isa_name(isa) << ", target " << target << " past Z " << z;
    }
    const double e = std::exp(-1.0), at600 = 1.0 + e + 1.0;
    EXPECT_EQ(k.walk(s, set, 0.0f, sums.data(), 0.0, 1e-9), 0) << isa_name(isa);
    EXPECT_EQ(k.walk(s, set, 0.0f, sums.data(), 0.0, 1.0 + e / 2), 5) << isa_name(isa);
    EXPECT_EQ(k.walk(s, set, 0.0f, sums.data(), 0.0, at600 - 0.5), 600) << isa_name(isa);
    EXPECT_EQ(k.walk(s, set, 0.0f, sums.data(), 0.0, at600 + 0.1), 700) << isa_name(isa);
  }
}

}  // namespace nucleus

namespace nucleus {
namespace {

// The smallest key of a set's members (min_key, the pass under llama.cpp's
// order when typical-p dropped the row's max) and the count of members below
// a key (count_key_below, the ranks'), on every instruction set: the scalar
// answers over the members, whatever the bounds, the scales, the tail after
// the last packet and pass block, and masked (-inf) tokens.
TEST(MemberKeys, SmallestKeyAndCountBelow) {
  // Each 512-token block 6 lower than the one before (keys from ~0, ~6, ~12,
  // ~18 up), so that passes given the scan's block maxima skip blocks.
  std::vector<float> x(3 * 512 + 77);
  uint32_t state = 12345;
  for (size_t i = 0; i < x.size(); ++i) {
    state = state * 1664525u + 1013904223u;
    x[i] = static_cast<float>(state >> 8) / static_cast<float>(1 << 24) * 20.0f - 10.0f -
           6.0f * static_cast<float>(i / 512);
  }
  x[100] = x[1600] = -std::numeric_limits<float>::infinity();
  std::vector<float> maxima(detail::block_count(static_cast<int64_t>(x.size())));
  detail::Segment s;
  s.x = x.data();
  s.n = static_cast<int64_t>(x.size());
  detail::SetSpec set;
  set.xmax = 10.0f;
  for (Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const detail::Kernels& k = detail::kernels_for(isa);
    k.max_stats(x.data(), s.n, maxima.data());
    for (const bool with_maxima : {false, true}) {
      SCOPED_TRACE(with_maxima ? "with block maxima" : "without block maxima");
      s.bmax = with_maxima ? maxima.data() : nullptr;
      for (const float key_scale : {1.0f, 1.7f}) {
        for (const auto& [lo, hi] : {std::pair{0.0f, detail::kMaxFloat}, std::pair{3.0f, 7.5f},
                                     std::pair{19.9f, 25.0f}, std::pair{30.0f, 40.0f}}) {
          set.dlo = lo, set.dhi = hi, set.key_scale = key_scale;
          float want = std::numeric_limits<float>::infinity();
          for (float v : x) {
            const float d = (set.xmax - v) * set.scale;
            if (d >= lo && d <= hi) want = std::min(want, (set.xmax - v) * key_scale);
          }
          EXPECT_EQ(k.min_key(s, set), want)
              << "d in [" << lo << ", " << hi << "], scale " << key_scale;
          // count_key_below (the ranks' pass) over the same members.
          for (const float below : {0.0f, 2.5f, 11.0f, 15.0f, 40.0f, 1e30f}) {
            int64_t count = 0;
            for (float v : x) {
              const float d = (set.xmax - v) * set.scale;
              count += (d >= lo && d <= hi && (set.xmax - v) * key_scale < below) ? 1 : 0;
            }
            EXPECT_EQ(k.count_key_below(s, set, below), count)
                << "d in [" << lo << ", " << hi << "], scale " << key_scale << ", below " << below;
          }
        }
      }
    }
    s.bmax = nullptr;
    // The smallest member in the tail, past every whole packet and block.
    std::vector<float> tail = x;
    tail.back() = 9.9995f;  // (in the last block, whose values lie below -8)
    s.x = tail.data();
    set.dlo = 0.0f, set.dhi = detail::kMaxFloat, set.key_scale = 1.0f;
    EXPECT_EQ(k.min_key(s, set), 10.0f - 9.9995f);
    s.x = x.data();
  }
}

// The mass pass's member count (sum_mass), on every instruction set: the
// scalar count of d = (xmax - x) scale <= dhi, whether or not any entry
// reaches past dhi (on AVX-512 an open-topped set is counted only then:
// -inf entries, distances past dhi or overflowed to +inf, the last entry of
// the tail past dhi, blocks skipped by their maxima), with the same total
// and block sums as without a count.
TEST(SumMass, CountsTheMembersOfOpenToppedSets) {
  const float big = 0.75f * detail::kMaxFloat;
  const std::vector<float> base = LcgRow(2 * 512 + 300, 777, -20.0f, 10.0f);
  struct Case {
    const char* what;
    float xmax, scale, dhi;
    std::vector<std::pair<size_t, float>> set_to;  // entries changed from base
  };
  const float inf = std::numeric_limits<float>::infinity();
  const size_t last = base.size() - 1;
  const Case cases[] = {
      {"every entry a member", 10.0f, 1.0f, detail::kMaxFloat, {}},
      {"every entry a member, scale 1.25", 10.0f, 1.25f, detail::kMaxFloat / 4, {}},
      {"-inf entries", 10.0f, 1.0f, detail::kMaxFloat, {{3, -inf}, {700, -inf}, {last, -inf}}},
      {"-inf entries from the second block on",
       10.0f,
       1.0f,
       detail::kMaxFloat,
       {{700, -inf}, {1030, -inf}}},
      {"a distance past dhi", 10.0f, 1.0f, 100.0f, {{5, -95.0f}, {1030, -89.5f}}},
      {"the tail's last entry past dhi", 10.0f, 1.0f, 100.0f, {{last, -95.0f}}},
      {"a distance overflowed", big, 1.0f, detail::kMaxFloat, {{0, big}, {9, -big}}},
      {"a scaled distance past dhi", 10.0f, 1e36f, detail::kMaxFloat / 4, {{600, -200.0f}}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::vector<float> x = base;
    for (const auto& [at, v] : c.set_to) x[at] = v;
    x[17] = c.xmax;
    detail::SetSpec set;
    set.xmax = c.xmax;
    set.scale = set.key_scale = c.scale;
    set.dhi = c.dhi;
    int64_t want = 0;
    for (float v : x) want += (set.xmax - v) * set.scale <= set.dhi ? 1 : 0;
    std::vector<float> maxima(detail::block_count(static_cast<int64_t>(x.size())));
    for (Isa isa : runnable_isas()) {
      SCOPED_TRACE(isa_name(isa));
      const detail::Kernels& k = detail::kernels_for(isa);
      k.max_stats(x.data(), static_cast<int64_t>(x.size()), maxima.data());
      for (const bool with_maxima : {false, true}) {
        SCOPED_TRACE(with_maxima ? "with block maxima" : "without block maxima");
        const detail::Segment s{x.data(),
                                nullptr,
                                static_cast<int64_t>(x.size()),
                                0,
                                with_maxima ? maxima.data() : nullptr,
                                nullptr};
        std::vector<double> sums(maxima.size()), sums_uncounted(maxima.size());
        int64_t members = -1;
        const double z = k.sum_mass(s, set, 0.0f, &members, sums.data());
        EXPECT_EQ(members, want);
        EXPECT_EQ(z, k.sum_mass(s, set, 0.0f, nullptr, sums_uncounted.data()));
        EXPECT_EQ(sums, sums_uncounted);
      }
    }
  }
  // Blocks skipped by their maxima hold no member: a set whose bound leaves
  // the second block out.
  std::vector<float> x = base;
  for (size_t i = 512; i < 1024; ++i) x[i] = -500.0f;
  x[17] = 10.0f;
  std::vector<float> maxima(detail::block_count(static_cast<int64_t>(x.size())));
  detail::SetSpec set;
  set.xmax = 10.0f;
  set.dhi = 100.0f;
  int64_t want = 0;
  for (float v : x) want += (set.xmax - v) * set.scale <= set.dhi ? 1 : 0;
  for (Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const detail::Kernels& k = detail::kernels_for(isa);
    k.max_stats(x.data(), static_cast<int64_t>(x.size()), maxima.data());
    const detail::Segment s{x.data(), nullptr,       static_cast<int64_t>(x.size()),
                            0,        maxima.data(), nullptr};
    int64_t members = -1;
    k.sum_mass(s, set, 0.0f, &members, nullptr);
    EXPECT_EQ(members, want);
  }
}

// top-p's wide-nucleus pass (sum_mass_band), on every instruction set: the
// total is sum_mass's to the bit; the members with d <= lo are counted
// exactly and their masses totalled; those in (lo, hi] are listed in token
// order with d as its key and the mass entry_masses gives it, to the bit.
// Sets with and without bounds, k0 = 0 and not, two scales (the forms the
// pass takes), over a row with -inf tokens, a tail past the last block and
// blocks that hold no member.
TEST(Band, TotalsBelowAndListsTheBand) {
  std::vector<float> x = LcgRow(5 * 512 + 77, 777, -12.0f, 12.0f);
  x[3] = x[700] = x.back() = -std::numeric_limits<float>::infinity();
  for (size_t i = 1024; i < 1536; ++i) x[i] -= 200.0f;  // a block past every set below
  std::vector<float> maxima(detail::block_count(static_cast<int64_t>(x.size())));
  const auto n = static_cast<int64_t>(x.size());
  for (Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const detail::Kernels& k = detail::kernels_for(isa);
    k.max_stats(x.data(), n, maxima.data());
    const detail::Segment s{x.data(), nullptr, n, 0, maxima.data(), nullptr};
    struct Case {
      float dlo, dhi, scale, k0, lo, hi;
    };
    for (const Case c :
         {Case{0.0f, detail::kMaxFloat, 1.0f, 0.0f, 5.0f, 9.0f},
          Case{0.0f, detail::kMaxFloat, 0.7f, 0.0f, 1.0f, 15.5f},
          Case{0.0f, 20.0f, 1.0f, 0.0f, 12.0f, 19.0f}, Case{2.0f, 21.0f, 1.3f, 2.0f, 8.0f, 8.5f},
          Case{0.0f, 30.0f, 1.0f, 0.5f, 0.0f, 29.0f},
          Case{0.0f, detail::kMaxFloat, 1.0f, 0.0f, 22.0f, 23.0f}}) {
      SCOPED_TRACE(::testing::Message()
                   << "d in [" << c.dlo << ", " << c.dhi << "], scale " << c.scale << ", k0 "
                   << c.k0 << ", band (" << c.lo << ", " << c.hi << "]");
      detail::SetSpec set;
      set.xmax = 12.0f;
      set.dlo = c.dlo, set.dhi = c.dhi, set.scale = set.key_scale = c.scale;
      std::vector<float> key(x.size() + 64), weight(x.size() + 64);
      int64_t listed = -1, below_count = -1;
      double below = -1.0;
      const double total = k.sum_mass_band(s, set, c.k0, c.lo, c.hi, key.data(), weight.data(),
                                           &listed, &below, &below_count);
      int64_t members = 0;
      EXPECT_EQ(total, k.sum_mass(s, set, c.k0, &members, nullptr));
      // The scalar answer: each member's d and mass.
      std::vector<detail::SelectEntry> under, band;
      for (float v : x) {
        const float d = (set.xmax - v) * set.scale;
        if (!(d >= c.dlo && d <= c.dhi)) continue;
        if (d <= c.lo) under.push_back(detail::SelectEntry{d, d - c.k0});
        if (d > c.lo && d <= c.hi) band.push_back(detail::SelectEntry{d, d - c.k0});
      }
      k.entry_masses(under.data(), static_cast<int64_t>(under.size()));
      k.entry_masses(band.data(), static_cast<int64_t>(band.size()));
      double want_below = 0.0;
      for (const detail::SelectEntry& e : under) want_below += e.weight;
      EXPECT_EQ(below_count, static_cast<int64_t>(under.size()));
      EXPECT_NEAR(below, want_below, 1e-6 * want_below);
      ASSERT_EQ(listed, static_cast<int64_t>(band.size()));
      ASSERT_GT(listed, 0);
      int64_t differ = 0;
      for (int64_t j = 0; j < listed; ++j) {
        differ += key[j] != band[j].key;
        differ += std::bit_cast<uint32_t>(weight[j]) != std::bit_cast<uint32_t>(band[j].weight);
      }
      EXPECT_EQ(differ, 0) << "of " << listed;
    }
  }
}

// top-p's gathering pass (sum_mass_gather), on every instruction set, with
// and without the block maxima (blocks whose maximum lies past the bound
// take the mass-only form): the total is sum_mass's to the bit, and the
// members with d <= bound are listed in token order with d as their key, to
// the bit, and their values and token ids. Sets with and without bounds,
// k0 = 0 and not, two scales, bounds that reach every block or only a few,
// over a row with -inf tokens, a tail past the last block, blocks far below
// the maximum and one that holds no member.
TEST(Gather, TotalsAndListsTheMembersWithinTheBound) {
  std::vector<float> x = LcgRow(6 * 512 + 77, 99, -12.0f, 12.0f);
  x[9] = x[1500] = x.back() = -std::numeric_limits<float>::infinity();
  for (size_t i = 512; i < 1024; ++i) x[i] -= 9.0f;     // blocks whose maxima lie
  for (size_t i = 1536; i < 2048; ++i) x[i] -= 7.0f;    // past the tighter bounds
  for (size_t i = 2048; i < 2560; ++i) x[i] -= 200.0f;  // a block past every set below
  const auto n = static_cast<int64_t>(x.size());
  std::vector<float> maxima(detail::block_count(n));
  std::vector<detail::GatheredToken> out(x.size() + 64);
  for (Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const detail::Kernels& k = detail::kernels_for(isa);
    k.max_stats(x.data(), n, maxima.data());
    struct Case {
      float dlo, dhi, scale, k0, bound;
    };
    for (const Case c :
         {Case{0.0f, detail::kMaxFloat, 1.0f, 0.0f, 2.5f},
          Case{0.0f, detail::kMaxFloat, 0.7f, 0.0f, 3.0f},
          Case{0.0f, detail::kMaxFloat, 1.0f, 0.0f, 0.0f},
          Case{0.0f, detail::kMaxFloat, 1.0f, 0.0f, 30.0f}, Case{0.0f, 20.0f, 1.0f, 0.0f, 4.0f},
          Case{1.0f, 21.0f, 1.3f, 1.0f, 5.0f}}) {
      SCOPED_TRACE(::testing::Message() << "d in [" << c.dlo << ", " << c.dhi << "], scale "
                                        << c.scale << ", k0 " << c.k0 << ", bound " << c.bound);
      detail::SetSpec set;
      set.xmax = 12.0f;
      set.dlo = c.dlo, set.dhi = c.dhi, set.scale = set.key_scale = c.scale;
      x[40] = set.xmax;
      k.max_stats(x.data(), n, maxima.data());
      // The scalar answer.
      std::vector<size_t> within;
      for (size_t i = 0; i < x.size(); ++i) {
        const float d = (set.xmax - x[i]) * set.scale;
        if (d >= c.dlo && d <= c.dhi && d <= c.bound) within.push_back(i);
      }
      ASSERT_FALSE(within.empty());
      const double z = k.sum_mass(detail::Segment{x.data(), nullptr, n, 0, nullptr, nullptr}, set,
                                  c.k0, nullptr, nullptr);
      for (const bool with_maxima : {false, true}) {
        SCOPED_TRACE(with_maxima ? "with block maxima" : "without block maxima");
        const detail::Segment s{x.data(), nullptr, n, 0, with_maxima ? maxima.data() : nullptr,
                                nullptr};
        int64_t got = -1;
        const double total = k.sum_mass_gather(s, set, c.k0, c.bound, n, out.data(), &got);
        EXPECT_EQ(total, z);
        ASSERT_EQ(got, static_cast<int64_t>(within.size()));
        int64_t differ = 0;
        for (size_t j = 0; j < within.size(); ++j) {
          const size_t i = within[j];
          differ += out[j].token != static_cast<int32_t>(i);
          differ += std::bit_cast<uint32_t>(out[j].x) != std::bit_cast<uint32_t>(x[i]);
          differ += out[j].key != (set.xmax - x[i]) * set.scale;
        }
        EXPECT_EQ(differ, 0) << "of " << got;
      }
    }
  }
}

// Large count targets' band pass (count_band), the compaction after a
// filter (compact) and a threshold's d range (key_bounds, from the values
// and from stored keys), on every
// instruction set, against the scalar answer:
// count_band counts the members with key <= lo and lists the keys in
// (lo, hi] in token order, bit-equal to (xmax - x) * key_scale, or, for
// typical keys, to typical_key(d - d0, mu) (+inf past kUnderflow); compact
// copies every member's value and token id in order. Sets with and without
// bounds, two scales that differ, a segment with token ids and one without
// block maxima, over a row with -inf tokens, a tail past the last block and
// blocks that hold no member.
TEST(CountBand, CountsBelowAndListsTheBand) {
  std::vector<float> x = LcgRow(5 * 512 + 77, 4242, -12.0f, 12.0f);
  x[5] = x[900] = x.back() = -std::numeric_limits<float>::infinity();
  for (size_t i = 1536; i < 2048; ++i) x[i] -= 200.0f;  // a block past every set below
  const auto n = static_cast<int64_t>(x.size());
  std::vector<float> maxima(detail::block_count(n));
  std::vector<int32_t> ids(x.size());
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = static_cast<int32_t>(7 * i + 3);
  for (Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    const detail::Kernels& k = detail::kernels_for(isa);
    k.max_stats(x.data(), n, maxima.data());
    struct Case {
      float dlo, dhi, scale, key_scale, lo, hi;
      bool typical = false;  // typical keys, d0 0.5, mu 6
    };
    const float inf = detail::kInf;
    for (const bool with_ids : {false, true}) {
      for (const bool with_maxima : {true, false}) {
        const detail::Segment s{x.data(), with_ids ? ids.data() : nullptr,       n,
                                100,      with_maxima ? maxima.data() : nullptr, nullptr};
        for (const Case c :
             {Case{0.0f, detail::kMaxFloat, 1.0f, 1.0f, 5.0f, 9.0f},
              Case{0.0f, detail::kMaxFloat, 0.7f, 1.4f, -inf, 3.0f},
              Case{0.0f, 20.0f, 1.0f, 1.0f, 12.0f, detail::kMaxFloat},
              Case{2.0f, 21.0f, 1.3f, 0.9f, 8.0f, 8.5f}, Case{0.0f, 3.0f, 1.0f, 1.0f, 0.5f, 2.5f},
              // (lo a member's key: counted, not listed)
              Case{0.0f, detail::kMaxFloat, 1.0f, 1.1f, (12.0f - x[100]) * 1.1f, 40.0f},
              Case{0.0f, detail::kMaxFloat, 1.0f, 1.0f, 1.0f, 3.0f, true},
              Case{2.0f, 21.0f, 1.3f, 1.3f, -inf, 0.5f, true},
              // (scale 8: d reaches 192, past kUnderflow: +inf keys, listed)
              Case{0.0f, detail::kMaxFloat, 8.0f, 8.0f, 4.0f, inf, true},
              Case{0.0f, 150.0f, 8.0f, 8.0f, 60.0f, 90.0f, true}}) {
          SCOPED_TRACE(::testing::Message()
                       << "d in [" << c.dlo << ", " << c.dhi << "], scales " << c.scale << " / "
                       << c.key_scale << ", band (" << c.lo << ", " << c.hi << "], ids " << with_ids
                       << ", maxima " << with_maxima << ", typical " << c.typical);
          detail::SetSpec set;
          set.xmax = 12.0f;
          set.dlo = c.dlo, set.dhi = c.dhi, set.scale = c.scale, set.key_scale = c.key_scale;
          detail::KeyRule rule;
          if (c.typical) rule = detail::KeyRule{detail::KeyKind::kTypical, false, 0.5f, 6.0};
          auto member_key = [&](size_t j) {  // (for a member)
            if (!c.typical) return (set.xmax - x[j]) * set.key_scale;
            const float e = (set.xmax - x[j]) * set.scale - rule.d0;
            return e <= detail::kUnderflow ? detail::typical_key(e, rule.mu) : inf;
          };
          int64_t want_below = 0;
          std::vector<float> want_band, want_x;
          std::vector<int32_t> want_ids;
          for (size_t j = 0; j < x.size(); ++j) {
            const float d = (set.xmax - x[j]) * set.scale;
            if (!(d >= c.dlo && d <= c.dhi)) continue;
            const float key = member_key(j);
            want_below += key <= c.lo ? 1 : 0;
            if (key > c.lo && key <= c.hi) want_band.push_back(key);
            want_x.push_back(x[j]);
            want_ids.push_back(s.token(static_cast<int64_t>(j)));
          }
          std::vector<float> key(x.size() + 64);
          int64_t below = -1;
          const int64_t listed = k.count_band(s, set, rule, c.lo, c.hi, key.data(), &below);
          EXPECT_EQ(below, want_below);
          ASSERT_EQ(listed, static_cast<int64_t>(want_band.size()));
          ASSERT_GT(listed, 0);
          int64_t differ = 0;
          for (int64_t j = 0; j < listed; ++j) {
            differ += std::bit_cast<uint32_t>(key[j]) != std::bit_cast<uint32_t>(want_band[j]);
          }
          EXPECT_EQ(differ, 0) << "of " << listed;
          std::vector<float> cx(x.size() + 64);
          std::vector<int32_t> ci(x.size() + 64);
          const int64_t kept = k.compact(s, set, cx.data(), ci.data());
          ASSERT_EQ(kept, static_cast<int64_t>(want_x.size()));
          cx.resize(static_cast<size_t>(kept));
          ci.resize(static_cast<size_t>(kept));
          EXPECT_EQ(cx, want_x);
          EXPECT_EQ(ci, want_ids);
          // key_bounds: the d range and count of the members with key <= c
          // (c = +inf: every member, +inf keys included).
          for (const float bound : {c.lo, c.hi, inf}) {
            detail::KeyBounds want;
            for (size_t j = 0; j < x.size(); ++j) {
              const float d = (set.xmax - x[j]) * set.scale;
              if (!(d >= c.dlo && d <= c.dhi) || !(member_key(j) <= bound)) continue;
              want.dmin = std::min(want.dmin, d);
              want.dmax = std::max(want.dmax, d);
              ++want.count;
            }
            const detail::KeyBounds got = k.key_bounds(s, set, rule, bound);
            EXPECT_EQ(got.count, want.count) << "c " << bound;
            EXPECT_EQ(got.dmin, want.dmin) << "c " << bound;
            EXPECT_EQ(got.dmax, want.dmax) << "c " << bound;
            if (!(bound < inf)) continue;
            // ... and from stored keys (+inf off the set), for c < +inf.
            std::vector<float> stored(x.size());
            for (size_t j = 0; j < x.size(); ++j) {
              const float d = (set.xmax - x[j]) * set.scale;
              stored[j] = d >= c.dlo && d <= c.dhi ? member_key(j) : inf;
            }
            const detail::KeyBounds from = k.stored_key_bounds(s, set, stored.data(), bound);
            EXPECT_EQ(from.count, want.count) << "c " << bound;
            EXPECT_EQ(from.dmin, want.dmin) << "c " << bound;
            EXPECT_EQ(from.dmax, want.dmax) << "c " << bound;
          }
        }
      }
    }
  }
}

// typical_e_range: e lies in [lo, hi] exactly when its typical key (+inf
// past kUnderflow) is <= c, checked at each end and its float neighbours,
// at float(mu) and at random e, for mu from 1e-3 to past kUnderflow and c
// from keys themselves (ties), keys nudged by an ulp, 0, below 0 and +inf.
TEST(TypicalERange, HoldsExactlyTheKeysAtMostC) {
  const float inf = detail::kInf;
  auto key = [inf](float e, double mu) {
    return e <= kUnderflow ? detail::typical_key(e, mu) : inf;
  };
  uint64_t state = 99;
  auto uniform = [&](double a, double b) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return a + (b - a) * static_cast<double>(state >> 11) / 9007199254740992.0;
  };
  int64_t checked = 0;
  for (const double mu : {1e-3, 0.37, 1.0, 2.718281828459045, 6.1, 13.000001, 86.9, 90.25}) {
    std::vector<float> cs = {0.0f, -1.0f, -inf, inf, 1e-6f, 3.0f, 100.0f};
    for (int i = 0; i < 12; ++i) {
      const float k = key(static_cast<float>(uniform(mu - 8.0, mu + 8.0)), mu);
      cs.insert(cs.end(), {k, std::nextafter(k, inf), std::nextafter(k, -inf)});
    }
    for (const float c : cs) {
      const detail::ERange r = detail::typical_e_range(mu, c);
      auto expect = [&](float e) {
        ++checked;
        EXPECT_EQ(r.lo <= e && e <= r.hi, key(e, mu) <= c)
            << "mu " << mu << " c " << c << " e " << e << " range [" << r.lo << ", " << r.hi << "]";
      };
      std::vector<float> es = {static_cast<float>(mu), 0.0f, kUnderflow,
                               std::nextafter(kUnderflow, inf)};
      for (float end : {r.lo, r.hi}) {
        if (!std::isfinite(end)) continue;
        float up = end, down = end;
        for (int i = 0; i < 3; ++i) {
          up = std::nextafter(up, inf);
          down = std::nextafter(down, -inf);
          es.insert(es.end(), {up, down});
        }
        es.push_back(end);
      }
      const double width = std::isfinite(c) && c > 0.0f ? 2.0 * c : 1.0;
      for (int i = 0; i < 40; ++i)
        es.push_back(static_cast<float>(uniform(mu - width, mu + width)));
      for (const float e : es) expect(e);
    }
  }
  EXPECT_GT(checked, 5000);
}

}  // namespace
}  // namespace nucleus

namespace nucleus {
namespace {

// The allowed-token bitmask's kernel, on every instruction set: a token
// whose bit is clear becomes -inf, every other keeps its value (its bits:
// -0, denormals, infinities and NaN included), over a range that starts
// past 0 and ends inside a word.
TEST(AllowedMask, ClearedBitsAreMinusInfinityAndTheRestUnchanged) {
  constexpr int64_t kVocab = 32 * 40 + 13;
  std::vector<int32_t> words(40 + 1);
  uint32_t state = 99;
  for (int32_t& w : words) {
    state = state * 1664525u + 1013904223u;
    w = static_cast<int32_t>(state);
  }
  words[3] = -1;  // all allowed
  words[4] = 0;   // none
  std::vector<float> row(kVocab);
  for (int64_t i = 0; i < kVocab; ++i) row[i] = static_cast<float>(i % 97) - 48.5f;
  row[64] = -0.0f, row[65] = std::numeric_limits<float>::denorm_min();
  row[66] = std::numeric_limits<float>::infinity(), row[67] = std::nanf("");
  for (Isa isa : runnable_isas()) {
    SCOPED_TRACE(isa_name(isa));
    std::vector<float> out = row;
    detail::kernels_for(isa).allowed_mask(words.data(), 64, kVocab, out.data());
    for (int64_t i = 0; i < kVocab; ++i) {
      const bool allowed = i < 64 || ((static_cast<uint32_t>(words[i / 32]) >> (i % 32)) & 1u);
      const float want = allowed ? row[i] : -std::numeric_limits<float>::infinity();
      ASSERT_EQ(std::bit_cast<uint32_t>(out[i]), std::bit_cast<uint32_t>(want)) << "token " << i;
    }
  }
}

// A sparse mask's candidates (gather_allowed) and the mask's count
// (allowed_count), on every instruction set: the allowed tokens below n (or
// those the mask leaves out) whose value exceeds -inf, in order, with their
// values, as a scalar loop finds them; words that allow nothing, all, or a few, and a sparse
// stretch (a bit in one word in seven); bits past n set, n inside a word's first or second half, in
// a last run of 16 words or past them; the count stopping past its limit.
TEST(GatherAllowed, TheAllowedFiniteTokensInOrder) {
  constexpr int64_t kWords = 150;
  std::vector<int32_t> words(kWords);
  uint32_t state = 7;
  for (int32_t& w : words) {
    state = state * 1664525u + 1013904223u;
    w = static_cast<int32_t>(state & (state >> 7));  // (about a quarter of the bits)
  }
  words[2] = 0;
  words[3] = -1;
  words[4] = -1;  // (a pair's low byte full)
  words[5] = 1 << 31;
  for (int64_t w = 60; w < 110; ++w) {
    words[static_cast<size_t>(w)] = w % 7 == 0 ? static_cast<int32_t>(1u << (w % 32)) : 0;
  }
  const std::vector<float> x = LcgRow(kWords * 32, 31, -9.0f, 9.0f);
  std::vector<float> row = x;
  row[3 * 32 + 4] = -std::numeric_limits<float>::infinity();
  for (const int64_t n : {int64_t{kWords * 32}, int64_t{kWords * 32 - 13}, int64_t{144 * 32 - 13},
                          int64_t{143 * 32 + 5}, int64_t{143 * 32 + 20}, int64_t{100}}) {
    SCOPED_TRACE(testing::Message() << "n " << n);
    int64_t allowed = 0;
    for (int64_t t = 0; t < n; ++t)
      allowed += (static_cast<uint32_t>(words[t / 32]) >> (t % 32)) & 1u;
    for (Isa isa : runnable_isas()) {
      SCOPED_TRACE(isa_name(isa));
      const detail::Kernels& k = detail::kernels_for(isa);
      EXPECT_EQ(k.allowed_count(words.data(), n, n), allowed);
      EXPECT_GT(k.allowed_count(words.data(), n, allowed / 2), allowed / 2);
    }
    for (const bool left_out : {false, true}) {
      SCOPED_TRACE(left_out ? "left out" : "allowed");
      std::vector<float> want_x;
      std::vector<int32_t> want_i;
      for (int64_t t = 0; t < n; ++t) {
        const bool bit = (static_cast<uint32_t>(words[t / 32]) >> (t % 32)) & 1u;
        if (bit == left_out) continue;
        if (row[t] > -std::numeric_limits<float>::infinity()) {
          want_x.push_back(row[t]);
          want_i.push_back(static_cast<int32_t>(t));
        }
      }
      for (Isa isa : runnable_isas()) {
        SCOPED_TRACE(isa_name(isa));
        const detail::Kernels& k = detail::kernels_for(isa);
        std::vector<float> cx(static_cast<size_t>(n + 64));
        std::vector<int32_t> ci(static_cast<size_t>(n + 64));
        const int64_t got =
            k.gather_allowed(words.data(), n, row.data(), cx.data(), ci.data(), left_out);
        ASSERT_EQ(got, static_cast<int64_t>(want_x.size()));
        cx.resize(static_cast<size_t>(got));
        ci.resize(static_cast<size_t>(got));
        EXPECT_EQ(cx, want_x);
        EXPECT_EQ(ci, want_i);
      }
    }
  }
}

// The allowed-token mask applied as the row is copied, and the scans of the
// copy and of the row in the same read (masked_copy_stats), on every
// instruction set, from float32, bfloat16 and float16 rows: the copy and its
// scan as allowed_mask and then max_stats leave them, the row's own scan as
// max_stats leaves it (and a half row widened), over segments that
// start past 0 (at a multiple of 32) and end inside a block and a word,
// with masks that clear nothing, everything, every word in three in part or
// whole blocks; the max at -0, tied, in a later block or masked; +inf and
// NaN allowed (row errors: the first one's position) or masked (none).
TEST(MaskedMaxStats, AsTheMaskAndThenTheScan) {
  constexpr int64_t kVocab = 3 * 512 + 32 * 5 + 7;
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> base = LcgRow(kVocab, 4242, -30.0f, 5.0f);
  struct Case {
    const char* what;
    std::vector<std::pair<size_t, float>> set_to;  // entries changed from base
    uint32_t (*word)(int64_t w);                   // the mask's words
  };
  const Case cases[] = {
      {"nothing masked", {}, [](int64_t) { return ~0u; }},
      {"everything masked", {}, [](int64_t) { return 0u; }},
      {"one word in three partly cleared",
       {},
       [](int64_t w) { return w % 3 == 0 ? 0x0f0f0f0fu : ~0u; }},
      {"the max masked, the next tied twice",
       {{600, 9.0f}, {700, 8.0f}, {1100, 8.0f}},
       [](int64_t w) { return w == 600 / 32 ? ~(1u << (600 % 32)) : ~0u; }},
      {"the max tied with a masked token before it",
       {{300, 9.0f}, {310, 9.0f}},
       [](int64_t w) { return w == 300 / 32 ? ~(1u << (300 % 32)) : ~0u; }},
      {"whole blocks masked, -0 the max",
       {{530, -0.0f}, {531, 0.0f}},
       [](int64_t w) { return w < 16 || w >= 32 ? 0u : 0xfffffff0u; }},
      {"+inf and NaN masked",
       {{40, inf}, {900, std::nanf("")}},
       [](int64_t w) {
         return w == 40 / 32 ? ~(1u << (40 % 32)) : w == 900 / 32 ? ~(1u << (900 % 32)) : ~0u;
       }},
      {"+inf allowed", {{1200, inf}}, [](int64_t) { return 0xaaaaaaaau; }},
      {"NaN allowed after a masked +inf",
       {{1201, inf}, {1210, std::nanf("")}},
       [](int64_t) { return 0xfffffdffu; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.what);
    std::vector<float> row = base;
    for (const auto& [at, v] : c.set_to) row[at] = v;
    std::vector<int32_t> words((kVocab + 31) / 32);
    for (size_t w = 0; w < words.size(); ++w) {
      words[w] = static_cast<int32_t>(c.word(static_cast<int64_t>(w)));
    }
    for (const int64_t lo : {int64_t{0}, int64_t{64}, int64_t{512}}) {
      for (const int64_t n : {kVocab - lo, kVocab - lo - 5, int64_t{512}}) {
        SCOPED_TRACE(testing::Message() << "tokens " << lo << " + " << n);
        for (const DType dtype : {DType::kFloat32, DType::kBFloat16, DType::kFloat16}) {
          SCOPED_TRACE(dtype_name(dtype));
          // (a half row: the row rounded, and its values as the kernel reads them)
          std::vector<uint16_t> halves(static_cast<size_t>(kVocab));
          std::vector<float> values = row;
          if (dtype != DType::kFloat32) {
            for (size_t i = 0; i < halves.size(); ++i) {
              halves[i] = dtype == DType::kBFloat16 ? detail::float_to_bfloat16_bits(row[i])
                                                    : detail::float_to_half_bits(row[i]);
              values[i] = detail::half_to_float(halves[i], dtype);
            }
          }
          const void* src = dtype == DType::kFloat32 ? static_cast<const void*>(row.data() + lo)
                                                     : static_cast<const void*>(halves.data() + lo);
          for (Isa isa : runnable_isas()) {
            SCOPED_TRACE(isa_name(isa));
            const detail::Kernels& k = detail::kernels_for(isa);
            std::vector<float> want = values;
            const auto blocks = static_cast<size_t>(detail::block_count(n));
            std::vector<float> want_max(blocks), got_max(blocks);
            k.allowed_mask(words.data(), lo, lo + n, want.data());
            const detail::MaxStats w = k.max_stats(want.data() + lo, n, want_max.data());
            std::vector<float> raw_max(blocks), want_raw_max(blocks);
            const detail::MaxStats want_raw =
                k.max_stats(values.data() + lo, n, want_raw_max.data());
            std::vector<float> copy(static_cast<size_t>(kVocab), 5.0f), widened = copy;
            detail::MaxStats r;
            const detail::MaxStats c =
                k.masked_copy_stats(src, dtype, words.data(), lo, n, copy.data() + lo,
                                    got_max.data(), &r, raw_max.data(), widened.data() + lo);
            for (int64_t i = lo; i < lo + n; ++i) {
              ASSERT_EQ(std::bit_cast<uint32_t>(copy[i]), std::bit_cast<uint32_t>(want[i]))
                  << "token " << i;
              if (dtype != DType::kFloat32) {
                ASSERT_EQ(std::bit_cast<uint32_t>(widened[i]), std::bit_cast<uint32_t>(values[i]))
                    << "widened token " << i;
              }
            }
            EXPECT_EQ(c.bad_at, w.bad_at);
            if (w.bad_at < 0) {  // (a row error: the rest is not read)
              EXPECT_EQ(std::bit_cast<uint32_t>(c.max), std::bit_cast<uint32_t>(w.max));
              EXPECT_EQ(c.argmax, w.argmax);
              EXPECT_EQ(c.finite, w.finite);
              for (size_t b = 0; b < blocks; ++b) {
                EXPECT_EQ(got_max[b], want_max[b]) << "block " << b;
              }
            }
            EXPECT_EQ(r.bad_at, want_raw.bad_at);
            EXPECT_EQ(std::bit_cast<uint32_t>(r.max), std::bit_cast<uint32_t>(want_raw.max));
            EXPECT_EQ(r.argmax, want_raw.argmax);
            EXPECT_EQ(r.finite, want_raw.finite);
            for (size_t b = 0; b < blocks; ++b) {
              EXPECT_EQ(raw_max[b], want_raw_max[b]) << "raw block " << b;
            }
            // Without a copy (dst null): the same results, read off the row
            // under the mask.
            std::vector<float> lean_max(blocks), lean_raw_max(blocks);
            std::vector<float> lean_widened(static_cast<size_t>(kVocab), 5.0f);
            detail::MaxStats lr;
            const detail::MaxStats l =
                k.masked_copy_stats(src, dtype, words.data(), lo, n, nullptr, lean_max.data(), &lr,
                                    lean_raw_max.data(), lean_widened.data() + lo);
            EXPECT_EQ(l.bad_at, w.bad_at);
            if (w.bad_at < 0) {
              EXPECT_EQ(std::bit_cast<uint32_t>(l.max), std::bit_cast<uint32_t>(w.max));
              EXPECT_EQ(l.argmax, w.argmax);
              EXPECT_EQ(l.finite, w.finite);
            }
            EXPECT_EQ(lean_max, got_max);
            EXPECT_EQ(lr.bad_at, r.bad_at);
            EXPECT_EQ(std::bit_cast<uint32_t>(lr.max), std::bit_cast<uint32_t>(r.max));
            EXPECT_EQ(lr.argmax, r.argmax);
            EXPECT_EQ(lr.finite, r.finite);
            EXPECT_EQ(lean_raw_max, raw_max);
            if (dtype != DType::kFloat32) {
              for (int64_t i = lo; i < lo + n; ++i) {
                ASSERT_EQ(std::bit_cast<uint32_t>(lean_widened[i]),
                          std::bit_cast<uint32_t>(values[i]))
                    << "widened token " << i;
              }
            }
          }
        }
      }
    }
  }
}

// The two sums of masked_sum_mass against sum_mass in the same
// frame: over the row, and over a copy of it with -inf where the mask says
// no, bit for bit, over segments that start past 0 and end inside a block
// and a packet, with masks that clear nothing, everything, every other
// token, whole blocks or one word in three in part; with tokens past
// underflow, -inf, and a frame above the row's max (the raw max's, the
// mask having left out the tokens near it).
TEST(MaskedSumMass, AsSumMassOverTheRowAndOverTheMaskedCopy) {
  constexpr int64_t kVocab = 5 * 512 + 32 * 3 + 9;
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> row = LcgRow(kVocab, 777, -40.0f, 8.0f);
  row[70] = -inf;
  row[1500] = -200.0f;
  row[2000] = 12.0f;  // (the max)
  const std::vector<uint32_t (*)(int64_t)> masks = {
      [](int64_t) { return ~0u; },
      [](int64_t) { return 0u; },
      [](int64_t) { return 0x55555555u; },
      [](int64_t w) { return w >= 16 && w < 48 ? 0u : ~0u; },
      [](int64_t w) { return w % 3 == 0 ? 0x0ff00f0fu : ~0u; },
      [](int64_t w) { return w == 2000 / 32 ? ~(1u << (2000 % 32)) : ~0u; },
  };
  for (Isa isa : runnable_isas()) {
    const detail::Kernels& k = detail::kernels_for(isa);
    SCOPED_TRACE(isa_name(isa));
    for (size_t m = 0; m < masks.size(); ++m) {
      SCOPED_TRACE(testing::Message() << "mask " << m);
      std::vector<int32_t> words((kVocab + 31) / 32);
      for (size_t w = 0; w < words.size(); ++w) {
        words[w] = static_cast<int32_t>(masks[m](static_cast<int64_t>(w)));
      }
      std::vector<float> masked = row;
      k.allowed_mask(words.data(), 0, kVocab, masked.data());
      for (const int64_t lo : {int64_t{0}, int64_t{32}, int64_t{1024}}) {
        for (const int64_t n : {kVocab - lo, kVocab - lo - 9, int64_t{1000}}) {
          SCOPED_TRACE(testing::Message() << "tokens " << lo << " + " << n);
          std::vector<float> bmax(static_cast<size_t>(detail::block_count(n)));
          std::vector<float> masked_bmax(bmax.size());
          const detail::MaxStats st = k.max_stats(row.data() + lo, n, bmax.data());
          k.max_stats(masked.data() + lo, n, masked_bmax.data());
          const detail::Segment seg{row.data() + lo, nullptr, n, lo, bmax.data()};
          const detail::Segment masked_seg{masked.data() + lo, nullptr, n, lo, masked_bmax.data()};
          for (const float frame : {st.max, 14.5f}) {
            detail::SetSpec set;
            set.xmax = frame;
            double allowed = -1.0;
            const double all = k.masked_sum_mass(seg, words.data(), set, &allowed);
            const double want_all = k.sum_mass(seg, set, 0.0f, nullptr, nullptr);
            const double want_allowed = k.sum_mass(masked_seg, set, 0.0f, nullptr, nullptr);
            EXPECT_GT(want_all, 0.0);
            EXPECT_EQ(std::bit_cast<uint64_t>(all), std::bit_cast<uint64_t>(want_all));
            EXPECT_EQ(std::bit_cast<uint64_t>(allowed), std::bit_cast<uint64_t>(want_allowed))
                << allowed << " against " << want_allowed;
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace nucleus
