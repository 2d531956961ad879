// lowbit generate --model M --prompt S [-n,--max-new-tokens N] [--bos auto|on|off] [--spm-convention C]
//                 [--device cpu|cuda[:N]] [--packed [--packed-act q8|f32]]: greedy decoding with a KV cache (the prompt in one
// forward, then one token per step). Prints the prompt's and the decode steps' speed on stderr.
#include "commands.h"

#include "backend/ops.h"
#include "core/error.h"
#include "formats/tokenizer.h"
#include "model/llama_model.h"
#include "quant/lowbit_checkpoint.h"
#ifdef LOWBIT_WITH_CUDA
#include "model/cuda_model.h"
#endif

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

int32_t argmax(const float* x, int64_t n) { return int32_t(std::max_element(x, x + n) - x); }

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
  const DeviceChoice dev = parse_device(o.device);
  Checkpoint ck = open_model(o.model);
  LB_CHECK(!ck.tokenizer_path.empty(), "model '{}' has no tokenizer beside it", o.model);
  TokenizerOptions topt;
  topt.spm = parse_spm_convention(o.spm);
  auto tok = load_tokenizer(ck.tokenizer_path, topt);
  LlamaModel model(std::move(ck));
  // Decode reads every weight once per token: 16-bit weights stay 16-bit (half the bytes).
  if (!dev.cuda) model.set_keep_16bit_weights(true);
  install_quantized_forward(model);
  apply_packed(o.packed, model, dev.cuda, false);
  const LlamaConfig& c = model.config();
  std::vector<int32_t> ids = tok->encode(o.prompt, parse_bos_mode(o.bos));
  LB_CHECK(!ids.empty(), "the prompt has no tokens (empty prompt with --bos {}); give --prompt or --bos on", o.bos);
  const int64_t max_len = c.max_position_embeddings, H = c.hidden_size, V = c.vocab_size;
  LB_CHECK(int64_t(ids.size()) < max_len, "prompt has {} tokens; the model's context is {}", ids.size(), max_len);
  const int64_t capacity = std::min<int64_t>(max_len, int64_t(ids.size()) + o.n);
#ifdef LOWBIT_WITH_CUDA
  if (dev.cuda) {
    cuda::Context ctx(dev.index);
    CudaModel gpu(model, ctx, std::nullopt, gpu_packed_linears(model, ctx.stream()));
    GpuKvCache cache = gpu.make_kv_cache(capacity);
    cuda::DeviceBuffer<cuda::bf16> normed;
    cuda::DeviceBuffer<float> logits(static_cast<size_t>(V));
    std::vector<float> host(static_cast<size_t>(V));
    decode(o, *tok, c, ids, [&](std::span<const int32_t> tokens) {
      gpu.forward_cached(tokens, cache, normed);
      gpu.lm_head(normed.get() + (int64_t(tokens.size()) - 1) * H, logits.get(), 1);
      cuda::download(host.data(), logits.get(), size_t(V), ctx.stream());
      return argmax(host.data(), V);
    });
    return;
  }
#endif
  KvCache cache = model.make_kv_cache(capacity);
  std::vector<float> hidden, logits(static_cast<size_t>(V));
  decode(o, *tok, c, ids, [&](std::span<const int32_t> tokens) {
    hidden.resize(tokens.size() * size_t(H));
    model.forward_cached(tokens, cache, hidden.data());
    model.lm_head(hidden.data() + (int64_t(tokens.size()) - 1) * H, 1, logits.data());
    return argmax(logits.data(), V);
  });
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
