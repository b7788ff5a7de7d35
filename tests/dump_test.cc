// Tests of the dump readers and writers (include/nucleus/dump.h, engine/io):
// every format and dtype reads back exactly what was written, in any block
// size; every malformed file is refused with a message that names the file,
// the field and the value; writers never leave a partial file behind.
#include <fcntl.h>
#include <grp.h>
#include <gtest/gtest.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <optional>
#include <ostream>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "engine/io/dump_writer.h"
#include "engine/io/file_io.h"
#include "engine/io/half.h"
#include "engine/io/npy_header.h"
#include "nucleus/dump.h"
#include "test_files.h"

namespace nucleus {
namespace {

namespace fs = std::filesystem;
using detail::bfloat16_bits_to_float;
using detail::float_to_bfloat16_bits;
using detail::float_to_half_bits;
using detail::half_bits_to_float;

// A fresh, empty directory per test.
using test_files::ReadFile;
using test_files::WriteFile;

fs::path TestDir() { return test_files::TestDir("dump_test"); }

std::vector<float> RandomLogits(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = normal(rng);
  return v;
}

// The value a dump of `dtype` stores for `x`.
float Rounded(float x, DType dtype) {
  switch (dtype) {
    case DType::kFloat16:
      return half_bits_to_float(float_to_half_bits(x));
    case DType::kBFloat16:
      return bfloat16_bits_to_float(float_to_bfloat16_bits(x));
    case DType::kFloat32:
      break;
  }
  return x;
}

float ValueAt(const LogitsView& view, int64_t row, int64_t col) {
  return detail::value_to_float(view.data, view.dtype,
                                row * (view.row_stride ? view.row_stride : view.vocab) + col);
}

// Reads every row through blocks and checks them against `values`.
void ExpectRows(DumpReader& reader, const std::vector<float>& values, DType dtype) {
  const DumpInfo& info = reader.info();
  int64_t next = 0;
  // (no block there: no first row either)
  EXPECT_EQ(reader.block_first_row(-1), -1);
  EXPECT_EQ(reader.block_first_row(reader.num_blocks()), -1);
  for (int64_t b = 0; b < reader.num_blocks(); ++b) {
    Result<LogitsView> view = reader.block(b);
    ASSERT_TRUE(view.ok()) << view.status().message();
    ASSERT_EQ(reader.block_first_row(b), next);
    ASSERT_EQ(view->vocab, info.vocab);
    ASSERT_EQ(view->dtype, dtype);
    ASSERT_EQ(reinterpret_cast<uintptr_t>(view->data) % dtype_size(dtype), 0u);
    for (int64_t r = 0; r < view->rows; ++r) {
      for (int64_t c = 0; c < info.vocab; ++c) {
        const float want = Rounded(values[static_cast<size_t>((next + r) * info.vocab + c)], dtype);
        ASSERT_EQ(ValueAt(*view, r, c), want) << "row " << next + r << " col " << c;
      }
    }
    next += view->rows;
  }
  EXPECT_EQ(next, info.rows);
}

void ExpectError(const Result<DumpReader>& reader, const std::vector<std::string>& parts) {
  ASSERT_FALSE(reader.ok()) << "expected an error mentioning " << parts.front();
  for (const std::string& part : parts) {
    EXPECT_NE(reader.status().message().find(part), std::string::npos)
        << "message: " << reader.status().message() << "\nmissing: " << part;
  }
  // One line, whatever the file holds (a header's newlines are shown as \n).
  EXPECT_EQ(reader.status().message().find('\n'), std::string::npos)
      << "message: " << reader.status().message();
}

// A .npy file with the given dict literal (padded as NumPy does) and payload.
std::string NpyBytes(const std::string& dict, const std::string& payload, int version = 1) {
  const size_t prefix = version == 1 ? 10 : 12;
  std::string header = dict;
  const size_t total = (prefix + header.size() + 1 + 63) / 64 * 64;
  header.append(total - prefix - header.size() - 1, ' ');
  header.push_back('\n');
  std::string out = "\x93NUMPY";
  out.push_back(static_cast<char>(version));
  out.push_back(0);
  for (size_t i = 0; i < prefix - 8; ++i)
    out.push_back(static_cast<char>((header.size() >> (8 * i)) & 0xff));
  return out + header + payload;
}

std::string FloatBytes(const std::vector<float>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
}

// A .safetensors file from a header JSON text and a payload.
std::string SafetensorsBytes(const std::string& json, const std::string& payload) {
  std::string out(8, '\0');
  const uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((n >> (8 * i)) & 0xff);
  return out + json + payload;
}

TEST(DumpHalf, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 0x10000; ++h) {
    const float f = half_bits_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(half_bits_to_float(float_to_half_bits(f))));
      continue;
    }
    ASSERT_EQ(float_to_half_bits(f), h) << "half bits " << h;
  }
}

TEST(DumpHalf, RoundsToNearestEven) {
  EXPECT_EQ(half_bits_to_float(0x3c00), 1.0f);
  EXPECT_EQ(half_bits_to_float(0x0001), std::ldexp(1.0f, -24));  // smallest subnormal
  EXPECT_EQ(half_bits_to_float(0x7bff), 65504.0f);
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: ties go to the even one.
  EXPECT_EQ(float_to_half_bits(1.0f + std::ldexp(1.0f, -11)), 0x3c00);
  EXPECT_EQ(float_to_half_bits(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3c02);
  EXPECT_EQ(float_to_half_bits(65519.0f), 0x7bff);
  EXPECT_EQ(float_to_half_bits(65520.0f), 0x7c00);  // rounds up to infinity
  EXPECT_EQ(float_to_half_bits(-std::numeric_limits<float>::infinity()), 0xfc00);
  EXPECT_EQ(float_to_half_bits(std::ldexp(1.0f, -25)), 0x0000);  // tie to even: zero
  EXPECT_EQ(float_to_half_bits(std::ldexp(3.0f, -25)), 0x0002);
}

TEST(DumpHalf, BFloat16) {
  for (uint32_t b = 0; b < 0x10000; ++b) {
    const float f = bfloat16_bits_to_float(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_bfloat16_bits(f), b);
  }
  EXPECT_EQ(float_to_bfloat16_bits(1.0f + std::ldexp(1.0f, -8)), 0x3f80);  // tie to even
  EXPECT_EQ(float_to_bfloat16_bits(1.0f + 3 * std::ldexp(1.0f, -8)), 0x3f82);
  EXPECT_TRUE(std::isnan(
      bfloat16_bits_to_float(float_to_bfloat16_bits(std::numeric_limits<float>::quiet_NaN()))));
}

struct FormatCase {
  const char* file;
  DType dtype;
};

void PrintTo(const FormatCase& c, std::ostream* os) { *os << c.file << " " << dtype_name(c.dtype); }

class DumpFormats : public ::testing::TestWithParam<FormatCase> {
 protected:
  // The case's file of `values` (rows × vocab) in the test's folder, and the
  // options that open it (a raw dump's dtype and vocab).
  fs::path Write(const std::vector<float>& values, int64_t rows, int64_t vocab,
                 DumpOptions* options) {
    const fs::path path = TestDir() / GetParam().file;
    detail::DumpWriteSpec spec;
    spec.format = DumpFormat::kAuto;
    spec.dtype = GetParam().dtype;
    EXPECT_TRUE(detail::write_dump(path, values.data(), rows, vocab, spec).ok());
    if (detail::dump_format_for_path(path) == DumpFormat::kRaw) {
      options->dtype = GetParam().dtype;
      options->vocab = vocab;
    }
    return path;
  }
};

TEST_P(DumpFormats, ReadsBackWhatWasWritten) {
  const int64_t rows = 7, vocab = 1000;
  const std::vector<float> values = RandomLogits(rows * vocab, 1);
  DumpOptions options;
  const fs::path path = Write(values, rows, vocab, &options);
  for (int64_t block_bytes : {int64_t{1} << 26, vocab * 4 * 3, int64_t{1}}) {
    options.block_bytes = block_bytes;
    Result<DumpReader> reader = DumpReader::open(path, options);
    ASSERT_TRUE(reader.ok()) << reader.status().message();
    EXPECT_EQ(reader->info().rows, rows);
    EXPECT_EQ(reader->info().vocab, vocab);
    EXPECT_EQ(reader->info().dtype, GetParam().dtype);
    EXPECT_TRUE(reader->info().streamed);
    ExpectRows(*reader, values, GetParam().dtype);
  }
}

// read_into_float32 gives the stored values widened (a half dump's rows
// widened in place in the caller's buffer, with nothing written past it),
// from a file and from bytes held in memory (a short pipe; a streamed one:
// DumpPipe.ReadIntoFloat32WidensAStreamedHalfPipe), with read_into's range
// checks.
TEST_P(DumpFormats, ReadIntoFloat32WidensTheStoredValues) {
  const int64_t rows = 7, vocab = 5000;  // (more values than one widening run)
  const std::vector<float> values = RandomLogits(rows * vocab, 4);
  DumpOptions options;
  const fs::path path = Write(values, rows, vocab, &options);
  Result<DumpReader> file = DumpReader::open(path, options);
  Result<DumpReader> pipe = DumpReader::from_bytes(
      path.filename().string(),
      [&] {
        const std::string bytes = ReadFile(path);
        return std::vector<unsigned char>(bytes.begin(), bytes.end());
      }(),
      options);
  for (Result<DumpReader>* reader : {&file, &pipe}) {
    ASSERT_TRUE(reader->ok()) << reader->status().message();
    std::vector<float> out(5 * vocab + 16, -7.0f);
    ASSERT_TRUE((*reader)->read_into_float32(2, 4, out.data()).ok());
    for (int64_t i = 0; i < 4 * vocab; ++i) {
      ASSERT_EQ(out[static_cast<size_t>(i)],
                Rounded(values[static_cast<size_t>(2 * vocab + i)], GetParam().dtype))
          << "value " << i;
    }
    for (size_t i = 4 * vocab; i < out.size(); ++i) ASSERT_EQ(out[i], -7.0f) << "past the rows";
    Status past = (*reader)->read_into_float32(6, 2, out.data());
    EXPECT_NE(past.message().find("2 rows from row 6"), std::string::npos) << past.message();
    Status none = (*reader)->read_into_float32(0, 0, out.data());
    EXPECT_EQ(none.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(none.message().find("count = 0 must be > 0"), std::string::npos) << none.message();
    // A destination the floats would be written through misaligned (UBSan
    // reported the widening's stores), whatever the dump's dtype.
    Status misaligned = (*reader)->read_into_float32(
        0, 1, reinterpret_cast<float*>(reinterpret_cast<char*>(out.data()) + 2));
    EXPECT_EQ(misaligned.code(), StatusCode::kInvalidArgument);
    EXPECT_NE(misaligned.message().find(": dst = 0x"), std::string::npos) << misaligned.message();
    EXPECT_NE(misaligned.message().find("is not aligned"), std::string::npos)
        << misaligned.message();
    // A null destination is a call error, from a file and from memory alike
    // (it was written to: a crash, or the kernel's EFAULT).
    for (const Status& s :
         {(*reader)->read_into_float32(0, 1, nullptr), (*reader)->read_into(0, 1, nullptr)}) {
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
      EXPECT_NE(s.message().find(": dst is null"), std::string::npos) << s.message();
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Dumps, DumpFormats,
    ::testing::Values(FormatCase{"a.npy", DType::kFloat32}, FormatCase{"a.npy", DType::kFloat16},
                      FormatCase{"a.safetensors", DType::kFloat32},
                      FormatCase{"a.safetensors", DType::kFloat16},
                      FormatCase{"a.safetensors", DType::kBFloat16},
                      FormatCase{"a.bin", DType::kFloat32}, FormatCase{"a.raw", DType::kFloat16},
                      FormatCase{"a.logits", DType::kBFloat16}),
    [](const ::testing::TestParamInfo<FormatCase>& info) {
      std::string name = std::string(info.param.file) + "_" + dtype_name(info.param.dtype);
      for (char& c : name) c = std::isalnum(static_cast<unsigned char>(c)) ? c : '_';
      return name;
    });

TEST(DumpNpy, OneDimensionalIsOneRowAndLeadingAxesFlatten) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(24, 2);
  WriteFile(dir / "one.npy", NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (24,), }",
                                      FloatBytes(values)));
  Result<DumpReader> one = DumpReader::open(dir / "one.npy");
  ASSERT_TRUE(one.ok()) << one.status().message();
  EXPECT_EQ(one->info().rows, 1);
  EXPECT_EQ(one->info().vocab, 24);
  ExpectRows(*one, values, DType::kFloat32);

  WriteFile(dir / "three.npy",
            NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3, 4), }",
                     FloatBytes(values)));
  Result<DumpReader> three = DumpReader::open(dir / "three.npy");
  ASSERT_TRUE(three.ok()) << three.status().message();
  EXPECT_EQ(three->info().rows, 6);
  EXPECT_EQ(three->info().vocab, 4);
  EXPECT_EQ(three->info().shape, (std::vector<int64_t>{2, 3, 4}));
  ExpectRows(*three, values, DType::kFloat32);
}

