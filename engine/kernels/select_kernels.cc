// The threshold selection's passes over one segment (engine/row/select.cc
// drives them), compiled once per instruction set.
#include "engine/kernels/isa_prologue.h"
// (the prologue must come first)
#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <cmath>

#include "engine/kernels/block_ops.h"
#include "engine/kernels/row_kernels.h"

namespace nucleus::detail::NUCLEUS_KERNEL_ISA {

#include "engine/kernels/kernel_api.h"

namespace {

using block::kBlock;

inline uint32_t key_bits(float k) { return std::bit_cast<uint32_t>(k); }

// Typical keys |e - mu| (e = d - d0), in double and rounded to float; +inf
// past kUnderflow (zero mass) and, when `member` is given, for non-members.
// Plain loops over arrays, so that each one vectorises.
void typical_keys(const float* e, const bool* member, int64_t n, double mu, float* key) {
  for (int64_t j = 0; j < n; ++j) {
    key[j] = static_cast<float>(std::fabs(static_cast<double>(e[j]) - mu));
  }
  for (int64_t j = 0; j < n; ++j) key[j] = e[j] <= kUnderflow ? key[j] : kInf;
  if (member != nullptr) {
    for (int64_t j = 0; j < n; ++j) key[j] = member[j] ? key[j] : kInf;
  }
}

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

int64_t sample_keys(const Segment& s, const SetSpec& set, const KeyRule& rule, int64_t stride,
                    float* out) {
  alignas(64) float key[kBlock];
  alignas(64) float e[kBlock];
  alignas(64) float xs[kBlock];
  bool member[kBlock];
  int64_t count = 0;
  // Whole blocks of samples: stride * kBlock tokens at a time.
  for (int64_t j0 = 0; j0 < s.n; j0 += stride * kBlock) {
    int64_t m = 0;
    for (int64_t j = j0; j < s.n && m < kBlock; j += stride) xs[m++] = s.x[j];
    block_keys_only(xs, m, set, rule, key, e, member);
    for (int64_t j = 0; j < m; ++j) {
      out[count] = key[j];
      count += member[j] ? 1 : 0;
    }
  }
  return count;
}

int64_t gather_below(const Segment& s, const SetSpec& set, float bound, int64_t cap,
                     GatheredToken* out) {
  int64_t count = 0;
  block::Collected hits;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    hits.collect(s.x + j0, n, set, -kInf, bound);
    for (int64_t i = 0; i < hits.n; ++i) {
      out[count++] = GatheredToken{hits.k[i], s.x[j0 + hits.idx[i]], s.token(j0 + hits.idx[i])};
    }
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
    block::MapF(ex, padded) = block::ConstMapF(arg, padded).exp();
    for (int64_t j = 0; j < n; ++j) {
      list[i0 + j].weight = arg[j] > block::kOffExponent ? ex[j] : 0.0f;
    }
  }
}

KeyBounds key_bounds(const Segment& s, const SetSpec& set, const KeyRule& rule, float c) {
  KeyBounds out;
  alignas(64) float key[kBlock];
  alignas(64) float e[kBlock];
  bool member[kBlock];
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    block_keys_only(s.x + j0, n, set, rule, key, e, member);
    int64_t j = 0;
    if (c < kInf) {
      // Non-members carry key +inf, so key <= c alone selects: a packet at a
      // time (the compiler would not vectorise the min / max).
      namespace ei = Eigen::internal;
      using Packet = ei::packet_traits<float>::type;
      constexpr int64_t kLanes = ei::packet_traits<float>::size;
      const Packet pc = ei::pset1<Packet>(c), pone = ei::pset1<Packet>(1.0f);
      const Packet pxmax = ei::pset1<Packet>(set.xmax), pscale = ei::pset1<Packet>(set.scale);
      const Packet pinf = ei::pset1<Packet>(kInf), pninf = ei::pset1<Packet>(-kInf);
      Packet pcount = ei::pzero(pone), pmin = pinf, pmax = pninf;
      for (; j + kLanes <= n; j += kLanes) {
        const Packet in = ei::pcmp_le(ei::pload<Packet>(key + j), pc);
        const Packet d = ei::pmul(ei::psub(pxmax, ei::ploadu<Packet>(s.x + j0 + j)), pscale);
        pcount = ei::padd(pcount, ei::pand(in, pone));
        pmin = ei::pmin(pmin, ei::pselect(in, d, pinf));
        pmax = ei::pmax(pmax, ei::pselect(in, d, pninf));
      }
      out.count += static_cast<int64_t>(ei::predux(pcount));
      out.dmin = std::min(out.dmin, ei::predux_min(pmin));
      out.dmax = std::max(out.dmax, ei::predux_max(pmax));
    }
    for (; j < n; ++j) {
      if (!member[j] || !(key[j] <= c)) continue;
      const float d = (set.xmax - s.x[j0 + j]) * set.scale;
      out.dmin = std::min(out.dmin, d);
      out.dmax = std::max(out.dmax, d);
      ++out.count;
    }
  }
  return out;
}

}  // namespace nucleus::detail::NUCLEUS_KERNEL_ISA
