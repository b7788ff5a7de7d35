// Replays every fuzz input that is checked in: the seed corpus
// (fuzz/corpus/<target>/) and each input that once crashed a target or broke
// one of its invariants (fuzz/regressions/<target>/). The targets are the
// functions the libFuzzer binaries call (fuzz/*_targets.h), so this runs the
// same checks in the ordinary build, and under AddressSanitizer and UBSan in
// scripts/sanitize.sh, without clang or libFuzzer. A failing input aborts the
// program; the line printed before it names the file.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <string>
#include <vector>

#include "fuzz/dump_targets.h"
#include "fuzz/engine_targets.h"

namespace nucleus {
namespace {

namespace fs = std::filesystem;

struct Target {
  const char* name;
  std::function<int(const uint8_t*, size_t)> run;
};

const Target kTargets[] = {
    {"dump_npy",
     [](const uint8_t* d, size_t n) { return fuzz::FuzzHeaderDump(DumpFormat::kNpy, d, n); }},
    {"dump_safetensors",
     [](const uint8_t* d, size_t n) {
       return fuzz::FuzzHeaderDump(DumpFormat::kSafetensors, d, n);
     }},
    {"dump_raw", [](const uint8_t* d, size_t n) { return fuzz::FuzzRawDump(d, n); }},
    {"engine_sample", [](const uint8_t* d, size_t n) { return fuzz::FuzzSample(d, n); }},
    {"engine_verify", [](const uint8_t* d, size_t n) { return fuzz::FuzzVerify(d, n); }},
};

std::vector<fs::path> Inputs(const fs::path& dir) {
  std::vector<fs::path> files;
  if (!fs::is_directory(dir)) return files;
  for (const fs::directory_entry& e : fs::directory_iterator(dir)) {
    if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

class FuzzReplay : public ::testing::TestWithParam<Target> {};

TEST_P(FuzzReplay, CorpusAndRegressionsPass) {
  const fs::path root = fs::path(NUCLEUS_SOURCE_DIR) / "fuzz";
  const std::vector<fs::path> corpus = Inputs(root / "corpus" / GetParam().name);
  // Every target has seeds; an empty list would mean a broken checkout.
  EXPECT_FALSE(corpus.empty()) << "no seeds in fuzz/corpus/" << GetParam().name;
  std::vector<fs::path> all = corpus;
  const std::vector<fs::path> regressions = Inputs(root / "regressions" / GetParam().name);
  all.insert(all.end(), regressions.begin(), regressions.end());
  for (const fs::path& path : all) {
    std::fprintf(stderr, "replaying %s\n", path.c_str());
    std::ifstream in(path, std::ios::binary);
    const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(in)),
                                     std::istreambuf_iterator<char>());
    EXPECT_EQ(GetParam().run(bytes.data(), bytes.size()), 0) << path;
  }
}

INSTANTIATE_TEST_SUITE_P(Targets, FuzzReplay, ::testing::ValuesIn(kTargets),
                         [](const ::testing::TestParamInfo<Target>& info) {
                           return std::string(info.param.name);
                         });

}  // namespace
}  // namespace nucleus
