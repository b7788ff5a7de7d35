#include "engine/row/select.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <functional>
#include <limits>
#include <utility>

namespace nucleus::detail {
namespace {

// Levels 2 and 3 of the radix select split by the next 10 bits each (level 1
// is in engine/kernels/row_kernels.h).
constexpr int64_t kSubBuckets = 1024;
// Boundary lists this short are simply sorted.
constexpr auto kSortBelow = static_cast<size_t>(kShortSort);

inline uint32_t key_bits(float k) { return std::bit_cast<uint32_t>(k); }

// One level of the refinement: entries go to `buckets` buckets by
// `bucket(entry)` (monotone in the key); the bucket where the running total
// (the weight before the list in cum, its count in count_before) reaches the
// target is kept and what lies before it added.
template <typename Bucket>
void refine_level(std::vector<SelectEntry>& list, SelectScratch& sc, bool mass, int64_t buckets,
                  Bucket bucket, double& cum, int64_t& count_before, double target) {
  sc.sub_counts.assign(static_cast<size_t>(buckets), 0);
  if (mass) {
    sc.sub_masses.assign(static_cast<size_t>(buckets), 0.0);
    for (const SelectEntry& e : list) {
      const uint32_t b = bucket(e);
      ++sc.sub_counts[b];
      sc.sub_masses[b] += e.weight;
    }
  } else {
    // (counts only: an add to a bucket's mass waits on the last one to that
    // bucket, and crowded keys share a few buckets)
    for (const SelectEntry& e : list) ++sc.sub_counts[bucket(e)];
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
  std::erase_if(list, [&](const SelectEntry& e) { return bucket(e) != keep; });
}

// A list of arbitrary keys (gathered below a bound, so a few units apart
// and sharing most of their top bits) is first split by value: kLinearBuckets
// of equal width between its least and greatest key, for a few rounds. The
// bucket of a key, trunc((key - lo) * scale), never decreases as the key
// grows, so the buckets keep the keys' order as the radix levels do.
constexpr int64_t kLinearBuckets = 256;
constexpr int kLinearRounds = 3;

// The least and greatest key of a list.
using KeyRange = std::pair<float, float>;
KeyRange key_range(const std::vector<SelectEntry>& list) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  // (in four chains: one min and one max per entry otherwise wait on the
  // last ones)
  float lo4[4] = {kInf, kInf, kInf, kInf}, hi4[4] = {-kInf, -kInf, -kInf, -kInf};
  size_t i = 0;
  for (; i + 4 <= list.size(); i += 4) {
    for (size_t c = 0; c < 4; ++c) {
      lo4[c] = std::min(lo4[c], list[i + c].key);
      hi4[c] = std::max(hi4[c], list[i + c].key);
    }
  }
  for (; i < list.size(); ++i) {
    lo4[0] = std::min(lo4[0], list[i].key);
    hi4[0] = std::max(hi4[0], list[i].key);
  }
  return {std::min(std::min(lo4[0], lo4[1]), std::min(lo4[2], lo4[3])),
          std::max(std::max(hi4[0], hi4[1]), std::max(hi4[2], hi4[3]))};
}

// A mass target's refinement on AVX-512: rounds of kRefinePivots pivots
// spaced evenly over the part of the key range that holds the boundary (no
// sample to sort), each a vector pass that totals the weight at or below
// every pivot and one that keeps, in order, the part between two pivots
// where the running total reaches the target (cum and count_before take
// what lies before it). Until at most kSortBelow entries remain, a run of
// equal keys stops the narrowing, or kPivotRounds rounds (8^6 narrower)
// have run. The histogram of refine_level was a scalar add per entry into
// a bucket's mass, ~2.5 ns an entry on the gathered lists of flat rows.
constexpr int kPivotRounds = 6;
void narrow_by_pivots(std::vector<SelectEntry>& list, const Kernels& k, double& cum,
                      int64_t& count_before, double target, const KeyRange* known) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  constexpr int P = kRefinePivots;
  const KeyRange range = known ? *known : key_range(list);
  float lo = range.first, hi = range.second;
  float open_lo = -kInf;  // the part's keys lie in (open_lo, hi]
  for (int round = 0; round < kPivotRounds && list.size() > kSortBelow; ++round) {
    const float span = hi - lo;
    if (!(span > 0.0f && span < kInf)) return;
    float pivot[P];
    for (int j = 0; j < P; ++j) {
      pivot[j] = std::min(hi, lo + span * static_cast<float>(j + 1) / static_cast<float>(P + 1));
    }
    double mass[P];
    int64_t count[P];
    const auto n = static_cast<int64_t>(list.size());
    k.pivot_sums(list.data(), n, pivot, mass, count);
    // Part t is (pivot[t - 1], pivot[t]] (open_lo and hi at the ends): the
    // first non-empty one whose end reaches the target, else (rounding left
    // the target just out of reach) the last non-empty one.
    auto mass_to = [&](int t) { return t == 0 ? 0.0 : mass[t - 1]; };
    auto count_to = [&](int t) { return t == 0 ? int64_t{0} : count[t - 1]; };
    auto count_through = [&](int t) { return t == P ? n : count[t]; };
    int chosen = -1;
    for (int t = 0; t <= P; ++t) {
      if (count_through(t) == count_to(t)) continue;
      chosen = t;
      if (t == P || cum + mass[t] >= target) break;
    }
    if (chosen < 0) return;
    const float part_lo = chosen == 0 ? open_lo : pivot[chosen - 1];
    const float part_hi = chosen == P ? hi : pivot[chosen];
    // (a part that is the whole range, its pivots collapsed onto an end:
    // no round can narrow it)
    if (part_lo == open_lo && part_hi == hi) return;
    cum += mass_to(chosen);
    count_before += count_to(chosen);
    list.resize(static_cast<size_t>(k.keep_between(list.data(), n, part_lo, part_hi)));
    open_lo = part_lo;
    lo = part_lo == -kInf ? lo : part_lo;
    hi = part_hi;
  }
}

// Sorts the list by key: by the kernels' sort_short, stably, when it is
// short (std::sort's compares, on the keys of a row never seen before,
// mispredicted about half the time: over 256 distinct flat 32000-token rows
// the ~25 entries left at a nucleus boundary took ~0.9 us, sort_short ~0.14,
// by TSC counts around it); a longer one (a run of ties the levels could
// not split) by std::sort.
void sort_list(std::vector<SelectEntry>& list, std::vector<SelectEntry>& sorted, const Kernels& k) {
  const auto n = static_cast<int64_t>(list.size());
  if (n > kShortSort) {
    std::sort(list.begin(), list.end(),
              [](const SelectEntry& a, const SelectEntry& b) { return a.key < b.key; });
    return;
  }
  sorted.resize(list.size());
  k.sort_short(list.data(), n, sorted.data());
  std::copy(sorted.begin(), sorted.end(), list.begin());
}

// Finishes the selection on the boundary bucket's members.
// `shift` is the first level still to split on: kLevel1Shift for a list of
// arbitrary keys, kLevel1Shift - 10 for one whose keys share their top bits.
SelectResult refine(std::vector<SelectEntry>& list, SelectScratch& sc, const Kernels& k, bool mass,
                    double cum, int64_t count_before, double target, int shift,
                    const KeyRange* known = nullptr) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  if (mass && k.pivot_sums && shift == kLevel1Shift && list.size() > kSortBelow) {
    narrow_by_pivots(list, k, cum, count_before, target, known);
  }
  for (int round = 0; shift == kLevel1Shift && list.size() > kSortBelow && round < kLinearRounds;
       ++round) {
    // (not a structured binding: the bucket lambda below captures lo, which
    // clang before 16 does not allow)
    const KeyRange range = key_range(list);
    const float lo = range.first, hi = range.second;
    const float span = hi - lo;
    const float scale = static_cast<float>(kLinearBuckets) / span;
    // (ties only, an infinite key or a span too small to divide: the radix
    // levels below, which hold for any subset of non-negative keys)
    if (!(span > 0.0f && span < kInf && scale < kInf)) break;
    refine_level(
        list, sc, mass, kLinearBuckets,
        [&](const SelectEntry& e) {
          return std::min(static_cast<uint32_t>(kLinearBuckets - 1),
                          static_cast<uint32_t>((e.key - lo) * scale));
        },
        cum, count_before, target);
  }
  for (; list.size() > kSortBelow && shift >= 0; shift -= 10) {
    const int64_t buckets = shift == kLevel1Shift ? kLevel1Buckets : kSubBuckets;
    const auto mask = static_cast<uint32_t>(buckets - 1);
    refine_level(
        list, sc, mass, buckets,
        [&](const SelectEntry& e) { return (key_bits(e.key) >> shift) & mask; }, cum, count_before,
        target);
  }
  sort_list(list, sc.sorted, k);
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

// Σ weight(i) for i < n in double, in four chains (i mod 4, the tail into
// the first), added pairwise at the end: a fixed order, and no chain waits
// on another's latency (one chain of dependent additions costs microseconds
// on a few thousand entries; indexed by i & 3 the sums went through memory:
// 14 of an 85 us row, in select_in_band).
template <typename Weight>
double sum4(size_t n, Weight&& weight) {
  double l0 = 0.0, l1 = 0.0, l2 = 0.0, l3 = 0.0;
  size_t i = 0;
  for (; i + 4 <= n; i += 4) {
    l0 += static_cast<double>(weight(i));
    l1 += static_cast<double>(weight(i + 1));
    l2 += static_cast<double>(weight(i + 2));
    l3 += static_cast<double>(weight(i + 3));
  }
  for (; i < n; ++i) l0 += static_cast<double>(weight(i));
  return (l0 + l1) + (l2 + l3);
}

// Σ weight over a list.
double weight_of(const std::vector<SelectEntry>& list) {
  return sum4(list.size(), [&](size_t i) { return list[i].weight; });
}

}  // namespace

