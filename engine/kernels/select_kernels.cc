// The threshold selection's passes over one segment (engine/row/select.cc
// drives them), compiled once per instruction set.
#include "engine/kernels/isa_prologue.h"
// (the prologue must come first)
#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "engine/kernels/block_ops.h"
#include "engine/kernels/row_kernels.h"

namespace nucleus::detail::NUCLEUS_KERNEL_ISA {

#include "engine/kernels/kernel_api.h"

namespace {

using block::kBlock;
using block::typical_key_run;
using block::typical_keys;

inline uint32_t key_bits(float k) { return std::bit_cast<uint32_t>(k); }

// Keys, weights and member flags of one block.
void block_keys(const float* x, int64_t n, const SetSpec& set, const KeyRule& rule, float* key,
                float* weight, bool* member) {
  block::BlockKeys b;
  b.compute(x, n, set);
  const float lo = set.dlo, hi = set.dhi;
  for (int64_t j = 0; j < n; ++j) member[j] = block::in_range(b.d[j], lo, hi);
  if (rule.mass_weight) {
    block::block_masses(b.d, b.d, n, set, rule.d0, weight);
  } else {
    for (int64_t j = 0; j < n; ++j) weight[j] = member[j] ? 1.0f : 0.0f;
  }
  if (rule.kind == KeyKind::kDistance) {
    for (int64_t j = 0; j < n; ++j) key[j] = b.k[j];
  } else {
    alignas(64) float e[kBlock];
    for (int64_t j = 0; j < n; ++j) e[j] = b.d[j] - rule.d0;
    typical_keys(e, nullptr, n, rule.mu, key);
  }
}

// Keys and member flags only (no exp). `e` receives d - d0 for the masses of
// the few entries that are gathered. Non-members get key +inf.
void block_keys_only(const float* x, int64_t n, const SetSpec& set, const KeyRule& rule, float* key,
                     float* e, bool* member) {
  block::BlockKeys b;
  b.compute(x, n, set);
  const float lo = set.dlo, hi = set.dhi;
  for (int64_t j = 0; j < n; ++j) {
    member[j] = block::in_range(b.d[j], lo, hi);
    e[j] = b.d[j] - rule.d0;
  }
  if (rule.kind == KeyKind::kDistance) {
    for (int64_t j = 0; j < n; ++j) key[j] = member[j] ? b.k[j] : kInf;
  } else {
    typical_keys(e, member, n, rule.mu, key);
  }
}

}  // namespace

void key_histogram(const Segment& s, const SetSpec& set, const KeyRule& rule, uint32_t* counts,
                   double* weights) {
  alignas(64) float key[kBlock];
  alignas(64) float weight[kBlock];
  bool member[kBlock];
  if (!rule.mass_weight && s.n >= 8 * kLevel1Buckets) {
    // Counts only (the weights are the counts), in four tables, a token's
    // by its place mod 4: a row's keys crowd into a few buckets, and each
    // increment to a bucket waits on the last one to it. (Not for short
    // sets, where clearing and merging the tables would cost more.)
    alignas(64) uint32_t table[4][kLevel1Buckets] = {};
    for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
      const int64_t n = std::min(kBlock, s.n - j0);
      block_keys(s.x + j0, n, set, rule, key, weight, member);
      int64_t j = 0;
      for (; j + 4 <= n; j += 4) {
        for (int64_t c = 0; c < 4; ++c) {
          ++table[c][member[j + c] ? key_bits(key[j + c]) >> kLevel1Shift : kTrashBucket];
        }
      }
      for (; j < n; ++j) ++table[0][member[j] ? key_bits(key[j]) >> kLevel1Shift : kTrashBucket];
    }
    for (int64_t b = 0; b < kLevel1Buckets; ++b) {
      const uint32_t c = (table[0][b] + table[1][b]) + (table[2][b] + table[3][b]);
      counts[b] += c;
      weights[b] += static_cast<double>(c);
    }
    return;
  }
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    block_keys(s.x + j0, n, set, rule, key, weight, member);
    // Branch-free: non-members land in the trash bucket.
    for (int64_t j = 0; j < n; ++j) {
      const uint32_t b = member[j] ? key_bits(key[j]) >> kLevel1Shift : kTrashBucket;
      ++counts[b];
      weights[b] += weight[j];
    }
  }
}

#if !defined(__AVX512F__)
namespace {

void pivot_sums_generic(const float* key, const float* weight, int64_t n, const float* pivots,
                        double* sums, int64_t* counts) {
  // Each pivot: a float partial sum per lane over eight packets, then widened
  // and added in double (as the mass pass), and a float count per lane
  // (exact: blocks of at most 2^20 entries are reduced one by one).
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  constexpr int64_t kGroup = 8;
  constexpr int64_t kReduceEvery = int64_t{1} << 20;
  const Packet pone = ei::pset1<Packet>(1.0f);
  Packet p[kPivots];
  block::DoubleLanes sum[kPivots];
  for (int i = 0; i < kPivots; ++i) {
    p[i] = ei::pset1<Packet>(pivots[i]);
    counts[i] = 0;
  }
  alignas(64) float tail_k[kLanes];
  alignas(64) float tail_w[kLanes];
  alignas(64) float lanes[kLanes];
  for (int64_t b0 = 0; b0 < n; b0 += kReduceEvery) {
    const int64_t m = std::min(kReduceEvery, n - b0);
    Packet part[kPivots], cnt[kPivots];
    for (int i = 0; i < kPivots; ++i) part[i] = cnt[i] = ei::pzero(pone);
    int64_t in_group = 0;
    for (int64_t g = 0; g < m; g += kLanes) {
      Packet pk, pw;
      if (g + kLanes <= m) {
        pk = ei::ploadu<Packet>(key + b0 + g);
        pw = ei::ploadu<Packet>(weight + b0 + g);
      } else {
        for (int64_t j = 0; j < kLanes; ++j) {
          tail_k[j] = g + j < m ? key[b0 + g + j] : kInf;
          tail_w[j] = g + j < m ? weight[b0 + g + j] : 0.0f;
        }
        pk = ei::pload<Packet>(tail_k);
        pw = ei::pload<Packet>(tail_w);
      }
      for (int i = 0; i < kPivots; ++i) {
        const Packet le = ei::pcmp_le(pk, p[i]);
        part[i] = ei::padd(part[i], ei::pand(le, pw));
        cnt[i] = ei::padd(cnt[i], ei::pand(le, pone));
      }
      if (++in_group == kGroup) {
        for (int i = 0; i < kPivots; ++i) {
          sum[i].add(part[i]);
          part[i] = ei::pzero(pone);
        }
        in_group = 0;
      }
    }
    for (int i = 0; i < kPivots; ++i) {
      if (in_group) sum[i].add(part[i]);
      ei::pstore(lanes, cnt[i]);
      for (int64_t j = 0; j < kLanes; ++j) counts[i] += static_cast<int64_t>(lanes[j]);
    }
  }
  for (int i = 0; i < kPivots; ++i) sums[i] = sum[i].total();
}

}  // namespace
#endif

