// Fuzz targets for the dump parsers, through the public entry point
// nucleus::DumpReader::from_bytes (and DumpReader::open on a pipe that
// streams it): NumPy headers and bodies, safetensors headers and
// offsets, and the sizing of raw dumps.
//
// A file the reader accepts must keep every promise of include/nucleus/dump.h:
// its rows cover the data exactly, every block lies inside the bytes, the
// block size never changes the data, options that disagree with the header
// are refused, and the rows sample without a call error. A file it refuses
// must be refused with a message, never with a crash.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fuzz/fuzz_input.h"
#include "nucleus/dump.h"
#include "nucleus/engine.h"

namespace nucleus::fuzz {

// FNV-1a: the file decides the reader's options, so corpus files stay plain
// .npy / .safetensors files that any tool can open.
inline uint64_t Fnv1a(const std::vector<uint8_t>& bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (uint8_t b : bytes) h = (h ^ b) * 0x100000001b3ull;
  return h;
}

// Samples a block read from a dump: a valid view never gives a call error,
// and each row is sampled or fails on its own.
inline void SampleBlock(const LogitsView& view) {
  if (view.rows * view.vocab > (int64_t{1} << 16)) return;  // keep each input fast
  RowRequest request;
  request.seed = 1;
  request.params.top_p = 0.9f;
  request.params.top_logprobs = view.vocab < 3 ? static_cast<int32_t>(view.vocab) : 3;
  std::vector<RowResult> results(static_cast<size_t>(view.rows));
  // An engine per input: everything it allocates is freed before the input
  // ends, so libFuzzer's per-input leak check stays meaningful (a long-lived
  // engine keeps its scratch in a oneTBB queue whose memory LeakSanitizer
  // does not scan, and would look like a leak).
  Engine engine(EngineOptions{.max_threads = 2, .seed = 7});
  const Status s = engine.sample(view, {&request, 1}, results);
  NUCLEUS_FUZZ_CHECK(s.ok());
  for (const RowResult& r : results) {
    NUCLEUS_FUZZ_CHECK(r.status.ok() || r.status.code() == StatusCode::kRowError);
    if (!r.status.ok()) continue;
    NUCLEUS_FUZZ_CHECK(r.tokens.size() == 1);
    NUCLEUS_FUZZ_CHECK(r.tokens[0] >= 0 && r.tokens[0] < view.vocab, r.tokens[0], view.vocab);
  }
}

// Reads every block of an accepted dump; returns the data bytes in order.
inline std::vector<uint8_t> CheckReader(DumpReader& reader, size_t file_size, bool sample) {
  const DumpInfo& info = reader.info();
  NUCLEUS_FUZZ_CHECK(info.rows >= 1, info.rows);
  NUCLEUS_FUZZ_CHECK(info.vocab >= 1 && info.vocab <= std::numeric_limits<int32_t>::max(),
                     info.vocab);
  NUCLEUS_FUZZ_CHECK(info.format != DumpFormat::kAuto);
  const int64_t item = dtype_size(info.dtype);
  const auto size = static_cast<int64_t>(file_size);
  NUCLEUS_FUZZ_CHECK(info.data_offset >= 0 && info.data_offset <= size, info.data_offset, size);
  // rows * vocab * item <= size - data_offset, written so that it cannot overflow.
  NUCLEUS_FUZZ_CHECK(info.rows <= (size - info.data_offset) / item / info.vocab, info.rows,
                     info.vocab);
  int64_t shape_elements = 1;
  for (int64_t d : info.shape) {
    NUCLEUS_FUZZ_CHECK(d >= 1, d);
    shape_elements *= d;  // bounded by the file size, checked above
  }
  NUCLEUS_FUZZ_CHECK(shape_elements == info.rows * info.vocab, shape_elements);
  NUCLEUS_FUZZ_CHECK(reader.block_rows() >= 1, reader.block_rows());

  std::vector<uint8_t> data;
  int64_t covered = 0;
  for (int64_t b = 0; b < reader.num_blocks(); ++b) {
    NUCLEUS_FUZZ_CHECK(reader.block_first_row(b) == covered, covered);
    Result<LogitsView> view = reader.block(b);
    NUCLEUS_FUZZ_CHECK(view.ok());
    NUCLEUS_FUZZ_CHECK(view->rows >= 1 && view->rows <= info.rows - covered, view->rows);
    NUCLEUS_FUZZ_CHECK(view->vocab == info.vocab && view->row_stride == info.vocab);
    NUCLEUS_FUZZ_CHECK(view->dtype == info.dtype);
    NUCLEUS_FUZZ_CHECK(reinterpret_cast<uintptr_t>(view->data) % static_cast<uintptr_t>(item) == 0);
    // Every byte is read, so that AddressSanitizer sees a view that reaches
    // past the buffer.
    const auto* bytes = static_cast<const uint8_t*>(view->data);
    data.insert(data.end(), bytes, bytes + view->rows * view->vocab * item);
    if (sample) SampleBlock(*view);
    covered += view->rows;
  }
  NUCLEUS_FUZZ_CHECK(covered == info.rows, covered, info.rows);
  // Rows outside the dump are errors, never reads.
  NUCLEUS_FUZZ_CHECK(!reader.block(-1).ok());
  NUCLEUS_FUZZ_CHECK(!reader.block(reader.num_blocks()).ok());
  NUCLEUS_FUZZ_CHECK(!reader.read(info.rows, 1).ok());
  NUCLEUS_FUZZ_CHECK(!reader.read(0, info.rows + 1).ok());
  NUCLEUS_FUZZ_CHECK(!reader.read(-1, 1).ok());
  NUCLEUS_FUZZ_CHECK(!reader.read(0, 0).ok());
  return data;
}

// An error status must say something and must not be OK or internal.
inline void CheckRefusal(const Status& s) {
  NUCLEUS_FUZZ_CHECK(!s.ok());
  NUCLEUS_FUZZ_CHECK(s.code() == StatusCode::kIoError || s.code() == StatusCode::kInvalidArgument,
                     static_cast<int>(s.code()));
  NUCLEUS_FUZZ_CHECK(!s.message().empty());
}

// Opens `file` with `options`; on success checks the reader and returns its
// data, on failure checks the refusal.
inline std::optional<std::vector<uint8_t>> OpenAndCheck(const std::string& name,
                                                        const std::vector<uint8_t>& file,
                                                        const DumpOptions& options, bool sample) {
  Result<DumpReader> reader = DumpReader::from_bytes(name, file, options);
  if (!reader.ok()) {
    CheckRefusal(reader.status());
    return std::nullopt;
  }
  if (options.dtype && options.format != DumpFormat::kAuto) {
    NUCLEUS_FUZZ_CHECK(reader->info().dtype == *options.dtype);
  }
  if (options.vocab > 0) NUCLEUS_FUZZ_CHECK(reader->info().vocab == options.vocab);
  if (!options.tensor.empty()) NUCLEUS_FUZZ_CHECK(reader->info().tensor == options.tensor);
  return CheckReader(*reader, file.size(), sample);
}

// The same dump through a pipe, read a block of `block_bytes` at a time: a
// .npy or .safetensors pipe longer than that is streamed (read once, front
// to back; the header read on past the read-ahead; the size checked when
// the pipe ends), a raw one copied to a temporary file first. It must give
// the rows from_bytes gives, or be refused, at open or at the block where
// its size shows, with from_bytes's message (a stream's size is known at its
// end, which a pipe this short always reaches). `options` name the format
// (and the tensor, dtype and vocab) to read.
inline void CheckStream(DumpOptions options, const std::vector<uint8_t>& file,
                        int64_t block_bytes) {
  std::signal(SIGPIPE, SIG_IGN);  // (a refused pipe is closed on its writer)
  int fds[2];
  if (::pipe(fds) != 0) return;
  std::thread writer([&file, fd = fds[1]] {
    for (size_t done = 0; done < file.size();) {
      const ssize_t n = ::write(fd, file.data() + done, file.size() - done);
      if (n <= 0) break;
      done += static_cast<size_t>(n);
    }
    ::close(fd);
  });
  const std::string path = "/dev/fd/" + std::to_string(fds[0]);
  options.block_bytes = block_bytes;
  std::optional<Status> stream_error;
  std::vector<uint8_t> data;
  bool claims_more = false;
  {
    Result<DumpReader> streamed = DumpReader::open(path, options);
    ::close(fds[0]);  // (the reader opened its own descriptor)
    if (!streamed.ok()) stream_error = streamed.status();
    // A header that claims far more than an input this size holds is not
    // read: a block of it would be allocated as claimed (a pipe's size is
    // known only at its end), past the fuzzer's memory limit.
    if (streamed.ok()) {
      const DumpInfo& info = streamed->info();
      claims_more = info.rows > (int64_t{1} << 20) / info.vocab / dtype_size(info.dtype);
    }
    if (claims_more) stream_error = Status::io_error("not read");
    for (int64_t b = 0; !stream_error && b < streamed->num_blocks(); ++b) {
      Result<LogitsView> view = streamed->block(b);
      if (!view.ok()) {
        stream_error = view.status();
        break;
      }
      const auto* bytes = static_cast<const uint8_t*>(view->data);
      data.insert(data.end(), bytes, bytes + view->rows * view->vocab * dtype_size(view->dtype));
    }
  }  // (the pipe's read end closes here, so the writer ends)
  writer.join();
  Result<DumpReader> held = DumpReader::from_bytes(path, file, options);
  if (claims_more) {
    NUCLEUS_FUZZ_CHECK(!held.ok());
    return;
  }
  if (held.ok()) {
    NUCLEUS_FUZZ_CHECK(!stream_error.has_value());
    // (the rows of the tensor read: other tensors may follow it)
    const DumpInfo& info = held->info();
    const auto offset = static_cast<size_t>(info.data_offset);
    const auto bytes = static_cast<size_t>(info.rows * info.vocab * dtype_size(info.dtype));
    NUCLEUS_FUZZ_CHECK(data.size() == bytes, data.size(), bytes);
    NUCLEUS_FUZZ_CHECK(std::equal(data.begin(), data.end(), file.begin() + offset));
    return;
  }
  NUCLEUS_FUZZ_CHECK(stream_error.has_value());
  CheckRefusal(*stream_error);
  NUCLEUS_FUZZ_CHECK(stream_error->message() == held.status().message());
}

// A header format (npy or safetensors): the whole input is the file.
inline int FuzzHeaderDump(DumpFormat format, const uint8_t* bytes, size_t size) {
  const std::vector<uint8_t> file(bytes, bytes + size);
  const uint64_t h = Fnv1a(file);
  const std::string name = format == DumpFormat::kNpy ? "fuzz.npy" : "fuzz.safetensors";

  DumpOptions options;
  options.format = format;
  const std::optional<std::vector<uint8_t>> whole = OpenAndCheck(name, file, options, true);

  // Small blocks: many maps over the same bytes, which must give the same data.
  options.block_bytes = static_cast<int64_t>(1 + h % 257);
  const std::optional<std::vector<uint8_t>> blocks = OpenAndCheck(name, file, options, false);
  NUCLEUS_FUZZ_CHECK(whole.has_value() == blocks.has_value());
  if (whole) NUCLEUS_FUZZ_CHECK(*whole == *blocks);

  // Options that describe the data: accepted only when they agree.
  options.block_bytes = int64_t{64} << 20;
  options.dtype = static_cast<DType>((h >> 12) % 3);
  options.vocab = static_cast<int64_t>((h >> 16) % 5 == 0 ? 0 : (h >> 20) % 70);
  OpenAndCheck(name, file, options, false);
  options.dtype.reset();
  options.vocab = 0;

  CheckStream(options, file, static_cast<int64_t>(1 + (h >> 24) % 97));
  if (format == DumpFormat::kSafetensors) {
    // (a tensor chosen among several: those before it skipped, those after
    // it read through)
    options.tensor = "logits";
    CheckStream(options, file, static_cast<int64_t>(1 + (h >> 32) % 97));
    options.tensor.clear();
    for (const char* tensor : {"logits", "a", "__metadata__"}) {
      options.tensor = tensor;
      OpenAndCheck(name, file, options, false);
    }
    options.tensor.clear();
  } else {
    // A tensor name is refused for a format without tensors.
    options.tensor = "logits";
    NUCLEUS_FUZZ_CHECK(!DumpReader::from_bytes(name, file, options).ok());
    options.tensor.clear();
  }

  // Sniffing, as for standard input: the NumPy magic, a .safetensors header
  // or, with dtype and vocab, raw.
  options.format = DumpFormat::kAuto;
  OpenAndCheck("-", file, options, false);
  return 0;
}

// Raw dumps: the first byte picks the dtype and the format option, the next
// four the vocab; the rest is the file.
inline int FuzzRawDump(const uint8_t* bytes, size_t size) {
  FuzzInput in(bytes, size);
  const uint8_t mode = in.Byte();
  const auto vocab32 = in.Bits<int32_t>();
  DumpOptions options;
  options.format = (mode & 0x10) != 0 ? DumpFormat::kAuto : DumpFormat::kRaw;
  if ((mode & 3) != 3) options.dtype = static_cast<DType>(mode & 3);
  // Vocabularies beyond int32 must be refused, not truncated.
  options.vocab = (mode & 0x20) != 0 ? int64_t{vocab32} << 16 : int64_t{vocab32};
  options.block_bytes = (mode & 0x40) != 0 ? 1 + (mode >> 2) % 37 : int64_t{64} << 20;
  const std::vector<uint8_t> file = in.Rest();
  const std::optional<std::vector<uint8_t>> data =
      OpenAndCheck((mode & 0x80) != 0 ? "-" : "fuzz.bin", file, options, true);
  if (data && options.format == DumpFormat::kRaw) {
    // A raw dump is its data, whole.
    NUCLEUS_FUZZ_CHECK(*data == file);
  }
  // Through a pipe (copied to a temporary file when longer than the
  // read-ahead): the same rows or the same message.
  if (options.format == DumpFormat::kRaw) CheckStream(options, file, 1 + (mode >> 1) % 61);
  return 0;
}

}  // namespace nucleus::fuzz
