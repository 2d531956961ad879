// lowbit generate --model M --prompt S -n N [--device cpu|cuda[:N]]: greedy decoding with a KV
// cache (the prompt in one forward, then one token per step).
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
#include <functional>

namespace lowbit::cli {

namespace {

struct Options {
  std::string model, prompt, device = "cpu";
  int64_t n = 64;
  int threads = 0;
};

// Runs `tokens` after those the model has seen and returns the argmax of the last position's
// logits.
using Step = std::function<int32_t(std::span<const int32_t> tokens)>;

int32_t argmax(const float* x, int64_t n) { return int32_t(std::max_element(x, x + n) - x); }

void decode(const Options& o, const Tokenizer& tok, const LlamaConfig& c, std::vector<int32_t> ids, const Step& step) {
  const size_t prompt_len = ids.size();
  std::string shown;
  fmt::print("{}", o.prompt);
  int32_t next = step(ids);
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
    if (n + 1 < o.n && int64_t(ids.size()) < c.max_position_embeddings) next = step(std::span<const int32_t>(&ids.back(), 1));
  }
  fmt::print("\n");
}

void run(const Options& o) {
  set_num_threads(o.threads);
  const DeviceChoice dev = parse_device(o.device);
  Checkpoint ck = open_model(o.model);
  LB_CHECK(!ck.tokenizer_path.empty(), "model '{}' has no tokenizer beside it", o.model);
  auto tok = load_tokenizer(ck.tokenizer_path);
  LlamaModel model(std::move(ck));
  install_quantized_forward(model);
  const LlamaConfig& c = model.config();
  std::vector<int32_t> ids = tok->encode(o.prompt, BosMode::On);
  const int64_t max_len = c.max_position_embeddings, H = c.hidden_size, V = c.vocab_size;
  LB_CHECK(int64_t(ids.size()) < max_len, "prompt has {} tokens; the model's context is {}", ids.size(), max_len);
  const int64_t capacity = std::min<int64_t>(max_len, int64_t(ids.size()) + o.n);
#ifdef LOWBIT_WITH_CUDA
  if (dev.cuda) {
    cuda::Context ctx(dev.index);
    CudaModel gpu(model, ctx);
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
  cmd->add_option("--prompt", o->prompt, "prompt text (BOS is prepended)");
  cmd->add_option("-n", o->n, "tokens to generate")->check(CLI::PositiveNumber);
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  add_device_option(cmd, o->device);
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
