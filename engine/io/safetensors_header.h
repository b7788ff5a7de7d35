// The .safetensors header: an 8-byte little-endian length, then a JSON object
// mapping tensor names to {"dtype", "shape", "data_offsets"} (offsets relative
// to the end of the header), plus an optional "__metadata__" entry.
// https://github.com/huggingface/safetensors#format
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "engine/io/file_io.h"
#include "nucleus/sampling.h"
#include "nucleus/status.h"

namespace nucleus::detail {

struct SafetensorsTensor {
  std::string name;
  std::string dtype;  // as written, e.g. "F32"
  std::vector<int64_t> shape;
  int64_t begin = 0;  // data_offsets, relative to data_start
  int64_t end = 0;
};

struct SafetensorsHeader {
  int64_t data_start = 0;  // 8 + the header length
  int64_t data_end = 0;    // where the last tensor ends, relative to data_start
  std::vector<SafetensorsTensor> tensors;
};

// The format's limit on the header's length (bytes): the reference
// implementation refuses headers over 100 MB.
inline constexpr int64_t kMaxSafetensorsHeaderBytes = int64_t{100} << 20;

// The header's length: the file's first 8 bytes (at `first`), little-endian.
inline uint64_t safetensors_header_length(const unsigned char* first) {
  uint64_t len = 0;
  for (int i = 7; i >= 0; --i) len = (len << 8) | first[i];
  return len;
}

// Parses the header and checks every tensor entry: field types, offsets
// that match shape × element size, tensors that follow one another without
// gaps or overlaps. A stream is read on as far as the header goes. The data's
// size is not checked here (a stream's is known only at its end).
Result<SafetensorsHeader> parse_safetensors_header(ByteSource& source);

// The data after the header (`data_size` bytes; at least that many when not
// `ended`) must be what the tensors cover: a tensor past its end is a
// truncated file, bytes after the last one a header that lies.
Status check_safetensors_data_size(const SafetensorsHeader& header, int64_t data_size, bool ended,
                                   const std::string& name);

// The tensor called `tensor`, or the only one when `tensor` is empty, with
// its dtype if nucleus can read it (F32, F16, BF16).
Result<const SafetensorsTensor*> select_safetensors_tensor(const SafetensorsHeader& header,
                                                           const std::string& tensor,
                                                           const std::string& name);
Result<DType> safetensors_dtype(const SafetensorsTensor& tensor, const std::string& name);

// A single-tensor header (length prefix and JSON), for the writers.
std::string format_safetensors_header(const std::string& tensor, DType dtype,
                                      std::span<const int64_t> shape);

}  // namespace nucleus::detail
