#include "formats/gguf.h"

#include "core/error.h"
#include "formats/ggml_quants.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>

namespace lowbit {

namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32

size_t scalar_size(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::BOOL: return 1;
    case GgufValueType::UINT16: case GgufValueType::INT16: return 2;
    case GgufValueType::UINT32: case GgufValueType::INT32: case GgufValueType::FLOAT32: return 4;
    case GgufValueType::UINT64: case GgufValueType::INT64: case GgufValueType::FLOAT64: return 8;
    default: return 0;  // string, array
  }
}

bool valid_value_type(uint32_t t) { return t <= uint32_t(GgufValueType::FLOAT64); }

template <typename T>
T read_le(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // GGUF is little-endian, as is every host lowbit builds for
  return v;
}

// Decodes one scalar at p into v (v.type already set).
void decode_scalar(const uint8_t* p, GgufValue& v) {
  switch (v.type) {
    case GgufValueType::UINT8: v.i = read_le<uint8_t>(p); break;
    case GgufValueType::INT8: v.i = read_le<int8_t>(p); break;
    case GgufValueType::UINT16: v.i = read_le<uint16_t>(p); break;
    case GgufValueType::INT16: v.i = read_le<int16_t>(p); break;
    case GgufValueType::UINT32: v.i = read_le<uint32_t>(p); break;
    case GgufValueType::INT32: v.i = read_le<int32_t>(p); break;
    case GgufValueType::UINT64: v.u = read_le<uint64_t>(p); break;
    case GgufValueType::INT64: v.i = read_le<int64_t>(p); break;
    case GgufValueType::FLOAT32: v.f = read_le<float>(p); break;
    case GgufValueType::FLOAT64: v.f = read_le<double>(p); break;
    case GgufValueType::BOOL: v.b = p[0] != 0; break;
    default: LB_ASSERT(false);
  }
}

}  // namespace

const char* gguf_value_type_name(GgufValueType t) {
  switch (t) {
    case GgufValueType::UINT8: return "u8";
    case GgufValueType::INT8: return "i8";
    case GgufValueType::UINT16: return "u16";
    case GgufValueType::INT16: return "i16";
    case GgufValueType::UINT32: return "u32";
    case GgufValueType::INT32: return "i32";
    case GgufValueType::FLOAT32: return "f32";
    case GgufValueType::BOOL: return "bool";
    case GgufValueType::STRING: return "string";
    case GgufValueType::ARRAY: return "array";
    case GgufValueType::UINT64: return "u64";
    case GgufValueType::INT64: return "i64";
    case GgufValueType::FLOAT64: return "f64";
  }
  return "unknown";
}

bool GgufValue::is_integer() const {
  switch (type) {
    case GgufValueType::UINT8: case GgufValueType::INT8: case GgufValueType::UINT16: case GgufValueType::INT16:
    case GgufValueType::UINT32: case GgufValueType::INT32: case GgufValueType::UINT64: case GgufValueType::INT64:
      return true;
    default: return false;
  }
}

int64_t GgufValue::int_at(uint64_t k) const {
  LB_ASSERT(type == GgufValueType::ARRAY && array_data && k < count);
  GgufValue e;
  e.type = elem_type;
  decode_scalar(array_data + k * scalar_size(elem_type), e);
  if (elem_type == GgufValueType::UINT64) return int64_t(e.u);
  if (elem_type == GgufValueType::BOOL) return e.b;
  if (e.is_float()) return int64_t(e.f);
  return e.i;
}

double GgufValue::float_at(uint64_t k) const {
  LB_ASSERT(type == GgufValueType::ARRAY && array_data && k < count);
  GgufValue e;
  e.type = elem_type;
  decode_scalar(array_data + k * scalar_size(elem_type), e);
  if (e.is_float()) return e.f;
  if (elem_type == GgufValueType::UINT64) return double(e.u);
  if (elem_type == GgufValueType::BOOL) return e.b;
  return double(e.i);
}

int64_t GgufTensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : ne) n *= d;  // checked not to overflow when parsed
  return n;
}

std::vector<int64_t> GgufTensorInfo::shape() const { return {ne.rbegin(), ne.rend()}; }

