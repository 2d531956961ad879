// lowbit quantize --model M --method SPEC [--calib SET] [--nsamples 128] [--seqlen 2048] [--seed 0]
//                 [--data-dir D] [--bos auto|on|off] [--spm-convention C] [--language-model-only]
//                 [--device D] [--json] (-o OUT | --no-save)
// --json prints quantize_seconds (the whole quantization) and block_seconds (each decoder block).
// A LLaVA-Next directory has its language model quantized (calibrated on text through the LLM
// alone) and is written whole, the vision tower and projector as stored
// (quant/llava_next_quantized.h); --language-model-only writes the LLM part alone.
#include "commands.h"
#include "progress.h"

#include "backend/ops.h"
#include "calib/calib_data.h"
#include "core/error.h"
#include "core/phase_profile.h"
#include "core/process.h"
#include "formats/llava_next_checkpoint.h"
#include "formats/tokenizer.h"
#include "core/version.h"
#include "quant/llava_next_quantized.h"
#include "quant/quantize_device.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <vector>

namespace lowbit::cli {

namespace {

struct Options {
  std::string model, method, out, device = "cpu";
  CalibrationFlags cal;
  int threads = 0;
  bool force = false, json = false, no_save = false, language_model_only = false;
};

void run(const Options& o) {
  set_num_threads(o.threads);
  const auto t0 = std::chrono::steady_clock::now();
  auto method = make_method(o.method);  // bad specs fail before any work
  const Device dev = lowbit::parse_device(o.device);
  check_quantize_device(*method, dev);
  LB_CHECK(o.no_save != !o.out.empty(), "give either -o OUT or --no-save");
  LB_CHECK(o.no_save || !std::filesystem::exists(o.out) || o.force, "output '{}' exists; remove it or pass --force",
           o.out);
  Checkpoint ck = open_model(o.model);
  LB_CHECK(ck.quantization.is_null(), "model '{}' is already quantized ({}); quantize its 16-bit source", o.model,
           ck.quantization["method"]["spec"].get<std::string>());
  const bool llava = ck.format == "llava-next-language-model";
  LB_CHECK(llava || !o.language_model_only, "--language-model-only: model '{}' is not a LLaVA-Next model (format "
           "{})", o.model, ck.format);
  method->check_shapes(ck.config);  // e.g. a group size that does not divide a linear's width
  // A LLaVA-Next model is written whole: its vision parts are checked before any work.
  std::vector<std::string> kept;
  if (llava && !o.language_model_only) kept = check_llava_next_source(o.model);
  Calibration calib;
  if (method->needs_calibration()) calib = load_calibration(o.cal, ck, o.model);
  LlamaModel model(std::move(ck));
  const LlamaConfig& c = model.config();
  if (!o.json) {
    fmt::print(stderr, "quantize: {} with {} ({})\n", o.model, method->spec().text(), method->spec().resolved());
    if (llava)
      fmt::print(stderr, "LLaVA-Next: its language model is quantized (calibration text through the LLM alone); {}\n",
                 o.language_model_only ? "written alone as a LLaMA checkpoint (--language-model-only)"
                                       : fmt::format("the vision tower, projector and image_newline ({} tensors) are "
                                                     "kept as stored", kept.size()));
    if (method->needs_calibration())
      fmt::print(stderr, "calibration: {} ({}), {} windows of {} tokens, seed {}\n", calib.set.name,
                 calib.set.convention, calib.nsamples, calib.seqlen, calib.seed);
    else
      fmt::print(stderr, "calibration: none (data-free method)\n");
  }
  DriverCallbacks cb;
  cb.on_linear = [&](int64_t layer, const LinearReport& r) {
    if (o.json) return;
    const Tensor& w = model.checkpoint().weights->get(linear_weight_name(layer, r.kind));
    std::string line = fmt::format("  [{:>3}/{}] {:<9} {:<13} weight err {:.4f}", layer + 1, c.num_hidden_layers,
                                   linear_name(r.kind), w.shape_str(), r.weight_rel_err);
    if (r.output_rel_err >= 0) line += fmt::format("  output err {:.5f}", r.output_rel_err);
    line += fmt::format("  {:.2f} s", r.seconds);
    if (!r.note.empty()) line += "  " + r.note;
    fmt::print(stderr, "{}\n", line);
  };
  cb.on_note = [&](int64_t layer, const std::string& s) {
    if (!o.json) fmt::print(stderr, "  [{:>3}/{}] {}\n", layer + 1, c.num_hidden_layers, s);
  };
  // Each decoder block's seconds (its statistics, quantization and propagation), reported by --json
  // so that benchmarks can time a method per layer.
  std::vector<double> block_seconds;
  cb.on_block_done = [&](int64_t layer, int64_t layers, double seconds) {
    block_seconds.push_back(seconds);
    if (o.json) return;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double eta = elapsed / double(layer + 1) * double(layers - layer - 1);
    fmt::print(stderr, "block {}/{} done, {} elapsed, ETA {}\n", layer + 1, layers, format_duration(elapsed),
               format_duration(eta));
  };
  QuantizeRun run;
  QuantizedModel qm = quantize_model_on(dev, model, *method, &calib, cb, &run);
  if (!o.json && dev.is_cuda())
    fmt::print(stderr, "device: {}{}\n", run.device_name, run.note.empty() ? "" : " (" + run.note + ")");
  const std::string device_name = run.device_name;
  const double gpu_peak = run.peak_gpu_bytes;
  double bits = 0, weights = 0;
  for (const auto& b : qm.blocks)
    for (const auto& l : b.linear) {
      bits += l->bits_per_weight() * double(l->rows * l->cols);
      weights += double(l->rows * l->cols);
    }
  const nlohmann::json extra = {{"peak_rss_bytes", peak_rss_bytes()}, {"threads", num_threads()},
                                {"device", device_name}, {"peak_gpu_bytes", gpu_peak}};
  uintmax_t out_bytes = 0;
  if (!o.no_save) {
    if (llava && !o.language_model_only) write_quantized_llava_next(o.out, o.model, model, qm, extra, o.force);
    else write_quantized_checkpoint(o.out, model, qm, extra, o.force);
    for (const auto& e : std::filesystem::directory_iterator(o.out))
      if (e.is_regular_file()) out_bytes += e.file_size();
  }
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  print_phase_profile();
  if (o.json) {
    nlohmann::json j = {{"output", o.out}, {"method", qm.method}, {"calibration", qm.calibration},
                        {"quantize_seconds", qm.seconds}, {"block_seconds", block_seconds}, {"wall_seconds", wall},
                        {"linear_bits_per_weight", bits / weights}, {"output_bytes", out_bytes},
                        {"peak_rss_bytes", peak_rss_bytes()}, {"threads", num_threads()},
                        {"device", device_name}, {"peak_gpu_bytes", gpu_peak},
                        {"lowbit", {{"version", kVersion}, {"commit", kGitCommit}}}};
    if (phase_profile_enabled()) {
      nlohmann::json phases = nlohmann::json::array();
      for (const PhaseTotal& p : phase_profile_totals())
        phases.push_back({{"phase", p.name}, {"seconds", p.seconds}, {"count", p.count}});
      j["phases"] = phases;
    }
    fmt::print("{}\n", j.dump(1));
    return;
  }
  fmt::print("{}: {:.3f} bits per linear weight, {} on disk; quantized in {:.1f} s ({:.1f} s in all) on {}, "
             "peak memory {}{}\n",
             o.no_save ? std::string("not saved") : "wrote " + o.out, bits / weights, human_bytes(double(out_bytes)), qm.seconds, wall, device_name,
             human_bytes(double(peak_rss_bytes())),
             gpu_peak > 0 ? fmt::format(", peak GPU memory {}", human_bytes(gpu_peak)) : "");
}

}  // namespace

void register_quantize(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("quantize", "Quantize a model with one method and write the quantized checkpoint");
  cmd->add_option("--model", o->model, "model directory or checkpoint (16-bit)")->required();
  cmd->add_option("--method", o->method, "method spec, e.g. gptq:w=4,g=128 (see `lowbit methods`)")->required();
  cmd->add_option("-o,--output", o->out, "output directory");
  cmd->add_flag("--no-save", o->no_save, "quantize and report without writing a checkpoint (measurements)");
  cmd->add_flag("--language-model-only", o->language_model_only,
                "for a LLaVA-Next model: write its quantized language model alone, as a LLaMA checkpoint (by "
                "default the vision tower and projector are written beside it, as stored)");
  add_calibration_options(cmd, o->cal);
  cmd->add_option("--threads", o->threads, "CPU threads (0: all cores)")->check(CLI::NonNegativeNumber);
  cmd->add_flag("--force", o->force, "replace the output directory if it exists");
  add_device_option(cmd, o->device);
  cmd->add_flag("--json", o->json, "print one JSON object with the result instead of progress");
  cmd->callback([o] { run(*o); });
}

void register_methods(CLI::App& app) {
  CLI::App* cmd = app.add_subcommand("methods", "List the quantization methods and their options");
  cmd->callback([] {
    for (const MethodInfo& m : method_registry()) {
      auto method = make_method(m.name);
      std::vector<std::string> devices;
      for (Device::Kind k : {Device::Kind::Cpu, Device::Kind::Cuda})
        if (method->runs_on(k)) devices.emplace_back(device_kind_name(k));
      fmt::print("{} ({}){}\n", m.name, m.display, m.baseline ? ": the 16-bit model itself" : "");
      if (m.baseline) continue;
      fmt::print("    devices: {}{}\n", fmt::join(devices, ", "),
                 method->needs_calibration() ? "" : " (data-free: quantized on the host)");
      fmt::print("    example: {}\n", m.example);
      fmt::print("    grid axes (the paper's): {}\n", m.grid_axes.empty() ? "none" : fmt::format("{}", fmt::join(m.grid_axes, ", ")));
      for (const auto& line : method_help(m.name)) fmt::print("    {}\n", line);
    }
  });
}

}  // namespace lowbit::cli
