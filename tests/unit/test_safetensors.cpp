#include "formats/safetensors.h"

#include "core/error.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <filesystem>

namespace lowbit {
namespace {

using test::TempDir;

// A safetensors file from a literal header and `data_bytes` bytes of data (0, 1, 2, ...).
std::string make_file(const std::string& header, size_t data_bytes, int64_t claimed_len = -1) {
  std::string out(8, '\0');
  const uint64_t n = claimed_len >= 0 ? uint64_t(claimed_len) : header.size();
  for (int i = 0; i < 8; ++i) out[size_t(i)] = char((n >> (8 * i)) & 0xff);
  out += header;
  for (size_t i = 0; i < data_bytes; ++i) out += char(i & 0xff);
  return out;
}

// Expects parsing to fail with a message containing `needle`.
void expect_error(const std::string& bytes, const std::string& needle) {
  try {
    parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), "t.safetensors");
    ADD_FAILURE() << "no error; expected one mentioning '" << needle << "'";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << "message: " << e.what();
  }
}

TEST(Safetensors, ParsesValidHeader) {
  const std::string h =
      R"({"__metadata__":{"format":"pt"},"b":{"dtype":"BF16","shape":[2,3],"data_offsets":[8,20]},)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::string f = make_file(h, 20);
  auto hdr = parse_safetensors_header(reinterpret_cast<const uint8_t*>(f.data()), f.size(), "x");
  ASSERT_EQ(hdr.entries.size(), 2u);
  EXPECT_EQ(hdr.entries[0].name, "a");  // sorted by offset
  EXPECT_EQ(hdr.entries[1].dtype, DType::BF16);
  EXPECT_EQ(hdr.entries[1].shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(hdr.metadata.at("format"), "pt");
  EXPECT_EQ(hdr.data_start, 8 + h.size());
}

TEST(Safetensors, ScalarAndEmptyTensors) {
  std::string f = make_file(R"({"s":{"dtype":"I32","shape":[],"data_offsets":[0,4]},)"
                            R"("e":{"dtype":"F16","shape":[0,7],"data_offsets":[4,4]}})", 4);
  auto hdr = parse_safetensors_header(reinterpret_cast<const uint8_t*>(f.data()), f.size(), "x");
  EXPECT_EQ(hdr.entries.size(), 2u);
}

TEST(SafetensorsCorrupt, TooShort) { expect_error("abc", "too short"); }
TEST(SafetensorsCorrupt, HeaderLengthPastEof) { expect_error(make_file("{}", 0, 1000), "past the end of the file"); }
TEST(SafetensorsCorrupt, HeaderLengthOverLimit) {
  expect_error(make_file("{}", 0, int64_t(kSafetensorsMaxHeader) + 1), "exceeds the limit");
}
TEST(SafetensorsCorrupt, InvalidJson) { expect_error(make_file("{\"a\": [1,", 0), "not valid JSON"); }
TEST(SafetensorsCorrupt, NotAnObject) { expect_error(make_file("[1, 2]   ", 0), "JSON object"); }
TEST(SafetensorsCorrupt, UnknownDtype) {
  expect_error(make_file(R"({"a":{"dtype":"F17","shape":[1],"data_offsets":[0,4]}})", 4), "unknown dtype 'F17'");
}
TEST(SafetensorsCorrupt, ShapeByteMismatch) {
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), "needs 12 bytes");
}
TEST(SafetensorsCorrupt, OutOfBounds) {
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", 8), "past the end of the data");
}
TEST(SafetensorsCorrupt, Overlap) {
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                         R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12), "overlaps");
}
TEST(SafetensorsCorrupt, Gap) {
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", 8), "belong to no tensor");
}
TEST(SafetensorsCorrupt, TrailingBytes) {
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}})", 12), "trailing bytes");
}
TEST(SafetensorsCorrupt, BeginAfterEnd) {
  expect_error(make_file(R"({"a":{"dtype":"U8","shape":[0],"data_offsets":[4,0]}})", 4), "begin after end");
}
TEST(SafetensorsCorrupt, NegativeShape) {
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", 4), "non-negative");
}
TEST(SafetensorsCorrupt, OverflowingShape) {
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[4611686018427387904,4611686018427387904],)"
                         R"("data_offsets":[0,4]}})", 4), "overflows");
}
TEST(SafetensorsCorrupt, MissingOffsets) {
  expect_error(make_file(R"({"a":{"dtype":"F32","shape":[1]}})", 4), "data_offsets");
}
TEST(SafetensorsCorrupt, MetadataNotStrings) {
  expect_error(make_file(R"({"__metadata__":{"k":1}})", 0), "not a string");
}