#if defined(__AVX512F__)
namespace {

// store_keys on AVX-512: membership in mask registers (as the mass pass).
template <bool kTypical, bool kMass>
double store_keys_avx512(const Segment& s, const SetSpec& set, const KeyRule& rule, float* key,
                         float* weight, const float* pivots, double* sums, int64_t* counts) {
  namespace ei = Eigen::internal;
  constexpr int64_t kGroup = 8;
  const block::SetPackets sp(set);  // (named: clang 14 cannot capture bindings)
  const __m512 pd0 = _mm512_set1_ps(rule.d0);
  __m512 partial = _mm512_setzero_ps();
  block::DoubleLanes sum;
  // Round 0 of the pivot select rides along: per pivot, the weight and count
  // of the entries with key <= pivot.
  __m512 ppivot[kPivots], ppart[kPivots], pcount[kPivots];
  block::DoubleLanes psum[kPivots];
  for (int i = 0; i < kPivots; ++i) {
    ppivot[i] = _mm512_set1_ps(pivots ? pivots[i] : -kInf);
    ppart[i] = pcount[i] = _mm512_setzero_ps();
  }
  int64_t in_group = 0;
  auto step = [&](__m512 px, int64_t g, __mmask16 store) {
    const __m512 diff = _mm512_sub_ps(sp.xmax, px);
    const __m512 d = _mm512_mul_ps(diff, sp.scale);
    const __mmask16 in =
        _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(sp.lo, d, _CMP_LE_OQ), d, sp.hi, _CMP_LE_OQ);
    const __m512 e = _mm512_sub_ps(d, pd0);
    const __mmask16 live = _mm512_mask_cmp_ps_mask(in, e, sp.under, _CMP_LE_OQ);
    __m512 w, k;
    if constexpr (kMass) {
      w = _mm512_maskz_mov_ps(live, block::mass_exp(ei::pnegate(e)));
    } else {
      w = _mm512_maskz_mov_ps(in, sp.one);
    }
    if constexpr (kTypical) {
      k = _mm512_mask_mov_ps(sp.inf, live, block::typical_key_packet(e, rule.mu));
    } else {
      k = _mm512_mask_mov_ps(sp.inf, in, _mm512_mul_ps(diff, sp.key_scale));
    }
    partial = _mm512_add_ps(partial, w);
    if (pivots) {
      for (int i = 0; i < kPivots; ++i) {
        const __mmask16 le = _mm512_mask_cmp_ps_mask(store, k, ppivot[i], _CMP_LE_OQ);
        ppart[i] = _mm512_mask_add_ps(ppart[i], le, ppart[i], w);
        pcount[i] = _mm512_mask_add_ps(pcount[i], le, pcount[i], sp.one);
      }
    }
    if (++in_group == kGroup) {
      sum.add(partial);
      partial = _mm512_setzero_ps();
      if (pivots) {
        for (int i = 0; i < kPivots; ++i) {
          psum[i].add(ppart[i]);
          ppart[i] = _mm512_setzero_ps();
        }
      }
      in_group = 0;
    }
    _mm512_mask_storeu_ps(key + g, store, k);
    _mm512_mask_storeu_ps(weight + g, store, w);
  };
  int64_t g = 0;
  for (; g + 16 <= s.n; g += 16) step(_mm512_loadu_ps(s.x + g), g, 0xffff);
  if (g < s.n) {
    const auto tail = static_cast<__mmask16>((1u << (s.n - g)) - 1u);
    step(_mm512_mask_loadu_ps(_mm512_set1_ps(-kInf), tail, s.x + g), g, tail);
  }
  if (in_group) sum.add(partial);
  if (pivots) {
    for (int i = 0; i < kPivots; ++i) {
      if (in_group) psum[i].add(ppart[i]);
      sums[i] = psum[i].total();
      counts[i] = static_cast<int64_t>(_mm512_reduce_add_ps(pcount[i]));
    }
  }
  return sum.total();
}

}  // namespace
#endif

double store_keys(const Segment& s, const SetSpec& set, const KeyRule& rule, float* key,
                  float* weight, const float* pivots, double* sums, int64_t* counts) {
#if defined(__AVX512F__)
  const bool typical = rule.kind == KeyKind::kTypical;
  if (rule.mass_weight) {
    return typical
               ? store_keys_avx512<true, true>(s, set, rule, key, weight, pivots, sums, counts)
               : store_keys_avx512<false, true>(s, set, rule, key, weight, pivots, sums, counts);
  }
  return typical ? store_keys_avx512<true, false>(s, set, rule, key, weight, pivots, sums, counts)
                 : store_keys_avx512<false, false>(s, set, rule, key, weight, pivots, sums, counts);
#else
  // One packet at a time from the values: d, membership, the mass (the same
  // packet exp of the same argument as every other pass) and the key.
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  constexpr int64_t kGroup = 8;
  const auto [pxmax, pscale, pkscale, plo, phi, punder, pinf, pone] = block::SetPackets(set);
  const Packet pd0 = ei::pset1<Packet>(rule.d0);
  const bool typical = rule.kind == KeyKind::kTypical;
  const bool mass = rule.mass_weight;
  Packet partial = ei::pzero(pone);
  block::DoubleLanes sum;
  alignas(64) float tail[kLanes];
  int64_t in_group = 0;
  for (int64_t g = 0; g < s.n; g += kLanes) {
    const bool whole = g + kLanes <= s.n;
    Packet px;
    if (whole) {
      px = ei::ploadu<Packet>(s.x + g);
    } else {
      for (int64_t j = 0; j < kLanes; ++j) tail[j] = g + j < s.n ? s.x[g + j] : -kInf;
      px = ei::pload<Packet>(tail);  // padding: never a member
    }
    const Packet diff = ei::psub(pxmax, px);
    const Packet d = ei::pmul(diff, pscale);
    const Packet in = ei::pand(ei::pcmp_le(plo, d), ei::pcmp_le(d, phi));
    const Packet e = ei::psub(d, pd0);
    const Packet live = ei::pand(in, ei::pcmp_le(e, punder));
    Packet w;
    if (mass) {
      w = ei::pand(block::mass_exp(ei::pnegate(e)), live);
    } else {
      w = ei::pand(in, pone);
    }
    Packet k;
    if (typical) {
      // +inf past kUnderflow (zero mass) and off the set.
      k = ei::pselect(live, block::typical_key_packet(e, rule.mu), pinf);
    } else {
      k = ei::pselect(in, ei::pmul(diff, pkscale), pinf);
    }
    partial = ei::padd(partial, w);
    if (++in_group == kGroup) {
      sum.add(partial);
      partial = ei::pzero(pone);
      in_group = 0;
    }
    if (whole) {
      ei::pstoreu(key + g, k);
      ei::pstoreu(weight + g, w);
    } else {
      ei::pstore(tail, k);
      for (int64_t j = 0; g + j < s.n; ++j) key[g + j] = tail[j];
      ei::pstore(tail, w);
      for (int64_t j = 0; g + j < s.n; ++j) weight[g + j] = tail[j];
    }
  }
  if (in_group) sum.add(partial);
  if (pivots) pivot_sums_generic(key, weight, s.n, pivots, sums, counts);
  return sum.total();
#endif
}

