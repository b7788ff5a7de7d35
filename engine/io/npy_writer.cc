// NpyWriter: a streamed .npy whose header already holds the final shape, so
// rows go straight to the temporary file and commit() only renames it.
#include <limits>
#include <utility>

#include "engine/io/file_io.h"
#include "engine/io/npy_header.h"
#include "nucleus/dump.h"

namespace nucleus {

struct NpyWriter::Impl {
  explicit Impl(detail::AtomicFile f) : file(std::move(f)) {}
  detail::AtomicFile file;
  int64_t rows = 0;
  int64_t vocab = 0;
  DType dtype = DType::kFloat32;
  int64_t written = 0;
};

NpyWriter::NpyWriter(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
NpyWriter::NpyWriter(NpyWriter&&) noexcept = default;
NpyWriter& NpyWriter::operator=(NpyWriter&&) noexcept = default;
NpyWriter::~NpyWriter() = default;

Result<NpyWriter> NpyWriter::create(const std::string& path, int64_t rows, int64_t vocab,
                                    DType dtype) {
  if (rows < 0 || vocab <= 0) {
    return Status::invalid_argument(path + ": shape (" + std::to_string(rows) + ", " +
                                    std::to_string(vocab) + ") must have rows >= 0, vocab > 0");
  }
  if (rows > std::numeric_limits<int64_t>::max() / 4 / vocab) {
    return Status::invalid_argument(path + ": shape (" + std::to_string(rows) + ", " +
                                    std::to_string(vocab) + ") is too large");
  }
  if (dtype == DType::kBFloat16) {
    return Status::invalid_argument(path + ": dtype = bf16 has no NumPy .npy encoding");
  }
  Result<detail::AtomicFile> file = detail::AtomicFile::create(path);
  if (!file.ok()) return file.status();
  auto impl = std::make_unique<Impl>(std::move(file).value());
  impl->rows = rows;
  impl->vocab = vocab;
  impl->dtype = dtype;
  const int64_t shape[2] = {rows, vocab};
  if (Status s = impl->file.write(detail::format_npy_header(dtype, shape)); !s.ok()) return s;
  return NpyWriter(std::move(impl));
}

Status NpyWriter::write_rows(const void* data, int64_t rows) {
  Impl& m = *impl_;
  if (rows < 0) {
    return Status::invalid_argument(m.file.path() + ": rows = " + std::to_string(rows) +
                                    " must be >= 0");
  }
  if (rows > 0 && data == nullptr) {
    return Status::invalid_argument(m.file.path() +
                                    ": data is null for rows = " + std::to_string(rows));
  }
  if (rows > m.rows - m.written) {
    return Status::invalid_argument(m.file.path() + ": writing " + std::to_string(rows) +
                                    " more rows after " + std::to_string(m.written) +
                                    " would exceed rows = " + std::to_string(m.rows));
  }
  const auto bytes = static_cast<size_t>(rows * m.vocab * dtype_size(m.dtype));
  if (Status s = m.file.write(data, bytes); !s.ok()) return s;
  m.written += rows;
  return Status();
}

Status NpyWriter::commit() {
  Impl& m = *impl_;
  if (m.written != m.rows) {
    // (a caller's slip: refused, and nothing written is lost)
    return Status::invalid_argument(m.file.path() + ": commit after only " +
                                    std::to_string(m.written) + " of " + std::to_string(m.rows) +
                                    " rows were written");
  }
  return m.file.commit();
}

}  // namespace nucleus
