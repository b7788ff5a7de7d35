// Element loops shared by the row passes: distances, membership, masses and
// double sums over one block of a segment. Internal to the kernel sources,
// which are compiled once per instruction set (isa_prologue.h).
#pragma once

#include "engine/kernels/isa_prologue.h"

#include <immintrin.h>

#include <Eigen/Core>
#include <algorithm>
#include <bit>
#include <cstdint>

#include "engine/kernels/row_kernels.h"

namespace nucleus::detail::NUCLEUS_KERNEL_ISA::block {

using ArrF = Eigen::Array<float, Eigen::Dynamic, 1>;
using ConstMapF = Eigen::Map<const ArrF>;
using MapF = Eigen::Map<ArrF>;

// Blocks small enough to stay in L1 between the vector passes over them. The
// element loops below are written for the compiler's vectoriser; Eigen supplies
// the vectorised exp (its select() is not vectorised in 3.4, so masking is done
// in plain loops).
constexpr int64_t kBlock = kPassBlock;
// A stand-in exponent for non-members: far enough below kUnderflow that the
// result is replaced by an exact 0.
constexpr float kOffExponent = -200.0f;

using Packet = Eigen::internal::packet_traits<float>::type;

// exp of a mass's argument -(d - k0), for every pass that forms masses (one
// function, so that they all agree to the bit). The passes that form masses
// are bound by vector instructions, so this is written for fewest.
//
// AVX-512 (nine instructions): x log2 e rounded to a multiple of 1/32, m,
// by adding a shift constant (one fused multiply-add, no round
// instruction); r = x - m ln 2 with ln 2 in two constants, |r| <= ln 2 /
// 64; 2^(m - floor(m)) from a 32-entry table (one two-register permute,
// which reads the table index straight from the low five mantissa bits of
// the shifted sum); exp(r) by a degree-2 polynomial fitted to the relative
// error (5.3e-8 before rounding); and 2^floor(m) by one vscalefps, which
// floors m itself. Relative error at most 1.65e-7 (the rounding of the
// table, the polynomial and the product), at every distance.
//
// Elsewhere: Eigen 3.4's float pexp range reduction (r = x - m ln 2 in two
// constants, |r| <= ln 2 / 2) with m rounded by the same shift, a degree-6
// polynomial in Estrin's form (Eigen: degree 7, one step deeper), and 2^m
// from its bits (m >= -126 once clamped, where Eigen's pldexp allows any
// exponent in a dozen instructions). Relative error at most 1.3e-7.
//
// Both bounds hold for every argument in [-kUnderflow, 0] (all
// 1,118,743,632 floats there checked), the only arguments whose results a
// pass keeps (past kUnderflow a mass is exactly 0).
#if defined(__AVX512F__)
// 2^(j/32), j = 0..31, each rounded to float: mass_exp's table.
alignas(64) constexpr float kExp2Table[32] = {
    0x1p+0f,        0x1.059b0ep+0f, 0x1.0b5586p+0f, 0x1.11301ep+0f, 0x1.172b84p+0f, 0x1.1d4874p+0f,
    0x1.2387a6p+0f, 0x1.29e9ep+0f,  0x1.306fep+0f,  0x1.371a74p+0f, 0x1.3dea64p+0f, 0x1.44e086p+0f,
    0x1.4bfdaep+0f, 0x1.5342b6p+0f, 0x1.5ab07ep+0f, 0x1.6247ecp+0f, 0x1.6a09e6p+0f, 0x1.71f75ep+0f,
    0x1.7a1148p+0f, 0x1.82589ap+0f, 0x1.8ace54p+0f, 0x1.93737cp+0f, 0x1.9c4918p+0f, 0x1.a5503cp+0f,
    0x1.ae89fap+0f, 0x1.b7f77p+0f,  0x1.c199bep+0f, 0x1.cb720ep+0f, 0x1.d5818ep+0f, 0x1.dfc974p+0f,
    0x1.ea4afap+0f, 0x1.f50766p+0f};
#endif

inline Packet mass_exp(const Packet& arg) {
  namespace ei = Eigen::internal;
  auto c = [](float v) { return ei::pset1<Packet>(v); };
#if defined(__AVX512F__)
  // t = x log2 e + 1.5 2^18 holds x log2 e rounded to a multiple of 1/32:
  // m = t - shift exactly, and the low five bits of t's mantissa are
  // j = 32 m mod 32 (the permute reads only those), so that
  // 2^m = 2^(j/32) 2^floor(m).
  // (no clamp: vscalefps takes any m, and a masked token's -inf, or the -inf
  // padding of a tail, makes a NaN that every caller's member mask drops; it
  // sets the invalid-operation status flag, which nothing reads, and a
  // caller that unmasks that exception traps on every path anyway)
  const Packet x = arg;
  const Packet shift = c(393216.0f);
  const Packet t = ei::pmadd(x, c(1.44269504088896341f), shift);
  const Packet m = ei::psub(t, shift);
  // (ln 2 in two constants: with one float ln 2, as Eigen's AVX-512 pexp,
  // its error times m grew the error with the distance, to 4.0e-7 near
  // kUnderflow; the second costs ~6 % of a mass pass)
  Packet r = ei::pmadd(m, c(-0.6931471805599453f), x);
  r = ei::pmadd(m, c(1.9046542999577e-9f), r);
  const __m512i j = _mm512_castps_si512(t);
  const Packet tj =
      _mm512_permutex2var_ps(_mm512_load_ps(kExp2Table), j, _mm512_load_ps(kExp2Table + 16));
  // exp(r) = 1 + q, q = r (c1 + c2 r); 2^(j/32) exp(r) = tj + tj q.
  const Packet q = ei::pmul(ei::pmadd(c(5.000110865e-1f), r, c(1.000014782f)), r);
  return _mm512_scalef_ps(ei::pmadd(tj, q, tj), m);
#else
  // m = round(x log2 e): adding 1.5 2^23 leaves the rounded integer in the
  // low mantissa bits of t (one fused multiply-add, no round instruction).
  const Packet shift = c(12582912.0f);
  // (clamped so that 2^m can be built from its bits, m >= -126)
  const Packet x = ei::pmax(arg, c(-kUnderflow));
  const Packet t = ei::pmadd(x, c(1.44269504088896341f), shift);
  const Packet m = ei::psub(t, shift);
  Packet r = ei::pmadd(m, c(-0.693359375f), x);
  r = ei::pmadd(m, c(2.12194440e-4f), r);
  // exp(r), |r| <= ln 2 / 2: a degree-6 polynomial fitted to the relative
  // error (2e-9 before rounding), in Estrin's form (three steps deep).
  const Packet r2 = ei::pmul(r, r);
  const Packet a = ei::padd(r, c(1.0f));
  const Packet b = ei::pmadd(c(1.6666419804096222e-1f), r, c(4.9999991059303284e-1f));
  const Packet d = ei::pmadd(c(8.374815806746483e-3f), r, c(4.166822507977486e-2f));
  Packet y = ei::pmadd(c(1.3836845755577087e-3f), r2, d);
  y = ei::pmadd(y, r2, b);
  y = ei::pmadd(y, r2, a);
#if defined(__AVX__)
  using PacketI = ei::Packet8i;
#else
  using PacketI = ei::Packet4i;
#endif
  // 2^m's bits, (m + 127) << 23: t's bits are those of 1.5 2^23 plus m, and
  // the shift drops the former.
  const PacketI bits =
      ei::plogical_shift_left<23>(ei::padd(ei::preinterpret<PacketI>(t), ei::pset1<PacketI>(127)));
  return ei::pmul(y, ei::preinterpret<Packet>(bits));
#endif
}

// ex[j] = exp(arg[j]) where arg[j] > kOffExponent (mass_exp), else exactly
// 0, for j < padded, a multiple of 16 (whole packets on every build; the
// callers pad with kOffExponent); both arrays on 64-byte boundaries.
inline void masses_of(const float* arg, int64_t padded, float* ex) {
  namespace ei = Eigen::internal;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  const Packet off = ei::pset1<Packet>(kOffExponent);
  for (int64_t j = 0; j < padded; j += kLanes) {
    const Packet a = ei::pload<Packet>(arg + j);
    ei::pstore(ex + j, ei::pand(mass_exp(a), ei::pcmp_lt(off, a)));
  }
}

// A set's bounds and the passes' constants, broadcast to packets once per
// pass (Packet is __m512 itself on AVX-512 builds); passes bind them as
// const auto [pxmax, pscale, pkscale, plo, phi, punder, pinf, pone] = ...,
// or name the struct where a lambda uses them (clang 14 cannot capture a
// structured binding).
struct SetPackets {
  Packet xmax, scale, key_scale, lo, hi, under, inf, one;
  explicit SetPackets(const SetSpec& set)
      : xmax(bcast(set.xmax)),
        scale(bcast(set.scale)),
        key_scale(bcast(set.key_scale)),
        lo(bcast(set.dlo)),
        hi(bcast(set.dhi)),
        under(bcast(kUnderflow)),
        inf(bcast(kInf)),
        one(bcast(1.0f)) {}
  static Packet bcast(float v) { return Eigen::internal::pset1<Packet>(v); }
};

inline void block_distances(const float* __restrict x, int64_t n, float xmax, float scale,
                            float* __restrict d) {
  for (int64_t j = 0; j < n; ++j) d[j] = (xmax - x[j]) * scale;
}

// Whether the pass block at j0 of a segment can hold no member of the set: the
// block's largest x (from the scan) has the block's smallest d, and that is
// past dhi. (d is monotone in x, rounding included.) False when the segment
// carries no block maxima.
inline bool block_empty(const Segment& s, int64_t j0, const SetSpec& set) {
  return s.bmax && !block_may_hold_members(s.bmax[j0 / kBlock], set);
}
// ... or no member whose key is <= bound.
inline bool block_above(const Segment& s, int64_t j0, const SetSpec& set, float bound) {
  if (!s.bmax) return false;
  const float bmax = s.bmax[j0 / kBlock];
  return !block_may_hold_members(bmax, set) || (set.xmax - bmax) * set.key_scale > bound;
}

// Asks for the lines of the next row's tokens j0 .. j0 + n (Segment::ahead)
// to come into L2 (prefetcht1). Called by the passes with an exp per token,
// a block at a time, after a block found non-empty: they are bound by their
// arithmetic, so the next row streams in from memory beside them rather
// than in the scan that starts it, which reads at memory speed. A light
// pass skips most blocks and so asks for little.
inline void prefetch_ahead(const Segment& s, int64_t j0, int64_t n) {
  if (!s.ahead) return;
  const char* p = s.ahead + j0 * s.ahead_esize;
  const int64_t bytes = n * s.ahead_esize;
  for (int64_t at = 0; at < bytes; at += 64) __builtin_prefetch(p + at, 0, 2);
}

// Bitwise & keeps the test branch-free so the loops around it vectorise.
inline bool in_range(float d, float lo, float hi) { return (d >= lo) & (d <= hi); }

// w[j] = exp(-(k[j] - k0)) for members within kUnderflow, else exactly 0.
// `k` may alias `d`. The exp always runs over whole packets (the tail padded
// with a non-member exponent), so a token's mass never depends on where it sits
// in a block: every pass that recomputes it gets the same bits.
inline void block_masses(const float* d, const float* k, int64_t n, const SetSpec& set, float k0,
                         float* __restrict w) {
  alignas(64) float arg[kBlock];
  alignas(64) float ex[kBlock];
  const float lo = set.dlo, hi = set.dhi;
  for (int64_t j = 0; j < n; ++j) {
    const float e = k[j] - k0;
    arg[j] = (in_range(d[j], lo, hi) & (e <= kUnderflow)) ? -e : kOffExponent;
  }
  const int64_t padded = (n + 15) & ~int64_t{15};
  for (int64_t j = n; j < padded; ++j) arg[j] = kOffExponent;
  masses_of(arg, padded, ex);
  std::copy_n(ex, n, w);
}

// Adds the lanes of a float packet, widened to double, into two double
// accumulators. Eigen has no float-to-double packet cast, hence intrinsics.
// total() adds the lanes as a tree (lo + hi, then halves), not a chain, so
// that the end of a block does not wait on a run of dependent adds.
struct DoubleLanes {
#if defined(__AVX512F__)
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  void add(__m512 v) {
    lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    hi = _mm512_add_pd(
        hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
  }
  double total() const { return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi)); }
#elif defined(__AVX__)
  __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
  void add(__m256 v) {
    lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  double total() const {
    const __m256d s = _mm256_add_pd(lo, hi);
    const __m128d p = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
    return _mm_cvtsd_f64(_mm_add_sd(p, _mm_unpackhi_pd(p, p)));
  }
#else
  __m128d lo = _mm_setzero_pd(), hi = _mm_setzero_pd();
  void add(__m128 v) {
    lo = _mm_add_pd(lo, _mm_cvtps_pd(v));
    hi = _mm_add_pd(hi, _mm_cvtps_pd(_mm_movehl_ps(v, v)));
  }
  double total() const {
    const __m128d p = _mm_add_pd(lo, hi);
    return _mm_cvtsd_f64(_mm_add_sd(p, _mm_unpackhi_pd(p, p)));
  }
#endif
};

// The allowed-token mask of a mass pass (Extra::kAllowed on AVX-512, kAllowed
// elsewhere), for one block: the mask's words and the token id of the
// block's first entry (a multiple of 32), and the allowed tokens' masses
// summed as the masses are (a group of packets in float, then in double
// lanes): the same bits as the pass over a copy of the block with -inf where
// the mask says no.
struct AllowedLanes {
  const int32_t* words = nullptr;
  int64_t first = 0;
  DoubleLanes sum;
};

// A packet's lanes (all ones or zero) from a mask word: the word broadcast
// once (word_packet), then for the packet at bit offset o (a multiple of the
// packet's lanes) each lane tested against its own bit, o + lane.
alignas(64) inline constexpr int32_t kLaneBits[32] = {
    1 << 0,  1 << 1,  1 << 2,  1 << 3,  1 << 4,  1 << 5,  1 << 6,  1 << 7,
    1 << 8,  1 << 9,  1 << 10, 1 << 11, 1 << 12, 1 << 13, 1 << 14, 1 << 15,
    1 << 16, 1 << 17, 1 << 18, 1 << 19, 1 << 20, 1 << 21, 1 << 22, 1 << 23,
    1 << 24, 1 << 25, 1 << 26, 1 << 27, 1 << 28, 1 << 29, 1 << 30, INT32_MIN};
// (the int packet as wide as Packet: Eigen's packet_traits<int> is not
// always, the AVX2 build's being Packet4i)
#if defined(__AVX512F__)
using WordPacket = Eigen::internal::Packet16i;
#elif defined(__AVX__)
using WordPacket = Eigen::internal::Packet8i;
#else
using WordPacket = Eigen::internal::Packet4i;
#endif
inline WordPacket word_packet(int32_t word) { return Eigen::internal::pset1<WordPacket>(word); }
inline Packet word_lanes(WordPacket word, int64_t o) {
  namespace ei = Eigen::internal;
  const WordPacket bit = ei::ploadu<WordPacket>(kLaneBits + o);
  return ei::preinterpret<Packet>(ei::pcmp_eq(ei::pand(word, bit), bit));
}

// Counts the set lanes (all ones) of compare masks, packet by packet. AVX2:
// the mask's sign bits and a scalar popcount, which takes no vector slot
// (full sampling of one 128256 row 0.95 -> 0.90-0.92x the floor on Zen 3,
// bench/ab); SSE2 (the x86-64 baseline has no popcnt instruction; with the
// popcount, full sampling was ~20 % slower there): a vector count, and-ed
// with 1.0 and added.
struct LaneCount {
#if defined(__AVX__) && !defined(__AVX512F__)
  int64_t n = 0;
  void add(__m256 mask) { n += std::popcount(static_cast<unsigned>(_mm256_movemask_ps(mask))); }
  int64_t total() const { return n; }
#else
  using Packet = Eigen::internal::packet_traits<float>::type;
  Packet n = Eigen::internal::pset1<Packet>(0.0f);
  void add(Packet mask) {
    n = Eigen::internal::padd(n, Eigen::internal::pand(mask, Eigen::internal::pset1<Packet>(1.0f)));
  }
  int64_t total() const { return static_cast<int64_t>(Eigen::internal::predux(n)); }
#endif
};

// Typical keys of a packet: float(|double(e) - mu|), the same bits as the
// scalar expression (the conversions are exact or correctly rounded either
// way). Eigen has no float-double packet casts, hence intrinsics.
#if defined(__AVX512F__)
using KeyPacket = __m512;
inline __m512 typical_key_packet(__m512 e, double mu) {
  const __m512d pmu = _mm512_set1_pd(mu);
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(e));
  const __m512d hi =
      _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1)));
  const __m256 klo = _mm512_cvtpd_ps(_mm512_abs_pd(_mm512_sub_pd(lo, pmu)));
  const __m256 khi = _mm512_cvtpd_ps(_mm512_abs_pd(_mm512_sub_pd(hi, pmu)));
  return _mm512_insertf32x8(_mm512_castps256_ps512(klo), khi, 1);
}
#elif defined(__AVX__)
using KeyPacket = __m256;
inline __m256 typical_key_packet(__m256 e, double mu) {
  const __m256d pmu = _mm256_set1_pd(mu);
  const __m256d sign = _mm256_set1_pd(-0.0);
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(e));
  const __m256d hi = _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1));
  const __m128 klo = _mm256_cvtpd_ps(_mm256_andnot_pd(sign, _mm256_sub_pd(lo, pmu)));
  const __m128 khi = _mm256_cvtpd_ps(_mm256_andnot_pd(sign, _mm256_sub_pd(hi, pmu)));
  return _mm256_insertf128_ps(_mm256_castps128_ps256(klo), khi, 1);
}
#else
using KeyPacket = __m128;
inline __m128 typical_key_packet(__m128 e, double mu) {
  const __m128d pmu = _mm_set1_pd(mu);
  const __m128d sign = _mm_set1_pd(-0.0);
  const __m128d lo = _mm_cvtps_pd(e);
  const __m128d hi = _mm_cvtps_pd(_mm_movehl_ps(e, e));
  const __m128 klo = _mm_cvtpd_ps(_mm_andnot_pd(sign, _mm_sub_pd(lo, pmu)));
  const __m128 khi = _mm_cvtpd_ps(_mm_andnot_pd(sign, _mm_sub_pd(hi, pmu)));
  return _mm_movelh_ps(klo, khi);
}
#endif