namespace {

#if defined(__AVX512F__)
// The pivot sums, and with kKeep the interval copy in the same read (the sums then
// count only the kept entries), with masks in mask registers.
template <bool kKeep>
int64_t interval_pass_avx512(const float* key, const float* weight, int64_t n, float lo, float hi,
                             const float* pivots, double* sums, int64_t* counts, float* out_key,
                             float* out_weight) {
  constexpr int64_t kGroup = 8;
  constexpr int64_t kReduceEvery = int64_t{1} << 20;
  const __m512 plo = _mm512_set1_ps(lo);
  const __m512 phi = _mm512_set1_ps(hi);
  const __m512 pone = _mm512_set1_ps(1.0f);
  __m512 p[kPivots];
  block::DoubleLanes sum[kPivots];
  for (int i = 0; i < kPivots; ++i) {
    p[i] = _mm512_set1_ps(pivots ? pivots[i] : -kInf);
    counts[i] = 0;
  }
  int64_t c = 0;
  for (int64_t b0 = 0; b0 < n; b0 += kReduceEvery) {
    const int64_t m = std::min(kReduceEvery, n - b0);
    __m512 part[kPivots], cnt[kPivots];
    for (int i = 0; i < kPivots; ++i) part[i] = cnt[i] = _mm512_setzero_ps();
    int64_t in_group = 0;
    auto packet = [&](__m512 k, __m512 w, __mmask16 in) {
      if constexpr (kKeep) {
        in = _mm512_mask_cmp_ps_mask(_mm512_mask_cmp_ps_mask(in, plo, k, _CMP_LT_OQ), k, phi,
                                     _CMP_LE_OQ);
      }
      if (pivots) {
        for (int i = 0; i < kPivots; ++i) {
          const __mmask16 le = _mm512_mask_cmp_ps_mask(in, k, p[i], _CMP_LE_OQ);
          part[i] = _mm512_mask_add_ps(part[i], le, part[i], w);
          cnt[i] = _mm512_mask_add_ps(cnt[i], le, cnt[i], pone);
        }
        if (++in_group == kGroup) {
          for (int i = 0; i < kPivots; ++i) {
            sum[i].add(part[i]);
            part[i] = _mm512_setzero_ps();
          }
          in_group = 0;
        }
      }
      if constexpr (kKeep) {
        _mm512_storeu_ps(out_key + c, _mm512_maskz_compress_ps(in, k));
        _mm512_storeu_ps(out_weight + c, _mm512_maskz_compress_ps(in, w));
        c += __builtin_popcount(static_cast<unsigned>(in));
      }
    };
    // (whole packets by plain loads, the last by a masked one: a masked
    // load each, bench/kernel_bench interval_pass over 128256 entries,
    // 30 -> 26 us)
    const float* k0 = key + b0;
    const float* w0 = weight + b0;
    int64_t g = 0;
    for (; g + 16 <= m; g += 16) packet(_mm512_loadu_ps(k0 + g), _mm512_loadu_ps(w0 + g), 0xffff);
    if (g < m) {
      const auto load = static_cast<__mmask16>((1u << (m - g)) - 1u);
      packet(_mm512_maskz_loadu_ps(load, k0 + g), _mm512_maskz_loadu_ps(load, w0 + g), load);
    }
    for (int i = 0; i < kPivots; ++i) {
      if (in_group) sum[i].add(part[i]);
      counts[i] += static_cast<int64_t>(_mm512_reduce_add_ps(cnt[i]));
    }
  }
  for (int i = 0; i < kPivots; ++i) sums[i] = pivots ? sum[i].total() : 0.0;
  return c;
}
#endif

}  // namespace

namespace {

// For each of kPivots pivots: the weight (double, fixed order) and the number
// of entries with key <= pivot.
void pivot_sums(const float* key, const float* weight, int64_t n, const float* pivots, double* sums,
                int64_t* counts) {
#if defined(__AVX512F__)
  interval_pass_avx512<false>(key, weight, n, -kInf, kInf, pivots, sums, counts, nullptr, nullptr);
#else
  pivot_sums_generic(key, weight, n, pivots, sums, counts);
#endif
}

#if !defined(__AVX512F__)
// Copies, in order, the entries with lo < key <= hi to out_key / out_weight
// (which may be key / weight themselves); returns how many.
int64_t keep_interval(const float* key, const float* weight, int64_t n, float lo, float hi,
                      float* out_key, float* out_weight) {
  int64_t c = 0;
  for (int64_t j = 0; j < n; ++j) {
    const float k = key[j];
    const float w = weight[j];
    out_key[c] = k;
    out_weight[c] = w;
    c += ((k > lo) & (k <= hi)) ? 1 : 0;
  }
  return c;
}
#endif

}  // namespace

void typical_keys_from_e(float* e_key, const float* weight, int64_t n, double mu,
                         const float* pivots, double* sums, int64_t* counts) {
  typical_key_run(e_key, n, mu, e_key);
  if (pivots) pivot_sums(e_key, weight, n, pivots, sums, counts);
}

