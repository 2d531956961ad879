// lowbit generate --model M --prompt S [-n,--max-new-tokens N] [--bos auto|on|off] [--spm-convention C]
//                 [--device cpu|cuda[:N]] [--packed [--packed-act q8|f32]]: greedy decoding with a KV cache (the prompt in one
// forward, then one token per step). Prints the prompt's and the decode steps' speed on stderr, and on a GPU
// how the one-token steps ran (a CUDA graph per token, or eager with the reason) and the peak of lowbit's GPU
// memory.
#include "commands.h"

#include "backend/ops.h"
#include "core/error.h"
#include "eval/eval_session.h"
#include "formats/tokenizer.h"
#include "model/llama_model.h"
#include "quant/lowbit_checkpoint.h"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <functional>

namespace lowbit::cli {

namespace {

struct Options {
  std::string model, prompt, device = "cpu", bos = "on", spm = "auto";
  int64_t n = 64;
  int threads = 0;
  PackedFlags packed;
};

// Runs `tokens` after those the model has seen and returns the argmax of the last position's
// logits.
using Step = std::function<int32_t(std::span<const int32_t> tokens)>;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Speed is measured over the model's steps only (forward, lm_head, argmax), not over detokenizing
// and printing. The first new token comes from the prompt's forward; "decode" counts the
// one-token forwards after it.
void decode(const Options& o, const Tokenizer& tok, const LlamaConfig& c, std::vector<int32_t> ids, const Step& step) {
  const size_t prompt_len = ids.size();
  std::string shown;
  fmt::print("{}", o.prompt);
  auto t = std::chrono::steady_clock::now();
  int32_t next = step(ids);
  const double prompt_s = seconds_since(t);
  double decode_s = 0;
  int64_t decode_steps = 0;
  for (int64_t n = 0; n < o.n && int64_t(ids.size()) < c.max_position_embeddings; ++n) {
    if (std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), next) != c.eos_token_ids.end()) break;
    ids.push_back(next);
    const std::string text = tok.decode(std::span<const int32_t>(ids).subspan(prompt_len));
    // Print what the new token added (decoding the whole continuation keeps multi-byte
    // characters and leading-space rules right).
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
      fmt::print("{}", text.substr(shown.size()));
      std::fflush(stdout);
    }
    shown = text;
    if (n + 1 < o.n && int64_t(ids.size()) < c.max_position_embeddings) {
      t = std::chrono::steady_clock::now();
      next = step(std::span<const int32_t>(&ids.back(), 1));
      decode_s += seconds_since(t);
      ++decode_steps;
    }
  }
  fmt::print("\n");
  std::fflush(stdout);
  fmt::print(stderr,
             "prompt: {} tokens in {:.3f} s ({:.1f} tokens/s); decode: {} tokens in {:.3f} s ({:.1f} tokens/s); "
             "{} new tokens\n",
             prompt_len, prompt_s, double(prompt_len) / prompt_s, decode_steps, decode_s,
             decode_steps > 0 ? double(decode_steps) / decode_s : 0.0, ids.size() - prompt_len);
}

void run(const Options& o) {
  set_num_threads(o.threads);
  const auto session = open_eval_session(lowbit::parse_device(o.device));  // checked before any work
  const bool cuda = session->device().is_cuda();
  Checkpoint ck = open_model(o.model);
  LB_CHECK(!ck.tokenizer_path.empty(), "model '{}' has no tokenizer beside it", o.model);
  TokenizerOptions topt;
  topt.spm = parse_spm_convention(o.spm);
  auto tok = load_tokenizer(ck.tokenizer_path, topt);
  LlamaModel model(std::move(ck));
  // Decode reads every weight once per token: 16-bit weights stay 16-bit (half the bytes).
  if (!cuda) model.set_keep_16bit_weights(true);
  install_quantized_forward(model);
  apply_packed(o.packed, model, cuda, false);
  const LlamaConfig& c = model.config();
  std::vector<int32_t> ids = tok->encode(o.prompt, parse_bos_mode(o.bos));
  LB_CHECK(!ids.empty(), "the prompt has no tokens (empty prompt with --bos {}); give --prompt or --bos on", o.bos);
  const int64_t max_len = c.max_position_embeddings;
  LB_CHECK(int64_t(ids.size()) < max_len, "prompt has {} tokens; the model's context is {}", ids.size(), max_len);
  const int64_t capacity = std::min<int64_t>(max_len, int64_t(ids.size()) + o.n);
  const auto placed = session->place(model);
  const std::unique_ptr<Decoder> decoder = placed->decoder(capacity);
  decode(o, *tok, c, ids, [&](std::span<const int32_t> tokens) { return decoder->next_greedy(tokens); });
  // On a GPU: whether the one-token steps replayed a CUDA graph (LOWBIT_CUDA_GRAPHS=0: eager).
  if (const std::string path = decoder->decode_path(); !path.empty()) fmt::print(stderr, "decode steps: {}\n", path);
  // The GPU's high-water mark of lowbit's own allocations (weights, KV cache, scratch).
  if (const auto peak = session->peak_memory_bytes())
    fmt::print(stderr, "peak GPU memory: {:.0f} bytes ({:.2f} GiB)\n", *peak, *peak / double(1 << 30));
}

}  // namespace

void register_generate(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("generate", "Greedy text generation");
  cmd->add_option("--model", o->model, "model directory or checkpoint")->required();
  cmd->add_option("--prompt", o->prompt, "prompt text");
  add_bos_option(cmd, o->bos, "the prompt");
  add_spm_convention_option(cmd, o->spm);
  cmd->add_option("-n,--max-new-tokens", o->n, "tokens to generate at most (fewer at EOS or the model's context)")
      ->check(CLI::PositiveNumber);
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  add_device_option(cmd, o->device);
  add_packed_options(cmd, o->packed);
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
