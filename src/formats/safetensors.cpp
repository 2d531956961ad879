#include "formats/safetensors.h"

#include "core/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>

namespace lowbit {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

uint64_t json_offset(const json& v, const std::string& what, const std::string& name, const char* field) {
  LB_CHECK(v.is_number_unsigned(), "{}: tensor '{}': {} must hold non-negative integers, got {}", what,
           name, field, v.dump());
  return v.get<uint64_t>();
}

}  // namespace

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size, const std::string& what) {
  LB_CHECK(size >= 8, "{}: file is {} bytes, too short for the 8-byte header length", what, size);
  const uint64_t n = read_u64_le(data);
  LB_CHECK(n <= kSafetensorsMaxHeader, "{}: header length {} exceeds the limit of {} bytes", what, n,
           kSafetensorsMaxHeader);
  LB_CHECK(n <= size - 8, "{}: header length {} runs past the end of the file ({} bytes)", what, n, size);
  LB_CHECK(n >= 2 && data[8] == '{', "{}: header does not start with a JSON object", what);

  json h = json::parse(data + 8, data + 8 + n, nullptr, /*allow_exceptions=*/false);
  LB_CHECK(!h.is_discarded(), "{}: header is not valid JSON", what);
  LB_CHECK(h.is_object(), "{}: header is not a JSON object", what);

  SafetensorsHeader out;
  out.data_start = 8 + n;
  const uint64_t data_size = size - out.data_start;
  for (auto it = h.begin(); it != h.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();
    if (name == "__metadata__") {
      LB_CHECK(v.is_object(), "{}: __metadata__ must be an object of strings", what);
      for (auto m = v.begin(); m != v.end(); ++m) {
        LB_CHECK(m.value().is_string(), "{}: __metadata__ value for '{}' is not a string", what, m.key());
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    LB_CHECK(v.is_object(), "{}: entry '{}' is not an object", what, name);
    LB_CHECK(v.contains("dtype") && v["dtype"].is_string(), "{}: tensor '{}' has no dtype string", what, name);
    LB_CHECK(v.contains("shape") && v["shape"].is_array(), "{}: tensor '{}' has no shape array", what, name);
    LB_CHECK(v.contains("data_offsets") && v["data_offsets"].is_array() && v["data_offsets"].size() == 2,
             "{}: tensor '{}' needs data_offsets [begin, end]", what, name);
    SafetensorsEntry e;
    e.name = name;
    const std::string dt = v["dtype"].get<std::string>();
    auto dtype = dtype_from_name(dt);
    LB_CHECK(dtype.has_value(), "{}: tensor '{}' has unknown dtype '{}'", what, name, dt);
    e.dtype = *dtype;
    uint64_t numel = 1;
    for (const json& d : v["shape"]) {
      const uint64_t dim = json_offset(d, what, name, "shape");
      LB_CHECK(dim <= (uint64_t(1) << 62) && !__builtin_mul_overflow(numel, dim, &numel),
               "{}: tensor '{}' has a shape {} whose size overflows", what, name, v["shape"].dump());
      e.shape.push_back(int64_t(dim));
    }
    e.begin = json_offset(v["data_offsets"][0], what, name, "data_offsets");
    e.end = json_offset(v["data_offsets"][1], what, name, "data_offsets");
    LB_CHECK(e.begin <= e.end, "{}: tensor '{}' has data_offsets [{}, {}] with begin after end", what, name,
             e.begin, e.end);
    LB_CHECK(e.end <= data_size, "{}: tensor '{}' has data_offsets [{}, {}] past the end of the data ({} bytes)",
             what, name, e.begin, e.end, data_size);
    uint64_t nbytes = 0;
    LB_CHECK(!__builtin_mul_overflow(numel, uint64_t(dtype_size(e.dtype)), &nbytes) && nbytes == e.end - e.begin,
             "{}: tensor '{}' of dtype {} and shape {} needs {} bytes, but data_offsets [{}, {}] span {}", what,
             name, dt, shape_str(e.shape), numel * uint64_t(dtype_size(e.dtype)), e.begin, e.end, e.end - e.begin);
    out.entries.push_back(std::move(e));
  }
  std::sort(out.entries.begin(), out.entries.end(), [](const SafetensorsEntry& a, const SafetensorsEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  uint64_t pos = 0;
  for (size_t i = 0; i < out.entries.size(); ++i) {
    const auto& e = out.entries[i];
    LB_CHECK(e.begin >= pos, "{}: tensor '{}' [{}, {}) overlaps tensor '{}' which ends at {}", what, e.name,
             e.begin, e.end, out.entries[i - 1].name, pos);
    LB_CHECK(e.begin == pos, "{}: {} bytes before tensor '{}' (at {}) belong to no tensor", what, e.begin - pos,
             e.name, e.begin);
    pos = e.end;
  }
  LB_CHECK(pos == data_size, "{}: {} trailing bytes of the data buffer belong to no tensor", what, data_size - pos);
  return out;
}

std::shared_ptr<const SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  auto f = std::make_shared<SafetensorsFile>();
  f->file_ = MappedFile::open(path);
  f->header_ = parse_safetensors_header(f->file_->data(), f->file_->size(), "safetensors '" + path + "'");
  for (size_t i = 0; i < f->header_.entries.size(); ++i) f->index_[f->header_.entries[i].name] = i;
  return f;
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &header_.entries[it->second];
}

Tensor SafetensorsFile::tensor(const std::string& name) const {
  const SafetensorsEntry* e = find(name);
  LB_CHECK(e != nullptr, "safetensors '{}': no tensor named '{}'", path(), name);
  return Tensor::view(e->dtype, e->shape, file_->data() + header_.data_start + e->begin, file_);
}

std::shared_ptr<SafetensorsWeights> SafetensorsWeights::open(const std::string& path) {
  auto w = std::make_shared<SafetensorsWeights>();
  auto add_shard = [&](const std::string& file) {
    w->shards_.push_back(SafetensorsFile::open(file));
    return w->shards_.size() - 1;
  };
  auto add_all = [&](size_t shard) {
    for (const auto& e : w->shards_[shard]->entries()) {
      WeightInfo info{e.dtype, e.shape, int64_t(e.end - e.begin)};
      LB_CHECK(w->where_.emplace(e.name, std::make_pair(shard, info)).second,
               "'{}': tensor '{}' appears in more than one shard", path, e.name);
    }
  };
  if (!fs::is_directory(path)) {
    add_all(add_shard(path));
    return w;
  }
  const fs::path dir(path);
  const fs::path index = dir / "model.safetensors.index.json";
  if (fs::exists(index)) {
    json j = json::parse(read_file(index.string()), nullptr, false);
    LB_CHECK(!j.is_discarded() && j.is_object(), "'{}' is not valid JSON", index.string());
    LB_CHECK(j.contains("weight_map") && j["weight_map"].is_object(), "'{}' has no weight_map object",
             index.string());
    std::map<std::string, size_t> shard_of_file;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      LB_CHECK(it.value().is_string(), "'{}': weight_map['{}'] is not a file name", index.string(), it.key());
      const std::string file = it.value().get<std::string>();
      LB_CHECK(file.find('/') == std::string::npos && file != ".." && !file.empty(),
               "'{}': weight_map['{}'] names '{}', not a file in the checkpoint directory", index.string(),
               it.key(), file);
      auto [pos, fresh] = shard_of_file.emplace(file, 0);
      if (fresh) pos->second = add_shard((dir / file).string());
      const SafetensorsFile& shard = *w->shards_[pos->second];
      const SafetensorsEntry* e = shard.find(it.key());
      LB_CHECK(e != nullptr, "'{}': weight_map puts '{}' in '{}', which does not hold it", index.string(),
               it.key(), file);
      w->where_[it.key()] = {pos->second, WeightInfo{e->dtype, e->shape, int64_t(e->end - e->begin)}};
    }
    return w;
  }
  const fs::path single = dir / "model.safetensors";
  LB_CHECK(fs::exists(single), "'{}' holds no model.safetensors or model.safetensors.index.json", path);
  add_all(add_shard(single.string()));
  return w;
}

std::vector<std::string> SafetensorsWeights::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : where_) out.push_back(k);
  return out;
}

