// Writes float32 logits as a dump of any readable format and dtype, through
// an AtomicFile. Used by the demo-dump generator and by the tests, which need
// every format the readers accept.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "nucleus/dump.h"
#include "nucleus/sampling.h"
#include "nucleus/status.h"

namespace nucleus::detail {

struct DumpWriteSpec {
  DumpFormat format = DumpFormat::kNpy;  // kAuto: by the path's extension
  DType dtype = DType::kFloat32;         // values are rounded to it (nearest even)
  std::string tensor = "logits";         // safetensors only
  // The stored shape; empty means (rows, vocab). Its product must be
  // rows × vocab and its last axis vocab.
  std::span<const int64_t> shape;
};

// `values` holds rows × vocab float32 logits, row-major.
Status write_dump(const std::string& path, const float* values, int64_t rows, int64_t vocab,
                  const DumpWriteSpec& spec);

// The format DumpReader would pick for `path` given a dtype and vocab.
DumpFormat dump_format_for_path(const std::string& path);

}  // namespace nucleus::detail
