#include "engine/io/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <optional>
#include <random>
#include <string_view>
#include <utility>

namespace nucleus::detail {
namespace {

constexpr size_t kWriteBuffer = size_t{1} << 20;

// Read at a time from a pipe.
constexpr int64_t kPipeChunk = int64_t{1} << 20;

std::string parent_directory(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

std::string base_name(const std::string& path) {
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

// Writes all `n` bytes at `fd`'s position: 0, or the errno of the write
// that failed.
int write_all(int fd, const void* data, size_t n) {
  const auto* p = static_cast<const char*>(data);
  while (n > 0) {
    const ssize_t put = ::write(fd, p, n);
    if (put < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    p += put;
    n -= static_cast<size_t>(put);
  }
  return 0;
}

// Reads n bytes at `offset` (retrying short reads and EINTR): 0, errno on a
// failed read, or -1 when the file ends first.
int pread_all(int fd, void* data, int64_t n, int64_t offset) {
  auto* p = static_cast<char*>(data);
  while (n > 0) {
    const ssize_t got = ::pread(fd, p, static_cast<size_t>(n), offset);
    if (got < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (got == 0) return -1;
    p += got;
    offset += got;
    n -= got;
  }
  return 0;
}

// The name of an open file descriptor under /proc, which linkat follows to
// give an unnamed (O_TMPFILE) file a name without privileges.
std::string proc_fd_path(int fd) { return "/proc/self/fd/" + std::to_string(fd); }

// The process's umask, read from /proc/self/status (setting it to read it,
// umask(2)'s way, would race with other threads creating files).
std::optional<mode_t> process_umask() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Umask:", 0) == 0) {
      return static_cast<mode_t>(std::strtoul(line.c_str() + 6, nullptr, 8));
    }
  }
  return std::nullopt;
}

// The path a chain of symbolic links ends at (the path itself when it is not
// a link), whether or not that file exists yet; nullopt past 40 links (a
// loop), where the kernel would refuse to open it (ELOOP).
constexpr int kMaxHops = 40;  // (Linux's own limit, MAXSYMLINKS)

// The path the symbolic link `path` names (relative targets resolved
// against its directory), or nullopt when `path` is not a link (or cannot
// be read as one).
std::optional<std::string> link_target(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0 || !S_ISLNK(st.st_mode)) return std::nullopt;
  std::string link(4096, '\0');
  const ssize_t len = ::readlink(path.c_str(), link.data(), link.size());
  if (len <= 0 || static_cast<size_t>(len) == link.size()) return std::nullopt;
  link.resize(static_cast<size_t>(len));
  return link.front() == '/' ? link : parent_directory(path) + "/" + link;
}

std::optional<std::string> through_links(std::string path) {
  for (int hops = 0;; ++hops) {
    std::optional<std::string> next = link_target(path);
    if (!next) return path;
    if (hops == kMaxHops) return std::nullopt;  // a loop, or a chain too long to follow
    path = std::move(*next);
  }
}

}  // namespace

// Linux before 6.0 did not apply the umask to an O_TMPFILE file on a file
// system without POSIX ACLs (on one with them, the ACL code applies it, or
// the directory's default ACL stands instead): there the bits the umask
// forbids are taken away here. Elsewhere the mode already lacks them.
void apply_umask_if_skipped(int fd, const std::string& directory) {
  if (::getxattr(directory.c_str(), "system.posix_acl_default", nullptr, 0) >= 0 ||
      errno != EOPNOTSUPP) {
    return;
  }
  const std::optional<mode_t> mask = process_umask();
  struct stat st;
  if (mask && ::fstat(fd, &st) == 0 && (st.st_mode & *mask & 0777) != 0) {
    ::fchmod(fd, st.st_mode & 0777 & ~*mask);
  }
}

std::string errno_text(int err) {
  char buf[256];
  // The GNU strerror_r returns the message, which may not be in buf.
  return ::strerror_r(err, buf, sizeof buf);
}

Result<ByteSource> ByteSource::open(const std::string& path, const std::string& name,
                                    int64_t read_ahead) {
  ByteSource source;
  source.name_ = name;
  int fd = 0;
  if (path != "-") {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return Status::io_error(name + ": cannot open: " + errno_text(errno));
    source.owns_fd_ = true;
  }
  source.fd_ = fd;  // owned from here on, so every early return closes it
  struct stat st;
  if (::fstat(fd, &st) != 0) return Status::io_error(name + ": cannot stat: " + errno_text(errno));
  if (S_ISDIR(st.st_mode)) return Status::io_error(name + ": is a directory, not a dump");
  if (S_ISREG(st.st_mode)) {
    source.size_ = static_cast<int64_t>(st.st_size);
    if (!source.owns_fd_) {
      // (from where an earlier reader left it)
      const off_t at = ::lseek(fd, 0, SEEK_CUR);
      if (at > 0) {
        source.origin_ = std::min(static_cast<int64_t>(at), source.size_);
        source.size_ -= source.origin_;
      }
    }
    return source;
  }
  // Pipes and devices cannot be read at an offset (nor sized): read ahead,
  // and hold the bytes whole if they end there, else stream them.
  // (up to one byte past read_ahead: a pipe of exactly read_ahead bytes is
  // held whole once its end is seen)
  source.streaming_ = true;
  read_ahead = std::min(read_ahead, std::numeric_limits<int64_t>::max() - 1);
  if (read_ahead < (int64_t{1} << 30)) {
    source.buffer_.reserve(static_cast<size_t>(read_ahead + 1));  // (no doubling past it)
  }
  if (Status s = source.buffer_up_to(read_ahead + 1); !s.ok()) return s;
  if (source.ended_) {
    if (Status s = source.hold_whole(); !s.ok()) return s;  // (closes the pipe)
  }
  return source;
}

ByteSource ByteSource::from_bytes(std::vector<unsigned char> bytes, const std::string& name) {
  ByteSource source;
  source.name_ = name;
  source.size_ = static_cast<int64_t>(bytes.size());
  source.buffer_ = std::move(bytes);
  return source;
}

ByteSource::ByteSource(ByteSource&& other) noexcept
    : name_(std::move(other.name_)),
      fd_(std::exchange(other.fd_, -1)),
      owns_fd_(std::exchange(other.owns_fd_, false)),
      origin_(other.origin_),
      size_(other.size_),
      buffer_(std::move(other.buffer_)),
      streaming_(other.streaming_),
      ended_(other.ended_) {}

ByteSource& ByteSource::operator=(ByteSource&& other) noexcept {
  if (this != &other) {
    if (owns_fd_) ::close(fd_);
    name_ = std::move(other.name_);
    fd_ = std::exchange(other.fd_, -1);
    owns_fd_ = std::exchange(other.owns_fd_, false);
    origin_ = other.origin_;
    size_ = other.size_;
    buffer_ = std::move(other.buffer_);
    streaming_ = other.streaming_;
    ended_ = other.ended_;
  }
  return *this;
}

ByteSource::~ByteSource() {
  if (owns_fd_) ::close(fd_);
}

Result<int64_t> ByteSource::read_some(unsigned char* out, int64_t n) {
  for (;;) {
    const ssize_t got = ::read(fd_, out, static_cast<size_t>(n));
    if (got < 0) {
      if (errno == EINTR) continue;
      return Status::io_error(name_ + ": cannot read after byte " + std::to_string(size_) + ": " +
                              errno_text(errno));
    }
    size_ += got;
    if (got == 0) ended_ = true;
    return static_cast<int64_t>(got);
  }
}

Status ByteSource::skip_to(int64_t stop) {
  std::vector<unsigned char>().swap(buffer_);  // (behind: dropped)
  std::vector<unsigned char> skip;
  while (!ended_ && size_ < stop) {
    if (skip.empty()) skip.resize(static_cast<size_t>(std::min(kPipeChunk, stop - size_)));
    Result<int64_t> got =
        read_some(skip.data(), std::min(static_cast<int64_t>(skip.size()), stop - size_));
    if (!got.ok()) return got.status();
  }
  return Status();
}

Status ByteSource::read_forward(int64_t offset, int64_t n, unsigned char* out) {
  if (offset > std::numeric_limits<int64_t>::max() - n) {
    return Status::io_error(name_ + ": truncated: needs bytes past 2^63 from byte " +
                            std::to_string(offset));
  }
  if (offset < readable_from()) {
    return Status::io_error(name_ + ": bytes " + std::to_string(offset) + " to " +
                            std::to_string(offset + n) +
                            " were already passed: a pipe is read once, front to back");
  }
  // From what was read ahead, then from the pipe (which drops the read-ahead:
  // it lies behind).
  if (offset < size_) {
    const int64_t k = std::min(n, size_ - offset);
    std::memcpy(out, buffer_.data() + (offset - readable_from()), static_cast<size_t>(k));
    out += k;
    offset += k;
    n -= k;
  }
  if (n == 0) return Status();
  if (Status s = skip_to(offset); !s.ok()) return s;
  while (!ended_ && size_ < offset + n) {
    Result<int64_t> got = read_some(out + (size_ - offset), offset + n - size_);
    if (!got.ok()) return got.status();
  }
  if (size_ < offset + n) {
    return Status::io_error(name_ + ": truncated: needs bytes " + std::to_string(offset) + " to " +
                            std::to_string(offset + n) + " but the input ended after " +
                            std::to_string(size_) + " bytes");
  }
  return Status();
}

Status ByteSource::buffer_up_to(int64_t n) {
  if (readable_from() != 0) {
    return Status::internal(name_ + ": a pipe already read past byte " +
                            std::to_string(readable_from()) + " cannot be held in memory again");
  }
  while (!ended_ && size_ < n) {
    const int64_t k = std::min(kPipeChunk, n - size_);
    try {
      buffer_.resize(static_cast<size_t>(size_ + k));
    } catch (const std::bad_alloc&) {
      return Status::io_error(name_ + ": cannot hold the input in memory past " +
                              std::to_string(size_) + " bytes");
    }
    Result<int64_t> got = read_some(buffer_.data() + size_, k);
    buffer_.resize(static_cast<size_t>(size_));  // (what was read, whatever happened)
    if (!got.ok()) return got.status();
  }
  return Status();
}

Status ByteSource::fill(int64_t n) {
  if (!streaming_ || size_ >= n) return Status();
  // (a header, at most ~100 MB: reserved whole, where growing by doubling
  // could take twice that)
  if (readable_from() == 0 && static_cast<size_t>(n) > buffer_.capacity()) {
    try {
      buffer_.reserve(static_cast<size_t>(n));
    } catch (const std::bad_alloc&) {
      return Status::io_error(name_ + ": cannot hold " + std::to_string(n) +
                              " bytes of the input's header in memory");
    }
  }
  if (Status s = buffer_up_to(n); !s.ok()) return s;
  return ended_ ? hold_whole() : Status();
}

Status ByteSource::read_to_end(int64_t limit) {
  if (!streaming_ || limit <= 0) return Status();
  // (one byte past the limit: a stream that ends right there is seen to end)
  return skip_to(size_ >= std::numeric_limits<int64_t>::max() - limit
                     ? std::numeric_limits<int64_t>::max()
                     : size_ + limit + 1);
}

Status ByteSource::hold_whole() {
  if (!streaming_) return Status();
  if (Status s = buffer_up_to(std::numeric_limits<int64_t>::max()); !s.ok()) return s;
  if (owns_fd_) ::close(fd_);
  fd_ = -1;
  owns_fd_ = false;
  streaming_ = false;
  return Status();
}

Status ByteSource::spill() {
  if (!streaming_) return Status();
  if (readable_from() != 0) {
    return Status::internal(name_ + ": a pipe already read past byte " +
                            std::to_string(readable_from()) + " cannot be copied whole");
  }
  const char* env = std::getenv("TMPDIR");
  const std::string dir = env != nullptr && *env != '\0' ? env : "/tmp";
  // Where no temporary file takes the pipe, memory does, as before; when
  // that runs out too, the message says why the file did not.
  auto in_memory = [&](const std::string& why) {
    Status s = hold_whole();
    return s.ok() ? s : Status::io_error(s.message() + " (" + why + ")");
  };
  int fd = ::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
  int open_error = errno;
  if (fd < 0) {
    // (a file system without O_TMPFILE: a named one, unlinked at once)
    std::string name = dir + "/.nucleus-spill-XXXXXX";
    fd = ::mkostemp(name.data(), O_CLOEXEC);
    open_error = errno;
    if (fd >= 0) ::unlink(name.c_str());
  }
  if (fd < 0) return in_memory("no temporary file in " + dir + ": " + errno_text(open_error));
  if (const int err = write_all(fd, buffer_.data(), buffer_.size()); err != 0) {
    ::close(fd);
    return in_memory("a temporary file in " + dir + ": " + errno_text(err));
  }
  std::vector<unsigned char>().swap(buffer_);
  std::vector<unsigned char> chunk(static_cast<size_t>(kPipeChunk));
  while (!ended_) {
    Result<int64_t> got = read_some(chunk.data(), kPipeChunk);
    if (!got.ok()) {
      ::close(fd);
      return got.status();
    }
    const int err = write_all(fd, chunk.data(), static_cast<size_t>(*got));
    if (err == 0) continue;
    // A full disk or a file-size limit: what the file took is read back,
    // the rest of the chunk after it, and the pipe read on in memory.
    const std::string why = "a temporary file in " + dir + ": " + errno_text(err);
    struct stat st;
    const int64_t chunk_start = size_ - *got;
    const int64_t in_file = ::fstat(fd, &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
    Status back;
    if (in_file < chunk_start || in_file > size_) {
      back = Status::io_error(name_ + ": cannot read back " + why);
    } else {
      try {
        buffer_.resize(static_cast<size_t>(size_));
      } catch (const std::bad_alloc&) {
        back = Status::io_error(name_ + ": cannot hold the input in memory past " +
                                std::to_string(chunk_start) + " bytes (" + why + ")");
      }
    }
    if (back.ok() && pread_all(fd, buffer_.data(), in_file, 0) != 0) {
      back = Status::io_error(name_ + ": cannot read back " + why);
    }
    ::close(fd);
    if (!back.ok()) return back;
    std::memcpy(buffer_.data() + in_file, chunk.data() + (in_file - chunk_start),
                static_cast<size_t>(size_ - in_file));
    return in_memory(why);
  }
  if (owns_fd_) ::close(fd_);
  fd_ = fd;
  owns_fd_ = true;
  origin_ = 0;
  streaming_ = false;
  return Status();
}

Status ByteSource::read_at(int64_t offset, int64_t n, void* out) {
  if (streaming_ && offset >= 0 && n >= 0) {
    return read_forward(offset, n, static_cast<unsigned char*>(out));
  }
  if (offset < 0 || n < 0 || offset > size_ || n > size_ - offset) {
    return Status::io_error(name_ + ": truncated: needs bytes " + std::to_string(offset) + " to " +
                            std::to_string(offset + n) + " but the file has " +
                            std::to_string(size_) + " bytes");
  }
  if (fd_ < 0) {
    if (n > 0) std::memcpy(out, buffer_.data() + offset, static_cast<size_t>(n));
    return Status();
  }
  const int err = pread_all(fd_, out, n, origin_ + offset);
  if (err > 0) {
    return Status::io_error(name_ + ": cannot read at offset " + std::to_string(offset) + ": " +
                            errno_text(err));
  }
  if (err < 0) {
    struct stat st;
    const std::string now = ::fstat(fd_, &st) == 0
                                ? std::to_string(st.st_size) + " bytes"
                                : "fewer than " + std::to_string(offset + n) + " bytes";
    return Status::io_error(name_ + ": truncated: the file shrank to " + now +
                            " while it was being read");
  }
  return Status();
}

namespace {

// The descriptor of this process a path names (/dev/stdout, /dev/stderr,
// /dev/fd/N, /proc/self/fd/N, /proc/thread-self/fd/N, /proc/PID/fd/N with
// this process's PID), or -1.
int own_descriptor_named(const std::string& path) {
  if (path == "/dev/stdin") return 0;
  if (path == "/dev/stdout") return 1;
  if (path == "/dev/stderr") return 2;
  const std::string by_pid = "/proc/" + std::to_string(::getpid()) + "/fd/";
  for (const std::string_view prefix :
       {std::string_view("/dev/fd/"), std::string_view("/proc/self/fd/"),
        std::string_view("/proc/thread-self/fd/"), std::string_view(by_pid)}) {
    if (path.size() <= prefix.size() || path.compare(0, prefix.size(), prefix) != 0) continue;
    int fd = 0;
    const char* first = path.data() + prefix.size();
    const char* last = path.data() + path.size();
    const auto [end, ec] = std::from_chars(first, last, fd);
    if (ec == std::errc() && end == last && fd >= 0) return fd;
  }
  return -1;
}

// The same for `path` or any link on the chain it starts (a link of the
// user's own to /dev/stdout), or -1.
int own_descriptor(std::string path) {
  for (int hops = 0; hops <= kMaxHops; ++hops) {
    if (const int fd = own_descriptor_named(path); fd >= 0) return fd;
    std::optional<std::string> next = link_target(path);
    if (!next) return -1;
    path = std::move(*next);
  }
  return -1;
}

// The longest prefix of `name` of at most `max` bytes that does not split a
// UTF-8 character (a continuation byte, 10xxxxxx, never starts the cut-off
// part).
std::string utf8_prefix(const std::string& name, size_t max) {
  if (name.size() <= max) return name;
  size_t cut = max;
  while (cut > 0 && (static_cast<unsigned char>(name[cut]) & 0xC0u) == 0x80u) --cut;
  return name.substr(0, cut);
}

}  // namespace

bool written_in_place(const std::string& path) {
  struct stat st;
  return own_descriptor(path) >= 0 || (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode));
}

Result<AtomicFile> AtomicFile::create(const std::string& path, bool unnamed) {
  AtomicFile file;
  file.path_ = path;
  file.buffer_.resize(kWriteBuffer);
  // One of this process's own descriptors (`-o /dev/stdout`) is written
  // through, as the program's standard output is without -o: its file
  // (a shell's redirection to a log, say) is not replaced, and what is
  // written goes where that descriptor's writes go.
  if (const int own = own_descriptor(path); own >= 0) {
    const int flags = ::fcntl(own, F_GETFL);
    if (flags < 0) return Status::io_error(path + ": cannot write: " + errno_text(errno));
    if ((flags & O_ACCMODE) == O_RDONLY) {
      return Status::io_error(path + ": cannot write: the descriptor is open for reading only");
    }
    file.fd_ = ::fcntl(own, F_DUPFD_CLOEXEC, 3);
    if (file.fd_ < 0) return Status::io_error(path + ": cannot write: " + errno_text(errno));
    return file;
  }
  struct stat st;
  if (::stat(path.c_str(), &st) == 0 && !S_ISREG(st.st_mode)) {
    if (S_ISDIR(st.st_mode)) return Status::io_error(path + ": is a directory");
    file.fd_ = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    if (file.fd_ < 0) return Status::io_error(path + ": cannot open: " + errno_text(errno));
    return file;
  }
  // A symbolic link is written through, as a shell's `>` would: the file it
  // names is replaced and the link stays (so is `/dev/stdout` redirected to a
  // file). Renaming over the link itself would replace the link.
  const std::optional<std::string> linked = through_links(path);
  if (!linked) return Status::io_error(path + ": cannot write: " + errno_text(ELOOP));
  const std::string& target = *linked;
  file.path_ = target;
  // A file that is there already keeps its permissions, and one this user
  // may not write is refused, as `>` would refuse it (the rename would
  // replace it regardless).
  struct stat old;
  const bool replacing = ::stat(target.c_str(), &old) == 0;
  if (replacing && ::access(target.c_str(), W_OK) != 0) {
    return Status::io_error(path + ": cannot write: " + errno_text(errno));
  }
  const std::string directory = parent_directory(target);
  // In a sticky directory (/tmp) only the file's owner, the directory's or
  // root may rename over a file: another user's, which this one may write,
  // could not be replaced once the work is done. Said now. (Root stands for
  // CAP_FOWNER here: a process with the capability but another user is
  // refused, one without it as root fails at the rename as before.)
  if (replacing && ::geteuid() != 0 && old.st_uid != ::geteuid()) {
    struct stat dir;
    if (::stat(directory.c_str(), &dir) == 0 && (dir.st_mode & S_ISVTX) != 0 &&
        dir.st_uid != ::geteuid()) {
      return Status::io_error(path +
                              ": cannot replace a file of another user in the sticky directory '" +
                              directory + "': write to a new file or to standard output");
    }
  }
  // A new file's temporary is created with the mode a plain create would
  // give (0666 less the umask, applied by the kernel: reading the umask means
  // setting it, which would race with other threads creating files). One
  // that replaces a file is created 0600 and given the old file's mode once
  // open: another user who opened it in between could read what is written
  // (permissions are checked at open), which a private file must not allow.
  const mode_t mode = replacing ? 0600 : 0666;
  // (".NAME.tmp-" and six characters: NAME cut short where that would pass
  // the file system's longest name, which the output's own may reach)
  const long name_max = ::pathconf(directory.c_str(), _PC_NAME_MAX);
  const auto longest = static_cast<size_t>(name_max > 12 ? name_max : NAME_MAX);
  // (a name the final rename would refuse, after all the work: said now)
  if (base_name(target).size() > longest) {
    return Status::io_error(target + ": cannot create: " + errno_text(ENAMETOOLONG) + " (" +
                            std::to_string(base_name(target).size()) + " bytes; the file system " +
                            "takes at most " + std::to_string(longest) + ")");
  }
  const std::string base = utf8_prefix(base_name(target), longest - 12);
  file.stem_ = directory + "/." + base + ".tmp-";
  // The temporary has no name while it is written (O_TMPFILE): a run killed
  // by any signal, even SIGKILL, leaves nothing behind. commit() links it in
  // through /proc/self/fd. Where the file system (or a missing /proc) does
  // not allow that, it is a named file beside the destination, which only
  // a run that ends without unwinding leaves behind.
  int fd = unnamed ? ::open(directory.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, mode) : -1;
  if (fd >= 0 && ::access(proc_fd_path(fd).c_str(), F_OK) != 0) {
    ::close(fd);
    fd = -1;
  }
  if (fd >= 0 && !replacing) apply_umask_if_skipped(fd, directory);
  if (fd < 0) {
    Result<int> named = file.create_named(mode);
    if (!named.ok()) return named.status();
    fd = *named;
  }
  file.fd_ = fd;
  // A replaced file's permission bits are kept (not its set-user-ID,
  // set-group-ID or sticky bits, which a write by another user clears).
  if (replacing) ::fchmod(fd, old.st_mode & 0777);
  return file;
}

// The temporary's name takes mkstemp's six characters after the stem (a
// longer suffix would refuse output names that mkstemp's fit under
// NAME_MAX); `make(name)` creates the file or fails with errno.
template <typename Make>
std::string AtomicFile::fresh_name(Make&& make) const {
  static constexpr char kAlphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::random_device entropy;
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string name = stem_;
    for (int i = 0; i < 6; ++i) name.push_back(kAlphabet[entropy() % (sizeof kAlphabet - 1)]);
    if (make(name)) return name;
    if (errno != EEXIST) break;
  }
  return {};
}

