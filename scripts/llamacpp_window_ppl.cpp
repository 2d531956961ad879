// Perplexity of a GGUF model under llama.cpp on lowbit's windows (GPTQ's protocol: consecutive
// non-overlapping windows of SEQLEN ids, positions 0..T-2 predicting 1..T-1, exp of the mean of
// the window means), for comparing lowbit's `ppl` with llama.cpp on the same ids. Optionally
// checks that llama.cpp's own tokenization of TEXT_FILE (with its special tokens) gives IDS.
//
// Built against llama.cpp's libllama (scripts/export_llamacpp_check.sh):
//   llamacpp_window_ppl MODEL.gguf IDS_FILE SEQLEN MAX_WINDOWS [TEXT_FILE]
// IDS_FILE: the ids as `lowbit tokenize --ids` prints them ("[1, 2, ...]").
#include "llama.h"

#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 5) {
    std::fprintf(stderr, "usage: %s MODEL.gguf IDS_FILE SEQLEN MAX_WINDOWS [TEXT_FILE]\n", argv[0]);
    return 2;
  }
  std::ifstream idf(argv[2]);
  std::stringstream ss;
  ss << idf.rdbuf();
  std::string s = ss.str();
  for (char& c : s)
    if (c == '[' || c == ']' || c == ',') c = ' ';
  std::vector<llama_token> ids;
  std::istringstream in(s);
  for (long v; in >> v;) ids.push_back(llama_token(v));
  const int seqlen = std::atoi(argv[3]);
  const int max_windows = std::atoi(argv[4]);

  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  llama_model* model = llama_model_load_from_file(argv[1], mp);
  if (!model) {
    std::fprintf(stderr, "llama.cpp could not load %s\n", argv[1]);
    return 1;
  }
  const llama_vocab* vocab = llama_model_get_vocab(model);
  const int n_vocab = llama_vocab_n_tokens(vocab);
  if (argc > 5) {
    std::ifstream tf(argv[5]);
    std::stringstream ts;
    ts << tf.rdbuf();
    const std::string text = ts.str();
    std::vector<llama_token> mine(text.size() + 16);
    const int n = llama_tokenize(vocab, text.data(), int32_t(text.size()), mine.data(), int32_t(mine.size()), true, false);
    mine.resize(n > 0 ? size_t(n) : 0);
    size_t first_diff = 0;
    while (first_diff < mine.size() && first_diff < ids.size() && mine[first_diff] == ids[first_diff]) ++first_diff;
    std::printf("tokenizer: llama.cpp %zu ids, given %zu, %s\n", mine.size(), ids.size(),
                mine == ids ? "identical" : ("first difference at " + std::to_string(first_diff)).c_str());
  }
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = uint32_t(seqlen);
  cp.n_batch = uint32_t(seqlen);
  cp.n_ubatch = uint32_t(seqlen);
  cp.n_threads = 2;
  cp.n_threads_batch = 2;
  llama_context* ctx = llama_init_from_model(model, cp);
  const int windows = std::min<int>(max_windows, int(ids.size() / size_t(seqlen)));
  double sum_window_means = 0;
  for (int w = 0; w < windows; ++w) {
    llama_memory_clear(llama_get_memory(ctx), true);
    llama_batch batch = llama_batch_init(seqlen, 0, 1);
    for (int i = 0; i < seqlen; ++i) {
      batch.token[i] = ids[size_t(w) * seqlen + i];
      batch.pos[i] = i;
      batch.n_seq_id[i] = 1;
      batch.seq_id[i][0] = 0;
      batch.logits[i] = 1;
    }
    batch.n_tokens = seqlen;
    if (llama_decode(ctx, batch) != 0) {
      std::fprintf(stderr, "llama_decode failed\n");
      return 1;
    }
    double nll = 0;
    for (int i = 0; i + 1 < seqlen; ++i) {
      const float* lg = llama_get_logits_ith(ctx, i);
      double mx = lg[0];
      for (int k = 1; k < n_vocab; ++k) mx = std::max(mx, double(lg[k]));
      double z = 0;
      for (int k = 0; k < n_vocab; ++k) z += std::exp(double(lg[k]) - mx);
      nll += -(double(lg[batch.token[i + 1]]) - mx - std::log(z));
    }
    sum_window_means += nll / (seqlen - 1);
    llama_batch_free(batch);
  }
  std::printf("llama.cpp: %d windows of %d, PPL = %.4f\n", windows, seqlen, std::exp(sum_window_means / windows));
  llama_free(ctx);
  llama_model_free(model);
  llama_backend_free();
  return 0;
}
