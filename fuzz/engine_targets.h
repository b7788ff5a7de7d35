// Fuzz targets for the engine's entry points: Engine::sample, Engine::probs
// and Engine::verify, on random shapes, strides and dtypes, parameters in and
// out of range, logits with NaN, +-inf and extreme magnitudes (and NaN in the
// row padding, which must never be read), random masks, histories and biases.
//
// Besides "no crash, no undefined behaviour", every input checks SPEC section
// 7 and docs/semantics.md exactly:
//   - a call is refused (INVALID_ARGUMENT, nothing written) if and only if
//     one of its values is out of range;
//   - a row fails if and only if its raw logits hold NaN or +inf (the message
//     names the first such token), its processed logits do, or none of them
//     is finite; every other row is sampled;
//   - a sampled token is never a masked one, greedy rows take the first
//     argmax, probabilities sum to one and are zero where a row failed;
//   - a seeded row gives the same bits on a 1-thread and a 3-thread engine,
//     and alone or in its batch.
// The processed logits are recomputed here in float32 with the same
// operations in the same order (docs/semantics.md "Penalties"), so they agree
// to the bit.
#pragma once

#include <algorithm>
#include <array>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "engine/io/half.h"
#include "fuzz/fuzz_input.h"
#include "nucleus/engine.h"

