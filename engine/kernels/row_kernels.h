// Vectorised passes over one segment of a row (Eigen). A segment is either a
// fixed-size chunk of the row or the compacted candidate set; every pass
// visits only the segment's members of the current kept set.
//
// Filter-space distance: d = (x_max - x) * scale >= 0, so the most probable
// token has d = 0. A token belongs to the set iff dlo <= d <= dhi (a token
// whose d is +inf, e.g. a masked one, never does). Masses are exp(-(d - d0))
// for a shift d0 (the set's smallest d), exactly 0 past kUnderflow.
//
// The passes are compiled once per instruction set (engine/kernels/isa.h):
// this header holds the types they share and the table through which the
// engine calls the set it chose.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <new>
#include <vector>

#include "nucleus/engine.h"
#include "nucleus/sampling.h"

namespace nucleus::detail {

// Rows longer than this are split into chunks of exactly this many tokens;
// partial results combine in chunk order, so no result depends on threads.
inline constexpr int64_t kChunk = 16384;
// exp(-kUnderflow) is float32's smallest normal number: masses past it are 0.
inline constexpr float kUnderflow = 87.33654f;
inline constexpr float kInf = std::numeric_limits<float>::infinity();
inline constexpr float kMaxFloat = std::numeric_limits<float>::max();

// Buffers the passes read whole (a widened or processed row, stored keys)
// start on a cache line: a packet load that straddles two lines costs two,
// and the scan of a row is bound by its loads.
template <typename T>
struct CacheAligned {
  using value_type = T;
  static constexpr std::align_val_t kAlign{64};
  CacheAligned() = default;
  template <typename U>
  explicit CacheAligned(const CacheAligned<U>&) {}
  T* allocate(size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlign)); }
  void deallocate(T* p, size_t) { ::operator delete(p, kAlign); }
  friend bool operator==(const CacheAligned&, const CacheAligned&) { return true; }
};
template <typename T>
using AlignedVector = std::vector<T, CacheAligned<T>>;

struct Segment {
  const float* x = nullptr;
  const int32_t* idx = nullptr;  // null: token = base + j
  int64_t n = 0;
  int64_t base = 0;
  // The largest x of each pass block (kPassBlock entries, from the segment's
  // start), recorded by the scan; null when not known. A block whose largest
  // x lies beyond the set's bound holds no member and is skipped.
  const float* bmax = nullptr;
  // x at every kScanSampleStride-th entry from the segment's start, recorded
  // by the scan when a select will want a sample; null when not.
  const float* sample = nullptr;
  // The same tokens of the row this thread samples next (its input, of
  // ahead_esize bytes a token), or null. The exp passes ask for its lines a
  // block at a time, so that its scan, which would otherwise wait on memory
  // in a batch, finds it in this core's L2 (prefetch_ahead).
  const char* ahead = nullptr;
  int64_t ahead_esize = 0;
  int32_t token(int64_t j) const { return idx ? idx[j] : static_cast<int32_t>(base + j); }
};

// Which tokens belong to the set, and the key that orders them.
struct SetSpec {
  float xmax = 0.0f;
  float scale = 1.0f;  // filter space: d = (xmax - x) * scale
  float dlo = 0.0f;    // inclusive bounds on d
  float dhi = kMaxFloat;
  float key_scale = 1.0f;  // ranking space: key = (xmax - x) * key_scale
};

struct MaxStats {
  float max = -kInf;
  int64_t bad_at = -1;  // first NaN or +inf, relative to the segment
  int64_t finite = 0;   // entries > -inf
  int64_t argmax = -1;  // the first position of the max (-1 when every entry is -inf)
};

struct Moments {
  int64_t count = 0;  // members (kSpread; kEntropy may leave it unformed)
  double z = 0;       // Σ m
  double zd = 0;      // Σ m (d - d0)
  double sd = 0;      // Σ (d - d0)
  double sd2 = 0;     // Σ (d - d0)^2
  void add(const Moments& o) {
    count += o.count;
    z += o.z;
    zd += o.zd;
    sd += o.sd;
    sd2 += o.sd2;
  }
};
enum class MomentKind {
  kEntropy,  // count, z and zd (typical-p)
  kSpread,   // count, sd and sd2 (top-nσ); no exp
};