TEST(DumpNpy, AcceptsVersion2AndKeyOrderAndNativeByteOrder) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(6, 3);
  WriteFile(dir / "v2.npy",
            NpyBytes("{\"shape\": (2, 3), \"fortran_order\": False, \"descr\": \"=f4\"}",
                     FloatBytes(values), 2));
  Result<DumpReader> reader = DumpReader::open(dir / "v2.npy");
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  ExpectRows(*reader, values, DType::kFloat32);
}

TEST(DumpNpy, WrittenHeaderIsAlignedAndParsesBack) {
  const int64_t shape[] = {3, 5};
  const std::string header = detail::format_npy_header(DType::kFloat16, shape);
  EXPECT_EQ(header.size() % 64, 0u);
  EXPECT_EQ(header.back(), '\n');
  EXPECT_NE(header.find("'descr': '<f2'"), std::string::npos);
  EXPECT_NE(header.find("'shape': (3, 5)"), std::string::npos);
}

TEST(DumpNpy, RefusesWhatItCannotRead) {
  const fs::path dir = TestDir();
  const std::string data = FloatBytes(RandomLogits(8, 4));
  auto npy = [&](const std::string& name, const std::string& dict, const std::string& payload) {
    WriteFile(dir / name, NpyBytes(dict, payload));
    return DumpReader::open(dir / name);
  };
  ExpectError(
      npy("fortran.npy", "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 4), }", data),
      {"fortran.npy", "fortran_order", "True"});
  ExpectError(npy("big.npy", "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 4), }", data),
              {"big.npy", "descr", "'>f4'", "big-endian"});
  ExpectError(npy("f8.npy", "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 4), }", data),
              {"f8.npy", "descr", "'<f8'", "not a supported dtype"});
  ExpectError(npy("i4.npy", "{'descr': '<i4', 'fortran_order': False, 'shape': (2, 4), }", data),
              {"i4.npy", "descr", "'<i4'"});
  ExpectError(npy("short.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }", data),
              {"short.npy", "shape", "(3, 4)", "48 bytes", "holds 32", "truncated"});
  ExpectError(npy("lies.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 4), }", data),
              {"lies.npy", "shape", "(1, 4)", "16 bytes", "holds 32", "does not describe"});
  ExpectError(npy("scalar.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (), }", data),
              {"scalar.npy", "shape", "()", "scalar"});
  ExpectError(npy("empty.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 4), }", ""),
              {"empty.npy", "shape", "(0, 4)", "no logits"});
  ExpectError(npy("nokey.npy", "{'descr': '<f4', 'shape': (2, 4), }", data),
              {"nokey.npy", "fortran_order", "missing"});
  ExpectError(
      npy("extra.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), 'x': 1}", data),
      {"extra.npy", "unknown field 'x'"});
  ExpectError(
      npy("junk.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), } junk", data),
      {"junk.npy", "malformed", "nothing after the closing '}'"});
  ExpectError(npy("syntax.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': [2, 4]}", data),
              {"syntax.npy", "malformed", "shape"});
  ExpectError(
      npy("lines.npy", "{'descr': '<f4',\n 'fortran_order': Fals,\n 'shape': (2, 4), }", data),
      {"lines.npy", "malformed", "'<f4',\\n 'fortran_order'"});
  ExpectError(npy("struct.npy",
                  "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2, 4), }", data),
              {"struct.npy", "descr", "structured"});

  WriteFile(dir / "magic.npy", "PK\x03\x04 not numpy at all");
  ExpectError(DumpReader::open(dir / "magic.npy"), {"magic.npy", "magic"});
  WriteFile(dir / "tiny.npy", "\x93NUMPY");
  ExpectError(DumpReader::open(dir / "tiny.npy"), {"tiny.npy", "truncated"});
  std::string cut = NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 4), }", data);
  WriteFile(dir / "cut.npy", cut.substr(0, 40));
  ExpectError(DumpReader::open(dir / "cut.npy"), {"cut.npy", "truncated", "header length"});
  // A length field shorter than the dict: the header ends inside 'descr'.
  std::string short_len = cut;
  short_len[8] = 12;
  short_len[9] = 0;
  WriteFile(dir / "shortlen.npy", short_len);
  ExpectError(DumpReader::open(dir / "shortlen.npy"),
              {"shortlen.npy", "expected the end of the 'descr' string at byte 12",
               "is its length field short?"});
  std::string v9 = cut;
  v9[6] = 9;
  WriteFile(dir / "v9.npy", v9);
  ExpectError(DumpReader::open(dir / "v9.npy"), {"v9.npy", "version", "9.0"});
}

TEST(DumpSafetensors, PicksTheTensorByName) {
  const fs::path dir = TestDir();
  const std::vector<float> a = RandomLogits(6, 5), b = RandomLogits(8, 6);
  const std::string json =
      R"({"__metadata__": {"format": "pt"}, "a": {"dtype": "F32", "shape": [2, 3], )"
      R"("data_offsets": [0, 24]}, "b": {"dtype": "F32", "shape": [4, 2], "data_offsets": [24, 56]}})";
  WriteFile(dir / "two.safetensors", SafetensorsBytes(json, FloatBytes(a) + FloatBytes(b)));
  DumpOptions options;
  options.tensor = "b";
  Result<DumpReader> reader = DumpReader::open(dir / "two.safetensors", options);
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  EXPECT_EQ(reader->info().tensor, "b");
  EXPECT_EQ(reader->info().rows, 4);
  ExpectRows(*reader, b, DType::kFloat32);

  ExpectError(DumpReader::open(dir / "two.safetensors"),
              {"two.safetensors", "2 tensors", "'a'", "'b'"});
  options.tensor = "c";
  ExpectError(DumpReader::open(dir / "two.safetensors", options),
              {"two.safetensors", "tensor = 'c'", "'a', 'b'"});
}

TEST(DumpOptionsCheck, ANegativeVocabIsRefusedWhateverTheFormat) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(2 * 3, 5);
  ASSERT_TRUE(detail::write_dump(dir / "v.npy", values.data(), 2, 3, {}).ok());
  DumpOptions options;
  options.vocab = -3;  // (0 means not given)
  ExpectError(DumpReader::open(dir / "v.npy", options), {"v.npy", "vocab = -3 must be > 0"});
}

TEST(DumpSafetensors, UnalignedDataIsCopiedToAlignedMemory) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(12, 7);
  // A header of odd length puts the data at an odd offset.
  const std::string json = R"({"x":{"dtype":"F32","shape":[3,4],"data_offsets":[0,48]}})";
  ASSERT_NE((8 + json.size()) % 4, 0u);
  WriteFile(dir / "odd.safetensors", SafetensorsBytes(json, FloatBytes(values)));
  DumpOptions options;
  options.block_bytes = 16;  // one row per block
  Result<DumpReader> reader = DumpReader::open(dir / "odd.safetensors", options);
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  ExpectRows(*reader, values, DType::kFloat32);
}

