// The row passes (engine/kernels/row_kernels.h), compiled once per
// instruction set.
#include "engine/kernels/isa_prologue.h"
// (the prologue must come first)
#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "engine/kernels/block_ops.h"
#include "engine/kernels/row_kernels.h"

namespace nucleus::detail::NUCLEUS_KERNEL_ISA {

#include "engine/kernels/kernel_api.h"

using namespace block;  // NOLINT: the block helpers are this file's vocabulary

void to_float(const void* src, DType dtype, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kFloat32:
      std::memcpy(dst, src, static_cast<size_t>(n) * sizeof(float));
      return;
    case DType::kFloat16: {
      // Exact either way; F16C's conversion instruction where the build has
      // it (Eigen 3.4 converts with integer arithmetic), Eigen otherwise.
      using ArrH = Eigen::Array<Eigen::half, Eigen::Dynamic, 1>;
      int64_t j = 0;
#if defined(__F16C__)
      const auto* h = static_cast<const uint16_t*>(src);
#if defined(__AVX512F__)
      for (; j + 16 <= n; j += 16) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(h + j));
        _mm512_storeu_ps(dst + j, _mm512_cvtph_ps(v));
      }
#endif
      for (; j + 8 <= n; j += 8) {
        const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(h + j));
        _mm256_storeu_ps(dst + j, _mm256_cvtph_ps(v));
      }
#endif
      MapF(dst + j, n - j) =
          Eigen::Map<const ArrH>(static_cast<const Eigen::half*>(src) + j, n - j).cast<float>();
      return;
    }
    case DType::kBFloat16: {
      // A bfloat16 is the top half of a float32. (Eigen 3.4's array cast
      // converts these one at a time; this loop vectorises.)
      const auto* h = static_cast<const uint16_t*>(src);
      for (int64_t j = 0; j < n; ++j) dst[j] = bf16_to_float(h[j]);
      return;
    }
  }
}

namespace {

// Entries (relative to x) of the first max: x[j] == max, scanning in order.
int64_t first_equal(const float* x, int64_t n, float max) {
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  const Packet pm = ei::pset1<Packet>(max);
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    if (ei::predux_any(ei::pcmp_eq(ei::ploadu<Packet>(x + j), pm))) break;
  }
  for (; j < n; ++j) {
    if (x[j] == max) return j;
  }
  return -1;
}

}  // namespace

namespace {

// The max (NaN-blind: Eigen's pmax(m, v) keeps m when v is NaN), whether any
// entry is NaN and how many exceed -inf, of a block of at most 2^24 entries
// (the counts are floats). Two independent sets of registers, so that the
// max's latency does not bound the loop. +inf shows up as the max.
struct ExactScan {
  float max = -kInf;
  bool nan = false;
  int64_t finite = 0;
};
ExactScan exact_scan(const float* x, int64_t n) {
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  const Packet pninf = ei::pset1<Packet>(-kInf);
  const Packet pone = ei::pset1<Packet>(1.0f);
  Packet m0 = pninf, m1 = pninf;
  Packet ok0 = ei::ptrue(pone), ok1 = ok0;
  Packet c0 = ei::pzero(pone), c1 = c0;
  int64_t j = 0;
  for (; j + 2 * kLanes <= n; j += 2 * kLanes) {
    const Packet v0 = ei::ploadu<Packet>(x + j);
    const Packet v1 = ei::ploadu<Packet>(x + j + kLanes);
    m0 = ei::pmax(m0, v0);
    m1 = ei::pmax(m1, v1);
    ok0 = ei::pand(ok0, ei::pcmp_eq(v0, v0));
    ok1 = ei::pand(ok1, ei::pcmp_eq(v1, v1));
    c0 = ei::padd(c0, ei::pand(ei::pcmp_lt(pninf, v0), pone));
    c1 = ei::padd(c1, ei::pand(ei::pcmp_lt(pninf, v1), pone));
  }
  ExactScan out;
  alignas(64) float lanes[kLanes];
  ei::pstore(lanes, ei::pand(ok0, ok1));
  for (int64_t i = 0; i < kLanes; ++i) out.nan |= std::bit_cast<uint32_t>(lanes[i]) == 0;
  ei::pstore(lanes, ei::padd(c0, c1));
  for (int64_t i = 0; i < kLanes; ++i) out.finite += static_cast<int64_t>(lanes[i]);
  out.max = ei::predux_max(ei::pmax(m0, m1));
  for (; j < n; ++j) {
    const float v = x[j];
    out.max = v > out.max ? v : out.max;
    out.nan |= v != v;
    out.finite += v > -kInf ? 1 : 0;
  }
  return out;
}

// The first position of a NaN or +inf in x[0, n), or -1.
int64_t first_bad(const float* x, int64_t n) {
  int64_t t = 0;
  while (t < n && x[t] < kInf) ++t;
  return t < n ? t : int64_t{-1};
}

// The running results of a scan over pass blocks, block by block in order.
struct ScanTotals {
  float max = -kInf;
  bool nan = false;
  int64_t finite = 0;
  int64_t max_block = 0;  // the first block that reaches the max
  // One block of m entries at b0: its fast read's max when every entry was
  // finite, else what `exact()` (the block scanned again exactly) says.
  template <typename Exact>
  void add(int64_t b0, int64_t m, bool finite_block, float bmax, Exact exact, float* block_max) {
    if (finite_block) {
      finite += m;
    } else {
      const ExactScan e = exact();
      bmax = e.max;
      nan |= e.nan;
      finite += e.finite;
    }
    if (block_max) block_max[b0 / kPassBlock] = bmax;
    if (bmax > max) {
      max = bmax;
      max_block = b0;
    }
  }
  // The scan's result: the max's first position is looked for in the first
  // block that reached it (`block`: its m values), and the first NaN or +inf
  // (`bad_at()`) only when some block held one.
  template <typename BadAt>
  MaxStats finish(const float* block, int64_t m, BadAt bad_at) const {
    MaxStats st;
    // -0.0 as the max would make xmax - (+0.0) = -0.0, a distance whose sign
    // bit breaks the order of the float keys: use +0.0.
    st.max = max + 0.0f;
    st.finite = finite;
    if (max > -kInf) st.argmax = max_block + first_equal(block, m, max);
    if (nan || max == kInf) st.bad_at = bad_at();
    return st;
  }
};

// max_stats (below), and with `copy` (kCopy) each packet is also stored there
// from the same read: a float32 row that processors will change is copied and
// scanned at once.
template <bool kCopy>
MaxStats scan_blocks(const float* x, int64_t n, float* block_max, float* copy) {
  // Pass blocks (kPassBlock entries), each read once by a fast pass: the max and
  // a finiteness probe, probe = v * 0 + probe (a multiply-add), which stays 0
  // while every entry is finite and turns NaN at the first NaN or ±inf. Only a
  // block whose probe fails is scanned again exactly (exact_scan counts the
  // -inf entries and finds NaN); a row without masked tokens never is. The
  // first block that reaches the max is remembered, and the max's first
  // position is looked for there only.
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  constexpr int64_t kScanBlock = kPassBlock;
  constexpr int64_t kLineFloats = 64 / sizeof(float);
  constexpr int64_t kPrefetchAhead = kPrefetchBytes / sizeof(float);
  const Packet pninf = ei::pset1<Packet>(-kInf);
  const Packet pzero = ei::pset1<Packet>(0.0f);
  ScanTotals totals;
  for (int64_t b0 = 0; b0 < n; b0 += kScanBlock) {
    const int64_t m = std::min(kScanBlock, n - b0);
    const float* xb = x + b0;
    // Four packets an iteration, each into its own max and probe chain: with
    // two, the probes' multiply-add latency (4 cycles) paced the loop, not
    // the loads (a two-chain build, not unrolled, measured ~40 % slower).
    Packet m0 = pninf, m1 = pninf, m2 = pninf, m3 = pninf;
    Packet p0 = pzero, p1 = pzero, p2 = pzero, p3 = pzero;
    int64_t j = 0;
    // (not unrolled: GCC -O3 would unroll the loop whole, eight copies on
    // AVX-512 with a trip test between them, and that scans at half the
    // speed of the loop: bench/kernel_bench's scan/128256, ~4.0 against
    // ~2.3 µs)
#pragma GCC unroll 1
    for (; j + 4 * kLanes <= m; j += 4 * kLanes) {
      // (each line once: the packets of an iteration cover one line or more)
      for (int64_t line = j; line < j + 4 * kLanes && line % kLineFloats == 0;
           line += kLineFloats) {
        // (the passes after a copying scan read the copy, not the row, but
        // for the raw log-probabilities when asked for: on AVX-512 the row's
        // lines are asked for as non-temporal, which leaves more of the cache
        // to the copy; penalty + top-p on one 128256 row, Zen 5, bench/ab -n
        // 10: 35.09 -> 34.67 µs median, over eight distinct rows 38.00 ->
        // 37.50. Not measured on an AVX2 machine: T0 there.)
#if defined(__AVX512F__)
        constexpr auto kHint = kCopy ? _MM_HINT_NTA : _MM_HINT_T0;
#else
        constexpr auto kHint = _MM_HINT_T0;
#endif
        _mm_prefetch(reinterpret_cast<const char*>(xb + line + kPrefetchAhead), kHint);
      }
      const Packet v0 = ei::ploadu<Packet>(xb + j);
      const Packet v1 = ei::ploadu<Packet>(xb + j + kLanes);
      const Packet v2 = ei::ploadu<Packet>(xb + j + 2 * kLanes);
      const Packet v3 = ei::ploadu<Packet>(xb + j + 3 * kLanes);
      if constexpr (kCopy) {
        ei::pstoreu(copy + b0 + j, v0);
        ei::pstoreu(copy + b0 + j + kLanes, v1);
        ei::pstoreu(copy + b0 + j + 2 * kLanes, v2);
        ei::pstoreu(copy + b0 + j + 3 * kLanes, v3);
      }
      m0 = ei::pmax(m0, v0);
      m1 = ei::pmax(m1, v1);
      m2 = ei::pmax(m2, v2);
      m3 = ei::pmax(m3, v3);
      p0 = ei::pmadd(v0, pzero, p0);
      p1 = ei::pmadd(v1, pzero, p1);
      p2 = ei::pmadd(v2, pzero, p2);
      p3 = ei::pmadd(v3, pzero, p3);
    }
    for (; j + kLanes <= m; j += kLanes) {
      const Packet v0 = ei::ploadu<Packet>(xb + j);
      if constexpr (kCopy) ei::pstoreu(copy + b0 + j, v0);
      m0 = ei::pmax(m0, v0);
      p0 = ei::pmadd(v0, pzero, p0);
    }
    float bmax = ei::predux_max(ei::pmax(ei::pmax(m0, m1), ei::pmax(m2, m3)));
    // (a lane compare, not a sum of the lanes: cheaper, and the same answer)
    const Packet probe = ei::padd(ei::padd(p0, p1), ei::padd(p2, p3));
    bool finite_block = !ei::predux_any(ei::pandnot(ei::ptrue(probe), ei::pcmp_eq(probe, pzero)));
    for (; j < m; ++j) {
      if constexpr (kCopy) copy[b0 + j] = xb[j];
      bmax = xb[j] > bmax ? xb[j] : bmax;
      finite_block &= xb[j] * 0.0f == 0.0f;
    }
    totals.add(
        b0, m, finite_block, bmax, [&] { return exact_scan(xb, m); }, block_max);
  }
  const int64_t at = totals.max_block;
  return totals.finish(x + at, std::min(kScanBlock, n - at), [&] { return first_bad(x, n); });
}

#if defined(__AVX2__)
// The 16-bit word operations the half-precision key scan (below) needs, on
// the widest registers the build has: 32 words on AVX-512, 16 on AVX2.
struct HalfWords {
#if defined(__AVX512F__)
  using V = __m512i;
  static constexpr int64_t kWords = 32;
  static V load(const uint16_t* p) { return _mm512_loadu_si512(p); }
  static V splat(int16_t v) { return _mm512_set1_epi16(v); }
  // bits ^ ((bits >> 15) & 0x7fff), one ternary-logic op: A ^ (B & C) = 0x78
  static V key(V bits) {
    return _mm512_ternarylogic_epi32(bits, _mm512_srai_epi16(bits, 15), splat(0x7fff), 0x78);
  }
  static V max(V a, V b) { return _mm512_max_epi16(a, b); }
  static V min(V a, V b) { return _mm512_min_epi16(a, b); }
  static __m256i low(V v) { return _mm512_castsi512_si256(v); }
  static __m256i high(V v) { return _mm512_extracti64x4_epi64(v, 1); }
  // 16 floats from 16 halves (a bfloat16 is the top half of its float32;
  // F16C's conversion for a float16, exact)
  template <bool kBf16>
  static void widen(__m256i h, float* out) {
    _mm512_storeu_ps(out, kBf16
                              ? _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16))
                              : _mm512_cvtph_ps(h));
  }
