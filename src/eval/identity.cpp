#include "eval/identity.h"

#include "core/version.h"

#include <fmt/format.h>

#include <filesystem>

namespace lowbit {

using json = nlohmann::json;

json fp16_method() {
  return {{"spec", "fp16"}, {"name", "fp16"}, {"resolved", "fp16"}, {"weight_bits", 16}, {"activation_bits", 16},
          {"group_size", -1}};
}

json model_identity(const Checkpoint& ck, const std::string& name, const std::string& path,
                    const std::string& weights_sha256, const Tokenizer& tok, const std::string& spm) {
  return {{"name", name},
          {"path", path},
          {"format", ck.format},
          {"weights_sha256", weights_sha256},
          {"dtype", ck.config.torch_dtype},
          {"parameters", ck.config.parameter_count()},
          {"tokenizer", {{"path", ck.tokenizer_path}, {"kind", tok.kind()}, {"spm", spm}}}};
}

json method_part(const Checkpoint& ck) {
  const json& q = ck.quantization;
  if (q.is_null())
    return {{"method", fp16_method()}, {"calibration", nullptr}, {"activation", nullptr}, {"source_model", nullptr}};
  return {{"method", q.value("method", json(nullptr))},
          {"calibration", q.value("calibration", json(nullptr))},
          {"activation", q.value("activation", json(nullptr))},
          {"source_model", q.value("source", json(nullptr))}};
}

json files_json(const std::vector<DatasetFile>& files) {
  json out = json::array();
  for (const auto& f : files) out.push_back({{"path", f.path}, {"sha256", f.sha256}});
  return out;
}

namespace {
std::string with_spm(std::string key, const std::string& spm) { return spm == "auto" ? key : key + ",spm=" + spm; }
}  // namespace

std::string perplexity_key(const std::string& set, int64_t seqlen, int64_t limit, const std::string& bos,
                           const std::string& spm) {
  return with_spm(fmt::format("{}:seqlen={},limit={},bos={}", set, seqlen, limit, bos), spm);
}

std::string multiple_choice_key(const std::string& task, int64_t limit, const std::string& bos, int64_t max_length,
                                int mmlu_shots, const std::string& spm) {
  std::string key = fmt::format("{}:limit={},bos={},max_length={}", task, limit, bos, max_length);
  if (task.starts_with("mmlu")) key += fmt::format(",shots={}", mmlu_shots);
  return with_spm(key, spm);
}

json perplexity_identity(const TextSet& set, const PerplexitySettings& s, const PerplexityResult& r) {
  return {{"name", set.name},       {"key", s.key},     {"kind", "perplexity"},
          {"convention", set.convention},
          {"files", files_json(set.files)},
          {"seqlen", s.seqlen},     {"windows", r.windows},
          {"windows_available", s.windows_available},
          {"limit", s.limit},       {"tokens", r.tokens}, {"bos", s.bos},
          {"mean_nll", r.mean_nll}};
}

std::string kl_divergence_key(const std::string& set, int64_t seqlen, int64_t limit, const std::string& bos,
                              const std::string& spm) {
  return "kld:" + perplexity_key(set, seqlen, limit, bos, spm);
}

json kl_divergence_identity(const TextSet& set, const PerplexitySettings& s, const KlDivergenceResult& r,
                            const json& base) {
  json j = perplexity_identity(set, s, r.ppl);
  j["kind"] = "kl_divergence";
  j["base"] = base;
  j["base_mean_nll"] = r.base_ppl.mean_nll;
  j["positions"] = r.kld.positions;
  j["definition"] = "KLD(base || model) in nats per position 0..T-2 of each window, log-softmax in float64; "
                    "percentiles by linear interpolation; top-1: argmax agreement";
  return j;
}

json multiple_choice_identity(const McTask& t, const MultipleChoiceSettings& s, const McResult& r) {
  const json files = files_json(t.files);
  // MMLU's 57 subjects have 228 files: their count stands for them.
  return {{"name", t.name},
          {"key", s.key},
          {"kind", "multiple_choice"},
          {"split", t.split},
          {"convention", t.convention},
          {"files", files.size() <= 4 ? files : json(files.size())},
          {"n", r.n},
          {"limit", s.limit},
          {"limit_per", s.limit_per_subject ? "subject" : "task"},
          {"bos", s.bos},
          {"max_length", s.max_length},
          {"num_fewshot", t.num_fewshot},
          {"tokens_run", r.tokens_run},
          {"tokens_requested", r.tokens_requested}};
}

const char* compute_dtype(bool gpu) {
  return gpu ? "bfloat16 GEMMs, float32 accumulation and residual" : "float32";
}

json runtime_part(const RuntimeFacts& f) {
  json j = {{"seconds", f.seconds},
            {"peak_rss_bytes", f.peak.bytes},
            {"peak_rss_scope", f.peak.scope},
            {"device", f.device},
            {"cpu", cpu_model()},
            {"threads", f.threads},
            {"compute_dtype", compute_dtype(f.gpu)},
            {"lowbit", {{"version", kVersion}, {"commit", kGitCommit}}}};
  if (f.peak_gpu_bytes) j["peak_gpu_bytes"] = *f.peak_gpu_bytes;
  return j;
}

json result_identity(const json& model, const json& method, const json& evaluation, const json& runtime) {
  json j = {{"model", model}, {"evaluation", evaluation}};
  for (auto it = method.begin(); it != method.end(); ++it) j[it.key()] = it.value();
  for (auto it = runtime.begin(); it != runtime.end(); ++it) j[it.key()] = it.value();
  return j;
}

std::string model_display_name(const std::string& path) {
  std::filesystem::path p(path);
  if (!p.has_filename()) p = p.parent_path();  // "dir/"
  return p.filename().string();
}

}  // namespace lowbit
