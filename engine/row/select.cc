#include "engine/row/select.h"

#include "engine/kernels/block_ops.h"

#include <algorithm>
#include <bit>
#include <cmath>

namespace nucleus::detail {
namespace {

using block::kBlock;
// Level 1 splits keys by their top 11 bits below the sign (8 exponent bits and
// 3 mantissa bits); levels 2 and 3 by the next 10 bits each.
constexpr int kLevel1Shift = 20;
constexpr int64_t kLevel1Buckets = 2048;
constexpr int64_t kSubBuckets = 1024;
constexpr uint32_t kTrashBucket = kLevel1Buckets - 1;
// Boundary lists this short are simply sorted.
constexpr size_t kSortBelow = 64;

inline uint32_t key_bits(float k) { return std::bit_cast<uint32_t>(k); }

// Computes, for one block, the member flags (as weight 0 for non-members with
// a key of +inf), keys and weights. Returns through the buffers.
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
    std::copy_n(b.k, n, key);
  } else {
    for (int64_t j = 0; j < n; ++j) {
      const float ej = b.d[j] - rule.d0;
      key[j] = ej <= kUnderflow ? static_cast<float>(std::fabs(static_cast<double>(ej) - rule.mu))
                                : kInf;
    }
  }
}

// Keys and member flags only (no exp): what the gather pass needs. `e`
// receives d - d0 for the masses of the few entries that are gathered.
// Non-members get key +inf.
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
    for (int64_t j = 0; j < n; ++j) {
      key[j] = (member[j] && e[j] <= kUnderflow)
                   ? static_cast<float>(std::fabs(static_cast<double>(e[j]) - rule.mu))
                   : kInf;
    }
  }
}

// Turns the gathered entries' d - d0 (stored in .weight) into masses, with the
// same padded packet exp as every other pass so the bits agree.
void list_masses(std::vector<SelectEntry>& list) {
  alignas(64) float arg[kBlock];
  alignas(64) float ex[kBlock];
  for (size_t i0 = 0; i0 < list.size(); i0 += kBlock) {
    const auto n = static_cast<int64_t>(std::min<size_t>(kBlock, list.size() - i0));
    const int64_t padded = (n + 15) & ~int64_t{15};
    for (int64_t j = 0; j < padded; ++j) {
      const float e = j < n ? list[i0 + j].weight : kInf;
      arg[j] = e <= kUnderflow ? -e : -200.0f;
    }
    block::MapF(ex, padded) = block::ConstMapF(arg, padded).exp();
    for (int64_t j = 0; j < n; ++j) list[i0 + j].weight = arg[j] > -200.0f ? ex[j] : 0.0f;
  }
}

// Finishes the selection on the boundary bucket's members.
// `shift` is the first level still to split on: kLevel1Shift for a list of
// arbitrary keys, kLevel1Shift - 10 for one whose keys share their top bits.
SelectResult refine(std::vector<SelectEntry>& list, SelectScratch& sc, bool mass, double cum,
                    int64_t count_before, double target, int shift) {
  for (; list.size() > kSortBelow && shift >= 0; shift -= 10) {
    const int64_t buckets = shift == kLevel1Shift ? kLevel1Buckets : kSubBuckets;
    const auto mask = static_cast<uint32_t>(buckets - 1);
    sc.sub_counts.assign(static_cast<size_t>(buckets), 0);
    sc.sub_masses.assign(static_cast<size_t>(buckets), 0.0);
    for (const SelectEntry& e : list) {
      const uint32_t b = (key_bits(e.key) >> shift) & mask;
      ++sc.sub_counts[b];
      sc.sub_masses[b] += e.weight;
    }
    int64_t last_nonempty = buckets - 1;
    while (last_nonempty > 0 && sc.sub_counts[last_nonempty] == 0) --last_nonempty;
    int64_t chosen = -1;
    for (int64_t b = 0; b < buckets; ++b) {
      if (sc.sub_counts[b] == 0) continue;
      chosen = b;
      const double w = mass ? sc.sub_masses[b] : static_cast<double>(sc.sub_counts[b]);
      if (cum + w >= target) break;
      // Rounding can leave the target just out of reach inside the bucket
      // chosen one level up: then its last non-empty sub-bucket holds the
      // boundary, so only add buckets that have a successor.
      if (b == last_nonempty) break;
      cum += w;
      count_before += sc.sub_counts[b];
    }
    const auto keep = static_cast<uint32_t>(chosen);
    std::erase_if(
        list, [&](const SelectEntry& e) { return ((key_bits(e.key) >> shift) & mask) != keep; });
  }
  std::sort(list.begin(), list.end(),
            [](const SelectEntry& a, const SelectEntry& b) { return a.key < b.key; });
  SelectResult r;
  r.found = true;
  int64_t count = count_before;
  for (size_t i = 0; i < list.size();) {
    size_t j = i;
    double w = 0.0;
    while (j < list.size() && list[j].key == list[i].key) {
      w += mass ? static_cast<double>(list[j].weight) : 1.0;
      ++j;
    }
    cum += w;
    count += static_cast<int64_t>(j - i);
    r.key = list[i].key;
    r.count_le = count;
    if (cum >= target) return r;
    i = j;
  }
  return r;  // rounding: the last key of the boundary bucket
}

}  // namespace

