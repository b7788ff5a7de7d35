// The bad-input matrix (docs/robustness.md): malformed dumps, options and
// parameters, through every interface that takes them -- the `nucleus`
// program, the C++ API (DumpReader, Engine) and the C API (nucleus.h).
//
// Each case must end in the documented outcome and nothing else: exit status
// 2 / a call error with a message that names the problem, or exit status 1 /
// a row error with the other rows still sampled; never a crash, a hang (every
// run of the program has a time limit) or a partial output file.
//
// tests/cli_test.cc (Cli.MalformedInputsFailCleanly) and tests/errors_test.cc
// already cover the common mistakes (missing files, wrong extensions, f8 and
// big-endian data, lying shapes, each parameter out of range); the cases here
// are the ones they leave out: extreme and empty shapes, declared sizes that
// overflow, a file cut at every offset of its header, odd dtype strings,
// malformed --params values, mask / ban / bias combinations, NaN in the row
// padding against NaN in the vocabulary, and the engine's numeric corners.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include <algorithm>
#include <cctype>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <vector>

#include "engine/io/half.h"
#include "nucleus/dump.h"
#include "nucleus/engine.h"
#include "nucleus/nucleus.h"
#include "test_files.h"

namespace nucleus {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;
using ::testing::Not;

constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// Every part must appear (case-insensitively: "NaN" / "nan").
void ExpectMentions(const std::string& text, const std::vector<std::string>& parts) {
  for (const std::string& part : parts) {
    EXPECT_THAT(Lower(text), HasSubstr(Lower(part))) << "in: " << text;
  }
}

using test_files::ReadFile;
using test_files::WriteFile;

fs::path TestDir() { return test_files::TestDir("bad_input_test"); }

std::string F32Bytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

std::vector<float> Ramp(size_t n) {
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>((i * 7) % 11) * 0.3f - 1.0f;
  return v;
}

// A .npy file whose header dictionary is `dict` verbatim (padded to 64
// bytes, as NumPy does), format version `version`.
std::string Npy(const std::string& dict, const std::string& payload, int version = 1) {
  const size_t prefix = version == 1 ? 10 : 12;
  std::string text = dict;
  const size_t total = (prefix + text.size() + 1 + 63) / 64 * 64;
  text.append(total - prefix - text.size() - 1, ' ');
  text.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(static_cast<char>(version));
  out.push_back(0);
  const size_t len = text.size();
  for (size_t i = 0; i < (version == 1 ? 2u : 4u); ++i) {
    out.push_back(static_cast<char>((len >> (8 * i)) & 0xff));
  }
  return out + text + payload;
}

std::string NpyDict(const std::string& descr, const std::string& shape) {
  return "{'descr': '" + descr + "', 'fortran_order': False, 'shape': " + shape + ", }";
}

// A .safetensors file: 8-byte little-endian header length (`declared`, or the
// JSON's own length), the JSON header, the data.
std::string Safetensors(const std::string& json, const std::string& payload,
                        std::optional<uint64_t> declared = std::nullopt) {
  const uint64_t len = declared ? *declared : json.size();
  std::string out(8, '\0');
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((len >> (8 * i)) & 0xff);
  return out + json + payload;
}

// ---------------------------------------------------------------------------------------------
// The program, run with a time limit.

#ifdef NUCLEUS_CLI_PATH
constexpr bool kHaveCli = true;
const char* const kCliPath = NUCLEUS_CLI_PATH;
#else
constexpr bool kHaveCli = false;
const char* const kCliPath = "";
#endif

std::string Quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

struct CliRun {
  int code = -1;  // the exit status; -1 if killed by a signal
  bool timed_out = false;
  std::string out, err;
};

// `timeout` turns a hang into exit status 124 (and a kill after a grace
// period), so no case can stall the suite.
CliRun RunCli(const fs::path& dir, const std::string& args, const std::string& stdin_file = "",
              const std::string& before = "") {
  const fs::path out = dir / ".stdout", err = dir / ".stderr";
  std::string command = "cd " + Quote(dir.string()) + " && " + before + "timeout -k 5 120 " +
                        Quote(kCliPath) + " " + args + " > " + Quote(out.string()) + " 2> " +
                        Quote(err.string());
  if (!stdin_file.empty()) command += " < " + Quote(stdin_file);
  const int status = std::system(command.c_str());
  CliRun run;
  run.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  run.timed_out = run.code == 124 || run.code == 137;
  run.out = ReadFile(out);
  run.err = ReadFile(err);
  fs::remove(out);
  fs::remove(err);
  return run;
}

size_t CountLines(const std::string& text) {
  return static_cast<size_t>(std::count(text.begin(), text.end(), '\n'));
}

// A failed run: status 2, a short message with every part, nothing on
// standard output, and nothing left in `out_dir`.
void ExpectCliFailure(const CliRun& run, const std::vector<std::string>& parts,
                      const fs::path& out_dir) {
  EXPECT_FALSE(run.timed_out) << "the program hung";
  EXPECT_EQ(run.code, 2) << run.err;
  ExpectMentions(run.err, parts);
  EXPECT_LE(CountLines(run.err), 2u) << run.err;  // CLI11 adds a --help hint
  EXPECT_EQ(run.out, "");
  if (fs::exists(out_dir)) {
    EXPECT_TRUE(fs::is_empty(out_dir)) << "left " << fs::directory_iterator(out_dir)->path();
  }
}

// ---------------------------------------------------------------------------------------------
// Malformed dumps: the program, DumpReader and nucleus_dump_open.

struct FileCase {
  const char* name;
  std::string file;                  // the extension picks the format
  std::string bytes;                 // the file's contents
  std::string args;                  // program options after the path
  DumpOptions options;               // the same options for the C++ and C readers
  std::vector<std::string> message;  // what every interface must say
  bool reader_too = true;            // false: an option only the program parses
  bool sample_only = false;          // a draw option, which `probs` does not take
};

DumpOptions Raw(DType dtype, int64_t vocab) {
  DumpOptions o;
  o.dtype = dtype;
  o.vocab = vocab;
  return o;
}

DumpOptions Format(DumpFormat format) {
  DumpOptions o;
  o.format = format;
  return o;
}

std::vector<FileCase> FileCases() {
  const std::string d16 = F32Bytes(Ramp(16));  // 64 bytes: 2 x 8 float32
  const std::string ok_npy = Npy(NpyDict("<f4", "(2, 8)"), d16);
  const std::string ok_st =
      Safetensors(R"({"logits":{"dtype":"F32","shape":[2,8],"data_offsets":[0,64]}})", d16);
  std::vector<FileCase> cases;
  // One call per case (rather than one large initializer list, which makes
  // GCC 12 warn about the DumpOptions members it cannot follow).
  auto add = [&cases](const char* name, std::string file, std::string bytes, std::string args,
                      DumpOptions options, std::vector<std::string> message, bool reader_too = true,
                      bool sample_only = false) {
    FileCase c;
    c.name = name;
    c.file = std::move(file);
    c.bytes = std::move(bytes);
    c.args = std::move(args);
    c.options = std::move(options);
    c.message = std::move(message);
    c.reader_too = reader_too;
    c.sample_only = sample_only;
    cases.push_back(std::move(c));
  };
  // --- NumPy: shapes.
  add("npy zero rows", "z.npy", Npy(NpyDict("<f4", "(0, 8)"), ""), "", {}, {"(0, 8)", "no logits"});
  add("npy zero vocab", "z.npy", Npy(NpyDict("<f4", "(4, 0)"), ""), "", {},
      {"(4, 0)", "no logits"});
  add("npy zero middle axis", "z.npy", Npy(NpyDict("<f4", "(2, 0, 8)"), ""), "", {},
      {"(2, 0, 8)", "no logits"});
  add("npy scalar", "s.npy", Npy(NpyDict("<f4", "()"), F32Bytes({1.0f})), "", {}, {"scalar"});
  add("npy huge declared shape", "h.npy", Npy(NpyDict("<f4", "(1099511627776, 1073741824)"), d16),
      "", {}, {"shape", "1099511627776", "truncated"});
  add("npy shape product overflows", "h.npy",
      Npy(NpyDict("<f4", "(4611686018427387904, 4, 8)"), d16), "", {}, {"shape", "too large"});
  add("npy vocab beyond int32", "v.npy", Npy(NpyDict("<f2", "(1, 4294967296)"), d16), "", {},
      {"4294967296", "int32"});
  add("npy dimension beyond int64", "v.npy", Npy(NpyDict("<f4", "(99999999999999999999, 8)"), d16),
      "", {}, {"malformed", "shape"});
  add("npy negative dimension", "n.npy", Npy(NpyDict("<f4", "(-2, 8)"), d16), "", {},
      {"malformed", "non-negative"});
  add("npy float dimension", "n.npy", Npy(NpyDict("<f4", "(2.0, 8)"), d16), "", {}, {"malformed"});
  // --- NumPy: the header itself.
  add("npy version 9", "v.npy",
      [&] {
        std::string b = ok_npy;
        b[6] = 9;
        return b;
      }(),
      "", {}, {"version", "9.0"});
  add("npy version 1.9", "v.npy",
      [&] {
        std::string b = ok_npy;
        b[7] = 9;  // (NumPy reads 1.0, 2.0 and 3.0 only)
        return b;
      }(),
      "", {}, {"version", "1.9"});
  add("npy header length implausible", "l.npy",
      std::string("\x93NUMPY\x02\x00\xff\xff\xff\x7f", 12) + "{}", "", {},
      {"header length", "implausibly large"});
  add("npy header not a dict", "d.npy", Npy("[1, 2, 3]", d16), "", {}, {"malformed", "'{'"});
  add("npy shape missing", "d.npy", Npy("{'descr': '<f4', 'fortran_order': False, }", d16), "", {},
      {"'shape' is missing"});
  add("npy unknown field", "d.npy",
      Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 8), 'extra': 1, }", d16), "", {},
      {"unknown field 'extra'"});
  add("npy escaped string", "d.npy",
      Npy("{'descr': '<f\\4', 'fortran_order': False, 'shape': (2, 8), }", d16), "", {}, {"descr"});
  add("npy unterminated dict", "d.npy",
      Npy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 8)", d16), "", {}, {"malformed"});
  add("npy fortran_order not a bool", "d.npy",
      Npy("{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 8), }", d16), "", {},
      {"True or False"});
  // --- NumPy: dtype strings.
  add("npy descr without byte order", "t.npy", Npy(NpyDict("|f4", "(2, 8)"), d16), "", {},
      {"'|f4'", "byte order"});
  add("npy descr float32 spelled out", "t.npy", Npy(NpyDict("float32", "(2, 8)"), d16), "", {},
      {"'float32'", "not a supported dtype"});
  add("npy descr int32", "t.npy", Npy(NpyDict("<i4", "(2, 8)"), d16), "", {}, {"'<i4'"});
  add("npy descr complex", "t.npy", Npy(NpyDict("<c8", "(2, 4)"), d16), "", {}, {"'<c8'"});
  add("npy descr bfloat16", "t.npy", Npy(NpyDict("<V2", "(4, 8)"), d16), "", {}, {"'<V2'"});
  add("npy descr trailing junk", "t.npy", Npy(NpyDict("<f4x", "(2, 8)"), d16), "", {}, {"'<f4x'"});
  add("npy descr empty", "t.npy", Npy(NpyDict("", "(2, 8)"), d16), "", {}, {"descr", "''"});
  add("npy structured dtype", "t.npy",
      Npy("{'descr': [('x', '<f4')], 'fortran_order': False, 'shape': (2, 8), }", d16), "", {},
      {"structured"});
  add("npy f2 header over f4 data", "t.npy", Npy(NpyDict("<f2", "(2, 8)"), d16), "", {},
      {"(2, 8)", "f16", "does not describe"});
  // --- safetensors.
  add("safetensors shorter than its length field", "s.safetensors", std::string("\x10\x00\x00", 3),
      "", {}, {"truncated", "8-byte"});
  add("safetensors header length past the end", "s.safetensors", Safetensors("{}", "", 4096), "",
      {}, {"truncated", "4096"});
  add("safetensors header length 2^63", "s.safetensors", Safetensors("{}", "", uint64_t{1} << 63),
      "", {}, {"header length", "100 MB"});
  add("safetensors header is an array", "s.safetensors", Safetensors("[1, 2]", d16), "", {},
      {"array", "not a JSON object"});
  add("safetensors header not UTF-8", "s.safetensors", Safetensors("{\"lo\xff\xfegits\": 1}", d16),
      "", {}, {"JSON"});
  add("safetensors tensor entry not an object", "s.safetensors",
      Safetensors(R"({"logits": 5})", d16), "", {}, {"'logits'", "not a JSON object"});
  add("safetensors dtype missing", "s.safetensors",
      Safetensors(R"({"logits":{"shape":[2,8],"data_offsets":[0,64]}})", d16), "", {},
      {"'dtype' is missing"});
  add("safetensors shape of strings", "s.safetensors",
      Safetensors(R"({"logits":{"dtype":"F32","shape":["2",8],"data_offsets":[0,64]}})", d16), "",
      {}, {"'shape'", "non-negative integer"});
  add("safetensors negative dimension", "s.safetensors",
      Safetensors(R"({"logits":{"dtype":"F32","shape":[-2,8],"data_offsets":[0,64]}})", d16), "",
      {}, {"'shape'", "non-negative integer"});
  add("safetensors offsets reversed", "s.safetensors",
      Safetensors(R"({"logits":{"dtype":"F32","shape":[2,8],"data_offsets":[64,0]}})", d16), "", {},
      {"data_offsets", "[64,0]", "begin <= end"});
  add("safetensors three offsets", "s.safetensors",
      Safetensors(R"({"logits":{"dtype":"F32","shape":[2,8],"data_offsets":[0,32,64]}})", d16), "",
      {}, {"data_offsets", "[begin, end]"});
  add("safetensors offsets beyond int64", "s.safetensors",
      Safetensors(
          R"({"logits":{"dtype":"F32","shape":[2,8],"data_offsets":[0,18446744073709551615]}})",
          d16),
      "", {}, {"data_offsets", "18446744073709551615"});
  add("safetensors no tensor", "s.safetensors", Safetensors("{}", d16), "", {}, {"no tensor"});
  add("safetensors metadata only", "s.safetensors",
      Safetensors(R"({"__metadata__":{"format":"pt"}})", d16), "", {}, {"no tensor"});
  add("safetensors F64", "s.safetensors",
      Safetensors(R"({"logits":{"dtype":"F64","shape":[1,8],"data_offsets":[0,64]}})", d16), "", {},
      {"'F64'", "not a supported dtype"});
  add("safetensors lower-case dtype", "s.safetensors",
      Safetensors(R"({"logits":{"dtype":"f32","shape":[2,8],"data_offsets":[0,64]}})", d16), "", {},
      {"'f32'"});
  add("safetensors scalar", "s.safetensors",
      Safetensors(R"({"logits":{"dtype":"F32","shape":[],"data_offsets":[0,4]}})",
                  d16.substr(0, 4)),
      "", {}, {"scalar"});
  add("safetensors zero rows", "s.safetensors",
      Safetensors(R"({"logits":{"dtype":"F32","shape":[0,8],"data_offsets":[0,0]}})", ""), "", {},
      {"(0, 8)", "no logits"});
  add("safetensors huge tensor past the end", "s.safetensors",
      Safetensors(R"({"a":{"dtype":"U8","shape":[64],"data_offsets":[0,64]},)"
                  R"("logits":{"dtype":"BF16","shape":[4294967296,2],)"
                  R"("data_offsets":[64,17179869248]}})",
                  d16),
      "--tensor logits",
      [] {
        DumpOptions o;
        o.tensor = "logits";
        return o;
      }(),
      {"'logits'", "data_offsets", "truncated"});
  // --- Raw dumps and the options that describe them.
  add("raw empty file", "e.bin", "", "--dtype f32 --vocab 8", Raw(DType::kFloat32, 8), {"empty"});
  add("raw vocab beyond int32", "r.bin", d16, "--dtype f16 --vocab 4294967296",
      Raw(DType::kFloat16, int64_t{1} << 32), {"4294967296", "int32"});
  add("raw odd size for f16", "r.bin", d16 + "x", "--dtype f16 --vocab 2", Raw(DType::kFloat16, 2),
      {"size = 65 bytes", "f16"});
  add("vocab disagrees with the header", "ok.npy", ok_npy, "--vocab 4", Raw(DType::kFloat32, 4),
      {"vocab = 4", "(2, 8)"});
  add("npy read as safetensors", "ok.npy", ok_npy, "--input-format safetensors",
      Format(DumpFormat::kSafetensors), {"ok.npy", "header length"});
  add("safetensors read as npy", "ok.safetensors", ok_st, "--input-format npy",
      Format(DumpFormat::kNpy), {"ok.safetensors", "magic"});
  // --- Options only the program parses (CLI11 checks them).
  add("dtype float64", "r.bin", d16, "--dtype f64 --vocab 8", {}, {"--dtype", "f64"}, false);
  add("vocab zero", "r.bin", d16, "--dtype f32 --vocab 0", {}, {"--vocab"}, false);
  add("vocab not a number", "r.bin", d16, "--dtype f32 --vocab 8k", {}, {"--vocab", "8k"}, false);
  add("block size zero", "ok.npy", ok_npy, "--block-mb 0", {}, {"--block-mb"}, false);
  add("negative threads", "ok.npy", ok_npy, "--threads -1", {}, {"--threads"}, false);

  add("seed not a number", "ok.npy", ok_npy, "--seed 0x1g", {}, {"--seed"}, false);
  add("input format unknown", "ok.npy", ok_npy, "--input-format hdf5", {}, {"--input-format"},
      false);
  add("history not a list", "ok.npy", ok_npy, "--history 1,x", {}, {"--history"}, false);
  add("bias without a value", "ok.npy", ok_npy, "--logit-bias 3:", {}, {"--logit-bias", "'3:'"},
      false);
  add("bias token beyond int32", "ok.npy", ok_npy, "--logit-bias 99999999999:1", {},
      {"--logit-bias", "99999999999"}, false);
  add("banned token = vocab", "ok.npy", ok_npy, "--banned 8", {}, {"--banned", "8"}, false);
  add("negative prompt token", "ok.npy", ok_npy, "--prompt-tokens=-1", {},
      {"--prompt-tokens", "-1"}, false);
  add("temperature NaN", "ok.npy", ok_npy, "--temperature nan", {}, {"--temperature", "nan"},
      false);
  add("top-n-sigma +inf", "ok.npy", ok_npy, "--top-n-sigma inf", {}, {"--top-n-sigma", "inf"},
      false);
  add("repetition penalty zero", "ok.npy", ok_npy, "--repetition-penalty 0", {},
      {"--repetition-penalty", "0"}, false);
  add("min-p above one", "ok.npy", ok_npy, "--min-p 1.0001", {}, {"--min-p", "1.0001"}, false);
  add("top-k below -1", "ok.npy", ok_npy, "--top-k=-2", {}, {"--top-k", "-2"}, false);
  add("num-samples zero", "ok.npy", ok_npy, "-n 0", {}, {"--num-samples", "0"}, false, true);
  add("logprobs mode unknown", "ok.npy", ok_npy, "--logprobs-mode final", {}, {"--logprobs-mode"},
      false, true);
  return cases;
}