// key[j] = typical_key(e[j], mu), a packet at a time (key may be e).
inline void typical_key_run(const float* e, int64_t n, double mu, float* key) {
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    ei::pstoreu(key + j, typical_key_packet(ei::ploadu<Packet>(e + j), mu));
  }
  for (; j < n; ++j) key[j] = typical_key(e[j], mu);
}

// Typical keys |e - mu| (e = d - d0), in double and rounded to float; +inf
// past kUnderflow (zero mass) and, when `member` is given, for non-members
// (key may be e: the +inf are placed first, and their key is +inf).
inline void typical_keys(const float* e, const bool* member, int64_t n, double mu, float* key) {
  for (int64_t j = 0; j < n; ++j) key[j] = e[j] <= kUnderflow ? e[j] : kInf;
  if (member != nullptr) {
    for (int64_t j = 0; j < n; ++j) key[j] = member[j] ? key[j] : kInf;
  }
  typical_key_run(key, n, mu, key);
}

// The members of a block with d <= bound, in order: block-relative index and
// key (same scales: key = d). The arrays have room for kBlock + one packet.
struct BlockHits {
  float bound = 0.0f;
  alignas(64) int32_t idx[kBlock + 64];
  alignas(64) float k[kBlock + 64];
  int64_t n = 0;
  // Whether the next block is taken as dense (Extra::kHits on AVX-512):
  // set after each block from its own count (kDenseHits or more). A dense
  // block notes each packet's hit mask in the pass and stores the hits
  // after it, instead of asking "has this packet hits?" in the pass: the
  // hits a flat row spreads over its blocks make that a branch mispredicted
  // about once per hit, unless the row was seen before (a benchmark that
  // times one row again and again lets the predictor learn it; a decoder
  // never sees a row twice). Top-p over distinct flat rows, one thread:
  // 8 x 128256 46.8 -> 35.0 us a row, 64 x 32000 20.9 -> 15.4; one flat row
  // timed again and again 31.9 -> 34.5, peaked rows unchanged (bench/ab).
  // (typical-p's gathering pass stays with the branch: no clear gain there.)
  bool deferred = false;
};
inline constexpr int64_t kDenseHits = 3;