// The fast paths below start from a sample: the keys of the members among
// every kSampleStride-th token, in token order.
constexpr int64_t kSampleStride = 64;
// top-p's fast path samples more sparsely: its sample only estimates the
// total (with a wide margin, below) and places the gather's outer bound.
constexpr int64_t kNucleusSampleStride = kScanSampleStride;
// Small count targets (top-k, min_keep, top-N) take the fast path up to this.
constexpr double kFastTargetMax = 2048;
// ... which, over sets this short (compacted candidates), gathers every member
// (a 2048-bucket histogram pass would cost more than the set).
constexpr int64_t kGatherAllBelow = 4096;
// top-p takes its fast path when the nucleus can hold at most this many
// tokens (each token's mass is at most the largest, exp(0) = 1).
constexpr double kFastNucleusMax = 1024;
// ... over sets of at least this many tokens (a sample of 128 or more; a
// sample that misleads only costs the attempt: exact sums decide).
constexpr int64_t kFastNucleusMinTokens = 128 * kNucleusSampleStride;

// The keys of the members among every stride-th token, into `out`; with
// `mass`, their total mass (sample_keys) there.
void sample_member_keys(std::span<const Segment> segments, const SetSpec& set, const KeyRule& rule,
                        int64_t stride, std::vector<float>& out, const Runner& run,
                        double* mass = nullptr) {
  size_t room = 0;
  for (const Segment& seg : segments) room += static_cast<size_t>(seg.n / stride + 1);
  out.resize(room);
  size_t sampled = 0;
  for (const Segment& seg : segments) {
    // The scan's sample of the segment when it recorded one (the same
    // tokens, read where they sit contiguously).
    const Segment recorded{seg.sample, nullptr, sample_count(seg.n), 0};
    const bool use_recorded = seg.sample && stride == kScanSampleStride;
    sampled += static_cast<size_t>(run.k->sample_keys(use_recorded ? recorded : seg, set, rule,
                                                      use_recorded ? 1 : stride,
                                                      out.data() + sampled, mass));
  }
  out.resize(sampled);
}

// Gathers every member with key <= bound, per segment (`gather(s, out)`
// gathers segment s into out, with room for all its tokens, and returns how
// many, cap + 1 past cap), then in segment order into sc.list: (key, key -
// d0), the weight the mass's argument, which entry_masses turns into the
// mass (keys are distances d here). False when a segment holds more than
// `cap`.
template <typename Gather>
bool gather_members(std::span<const Segment> segments, float bound, float d0, int64_t cap,
                    SelectScratch& sc, const Runner& run, bool heavy, Gather gather) {
  const auto nseg = static_cast<int64_t>(segments.size());
  sc.gathered_at.resize(static_cast<size_t>(nseg));
  sc.gathered_count.resize(static_cast<size_t>(nseg));
  size_t room_all = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    sc.gathered_at[static_cast<size_t>(s)] = static_cast<int64_t>(room_all);
    room_all += static_cast<size_t>(segments[static_cast<size_t>(s)].n);
  }
  if (sc.gathered_tokens.size() < room_all) sc.gathered_tokens.resize(room_all);
  auto one = [&](int64_t s) {
    const auto i = static_cast<size_t>(s);
    sc.gathered_count[i] = gather(s, sc.gathered_tokens.data() + sc.gathered_at[i]);
  };
  if (heavy) {
    run(nseg, one);
  } else {
    run.serial(nseg, one);
  }
  sc.gathered_segments = nseg;
  sc.gathered_bound = bound;
  int64_t total = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    const int64_t got = sc.gathered_count[static_cast<size_t>(s)];
    if (got > cap) return false;
    total += got;
  }
  if (total > cap) return false;
  // (sized first: a push_back per entry stores the list's size each time)
  sc.list.resize(static_cast<size_t>(total));
  SelectEntry* to = sc.list.data();
  for (int64_t s = 0; s < nseg; ++s) {
    const std::span<const GatheredToken> got = sc.gathered_list(s);
    run.k->gathered_keys(got.data(), static_cast<int64_t>(got.size()), d0, to);
    to += got.size();
  }
  return true;
}

bool gather_members_below(std::span<const Segment> segments, const SetSpec& set, float bound,
                          float d0, int64_t cap, SelectScratch& sc, const Runner& run) {
  return gather_members(
      segments, bound, d0, cap, sc, run, false, [&](int64_t s, GatheredToken* out) {
        return run.k->gather_below(segments[static_cast<size_t>(s)], set, bound, cap, out);
      });
}

// The k-th smallest (from 0) of the n values at v (k < n), by the kernels'
// kth_largest (over order keys in `order`), which has no branch on a value:
// a pass that kept the k + 1 smallest in order, by insertion, mispredicted
// about once a value it kept, and nth_element once a value or so, on values
// never seen before. Over 256 distinct flat 32000-token rows,
// estimate_nucleus's 16th key, the sampled bound and block_max_bound took
// ~1.9 -> ~0.9 us a row together (TSC counts around them, with kth_largest
// ranking short lists).
float kth_smallest(const float* v, size_t n, size_t k, const Kernels& kern,
                   std::vector<uint32_t>& order) {
  order.resize(n);
  return kern.kth_largest(v, static_cast<int64_t>(n), static_cast<int64_t>(n - k), order.data());
}

// kth_smallest for a small k over many values: the largest of k + 1 group
// minima bounds the answer from above (k + 1 values lie at or below it), and
// only the values at or below it, a few times k on most rows, are ranked
// (copied into `below`). estimate_nucleus's 16th of ~1000 sampled keys:
// ~0.9 -> ~0.3 us.
float small_kth(const std::vector<float>& v, size_t k, std::vector<float>& below,
                const Kernels& kern, std::vector<uint32_t>& order) {
  const size_t groups = k + 1;
  if (v.size() < 4 * groups) return kth_smallest(v.data(), v.size(), k, kern, order);
  float bound = -kInf;
  for (size_t g = 0; g < groups; ++g) {
    const float* p = v.data() + v.size() * g / groups;
    const float* last = v.data() + v.size() * (g + 1) / groups;
    // (four chains: one waits on each min's latency)
    float m0 = kInf, m1 = kInf, m2 = kInf, m3 = kInf;
    for (; p + 4 <= last; p += 4) {
      m0 = std::min(m0, p[0]);
      m1 = std::min(m1, p[1]);
      m2 = std::min(m2, p[2]);
      m3 = std::min(m3, p[3]);
    }
    for (; p != last; ++p) m0 = std::min(m0, *p);
    bound = std::max(bound, std::min(std::min(m0, m1), std::min(m2, m3)));
  }
  below.resize(v.size());
  size_t n = 0;
  for (const float x : v) {
    below[n] = x;
    n += x <= bound ? 1 : 0;
  }
  return kth_smallest(below.data(), n, k, kern, order);
}

// A key bound that, with a margin, holds at least `count` members: the
// (4 count / stride + extra)-th smallest key of a sample taken every
// stride-th token. False when the sample is too small to say.
bool sampled_bound(double count, int64_t stride, SelectScratch& sc, const Kernels& kern,
                   float* bound, size_t extra = 8) {
  const auto want = static_cast<size_t>(4.0 * count / static_cast<double>(stride)) + extra;
  if (sc.samples.size() <= want) return false;
  *bound = small_kth(sc.samples, want, sc.pivot_sample, kern, sc.sample_order);
  return true;
}

// The sample ranks (from 0; every kSampleStride-th token) either side of
// a count target's boundary: its rank r = target / stride is known to
// within a binomial standard deviation sqrt(r (1 - target / n)) over a set
// of n tokens; the band is kCountBandDeviations of them, and a few keys,
// each side. (lo may be negative: nothing below.)
constexpr double kCountBandDeviations = 4.0;
struct RankBand {
  int64_t lo = 0, hi = 0;
};
RankBand count_target_ranks(double target, int64_t total_n) {
  const double rank = target / static_cast<double>(kSampleStride);
  const double share = std::min(1.0, target / static_cast<double>(total_n));
  const double margin = kCountBandDeviations * std::sqrt(rank * (1.0 - share)) + 4.0;
  return {static_cast<int64_t>(std::floor(rank - margin)),
          static_cast<int64_t>(std::ceil(rank + margin))};
}

// A key bound for a count target no larger than the number of pass blocks,
// from the scan's block maxima: the target-th largest block maximum x_b. The
// maxima of those blocks are `target` entries with x >= x_b, so (when they are
// members, which the gather checks) at least `target` members have key <=
// key(x_b); and only the blocks that reach x_b are read again. False when the
// segments carry no maxima or have too few blocks, unless `fewer`: then, with
// fewer maxima than the target, the smallest of them (*used says how many
// maxima the bound holds).
bool block_max_bound(std::span<const Segment> segments, const SetSpec& set, double target,
                     SelectScratch& sc, const Kernels& k, float* bound, bool fewer, size_t* used,
                     float* kth) {
  std::vector<float>& maxima = sc.block_maxima;
  size_t blocks = 0;
  for (const Segment& seg : segments) {
    if (!seg.bmax) return false;
    blocks += static_cast<size_t>(block_count(seg.n));
  }
  // (written whole and kept by a count, without a branch on each)
  maxima.resize(blocks);
  size_t n = 0;
  for (const Segment& seg : segments) {
    for (int64_t b = 0; b < block_count(seg.n); ++b) {
      const float m = seg.bmax[b];
      maxima[n] = m;
      n += block_may_hold_members(m, set) ? 1 : 0;
    }
  }
  maxima.resize(n);
  auto want = static_cast<size_t>(target);
  if (fewer) want = std::min(want, n);
  if (want < 1 || n < want) return false;
  if (used) *used = want;
  sc.block_keys.resize(n);
  // (nth_element here took ~0.1x the softmax floor a row over rows it had not
  // seen, against ~0.02x on one row timed again and again)
  const float x = k.kth_largest(maxima.data(), static_cast<int64_t>(n), static_cast<int64_t>(want),
                                sc.block_keys.data());
  if (kth) *kth = x;
  *bound = (set.xmax - x) * set.key_scale;
  return true;
}

