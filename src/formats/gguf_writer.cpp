#include "formats/gguf_writer.h"

#include "core/error.h"
#include "formats/ggml_quants.h"
#include "formats/gguf.h"

#include <cstring>
#include <fstream>

namespace lowbit {

namespace {

constexpr uint64_t kAlignment = 32;

template <typename T>
void put(std::vector<uint8_t>& out, T v) {
  uint8_t b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));  // GGUF is little-endian, as every host lowbit builds for
  out.insert(out.end(), b, b + sizeof(T));
}

void put_string(std::vector<uint8_t>& out, const std::string& s) {
  put<uint64_t>(out, s.size());
  out.insert(out.end(), s.begin(), s.end());
}

uint32_t vt(GgufValueType t) { return uint32_t(t); }

}  // namespace

void GgufWriter::key(const std::string& k, uint32_t value_type) {
  put_string(kv_, k);
  put<uint32_t>(kv_, value_type);
  ++kv_count_;
}

void GgufWriter::set_u32(const std::string& k, uint32_t v) {
  key(k, vt(GgufValueType::UINT32));
  put(kv_, v);
}
void GgufWriter::set_i32(const std::string& k, int32_t v) {
  key(k, vt(GgufValueType::INT32));
  put(kv_, v);
}
void GgufWriter::set_f32(const std::string& k, float v) {
  key(k, vt(GgufValueType::FLOAT32));
  put(kv_, v);
}
void GgufWriter::set_bool(const std::string& k, bool v) {
  key(k, vt(GgufValueType::BOOL));
  put<uint8_t>(kv_, v ? 1 : 0);
}
void GgufWriter::set_string(const std::string& k, const std::string& v) {
  key(k, vt(GgufValueType::STRING));
  put_string(kv_, v);
}
void GgufWriter::set_strings(const std::string& k, const std::vector<std::string>& v) {
  key(k, vt(GgufValueType::ARRAY));
  put<uint32_t>(kv_, vt(GgufValueType::STRING));
  put<uint64_t>(kv_, v.size());
  for (const auto& s : v) put_string(kv_, s);
}
void GgufWriter::set_i32s(const std::string& k, const std::vector<int32_t>& v) {
  key(k, vt(GgufValueType::ARRAY));
  put<uint32_t>(kv_, vt(GgufValueType::INT32));
  put<uint64_t>(kv_, v.size());
  for (int32_t x : v) put(kv_, x);
}
void GgufWriter::set_f32s(const std::string& k, const std::vector<float>& v) {
  key(k, vt(GgufValueType::ARRAY));
  put<uint32_t>(kv_, vt(GgufValueType::FLOAT32));
  put<uint64_t>(kv_, v.size());
  for (float x : v) put(kv_, x);
}

void GgufWriter::add_tensor(const std::string& name, std::vector<int64_t> ne, uint32_t type, std::vector<uint8_t> data) {
  const GgmlTypeTraits* tr = ggml_type_traits(type);
  LB_CHECK(tr != nullptr, "GGUF tensor '{}': unknown ggml type {}", name, type);
  LB_CHECK(!ne.empty() && ne.size() <= 4 && ne[0] % tr->block_size == 0,
           "GGUF tensor '{}': {} columns are not whole {} blocks of {}", name, ne.empty() ? 0 : ne[0], tr->name,
           tr->block_size);
  int64_t n = 1;
  for (int64_t d : ne) n *= d;
  LB_CHECK(int64_t(data.size()) == n / tr->block_size * tr->type_size,
           "GGUF tensor '{}': {} bytes for {} elements of {}", name, data.size(), n, tr->name);
  tensors_.push_back({name, std::move(ne), type, std::move(data)});
}

void GgufWriter::append_tensors(GgufWriter&& other) {
  for (Tensor& t : other.tensors_) tensors_.push_back(std::move(t));
  other.tensors_.clear();
}

void GgufWriter::write(const std::string& path) const {
  std::vector<uint8_t> head;
  put<uint32_t>(head, 0x46554747u);  // "GGUF"
  put<uint32_t>(head, 3);
  put<uint64_t>(head, tensors_.size());
  put<uint64_t>(head, kv_count_);
  head.insert(head.end(), kv_.begin(), kv_.end());
  uint64_t offset = 0;
  for (const Tensor& t : tensors_) {
    put_string(head, t.name);
    put<uint32_t>(head, uint32_t(t.ne.size()));
    for (int64_t d : t.ne) put<uint64_t>(head, uint64_t(d));
    put<uint32_t>(head, t.type);
    put<uint64_t>(head, offset);
    offset += (t.data.size() + kAlignment - 1) / kAlignment * kAlignment;
  }
  head.resize((head.size() + kAlignment - 1) / kAlignment * kAlignment, 0);
  std::ofstream f(path, std::ios::binary);
  LB_CHECK(f.good(), "cannot write '{}'", path);
  f.write(reinterpret_cast<const char*>(head.data()), std::streamsize(head.size()));
  static const uint8_t zeros[kAlignment] = {};
  for (const Tensor& t : tensors_) {
    f.write(reinterpret_cast<const char*>(t.data.data()), std::streamsize(t.data.size()));
    const size_t pad = (kAlignment - t.data.size() % kAlignment) % kAlignment;
    f.write(reinterpret_cast<const char*>(zeros), std::streamsize(pad));
  }
  f.close();
  LB_CHECK(f.good(), "error writing '{}'", path);
}

}  // namespace lowbit
