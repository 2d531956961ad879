// lowbit: low-bit quantization of LLaMA-family models, and what it costs.
#include "commands.h"

#include "core/error.h"
#include "core/version.h"

#include <fmt/format.h>

#include <cstdio>

int main(int argc, char** argv) {
  CLI::App app{"lowbit: quantize LLaMA-family models at 1-8 bits and measure what it costs"};
  app.set_version_flag("--version", std::string(lowbit::kVersion) + " (" + lowbit::kGitCommit + ")");
  app.require_subcommand(1);
  app.option_defaults()->always_capture_default();
  lowbit::cli::register_inspect(app);
  lowbit::cli::register_tokenize(app);
  lowbit::cli::register_ppl(app);
  lowbit::cli::register_generate(app);
  lowbit::cli::register_logits(app);
  lowbit::cli::register_quantize(app);
  lowbit::cli::register_methods(app);
  lowbit::cli::register_stats(app);
  lowbit::cli::register_eval(app);
  lowbit::cli::register_study(app);
  lowbit::cli::register_report(app);
  lowbit::cli::register_export(app);
  lowbit::cli::register_store(app);
  lowbit::cli::register_finetune(app);
  lowbit::cli::register_vlm(app);
  lowbit::cli::register_vlm_eval(app);
  lowbit::cli::register_distill(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const lowbit::Error& e) {
    std::fflush(stdout);
    fmt::print(stderr, "lowbit: error: {}\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fflush(stdout);
    fmt::print(stderr, "lowbit: error: {}\n", e.what());
    return 1;
  }
  return 0;
}