// The fused form of block_distances + block_masses straight from the values:
// the block's mass Σ w, w[j] stored when `w` is not null (bit-identical to
// block_masses: the same packet exp of the same argument), and the number of
// members in *members. One read of x.
//
// Sums: each lane adds eight packets' worth of masses in float (eight terms,
// so at most a few ulp), then the lane sums are widened and added in double.
// The long accumulation is double; the order is fixed by position only.
// kPlain (no lower bound, one scale, k0 = 0, the common final pass): the
// exponent -d is formed directly as (x - xmax) * scale, the same bits as
// -((xmax - x) * scale - 0), with two operations fewer per packet.
//
// kHits (same scales only, so key = d): also collects into *hits the members
// with d <= hits->bound, in order (BlockHits, above; what
// collect_members_with_key would find in a pass of its own over the block).
// A packet with a hit is written lane by lane without branches, every lane
// written and only hits advancing, so dense hits cost no mispredictions.
//
// kOpenTop (plain form, as block_masses_avx512's): the set has no upper bound
// short of underflow (dhi >= kUnderflow, and a hit bound <= dhi), so the
// mass's own test and the hit test are the membership tests too; members
// are not counted (*members is left as it is).
//
// kAllowed (plain form): also sums the masses of the tokens allowed->words
// allows apart (AllowedLanes), as Extra::kAllowed does on AVX-512.
template <bool kCheckLo, bool kSameScale, bool kPlain, bool kHits = false, bool kOpenTop = false,
          bool kAllowed = false>
