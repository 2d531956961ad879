#include "train/generated_data.h"

#include "core/error.h"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <vector>

namespace lowbit::train {

std::pair<int64_t, int64_t> parse_gen_greedy(const std::string& text) {
  auto number = [&](const std::string& s) {
    size_t used = 0;
    int64_t x = -1;
    try {
      x = std::stoll(s, &used);
    } catch (const std::logic_error&) {
      used = 0;
    }
    LB_CHECK(!s.empty() && used == s.size() && std::isdigit(static_cast<unsigned char>(s[0])) && x >= 0 && x <= 1 << 20,
             "--gen-greedy '{}': give N or LO-HI, non-negative integers (the argmax tokens after the first)", text);
    return x;
  };
  const size_t dash = text.find('-');
  if (dash == std::string::npos) {
    const int64_t n = number(text);
    return {n, n};
  }
  const int64_t lo = number(text.substr(0, dash)), hi = number(text.substr(dash + 1));
  LB_CHECK(lo <= hi, "--gen-greedy '{}': LO {} is more than HI {}", text, lo, hi);
  return {lo, hi};
}

void check_gen_data_options(const GenDataOptions& o) {
  LB_CHECK(o.nsamples > 0, "--gen-nsamples {} must be positive", o.nsamples);
  LB_CHECK(o.seqlen >= 2, "--gen-seqlen {} must be at least 2", o.seqlen);
  LB_CHECK(o.first == "random" || o.first == "sweep", "--gen-first '{}' is not one of random, sweep", o.first);
  (void)parse_gen_greedy(o.greedy);
  LB_CHECK(o.temperature > 0 && std::isfinite(o.temperature), "--gen-temperature {} must be positive", o.temperature);
  LB_CHECK(o.top_k >= 0, "--gen-top-k {} must be >= 0 (0: the whole vocabulary)", o.top_k);
  LB_CHECK(o.eos == "stop" || o.eos == "continue", "--gen-eos '{}' is not one of stop, continue", o.eos);
  LB_CHECK(o.bos == "window" || o.bos == "both" || o.bos == "off", "--gen-bos '{}' is not one of window, both, off",
           o.bos);
}

nlohmann::json gen_data_identity(const GenDataOptions& o) {
  return {{"set", "generated"},
          {"convention", "LLM-QAT data-free: the 16-bit model's own sequences (train/generated_data.h)"},
          {"nsamples", o.nsamples}, {"seqlen", o.seqlen}, {"seed", o.seed}, {"first", o.first},
          {"greedy", o.greedy}, {"temperature", o.temperature}, {"top_k", o.top_k}, {"eos", o.eos},
          {"bos", o.bos}};
}

double uniform01(std::mt19937_64& rng) { return double(rng() >> 11) * 0x1p-53; }

int32_t greedy_token(std::span<const float> logits) {
  LB_ASSERT(!logits.empty());
  return int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

int32_t sample_token(std::span<const float> logits, double temperature, int64_t top_k, double u) {
  const int64_t V = int64_t(logits.size());
  LB_ASSERT(V > 0 && temperature > 0);
  std::vector<double> z(static_cast<size_t>(V));
  for (int64_t i = 0; i < V; ++i) z[size_t(i)] = double(logits[size_t(i)]) / temperature;
  // Top-k as transformers' TopKLogitsWarper: every logit below the k-th largest is dropped,
  // ties at the k-th kept.
  double threshold = -INFINITY;
  if (top_k > 0 && top_k < V) {
    std::vector<double> s = z;
    std::nth_element(s.begin(), s.begin() + (top_k - 1), s.end(), std::greater<>());
    threshold = s[size_t(top_k - 1)];
  }
  double zmax = -INFINITY;
  for (double x : z) zmax = std::max(zmax, x);
  double total = 0;
  for (int64_t i = 0; i < V; ++i) {
    double& w = z[size_t(i)];
    w = w >= threshold ? std::exp(w - zmax) : 0.0;
    total += w;
  }
  const double target = u * total;
  double run = 0;
  int32_t last = -1;
  for (int64_t i = 0; i < V; ++i) {
    if (z[size_t(i)] <= 0) continue;
    run += z[size_t(i)];
    last = int32_t(i);
    if (run > target) return int32_t(i);
  }
  LB_ASSERT(last >= 0);
  return last;
}

std::vector<int32_t> generate_sequence(const LlamaModel& teacher, const GenDataOptions& o, int64_t sample,
                                       int64_t max_len, std::mt19937_64& rng, KvCache& cache) {
  const LlamaConfig& c = teacher.config();
  const int64_t V = c.vocab_size, H = c.hidden_size;
  const auto [lo, hi] = parse_gen_greedy(o.greedy);
  const int64_t span = hi - lo + 1;
  int32_t first = 0;
  int64_t greedy = 0;
  if (o.first == "sweep") {
    first = int32_t(sample % V);
    greedy = lo + (sample / V) % span;
  } else {
    first = int32_t(std::min<int64_t>(V - 1, int64_t(uniform01(rng) * double(V))));
    greedy = lo + sample % span;
  }
  std::vector<int32_t> ids = {first};
  if (max_len <= 1) return ids;
  const bool stop_at_eos = o.eos == "stop";
  auto is_eos = [&](int32_t t) {
    return std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), int64_t(t)) != c.eos_token_ids.end();
  };
  // The context: [BOS] first (bos = both) or first alone, then one token at a time.
  std::vector<int32_t> context;
  if (o.bos == "both") context.push_back(int32_t(*c.bos_token_id));
  context.push_back(first);
  cache.truncate(0);
  std::vector<float> hidden(static_cast<size_t>(int64_t(context.size()) * H)), logits(static_cast<size_t>(V));
  while (int64_t(ids.size()) < max_len) {
    const int64_t T = int64_t(context.size());
    if (int64_t(hidden.size()) < T * H) hidden.resize(size_t(T * H));
    teacher.forward_cached(context, cache, hidden.data());
    teacher.lm_head(hidden.data() + (T - 1) * H, 1, logits.data());
    const bool take_greedy = int64_t(ids.size()) <= greedy;  // ids holds the first and the greedy ones so far
    const int32_t next = take_greedy ? greedy_token(logits)
                                     : sample_token(logits, o.temperature, o.top_k, uniform01(rng));
    if (stop_at_eos && is_eos(next)) break;
    ids.push_back(next);
    context.assign(1, next);
  }
  return ids;
}

