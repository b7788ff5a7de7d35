#include "engine/io/safetensors_header.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>

#include "engine/io/json_text.h"
#include "engine/io/npy_header.h"

namespace nucleus::detail {
namespace {

using Json = nlohmann::json;

// Element sizes of every dtype the format defines, so that the offsets of
// tensors nucleus does not read can still be checked.
std::optional<int64_t> element_size(const std::string& dtype) {
  if (dtype == "BOOL" || dtype == "U8" || dtype == "I8" || dtype == "F8_E5M2" ||
      dtype == "F8_E4M3" || dtype == "F8_E8M0") {
    return 1;
  }
  if (dtype == "I16" || dtype == "U16" || dtype == "F16" || dtype == "BF16") return 2;
  if (dtype == "I32" || dtype == "U32" || dtype == "F32") return 4;
  if (dtype == "I64" || dtype == "U64" || dtype == "F64" || dtype == "C64") return 8;
  return std::nullopt;
}

std::optional<int64_t> as_count(const Json& value) {
  if (value.is_number_unsigned()) {
    const auto v = value.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(v);
  }
  if (value.is_number_integer()) {
    const auto v = value.get<int64_t>();
    if (v < 0) return std::nullopt;
    return v;
  }
  return std::nullopt;
}

Status check_tensor(const std::string& key, const Json& entry, const std::string& name,
                    SafetensorsTensor* out) {
  const std::string where = name + ": tensor '" + shown_text(key) + "'";
  if (!entry.is_object()) {
    return Status::io_error(where + " = " + json_shown(entry) + " is not a JSON object");
  }
  const auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string()) {
    return Status::io_error(where + ": field 'dtype' is missing or not a string");
  }
  const auto shape = entry.find("shape");
  if (shape == entry.end() || !shape->is_array()) {
    return Status::io_error(where + ": field 'shape' is missing or not an array");
  }
  const auto offsets = entry.find("data_offsets");
  if (offsets == entry.end() || !offsets->is_array() || offsets->size() != 2) {
    return Status::io_error(where + ": field 'data_offsets' is missing or not [begin, end]");
  }
  out->name = key;
  out->dtype = dtype->get<std::string>();
  out->shape.clear();
  int64_t elements = 1;
  bool overflow = false;
  for (const Json& dim : *shape) {
    const std::optional<int64_t> d = as_count(dim);
    if (!d) {
      return Status::io_error(where + ": field 'shape' = " + json_shown(*shape) +
                              " holds something other than a non-negative integer");
    }
    out->shape.push_back(*d);
    if (*d != 0 && elements > std::numeric_limits<int64_t>::max() / 8 / *d) overflow = true;
    if (!overflow) elements *= *d;  // once overflowing, stop multiplying (no UB)
  }
  const std::optional<int64_t> begin = as_count((*offsets)[0]);
  const std::optional<int64_t> end = as_count((*offsets)[1]);
  if (!begin || !end || *begin > *end) {
    return Status::io_error(where + ": field 'data_offsets' = " + json_shown(*offsets) +
                            " is not a pair of non-negative integers begin <= end");
  }
  out->begin = *begin;
  out->end = *end;
  if (const std::optional<int64_t> size = element_size(out->dtype)) {
    if (overflow || *end - *begin != elements * *size) {
      return Status::io_error(where + ": field 'shape' = " + shape_text(out->shape) + " of " +
                              out->dtype + " needs " +
                              (overflow ? std::string("more") : std::to_string(elements * *size)) +
                              " bytes but 'data_offsets' = " + json_shown(*offsets) + " span " +
                              std::to_string(*end - *begin));
    }
  }
  return Status();
}

// As the reference reader: the tensors' byte ranges follow one another
// from the start of the data, without gaps or overlaps, so that no byte of
// the file is read as two tensors. Returns where the last one ends.
Result<int64_t> check_tiling(const std::vector<SafetensorsTensor>& tensors,
                             const std::string& name) {
  std::vector<const SafetensorsTensor*> by_begin;
  for (const SafetensorsTensor& t : tensors) by_begin.push_back(&t);
  // (by begin, then end, as the reference reader: an empty tensor at the
  // offset where another starts comes first, whatever the names' order)
  std::stable_sort(by_begin.begin(), by_begin.end(), [](const auto* a, const auto* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  int64_t at = 0;
  for (const SafetensorsTensor* t : by_begin) {
    if (t->begin != at) {
      return Status::io_error(name + ": tensor '" + shown_text(t->name) +
                              "': field 'data_offsets' begins at byte " + std::to_string(t->begin) +
                              " but the tensors before it end at " + std::to_string(at) +
                              (t->begin > at ? " (a gap)" : " (an overlap)") +
                              ": the header does not describe the data");
    }
    at = t->end;
  }
  return at;
}

// "[begin,end]", as the header writes a tensor's data_offsets.
std::string offsets_text(const SafetensorsTensor& t) {
  // (appended, not "[" + ...: GCC 12 warns -Wrestrict about that at -O3)
  std::string text(1, '[');
  text += std::to_string(t.begin);
  text += ',';
  text += std::to_string(t.end);
  text += ']';
  return text;
}

}  // namespace

Result<SafetensorsHeader> parse_safetensors_header(ByteSource& source) {
  const std::string& name = source.name();
  // (a stream is read on as far as the header goes, whatever it read ahead)
  if (Status s = source.fill(8); !s.ok()) return s;
  if (source.size() < 8) {
    return Status::io_error(name + ": truncated: " + std::to_string(source.size()) +
                            " bytes, fewer than the 8-byte .safetensors header length");
  }
  unsigned char len_bytes[8];
  if (Status s = source.read_at(0, 8, len_bytes); !s.ok()) return s;
  const uint64_t len = safetensors_header_length(len_bytes);
  if (len > static_cast<uint64_t>(kMaxSafetensorsHeaderBytes)) {
    return Status::io_error(name + ": header length = " + std::to_string(len) +
                            " bytes exceeds the format's limit of 100 MB; not a .safetensors "
                            "file?");
  }
  const auto header_len = static_cast<int64_t>(len);
  if (Status s = source.fill(8 + header_len); !s.ok()) return s;
  if (8 + header_len > source.size()) {
    return Status::io_error(name + ": truncated: the header length says " +
                            std::to_string(header_len) + " bytes but the file has only " +
                            std::to_string(source.size() - 8) + " after it");
  }
  // (parsed where it lies when the input is in memory: a pipe's header is
  // not copied again)
  std::string copy;
  std::string_view text;
  if (!source.is_file() && source.readable_from() == 0) {
    text = std::string_view(reinterpret_cast<const char*>(source.bytes()) + 8,
                            static_cast<size_t>(header_len));
  } else {
    copy.resize(static_cast<size_t>(header_len));
    if (Status s = source.read_at(8, header_len, copy.data()); !s.ok()) return s;
    text = copy;
  }

  SafetensorsHeader header;
  header.data_start = 8 + header_len;
  try {
    Json root;
    if (std::string error; !parse_json(text, &root, &error)) {
      return Status::io_error(name + ": header: " + error + "; it begins " + shown_text(text));
    }
    if (!root.is_object()) {
      return Status::io_error(name + ": the header is " + std::string(root.type_name()) +
                              ", not a JSON object");
    }
    for (const auto& [key, entry] : root.items()) {
      if (key == "__metadata__") continue;
      SafetensorsTensor tensor;
      if (Status s = check_tensor(key, entry, name, &tensor); !s.ok()) return s;
      header.tensors.push_back(std::move(tensor));
    }
    // (a file without tensors is refused as such when one is chosen)
    Result<int64_t> data_end = check_tiling(header.tensors, name);
    if (!data_end.ok()) return data_end.status();
    if (*data_end > std::numeric_limits<int64_t>::max() - header.data_start) {
      return Status::io_error(name + ": the tensors end at byte " + std::to_string(*data_end) +
                              " of the data, past 2^63 bytes after the header: the file is "
                              "truncated or the header is wrong");
    }
    header.data_end = *data_end;
  } catch (const std::exception& e) {
    // The checks above guard every access; this only keeps a surprise from
    // escaping as an exception.
    return Status::io_error(name + ": cannot read the header: " + e.what());
  }
  return header;
}

Status check_safetensors_data_size(const SafetensorsHeader& header, int64_t data_size, bool ended,
                                   const std::string& name) {
  if (ended ? header.data_end == data_size : header.data_end >= data_size) return Status();
  if (header.data_end > data_size) {
    // (the first tensor, in the header's order, that the data does not reach)
    for (const SafetensorsTensor& t : header.tensors) {
      if (t.end <= data_size) continue;
      return Status::io_error(name + ": tensor '" + shown_text(t.name) +
                              "': field 'data_offsets' = " + offsets_text(t) +
                              " reaches past the end of the data (" + std::to_string(data_size) +
                              " bytes): the file is truncated or the header is wrong");
    }
  }
  return Status::io_error(
      name + ": the tensors end at byte " + std::to_string(header.data_end) +
      " of the data but the " + (ended ? "file holds " : "input holds at least ") +
      std::to_string(data_size) + " bytes after the header: the header does not describe the data");
}

Result<const SafetensorsTensor*> select_safetensors_tensor(const SafetensorsHeader& header,
                                                           const std::string& tensor,
                                                           const std::string& name) {
  std::string names;
  for (const SafetensorsTensor& t : header.tensors) {
    if (!tensor.empty() && t.name == tensor) return &t;
    names += (names.empty() ? "'" : ", '") + shown_text(t.name) + "'";
  }
  if (header.tensors.empty()) return Status::io_error(name + ": the file holds no tensor");
  if (!tensor.empty()) {
    return Status::io_error(name + ": tensor = '" + tensor + "' is not in the file, which holds " +
                            names);
  }
  if (header.tensors.size() > 1) {
    return Status::io_error(name + ": the file holds " + std::to_string(header.tensors.size()) +
                            " tensors (" + names + "); choose one by name");
  }
  return &header.tensors.front();
}

Result<DType> safetensors_dtype(const SafetensorsTensor& tensor, const std::string& name) {
  if (tensor.dtype == "F32") return DType::kFloat32;
  if (tensor.dtype == "F16") return DType::kFloat16;
  if (tensor.dtype == "BF16") return DType::kBFloat16;
  return Status::io_error(name + ": tensor '" + shown_text(tensor.name) + "': field 'dtype' = '" +
                          shown_text(tensor.dtype) +
                          "' is not a supported dtype (F32, F16 or BF16)");
}

std::string format_safetensors_header(const std::string& tensor, DType dtype,
                                      std::span<const int64_t> shape) {
  int64_t bytes = dtype_size(dtype);
  for (int64_t d : shape) bytes *= d;
  const char* type = dtype == DType::kFloat32 ? "F32" : dtype == DType::kFloat16 ? "F16" : "BF16";
  nlohmann::ordered_json root;
  root[tensor] = {{"dtype", type},
                  {"shape", std::vector<int64_t>(shape.begin(), shape.end())},
                  {"data_offsets", {0, bytes}}};
  std::string json = root.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  // Pad with spaces so that the data starts 8-byte aligned, as the reference
  // writer does.
  json.append((8 - json.size() % 8) % 8, ' ');
  std::string out(8, '\0');
  uint64_t len = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  return out + json;
}

}  // namespace nucleus::detail