#else
  using V = __m256i;
  static constexpr int64_t kWords = 16;
  static V load(const uint16_t* p) { return _mm256_loadu_si256(reinterpret_cast<const V*>(p)); }
  static V splat(int16_t v) { return _mm256_set1_epi16(v); }
  static V key(V bits) {
    return _mm256_xor_si256(bits, _mm256_and_si256(_mm256_srai_epi16(bits, 15), splat(0x7fff)));
  }
  static V max(V a, V b) { return _mm256_max_epi16(a, b); }
  static V min(V a, V b) { return _mm256_min_epi16(a, b); }
  static __m256i low(V v) { return v; }
  static __m256i high(V v) { return v; }
  template <bool kBf16>
  static void widen(__m256i h, float* out) {
    auto eight = [](__m128i q) {
      return kBf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(q), 16))
                   : _mm256_cvtph_ps(q);
    };
    _mm256_storeu_ps(out, eight(_mm256_castsi256_si128(h)));
    _mm256_storeu_ps(out + 8, eight(_mm256_extracti128_si256(h, 1)));
  }
#endif
  // The largest (smallest) word of v.
  template <typename Op256, typename Op128>
  static int16_t reduce(V v, Op256 op256, Op128 op128) {
    __m256i a = low(v);
    if constexpr (kWords == 32) a = op256(a, high(v));
    __m128i b = op128(_mm256_castsi256_si128(a), _mm256_extracti128_si256(a, 1));
    b = op128(b, _mm_shuffle_epi32(b, 0x4e));
    b = op128(b, _mm_shuffle_epi32(b, 0xb1));
    b = op128(b, _mm_srli_epi32(b, 16));
    return static_cast<int16_t>(_mm_extract_epi16(b, 0));
  }
  static int16_t hmax(V v) {
    return reduce(
        v, [](__m256i a, __m256i b) { return _mm256_max_epi16(a, b); },
        [](__m128i a, __m128i b) { return _mm_max_epi16(a, b); });
  }
  static int16_t hmin(V v) {
    return reduce(
        v, [](__m256i a, __m256i b) { return _mm256_min_epi16(a, b); },
        [](__m128i a, __m128i b) { return _mm_min_epi16(a, b); });
  }
};

// The scan of a half-precision row (bfloat16 or float16): each block's max
// and finiteness come from 16-bit order keys (below), without widening;
// without dst (greedy with nothing else asked for, the widened values not
// kept) a block is widened to memory only when it is read again (it holds a
// non-finite entry, or the max's first position). With dst the widened row
// is stored there as it is read, and those blocks are read from it (the
// maxima still come from the keys: the stored floats are not read back). The
// same results as scanning the widened row (the one value a float max may
// pick differently, ±0, gives the same +0 max and position): both formats
// widen exactly and in order.
template <DType kType>
MaxStats scan_half(const uint16_t* h, int64_t n, float* block_max, float* dst) {
  static_assert(kType == DType::kBFloat16 || kType == DType::kFloat16);
  constexpr bool kBf16 = kType == DType::kBFloat16;
  using W = HalfWords;
  // (F16C's conversion, exact, for a float16)
  auto widen1 = [](uint16_t v) { return kBf16 ? bf16_to_float(v) : _cvtsh_ss(v); };
  alignas(64) float local[kPassBlock];
  // A block's float values: from dst, or widened into local.
  auto values = [&](int64_t b0, int64_t m) -> const float* {
    if (dst) return dst + b0;
    to_float(h + b0, kType, m, local);
    return local;
  };
  // The packets are never widened: a half's bits, with the magnitude bits
  // flipped when the sign is set (k = h ^ ((h >> 15) & 0x7fff), an
  // involution), order as signed 16-bit integers exactly as the values do
  // (-0 just below +0; both formats are sign and magnitude), so a register
  // of words takes a max and a min per load. The block is finite exactly
  // when its largest key is below +inf's (bfloat16 0x7f80, float16 0x7c00;
  // +NaN lies above) and its smallest above -inf's (-NaN lies below).
  constexpr int16_t kInfKey = kBf16 ? 0x7f80 : 0x7c00;
  constexpr int16_t kNegInfKey = static_cast<int16_t>((kInfKey | 0x8000) ^ 0x7fff);
  constexpr int64_t kWords = W::kWords;
  ScanTotals totals;
  for (int64_t b0 = 0; b0 < n; b0 += kPassBlock) {
    const int64_t m = std::min(kPassBlock, n - b0);
    W::V kmax = W::splat(INT16_MIN), kmin = W::splat(INT16_MAX);
    int64_t j = 0;
    for (; j + kWords <= m; j += kWords) {
      // (a line of 32 words every other packet on AVX2: asked for twice)
      _mm_prefetch(reinterpret_cast<const char*>(h + b0 + j) + kPrefetchBytes, _MM_HINT_T0);
      const W::V bits = W::load(h + b0 + j);
      const W::V key = W::key(bits);
      kmax = W::max(kmax, key);
      kmin = W::min(kmin, key);
      if (dst) {
        W::widen<kBf16>(W::low(bits), dst + b0 + j);
        if constexpr (kWords == 32) W::widen<kBf16>(W::high(bits), dst + b0 + j + 16);
      }
    }
    float bmax = -kInf;
    bool finite_block = true;
    if (j > 0) {
      const int16_t hi = W::hmax(kmax);
      const int16_t lo = W::hmin(kmin);
      finite_block = hi < kInfKey && lo > kNegInfKey;
      const auto bits = static_cast<uint16_t>(hi ^ ((hi >> 15) & 0x7fff));
      bmax = widen1(bits);
    }
    for (; j < m; ++j) {
      const float v = widen1(h[b0 + j]);
      if (dst) dst[b0 + j] = v;
      bmax = v > bmax ? v : bmax;
      finite_block &= v * 0.0f == 0.0f;
    }
    totals.add(
        b0, m, finite_block, bmax, [&] { return exact_scan(values(b0, m), m); }, block_max);
  }
  const int64_t at = totals.max_block;
  const int64_t m = std::min(kPassBlock, n - at);
  return totals.finish(values(at, m), m, [&] {
    int64_t t = 0;
    while (t < n && widen1(h[t]) < kInf) ++t;
    return t < n ? t : int64_t{-1};
  });
}
#endif

}  // namespace

MaxStats max_stats(const float* x, int64_t n, float* block_max) {
  return scan_blocks<false>(x, n, block_max, nullptr);
}

namespace {
// A sub-block's scan at offset j added to the scan of those before it (in
// order: the first max and the first NaN or +inf win).
void add_part(MaxStats& total, const MaxStats& part, int64_t j) {
  if (total.bad_at < 0 && part.bad_at >= 0) total.bad_at = j + part.bad_at;
  if (part.argmax >= 0 && (part.max > total.max || total.argmax < 0)) {
    total.max = part.max;
    total.argmax = j + part.argmax;
  }
  total.finite += part.finite;
}
}  // namespace