Calibration generate_distill_data(const LlamaModel& teacher, const GenDataOptions& o,
                                  const std::function<void(int64_t, int64_t)>& on_sequence) {
  check_gen_data_options(o);
  const LlamaConfig& c = teacher.config();
  LB_CHECK(o.seqlen <= c.max_position_embeddings, "--gen-seqlen {} exceeds the model's max_position_embeddings ({})",
           o.seqlen, c.max_position_embeddings);
  LB_CHECK(o.bos == "off" || c.bos_token_id.has_value(),
           "--gen-bos {}: the model's config has no bos_token_id; pass --gen-bos off", o.bos);
  LB_CHECK(o.bos == "off" || (*c.bos_token_id >= 0 && *c.bos_token_id < c.vocab_size),
           "--gen-bos {}: the model's bos_token_id {} is outside its vocabulary of {}", o.bos, *c.bos_token_id,
           c.vocab_size);
  Calibration out;
  out.set.name = "generated";
  out.set.convention = gen_data_identity(o)["convention"].get<std::string>();
  out.nsamples = o.nsamples;
  out.seqlen = o.seqlen;
  out.seed = o.seed;
  out.bos = o.bos;
  const bool bos = o.bos != "off";
  const int64_t max_len = o.seqlen - (bos ? 1 : 0);
  std::mt19937_64 rng(o.seed);
  KvCache cache = teacher.make_kv_cache((o.bos == "both" ? 1 : 0) + max_len);
  std::vector<int32_t> window;
  window.reserve(size_t(o.seqlen));
  for (int64_t s = 0; int64_t(out.windows.size()) < o.nsamples; ++s) {
    std::vector<int32_t> seq;
    if (bos) seq.push_back(int32_t(*c.bos_token_id));
    const std::vector<int32_t> ids = generate_sequence(teacher, o, s, max_len, rng, cache);
    seq.insert(seq.end(), ids.begin(), ids.end());
    for (int32_t t : seq) {
      window.push_back(t);
      if (int64_t(window.size()) == o.seqlen) {
        out.windows.push_back(std::move(window));
        window.clear();
        window.reserve(size_t(o.seqlen));
        if (int64_t(out.windows.size()) == o.nsamples) break;
      }
    }
    if (on_sequence) on_sequence(int64_t(out.windows.size()), o.nsamples);
  }
  return out;
}

}  // namespace lowbit::train