TEST(DumpSafetensors, RefusesWhatItCannotRead) {
  const fs::path dir = TestDir();
  const std::string data = FloatBytes(RandomLogits(8, 8));
  auto st = [&](const std::string& name, const std::string& json, const std::string& payload) {
    WriteFile(dir / name, SafetensorsBytes(json, payload));
    return DumpReader::open(dir / name);
  };
  ExpectError(st("json.safetensors", "{\"x\": {\"dtype\": ", data),
              {"json.safetensors", "not valid JSON"});
  ExpectError(st("lines.safetensors", "{\n \"x\": {\n  \"dtype\": \"F32\",\n },\n}", data),
              {"lines.safetensors", "not valid JSON", "it begins {\\n \"x\""});
  ExpectError(
      st("name.safetensors",
         "{\"x\\ny\\u0001\":{\"dtype\":\"F64\",\"shape\":[1,4],\"data_offsets\":[0,32]}}", data),
      {"name.safetensors", "tensor 'x\\ny\\x01'", "'F64'"});
  ExpectError(st("array.safetensors", "[1, 2]", data), {"array.safetensors", "not a JSON object"});
  ExpectError(
      st("f64.safetensors", R"({"x":{"dtype":"F64","shape":[1,4],"data_offsets":[0,32]}})", data),
      {"f64.safetensors", "tensor 'x'", "dtype", "'F64'"});
  ExpectError(
      st("past.safetensors", R"({"x":{"dtype":"F32","shape":[4,4],"data_offsets":[0,64]}})", data),
      {"past.safetensors", "data_offsets", "[0,64]", "past the end"});
  ExpectError(
      st("size.safetensors", R"({"x":{"dtype":"F32","shape":[3,4],"data_offsets":[0,32]}})", data),
      {"size.safetensors", "shape", "(3, 4)", "48 bytes", "[0,32]"});
  ExpectError(
      st("order.safetensors", R"({"x":{"dtype":"F32","shape":[2,4],"data_offsets":[32,0]}})", data),
      {"order.safetensors", "data_offsets", "[32,0]"});
  ExpectError(st("shape.safetensors",
                 R"({"x":{"dtype":"F32","shape":[2,-4],"data_offsets":[0,32]}})", data),
              {"shape.safetensors", "shape", "[2,-4]"});
  ExpectError(st("nodtype.safetensors", R"({"x":{"shape":[2,4],"data_offsets":[0,32]}})", data),
              {"nodtype.safetensors", "dtype", "missing"});
  // The tensors must cover the data exactly, as the reference reader says.
  ExpectError(
      st("extra.safetensors", R"({"x":{"dtype":"F32","shape":[1,4],"data_offsets":[0,16]}})", data),
      {"extra.safetensors", "end at byte 16", "32 bytes", "does not describe the data"});
  ExpectError(st("gap.safetensors",
                 R"({"x":{"dtype":"F32","shape":[1,2],"data_offsets":[0,8]},)"
                 R"("y":{"dtype":"F32","shape":[1,4],"data_offsets":[16,32]}})",
                 data),
              {"gap.safetensors", "tensor 'y'", "begins at byte 16", "end at 8", "a gap"});
  ExpectError(st("overlap.safetensors",
                 R"({"x":{"dtype":"F32","shape":[1,6],"data_offsets":[0,24]},)"
                 R"("y":{"dtype":"F32","shape":[1,4],"data_offsets":[16,32]}})",
                 data),
              {"overlap.safetensors", "tensor 'y'", "begins at byte 16", "an overlap"});
  // An empty tensor where another starts is no overlap, whichever name
  // sorts first (the header's objects are read in key order).
  {
    Result<DumpReader> empty_first =
        st("empty.safetensors",
           R"({"a":{"dtype":"F32","shape":[1,8],"data_offsets":[0,32]},)"
           R"("b":{"dtype":"F32","shape":[0,8],"data_offsets":[0,0]}})",
           data);
    ASSERT_FALSE(empty_first.ok());  // two tensors: one must be chosen
    EXPECT_NE(empty_first.status().message().find("2 tensors"), std::string::npos)
        << empty_first.status().message();
  }
  ExpectError(st("twice.safetensors",
                 R"({"x":{"dtype":"F32","shape":[1,8],"data_offsets":[0,32]},)"
                 R"("x":{"dtype":"F32","shape":[1,8],"data_offsets":[0,32]}})",
                 data),
              {"twice.safetensors", "key \"x\" appears twice"});
  // A NUL byte, which a JSON reader may take for the end of the text, does
  // not hide a second tensor after it.
  ExpectError(st("nul.safetensors",
                 std::string(R"({"x":{"dtype":"F32","shape":[1,8],"data_offsets":[0,32]}})") +
                     '\0' + R"(, "y": {"dtype":"F32","shape":[1],"data_offsets":[32,36]}})",
                 data),
              {"nul.safetensors", "NUL byte"});
  // Printing a deeply nested value would recurse once per level.
  const std::string deep = std::string(100000, '[') + std::string(100000, ']');
  ExpectError(st("deep.safetensors", "{\"x\": " + deep + "}", data),
              {"deep.safetensors", "tensor 'x'", "nested more than 32 levels"});
  // (a header whose tensors end past 2^63 bytes with it: its offsets would overflow)
  ExpectError(
      st("far.safetensors",
         R"({"x":{"dtype":"Q9","shape":[1],"data_offsets":[0,9223372036854775800]}})", data),
      {"far.safetensors", "end at byte 9223372036854775800", "past 2^63 bytes"});
  ExpectError(st("none.safetensors", R"({"__metadata__":{}})", ""),
              {"none.safetensors", "no tensor"});
  WriteFile(dir / "len.safetensors", std::string("\xff\xff\x00\x00\x00\x00\x00\x00{}", 10));
  ExpectError(DumpReader::open(dir / "len.safetensors"), {"len.safetensors", "truncated"});
  WriteFile(dir / "huge.safetensors", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10));
  ExpectError(DumpReader::open(dir / "huge.safetensors"), {"huge.safetensors", "header length"});
  WriteFile(dir / "short.safetensors", "abc");
  ExpectError(DumpReader::open(dir / "short.safetensors"), {"short.safetensors", "truncated"});
}

TEST(DumpRaw, NeedsDtypeAndVocabThatDivideTheSize) {
  const fs::path dir = TestDir();
  WriteFile(dir / "r.bin", FloatBytes(RandomLogits(10, 9)));
  ExpectError(DumpReader::open(dir / "r.bin"), {"r.bin", "dtype and vocab"});
  WriteFile(dir / "r.pt", FloatBytes(RandomLogits(10, 9)));
  ExpectError(DumpReader::open(dir / "r.pt"), {"r.pt", "unknown format", "'.pt'"});
  // (a .npz is an archive, never raw rows, even with a dtype and vocab)
  WriteFile(dir / "r.npz", FloatBytes(RandomLogits(10, 9)));
  DumpOptions raw_options;
  raw_options.dtype = DType::kFloat32;
  raw_options.vocab = 10;
  ExpectError(DumpReader::open(dir / "r.npz"), {"r.npz", "NumPy archive", "numpy.save"});
  ExpectError(DumpReader::open(dir / "r.npz", raw_options), {"r.npz", "NumPy archive"});
  DumpOptions options;
  options.dtype = DType::kFloat32;
  ExpectError(DumpReader::open(dir / "r.bin", options), {"r.bin", "needs its vocab to be given"});
  options.vocab = 3;
  ExpectError(DumpReader::open(dir / "r.bin", options),
              {"r.bin", "size = 40 bytes", "vocab 3", "12"});
  options.vocab = 5;
  Result<DumpReader> ok = DumpReader::open(dir / "r.bin", options);
  ASSERT_TRUE(ok.ok()) << ok.status().message();
  EXPECT_EQ(ok->info().rows, 2);
  options.format = DumpFormat::kRaw;
  options.vocab = 0;
  ExpectError(DumpReader::open(dir / "r.bin", options), {"r.bin", "vocab"});
  WriteFile(dir / "empty.bin", "");
  options.vocab = 5;
  ExpectError(DumpReader::open(dir / "empty.bin", options), {"empty.bin", "empty"});
}

TEST(DumpOptionChecks, MustAgreeWithTheHeader) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(8, 10);
  ASSERT_TRUE(detail::write_dump(dir / "a.npy", values.data(), 2, 4, {}).ok());
  DumpOptions options;
  options.dtype = DType::kFloat16;
  ExpectError(DumpReader::open(dir / "a.npy", options), {"a.npy", "dtype = f16", "f32"});
  options.dtype.reset();
  options.vocab = 8;
  ExpectError(DumpReader::open(dir / "a.npy", options), {"a.npy", "vocab = 8", "(2, 4)"});
}

TEST(DumpOpen, ReportsMissingFilesAndDirectories) {
  const fs::path dir = TestDir();
  ExpectError(DumpReader::open(dir / "missing.npy"),
              {"missing.npy", "cannot open", "No such file"});
  ExpectError(DumpReader::open(dir), {dir.string(), "directory"});
  // (an empty path, from a script's unset variable, is named as such)
  const Result<DumpReader> empty = DumpReader::open("");
  ExpectError(empty, {"dump path is empty"});
  EXPECT_EQ(empty.status().code(), StatusCode::kInvalidArgument);
}

TEST(DumpFromBytes, SniffsNumPyAndFallsBackToRaw) {
  const std::vector<float> values = RandomLogits(6, 11);
  const std::string npy =
      NpyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", FloatBytes(values));
  Result<DumpReader> a =
      DumpReader::from_bytes("<pipe>", std::vector<unsigned char>(npy.begin(), npy.end()));
  ASSERT_TRUE(a.ok()) << a.status().message();
  EXPECT_EQ(a->info().format, DumpFormat::kNpy);
  EXPECT_FALSE(a->info().streamed);
  ExpectRows(*a, values, DType::kFloat32);

  const std::string raw = FloatBytes(values);
  const std::vector<unsigned char> raw_bytes(raw.begin(), raw.end());
  ExpectError(DumpReader::from_bytes("<pipe>", raw_bytes), {"<pipe>", "unknown format"});
  DumpOptions options;
  options.dtype = DType::kFloat32;
  options.vocab = 2;
  Result<DumpReader> b = DumpReader::from_bytes("<pipe>", raw_bytes, options);
  ASSERT_TRUE(b.ok()) << b.status().message();
  EXPECT_EQ(b->info().format, DumpFormat::kRaw);
  EXPECT_EQ(b->info().rows, 3);
  ExpectRows(*b, values, DType::kFloat32);
}