inline double block_masses_from_values_impl(const float* x, int64_t n, const SetSpec& set, float k0,
                                            float* __restrict w, int64_t* members,
                                            BlockHits* hits = nullptr,
                                            AllowedLanes* allowed = nullptr) {
  static_assert(!kHits || kSameScale);
  static_assert(!kOpenTop || kPlain);
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  constexpr int64_t kGroup = 8;  // packets per float partial sum
  const auto [pxmax, pscale, pkscale, plo, phi, punder, pinf, pone] = SetPackets(set);
  const Packet pk0 = ei::pset1<Packet>(k0);
  const Packet pnhi = ei::pset1<Packet>(-set.dhi);
  const Packet pnunder = ei::pset1<Packet>(-kUnderflow);
  LaneCount count;
  Packet partial = ei::pzero(pone);
  DoubleLanes sum;
  alignas(64) float tail[kLanes];
  const Packet pbound = ei::pset1<Packet>(kHits ? hits->bound : 0.0f);
  const Packet pnbound = ei::pset1<Packet>(kHits ? -hits->bound : 0.0f);
  alignas(64) float hit_keys[kLanes];
  alignas(64) float hit_lanes[kLanes];
  int64_t found = 0;
  int64_t in_group = 0;
  Packet partial_allowed = ei::pzero(pone);
  WordPacket word{};  // (kAllowed: the mask's word of the packet's tokens)
  for (int64_t g = 0; g < n; g += kLanes) {
    const bool whole = g + kLanes <= n;
    Packet px;
    if (whole) {
      px = ei::ploadu<Packet>(x + g);
    } else {
      for (int64_t j = 0; j < kLanes; ++j) tail[j] = g + j < n ? x[g + j] : -kInf;
      px = ei::pload<Packet>(tail);
    }
    Packet in, mass, hit, key;
    if constexpr (kPlain) {
      const Packet arg = ei::pmul(ei::psub(px, pxmax), pscale);  // -d
      Packet live;
      if constexpr (kOpenTop) {
        live = ei::pcmp_le(pnunder, arg);
      } else {
        in = ei::pcmp_le(pnhi, arg);
        live = ei::pand(in, ei::pcmp_le(pnunder, arg));
      }
      mass = ei::pand(mass_exp(arg), live);
      if constexpr (kHits) {
        hit = kOpenTop ? ei::pcmp_le(pnbound, arg) : ei::pand(in, ei::pcmp_le(pnbound, arg));
        key = ei::psub(ei::pzero(arg), arg);  // d to the bit (+0, d's zero, where x = xmax)
      }
    } else {
      const Packet diff = ei::psub(pxmax, px);
      const Packet d = ei::pmul(diff, pscale);
      in = ei::pcmp_le(d, phi);
      // (before the hits: a token below the set's lower bound is no member)
      if constexpr (kCheckLo) in = ei::pand(in, ei::pcmp_le(plo, d));
      if constexpr (kHits) {
        hit = ei::pand(in, ei::pcmp_le(d, pbound));
        key = d;
      }
      Packet e;
      if constexpr (kSameScale) {
        e = ei::psub(d, pk0);
      } else {
        e = ei::psub(ei::pmul(diff, pkscale), pk0);
      }
      const Packet live = ei::pand(in, ei::pcmp_le(e, punder));
      mass = ei::pand(mass_exp(ei::pnegate(e)), live);
    }
    if constexpr (kHits) {
      if (ei::predux_any(hit)) {
        ei::pstore(hit_keys, key);
        ei::pstore(hit_lanes, hit);
        for (int64_t j = 0; j < kLanes; ++j) {
          hits->idx[found] = static_cast<int32_t>(g + j);
          hits->k[found] = hit_keys[j];
          found += std::bit_cast<uint32_t>(hit_lanes[j]) != 0 ? 1 : 0;  // (all ones)
        }
      }
    }
    if constexpr (!kOpenTop) count.add(in);
    partial = ei::padd(partial, mass);
    if constexpr (kAllowed) {
      static_assert(kPlain);
      const int64_t t = allowed->first + g;  // (first a multiple of 32)
      if ((t & 31) == 0) word = word_packet(allowed->words[t >> 5]);
      partial_allowed = ei::padd(partial_allowed, ei::pand(mass, word_lanes(word, t & 31)));
    }
    if (++in_group == kGroup) {
      sum.add(partial);
      partial = ei::pzero(pone);
      if constexpr (kAllowed) {
        allowed->sum.add(partial_allowed);
        partial_allowed = ei::pzero(pone);
      }
      in_group = 0;
    }
    if (w) {
      if (whole) {
        ei::pstoreu(w + g, mass);
      } else {
        ei::pstore(tail, mass);
        for (int64_t j = 0; g + j < n; ++j) w[g + j] = tail[j];
      }
    }
  }
  if (in_group) {
    sum.add(partial);
    if constexpr (kAllowed) allowed->sum.add(partial_allowed);
  }
  if constexpr (!kOpenTop) *members = count.total();
  if constexpr (kHits) hits->n = found;
  return sum.total();
}

// The typical-p moments' sums in double lanes, carried from block to block of
// a segment (reduced once, at its end).
struct EntropyLanes {
  DoubleLanes z, zd;
};

#if !defined(__AVX512F__)
// The typical-p entropy sums of the passes without AVX-512 (moments' entropy
// pass and typical_gather's gathering one), a packet at a time, so that both
// form them to the bit alike: members dlo <= d <= dhi (the lower test only
// with kCheckLo: d >= 0 always), the exponent d0 - d (-e exactly), the mass
// m = exp(-e) on members up to kUnderflow (0 past it), z = Σ m and Σ m (-e)
// in one multiply-add a packet (zd() negates it). Partial sums in float over
// eight packets, widened to double lanes at that and at each block's end
// (end_block), carried from block to block and reduced once.
class EntropySums {
 public:
  using Packet = Eigen::internal::packet_traits<float>::type;
  EntropySums(const SetSpec& set, float d0) : sp_(set), pd0_(SetPackets::bcast(d0)) {}
  // Adds the members of one packet of x; returns their lanes (all ones) and
  // sets *d.
  template <bool kCheckLo>
  Packet add(Packet px, Packet* d) {
    namespace ei = Eigen::internal;
    *d = ei::pmul(ei::psub(sp_.xmax, px), sp_.scale);
    Packet member = ei::pcmp_le(*d, sp_.hi);
    if constexpr (kCheckLo) member = ei::pand(member, ei::pcmp_le(sp_.lo, *d));
    const Packet arg = ei::psub(pd0_, *d);  // -e (-inf where d = +inf)
    const Packet live = ei::pand(member, ei::pcmp_le(pnunder_, arg));
    const Packet m = ei::pand(mass_exp(arg), live);
    z_ = ei::padd(z_, m);
    zdn_ = ei::pmadd(m, ei::pand(arg, live), zdn_);  // (0 off the set: no 0 · inf)
    if (++in_group_ == kGroup) end_block();
    return member;
  }
  void end_block() {
    if (in_group_ == 0) return;
    z_sum_.add(z_);
    zdn_sum_.add(zdn_);
    z_ = zdn_ = Packet(Eigen::internal::pset1<Packet>(0.0f));
    in_group_ = 0;
  }
  double z() const { return z_sum_.total(); }
  double zd() const { return -zdn_sum_.total(); }

 private:
  static constexpr int64_t kGroup = 8;  // packets per float partial sum
  const SetPackets sp_;
  const Packet pd0_;
  const Packet pnunder_ = SetPackets::bcast(-kUnderflow);
  Packet z_ = SetPackets::bcast(0.0f), zdn_ = SetPackets::bcast(0.0f);
  DoubleLanes z_sum_, zdn_sum_;
  int64_t in_group_ = 0;
};
#endif

// What a mass pass can gather besides the masses (block_masses_avx512's kExtra).
enum class Extra {
  kNone,
  kHits,            // BlockHits: the members with d <= bound
  kEntropy,         // zd: Σ m (d - k0), the typical-p moment
  kEntropyAndHits,  // both (typical-p's gathering pass)
  kBand,            // BandLanes: top-p's wide-nucleus pass (sum_mass_band)
  kLeast,           // the least argument -d (open-topped form): how far the set reaches
  kAllowed,         // AllowedLanes: the masses an allowed-token mask allows, summed apart
};

// Extra::kBand's state across the blocks of a segment: the members with d <=
// lo have their masses totalled (in double lanes, a group of packets at a
// time, as the mass) and counted; those with lo < d <= hi have their keys
// (d) and masses listed, in order, at key[n] / weight[n] (room for a packet
// past the last).
struct BandLanes {
  float lo = 0.0f;
  float hi = 0.0f;
  float* key = nullptr;
  float* weight = nullptr;
  int64_t n = 0;
  DoubleLanes below;
  int64_t below_count = 0;
};

#if defined(__AVX512F__)
// AVX-512: the same arithmetic on the same arguments (so the same bits in w
// and the sums) with membership kept in mask registers: compares write masks,
// the count and the partial sum are masked adds, and no mask is widened to a
// vector and and-ed, which Eigen's generic compares cost. The pass is bound by
// vector instructions (exp is most of them), so every one saved counts: whole
// packets load without a mask, and kUnitScale (the plain pass at temperature
// 1) skips the multiply by 1.
//
// kExtra (same scales only, so key = d): Extra::kHits also collects the
// members with d <= hits->bound (BlockHits, above), the work gather_below would
// do in a pass of its own (packets with a hit cost two compressed stores);
// Extra::kEntropy adds the masses and m (d - k0) to *sums instead (in double
// as the masses; the return value is then 0), and with e_store stores d - k0
// there (+inf where the mass is 0).
//
// kOpenTop (plain form, members not counted): the set has no upper bound short
// of underflow (dhi >= kUnderflow, and a hit bound <= dhi), so the mass's own
// test (d <= kUnderflow) and the hit test are the membership tests too, and
// the member test is skipped (*members is left as it is). Extra::kLeast
// (open-topped only) lowers *least to the block's least -d instead, one
// vector min a packet against a compare and a popcount: when that stays
// within -dhi every entry was a member (an entry of -inf, or one whose d
// overflowed, is not; entries are never NaN in a mass pass: such rows are
// row errors first).
template <bool kCheckLo, bool kSameScale, bool kPlain, bool kUnitScale = false,
          Extra kExtra = Extra::kNone, bool kOpenTop = false>