// Reads the header of one GGUF image front to back; every read is checked against the size.
class GgufParser {
 public:
  explicit GgufParser(GgufFile& f) : f_(f), p_(f.base_), size_(f.size_), what_(f.path_) {}

  void parse() {
    LB_CHECK(size_ >= 4, "'{}': file is {} bytes, too short for the GGUF magic", what_, size_);
    const uint32_t magic = read_le<uint32_t>(p_);
    LB_CHECK(magic == kMagic, "'{}': not a GGUF file (magic bytes {:02x} {:02x} {:02x} {:02x}, expected 47 47 55 46 \"GGUF\")",
             what_, p_[0], p_[1], p_[2], p_[3]);
    pos_ = 4;
    const uint32_t version = u32("the version");
    // A big-endian file's version reads byte-swapped here (3 reads as 0x03000000).
    LB_CHECK(version == 2 || version == 3 || (version & 0xffff) != 0,
             "'{}': GGUF version field is {:#x}: a big-endian GGUF file, which lowbit does not read", what_, version);
    LB_CHECK(version == 2 || version == 3, "'{}': GGUF version {} is not supported (lowbit reads versions 2 and 3)",
             what_, version);
    f_.version_ = version;
    const uint64_t n_tensors = u64("the tensor count");
    const uint64_t n_kv = u64("the metadata count");
    // The smallest key-value is 13 bytes (empty key, type, one-byte value); the smallest tensor
    // info 32 (empty name, n_dims, one dim, type, offset).
    LB_CHECK(n_kv <= left() / 13, "'{}': metadata count {} cannot fit in the {} bytes left in the file", what_, n_kv, left());
    for (uint64_t k = 0; k < n_kv; ++k) {
      std::string key = str(fmt::format("metadata key #{}", k));
      const uint32_t t = u32(fmt::format("the type of metadata '{}'", key));
      LB_CHECK(valid_value_type(t), "'{}': metadata '{}' has unknown value type {} (at offset {})", what_, key, t, pos_ - 4);
      GgufValue v = value(GgufValueType(t), "metadata '" + key + "'", 0);
      LB_CHECK(f_.index_.emplace(key, f_.kv_.size()).second, "'{}': metadata key '{}' appears twice", what_, key);
      f_.kv_.emplace_back(std::move(key), std::move(v));
    }
    if (const GgufValue* a = f_.find("general.alignment")) {
      LB_CHECK(a->type == GgufValueType::UINT32, "'{}': general.alignment must be a u32, got {}", what_,
               gguf_value_type_name(a->type));
      LB_CHECK(a->i > 0 && (a->i & (a->i - 1)) == 0, "'{}': general.alignment {} is not a power of two", what_, a->i);
      f_.alignment_ = uint32_t(a->i);
    }
    LB_CHECK(n_tensors <= left() / 32, "'{}': tensor count {} cannot fit in the {} bytes left in the file", what_,
             n_tensors, left());
    for (uint64_t k = 0; k < n_tensors; ++k) tensor_info(k);
    // The data section starts at the next multiple of the alignment.
    const uint64_t a = f_.alignment_;
    const uint64_t start = pos_ + (a - pos_ % a) % a;
    LB_CHECK(n_tensors == 0 || start <= size_, "'{}': the data section would start at {}, past the end of the file ({} bytes)",
             what_, start, size_);
    f_.data_start_ = std::min<uint64_t>(start, size_);
    check_tensor_data();
  }

 private:
  GgufFile& f_;
  const uint8_t* p_;
  uint64_t size_;
  const std::string& what_;
  uint64_t pos_ = 0;

  uint64_t left() const { return size_ - pos_; }

  void need(uint64_t n, const std::string& what) {
    LB_CHECK(n <= left(), "'{}': {} ({} bytes at offset {}) runs past the end of the file ({} bytes)", what_, what, n,
             pos_, size_);
  }
  uint32_t u32(const std::string& what) {
    need(4, what);
    pos_ += 4;
    return read_le<uint32_t>(p_ + pos_ - 4);
  }
  uint64_t u64(const std::string& what) {
    need(8, what);
    pos_ += 8;
    return read_le<uint64_t>(p_ + pos_ - 8);
  }
  std::string str(const std::string& what) {
    const uint64_t n = u64("the length of " + what);
    LB_CHECK(n <= left(), "'{}': {}: string length {} at offset {} runs past the end of the file ({} bytes)", what_,
             what, n, pos_ - 8, size_);
    std::string s(reinterpret_cast<const char*>(p_ + pos_), size_t(n));
    pos_ += n;
    return s;
  }