namespace nucleus::fuzz {

inline constexpr float kFuzzInf = std::numeric_limits<float>::infinity();
inline constexpr float kFuzzNaN = std::numeric_limits<float>::quiet_NaN();

// The engines of one input: one thread and three threads (a batch with fewer
// rows than threads takes the chunked path). They are made per input so that
// everything they allocate is freed before the input ends and libFuzzer's
// per-input leak check stays meaningful: a long-lived engine keeps its
// scratch in a oneTBB queue whose memory LeakSanitizer does not scan.
struct FuzzEngines {
  Engine one{EngineOptions{.max_threads = 1, .seed = 11}};
  Engine three{EngineOptions{.max_threads = 3, .seed = 12}};
  Engine& operator[](int64_t which) { return which == 0 ? one : three; }
};

// Values that break naive code.
inline float SpecialFloat(FuzzInput& in) {
  static constexpr float kTable[] = {kFuzzNaN, kFuzzInf, -kFuzzInf, FLT_MAX,  -FLT_MAX,
                                     FLT_MIN,  -FLT_MIN, 1e-45f,    -1e-45f,  0.0f,
                                     -0.0f,    1.0f,     -1.0f,     88.73f,   -87.34f,
                                     1e30f,    -1e30f,   1e-30f,    65504.0f, -65504.0f};
  if (in.OneIn(4)) return in.Bits<float>();
  return kTable[in.Range(0, std::size(kTable) - 1)];
}

// Whether a case holds a value the engine must refuse, and the first one.
struct Bad {
  bool any = false;
  std::string why;
  void Set(const std::string& what) {
    if (!any) why = what;
    any = true;
  }
};

// A parameter value: from `valid` three times in four, else from `invalid`
// (which the call must refuse). Records `field` in *bad when an invalid value
// is chosen.
template <typename T>
T Pick(FuzzInput& in, const char* field, std::initializer_list<T> valid,
       std::initializer_list<T> invalid, Bad* bad) {
  if (invalid.size() > 0 && in.OneIn(4)) {
    bad->Set(field);
    return invalid.begin()[in.Range(0, static_cast<int64_t>(invalid.size()) - 1)];
  }
  return valid.begin()[in.Range(0, static_cast<int64_t>(valid.size()) - 1)];
}

// Everything one request borrows; the spans point into these vectors, which
// are filled before any span is taken.
struct RequestData {
  std::vector<int32_t> prompt, generated, banned, mask;
  std::vector<TokenBias> bias;
};

inline int32_t FuzzToken(FuzzInput& in, int64_t vocab, Bad* bad) {
  if (in.OneIn(16)) {
    bad->Set("a token id out of range");
    const int64_t out[] = {-1, vocab, vocab + 1, std::numeric_limits<int32_t>::max(),
                           std::numeric_limits<int32_t>::min()};
    return static_cast<int32_t>(std::clamp<int64_t>(out[in.Range(0, 4)], INT32_MIN, INT32_MAX));
  }
  return static_cast<int32_t>(in.Range(0, vocab - 1));
}

inline std::vector<int32_t> FuzzTokens(FuzzInput& in, int64_t vocab, Bad* bad) {
  std::vector<int32_t> out(static_cast<size_t>(in.Range(0, in.OneIn(8) ? 40 : 6)));
  for (int32_t& t : out) t = FuzzToken(in, vocab, bad);
  return out;
}

// Fills `req` and `data` from the input; *bad says whether any value is one
// that the engine must refuse.
inline void FuzzRequest(FuzzInput& in, int64_t vocab, RowRequest* req, RequestData* data,
                        Bad* bad) {
  const auto v32 = static_cast<int32_t>(std::min<int64_t>(vocab, INT32_MAX - 16));
  SamplingParams& p = req->params;
  // One read per statement: the order in which a compiler evaluates the
  // operands of an expression is unspecified, and GCC (the replay test) and
  // clang (the fuzzer) must turn the same bytes into the same case.
  const uint32_t low = in.Bits<uint16_t>();
  const uint32_t set = low | (static_cast<uint32_t>(in.Byte()) << 16);
  if (set & (1u << 0)) {
    p.temperature = Pick(in, "temperature",
                         {0.0f, 0.0f, 0.5f, 1.0f, 2.0f, 1e-6f, 1e-38f, 1e-45f, 1e6f, FLT_MAX},
                         {-1.0f, kFuzzNaN, kFuzzInf, -kFuzzInf}, bad);
  }
  if (set & (1u << 1)) {
    p.top_k =
        Pick(in, "top_k", {-1, 0, 1, 2, 5, v32 - 1, v32, v32 + 1, INT32_MAX}, {-2, INT32_MIN}, bad);
  }
  if (set & (1u << 2)) {
    p.top_p = Pick(in, "top_p", {0.0f, 1e-9f, 0.1f, 0.5f, 0.9f, 0.99999994f, 1.0f},
                   {-0.1f, 1.0000001f, kFuzzNaN, kFuzzInf}, bad);
  }
  if (set & (1u << 3)) {
    p.min_p = Pick(in, "min_p", {0.0f, 1e-9f, 0.05f, 0.5f, 1.0f}, {-1e-9f, 1.5f, kFuzzNaN}, bad);
  }
  if (set & (1u << 4)) {
    p.typical_p =
        Pick(in, "typical_p", {1e-9f, 0.2f, 0.9f, 1.0f}, {0.0f, -0.5f, 1.5f, kFuzzNaN}, bad);
  }
  if (set & (1u << 5)) {
    p.top_n_sigma =
        Pick(in, "top_n_sigma", {-kFuzzInf, -1.0f, 0.0f, 1e-9f, 0.5f, 1.0f, 3.0f, 1e30f, FLT_MAX},
             {kFuzzNaN, kFuzzInf}, bad);
  }
  if (set & (1u << 6)) {
    p.min_keep = Pick(in, "min_keep", {1, 2, 5, v32, v32 + 10, INT32_MAX}, {0, -1, INT32_MIN}, bad);
  }
  if (set & (1u << 7)) {
    p.repetition_penalty = Pick(in, "repetition_penalty", {1.0f, 1.3f, 0.5f, 1e-38f, 1e38f, 1e-45f},
                                {0.0f, -1.0f, kFuzzNaN, kFuzzInf}, bad);
  }
  if (set & (1u << 8)) {
    p.frequency_penalty =
        Pick(in, "frequency_penalty", {0.0f, 0.5f, -0.5f, 2.0f, 1e38f, -1e38f, FLT_MAX, -FLT_MAX},
             {kFuzzNaN, kFuzzInf, -kFuzzInf}, bad);
  }
  if (set & (1u << 9)) {
    p.presence_penalty = Pick(in, "presence_penalty", {0.0f, 0.5f, -0.5f, 2.0f, 1e38f, -FLT_MAX},
                              {kFuzzNaN, kFuzzInf, -kFuzzInf}, bad);
  }
  if (set & (1u << 10)) p.preset = static_cast<Preset>(Pick(in, "preset", {0, 1, 2}, {3, -1}, bad));
  if (set & (1u << 11)) p.num_samples = Pick(in, "num_samples", {1, 2, 3, 7}, {0, -1}, bad);
  if (set & (1u << 12)) p.logprobs = in.Bool();
  if (set & (1u << 13)) {
    p.top_logprobs =
        Pick(in, "top_logprobs", {0, std::min(v32, 1), std::min(v32, 3), std::min(v32, 5), v32},
             {-1, v32 + 1}, bad);
  }
  if (set & (1u << 14)) {
    p.logprobs_mode = static_cast<LogprobsMode>(Pick(in, "logprobs_mode", {0, 1}, {2, -7}, bad));
  }
  if (!(set & (1u << 15))) req->seed = in.Bits<uint64_t>();
  if (set & (1u << 16)) req->step = in.OneIn(2) ? in.Bits<uint64_t>() : in.Byte();

  if (set & (1u << 17)) data->prompt = FuzzTokens(in, vocab, bad);
  if (set & (1u << 18)) data->generated = FuzzTokens(in, vocab, bad);
  if (set & (1u << 19)) data->banned = FuzzTokens(in, vocab, bad);
  if (set & (1u << 20)) {
    data->bias.resize(static_cast<size_t>(in.Range(0, 6)));
    for (TokenBias& b : data->bias) {
      b.token = FuzzToken(in, vocab, bad);
      b.bias =
          Pick(in, "logit_bias",
               {0.0f, 1.5f, -2.0f, 100.0f, -100.0f, 1e30f, -kFuzzInf, -kFuzzInf, FLT_MAX, -FLT_MAX},
               {kFuzzNaN, kFuzzInf}, bad);
    }
  }
  if (set & (1u << 21)) {
    int64_t words = (vocab + 31) / 32;
    if (in.OneIn(8)) {
      bad->Set("allowed_mask of the wrong length");
      words = in.Bool() ? words + 1 : words - 1;  // 0 words would mean "no mask"
      if (words == 0) words = 2;
    }
    data->mask.resize(static_cast<size_t>(words));
    const uint8_t style = in.Byte();
    for (int32_t& w : data->mask) {
      switch (style % 4) {
        case 0:
          w = -1;  // everything allowed
          break;
        case 1:
          w = 0;  // nothing allowed
          break;
        case 2:
          w = in.Bits<int32_t>();
          break;
        default:
          w = in.OneIn(4) ? in.Bits<int32_t>() : 0;
          break;
      }
    }
  }
  req->prompt_tokens = data->prompt;
  req->generated_tokens = data->generated;
  req->banned_tokens = data->banned;
  req->logit_bias = data->bias;
  req->allowed_mask = data->mask;
}

// A batch of logits and requests made from the input.
struct FuzzBatch {
  LogitsView view;
  Bad bad;                       // a value the engine must refuse
  std::vector<uint32_t> buffer;  // the logits (4-byte words, so any dtype is aligned)
  std::vector<RowRequest> requests;
  std::vector<RequestData> data;
  size_t results_size = 0;
};

// The input row as float32 (what the engine widens it to).
inline float LogitAt(const LogitsView& v, int64_t row, int64_t token) {
  const int64_t stride = v.row_stride == 0 ? v.vocab : v.row_stride;
  return detail::value_to_float(v.data, v.dtype, row * stride + token);
}

inline void StoreLogit(FuzzBatch& b, int64_t index, float x) {
  auto* bytes = reinterpret_cast<unsigned char*>(b.buffer.data());
  switch (b.view.dtype) {
    case DType::kFloat32:
      std::memcpy(bytes + index * 4, &x, 4);
      break;
    case DType::kFloat16: {
      const uint16_t h = detail::float_to_half_bits(x);
      std::memcpy(bytes + index * 2, &h, 2);
      break;
    }
    case DType::kBFloat16: {
      const uint16_t h = detail::float_to_bfloat16_bits(x);
      std::memcpy(bytes + index * 2, &h, 2);
      break;
    }
  }
}

// Shape, logits and requests. `rows_per_request` > 1 makes a verify batch:
// requests and results cover groups of that many logit rows.
inline FuzzBatch MakeBatch(FuzzInput& in, int64_t rows_per_request = 1) {
  FuzzBatch b;
  LogitsView& v = b.view;
  int64_t groups = in.Range(1, 6);
  int64_t vocab = in.OneIn(32)  ? in.Range(16000, 40000)
                  : in.OneIn(8) ? in.Range(65, 5000)
                                : in.Range(1, 64);
  int64_t stride = vocab;
  switch (in.Range(0, 7)) {
    case 0:
      stride = 0;  // means vocab
      break;
    case 1:
    case 2:
      stride = vocab + in.Range(1, 40);
      break;
    default:
      break;
  }
  int dtype = static_cast<int>(in.Range(0, 2));
  if (in.OneIn(24)) {
    b.bad.Set("a bad shape, stride or dtype");
    switch (in.Range(0, 5)) {
      case 0:
        groups = in.Bool() ? 0 : -1;
        break;
      case 1:
        vocab = in.Bool() ? 0 : -3;
        break;
      case 2:
        vocab = int64_t{std::numeric_limits<int32_t>::max()} + 1;  // never read: refused
        stride = vocab;
        break;
      case 3:
        stride = vocab > 1 ? vocab - 1 : -1;
        break;
      case 4:
        dtype = in.Bool() ? 3 : -1;
        break;
      default:
        stride = -vocab;
        break;
    }
  }
  v.rows = groups * rows_per_request;
  v.vocab = vocab;
  v.row_stride = stride;
  v.dtype = static_cast<DType>(dtype);
  const int64_t item = (dtype == 1 || dtype == 2) ? 2 : 4;

  // Exactly the bytes a valid view covers (the last row has no padding), so
  // that AddressSanitizer catches a read past the batch. Invalid views get a
  // small buffer: the engine must refuse them before reading anything.
  const int64_t step = stride == 0 ? vocab : stride;
  const bool valid_shape = v.rows > 0 && vocab > 0 && vocab <= (int64_t{1} << 20) &&
                           step >= vocab && dtype >= 0 && dtype <= 2;
  const int64_t elements = valid_shape ? (v.rows - 1) * step + vocab : 16;
  // Padding bytes are 0xFF: NaN in every dtype, so reading them shows up.
  b.buffer.assign(static_cast<size_t>((elements * item + 3) / 4), 0xFFFFFFFFu);
  v.data = b.buffer.data();
  if (in.OneIn(64)) {
    b.bad.Set("null data");
    v.data = nullptr;
  }

  if (valid_shape) {
    SplitMix rng(in.Bits<uint32_t>());
    for (int64_t r = 0; r < v.rows; ++r) {
      const uint8_t kind = in.Byte();
      const float scale = std::array{1.0f, 3.0f, 1e-3f, 30.0f, 1e4f, 1e30f, 1e-30f, 0.0f}[kind % 8];
      const float offset = std::array{0.0f, 100.0f, -1e30f, 1e38f}[(kind >> 3) % 4];
      const bool steps = (kind & 0x20) != 0;  // few distinct values: ties everywhere
      for (int64_t t = 0; t < vocab; ++t) {
        float x = rng.Normal() * scale;
        if (steps) x = std::round(x);
        StoreLogit(b, r * step + t, x + offset);
      }
      if ((kind & 0xC0) == 0xC0) {  // a row masked by its input, but for a few tokens
        for (int64_t t = 0; t < vocab; ++t) {
          if (rng.Next() % 8 != 0) StoreLogit(b, r * step + t, -kFuzzInf);
        }
      }
      // A few special values at chosen positions.
      for (int64_t n = in.Range(0, 3); n > 0; --n) {
        const int64_t at = in.Range(0, vocab - 1);
        StoreLogit(b, r * step + at, SpecialFloat(in));
      }
    }
  }

  const int64_t safe_vocab = std::clamp<int64_t>(vocab, 1, int64_t{1} << 20);
  size_t num_requests = in.Bool() ? 1 : static_cast<size_t>(std::max<int64_t>(groups, 1));
  if (in.OneIn(32)) {
    num_requests = static_cast<size_t>(std::max<int64_t>(groups, 1)) + 1;
    b.bad.Set("one request too many");
  }
  b.requests.resize(num_requests);
  b.data.resize(num_requests);
  for (size_t i = 0; i < num_requests; ++i) {
    FuzzRequest(in, safe_vocab, &b.requests[i], &b.data[i], &b.bad);
  }
  b.results_size = static_cast<size_t>(std::max<int64_t>(groups, 0));
  if (in.OneIn(32)) {
    b.results_size += 1;
    b.bad.Set("one result too many");
  }
  return b;
}

// A result no engine writes: any change shows up.
inline RowResult SentinelResult() {
  RowResult r;
  r.status = Status::internal("untouched");
  r.tokens = {-7};
  r.support = -99;
  return r;
}

inline bool IsSentinel(const RowResult& r) {
  return r.status.code() == StatusCode::kInternal && r.status.message() == "untouched" &&
         r.tokens == std::vector<int32_t>{-7} && r.support == -99 && r.logprobs.empty();
}

inline bool SameBits(float a, float b) {
  return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

inline bool SameResult(const RowResult& a, const RowResult& b) {
  if (a.status.code() != b.status.code() || a.status.message() != b.status.message() ||
      a.tokens != b.tokens || a.ranks != b.ranks || a.support != b.support ||
      a.logprobs.size() != b.logprobs.size() || a.raw_logprobs.size() != b.raw_logprobs.size() ||
      a.top_logprobs.size() != b.top_logprobs.size()) {
    return false;
  }
  for (size_t i = 0; i < a.logprobs.size(); ++i) {
    if (!SameBits(a.logprobs[i], b.logprobs[i])) return false;
  }
  for (size_t i = 0; i < a.raw_logprobs.size(); ++i) {
    if (!SameBits(a.raw_logprobs[i], b.raw_logprobs[i])) return false;
  }
  for (size_t i = 0; i < a.top_logprobs.size(); ++i) {
    if (a.top_logprobs[i].token != b.top_logprobs[i].token ||
        !SameBits(a.top_logprobs[i].logprob, b.top_logprobs[i].logprob)) {
      return false;
    }
  }
  return true;
}

// What SPEC section 7 says of one row: its processed logits, recomputed in
// the documented order, and whether the row must fail.
struct RowTruth {
  std::vector<float> x;        // processed logits
  int64_t first_bad_raw = -1;  // first NaN or +inf of the input row
  bool processed_bad = false;  // NaN or +inf after bias and penalties
  int64_t finite = 0;
  // Finite logits whose distance to the maximum is finite too: the engine
  // treats a logit more than FLT_MAX below the maximum like a masked one.
  int64_t in_range = 0;
  int64_t argmax = -1;  // first maximum of the finite processed logits
  bool must_fail() const { return first_bad_raw >= 0 || processed_bad || finite == 0; }
};

inline RowTruth Truth(const LogitsView& v, int64_t row, const RowRequest& r,
                      std::span<const int32_t> extra_generated = {}) {
  RowTruth t;
  const int64_t vocab = v.vocab;
  t.x.resize(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < vocab; ++i) {
    const float raw = LogitAt(v, row, i);
    if (t.first_bad_raw < 0 && (std::isnan(raw) || raw == kFuzzInf)) t.first_bad_raw = i;
    t.x[static_cast<size_t>(i)] = raw;
  }
  std::vector<int32_t> generated(r.generated_tokens.begin(), r.generated_tokens.end());
  generated.insert(generated.end(), extra_generated.begin(), extra_generated.end());
  std::vector<float>& x = t.x;
  if (!r.allowed_mask.empty()) {
    for (int64_t i = 0; i < vocab; ++i) {
      if (!((static_cast<uint32_t>(r.allowed_mask[static_cast<size_t>(i / 32)]) >> (i % 32)) &
            1u)) {
        x[static_cast<size_t>(i)] = -kFuzzInf;
      }
    }
  }
  for (int32_t b : r.banned_tokens) x[static_cast<size_t>(b)] = -kFuzzInf;
  for (const TokenBias& b : r.logit_bias) x[static_cast<size_t>(b.token)] += b.bias;
  const SamplingParams& p = r.params;
  // A masked (-inf) logit stays -inf under every penalty (docs/semantics.md).
  if (p.repetition_penalty != 1.0f && (!r.prompt_tokens.empty() || !generated.empty())) {
    std::set<int32_t> seen(r.prompt_tokens.begin(), r.prompt_tokens.end());
    seen.insert(generated.begin(), generated.end());
    for (int32_t tok : seen) {
      float& e = x[static_cast<size_t>(tok)];
      if (e == -kFuzzInf) continue;
      e = e > 0.0f ? e / p.repetition_penalty : e * p.repetition_penalty;
    }
  }
  if ((p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) && !generated.empty()) {
    std::map<int32_t, int64_t> counts;
    for (int32_t tok : generated) ++counts[tok];
    for (const auto& [tok, n] : counts) {
      float& e = x[static_cast<size_t>(tok)];
      if (e == -kFuzzInf) continue;
      e -= p.frequency_penalty * static_cast<float>(n);
      e -= p.presence_penalty;
    }
  }
  for (int64_t i = 0; i < vocab; ++i) {
    const float e = x[static_cast<size_t>(i)];
    if (std::isnan(e) || e == kFuzzInf) t.processed_bad = true;
    if (std::isfinite(e)) {
      ++t.finite;
      if (t.argmax < 0 || e > x[static_cast<size_t>(t.argmax)]) t.argmax = i;
    }
  }
  for (int64_t i = 0; i < vocab && t.argmax >= 0; ++i) {
    const float e = x[static_cast<size_t>(i)];
    if (std::isfinite(e) && std::isfinite(x[static_cast<size_t>(t.argmax)] - e)) ++t.in_range;
  }
  return t;
}

// The token index a row error names ("... token 17 ..."), or -1.
inline int64_t NamedToken(const std::string& message) {
  const size_t at = message.find("token ");
  if (at == std::string::npos) return -1;
  int64_t n = 0;
  size_t i = at + 6;
  if (i >= message.size() || message[i] < '0' || message[i] > '9') return -1;
  for (; i < message.size() && message[i] >= '0' && message[i] <= '9'; ++i) {
    n = n * 10 + (message[i] - '0');
    if (n > (int64_t{1} << 40)) return -1;
  }
  return n;
}

inline void CheckRowError(const Status& s, const RowTruth& truth, int64_t vocab) {
  NUCLEUS_FUZZ_CHECK(s.code() == StatusCode::kRowError, static_cast<int>(s.code()));
  NUCLEUS_FUZZ_CHECK(truth.must_fail(), truth.finite);
  NUCLEUS_FUZZ_CHECK(!s.message().empty());
  const int64_t named = NamedToken(s.message());
  NUCLEUS_FUZZ_CHECK(named < vocab, named, vocab);  // the padding is never read
  if (truth.first_bad_raw >= 0) NUCLEUS_FUZZ_CHECK(named == truth.first_bad_raw, named);
}

inline void CheckSampledRow(const RowResult& res, const RowRequest& req, const RowTruth& truth,
                            int64_t vocab) {
  if (truth.must_fail()) {
    CheckRowError(res.status, truth, vocab);
    NUCLEUS_FUZZ_CHECK(res.tokens.empty() && res.logprobs.empty() && res.support == 0);
    return;
  }
  if (!res.status.ok()) {
    FailWith("a row that has a finite, unmasked logit failed", res.status.message().c_str());
  }
  const SamplingParams& p = req.params;
  NUCLEUS_FUZZ_CHECK(res.tokens.size() == static_cast<size_t>(p.num_samples), res.tokens.size());
  NUCLEUS_FUZZ_CHECK(res.support >= 1 && res.support <= truth.finite, res.support, truth.finite);
  for (size_t j = 0; j < res.tokens.size(); ++j) {
    const int32_t tok = res.tokens[j];
    NUCLEUS_FUZZ_CHECK(tok >= 0 && tok < vocab, tok, vocab);
    // Never a masked token.
    NUCLEUS_FUZZ_CHECK(std::isfinite(truth.x[static_cast<size_t>(tok)]), tok);
    if (p.temperature == 0.0f) NUCLEUS_FUZZ_CHECK(tok == truth.argmax, tok, truth.argmax);
  }
  if (p.temperature == 0.0f) {
    NUCLEUS_FUZZ_CHECK(res.support >= truth.in_range && res.support <= truth.finite, res.support,
                       truth.finite);
  }
  if (p.logprobs) {
    NUCLEUS_FUZZ_CHECK(res.logprobs.size() == res.tokens.size());
    NUCLEUS_FUZZ_CHECK(res.raw_logprobs.size() == res.tokens.size());
    for (size_t j = 0; j < res.tokens.size(); ++j) {
      NUCLEUS_FUZZ_CHECK(!std::isnan(res.logprobs[j]) && res.logprobs[j] <= 1e-4f);
      NUCLEUS_FUZZ_CHECK(!std::isnan(res.raw_logprobs[j]) && res.raw_logprobs[j] <= 1e-4f);
    }
  }
  if (p.top_logprobs > 0) {
    NUCLEUS_FUZZ_CHECK(res.ranks.size() == res.tokens.size());
    for (int32_t rank : res.ranks) NUCLEUS_FUZZ_CHECK(rank >= 1 && rank <= vocab, rank);
    NUCLEUS_FUZZ_CHECK(res.top_logprobs.size() <= static_cast<size_t>(p.top_logprobs));
    NUCLEUS_FUZZ_CHECK(!res.top_logprobs.empty());
    std::set<int32_t> seen;
    for (size_t k = 0; k < res.top_logprobs.size(); ++k) {
      const TokenLogprob& e = res.top_logprobs[k];
      NUCLEUS_FUZZ_CHECK(e.token >= 0 && e.token < vocab, e.token);
      NUCLEUS_FUZZ_CHECK(seen.insert(e.token).second, e.token);
      NUCLEUS_FUZZ_CHECK(!std::isnan(e.logprob) && e.logprob <= 1e-4f);
      // Most probable first. (Entries whose logprobs round to the same float
      // follow their exact logits, which need not be token order: a row of
      // distinct logits 1e-30 apart has equal float logprobs.)
      if (k > 0) {
        NUCLEUS_FUZZ_CHECK(res.top_logprobs[k - 1].logprob >= e.logprob, e.token);
      }
    }
  } else {
    NUCLEUS_FUZZ_CHECK(res.ranks.empty() && res.top_logprobs.empty());
  }
}

inline void CheckProbsRow(const float* probs, const Status& status, const RowTruth& truth,
                          const RowResult& sampled, int64_t vocab) {
  if (truth.must_fail()) {
    CheckRowError(status, truth, vocab);
    for (int64_t i = 0; i < vocab; ++i) NUCLEUS_FUZZ_CHECK(probs[i] == 0.0f, i);
    return;
  }
  if (!status.ok()) {
    FailWith("probs: a row that has a finite, unmasked logit failed", status.message().c_str());
  }
  double sum = 0.0;
  int64_t nonzero = 0;
  for (int64_t i = 0; i < vocab; ++i) {
    NUCLEUS_FUZZ_CHECK(probs[i] >= 0.0f && probs[i] <= 1.0f, i);
    if (probs[i] > 0.0f) {
      ++nonzero;
      NUCLEUS_FUZZ_CHECK(std::isfinite(truth.x[static_cast<size_t>(i)]), i);
    }
    sum += probs[i];
  }
  NUCLEUS_FUZZ_CHECK(std::fabs(sum - 1.0) < 1e-4, static_cast<long long>(sum * 1e6));
  NUCLEUS_FUZZ_CHECK(nonzero >= 1 && nonzero <= sampled.support, nonzero, sampled.support);
  // A drawn token has mass in the final distribution.
  for (int32_t tok : sampled.tokens) NUCLEUS_FUZZ_CHECK(probs[tok] > 0.0f, tok);
}

inline int FuzzSample(const uint8_t* bytes, size_t size) {
  FuzzInput in(bytes, size);
  FuzzBatch b = MakeBatch(in);
  const LogitsView& v = b.view;
  FuzzEngines engines;
  const int64_t which = in.Range(0, 1);
  Engine& first = engines[which];
  Engine& second = engines[1 - which];

  std::vector<RowResult> results(b.results_size, SentinelResult());
  const Status s = first.sample(v, b.requests, results);
  if (!s.ok() && !b.bad.any) FailWith("a valid call was refused", s.message().c_str());
  if (!s.ok()) {
    NUCLEUS_FUZZ_CHECK(s.code() == StatusCode::kInvalidArgument, static_cast<int>(s.code()));
    NUCLEUS_FUZZ_CHECK(!s.message().empty());
    for (const RowResult& r : results) NUCLEUS_FUZZ_CHECK(IsSentinel(r));
  } else if (b.bad.any) {
    FailWith("a call with an out-of-range value was accepted", b.bad.why.c_str());
  }

  // probs: the same requests, into a padded output.
  const int64_t out_stride = std::max<int64_t>(v.vocab, 1) + in.Range(0, 3);
  const int64_t out_rows = std::max<int64_t>(v.rows, 1);
  std::vector<float> out(
      static_cast<size_t>(std::min<int64_t>(out_rows * out_stride, int64_t{1} << 24)), 7.5f);
  std::vector<Status> row_status(static_cast<size_t>(std::max<int64_t>(v.rows, 0)),
                                 Status::internal("untouched"));
  const bool out_fits = out_rows * out_stride <= (int64_t{1} << 24);
  const Status ps =
      out_fits ? second.probs(v, b.requests, out.data(), out_stride, row_status) : Status();
  if (!s.ok()) {
    // probs takes no results span; everything else it refuses alike.
    if (out_fits && b.results_size == static_cast<size_t>(std::max<int64_t>(v.rows, 0)) &&
        v.rows > 0) {
      NUCLEUS_FUZZ_CHECK(!ps.ok());
    }
    if (!ps.ok()) {
      for (float x : out) NUCLEUS_FUZZ_CHECK(x == 7.5f);
      for (const Status& st : row_status) NUCLEUS_FUZZ_CHECK(st.message() == "untouched");
    }
    return 0;
  }
  NUCLEUS_FUZZ_CHECK(ps.ok());

  const bool shared = b.requests.size() == 1;
  for (int64_t r = 0; r < v.rows; ++r) {
    const RowRequest& req = b.requests[shared ? 0 : static_cast<size_t>(r)];
    const RowTruth truth = Truth(v, r, req);
    CheckSampledRow(results[static_cast<size_t>(r)], req, truth, v.vocab);
    CheckProbsRow(out.data() + r * out_stride, row_status[static_cast<size_t>(r)], truth,
                  results[static_cast<size_t>(r)], v.vocab);
  }

  // Reproducibility: seeded rows give the same bits on the other engine, and
  // alone.
  std::vector<RowResult> again(b.results_size);
  NUCLEUS_FUZZ_CHECK(second.sample(v, b.requests, again).ok());
  for (int64_t r = 0; r < v.rows; ++r) {
    const RowRequest& req = b.requests[shared ? 0 : static_cast<size_t>(r)];
    if (req.seed) {
      NUCLEUS_FUZZ_CHECK(SameResult(results[static_cast<size_t>(r)], again[static_cast<size_t>(r)]),
                         r);
    }
  }
  const int64_t lone = in.Range(0, v.rows - 1);
  const RowRequest& lone_req = b.requests[shared ? 0 : static_cast<size_t>(lone)];
  if (lone_req.seed) {
    LogitsView one = v;
    one.rows = 1;
    one.data = static_cast<const char*>(v.data) +
               lone * (v.row_stride == 0 ? v.vocab : v.row_stride) * dtype_size(v.dtype);
    std::vector<RowResult> alone(1);
    NUCLEUS_FUZZ_CHECK(first.sample(one, {&lone_req, 1}, alone).ok());
    RowResult expected = results[static_cast<size_t>(lone)];
    // Messages name the row: "row 0" alone, "row <lone>" in the batch.
    if (!expected.status.ok()) {
      NUCLEUS_FUZZ_CHECK(!alone[0].status.ok());
      alone[0].status = expected.status;
    }
    NUCLEUS_FUZZ_CHECK(SameResult(alone[0], expected), lone);
  }
  return 0;
}

// Engine::verify: K drafts per row; target rows = rows * (K + 1).
inline int FuzzVerify(const uint8_t* bytes, size_t size) {
  FuzzInput in(bytes, size);
  int64_t k = in.Range(0, 4);
  Bad bad_k;
  if (in.OneIn(32)) {
    bad_k.Set("num_draft");
    const int64_t weird[] = {-1, -2, std::numeric_limits<int64_t>::min(),
                             std::numeric_limits<int64_t>::max()};
    k = weird[in.Range(0, 3)];
  }
  FuzzBatch b = MakeBatch(in, bad_k.any ? 1 : k + 1);
  const LogitsView& v = b.view;
  const int64_t groups = bad_k.any ? v.rows : v.rows / (k + 1);
  const int64_t safe_vocab = std::clamp<int64_t>(v.vocab, 1, int64_t{1} << 20);

  Bad bad = bad_k.any ? bad_k : b.bad;
  // A bad K gets a few drafts anyway: the call must be refused before it
  // looks at them.
  std::vector<int32_t> drafts(static_cast<size_t>(std::max<int64_t>(groups, 0) *
                                                  (bad_k.any ? 1 : std::max<int64_t>(k, 0))));
  for (int32_t& d : drafts) d = FuzzToken(in, safe_vocab, &bad);
  if (in.OneIn(32) && !drafts.empty()) {
    drafts.pop_back();
    bad.Set("one draft token too few");
  }
  std::vector<float> q;
  const float* draft_probs = nullptr;
  bool sum_at_edge = false;
  if (in.Bool() && !bad_k.any && !drafts.empty() && v.vocab > 0 && v.vocab <= (int64_t{1} << 20)) {
    q.resize(static_cast<size_t>(groups * k * v.vocab));
    SplitMix rng(in.Bits<uint32_t>());
    for (size_t i = 0; i < q.size(); ++i) {
      q[i] = static_cast<float>(rng.Next() >> 40) * 0x1.0p-24f / static_cast<float>(v.vocab);
    }
    // Each drafter row a distribution (sum 1), unless a special value lands.
    const auto row_sum = [&](size_t row) {
      double sum = 0.0;
      for (size_t t = 0; t < static_cast<size_t>(v.vocab); ++t) sum += q[row * v.vocab + t];
      return sum;
    };
    const size_t draft_rows = q.size() / static_cast<size_t>(v.vocab);
    for (size_t row = 0; row < draft_rows; ++row) {
      const double sum = row_sum(row);
      for (size_t t = 0; t < static_cast<size_t>(v.vocab); ++t) {
        q[row * v.vocab + t] = sum > 0.0 ? static_cast<float>(q[row * v.vocab + t] / sum)
                                         : 1.0f / static_cast<float>(v.vocab);
      }
    }
    for (int64_t n = in.Range(0, 2); n > 0; --n) {
      const float x = SpecialFloat(in);
      q[static_cast<size_t>(in.Range(0, static_cast<int64_t>(q.size()) - 1))] = x;
    }
    // After every write: a later value may replace a bad one.
    for (float x : q) {
      if (std::isnan(x) || x < 0.0f || x == kFuzzInf) bad.Set("a bad draft probability");
    }
    // A row's sum 1 within 0.01; right at that edge the engine's float
    // lanes may round either way, and either answer stands.
    for (size_t row = 0; !bad.any && row < draft_rows; ++row) {
      const double off = std::abs(row_sum(row) - 1.0);
      if (off > 0.0105 || std::isnan(off)) bad.Set("a draft row that does not sum to 1");
      if (off > 0.0095 && off <= 0.0105) sum_at_edge = true;
    }
    draft_probs = q.data();
  }

  FuzzEngines engines;
  Engine& engine = engines[in.Range(0, 1)];
  std::vector<VerifyResult> results(b.results_size);
  for (VerifyResult& r : results) {
    r.status = Status::internal("untouched");
    r.tokens = {-7};
  }
  const Status s = engine.verify(v, k, drafts, draft_probs, b.requests, results);
  if (!s.ok() && sum_at_edge && !bad.any) return 0;
  if (!s.ok() && !bad.any) FailWith("a valid verify call was refused", s.message().c_str());
  if (!s.ok()) {
    NUCLEUS_FUZZ_CHECK(s.code() == StatusCode::kInvalidArgument, static_cast<int>(s.code()));
    for (const VerifyResult& r : results) {
      NUCLEUS_FUZZ_CHECK(r.status.message() == "untouched" && r.tokens == std::vector<int32_t>{-7});
    }
    return 0;
  }
  if (bad.any) FailWith("a verify call with an out-of-range value was accepted", bad.why.c_str());
  const bool shared = b.requests.size() == 1;
  for (int64_t r = 0; r < groups; ++r) {
    const VerifyResult& res = results[static_cast<size_t>(r)];
    const RowRequest& req = b.requests[shared ? 0 : static_cast<size_t>(r)];
    if (!res.status.ok()) {
      NUCLEUS_FUZZ_CHECK(res.status.code() == StatusCode::kRowError);
      NUCLEUS_FUZZ_CHECK(res.tokens.empty() && res.accepted == 0);
      const int64_t named = NamedToken(res.status.message());
      NUCLEUS_FUZZ_CHECK(named < v.vocab, named);
      // The position that failed was reached: its rows before were accepted.
      continue;
    }
    NUCLEUS_FUZZ_CHECK(res.accepted >= 0 && res.accepted <= k, res.accepted);
    NUCLEUS_FUZZ_CHECK(res.tokens.size() == static_cast<size_t>(res.accepted) + 1);
    for (int32_t i = 0; i < res.accepted; ++i) {
      const int32_t draft = drafts[static_cast<size_t>(r * k + i)];
      NUCLEUS_FUZZ_CHECK(res.tokens[static_cast<size_t>(i)] == draft);
      // (a draft its drafter gave no probability is never accepted, but by a
      // greedy row, which accepts its argmax whatever q says)
      if (draft_probs && req.params.temperature != 0.0f) {
        NUCLEUS_FUZZ_CHECK(draft_probs[(r * k + i) * v.vocab + draft] > 0.0f, i);
      }
    }
    // Each position that was reached had a valid row; the token drawn at the
    // last one is not masked there.
    const int64_t at = r * (k + 1) + res.accepted;
    const RowTruth truth =
        Truth(v, at, req, std::span<const int32_t>(res.tokens).first(res.tokens.size() - 1));
    NUCLEUS_FUZZ_CHECK(!truth.must_fail(), at);
    const int32_t last = res.tokens.back();
    NUCLEUS_FUZZ_CHECK(last >= 0 && last < v.vocab, last);
    NUCLEUS_FUZZ_CHECK(std::isfinite(truth.x[static_cast<size_t>(last)]), last);
  }
  return 0;
}

}  // namespace nucleus::fuzz