// Blocks of this many tokens are the unit of every pass: partial sums are
// formed per block and added in block order.
inline constexpr int64_t kPassBlock = 512;
inline int64_t block_count(int64_t n) { return (n + kPassBlock - 1) / kPassBlock; }
// The stride of the sample the scan records (Segment::sample).
inline constexpr int64_t kScanSampleStride = 128;
// The scans ask for each cache line this many bytes ahead of their reads
// (prefetches never fault, so past the end is harmless): a row that comes from
// memory, as in a large batch, streams at 80-90 % of a plain read's bandwidth
// instead of ~55 % (batch 256 x 128256, the 2-core Zen 5 box).
inline constexpr int64_t kPrefetchBytes = 4096;
inline int64_t sample_count(int64_t n) { return (n + kScanSampleStride - 1) / kScanSampleStride; }

// Whether an allowed-token bitmask (bit t % 32 of words[t / 32] set: token
// t allowed) allows token t.
inline bool mask_allows(const int32_t* words, int64_t t) {
  return ((static_cast<uint32_t>(words[t >> 5]) >> (t & 31)) & 1u) != 0;
}
// The mask's bits of the 16 tokens from t (a multiple of 16: half a word),
// token t + i at bit i.
inline uint32_t mask_half_word(const int32_t* words, int64_t t) {
  return (static_cast<uint32_t>(words[t >> 5]) >> (t & 16)) & 0xffffu;
}

// What the processors changed, noted change by change so that the row need
// not be scanned again (check_and_widen): per pass block, its max as changes
// raise it, and whether a change touched a token that held it (the block is
// then scanned again); per chunk (kChunk tokens), how many tokens became -inf
// and the first that became NaN or +inf. All arrays cover the whole row and
// start as the unchanged row's block maxima, 0, 0 and -1. A note is a few
// branch-free operations: rows with long histories take thousands of them.
struct RowChanges {
  float* block_max = nullptr;
  uint8_t* touched = nullptr;
  int64_t* lost = nullptr;    // tokens that were > -inf and are -inf now
  int64_t* bad_at = nullptr;  // relative to the chunk
  void note(int64_t t, float before, float after) const {
    constexpr float kInf = std::numeric_limits<float>::infinity();
    const auto b = static_cast<uint64_t>(t) / kPassBlock;
    const float m = block_max[b];
    touched[b] |= static_cast<uint8_t>(before == m);
    block_max[b] = after > m ? after : m;
    if (!(std::abs(after) < kInf)) [[unlikely]] {  // -inf, +inf or NaN
      const auto c = static_cast<uint64_t>(t) / kChunk;
      if (after == -kInf) {
        lost[c] += before > -kInf ? 1 : 0;
      } else {
        const int64_t at = t - static_cast<int64_t>(c) * kChunk;
        bad_at[c] = bad_at[c] < 0 ? at : std::min(bad_at[c], at);
      }
    }
  }
};

// A (key, token) pair gathered for the top log-probabilities.
struct KeyToken {
  float key;
  int32_t token;
};

// How the threshold selection (engine/row/select.h) ranks and weighs members.
enum class KeyKind {
  kDistance,  // key = (xmax - x) * key_scale
  kTypical,   // key = |(d - d0) - mu| (how atypical), +inf when the mass is 0
};

struct KeyRule {
  KeyKind kind = KeyKind::kDistance;
  bool mass_weight = false;  // weight exp(-(d - d0)) (0 past kUnderflow), else 1
  float d0 = 0.0f;           // mass shift, in filter space
  double mu = 0.0;           // typical: the entropy point, in (d - d0) units
  // The target is a fraction of the set's total weight (top-p: p of the mass),
  // which the histogram pass totals itself.
  bool target_is_fraction = false;
};

struct SelectEntry {
  float key;
  float weight;
};

// The longest list Kernels::sort_short sorts.
inline constexpr int64_t kShortSort = 64;

// A member gathered by the small-target path, kept so that a filter which
// leaves only these can compact the set without another pass over the row.
struct GatheredToken {
  float key;
  float x;
  int32_t token;
};

// The smallest and largest filter-space d among members whose key is <= c.
struct KeyBounds {
  float dmin = kInf;
  float dmax = -kInf;
  int64_t count = 0;
};