nucleus_dump_options ToC(const DumpOptions& o) {
  nucleus_dump_options c = nucleus_dump_options_default();
  c.format = static_cast<int32_t>(o.format);
  c.tensor = o.tensor.empty() ? nullptr : o.tensor.c_str();
  if (o.dtype) {
    c.has_dtype = 1;
    c.dtype = static_cast<int32_t>(*o.dtype);
  }
  c.vocab = o.vocab;
  return c;
}

// One case through the C++ reader, the C reader and the program (sample,
// probs and inspect).
void CheckFileCase(const fs::path& dir, const FileCase& c) {
  SCOPED_TRACE(c.name);
  const fs::path path = dir / c.file;
  WriteFile(path, c.bytes);

  if (c.reader_too) {
    Result<DumpReader> reader = DumpReader::open(path.string(), c.options);
    ASSERT_FALSE(reader.ok()) << "the C++ reader accepted it";
    EXPECT_TRUE(reader.status().code() == StatusCode::kIoError ||
                reader.status().code() == StatusCode::kInvalidArgument)
        << reader.status().to_string();
    ExpectMentions(reader.status().message(), c.message);

    const nucleus_dump_options options = ToC(c.options);
    int sentinel = 0;
    nucleus_dump* dump = reinterpret_cast<nucleus_dump*>(&sentinel);  // must be reset to NULL
    const nucleus_status s = nucleus_dump_open(path.c_str(), &options, &dump);
    EXPECT_TRUE(s == NUCLEUS_IO_ERROR || s == NUCLEUS_INVALID_ARGUMENT) << s;
    EXPECT_EQ(dump, nullptr);
    ExpectMentions(nucleus_last_error(), c.message);
    nucleus_dump_close(dump);
  }

  if (!kHaveCli) return;
  const fs::path out_dir = dir / "out";
  fs::remove_all(out_dir);
  fs::create_directory(out_dir);
  for (const std::string command : {"sample", "probs"}) {
    if (c.sample_only && command == "probs") continue;
    SCOPED_TRACE(command);
    const std::string output = " -o out/" + command + (command == "probs" ? ".npy" : ".jsonl");
    ExpectCliFailure(RunCli(dir, command + " " + Quote(c.file) + " " + c.args + output), c.message,
                     out_dir);
  }
  // inspect reads the same headers.
  if (c.reader_too) {
    ExpectCliFailure(RunCli(dir, "inspect " + Quote(c.file) + " " + c.args), c.message, out_dir);
  }
  fs::remove(path);
}