inline double block_masses_avx512(const float* x, int64_t n, const SetSpec& set, float k0,
                                  float* __restrict w, int64_t* members, BlockHits* hits = nullptr,
                                  EntropyLanes* sums = nullptr, float* e_store = nullptr,
                                  BandLanes* band = nullptr, float* least = nullptr,
                                  AllowedLanes* allowed = nullptr) {
  constexpr bool kGather = kExtra == Extra::kHits || kExtra == Extra::kEntropyAndHits;
  constexpr bool kAllowed = kExtra == Extra::kAllowed;
  constexpr bool kLeast = kExtra == Extra::kLeast;
  static_assert(!kLeast || kOpenTop);
  constexpr bool kEntropy = kExtra == Extra::kEntropy || kExtra == Extra::kEntropyAndHits;
  constexpr bool kBand = kExtra == Extra::kBand;
  static_assert(kExtra == Extra::kNone || kSameScale);
  static_assert(!kOpenTop || kPlain);
  namespace ei = Eigen::internal;
  constexpr int64_t kGroup = 8;  // packets per float partial sum, as above
  const SetPackets sp(set);      // (named: clang 14 cannot capture bindings)
  const __m512 pk0 = _mm512_set1_ps(k0);
  const __m512 pnhi = _mm512_set1_ps(-set.dhi);
  const __m512 pnunder = _mm512_set1_ps(-kUnderflow);
  const __m512 pbound = _mm512_set1_ps(hits ? hits->bound : 0.0f);
  const __m512 pnbound = _mm512_set1_ps(hits ? -hits->bound : 0.0f);
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 partial = _mm512_setzero_ps();
  __m512 least_arg = _mm512_set1_ps(kInf);
  __m512 partial_zd = _mm512_setzero_ps();
  __m512 partial_below = _mm512_setzero_ps();
  __m512 partial_allowed = _mm512_setzero_ps();
  // (Extra::kBand: the bounds as every form tests them, and the running
  // counts in registers)
  const __m512 pblo = _mm512_set1_ps(band ? band->lo : 0.0f);
  const __m512 pbhi = _mm512_set1_ps(band ? band->hi : 0.0f);
  const __m512 pnblo = _mm512_set1_ps(band ? -band->lo : 0.0f);
  const __m512 pnbhi = _mm512_set1_ps(band ? -band->hi : 0.0f);
  int64_t listed = band ? band->n : 0;
  int64_t below_count = 0;
  DoubleLanes own_sum, own_zd;
  DoubleLanes& sum = kEntropy ? sums->z : own_sum;
  DoubleLanes& sum_zd = kEntropy ? sums->zd : own_zd;
  int64_t in_group = 0;
  int64_t found = 0;
  int64_t count = 0;  // (a scalar popcount: a vector add here costs an FP slot)
  // kGather: a packet's hits (block-relative index and key) compressed into
  // hits, in order; or, in a block taken as dense (BlockHits::deferred),
  // each packet's hit mask noted and the hits stored after the pass.
  auto store_hits = [&](int64_t g, __mmask16 hit, __m512 key) {
    const __m512i at = _mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int32_t>(g)));
    _mm512_storeu_si512(hits->idx + found, _mm512_maskz_compress_epi32(hit, at));
    _mm512_storeu_ps(hits->k + found, _mm512_maskz_compress_ps(hit, key));
    found += __builtin_popcount(static_cast<unsigned>(hit));
  };
  const bool deferred = kExtra == Extra::kHits && hits->deferred;
  uint16_t hit_masks[kBlock / 16];
  uint32_t with_hits = 0;  // (bit p: packet p has hits)
  // -d in the plain form, (x - xmax) s; d in the general one, (xmax - x) s
  // (the hits of a dense block take their keys from these again, after the
  // pass: the same operations, the same bits).
  auto minus_d = [&](__m512 px) {
    const __m512 a = _mm512_sub_ps(px, sp.xmax);
    return kUnitScale ? a : _mm512_mul_ps(a, sp.scale);
  };
  auto d_of = [&](__m512 diff) { return _mm512_mul_ps(diff, sp.scale); };
  // (two call sites: with a third, GCC 12 kept `partial` on the stack in
  // sum_mass_gather's inlined copies, or outlined the lambda, +40-60 % on
  // top-p; [[gnu::noinline]] on this function and always_inline on the
  // lambda kept it in registers)
  auto step = [&](__m512 px, int64_t g, __mmask16 store) {
    __m512 arg, d;
    __mmask16 in, live;
    if constexpr (kPlain) {
      arg = minus_d(px);
      if constexpr (kOpenTop) {
        in = 0xffff;  // (unused)
        live = _mm512_cmp_ps_mask(pnunder, arg, _CMP_LE_OQ);
      } else {
        in = _mm512_cmp_ps_mask(pnhi, arg, _CMP_LE_OQ);
        live = _mm512_mask_cmp_ps_mask(in, pnunder, arg, _CMP_LE_OQ);
      }
    } else {
      const __m512 diff = _mm512_sub_ps(sp.xmax, px);
      d = d_of(diff);
      in = _mm512_cmp_ps_mask(d, sp.hi, _CMP_LE_OQ);
      if constexpr (kCheckLo) in = _mm512_mask_cmp_ps_mask(in, sp.lo, d, _CMP_LE_OQ);
      __m512 e;
      if constexpr (kSameScale) {
        e = _mm512_sub_ps(d, pk0);
      } else {
        e = _mm512_sub_ps(_mm512_mul_ps(diff, sp.key_scale), pk0);
      }
      live = _mm512_mask_cmp_ps_mask(in, e, sp.under, _CMP_LE_OQ);
      arg = ei::pnegate(e);
    }
    const __m512 ex = mass_exp(arg);
    if constexpr (!kOpenTop) count += __builtin_popcount(static_cast<unsigned>(in));
    // (the tail's padding left out)
    if constexpr (kLeast) least_arg = _mm512_mask_min_ps(least_arg, store, least_arg, arg);
    const __m512 mass = _mm512_maskz_mov_ps(live, ex);
    if constexpr (!kEntropy) partial = _mm512_add_ps(partial, mass);  // (faster than merging)
    if constexpr (kAllowed) {
      const int64_t t = allowed->first + g;
      const auto bits = static_cast<__mmask16>(mask_half_word(allowed->words, t));
      // (a merging add, one instruction: 3-5 % off a masked greedy row
      // against a zeroing move and an add; the same sums, masses being >= 0)
      partial_allowed = _mm512_mask_add_ps(partial_allowed, bits, partial_allowed, mass);
    }
    if constexpr (kEntropy) {
      // (merging adds: a zeroing move of ex would only feed the first)
      partial = _mm512_mask_add_ps(partial, live, partial, ex);
      // m e = -(m arg): subtract m arg, in one fused multiply-add.
      partial_zd = _mm512_mask3_fnmadd_ps(ex, arg, partial_zd, live);
      if (e_store) {
        // e = -arg (d - k0), +inf where the mass is 0.
        _mm512_mask_storeu_ps(e_store + g, store,
                              _mm512_mask_mov_ps(_mm512_set1_ps(kInf), live, ei::pnegate(arg)));
      }
    }
    if constexpr (kBand) {
      // (d is 0 - arg in the plain form, as the hits' keys below)
      __mmask16 le, upto;
      if constexpr (kOpenTop) {
        le = _mm512_cmp_ps_mask(pnblo, arg, _CMP_LE_OQ);
        upto = _mm512_cmp_ps_mask(pnbhi, arg, _CMP_LE_OQ);
      } else if constexpr (kPlain) {
        le = _mm512_mask_cmp_ps_mask(in, pnblo, arg, _CMP_LE_OQ);
        upto = _mm512_mask_cmp_ps_mask(in, pnbhi, arg, _CMP_LE_OQ);
      } else {
        le = _mm512_mask_cmp_ps_mask(in, d, pblo, _CMP_LE_OQ);
        upto = _mm512_mask_cmp_ps_mask(in, d, pbhi, _CMP_LE_OQ);
      }
      const auto between = static_cast<__mmask16>(upto & ~le);
      partial_below = _mm512_mask_add_ps(partial_below, le, partial_below, mass);
      below_count += __builtin_popcount(static_cast<unsigned>(le));
      const __m512 key = kPlain ? _mm512_sub_ps(_mm512_setzero_ps(), arg) : d;
      _mm512_storeu_ps(band->key + listed, _mm512_maskz_compress_ps(between, key));
      _mm512_storeu_ps(band->weight + listed, _mm512_maskz_compress_ps(between, mass));
      listed += __builtin_popcount(static_cast<unsigned>(between));
    }
    if (++in_group == kGroup) {
      sum.add(partial);
      partial = _mm512_setzero_ps();
      if constexpr (kEntropy) {
        sum_zd.add(partial_zd);
        partial_zd = _mm512_setzero_ps();
      }
      if constexpr (kBand) {
        band->below.add(partial_below);
        partial_below = _mm512_setzero_ps();
      }
      if constexpr (kAllowed) {
        allowed->sum.add(partial_allowed);
        partial_allowed = _mm512_setzero_ps();
      }
      in_group = 0;
    }
    if (w) _mm512_mask_storeu_ps(w + g, store, mass);
    if constexpr (kGather) {
      const __mmask16 hit = kOpenTop ? _mm512_cmp_ps_mask(pnbound, arg, _CMP_LE_OQ)
                            : kPlain ? _mm512_mask_cmp_ps_mask(in, pnbound, arg, _CMP_LE_OQ)
                                     : _mm512_mask_cmp_ps_mask(in, d, pbound, _CMP_LE_OQ);
      if (deferred) {
        hit_masks[g / 16] = hit;
        with_hits |= static_cast<uint32_t>(hit != 0) << (g / 16);
      } else if (hit != 0) {
        // 0 - arg is d exactly in the plain form ((x - xmax) s = -((xmax - x)
        // s)), +0 where x = xmax (a negation would give -0, whose bits sort
        // after every positive key in select's radix levels).
        store_hits(g, hit, kPlain ? _mm512_sub_ps(_mm512_setzero_ps(), arg) : d);
      }
    }
  };
  int64_t g = 0;
  for (; g + 16 <= n; g += 16) step(_mm512_loadu_ps(x + g), g, 0xffff);
  if (g < n) {
    // The tail, padded with -inf: never a member.
    const auto tail = static_cast<__mmask16>((1u << (n - g)) - 1u);
    step(_mm512_mask_loadu_ps(_mm512_set1_ps(-kInf), tail, x + g), g, tail);
  }
  if (in_group) {
    sum.add(partial);
    if constexpr (kEntropy) sum_zd.add(partial_zd);
    if constexpr (kBand) band->below.add(partial_below);
    if constexpr (kAllowed) allowed->sum.add(partial_allowed);
  }
  if constexpr (kBand) {
    band->n = listed;
    band->below_count += below_count;
  }
  if constexpr (!kOpenTop) *members = count;
  if constexpr (kLeast) *least = std::min(*least, _mm512_reduce_min_ps(least_arg));
  if constexpr (kGather) {
    // A dense block's hits, packet by packet, their keys computed again.
    for (; with_hits != 0; with_hits &= with_hits - 1) {
      const int64_t g = 16 * std::countr_zero(with_hits);
      const __mmask16 hit = hit_masks[g / 16];
      const __m512 px = _mm512_maskz_loadu_ps(hit, x + g);
      store_hits(g, hit,
                 kPlain ? _mm512_sub_ps(_mm512_setzero_ps(), minus_d(px))
                        : d_of(_mm512_sub_ps(sp.xmax, px)));
    }
    hits->n = found;
  }
  if constexpr (kEntropy) return 0.0;  // (the sums are in *sums)
  return sum.total();
}
#define NUCLEUS_BLOCK_MASSES block_masses_avx512
#else
#define NUCLEUS_BLOCK_MASSES block_masses_from_values_impl
#endif