int64_t keep_and_sum(const float* key, const float* weight, int64_t n, float lo, float hi,
                     const float* pivots, float* out_key, float* out_weight, double* sums,
                     int64_t* counts) {
#if defined(__AVX512F__)
  return interval_pass_avx512<true>(key, weight, n, lo, hi, pivots, sums, counts, out_key,
                                    out_weight);
#else
  const int64_t kept = keep_interval(key, weight, n, lo, hi, out_key, out_weight);
  if (pivots) pivot_sums_generic(out_key, out_weight, kept, pivots, sums, counts);
  return kept;
#endif
}

int64_t sample_keys(const Segment& s, const SetSpec& set, const KeyRule& rule, int64_t stride,
                    float* out, double* mass) {
  alignas(64) float key[kBlock];
  alignas(64) float e[kBlock];
  alignas(64) float xs[kBlock];
  alignas(64) float arg[kBlock];  // (with mass: exponents, their exps in xs)
  bool member[kBlock];
  int64_t count = 0;
  // Masses of distance keys in one scale (top-p's sample): the members' keys
  // are d, which the mass pass gathers with the masses (a hit bound of dhi
  // makes every member a hit), in one vector pass over the block.
  const bool distance_keys = mass && rule.kind == KeyKind::kDistance && set.key_scale == set.scale;
  block::BlockHits hits;
  hits.bound = set.dhi;
  // Whole blocks of samples: stride * kBlock tokens at a time.
  for (int64_t j0 = 0; j0 < s.n; j0 += stride * kBlock) {
    int64_t m = 0;
    const float* sampled = xs;
    if (stride == 1) {
      m = std::min(kBlock, s.n - j0);
      sampled = s.x + j0;
    } else {
      for (int64_t j = j0; j < s.n && m < kBlock; j += stride) xs[m++] = s.x[j];
    }
    if (distance_keys) {
      int64_t unused = 0;
      const double block_mass =
          block::block_masses_and_hits(sampled, m, set, rule.d0, hits, &unused);
      std::copy_n(hits.k, hits.n, out + count);
      count += hits.n;
      *mass += block_mass;
      continue;
    }
    block_keys_only(sampled, m, set, rule, key, e, member);
    for (int64_t j = 0; j < m; ++j) {
      out[count] = key[j];
      count += member[j] ? 1 : 0;
    }
    if (mass) {
      const int64_t padded = (m + 15) & ~int64_t{15};
      for (int64_t j = 0; j < m; ++j) {
        arg[j] = (member[j] & (e[j] <= kUnderflow)) ? -e[j] : block::kOffExponent;
      }
      for (int64_t j = m; j < padded; ++j) arg[j] = block::kOffExponent;
      block::masses_of(arg, padded, xs);
      *mass += static_cast<double>(block::ConstMapF(xs, padded).sum());
    }
  }
  return count;
}

constexpr int64_t kDenseCollect = 4;
int64_t gather_below(const Segment& s, const SetSpec& set, float bound, int64_t cap,
                     GatheredToken* out) {
  int64_t count = 0;
  block::Collected hits;
  // (a block after one with kDenseCollect hits or more takes the form
  // without a branch on a packet)
  bool dense = false;
  const float x_floor = x_floor_for_key(set, bound);
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block::block_above(s, j0, set, bound)) continue;
    if (dense) {
      hits.collect_dense(s.x + j0, n, set, -kInf, bound, x_floor);
    } else {
      hits.collect(s.x + j0, n, set, -kInf, bound, x_floor);
    }
    dense = hits.n >= kDenseCollect;
    count += block::append_gathered(hits, s, j0, out + count);
    if (count > cap) return cap + 1;
  }
  return count;
}

int64_t gather_bucket(const Segment& s, const SetSpec& set, const KeyRule& rule, float lo, float hi,
                      bool inf_bucket, SelectEntry* out) {
  alignas(64) float key[kBlock];
  alignas(64) float e[kBlock];
  bool member[kBlock];
  block::Collected hits;
  int64_t at = 0;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (rule.kind == KeyKind::kDistance && !inf_bucket) {
      hits.collect(s.x + j0, n, set, lo, hi);
      for (int64_t i = 0; i < hits.n; ++i) out[at++] = SelectEntry{hits.k[i], hits.d[i] - rule.d0};
      continue;
    }
    block_keys_only(s.x + j0, n, set, rule, key, e, member);
    if (!inf_bucket) {
      // The bucket is a contiguous range of keys; non-members carry +inf.
      block::for_each_in_range(key, n, lo, hi, [&](int64_t j) {
        out[at++] = SelectEntry{key[j], e[j]};
      });
      continue;
    }
    for (int64_t j = 0; j < n; ++j) {
      if (member[j] && key[j] == kInf) out[at++] = SelectEntry{key[j], e[j]};
    }
  }
  return at;
}

namespace {

// Order keys: a float's bits with the magnitude flipped when negative, plus
// 2^31, order as unsigned integers as the values do (-0 before +0).
inline uint32_t order_key(float v) {
  const uint32_t u = std::bit_cast<uint32_t>(v);
  return (u & 0x80000000u) ? ~u : u | 0x80000000u;
}
inline float from_order_key(uint32_t t) {
  return std::bit_cast<float>((t & 0x80000000u) ? t & 0x7fffffffu : ~t);
}

// Up to kShortSort keys, each counted against the others without a branch
// on a key (on AVX-512 in four packets, the lanes past n masked off).
class ShortKeys {
 public:
  ShortKeys(const uint32_t* keys, int64_t n) : keys_(keys) {
#if defined(__AVX512F__)
    alignas(64) uint32_t padded[kShortSort] = {};
    std::copy_n(keys, n, padded);
    for (int p = 0; p < kShortSort / 16; ++p) {
      packet_[p] = _mm512_load_si512(padded + 16 * p);
      valid_[p] = lanes_below(n - 16 * p);
    }
    packets_ = static_cast<int>((n + 15) / 16);
#else
    n_ = n;
#endif
  }
  // How many keys exceed `key`.
  int64_t above(uint32_t key) const {
    int64_t count = 0;
#if defined(__AVX512F__)
    const __m512i k = _mm512_set1_epi32(static_cast<int32_t>(key));
    for (int p = 0; p < packets_; ++p) {
      count += std::popcount(
          static_cast<unsigned>(_mm512_mask_cmpgt_epu32_mask(valid_[p], packet_[p], k)));
    }
#else
    for (int64_t j = 0; j < n_; ++j) count += keys_[j] > key ? 1 : 0;
#endif
    return count;
  }
  // Key i's rank in a stable sort: the keys below it and the equal keys
  // before it.
  int64_t rank(int64_t i) const {
    const uint32_t key = keys_[i];
    int64_t count = 0;
#if defined(__AVX512F__)
    const __m512i k = _mm512_set1_epi32(static_cast<int32_t>(key));
    for (int p = 0; p < packets_; ++p) {
      const __mmask16 ahead = _mm512_mask_cmplt_epu32_mask(valid_[p], packet_[p], k) |
                              _mm512_mask_cmpeq_epu32_mask(lanes_below(i - 16 * p), packet_[p], k);
      count += std::popcount(static_cast<unsigned>(ahead));
    }
#else
    for (int64_t j = 0; j < n_; ++j) {
      count += (keys_[j] < key || (keys_[j] == key && j < i)) ? 1 : 0;
    }
#endif
    return count;
  }