// typical-p's gathering entropy pass (Kernels::typical_gather).
struct TypicalGather {
  double z = 0;          // Σ m over the set's members (m = exp(-(d - d0)), 0 past kUnderflow)
  double zd = 0;         // Σ m (d - d0)
  int64_t gathered = 0;  // members with d <= the bound (cap + 1: more)
};

// The radix select's first level: keys split by their top 11 bits below the
// sign (8 exponent bits and 3 mantissa bits); non-members land in the trash
// bucket, which no key reaches (its bits are NaN's).
inline constexpr int kLevel1Shift = 20;
inline constexpr int64_t kLevel1Buckets = 2048;
inline constexpr uint32_t kTrashBucket = kLevel1Buckets - 1;

// A token's filter-space distance d = (xmax - x) * scale, and whether a d
// belongs to the set (the bits every pass computes).
inline float distance(float x, const SetSpec& set) { return (set.xmax - x) * set.scale; }
inline bool is_member(float d, const SetSpec& set) { return (d >= set.dlo) & (d <= set.dhi); }

// Whether a pass block whose largest x is bmax (the scan's block maxima) can
// hold a member of the set: its smallest d, that of bmax, is within dhi (d is
// monotone in x, rounding included).
inline bool block_may_hold_members(float bmax, const SetSpec& set) {
  return distance(bmax, set) <= set.dhi;
}

// An x below which no token's key (xmax - x) * key_scale, as computed in
// float, can be <= khi: the exact threshold xmax - khi / key_scale moved down
// by a relative margin far above the two roundings of the key (and two ulps
// for its own), so that a test on x alone may skip a packet (or a sampled
// token). -inf (skip nothing) where no such margin is safe.
inline float x_floor_for_key(const SetSpec& set, float khi) {
  const double s = set.key_scale;
  if (!(khi > 0.0f) || !(s >= 1e-30) || !std::isfinite(khi) || !std::isfinite(set.xmax)) {
    return -kInf;
  }
  const double t = static_cast<double>(set.xmax) - static_cast<double>(khi) / s * (1.0 + 1e-5);
  if (!(t > -static_cast<double>(kMaxFloat))) return -kInf;
  return std::nextafter(std::nextafter(static_cast<float>(t), -kInf), -kInf);
}

// A bfloat16 is the top half of a float32.
inline float bf16_to_float(uint16_t h) { return std::bit_cast<float>(uint32_t{h} << 16); }

// The typical-p key of one token, |e - mu| in double rounded to float (the
// packet passes compute the same bits).
inline float typical_key(float e, double mu) {
  return static_cast<float>(std::fabs(static_cast<double>(e) - mu));
}

// The e whose typical key, +inf past kUnderflow as the passes form it, is
// at most c: the floats in [lo, hi] (none when lo > hi; every e when c is
// +inf). The key falls as e nears mu and rises past it, float(mu) the
// nearest float and so the smallest key, so they are one interval; each end
// is bisected over the floats' order. A pass then compares e, with no
// double conversions a token (two of them, and their rounding back, cost a
// 128256-row pass ~2.5x its compares).
struct ERange {
  float lo, hi;
};
// (compiled once, for the baseline, in engine/kernels/typical_range.cc: an
// inline function that a kernel build left out of line would be one symbol
// for every build, and the linker would keep one of them; tests/isa_symbols.sh)
ERange typical_e_range(double mu, float c);

// Pivots per round of the pivot select (Kernels::keep_and_sum).
inline constexpr int kPivots = 3;
// Pivots per round of a short list's refinement (Kernels::pivot_sums).
inline constexpr int kRefinePivots = 7;

