// How a dump's file name says its format: the rule the dump reader applies
// when a file does not start with a format's magic, shared with the tools
// that refuse a format before opening the file (bench --input).
#pragma once

#include <string>

namespace nucleus::detail {

// The extension of the path's file name, dot included and lower-cased
// ("" when the name has none).
std::string extension_of(const std::string& path);

// Whether an extension (as extension_of gives it) names a raw dump: .bin,
// .raw or .dat, read as raw little-endian rows only with a dtype and a vocab.
inline bool raw_dump_extension(const std::string& ext) {
  return ext == ".bin" || ext == ".raw" || ext == ".dat";
}

}  // namespace nucleus::detail