 private:
#if defined(__AVX512F__)
  static __mmask16 lanes_below(int64_t m) {
    return static_cast<__mmask16>((1u << std::clamp<int64_t>(m, 0, 16)) - 1u);
  }
  __m512i packet_[kShortSort / 16];
  __mmask16 valid_[kShortSort / 16];
  int packets_ = 0;
#else
  int64_t n_ = 0;
#endif
  const uint32_t* keys_;
};

// kth_largest over a few keys, by rank: the k-th largest is the smallest key
// that fewer than k keys exceed. Each key's count is independent of the
// others', where the radix steps below form a chain, each waiting on the
// last one's counts: over the ~30 keys of a flat row's sampled bound, ~12
// steps of a short loop took ~0.32 us, the ranks ~0.14.
uint32_t ranked_kth_key(const uint32_t* keys, int64_t n, int64_t k) {
  const ShortKeys all(keys, n);
  uint32_t best = UINT32_MAX;
  for (int64_t i = 0; i < n; ++i) best = all.above(keys[i]) < k ? std::min(best, keys[i]) : best;
  return best;
}

}  // namespace

float kth_largest(const float* v, int64_t n, int64_t k, uint32_t* keys) {
  uint32_t lo = UINT32_MAX, hi = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t key = order_key(v[i]);
    keys[i] = key;
    lo = std::min(lo, key);
    hi = std::max(hi, key);
  }
  // t: the largest key that at least k keys reach. Every key lies in [lo,
  // hi], so the bits above the first in which lo and hi differ are theirs;
  // below, each bit is kept when k keys still reach t with it set.
  uint32_t t = lo;
  if (n <= kShortSort) {
    t = ranked_kth_key(keys, n, k);
  } else if (lo != hi) {
    int top = 31 - std::countl_zero(lo ^ hi);
    t = static_cast<uint32_t>(lo & ~((uint64_t{2} << top) - 1));
    const auto need = static_cast<uint32_t>(k);
    // Two bits a step (three counts in one pass over the keys): the steps
    // form a chain, each waiting for the last one's counts.
    for (; top >= 1; top -= 2) {
      const uint32_t c1 = t | (uint32_t{1} << (top - 1));
      const uint32_t c2 = t | (uint32_t{2} << (top - 1));
      const uint32_t c3 = t | (uint32_t{3} << (top - 1));
      uint32_t n1 = 0, n2 = 0, n3 = 0;
      for (int64_t i = 0; i < n; ++i) {
        n1 += keys[i] >= c1 ? 1u : 0u;
        n2 += keys[i] >= c2 ? 1u : 0u;
        n3 += keys[i] >= c3 ? 1u : 0u;
      }
      t = n3 >= need ? c3 : n2 >= need ? c2 : n1 >= need ? c1 : t;
    }
    if (top == 0) {
      uint32_t count = 0;
      for (int64_t i = 0; i < n; ++i) count += keys[i] >= (t | 1u) ? 1u : 0u;
      t = count >= need ? t | 1u : t;
    }
  }
  return from_order_key(t);
}

void sort_short(const SelectEntry* list, int64_t n, SelectEntry* out) {
  // (by order keys: -0 before +0, which std::sort takes as equal; refine's
  // walk after it takes them as one key either way)
  uint32_t bits[kShortSort];
  for (int64_t i = 0; i < n; ++i) bits[i] = order_key(list[i].key);
  const ShortKeys all(bits, n);
  for (int64_t i = 0; i < n; ++i) out[all.rank(i)] = list[i];
}

void entry_masses(SelectEntry* list, int64_t size) {
  alignas(64) float arg[kBlock];
  alignas(64) float ex[kBlock];
  for (int64_t i0 = 0; i0 < size; i0 += kBlock) {
    const int64_t n = std::min(kBlock, size - i0);
    const int64_t padded = (n + 15) & ~int64_t{15};
    for (int64_t j = 0; j < padded; ++j) {
      const float e = j < n ? list[i0 + j].weight : kInf;
      arg[j] = e <= kUnderflow ? -e : block::kOffExponent;
    }
    block::masses_of(arg, padded, ex);
    for (int64_t j = 0; j < n; ++j) list[i0 + j].weight = ex[j];
  }
}

namespace {

// The filter-space d range and count of the entries whose key is <= c, for
// c < +inf (keys of non-members are +inf), a packet at a time (the compiler
// would not vectorise the min / max).
void bounds_of_keys(const float* x, const float* key, int64_t n, const SetSpec& set, float c,
                    KeyBounds& out) {
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  const Packet pc = ei::pset1<Packet>(c), pone = ei::pset1<Packet>(1.0f);
  const Packet pxmax = ei::pset1<Packet>(set.xmax), pscale = ei::pset1<Packet>(set.scale);
  const Packet pinf = ei::pset1<Packet>(kInf), pninf = ei::pset1<Packet>(-kInf);
  // (two chains: one, each min waiting on the last, ran at its latency)
  Packet pcount[2] = {ei::pzero(pone), ei::pzero(pone)};
  Packet pmin[2] = {pinf, pinf}, pmax[2] = {pninf, pninf};
  auto step = [&](int chain, int64_t at) {
    const Packet d = ei::pmul(ei::psub(pxmax, ei::ploadu<Packet>(x + at)), pscale);
#if defined(__AVX512F__)
    // Masked adds, mins and maxes: no mask widened to a vector.
    const __mmask16 in = _mm512_cmp_ps_mask(ei::ploadu<Packet>(key + at), pc, _CMP_LE_OQ);
    pcount[chain] = _mm512_mask_add_ps(pcount[chain], in, pcount[chain], pone);
    pmin[chain] = _mm512_mask_min_ps(pmin[chain], in, pmin[chain], d);
    pmax[chain] = _mm512_mask_max_ps(pmax[chain], in, pmax[chain], d);
#else
    const Packet in = ei::pcmp_le(ei::ploadu<Packet>(key + at), pc);
    pcount[chain] = ei::padd(pcount[chain], ei::pand(in, pone));
    pmin[chain] = ei::pmin(pmin[chain], ei::pselect(in, d, pinf));
    pmax[chain] = ei::pmax(pmax[chain], ei::pselect(in, d, pninf));
#endif
  };
  int64_t j = 0;
  for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
    step(0, j);
    step(1, j + kLanes);
  }
  for (; j + kLanes <= n; j += kLanes) step(0, j);
  out.count += static_cast<int64_t>(ei::predux(ei::padd(pcount[0], pcount[1])));
  out.dmin = std::min(out.dmin, ei::predux_min(ei::pmin(pmin[0], pmin[1])));
  out.dmax = std::max(out.dmax, ei::predux_max(ei::pmax(pmax[0], pmax[1])));
  for (; j < n; ++j) {
    if (!(key[j] <= c)) continue;
    const float d = (set.xmax - x[j]) * set.scale;
    out.dmin = std::min(out.dmin, d);
    out.dmax = std::max(out.dmax, d);
    ++out.count;
  }
}

}  // namespace