MaxStats widen_max_stats(const void* src, DType dtype, int64_t n, float* dst, float* block_max) {
  if (dtype == DType::kFloat32) {
    // (without dst, the scan alone: nothing to widen)
    const auto* x = static_cast<const float*>(src);
    return dst ? scan_blocks<true>(x, n, block_max, dst)
               : scan_blocks<false>(x, n, block_max, nullptr);
  }
#if defined(__AVX2__)
  if (dtype == DType::kBFloat16) {
    return scan_half<DType::kBFloat16>(static_cast<const uint16_t*>(src), n, block_max, dst);
  }
  if (dtype == DType::kFloat16) {
    return scan_half<DType::kFloat16>(static_cast<const uint16_t*>(src), n, block_max, dst);
  }
#endif
  // Sub-blocks small enough that max_stats reads them back from L1 (whole
  // pass blocks, for block_max).
  // Without dst, each sub-block is widened into a local buffer and dropped.
  constexpr int64_t kSub = 4 * kPassBlock;
  alignas(64) float local[kSub];
  const int64_t esize = dtype_size(dtype);
  MaxStats total;
  const auto* bytes = static_cast<const char*>(src);
  for (int64_t j = 0; j < n; j += kSub) {
    const int64_t m = std::min(kSub, n - j);
    float* out = dst ? dst + j : local;
    // The input's lines kPrefetchBytes on are asked for while this sub-block
    // is widened.
    for (int64_t b = j * esize + kPrefetchBytes; b < (j + m) * esize + kPrefetchBytes; b += 64) {
      _mm_prefetch(bytes + b, _MM_HINT_T0);
    }
    to_float(bytes + j * esize, dtype, m, out);
    add_part(total, max_stats(out, m, block_max ? block_max + j / kPassBlock : nullptr), j);
  }
  return total;
}

#if !defined(__AVX512F__)
namespace {

// kEntropy moments of one block in one read (EntropySums; the members
// counted in out.count). kCheckLo: the set has a lower bound.
template <bool kCheckLo>
void entropy_moments(const float* x, int64_t n, Moments& out, EntropySums& sums) {
  namespace ei = Eigen::internal;
  using Packet = EntropySums::Packet;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  LaneCount count;
  alignas(64) float tail[kLanes];
  for (int64_t g = 0; g < n; g += kLanes) {
    Packet px;
    if (g + kLanes <= n) {
      px = ei::ploadu<Packet>(x + g);
    } else {
      for (int64_t j = 0; j < kLanes; ++j) tail[j] = g + j < n ? x[g + j] : -kInf;
      px = ei::pload<Packet>(tail);  // padding: d = +inf, never a member
    }
    Packet d;
    count.add(sums.add<kCheckLo>(px, &d));
  }
  sums.end_block();
  out.count += count.total();
}

}  // namespace
#endif

Moments moments(const Segment& s, const SetSpec& set, float d0, MomentKind kind, float* e_out,
                float* w_out) {
  Moments out;
  if (kind == MomentKind::kEntropy) {
#if defined(__AVX512F__)
    EntropyLanes lanes;  // (reduced once, after the last block)
#else
    EntropySums sums(set, d0);
#endif
    for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
      const int64_t n = std::min(kBlock, s.n - j0);
      float* e = e_out ? e_out + j0 : nullptr;
      float* w = w_out ? w_out + j0 : nullptr;
      if (block_empty(s, j0, set)) {
        if (e) std::fill_n(e, n, kInf);
        if (w) std::fill_n(w, n, 0.0f);
        continue;
      }
      prefetch_ahead(s, j0, n);
#if defined(__AVX512F__)
      // The mass pass with the moment riding along (filter space: key = d).
      SetSpec same = set;
      same.key_scale = set.scale;
      int64_t count = 0;
      block_masses_for<Extra::kEntropy>(s.x + j0, n, same, d0, w, &count, nullptr, &lanes, e);
      out.count += count;
#else
      if (set.dlo > 0.0f) {
        entropy_moments<true>(s.x + j0, n, out, sums);
      } else {
        entropy_moments<false>(s.x + j0, n, out, sums);
      }
      if (e || w) {
        // The stored forms: e = d - d0 (+inf where the mass is 0) and the mass.
        alignas(64) float d[kBlock];
        alignas(64) float m[kBlock];
        block_distances(s.x + j0, n, set.xmax, set.scale, d);
        block_masses(d, d, n, set, d0, m);
        for (int64_t j = 0; j < n; ++j) {
          const float ej = d[j] - d0;
          const bool live = in_range(d[j], set.dlo, set.dhi) & (ej <= kUnderflow);
          if (e) e[j] = live ? ej : kInf;
          if (w) w[j] = m[j];
        }
      }
#endif
    }
#if defined(__AVX512F__)
    out.z = lanes.z.total();
    out.zd = lanes.zd.total();
#else
    out.z = sums.z();
    out.zd = sums.zd();
#endif
    return out;
  }
  // kSpread: the deviations and their squares in double: with a tiny
  // temperature the distances reach 1e30, whose float squares would
  // overflow; and d - d0 rounded to float (d0 > 0: the set's top is not the
  // row's max, after typical-p) made sigma fall short of a boundary that
  // is exact on the float z (two values, each held by half the set: z_max -
  // 2 sigma is the lower one), which then lost its tokens.
  alignas(64) float d[kBlock];
  alignas(64) float kept[kBlock];  // d on the set, d0 off it (a deviation of 0)
  const float lo = set.dlo, hi = set.dhi;
  const auto dd0 = static_cast<double>(d0);
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block_empty(s, j0, set)) continue;
    block_distances(s.x + j0, n, set.xmax, set.scale, d);
    int64_t count = 0;
    // (the select on the floats' bits: one of doubles kept this loop
    // scalar, 3.5x, and one of floats too on SSE2, which has no blend)
    uint32_t d0_bits;
    std::memcpy(&d0_bits, &d0, sizeof d0_bits);
    for (int64_t j = 0; j < n; ++j) {
      const bool in = in_range(d[j], lo, hi);
      uint32_t bits;
      std::memcpy(&bits, d + j, sizeof bits);
      const uint32_t on = 0u - static_cast<uint32_t>(in);
      bits = (bits & on) | (d0_bits & ~on);
      std::memcpy(kept + j, &bits, sizeof bits);
      count += in ? 1 : 0;
    }
    out.count += count;
    // Lane i adds the deviations and their squares of j = i mod 8 in order
    // (the same sums on every instruction set), over the block padded to a
    // multiple of 8 with deviations of 0, which add nothing. The 8 lanes are
    // two vectors of 4 doubles (GCC's vector extension; one of 8 went
    // through the stack on AVX2): as loops over 8 lanes GCC kept it scalar
    // here, 2x the time.
    using Doubles = double __attribute__((vector_size(32)));
    using Floats = float __attribute__((vector_size(16)));
    const int64_t padded = (n + 7) & ~int64_t{7};
    for (int64_t j = n; j < padded; ++j) kept[j] = d0;
    Doubles sum_lo{}, sum_hi{}, sq_lo{}, sq_hi{};
    for (int64_t j = 0; j < padded; j += 8) {
      Floats lo4, hi4;
      std::memcpy(&lo4, kept + j, sizeof lo4);
      std::memcpy(&hi4, kept + j + 4, sizeof hi4);
      const Doubles e_lo = __builtin_convertvector(lo4, Doubles) - dd0;
      const Doubles e_hi = __builtin_convertvector(hi4, Doubles) - dd0;
      sum_lo += e_lo;
      sum_hi += e_hi;
      sq_lo += e_lo * e_lo;
      sq_hi += e_hi * e_hi;
    }
    double sum[8], acc[8];
    std::memcpy(sum, &sum_lo, sizeof sum_lo);
    std::memcpy(sum + 4, &sum_hi, sizeof sum_hi);
    std::memcpy(acc, &sq_lo, sizeof sq_lo);
    std::memcpy(acc + 4, &sq_hi, sizeof sq_hi);
    out.sd += sum_of_lanes(sum);
    out.sd2 += sum_of_lanes(acc);
  }
  return out;
}

// The members of a segment, counted by their bounds' test alone (below).
int64_t count_members(const Segment& s, const SetSpec& set);

namespace {
// A block's mass alone, in the form block_masses_and_hits takes for the same
// set (open-topped where it may be: no member test, no count), so the same
// bits. Same scales only, as the hits.
double block_masses_alone(const float* x, int64_t n, const SetSpec& set, float k0) {
  int64_t unused = 0;
#if defined(__AVX512F__)
  return block_masses_for<Extra::kNone>(x, n, set, k0, nullptr, &unused, nullptr, nullptr, nullptr);
#else
  if (set.dlo > 0.0f || k0 != 0.0f || set.dhi < kUnderflow) {
    return block_masses_from_values(x, n, set, k0, nullptr, &unused);
  }
  return block_masses_from_values_impl<false, true, true, false, true>(x, n, set, k0, nullptr,
                                                                       &unused);
#endif
}
}  // namespace

double sum_mass(const Segment& s, const SetSpec& set, float k0, int64_t* count,
                double* block_sums) {
  // From the top, one scale, nothing short of underflow bounding the set (the
  // whole row: full sampling's frames, the raw normaliser, greedy's Z), on
  // AVX-512: the open-topped form, which tests no token against dhi. With a
  // count asked for, the pass notes the least -d it met: while none reaches
  // past dhi (the common case: no -inf, no overflowed distance) every entry
  // of the blocks read is a member (a skipped block holds none). At the
  // first block where one does (a masked token's -inf, say), that block is
  // counted by compares alone and the blocks after it take the form that
  // tests and counts each token, which forms the same masses. (full
  // sampling, one 128256 row: ~9 % off, against the form that tests and
  // counts each token; with an allowed-token mask, a count pass after the
  // mass pass had cost ~15 % of the row: docs/performance.md)
#if defined(__AVX512F__)
  bool open = set.dlo <= 0.0f && k0 == 0.0f && set.key_scale == set.scale && set.dhi >= kUnderflow;
#endif
  double total = 0.0;
  int64_t members = 0;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block_empty(s, j0, set)) {
      if (block_sums) block_sums[j0 / kBlock] = 0.0;
      continue;
    }
    prefetch_ahead(s, j0, n);
    double block_sum;
