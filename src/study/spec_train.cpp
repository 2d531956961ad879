// The [[finetune]] and [[distill]] tables of a study spec: cells that are quantized and then
// trained as `lowbit finetune` and `lowbit distill` train (spec.h).
#include "study/spec_parse.h"

#include "core/device.h"
#include "quant/method.h"
#include "train/dad.h"
#include "train/generated_data.h"

#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <sstream>

namespace lowbit::study::spec_detail {

namespace {

// One value of a training option, parsed strictly (the whole text).
int64_t int_value(const std::string& key, const std::string& v, int64_t lo, int64_t hi) {
  size_t used = 0;
  int64_t x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (const std::logic_error&) {
    used = 0;
  }
  LB_CHECK(used == v.size() && !v.empty(), "option '{}': {} is not an integer", key, v);
  LB_CHECK(x >= lo && x <= hi, "option '{}' = {} is out of range [{}, {}]", key, x, lo, hi);
  return x;
}

double real_value(const std::string& key, const std::string& v, double lo, double hi) {
  size_t used = 0;
  double x = 0;
  try {
    x = std::stod(v, &used);
  } catch (const std::logic_error&) {
    used = 0;
  }
  LB_CHECK(used == v.size() && !v.empty() && std::isfinite(x), "option '{}': {} is not a number", key, v);
  LB_CHECK(x >= lo && x <= hi, "option '{}' = {} is out of range [{}, {}]", key, v, lo, hi);
  return x;
}

bool bool_value(const std::string& key, const std::string& v) {
  LB_CHECK(v == "0" || v == "1", "option '{}': {} is not a boolean (true, false, 1 or 0)", key, v);
  return v == "1";
}

// The options of `lowbit finetune` a [[finetune]] table sets, beside the LoRA options that form
// its method spec.
const std::vector<std::string> kLoraKeys = {"r", "alpha", "dropout", "targets", "iec"};
const std::vector<std::string> kFinetuneKeys = {
    "steps",         "batch",     "grad_accum", "lr",         "warmup_ratio",   "max_grad_norm",
    "weight_decay",  "adam_beta1", "adam_beta2", "adam_eps",  "source_max_len", "target_max_len",
    "eval_size",     "limit",     "seed",       "data_seed",      "device",       "compute",
    "base_resident"};
const std::vector<std::string> kDistillKeys = {"steps", "batch", "grad_accum", "lr", "warmup_ratio", "max_grad_norm",
                                               "dad", "gamma", "train_beta", "latent", "latent_lr_scale",
                                               "device", "compute", "data", "gen_nsamples", "gen_seqlen",
                                               "gen_seed", "gen_first", "gen_greedy", "gen_temperature", "gen_top_k",
                                               "gen_eos", "gen_bos"};

void set_finetune_option(train::FinetuneOptions& o, const std::string& k, const std::string& v) {
  constexpr int64_t kBig = int64_t(1) << 40;
  if (k == "steps") o.steps = int_value(k, v, 1, kBig);
  else if (k == "batch") o.batch = int_value(k, v, 1, 1 << 20);
  else if (k == "grad_accum") o.grad_accum = int_value(k, v, 1, 1 << 20);
  else if (k == "lr") o.lr = real_value(k, v, 1e-30, 1e6);
  else if (k == "warmup_ratio") o.warmup_ratio = real_value(k, v, 0, 1);
  else if (k == "max_grad_norm") o.max_grad_norm = real_value(k, v, 0, 1e30);
  else if (k == "weight_decay") o.weight_decay = real_value(k, v, 0, 1e6);
  else if (k == "adam_beta1") o.beta1 = real_value(k, v, 0, 0.999999999);
  else if (k == "adam_beta2") o.beta2 = real_value(k, v, 0, 0.999999999);
  else if (k == "adam_eps") o.adam_eps = real_value(k, v, 1e-30, 1);
  else if (k == "source_max_len") o.source_max = int_value(k, v, 1, 1 << 20);
  else if (k == "target_max_len") o.target_max = int_value(k, v, 1, 1 << 20);
  else if (k == "eval_size") o.eval_size = int_value(k, v, 0, kBig);
  else if (k == "limit") o.limit = int_value(k, v, 0, kBig);
  else if (k == "seed") o.seed = uint64_t(int_value(k, v, 0, INT64_MAX));
  else if (k == "data_seed") o.data_seed = uint64_t(int_value(k, v, 0, INT64_MAX));
  else if (k == "device") o.device = (void(parse_device(v)), v);
  else if (k == "compute") o.compute = (void(train::parse_compute_precision(v)), v);
  // auto, on or off; a TOML boolean (true: "1", false: "0") as on and off.
  else if (k == "base_resident") o.base_resident = v == "1" ? "on" : v == "0" ? "off" : (void(train::parse_base_residency(v)), v);
  else fail("option '{}' is not a training option", k);
}

void set_distill_option(train::DistillOptions& o, const std::string& k, const std::string& v) {
  constexpr int64_t kBig = int64_t(1) << 40;
  if (k == "steps") o.steps = int_value(k, v, 0, kBig);
  else if (k == "batch") o.batch = int_value(k, v, 1, 1 << 20);
  else if (k == "grad_accum") o.grad_accum = int_value(k, v, 1, 1 << 20);
  else if (k == "lr") o.lr = real_value(k, v, 1e-30, 1e6);
  else if (k == "warmup_ratio") o.warmup_ratio = real_value(k, v, 0, 1);
  else if (k == "max_grad_norm") o.max_grad_norm = real_value(k, v, 0, 1e30);
  else if (k == "dad") o.dad = train::dad_weight_name(train::parse_dad_weight(v));
  else if (k == "gamma") o.gamma = real_value(k, v, 1e-30, 1e6);
  else if (k == "train_beta") o.train_beta = bool_value(k, v);
  else if (k == "latent") o.latent = bool_value(k, v);
  else if (k == "latent_lr_scale") o.latent_lr_scale = real_value(k, v, 0, 1e6);
  else if (k == "device") o.device = (void(parse_device(v)), v);
  else if (k == "compute") o.compute = (void(train::parse_compute_precision(v)), v);
  else if (k == "data") {
    LB_CHECK(v == "calib" || v == "generated", "option 'data': \"{}\" is not one of calib, generated", v);
    o.data = v;
  } else if (k == "gen_nsamples") o.gen.nsamples = int_value(k, v, 1, 1 << 20);
  else if (k == "gen_seqlen") o.gen.seqlen = int_value(k, v, 2, 1 << 20);
  else if (k == "gen_seed") o.gen.seed = uint64_t(int_value(k, v, 0, INT64_MAX));
  else if (k == "gen_first") {
    LB_CHECK(v == "random" || v == "sweep", "option 'gen_first': \"{}\" is not one of random, sweep", v);
    o.gen.first = v;
  } else if (k == "gen_greedy") {
    try {
      (void)train::parse_gen_greedy(v);
    } catch (const Error&) {
      fail("option 'gen_greedy': \"{}\" is not N or \"LO-HI\" (non-negative integers, LO <= HI)", v);
    }
    o.gen.greedy = v;
  } else if (k == "gen_temperature") o.gen.temperature = real_value(k, v, 1e-6, 1e6);
  else if (k == "gen_top_k") o.gen.top_k = int_value(k, v, 0, int64_t(1) << 31);
  else if (k == "gen_eos") {
    LB_CHECK(v == "stop" || v == "continue", "option 'gen_eos': \"{}\" is not one of stop, continue", v);
    o.gen.eos = v;
  } else if (k == "gen_bos") {
    LB_CHECK(v == "window" || v == "both" || v == "off", "option 'gen_bos': \"{}\" is not one of window, both, off",
             v);
    o.gen.bos = v;
  } else fail("option '{}' is not a training option", k);
}

std::string finetune_key(const train::FinetuneOptions& o) {
  const train::FinetuneMethod m = train::parse_finetune_method(o.method);
  // The products' precision changes the numbers: named when it is not fp32 (so fp32 cells, every
  // CPU cell, keep the keys they had before the option). base_resident does not change them
  // (base_residency.h) and is not named: a cell trained with either choice is the same cell.
  const train::ComputePrecision p = train::finetune_compute(o);
  const std::string compute =
      p == train::ComputePrecision::Fp32 ? "" : fmt::format(",compute={}", train::compute_precision_name(p));
  return fmt::format("finetune:{},data={},steps={},batch={},grad_accum={},lr={},warmup_ratio={},max_grad_norm={},"
                     "weight_decay={},adam_beta1={},adam_beta2={},adam_eps={},source_max_len={},target_max_len={},"
                     "eval_size={},limit={},seed={},data_seed={},spm={}{}",
                     m.canonical_options(), o.data, o.steps, o.batch, o.grad_accum, o.lr, o.warmup_ratio,
                     o.max_grad_norm, o.weight_decay, o.beta1, o.beta2, o.adam_eps, o.source_max, o.target_max,
                     o.eval_size, o.limit, o.seed, o.data_seed, o.spm, compute);
}

std::string distill_key(const train::DistillOptions& o) {
  // As finetune_key: the products' precision is named when it is not fp32 (fp32, the default on
  // every device, keeps the keys cells had before the option). Generated data is named after it
  // with all its options (so that it never shares a key with a calibration-text cell);
  // calibration cells keep the keys they had before the option (their calibration is the cell's
  // calibration key). Both: "...,latent_lr_scale=S,compute=bf16,data=generated,gen_nsamples=...".
  const train::ComputePrecision p = train::distill_compute(o);
  const std::string compute =
      p == train::ComputePrecision::Fp32 ? "" : fmt::format(",compute={}", train::compute_precision_name(p));
  std::string data;
  if (o.data == "generated") {
    const train::GenDataOptions& g = o.gen;
    data = fmt::format(",data=generated,gen_nsamples={},gen_seqlen={},gen_seed={},gen_first={},gen_greedy={},"
                       "gen_temperature={},gen_top_k={},gen_eos={},gen_bos={}",
                       g.nsamples, g.seqlen, g.seed, g.first, g.greedy, g.temperature, g.top_k, g.eos, g.bos);
  }
  return fmt::format("dad:steps={},batch={},grad_accum={},lr={},warmup_ratio={},max_grad_norm={},dad={},gamma={},"
                     "train_beta={},latent={},latent_lr_scale={}{}{}",
                     o.steps, o.batch, o.grad_accum, o.lr, o.warmup_ratio, o.max_grad_norm, o.dad, o.gamma,
                     o.train_beta ? 1 : 0, o.latent ? 1 : 0, o.latent_lr_scale, compute, data);
}

// A table's values as grid axes: each key with its values (an array's elements, or the one
// value) and their positions, in the table's order.
using Axes = std::vector<std::pair<std::string, std::vector<std::pair<std::string, SourcePos>>>>;

Axes table_axes(const Ctx& c, const table& t, const std::set<std::string>& skip) {
  Axes out;
  for (const auto& [k, v] : t) {
    const std::string key(k.str());
    if (skip.count(key)) continue;
    std::vector<std::pair<std::string, SourcePos>> values;
    if (const toml::array* a = v.as_array()) {
      if (a->empty()) c.fail_at(v, "option '{}' has no values", key);
      for (const node& e : *a) values.emplace_back(option_text(c, e, key), c.pos(e));
    } else {
      values.emplace_back(option_text(c, v, key), c.pos(v));
    }
    out.emplace_back(key, std::move(values));
  }
  return out;
}

std::vector<std::string> table_zip(const Ctx& c, const table& t) {
  std::vector<std::string> zip;
  if (const node* z = find(t, "zip")) {
    for (const auto& [s, p] : get_strings(c, t, "zip")) {
      if (!t.contains(s)) c.fail_at(p, "zip names '{}', which this table does not set", s);
      zip.push_back(s);
    }
    if (zip.size() < 2) c.fail_at(*z, "zip needs at least two options to walk together");
  }
  return zip;
}

// The grid of axes: one list of (key, value) per point, in expand_method_grid's order.
std::vector<std::vector<std::pair<std::string, std::string>>> grid_points(const Ctx& c, const SourcePos& tpos,
                                                                          const std::string& what, const Axes& axes,
                                                                          const std::vector<std::string>& zip) {
  std::vector<std::pair<std::string, std::vector<std::string>>> options;
  for (const auto& [k, vs] : axes) {
    std::vector<std::string> texts;
    for (const auto& v : vs) texts.push_back(v.first);
    options.emplace_back(k, texts);
  }
  std::vector<std::vector<std::pair<std::string, std::string>>> out;
  if (options.empty()) return {{}};
  for (const std::string& s : c.at(tpos, [&] { return expand_method_grid(what, options, zip); })) {
    std::vector<std::pair<std::string, std::string>> point;
    std::stringstream ss(s.substr(s.find(':') + 1));
    std::string item;
    while (std::getline(ss, item, ',')) {
      const size_t eq = item.find('=');
      point.emplace_back(item.substr(0, eq), item.substr(eq + 1));
    }
    out.push_back(std::move(point));
  }
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& s) {
  return std::find(v.begin(), v.end(), s) != v.end();
}

}  // namespace

// The [[finetune]] tables, expanded.
void parse_finetune(const Ctx& c, const toml::array& tables, StudySpec& spec, std::map<std::string, SourcePos>& seen) {
  for (const node& tn : tables) {
    const table* t = tn.as_table();
    if (t == nullptr) c.fail_at(tn, "[[finetune]] must be a table");
    const SourcePos tpos = c.pos(tn);
    std::set<std::string> known = {"method", "data", "zip"};
    for (const auto& k : kLoraKeys) known.insert(k);
    for (const auto& k : kFinetuneKeys) known.insert(k);
    check_keys(c, *t, "[[finetune]]", known);
    const node* mn = find(*t, "method");
    if (mn == nullptr) c.fail_at(tpos, "[[finetune]] has no 'method' (qlora, irqlora or lora)");
    const node* dn = find(*t, "data");
    if (dn == nullptr) c.fail_at(tpos, "[[finetune]] has no 'data' (instruction data in Stanford Alpaca's JSON format)");
    if (!dn->is_string()) c.fail_at(*dn, "'data' must be a string (a file path)");
    const std::string data = resolve_path(c, c.pos(*dn), get_string(c, *t, "data", ""));
    const std::vector<std::string> zip = table_zip(c, *t);
    const Axes axes = table_axes(c, *t, {"data", "zip"});
    // Each value alone, so that an error names the element that causes it.
    for (const auto& [k, vs] : axes)
      for (const auto& [v, p] : vs)
        c.at(p, [&] {
          if (k == "method") {
            LB_CHECK(v == "qlora" || v == "irqlora" || v == "lora",
                     "unknown fine-tuning method '{}' (known: qlora, irqlora, lora)", v);
          } else if (contains(kLoraKeys, k)) {
            (void)train::parse_finetune_method("lora:" + k + "=" + v);
          } else {
            train::FinetuneOptions o;
            set_finetune_option(o, k, v);
          }
        });
    for (const auto& point : grid_points(c, tpos, "finetune", axes, zip)) {
      MethodCell mc;
      mc.pos = tpos;
      mc.device = "cpu";
      mc.train.kind = TrainKind::Finetune;
      train::FinetuneOptions& o = mc.train.finetune;
      o.data = data;
      o.spm = spec.spm;
      // Trained on the study's device unless the table names one.
      o.device = spec.device;
      mc.train.data_pos = c.pos(*dn);
      std::string lora;
      for (const auto& [k, v] : point) {
        if (k == "method") mc.name = v;
        else if (contains(kLoraKeys, k)) lora += (lora.empty() ? ":" : ",") + k + "=" + v;
        else set_finetune_option(o, k, v);
      }
      mc.spec = mc.name + lora;
      o.method = mc.spec;
      c.at(tpos, [&] { train::check_finetune_options(o); });
      mc.train.key = finetune_key(o);
      const std::string id = mc.spec + "|" + mc.train.key;
      if (auto it = seen.find(id); it != seen.end())
        c.fail_at(tpos, "fine-tuning '{}' with the same options appears twice in the grid (first from {})", mc.spec,
                  it->second.str());
      seen[id] = tpos;
      spec.methods.push_back(std::move(mc));
    }
  }
}

// The [[distill]] tables, expanded.
void parse_distill(const Ctx& c, const toml::array& tables, StudySpec& spec, std::map<std::string, SourcePos>& seen) {
  for (const node& tn : tables) {
    const table* t = tn.as_table();
    if (t == nullptr) c.fail_at(tn, "[[distill]] must be a table");
    const SourcePos tpos = c.pos(tn);
    const std::vector<std::string> zip = table_zip(c, *t);
    // Keys: the training options, and the dbllm method's options (checked by the method).
    const Axes axes = table_axes(c, *t, {"zip"});
    for (const auto& [k, vs] : axes)
      for (const auto& [v, p] : vs)
        c.at(p, [&] {
          if (contains(kDistillKeys, k)) {
            train::DistillOptions o;
            set_distill_option(o, k, v);
          } else {
            try {
              make_method("dbllm:" + k + "=" + v);
            } catch (const Error& e) {
              // An unknown key is neither a training option nor one of the method's.
              if (std::string(e.what()).find("unknown option") == std::string::npos) throw;
              fail("unknown key '{}' in [[distill]] (training options: {}; and the dbllm method's options)", k,
                   fmt::join(kDistillKeys, ", "));
            }
          }
        });
    for (const auto& point : grid_points(c, tpos, "distill", axes, zip)) {
      MethodCell mc;
      mc.pos = tpos;
      mc.name = "dbllm";
      mc.device = "cpu";
      mc.train.kind = TrainKind::Distill;
      train::DistillOptions& o = mc.train.distill;
      // Trained on the study's device unless the table names one.
      o.device = spec.device;
      std::string method;
      std::string gen_option;
      for (const auto& [k, v] : point) {
        if (contains(kDistillKeys, k)) set_distill_option(o, k, v);
        else method += (method.empty() ? ":" : ",") + k + "=" + v;
        if (gen_option.empty() && k.rfind("gen_", 0) == 0) gen_option = k;
      }
      // Generation options on calibration data would change nothing but the grid's size.
      if (!gen_option.empty() && o.data != "generated") {
        SourcePos at = tpos;
        for (const auto& [k, vs] : axes)
          if (k == gen_option) at = vs.front().second;
        c.fail_at(at, "option '{}' needs data = \"generated\" (this cell's data is \"{}\")", gen_option, o.data);
      }
      mc.spec = "dbllm" + method;
      o.method = mc.spec;
      c.at(tpos, [&] { train::check_distill_options(o); });
      mc.train.key = distill_key(o);
      const std::string id = mc.spec + "|" + mc.train.key;
      if (auto it = seen.find(id); it != seen.end())
        c.fail_at(tpos, "distillation '{}' with the same options appears twice in the grid (first from {})", mc.spec,
                  it->second.str());
      seen[id] = tpos;
      spec.methods.push_back(std::move(mc));
    }
  }
}

}  // namespace lowbit::study::spec_detail