// One instruction set's passes. Each entry works on one segment and writes
// only through its arguments (no allocation, no shared state), so segments
// can run on any thread. Every instruction set computes the same thing; the
// last bits of sums and exps may differ between them (packet widths and fused
// multiply-adds), never within one.
struct Kernels {
  Isa isa;
  // Widens f16 / bf16 (or copies f32) into dst.
  void (*to_float)(const void* src, DType dtype, int64_t n, float* dst);
  // With block_max, the largest entry of each kPassBlock block (NaN-blind,
  // -inf for a block of -inf) goes to block_max[b].
  MaxStats (*max_stats)(const float* x, int64_t n, float* block_max);
  // to_float into dst and max_stats of the result, in one read of src (dst
  // null: the scan only).
  MaxStats (*widen_max_stats)(const void* src, DType dtype, int64_t n, float* dst,
                              float* block_max);
  // kEntropy with e_out / w_out (the segment's tokens): also stores each
  // token's d - d0 (+inf where its mass is 0) and its mass.
  Moments (*moments)(const Segment& s, const SetSpec& set, float d0, MomentKind kind, float* e_out,
                     float* w_out);
  // Σ exp(-(key - k0)) over members in the ranking space, in block order; the
  // number of members goes to *count (when not null: without a count the
  // members need not be counted) and, when block_sums is not null, each
  // block's sum to block_sums[b].
  double (*sum_mass)(const Segment& s, const SetSpec& set, float k0, int64_t* count,
                     double* block_sums);
  // sum_mass without block sums or count, and in the same pass gather_below's
  // work (below): the members with key <= bound, in order, into out while at
  // most `cap` (*gathered = cap + 1 once there are more; the sum is still
  // complete). Sets whose two scales agree only (key = d).
  double (*sum_mass_gather)(const Segment& s, const SetSpec& set, float k0, float bound,
                            int64_t cap, GatheredToken* out, int64_t* gathered);
  // sum_mass (the total, returned) and, in the same read of each block, the
  // mass of the members with key <= lo (*below, in double) and how many
  // (*below_count), and the keys and masses of the members with lo < key <=
  // hi, in order, into out_key / out_weight (room for every token of the
  // segment and a packet, 64 floats, past it; *listed says how many). The
  // masses are those every pass computes. Sets whose two scales agree only
  // (key = d).
  double (*sum_mass_band)(const Segment& s, const SetSpec& set, float k0, float lo, float hi,
                          float* out_key, float* out_weight, int64_t* listed, double* below,
                          int64_t* below_count);
  // Smallest key over members (kInf when none).
  float (*min_key)(const Segment& s, const SetSpec& set);
  // Members whose key is strictly below `key`.
  int64_t (*count_key_below)(const Segment& s, const SetSpec& set, float key);
  // Members whose key is <= lo, counted (*below), and the keys of those with
  // lo < key <= hi, in order, into out_key (room for every token of the
  // segment and a packet, 64 floats, past it); returns how many were listed.
  // No masses: count targets' band (top-k past the small-target path, and
  // min_keep under typical-p). The keys are rule.kind's (typical: +inf
  // past kUnderflow); rule.mass_weight is not read.
  int64_t (*count_band)(const Segment& s, const SetSpec& set, const KeyRule& rule, float lo,
                        float hi, float* out_key, int64_t* below);
  // Inverse-CDF walk: whole blocks are skipped by their sums from sum_mass
  // while cum_before plus them stays below target; inside the block that
  // reaches it, the first member at which the running mass Σ exp(-(key -
  // k0)), scaled to the block's sum, reaches the rest of target
  // (segment-relative index). When rounding keeps the row short of target,
  // the last member of positive mass; -1 if there is none.
  int64_t (*walk)(const Segment& s, const SetSpec& set, float k0, const double* block_sums,
                  double cum_before, double target);
  // out[j] = member ? exp(-(key - k0)) * inv_z : 0 for the segment's tokens
  // (row segments only: out points at the segment's first token).
  void (*write_probs)(const Segment& s, const SetSpec& set, float k0, double inv_z, float* out);
  // Writes (key, token) of every member whose key is <= c; returns how many
  // (at most s.n).
  int64_t (*gather_le)(const Segment& s, const SetSpec& set, float c, KeyToken* out);
  // Copies the members (value and token id) to cx / ci, in order; returns how
  // many. cx / ci need room for a packet (64 entries) past the members.
  int64_t (*compact)(const Segment& s, const SetSpec& set, float* cx, int32_t* ci);