// A .safetensors header is recognised by its length (at most 100 MB) and
// its opening brace, even when a dtype and vocab are given (as for .npy:
// read as raw, the header would be rows of logits).
TEST(DumpFromBytes, SniffsSafetensors) {
  const std::vector<float> values = RandomLogits(6, 12);
  const std::string st = SafetensorsBytes(
      R"({"logits":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}})", FloatBytes(values));
  const std::vector<unsigned char> bytes(st.begin(), st.end());
  DumpOptions options;
  for (const bool raw_options : {false, true}) {
    if (raw_options) {
      options.dtype = DType::kFloat32;
      options.vocab = 3;
    }
    Result<DumpReader> a = DumpReader::from_bytes("<pipe>", bytes, options);
    ASSERT_TRUE(a.ok()) << a.status().message();
    EXPECT_EQ(a->info().format, DumpFormat::kSafetensors);
    ExpectRows(*a, values, DType::kFloat32);
  }
  // A length past 100 MB, or no '{"' after it: not a header.
  for (const int at : {5, 8, 9}) {
    std::vector<unsigned char> other = bytes;
    other[at] = at == 5 ? 0x07 : ' ';
    ExpectError(DumpReader::from_bytes("<pipe>", other), {"<pipe>", "unknown format"});
  }
  // Raw bfloat16 rows that start with a small length and a '{' (0x3f7b,
  // ~0.98, fifth) are raw.
  const uint16_t row[8] = {0x3f80, 0, 0, 0, 0x3f7b, 0x3f00, 0x3f00, 0x3f00};
  const auto* raw = reinterpret_cast<const unsigned char*>(row);
  options.dtype = DType::kBFloat16;
  options.vocab = 8;
  Result<DumpReader> r =
      DumpReader::from_bytes("<pipe>", std::vector<unsigned char>(raw, raw + sizeof row), options);
  ASSERT_TRUE(r.ok()) << r.status().message();
  EXPECT_EQ(r->info().format, DumpFormat::kRaw);
}

TEST(DumpBlocks, CoverTheDumpAndCheckRanges) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(10 * 16, 12);
  ASSERT_TRUE(detail::write_dump(dir / "a.npy", values.data(), 10, 16, {}).ok());
  DumpOptions options;
  options.block_bytes = 3 * 16 * 4;
  Result<DumpReader> reader = DumpReader::open(dir / "a.npy", options);
  ASSERT_TRUE(reader.ok());
  EXPECT_EQ(reader->block_rows(), 3);
  EXPECT_EQ(reader->num_blocks(), 4);
  Result<LogitsView> last = reader->block(3);
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(last->rows, 1);
  EXPECT_EQ(ValueAt(*last, 0, 5), values[9 * 16 + 5]);
  Result<LogitsView> middle = reader->read(4, 5);
  ASSERT_TRUE(middle.ok());
  EXPECT_EQ(ValueAt(*middle, 4, 15), values[8 * 16 + 15]);
  EXPECT_FALSE(reader->block(4).ok());
  EXPECT_FALSE(reader->read(8, 3).ok());
  EXPECT_FALSE(reader->read(0, 0).ok());
  EXPECT_FALSE(reader->read(-1, 1).ok());
  // A count near INT64_MAX (the C API passes callers' values through): a
  // message, no overflow (UBSan in the sanitizer build).
  Result<LogitsView> huge = reader->read(5, std::numeric_limits<int64_t>::max());
  ASSERT_FALSE(huge.ok());
  EXPECT_NE(huge.status().message().find("9223372036854775807 rows from row 5"), std::string::npos)
      << huge.status().message();
}

// read_into copies rows as stored, from a file or from bytes in memory (a
// pipe), with read()'s range checks, and leaves read()'s block alone.
TEST(DumpBlocks, ReadIntoCopiesRowsAsStored) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(10 * 16, 15);
  ASSERT_TRUE(detail::write_dump(dir / "a.npy", values.data(), 10, 16, {}).ok());
  std::ifstream in(dir / "a.npy", std::ios::binary);
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), {});
  DumpOptions options;
  options.block_bytes = 3 * 16 * 4;
  Result<DumpReader> file = DumpReader::open(dir / "a.npy", options);
  Result<DumpReader> held = DumpReader::from_bytes("a.npy", std::move(bytes), options);
  for (Result<DumpReader>* reader : {&file, &held}) {
    ASSERT_TRUE(reader->ok());
    Result<LogitsView> block = (*reader)->block(0);
    ASSERT_TRUE(block.ok());
    std::vector<float> rows(5 * 16, -1.0f);
    ASSERT_TRUE((*reader)->read_into(4, 5, rows.data()).ok());
    EXPECT_TRUE(std::equal(rows.begin(), rows.end(), values.begin() + 4 * 16));
    EXPECT_EQ(ValueAt(*block, 2, 7), values[2 * 16 + 7]);  // still the block read
    EXPECT_FALSE((*reader)->read_into(8, 3, rows.data()).ok());
    EXPECT_FALSE((*reader)->read_into(0, 0, rows.data()).ok());
    Status huge = (*reader)->read_into(5, std::numeric_limits<int64_t>::max(), rows.data());
    EXPECT_NE(huge.message().find("9223372036854775807 rows from row 5"), std::string::npos)
        << huge.message();
  }
}

TEST(DumpBlocks, RefuseAFileThatShrankAfterOpening) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(4 * 1024, 13);
  ASSERT_TRUE(detail::write_dump(dir / "a.npy", values.data(), 4, 1024, {}).ok());
  DumpOptions options;
  options.block_bytes = 1024 * 4;
  Result<DumpReader> reader = DumpReader::open(dir / "a.npy", options);
  ASSERT_TRUE(reader.ok());
  // A block read before the file shrinks stays readable (a mapped block
  // would fault with SIGBUS on its lost pages); the next is refused.
  Result<LogitsView> first = reader->block(1);
  ASSERT_TRUE(first.ok()) << first.status().message();
  fs::resize_file(dir / "a.npy", 2048);
  const auto* kept = static_cast<const float*>(first->data);
  EXPECT_TRUE(std::equal(kept, kept + 1024, values.begin() + 1024));
  Result<LogitsView> view = reader->block(3);
  ASSERT_FALSE(view.ok());
  EXPECT_NE(view.status().message().find("a.npy: truncated: the file shrank to 2048 bytes while "
                                         "it was being read"),
            std::string::npos)
      << view.status().message();
}

// Feeds `bytes` through a pipe from a thread; path() names its read end
// (/dev/fd/N, as a shell's `<(cmd)` would). A reader that stops early makes
// the writer's next write fail (EPIPE, SIGPIPE ignored), which ends it.
class PipeFeed {
 public:
  explicit PipeFeed(std::string bytes) : bytes_(std::move(bytes)) {
    std::signal(SIGPIPE, SIG_IGN);
    int fds[2];
    if (::pipe(fds) != 0) throw std::runtime_error("pipe");
    read_end_ = fds[0];
    writer_ = std::thread([this, fd = fds[1]] {
      size_t done = 0;
      while (done < bytes_.size()) {
        const ssize_t n = ::write(fd, bytes_.data() + done, bytes_.size() - done);
        if (n <= 0) break;
        done += static_cast<size_t>(n);
      }
      ::close(fd);
    });
  }
  PipeFeed(const PipeFeed&) = delete;
  PipeFeed& operator=(const PipeFeed&) = delete;
  ~PipeFeed() {
    close_read_end();
    writer_.join();
  }
  std::string path() const { return "/dev/fd/" + std::to_string(read_end_); }
  // Once a reader has opened path() (its own descriptor), the feed's own is
  // closed, so that the writer sees the reader go.
  void close_read_end() {
    if (read_end_ >= 0) ::close(read_end_);
    read_end_ = -1;
  }

 private:
  std::string bytes_;
  int read_end_ = -1;
  std::thread writer_;
};

Result<DumpReader> OpenPipe(PipeFeed& feed, const DumpOptions& options) {
  Result<DumpReader> reader = DumpReader::open(feed.path(), options);
  feed.close_read_end();
  return reader;
}

// 12 rows of 64 Ki float32 (3 MiB) read two rows a block (a pipe is read
// ahead by a block, 512 KiB, when that is less than 2 MiB).
constexpr int64_t kPipeRows = 12, kPipeVocab = 64 * 1024;
DumpOptions TwoRowBlocks() {
  DumpOptions options;
  options.block_bytes = 2 * kPipeVocab * 4;
  return options;
}

// kPipeRows x kPipeVocab float32 `values` as the bytes of a .npy file, or
// of a .safetensors file (tensor "logits").
std::string PipeDump(const std::vector<float>& values, DumpFormat format = DumpFormat::kNpy) {
  const fs::path path = TestDir() / (format == DumpFormat::kNpy ? "a.npy" : "a.safetensors");
  detail::DumpWriteSpec spec;
  spec.format = format;
  EXPECT_TRUE(detail::write_dump(path, values.data(), kPipeRows, kPipeVocab, spec).ok());
  return ReadFile(path);
}

// The formats whose pipes are streamed: their headers say how many rows follow.
constexpr DumpFormat kStreamedFormats[] = {DumpFormat::kNpy, DumpFormat::kSafetensors};

// A .npy or .safetensors pipe longer than the read-ahead is streamed: read
// once, front to back, block by block, with the file's values.
TEST(DumpPipe, ALongNpyOrSafetensorsIsStreamedAndReadsBackAsTheFile) {
  const std::vector<float> values = RandomLogits(kPipeRows * kPipeVocab, 21);
  for (const DumpFormat format : kStreamedFormats) {
    SCOPED_TRACE(dump_format_name(format));
    const std::string bytes = PipeDump(values, format);
    PipeFeed feed(bytes);
    Result<DumpReader> reader = OpenPipe(feed, TwoRowBlocks());
    ASSERT_TRUE(reader.ok()) << reader.status().message();
    EXPECT_EQ(reader->info().format, format);  // (sniffed: a pipe has no extension)
    EXPECT_TRUE(reader->info().streamed);
    EXPECT_EQ(reader->info().rows, kPipeRows);
    ExpectRows(*reader, values, DType::kFloat32);
    Result<LogitsView> again = reader->block(0);
    ASSERT_FALSE(again.ok());
    EXPECT_NE(again.status().message().find(
                  "rows [0, 2) were already read: a pipe is read once, front to back"),
              std::string::npos)
        << again.status().message();
  }
}

