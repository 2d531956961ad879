#include "core/hash.h"

#include "core/error.h"
#include "core/mapped_file.h"

#include <openssl/evp.h>

#include <cstring>

namespace lowbit {

Sha256::Sha256() : ctx_(EVP_MD_CTX_new()) {
  LB_ASSERT(ctx_ && EVP_DigestInit_ex(static_cast<EVP_MD_CTX*>(ctx_), EVP_sha256(), nullptr) == 1);
}
Sha256::~Sha256() { EVP_MD_CTX_free(static_cast<EVP_MD_CTX*>(ctx_)); }

void Sha256::update(const void* data, size_t n) {
  LB_ASSERT(EVP_DigestUpdate(static_cast<EVP_MD_CTX*>(ctx_), data, n) == 1);
}

std::string Sha256::hex_digest() {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  LB_ASSERT(EVP_DigestFinal_ex(static_cast<EVP_MD_CTX*>(ctx_), md, &len) == 1);
  static const char* hex = "0123456789abcdef";
  std::string s;
  for (unsigned i = 0; i < len; ++i) {
    s += hex[md[i] >> 4];
    s += hex[md[i] & 15];
  }
  return s;
}

std::string sha256_hex(std::string_view bytes) {
  Sha256 h;
  h.update(bytes.data(), bytes.size());
  return h.hex_digest();
}

std::string sha256_file(const std::string& path) {
  auto f = MappedFile::open(path);
  Sha256 h;
  h.update(f->data(), f->size());
  return h.hex_digest();
}

namespace {
// splitmix64's finalizer: every input bit moves about half of the output bits.
inline uint64_t mix64(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}
}  // namespace

uint64_t fingerprint64(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  const int64_t words = int64_t(n / 8);
  uint64_t sum = mix64(uint64_t(n));
#pragma omp parallel for schedule(static) reduction(+ : sum) if (words > (int64_t(1) << 16))
  for (int64_t i = 0; i < words; ++i) {
    uint64_t w;
    std::memcpy(&w, p + i * 8, 8);
    sum += mix64(w ^ mix64(uint64_t(i) + 0x9e3779b97f4a7c15ULL));
  }
  uint64_t tail = 0;
  std::memcpy(&tail, p + words * 8, n % 8);
  return sum + mix64(tail ^ 0xd6e8feb86659fd93ULL);
}

}  // namespace lowbit
