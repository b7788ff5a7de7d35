// nucleus — logit dumps on disk: NumPy .npy, .safetensors and raw
// little-endian files, read as blocks of rows that feed Engine::sample and
// Engine::probs directly.
//
// A file is read one block at a time into one buffer, reused for the next
// block, so a dump far larger than memory is processed in bounded memory
// (read, not mapped: a mapped file truncated by another program would kill
// the process with SIGBUS; a read reports it). Every error is a Status whose
// message names the file, the field and the bad value; nothing here throws.
//
// Example:
//   nucleus::Result<nucleus::DumpReader> reader = nucleus::DumpReader::open("logits.npy");
//   if (!reader.ok()) return fail(reader.status());
//   for (int64_t b = 0; b < reader->num_blocks(); ++b) {
//     nucleus::Result<nucleus::LogitsView> block = reader->block(b);
//     if (!block.ok()) return fail(block.status());
//     // rows reader->block_first_row(b) ... + block->rows of the dump
//     engine.sample(*block, requests, results);
//   }
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "nucleus/sampling.h"
#include "nucleus/status.h"

namespace nucleus {

enum class DumpFormat {
  kAuto,         // by extension: .npy, .safetensors, anything else raw
  kNpy,          // NumPy .npy, versions 1 to 3, C order, little-endian f4 / f2
  kSafetensors,  // one F32, F16 or BF16 tensor of a .safetensors file
  kRaw,          // headerless little-endian rows; the dtype and vocab are given
};

// "auto", "npy", "safetensors", "raw".
const char* dump_format_name(DumpFormat format);
std::optional<DumpFormat> parse_dump_format(std::string_view name);
// "f32" / "float32", "f16" / "float16" / "half", "bf16" / "bfloat16".
std::optional<DType> parse_dtype(std::string_view name);

struct DumpOptions {
  DumpFormat format = DumpFormat::kAuto;
  std::string tensor{};  // safetensors: the tensor to read; empty = the only one
  std::optional<DType> dtype = std::nullopt;  // raw: required
  int64_t vocab = 0;                          // raw: required (> 0); 0 = not given, < 0 refused
  // A block reads at most this many bytes (but always at least one row).
  int64_t block_bytes = int64_t{64} << 20;
};

struct DumpInfo {
  std::string path{};  // as given; "-" is standard input
  DumpFormat format = DumpFormat::kAuto;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape{};  // as stored; leading axes flatten into rows
  std::string tensor{};          // safetensors: the tensor read
  int64_t rows = 0;
  int64_t vocab = 0;        // the last axis
  int64_t data_offset = 0;  // of the first element, in bytes from the start
  // true: read a block at a time, from a file or, for a .npy or .safetensors
  // pipe longer than the read-ahead, from the pipe (once, front to back: rows
  // already passed are refused), or for a longer raw pipe from its copy in
  // a temporary file; false: held whole in memory (a shorter pipe, or a raw
  // one where no temporary file could be made)
  bool streamed = false;
};

// Reads one dump. Movable, not copyable; not safe to share between threads.
class DumpReader {
 public:
  // Opens `path` ("-" = standard input) and validates its header against the
  // file size; reads no logits yet. Standard input that is a regular file is
  // read a block at a time like any file, from its current position. A pipe
  // is read ahead by min(block_bytes, 2 MiB); one that ends there is held
  // whole (a header that goes on past it is read on first), a longer .npy or
  // .safetensors is streamed (see DumpInfo::streamed), its size checked when
  // it ends: the read that finds it short, or the read of the last row when
  // bytes follow it, fails with the message a file of that size gets here
  // (or, when more than 1 MiB follows the header's data, "holds at least N";
  // the .safetensors tensors after the one read are read through, as long
  // as the header says they are). A longer raw pipe (its rows are its size)
  // is copied to an unnamed temporary file in $TMPDIR (else /tmp) and read
  // from there, or held whole where no file can be made. Standard input's
  // format (and a pipe's) is sniffed (the NumPy magic; a .safetensors header
  // length of at most 100 MB followed by '{"'; else raw) unless
  // `options.format` says.
  static Result<DumpReader> open(const std::string& path, const DumpOptions& options = {});

  // The same checks over bytes already in memory (`name` is used in messages).
  static Result<DumpReader> from_bytes(std::string name, std::vector<unsigned char> bytes,
                                       const DumpOptions& options = {});

  DumpReader(DumpReader&&) noexcept;
  DumpReader& operator=(DumpReader&&) noexcept;
  DumpReader(const DumpReader&) = delete;
  DumpReader& operator=(const DumpReader&) = delete;
  ~DumpReader();

  const DumpInfo& info() const;

  // Rows per block and the blocks that cover the dump.
  int64_t block_rows() const;
  int64_t num_blocks() const;
  int64_t block_first_row(int64_t index) const;  // -1 outside [0, num_blocks())

  // Rows [first, first + count) as a view that stays valid until the next
  // read or block call; the previous block is released first.
  Result<LogitsView> read(int64_t first, int64_t count);
  Result<LogitsView> block(int64_t index);

  // Rows [first, first + count) as stored (the dump's dtype, vocab values a
  // row, no padding) copied into `dst`, which holds count × vocab of them:
  // for a caller that keeps the rows, one copy fewer than read(). The block
  // read() last returned stays valid. (A null `dst`, or rows outside the
  // dump: INVALID_ARGUMENT.)
  Status read_into(int64_t first, int64_t count, void* dst);

  // The same rows widened to float32 into `dst` (count × vocab floats):
  // every float16 and bfloat16 value is a float32 one, so exactly. A half
  // dump's rows are read into the back half of `dst` and widened in place,
  // front to back: no buffer beside it. (A `dst` not aligned to a float's
  // 4 bytes: INVALID_ARGUMENT.)
  Status read_into_float32(int64_t first, int64_t count, float* dst);

 private:
  struct Impl;
  explicit DumpReader(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Writes a rows × vocab .npy (float32 or float16, C order) to a temporary
// file in the destination's directory that commit() renames into place, so a
// failed or abandoned write never leaves a partial file behind. The
// temporary has no name until then where the file system allows it
// (O_TMPFILE), so not even a killed process leaves one.
//
// Example:
//   auto writer = nucleus::NpyWriter::create("probs.npy", rows, vocab);
//   if (!writer.ok()) return fail(writer.status());
//   for (each block) if (Status s = writer->write_rows(block_data, block_rows); !s.ok()) ...
//   Status s = writer->commit();
class NpyWriter {
 public:
  static Result<NpyWriter> create(const std::string& path, int64_t rows, int64_t vocab,
                                  DType dtype = DType::kFloat32);

  NpyWriter(NpyWriter&&) noexcept;
  NpyWriter& operator=(NpyWriter&&) noexcept;
  NpyWriter(const NpyWriter&) = delete;
  NpyWriter& operator=(const NpyWriter&) = delete;
  ~NpyWriter();  // removes the temporary file unless commit() succeeded

  // Appends `rows` contiguous rows of `vocab` elements of the writer's dtype
  // (null data, rows < 0 or rows past the shape: INVALID_ARGUMENT).
  Status write_rows(const void* data, int64_t rows);
  // Checks that every row was written, then renames the file into place. A
  // commit before the last row is refused (INVALID_ARGUMENT) and changes
  // nothing: the rest may still be written and committed.
  Status commit();

 private:
  struct Impl;
  explicit NpyWriter(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace nucleus