// Small count targets (top-k, min_keep, top-N) over a large set: a sample of
// every kSampleStride-th token gives a key bound t that, with a margin, holds
// at least `target` members; one pass gathers the members with key <= t and
// the exact answer is found among them. Returns false when the bound turns out
// too tight or too loose, and the histogram path takes over.
constexpr int64_t kSampleStride = 64;
constexpr double kFastTargetMax = 2048;

bool small_target_select(std::span<const Segment> segments, const SetSpec& set, const KeyRule& rule,
                         double target, SelectScratch& sc, const Runner& run,
                         SelectResult& result) {
  int64_t total = 0;
  for (const Segment& seg : segments) total += seg.n;
  if (rule.mass_weight || rule.target_is_fraction || rule.kind != KeyKind::kDistance ||
      target > kFastTargetMax || static_cast<double>(total) < 16.0 * kSampleStride * target) {
    return false;
  }
  // Sample keys of members, in token order.
  sc.samples.clear();
  alignas(64) float key[kBlock];
  alignas(64) float e[kBlock];
  bool member[kBlock];
  for (const Segment& seg : segments) {
    for (int64_t j0 = 0; j0 < seg.n; j0 += kBlock) {
      const int64_t n = std::min(kBlock, seg.n - j0);
      float xs[kBlock / kSampleStride + 1];
      int64_t m = 0;
      for (int64_t j = 0; j < n; j += kSampleStride) xs[m++] = seg.x[j0 + j];
      block_keys_only(xs, m, set, rule, key, e, member);
      for (int64_t j = 0; j < m; ++j) {
        if (member[j]) sc.samples.push_back(key[j]);
      }
    }
  }
  // Expect target / kSampleStride samples below the answer; ask for four
  // times that plus a margin so that a bad sample rarely sends us back.
  const auto want = static_cast<size_t>(4.0 * target / kSampleStride) + 8;
  if (sc.samples.size() <= want) return false;
  std::nth_element(sc.samples.begin(), sc.samples.begin() + static_cast<int64_t>(want),
                   sc.samples.end());
  const float bound = sc.samples[want];
  const auto cap = static_cast<int64_t>(64.0 * target) + 4096;

  // Gather members with key <= bound, per segment, then in segment order.
  // (The fast path is for distance keys only; count rules on typical keys,
  // from min_keep, take the histogram path.)
  const auto nseg = static_cast<int64_t>(segments.size());
  // Grown, never shrunk: the inner lists keep their capacity.
  if (sc.seg_lists.size() < static_cast<size_t>(nseg))
    sc.seg_lists.resize(static_cast<size_t>(nseg));
  sc.seg_lists_used = nseg;
  run(nseg, [&](int64_t s) {
    auto& out = sc.seg_lists[static_cast<size_t>(s)];
    out.clear();
    const Segment& seg = segments[static_cast<size_t>(s)];
    block::Collected hits;
    for (int64_t j0 = 0; j0 < seg.n; j0 += kBlock) {
      const int64_t n = std::min(kBlock, seg.n - j0);
      hits.collect(seg.x + j0, n, set, -kInf, bound);
      for (int64_t i = 0; i < hits.n; ++i) {
        out.push_back(
            GatheredToken{hits.k[i], seg.x[j0 + hits.idx[i]], seg.token(j0 + hits.idx[i])});
      }
      if (static_cast<int64_t>(out.size()) > cap) return;  // too loose; checked below
    }
  });
  sc.list.clear();
  for (int64_t s = 0; s < nseg; ++s) {
    const auto& part = sc.seg_lists[static_cast<size_t>(s)];
    if (static_cast<int64_t>(part.size()) > cap) return false;
    for (const GatheredToken& g : part) sc.list.push_back(SelectEntry{g.key, 1.0f});
  }
  if (static_cast<double>(sc.list.size()) < target || static_cast<int64_t>(sc.list.size()) > cap) {
    return false;
  }
  result = refine(sc.list, sc, false, 0.0, 0, target, kLevel1Shift);
  sc.gathered = true;
  return true;
}