namespace {

// key_bounds' pass, a packet at a time from the values: kAll, every member
// (+inf keys included); else the members whose key is <= c (kTypical: e in
// typical_e_range; else distance keys). (Through block_keys_only's keys,
// stored and read back, a 128256 row took ~55 us for typical keys: its
// member ? key : inf loop runs a branch a token.)
template <bool kAll, bool kTypical>
KeyBounds key_bounds_of(const Segment& s, const SetSpec& set, const KeyRule& rule, float c) {
  const ERange r = kTypical ? typical_e_range(rule.mu, c) : ERange{};
  KeyBounds out;
#if defined(__AVX512F__)
  // Masked adds, mins and maxes (no mask widened to a vector), in two
  // chains: one, each waiting on the last, took ~16 us over a 128256 row.
  const block::SetPackets sp(set);
  const __m512 pc = _mm512_set1_ps(c), pd0 = _mm512_set1_ps(rule.d0);
  const __m512 pelo = _mm512_set1_ps(r.lo), pehi = _mm512_set1_ps(r.hi);
  const __m512 pninf = _mm512_set1_ps(-kInf), pad = _mm512_set1_ps(-kInf);
  __m512 count[2] = {_mm512_setzero_ps(), _mm512_setzero_ps()};
  __m512 lo[2] = {sp.inf, sp.inf}, hi[2] = {pninf, pninf};
  auto step = [&](int chain, __m512 px) {
    const __m512 diff = _mm512_sub_ps(sp.xmax, px);
    const __m512 d = _mm512_mul_ps(diff, sp.scale);
    __mmask16 hit =
        _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(sp.lo, d, _CMP_LE_OQ), d, sp.hi, _CMP_LE_OQ);
    if constexpr (!kAll && kTypical) {
      const __m512 e = _mm512_sub_ps(d, pd0);
      hit = _mm512_mask_cmp_ps_mask(_mm512_mask_cmp_ps_mask(hit, pelo, e, _CMP_LE_OQ), e, pehi,
                                    _CMP_LE_OQ);
    } else if constexpr (!kAll) {
      hit = _mm512_mask_cmp_ps_mask(hit, _mm512_mul_ps(diff, sp.key_scale), pc, _CMP_LE_OQ);
    }
    count[chain] = _mm512_mask_add_ps(count[chain], hit, count[chain], sp.one);
    lo[chain] = _mm512_mask_min_ps(lo[chain], hit, lo[chain], d);
    hi[chain] = _mm512_mask_max_ps(hi[chain], hit, hi[chain], d);
  };
  int64_t g = 0;
  for (; g + 32 <= s.n; g += 32) {
    step(0, _mm512_loadu_ps(s.x + g));
    step(1, _mm512_loadu_ps(s.x + g + 16));
  }
  for (; g + 16 <= s.n; g += 16) step(0, _mm512_loadu_ps(s.x + g));
  // (padding -inf: d = +inf, never a member)
  if (g < s.n)
    step(1, _mm512_mask_loadu_ps(pad, static_cast<__mmask16>((1u << (s.n - g)) - 1u), s.x + g));
  out.count = static_cast<int64_t>(_mm512_reduce_add_ps(_mm512_add_ps(count[0], count[1])));
  out.dmin = _mm512_reduce_min_ps(_mm512_min_ps(lo[0], lo[1]));
  out.dmax = _mm512_reduce_max_ps(_mm512_max_ps(hi[0], hi[1]));
#else
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  const block::SetPackets sp(set);
  const Packet pc = ei::pset1<Packet>(c), pd0 = ei::pset1<Packet>(rule.d0);
  const Packet pelo = ei::pset1<Packet>(r.lo), pehi = ei::pset1<Packet>(r.hi);
  const Packet pninf = ei::pset1<Packet>(-kInf);
  Packet count[2] = {ei::pzero(sp.one), ei::pzero(sp.one)};
  Packet lo[2] = {sp.inf, sp.inf}, hi[2] = {pninf, pninf};
  auto step = [&](int chain, const Packet& px) {
    const Packet diff = ei::psub(sp.xmax, px);
    const Packet d = ei::pmul(diff, sp.scale);
    Packet hit = ei::pand(ei::pcmp_le(sp.lo, d), ei::pcmp_le(d, sp.hi));
    if constexpr (!kAll && kTypical) {
      const Packet e = ei::psub(d, pd0);
      hit = ei::pand(hit, ei::pand(ei::pcmp_le(pelo, e), ei::pcmp_le(e, pehi)));
    } else if constexpr (!kAll) {
      hit = ei::pand(hit, ei::pcmp_le(ei::pmul(diff, sp.key_scale), pc));
    }
    count[chain] = ei::padd(count[chain], ei::pand(hit, sp.one));
    lo[chain] = ei::pmin(lo[chain], ei::pselect(hit, d, sp.inf));
    hi[chain] = ei::pmax(hi[chain], ei::pselect(hit, d, pninf));
  };
  int64_t g = 0;
  for (; g + 2 * kLanes <= s.n; g += 2 * kLanes) {
    step(0, ei::ploadu<Packet>(s.x + g));
    step(1, ei::ploadu<Packet>(s.x + g + kLanes));
  }
  for (; g + kLanes <= s.n; g += kLanes) step(0, ei::ploadu<Packet>(s.x + g));
  if (g < s.n) {
    alignas(64) float tail[kLanes];
    for (int64_t j = 0; j < kLanes; ++j) tail[j] = g + j < s.n ? s.x[g + j] : -kInf;
    step(1, ei::pload<Packet>(tail));  // padding: never a member
  }
  out.count = static_cast<int64_t>(ei::predux(ei::padd(count[0], count[1])));
  out.dmin = ei::predux_min(ei::pmin(lo[0], lo[1]));
  out.dmax = ei::predux_max(ei::pmax(hi[0], hi[1]));
#endif
  return out;
}

}  // namespace

