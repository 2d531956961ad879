// lowbit vlm-generate --model DIR --image F [--image F ...] (--prompt Q | --ids I,J,...) [-n N]
//                     [--device cpu|cuda[:N]] [--packed [--packed-act q8|f32] [--packed-head stored|q8]]
// lowbit vlm-logits   --model DIR --image F [--image F ...] (--prompt Q | --ids I,J,...) -o OUT.safetensors
//                     [--device cpu|cuda[:N]] [--packed [--packed-act q8|f32] [--packed-head stored|q8]]
// A LLaVA-Next checkpoint (LlavaNextForConditionalGeneration, or one whose language model `lowbit
// quantize` quantized: quant/llava_next_quantized.h) with images, on the CPU (fp32) or a GPU (the
// vision tower, projector and language model in bf16: model/llava_next_device.h). A quantized
// language model runs as its dequantized (fake-quant) weights, or with --packed from its packed
// codes, as `generate --packed` runs a text model (the CPU's packed kernels, or on a GPU the W4A16
// GEMM and the low-bit GEMV); the vision tower and the projector run as stored either way, and
// --packed on a 16-bit LLaVA-Next is refused. vlm-logits records the execution ("fake-quant",
// "packed-q8", "packed-w4a16", ...) in the output's metadata "execution". --prompt is
// a question put in LLaVA-NeXT's LLaMA-3 conversation (model/llava_prompt.h) with one <image> line
// per image; --ids are token ids already holding each image's image tokens (as transformers'
// processor writes input_ids). Every image is decoded and preprocessed before the model runs, so a
// bad file is reported before any work and nothing is written.
#include "commands.h"

#include "backend/device_check.h"
#include "backend/ops.h"
#include "core/device.h"
#include "core/error.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "model/llava_next.h"
#include "model/llava_next_device.h"
#include "model/llava_prompt.h"
#include "quant/llava_next_quantized.h"
#include "vision/image.h"
#include "vision/image_processor.h"

#include <fmt/format.h>

#include <chrono>