TEST(Safetensors, WriterReaderRoundTrip) {
  TempDir dir;
  Tensor a = Tensor::empty(DType::F32, {2, 3});
  for (int i = 0; i < 6; ++i) a.mutable_data_as<float>()[i] = float(i) * 0.5f;
  Tensor b = Tensor::empty(DType::I8, {5});
  for (int i = 0; i < 5; ++i) b.mutable_data_as<int8_t>()[i] = int8_t(-i);
  Tensor c = Tensor::empty(DType::BF16, {1, 1, 3});
  SafetensorsWriter w;
  w.add("layer.a", a);
  w.add("layer.b", b);
  w.add("c", c);
  w.set_metadata("lowbit.method", "rtn:w=4");
  const std::string path = dir / "x.safetensors";
  w.write(path);
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));

  auto f = SafetensorsFile::open(path);
  EXPECT_EQ(f->metadata().at("lowbit.method"), "rtn:w=4");
  ASSERT_EQ(f->entries().size(), 3u);
  Tensor ra = f->tensor("layer.a");
  EXPECT_EQ(ra.shape(), a.shape());
  for (int i = 0; i < 6; ++i) EXPECT_EQ(ra.data_as<float>()[i], float(i) * 0.5f);
  Tensor rb = f->tensor("layer.b");
  EXPECT_EQ(rb.dtype(), DType::I8);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(rb.data_as<int8_t>()[i], -i);
  // Every tensor is aligned to its element size in the file.
  const std::string bytes = test::slurp(path);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | uint8_t(bytes[size_t(i)]);
  EXPECT_EQ(header_len % 8, 0u);
  for (const auto& e : f->entries()) EXPECT_EQ((8 + header_len + e.begin) % uint64_t(dtype_size(e.dtype)), 0u) << e.name;
  EXPECT_THROW(f->tensor("missing"), Error);
}

TEST(Safetensors, WriterRejectsDuplicates) {
  SafetensorsWriter w;
  w.add("a", Tensor::empty(DType::F32, {1}));
  EXPECT_THROW(w.add("a", Tensor::empty(DType::F32, {1})), Error);
  EXPECT_THROW(w.add("__metadata__", Tensor::empty(DType::F32, {1})), Error);
}

TEST(Safetensors, ShardedIndex) {
  TempDir dir;
  SafetensorsWriter w1, w2;
  w1.add("x", Tensor::empty(DType::F32, {4}));
  w2.add("y", Tensor::empty(DType::F16, {2, 2}));
  w1.write(dir / "model-00001-of-00002.safetensors");
  w2.write(dir / "model-00002-of-00002.safetensors");
  test::spit(dir / "model.safetensors.index.json",
             R"({"metadata":{"total_size":24},"weight_map":{"x":"model-00001-of-00002.safetensors",)"
             R"("y":"model-00002-of-00002.safetensors"}})");
  auto ws = SafetensorsWeights::open(dir.path.string());
  EXPECT_EQ(ws->names(), (std::vector<std::string>{"x", "y"}));
  EXPECT_EQ(ws->get("y").shape(), (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(ws->files().size(), 2u);

  test::spit(dir / "model.safetensors.index.json",
             R"({"weight_map":{"x":"model-00002-of-00002.safetensors"}})");
  try {
    SafetensorsWeights::open(dir.path.string());
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("does not hold it"), std::string::npos) << e.what();
  }
  test::spit(dir / "model.safetensors.index.json", R"({"weight_map":{"x":"../etc/passwd"}})");
  EXPECT_THROW(SafetensorsWeights::open(dir.path.string()), Error);
}

TEST(Safetensors, MissingFileIsAnError) {
  EXPECT_THROW(SafetensorsFile::open("/nonexistent/model.safetensors"), Error);
  TempDir dir;
  EXPECT_THROW(SafetensorsWeights::open(dir.path.string()), Error);
}

}  // namespace
}  // namespace lowbit