const WeightInfo* SafetensorsWeights::info(const std::string& name) const {
  auto it = where_.find(name);
  return it == where_.end() ? nullptr : &it->second.second;
}

Tensor SafetensorsWeights::get(const std::string& name) const {
  auto it = where_.find(name);
  LB_CHECK(it != where_.end(), "checkpoint has no tensor named '{}'", name);
  return shards_[it->second.first]->tensor(name);
}

std::vector<std::string> SafetensorsWeights::files() const {
  std::vector<std::string> out;
  for (const auto& s : shards_) out.push_back(s->path());
  return out;
}

void SafetensorsWriter::add(const std::string& name, const Tensor& t) {
  LB_CHECK(!name.empty() && name != "__metadata__", "safetensors writer: invalid tensor name '{}'", name);
  LB_CHECK(t.is_contiguous(), "safetensors writer: tensor '{}' is not contiguous", name);
  LB_CHECK(tensors_.emplace(name, t).second, "safetensors writer: tensor '{}' added twice", name);
}

void SafetensorsWriter::write(const std::string& path) const {
  std::vector<std::pair<std::string, const Tensor*>> order;
  for (const auto& [name, t] : tensors_) order.push_back({name, &t});
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return dtype_size(a.second->dtype()) > dtype_size(b.second->dtype());
  });
  json h = json::object();
  if (!metadata_.empty()) h["__metadata__"] = metadata_;
  uint64_t offset = 0;
  for (const auto& [name, tp] : order) {
    const Tensor& t = *tp;
    const uint64_t n = uint64_t(t.nbytes());
    h[name] = {{"dtype", std::string(dtype_name(t.dtype()))}, {"shape", t.shape()},
               {"data_offsets", {offset, offset + n}}};
    offset += n;
  }
  std::string header = h.dump();
  header.append((8 - header.size() % 8) % 8, ' ');
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    LB_CHECK(out.good(), "cannot write '{}'", tmp);
    uint8_t len[8];
    uint64_t n = header.size();
    for (int i = 0; i < 8; ++i) len[i] = uint8_t(n >> (8 * i));
    out.write(reinterpret_cast<const char*>(len), 8);
    out.write(header.data(), std::streamsize(header.size()));
    for (const auto& [name, t] : order)
      out.write(static_cast<const char*>(t->data()), std::streamsize(t->nbytes()));
    out.flush();
    if (!out.good()) {
      out.close();
      std::remove(tmp.c_str());
      fail("failed writing '{}' (disk full?)", tmp);
    }
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    fail("cannot rename '{}' to '{}': {}", tmp, path, ec.message());
  }
}

}  // namespace lowbit
