#include "engine/io/dump_writer.h"

#include <algorithm>
#include <cctype>
#include <cstring>
#include <vector>

#include "engine/io/file_io.h"
#include "engine/io/half.h"
#include "engine/io/npy_header.h"
#include "engine/io/safetensors_header.h"

namespace nucleus::detail {

DumpFormat dump_format_for_path(const std::string& path) {
  auto ends_with = [&](std::string_view suffix) {
    return path.size() >= suffix.size() &&
           std::equal(suffix.rbegin(), suffix.rend(), path.rbegin(), [](char a, char b) {
             return a == std::tolower(static_cast<unsigned char>(b));
           });
  };
  if (ends_with(".npy")) return DumpFormat::kNpy;
  if (ends_with(".safetensors")) return DumpFormat::kSafetensors;
  return DumpFormat::kRaw;
}

Status write_dump(const std::string& path, const float* values, int64_t rows, int64_t vocab,
                  const DumpWriteSpec& spec) {
  if (rows < 0 || vocab <= 0) {
    return Status::invalid_argument(path + ": rows = " + std::to_string(rows) +
                                    ", vocab = " + std::to_string(vocab) + " must be >= 0 and > 0");
  }
  std::vector<int64_t> shape(spec.shape.begin(), spec.shape.end());
  if (shape.empty()) shape = {rows, vocab};
  int64_t product = 1;
  for (int64_t d : shape) product *= d;
  if (product != rows * vocab || shape.back() != vocab) {
    return Status::invalid_argument(path + ": shape = " + shape_text(shape) +
                                    " does not hold rows × vocab = " + std::to_string(rows) +
                                    " × " + std::to_string(vocab));
  }
  const DumpFormat format =
      spec.format == DumpFormat::kAuto ? dump_format_for_path(path) : spec.format;
  std::string header;
  switch (format) {
    case DumpFormat::kNpy:
      if (spec.dtype == DType::kBFloat16) {
        return Status::invalid_argument(path + ": dtype = bf16 has no NumPy .npy encoding");
      }
      header = format_npy_header(spec.dtype, shape);
      break;
    case DumpFormat::kSafetensors:
      header = format_safetensors_header(spec.tensor, spec.dtype, shape);
      break;
    default:
      break;
  }
  Result<AtomicFile> file = AtomicFile::create(path);
  if (!file.ok()) return file.status();
  if (Status s = file->write(header); !s.ok()) return s;
  const int64_t n = rows * vocab;
  if (spec.dtype == DType::kFloat32) {
    if (Status s = file->write(values, static_cast<size_t>(n) * 4); !s.ok()) return s;
  } else {
    // Convert in chunks so that a large dump never needs a second full copy.
    std::vector<uint16_t> chunk(size_t{1} << 16);
    for (int64_t i = 0; i < n; i += static_cast<int64_t>(chunk.size())) {
      const int64_t m = std::min<int64_t>(static_cast<int64_t>(chunk.size()), n - i);
      for (int64_t j = 0; j < m; ++j) {
        chunk[j] = spec.dtype == DType::kFloat16 ? float_to_half_bits(values[i + j])
                                                 : float_to_bfloat16_bits(values[i + j]);
      }
      if (Status s = file->write(chunk.data(), static_cast<size_t>(m) * 2); !s.ok()) return s;
    }
  }
  return file->commit();
}

}  // namespace nucleus::detail
