// A GGUF (version 3) writer: metadata key-values and tensors, in the file layout gguf.h draws.
// Keys are written in the order they are set, tensors in the order they are added; each
// tensor's data starts at a multiple of the alignment (32, general.alignment is not written).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

class GgufWriter {
 public:
  void set_u32(const std::string& key, uint32_t v);
  void set_i32(const std::string& key, int32_t v);
  void set_f32(const std::string& key, float v);
  void set_bool(const std::string& key, bool v);
  void set_string(const std::string& key, const std::string& v);
  void set_strings(const std::string& key, const std::vector<std::string>& v);
  void set_i32s(const std::string& key, const std::vector<int32_t>& v);
  void set_f32s(const std::string& key, const std::vector<float>& v);
  // A tensor of ggml type `type` with dims `ne` innermost first (ne[0] = columns) and its bytes
  // (ne[0] / block size blocks per row); the size is checked against the type's block size.
  void add_tensor(const std::string& name, std::vector<int64_t> ne, uint32_t type, std::vector<uint8_t> data);
  // Moves `other`'s tensors after this writer's (its key-values are dropped).
  void append_tensors(GgufWriter&& other);
  // Writes the file (throws lowbit::Error naming `path` when it cannot).
  void write(const std::string& path) const;

 private:
  struct Tensor {
    std::string name;
    std::vector<int64_t> ne;
    uint32_t type;
    std::vector<uint8_t> data;
  };
  std::vector<uint8_t> kv_;  // the serialized key-values
  uint64_t kv_count_ = 0;
  std::vector<Tensor> tensors_;
  void key(const std::string& k, uint32_t value_type);
};

}  // namespace lowbit
