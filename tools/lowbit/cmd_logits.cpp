// lowbit logits --model M (--text S [--bos auto|on|off] [--spm-convention C] | --ids I,J,...) -o OUT.safetensors
// The fp32 logits of one sequence, for parity checks against other implementations.
#include "commands.h"

#include "backend/ops.h"
#include "core/error.h"
#include "quant/lowbit_checkpoint.h"
#include "eval/eval_session.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "model/llama_model.h"

#include <fmt/format.h>


namespace lowbit::cli {

namespace {

struct Options {
  std::string model, text, ids, out, device = "cpu", bos = "auto", spm = "auto", adapter;
  int threads = 0;
};

void run(const Options& o) {
  set_num_threads(o.threads);
  const auto session = open_eval_session(lowbit::parse_device(o.device));  // checked before any work
  Checkpoint ck = open_model(o.model);
  std::vector<int32_t> ids;
  if (!o.ids.empty()) {
    ids = parse_token_ids(o.ids);
  } else {
    LB_CHECK(!ck.tokenizer_path.empty(), "model '{}' has no tokenizer; pass --ids", o.model);
    TokenizerOptions topt;
    topt.spm = parse_spm_convention(o.spm);
    ids = load_tokenizer(ck.tokenizer_path, topt)->encode(o.text, parse_bos_mode(o.bos));
  }
  LB_CHECK(!ids.empty(), "no input tokens");
  check_adapter_device(o.adapter, session->device().is_cuda());
  LlamaModel model(std::move(ck));
  install_quantized_forward(model);
  apply_adapter(model, o.adapter);
  const Tensor logits = session->place(model)->logits(ids);
  Tensor tokens = Tensor::empty(DType::I32, {int64_t(ids.size())});
  std::copy(ids.begin(), ids.end(), tokens.mutable_data_as<int32_t>());
  SafetensorsWriter w;
  w.add("logits", logits);
  w.add("tokens", tokens);
  w.set_metadata("model", o.model);
  w.write(o.out);
  fmt::print(stderr, "logits [{}, {}] written to {}\n", logits.dim(0), logits.dim(1), o.out);
}

}  // namespace

void register_logits(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("logits", "Write the fp32 logits of one sequence to a safetensors file");
  cmd->add_option("--model", o->model, "model directory or checkpoint")->required();
  add_adapter_option(cmd, o->adapter);
  auto* text = cmd->add_option("--text", o->text, "text (tokenized with the model's tokenizer)");
  auto* ids = cmd->add_option("--ids", o->ids, "comma-separated token ids");
  text->excludes(ids);
  add_bos_option(cmd, o->bos, "--text");
  add_spm_convention_option(cmd, o->spm);
  cmd->add_option("-o,--output", o->out, "output .safetensors (tensors 'logits' [T, V] F32 and 'tokens' [T] I32)")
      ->required();
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  add_device_option(cmd, o->device);
  cmd->callback([o, text, ids] {
    LB_CHECK(text->count() + ids->count() == 1, "logits: give exactly one of --text or --ids");
    run(*o);
  });
}

}  // namespace lowbit::cli
