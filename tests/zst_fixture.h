// A compressed safetensors fixture (tests/fixtures/<path>.safetensors.zst): decompressed once per
// test program into a temporary directory and opened; its tensors read back as vectors.
#pragma once

#include "formats/safetensors.h"
#include "test_util.h"

#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace lowbit::test {

// `path` relative to the fixtures directory, e.g. "quant/icq.safetensors.zst".
inline const SafetensorsFile& zst_fixture(const std::string& path) {
  static TempDir dir;
  static std::map<std::string, std::shared_ptr<const SafetensorsFile>> open;
  auto& f = open[path];
  if (!f) {
    const std::string out = dir / std::to_string(open.size());
    spit(out, read_zst(fixtures_dir() + "/" + path));
    f = SafetensorsFile::open(out);
  }
  return *f;
}

// A tensor's elements as stored (T must be its element type's size).
template <typename T>
std::vector<T> tensor_values(const SafetensorsFile& f, const std::string& name) {
  Tensor t = f.tensor(name);
  std::vector<T> v(size_t(t.numel()));
  std::memcpy(v.data(), t.data(), size_t(t.nbytes()));
  return v;
}

}  // namespace lowbit::test
