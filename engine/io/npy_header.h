// The NumPy .npy header (format versions 1.0, 2.0 and 3.0): the magic, the
// header length and the Python dict literal that describes the array.
// https://numpy.org/doc/stable/reference/generated/numpy.lib.format.html
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "engine/io/file_io.h"
#include "nucleus/sampling.h"
#include "nucleus/status.h"

namespace nucleus::detail {

inline constexpr unsigned char kNpyMagic[6] = {0x93, 'N', 'U', 'M', 'P', 'Y'};

struct NpyHeader {
  int major_version = 1;
  std::string descr;  // e.g. "<f4"
  bool fortran_order = false;
  std::vector<int64_t> shape;
  int64_t data_offset = 0;  // where the array data starts
  std::string text;         // the dict literal, for messages
};

// Parses and checks the header's syntax; says nothing yet about whether
// nucleus can read the dtype or whether the data fits the file.
Result<NpyHeader> parse_npy_header(ByteSource& source);

// The header's dtype, or an error naming the field and value: big-endian
// data, and any dtype other than float32 and float16, are rejected.
Result<DType> npy_dtype(const NpyHeader& header, const std::string& name);

// The whole preamble (magic, version, length, dict, padding) for a C-order
// array: version 1.0 unless the dict needs 2.0, padded so that the data
// starts on a 64-byte boundary as NumPy does.
std::string format_npy_header(DType dtype, std::span<const int64_t> shape);

// "(8, 32000)" or "(5,)", as Python prints a shape.
std::string shape_text(std::span<const int64_t> shape);

}  // namespace nucleus::detail