inline double block_masses_from_values(const float* x, int64_t n, const SetSpec& set, float k0,
                                       float* __restrict w, int64_t* members) {
  // d >= 0 always (x <= xmax), so a lower bound of 0 needs no test.
  const bool check_lo = set.dlo > 0.0f;
  const bool same = set.key_scale == set.scale;
  if (check_lo) {
    return same ? NUCLEUS_BLOCK_MASSES<true, true, false>(x, n, set, k0, w, members)
                : NUCLEUS_BLOCK_MASSES<true, false, false>(x, n, set, k0, w, members);
  }
  if (same && k0 == 0.0f) {
#if defined(__AVX512F__)
    if (set.scale == 1.0f)
      return block_masses_avx512<false, true, true, true>(x, n, set, k0, w, members);
#endif
    return NUCLEUS_BLOCK_MASSES<false, true, true>(x, n, set, k0, w, members);
  }
  return same ? NUCLEUS_BLOCK_MASSES<false, true, false>(x, n, set, k0, w, members)
              : NUCLEUS_BLOCK_MASSES<false, false, false>(x, n, set, k0, w, members);
}
#undef NUCLEUS_BLOCK_MASSES

// Eight partial sums added in a fixed tree order.
inline double sum_of_lanes(const double (&a)[8]) {
  return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

// Σ w in double, in a fixed order (eight interleaved partial sums).
inline double sum_as_double(const float* w, int64_t n) {
  double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int i = 0; i < 8; ++i) acc[i] += static_cast<double>(w[j + i]);
  }
  for (int i = 0; j < n; ++j, ++i) acc[i] += static_cast<double>(w[j]);
  return sum_of_lanes(acc);
}

// Calls fn(j), in order, for every j in [0, n) with lo <= v[j] <= hi. Whole
// packets are tested first (Eigen's packet compare and predux_any), so sparse
// hits cost little more than the test.
template <typename Fn>
inline void for_each_in_range(const float* v, int64_t n, float lo, float hi, Fn fn) {
  using Packet = Eigen::internal::packet_traits<float>::type;
  constexpr int64_t kLanes = Eigen::internal::packet_traits<float>::size;
  const Packet plo = Eigen::internal::pset1<Packet>(lo);
  const Packet phi = Eigen::internal::pset1<Packet>(hi);
  int64_t g = 0;
  for (; g + kLanes <= n; g += kLanes) {
    const Packet x = Eigen::internal::ploadu<Packet>(v + g);
    const Packet hit =
        Eigen::internal::pand(Eigen::internal::pcmp_le(plo, x), Eigen::internal::pcmp_le(x, phi));
    if (!Eigen::internal::predux_any(hit)) continue;
    for (int64_t j = g; j < g + kLanes; ++j) {
      if (in_range(v[j], lo, hi)) fn(j);
    }
  }
  for (; g < n; ++g) {
    if (in_range(v[g], lo, hi)) fn(g);
  }
}

// Collects, in order, every member j of a block (dlo <= d <= dhi, n <=
// kBlock) whose ranking key k lies in [klo, khi]: idx[c] = j, k[c], d[c].
// Returns the count. Each packet is tested as a whole; packets with a hit are
// written lane by lane without branches (every lane is written, only hits
// advance), so dense and sparse hits both stay cheap. The outputs need room
// for kBlock + one packet.
#if defined(__AVX512F__)
// One packet's members with key in [klo, khi] among the lanes `in`: the
// exact tests, and the hits compressed into the front of a register and
// stored whole at idx, kout and dout (which have a packet of room past
// them); returns how many. kSkipEmpty: a packet without hits stores nothing
// (a branch, which the sparse form below takes).
template <bool kSkipEmpty>
inline int64_t store_members(__m512 px, __mmask16 in, int64_t g, const SetPackets& sp, __m512 pklo,
                             __m512 pkhi, int32_t* idx, float* kout, float* dout) {
  const __m512 diff = _mm512_sub_ps(sp.xmax, px);
  const __m512 d = _mm512_mul_ps(diff, sp.scale);
  const __m512 k = _mm512_mul_ps(diff, sp.key_scale);
  __mmask16 hit = _mm512_mask_cmp_ps_mask(in, sp.lo, d, _CMP_LE_OQ);
  hit = _mm512_mask_cmp_ps_mask(hit, d, sp.hi, _CMP_LE_OQ);
  hit = _mm512_mask_cmp_ps_mask(hit, pklo, k, _CMP_LE_OQ);
  hit = _mm512_mask_cmp_ps_mask(hit, k, pkhi, _CMP_LE_OQ);
  if (kSkipEmpty && hit == 0) return 0;
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i at = _mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int32_t>(g)));
  _mm512_storeu_si512(idx, _mm512_maskz_compress_epi32(hit, at));
  _mm512_storeu_ps(kout, _mm512_maskz_compress_ps(hit, k));
  _mm512_storeu_ps(dout, _mm512_maskz_compress_ps(hit, d));
  return std::popcount(static_cast<unsigned>(hit));
}

