// DumpReader: validates a dump's header against its size, then reads it one
// block of rows at a time.
#include <algorithm>
#include <array>
#include <bit>
#include <cstring>
#include <limits>
#include <new>
#include <optional>
#include <utility>

#include "engine/ascii_lower.h"
#include "engine/io/dump_extension.h"
#include "engine/io/file_io.h"
#include "engine/io/half.h"
#include "engine/io/json_text.h"
#include "engine/io/npy_header.h"
#include "engine/io/safetensors_header.h"
#include "engine/row/params_check.h"
#include "nucleus/dump.h"

namespace nucleus {

using detail::ByteSource;

static_assert(std::endian::native == std::endian::little,
              "the dump readers hand little-endian data to the engine as is");

const char* dump_format_name(DumpFormat format) {
  switch (format) {
    case DumpFormat::kAuto:
      return "auto";
    case DumpFormat::kNpy:
      return "npy";
    case DumpFormat::kSafetensors:
      return "safetensors";
    case DumpFormat::kRaw:
      return "raw";
  }
  return "?";
}

std::optional<DumpFormat> parse_dump_format(std::string_view name) {
  if (name == "auto") return DumpFormat::kAuto;
  if (name == "npy") return DumpFormat::kNpy;
  if (name == "safetensors") return DumpFormat::kSafetensors;
  if (name == "raw") return DumpFormat::kRaw;
  return std::nullopt;
}

std::optional<DType> parse_dtype(std::string_view name) {
  if (name == "f32" || name == "float32") return DType::kFloat32;
  if (name == "f16" || name == "float16" || name == "half") return DType::kFloat16;
  if (name == "bf16" || name == "bfloat16") return DType::kBFloat16;
  return std::nullopt;
}

std::string detail::extension_of(const std::string& path) {
  const size_t slash = path.rfind('/');
  const size_t dot = path.rfind('.');
  if (dot == std::string::npos || (slash != std::string::npos && dot < slash)) return "";
  return detail::ascii_lower(std::string_view(path).substr(dot));
}

namespace {

// What a raw read of the dump still needs ("its dtype and vocab", or the
// one of the two that is missing).
std::string raw_needs(const DumpOptions& options) {
  if (!options.dtype && options.vocab <= 0) return "its dtype and vocab";
  return options.dtype ? "its vocab" : "its dtype";
}

// The format of a dump whose options say kAuto.
Result<DumpFormat> detect_format(const std::string& path, ByteSource& source,
                                 const DumpOptions& options) {
  const std::string& name = source.name();
  if (!source.is_file() || path == "-") {
    // Standard input or a pipe has no extension: sniff the NumPy magic, or
    // a .safetensors header's length (at most 100 MB) and the start of its
    // JSON object, '{"' (raw rows rarely start so: a row would have to
    // begin with a tiny value, three zeros and 0x227b; --input-format raw
    // reads them all the same).
    unsigned char magic[10] = {};
    if (Status s = source.fill(sizeof magic); !s.ok()) return s;
    const int64_t got = std::min<int64_t>(source.size(), sizeof magic);
    if (Status s = source.read_at(0, got, magic); !s.ok()) return s;
    if (got >= static_cast<int64_t>(sizeof detail::kNpyMagic) &&
        std::memcmp(magic, detail::kNpyMagic, sizeof detail::kNpyMagic) == 0) {
      return DumpFormat::kNpy;
    }
    const uint64_t header_len = detail::safetensors_header_length(magic);
    if (got == sizeof magic && magic[8] == '{' && magic[9] == '"' && header_len >= 2 &&
        header_len <= static_cast<uint64_t>(detail::kMaxSafetensorsHeaderBytes)) {
      return DumpFormat::kSafetensors;
    }
    if (!options.dtype || options.vocab <= 0) {
      return Status::io_error(name +
                              ": unknown format: the input does not start with the NumPy magic "
                              "or a .safetensors header, and reading it as a raw dump needs " +
                              raw_needs(options));
    }
    return DumpFormat::kRaw;
  }
  const std::string ext = detail::extension_of(path);
  if (ext == ".npy") return DumpFormat::kNpy;
  if (ext == ".safetensors") return DumpFormat::kSafetensors;
  // (never raw rows, whatever dtype and vocab are given: they would be its
  // zip headers and compressed bytes)
  if (ext == ".npz") {
    return Status::io_error(name +
                            ": a NumPy archive (.npz, a zip of arrays) is not a dump: save the "
                            "logits array with numpy.save as a .npy");
  }
  if (options.dtype && options.vocab > 0) return DumpFormat::kRaw;
  if (detail::raw_dump_extension(ext)) {
    return Status::io_error(name + ": a raw dump (extension '" + ext + "') needs " +
                            raw_needs(options) + " to be given");
  }
  return Status::io_error(name + ": unknown format: extension = '" + ext +
                          "' is not .npy or .safetensors; to read the file as raw "
                          "little-endian rows, give " +
                          raw_needs(options));
}

// rows × vocab from a stored shape: the last axis is the vocabulary and the
// leading axes flatten into rows (a 1-D array is one row).
Status rows_and_vocab(const std::vector<int64_t>& shape, const std::string& field, DumpInfo* info) {
  const std::string where = field + " = " + detail::shape_text(shape);
  if (shape.empty()) return Status::io_error(where + " is a scalar, not rows of logits");
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < shape.size(); ++i) {
    if (shape[i] != 0 && rows > std::numeric_limits<int64_t>::max() / shape[i]) {
      return Status::io_error(where + " is too large");
    }
    rows *= shape[i];
  }
  const int64_t vocab = shape.back();
  if (vocab == 0 || rows == 0) return Status::io_error(where + " holds no logits");
  if (vocab > std::numeric_limits<int32_t>::max()) {
    return Status::io_error(where + ": vocab " + std::to_string(vocab) +
                            " does not fit token ids (int32)");
  }
  info->rows = rows;
  info->vocab = vocab;
  return Status();
}

// A pipe is read ahead by this much, or a block if that is less, before it
// is streamed (a header longer than that is read on, ByteSource::fill): a
// pipe that ends there is held whole and checked at open. Little next to a
// block; it is held until the reads pass it.
constexpr int64_t kReadAhead = int64_t{2} << 20;
// After a stream's last row, this much more is read to see whether it ends
// (and to count what follows, when it does).
constexpr int64_t kTrailingLimit = int64_t{1} << 20;

// The data that the header promises must be exactly the data there is:
// fewer bytes is a truncated file, more is a header that lies about the shape.
// A stream that has not ended (`ended` false) holds at least `available`
// bytes: only more than the header's, or a shape past 2^63 bytes, is wrong.
Status check_data_size(const DumpInfo& info, int64_t available, const std::string& field,
                       bool ended = true) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  const int64_t item = dtype_size(info.dtype);
  // (the data's size past 2^63, or the data and the header before it)
  const bool data_overflow = info.rows > kMax / item / info.vocab;
  const int64_t needed = data_overflow ? -1 : info.rows * info.vocab * item;
  const bool overflow = data_overflow || needed > kMax - info.data_offset;
  if (!overflow && (ended ? needed == available : needed >= available)) return Status();
  std::string what =
      field + " = " + detail::shape_text(info.shape) + " of " + dtype_name(info.dtype) + " needs " +
      (data_overflow ? std::string("more than 2^63") : std::to_string(needed)) + " bytes of data";
  if (ended) {
    what += " but the file holds " + std::to_string(available);
  } else if (!overflow) {
    what += " but the input holds at least " + std::to_string(available);
  }
  if (overflow || needed > available) return Status::io_error(what + ": truncated file");
  return Status::io_error(what + ": the header does not describe the data");
}

}  // namespace

