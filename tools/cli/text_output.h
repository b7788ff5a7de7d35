// Where a command's text goes: standard output, or a file that appears under
// its name only once the run succeeds (a failed run leaves no partial file).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "engine/io/file_io.h"
#include "nucleus/status.h"

namespace nucleus::cli {

class TextOutput {
 public:
  // "" or "-": standard output.
  static Result<TextOutput> open(const std::string& path);

  Status write(std::string_view text);
  // Flushes standard output, or renames the file into place.
  Status commit();
  // Whether the text goes to a terminal (standard output, or a path such as
  // /dev/stdout or /dev/tty written in place).
  bool is_terminal() const;

 private:
  std::optional<detail::AtomicFile> file_;
};

}  // namespace nucleus::cli
