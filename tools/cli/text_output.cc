#include "tools/cli/text_output.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>

namespace nucleus::cli {

Result<TextOutput> TextOutput::open(const std::string& path) {
  TextOutput out;
  if (path.empty() || path == "-") return out;
  Result<detail::AtomicFile> file = detail::AtomicFile::create(path);
  if (!file.ok()) return file.status();
  out.file_.emplace(std::move(file).value());
  return out;
}

Status TextOutput::write(std::string_view text) {
  if (file_) return file_->write(text);
  if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size()) {
    return Status::io_error("standard output: cannot write: " + detail::errno_text(errno));
  }
  return Status();
}

bool TextOutput::is_terminal() const {
  return file_ ? file_->is_terminal() : ::isatty(STDOUT_FILENO) == 1;
}

Status TextOutput::commit() {
  if (file_) return file_->commit();
  if (std::fflush(stdout) != 0) {
    return Status::io_error("standard output: cannot write: " + detail::errno_text(errno));
  }
  return Status();
}

}  // namespace nucleus::cli
