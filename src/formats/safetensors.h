// safetensors: reader (memory-mapped, fully validated), sharded checkpoints
// (model.safetensors.index.json) and a writer.
//
// File layout (https://github.com/huggingface/safetensors):
//   [0, 8)        u64 little-endian N: header length
//   [8, 8+N)      JSON object: {"__metadata__": {str: str}?, "<name>": {"dtype": "BF16",
//                 "shape": [d0, d1, ...], "data_offsets": [begin, end]}, ...}
//   [8+N, EOF)    data buffer; offsets are relative to its start. Tensors tile it exactly:
//                 sorted by begin, each starts where the previous ended, the last ends at EOF.
#pragma once

#include "core/dtype.h"
#include "core/mapped_file.h"
#include "core/tensor.h"
#include "formats/weights.h"

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace lowbit {

struct SafetensorsEntry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;  // byte offsets in the data buffer
};

struct SafetensorsHeader {
  std::vector<SafetensorsEntry> entries;  // in file order of their data
  std::map<std::string, std::string> metadata;
  uint64_t data_start = 0;  // 8 + N
};

// Upper bound on the JSON header (the reference implementation's limit).
inline constexpr uint64_t kSafetensorsMaxHeader = 100'000'000;

// Parses and validates the header of a safetensors file held in [data, data+size). `what` names
// the file in error messages. Throws lowbit::Error on any violation.
SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, const std::string& what);

class SafetensorsFile {
 public:
  static std::shared_ptr<const SafetensorsFile> open(const std::string& path);

  const std::string& path() const { return file_->path(); }
  const std::vector<SafetensorsEntry>& entries() const { return header_.entries; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }
  const SafetensorsEntry* find(const std::string& name) const;
  // A read-only view into the map. Throws when the name is absent.
  Tensor tensor(const std::string& name) const;
  uint64_t file_size() const { return file_->size(); }

 private:
  std::shared_ptr<const MappedFile> file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// All tensors of a checkpoint directory: model.safetensors.index.json (sharded) or
// model.safetensors, or a single .safetensors file.
class SafetensorsWeights : public WeightSource {
 public:
  static std::shared_ptr<SafetensorsWeights> open(const std::string& path);
  std::vector<std::string> names() const override;
  const WeightInfo* info(const std::string& name) const override;
  Tensor get(const std::string& name) const override;
  std::vector<std::string> files() const override;
  const std::vector<std::shared_ptr<const SafetensorsFile>>& shards() const { return shards_; }

 private:
  std::vector<std::shared_ptr<const SafetensorsFile>> shards_;
  std::map<std::string, std::pair<size_t, WeightInfo>> where_;  // name -> (shard, info)
};

// Writes a safetensors file. As the reference writer does, tensors are laid out by element size
// (largest first), then name, and the header is padded with spaces to a multiple of 8 bytes, so
// that every tensor is aligned to its element size in the file (and in a page-aligned map). The file appears
// at `path` only when complete (written to a temporary beside it, then renamed).
class SafetensorsWriter {
 public:
  void add(const std::string& name, const Tensor& t);  // t must be contiguous; kept alive
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }
  void write(const std::string& path) const;

 private:
  std::map<std::string, Tensor> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace lowbit
