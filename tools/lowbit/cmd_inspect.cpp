// lowbit inspect PATH: what a checkpoint, safetensors file or tokenizer holds.
#include "commands.h"

#include "core/error.h"
#include "formats/checkpoint.h"
#include "formats/ggml_quants.h"
#include "formats/gguf.h"
#include "formats/random_weights.h"
#include "formats/safetensors.h"
#include "formats/tokenizer.h"
#include "quant/lowbit_checkpoint.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <filesystem>
#include <map>

namespace lowbit::cli {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

struct Options {
  std::string path;
  bool json = false;
  std::string spm = "auto";
};

json tokenizer_json(const Tokenizer& t, const std::string& file) {
  json j = {{"file", file}, {"kind", t.kind()}, {"vocab_size", t.vocab_size()},
            {"adds_bos_by_default", t.adds_bos_by_default()}};
  j["bos_id"] = t.bos_id() ? json(*t.bos_id()) : json(nullptr);
  j["eos_id"] = t.eos_id() ? json(*t.eos_id()) : json(nullptr);
  json sp = json::array();
  for (const auto& s : t.special_tokens()) sp.push_back({{"id", s.id}, {"text", s.text}, {"role", s.role}});
  j["special_tokens"] = sp;
  return j;
}

void print_tokenizer(const json& t) {
  fmt::print("tokenizer     {} ({})\n", t["kind"].get<std::string>(), t["file"].get<std::string>());
  auto tok = [&](const char* key) {
    if (t[key].is_null()) return std::string("none");
    const int id = t[key].get<int>();
    for (const auto& s : t["special_tokens"])
      if (s["id"] == id) return fmt::format("{} '{}'", id, escape_token(s["text"].get<std::string>()));
    return std::to_string(id);
  };
  fmt::print("vocab         {}\n", t["vocab_size"].get<int>());
  fmt::print("bos / eos     {} / {}; BOS added by default: {}\n", tok("bos_id"), tok("eos_id"),
             t["adds_bos_by_default"].get<bool>() ? "yes" : "no");
  const auto& sp = t["special_tokens"];
  std::string list;
  size_t shown = 0;
  for (const auto& s : sp) {
    if (shown == 12) break;
    list += fmt::format("{}{}={}", shown ? " " : "", escape_token(s["text"].get<std::string>()), s["id"].get<int>());
    ++shown;
  }
  if (sp.size() > shown) list += fmt::format(" ... ({} in all)", sp.size());
  fmt::print("special       {}\n", list.empty() ? "none" : list);
}

json weights_json(const WeightSource& w) {
  std::map<std::string, std::pair<int64_t, int64_t>> by_dtype;  // count, bytes
  int64_t params = 0, bytes = 0;
  for (const auto& name : w.names()) {
    const WeightInfo* i = w.info(name);
    int64_t n = 1;
    for (int64_t d : i->shape) n *= d;
    params += n;
    bytes += i->nbytes;
    auto& e = by_dtype[std::string(dtype_name(i->dtype))];
    e.first += 1;
    e.second += i->nbytes;
  }
  json d = json::object();
  for (const auto& [k, v] : by_dtype) d[k] = {{"tensors", v.first}, {"bytes", v.second}};
  return {{"tensors", w.names().size()}, {"parameters", params}, {"bytes", bytes}, {"dtypes", d},
          {"files", w.files()}};
}

void print_weights(const json& w) {
  fmt::print("tensors       {} in {} file(s), {}\n", w["tensors"].get<int64_t>(), w["files"].size(),
             human_bytes(double(w["bytes"].get<int64_t>())));
  fmt::print("parameters    {} ({:.1f} M)\n", w["parameters"].get<int64_t>(), double(w["parameters"].get<int64_t>()) / 1e6);
  std::string d;
  for (auto it = w["dtypes"].begin(); it != w["dtypes"].end(); ++it)
    d += fmt::format("{}{}: {} tensors, {}", d.empty() ? "" : "; ", it.key(), it.value()["tensors"].get<int64_t>(),
                     human_bytes(double(it.value()["bytes"].get<int64_t>())));
  fmt::print("dtypes        {}\n", d);
}

// What a GGUF file holds, whatever its architecture: version, tensor types, metadata.
json gguf_json(const GgufFile& f) {
  json types = json::object();
  for (const auto& t : f.tensors()) {
    json& e = types[std::string(ggml_type_name(t.type))];
    if (e.is_null()) e = {{"tensors", 0}, {"bytes", uint64_t(0)}};
    e["tensors"] = e["tensors"].get<int64_t>() + 1;
    e["bytes"] = e["bytes"].get<uint64_t>() + t.nbytes;
  }
  json meta = json::array();
  for (const auto& [key, v] : f.metadata()) meta.push_back({{"key", key}, {"value", GgufFile::describe(v)}});
  return {{"version", f.version()}, {"alignment", f.alignment()}, {"tensors", f.tensors().size()},
          {"architecture", f.get_string("general.architecture").value_or("")},
          {"name", f.get_string("general.name").value_or("")}, {"types", types}, {"metadata", meta}};
}

void print_gguf(const json& g) {
  fmt::print("gguf          version {}, alignment {}, {} tensors, {} metadata keys\n", g["version"].get<uint32_t>(),
             g["alignment"].get<uint32_t>(), g["tensors"].get<uint64_t>(), g["metadata"].size());
  fmt::print("gguf model    architecture '{}'{}\n", g["architecture"].get<std::string>(),
             g["name"].get<std::string>().empty() ? "" : fmt::format(", name '{}'", g["name"].get<std::string>()));
  std::string types;
  for (auto it = g["types"].begin(); it != g["types"].end(); ++it)
    types += fmt::format("{}{}: {} tensors, {}", types.empty() ? "" : "; ", it.key(), it.value()["tensors"].get<int64_t>(),
                         human_bytes(double(it.value()["bytes"].get<uint64_t>())));
  fmt::print("ggml types    {}\n", types.empty() ? "none" : types);
  for (const auto& m : g["metadata"])
    fmt::print("  {:<40} {}\n", m["key"].get<std::string>(), m["value"].get<std::string>());
}

void run(const Options& o) {
  TokenizerOptions topt;
  topt.spm = parse_spm_convention(o.spm);
  const fs::path p(o.path);
  LB_CHECK(fs::exists(p) || is_random_checkpoint(o.path), "'{}' does not exist", o.path);
  const std::string name = p.filename().string();
  const bool tokenizer_file = !fs::is_directory(p) && (p.extension() == ".json" || p.extension() == ".model" ||
                                                       (p.extension() == ".bin" && name.rfind("tok", 0) == 0));
  json out = {{"path", o.path}};
  std::shared_ptr<const GgufFile> gguf;
  if (p.extension() == ".gguf" && !fs::is_directory(p)) gguf = GgufFile::open(o.path);
  if (tokenizer_file) {
    out["tokenizer"] = tokenizer_json(*load_tokenizer(o.path, topt), o.path);
  } else if (p.extension() == ".safetensors" && !fs::exists(p.parent_path() / "config.json")) {
    auto f = SafetensorsFile::open(o.path);
    auto w = SafetensorsWeights::open(o.path);
    out["format"] = "safetensors";
    out["weights"] = weights_json(*w);
    out["metadata"] = f->metadata();
  } else if (gguf && gguf->get_string("general.architecture") != "llama") {
    // A GGUF lowbit cannot run: still show what it holds.
    out["format"] = "gguf";
    out["gguf"] = gguf_json(*gguf);
  } else {
    Checkpoint ck = open_model(o.path);
    const LlamaConfig& c = ck.config;
    out["format"] = ck.format;
    out["architecture"] = {
        {"name", "LlamaForCausalLM"}, {"layers", c.num_hidden_layers}, {"hidden_size", c.hidden_size},
        {"intermediate_size", c.intermediate_size}, {"heads", c.num_attention_heads},
        {"kv_heads", c.num_key_value_heads}, {"head_dim", c.head_dim}, {"vocab_size", c.vocab_size},
        {"max_position_embeddings", c.max_position_embeddings}, {"rms_norm_eps", c.rms_norm_eps},
        {"rope_theta", c.rope_theta}, {"rope_scaling", rope_type_name(c.rope_scaling.type)},
        {"rope_factor", c.rope_scaling.factor}, {"tie_word_embeddings", c.tie_word_embeddings},
        {"torch_dtype", c.torch_dtype}, {"config", c.source}};
    if (c.rope_scaling.type == RopeScaling::Type::Llama3) {
      out["architecture"]["rope_low_freq_factor"] = c.rope_scaling.low_freq_factor;
      out["architecture"]["rope_high_freq_factor"] = c.rope_scaling.high_freq_factor;
      out["architecture"]["rope_original_max_position_embeddings"] = c.rope_scaling.original_max_position_embeddings;
    }
    out["weights"] = weights_json(*ck.weights);
    if (gguf) out["gguf"] = gguf_json(*gguf);
    if (!ck.quantization.is_null()) {
      const json& q = ck.quantization;
      double bits = 0, weights = 0;
      for (const auto& [base, l] : q["linears"].items()) {
        const double n = l["rows"].get<double>() * l["cols"].get<double>();
        bits += l["bits_per_weight"].get<double>() * n;
        weights += n;
      }
      out["quantization"] = {{"method", q["method"]}, {"calibration", q["calibration"]}, {"source", q["source"]},
                             {"linear_bits_per_weight", weights > 0 ? bits / weights : 0.0},
                             {"lowbit", q["lowbit"]}, {"created", q["created"]}};
      if (q.contains("multimodal")) {
        // A quantized LLaVA-Next checkpoint (quant/llava_next_quantized.h): the weights above are its
        // language model and its vision parts, stored beside it.
        const json& mm = q["multimodal"];
        out["multimodal"] = {{"architecture", mm.value("architecture", std::string())},
                             {"calibration_input", mm.value("calibration_input", std::string())},
                             {"kept_tensors", mm.value("kept", json::array()).size()},
                             {"kept_bytes", mm.value("kept_bytes", int64_t(0))}};
      }
    }
    if (!ck.tokenizer_path.empty()) {
      try {
        out["tokenizer"] = tokenizer_json(*load_tokenizer(ck.tokenizer_path, topt), ck.tokenizer_path);
      } catch (const Error& e) {
        if (!gguf) throw;
        out["tokenizer_error"] = e.what();  // the weights are still worth showing
      }
    }
  }
  if (o.json) {
    fmt::print("{}\n", out.dump(1, ' ', false, json::error_handler_t::replace));  // GGUF strings may not be UTF-8
    return;
  }
  fmt::print("path          {}\n", o.path);
  if (out.contains("format")) fmt::print("format        {}\n", out["format"].get<std::string>());
  if (out.contains("architecture")) {
    const auto& a = out["architecture"];
    fmt::print("architecture  LlamaForCausalLM: {} layers, hidden {}, {} heads ({} KV, head_dim {}), "
               "intermediate {}, vocab {}\n",
               a["layers"].get<int64_t>(), a["hidden_size"].get<int64_t>(), a["heads"].get<int64_t>(),
               a["kv_heads"].get<int64_t>(), a["head_dim"].get<int64_t>(), a["intermediate_size"].get<int64_t>(),
               a["vocab_size"].get<int64_t>());
    std::string rope = fmt::format("theta {}, scaling {}", a["rope_theta"].get<double>(),
                                   a["rope_scaling"].get<std::string>());
    if (a["rope_scaling"] != "default") rope += fmt::format(" (factor {})", a["rope_factor"].get<double>());
    fmt::print("rope          {}; max positions {}; rms_norm_eps {}\n", rope,
               a["max_position_embeddings"].get<int64_t>(), a["rms_norm_eps"].get<double>());
    if (out.contains("gguf"))
      fmt::print("embeddings    {}; weights dequantized to float32 from the ggml types below\n",
                 a["tie_word_embeddings"].get<bool>() ? "tied" : "untied");
    else
      fmt::print("embeddings    {}; stored dtype {}\n", a["tie_word_embeddings"].get<bool>() ? "tied" : "untied",
                 a["torch_dtype"].get<std::string>().empty() ? "unspecified" : a["torch_dtype"].get<std::string>());
  }
  if (out.contains("quantization")) {
    const auto& q = out["quantization"];
    fmt::print("quantization  {} ({}), {:.3f} bits per linear weight stored; source {}\n",
               q["method"]["spec"].get<std::string>(), q["method"]["resolved"].get<std::string>(),
               q["linear_bits_per_weight"].get<double>(), q["source"]["path"].get<std::string>());
    if (!q["calibration"].is_null())
      fmt::print("calibration   {}: {} x {} tokens, seed {}\n", q["calibration"]["set"].get<std::string>(),
                 q["calibration"]["nsamples"].get<int64_t>(), q["calibration"]["seqlen"].get<int64_t>(),
                 q["calibration"]["seed"].get<uint64_t>());
  }
  if (out.contains("multimodal")) {
    const auto& mm = out["multimodal"];
    fmt::print("multimodal    {}: its language model quantized; vision tower, projector and image_newline "
               "kept as stored ({} tensors, {}); calibration input: {} through the language model alone\n",
               mm["architecture"].get<std::string>(), mm["kept_tensors"].get<int64_t>(),
               human_bytes(double(mm["kept_bytes"].get<int64_t>())), mm["calibration_input"].get<std::string>());
  }
  if (out.contains("weights")) print_weights(out["weights"]);
  if (out.contains("gguf")) print_gguf(out["gguf"]);
  if (out.contains("metadata") && !out["metadata"].empty()) fmt::print("metadata      {}\n", out["metadata"].dump());
  if (out.contains("tokenizer")) print_tokenizer(out["tokenizer"]);
  else if (out.contains("tokenizer_error")) fmt::print("tokenizer     not readable: {}\n", out["tokenizer_error"].get<std::string>());
  else if (out.contains("architecture")) fmt::print("tokenizer     none found\n");
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto o = std::make_shared<Options>();
  CLI::App* cmd = app.add_subcommand("inspect", "Show what a checkpoint, safetensors file or tokenizer holds");
  cmd->add_option("path", o->path, "model directory, .safetensors, .gguf, llama2.c .bin, or tokenizer file")->required();
  cmd->add_flag("--json", o->json, "print one JSON object");
  add_spm_convention_option(cmd, o->spm);
  cmd->callback([o] { run(*o); });
}

}  // namespace lowbit::cli