#if defined(__AVX512F__)
    if (open) {
      if (count) {
        int64_t unused = 0;
        float least = kInf;
        block_sum = block_masses_for<Extra::kLeast>(s.x + j0, n, set, 0.0f, nullptr, &unused,
                                                    nullptr, nullptr, nullptr, nullptr, &least);
        if (least >= -set.dhi) {
          members += n;
        } else {
          members += count_members(Segment{s.x + j0, nullptr, n, 0}, set);
          open = false;
        }
      } else {
        block_sum = block_masses_alone(s.x + j0, n, set, 0.0f);
      }
    } else
#endif
    {
      int64_t in_block = 0;
      block_sum = block_masses_from_values(s.x + j0, n, set, k0, nullptr, &in_block);
      members += in_block;
    }
    if (block_sums) block_sums[j0 / kBlock] = block_sum;
    total += block_sum;
  }
  if (count) *count = members;
  return total;
}

double masked_sum_mass(const Segment& s, const int32_t* words, const SetSpec& set,
                       double* allowed_total) {
  // sum_mass's form at temperature 1 from the top (the same template, so the
  // same bits: open-topped on AVX-512), with the allowed tokens' masses
  // summed apart in the same read: a block at a time, each block's sums
  // added in double in order.
  double total = 0.0, allowed = 0.0;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block_empty(s, j0, set)) continue;
    prefetch_ahead(s, j0, n);
    AllowedLanes lanes;
    lanes.words = words;
    lanes.first = s.base + j0;
    int64_t unused = 0;
#if defined(__AVX512F__)
    total += block_masses_avx512<false, true, true, true, Extra::kAllowed, true>(
        s.x + j0, n, set, 0.0f, nullptr, &unused, nullptr, nullptr, nullptr, nullptr, nullptr,
        &lanes);
#else
    total += block_masses_from_values_impl<false, true, true, false, false, true>(
        s.x + j0, n, set, 0.0f, nullptr, &unused, nullptr, &lanes);
#endif
    allowed += lanes.sum.total();
  }
  *allowed_total = allowed;
  return total;
}

double sum_mass_gather(const Segment& s, const SetSpec& set, float k0, float bound, int64_t cap,
                       GatheredToken* out, int64_t* gathered) {
  double total = 0.0;
  int64_t count = 0;
  BlockHits hits;
  hits.bound = bound;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block_empty(s, j0, set)) continue;
    prefetch_ahead(s, j0, n);
    int64_t unused = 0;
    if (block_above(s, j0, set, bound)) {
      // No member within the bound (its largest x says so): the masses alone.
      total += block_masses_alone(s.x + j0, n, set, k0);
      continue;
    }
    total += block_masses_and_hits(s.x + j0, n, set, k0, hits, &unused);
    if (count > cap) continue;
    count += append_gathered(hits, s, j0, out + count);
    if (count > cap) count = cap + 1;
  }
  *gathered = count;
  return total;
}

double sum_mass_band(const Segment& s, const SetSpec& set, float k0, float lo, float hi,
                     float* out_key, float* out_weight, int64_t* listed, double* below,
                     int64_t* below_count) {
#if defined(__AVX512F__)
  // In the mass pass itself (Extra::kBand): against the two loops below,
  // one 128256 row (bench/kernel_bench band_pass) ~40 -> ~25 us.
  double total = 0.0;
  BandLanes band;
  band.lo = lo;
  band.hi = hi;
  band.key = out_key;
  band.weight = out_weight;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block_empty(s, j0, set)) continue;
    prefetch_ahead(s, j0, n);
    int64_t unused = 0;
    total += block_masses_for<Extra::kBand>(s.x + j0, n, set, k0, nullptr, &unused, nullptr,
                                            nullptr, nullptr, &band);
  }
  *listed = band.n;
  *below = band.below.total();
  *below_count = band.below_count;
  return total;
#else
  // Per block: the masses into w (the pass every mass comes from), then,
  // over the block in L1, a packet at a time, the members at or before lo
  // (their masses added in float within the block, in double across
  // blocks) and those in (lo, hi], whose keys and masses are appended.
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  const auto [pxmax, pscale, pkscale, plo, phi, punder, pinf, pone] = SetPackets(set);
  const Packet pbound = ei::pset1<Packet>(lo);
  const Packet pband = ei::pset1<Packet>(hi);
  alignas(64) float w[kBlock];
  alignas(64) float lanes[kLanes];
  double total = 0.0, under = 0.0;
  int64_t count = 0, under_count = 0;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block_empty(s, j0, set)) continue;
    prefetch_ahead(s, j0, n);
    int64_t unused = 0;
    const float* x = s.x + j0;
    total += block_masses_from_values(x, n, set, k0, w, &unused);
    Packet part = ei::pzero(pone), members = ei::pzero(pone);
    int64_t j = 0;
    for (; j + kLanes <= n; j += kLanes) {
      // (d as every pass forms it; key = d, the scales agreeing)
      const Packet d = ei::pmul(ei::psub(pxmax, ei::ploadu<Packet>(x + j)), pscale);
      const Packet pw = ei::pload<Packet>(w + j);
      const Packet in = ei::pand(ei::pcmp_le(plo, d), ei::pcmp_le(d, phi));
      const Packet le = ei::pand(in, ei::pcmp_le(d, pbound));
      part = ei::padd(part, ei::pand(le, pw));
      const Packet band = ei::pandnot(ei::pand(in, ei::pcmp_le(d, pband)), le);
      if (ei::predux_any(band)) {
        alignas(64) float dk[kLanes];
        ei::pstore(dk, d);
        for (int64_t i = 0; i < kLanes; ++i) {
          const float di = dk[i];
          const bool hit = is_member(di, set) & (di > lo) & (di <= hi);
          out_key[count] = di;
          out_weight[count] = w[j + i];
          count += hit ? 1 : 0;
        }
      }
      members = ei::padd(members, ei::pand(le, pone));  // (exact: at most kBlock a lane)
    }
    ei::pstore(lanes, members);
    for (int64_t i = 0; i < kLanes; ++i) under_count += static_cast<int64_t>(lanes[i]);
    ei::pstore(lanes, part);
    double block_under = sum_as_double(lanes, kLanes);
    for (; j < n; ++j) {
      const float d = (set.xmax - x[j]) * set.scale;
      if (!is_member(d, set)) continue;
      if (d <= lo) {
        block_under += static_cast<double>(w[j]);
        ++under_count;
      } else if (d <= hi) {
        out_key[count] = d;
        out_weight[count] = w[j];
        ++count;
      }
    }
    under += block_under;
  }
  *listed = count;
  *below = under;
  *below_count = under_count;
  return total;
#endif
}

namespace {

// The members' keys of a segment, a packet at a time, formed in registers
// from the values (the bits of BlockKeys: d = (xmax - x) * scale, key =
// (xmax - x) * key_scale), in the blocks that may hold members with key <=
// bound (block_above): packet(key, member mask) for each whole packet,
// one(key, member) for each token after the last whole packet of a block;
// packets alternate between two chains
// (packet(chain, ...), chain a std::integral_constant 0 or 1), so that a
// caller's accumulation does not wait on its own latency. Through BlockKeys
// (distances stored and read back) and a scalar loop, min_key took 104-172
// us over a 128256 row and count_key_below 18-26; so, 9-12 each.
template <typename Packets, typename Tail>
void member_keys(const Segment& s, const SetSpec& set, float bound, Packets&& packet, Tail&& one) {
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kP = ei::packet_traits<float>::size;
  const Packet pxmax = ei::pset1<Packet>(set.xmax), pscale = ei::pset1<Packet>(set.scale),
               pkscale = ei::pset1<Packet>(set.key_scale), plo = ei::pset1<Packet>(set.dlo),
               phi = ei::pset1<Packet>(set.dhi);
  const bool same = set.key_scale == set.scale;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block_above(s, j0, set, bound)) continue;
    const float* x = s.x + j0;
    auto at = [&](auto chain, int64_t j) {
      const Packet diff = ei::psub(pxmax, ei::ploadu<Packet>(x + j));
      const Packet d = ei::pmul(diff, pscale);
      packet(chain, same ? d : ei::pmul(diff, pkscale),
             ei::pand(ei::pcmp_le(plo, d), ei::pcmp_le(d, phi)));
    };
    int64_t j = 0;
    for (; j + 2 * kP <= n; j += 2 * kP) {
      at(std::integral_constant<int, 0>{}, j);
      at(std::integral_constant<int, 1>{}, j + kP);
    }
    for (; j + kP <= n; j += kP) at(std::integral_constant<int, 0>{}, j);
    for (; j < n; ++j)
      one((set.xmax - x[j]) * set.key_scale, in_range(distance(x[j], set), set.dlo, set.dhi));
  }
}

}  // namespace

float min_key(const Segment& s, const SetSpec& set) {
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  const Packet pinf = ei::pset1<Packet>(kInf);
  Packet acc[2] = {pinf, pinf};
  float best = kInf;
  member_keys(
      s, set, kInf,
      [&](auto chain, const Packet& key, const Packet& in) {
        acc[chain] = ei::pmin(acc[chain], ei::pselect(in, key, pinf));
      },
      [&](float key, bool in) { best = std::min(best, in ? key : kInf); });
  return std::min(best, ei::predux_min(ei::pmin(acc[0], acc[1])));
}

int64_t count_key_below(const Segment& s, const SetSpec& set, float key) {
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  const Packet pkey = ei::pset1<Packet>(key);
  LaneCount lanes[2];
  int64_t count = 0;
  // (only blocks whose max's key is below `key` can hold a member below it:
  // on a peaked row, where a sampled token is one of the few near the top,
  // a handful of blocks)
  member_keys(
      s, set, std::nextafter(key, -kInf),
      [&](auto chain, const Packet& k, const Packet& in) {
        lanes[chain].add(ei::pand(in, ei::pcmp_lt(k, pkey)));
      },
      [&](float k, bool in) { count += (in & (k < key)) ? 1 : 0; });
  return count + lanes[0].total() + lanes[1].total();
}