SelectResult weighted_select(std::span<const Segment> segments, const SetSpec& set,
                             const KeyRule& rule, double target, SelectScratch& sc,
                             const Runner& run) {
  sc.gathered = false;
  if (SelectResult fast; small_target_select(segments, set, rule, target, sc, run, fast)) {
    return fast;
  }
  const auto nseg = static_cast<int64_t>(segments.size());
  sc.counts.resize(static_cast<size_t>(nseg * kLevel1Buckets));
  sc.masses.resize(static_cast<size_t>(nseg * kLevel1Buckets));
  const bool mass = rule.mass_weight;

  // Pass 1: weighted histogram of the keys' top bits, one per segment.
  run(nseg, [&](int64_t s) {
    uint32_t* counts = sc.counts.data() + s * kLevel1Buckets;
    double* masses = sc.masses.data() + s * kLevel1Buckets;
    std::fill_n(counts, kLevel1Buckets, 0u);
    std::fill_n(masses, kLevel1Buckets, 0.0);
    alignas(64) float key[kBlock];
    alignas(64) float weight[kBlock];
    bool member[kBlock];
    const Segment& seg = segments[static_cast<size_t>(s)];
    for (int64_t j0 = 0; j0 < seg.n; j0 += kBlock) {
      const int64_t n = std::min(kBlock, seg.n - j0);
      block_keys(seg.x + j0, n, set, rule, key, weight, member);
      // Branch-free: non-members land in a bucket no key reaches (NaN bits).
      for (int64_t j = 0; j < n; ++j) {
        const uint32_t b = member[j] ? key_bits(key[j]) >> kLevel1Shift : kTrashBucket;
        ++counts[b];
        masses[b] += weight[j];
      }
    }
  });

  // Combine in segment order (into the first segment's arrays), total the
  // weight when the target is a fraction of it, then find the bucket where
  // the target is reached.
  // (Segment 0's arrays become the totals; its own count in the chosen bucket
  // is recovered below for the gather.)
  uint32_t* tot_count = sc.counts.data();
  double* tot_mass = sc.masses.data();
  for (int64_t s = 1; s < nseg; ++s) {
    for (int64_t b = 0; b < kTrashBucket; ++b) {
      tot_count[b] += sc.counts[static_cast<size_t>(s * kLevel1Buckets + b)];
      tot_mass[b] += sc.masses[static_cast<size_t>(s * kLevel1Buckets + b)];
    }
  }
  double total = 0.0;
  for (int64_t b = 0; b < kTrashBucket; ++b) {
    total += mass ? tot_mass[b] : static_cast<double>(tot_count[b]);
  }
  if (rule.target_is_fraction) target *= total;
  double cum = 0.0;
  int64_t count_before = 0;
  int64_t chosen = -1;
  int64_t chosen_count = 0;
  for (int64_t b = 0; b < kTrashBucket; ++b) {
    const int64_t c = tot_count[b];
    if (c == 0) continue;
    const double w = mass ? tot_mass[b] : static_cast<double>(c);
    if (cum + w >= target) {
      chosen = b;
      chosen_count = c;
      break;
    }
    cum += w;
    count_before += c;
  }
  if (chosen < 0) {
    SelectResult none;
    none.count_le = count_before;
    none.total = total;
    return none;
  }

  // Pass 2: gather the boundary bucket's members, in segment order.
  sc.seg_chosen.resize(static_cast<size_t>(nseg));
  int64_t others = 0;
  for (int64_t s = 1; s < nseg; ++s) {
    sc.seg_chosen[static_cast<size_t>(s)] =
        sc.counts[static_cast<size_t>(s * kLevel1Buckets + chosen)];
    others += sc.seg_chosen[static_cast<size_t>(s)];
  }
  sc.seg_chosen[0] = chosen_count - others;
  sc.offsets.resize(static_cast<size_t>(nseg + 1));
  sc.offsets[0] = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    sc.offsets[static_cast<size_t>(s + 1)] =
        sc.offsets[static_cast<size_t>(s)] + sc.seg_chosen[static_cast<size_t>(s)];
  }
  sc.list.resize(static_cast<size_t>(chosen_count));
  const auto chosen_bits = static_cast<uint32_t>(chosen) << kLevel1Shift;
  const float bucket_lo = std::bit_cast<float>(chosen_bits);
  const float bucket_hi = std::bit_cast<float>(chosen_bits + ((1u << kLevel1Shift) - 1));
  const bool inf_bucket = chosen_bits == key_bits(kInf);  // +inf keys: members only
  run(nseg, [&](int64_t s) {
    int64_t at = sc.offsets[static_cast<size_t>(s)];
    if (at == sc.offsets[static_cast<size_t>(s + 1)]) return;
    alignas(64) float key[kBlock];
    alignas(64) float e[kBlock];
    bool member[kBlock];
    block::Collected hits;
    const Segment& seg = segments[static_cast<size_t>(s)];
    for (int64_t j0 = 0; j0 < seg.n; j0 += kBlock) {
      const int64_t n = std::min(kBlock, seg.n - j0);
      if (rule.kind == KeyKind::kDistance && !inf_bucket) {
        hits.collect(seg.x + j0, n, set, bucket_lo, bucket_hi);
        for (int64_t i = 0; i < hits.n; ++i) {
          sc.list[static_cast<size_t>(at++)] = SelectEntry{hits.k[i], hits.d[i] - rule.d0};
        }
        continue;
      }
      block_keys_only(seg.x + j0, n, set, rule, key, e, member);
      if (!inf_bucket) {
        // The bucket is a contiguous range of keys; non-members carry +inf.
        block::for_each_in_range(key, n, bucket_lo, bucket_hi, [&](int64_t j) {
          sc.list[static_cast<size_t>(at++)] = SelectEntry{key[j], e[j]};
        });
        continue;
      }
      for (int64_t j = 0; j < n; ++j) {
        if (member[j] && key[j] == kInf) {
          sc.list[static_cast<size_t>(at++)] = SelectEntry{key[j], e[j]};
        }
      }
    }
  });
  if (mass) list_masses(sc.list);
  SelectResult r = refine(sc.list, sc, mass, cum, count_before, target, kLevel1Shift - 10);
  r.total = total;
  return r;
}

KeyBounds key_bounds(std::span<const Segment> segments, const SetSpec& set, const KeyRule& rule,
                     float c) {
  KeyBounds out;
  alignas(64) float key[kBlock];
  alignas(64) float e[kBlock];
  bool member[kBlock];
  for (const Segment& seg : segments) {
    for (int64_t j0 = 0; j0 < seg.n; j0 += kBlock) {
      const int64_t n = std::min(kBlock, seg.n - j0);
      block_keys_only(seg.x + j0, n, set, rule, key, e, member);
      for (int64_t j = 0; j < n; ++j) {
        if (!member[j] || !(key[j] <= c)) continue;
        const float d = (set.xmax - seg.x[j0 + j]) * set.scale;
        out.dmin = std::min(out.dmin, d);
        out.dmax = std::max(out.dmax, d);
        ++out.count;
      }
    }
  }
  return out;
}

}  // namespace nucleus::detail