TEST(BadInputFiles, EveryInterfaceRefusesWithAMessage) {
  const fs::path dir = TestDir();
  const std::vector<FileCase> cases = FileCases();
  EXPECT_GE(cases.size(), 40u);
  for (const FileCase& c : cases) CheckFileCase(dir, c);
}

#ifdef NUCLEUS_PYTHON_DIR
// The same files through the Python module's load_dump, in one interpreter
// (tests/python/check_bad_dumps.py): each in a folder of its own, so that the
// names the messages mention stay as they are.
TEST(BadInputFiles, PythonLoadDumpRefusesWithAMessage) {
  if (!fs::exists("/usr/bin/python3")) GTEST_SKIP() << "no /usr/bin/python3";
  const fs::path dir = TestDir();
  const fs::path manifest = dir / "manifest.tsv";
  std::string lines;
  int n = 0;
  for (const FileCase& c : FileCases()) {
    if (!c.reader_too) continue;  // an option only the program parses
    const fs::path sub = dir / std::to_string(n++);
    fs::create_directories(sub);
    WriteFile(sub / c.file, c.bytes);
    std::string parts;
    for (const std::string& m : c.message) parts += m + "\x1f";
    lines += (sub / c.file).string() + "\t" + dump_format_name(c.options.format) + "\t" +
             c.options.tensor + "\t" + (c.options.dtype ? dtype_name(*c.options.dtype) : "") +
             "\t" + std::to_string(c.options.vocab) + "\t" + parts + "\n";
  }
  EXPECT_GE(n, 40);
  WriteFile(manifest, lines);
  const std::string command =
      "cd " + Quote(dir.string()) + " && PYTHONPATH=" + Quote(NUCLEUS_PYTHON_DIR) +
      " /usr/bin/python3 " +
      Quote(std::string(NUCLEUS_SOURCE_DIR) + "/tests/python/check_bad_dumps.py") +
      " manifest.tsv > python.log 2>&1";
  const int status = std::system(command.c_str());
  std::ifstream log(dir / "python.log");
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_EQ(status, 0) << text;
  EXPECT_THAT(text, HasSubstr(std::to_string(n) + " malformed dumps, 0 failures")) << text;
}
#endif