int64_t count_members(const Segment& s, const SetSpec& set) {
  LaneCount lanes[2];
  int64_t count = 0;
  member_keys(
      s, set, kInf, [&](auto chain, const auto& /*key*/, const auto& in) { lanes[chain].add(in); },
      [&](float /*key*/, bool in) { count += in ? 1 : 0; });
  return count + lanes[0].total() + lanes[1].total();
}

namespace {

// count_band for distance keys (kTypical false: blocks whose max's key lies
// past hi are skipped) or typical keys (every block is read: a block's max
// bounds no token's typical key). Typical keys are compared as e against
// typical_e_range's ends, the band's e listed and turned into keys after.
template <bool kTypical>
int64_t count_band_of(const Segment& s, const SetSpec& set, const KeyRule& rule, float lo, float hi,
                      float* out_key, int64_t* below) {
#if defined(__AVX512F__)
  // Masks throughout (through member_keys' packets, a mask turned into a
  // vector and back: ~19 us over a 128256 row listing 2k keys); whole
  // packets by plain loads.
  const SetPackets sp(set);  // (named: the lambda below uses it)
  const __m512 pklo = _mm512_set1_ps(lo), pkhi = _mm512_set1_ps(hi);
  const __m512 pd0 = _mm512_set1_ps(rule.d0);
  const __m512 pad = _mm512_set1_ps(-kInf);  // (d = +inf: no member)
  const ERange rlo = kTypical ? typical_e_range(rule.mu, lo) : ERange{};
  const ERange rhi = kTypical ? typical_e_range(rule.mu, hi) : ERange{};
  const __m512 pelo0 = _mm512_set1_ps(rlo.lo), pehi0 = _mm512_set1_ps(rlo.hi);
  const __m512 pelo1 = _mm512_set1_ps(rhi.lo), pehi1 = _mm512_set1_ps(rhi.hi);
  int64_t under = 0, listed = 0;
  auto packet = [&](__m512 px) {
    const __m512 diff = _mm512_sub_ps(sp.xmax, px);
    const __m512 d = _mm512_mul_ps(diff, sp.scale);
    const __mmask16 in =
        _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(sp.lo, d, _CMP_LE_OQ), d, sp.hi, _CMP_LE_OQ);
    __mmask16 le, band;
    __m512 k;  // (typical: e, its key formed after)
    if constexpr (kTypical) {
      k = _mm512_sub_ps(d, pd0);
      le = _mm512_mask_cmp_ps_mask(_mm512_mask_cmp_ps_mask(in, pelo0, k, _CMP_LE_OQ), k, pehi0,
                                   _CMP_LE_OQ);
      band = _mm512_mask_cmp_ps_mask(_mm512_mask_cmp_ps_mask(in & ~le, pelo1, k, _CMP_LE_OQ), k,
                                     pehi1, _CMP_LE_OQ);
    } else {
      k = _mm512_mul_ps(diff, sp.key_scale);
      le = _mm512_mask_cmp_ps_mask(in, k, pklo, _CMP_LE_OQ);
      band = _mm512_mask_cmp_ps_mask(in & ~le, k, pkhi, _CMP_LE_OQ);
    }
    under += std::popcount(static_cast<unsigned>(le));
    _mm512_storeu_ps(out_key + listed, _mm512_maskz_compress_ps(band, k));
    listed += std::popcount(static_cast<unsigned>(band));
  };
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (!kTypical && block_above(s, j0, set, hi)) continue;  // (every key past hi)
    const float* x = s.x + j0;
    int64_t g = 0;
    for (; g + 16 <= n; g += 16) packet(_mm512_loadu_ps(x + g));
    if (g < n)
      packet(_mm512_mask_loadu_ps(pad, static_cast<__mmask16>((1u << (n - g)) - 1u), x + g));
  }
  if constexpr (kTypical) typical_keys(out_key, nullptr, listed, rule.mu, out_key);
  *below = under;
  return listed;
#else
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kP = ei::packet_traits<float>::size;
  const Packet plo = ei::pset1<Packet>(lo), phi = ei::pset1<Packet>(hi);
  LaneCount lanes[2];
  int64_t under = 0, listed = 0;
  // The lanes of `le` counted, those of `in_band` listed (their k).
  auto band = [&](auto chain, const Packet& k, const Packet& le, const Packet& in_band) {
    lanes[chain].add(le);
    if (!ei::predux_any(in_band)) return;
    alignas(64) float kk[kP];
    alignas(64) float bb[kP];
    ei::pstore(kk, k);
    ei::pstore(bb, in_band);
    for (int64_t i = 0; i < kP; ++i) {
      out_key[listed] = kk[i];
      listed += std::bit_cast<uint32_t>(bb[i]) != 0 ? 1 : 0;  // (a hit lane is all ones)
    }
  };
  auto take = [&](auto chain, const Packet& k, const Packet& in) {
    const Packet le = ei::pand(in, ei::pcmp_le(k, plo));
    band(chain, k, le, ei::pandnot(ei::pand(in, ei::pcmp_le(k, phi)), le));
  };
  if constexpr (kTypical) {
    const SetPackets sp(set);
    const Packet pd0 = ei::pset1<Packet>(rule.d0);
    const ERange rlo = typical_e_range(rule.mu, lo), rhi = typical_e_range(rule.mu, hi);
    const Packet pelo0 = ei::pset1<Packet>(rlo.lo), pehi0 = ei::pset1<Packet>(rlo.hi);
    const Packet pelo1 = ei::pset1<Packet>(rhi.lo), pehi1 = ei::pset1<Packet>(rhi.hi);
    alignas(64) float tail[kP];
    for (int64_t g = 0; g < s.n; g += kP) {
      Packet px;
      if (g + kP <= s.n) {
        px = ei::ploadu<Packet>(s.x + g);
      } else {
        for (int64_t j = 0; j < kP; ++j) tail[j] = g + j < s.n ? s.x[g + j] : -kInf;
        px = ei::pload<Packet>(tail);  // padding: never a member
      }
      const Packet d = ei::pmul(ei::psub(sp.xmax, px), sp.scale);
      const Packet in = ei::pand(ei::pcmp_le(sp.lo, d), ei::pcmp_le(d, sp.hi));
      const Packet e = ei::psub(d, pd0);
      const Packet le = ei::pand(in, ei::pand(ei::pcmp_le(pelo0, e), ei::pcmp_le(e, pehi0)));
      const Packet upto = ei::pand(in, ei::pand(ei::pcmp_le(pelo1, e), ei::pcmp_le(e, pehi1)));
      band(std::integral_constant<int, 0>{}, e, le, ei::pandnot(upto, le));
    }
    typical_keys(out_key, nullptr, listed, rule.mu, out_key);
  } else {
    // (blocks whose every key lies past hi hold neither kind: skipped)
    member_keys(s, set, hi, take, [&](float k, bool in) {
      under += (in & (k <= lo)) ? 1 : 0;
      out_key[listed] = k;
      listed += (in & (k > lo) & (k <= hi)) ? 1 : 0;
    });
  }
  *below = under + lanes[0].total() + lanes[1].total();
  return listed;
#endif
}

}  // namespace

int64_t count_band(const Segment& s, const SetSpec& set, const KeyRule& rule, float lo, float hi,
                   float* out_key, int64_t* below) {
  return rule.kind == KeyKind::kTypical
             ? count_band_of<true>(s, set, rule, lo, hi, out_key, below)
             : count_band_of<false>(s, set, rule, lo, hi, out_key, below);
}

int64_t walk(const Segment& s, const SetSpec& set, float k0, const double* block_sums,
             double cum_before, double target) {
  double cum = cum_before;
  int64_t last_block = -1;
  int64_t b = 0;
  const int64_t blocks = block_count(s.n);
  for (; b < blocks; ++b) {
    if (block_sums[b] <= 0.0) continue;
    last_block = b;
    if (cum + block_sums[b] >= target) break;
    cum += block_sums[b];
  }
  if (last_block < 0) return -1;
  if (b == blocks) {  // rounding: settle for the last block of positive mass
    b = last_block;
    cum -= block_sums[b];  // (its mass is not before it: its walk runs past its end)
  }
  alignas(64) float w[kBlock];
  const int64_t j0 = b * kBlock;
  const int64_t n = std::min(kBlock, s.n - j0);
  int64_t unused = 0;
  block_masses_from_values(s.x + j0, n, set, k0, w, &unused);
  // The block's sum (float partial sums per lane, as Z's) can differ from
  // its tokens' masses added in double by a few ulp of its largest: a token
  // far below a heavy one in its lane rounds away from the sum. The walk is
  // scaled to the sum, so each token gets its exact share of the block's
  // mass (unscaled, the block's last tokens could be out of reach, or the
  // last one took the difference). The scale is within kSlack of 1 (at most
  // 512 float additions, 2^-24 each: 3e-5), so it is summed only when the
  // unscaled walk ends that close to a token's edge or past the block.
  constexpr double kSlack = 1e-4;
  // The first member at which the block's running mass reaches g (the last
  // member of positive mass when none does), and that mass before and after it.
  double before = 0.0, after = 0.0;
  auto reach = [&](double g) {
    int64_t at = -1;
    after = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      if (w[j] <= 0.0f) continue;
      before = after;
      after += w[j];
      at = j0 + j;
      if (after >= g) break;
    }
    return at;
  };
  const double goal = target - cum;
  const int64_t unscaled = reach(goal);
  if (before < goal * (1.0 - kSlack) && after >= goal * (1.0 + kSlack)) return unscaled;
  // (masses are >= 0: a token outside the set has 0)
  double exact = 0.0;
  for (int64_t j = 0; j < n; ++j) exact += w[j];
  return reach(goal * (exact / block_sums[b]));
}

void write_probs(const Segment& s, const SetSpec& set, float k0, double inv_z, float* out) {
  const auto scale = static_cast<float>(inv_z);
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    float* o = out + j0;
    if (block_empty(s, j0, set)) {
      std::fill_n(o, n, 0.0f);
      continue;
    }
    int64_t unused = 0;
    block_masses_from_values(s.x + j0, n, set, k0, o, &unused);
    for (int64_t j = 0; j < n; ++j) o[j] *= scale;
  }
}