  // The threshold selection's passes (engine/row/select.cc).
  // Adds the segment's members to a level-1 histogram of their keys: counts
  // and weights (masses when rule.mass_weight, else 1) per bucket.
  void (*key_histogram)(const Segment& s, const SetSpec& set, const KeyRule& rule, uint32_t* counts,
                        double* weights);
  // The pivot select's passes (a weighted select over stored keys, no
  // histogram). store_keys writes every token's key (+inf for non-members)
  // and weight (its mass when rule.mass_weight, else 1; 0 for non-members)
  // into key[j] / weight[j] for the segment's j, and returns the segment's
  // total weight (in double, in block order). With pivots (kPivots of them),
  // the pivot sums of the stored entries too (as keep_and_sum's), in the same
  // read where the instruction set allows.
  double (*store_keys)(const Segment& s, const SetSpec& set, const KeyRule& rule, float* key,
                       float* weight, const float* pivots, double* sums, int64_t* counts);
  // Copies, in order, the entries with lo < key <= hi to out_key / out_weight
  // (which may be key / weight themselves; the outputs need room for a packet,
  // 64 floats, past n) and returns how many; with pivots (kPivots of them, not
  // null), also the weight (double, fixed order) and the number of kept
  // entries with key <= each pivot ("pivot sums"), in one read where the
  // instruction set allows.
  int64_t (*keep_and_sum)(const float* key, const float* weight, int64_t n, float lo, float hi,
                          const float* pivots, float* out_key, float* out_weight, double* sums,
                          int64_t* counts);
  // Typical keys from moments' stored e, in place (+inf stays +inf), and the
  // pivot sums of them with the stored masses.
  void (*typical_keys_from_e)(float* e_key, const float* weight, int64_t n, double mu,
                              const float* pivots, double* sums, int64_t* counts);
  // The distance keys of the members among every stride-th token, in order;
  // returns how many (at most s.n / stride + 1). With `mass`, also adds
  // their masses exp(-(d - rule.d0)) there (an estimate's input: summed in
  // any order).
  int64_t (*sample_keys)(const Segment& s, const SetSpec& set, const KeyRule& rule, int64_t stride,
                         float* out, double* mass);
  // Members with key <= bound, in order, while at most `cap` (returns cap + 1
  // as soon as there are more); out needs room for cap + kPassBlock.
  int64_t (*gather_below)(const Segment& s, const SetSpec& set, float bound, int64_t cap,
                          GatheredToken* out);
  // A mass target's refinement round over list[0, n), AVX-512 only (null
  // elsewhere): for each of the kRefinePivots pivots (ascending), the total
  // weight (in double, from float partial sums of 128 entries) and the number
  // of the entries with key <= pivot.
  void (*pivot_sums)(const SelectEntry* list, int64_t n, const float* pivots, double* mass,
                     int64_t* count);
  // The entries of list[0, n) with lo < key <= hi moved, in order, to its
  // front; returns how many. AVX-512 only (null elsewhere).
  int64_t (*keep_between)(SelectEntry* list, int64_t n, float lo, float hi);
  // out[i] = (g[i].key, g[i].key - d0) for i < n: a gathered list's keys, to
  // select on, each beside its mass's argument (entry_masses' input; keys
  // are distances d, and d0 the mass's reference).
  void (*gathered_keys)(const GatheredToken* g, int64_t n, float d0, SelectEntry* out);
  // The values and token ids of the gathered tokens whose key lies in
  // [lo, hi], in order, into x / idx (room for n); returns how many.
  int64_t (*compact_gathered)(const GatheredToken* g, int64_t n, float lo, float hi, float* x,
                              int32_t* idx);
  // Members whose key lies in [lo, hi] (or, with inf_bucket, is +inf), in
  // order, as (key, d - d0); returns how many.
  int64_t (*gather_bucket)(const Segment& s, const SetSpec& set, const KeyRule& rule, float lo,
                           float hi, bool inf_bucket, SelectEntry* out);
  // Turns each entry's d - d0 (in .weight) into its mass, bit-identical to
  // the mass every other pass computes for that token.
  void (*entry_masses)(SelectEntry* list, int64_t n);

