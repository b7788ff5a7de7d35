// Low-level file access for the dump readers and writers: a byte source that
// is either an open file or a buffer, and an output file that only appears
// under its final name once it is complete.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <limits>
#include <string>
#include <string_view>
#include <vector>

#include "nucleus/status.h"

namespace nucleus::detail {

// "No such file or directory" for ENOENT, and so on.
std::string errno_text(int err);

// The bytes of a dump: a regular file read through its descriptor (block by
// block, at absolute offsets), bytes already in memory, or a pipe read once,
// front to back.
class ByteSource {
 public:
  // Opens `path`, or standard input for "-". A regular file stays on disk
  // (standard input from its current position, which is left unchanged:
  // the bytes an earlier reader of the same open file consumed are not the
  // dump's). A pipe, FIFO or character device cannot be read at an offset:
  // its first `read_ahead` bytes are read into memory; one that ends within
  // them (or right after) is held whole, a longer one is streamed (read_at moves forward
  // only, and size() is what has been read so far).
  static Result<ByteSource> open(const std::string& path, const std::string& name,
                                 int64_t read_ahead = std::numeric_limits<int64_t>::max());
  static ByteSource from_bytes(std::vector<unsigned char> bytes, const std::string& name);

  ByteSource(ByteSource&& other) noexcept;
  ByteSource& operator=(ByteSource&& other) noexcept;
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;
  ~ByteSource();

  const std::string& name() const { return name_; }
  // The size; for a stream, the bytes read so far (all of them once ended()).
  int64_t size() const { return size_; }
  bool is_file() const { return fd_ >= 0 && !streaming_; }
  bool streaming() const { return streaming_; }
  // A stream that reached its end: size() is its length.
  bool ended() const { return ended_; }
  // A stream: the first offset read_at can still return (bytes before it
  // were passed and dropped); 0 otherwise.
  // (buffer_ holds the bytes read last, up to size())
  int64_t readable_from() const {
    return streaming_ ? size_ - static_cast<int64_t>(buffer_.size()) : 0;
  }
  const unsigned char* bytes() const { return buffer_.data(); }

  // Exactly `n` bytes at `offset`, or an error naming the file and offset.
  // A stream skips forward to `offset` and refuses bytes it has passed.
  Status read_at(int64_t offset, int64_t n, void* out);
  // A stream that has not passed byte 0: reads on into memory until it holds
  // `n` bytes or ends (and is then held whole), so that a header longer
  // than the read-ahead is checked against size() like a file's. `n` bytes
  // are reserved at once: a header's length, never a data size.
  Status fill(int64_t n);
  // A stream: reads (and drops) the rest, at most `limit` bytes of it and
  // one more to see its end (a pipe need not end), so that size() is its
  // length if ended().
  Status read_to_end(int64_t limit);
  // A stream: reads the rest into memory and holds it whole from then on
  // (for formats whose header is checked against the size).
  Status hold_whole();
  // A stream that has not passed byte 0: copies what it read and the rest
  // into an unnamed temporary file ($TMPDIR, else /tmp), read from then on
  // like a file (a raw dump's row count is its size: it must be known before
  // rows are read, and a pipe larger than memory must not be held in it).
  // Where no temporary file can be made or take it all (a full disk, a
  // file-size limit), holds it whole in memory instead.
  Status spill();

 private:
  ByteSource() = default;
  Status read_forward(int64_t offset, int64_t n, unsigned char* out);
  // A stream: drops what it holds and reads (and drops) on until `stop`
  // bytes were read or it ends.
  Status skip_to(int64_t stop);
  // A stream that has not passed byte 0: reads on into buffer_ until it
  // holds `n` bytes or ends.
  Status buffer_up_to(int64_t n);
  // Reads up to `n` bytes at the stream's end into `out` (fewer at its end).
  Result<int64_t> read_some(unsigned char* out, int64_t n);
  std::string name_;
  int fd_ = -1;
  bool owns_fd_ = false;
  int64_t origin_ = 0;  // the file offset of byte 0 (standard input's position)
  int64_t size_ = 0;
  std::vector<unsigned char> buffer_;
  bool streaming_ = false;
  bool ended_ = false;
};

// Whether AtomicFile writes `path` as it stands rather than through a
// temporary renamed over it: one of this process's own descriptors
// (/dev/stdout, /dev/fd/N, /proc/self/fd/N, or a link to one), or something
// there already that is not a regular file (/dev/null, a FIFO).
bool written_in_place(const std::string& path);

// Writes `path` through a temporary file in the same directory that is
// renamed into place by commit(); destroying it uncommitted removes the
// temporary, so no reader ever sees a partial file. The temporary has no
// name until commit() (O_TMPFILE, where the file system has it), so not even
// a killed process leaves one behind. A destination that exists and is not a
// regular file (/dev/null, a FIFO) is written directly instead, since
// renaming over it would replace the device node.
// Linux before 6.0 created O_TMPFILE files without applying the umask on a
// file system without POSIX ACLs: on such a file system (getxattr says
// EOPNOTSUPP), takes the bits the process's umask forbids off `fd`'s mode.
void apply_umask_if_skipped(int fd, const std::string& directory);

class AtomicFile {
 public:
  // `unnamed` false: a named temporary even where the file system has
  // O_TMPFILE (as on one without it; for the tests).
  static Result<AtomicFile> create(const std::string& path, bool unnamed = true);

  AtomicFile(AtomicFile&& other) noexcept;
  AtomicFile& operator=(AtomicFile&& other) noexcept;
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;
  ~AtomicFile();

  const std::string& path() const { return path_; }
  Status write(const void* data, size_t n);
  Status write(std::string_view text) { return write(text.data(), text.size()); }
  Status commit();
  // Removes the temporary file (idempotent; a no-op after commit()).
  void discard();
  // Whether the file written is a terminal (a path such as /dev/tty or
  // /dev/stdout, written in place).
  bool is_terminal() const;

 private:
  AtomicFile() = default;
  Status flush();
  Result<int> create_named(mode_t mode);
  template <typename Make>
  std::string fresh_name(Make&& make) const;
  std::string path_;
  std::string temp_path_;  // the temporary's name; empty while it has none
  std::string stem_;       // of temporary names; empty when writing the destination directly
  int fd_ = -1;
  std::vector<char> buffer_;
  size_t used_ = 0;
};

}  // namespace nucleus::detail
