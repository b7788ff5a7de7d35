#include "engine/io/npy_header.h"

#include <cctype>
#include <cstring>
#include <limits>
#include <optional>

#include "engine/io/json_text.h"

namespace nucleus::detail {
namespace {

// NumPy itself refuses headers over 10000 bytes unless told otherwise; a
// larger bound still stops a corrupt length from allocating gigabytes.
constexpr int64_t kMaxHeaderBytes = int64_t{1} << 20;

std::string header_shown(std::string_view text) {
  constexpr size_t kMaxShown = 160;
  // (less the padding a header ends with)
  while (!text.empty() && (text.back() == ' ' || text.back() == '\n')) text.remove_suffix(1);
  return shown_text(text, kMaxShown);
}

// A parser for the subset of Python literals that .npy headers use:
// {'key': value, ...} with strings, True/False, integers and int tuples.
class DictParser {
 public:
  explicit DictParser(std::string_view text) : text_(text) {}

  // Fills `header`; on failure returns what was expected where.
  std::optional<std::string> parse(NpyHeader* header) {
    bool have_descr = false, have_order = false, have_shape = false;
    skip_space();
    if (!eat('{')) return expected("'{'");
    for (;;) {
      skip_space();
      if (eat('}')) break;
      std::string key;
      if (!parse_string(&key)) return expected("a quoted key or '}'");
      skip_space();
      if (!eat(':')) return expected("':' after '" + shown_text(key) + "'");
      skip_space();
      if (key == "descr") {
        const bool quoted = pos_ < text_.size() && (text_[pos_] == '\'' || text_[pos_] == '"');
        if (!parse_string(&header->descr)) {
          if (quoted && pos_ >= text_.size()) return expected("the end of the 'descr' string");
          return "field 'descr' is not a simple dtype string (structured dtypes are not "
                 "supported)";
        }
        have_descr = true;
      } else if (key == "fortran_order") {
        if (!parse_bool(&header->fortran_order)) return expected("True or False");
        have_order = true;
      } else if (key == "shape") {
        if (!parse_shape(&header->shape)) return expected("a tuple of non-negative integers");
        have_shape = true;
      } else {
        return "unknown field '" + shown_text(key) + "'";
      }
      skip_space();
      if (eat(',')) continue;
      skip_space();
      if (eat('}')) break;
      return expected("',' or '}'");
    }
    // (the padding after the dict is spaces and a newline; NumPy refuses
    // anything else, as a Python literal would)
    skip_space();
    if (pos_ < text_.size()) return expected("nothing after the closing '}'");
    if (!have_descr) return std::string("field 'descr' is missing");
    if (!have_order) return std::string("field 'fortran_order' is missing");
    if (!have_shape) return std::string("field 'shape' is missing");
    return std::nullopt;
  }

 private:
  std::string expected(const std::string& what) const {
    return "expected " + what + " at byte " + std::to_string(pos_) +
           (pos_ >= text_.size() ? " (where the header ends: is its length field short?)" : "");
  }
  void skip_space() {
    while (pos_ < text_.size() && std::isspace(static_cast<unsigned char>(text_[pos_]))) ++pos_;
  }
  bool eat(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }
  bool parse_string(std::string* out) {
    if (pos_ >= text_.size() || (text_[pos_] != '\'' && text_[pos_] != '"')) return false;
    const char quote = text_[pos_++];
    out->clear();
    while (pos_ < text_.size() && text_[pos_] != quote) {
      if (text_[pos_] == '\\') return false;  // never needed by a dtype or key
      out->push_back(text_[pos_++]);
    }
    return eat(quote);
  }
  bool parse_bool(bool* out) {
    if (text_.substr(pos_, 4) == "True") {
      pos_ += 4;
      *out = true;
      return true;
    }
    if (text_.substr(pos_, 5) == "False") {
      pos_ += 5;
      *out = false;
      return true;
    }
    return false;
  }
  bool parse_int(int64_t* out) {
    const size_t start = pos_;
    int64_t value = 0;
    while (pos_ < text_.size() && std::isdigit(static_cast<unsigned char>(text_[pos_]))) {
      const int digit = text_[pos_] - '0';
      if (value > (std::numeric_limits<int64_t>::max() - digit) / 10) return false;
      value = value * 10 + digit;
      ++pos_;
    }
    if (pos_ == start) return false;
    if (pos_ < text_.size() && text_[pos_] == 'L') ++pos_;  // Python 2 longs
    *out = value;
    return true;
  }
  bool parse_shape(std::vector<int64_t>* shape) {
    shape->clear();
    if (!eat('(')) return false;
    for (;;) {
      skip_space();
      if (eat(')')) return true;
      int64_t dim = 0;
      if (!parse_int(&dim)) return false;
      shape->push_back(dim);
      skip_space();
      if (eat(',')) continue;
      skip_space();
      return eat(')');
    }
  }

  std::string_view text_;
  size_t pos_ = 0;
};

}  // namespace

std::string shape_text(std::span<const int64_t> shape) {
  std::string out = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) out += ", ";
    out += std::to_string(shape[i]);
  }
  if (shape.size() == 1) out += ",";
  return out + ")";
}