KeyBounds key_bounds(const Segment& s, const SetSpec& set, const KeyRule& rule, float c) {
  if (!(c < kInf)) return key_bounds_of<true, false>(s, set, rule, c);
  return rule.kind == KeyKind::kTypical ? key_bounds_of<false, true>(s, set, rule, c)
                                        : key_bounds_of<false, false>(s, set, rule, c);
}

KeyBounds stored_key_bounds(const Segment& s, const SetSpec& set, const float* key, float c) {
  KeyBounds out;
  bounds_of_keys(s.x, key, s.n, set, c, out);
  return out;
}

#if defined(__AVX512F__)
namespace {

// Sixteen gathered tokens (48 floats from p) as three vectors: keys, values
// and token ids. Lane i's field f sits at float 3 i + f: the lanes whose
// float lies in the first 32 come from a and b, the others from c.
struct GatheredLanes {
  __m512 key, x;
  __m512i token;
};
// Field f's permute indices: into a and b, into c, and which lanes take c.
struct FieldIndex {
  alignas(64) int32_t ab[16];
  alignas(64) int32_t c[16];
  __mmask16 in_c;
};
constexpr FieldIndex field_index(int f) {
  FieldIndex r{};
  for (int i = 0; i < 16; ++i) {
    const int at = 3 * i + f;
    r.ab[i] = at < 32 ? at : 0;
    r.c[i] = at < 32 ? 0 : at - 32;
    r.in_c = static_cast<__mmask16>(r.in_c | ((at < 32 ? 0u : 1u) << i));
  }
  return r;
}
constexpr FieldIndex kFields[3] = {field_index(0), field_index(1), field_index(2)};

// (a list shorter than this, such as top-k's few tokens a segment, takes the
// scalar loop alone)
constexpr int64_t kGatheredVectorFrom = 32;

inline GatheredLanes load_gathered(const GatheredToken* g) {
  static_assert(sizeof(GatheredToken) == 12);
  const auto* p = reinterpret_cast<const float*>(g);
  const __m512 a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16), c = _mm512_loadu_ps(p + 32);
  auto field = [&](int f) {
    const FieldIndex& at = kFields[f];
    const __m512 t = _mm512_permutex2var_ps(a, _mm512_load_si512(at.ab), b);
    return _mm512_mask_permutexvar_ps(t, at.in_c, _mm512_load_si512(at.c), c);
  };
  return {field(0), field(1), _mm512_castps_si512(field(2))};
}

}  // namespace
#endif

#if defined(__AVX512F__)
void pivot_sums(const SelectEntry* list, int64_t n, const float* pivots, double* mass,
                int64_t* count) {
  constexpr int P = kRefinePivots;
  constexpr int64_t kGroup = 8;  // packets per float partial sum
  static_assert(sizeof(SelectEntry) == 8);
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  const __m512i one = _mm512_set1_epi32(1);
  __m512 pivot[P];
  __m512i counted[P];
  double sum[P];
  for (int j = 0; j < P; ++j) {
    pivot[j] = _mm512_set1_ps(pivots[j]);
    counted[j] = _mm512_setzero_si512();
    sum[j] = 0.0;
  }
  // (the last packet, short, read by masked loads: its lanes past n are
  // left out of every compare. A scalar loop there, a branch per entry and
  // pivot, took ~0.35 of ~0.7 us a flat row's refine spent in this kernel.)
  int64_t i = 0;
  while (i < n) {
    __m512 part[P];
    for (int j = 0; j < P; ++j) part[j] = _mm512_setzero_ps();
    const int64_t end = std::min(n, i + 16 * kGroup);
    for (; i < end; i += 16) {
      const auto* f = reinterpret_cast<const float*>(list + i);
      const int64_t left = std::min<int64_t>(16, end - i);
      __m512 a, b;
      __mmask16 valid = 0xffff;
      if (left == 16) {
        a = _mm512_loadu_ps(f);
        b = _mm512_loadu_ps(f + 16);
      } else {
        const uint64_t floats = (uint64_t{1} << (2 * left)) - 1;
        a = _mm512_maskz_loadu_ps(static_cast<__mmask16>(floats), f);
        b = _mm512_maskz_loadu_ps(static_cast<__mmask16>(floats >> 16), f + 16);
        valid = static_cast<__mmask16>((1u << left) - 1u);
      }
      const __m512 key = _mm512_permutex2var_ps(a, even, b);
      const __m512 w = _mm512_permutex2var_ps(a, odd, b);
      for (int j = 0; j < P; ++j) {
        const __mmask16 le = _mm512_mask_cmp_ps_mask(valid, key, pivot[j], _CMP_LE_OQ);
        part[j] = _mm512_mask_add_ps(part[j], le, part[j], w);
        counted[j] = _mm512_mask_add_epi32(counted[j], le, counted[j], one);
      }
    }
    for (int j = 0; j < P; ++j) {
      const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(part[j]));
      const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(part[j], 1));
      sum[j] += _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
    }
  }
  for (int j = 0; j < P; ++j) {
    count[j] = _mm512_reduce_add_epi32(counted[j]);
    mass[j] = sum[j];
  }
}

int64_t keep_between(SelectEntry* list, int64_t n, float lo, float hi) {
  const __m512 plo = _mm512_set1_ps(lo), phi = _mm512_set1_ps(hi);
  int64_t kept = 0, i = 0;
  // (eight entries a packet, the keys in its even lanes; each packet's
  // survivors compressed and stored whole at or before its own place)
  for (; i + 8 <= n; i += 8) {
    const __m512 v = _mm512_loadu_ps(reinterpret_cast<const float*>(list + i));
    const __mmask16 in =
        _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(plo, v, _CMP_LT_OQ), v, phi, _CMP_LE_OQ);
    const auto pairs = static_cast<__mmask8>(_pext_u32(in, 0x5555u));
    _mm512_storeu_si512(list + kept, _mm512_maskz_compress_epi64(pairs, _mm512_castps_si512(v)));
    kept += std::popcount(static_cast<unsigned>(pairs));
  }
  for (; i < n; ++i) {
    const SelectEntry e = list[i];
    list[kept] = e;
    kept += (lo < e.key && e.key <= hi) ? 1 : 0;
  }
  return kept;
}
#endif