  GgufValue value(GgufValueType t, const std::string& what, int depth) {
    GgufValue v;
    v.type = t;
    if (t == GgufValueType::STRING) {
      v.str = str(what);
      return v;
    }
    if (t != GgufValueType::ARRAY) {
      const size_t n = scalar_size(t);
      need(n, what);
      decode_scalar(p_ + pos_, v);
      if (t == GgufValueType::BOOL)
        LB_CHECK(p_[pos_] <= 1, "'{}': {}: bool byte {} at offset {} is neither 0 nor 1", what_, what, p_[pos_], pos_);
      pos_ += n;
      return v;
    }
    LB_CHECK(depth < kGgufMaxArrayDepth, "'{}': {}: arrays nested deeper than {} levels", what_, what, kGgufMaxArrayDepth);
    const uint32_t et = u32("the element type of " + what);
    LB_CHECK(valid_value_type(et), "'{}': {}: array has unknown element type {} (at offset {})", what_, what, et, pos_ - 4);
    v.elem_type = GgufValueType(et);
    v.count = u64("the element count of " + what);
    const size_t es = scalar_size(v.elem_type);
    if (es != 0) {
      LB_CHECK(v.count <= left() / es, "'{}': {}: array of {} {} ({} bytes each) at offset {} runs past the end of the file ({} bytes)",
               what_, what, v.count, gguf_value_type_name(v.elem_type), es, pos_, size_);
      v.array_data = p_ + pos_;
      if (v.elem_type == GgufValueType::BOOL)
        for (uint64_t k = 0; k < v.count; ++k)
          LB_CHECK(v.array_data[k] <= 1, "'{}': {}: element {} is a bool byte {}, neither 0 nor 1", what_, what, k,
                   v.array_data[k]);
      pos_ += v.count * es;
      return v;
    }
    // A string takes at least its 8-byte length, an array its 12-byte type and count.
    const uint64_t min_size = v.elem_type == GgufValueType::STRING ? 8 : 12;
    LB_CHECK(v.count <= left() / min_size, "'{}': {}: array of {} {} at offset {} cannot fit in the {} bytes left", what_,
             what, v.count, gguf_value_type_name(v.elem_type), pos_, left());
    v.items.reserve(size_t(v.count));
    for (uint64_t k = 0; k < v.count; ++k)
      v.items.push_back(value(v.elem_type, fmt::format("{}[{}]", what, k), depth + 1));
    return v;
  }