// Small count targets (top-k, min_keep, top-N) over a large set: the sample
// gives a key bound that, with a margin, holds at least `target` members; one
// pass gathers the members with key <= bound and the exact answer is found
// among them. Returns false when the bound turns out too tight or too loose,
// and the histogram path takes over. (Distance keys only: count rules on
// typical keys, from min_keep, take count_band_select.)
// `sampled`: set when sc.samples holds the members' keys among every
// kSampleStride-th token (count_band_select's sample too), in some order.
bool small_target_select(std::span<const Segment> segments, const SetSpec& set, const KeyRule& rule,
                         double target, SelectScratch& sc, const Runner& run, SelectResult& result,
                         bool& sampled) {
  int64_t total = 0;
  for (const Segment& seg : segments) total += seg.n;
  if (rule.mass_weight || rule.target_is_fraction || rule.kind != KeyKind::kDistance ||
      target > kFastTargetMax) {
    return false;
  }
  float bound = 0.0f;
  if (total <= kGatherAllBelow) {
    bound = kInf;  // (a short set, compacted candidates: every member is gathered)
  } else if (!block_max_bound(segments, set, target, sc, *run.k, &bound)) {
    // (the sample places the bound at count_target_ranks' far end when it
    // holds that many keys; it once also asked for 1024 k tokens, which
    // sent top-k 500 to 2048 over a 128256 row, past the block maxima's
    // 251, to the histogram: ~240 us against ~13 for top-k 200)
    sample_member_keys(segments, set, rule, kSampleStride, sc.samples, run);
    sampled = true;
    const int64_t want = count_target_ranks(target, total).hi;
    if (static_cast<int64_t>(sc.samples.size()) <= want) return false;
    bound =
        small_kth(sc.samples, static_cast<size_t>(want), sc.pivot_sample, *run.k, sc.sample_order);
  }
  const auto cap = static_cast<int64_t>(64.0 * target) + 4096;
  if (!gather_members_below(segments, set, bound, rule.d0, cap, sc, run)) return false;
  if (static_cast<double>(sc.list.size()) < target) return false;
  result = refine(sc.list, sc, *run.k, false, 0.0, 0, target, kLevel1Shift);
  sc.gathered = true;
  return true;
}

// What the sample says of top-p's nucleus (estimate_nucleus).
struct NucleusEstimate {
  bool large = false;      // far more tokens than the fast path gathers
  float heavy_key = 0.0f;  // the sample's kHeavySamples-th smallest key
  // The mass at or before it: the block maxima's there (exact, one token a
  // block), and that plus the sample's estimate of the other tokens there
  // (which a heavy token caught by the sample makes far too large).
  double heavy_lo = 0.0, heavy_hi = 0.0;
  double light = 0.0;      // the mass past it (the sample's)
  bool estimated = false;  // the above are set
};

// Whether the nucleus looks far larger than the fast path below gathers (a
// flat tail whose many light tokens hold most of the mass): the sampled
// mass past the sample's kHeavySamples-th smallest key (past the ~2048
// heaviest tokens) is more than 1.5 times (1 - p) of the total. The mass at
// or before that key is taken as the block maxima's there, exactly (the
// scan's maxima read as a row of their own), for the decision, and with the
// sample's estimate of the other tokens there added, for the band select's
// upper bound: a heavy token the 1-in-128 sample caught would count 128
// times, one it missed not at all. Without this, such a row paid the fast
// path's two gathers of tens of thousands of tokens before the pivot select
// (top-p 0.95 over a Gaussian tail: 262 against 112 us). Only an estimate:
// either path is exact.
// For p below kLowP the test above says little (it asks the light tokens
// for more than 1.5 (1 - p) of the total: all of it and more for p <= 1/3),
// so the nucleus is also called large when the upper estimate of the ~2048
// heaviest tokens' mass falls short of kHeavyShort p of the total: the
// boundary then lies among the light tokens (top-p 0.3 over a Gaussian
// row: 255 -> 73 us, docs/performance.md).
constexpr double kLowP = 0.75;
constexpr double kHeavyShort = 0.85;
NucleusEstimate estimate_nucleus(std::span<const Segment> segments, const SetSpec& set,
                                 const KeyRule& rule, double fraction, double sample_mass,
                                 SelectScratch& sc, const Runner& run) {
  NucleusEstimate est;
  constexpr size_t kHeavySamples = 16;
  constexpr int64_t stride = kNucleusSampleStride;
  const double share = 1.5 * (1.0 - fraction);
  const bool low_p = fraction < kLowP;
  if (!(share < 1.0 || low_p) || sc.samples.size() <= kHeavySamples) return est;
  // The decision, from the heavy tokens' mass (lower and upper estimates)
  // and the light tokens'.
  auto wide = [&](double heavy_lo, double heavy_hi, double light) {
    return (share < 1.0 && light > share * (heavy_lo + light)) ||
           (low_p && heavy_hi < kHeavyShort * fraction * (heavy_lo + light));
  };
  for (const Segment& seg : segments) {
    if (!seg.bmax || !(seg.sample || seg.x)) return est;
  }
  // (the max, a member at d = 0 when dlo is 0, weighs exp(d0): when even
  // all the sampled mass as light against the max alone as heavy says
  // small, the estimate below cannot say wide)
  const double all = static_cast<double>(stride) * sample_mass;
  const double max_mass = std::exp(static_cast<double>(rule.d0));
  if (set.dlo == 0.0f && !wide(max_mass, max_mass, all)) return est;
  const float heavy_key =
      small_kth(sc.samples, kHeavySamples, sc.pivot_sample, *run.k, sc.sample_order);
  // The sampled tokens at or before that key (those the sample took, every
  // stride-th from each segment's start): the ones that are not their
  // block's maximum from the front of the list, the others from its back.
  std::vector<SelectEntry>& heavy = sc.list;  // (free until the gather)
  heavy.resize(sc.samples.size());
  size_t others = 0, maxima_at = heavy.size();
  // (a token below x_floor cannot reach heavy_key: one compare for most)
  const float x_floor = x_floor_for_key(set, heavy_key);
  for (const Segment& seg : segments) {
    const int64_t count = (seg.n + stride - 1) / stride;
    auto x_at = [&](int64_t j) { return seg.sample ? seg.sample[j] : seg.x[j * stride]; };
    for (int64_t j = 0; j < count && others < maxima_at; ++j) {
      const float x = x_at(j);
      if (x < x_floor) continue;
      const float d = distance(x, set);
      if (!is_member(d, set) || !(d <= heavy_key)) continue;
      const SelectEntry e{d, d - rule.d0};
      if (x == seg.bmax[j * stride / kPassBlock]) {
        heavy[--maxima_at] = e;
      } else {
        heavy[others++] = e;
      }
    }
  }
  run.k->entry_masses(heavy.data(), static_cast<int64_t>(others));
  run.k->entry_masses(heavy.data() + maxima_at, static_cast<int64_t>(heavy.size() - maxima_at));
  double sampled_others = 0.0, sampled_maxima = 0.0;
  for (size_t i = 0; i < others; ++i) sampled_others += heavy[i].weight;
  for (size_t i = maxima_at; i < heavy.size(); ++i) sampled_maxima += heavy[i].weight;
  SetSpec heavy_set = set;
  heavy_set.dhi = std::min(set.dhi, heavy_key);
  double maxima = 0.0;
  for (const Segment& seg : segments) {
    int64_t unused = 0;
    maxima += run.k->sum_mass(Segment{seg.bmax, nullptr, block_count(seg.n), 0}, heavy_set, rule.d0,
                              &unused, nullptr);
  }
  est.heavy_key = heavy_key;
  // (more sampled tokens at or before heavy_key than the kHeavySamples + 1
  // distinct keys would give, by a margin, are ties: many tokens share the
  // maximum's value, or a few values, and a block's maximum is then not one
  // token; the sample counts them as it counts the others)
  constexpr size_t kTieMargin = 4;
  if (others + (heavy.size() - maxima_at) > kHeavySamples + 1 + kTieMargin) {
    est.heavy_lo = est.heavy_hi = static_cast<double>(stride) * (sampled_others + sampled_maxima);
  } else {
    est.heavy_lo = maxima;
    est.heavy_hi = maxima + static_cast<double>(stride) * sampled_others;
  }
  est.light = std::max(0.0, all - static_cast<double>(stride) * (sampled_others + sampled_maxima));
  est.estimated = true;
  est.large = wide(est.heavy_lo, est.heavy_hi, est.light);
  return est;
}

