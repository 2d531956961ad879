// GGUF (ggml's model file format, versions 2 and 3, little-endian): a validating reader over a
// memory map.
//
// File layout (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
//   u32  magic "GGUF" (bytes 47 47 55 46)
//   u32  version (2 or 3; version 1 used 32-bit counts and is not read)
//   u64  tensor_count
//   u64  metadata_kv_count
//   metadata_kv_count x { string key; u32 value_type; value }
//   tensor_count x { string name; u32 n_dims (1..4); u64 ne[n_dims] (innermost first: ne[0] is
//                    the number of columns); u32 ggml_type; u64 offset (from the data section,
//                    a multiple of the alignment) }
//   padding to a multiple of general.alignment (a u32 metadata value; 32 when absent)
//   data section: each tensor's bytes at its offset (ne[0] / block_size blocks per row)
// string = u64 length + that many bytes (no terminator). value = the type's little-endian
// scalar, a string, or an array: u32 element type, u64 count, count values of that type (arrays
// of arrays nest).
//
// Every count, length, offset and size is checked against the file size before it is used;
// errors (lowbit::Error) name the file and what is wrong.
#pragma once

#include "core/mapped_file.h"

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace lowbit {

enum class GgufValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_value_type_name(GgufValueType t);  // "u32", "string", "array", ...

// One metadata value. Scalars are widened: integers to i (signed types and unsigned up to
// u32) or u (u64), floats to f. Arrays of numbers or bools point into the map (count elements of
// elem_type at array_data); arrays of strings or arrays are decoded into items.
struct GgufValue {
  GgufValueType type = GgufValueType::UINT8;
  int64_t i = 0;
  uint64_t u = 0;
  double f = 0;
  bool b = false;
  std::string str;
  GgufValueType elem_type = GgufValueType::UINT8;  // ARRAY only
  uint64_t count = 0;                               // ARRAY only
  const uint8_t* array_data = nullptr;              // ARRAY of scalars
  std::vector<GgufValue> items;                     // ARRAY of strings or arrays

  bool is_integer() const;
  bool is_float() const { return type == GgufValueType::FLOAT32 || type == GgufValueType::FLOAT64; }
  // Element k of an array of scalars, widened (k < count).
  int64_t int_at(uint64_t k) const;
  double float_at(uint64_t k) const;
};

struct GgufTensorInfo {
  std::string name;
  std::vector<int64_t> ne;  // innermost first, 1 to 4 dims
  uint32_t type = 0;        // ggml type id (formats/ggml_quants.h)
  uint64_t offset = 0;      // from the start of the data section
  uint64_t nbytes = 0;
  int n_dims() const { return int(ne.size()); }
  int64_t numel() const;
  // The shape outermost first, as PyTorch and lowbit's Tensor list it: [ne[n-1], ..., ne[0]].
  std::vector<int64_t> shape() const;
};

// Parsing limits beyond the file size (kept well above what real files use).
inline constexpr int kGgufMaxArrayDepth = 8;

class GgufFile {
 public:
  // Maps and parses the whole header. Throws lowbit::Error naming the file and the problem.
  static std::shared_ptr<const GgufFile> open(const std::string& path);
  // Parses an in-memory image (the fuzzer's entry); `what` names it in errors. The bytes must
  // outlive the result.
  static std::shared_ptr<const GgufFile> parse(const uint8_t* data, size_t size, const std::string& what);

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t data_offset() const { return data_start_; }  // start of the data section in the file
  uint64_t file_size() const { return size_; }

  // Metadata, in file order.
  const std::vector<std::pair<std::string, GgufValue>>& metadata() const { return kv_; }
  bool has(const std::string& key) const { return index_.count(key) != 0; }
  const GgufValue* find(const std::string& key) const;  // nullptr when absent
  // Scalar getters: nullopt when the key is absent; an Error naming the key when it holds another
  // type. get_int takes any integer type (a u64 above INT64_MAX is an error); get_float takes
  // f32/f64 and any integer type.
  std::optional<std::string> get_string(const std::string& key) const;
  std::optional<int64_t> get_int(const std::string& key) const;
  std::optional<double> get_float(const std::string& key) const;
  std::optional<bool> get_bool(const std::string& key) const;
  // Array getters: an Error naming the key when it is absent or not an array of that kind
  // (get_ints: of an integer type; get_floats: of a float or integer type).
  std::vector<std::string> get_strings(const std::string& key) const;
  std::vector<double> get_floats(const std::string& key) const;
  std::vector<int64_t> get_ints(const std::string& key) const;
  // "string (12 bytes)", "u32 = 32", "array of 49152 string" ...: for listings.
  static std::string describe(const GgufValue& v);

  const std::vector<GgufTensorInfo>& tensors() const { return tensors_; }
  const GgufTensorInfo* find_tensor(const std::string& name) const;  // nullptr when absent
  // The tensor's bytes (t.nbytes of them), inside the map.
  const uint8_t* tensor_data(const GgufTensorInfo& t) const { return base_ + data_start_ + t.offset; }
  // The tensor dequantized to fp32 (ne[0] innermost), into dst of t.numel() floats. Throws naming
  // the tensor for a type lowbit cannot read.
  void dequantize(const GgufTensorInfo& t, float* dst) const;

 private:
  std::shared_ptr<const MappedFile> file_;  // null for parse()
  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  uint64_t data_start_ = 0;
  std::vector<std::pair<std::string, GgufValue>> kv_;
  std::map<std::string, size_t> index_;
  std::vector<GgufTensorInfo> tensors_;
  std::map<std::string, size_t> tensor_index_;

  friend class GgufParser;
};

}  // namespace lowbit