  void tensor_info(uint64_t k) {
    GgufTensorInfo t;
    t.name = str(fmt::format("the name of tensor #{}", k));
    const std::string what = "tensor '" + t.name + "'";
    const uint32_t n_dims = u32("the n_dims of " + what);
    LB_CHECK(n_dims >= 1 && n_dims <= 4, "'{}': {} has {} dimensions; GGUF allows 1 to 4", what_, what, n_dims);
    uint64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      const uint64_t ne = u64(fmt::format("dimension {} of {}", d, what));
      t.ne.push_back(int64_t(ne));
      LB_CHECK(ne <= uint64_t(std::numeric_limits<int64_t>::max()) && !__builtin_mul_overflow(numel, ne, &numel) &&
                   numel <= uint64_t(std::numeric_limits<int64_t>::max()),
               "'{}': {} has dimensions whose product overflows (dimension {} is {})", what_, what, d, ne);
    }
    t.type = u32("the ggml type of " + what);
    const GgmlTypeTraits* tr = ggml_type_traits(t.type);
    LB_CHECK(tr != nullptr, "'{}': {} has ggml type id {}, which ggml does not define", what_, what, t.type);
    LB_CHECK(uint64_t(t.ne[0]) % uint64_t(tr->block_size) == 0,
             "'{}': {} has {} columns, not a multiple of the {}-element blocks of ggml type {}", what_, what, t.ne[0],
             tr->block_size, tr->name);
    LB_CHECK(!__builtin_mul_overflow(numel / uint64_t(tr->block_size), uint64_t(tr->type_size), &t.nbytes) &&
                 t.nbytes <= uint64_t(std::numeric_limits<int64_t>::max()),
             "'{}': {} has a byte size that overflows", what_, what);
    t.offset = u64("the data offset of " + what);
    LB_CHECK(t.offset % f_.alignment_ == 0, "'{}': {} has data offset {}, not a multiple of the alignment {}", what_, what,
             t.offset, f_.alignment_);
    LB_CHECK(f_.tensor_index_.emplace(t.name, f_.tensors_.size()).second, "'{}': tensor name '{}' appears twice", what_,
             t.name);
    f_.tensors_.push_back(std::move(t));
  }

  void check_tensor_data() {
    std::vector<const GgufTensorInfo*> order;
    const uint64_t data = size_ - f_.data_start_;
    auto at = [&](uint64_t rel, uint64_t extra) {  // a file offset for messages, saturating
      uint64_t r = 0;
      return __builtin_add_overflow(f_.data_start_, rel, &r) || __builtin_add_overflow(r, extra, &r)
                 ? std::numeric_limits<uint64_t>::max() : r;
    };
    for (const auto& t : f_.tensors_) {
      uint64_t end = 0;
      LB_CHECK(!__builtin_add_overflow(t.offset, t.nbytes, &end) && end <= data,
               "'{}': tensor '{}' data [{}, {}) runs past the end of the file ({} bytes)", what_, t.name, at(t.offset, 0),
               at(t.offset, t.nbytes), size_);
      order.push_back(&t);
    }
    std::sort(order.begin(), order.end(), [](const GgufTensorInfo* a, const GgufTensorInfo* b) { return a->offset < b->offset; });
    for (size_t k = 1; k < order.size(); ++k)
      LB_CHECK(order[k - 1]->offset + order[k - 1]->nbytes <= order[k]->offset,
               "'{}': tensor '{}' data [{}, {}) overlaps tensor '{}' data starting at {}", what_, order[k - 1]->name,
               f_.data_start_ + order[k - 1]->offset, f_.data_start_ + order[k - 1]->offset + order[k - 1]->nbytes,
               order[k]->name, f_.data_start_ + order[k]->offset);
  }
};

std::shared_ptr<const GgufFile> GgufFile::open(const std::string& path) {
  auto file = MappedFile::open(path);
  auto f = std::shared_ptr<GgufFile>(new GgufFile());
  f->file_ = file;
  f->path_ = path;
  f->base_ = file->data();
  f->size_ = file->size();
  GgufParser(*f).parse();
  return f;
}

std::shared_ptr<const GgufFile> GgufFile::parse(const uint8_t* data, size_t size, const std::string& what) {
  auto f = std::shared_ptr<GgufFile>(new GgufFile());
  f->path_ = what;
  f->base_ = data;
  f->size_ = size;
  GgufParser(*f).parse();
  return f;
}

const GgufValue* GgufFile::find(const std::string& key) const {
  auto it = index_.find(key);
  return it == index_.end() ? nullptr : &kv_[it->second].second;
}