int64_t gather_le(const Segment& s, const SetSpec& set, float c, KeyToken* out) {
  int64_t count = 0;
  Collected hits;
  const float x_floor = x_floor_for_key(set, c);
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block_above(s, j0, set, c)) continue;
    hits.collect(s.x + j0, n, set, -kInf, c, x_floor);
    for (int64_t i = 0; i < hits.n; ++i)
      out[count++] = KeyToken{hits.k[i], s.token(j0 + hits.idx[i])};
  }
  return count;
}

int64_t compact(const Segment& s, const SetSpec& set, float* cx, int32_t* ci) {
#if defined(__AVX512F__)
  // Each packet's members compressed to the front of a register and stored
  // whole, values and token ids straight from the row (no staging, no
  // branch: where about half the packets hold a member, after top-k 5000
  // over a 128256 row, a branch on each missed every other packet; ~30 us
  // that way, through Collected).
  const SetPackets sp(set);                  // (named: the lambda below uses it)
  const __m512 pad = _mm512_set1_ps(-kInf);  // (d = +inf: no member)
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int64_t count = 0;
  auto packet = [&](int64_t at, __m512 px, __mmask16 load) {
    const __m512 d = _mm512_mul_ps(_mm512_sub_ps(sp.xmax, px), sp.scale);
    const __mmask16 hit =
        _mm512_mask_cmp_ps_mask(_mm512_cmp_ps_mask(sp.lo, d, _CMP_LE_OQ), d, sp.hi, _CMP_LE_OQ);
    if (hit == 0) return;
    const __m512i ids =
        s.idx ? _mm512_maskz_loadu_epi32(load, s.idx + at)
              : _mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int32_t>(s.base + at)));
    _mm512_storeu_ps(cx + count, _mm512_maskz_compress_ps(hit, px));
    _mm512_storeu_si512(ci + count, _mm512_maskz_compress_epi32(hit, ids));
    count += std::popcount(static_cast<unsigned>(hit));
  };
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block_empty(s, j0, set)) continue;
    const float* x = s.x + j0;
    int64_t g = 0;
    for (; g + 16 <= n; g += 16) packet(j0 + g, _mm512_loadu_ps(x + g), 0xffff);
    if (g < n) {
      const auto load = static_cast<__mmask16>((1u << (n - g)) - 1u);
      packet(j0 + g, _mm512_mask_loadu_ps(pad, load, x + g), load);
    }
  }
  return count;
#else
  int64_t count = 0;
  Collected hits;
  for (int64_t j0 = 0; j0 < s.n; j0 += kBlock) {
    const int64_t n = std::min(kBlock, s.n - j0);
    if (block_empty(s, j0, set)) continue;
    const float* x = s.x + j0;
    hits.collect(x, n, set, -kInf, kInf);
    for (int64_t i = 0; i < hits.n; ++i) {
      cx[count] = x[hits.idx[i]];
      ci[count] = s.token(j0 + hits.idx[i]);
      ++count;
    }
  }
  return count;
#endif
}

void allowed_mask(const int32_t* words, int64_t lo, int64_t hi, float* row) {
  // (a select per token over whole words, which the compiler vectorises
  // with a variable shift per lane on AVX2 and AVX-512; a branch per
  // cleared bit took ~40 us over a 128256 row with one word in three
  // partly cleared)
  for (int64_t w = lo / 32; w * 32 < hi; ++w) {
    const auto bits = static_cast<uint32_t>(words[w]);
    if (bits == 0xFFFFFFFFu) continue;
    float* p = row + w * 32;
    if (w * 32 + 32 <= hi) {
      for (uint32_t b = 0; b < 32; ++b) p[b] = ((bits >> b) & 1u) != 0 ? p[b] : -kInf;
    } else {
      for (int64_t b = 0; b < hi - w * 32; ++b) p[b] = ((bits >> b) & 1u) != 0 ? p[b] : -kInf;
    }
  }
}

#if defined(__AVX512F__)
namespace {

// masked_copy_stats's pass: the mask's bits are the packets' lane masks (16
// tokens a packet, lo a multiple of 32: half a word each), a word an
// iteration, each packet into its own max; dst gets each packet with -inf in
// its disallowed lanes; the maxima are taken under the mask and of src
// unmasked. A half src is widened as it is read (into `widened`, from which
// the few blocks read again are read). The finite counts are the mask's own
// (a popcount a word) in a block whose values are all finite, which a probe
// tells; the others are counted again exactly. Against allowed_mask and then
// max_stats, whose probe fails on every block that holds a -inf (the masked
// row's) and scans it again: see docs/performance.md. Without kStore
// nothing goes to dst (null): the masked results are read off src under
// the mask (greedy under a mask alone, whose Z a masked mass pass forms).
template <DType kType, bool kStore>
MaxStats masked_scan(const void* src, const int32_t* words, int64_t lo, int64_t n, float* dst,
                     float* block_max, MaxStats* raw, float* raw_block_max, float* widened) {
  constexpr bool kHalf = kType != DType::kFloat32;
  const __m512 ninf = _mm512_set1_ps(-kInf);
  const __m512 pinf = _mm512_set1_ps(kInf);
  ScanTotals masked, unmasked;
  const __m512 zero = _mm512_setzero_ps();
  // (the values as floats: src's own, or its widened copy)
  const float* x = kHalf ? widened : static_cast<const float*>(src);
  auto widen = [](__m256i h) {  // (16 halves; exact, as to_float)
    if constexpr (kType == DType::kBFloat16) {
      return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    } else {
      return _mm512_cvtph_ps(h);
    }
  };
  for (int64_t b0 = 0; b0 < n; b0 += kPassBlock) {
    const int64_t m = std::min(kPassBlock, n - b0);
    const float* xb = x + b0;
    float* ob = kStore ? dst + b0 : nullptr;
    // (four chains of each: with two, the probes' multiply-add latency paced
    // the loop, as scan_blocks' did; it shows where nothing is stored, under
    // greedy: params/mask-greedy-logprobs' scan ~7 -> ~5 us)
    __m512 bm0 = ninf, bm1 = ninf, bm2 = ninf, bm3 = ninf;
    __m512 rm0 = ninf, rm1 = ninf, rm2 = ninf, rm3 = ninf;
    // A finiteness probe, as scan_blocks': v * 0 + probe stays 0 while every
    // value is finite; a block where it fails (a -inf, NaN or +inf) is
    // counted again exactly, from its values in L1.
    __m512 probe0 = zero, probe1 = zero, probe2 = zero, probe3 = zero;
    int64_t allowed_tokens = 0;
    // One word's 32 tokens at j into the chains bm / rm / probe a and b.
    auto word_step = [&](int64_t j, __m512& bma, __m512& bmb, __m512& rma, __m512& rmb, __m512& pa,
                         __m512& pb) {
      const auto word = static_cast<uint32_t>(words[(lo + b0 + j) / 32]);
      const auto a0 = static_cast<__mmask16>(word), a1 = static_cast<__mmask16>(word >> 16);
      __m512 v0, v1;
      if constexpr (kHalf) {
        const __m512i h = _mm512_loadu_si512(static_cast<const uint16_t*>(src) + b0 + j);
        v0 = widen(_mm512_castsi512_si256(h));
        v1 = widen(_mm512_extracti64x4_epi64(h, 1));
        _mm512_storeu_ps(widened + b0 + j, v0);
        _mm512_storeu_ps(widened + b0 + j + 16, v1);
      } else {
        v0 = _mm512_loadu_ps(xb + j);
        v1 = _mm512_loadu_ps(xb + j + 16);
      }
      if constexpr (kStore) {
        _mm512_storeu_ps(ob + j, _mm512_mask_mov_ps(ninf, a0, v0));
        _mm512_storeu_ps(ob + j + 16, _mm512_mask_mov_ps(ninf, a1, v1));
      }
      bma = _mm512_mask_max_ps(bma, a0, bma, v0);
      bmb = _mm512_mask_max_ps(bmb, a1, bmb, v1);
      rma = _mm512_max_ps(v0, rma);  // (NaN-blind: a NaN v leaves rm)
      rmb = _mm512_max_ps(v1, rmb);
      pa = _mm512_fmadd_ps(v0, zero, pa);
      pb = _mm512_fmadd_ps(v1, zero, pb);
      allowed_tokens += std::popcount(word);
    };
    int64_t j = 0;
    for (; j + 64 <= m; j += 64) {
      word_step(j, bm0, bm1, rm0, rm1, probe0, probe1);
      word_step(j + 32, bm2, bm3, rm2, rm3, probe2, probe3);
    }
    for (; j + 32 <= m; j += 32) word_step(j, bm0, bm1, rm0, rm1, probe0, probe1);
    bm0 = _mm512_max_ps(bm0, bm2);
    bm1 = _mm512_max_ps(bm1, bm3);
    rm0 = _mm512_max_ps(rm0, rm2);
    rm1 = _mm512_max_ps(rm1, rm3);
    bool exact = _mm512_cmp_ps_mask(
                     _mm512_add_ps(_mm512_add_ps(probe0, probe1), _mm512_add_ps(probe2, probe3)),
                     zero, _CMP_NEQ_UQ) != 0;
    for (; j < m; j += 16) {  // (the segment's last, short block)
      const int64_t t = lo + b0 + j;
      const auto lanes = static_cast<__mmask16>(m - j >= 16 ? 0xffffu : (1u << (m - j)) - 1u);
      const auto allowed = static_cast<__mmask16>(mask_half_word(words, t) & lanes);
      __m512 v;
      if constexpr (kHalf) {
        v = _mm512_mask_mov_ps(
            ninf, lanes,
            widen(_mm256_maskz_loadu_epi16(lanes, static_cast<const uint16_t*>(src) + b0 + j)));
        _mm512_mask_storeu_ps(widened + b0 + j, lanes, v);
      } else {
        v = _mm512_mask_loadu_ps(ninf, lanes, xb + j);
      }
      if constexpr (kStore)
        _mm512_mask_storeu_ps(ob + j, lanes, _mm512_mask_mov_ps(ninf, allowed, v));
      bm0 = _mm512_mask_max_ps(bm0, allowed, bm0, v);
      rm0 = _mm512_max_ps(v, rm0);
      exact = true;  // (counted below, with the lanes past the block left out)
    }
    int64_t finite = m, masked_finite = allowed_tokens;
    uint32_t bad = 0, masked_bad = 0;
    if (exact) {
      // Each packet's finite and NaN / +inf lanes, under the mask and not.
      finite = masked_finite = 0;
      for (int64_t g = 0; g < m; g += 16) {
        const int64_t t = lo + b0 + g;
        const auto lanes = static_cast<__mmask16>(m - g >= 16 ? 0xffffu : (1u << (m - g)) - 1u);
        const auto allowed = static_cast<__mmask16>(mask_half_word(words, t) & lanes);
        const __m512 v = _mm512_mask_loadu_ps(ninf, lanes, xb + g);
        const __mmask16 fin = _mm512_mask_cmp_ps_mask(lanes, v, ninf, _CMP_GT_OQ);
        // (NaN or +inf: a row error, found again by finish)
        const __mmask16 nonfinite = _mm512_mask_cmp_ps_mask(lanes, v, pinf, _CMP_NLT_UQ);
        finite += std::popcount(static_cast<unsigned>(fin));
        masked_finite += std::popcount(static_cast<unsigned>(fin & allowed));
        bad |= nonfinite;
        masked_bad |= nonfinite & allowed;
      }
    }
    // (the counts as ScanTotals takes an exact scan's: `nan` stands for NaN
    // or +inf, which finish looks for either way)
    const float bmax = _mm512_reduce_max_ps(_mm512_max_ps(bm0, bm1));
    masked.add(
        b0, m, false, bmax,
        [&] {
          return ExactScan{bmax, masked_bad != 0, masked_finite};
        },
        block_max);
    const float rmax = _mm512_reduce_max_ps(_mm512_max_ps(rm0, rm1));
    unmasked.add(
        b0, m, !exact, rmax,
        [&] {
          return ExactScan{rmax, bad != 0, finite};
        },
        raw_block_max);
  }
  auto finish = [n](const ScanTotals& totals, const float* values) {
    const int64_t at = totals.max_block;
    return totals.finish(values + at, std::min(kPassBlock, n - at),
                         [&] { return first_bad(values, n); });
  };
  *raw = finish(unmasked, x);
  if constexpr (kStore) {
    return finish(masked, dst);
  } else {
    // (as ScanTotals::finish, over src's values at the tokens the mask allows)
    MaxStats st;
    st.max = masked.max + 0.0f;
    st.finite = masked.finite;
    if (masked.max > -kInf) {
      // (a packet at a time from the first block that reached it: the
      // lanes equal to it that the mask allows)
      const __m512 pmax = _mm512_set1_ps(masked.max);
      for (int64_t g = masked.max_block; g < n; g += 16) {
        const int64_t t = lo + g;
        const auto lanes = static_cast<__mmask16>(n - g >= 16 ? 0xffffu : (1u << (n - g)) - 1u);
        const auto allows = static_cast<__mmask16>(mask_half_word(words, t) & lanes);
        const __mmask16 at =
            _mm512_mask_cmp_ps_mask(allows, _mm512_maskz_loadu_ps(lanes, x + g), pmax, _CMP_EQ_OQ);
        if (at != 0) {
          st.argmax = g + std::countr_zero(static_cast<unsigned>(at));
          break;
        }
      }
    }
    if (masked.nan || masked.max == kInf) {
      for (int64_t j = 0; j < n; ++j) {
        if (mask_allows(words, lo + j) && !(x[j] < kInf)) {
          st.bad_at = j;
          break;
        }
      }
    }
    return st;
  }
}

}  // namespace
#endif

