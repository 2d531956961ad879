// lowbit export QUANTIZED_DIR --format gptq|awq|compressed-tensors|gguf|hf -o OUT
// Writes a lowbit quantized checkpoint in a format inference engines load (src/export/export.h).
#include "commands.h"

#include "core/error.h"
#include "export/export.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace lowbit::cli {

namespace {

struct Options {
  std::string in;
  ExportOptions e;
  bool json = false;
};

void run(const Options& o) {
  const ExportSummary s = export_model(o.in, o.e);
  if (o.json) {
    const nlohmann::json j = {{"format", s.format},          {"out", s.out},
                              {"linears_packed", s.linears_packed}, {"linears_dense", s.linears_dense},
                              {"max_abs_diff", s.max_abs_diff}, {"max_diff_tensor", s.max_diff_tensor},
                              {"notes", s.notes}};
    fmt::print("{}\n", j.dump());
    return;
  }
  fmt::print("wrote {} ({}): {} linears packed, {} dense\n", s.out, s.format, s.linears_packed, s.linears_dense);
  for (const std::string& n : s.notes) fmt::print("  {}\n", n);
  fmt::print("largest difference from the fake-quant weights: {:.3g}{}\n", s.max_abs_diff,
             s.max_abs_diff > 0 ? fmt::format(" ({}; scales rounded to the format's type)", s.max_diff_tensor)
                                : std::string(" (exact)"));
}

std::string format_list() {
  std::string out;
  for (const ExportFormat* f : export_formats()) out += fmt::format("\n  {:<19} {}", f->name, f->summary);
  return out;
}

}  // namespace

void register_export(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand(
      "export",
      "Write a quantized checkpoint in a format inference engines load (codes and zero-points unchanged)." +
          format_list() +
          "\nA linear whose layout the format cannot hold is refused with the formats that can hold it, or written "
          "dense with --dequantize (compressed-tensors, gguf). OUT must not exist; nothing is left behind on error.");
  cmd->add_option("QUANTIZED_DIR", o->in,
                  "quantized checkpoint written by `lowbit quantize` (--format hf also takes a model that is not "
                  "quantized, e.g. a .gguf file, and writes its weights as lowbit reads them)")
      ->required();
  cmd->add_option("--format", o->e.format, "gptq, awq, compressed-tensors, gguf or hf")->required();
  cmd->add_option("-o,--output", o->e.out, "output directory (a .gguf file for gguf); must not exist")->required();
  cmd->add_flag("--dequantize", o->e.dequantize,
                "write linears the format cannot hold as dense weights instead of refusing");
  cmd->add_option("--dtype", o->e.dtype,
                  "type of the dense tensors: f16, bf16 or f32 (default: the model's; f16 for gptq and awq)");
  cmd->add_option("--scale-dtype", o->e.scale_dtype, "compressed-tensors: type of weight_scale (f32 exact; f16, bf16)");
  cmd->add_option("--gptq-format", o->e.gptq_format,
                  "gptq: v1 (checkpoint_format gptq, qzeros hold zero - 1) or v2 (gptq_v2, qzeros hold zero)");
  cmd->add_flag("--json", o->json, "print one JSON object with the result");
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