// read_into skips rows it is not asked for and refuses those it passed.
TEST(DumpPipe, ReadIntoSkipsForward) {
  const std::vector<float> values = RandomLogits(kPipeRows * kPipeVocab, 22);
  const std::string bytes = PipeDump(values);
  PipeFeed feed(bytes);
  Result<DumpReader> reader = OpenPipe(feed, TwoRowBlocks());
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  std::vector<float> rows(2 * kPipeVocab);
  for (int64_t first : {int64_t{3}, int64_t{9}, int64_t{10}}) {
    const int64_t count = first == 9 ? 1 : 2;
    ASSERT_TRUE(reader->read_into(first, count, rows.data()).ok()) << "rows from " << first;
    EXPECT_TRUE(std::equal(rows.begin(), rows.begin() + count * kPipeVocab,
                           values.begin() + first * kPipeVocab))
        << "rows from " << first;
  }
  // (rows 0 and 1 were read ahead; reading rows 3 and 4 dropped them)
  EXPECT_FALSE(reader->read_into(4, 1, rows.data()).ok());
  EXPECT_FALSE(reader->read_into(11, 1, rows.data()).ok());
}

// read_into_float32 from a streamed half-precision pipe: the rows widened as
// a file's are (in place in the caller's buffer, nothing written past it),
// read forward only.
TEST(DumpPipe, ReadIntoFloat32WidensAStreamedHalfPipe) {
  const std::vector<float> values = RandomLogits(kPipeRows * kPipeVocab, 24);
  const std::pair<DumpFormat, DType> cases[] = {{DumpFormat::kNpy, DType::kFloat16},
                                                {DumpFormat::kSafetensors, DType::kBFloat16}};
  for (const auto& [format, dtype] : cases) {
    SCOPED_TRACE(dump_format_name(format));
    const fs::path path = TestDir() / "half";
    detail::DumpWriteSpec spec;
    spec.format = format;
    spec.dtype = dtype;
    ASSERT_TRUE(detail::write_dump(path, values.data(), kPipeRows, kPipeVocab, spec).ok());
    PipeFeed feed(ReadFile(path));
    DumpOptions options;
    options.block_bytes = 2 * kPipeVocab * 2;  // (the read-ahead: 256 KiB of 1.5 MiB)
    Result<DumpReader> reader = OpenPipe(feed, options);
    ASSERT_TRUE(reader.ok()) << reader.status().message();
    EXPECT_TRUE(reader->info().streamed);
    EXPECT_EQ(reader->info().dtype, dtype);
    std::vector<float> rows(3 * kPipeVocab + 8, -7.0f);
    for (const int64_t first : {int64_t{1}, int64_t{6}}) {
      ASSERT_TRUE(reader->read_into_float32(first, 3, rows.data()).ok()) << "rows from " << first;
      for (int64_t i = 0; i < 3 * kPipeVocab; ++i) {
        ASSERT_EQ(rows[static_cast<size_t>(i)],
                  Rounded(values[static_cast<size_t>(first * kPipeVocab + i)], dtype))
            << "rows from " << first << ", value " << i;
      }
      for (size_t i = 3 * kPipeVocab; i < rows.size(); ++i) ASSERT_EQ(rows[i], -7.0f);
    }
    EXPECT_FALSE(reader->read_into_float32(0, 1, rows.data()).ok());  // (already read)
  }
}

// A stream that ends early, or holds bytes after the last row, fails at the
// block where that shows, with the message a file of that size gets when it
// is opened; the blocks before it read normally.
TEST(DumpPipe, AShortOrLongStreamGetsTheFilesMessage) {
  const std::vector<float> values = RandomLogits(kPipeRows * kPipeVocab, 23);
  for (const DumpFormat format : kStreamedFormats) {
    SCOPED_TRACE(dump_format_name(format));
    const std::string bytes = PipeDump(values, format);
    const size_t header = bytes.size() - kPipeRows * kPipeVocab * 4;
    const std::string truncated =
        format == DumpFormat::kNpy ? "truncated file" : "reaches past the end of the data";
    struct Case {
      std::string bytes;
      int64_t failing_block;
      std::string says;
    };
    const Case cases[] = {
        {bytes.substr(0, header + 9 * kPipeVocab * 4 + 100), 4, truncated},
        {bytes.substr(0, header + 11 * kPipeVocab * 4), 5, truncated},
        {bytes + "xyz", 5, "the header does not describe the data"},
        // (exactly the 1 MiB read after the last row: its end is seen)
        {bytes + std::string(1 << 20, '\0'), 5, "the header does not describe the data"},
    };
    for (const Case& c : cases) {
      PipeFeed feed(c.bytes);
      const std::string name = feed.path();
      Result<DumpReader> reader = OpenPipe(feed, TwoRowBlocks());
      ASSERT_TRUE(reader.ok()) << reader.status().message();
      Result<DumpReader> held = DumpReader::from_bytes(
          name, std::vector<unsigned char>(c.bytes.begin(), c.bytes.end()), TwoRowBlocks());
      ASSERT_FALSE(held.ok());
      EXPECT_NE(held.status().message().find(c.says), std::string::npos) << held.status().message();
      for (int64_t b = 0; b < c.failing_block; ++b) {
        EXPECT_TRUE(reader->block(b).ok()) << "block " << b << " of " << c.bytes.size() << " bytes";
      }
      Result<LogitsView> failing = reader->block(c.failing_block);
      ASSERT_FALSE(failing.ok()) << c.bytes.size() << " bytes";
      EXPECT_EQ(failing.status().message(), held.status().message());
      // (again: the same message, not "already read")
      Result<LogitsView> again = reader->block(c.failing_block);
      ASSERT_FALSE(again.ok());
      EXPECT_EQ(again.status().message(), held.status().message());
    }
  }
}

// After the last row a stream is read on only so far (1 MiB): one that goes
// on (here 3 MiB more; a `cat /dev/zero` would never end) is refused without
// waiting for its end.
TEST(DumpPipe, AStreamThatGoesOnIsRefusedWithoutWaitingForItsEnd) {
  const std::vector<float> values = RandomLogits(kPipeRows * kPipeVocab, 25);
  for (const DumpFormat format : kStreamedFormats) {
    SCOPED_TRACE(dump_format_name(format));
    const std::string bytes = PipeDump(values, format);
    PipeFeed feed(bytes + std::string(3 << 20, '\0'));
    Result<DumpReader> reader = OpenPipe(feed, TwoRowBlocks());
    ASSERT_TRUE(reader.ok()) << reader.status().message();
    for (int64_t b = 0; b + 1 < reader->num_blocks(); ++b) ASSERT_TRUE(reader->block(b).ok());
    Result<LogitsView> last = reader->block(reader->num_blocks() - 1);
    ASSERT_FALSE(last.ok());
    const std::string says =
        format == DumpFormat::kNpy
            ? "needs 3145728 bytes of data but the input holds at least 4194305: the header "
              "does not describe the data"
            : "the tensors end at byte 3145728 of the data but the input holds at least "
              "4194305 bytes after the header: the header does not describe the data";
    EXPECT_NE(last.status().message().find(says), std::string::npos) << last.status().message();
  }
}