Result<NpyHeader> parse_npy_header(ByteSource& source) {
  const std::string& name = source.name();
  unsigned char preamble[12] = {};
  // (a stream is read on as far as the header goes, whatever it read ahead)
  if (Status s = source.fill(12); !s.ok()) return s;
  if (source.size() < 10) {
    return Status::io_error(name + ": truncated: " + std::to_string(source.size()) +
                            " bytes, fewer than a NumPy header's 10");
  }
  if (Status s = source.read_at(0, 10, preamble); !s.ok()) return s;
  if (std::memcmp(preamble, kNpyMagic, sizeof kNpyMagic) != 0) {
    return Status::io_error(name +
                            ": not a NumPy .npy file: it does not start with the magic "
                            "\"\\x93NUMPY\"");
  }
  NpyHeader header;
  header.major_version = preamble[6];
  int64_t header_len = 0;
  int64_t prefix = 0;
  // (a minor version other than 0 is none NumPy wrote, nor reads)
  const bool known = preamble[7] == 0 && header.major_version >= 1 && header.major_version <= 3;
  if (!known) {
    return Status::io_error(name + ": format version = " + std::to_string(preamble[6]) + "." +
                            std::to_string(preamble[7]) +
                            " is not a NumPy .npy version this reader knows (1.0, 2.0, 3.0)");
  }
  if (header.major_version == 1) {
    header_len = preamble[8] | (preamble[9] << 8);
    prefix = 10;
  } else {
    if (Status s = source.read_at(10, 2, preamble + 10); !s.ok()) return s;
    header_len = static_cast<int64_t>(preamble[8]) | (static_cast<int64_t>(preamble[9]) << 8) |
                 (static_cast<int64_t>(preamble[10]) << 16) |
                 (static_cast<int64_t>(preamble[11]) << 24);
    prefix = 12;
  }
  if (header_len > kMaxHeaderBytes) {
    return Status::io_error(name + ": header length = " + std::to_string(header_len) +
                            " bytes is implausibly large (the limit is " +
                            std::to_string(kMaxHeaderBytes) + ")");
  }
  if (Status s = source.fill(prefix + header_len); !s.ok()) return s;
  if (prefix + header_len > source.size()) {
    return Status::io_error(name + ": truncated: the header length says " +
                            std::to_string(header_len) + " bytes but the file has only " +
                            std::to_string(source.size() - prefix) + " after the preamble");
  }
  header.text.resize(static_cast<size_t>(header_len));
  if (Status s = source.read_at(prefix, header_len, header.text.data()); !s.ok()) return s;
  header.data_offset = prefix + header_len;
  if (std::optional<std::string> error = DictParser(header.text).parse(&header)) {
    return Status::io_error(name + ": malformed NumPy header: " + *error + " in " +
                            header_shown(header.text));
  }
  return header;
}

Result<DType> npy_dtype(const NpyHeader& header, const std::string& name) {
  const std::string& d = header.descr;
  const std::string field = name + ": header field 'descr' = '" + shown_text(d) + "'";
  // Byte order: '<' little, '>' big, '=' native, '|' not applicable.
  const char order = d.empty() ? '\0' : d[0];
  const std::string type =
      (order == '<' || order == '>' || order == '=' || order == '|') ? d.substr(1) : d;
  if (type != "f4" && type != "f2") {
    return Status::io_error(field + " is not a supported dtype (float32 '<f4' or float16 '<f2')");
  }
  if (order == '>') {
    return Status::io_error(field +
                            " is big-endian; only little-endian data is supported (save it "
                            "with arr.astype(arr.dtype.newbyteorder('<')))");
  }
  if (order == '|') {
    return Status::io_error(field + " has no byte order, which a 2- or 4-byte float needs");
  }
  return type == "f4" ? DType::kFloat32 : DType::kFloat16;
}

std::string format_npy_header(DType dtype, std::span<const int64_t> shape) {
  const char* descr = dtype == DType::kFloat16 ? "<f2" : "<f4";
  std::string dict = std::string("{'descr': '") + descr +
                     "', 'fortran_order': False, 'shape': " + shape_text(shape) + ", }";
  // Version 1.0 stores the length in 2 bytes; fall back to 2.0 past that.
  const bool v2 = dict.size() + 1 + 10 > 65535;
  const size_t prefix = v2 ? 12 : 10;
  const size_t total = (prefix + dict.size() + 1 + 63) / 64 * 64;
  dict.append(total - prefix - dict.size() - 1, ' ');
  dict.push_back('\n');
  std::string out(reinterpret_cast<const char*>(kNpyMagic), sizeof kNpyMagic);
  out.push_back(static_cast<char>(v2 ? 2 : 1));
  out.push_back(0);
  const size_t len = dict.size();
  out.push_back(static_cast<char>(len & 0xff));
  out.push_back(static_cast<char>((len >> 8) & 0xff));
  if (v2) {
    out.push_back(static_cast<char>((len >> 16) & 0xff));
    out.push_back(static_cast<char>((len >> 24) & 0xff));
  }
  return out + dict;
}

}  // namespace nucleus::detail