// AVX-512: each packet that reaches x_floor through store_members.
inline int64_t collect_members_with_key(const float* x, int64_t n, const SetSpec& set, float klo,
                                        float khi, float x_floor, int32_t* idx, float* kout,
                                        float* dout) {
  const SetPackets sp(set);
  const __m512 pklo = _mm512_set1_ps(klo);
  const __m512 pkhi = _mm512_set1_ps(khi);
  const __m512 pad = _mm512_set1_ps(-kInf);
  // Packets with no x at or above x_floor hold no key <= khi: skipped after
  // one compare (a gather under a bound reads mostly such packets); and
  // first a group of four packets (a line pair) after one test of their
  // compare masks or-ed together, as on AVX2. Top-k + top-p, one 128256 row
  // (Zen 5, bench/ab -n 5..7, medians): peaked 7.32 -> 6.89 µs, flat 8.28 ->
  // 6.97; top-p, typical-p, min-p and full sampling unchanged or faster.
  const __m512 px_floor = _mm512_set1_ps(x_floor);
  auto reaches = [&](int64_t at) {
    return _mm512_cmp_ps_mask(_mm512_loadu_ps(x + at), px_floor, _CMP_GE_OQ);
  };
  constexpr int64_t kGroup = 64;
  int64_t c = 0;
  auto packet = [&](int64_t g, __m512 px) {
    const __mmask16 r = _mm512_cmp_ps_mask(px, px_floor, _CMP_GE_OQ);
    if (r == 0) return;
    c += store_members<true>(px, r, g, sp, pklo, pkhi, idx + c, kout + c, dout + c);
  };
  // (whole packets by plain loads: a masked load for each, the last
  // packet's form, cost compact ~25 against ~8 us over a 128256 row)
  int64_t g = 0;
  for (; g + 16 <= n; g += 16) {
    if (g % kGroup == 0 && g + kGroup <= n) {
      if ((reaches(g) | reaches(g + 16) | reaches(g + 32) | reaches(g + 48)) == 0) {
        g += kGroup - 16;
        continue;
      }
    }
    packet(g, _mm512_loadu_ps(x + g));
  }
  if (g < n) {
    // A padded lane reads -inf: d = +inf, which no dhi admits.
    packet(g, _mm512_mask_loadu_ps(pad, static_cast<__mmask16>((1u << (n - g)) - 1u), x + g));
  }
  return c;
}

// collect_members_with_key for a block among many hits (AVX-512), in two
// steps with no branch on a packet. First every packet's lanes with x at
// or above x_floor (those that can hold a key <= khi), one compare each,
// noted with a bit set of the packets that have any; then only those
// packets, taken from the bit set: the exact tests, the hits compressed
// into the front of a register and stored whole (the outputs have a packet
// of room past kBlock). The form above asks per group of four packets, then
// per packet, whether any lane reaches x_floor: branches a row never seen
// before mispredicts about once a hit where hits are neither rare nor
// everywhere, as in a flat row's second top-p gather (~4 % of its tokens;
// over 256 distinct flat 32000-token rows those gathers took ~2.3 -> ~1.2
// us a row on average, from cycle counts around them); where hits are few,
// its tests skip most of a block (top-k 50 + top-p, eight flat rows:
// 1.09-1.15x slower with this form alone).
inline int64_t collect_members_dense(const float* x, int64_t n, const SetSpec& set, float klo,
                                     float khi, float x_floor, int32_t* idx, float* kout,
                                     float* dout) {
  const SetPackets sp(set);
  const __m512 pklo = _mm512_set1_ps(klo);
  const __m512 pkhi = _mm512_set1_ps(khi);
  const __m512 px_floor = _mm512_set1_ps(x_floor);
  constexpr int64_t kPackets = kBlock / 16;
  static_assert(kPackets == 32);
  uint16_t reach[kPackets];
  uint32_t with = 0;  // (bit p: packet p has lanes that reach)
  const int64_t whole = n / 16;
  for (int64_t p = 0; p < whole; ++p) {
    const __mmask16 r = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + 16 * p), px_floor, _CMP_GE_OQ);
    reach[p] = r;
    with |= static_cast<uint32_t>(r != 0) << p;
  }
  const auto tail = static_cast<__mmask16>((1u << (n - 16 * whole)) - 1u);
  if (tail != 0) {
    // (the lanes past n left out)
    const __mmask16 r = _mm512_mask_cmp_ps_mask(tail, _mm512_maskz_loadu_ps(tail, x + 16 * whole),
                                                px_floor, _CMP_GE_OQ);
    reach[whole] = r;
    with |= static_cast<uint32_t>(r != 0) << whole;
  }
  int64_t c = 0;
  for (; with != 0; with &= with - 1) {
    const int64_t g = 16 * std::countr_zero(with);
    const __mmask16 r = reach[g / 16];
    // (a plain load but for the tail: a masked one for each packet cost
    // compact ~25 against ~8 us over a 128256 row)
    const __m512 px = g + 16 <= n ? _mm512_loadu_ps(x + g) : _mm512_maskz_loadu_ps(tail, x + g);
    c += store_members<false>(px, r, g, sp, pklo, pkhi, idx + c, kout + c, dout + c);
  }
  return c;
}
#else
inline int64_t collect_members_with_key(const float* x, int64_t n, const SetSpec& set, float klo,
                                        float khi, float x_floor, int32_t* idx, float* kout,
                                        float* dout) {
  namespace ei = Eigen::internal;
  using Packet = ei::packet_traits<float>::type;
  constexpr int64_t kLanes = ei::packet_traits<float>::size;
  const auto [pxmax, pscale, pkscale, plo, phi, punder, pinf, pone] = SetPackets(set);
  const Packet pklo = ei::pset1<Packet>(klo);
  const Packet pkhi = ei::pset1<Packet>(khi);
  alignas(64) float tx[kLanes];
  alignas(64) float tk[kLanes];
  alignas(64) float td[kLanes];
  alignas(64) float th[kLanes];
  // As on AVX-512, a packet with no x at or above x_floor is skipped after
  // one test; and first a whole group of packets (a line pair) is, after one
  // test of their compares or-ed together: a gather under a tight bound
  // skips almost every group, and a test and branch per packet made it ~2x
  // slower (gather_below's share beside scan_blocks', perf, top-k + top-p).
  constexpr int64_t kGroup = 64;
  static_assert(kGroup % kLanes == 0);
  const Packet px_floor = ei::pset1<Packet>(x_floor);
  int64_t c = 0;
  for (int64_t g = 0; g < n; g += kLanes) {
    if (g % kGroup == 0 && g + kGroup <= n) {
      Packet reach = ei::pcmp_le(px_floor, ei::ploadu<Packet>(x + g));
      for (int64_t j = kLanes; j < kGroup; j += kLanes) {
        reach = ei::por(reach, ei::pcmp_le(px_floor, ei::ploadu<Packet>(x + g + j)));
      }
      if (!ei::predux_any(reach)) {
        g += kGroup - kLanes;
        continue;
      }
    }
    Packet px;
    if (g + kLanes <= n) {
      px = ei::ploadu<Packet>(x + g);
    } else {
      for (int64_t j = 0; j < kLanes; ++j) tx[j] = g + j < n ? x[g + j] : -kInf;
      px = ei::pload<Packet>(tx);
    }
    if (!ei::predux_any(ei::pcmp_le(px_floor, px))) continue;
    const Packet diff = ei::psub(pxmax, px);
    const Packet d = ei::pmul(diff, pscale);
    const Packet k = ei::pmul(diff, pkscale);
    // A padded lane has d = +inf, which no dhi admits.
    const Packet hit = ei::pand(ei::pand(ei::pcmp_le(plo, d), ei::pcmp_le(d, phi)),
                                ei::pand(ei::pcmp_le(pklo, k), ei::pcmp_le(k, pkhi)));
    if (!ei::predux_any(hit)) continue;
    ei::pstore(tk, k);
    ei::pstore(td, d);
    ei::pstore(th, hit);
    for (int64_t j = 0; j < kLanes; ++j) {
      idx[c] = static_cast<int32_t>(g + j);
      kout[c] = tk[j];
      dout[c] = td[j];
      c += std::bit_cast<uint32_t>(th[j]) != 0 ? 1 : 0;  // a hit lane is all ones
    }
  }
  return c;
}
#endif