// A .safetensors stream with several tensors: the one chosen is read where
// it lies (the tensors before it are skipped), and the ones after it are
// read through, since the file's size is checked (a later tensor cut short
// is the file's "truncated" error, at the chosen tensor's last block).
TEST(DumpPipe, ASafetensorsStreamSkipsToItsTensorAndChecksTheRest) {
  const std::vector<float> values = RandomLogits(kPipeRows * kPipeVocab, 28);
  const int64_t before = int64_t{3} << 20, after = int64_t{2} << 20;  // bytes of U8
  const int64_t logits = kPipeRows * kPipeVocab * 4;
  std::string header = "{\"before\":{\"dtype\":\"U8\",\"shape\":[" + std::to_string(before) +
                       "],\"data_offsets\":[0," + std::to_string(before) +
                       "]},\"logits\":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(kPipeRows) +
                       "," + std::to_string(kPipeVocab) + "],\"data_offsets\":[" +
                       std::to_string(before) + "," + std::to_string(before + logits) +
                       "]},\"after\":{\"dtype\":\"U8\",\"shape\":[" + std::to_string(after) +
                       "],\"data_offsets\":[" + std::to_string(before + logits) + "," +
                       std::to_string(before + logits + after) + "]}}";
  std::string bytes(8, '\0');
  for (size_t i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  bytes += header + std::string(static_cast<size_t>(before), 'b');
  bytes.append(reinterpret_cast<const char*>(values.data()), static_cast<size_t>(logits));
  bytes += std::string(static_cast<size_t>(after), 'a');
  DumpOptions options = TwoRowBlocks();
  options.tensor = "logits";
  {
    PipeFeed feed(bytes);
    Result<DumpReader> reader = OpenPipe(feed, options);
    ASSERT_TRUE(reader.ok()) << reader.status().message();
    EXPECT_TRUE(reader->info().streamed);
    EXPECT_EQ(reader->info().tensor, "logits");
    ExpectRows(*reader, values, DType::kFloat32);
  }
  const std::string cut = bytes.substr(0, bytes.size() - 5);
  PipeFeed feed(cut);
  const std::string name = feed.path();
  Result<DumpReader> reader = OpenPipe(feed, options);
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  Result<DumpReader> held =
      DumpReader::from_bytes(name, std::vector<unsigned char>(cut.begin(), cut.end()), options);
  ExpectError(held, {"tensor 'after': field 'data_offsets' = [6291456,8388608] reaches past "
                     "the end of the data (8388603 bytes): the file is truncated"});
  for (int64_t b = 0; b + 1 < reader->num_blocks(); ++b) ASSERT_TRUE(reader->block(b).ok());
  Result<LogitsView> last = reader->block(reader->num_blocks() - 1);
  ASSERT_FALSE(last.ok());
  EXPECT_EQ(last.status().message(), held.status().message());
}

// A streamed header is still checked for what needs no size: a shape past
// 2^63 bytes is refused when the pipe is opened (rows near 2^62 overflowed
// the reads' offsets: a read returned OK having read nothing).
TEST(DumpPipe, AShapePast2To63BytesIsRefusedAtOpen) {
  const int64_t shape[] = {int64_t{1} << 62, 1000};
  PipeFeed feed(detail::format_npy_header(DType::kFloat32, shape) + std::string(3 << 20, '\0'));
  ExpectError(OpenPipe(feed, TwoRowBlocks()),
              {"/dev/fd/", "needs more than 2^63 bytes of data: truncated file"});
  // Data that fits 2^63 bytes but not after its header: its size is given.
  const int64_t near[] = {2305843009213693942, 1};  // 2^63 - 40 bytes of f32
  const std::string bytes = detail::format_npy_header(DType::kFloat32, near) + "abcd";
  PipeFeed near_feed(bytes + std::string(3 << 20, '\0'));
  ExpectError(OpenPipe(near_feed, TwoRowBlocks()),
              {"needs 9223372036854775768 bytes of data: truncated file"});
  ExpectError(
      DumpReader::from_bytes("n.npy", std::vector<unsigned char>(bytes.begin(), bytes.end())),
      {"needs 9223372036854775768 bytes of data but the file holds 4: truncated file"});
}

// Options refused whatever the data are refused before a pipe is read (the
// pipe's bytes are still there after); options that disagree with the
// header come before its size, which a stream knows only at its end.
TEST(DumpPipe, OptionsAreCheckedBeforeThePipeIsRead) {
  int fds[2];
  ASSERT_EQ(::pipe(fds), 0);
  ASSERT_EQ(::write(fds[1], "abc", 3), 3);
  ::close(fds[1]);
  const std::string path = "/dev/fd/" + std::to_string(fds[0]);
  DumpOptions bad;
  bad.block_bytes = 0;
  ExpectError(DumpReader::open(path, bad), {"block_bytes = 0 must be > 0"});
  bad.block_bytes = 64;
  bad.vocab = -3;
  ExpectError(DumpReader::open(path, bad), {"vocab = -3 must be > 0"});
  char left[4] = {};
  EXPECT_EQ(::read(fds[0], left, 4), 3);
  EXPECT_EQ(std::string(left), "abc");
  ::close(fds[0]);

  const std::vector<float> values = RandomLogits(kPipeRows * kPipeVocab, 27);
  const std::string bytes = PipeDump(values);
  const std::string cut = bytes.substr(0, bytes.size() - 100);
  DumpOptions options = TwoRowBlocks();
  options.vocab = 5;
  PipeFeed feed(cut);
  const std::string name = feed.path();
  Result<DumpReader> piped = OpenPipe(feed, options);
  Result<DumpReader> held =
      DumpReader::from_bytes(name, std::vector<unsigned char>(cut.begin(), cut.end()), options);
  ExpectError(piped, {"vocab = 5 was given but the file's shape (12, 65536) has vocab 65536"});
  ASSERT_FALSE(held.ok());
  EXPECT_EQ(piped.status().message(), held.status().message());
}

// The read-ahead is 2 MiB, or a block when that is less: a pipe of exactly
// that many bytes is held whole (its end is seen), one element more is
// streamed.
TEST(DumpPipe, APipeOfExactlyTheReadAheadIsHeldWhole) {
  const int64_t shape[] = {1, 16};
  const size_t header = detail::format_npy_header(DType::kFloat32, shape).size();
  for (const int64_t read_ahead : {int64_t{2} << 20, int64_t{64} << 10}) {
    DumpOptions options;
    options.block_bytes = read_ahead == (int64_t{2} << 20) ? int64_t{64} << 20 : read_ahead;
    for (int64_t extra : {0, 1}) {
      const int64_t vocab = (read_ahead - static_cast<int64_t>(header)) / 2 + extra;
      const int64_t row_shape[] = {1, vocab};
      const std::string bytes = detail::format_npy_header(DType::kFloat16, row_shape) +
                                std::string(static_cast<size_t>(2 * vocab), '\0');
      ASSERT_EQ(bytes.size(), static_cast<size_t>(read_ahead + 2 * extra));
      PipeFeed feed(bytes);
      Result<DumpReader> reader = OpenPipe(feed, options);
      ASSERT_TRUE(reader.ok()) << reader.status().message();
      EXPECT_EQ(reader->info().streamed, extra == 1) << bytes.size() << " bytes";
      EXPECT_TRUE(reader->block(0).ok());
    }
  }
}

// A header longer than the read-ahead (here 16 bytes: a block of 16 bytes)
// is read on as far as it goes, then the rows are streamed; so is one whose
// pipe ends within it (held whole: the file's message).
TEST(DumpPipe, AHeaderLongerThanTheReadAheadIsReadOn) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(12 * 64, 26);
  ASSERT_TRUE(detail::write_dump(dir / "a.npy", values.data(), 12, 64, {}).ok());
  const std::string bytes = ReadFile(dir / "a.npy");
  DumpOptions options;
  options.block_bytes = 16;
  PipeFeed feed(bytes);
  Result<DumpReader> reader = OpenPipe(feed, options);
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  EXPECT_TRUE(reader->info().streamed);
  EXPECT_EQ(reader->block_rows(), 1);
  ExpectRows(*reader, values, DType::kFloat32);
  for (size_t cut : {size_t{5}, size_t{11}, size_t{100}}) {
    PipeFeed short_feed(bytes.substr(0, cut));
    const std::string name = short_feed.path();
    Result<DumpReader> held = DumpReader::from_bytes(
        name, std::vector<unsigned char>(bytes.begin(), bytes.begin() + cut), options);
    Result<DumpReader> piped = OpenPipe(short_feed, options);
    ASSERT_FALSE(held.ok());
    ASSERT_FALSE(piped.ok()) << cut;
    EXPECT_EQ(piped.status().message(), held.status().message());
  }
}

// Sets an environment variable for its lifetime, then puts back what was.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const std::string& value) : name_(name) {
    if (const char* had = std::getenv(name)) saved_ = had;
    ::setenv(name, value.c_str(), 1);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;
  ~ScopedEnv() {
    if (saved_) {
      ::setenv(name_, saved_->c_str(), 1);
    } else {
      ::unsetenv(name_);
    }
  }

 private:
  const char* name_;
  std::optional<std::string> saved_;
};

// kPipeRows x kPipeVocab float32 `values` as the bytes of a raw dump, and
// the options that read them two rows a block.
std::string PipeRaw(const fs::path& dir, const std::vector<float>& values) {
  detail::DumpWriteSpec spec;
  spec.format = DumpFormat::kRaw;
  EXPECT_TRUE(detail::write_dump(dir / "a.bin", values.data(), kPipeRows, kPipeVocab, spec).ok());
  return ReadFile(dir / "a.bin");
}
DumpOptions RawBlocks() {
  DumpOptions options = TwoRowBlocks();
  options.dtype = DType::kFloat32;
  options.vocab = kPipeVocab;
  return options;
}

// A raw pipe longer than the read-ahead (its rows are its size) is copied
// to an unnamed temporary file in $TMPDIR and read from there like a file
// (any block, any order; nothing left in the directory); where no temporary
// file can be made, it is held whole in memory.
TEST(DumpPipe, ARawPipeIsCopiedToATemporaryFile) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(kPipeRows * kPipeVocab, 24);
  const std::string bytes = PipeRaw(dir, values);
  fs::create_directory(dir / "tmp");
  for (const bool writable : {true, false}) {
    SCOPED_TRACE(writable ? "a temporary file" : "no temporary file");
    const ScopedEnv tmpdir("TMPDIR", dir / (writable ? "tmp" : "missing"));
    PipeFeed feed(bytes);
    Result<DumpReader> reader = OpenPipe(feed, RawBlocks());
    ASSERT_TRUE(reader.ok()) << reader.status().message();
    EXPECT_EQ(reader->info().format, DumpFormat::kRaw);
    EXPECT_EQ(reader->info().rows, kPipeRows);
    EXPECT_EQ(reader->info().streamed, writable);  // (read from the file a block at a time)
    ExpectRows(*reader, values, DType::kFloat32);
    EXPECT_TRUE(reader->block(0).ok());  // any block, any order
    EXPECT_TRUE(fs::is_empty(dir / "tmp"));
  }
}

// A temporary file that cannot take the whole pipe (here a file-size limit
// that cuts a write short mid-chunk) gives what it took back to memory,
// which holds the rest.
TEST(DumpPipe, ARawPipeTheTemporaryFileCannotHoldIsHeldInMemory) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(kPipeRows * kPipeVocab, 29);
  const std::string bytes = PipeRaw(dir, values);
  const ScopedEnv tmpdir("TMPDIR", dir);
  const auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit old_limit{};
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  rlimit limit = old_limit;
  limit.rlim_cur = (3 << 20) / 2 + 12345;  // (past the read-ahead, within a 1 MiB chunk)
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &limit), 0);
  Result<DumpReader> reader = Status::internal("not opened");
  {
    PipeFeed feed(bytes);
    reader = OpenPipe(feed, RawBlocks());
  }
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  std::signal(SIGXFSZ, old_handler);
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  EXPECT_FALSE(reader->info().streamed);  // (held in memory)
  EXPECT_EQ(reader->info().rows, kPipeRows);
  ExpectRows(*reader, values, DType::kFloat32);
}

// A pipe that ends within the read-ahead is held whole and checked when it
// is opened.
TEST(DumpPipe, ShortPipesAreHeldWhole) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(2 * kPipeVocab, 24);
  ASSERT_TRUE(detail::write_dump(dir / "s.npy", values.data(), 2, kPipeVocab, {}).ok());
  const std::string small = ReadFile(dir / "s.npy");
  {
    PipeFeed feed(small);
    Result<DumpReader> reader = OpenPipe(feed, DumpOptions{});
    ASSERT_TRUE(reader.ok()) << reader.status().message();
    EXPECT_FALSE(reader->info().streamed);
    ExpectRows(*reader, values, DType::kFloat32);
  }
  PipeFeed feed(small.substr(0, small.size() - 4));
  ExpectError(OpenPipe(feed, DumpOptions{}), {"/dev/fd/", "truncated file"});
}