MaxStats masked_copy_stats(const void* src, DType dtype, const int32_t* words, int64_t lo,
                           int64_t n, float* dst, float* block_max, MaxStats* raw,
                           float* raw_block_max, float* widened) {
#if defined(__AVX512F__)
  auto scan = [&]<DType kType>() {
    float* w = kType == DType::kFloat32 ? nullptr : widened;
    return dst ? masked_scan<kType, true>(src, words, lo, n, dst, block_max, raw, raw_block_max, w)
               : masked_scan<kType, false>(src, words, lo, n, dst, block_max, raw, raw_block_max,
                                           w);
  };
  switch (dtype) {
    case DType::kFloat32:
      return scan.template operator()<DType::kFloat32>();
    case DType::kBFloat16:
      return scan.template operator()<DType::kBFloat16>();
    case DType::kFloat16:
      return scan.template operator()<DType::kFloat16>();
  }
#endif
  const bool half = dtype != DType::kFloat32;
  if (dst == nullptr) {
    // No copy: a sub-block at a time (read back from L1), the row's scan
    // (a half one widened into `widened`), then its values masked into a
    // local buffer and scanned there.
    constexpr int64_t kSub = 4 * kPassBlock;
    alignas(64) float local[kSub];
    const int64_t esize = dtype_size(dtype);
    const auto* bytes = static_cast<const char*>(src);
    MaxStats masked_total, raw_total;
    for (int64_t j = 0; j < n; j += kSub) {
      const int64_t m = std::min(kSub, n - j);
      float* widened_part = half ? widened + j : nullptr;
      add_part(raw_total,
               widen_max_stats(bytes + j * esize, dtype, m, widened_part,
                               raw_block_max + j / kPassBlock),
               j);
      std::copy_n(half ? widened_part : static_cast<const float*>(src) + j, m, local);
      allowed_mask(words, lo + j, lo + j + m, local - (lo + j));
      add_part(masked_total, max_stats(local, m, block_max + j / kPassBlock), j);
    }
    *raw = raw_total;
    return masked_total;
  }
  // (the row widened into `widened`, or a float32 one copied to dst, with
  // its scan; then the mask and the copy's scan)
  *raw = widen_max_stats(src, dtype, n, half ? widened : dst, raw_block_max);
  if (half) std::copy_n(widened, n, dst);
  allowed_mask(words, lo, lo + n, dst - lo);
  return max_stats(dst, n, block_max);
}

int64_t allowed_count(const int32_t* words, int64_t n, int64_t limit) {
  const int64_t full = n / 32;  // (words whose 32 bits are all tokens)
  int64_t count = 0, w = 0;
  // (64 words between looks at the limit, counted without a branch on a
  // word: a sparse mask's zero words and the others alternate
  // unpredictably. Without the popcount instruction, whose place a library
  // call takes, a pair's bits are added in its own register, as the
  // instruction would: a nearly full mask cost ~4 % of a masked greedy row
  // on SSE2 through the call)
  auto pair_count = [](uint64_t v) {
#if defined(__POPCNT__)
    return std::popcount(v);
#else
    v -= (v >> 1) & 0x5555555555555555u;
    v = (v & 0x3333333333333333u) + ((v >> 2) & 0x3333333333333333u);
    v = (v + (v >> 4)) & 0x0f0f0f0f0f0f0f0fu;
    return static_cast<int>((v * 0x0101010101010101u) >> 56);
#endif
  };
  constexpr int64_t kRun = 64;
  for (; w + kRun <= full && count <= limit; w += kRun) {
    int64_t run = 0;
    for (int64_t i = 0; i < kRun; i += 2) {
      uint64_t pair;
      std::memcpy(&pair, words + w + i, sizeof pair);
      run += pair_count(pair);
    }
    count += run;
  }
  for (; w < full && count <= limit; ++w) {
    if (words[w] != 0) count += std::popcount(static_cast<uint32_t>(words[w]));
  }
  if (w == full && n % 32 != 0) {  // (bits past n)
    count += std::popcount(static_cast<uint32_t>(words[w]) & ((uint32_t{1} << (n % 32)) - 1u));
  }
  return count;
}

int64_t gather_allowed(const int32_t* words, int64_t n, const float* x, float* cx, int32_t* ci,
                       bool left_out) {
  int64_t count = 0;
  // (left_out: the mask's words read inverted)
  const uint32_t flip = left_out ? ~0u : 0u;
#if defined(__AVX512F__)
  // A packet (half a word of the mask) at a time; packets that allow
  // nothing are passed over (a sparse mask's are most of them), the others'
  // allowed finite values and their ids compressed into cx and ci.
  const __m512 ninf = _mm512_set1_ps(-kInf);
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  auto packet = [&](int64_t t, __mmask16 allowed) {
    const __m512 v = _mm512_maskz_loadu_ps(allowed, x + t);
    const __mmask16 keep = _mm512_mask_cmp_ps_mask(allowed, v, ninf, _CMP_GT_OQ);
    _mm512_storeu_ps(cx + count, _mm512_maskz_compress_ps(keep, v));
    const __m512i id = _mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int32_t>(t)));
    _mm512_storeu_si512(ci + count, _mm512_maskz_compress_epi32(keep, id));
    count += std::popcount(static_cast<unsigned>(keep));
  };
  auto packet_at = [&](int64_t h) {  // (packet h: tokens 16h.., half h % 2 of word h / 2)
    const int64_t t = h * 16;
    uint32_t bits = mask_half_word(words, t) ^ (flip & 0xffffu);
    if (n - t < 16) bits &= n > t ? (uint32_t{1} << (n - t)) - 1u : 0u;  // (bits past n)
    packet(t, static_cast<__mmask16>(bits));
  };
  // (16 words a look: the packets that allow something are found from one
  // compare of 16-bit lanes, not a branch on each word)
  const int64_t nwords = (n + 31) / 32;
  int64_t w = 0;
  for (; w + 16 <= nwords; w += 16) {
    const __m512i v = _mm512_xor_si512(_mm512_loadu_si512(words + w),
                                       _mm512_set1_epi32(static_cast<int32_t>(flip)));
    for (auto live = static_cast<uint32_t>(_mm512_test_epi16_mask(v, v)); live != 0;
         live &= live - 1) {
      packet_at(2 * w + std::countr_zero(live));
    }
  }
  for (int64_t h = 2 * w; h < 2 * nwords; ++h) packet_at(h);