// Staging for collect_members_with_key.
struct Collected {
  alignas(64) int32_t idx[kBlock + 64];
  alignas(64) float k[kBlock + 64];
  alignas(64) float d[kBlock + 64];
  int64_t n = 0;
  void collect(const float* x, int64_t len, const SetSpec& set, float klo, float khi) {
    collect(x, len, set, klo, khi, x_floor_for_key(set, khi));
  }
  // ... with x_floor_for_key(set, khi) given (a pass over many blocks forms
  // it once: its two nextafter calls were ~5 % of a gather_below's time).
  void collect(const float* x, int64_t len, const SetSpec& set, float klo, float khi,
               float x_floor) {
    n = collect_members_with_key(x, len, set, klo, khi, x_floor, idx, k, d);
  }
  // ... in the form for a block among many hits where there is one (AVX-512).
  void collect_dense(const float* x, int64_t len, const SetSpec& set, float klo, float khi,
                     float x_floor) {
#if defined(__AVX512F__)
    n = collect_members_dense(x, len, set, klo, khi, x_floor, idx, k, d);
#else
    collect(x, len, set, klo, khi, x_floor);
#endif
  }
};

#if defined(__AVX512F__)
// The form of block_masses_avx512 a set calls for, same scales only: with a
// lower bound, the general one; from the top (k0 = 0), the plain one (at
// temperature 1 without the multiply), open-topped when nothing short of
// underflow bounds the set (and a hit bound, with hits, lies within it);
// otherwise the general one without the lower test. (Open-topped forms do
// not count members.) Extra::kLeast takes the open-topped form alone: the
// caller has checked that the set allows it (sum_mass).
template <Extra kExtra>
inline double block_masses_for(const float* x, int64_t n, const SetSpec& set, float k0,
                               float* __restrict w, int64_t* members, BlockHits* hits,
                               EntropyLanes* sums, float* e_store, BandLanes* band = nullptr,
                               float* least = nullptr) {
  if (kExtra == Extra::kLeast ||
      (set.dlo <= 0.0f && k0 == 0.0f && set.dhi >= kUnderflow &&
       (!hits || hits->bound <= set.dhi) && (!band || band->hi <= set.dhi))) {
    return set.scale == 1.0f ? block_masses_avx512<false, true, true, true, kExtra, true>(
                                   x, n, set, k0, w, members, hits, sums, e_store, band, least)
                             : block_masses_avx512<false, true, true, false, kExtra, true>(
                                   x, n, set, k0, w, members, hits, sums, e_store, band, least);
  }
  if constexpr (kExtra != Extra::kLeast) {
    if (set.dlo > 0.0f) {
      return block_masses_avx512<true, true, false, false, kExtra>(x, n, set, k0, w, members, hits,
                                                                   sums, e_store, band);
    }
    if (k0 == 0.0f) {
      return set.scale == 1.0f ? block_masses_avx512<false, true, true, true, kExtra>(
                                     x, n, set, k0, w, members, hits, sums, e_store, band)
                               : block_masses_avx512<false, true, true, false, kExtra>(
                                     x, n, set, k0, w, members, hits, sums, e_store, band);
    }
    return block_masses_avx512<false, true, false, false, kExtra>(x, n, set, k0, w, members, hits,
                                                                  sums, e_store, band);
  }
  return 0.0;  // (Extra::kLeast took the open-topped form)
}
#endif

// A block's hits (block-relative indices and keys, from BlockHits or
// Collected) appended to `out` as gathered tokens; returns how many.
template <typename Hits>
inline int64_t append_gathered(const Hits& hits, const Segment& s, int64_t j0, GatheredToken* out) {
  for (int64_t i = 0; i < hits.n; ++i) {
    out[i] = GatheredToken{hits.k[i], s.x[j0 + hits.idx[i]], s.token(j0 + hits.idx[i])};
  }
  return hits.n;
}

// block_masses_from_values (w not stored) and, into hits, the members with
// d <= hits.bound, for sets whose two scales agree: one pass on AVX-512 and
// AVX2, the mass pass and then collect_members_with_key over the block (in
// L1) on SSE2.
// On AVX-512, Extra::kEntropyAndHits also adds the masses and the typical-p
// moment to *sums (block_masses_avx512; the return value is then 0).
template <Extra kExtra = Extra::kHits>
inline double block_masses_and_hits(const float* x, int64_t n, const SetSpec& set, float k0,
                                    BlockHits& hits, int64_t* members,
                                    [[maybe_unused]] EntropyLanes* sums = nullptr) {
#if defined(__AVX512F__)
  static_assert(kExtra == Extra::kHits || kExtra == Extra::kEntropyAndHits);
  const double mass =
      block_masses_for<kExtra>(x, n, set, k0, nullptr, members, &hits, sums, nullptr);
  hits.deferred = hits.n >= kDenseHits;
  return mass;
#else
  static_assert(kExtra == Extra::kHits);
#if defined(__AVX__)
  // The hits taken in the mass pass (same scales, as on AVX-512: key = d).
  // Top-p on AVX2 (Zen 3), × the softmax floor, against a second pass over
  // each block: one peaked 128256 row 1.25 -> 0.94, one flat row 1.52 ->
  // 1.17, eight distinct flat rows 1.63 -> 1.35; penalty + top-p 1.53 ->
  // 1.25 (bench/ab, best of 3-4).
  if (set.dlo > 0.0f) {
    return block_masses_from_values_impl<true, true, false, true>(x, n, set, k0, nullptr, members,
                                                                  &hits);
  }
  if (k0 == 0.0f) {
    if (set.dhi >= kUnderflow && hits.bound <= set.dhi) {
      return block_masses_from_values_impl<false, true, true, true, true>(x, n, set, k0, nullptr,
                                                                          members, &hits);
    }
    return block_masses_from_values_impl<false, true, true, true>(x, n, set, k0, nullptr, members,
                                                                  &hits);
  }
  return block_masses_from_values_impl<false, true, false, true>(x, n, set, k0, nullptr, members,
                                                                 &hits);
#else
  // SSE2: the mass pass, then the hits in a pass of their own over the block
  // (in L1). Four lanes a packet make the in-pass test dearer: fused, top-p
  // was ~2 % slower here (bench/ab, 5 rounds).
  const double mass = block_masses_from_values(x, n, set, k0, nullptr, members);
  alignas(64) float d[kBlock + 64];
  hits.n = collect_members_with_key(x, n, set, -kInf, hits.bound, x_floor_for_key(set, hits.bound),
                                    hits.idx, hits.k, d);
  return mass;
#endif
#endif
}

// Distances in filter space (d) and ranking space (k); k aliases d when the
// scales agree, which is every hf / vllm pass.
struct BlockKeys {
  alignas(64) float d[kBlock];
  alignas(64) float kbuf[kBlock];
  const float* k = nullptr;
  void compute(const float* x, int64_t n, const SetSpec& set) {
    block_distances(x, n, set.xmax, set.scale, d);
    if (set.key_scale == set.scale) {
      k = d;
    } else {
      block_distances(x, n, set.xmax, set.key_scale, kbuf);
      k = kbuf;
    }
  }
};

}  // namespace nucleus::detail::NUCLEUS_KERNEL_ISA::block