// top-p over a large set whose nucleus is small (the peaked rows of LM
// decoding): the sample's mass, scaled up, estimates the total Z; when p Z
// cannot need more than kFastNucleusMax tokens, the members with the smallest
// keys are gathered as for a count target, the exact total is formed in one
// pass, and if the gathered mass reaches p Z the answer is found among them.
// Otherwise (or when the sample misleads) the histogram path takes over.
bool small_nucleus_select(std::span<const Segment> segments, const SetSpec& set,
                          const KeyRule& rule, double fraction, SelectScratch& sc,
                          const Runner& run, SelectResult& result, NucleusEstimate& est) {
  int64_t total = 0;
  for (const Segment& seg : segments) total += seg.n;
  if (!rule.mass_weight || !rule.target_is_fraction || rule.kind != KeyKind::kDistance ||
      set.key_scale != set.scale || total < kFastNucleusMinTokens) {
    return false;
  }
  constexpr auto stride = static_cast<double>(kNucleusSampleStride);
  double sample_mass = 0.0;
  sample_member_keys(segments, set, rule, kNucleusSampleStride, sc.samples, run, &sample_mass);
  est = estimate_nucleus(segments, set, rule, fraction, sample_mass, sc, run);
  // (p Z tokens at least, each of mass 1 at most: a nucleus too large for
  // this path whatever the estimate says, when it could say anything)
  if (fraction * sample_mass * stride > kFastNucleusMax) {
    est.large = est.estimated;
    return false;
  }
  if (est.large) return false;

  // Gather about eight times the tokens the estimate needs (the estimate
  // misses the few heaviest tokens, which only makes the nucleus smaller).
  const double estimate = 8.0 * fraction * sample_mass * stride;
  const double want = std::clamp(estimate, 64.0, kFastNucleusMax);
  // (the block maxima's bound for at most a third of the blocks: 64 maxima
  // are every block of a 32000-token row, whose every block then took the
  // gathering form and gathered ~200-350 tokens where a peaked row's nucleus
  // is one or two; one peaked 32000 row, top-p 7.48 -> 5.67 us. From 192
  // blocks up, as before)
  int64_t blocks = 0;
  for (const Segment& seg : segments) blocks += block_count(seg.n);
  const double least = static_cast<double>(std::clamp<int64_t>(blocks / 3, 16, 64));
  const double want_maxima = std::clamp(estimate, least, kFastNucleusMax);
  // The pass gathers below the block maxima's bound, which holds `want`
  // tokens for sure (few, on a peaked row), when those maxima alone look
  // like reaching p Z (their masses against the sample's estimate of the
  // rest); otherwise, or when there is no such bound, below the sample's
  // bound, with its margin. The sample's bound also serves when the first
  // falls short, in a second, compare-only gather.
  float tight = kInf;
  // (a short row may have fewer blocks than `want`: their maxima then
  // make the bound, and the exact masses below say whether it held enough)
  size_t maxima = 0;
  float kth = 0.0f;
  bool have_tight =
      block_max_bound(segments, set, want_maxima, sc, *run.k, &tight, true, &maxima, &kth);
  if (have_tight) {
    // (an estimate) The `maxima` largest block maxima: those above the kth,
    // then as many of the kth as make up the count.
    std::vector<SelectEntry>& top = sc.list;  // (free until the gather)
    top.resize(sc.block_maxima.size());
    size_t above = 0;
    for (const float m : sc.block_maxima) {
      const float e = distance(m, set) - rule.d0;
      top[above] = SelectEntry{e, e};
      above += m > kth ? 1 : 0;
    }
    const float e = distance(kth, set) - rule.d0;
    std::fill(top.begin() + static_cast<int64_t>(above), top.begin() + static_cast<int64_t>(maxima),
              SelectEntry{e, e});
    top.resize(maxima);
    run.k->entry_masses(top.data(), static_cast<int64_t>(top.size()));
    double top_mass = 0.0;
    for (const SelectEntry& m : top) top_mass += m.weight;
    // (the sample's estimate of the rest is taken twice over: on a flat row
    // it misses much of the mass near the bound, one token in 128 being
    // seen, and a bound that falls short costs a second gather. Four times
    // over sent medium rows whose few maxima held the nucleus to the
    // sample's bound, which gathered hundreds of tokens: eight distinct
    // medium rows, top-p 0.94x at 128256 tokens, 0.88x at 32000; flat
    // rows 1.006x, the bound falling short a little more often)
    have_tight = top_mass >= fraction * (top_mass + 2.0 * sample_mass * stride);
  }
  float bound = tight;
  // (the sample's bound with 2 samples to spare: on flat rows, whose
  // nucleus of a few hundred tokens the 1-in-128 sample barely sees, each
  // spare sample adds ~128 gathered tokens. 8 made the pass gather 3-10
  // times the nucleus; 4 needed a second, compare-only gather a little more
  // often (6-11 % of flat rows against 5.5-7.5 %) and was 3-5 % faster over
  // eight distinct flat rows, 11-16 % on one flat row timed again and
  // again; 2 another 5 % over eight distinct flat rows, 2 % on one, 9 % over
  // eight distinct medium rows, peaked rows unchanged; 1 was slower on flat
  // rows again: bench/ab)
  if (!have_tight && !sampled_bound(want, kNucleusSampleStride, sc, *run.k, &bound, 2)) {
    return false;
  }
  const auto cap = static_cast<int64_t>(64.0 * want) + 4096;
  // One pass gathers them and forms the exact total, per segment (summed in
  // segment order below).
  sc.seg_total.resize(segments.size());
  const bool gathered = gather_members(
      segments, bound, rule.d0, cap, sc, run, true, [&](int64_t s, GatheredToken* out) {
        int64_t got = 0;
        sc.seg_total[static_cast<size_t>(s)] = run.k->sum_mass_gather(
            segments[static_cast<size_t>(s)], set, rule.d0, bound, cap, out, &got);
        return got;
      });
  if (!gathered) return false;
  double z = 0.0;
  for (double t : sc.seg_total) z += t;
  const double target = fraction * z;

  // (at least one member, too: with p = 0 the target is 0, which an empty
  // list "reaches"; a bound from block maxima that typical-p's lower bound
  // excludes (the row's maximum dropped) gathers none)
  auto enough = [&] {
    run.k->entry_masses(sc.list.data(), static_cast<int64_t>(sc.list.size()));
    return !sc.list.empty() && weight_of(sc.list) >= target;
  };
  if (!enough()) {
    // The nucleus reaches past the first bound: gather again below a looser
    // one (a compare per token, and only in blocks that can reach it): the
    // sample's bound for `want` tokens after the block maxima's; after the
    // sample's own, for twice as many, and if that falls short too, for
    // eight times as many (the heavy tokens the sample missed can make its
    // bounds too tight: Z was underestimated). Eight times at once gathered
    // ~2,900 tokens a flat row that fell short (12-16 % of them), where
    // twice gathers ~1,600 and falls short on ~1 in 60 of those rows
    // (nucleus bench --batch 256 --rows flat, 32000 and 128256 tokens).
    const double times[2] = {have_tight ? 1.0 : 2.0, 8.0};
    const int tries = have_tight ? 1 : 2;
    bool held = false;
    for (int t = 0; t < tries && !held; ++t) {
      const double wider = times[t] * want;
      const auto wider_cap = static_cast<int64_t>(64.0 * wider) + 4096;
      float loose = 0.0f;
      if (!sampled_bound(wider, kNucleusSampleStride, sc, *run.k, &loose) || !(loose > bound) ||
          !gather_members_below(segments, set, loose, rule.d0, wider_cap, sc, run)) {
        return false;
      }
      held = enough();
      bound = loose;
    }
    if (!held) return false;
  }
  // (every key lies in [0, bound], the last gather's: the pivots' first
  // range without a pass to find it, ~0.3 us on a flat row's ~800 entries)
  const KeyRange gathered_range{0.0f, bound};
  result = refine(sc.list, sc, *run.k, true, 0.0, 0, target, kLevel1Shift, &gathered_range);
  result.total = z;
  sc.gathered = true;
  return true;
}

// Mass-weighted targets (top-p, typical-p) over a large set: one pass stores
// every token's key and weight (and totals the weight); then rounds of
// kPivots pivots, taken from a sample of the keys still in play, total the
// weight at each pivot in one vector pass, which narrows the interval that
// holds the boundary to the part between two pivots, until it is short
// enough to refine. Every sum is exact (no estimate decides anything: the
// sample only places the pivots), and nothing is scattered into a histogram.
// False (the histogram path takes over) when the target is not positive or
// the rounds stop shrinking the interval (a run of equal keys).
constexpr int64_t kPivotMin = 16384;         // sets smaller than this take the histogram path
constexpr int64_t kPivotRefineBelow = 2048;  // intervals this short are refined
constexpr int64_t kPivotSample = 256;        // keys sampled per round

// Each segment's first entry in the stored arrays (sc.offsets) and room for
// every token (a packet of room past the end for keep_interval's whole-packet
// stores); returns the number of tokens. `padded`: a packet of room past
// each segment's too, for passes that list a segment's tokens on its own
// thread with whole-packet stores (the band passes; their lists are closed
// up after), which would otherwise write into the next segment's room.
int64_t layout_stored(std::span<const Segment> segments, SelectScratch& sc, bool padded = false) {
  const auto nseg = static_cast<int64_t>(segments.size());
  sc.offsets.resize(static_cast<size_t>(nseg + 1));
  sc.offsets[0] = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    sc.offsets[static_cast<size_t>(s + 1)] =
        sc.offsets[static_cast<size_t>(s)] + segments[static_cast<size_t>(s)].n + (padded ? 64 : 0);
  }
  const int64_t total_n = sc.offsets.back();
  if (sc.keys.size() < static_cast<size_t>(total_n + 64)) {
    sc.keys.resize(static_cast<size_t>(total_n + 64));
    sc.weights.resize(static_cast<size_t>(total_n + 64));
  }
  return total_n;
}

bool typical_moments(std::span<const Segment> segments, const SetSpec& set, float d0,
                     SelectScratch& sc, const Runner& run, Moments* moments) {
  int64_t total_n = 0;
  for (const Segment& seg : segments) total_n += seg.n;
  if (total_n < kPivotMin) return false;
  layout_stored(segments, sc);
  const auto nseg = static_cast<int64_t>(segments.size());
  sc.seg_moments.resize(static_cast<size_t>(nseg));
  // On this thread: the pivot select's rounds, which run here, read what
  // this pass stores (from this core's cache, not another's).
  run.serial(nseg, [&](int64_t s) {
    const int64_t at = sc.offsets[static_cast<size_t>(s)];
    sc.seg_moments[static_cast<size_t>(s)] =
        run.k->moments(segments[static_cast<size_t>(s)], set, d0, MomentKind::kEntropy,
                       sc.keys.data() + at, sc.weights.data() + at);
  });
  Moments total;
  for (const Moments& m : sc.seg_moments) total.add(m);
  *moments = total;
  sc.keys_stored = false;  // (the keys array now holds e)
  sc.prepared = true;
  sc.prepared_of = segments.data();
  sc.prepared_total = total.z;
  return true;
}