namespace detail {

// The reader's state; DumpReader::Impl is this under the private name the
// public header declares.
struct DumpReaderState {
  explicit DumpReaderState(ByteSource s) : source(std::move(s)) {}
  DumpReaderState(const DumpReaderState&) = delete;
  DumpReaderState& operator=(const DumpReaderState&) = delete;

  ByteSource source;
  DumpInfo info;
  // A .safetensors file's header, for the check of a stream's size at its end.
  std::optional<SafetensorsHeader> safetensors;
  int64_t row_bytes = 0;
  int64_t block_rows = 1;
  // The block last read from a file, or a copy of one held in memory whose
  // first byte is not aligned for its dtype (.safetensors data offsets need
  // not be aligned). Floats: aligned for every dtype.
  std::vector<float> block;
};

}  // namespace detail

struct DumpReader::Impl : detail::DumpReaderState {
  using DumpReaderState::DumpReaderState;
};

namespace {

// Options that need no data: refused before a pipe is read ahead.
Status check_options(const std::string& name, const DumpOptions& options) {
  if (options.block_bytes <= 0) {
    return Status::invalid_argument("block_bytes = " + std::to_string(options.block_bytes) +
                                    " must be > 0");
  }
  if (options.vocab < 0) {
    return Status::invalid_argument(name + ": vocab = " + std::to_string(options.vocab) +
                                    " must be > 0");
  }
  return Status();
}

// Options that describe the data must agree with a header that does too
// (checked before the data's size, which a stream knows only at its end).
Status options_agree(const DumpInfo& info, const DumpOptions& options, const std::string& name) {
  if (!options.tensor.empty() && info.format != DumpFormat::kSafetensors) {
    return Status::invalid_argument(name + ": tensor = '" + options.tensor +
                                    "' was given but the file is " + dump_format_name(info.format) +
                                    ", not .safetensors");
  }
  if (info.format == DumpFormat::kRaw) return Status();
  if (options.dtype && *options.dtype != info.dtype) {
    return Status::invalid_argument(name + ": dtype = " + dtype_name(*options.dtype) +
                                    " was given but the file holds " + dtype_name(info.dtype));
  }
  if (options.vocab > 0 && options.vocab != info.vocab) {
    return Status::invalid_argument(
        name + ": vocab = " + std::to_string(options.vocab) + " was given but the file's shape " +
        detail::shape_text(info.shape) + " has vocab " + std::to_string(info.vocab));
  }
  return Status();
}

// The input's size against what its header says: exactly (a file, or a
// stream that ended) or as far as a stream was read.
Status check_size(const detail::DumpReaderState& m) {
  const ByteSource& source = m.source;
  const bool ended = !source.streaming() || source.ended();
  if (m.safetensors) {
    return detail::check_safetensors_data_size(
        *m.safetensors, source.size() - m.safetensors->data_start, ended, source.name());
  }
  if (m.info.format != DumpFormat::kNpy) return Status();  // (raw: rows from the size)
  return check_data_size(m.info, source.size() - m.info.data_offset,
                         source.name() + ": header field 'shape'", ended);
}

Status describe(const std::string& path, const DumpOptions& options,
                detail::DumpReaderState& state) {
  ByteSource& source = state.source;
  DumpInfo* info = &state.info;
  const std::string& name = source.name();
  info->path = path;
  info->format = options.format;
  if (info->format == DumpFormat::kAuto) {
    Result<DumpFormat> format = detect_format(path, source, options);
    if (!format.ok()) return format.status();
    info->format = *format;
  }
  // A pipe longer than the read-ahead is streamed when its header says how
  // many rows it holds (.npy, .safetensors; its size is checked once it
  // ends); a raw dump's rows are its size, so a pipe of one is copied whole
  // to a temporary file first (after the checks that need no data).
  switch (info->format) {
    case DumpFormat::kNpy: {
      Result<detail::NpyHeader> header = detail::parse_npy_header(source);
      if (!header.ok()) return header.status();
      Result<DType> dtype = detail::npy_dtype(*header, name);
      if (!dtype.ok()) return dtype.status();
      if (header->fortran_order) {
        return Status::io_error(name +
                                ": header field 'fortran_order' = True: Fortran-order arrays "
                                "are not supported (save np.ascontiguousarray(arr))");
      }
      info->dtype = *dtype;
      info->shape = header->shape;
      info->data_offset = header->data_offset;
      if (Status s = rows_and_vocab(info->shape, name + ": header field 'shape'", info); !s.ok()) {
        return s;
      }
      break;
    }
    case DumpFormat::kSafetensors: {
      Result<detail::SafetensorsHeader> header = detail::parse_safetensors_header(source);
      if (!header.ok()) return header.status();
      Result<const detail::SafetensorsTensor*> tensor =
          detail::select_safetensors_tensor(*header, options.tensor, name);
      if (!tensor.ok()) return tensor.status();
      const detail::SafetensorsTensor& t = **tensor;
      Result<DType> dtype = detail::safetensors_dtype(t, name);
      if (!dtype.ok()) return dtype.status();
      info->dtype = *dtype;
      info->tensor = t.name;
      info->shape = t.shape;
      // (no overflow: the header ends within 2^63 bytes with its tensors)
      info->data_offset = header->data_start + t.begin;
      const std::string field =
          name + ": tensor '" + detail::shown_text(t.name) + "': field 'shape'";
      if (Status s = rows_and_vocab(info->shape, field, info); !s.ok()) return s;
      state.safetensors = std::move(header).value();
      break;
    }
    case DumpFormat::kRaw: {
      if (!options.dtype) return Status::invalid_argument(name + ": a raw dump needs its dtype");
      if (options.vocab <= 0) {
        return Status::invalid_argument(name + ": a raw dump needs its vocab (> 0), got vocab = " +
                                        std::to_string(options.vocab));
      }
      if (options.vocab > std::numeric_limits<int32_t>::max()) {
        return Status::invalid_argument(name + ": vocab = " + std::to_string(options.vocab) +
                                        " does not fit token ids (int32)");
      }
      if (Status s = options_agree(*info, options, name); !s.ok()) return s;
      if (Status s = source.spill(); !s.ok()) return s;
      info->dtype = *options.dtype;
      info->vocab = options.vocab;
      info->data_offset = 0;
      const int64_t row = options.vocab * dtype_size(info->dtype);
      if (source.size() == 0) return Status::io_error(name + ": the file is empty");
      if (source.size() % row != 0) {
        return Status::io_error(
            name + ": size = " + std::to_string(source.size()) +
            " bytes is not a multiple of a row (vocab " + std::to_string(options.vocab) + " × " +
            std::to_string(dtype_size(info->dtype)) + " bytes of " + dtype_name(info->dtype) +
            " = " + std::to_string(row) + "): wrong vocab or dtype, or a truncated file");
      }
      info->rows = source.size() / row;
      info->shape = {info->rows, info->vocab};
      return Status();
    }
    case DumpFormat::kAuto:
      return Status::internal(name + ": no format chosen");
  }
  // A header format: options that disagree with it come before its size.
  if (Status s = options_agree(*info, options, name); !s.ok()) return s;
  // (a stream's size is checked when it ends; one whose read-ahead already
  // holds more than the header says is read on to its end, as far as that
  // goes, to give a file's message)
  Status size = check_size(state);
  if (!size.ok() && source.streaming()) {
    if (Status s = source.read_to_end(kTrailingLimit); !s.ok()) return s;
    size = check_size(state);
  }
  return size;
}

Status init_state(const std::string& path, const DumpOptions& options,
                  detail::DumpReaderState& state) {
  if (Status s = check_options(state.source.name(), options); !s.ok()) return s;
  if (Status s = describe(path, options, state); !s.ok()) return s;
  DumpInfo& info = state.info;
  info.streamed = state.source.is_file() || state.source.streaming();
  state.row_bytes = info.vocab * dtype_size(info.dtype);
  state.block_rows = std::clamp<int64_t>(options.block_bytes / state.row_bytes, 1, info.rows);
  return Status();
}

}  // namespace

