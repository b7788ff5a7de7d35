// A server-style decode loop over nucleus: a batch of requests with their own
// sampling parameters, seeds and histories, one Engine::sample call per step.
//
// The "model" is a toy bigram table: the logits for the next token depend on
// the last token only (plus a fixed preference for a few "words"), enough to
// show the loop a server runs:
//   1. the model writes one logit row per live request into a batch buffer,
//   2. one call samples every row with that request's parameters, seed and
//      step (so a request's text never depends on its batch neighbours),
//   3. each request appends its token to its history, which feeds the
//      repetition / frequency / presence penalties of the next step.
//
// Run: build/examples/nucleus_example_decode_loop
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "nucleus/engine.h"

namespace {

constexpr int64_t kVocab = 4096;
constexpr int kSteps = 12;

// Deterministic toy model: logits[t] = bigram(last, t) + unigram(t).
class ToyModel {
 public:
  explicit ToyModel(uint64_t seed) : unigram_(kVocab) {
    std::mt19937_64 gen(seed);
    std::normal_distribution<float> normal(0.0f, 1.0f);
    for (float& u : unigram_) u = 2.0f * normal(gen);
  }
  void logits(int32_t last, float* out) const {
    std::mt19937_64 gen(static_cast<uint64_t>(last) * 7919 + 17);
    std::normal_distribution<float> normal(0.0f, 1.5f);
    for (int64_t t = 0; t < kVocab; ++t) out[t] = unigram_[static_cast<size_t>(t)] + normal(gen);
    // A few continuations the "context" strongly suggests.
    for (int j = 0; j < 4; ++j) out[(last * 31 + j * 97) % kVocab] += 6.0f - j;
  }

 private:
  std::vector<float> unigram_;
};

struct Request {
  std::string name;
  nucleus::SamplingParams params;
  uint64_t seed;
  std::vector<int32_t> prompt;
  std::vector<int32_t> generated;
};

// Runs kSteps decoding steps for every request in one batch per step.
bool decode(nucleus::Engine& engine, const ToyModel& model, std::vector<Request>& requests) {
  const auto rows = static_cast<int64_t>(requests.size());
  std::vector<float> batch(static_cast<size_t>(rows * kVocab));
  std::vector<nucleus::RowRequest> row_requests(static_cast<size_t>(rows));
  std::vector<nucleus::RowResult> results(static_cast<size_t>(rows));  // reused every step
  for (int step = 0; step < kSteps; ++step) {
    for (int64_t r = 0; r < rows; ++r) {
      Request& req = requests[static_cast<size_t>(r)];
      const int32_t last = req.generated.empty() ? req.prompt.back() : req.generated.back();
      model.logits(last, batch.data() + r * kVocab);
      nucleus::RowRequest& row = row_requests[static_cast<size_t>(r)];
      row.params = req.params;
      row.seed = req.seed;  // per request, never per batch slot
      row.step = static_cast<uint64_t>(step);
      row.prompt_tokens = req.prompt;
      row.generated_tokens = req.generated;
    }
    const nucleus::LogitsView view{batch.data(), rows, kVocab, kVocab, nucleus::DType::kFloat32};
    const nucleus::Status status = engine.sample(view, row_requests, results);
    if (!status.ok()) {
      std::fprintf(stderr, "decode_loop: %s\n", status.to_string().c_str());
      return false;
    }
    for (int64_t r = 0; r < rows; ++r) {
      const nucleus::RowResult& res = results[static_cast<size_t>(r)];
      if (!res.status.ok()) {
        std::fprintf(stderr, "decode_loop: %s\n", res.status.to_string().c_str());
        return false;
      }
      requests[static_cast<size_t>(r)].generated.push_back(res.tokens[0]);
    }
  }
  return true;
}

}  // namespace

int main() {
  const ToyModel model(42);
  std::vector<Request> requests(4);
  requests[0] = {"greedy", {}, 1, {11, 12, 13}, {}};
  requests[0].params.temperature = 0.0f;
  requests[1] = {"top-p 0.9 T 0.8", {}, 2, {21, 22}, {}};
  requests[1].params.temperature = 0.8f;
  requests[1].params.top_p = 0.9f;
  requests[2] = {"top-k 40 + rep 1.3", {}, 3, {31}, {}};
  requests[2].params.top_k = 40;
  requests[2].params.repetition_penalty = 1.3f;
  requests[3] = {"min-p 0.1 + freq/pres (vllm)", {}, 4, {41, 42, 43, 44}, {}};
  requests[3].params.min_p = 0.1f;
  requests[3].params.frequency_penalty = 0.5f;
  requests[3].params.presence_penalty = 0.3f;
  requests[3].params.preset = nucleus::Preset::kVLLM;

  nucleus::Engine engine({.max_threads = 2, .seed = std::nullopt});
  const std::vector<Request> initial = requests;
  if (!decode(engine, model, requests)) return 1;
  for (const Request& req : requests) {
    std::printf("%-30s", req.name.c_str());
    for (int32_t t : req.generated) std::printf(" %d", t);
    std::printf("\n");
  }

  // The reproducibility contract in action: each request decoded alone, on
  // a one-thread engine, gives the same text as in the batch.
  nucleus::Engine solo_engine({.max_threads = 1, .seed = std::nullopt});
  for (size_t i = 0; i < initial.size(); ++i) {
    std::vector<Request> alone = {initial[i]};
    if (!decode(solo_engine, model, alone)) return 1;
    if (alone[0].generated != requests[i].generated) {
      std::printf("request %zu differs when decoded alone\n", i);
      return 1;
    }
  }
  std::printf("every request matches its solo run\n");
  return 0;
}
