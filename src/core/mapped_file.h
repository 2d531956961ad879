// A read-only memory map of a whole file. Weights are read through it, never copied whole.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

namespace lowbit {

class MappedFile {
 public:
  // Throws lowbit::Error naming the path when it cannot be opened or mapped.
  static std::shared_ptr<const MappedFile> open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole (small) file into a string. Throws lowbit::Error naming the path.
std::string read_file(const std::string& path);

}  // namespace lowbit