namespace {

// kPivots pivots at the quartiles of `sample`, each by kth_smallest (no
// branch on a value: std::sort of the ~256 sampled keys mispredicted about
// every other compare on a row never seen); false when it holds fewer than
// four keys.
bool quartiles(const std::vector<float>& sample, float* pivots, const Kernels& kern,
               std::vector<uint32_t>& order) {
  const size_t n = sample.size();
  if (n < 4) return false;
  for (int i = 0; i < kPivots; ++i) {
    pivots[i] =
        kth_smallest(sample.data(), n, n * static_cast<size_t>(i + 1) / (kPivots + 1), kern, order);
  }
  return true;
}

// Pivots from a sample of the entries of k[0, size) in (from, to].
bool pick_pivots(const float* k, int64_t size, float from, float to, SelectScratch& sc,
                 const Kernels& kern, float* pivots) {
  const int64_t stride = std::max<int64_t>(1, size / kPivotSample);
  sc.pivot_sample.clear();
  for (int64_t j = 0; j < size; j += stride) {
    if (k[j] > from && k[j] <= to) sc.pivot_sample.push_back(k[j]);
  }
  return quartiles(sc.pivot_sample, pivots, kern, sc.sample_order);
}

// The pivot select's rounds over entries (key, weight)[0, n) whose interval
// (lo, hi] holds the boundary (cum: the weight of the entries at or below
// lo, `below` how many; none of them is among the n). `pivots`, with their
// sums and counts over the n entries, come from the pass that formed them,
// or, when `pivots` is null, from a sample of them and a copy that totals
// them. Each round copies the part between two pivots that holds the
// boundary into sc.interval_keys / interval_weights (room for n + 64) and,
// in the same read, totals the next pivots (a sample of the part); below
// kPivotRefineBelow entries, refine finishes. False when the rounds stop
// shrinking the part (a run of equal keys).
bool narrow_to_boundary(const float* key, const float* weight, int64_t n, float lo, float hi,
                        double cum, int64_t below, const float* given_pivots,
                        const double* given_sums, const int64_t* given_counts, double target,
                        SelectScratch& sc, const Runner& run, SelectResult& result) {
  float* out_key = sc.interval_keys.data();
  float* out_weight = sc.interval_weights.data();
  float pivots[kPivots];
  double sums[kPivots];
  int64_t counts[kPivots];
  if (given_pivots) {
    std::copy_n(given_pivots, kPivots, pivots);
    std::copy_n(given_sums, kPivots, sums);
    std::copy_n(given_counts, kPivots, counts);
  } else {
    if (!pick_pivots(key, n, lo, hi, sc, *run.k, pivots)) return false;
    n = run.k->keep_and_sum(key, weight, n, lo, hi, pivots, out_key, out_weight, sums, counts);
    key = out_key;
    weight = out_weight;
  }
  for (bool first = true;; first = false) {
    // The first pivot whose cumulative weight reaches the target closes the
    // new interval; the one before it opens it. (The sums count the entries
    // in (lo, pivot]: none of the n lies at or below lo.)
    float new_lo = lo, new_hi = hi;
    double new_cum = cum;
    int64_t new_below = below;
    for (int i = 0; i < kPivots; ++i) {
      if (cum + sums[i] >= target) {
        new_hi = std::min(hi, pivots[i]);
        break;
      }
      new_lo = pivots[i];
      new_cum = cum + sums[i];
      new_below = below + counts[i];
    }
    const bool more = pick_pivots(key, n, new_lo, new_hi, sc, *run.k, pivots);
    const int64_t kept = run.k->keep_and_sum(
        key, weight, n, new_lo, new_hi, more ? pivots : nullptr, out_key, out_weight, sums, counts);
    if (kept >= n && !first) return false;  // no progress: a run of equal keys
    key = out_key;
    weight = out_weight;
    n = kept;
    lo = new_lo;
    hi = new_hi;
    cum = new_cum;
    below = new_below;
    if (n <= kPivotRefineBelow) break;
    if (!more) return false;  // a long interval the sample cannot split
  }
  sc.list.resize(static_cast<size_t>(n));
  for (int64_t j = 0; j < n; ++j) sc.list[static_cast<size_t>(j)] = SelectEntry{key[j], weight[j]};
  result = refine(sc.list, sc, *run.k, true, cum, below, target, kLevel1Shift);
  return true;
}

void reserve_intervals(int64_t n, SelectScratch& sc) {
  if (sc.interval_keys.size() < static_cast<size_t>(n + 64)) {
    sc.interval_keys.resize(static_cast<size_t>(n + 64));
    sc.interval_weights.resize(static_cast<size_t>(n + 64));
  }
}

// Each segment's list, sc.gathered_count[s] entries at sc.offsets[s] of
// sc.keys and sc.weights, closed up at the front in segment order; returns
// how many in all.
int64_t close_up_lists(SelectScratch& sc, int64_t nseg) {
  int64_t n = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    const int64_t at = sc.offsets[static_cast<size_t>(s)];
    const int64_t got = sc.gathered_count[static_cast<size_t>(s)];
    if (at != n) {  // (copy_n forbids a range onto itself; forward, onto lower room, is fine)
      std::copy_n(sc.keys.begin() + at, got, sc.keys.begin() + n);
      std::copy_n(sc.weights.begin() + at, got, sc.weights.begin() + n);
    }
    n += got;
  }
  return n;
}

// The threshold among a band's n entries (sc.keys / sc.weights, keys in
// (lo, hi]) when the weight before the band (`below`, of `below_count`
// entries) falls short of the target and the band's reaches it: refine on a
// short band, the pivot rounds on a long one. False when the target lies
// outside the band (or the rounds stall on equal keys).
bool select_in_band(int64_t n, float lo, float hi, double below, int64_t below_count, double target,
                    SelectScratch& sc, const Runner& run, SelectResult& result) {
  if (!(below < target)) return false;  // before lo
  const float* weights = sc.weights.data();
  const double band = sum4(static_cast<size_t>(n), [&](size_t i) { return weights[i]; });
  if (!(below + band >= target)) return false;  // past hi
  if (n <= kPivotRefineBelow) {
    sc.list.resize(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      sc.list[static_cast<size_t>(i)] =
          SelectEntry{sc.keys[static_cast<size_t>(i)], sc.weights[static_cast<size_t>(i)]};
    }
    result = refine(sc.list, sc, *run.k, true, below, below_count, target, kLevel1Shift);
    return true;
  }
  reserve_intervals(n, sc);
  return narrow_to_boundary(sc.keys.data(), sc.weights.data(), n, lo, hi, below, below_count,
                            nullptr, nullptr, nullptr, target, sc, run, result);
}

}  // namespace

// top-p whose nucleus holds thousands of tokens (est.large): the sampled
// tail's masses, by key, place a band of keys around the boundary: its deep
// end where the sampled tail holds (1 - p) of the smaller estimate of the
// total, less three standard errors, its near end where it holds that of
// the larger, plus three. One pass over the row, a segment per thread
// (sum_mass_band), totals the mass and the mass before the band and lists
// the band's keys and masses; the pivot rounds (or refine, on a short list)
// finish on that list. Against the pivot select: no pass that stores every
// key and weight, on one thread, and no rounds over the whole row (top-p
// 0.95 over a Gaussian tail, one 128256 row, 112 -> 66 us;
// docs/performance.md). False when the boundary falls outside the band
// (the estimate missed: the pivot select then takes over, after one pass
// more) or there is nothing to place it by.
bool large_nucleus_select(std::span<const Segment> segments, const SetSpec& set,
                          const KeyRule& rule, double fraction, const NucleusEstimate& est,
                          SelectScratch& sc, const Runner& run, SelectResult& result) {
  constexpr int64_t kBuckets = 256;
  constexpr auto stride = static_cast<double>(kNucleusSampleStride);
  // The total lies between these, give or take the sample's error.
  const double z_lo = est.heavy_lo + est.light;
  const double z_hi = est.heavy_hi + est.light;
  const double tail = (1.0 - fraction) * z_lo;
  if (!(tail > 0.0) || !(est.light > 0.0)) return false;
  // The sampled tokens past heavy_key, their masses by key: kBuckets of
  // equal width up to the largest sampled key.
  float top = est.heavy_key;
  std::vector<SelectEntry>& light = sc.list;
  light.clear();
  for (const float k : sc.samples) {
    if (!(k > est.heavy_key)) continue;
    light.push_back(SelectEntry{k, k - rule.d0});
    top = std::max(top, k);
  }
  const float scale = static_cast<float>(kBuckets) / (top - est.heavy_key);
  if (!(scale > 0.0f && scale < kInf)) return false;
  run.k->entry_masses(light.data(), static_cast<int64_t>(light.size()));
  double mass[kBuckets] = {};
  double square[kBuckets] = {};
  double light_mass = 0.0, light_square = 0.0;
  for (const SelectEntry& e : light) {
    const auto b =
        std::min<int64_t>(kBuckets - 1, static_cast<int64_t>((e.key - est.heavy_key) * scale));
    const auto w = static_cast<double>(e.weight);
    mass[b] += w;
    square[b] += w * w;
    light_mass += w;
    light_square += w * w;
  }
  if (!(light_mass > 0.0)) return false;
  auto edge = [&](int64_t b) { return est.heavy_key + static_cast<float>(b) / scale; };
  // From the deepest bucket up: the bucket where the sampled tail first
  // reaches (1 - p) of the smaller total less delta (the band's deep end,
  // hi) and where it reaches (1 - p) of the larger total plus delta (its
  // near end, lo), delta three standard errors of the sampled sums (sqrt(Σ
  // m^2) / Σ m of the sampled masses: the tail's, and the light part's of
  // the total) and a little more.
  const double z_error = std::sqrt(light_square) / light_mass * (est.light / z_lo);
  int64_t b_far = -1;
  double cum = 0.0, cum_square = 0.0;
  for (int64_t b = kBuckets - 1; b >= 0 && b_far < 0; --b) {
    cum += stride * mass[b];
    cum_square += stride * stride * square[b];
    if (cum >= tail) b_far = b;
  }
  if (b_far < 0 || !(cum > 0.0)) return false;
  const double delta = 3.0 * (std::sqrt(cum_square) / cum + z_error) + 0.02;
  const double far = tail * (1.0 - delta);
  const double near = (1.0 - fraction) * z_hi * (1.0 + delta);
  int64_t b_near = 0;
  b_far = kBuckets - 1;  // (the deepest bucket whose tail reaches `far`)
  cum = 0.0;
  for (int64_t b = kBuckets - 1; b >= 0; --b) {
    cum += stride * mass[b];
    if (cum < far) b_far = b - 1;
    if (cum >= near) {
      b_near = b;
      break;
    }
  }
  const float lo = edge(b_near);
  const float hi = edge(b_far + 1);

  // One pass, a segment per thread: the total, the mass at or before lo,
  // and the keys and masses of the members in (lo, hi], each segment's
  // where its whole would fit, then closed up in segment order.
  const auto nseg = static_cast<int64_t>(segments.size());
  layout_stored(segments, sc, /*padded=*/true);
  sc.seg_total.resize(static_cast<size_t>(nseg));
  sc.masses.resize(static_cast<size_t>(nseg));
  sc.seg_chosen.resize(static_cast<size_t>(nseg));
  sc.gathered_count.resize(static_cast<size_t>(nseg));
  run(nseg, [&](int64_t s) {
    const auto i = static_cast<size_t>(s);
    const int64_t at = sc.offsets[i];
    sc.seg_total[i] = run.k->sum_mass_band(segments[i], set, rule.d0, lo, hi, sc.keys.data() + at,
                                           sc.weights.data() + at, &sc.gathered_count[i],
                                           &sc.masses[i], &sc.seg_chosen[i]);
  });
  double total = 0.0, below = 0.0;
  int64_t below_count = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    const auto i = static_cast<size_t>(s);
    total += sc.seg_total[i];
    below += sc.masses[i];
    below_count += sc.seg_chosen[i];
  }
  const int64_t n = close_up_lists(sc, nseg);
  const double target = fraction * total;
  if (!(target > 0.0) || !(target <= total)) return false;
  if (!select_in_band(n, lo, hi, below, below_count, target, sc, run, result)) return false;
  result.total = total;
  return true;
}