namespace lowbit::cli {

namespace {

struct Options {
  std::string model, prompt, ids, out, device = "cpu";
  std::vector<std::string> images;
  int64_t n = 64;
  int threads = 0;
  PackedFlags packed;
};

// The model, the images preprocessed, the prompt's ids and its tokenizer (null with --ids), and
// the model placed on --device with its language model's execution (apply_packed's name).
struct Inputs {
  std::unique_ptr<LlavaNextModel> model;
  std::unique_ptr<LlavaNextRunner> runner;
  std::string execution;
  bool gpu = false;
  std::vector<vision::ProcessedImage> images;
  std::vector<int32_t> ids;
  std::unique_ptr<Tokenizer> tok;
};

Inputs prepare(const Options& o) {
  set_num_threads(o.threads);
  const Device device = parse_device(o.device);
  check_device_available(device);  // before any work
  Inputs in;
  in.model = load_llava_next(o.model);  // 16-bit, or its language model quantized
  for (const std::string& path : o.images)
    in.images.push_back(vision::preprocess_llava_next(vision::read_image(path), in.model->processor()));
  in.gpu = device.is_cuda();
  // Before placing: on a GPU the packed linears are uploaded when the runner builds its model.
  in.execution = apply_packed(o.packed, in.model->language_model(), in.gpu, false);
  in.runner = place_llava_next(*in.model, device);
  if (!o.ids.empty()) {
    in.ids = parse_token_ids(o.ids);
    return in;
  }
  LB_CHECK(!in.model->tokenizer_path().empty(), "model '{}' has no tokenizer; pass --ids", o.model);
  in.tok = load_tokenizer(in.model->tokenizer_path());
  std::vector<int64_t> counts;
  for (const auto& im : in.images) counts.push_back(in.model->image_token_count(im.height, im.width));
  in.ids = tokenize_with_images(*in.tok, llava_llama3_prompt(o.prompt, int64_t(in.images.size())), counts,
                                int32_t(in.model->config().image_token_id));
  return in;
}

void run_generate(const Options& o) {
  Inputs in = prepare(o);
  // Decode on the CPU reads every weight once per token: 16-bit weights stay 16-bit (half the
  // bytes). The GPU holds its own bf16 copy. (Packed linears hold their codes whatever this says.)
  if (!in.gpu) in.model->language_model().set_keep_16bit_weights(true);
  std::vector<int64_t> stop = in.model->config().text.eos_token_ids;
  if (in.tok)
    for (const SpecialToken& s : in.tok->special_tokens())
      if (s.text == "<|eot_id|>") stop.push_back(s.id);  // the end of an assistant turn
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<int32_t> shown_ids;
  std::string shown;
  const auto out = in.runner->generate(in.ids, in.images, o.n, stop, [&](int32_t t) {
    if (!in.tok) return;
    if (std::find(stop.begin(), stop.end(), int64_t(t)) != stop.end()) return;
    shown_ids.push_back(t);
    const std::string text = in.tok->decode(shown_ids);
    if (text.size() > shown.size() && text.compare(0, shown.size(), shown) == 0) {
      fmt::print("{}", text.substr(shown.size()));
      std::fflush(stdout);
    }
    shown = text;
  });
  if (!in.tok) {
    std::string list;
    for (int32_t t : out) list += (list.empty() ? "" : ",") + std::to_string(t);
    fmt::print("{}", list);
  }
  fmt::print("\n");
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const auto peak = in.runner->peak_memory_bytes();
  fmt::print(stderr, "{} images, prompt {} tokens, {} new tokens in {:.2f} s on {}, {}{}\n", in.images.size(),
             in.ids.size(), out.size(), s, in.runner->device_name(), in.execution,
             peak ? fmt::format(" (peak GPU memory {:.2f} GiB)", *peak / double(1 << 30)) : std::string());
}

void run_logits(const Options& o) {
  Inputs in = prepare(o);
  const Tensor logits = in.runner->forward(in.ids, in.images);
  Tensor tokens = Tensor::empty(DType::I32, {int64_t(in.ids.size())});
  std::copy(in.ids.begin(), in.ids.end(), tokens.mutable_data_as<int32_t>());
  SafetensorsWriter w;
  w.add("logits", logits);
  w.add("tokens", tokens);
  w.set_metadata("model", o.model);
  w.set_metadata("device", in.runner->device_name());
  w.set_metadata("execution", in.execution);
  w.write(o.out);
  fmt::print(stderr, "logits [{}, {}] written to {}\n", logits.dim(0), logits.dim(1), o.out);
}

void add_common(CLI::App* cmd, Options& o, CLI::Option*& prompt, CLI::Option*& ids) {
  cmd->add_option("--model", o.model, "LLaVA-Next model directory (LlavaNextForConditionalGeneration)")->required();
  cmd->add_option("--image", o.images, "image file (PNG or JPEG); repeat for several, in prompt order")
      ->required()
      ->check(CLI::ExistingFile);
  prompt = cmd->add_option("--prompt", o.prompt, "question, put in LLaVA-NeXT's LLaMA-3 conversation");
  ids = cmd->add_option("--ids", o.ids, "comma-separated token ids already holding the image tokens");
  prompt->excludes(ids);
  cmd->add_option("--threads", o.threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  add_device_option(cmd, o.device);
  add_packed_options(cmd, o.packed);
}

}  // namespace

void register_vlm(CLI::App& app) {
  {
    auto o = std::make_shared<Options>();
    CLI::App* cmd = app.add_subcommand("vlm-generate", "Greedy generation of a LLaVA-Next model about images");
    CLI::Option *prompt = nullptr, *ids = nullptr;
    add_common(cmd, *o, prompt, ids);
    cmd->add_option("-n,--max-new-tokens", o->n, "tokens to generate at most (fewer at <|eot_id|> or EOS)")
        ->check(CLI::PositiveNumber);
    cmd->callback([o, prompt, ids] {
      LB_CHECK(prompt->count() + ids->count() == 1, "vlm-generate: give exactly one of --prompt or --ids");
      run_generate(*o);
    });
  }
  {
    auto o = std::make_shared<Options>();
    CLI::App* cmd = app.add_subcommand("vlm-logits", "Write the fp32 logits of a LLaVA-Next model on images and a "
                                                     "prompt to a safetensors file");
    CLI::Option *prompt = nullptr, *ids = nullptr;
    add_common(cmd, *o, prompt, ids);
    cmd->add_option("-o,--output", o->out, "output .safetensors (tensors 'logits' [T, V] F32 and 'tokens' [T] I32)")
        ->required();
    cmd->callback([o, prompt, ids] {
      LB_CHECK(prompt->count() + ids->count() == 1, "vlm-logits: give exactly one of --prompt or --ids");
      run_logits(*o);
    });
  }
}

}  // namespace lowbit::cli