Result<int> AtomicFile::create_named(mode_t mode) {
  int fd = -1;
  temp_path_ = fresh_name([&](const std::string& name) {
    fd = ::open(name.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    return fd >= 0;
  });
  if (fd < 0) {
    return Status::io_error(path_ + ": cannot create a temporary file in '" +
                            parent_directory(path_) + "': " + errno_text(errno));
  }
  return fd;
}

AtomicFile::AtomicFile(AtomicFile&& other) noexcept
    : path_(std::move(other.path_)),
      temp_path_(std::move(other.temp_path_)),
      stem_(std::move(other.stem_)),
      fd_(std::exchange(other.fd_, -1)),
      buffer_(std::move(other.buffer_)),
      used_(std::exchange(other.used_, 0)) {
  other.temp_path_.clear();
}

AtomicFile& AtomicFile::operator=(AtomicFile&& other) noexcept {
  if (this != &other) {
    discard();
    path_ = std::move(other.path_);
    temp_path_ = std::move(other.temp_path_);
    other.temp_path_.clear();
    stem_ = std::move(other.stem_);
    other.stem_.clear();
    fd_ = std::exchange(other.fd_, -1);
    buffer_ = std::move(other.buffer_);
    used_ = std::exchange(other.used_, 0);
  }
  return *this;
}

AtomicFile::~AtomicFile() { discard(); }

bool AtomicFile::is_terminal() const { return fd_ >= 0 && ::isatty(fd_) == 1; }

void AtomicFile::discard() {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  if (!temp_path_.empty()) ::unlink(temp_path_.c_str());
  temp_path_.clear();
  used_ = 0;
}

Status AtomicFile::flush() {
  if (const int err = write_all(fd_, buffer_.data(), used_); err != 0) {
    return Status::io_error(path_ + ": cannot write: " + errno_text(err));
  }
  used_ = 0;
  return Status();
}

Status AtomicFile::write(const void* data, size_t n) {
  if (fd_ < 0) return Status::io_error(path_ + ": write after commit or discard");
  const auto* src = static_cast<const char*>(data);
  while (n > 0) {
    const size_t take = std::min(n, buffer_.size() - used_);
    std::memcpy(buffer_.data() + used_, src, take);
    used_ += take;
    src += take;
    n -= take;
    if (used_ == buffer_.size()) {
      if (Status s = flush(); !s.ok()) return s;
    }
  }
  return Status();
}

Status AtomicFile::commit() {
  if (fd_ < 0) return Status::io_error(path_ + ": commit after commit or discard");
  if (Status s = flush(); !s.ok()) {
    discard();
    return s;
  }
  // (a file that replaces another reaches the disk first: after a crash the
  // name holds the old file or the whole new one, never a part of it; a
  // file system that cannot sync says EINVAL, and has nothing to lose)
  if (!stem_.empty() && ::fdatasync(fd_) != 0 && errno != EINVAL) {
    const int err = errno;
    discard();
    return Status::io_error(path_ + ": cannot write: " + errno_text(err));
  }
  if (temp_path_.empty() && !stem_.empty()) {
    // The unnamed temporary gets its name now, just before it replaces the
    // destination (a link cannot replace a file; the rename below does).
    const std::string from = proc_fd_path(fd_);
    temp_path_ = fresh_name([&](const std::string& name) {
      return ::linkat(AT_FDCWD, from.c_str(), AT_FDCWD, name.c_str(), AT_SYMLINK_FOLLOW) == 0;
    });
    if (temp_path_.empty()) {
      const int err = errno;
      discard();
      return Status::io_error(path_ + ": cannot name the finished file in '" +
                              parent_directory(path_) + "': " + errno_text(err));
    }
  }
  const int fd = std::exchange(fd_, -1);
  if (::close(fd) != 0) {
    const int err = errno;
    discard();
    return Status::io_error(path_ + ": cannot write: " + errno_text(err));
  }
  if (!temp_path_.empty() && ::rename(temp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    discard();
    return Status::io_error(path_ +
                            ": cannot rename the finished file into place: " + errno_text(err));
  }
  temp_path_.clear();
  return Status();
}

}  // namespace nucleus::detail
