// SHA-256 (OpenSSL), used for model identity and fixture checks; a fast 64-bit content fingerprint
// for telling whether a buffer changed.
#pragma once

#include <cstddef>
#include <cstdint>
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

// A 64-bit fingerprint of n bytes: the sum (mod 2^64) of a strong mix of each 8-byte word with its
// position, so that equal bytes give equal prints and any change of the bytes changes the print but
// with probability about 2^-64. Not cryptographic. The words are summed in parallel (OpenMP); the
// sum does not depend on the order, so neither does the print.
uint64_t fingerprint64(const void* data, size_t n);

}  // namespace lowbit