TEST(DumpNpyWriter, WritesRowsAndRenamesOnCommit) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(3 * 5, 14);
  Result<NpyWriter> writer = NpyWriter::create(dir / "out.npy", 3, 5);
  ASSERT_TRUE(writer.ok()) << writer.status().message();
  ASSERT_TRUE(writer->write_rows(values.data(), 2).ok());
  EXPECT_FALSE(fs::exists(dir / "out.npy"));  // not before commit
  ASSERT_TRUE(writer->write_rows(values.data() + 10, 1).ok());
  EXPECT_FALSE(writer->write_rows(values.data(), 1).ok());  // one row too many
  ASSERT_TRUE(writer->commit().ok());
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  struct stat st;
  ASSERT_EQ(::stat((dir / "out.npy").c_str(), &st), 0);
  const mode_t mask = ::umask(0);
  ::umask(mask);
  EXPECT_EQ(st.st_mode & 0777, 0666 & ~mask) << "a new file gets the mode a plain create gives";
  Result<DumpReader> reader = DumpReader::open(dir / "out.npy");
  ASSERT_TRUE(reader.ok()) << reader.status().message();
  ExpectRows(*reader, values, DType::kFloat32);
}

TEST(DumpNpyWriter, LeavesNothingBehindWhenAbandonedOrIncomplete) {
  const fs::path dir = TestDir();
  const std::vector<float> values = RandomLogits(10, 15);
  {
    Result<NpyWriter> writer = NpyWriter::create(dir / "a.npy", 2, 5);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(writer->write_rows(values.data(), 1).ok());
  }
  {
    Result<NpyWriter> writer = NpyWriter::create(dir / "b.npy", 2, 5);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(writer->write_rows(values.data(), 1).ok());
    // Null data, a negative count, a commit before the last row: call
    // errors that change nothing.
    for (const Status& s : {writer->write_rows(nullptr, 1), writer->write_rows(values.data(), -1),
                            writer->commit()}) {
      EXPECT_EQ(s.code(), StatusCode::kInvalidArgument) << s.message();
    }
    EXPECT_NE(writer->commit().message().find("commit after only 1 of 2 rows were written"),
              std::string::npos);
    EXPECT_NE(writer->write_rows(values.data(), -1).message().find("rows = -1 must be >= 0"),
              std::string::npos);
    EXPECT_TRUE(writer->write_rows(nullptr, 0).ok());
  }
  {
    // ... and the rest can still be written and committed.
    Result<NpyWriter> writer = NpyWriter::create(dir / "d.npy", 2, 5);
    ASSERT_TRUE(writer.ok());
    ASSERT_TRUE(writer->write_rows(values.data(), 1).ok());
    EXPECT_FALSE(writer->commit().ok());
    ASSERT_TRUE(writer->write_rows(values.data() + 5, 1).ok());
    ASSERT_TRUE(writer->commit().ok());
    Result<DumpReader> back = DumpReader::open((dir / "d.npy").string(), DumpOptions());
    ASSERT_TRUE(back.ok()) << back.status().message();
    std::vector<float> rows(10);
    ASSERT_TRUE(back->read_into(0, 2, rows.data()).ok());
    EXPECT_EQ(rows, std::vector<float>(values.begin(), values.begin() + 10));  // both rows
    fs::remove(dir / "d.npy");
  }
  EXPECT_TRUE(fs::is_empty(dir));
  EXPECT_FALSE(NpyWriter::create(dir / "c.npy", 2, 5, DType::kBFloat16).ok());
  Result<NpyWriter> nowhere = NpyWriter::create(dir / "no" / "such" / "dir.npy", 1, 1);
  ASSERT_FALSE(nowhere.ok());
  EXPECT_NE(nowhere.status().message().find("dir.npy"), std::string::npos);
}

TEST(DumpNpyWriter, ReplacesAnExistingFileOnlyOnCommit) {
  const fs::path dir = TestDir();
  WriteFile(dir / "out.npy", "old contents");
  const std::vector<float> values = RandomLogits(4, 16);
  {
    Result<NpyWriter> writer = NpyWriter::create(dir / "out.npy", 1, 4);
    ASSERT_TRUE(writer.ok());
  }
  EXPECT_EQ(ReadFile(dir / "out.npy"), "old contents");
  Result<NpyWriter> writer = NpyWriter::create(dir / "out.npy", 1, 4);
  ASSERT_TRUE(writer.ok());
  ASSERT_TRUE(writer->write_rows(values.data(), 1).ok());
  ASSERT_TRUE(writer->commit().ok());
  Result<DumpReader> reader = DumpReader::open(dir / "out.npy");
  ASSERT_TRUE(reader.ok());
  ExpectRows(*reader, values, DType::kFloat32);
}

TEST(DumpAtomicFile, WritesDevicesInPlace) {
  // Renaming a temporary file over /dev/null would replace the device.
  Result<detail::AtomicFile> file = detail::AtomicFile::create("/dev/null");
  ASSERT_TRUE(file.ok()) << file.status().message();
  ASSERT_TRUE(file->write("hello").ok());
  ASSERT_TRUE(file->commit().ok());
  struct stat st;
  ASSERT_EQ(::stat("/dev/null", &st), 0);
  EXPECT_TRUE(S_ISCHR(st.st_mode));
}

TEST(DumpAtomicFile, WritesThroughSymbolicLinks) {
  // As a shell's `>` does: the file a link names gets the contents, the link
  // stays a link (a rename over the link would replace it). Relative and
  // chained links, and a link to a file that does not exist yet.
  const fs::path dir = TestDir();
  fs::create_directories(dir / "real");
  WriteFile(dir / "real" / "out.txt", "old contents");
  fs::create_symlink("real/out.txt", dir / "link.txt");
  fs::create_symlink(dir / "link.txt", dir / "chain.txt");
  fs::create_symlink("real/new.txt", dir / "dangling.txt");
  for (const char* name : {"link.txt", "chain.txt", "dangling.txt"}) {
    Result<detail::AtomicFile> file = detail::AtomicFile::create((dir / name).string());
    ASSERT_TRUE(file.ok()) << file.status().message();
    ASSERT_TRUE(file->write(std::string("via ") + name).ok());
    ASSERT_TRUE(file->commit().ok());
    EXPECT_TRUE(fs::is_symlink(dir / name)) << name;
    EXPECT_EQ(ReadFile(dir / name), std::string("via ") + name);
  }
  EXPECT_EQ(ReadFile(dir / "real" / "out.txt"), "via chain.txt");
  EXPECT_EQ(ReadFile(dir / "real" / "new.txt"), "via dangling.txt");
  // A loop of links is refused, as `>` refuses it, and both stay links.
  fs::create_symlink("loop_b", dir / "loop_a");
  fs::create_symlink("loop_a", dir / "loop_b");
  Result<detail::AtomicFile> loop = detail::AtomicFile::create((dir / "loop_a").string());
  ASSERT_FALSE(loop.ok());
  EXPECT_NE(loop.status().message().find("loop_a: cannot write: Too many levels of symbolic links"),
            std::string::npos)
      << loop.status().message();
  EXPECT_TRUE(fs::is_symlink(dir / "loop_a"));
  EXPECT_TRUE(fs::is_symlink(dir / "loop_b"));
  // No temporary file is left beside the links or the files.
  for (const auto& entry : fs::recursive_directory_iterator(dir)) {
    EXPECT_EQ(entry.path().filename().string().rfind(".", 0), std::string::npos) << entry.path();
  }
}