// `prepared`: typical_moments stored e and the masses for these segments.
bool pivot_select(std::span<const Segment> segments, const SetSpec& set, const KeyRule& rule,
                  double target, bool prepared, SelectScratch& sc, const Runner& run,
                  SelectResult& result) {
  int64_t total_n = 0;
  for (const Segment& seg : segments) total_n += seg.n;
  if (!rule.mass_weight || total_n < kPivotMin) return false;
  const auto nseg = static_cast<int64_t>(segments.size());
  if (!prepared) layout_stored(segments, sc);
  // Round 0's pivots come from a sample of the keys, taken before the pass
  // that stores them all (and totals the weight at the pivots as it goes).
  float pivots[kPivots];
  const int64_t stride = std::max<int64_t>(1, total_n / kPivotSample);
  if (prepared) {
    // The stored e give the sample's keys.
    sc.pivot_sample.clear();
    for (int64_t j = 0; j < total_n; j += stride) {
      const float e = sc.keys[static_cast<size_t>(j)];
      if (e < kInf) {
        sc.pivot_sample.push_back(typical_key(e, rule.mu));
      }
    }
  } else {
    sample_member_keys(segments, set, rule, stride, sc.pivot_sample, run);
    std::erase_if(sc.pivot_sample, [](float k) { return !(k < kInf); });
  }
  if (!quartiles(sc.pivot_sample, pivots, *run.k, sc.sample_order)) return false;
  sc.seg_total.resize(static_cast<size_t>(nseg));
  sc.masses.resize(static_cast<size_t>(nseg * kPivots));
  sc.seg_chosen.resize(static_cast<size_t>(nseg * kPivots));
  // On this thread, as typical_moments: the rounds read what this stores.
  run.serial(nseg, [&](int64_t s) {
    const int64_t at = sc.offsets[static_cast<size_t>(s)];
    double* seg_sums = sc.masses.data() + s * kPivots;
    int64_t* seg_counts = sc.seg_chosen.data() + s * kPivots;
    if (prepared) {
      run.k->typical_keys_from_e(sc.keys.data() + at, sc.weights.data() + at,
                                 sc.offsets[static_cast<size_t>(s + 1)] - at, rule.mu, pivots,
                                 seg_sums, seg_counts);
      return;
    }
    sc.seg_total[static_cast<size_t>(s)] =
        run.k->store_keys(segments[static_cast<size_t>(s)], set, rule, sc.keys.data() + at,
                          sc.weights.data() + at, pivots, seg_sums, seg_counts);
  });
  double total = 0.0;
  if (prepared) {
    total = sc.prepared_total;
  } else {
    for (double t : sc.seg_total) total += t;
  }
  if (rule.target_is_fraction) target *= total;
  result = SelectResult();
  result.total = total;
  if (!(target > 0.0)) return false;
  if (!(target <= total)) {
    result.found = false;  // out of reach, every weight counted
    return true;
  }

  sc.keys_stored = true;
  sc.keys_of = segments.data();
  reserve_intervals(total_n, sc);
  // Round 0's sums came with the store pass, per segment, combined in
  // segment order. (The interval (lo, hi] holds the boundary: keys of +inf
  // carry no weight, non-members and masses that underflow, so the boundary
  // is finite.)
  double sums[kPivots];
  int64_t counts[kPivots];
  for (int i = 0; i < kPivots; ++i) {
    sums[i] = 0.0;
    counts[i] = 0;
    for (int64_t s = 0; s < nseg; ++s) {
      sums[i] += sc.masses[static_cast<size_t>(s * kPivots + i)];
      counts[i] += sc.seg_chosen[static_cast<size_t>(s * kPivots + i)];
    }
  }
  if (!narrow_to_boundary(sc.keys.data(), sc.weights.data(), total_n, -kInf, kMaxFloat, 0.0, 0,
                          pivots, sums, counts, target, sc, run, result)) {
    return false;
  }
  result.total = total;
  return true;
}

// Count targets the small-target path leaves (top-k, min_keep and top-N past
// kFastTargetMax, or a sampled bound that missed; min_keep under typical-p,
// on typical keys, at any size) over a large set: the
// sampled keys at count_target_ranks place a band around the target-th
// smallest key. One pass, a segment per thread (count_band), counts the members at
// or before the band and lists the band's keys; refine finishes on that
// list. Against the histogram pass, whose increments to one bucket wait on
// each other when the keys crowd into a few of its 2048 buckets (as a
// row's do), top-k 5000 over one 128256 row: see docs/performance.md.
// False when the boundary falls outside the band (the sample misled: the
// histogram takes over) or the set is too short to sample.
constexpr int64_t kCountBandMinTokens = 128 * kSampleStride;

// `have_sample`: sc.samples already holds the sample (small_target_select's,
// which missed).
bool count_band_select(std::span<const Segment> segments, const SetSpec& set, const KeyRule& rule,
                       double target, bool have_sample, SelectScratch& sc, const Runner& run,
                       SelectResult& result) {
  if (rule.mass_weight || rule.target_is_fraction) return false;
  int64_t total_n = 0;
  for (const Segment& seg : segments) total_n += seg.n;
  if (total_n < kCountBandMinTokens) return false;
  if (!have_sample) sample_member_keys(segments, set, rule, kSampleStride, sc.samples, run);
  std::vector<float>& v = sc.samples;
  const auto sampled = static_cast<int64_t>(v.size());
  const RankBand ranks = count_target_ranks(target, total_n);
  const int64_t hi_rank = ranks.hi;
  const int64_t lo_rank = std::min(ranks.lo, sampled - 1);
  // hi: past every member when the sample holds too few keys (every member
  // is then counted or listed; typical keys are +inf where the mass is 0).
  const float far_end = rule.kind == KeyKind::kTypical ? kInf : kMaxFloat;
  float hi = far_end, lo = -kInf;
  int64_t upto = sampled;
  if (hi_rank < sampled) {
    std::nth_element(v.begin(), v.begin() + hi_rank, v.end());
    hi = v[static_cast<size_t>(hi_rank)];
    upto = hi_rank;
  }
  if (lo_rank >= 0 && lo_rank < upto) {
    std::nth_element(v.begin(), v.begin() + lo_rank, v.begin() + upto);
    lo = v[static_cast<size_t>(lo_rank)];
  }
  if (!(lo < hi)) return false;  // (ties: a band of one key lists nothing)
  const auto nseg = static_cast<int64_t>(segments.size());
  layout_stored(segments, sc, /*padded=*/true);
  // (each segment's count before the band and how many it listed, as
  // large_nucleus_select keeps them)
  sc.seg_chosen.resize(static_cast<size_t>(nseg));
  sc.gathered_count.resize(static_cast<size_t>(nseg));
  run(nseg, [&](int64_t s) {
    const auto i = static_cast<size_t>(s);
    sc.gathered_count[i] = run.k->count_band(segments[i], set, rule, lo, hi,
                                             sc.keys.data() + sc.offsets[i], &sc.seg_chosen[i]);
  });
  int64_t below = 0, listed = 0;
  for (int64_t s = 0; s < nseg; ++s) {
    below += sc.seg_chosen[static_cast<size_t>(s)];
    listed += sc.gathered_count[static_cast<size_t>(s)];
  }
  if (!(static_cast<double>(below) < target)) return false;  // the boundary lies before lo
  if (static_cast<double>(below + listed) < target) {
    if (hi < far_end) return false;  // ... or past hi
    // Every member counted: the target is out of reach.
    result = SelectResult();
    result.count_le = below + listed;
    result.total = static_cast<double>(below + listed);
    return true;
  }
  // (each segment's list straight into sc.list, in segment order: closing
  // them up first would copy the band twice)
  sc.list.resize(static_cast<size_t>(listed));
  SelectEntry* to = sc.list.data();
  for (int64_t s = 0; s < nseg; ++s) {
    const float* k = sc.keys.data() + sc.offsets[static_cast<size_t>(s)];
    for (int64_t j = 0; j < sc.gathered_count[static_cast<size_t>(s)]; ++j) {
      *to++ = SelectEntry{k[j], 1.0f};
    }
  }
  result =
      refine(sc.list, sc, *run.k, false, static_cast<double>(below), below, target, kLevel1Shift);
  return true;
}

