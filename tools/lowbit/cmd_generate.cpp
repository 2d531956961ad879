// lowbit generate --model M --prompt S -n N: greedy decoding.
#include "commands.h"

#include "backend/ops.h"
#include "core/error.h"
#include "quant/quantize.h"
#include "formats/tokenizer.h"
#include "model/llama_model.h"

#include <fmt/format.h>

#include <algorithm>

namespace lowbit::cli {

namespace {

struct Options {
  std::string model, prompt;
  int64_t n = 64;
  int threads = 0;
};

void run(const Options& o) {
  set_num_threads(o.threads);
  Checkpoint ck = open_model(o.model);
  LB_CHECK(!ck.tokenizer_path.empty(), "model '{}' has no tokenizer beside it", o.model);
  auto tok = load_tokenizer(ck.tokenizer_path);
  LlamaModel model(std::move(ck));
  install_quantized_forward(model);
  std::vector<int32_t> ids = tok->encode(o.prompt, BosMode::On);
  const size_t prompt_len = ids.size();
  const int64_t max_len = model.config().max_position_embeddings;
  LB_CHECK(int64_t(prompt_len) < max_len, "prompt has {} tokens; the model's context is {}", prompt_len, max_len);
  std::string shown;
  fmt::print("{}", o.prompt);
  for (int64_t step = 0; step < o.n && int64_t(ids.size()) < max_len; ++step) {
    // The whole context is recomputed each step (no KV cache): fine for small models and short runs.
    Tensor logits = model.forward(ids);
    const float* last = logits.data_as<float>() + (logits.dim(0) - 1) * logits.dim(1);
    const int32_t next = int32_t(std::max_element(last, last + logits.dim(1)) - last);
    const auto& eos = model.config().eos_token_ids;
    if (std::find(eos.begin(), eos.end(), next) != eos.end()) break;
    ids.push_back(next);
    const std::string text = tok->decode(std::span<const int32_t>(ids).subspan(prompt_len));
    // Print what the new token added (decoding the whole continuation keeps multi-byte
    // characters and leading-space rules right).
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
      fmt::print("{}", text.substr(shown.size()));
      std::fflush(stdout);
    }
    shown = text;
  }
  fmt::print("\n");
}

}  // namespace

void register_generate(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("generate", "Greedy text generation");
  cmd->add_option("--model", o->model, "model directory or checkpoint")->required();
  cmd->add_option("--prompt", o->prompt, "prompt text (BOS is prepended)");
  cmd->add_option("-n", o->n, "tokens to generate")->check(CLI::PositiveNumber);
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
