#include "train/instruct_data.h"

#include "core/error.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>
#include <numeric>

namespace lowbit::train {

namespace {

// Fisher-Yates with a generator whose sequence the C++ standard fixes (std::shuffle's use of it
// is left to the library), so that orders and splits are the same with any standard library.
void shuffle(std::vector<int64_t>& v, std::mt19937_64& gen) {
  for (size_t i = v.size(); i > 1; --i) {
    const size_t j = size_t((static_cast<unsigned __int128>(gen()) * i) >> 64);
    std::swap(v[i - 1], v[j]);
  }
}

}  // namespace

std::vector<InstructRecord> read_alpaca_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LB_CHECK(in.good(), "instruction data '{}': cannot open the file", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    LB_CHECK(false, "instruction data '{}': not valid JSON ({})", path, e.what());
  }
  LB_CHECK(j.is_array(), "instruction data '{}': expected a JSON array of records, got a {}", path, j.type_name());
  std::vector<InstructRecord> out;
  out.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    const auto& r = j[i];
    LB_CHECK(r.is_object(), "instruction data '{}': record {} is a {}, not an object", path, i, r.type_name());
    auto field = [&](const char* name, bool required) -> std::string {
      auto it = r.find(name);
      if (it == r.end() || it->is_null()) {
        LB_CHECK(!required, "instruction data '{}': record {} has no \"{}\"", path, i, name);
        return {};
      }
      LB_CHECK(it->is_string(), "instruction data '{}': record {}'s \"{}\" is a {}, not a string", path, i, name,
               it->type_name());
      return it->get<std::string>();
    };
    out.push_back({field("instruction", true), field("input", false), field("output", true)});
  }
  LB_CHECK(!out.empty(), "instruction data '{}' holds no records", path);
  return out;
}

std::string alpaca_prompt(const InstructRecord& r) {
  // qlora.py's ALPACA_PROMPT_DICT (Stanford Alpaca's templates, ending in "### Response: ").
  if (!r.input.empty())
    return "Below is an instruction that describes a task, paired with an input that provides further context. "
           "Write a response that appropriately completes the request.\n\n### Instruction:\n" +
           r.instruction + "\n\n### Input:\n" + r.input + "\n\n### Response: ";
  return "Below is an instruction that describes a task. Write a response that appropriately completes the "
         "request.\n\n### Instruction:\n" +
         r.instruction + "\n\n### Response: ";
}

InstructExample tokenize_example(const Tokenizer& tok, const InstructRecord& r, const InstructLimits& lim) {
  LB_CHECK(lim.source_max > 0 && lim.target_max > 0, "source/target length limits must be positive, got {}/{}",
           lim.source_max, lim.target_max);
  std::vector<int32_t> src;
  if (auto b = tok.bos_id()) src.push_back(*b);
  const auto p = tok.encode(alpaca_prompt(r), BosMode::Off);
  src.insert(src.end(), p.begin(), p.end());
  std::vector<int32_t> tgt = tok.encode(r.output, BosMode::Off);
  if (auto e = tok.eos_id()) tgt.push_back(*e);
  InstructExample ex;
  ex.source_truncated = int64_t(src.size()) > lim.source_max;
  ex.target_truncated = int64_t(tgt.size()) > lim.target_max;
  src.resize(size_t(std::min<int64_t>(int64_t(src.size()), lim.source_max)));
  tgt.resize(size_t(std::min<int64_t>(int64_t(tgt.size()), lim.target_max)));
  ex.source_len = int64_t(src.size());
  ex.tokens = std::move(src);
  ex.tokens.insert(ex.tokens.end(), tgt.begin(), tgt.end());
  return ex;
}

Batch make_batch(const std::vector<const InstructExample*>& examples, int32_t pad_id) {
  LB_CHECK(!examples.empty(), "a batch needs at least one example");
  Batch b;
  b.B = int64_t(examples.size());
  for (const auto* e : examples) b.T = std::max(b.T, int64_t(e->tokens.size()));
  b.tokens.assign(size_t(b.B * b.T), pad_id);
  b.targets.assign(size_t(b.B * b.T), -100);
  for (int64_t i = 0; i < b.B; ++i) {
    const InstructExample& e = *examples[size_t(i)];
    const int64_t n = int64_t(e.tokens.size());
    std::copy(e.tokens.begin(), e.tokens.end(), b.tokens.begin() + i * b.T);
    // Label of position t+1 is its token when t+1 is in the target.
    for (int64_t t = std::max<int64_t>(0, e.source_len - 1); t + 1 < n; ++t)
      b.targets[size_t(i * b.T + t)] = e.tokens[size_t(t + 1)];
  }
  return b;
}

Split split_indices(int64_t n, int64_t held_out, uint64_t seed) {
  LB_CHECK(held_out >= 0 && held_out < n, "held-out split of {} records out of {}: at least one must remain", held_out,
           n);
  std::vector<int64_t> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::mt19937_64 gen(seed);
  shuffle(idx, gen);
  Split s;
  s.held_out.assign(idx.begin(), idx.begin() + held_out);
  s.train.assign(idx.begin() + held_out, idx.end());
  std::sort(s.held_out.begin(), s.held_out.end());
  std::sort(s.train.begin(), s.train.end());
  return s;
}

std::vector<int64_t> epoch_order(const std::vector<int64_t>& train, uint64_t seed, int64_t epoch) {
  std::vector<int64_t> order = train;
  std::seed_seq seq{uint32_t(seed), uint32_t(seed >> 32), uint32_t(epoch), uint32_t(uint64_t(epoch) >> 32)};
  std::mt19937_64 gen(seq);
  shuffle(order, gen);
  return order;
}

}  // namespace lowbit::train