SelectResult weighted_select(std::span<const Segment> segments, const SetSpec& set,
                             const KeyRule& rule, double target, SelectScratch& sc,
                             const Runner& run) {
  sc.gathered = false;
  sc.keys_stored = false;
  // What typical_moments stored serves this select only (not min_keep's).
  const bool prepared = sc.prepared && sc.prepared_of == segments.data() &&
                        rule.kind == KeyKind::kTypical && rule.mass_weight;
  sc.prepared = false;
  NucleusEstimate est;
  bool sampled = false;
  if (SelectResult fast;
      small_target_select(segments, set, rule, target, sc, run, fast, sampled) ||
      count_band_select(segments, set, rule, target, sampled, sc, run, fast) ||
      small_nucleus_select(segments, set, rule, target, sc, run, fast, est) ||
      (est.large && large_nucleus_select(segments, set, rule, target, est, sc, run, fast)) ||
      pivot_select(segments, set, rule, target, prepared, sc, run, fast)) {
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
    run.k->key_histogram(segments[static_cast<size_t>(s)], set, rule, counts, masses);
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
  // (a run of 16 empty buckets is passed over after one test: their zero
  // weights would add nothing, and a short set, a top-k's survivors say,
  // leaves almost every bucket empty; one add per bucket, each waiting on
  // the last, cost such a set more than its histogram)
  double total = 0.0;
  for (int64_t b0 = 0; b0 < kTrashBucket; b0 += 16) {
    const int64_t b1 = std::min<int64_t>(b0 + 16, kTrashBucket);
    uint32_t any = 0;
    for (int64_t b = b0; b < b1; ++b) any |= tot_count[b];
    if (any == 0) continue;
    for (int64_t b = b0; b < b1; ++b) {
      total += mass ? tot_mass[b] : static_cast<double>(tot_count[b]);
    }
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
  run.serial(nseg, [&](int64_t s) {
    const int64_t at = sc.offsets[static_cast<size_t>(s)];
    if (at == sc.offsets[static_cast<size_t>(s + 1)]) return;
    run.k->gather_bucket(segments[static_cast<size_t>(s)], set, rule, bucket_lo, bucket_hi,
                         inf_bucket, sc.list.data() + at);
  });
  if (mass) run.k->entry_masses(sc.list.data(), static_cast<int64_t>(sc.list.size()));
  SelectResult r = refine(sc.list, sc, *run.k, mass, cum, count_before, target, kLevel1Shift - 10);
  r.total = total;
  return r;
}

constexpr int kSmallTypicalMaxima = 16;
constexpr int64_t kSmallTypicalBlocks = 16;

// The block maxima that are members with a mass, as (d - d0, mass) in
// sc.typical_maxima (the masses as every pass computes them); false when a
// segment carries no maxima.
bool block_maxima_masses(std::span<const Segment> segments, const SetSpec& set, float d0,
                         SelectScratch& sc, const Runner& run) {
  std::vector<SelectEntry>& out = sc.typical_maxima;
  out.clear();
  for (const Segment& seg : segments) {
    if (!seg.bmax) return false;
    for (int64_t b = 0; b < block_count(seg.n); ++b) {
      const float d = distance(seg.bmax[b], set);
      const float e = d - d0;
      if (!is_member(d, set) || !(e <= kUnderflow)) continue;
      out.push_back(SelectEntry{e, e});
    }
  }
  run.k->entry_masses(out.data(), static_cast<int64_t>(out.size()));
  return true;
}

// Whether small_typical_select is likely to decide (it decides or declines
// exactly; this only spares typical_moments' stores when it will): the
// kSmallTypicalMaxima heaviest block maxima hold `fraction` of the block
// maxima's mass. (What the block maxima do not show, the mass below each
// block's maximum, can still make it decline.)
bool typical_set_looks_small(std::span<const Segment> segments, const SetSpec& set, float d0,
                             double fraction, SelectScratch& sc, const Runner& run) {
  if (!block_maxima_masses(segments, set, d0, sc, run)) return false;
  std::vector<float>& masses = sc.block_maxima;
  masses.clear();
  double total = 0.0;
  for (const SelectEntry& m : sc.typical_maxima) {
    masses.push_back(m.weight);
    total += m.weight;
  }
  const auto top = std::min<size_t>(kSmallTypicalMaxima, masses.size());
  if (top == 0) return false;
  // The top masses' sum from the top-th largest, t: those above it, and t
  // for the rest of the count (no branch on a mass, as nth_element had).
  sc.block_keys.resize(masses.size());
  const float t = run.k->kth_largest(masses.data(), static_cast<int64_t>(masses.size()),
                                     static_cast<int64_t>(top), sc.block_keys.data());
  double top_mass = 0.0;
  size_t above = 0;
  for (const float m : masses) {
    top_mass += m > t ? static_cast<double>(m) : 0.0;
    above += m > t ? 1 : 0;
  }
  top_mass += static_cast<double>(top - above) * static_cast<double>(t);
  return top_mass >= fraction * total;
}

// The block maxima are tokens whose keys and masses are known from the scan
// alone: the smallest R at which those with key <= R reach the target
// bounds the boundary key (the set {key <= R} holds at least their mass).
// The members with key <= R are then listed from the row, reading only
// blocks whose maximum does not put them past R (for e > mu the key grows
// with e, and a block's maximum has its smallest e), with the masses every
// pass computes (entry_masses), and the exact answer is found among them;
// the kept set's d-bounds come from the listed tokens, as key_bounds
// computes them. Declines when more than kSmallTypicalMaxima maxima are
// needed, more than kSmallTypicalBlocks blocks would be read, or the listed
// mass falls short.
bool small_typical_select(std::span<const Segment> segments, const SetSpec& set,
                          const KeyRule& rule, double target, SelectScratch& sc, const Runner& run,
                          KeyBounds& bounds) {
  if (!(target > 0.0) || set.key_scale != set.scale) return false;
  // The block maxima with their masses (typical_set_looks_small's), keyed.
  sc.list.assign(sc.typical_maxima.begin(), sc.typical_maxima.end());
  std::vector<SelectEntry>& maxima = sc.list;
  for (SelectEntry& m : maxima) m.key = typical_key(m.key, rule.mu);
  float bound = -kInf;
  double reached = 0.0;
  for (int i = 0; i < kSmallTypicalMaxima && reached < target && !maxima.empty(); ++i) {
    const auto lowest =
        std::min_element(maxima.begin(), maxima.end(),
                         [](const SelectEntry& a, const SelectEntry& b) { return a.key < b.key; });
    bound = lowest->key;
    // (every maximum with this key counts)
    for (auto it = maxima.begin(); it != maxima.end();) {
      if (it->key == bound) {
        reached += it->weight;
        *it = maxima.back();
        maxima.pop_back();
      } else {
        ++it;
      }
    }
  }
  if (!(reached >= target)) return false;

  // The blocks that may hold a member with key <= bound, then their members
  // with a mass (a zero-mass member's key counts as +inf, as in the stored
  // passes), as (key, e) and (key, x, token).
  auto may_reach = [&](const Segment& seg, int64_t b) {
    const float e_min = distance(seg.bmax[b], set) - rule.d0;
    return block_may_hold_members(seg.bmax[b], set) &&
           !(e_min > rule.mu && typical_key(e_min, rule.mu) > bound);
  };
  int64_t blocks = 0;
  for (const Segment& seg : segments) {
    for (int64_t b = 0; b < block_count(seg.n); ++b) blocks += may_reach(seg, b) ? 1 : 0;
  }
  if (blocks > kSmallTypicalBlocks) return false;
  // The members with key <= bound lie in a d-interval around the entropy
  // point (keys fall, then rise, with d); a compare pass gathers that
  // interval, widened far past the roundings of the key, and the exact test
  // keeps those within the bound.
  const double center = static_cast<double>(rule.d0) + rule.mu;
  const double slack = 1e-5 * (std::fabs(center) + static_cast<double>(bound)) + 1e-30;
  SetSpec near = set;
  near.dlo = std::max(set.dlo, std::nextafter(static_cast<float>(center - bound - slack), -kInf));
  near.dhi = std::min(set.dhi, std::nextafter(static_cast<float>(center + bound + slack), kInf));
  std::vector<SelectEntry>& list = sc.list;
  list.clear();
  std::vector<GatheredToken>& at = sc.gathered_tokens;  // (room for the row)
  size_t listed = 0;
  for (const Segment& seg : segments) {
    if (near.dlo > near.dhi) break;
    const int64_t got = run.k->gather_below(seg, near, near.dhi, seg.n, at.data() + listed);
    for (int64_t i = 0; i < got; ++i) {
      const GatheredToken g = at[listed + static_cast<size_t>(i)];
      const float e = g.key - rule.d0;  // (key = d: the scales agree)
      if (!(e <= kUnderflow)) continue;
      const float key = typical_key(e, rule.mu);
      if (!(key <= bound)) continue;
      list.push_back(SelectEntry{key, e});
      at[list.size() - 1] = GatheredToken{key, g.x, g.token};  // (in place: behind the reads)
    }
    listed = list.size();
  }
  run.k->entry_masses(list.data(), static_cast<int64_t>(list.size()));
  double mass = 0.0;
  for (const SelectEntry& entry : list) mass += entry.weight;
  if (!(mass >= target)) return false;
  const SelectResult result = refine(list, sc, *run.k, true, 0.0, 0, target, kLevel1Shift);
  if (!result.found) return false;
  sc.gathered = false;
  sc.prepared = false;  // (what typical_moments stored, if it ran, is not needed)
  // (into a local, branch-free: stores through `bounds` each token, which
  // the compiler must keep, ran at the mercy of where the caller's object
  // lay against the list, 4K aliasing)
  KeyBounds b;
  for (size_t i = 0; i < listed; ++i) {
    const bool kept = at[i].key <= result.key;
    const float d = distance(at[i].x, set);
    b.dmin = std::min(b.dmin, kept ? d : kInf);
    b.dmax = std::max(b.dmax, kept ? d : -kInf);
    b.count += kept ? 1 : 0;
  }
  bounds = b;
  return true;
}

// flat_typical_select's gather bound: kGatherStretch times the estimated
// threshold key, plus kGatherSlack, past the estimated entropy point; at
// most kGatherCap tokens below it.
constexpr double kGatherStretch = 1.25;
constexpr double kGatherSlack = 0.25;
constexpr int64_t kGatherCap = 32768;
constexpr int kEstimateBuckets = 1024;

// The estimate behind flat_typical_select: the block maxima's masses exactly
// (they hold the heavy tokens; as typical_set_looks_small listed them) and
// every kScanSampleStride-th token's, less the block maxima, scaled up for
// the rest, give the entropy point and the key at which `fraction` of the
// mass is reached; returns the gather bound on d, or -1 when there are no
// maxima or the bound looks like holding more than kGatherCap tokens.
double typical_gather_bound(std::span<const Segment> segments, const SetSpec& set, float d0,
                            double fraction, SelectScratch& sc, const Runner& run) {
  const std::vector<SelectEntry>& maxima = sc.typical_maxima;
  std::vector<SelectEntry>& sampled = sc.list;
  sampled.clear();
  for (const Segment& seg : segments) {
    if (!seg.bmax) return -1.0;
    for (int64_t j = 0; j < seg.n; j += kScanSampleStride) {
      const float x = seg.x[j];
      if (x == seg.bmax[j / kPassBlock]) continue;
      const float d = distance(x, set);
      const float e = d - d0;
      if (is_member(d, set) && e <= kUnderflow) sampled.push_back(SelectEntry{e, e});
    }
  }
  if (maxima.empty()) return -1.0;
  run.k->entry_masses(sampled.data(), static_cast<int64_t>(sampled.size()));
  const auto scale = static_cast<double>(kScanSampleStride);
  // Σ m and Σ m e (sampled tokens scaled up), and the range of e, in four
  // interleaved sums: an estimate, so the order is free, and one chain of
  // dependent additions per sum cost microseconds.
  auto totals = [](const std::vector<SelectEntry>& list, double weight, double* z, double* ze,
                   float* emin, float* emax) {
    double a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0 = 0, b1 = 0, b2 = 0, b3 = 0;
    float lo = kInf, hi = -kInf;
    size_t i = 0;
    auto at = [&](size_t k, double& a, double& b) {
      const SelectEntry& m = list[k];
      a += m.weight;
      b += static_cast<double>(m.weight) * m.key;
      lo = std::min(lo, m.key);
      hi = std::max(hi, m.key);
    };
    for (; i + 4 <= list.size(); i += 4) {
      at(i, a0, b0);
      at(i + 1, a1, b1);
      at(i + 2, a2, b2);
      at(i + 3, a3, b3);
    }
    for (; i < list.size(); ++i) at(i, a0, b0);
    *z += weight * ((a0 + a1) + (a2 + a3));
    *ze += weight * ((b0 + b1) + (b2 + b3));
    *emin = std::min(*emin, lo);
    *emax = std::max(*emax, hi);
  };
  double z = 0.0, ze = 0.0;
  float emin = kInf, emax = -kInf;
  totals(maxima, 1.0, &z, &ze, &emin, &emax);
  totals(sampled, scale, &z, &ze, &emin, &emax);
  const double mu = ze / z;
  // The estimated mass by key |e - mu|, in buckets over [0, the largest key].
  const double kmax = std::max(std::fabs(emin - mu), std::fabs(emax - mu));
  if (!(kmax > 0.0)) return -1.0;
  std::vector<double>& hist = sc.sub_masses;
  hist.assign(kEstimateBuckets, 0.0);
  const double per = kEstimateBuckets / kmax;
  auto add = [&](const SelectEntry& m, double weight) {
    const auto b =
        std::min<int64_t>(kEstimateBuckets - 1, static_cast<int64_t>(std::fabs(m.key - mu) * per));
    hist[static_cast<size_t>(b)] += weight * m.weight;
  };
  for (const SelectEntry& m : maxima) add(m, 1.0);
  for (const SelectEntry& m : sampled) add(m, scale);
  double cum = 0.0, r = kmax;
  for (int64_t b = 0; b < kEstimateBuckets; ++b) {
    cum += hist[static_cast<size_t>(b)];
    if (cum >= fraction * z) {
      r = static_cast<double>(b + 1) / per;
      break;
    }
  }
  const double bound = static_cast<double>(d0) + mu + kGatherStretch * r + kGatherSlack;
  // (a gather past kGatherCap tokens fails after its whole pass: the
  // members under the bound, the maxima and the sampled ones scaled up,
  // taken with a margin; a wide kept set, thousands of tokens of a
  // Gaussian tail, went on to typical_moments after that pass)
  // (counted in integers: a double sum waits on each add, ~0.8 us here)
  const double e_bound = bound - static_cast<double>(d0);
  int64_t maxima_under = 0, sampled_under = 0;
  for (const SelectEntry& m : maxima) maxima_under += static_cast<double>(m.key) <= e_bound;
  for (const SelectEntry& m : sampled) sampled_under += static_cast<double>(m.key) <= e_bound;
  const double under =
      static_cast<double>(maxima_under) + scale * static_cast<double>(sampled_under);
  if (under > 0.75 * static_cast<double>(kGatherCap)) return -1.0;
  return bound;
}

bool flat_typical_select(std::span<const Segment> segments, const SetSpec& set, float d0,
                         double fraction, SelectScratch& sc, const Runner& run, KeyBounds& bounds,
                         double* total) {
  int64_t total_n = 0;
  for (const Segment& seg : segments) total_n += seg.n;
  if (total_n < kPivotMin || set.key_scale != set.scale) return false;
  const double estimate = typical_gather_bound(segments, set, d0, fraction, sc, run);
  if (!(estimate >= 0.0)) return false;
  const float bound = std::min(static_cast<float>(estimate), set.dhi);
  // The pass, per segment; the moments added in segment order.
  sc.seg_moments.resize(segments.size());
  const bool fits = gather_members(
      segments, bound, d0, kGatherCap, sc, run, true, [&](int64_t s, GatheredToken* out) {
        const auto i = static_cast<size_t>(s);
        const TypicalGather g = run.k->typical_gather(segments[i], set, d0, bound, kGatherCap, out);
        sc.seg_moments[i] = Moments{0, g.z, g.zd, 0, 0};
        return g.gathered;
      });
  Moments m;
  for (const Moments& seg : sc.seg_moments) m.add(seg);
  *total = m.z;
  if (!fits) return false;

  // The exact rule, as every path: s = |(d - d0) - mu|, +inf past kUnderflow.
  const double mu = m.zd / m.z;
  const double target = fraction * m.z;
  auto key_of = [&](float d) {
    const float e = d - d0;
    return e <= kUnderflow ? typical_key(e, mu) : kInf;
  };
  // The threshold among the tokens gathered below `below` (sc.list holds
  // their d), into r, and whether it holds: kShort where the gathered mass
  // falls short of the target, kPast where the threshold reaches past the
  // bound.
  std::vector<SelectEntry>& list = sc.list;
  SelectResult r;
  enum class Held { kYes, kShort, kPast };
  auto holds = [&](float below) {
    for (SelectEntry& e : list) e.key = key_of(e.key);  // (the weight is d - d0 already)
    run.k->entry_masses(list.data(), static_cast<int64_t>(list.size()));
    if (!(weight_of(list) >= target)) return Held::kShort;
    r = refine(list, sc, *run.k, true, 0.0, 0, target, kLevel1Shift);
    // ... holds when every member past the bound has a larger key: the key
    // rises with d past the entropy point, so the first d past the bound
    // decides (when the entropy point lies past the bound, nothing does).
    if (below < set.dhi) {
      const float above = std::nextafter(below, kInf);
      const float k_out = static_cast<double>(above - d0) >= mu ? key_of(above) : 0.0f;
      if (!(r.key < k_out)) return Held::kPast;
    }
    return Held::kYes;
  };
  if (const Held first = holds(bound); first != Held::kYes) {
    // The kept set reaches past the bound (on ~1 in 6 flat 32000-token
    // rows, ~1 in 130 at 128256: the estimate's histogram is coarse):
    // the moments are exact already, so the members are gathered again
    // below a looser bound by compares alone, instead of the entropy pass
    // and select over the whole row. Where the threshold found among the
    // gathered tokens reached past the bound, it bounds the true one from
    // above (more tokens only lower it): the kept keys lie within it.
    // Where the gathered mass fell short of the target, the band past the
    // entropy point is doubled.
    const double half = first == Held::kShort
                            ? 2.0 * std::max(static_cast<double>(bound) - d0 - mu, 0.5)
                            : static_cast<double>(r.key);
    const float wider = std::min(
        std::nextafter(static_cast<float>(static_cast<double>(d0) + mu + half), kInf), set.dhi);
    if (!(wider > bound) || !gather_members_below(segments, set, wider, d0, kGatherCap, sc, run) ||
        holds(wider) != Held::kYes) {
      return false;
    }
  }
  // (in locals, branch-free, four chains: stores through `bounds` each
  // kept token, which the compiler must keep, took ~190 against ~115 us a
  // 128256 row where the caller's object lay 4K-aliased with the list; one
  // chain of mins waits on each)
  float lo[4] = {kInf, kInf, kInf, kInf}, hi[4] = {-kInf, -kInf, -kInf, -kInf};
  int64_t kept[4] = {0, 0, 0, 0};
  const ERange kept_e = typical_e_range(mu, r.key);  // (key_of(d) <= r.key: e in it)
  auto take = [&](int c, float d) {
    const float e = d - d0;
    const bool in = (kept_e.lo <= e) & (e <= kept_e.hi);
    lo[c] = std::min(lo[c], in ? d : kInf);
    hi[c] = std::max(hi[c], in ? d : -kInf);
    kept[c] += in ? 1 : 0;
  };
  for (int64_t s = 0; s < sc.gathered_segments; ++s) {
    const std::span<const GatheredToken> list = sc.gathered_list(s);
    size_t i = 0;
    for (; i + 4 <= list.size(); i += 4) {
      take(0, list[i].key);
      take(1, list[i + 1].key);
      take(2, list[i + 2].key);
      take(3, list[i + 3].key);
    }
    for (; i < list.size(); ++i) take(0, list[i].key);
  }
  bounds = KeyBounds{std::min(std::min(lo[0], lo[1]), std::min(lo[2], lo[3])),
                     std::max(std::max(hi[0], hi[1]), std::max(hi[2], hi[3])),
                     (kept[0] + kept[1]) + (kept[2] + kept[3])};
  // Every kept token is among the gathered ones, in token order: the
  // filter may compact from them.
  sc.gathered = true;
  sc.prepared = false;
  return true;
}

KeyBounds key_bounds(std::span<const Segment> segments, const SetSpec& set, const KeyRule& rule,
                     float c, const SelectScratch& sc, const Runner& run) {
  KeyBounds out;
  const bool stored = sc.keys_stored && sc.keys_of == segments.data() && c < kInf;
  int64_t at = 0;
  for (const Segment& seg : segments) {
    const KeyBounds b = stored ? run.k->stored_key_bounds(seg, set, sc.keys.data() + at, c)
                               : run.k->key_bounds(seg, set, rule, c);
    at += seg.n;
    out.dmin = std::min(out.dmin, b.dmin);
    out.dmax = std::max(out.dmax, b.dmax);
    out.count += b.count;
  }
  return out;
}

}  // namespace nucleus::detail