DumpReader::DumpReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
DumpReader::DumpReader(DumpReader&&) noexcept = default;
DumpReader& DumpReader::operator=(DumpReader&&) noexcept = default;
DumpReader::~DumpReader() = default;

Result<DumpReader> DumpReader::open(const std::string& path, const DumpOptions& options) {
  if (path.empty()) return Status::invalid_argument("dump path is empty (\"-\" reads stdin)");
  const std::string name = path == "-" ? std::string("<stdin>") : path;
  if (Status s = check_options(name, options); !s.ok()) return s;
  Result<ByteSource> source =
      ByteSource::open(path, name, std::clamp<int64_t>(options.block_bytes, 1, kReadAhead));
  if (!source.ok()) return source.status();
  auto impl = std::make_unique<Impl>(std::move(source).value());
  if (Status s = init_state(path, options, *impl); !s.ok()) return s;
  return DumpReader(std::move(impl));
}

Result<DumpReader> DumpReader::from_bytes(std::string name, std::vector<unsigned char> bytes,
                                          const DumpOptions& options) {
  auto impl = std::make_unique<Impl>(ByteSource::from_bytes(std::move(bytes), name));
  if (Status s = init_state(name, options, *impl); !s.ok()) return s;
  return DumpReader(std::move(impl));
}