// Found by the matrix above under UBSan: a safetensors shape whose element
// count overflows int64 is detected (and refused), but the product is still
// formed: safetensors_header.cc, check_tensor, `elements *= *d` after the
// overflow flag is set -- signed overflow, undefined behaviour.
TEST(BadInputFileRegression, SafetensorsShapeWhoseProductOverflows) {
  const fs::path dir = TestDir();
  const std::string d16 = F32Bytes(Ramp(16));
  FileCase c;
  c.name = "safetensors shape overflows";
  c.file = "s.safetensors";
  c.bytes =
      Safetensors(R"({"logits":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],)"
                  R"("data_offsets":[0,64]}})",
                  d16);
  c.message = {"'shape'", "needs more"};
  CheckFileCase(dir, c);
}

// Found while building the matrix above: the program's 64-bit options
// (--seed, --step) accept values that do not fit and wrap or saturate them to
// 2^64 - 1 (CLI11's conversion), while a --params line refuses a negative
// "seed". `--step -1`, `--step 18446744073709551616` and `--step 1e30` all
// run with step 2^64 - 1 and exit status 0.
TEST(BadInputCliRegression, OutOfRange64BitOptionsAreRefused) {
  if (!kHaveCli) GTEST_SKIP() << "the nucleus_cli target is not built";
  const fs::path dir = TestDir();
  const std::string ok_npy = Npy(NpyDict("<f4", "(2, 8)"), F32Bytes(Ramp(16)));
  std::vector<FileCase> cases;
  auto add = [&](const char* name, const std::string& args, std::vector<std::string> message) {
    FileCase c;
    c.name = name;
    c.file = "ok.npy";
    c.bytes = ok_npy;
    c.args = args;
    c.message = std::move(message);
    c.reader_too = false;
    cases.push_back(std::move(c));
  };
  add("negative step", "--step -1", {"--step", "-1"});
  add("step beyond 64 bits", "--step 18446744073709551616", {"--step", "18446744073709551616"});
  add("negative seed", "--seed -1", {"--seed", "-1"});
  add("seed beyond 64 bits", "--seed 99999999999999999999999",
      {"--seed", "99999999999999999999999"});
  for (const FileCase& c : cases) CheckFileCase(dir, c);
}