  // The k-th largest of v[0, n) (1 <= k <= n; no NaN), without branching
  // on the data: its order key is set bit by bit from the highest bit in
  // which the smallest and largest keys differ, each bit a vectorised count
  // of the keys (n of them, stored in `keys`) at or above a candidate. (A
  // sort-like selection mispredicts about every other compare on a row it
  // has not seen before.)
  float (*kth_largest)(const float* v, int64_t n, int64_t k, uint32_t* keys);
  // The n <= kShortSort entries of list (no NaN key), stably sorted by key
  // into out (-0 before +0): each entry's rank (the keys below its own and
  // the equal keys before it) counted without branching on a key.
  void (*sort_short)(const SelectEntry* list, int64_t n, SelectEntry* out);
  KeyBounds (*key_bounds)(const Segment& s, const SetSpec& set, const KeyRule& rule, float c);
  // key_bounds from the keys store_keys wrote for the segment, for c < +inf.
  KeyBounds (*stored_key_bounds)(const Segment& s, const SetSpec& set, const float* key, float c);
  // typical-p's entropy moments (as moments' kEntropy) and, in the same
  // pass, the members with d <= bound as (d, x, token), in order, into out
  // while at most `cap` (out needs room for the segment). Sets whose two
  // scales agree.
  TypicalGather (*typical_gather)(const Segment& s, const SetSpec& set, float d0, float bound,
                                  int64_t cap, GatheredToken* out);

  // The repetition penalty (x > 0 ? x / rp : x * rp, SPEC step 4) of the
  // tokens listed in a or b that fall in [lo, hi): row[t] = penalised
  // src[t], once per distinct token however often it is listed (src, not
  // row: the values before penalties), each change noted in `changes` when
  // given. `seen` (a bit per token, all zero) dedupes the rare notes that
  // must count once, and is left all zero. With `words` (an allowed-token
  // bitmask, below) not null, a token the mask does not allow is read as
  // -inf (row already masked, src not).
  void (*repeat_penalty)(const int32_t* a, int64_t na, const int32_t* b, int64_t nb, int64_t lo,
                         int64_t hi, float rp, const float* src, const int32_t* words, float* row,
                         uint64_t* seen, const RowChanges* changes);
  // An allowed-token bitmask (bit i % 32 of words[i / 32] set: token i
  // allowed) over row[lo, hi) (lo a multiple of 32): each token whose bit
  // is clear becomes -inf, the others stay as they are.
  void (*allowed_mask)(const int32_t* words, int64_t lo, int64_t hi, float* row);
  // The tokens [lo, lo + n) of src (of type dtype; lo a multiple of 32;
  // src, dst and widened point at token lo) copied to dst as floats with
  // allowed_mask applied, and max_stats of the copy (dst, n, block_max)
  // returned; also max_stats of src itself (into *raw and raw_block_max),
  // and a half src widened into `widened` (unused for float32): the same
  // results as widen_max_stats, allowed_mask and max_stats, in one read of
  // src (a row under a dense mask). dst may be null: nothing is copied, and
  // the masked results are those of src's values under the mask (the same).
  MaxStats (*masked_copy_stats)(const void* src, DType dtype, const int32_t* words, int64_t lo,
                                int64_t n, float* dst, float* block_max, MaxStats* raw,
                                float* raw_block_max, float* widened);
  // sum_mass over a segment of a row (set.scale 1, from the top: greedy's
  // frame, every x <= set.xmax), returned, and in the same read the mass of
  // the tokens the mask allows (*allowed_total): the bits sum_mass gives
  // over the row with -inf where the mask says no.
  double (*masked_sum_mass)(const Segment& s, const int32_t* words, const SetSpec& set,
                            double* allowed_total);
  // How many tokens t < n the mask allows, or some count past `limit` once
  // the count passes it (a hardware popcount where the instruction set has
  // one: the baseline build's is a library call).
  int64_t (*allowed_count)(const int32_t* words, int64_t n, int64_t limit);
  // The tokens t < n that the mask allows (with left_out, those it leaves
  // out) and whose x[t] > -inf, in order: their values into cx and ids into
  // ci (room for their count and a packet, 64 entries, past it); returns
  // how many.
  int64_t (*gather_allowed)(const int32_t* words, int64_t n, const float* x, float* cx, int32_t* ci,
                            bool left_out);
};

// The passes for `isa`, which must be one this machine runs (resolve_isa).
const Kernels& kernels_for(Isa isa);

// The one of three per-instruction-set builds of something that serves
// `isa` (kAuto: the baseline).
template <typename T>
const T& for_isa(Isa isa, const T& sse2, const T& avx2, const T& avx512) {
  switch (isa) {
    case Isa::kAVX512:
      return avx512;
    case Isa::kAVX2:
      return avx2;
    case Isa::kSSE2:
    case Isa::kAuto:
      break;
  }
  return sse2;
}

}  // namespace nucleus::detail
