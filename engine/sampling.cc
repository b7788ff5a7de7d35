// Small helpers over the request and result types.
#include "nucleus/sampling.h"
#include "nucleus/engine.h"

namespace nucleus {

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::kFloat32:
      return "f32";
    case DType::kFloat16:
      return "f16";
    case DType::kBFloat16:
      return "bf16";
  }
  return "?";
}

int dtype_size(DType dtype) { return dtype == DType::kFloat32 ? 4 : 2; }

const char* preset_name(Preset preset) {
  switch (preset) {
    case Preset::kHF:
      return "hf";
    case Preset::kVLLM:
      return "vllm";
    case Preset::kLlamaCpp:
      return "llama.cpp";
  }
  return "?";
}

std::optional<Preset> parse_preset(std::string_view name) {
  if (name == "hf") return Preset::kHF;
  if (name == "vllm") return Preset::kVLLM;
  if (name == "llama.cpp") return Preset::kLlamaCpp;
  return std::nullopt;
}

void RowResult::clear() {
  status = Status();
  tokens.clear();
  logprobs.clear();
  raw_logprobs.clear();
  ranks.clear();
  top_logprobs.clear();
  support = 0;
}

void VerifyResult::clear() {
  status = Status();
  accepted = 0;
  tokens.clear();
}

const char* version() { return NUCLEUS_VERSION; }

}  // namespace nucleus