// A valid dump cut short at every offset, header and data: always a clean
// refusal that says the file is truncated (or, before the magic is complete,
// that it is not a NumPy file), never a read past the end.
TEST(BadInputFiles, TruncatedAtEveryOffset) {
  const fs::path dir = TestDir();
  const std::string npy = Npy(NpyDict("<f4", "(2, 8)"), F32Bytes(Ramp(16)));
  const std::string npy2 = Npy(NpyDict("<f2", "(3, 4)"), std::string(24, '\x3c'), 2);
  const std::string st = Safetensors(
      R"({"__metadata__":{"a":"b"},"logits":{"dtype":"BF16","shape":[2,8],"data_offsets":[0,32]}})",
      std::string(32, '\x3f'));
  struct Whole {
    const char* file;
    std::string bytes;
    DumpFormat format;  // bytes in memory have no extension to go by
  };
  for (const Whole& w :
       {Whole{"t.npy", npy, DumpFormat::kNpy}, Whole{"t2.npy", npy2, DumpFormat::kNpy},
        Whole{"t.safetensors", st, DumpFormat::kSafetensors}}) {
    ASSERT_TRUE(
        DumpReader::from_bytes(w.file, {w.bytes.begin(), w.bytes.end()}, Format(w.format)).ok())
        << w.file;
    for (size_t n = 0; n < w.bytes.size(); ++n) {
      SCOPED_TRACE(std::string(w.file) + " cut to " + std::to_string(n) + " bytes");
      const std::string cut = w.bytes.substr(0, n);
      Result<DumpReader> reader =
          DumpReader::from_bytes(w.file, {cut.begin(), cut.end()}, Format(w.format));
      ASSERT_FALSE(reader.ok());
      EXPECT_EQ(reader.status().code(), StatusCode::kIoError) << reader.status().to_string();
      const std::string m = reader.status().message();
      EXPECT_TRUE(m.find("truncated") != std::string::npos || m.find("magic") != std::string::npos)
          << m;
      // Through the program too, at a stride (each run is a process).
      if (kHaveCli && (n % 9 == 0 || n + 1 == w.bytes.size())) {
        WriteFile(dir / w.file, cut);
        fs::create_directories(dir / "out");
        const CliRun run = RunCli(dir, std::string("sample ") + w.file + " -o out/r.jsonl");
        EXPECT_FALSE(run.timed_out);
        EXPECT_EQ(run.code, 2) << run.err;
        EXPECT_THAT(run.err, HasSubstr(w.file));
        EXPECT_TRUE(fs::is_empty(dir / "out"));
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// --params files: every malformed value is refused before anything is written.

struct ParamsCase {
  const char* name;
  std::string jsonl;  // for a dump of 3 rows x 40 tokens
  std::vector<std::string> message;
};

std::vector<ParamsCase> ParamsCases() {
  return {
      {"temperature a string",
       "{}\n{\"temperature\": \"hot\"}\n{}\n",
       {"line 2", "'temperature'", "not a number"}},
      {"temperature overflows float",
       "{\"temperature\": 1e39}\n{}\n{}\n",
       {"line 1", "'temperature' = 1e+39 does not fit a 32-bit float"}},
      {"top_p underflows float",
       "{}\n{\"top_p\": -1e-50}\n{}\n",
       {"line 2", "'top_p' = -1e-50 is too small for a 32-bit float"}},
      {"top_k fractional",
       "{}\n{}\n{\"top_k\": 1.5}\n",
       {"line 3: row 2", "'top_k'", "not an integer"}},
      {"top_k beyond int32", "{\"top_k\": 1e12}\n{}\n{}\n", {"line 1", "'top_k'"}},
      {"min_keep beyond int32", "{\"min_keep\": 2147483648}\n{}\n{}\n", {"'min_keep'", "32-bit"}},
      {"seed negative",
       "{\"seed\": -1}\n{}\n{}\n",
       {"'seed'", "= -1 is not an integer in [0, 2^64)"}},
      {"seed 2^64",
       "{\"seed\": 18446744073709551616}\n{}\n{}\n",
       {"'seed'", "is not an integer in [0, 2^64)"}},
      {"seed fractional",
       "{\"seed\": 1.5}\n{}\n{}\n",
       {"'seed'", "= 1.5 is not an integer in [0, 2^64)"}},
      {"step a string", "{\"step\": \"3\"}\n{}\n{}\n", {"'step'"}},
      {"bias key not a token",
       "{\"logit_bias\": {\"abc\": 1}}\n{}\n{}\n",
       {"logit_bias", "\"abc\""}},
      {"bias key with a space",
       "{\"logit_bias\": {\" 3\": 1}}\n{}\n{}\n",
       {"line 1", "not a token id: \" 3\""}},
      {"bias key with a plus",
       "{\"logit_bias\": {\"+3\": 1}}\n{}\n{}\n",
       {"line 1", "not a token id: \"+3\""}},
      {"bias pair too short",
       "{\"logit_bias\": [[1]]}\n{}\n{}\n",
       {"logit_bias[0]", "[token, bias]"}},
      {"bias +inf spelled out",
       "{\"logit_bias\": {\"3\": \"+inf\"}}\n{}\n{}\n",
       {"logit_bias", "\"-inf\""}},
      {"bias token out of range",
       "{}\n{\"logit_bias\": {\"40\": 1}}\n{}\n",
       {"line 2", "row 1", "logit_bias[0].token", "40"}},
      {"bias overflows float",
       "{\"logit_bias\": {\"3\": 1e39}}\n{}\n{}\n",
       {"line 1", "logit_bias", "1e+39 does not fit a 32-bit float"}},
      {"mask too short (vocab 40 needs 2 words)",
       "{\"allowed_mask\": [1]}\n{}\n{}\n",
       {"line 1", "allowed_mask", "2 words"}},
      {"two spellings of one field",
       "{}\n{}\n{\"history\": [1], \"generated_tokens\": [2]}\n",
       {"line 3", "'generated_tokens'", "'history'", "give one"}},
      {"mask with no words",
       "{}\n{\"allowed_mask\": []}\n{}\n",
       {"line 2", "allowed_mask", "no words"}},
      {"mask word beyond 32 bits",
       "{\"allowed_mask\": [4294967296, 0]}\n{}\n{}\n",
       {"allowed_mask[0]", "32-bit word"}},
      {"allowed token out of range",
       "{\"allowed_tokens\": [1, 99]}\n{}\n{}\n",
       {"allowed_tokens[1]", "[0, 40)"}},
      {"row index mismatch", "{\"row\": 2}\n{}\n{}\n", {"line 1", "'row'", "row 0"}},
      {"line is an array", "[1, 2]\n{}\n{}\n", {"line 1", "not a JSON object"}},
      {"more lines than rows", "{}\n{}\n{}\n{}\n", {"line 4", "more parameter rows", "3 rows"}},
      {"preset in capitals", "{\"preset\": \"HF\"}\n{}\n{}\n", {"'preset'", "\"HF\""}},
      {"logprobs_mode a number", "{\"logprobs_mode\": 1}\n{}\n{}\n", {"'logprobs_mode'"}},
      {"banned a string", "{\"banned\": \"7\"}\n{}\n{}\n", {"'banned'", "array"}},
      {"history with a null", "{\"history\": [1, null]}\n{}\n{}\n", {"history[1]"}},
      {"binary garbage",
       "{}\n" + std::string("\x01\xff\xfe\0garbage\n", 12) + "{}\n",
       {"line 2", "JSON"}},
      // (a JSON reader may take a NUL for the end of the text and never see
      // the unknown key after it)
      {"NUL between values",
       std::string("{\"temperature\": 0}") + '\0' + "{\"bogus\": 1}\n{}\n{}\n",
       {"line 1", "column 19", "NUL byte"}},
      {"num_samples zero",
       "{}\n{}\n{\"num_samples\": 0}\n",
       {"line 3", "row 2", "num_samples", "0"}},
      {"typical_p zero", "{\"typical_p\": 0}\n{}\n{}\n", {"line 1", "typical_p"}},
      {"logprobs above vocab", "{\"logprobs\": 41}\n{}\n{}\n", {"line 1", "row 0: logprobs = 41"}},
      {"duplicate key wins nothing",
       "{\"top_p\": 0.5, \"top_p\": 7}\n{}\n{}\n",
       {"line 1", "top_p"}},
  };
}

TEST(BadInputParams, MalformedLinesAreRefusedBeforeAnyOutput) {
  if (!kHaveCli) GTEST_SKIP() << "the nucleus_cli target is not built";
  const fs::path dir = TestDir();
  WriteFile(dir / "d.npy", Npy(NpyDict("<f4", "(3, 40)"), F32Bytes(Ramp(120))));
  const std::vector<ParamsCase> cases = ParamsCases();
  EXPECT_GE(cases.size(), 25u);
  for (const ParamsCase& c : cases) {
    SCOPED_TRACE(c.name);
    WriteFile(dir / "p.jsonl", c.jsonl);
    const fs::path out_dir = dir / "out";
    fs::remove_all(out_dir);
    fs::create_directory(out_dir);
    ExpectCliFailure(RunCli(dir, "sample d.npy --seed 1 --params p.jsonl -o out/r.jsonl"),
                     c.message, out_dir);
    ExpectCliFailure(RunCli(dir, "probs d.npy --params p.jsonl -o out/p.npy"), c.message, out_dir);
    // Without -o too: nothing reaches standard output.
    ExpectCliFailure(RunCli(dir, "sample d.npy --params p.jsonl"), c.message, out_dir);
  }
}

// Rows that cannot be sampled fail alone (exit status 1, an error line);
// the others are sampled exactly as they would be on their own.
TEST(BadInputParams, RowsMaskedByTheirParametersFailAlone) {
  if (!kHaveCli) GTEST_SKIP() << "the nucleus_cli target is not built";
  const fs::path dir = TestDir();
  const int64_t rows = 6, vocab = 40;
  std::vector<float> logits = Ramp(rows * vocab);
  logits[3 * vocab + 39] = kInf;  // row 3: +inf in the last column
  WriteFile(dir / "d.npy", Npy(NpyDict("<f4", "(6, 40)"), F32Bytes(logits)));
  std::string all_banned = "[";
  for (int t = 0; t < vocab; ++t) {
    if (t > 0) all_banned += ',';
    all_banned += std::to_string(t);
  }
  all_banned += "]";
  WriteFile(dir / "p.jsonl",
            "{\"allowed_tokens\": []}\n"                    // row 0: nothing allowed
            "{\"allowed_tokens\": [5], \"banned\": [5]}\n"  // row 1: its one token banned
            "{\"banned\": " +
                all_banned +
                ", \"logit_bias\": {\"3\": 1e30}}\n"  // row 2: bias cannot revive
                "{}\n"                                // row 3: +inf logit
                "{\"allowed_tokens\": [7], \"logit_bias\": [[7, -1e30]]}\n"  // row 4: fine, token 7
                "{\"temperature\": 0, \"logit_bias\": {\"9\": \"-inf\"}}\n");  // row 5: fine
  const fs::path out_dir = dir / "out";
  fs::create_directory(out_dir);
  const CliRun run = RunCli(dir, "sample d.npy --seed 4 --params p.jsonl -o out/r.jsonl");
  EXPECT_EQ(run.code, 1) << run.err;
  EXPECT_THAT(run.err, HasSubstr("4 of 6 rows"));
  const std::string text = ReadFile(out_dir / "r.jsonl");
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  ASSERT_EQ(lines.size(), 6u) << text;
  for (int r : {0, 1, 2}) EXPECT_THAT(lines[r], HasSubstr("no token left")) << lines[r];
  EXPECT_THAT(lines[3], HasSubstr("token 39")) << lines[3];
  EXPECT_THAT(lines[4], HasSubstr("\"tokens\":[7]")) << lines[4];
  EXPECT_THAT(lines[5], HasSubstr("\"tokens\":")) << lines[5];
  EXPECT_THAT(lines[5], Not(HasSubstr("\"tokens\":[9]"))) << lines[5];

  // Row 5 alone (with the seed the batch gave it, 4 + 5) draws the same.
  WriteFile(dir / "one.npy",
            Npy(NpyDict("<f4", "(1, 40)"),
                F32Bytes(std::vector<float>(logits.begin() + 5 * vocab, logits.end()))));
  WriteFile(dir / "one.jsonl",
            "{\"temperature\": 0, \"logit_bias\": {\"9\": \"-inf\"}, \"seed\": 9}\n");
  const CliRun alone = RunCli(dir, "sample one.npy --params one.jsonl");
  ASSERT_EQ(alone.code, 0) << alone.err;
  const std::string expected = alone.out.substr(alone.out.find("\"tokens\""));
  EXPECT_EQ(lines[5].substr(lines[5].find("\"tokens\"")) + "\n", expected);

  // probs: the failed rows are zero, the file is complete.
  const CliRun probs = RunCli(dir, "probs d.npy --params p.jsonl -o out/p.npy");
  EXPECT_EQ(probs.code, 1) << probs.err;
  Result<DumpReader> p = DumpReader::open((out_dir / "p.npy").string());
  ASSERT_TRUE(p.ok()) << p.status().message();
  EXPECT_EQ(p->info().rows, rows);
}

// ---------------------------------------------------------------------------------------------
// The engine: numeric corners and combinations, through the C++ and C APIs.

// One row sampled alone: what the same row must give inside any batch.
RowResult SampleAlone(Engine& engine, const LogitsView& batch, int64_t row,
                      const RowRequest& request) {
  LogitsView one = batch;
  one.rows = 1;
  const int64_t stride = batch.row_stride == 0 ? batch.vocab : batch.row_stride;
  one.data = static_cast<const char*>(batch.data) + row * stride * dtype_size(batch.dtype);
  std::vector<RowResult> results(1);
  EXPECT_TRUE(engine.sample(one, {&request, 1}, results).ok());
  return results[0];
}

// NaN or +inf in the padding after `vocab` is never read; in the vocabulary it
// fails its row only (and names the token).
TEST(BadInputEngine, NaNInThePaddingIsIgnoredNaNInTheVocabularyFailsTheRow) {
  const int64_t rows = 4, vocab = 37, stride = 45;
  for (DType dtype : {DType::kFloat32, DType::kFloat16, DType::kBFloat16}) {
    SCOPED_TRACE(dtype_name(dtype));
    const int item = dtype_size(dtype);
    std::vector<unsigned char> bytes(static_cast<size_t>(rows * stride * item));
    auto set = [&](int64_t r, int64_t t, float x) {
      unsigned char* at = bytes.data() + (r * stride + t) * item;
      if (dtype == DType::kFloat32) {
        std::memcpy(at, &x, 4);
      } else {
        const uint16_t h = dtype == DType::kFloat16 ? detail::float_to_half_bits(x)
                                                    : detail::float_to_bfloat16_bits(x);
        std::memcpy(at, &h, 2);
      }
    };
    const std::vector<float> ramp = Ramp(static_cast<size_t>(vocab));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t t = 0; t < vocab; ++t) set(r, t, ramp[static_cast<size_t>(t)] + 0.1f * r);
      for (int64_t t = vocab; t < stride; ++t) set(r, t, t % 2 ? kNaN : kInf);
    }
    set(1, vocab - 1, kNaN);  // the last real column
    set(2, 0, kInf);          // the first
    const LogitsView view{bytes.data(), rows, vocab, stride, dtype};
    std::vector<RowRequest> requests(rows);
    for (int64_t r = 0; r < rows; ++r) requests[r].seed = 70 + r;
    Engine engine(EngineOptions{.max_threads = 2, .seed = 1});
    std::vector<RowResult> results(rows);
    ASSERT_TRUE(engine.sample(view, requests, results).ok());
    ExpectMentions(results[1].status.message(), {"row 1", "token 36", "nan"});
    ExpectMentions(results[2].status.message(), {"row 2", "token 0", "inf"});
    for (int64_t r : {0, 3}) {
      ASSERT_TRUE(results[r].status.ok()) << results[r].status.to_string();
      EXPECT_EQ(results[r].tokens, SampleAlone(engine, view, r, requests[r]).tokens);
    }

    // The C API sees the same.
    nucleus_engine* c_engine = nullptr;
    ASSERT_EQ(nucleus_engine_create(nullptr, &c_engine), NUCLEUS_OK);
    const nucleus_logits_view c_view{bytes.data(), rows, vocab, stride,
                                     static_cast<int32_t>(dtype)};
    std::vector<nucleus_row_request> c_requests(rows, nucleus_row_request_default());
    for (int64_t r = 0; r < rows; ++r) {
      c_requests[r].seed = 70 + static_cast<uint64_t>(r);
      c_requests[r].has_seed = 1;
    }
    std::vector<int32_t> tokens(rows), status(rows);
    nucleus_sample_output out = nucleus_sample_output_default();
    out.samples_per_row = 1;
    out.tokens = tokens.data();
    out.row_status = status.data();
    EXPECT_EQ(nucleus_sample(c_engine, &c_view, c_requests.data(), rows, &out), NUCLEUS_ROW_ERROR);
    ExpectMentions(nucleus_last_error(), {"row 1", "token 36"});
    EXPECT_EQ(status[1], NUCLEUS_ROW_ERROR);
    EXPECT_EQ(status[2], NUCLEUS_ROW_ERROR);
    EXPECT_EQ(tokens[1], -1);
    EXPECT_EQ(status[0], NUCLEUS_OK);
    EXPECT_EQ(tokens[0], results[0].tokens[0]);
    EXPECT_EQ(tokens[3], results[3].tokens[0]);
    nucleus_engine_destroy(c_engine);
  }
}

// Shapes whose byte sizes cannot exist are call errors, found before any
// logit is read (the buffer passed here holds a single float).
TEST(BadInputEngine, ImpossibleShapesAreCallErrors) {
  const float one = 1.0f;
  struct Case {
    const char* name;
    LogitsView view;
    std::vector<std::string> message;
  };
  const int64_t big = std::numeric_limits<int64_t>::max();
  const Case cases[] = {
      {"vocab beyond int32",
       {&one, 1, int64_t{1} << 31, 0, DType::kFloat32},
       {"vocab", "2147483648"}},
      {"vocab int64 max", {&one, 1, big, 0, DType::kFloat32}, {"vocab"}},
      {"rows int64 min",
       {&one, std::numeric_limits<int64_t>::min(), 4, 4, DType::kFloat32},
       {"rows"}},
      {"stride int64 min",
       {&one, 2, 4, std::numeric_limits<int64_t>::min(), DType::kFloat32},
       {"row_stride"}},
      {"dtype out of the enum", {&one, 1, 1, 1, static_cast<DType>(7)}, {"dtype", "7"}},
      // Row offsets that wrap (row 1 would read row 0) or reach past the
      // address space (a crash).
      {"stride 2^62",
       {&one, 2, 4, int64_t{1} << 62, DType::kFloat32},
       {"row_stride", "4611686018427387904", "address space"}},
      {"stride 2^61", {&one, 2, 4, int64_t{1} << 61, DType::kFloat32}, {"row_stride"}},
      {"stride int64 max", {&one, 2, 4, big, DType::kFloat32}, {"row_stride"}},
      {"rows int64 max", {&one, big, 4, 4, DType::kFloat32}, {"rows", "address space"}},
      {"half rows 2^56 apart", {&one, 3, 4, int64_t{1} << 56, DType::kBFloat16}, {"row_stride"}},
  };
  Engine engine(EngineOptions{.max_threads = 2, .seed = 1});
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    RowRequest request;
    std::vector<RowResult> results(static_cast<size_t>(std::clamp<int64_t>(c.view.rows, 1, 2)));
    const Status s = engine.sample(c.view, {&request, 1}, results);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    ExpectMentions(s.message(), c.message);
    float out[4] = {};
    std::vector<Status> row_status(results.size());
    const Status p = engine.probs(c.view, {&request, 1}, out, 4, row_status);
    EXPECT_EQ(p.code(), StatusCode::kInvalidArgument) << p.to_string();
  }
}

// An output stride whose rows would wrap or reach past the address space, and
// a verify call whose target rows would, are call errors too, and nothing is
// written or read.
TEST(BadInputEngine, ImpossibleStridesOfProbsAndVerifyAreCallErrors) {
  const float logits[8] = {0, 1, 2, 3, 3, 2, 1, 0};
  Engine engine(EngineOptions{.max_threads = 2, .seed = 1});
  RowRequest request;
  for (const int64_t out_stride :
       {int64_t{1} << 61, int64_t{1} << 62, std::numeric_limits<int64_t>::max()}) {
    SCOPED_TRACE(out_stride);
    std::vector<float> out(8, -1.0f);
    std::vector<Status> row_status(2);
    const Status s = engine.probs({logits, 2, 4, 4, DType::kFloat32}, {&request, 1}, out.data(),
                                  out_stride, row_status);
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
    ExpectMentions(s.message(), {"out_stride", std::to_string(out_stride), "address space"});
    EXPECT_EQ(out, std::vector<float>(8, -1.0f));
  }
  // Two positions (one draft) of one row, the second 2^62 floats on.
  const int32_t draft = 1;
  std::vector<VerifyResult> results(1);
  const Status v = engine.verify({logits, 2, 4, int64_t{1} << 62, DType::kFloat32}, 1, {&draft, 1},
                                 nullptr, {&request, 1}, results);
  EXPECT_EQ(v.code(), StatusCode::kInvalidArgument) << v.to_string();
  ExpectMentions(v.message(), {"row_stride", "address space"});
}

// An output that overlaps the logits other than row for row in place is a
// call error however far apart the rows are (rows 8 TiB apart here: the
// view can exist, and nothing is read or written before the refusal).
TEST(BadInputEngine, ProbsOverlapIsFoundWithRowsFarApart) {
  float logits[8] = {0, 1, 2, 3, 3, 2, 1, 0};
  Engine engine(EngineOptions{.max_threads = 2, .seed = 1});
  RowRequest request;
  const int64_t far = int64_t{1} << 41;
  std::vector<Status> row_status(2);
  // Output row 0 is logits row 0 in place; output row 1 starts one float
  // past logits row 1.
  const Status s = engine.probs({logits, 2, 4, far, DType::kFloat32}, {&request, 1}, logits,
                                far + 1, row_status);
  EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.to_string();
  ExpectMentions(s.message(), {"overlaps"});
  EXPECT_EQ(logits[1], 1.0f);
}

// The extremes of the valid ranges sample without error, and what they give
// follows from SPEC.md.
TEST(BadInputEngine, ExtremeButValidValuesSample) {
  Engine engine(EngineOptions{.max_threads = 2, .seed = 3});
  struct Case {
    const char* name;
    std::vector<float> row;
    std::function<void(RowRequest&)> set;
    std::function<void(const RowResult&)> check;
  };
  const std::vector<float> ramp = Ramp(50);
  const Case cases[] = {
      {"vocab 1",
       {0.5f},
       [](RowRequest&) {},
       [](const RowResult& r) {
         EXPECT_EQ(r.tokens, std::vector<int32_t>{0});
         EXPECT_EQ(r.logprobs[0], 0.0f);
       }},
      {"every logit FLT_MAX", std::vector<float>(20, FLT_MAX),
       [](RowRequest& q) { q.params.top_p = 0.5f; },
       [](const RowResult& r) { EXPECT_EQ(r.support, 20); }},
      {"FLT_MAX and -FLT_MAX",
       {FLT_MAX, -FLT_MAX, 0.0f},
       [](RowRequest&) {},
       [](const RowResult& r) {
         EXPECT_EQ(r.tokens, std::vector<int32_t>{0});
         EXPECT_FALSE(std::isnan(r.raw_logprobs[0]));
       }},
      {"denormal temperature", ramp, [](RowRequest& q) { q.params.temperature = 1e-45f; },
       [&](const RowResult& r) {
         // 1/T clamps to FLT_MAX: only the (tied) maximum survives.
         EXPECT_EQ(ramp[static_cast<size_t>(r.tokens[0])],
                   *std::max_element(ramp.begin(), ramp.end()));
       }},
      {"temperature FLT_MAX", ramp, [](RowRequest& q) { q.params.temperature = FLT_MAX; },
       [](const RowResult& r) { EXPECT_EQ(r.support, 50); }},
      {"top_k and min_keep INT32_MAX", ramp,
       [](RowRequest& q) {
         q.params.top_k = INT32_MAX;
         q.params.min_keep = INT32_MAX;
         q.params.top_p = 0.1f;
       },
       [](const RowResult& r) { EXPECT_EQ(r.support, 50); }},
      {"top_n_sigma FLT_MAX", ramp, [](RowRequest& q) { q.params.top_n_sigma = FLT_MAX; },
       [](const RowResult& r) { EXPECT_EQ(r.support, 50); }},
      {"repetition penalty denormal", ramp,
       [](RowRequest& q) {
         static const int32_t history[] = {1, 2};
         q.params.repetition_penalty = 1e-45f;
         q.generated_tokens = history;
         q.params.temperature = 0.0f;
       },
       // 1e-45 divides positive logits to +inf (a row error) or multiplies
       // negative ones to -0: either a clean row error or a sampled token.
       [](const RowResult& r) {
         EXPECT_TRUE(r.status.ok() || r.status.code() == StatusCode::kRowError);
       }},
      {"bias cannot revive a banned token", ramp,
       [](RowRequest& q) {
         static const int32_t banned[] = {4};
         static const TokenBias bias[] = {{4, 1e30f}};
         q.banned_tokens = banned;
         q.logit_bias = bias;
         q.params.temperature = 0.0f;
       },
       [](const RowResult& r) { EXPECT_NE(r.tokens[0], 4); }},
      {"mask bits past the vocabulary are ignored", ramp,
       [](RowRequest& q) {
         // Word 1 holds tokens 32..63: bit 17 is token 49, the last one;
         // bits 18..31 would be tokens 50..63, which do not exist.
         static const int32_t mask[] = {0, static_cast<int32_t>(0xFFFE0000u)};
         q.allowed_mask = mask;
         q.params.num_samples = 8;
       },
       [](const RowResult& r) {
         EXPECT_THAT(r.tokens, ::testing::Each(49));
         EXPECT_EQ(r.support, 1);
       }},
      {"duplicate biases add", ramp,
       [](RowRequest& q) {
         static const TokenBias bias[] = {{7, 60.0f}, {7, 60.0f}, {8, 100.0f}};
         q.logit_bias = bias;
         q.params.temperature = 0.0f;
       },
       [](const RowResult& r) { EXPECT_EQ(r.tokens[0], 7); }},
      {"a long history", ramp,
       [](RowRequest& q) {
         static const std::vector<int32_t> history = [] {
           std::vector<int32_t> h(1 << 20);
           for (size_t i = 0; i < h.size(); ++i) h[i] = static_cast<int32_t>(i % 50);
           return h;
         }();
         q.generated_tokens = history;
         q.params.frequency_penalty = 1e-6f;
         q.params.presence_penalty = 0.5f;
         q.params.repetition_penalty = 1.1f;
       },
       [](const RowResult& r) { EXPECT_EQ(r.support, 50); }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    RowRequest request;
    request.seed = 5;
    c.set(request);
    const auto vocab = static_cast<int64_t>(c.row.size());
    // The case's row between two ordinary rows: they must not notice it.
    std::vector<float> batch = Ramp(static_cast<size_t>(vocab));
    batch.insert(batch.end(), c.row.begin(), c.row.end());
    const std::vector<float> after = Ramp(static_cast<size_t>(vocab));
    batch.insert(batch.end(), after.begin(), after.end());
    std::vector<RowRequest> requests(3);
    requests[0].seed = 1;
    requests[1] = request;
    requests[2].seed = 2;
    const LogitsView view{batch.data(), 3, vocab, vocab, DType::kFloat32};
    std::vector<RowResult> results(3);
    ASSERT_TRUE(engine.sample(view, requests, results).ok());
    c.check(results[1]);
    for (int64_t r : {0, 2}) {
      ASSERT_TRUE(results[r].status.ok());
      EXPECT_EQ(results[r].tokens, SampleAlone(engine, view, r, requests[r]).tokens);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Regressions: inputs that the fuzzers (scripts/fuzz.sh) found to break the
// engine. Each runs in a child process, so that memory corruption fails only
// its own test; under AddressSanitizer and UBSan (scripts/sanitize.sh) the
// child reports the fault and exits non-zero.

class BadInputRegression : public ::testing::Test {
 protected:
  void SetUp() override { GTEST_FLAG_SET(death_test_style, "threadsafe"); }
};

// Found by engine_verify_fuzzer: the largest logit is -0.0 and another is
// +0.0, so a filter's key (x_max - x) is -0.0, whose sign bit sends it past
// the last bucket of the radix histogram (select.cc, weighted_select:
// counts[key_bits >> 20] with key_bits = 0x80000000): a heap write one past
// the end. A dump written by NumPy holds -0.0 whenever a logit rounds to it.
// Runs in the child: exits 0 when the engine gives the right answer.
// Runs in the child: exits 0 when the engine gives the right answer. The
// engine is gone before exit(), so LeakSanitizer sees nothing outstanding.
void NegativeZeroMaximumChild() {
  const bool right = [] {
    const float row[] = {-0.0f, 0.0f};
    RowRequest request;
    request.seed = 1;
    request.params.top_p = 0.5f;
    Engine engine(EngineOptions{.max_threads = 1, .seed = 1});
    std::vector<RowResult> results(1);
    const Status s = engine.sample({row, 1, 2, 2, DType::kFloat32}, {&request, 1}, results);
    // Both tokens tie at probability 1/2: top-p keeps both (ties are kept).
    return s.ok() && results[0].status.ok() && results[0].support == 2;
  }();
  std::exit(right ? 0 : 3);
}

TEST_F(BadInputRegression, NegativeZeroMaximumWithTopP) {
  EXPECT_EXIT(NegativeZeroMaximumChild(), ::testing::ExitedWithCode(0), "");
}

// Found by engine_sample_fuzzer: a masked token (banned, -inf) that is also in
// the history, with a frequency penalty whose product with the count
// overflows to -inf: -inf - (-inf) is NaN and the whole row fails with
// "logit of token 0 is not finite after bias and penalties", although
// docs/semantics.md says a masked logit stays -inf and tokens 1 and 2 can be
// sampled.
TEST_F(BadInputRegression, MaskedTokenInTheHistoryWithAnOverflowingPenalty) {
  const float row[] = {0.0f, 1.0f, 2.0f};
  const int32_t banned[] = {0};
  const int32_t history[] = {0, 0};
  RowRequest request;
  request.seed = 1;
  request.banned_tokens = banned;
  request.generated_tokens = history;
  request.params.frequency_penalty = -FLT_MAX;
  Engine engine(EngineOptions{.max_threads = 1, .seed = 1});
  std::vector<RowResult> results(1);
  ASSERT_TRUE(engine.sample({row, 1, 3, 3, DType::kFloat32}, {&request, 1}, results).ok());
  EXPECT_TRUE(results[0].status.ok()) << results[0].status.message();
  if (results[0].status.ok()) {
    EXPECT_NE(results[0].tokens[0], 0);
  }
}

// Found by engine_verify_fuzzer under UBSan: num_draft = INT64_MAX overflows
// num_draft + 1 (engine.cc, Engine::verify) before any check. It must be a
// call error.
void VerifyWithTheLargestNumDraftChild() {
  const bool refused = [] {
    const float logits[] = {0.0f, 1.0f};
    RowRequest request;
    Engine engine(EngineOptions{.max_threads = 1, .seed = 1});
    std::vector<VerifyResult> results(1);
    const Status s =
        engine.verify({logits, 1, 2, 2, DType::kFloat32}, std::numeric_limits<int64_t>::max(), {},
                      nullptr, {&request, 1}, results);
    return s.code() == StatusCode::kInvalidArgument;
  }();
  std::exit(refused ? 0 : 3);
}

TEST_F(BadInputRegression, VerifyWithTheLargestNumDraft) {
  EXPECT_EXIT(VerifyWithTheLargestNumDraftChild(), ::testing::ExitedWithCode(0), "");
}

// Found while building the matrix: num_samples has no upper bound, so
// 2^31 - 1 samples per row is a valid request whose result vectors (three of
// 8 GiB) cannot be allocated, and Engine::sample lets std::bad_alloc escape,
// although its errors are values (include/nucleus/status.h). The program
// turns it into "internal error: std::bad_alloc", which does not name the
// option. Under an address-space limit (which the sanitizers' shadow memory
// cannot run under), the call must come back with a status.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr bool kSanitized = true;
#else
constexpr bool kSanitized = false;
#endif

void HugeNumSamplesChild() {
  const rlimit limit{rlim_t{2} << 30, rlim_t{2} << 30};
  setrlimit(RLIMIT_AS, &limit);
  int code = 0;
  try {
    const float row[] = {0.0f, 1.0f, 2.0f};
    RowRequest request;
    request.seed = 1;
    request.params.num_samples = std::numeric_limits<int32_t>::max();
    Engine engine(EngineOptions{.max_threads = 1, .seed = 1});
    std::vector<RowResult> results(1);
    const Status s = engine.sample({row, 1, 3, 3, DType::kFloat32}, {&request, 1}, results);
    const Status& r = s.ok() ? results[0].status : s;
    code = !r.ok() && !r.message().empty() ? 0 : 4;
  } catch (...) {
    code = 3;  // an exception left the engine
  }
  std::exit(code);
}

TEST_F(BadInputRegression, HugeNumSamplesIsAStatusNotAnException) {
  if (kSanitized) GTEST_SKIP() << "needs an address-space limit";
  EXPECT_EXIT(HugeNumSamplesChild(), ::testing::ExitedWithCode(0), "");
}

TEST(BadInputCliRegression, HugeNumSamplesNamesTheOption) {
  if (!kHaveCli) GTEST_SKIP() << "the nucleus_cli target is not built";
  if (kSanitized) GTEST_SKIP() << "needs an address-space limit";
  const fs::path dir = TestDir();
  WriteFile(dir / "d.npy", Npy(NpyDict("<f4", "(2, 8)"), F32Bytes(Ramp(16))));
  fs::create_directory(dir / "out");
  const CliRun run = RunCli(dir, "sample d.npy --seed 1 -n 2147483647 -o out/r.jsonl", "",
                            "ulimit -v 2097152 && ");
  EXPECT_FALSE(run.timed_out);
  EXPECT_EQ(run.code, 2) << run.err;
  EXPECT_TRUE(fs::is_empty(dir / "out"));
  EXPECT_TRUE(Lower(run.err).find("num") != std::string::npos ||
              Lower(run.err).find("memory") != std::string::npos)
      << run.err;
}

}  // namespace
}  // namespace nucleus