const DumpInfo& DumpReader::info() const { return impl_->info; }
int64_t DumpReader::block_rows() const { return impl_->block_rows; }
int64_t DumpReader::num_blocks() const {
  return (impl_->info.rows + impl_->block_rows - 1) / impl_->block_rows;
}
int64_t DumpReader::block_first_row(int64_t index) const {
  return index >= 0 && index < num_blocks() ? index * impl_->block_rows : -1;
}

Result<LogitsView> DumpReader::block(int64_t index) {
  if (index < 0 || index >= num_blocks()) {
    return Status::invalid_argument(impl_->source.name() + ": block = " + std::to_string(index) +
                                    " is outside [0, " + std::to_string(num_blocks()) + ")");
  }
  const int64_t first = index * impl_->block_rows;
  return read(first, std::min(impl_->block_rows, impl_->info.rows - first));
}

namespace {

Status check_rows(const detail::DumpReaderState& m, int64_t first, int64_t count) {
  if (count < 1) {
    return Status::invalid_argument(m.source.name() + ": count = " + std::to_string(count) +
                                    " must be > 0 (rows to read)");
  }
  if (first < 0 || first > m.info.rows || count > m.info.rows - first) {
    // (first + count is not formed: it can overflow)
    return Status::invalid_argument(
        m.source.name() + ": " + std::to_string(count) + " rows from row " + std::to_string(first) +
        " are outside the dump's rows [0, " + std::to_string(m.info.rows) + ")");
  }
  return Status();
}

// Reads rows [first, first + count) into `dst`. A stream refuses rows it has
// passed, and is checked against the header when it ends: short, the read
// fails; past the last row, the rest is read (what follows the tensor, and
// at most 1 MiB more) and must be what the header says. Either way the
// message is the one a file of that size gets when it is opened.
Status read_rows(detail::DumpReaderState& m, int64_t first, int64_t count, void* dst) {
  if (Status s = check_rows(m, first, count); !s.ok()) return s;
  ByteSource& source = m.source;
  const int64_t begin = m.info.data_offset + first * m.row_bytes;
  if (!source.streaming()) return source.read_at(begin, count * m.row_bytes, dst);
  // (a stream that ended short says so again, rather than "already read")
  if (source.ended()) {
    if (Status size = check_size(m); !size.ok()) return size;
  }
  if (begin < source.readable_from()) {
    return Status::invalid_argument(source.name() + ": rows [" + std::to_string(first) + ", " +
                                    std::to_string(first + count) +
                                    ") were already read: a pipe is read once, front to back");
  }
  Status s = source.read_at(begin, count * m.row_bytes, dst);
  const bool last = first + count == m.info.rows;
  if (s.ok() && last) {
    // (the header's end, then the trailing limit)
    const int64_t end =
        m.safetensors ? m.safetensors->data_start + m.safetensors->data_end : source.size();
    const int64_t rest = std::max<int64_t>(end - source.size(), 0);
    s = source.read_to_end(rest > std::numeric_limits<int64_t>::max() - kTrailingLimit
                               ? std::numeric_limits<int64_t>::max()
                               : rest + kTrailingLimit);
  }
  if (source.ended() || last) {
    if (Status size = check_size(m); !size.ok()) return size;
  }
  return s;
}

}  // namespace

