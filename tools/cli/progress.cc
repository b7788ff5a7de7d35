#include "tools/cli/progress.h"

#include <unistd.h>

#include <cstdio>
#include <string>

namespace nucleus::cli {
namespace {

// Runs shorter than this never show a bar.
constexpr std::chrono::milliseconds kShowAfter(700);
constexpr std::chrono::milliseconds kRedrawEvery(100);
constexpr int kWidth = 30;

}  // namespace

Progress::Progress(int64_t total_rows, bool quiet, bool results_on_terminal)
    : total_(total_rows),
      enabled_(!quiet && total_rows > 0 && ::isatty(STDERR_FILENO) == 1 && !results_on_terminal),
      start_(std::chrono::steady_clock::now()) {}

Progress::~Progress() { finish(); }

void Progress::advance(int64_t rows) {
  done_ += rows;
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (now - start_ < kShowAfter || (drawn_ && now - last_draw_ < kRedrawEvery)) return;
  last_draw_ = now;
  draw();
}

void Progress::draw() {
  const double fraction = static_cast<double>(done_) / static_cast<double>(total_);
  const int filled = static_cast<int>(fraction * kWidth);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  std::string bar(static_cast<size_t>(filled), '#');
  bar.append(static_cast<size_t>(kWidth - filled), '.');
  std::fprintf(stderr, "\r[%s] %lld/%lld rows  %.1f s", bar.c_str(), static_cast<long long>(done_),
               static_cast<long long>(total_), seconds);
  std::fflush(stderr);
  drawn_ = true;
}

void Progress::finish() {
  if (!drawn_) return;
  std::fprintf(stderr, "\r\033[K");  // erase the line
  std::fflush(stderr);
  drawn_ = false;
}

}  // namespace nucleus::cli
