// A progress bar on standard error, shown only when standard error is a
// terminal and the run has already taken a while, so pipelines, logs and
// short runs stay clean; never when the run writes its results to a
// terminal too (standard output, or -o /dev/stdout, /dev/tty: the same
// screen, where the bar would break into the lines).
#pragma once

#include <chrono>
#include <cstdint>

namespace nucleus::cli {

class Progress {
 public:
  // `results_on_terminal`: the run's results go to a terminal.
  Progress(int64_t total_rows, bool quiet, bool results_on_terminal);
  ~Progress();

  void advance(int64_t rows);
  // Clears the bar.
  void finish();

 private:
  void draw();

  int64_t total_ = 0;
  int64_t done_ = 0;
  bool enabled_ = false;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace nucleus::cli