void gathered_keys(const GatheredToken* g, int64_t n, float d0, SelectEntry* out) {
  int64_t i = 0;
#if defined(__AVX512F__)
  // (each key beside key - d0: two permutes of the keys and the differences)
  const __m512 pd0 = _mm512_set1_ps(d0);
  const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const __m512i hi = _mm512_set_epi32(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8);
  for (; n >= kGatheredVectorFrom && i + 16 <= n; i += 16) {
    const __m512 key = load_gathered(g + i).key;
    const __m512 e = _mm512_sub_ps(key, pd0);
    auto* o = reinterpret_cast<float*>(out + i);
    _mm512_storeu_ps(o, _mm512_permutex2var_ps(key, lo, e));
    _mm512_storeu_ps(o + 16, _mm512_permutex2var_ps(key, hi, e));
  }
#endif
  for (; i < n; ++i) out[i] = SelectEntry{g[i].key, g[i].key - d0};
}

int64_t compact_gathered(const GatheredToken* g, int64_t n, float lo, float hi, float* x,
                         int32_t* idx) {
  int64_t kept = 0, i = 0;
#if defined(__AVX512F__)
  // (each packet's survivors compressed out: on a flat row a few of every
  // ten gathered tokens survive, in no order a branch could learn)
  const __m512 plo = _mm512_set1_ps(lo), phi = _mm512_set1_ps(hi);
  for (; n >= kGatheredVectorFrom && i + 16 <= n; i += 16) {
    const GatheredLanes l = load_gathered(g + i);
    const __mmask16 in =
        _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(plo, l.key, _CMP_LE_OQ), l.key, phi, _CMP_LE_OQ);
    // (whole stores of the compressed packets, at or before the packet's own
    // place: a masked compressing store is microcoded on some AVX-512 cores)
    _mm512_storeu_ps(x + kept, _mm512_maskz_compress_ps(in, l.x));
    _mm512_storeu_si512(idx + kept, _mm512_maskz_compress_epi32(in, l.token));
    kept += std::popcount(static_cast<unsigned>(in));
  }
#endif
  // (written whole and kept by a count)
  for (; i < n; ++i) {
    x[kept] = g[i].x;
    idx[kept] = g[i].token;
    kept += ((g[i].key >= lo) & (g[i].key <= hi)) ? 1 : 0;
  }
  return kept;
}

#if !defined(__AVX512F__)
namespace {

// typical_gather without AVX-512: the entropy pass's sums to the bit
// (EntropySums, as moments' entropy pass forms them), with the members at or
// below `bound` gathered. kCheckLo: the set has a lower bound.
template <bool kCheckLo>
TypicalGather typical_gather_generic(const Segment& s, const SetSpec& set, float d0, float bound,
                                     int64_t cap, GatheredToken* out) {
  namespace ei = Eigen::internal;
  using Packet = block::EntropySums::Packet;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  const Packet pbound = ei::pset1<Packet>(bound);
  block::EntropySums sums(set, d0);
  int64_t gathered = 0;
  alignas(64) float pad[kLanes];
  alignas(64) float dl[kLanes];
  auto gather = [&](const Packet d, uint32_t lanes, int64_t at) {
    ei::pstore(dl, d);
    for (; lanes != 0; lanes &= lanes - 1) {
      const int j = std::countr_zero(lanes);
      out[gathered++] = GatheredToken{dl[j], s.x[at + j], s.token(at + j)};
    }
  };
  auto step = [&](const Packet px, int64_t at) {
    Packet d;
    const Packet member = sums.add<kCheckLo>(px, &d);
    const Packet hit = ei::pand(member, ei::pcmp_le(d, pbound));
    if (gathered > cap || !ei::predux_any(hit)) return;
    alignas(64) float bits[kLanes];
    ei::pstore(bits, hit);
    uint32_t lanes = 0;
    for (int64_t j = 0; j < kLanes; ++j) {
      lanes |= (std::bit_cast<uint32_t>(bits[j]) != 0 ? 1u : 0u) << j;
    }
    gather(d, lanes, at);
  };
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block::block_empty(s, j0, set)) continue;
    block::prefetch_ahead(s, j0, n);
    int64_t g = 0;
    for (; g + kLanes <= n; g += kLanes) step(ei::ploadu<Packet>(s.x + j0 + g), j0 + g);
    if (g < n) {
      // The tail, padded with -inf: never a member.
      for (int64_t j = 0; j < kLanes; ++j) pad[j] = g + j < n ? s.x[j0 + g + j] : -kInf;
      step(ei::pload<Packet>(pad), j0 + g);
    }
    sums.end_block();
    if (gathered > cap) gathered = cap + 1;
  }
  return TypicalGather{sums.z(), sums.zd(), gathered};
}

}  // namespace
#endif

TypicalGather typical_gather(const Segment& s, const SetSpec& set, float d0, float bound,
                             int64_t cap, GatheredToken* out) {
#if defined(__AVX512F__)
  // The mass pass with both extras (the same bits for each mass and the same
  // sums as the entropy pass, block_masses_avx512).
  int64_t gathered = 0;
  SetSpec same = set;
  same.key_scale = set.scale;
  block::EntropyLanes sums;
  block::BlockHits hits;
  hits.bound = bound;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block::block_empty(s, j0, set)) continue;
    block::prefetch_ahead(s, j0, n);
    int64_t unused = 0;
    block::block_masses_and_hits<block::Extra::kEntropyAndHits>(s.x + j0, n, same, d0, hits,
                                                                &unused, &sums);
    if (gathered > cap) continue;
    gathered += block::append_gathered(hits, s, j0, out + gathered);
    if (gathered > cap) gathered = cap + 1;
  }
  return TypicalGather{sums.z.total(), sums.zd.total(), gathered};
#else
  return set.dlo > 0.0f ? typical_gather_generic<true>(s, set, d0, bound, cap, out)
                        : typical_gather_generic<false>(s, set, d0, bound, cap, out);
#endif
}

}  // namespace nucleus::detail::NUCLEUS_KERNEL_ISA