#else
  for (int64_t w = 0; w * 32 < n; ++w) {
    auto word = static_cast<uint32_t>(words[w]) ^ flip;
    const int64_t t0 = w * 32;
    if (n - t0 < 32) word &= (uint32_t{1} << (n - t0)) - 1u;  // (bits past n)
    for (; word != 0; word &= word - 1) {
      const int64_t t = t0 + std::countr_zero(word);
      cx[count] = x[t];
      ci[count] = static_cast<int32_t>(t);
      count += x[t] > -kInf ? 1 : 0;
    }
  }
#endif
  return count;
}

void repeat_penalty(const int32_t* a, int64_t na, const int32_t* b, int64_t nb, int64_t lo,
                    int64_t hi, float rp, const float* src, const int32_t* words, float* row,
                    uint64_t* seen, const RowChanges* changes) {
  // Every value is read as it was before the kernel wrote anything (from
  // src, which the writes do not change, or on AVX-512 from row before the
  // first write): a token listed again is penalised from the same value to
  // the same result. Its notes are the same too, and noting twice changes
  // nothing (the maxima take the larger value, a block touched stays
  // touched, the first bad position is the least) except the count of
  // tokens that became -inf: a finite logit the penalty overflows to -inf is
  // counted once, marked in `seen` (whose words are cleared after).
  const auto span = static_cast<uint32_t>(hi - lo);
  bool overflowed = false;
  auto note = [&](int32_t t, float x, float y) {
    if (y == -kInf && x > -kInf) [[unlikely]] {
      overflowed = true;
      const uint64_t bit = uint64_t{1} << (t & 63);
      if (seen[t >> 6] & bit) return;
      seen[t >> 6] |= bit;
    }
    changes->note(t, x, y);
  };
  // (the least block max of the range: a token below it can be no block's max)
  float least = kInf;
  if (changes) {
    for (int64_t b = lo / kPassBlock; b < block_count(hi); ++b) {
      least = std::min(least, changes->block_max[b]);
    }
  }
#if defined(__AVX512F__)
  const __m512i vlo = _mm512_set1_epi32(static_cast<int32_t>(lo));
  const __m512i vspan = _mm512_set1_epi32(static_cast<int32_t>(span));
  const __m512 vrp = _mm512_set1_ps(rp);
  const __m512 zero = _mm512_setzero_ps();
  const __m512 least_max = _mm512_set1_ps(least);
  const __m512 ninf = _mm512_set1_ps(-kInf);
  const __m512i v31 = _mm512_set1_epi32(31);
  auto packet = [&](const int32_t* list, int64_t len, int64_t j, __m512i* tok) {
    const auto tail = static_cast<__mmask16>(len - j >= 16 ? 0xffff : (1u << (len - j)) - 1);
    *tok = _mm512_maskz_loadu_epi32(tail, list + j);
    return _mm512_mask_cmplt_epu32_mask(tail, _mm512_sub_epi32(*tok, vlo), vspan);
  };
  // The first kEarly listed tokens' values are gathered from row before
  // anything is written (in [lo, hi) it holds src's values until then):
  // the copying scan has just written its lines, which are in cache, while
  // src's were read past it (the scan's non-temporal prefetch). The rest,
  // if any, are gathered from src. One 128256 row, 2,000 tokens: see
  // docs/performance.md, "Penalty + top-p".
  constexpr int64_t kEarly = 4096;
  alignas(64) float early[kEarly + 16];
  const int64_t early_a = std::min(na, kEarly), early_b = std::min(nb, kEarly - early_a);
  auto gather_early = [&](const int32_t* list, int64_t len, float* out) {
    for (int64_t j = 0; j < len; j += 16) {
      __m512i tok;
      const __mmask16 mine = packet(list, len, j, &tok);
      _mm512_storeu_ps(out + j, _mm512_mask_i32gather_ps(zero, mine, tok, row, 4));
    }
  };
  gather_early(a, early_a, early);
  gather_early(b, early_b, early + early_a);
  auto penalise = [&](const int32_t* list, int64_t len, const float* pre, int64_t npre) {
    for (int64_t j = 0; j < len; j += 16) {
      __m512i tok;
      const __mmask16 mine = packet(list, len, j, &tok);
      __m512 x;
      if (j + 16 <= npre) [[likely]] {
        x = _mm512_maskz_loadu_ps(mine, pre + j);
      } else if (j >= npre) {
        x = _mm512_mask_i32gather_ps(zero, mine, tok, src, 4);
      } else {
        const auto ahead = static_cast<__mmask16>((1u << static_cast<unsigned>(npre - j)) - 1);
        x = _mm512_mask_i32gather_ps(_mm512_maskz_loadu_ps(mine & ahead, pre + j),
                                     static_cast<__mmask16>(mine & ~ahead), tok, src, 4);
      }
      if (words && j + 16 > npre) {  // (src's values: masked here; row's are)
        const __m512i word = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mine,
                                                         _mm512_srli_epi32(tok, 5), words, 4);
        const __mmask16 allowed = _mm512_test_epi32_mask(
            word, _mm512_sllv_epi32(_mm512_set1_epi32(1), _mm512_and_si512(tok, v31)));
        x = _mm512_mask_mov_ps(ninf, allowed, x);
      }
      const __m512 y = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(x, zero, _CMP_GT_OQ),
                                            _mm512_mul_ps(x, vrp), _mm512_div_ps(x, vrp));
      _mm512_mask_i32scatter_ps(row, mine, tok, y, 4);
      if (!changes) continue;
      // Only a token that held its block's max, rises above it or is not
      // finite after changes the notes: a lane below every block's max
      // before and after (the maxima only rise as the notes go) is passed
      // over, the others are noted one by one, in list order. A -inf
      // (masked) stays -inf, which changes nothing either.
      const __mmask16 finite = _mm512_cmp_ps_mask(_mm512_sub_ps(y, y), zero, _CMP_EQ_OQ);
      const __mmask16 live = _mm512_mask_cmp_ps_mask(mine, x, ninf, _CMP_NEQ_UQ);
      auto noted = static_cast<uint32_t>(
          _mm512_mask_cmp_ps_mask(live, _mm512_max_ps(x, y), least_max, _CMP_GE_OQ) |
          (live & ~finite));
      if (noted == 0) continue;
      alignas(64) float xs[16], ys[16];
      _mm512_store_ps(xs, x);
      _mm512_store_ps(ys, y);
      for (; noted != 0; noted &= noted - 1) {
        const auto l = static_cast<int64_t>(std::countr_zero(noted));
        note(list[j + l], xs[l], ys[l]);
      }
    }
  };
  penalise(a, na, early, early_a);
  penalise(b, nb, early + early_a, early_b);
#else
  auto penalise = [&](const int32_t* list, int64_t len) {
    for (int64_t j = 0; j < len; ++j) {
      const int32_t t = list[j];
      if (static_cast<uint32_t>(t - lo) >= span) continue;
      const float x = !words || mask_allows(words, t) ? src[t] : -kInf;
      const float y = x > 0.0f ? x / rp : x * rp;  // -inf stays -inf
      row[t] = y;
      // (as above: a token below every block's max before and after, and
      // finite after, or -inf before and after, changes no note)
      if (changes && x != -kInf && (std::max(x, y) >= least || !(std::abs(y) < kInf))) {
        note(t, x, y);
      }
    }
  };
  penalise(a, na);
  penalise(b, nb);
#endif
  if (!overflowed) return;
  auto clear = [&](const int32_t* list, int64_t len) {
    for (int64_t j = 0; j < len; ++j) {
      if (static_cast<uint32_t>(list[j] - lo) < span) seen[list[j] >> 6] = 0;
    }
  };
  clear(a, na);
  clear(b, nb);
}

}  // namespace nucleus::detail::NUCLEUS_KERNEL_ISA

namespace nucleus::detail {

namespace k = NUCLEUS_KERNEL_ISA;
extern const Kernels NUCLEUS_KERNEL_TABLE;
const Kernels NUCLEUS_KERNEL_TABLE = {
    .isa = Isa::NUCLEUS_KERNEL_ISA_ENUM,
    .to_float = &k::to_float,
    .max_stats = &k::max_stats,
    .widen_max_stats = &k::widen_max_stats,
    .moments = &k::moments,
    .sum_mass = &k::sum_mass,
    .sum_mass_gather = &k::sum_mass_gather,
    .sum_mass_band = &k::sum_mass_band,
    .min_key = &k::min_key,
    .count_key_below = &k::count_key_below,
    .count_band = &k::count_band,
    .walk = &k::walk,
    .write_probs = &k::write_probs,
    .gather_le = &k::gather_le,
    .compact = &k::compact,
    .key_histogram = &k::key_histogram,
    .store_keys = &k::store_keys,
    .keep_and_sum = &k::keep_and_sum,
    .typical_keys_from_e = &k::typical_keys_from_e,
    .sample_keys = &k::sample_keys,
    .gather_below = &k::gather_below,
#if defined(__AVX512F__)
    .pivot_sums = &k::pivot_sums,
    .keep_between = &k::keep_between,
#else
    .pivot_sums = nullptr,
    .keep_between = nullptr,
#endif
    .gathered_keys = &k::gathered_keys,
    .compact_gathered = &k::compact_gathered,
    .gather_bucket = &k::gather_bucket,
    .entry_masses = &k::entry_masses,
    .kth_largest = &k::kth_largest,
    .sort_short = &k::sort_short,
    .key_bounds = &k::key_bounds,
    .stored_key_bounds = &k::stored_key_bounds,
    .typical_gather = &k::typical_gather,
    .repeat_penalty = &k::repeat_penalty,
    .allowed_mask = &k::allowed_mask,
    .masked_copy_stats = &k::masked_copy_stats,
    .masked_sum_mass = &k::masked_sum_mass,
    .allowed_count = &k::allowed_count,
    .gather_allowed = &k::gather_allowed,
};

}  // namespace nucleus::detail