Status DumpReader::read_into(int64_t first, int64_t count, void* dst) {
  if (dst == nullptr) return Status::invalid_argument(impl_->source.name() + ": dst is null");
  return read_rows(*impl_, first, count, dst);
}

Status DumpReader::read_into_float32(int64_t first, int64_t count, float* dst) {
  const DType dtype = impl_->info.dtype;
  // (a null dst is read_into's call error; float32 is copied as stored)
  if (dst != nullptr) {
    if (Status s = detail::check_aligned(impl_->source.name() + ": dst", dst, 4); !s.ok()) {
      return s;
    }
  }
  if (dtype == DType::kFloat32 || dst == nullptr) return read_into(first, count, dst);
  if (Status s = check_rows(*impl_, first, count); !s.ok()) return s;
  // (count × vocab fits in memory once the range is checked: rows exist)
  const int64_t values = count * impl_->info.vocab;
  auto* bytes = reinterpret_cast<unsigned char*>(dst);
  unsigned char* stored = bytes + 2 * values;
  if (Status s = read_rows(*impl_, first, count, stored); !s.ok()) return s;
  // Runs of values [i, i + n) are copied out first; their floats end at
  // byte 4 (i + n) <= 2 values + 2 (i + n), where the halves not yet read
  // begin.
  constexpr int64_t kRun = 4096;
  std::array<uint16_t, kRun> half;
  for (int64_t i = 0; i < values; i += kRun) {
    const int64_t n = std::min(kRun, values - i);
    std::memcpy(half.data(), stored + 2 * i, static_cast<size_t>(2 * n));
    for (int64_t j = 0; j < n; ++j) {
      dst[i + j] = detail::half_to_float(half[j], dtype);
    }
  }
  return Status();
}