TEST(DumpAtomicFile, AReplacedFileKeepsItsPermissions) {
  const fs::path dir = TestDir();
  const fs::path out = dir / "kept.txt";
  WriteFile(out, "old");
  fs::permissions(out, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  Result<detail::AtomicFile> file = detail::AtomicFile::create(out.string());
  ASSERT_TRUE(file.ok()) << file.status().message();
  ASSERT_TRUE(file->write("new").ok());
  ASSERT_TRUE(file->commit().ok());
  EXPECT_EQ(ReadFile(out), "new");
  EXPECT_EQ(fs::status(out).permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
  // Not its set-user-ID bit: a write by anyone but root clears it.
  ASSERT_EQ(::chmod(out.c_str(), 04750), 0);
  Result<detail::AtomicFile> again = detail::AtomicFile::create(out.string());
  ASSERT_TRUE(again.ok()) << again.status().message();
  ASSERT_TRUE(again->commit().ok());
  struct stat st;
  ASSERT_EQ(::stat(out.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  // A file this user may not write is refused, as `>` would refuse it (root
  // may write anything).
  fs::permissions(out, fs::perms::owner_read);
  if (::geteuid() != 0) {
    Result<detail::AtomicFile> refused = detail::AtomicFile::create(out.string());
    ASSERT_FALSE(refused.ok());
    EXPECT_NE(refused.status().message().find("cannot write"), std::string::npos);
    EXPECT_EQ(ReadFile(out), "new");
  }
}

// The temporary name adds 12 characters (".NAME.tmp-XXXXXX"), NAME cut
// short where that would pass NAME_MAX: any name the file system takes can
// be written (names past 243 bytes once failed at the commit, after the
// work), with an unnamed temporary or a named one.
TEST(DumpAtomicFile, LongNamesFit) {
  const fs::path dir = TestDir();
  for (const bool unnamed : {true, false}) {
    for (const size_t length : {243, 244, 250, 255}) {
      SCOPED_TRACE(testing::Message() << length << (unnamed ? " unnamed" : " named"));
      const std::string name = std::string(length - 4, unnamed ? 'u' : 'n') + ".txt";
      for (const char* contents : {"first", "second"}) {  // (new, then replaced)
        Result<detail::AtomicFile> file =
            detail::AtomicFile::create((dir / name).string(), unnamed);
        ASSERT_TRUE(file.ok()) << file.status().message();
        ASSERT_TRUE(file->write(contents).ok());
        const Status committed = file->commit();
        ASSERT_TRUE(committed.ok()) << committed.message();
        EXPECT_EQ(ReadFile(dir / name), contents);
      }
    }
  }
  // A name past the longest is refused at create, before any work (the
  // final rename failed, after all of it).
  for (const bool unnamed : {true, false}) {
    Result<detail::AtomicFile> file =
        detail::AtomicFile::create((dir / std::string(256, 'x')).string(), unnamed);
    ASSERT_FALSE(file.ok());
    EXPECT_NE(file.status().message().find("cannot create: File name too long (256 bytes; the "
                                           "file system takes at most 255)"),
              std::string::npos)
        << file.status().message();
  }
  for (const auto& entry : fs::directory_iterator(dir)) {
    EXPECT_NE(entry.path().filename().string()[0], '.') << entry.path();
  }
}

TEST(DumpAtomicFile, ThisProcessOwnDescriptorsAreWrittenThrough) {
  // `-o /dev/stdout` with standard output redirected to a file writes to
  // that descriptor, as no -o would: the file is not replaced by a new one
  // (which lost what a script had written to it before, and after: its
  // descriptor then named a deleted file). /dev/fd/N and /proc/self/fd/N too.
  const fs::path dir = TestDir();
  const fs::path log = dir / "log.txt";
  const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(::write(fd, "start\n", 6), 6);
  struct stat before;
  ASSERT_EQ(::stat(log.c_str(), &before), 0);
  const std::string n = std::to_string(fd);
  // (and a link of the user's own to one of them)
  const fs::path link = dir / "to_fd";
  fs::create_symlink("/dev/fd/" + n, link);
  const std::string pid = std::to_string(::getpid());
  std::string expected = "start\n";
  for (const std::string& path :
       {"/dev/fd/" + n, "/proc/self/fd/" + n, "/proc/" + pid + "/fd/" + n, link.string()}) {
    Result<detail::AtomicFile> file = detail::AtomicFile::create(path);
    ASSERT_TRUE(file.ok()) << file.status().message();
    ASSERT_TRUE(file->write(path + "\n").ok());
    ASSERT_TRUE(file->commit().ok());
    expected += path + "\n";
  }
  ASSERT_EQ(::write(fd, "done\n", 5), 5);
  struct stat after;
  ASSERT_EQ(::stat(log.c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino);
  EXPECT_TRUE(fs::is_symlink(link));
  EXPECT_EQ(ReadFile(log), expected + "done\n");
  ::close(fd);
  // One open for reading only is refused before anything is written.
  const int in = ::open(log.c_str(), O_RDONLY | O_CLOEXEC);
  ASSERT_GE(in, 0);
  Result<detail::AtomicFile> refused = detail::AtomicFile::create("/dev/fd/" + std::to_string(in));
  ASSERT_FALSE(refused.ok());
  EXPECT_NE(refused.status().message().find("open for reading only"), std::string::npos)
      << refused.status().message();
  ::close(in);
}

TEST(DumpAtomicFile, AnotherUsersFileInAStickyDirectoryIsRefusedBeforeTheWork) {
  // In a sticky directory (/tmp) a file of another user that this one may
  // write cannot be renamed over: refused when the output is opened, not
  // at the commit after the work. (Run as root, which may rename anything,
  // the test sets it up and tries as another user in a child process.)
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to set up two users' files";
  // (under /tmp, which every user may enter, whatever the test directory's
  // parents allow)
  char made[] = "/tmp/nucleus-sticky-XXXXXX";
  ASSERT_NE(::mkdtemp(made), nullptr);
  const fs::path dir = made;
  struct Removed {
    fs::path path;
    ~Removed() { fs::remove_all(path); }
  } removed{dir};
  ASSERT_EQ(::chmod(dir.c_str(), 01777), 0);
  const fs::path theirs = dir / "theirs.txt";
  WriteFile(theirs, "theirs");
  ASSERT_EQ(::chmod(theirs.c_str(), 0666), 0);
  ASSERT_EQ(::chown(theirs.c_str(), 65534, 65534), 0);
  const pid_t child = ::fork();
  if (child == 0) {
    if (::setgroups(0, nullptr) != 0 || ::setresgid(1000, 1000, 1000) != 0 ||
        ::setresuid(1000, 1000, 1000) != 0) {
      ::_exit(3);
    }
    Result<detail::AtomicFile> file = detail::AtomicFile::create(theirs.string());
    const bool said = !file.ok() && file.status().message().find(
                                        "cannot replace a file of another user in the sticky "
                                        "directory") != std::string::npos;
    // (a new file there is this user's own, and fine)
    Result<detail::AtomicFile> own = detail::AtomicFile::create((dir / "mine.txt").string());
    const bool mine = own.ok() && own->write("mine").ok() && own->commit().ok();
    ::_exit(said && mine ? 0 : said ? 2 : 1);
  }
  int status = 0;
  ASSERT_EQ(::waitpid(child, &status, 0), child);
  ASSERT_TRUE(WIFEXITED(status));
  // (1: the refusal was not said; 2: the user's own new file failed; 3:
  // the child could not become user 1000)
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_EQ(ReadFile(theirs), "theirs");
  EXPECT_EQ(ReadFile(dir / "mine.txt"), "mine");
}

// The mode (07777 bits) of a file AtomicFile creates at `path` under umask
// 027; 0 if it could not.
mode_t ModeOfANewFileUnderUmask027(const fs::path& path) {
  const mode_t before = ::umask(027);
  Result<detail::AtomicFile> file = detail::AtomicFile::create(path.string());
  ::umask(before);
  struct stat st;
  if (!file.ok() || !file->commit().ok() || ::stat(path.c_str(), &st) != 0) return 0;
  return st.st_mode & 07777;
}

TEST(DumpAtomicFile, ANewFileGetsTheUmasksMode) {
  EXPECT_EQ(ModeOfANewFileUnderUmask027(TestDir() / "new.txt"), 0640u);
}

// A process killed while it writes (SIGKILL: no handler, no unwinding)
// leaves no temporary file: it has no name until commit().
TEST(DumpAtomicFile, AKilledWriterLeavesNothingBehind) {
  const fs::path dir = TestDir();
  const int probe = ::open(dir.c_str(), O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
  if (probe < 0) GTEST_SKIP() << "this file system has no O_TMPFILE: " << std::strerror(errno);
  ::close(probe);
  WriteFile(dir / "old.txt", "old contents");
  for (const char* name : {"new.txt", "old.txt"}) {
    const pid_t child = ::fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      Result<detail::AtomicFile> file = detail::AtomicFile::create((dir / name).string());
      if (file.ok() && file->write(std::string(3 << 20, 'x')).ok()) ::raise(SIGKILL);
      ::_exit(1);
    }
    int status = 0;
    ASSERT_EQ(::waitpid(child, &status, 0), child);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << name;
  }
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
  EXPECT_EQ(names, std::vector<std::string>{"old.txt"});
  EXPECT_EQ(ReadFile(dir / "old.txt"), "old contents");
}

// Where the file system has no O_TMPFILE the temporary is a named file
// beside the destination: the same results, and nothing left once the
// writer is destroyed (normal return or unwinding).
TEST(DumpAtomicFile, NamedTemporariesBehaveTheSame) {
  const fs::path dir = TestDir();
  WriteFile(dir / "old.txt", "old contents");
  fs::permissions(dir / "old.txt", fs::perms::owner_read | fs::perms::owner_write);
  const std::string long_name = std::string(239, 'a') + ".txt";  // 255 - 12
  auto entries = [&] {
    return std::distance(fs::directory_iterator(dir), fs::directory_iterator());
  };
  for (const std::string name : {"new.txt", "old.txt", long_name.c_str()}) {
    const auto before = entries();
    Result<detail::AtomicFile> file = detail::AtomicFile::create((dir / name).string(), false);
    ASSERT_TRUE(file.ok()) << file.status().message();
    ASSERT_TRUE(file->write("written").ok());
    EXPECT_EQ(entries(), before + 1) << "a named temporary";
    ASSERT_TRUE(file->commit().ok()) << name;
    EXPECT_EQ(ReadFile(dir / name), "written");
  }
  EXPECT_EQ(fs::status(dir / "old.txt").permissions() & fs::perms::all,
            fs::perms::owner_read | fs::perms::owner_write);
  {
    Result<detail::AtomicFile> abandoned =
        detail::AtomicFile::create((dir / "x.txt").string(), false);
    ASSERT_TRUE(abandoned.ok());
    ASSERT_TRUE(abandoned->write("partial").ok());
  }
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(dir)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{long_name, "new.txt", "old.txt"}));
}

// Linux before 6.0 created an O_TMPFILE file on a file system without POSIX
// ACLs (ramfs) 0666 whatever the umask: apply_umask_if_skipped takes the
// umask's bits off there (simulated here: this kernel applies the umask
// itself), and only there. Needs a ramfs mount (CAP_SYS_ADMIN).
TEST(DumpAtomicFile, TheUmaskIsAppliedWhereOldKernelsSkippedIt) {
  const fs::path dir = TestDir();
  const fs::path ramfs = dir / "ramfs";
  fs::create_directories(ramfs);
  if (::mount("ramfs", ramfs.c_str(), "ramfs", 0, nullptr) != 0) {
    GTEST_SKIP() << "cannot mount a ramfs: " << std::strerror(errno);
  }
  struct Unmount {
    const fs::path& at;
    ~Unmount() { ::umount(at.c_str()); }
  } unmount{ramfs};
  const mode_t before = ::umask(027);
  for (const fs::path& where : {ramfs, dir}) {
    const int fd = ::open((where / "f").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::fchmod(fd, 0666), 0);  // as such a kernel left an O_TMPFILE file
    detail::apply_umask_if_skipped(fd, where.string());
    struct stat st;
    ASSERT_EQ(::fstat(fd, &st), 0);
    ::close(fd);
    EXPECT_EQ(st.st_mode & 0777, where == ramfs ? 0640u : 0666u) << where;
  }
  ::umask(before);
  EXPECT_EQ(ModeOfANewFileUnderUmask027(ramfs / "new.txt"), 0640u);
}

TEST(DumpNames, ParseAndPrint) {
  EXPECT_EQ(parse_dump_format("safetensors"), DumpFormat::kSafetensors);
  EXPECT_EQ(parse_dump_format("pickle"), std::nullopt);
  EXPECT_STREQ(dump_format_name(DumpFormat::kRaw), "raw");
  EXPECT_EQ(parse_dtype("bfloat16"), DType::kBFloat16);
  EXPECT_EQ(parse_dtype("f16"), DType::kFloat16);
  EXPECT_EQ(parse_dtype("f64"), std::nullopt);
}

}  // namespace
}  // namespace nucleus