const GgufTensorInfo* GgufFile::find_tensor(const std::string& name) const {
  auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {

std::string type_str(const GgufValue& v) {
  if (v.type != GgufValueType::ARRAY) return gguf_value_type_name(v.type);
  return fmt::format("array of {}", gguf_value_type_name(v.elem_type));
}

int64_t widen_int(const GgufValue& v, const std::string& path, const std::string& key) {
  if (v.type == GgufValueType::UINT64) {
    LB_CHECK(v.u <= uint64_t(std::numeric_limits<int64_t>::max()), "'{}': metadata '{}' = {} does not fit an int64",
             path, key, v.u);
    return int64_t(v.u);
  }
  return v.i;
}

}  // namespace

std::optional<std::string> GgufFile::get_string(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  LB_CHECK(v->type == GgufValueType::STRING, "'{}': metadata '{}' is a {}, expected a string", path_, key, type_str(*v));
  return v->str;
}

std::optional<int64_t> GgufFile::get_int(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  LB_CHECK(v->is_integer(), "'{}': metadata '{}' is a {}, expected an integer", path_, key, type_str(*v));
  return widen_int(*v, path_, key);
}

std::optional<double> GgufFile::get_float(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  if (v->is_float()) return v->f;
  LB_CHECK(v->is_integer(), "'{}': metadata '{}' is a {}, expected a number", path_, key, type_str(*v));
  return v->type == GgufValueType::UINT64 ? double(v->u) : double(v->i);
}

std::optional<bool> GgufFile::get_bool(const std::string& key) const {
  const GgufValue* v = find(key);
  if (!v) return std::nullopt;
  LB_CHECK(v->type == GgufValueType::BOOL, "'{}': metadata '{}' is a {}, expected a bool", path_, key, type_str(*v));
  return v->b;
}

std::vector<std::string> GgufFile::get_strings(const std::string& key) const {
  const GgufValue* v = find(key);
  LB_CHECK(v != nullptr, "'{}': metadata '{}' (an array of strings) is missing", path_, key);
  LB_CHECK(v->type == GgufValueType::ARRAY && v->elem_type == GgufValueType::STRING,
           "'{}': metadata '{}' is a {}, expected an array of strings", path_, key, type_str(*v));
  std::vector<std::string> out;
  out.reserve(v->items.size());
  for (const auto& s : v->items) out.push_back(s.str);
  return out;
}

std::vector<double> GgufFile::get_floats(const std::string& key) const {
  const GgufValue* v = find(key);
  LB_CHECK(v != nullptr, "'{}': metadata '{}' (an array of numbers) is missing", path_, key);
  GgufValue e;
  e.type = v->elem_type;
  LB_CHECK(v->type == GgufValueType::ARRAY && (e.is_float() || e.is_integer()),
           "'{}': metadata '{}' is a {}, expected an array of numbers", path_, key, type_str(*v));
  std::vector<double> out(size_t(v->count));
  for (uint64_t k = 0; k < v->count; ++k) out[k] = v->float_at(k);
  return out;
}

std::vector<int64_t> GgufFile::get_ints(const std::string& key) const {
  const GgufValue* v = find(key);
  LB_CHECK(v != nullptr, "'{}': metadata '{}' (an array of integers) is missing", path_, key);
  GgufValue e;
  e.type = v->elem_type;
  LB_CHECK(v->type == GgufValueType::ARRAY && e.is_integer(), "'{}': metadata '{}' is a {}, expected an array of integers",
           path_, key, type_str(*v));
  std::vector<int64_t> out(size_t(v->count));
  for (uint64_t k = 0; k < v->count; ++k) {
    if (v->elem_type == GgufValueType::UINT64)
      LB_CHECK(read_le<uint64_t>(v->array_data + 8 * k) <= uint64_t(std::numeric_limits<int64_t>::max()),
               "'{}': metadata '{}'[{}] does not fit an int64", path_, key, k);
    out[k] = v->int_at(k);
  }
  return out;
}

std::string GgufFile::describe(const GgufValue& v) {
  switch (v.type) {
    case GgufValueType::STRING: {
      if (v.str.size() <= 60) return fmt::format("string = \"{}\"", v.str);
      size_t cut = 50;
      while (cut > 0 && (uint8_t(v.str[cut]) & 0xC0) == 0x80) --cut;  // not inside a UTF-8 sequence
      return fmt::format("string ({} bytes) = \"{}...\"", v.str.size(), v.str.substr(0, cut));
    }
    case GgufValueType::ARRAY: return fmt::format("array of {} {}", v.count, gguf_value_type_name(v.elem_type));
    case GgufValueType::FLOAT32: case GgufValueType::FLOAT64:
      return fmt::format("{} = {}", gguf_value_type_name(v.type), v.f);
    case GgufValueType::BOOL: return fmt::format("bool = {}", v.b);
    case GgufValueType::UINT64: return fmt::format("u64 = {}", v.u);
    default: return fmt::format("{} = {}", gguf_value_type_name(v.type), v.i);
  }
}

void GgufFile::dequantize(const GgufTensorInfo& t, float* dst) const {
  ggml_dequantize(t.type, tensor_data(t), dst, t.numel(), fmt::format("'{}': tensor '{}'", path_, t.name));
}

}  // namespace lowbit