Result<LogitsView> DumpReader::read(int64_t first, int64_t count) {
  Impl& m = *impl_;
  const std::string& name = m.source.name();
  if (Status s = check_rows(m, first, count); !s.ok()) return s;
  const int64_t begin = m.info.data_offset + first * m.row_bytes;
  const int64_t length = count * m.row_bytes;
  const unsigned char* data = nullptr;
  const auto item = static_cast<uintptr_t>(dtype_size(m.info.dtype));
  auto hold = [&]() -> Status {
    try {
      m.block.resize(static_cast<size_t>((length + 3) / 4));
    } catch (const std::bad_alloc&) {
      return Status::io_error(name + ": cannot hold rows [" + std::to_string(first) + ", " +
                              std::to_string(first + count) + ") (" + std::to_string(length) +
                              " bytes) in memory");
    }
    return Status();
  };
  if (m.source.is_file() || m.source.streaming()) {
    // Read, not mapped: a mapped file that shrinks under the reader (another
    // program truncating it) kills the process with SIGBUS on the next touch
    // of a lost page, wherever in the engine that is; a read reports it.
    if (Status s = hold(); !s.ok()) return s;
    if (Status s = read_rows(m, first, count, m.block.data()); !s.ok()) return s;
    data = reinterpret_cast<const unsigned char*>(m.block.data());
  } else if (reinterpret_cast<uintptr_t>(m.source.bytes() + begin) % item != 0) {
    if (Status s = hold(); !s.ok()) return s;
    std::memcpy(m.block.data(), m.source.bytes() + begin, static_cast<size_t>(length));
    data = reinterpret_cast<const unsigned char*>(m.block.data());
  } else {
    data = m.source.bytes() + begin;
  }
  LogitsView view;
  view.data = data;
  view.rows = count;
  view.vocab = m.info.vocab;
  view.row_stride = m.info.vocab;
  view.dtype = m.info.dtype;
  return view;
}

}  // namespace nucleus
