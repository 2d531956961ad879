// SHA-256 (OpenSSL), used for model identity and fixture checks.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace lowbit {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  void update(const void* data, size_t n);
  std::string hex_digest();  // finishes the hash

 private:
  void* ctx_;
};

std::string sha256_hex(std::string_view bytes);
// Hash of a whole file, read through a memory map.
std::string sha256_file(const std::string& path);

}  // namespace lowbit
