#include "study/spec.h"
#include "study/spec_parse.h"
#include "study/store.h"

#include "calib/calib_data.h"
#include "core/error.h"
#include "eval/datasets.h"
#include "eval/tasks.h"
#include "eval/vlm/vlm_task.h"
#include "formats/llava_next_checkpoint.h"
#include "quant/llava_next_quantized.h"
#include "formats/data_files.h"
#include "quant/method.h"
#include "backend/device_check.h"
#include "core/device.h"
#include "quant/quantize.h"
#include "train/instruct_data.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <toml++/toml.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace lowbit::study {

std::string SourcePos::str() const {
  if (line <= 0) return file;
  return fmt::format("{}:{}:{}", file, line, column);
}

std::string CalibrationSpec::key() const {
  return fmt::format("{}:n={},seqlen={},seed={},bos={}", set, nsamples, seqlen, seed, bos);
}

std::string MethodCell::quant_spec() const {
  if (train.kind == TrainKind::Finetune) return train::parse_finetune_method(spec).base_spec;
  return spec;
}

bool StudySpec::needs_calibration() const {
  for (const auto& m : methods) {
    // Distillation on generated windows reads no calibration text (its initialization, when it
    // calibrates, calibrates on the generated windows).
    if (m.train.kind == TrainKind::Distill) {
      if (m.train.distill.data == "calib") return true;
      continue;
    }
    if (m.train.kind == TrainKind::Finetune || is_baseline_method(m.name)) continue;
    if (make_method(m.spec)->needs_calibration()) return true;
  }
  return false;
}

std::string expand_env(const std::string& s) {
  std::string out;
  size_t i = 0;
  while (i < s.size()) {
    if (s[i] != '$' || i + 1 >= s.size() || s[i + 1] != '{') {
      out += s[i++];
      continue;
    }
    const size_t close = s.find('}', i + 2);
    LB_CHECK(close != std::string::npos, "'{}': '${{' without a closing '}}'", s);
    std::string body = s.substr(i + 2, close - i - 2), def;
    bool has_default = false;
    if (const size_t d = body.find(":-"); d != std::string::npos) {
      def = body.substr(d + 2);
      body = body.substr(0, d);
      has_default = true;
    }
    LB_CHECK(!body.empty(), "'{}': empty variable name in '${{}}'", s);
    const char* v = std::getenv(body.c_str());
    if (v != nullptr && *v != '\0') out += v;
    else if (has_default) out += def;
    else fail("'{}': environment variable {} is not set", s, body);
    i = close + 1;
  }
  return out;
}

std::vector<std::string> expand_method_grid(const std::string& name,
                                            const std::vector<std::pair<std::string, std::vector<std::string>>>& options,
                                            const std::vector<std::string>& zip) {
  // Axes: each option on its own, except the zipped ones, which form one axis together.
  struct Axis {
    std::vector<size_t> options;  // indexes into `options`
    size_t size = 0;
  };
  std::vector<Axis> axes;
  int zip_axis = -1;
  for (size_t i = 0; i < options.size(); ++i) {
    const auto& [key, values] = options[i];
    LB_CHECK(!values.empty(), "{}: option '{}' has no values", name, key);
    const bool zipped = std::find(zip.begin(), zip.end(), key) != zip.end();
    if (zipped && zip_axis >= 0) {
      Axis& a = axes[size_t(zip_axis)];
      LB_CHECK(values.size() == a.size, "{}: zipped options '{}' ({} values) and '{}' ({} values) differ in length",
               name, options[a.options[0]].first, a.size, key, values.size());
      a.options.push_back(i);
      continue;
    }
    if (zipped) zip_axis = int(axes.size());
    axes.push_back({{i}, values.size()});
  }
  for (const auto& z : zip) {
    bool found = false;
    for (const auto& o : options) found = found || o.first == z;
    LB_CHECK(found, "{}: zip names '{}', which is not an option of this method", name, z);
  }
  std::vector<std::string> out;
  std::vector<size_t> idx(axes.size(), 0);
  while (true) {
    std::string spec = name;
    bool first = true;
    std::vector<std::string> chosen(options.size());
    for (size_t a = 0; a < axes.size(); ++a)
      for (size_t o : axes[a].options) chosen[o] = options[o].second[idx[a]];
    for (size_t o = 0; o < options.size(); ++o) {
      if (chosen[o].empty()) continue;
      spec += (first ? ":" : ",") + options[o].first + "=" + chosen[o];
      first = false;
    }
    out.push_back(spec);
    // The last axis varies fastest.
    int a = int(axes.size()) - 1;
    for (; a >= 0; --a) {
      if (++idx[size_t(a)] < axes[size_t(a)].size) break;
      idx[size_t(a)] = 0;
    }
    if (a < 0) break;
  }
  return out;
}

namespace spec_detail {

void check_keys(const Ctx& c, const table& t, const std::string& what, const std::set<std::string>& known) {
  for (const auto& [k, v] : t)
    if (!known.count(std::string(k.str())))
      c.fail_at(c.pos(k.source()), "unknown key '{}' in {} (known: {})", k.str(), what, fmt::join(known, ", "));
}

const node* find(const table& t, const std::string& key) { return t.get(key); }

std::string get_string(const Ctx& c, const table& t, const std::string& key, const std::string& def) {
  const node* n = find(t, key);
  if (n == nullptr) return def;
  if (!n->is_string()) c.fail_at(*n, "'{}' must be a string", key);
  return std::string(*n->value<std::string>());
}

int64_t get_int(const Ctx& c, const table& t, const std::string& key, int64_t def, int64_t lo, int64_t hi) {
  const node* n = find(t, key);
  if (n == nullptr) return def;
  if (!n->is_integer()) c.fail_at(*n, "'{}' must be an integer", key);
  const int64_t v = *n->value<int64_t>();
  if (v < lo || v > hi) c.fail_at(*n, "'{}' = {} is out of range [{}, {}]", key, v, lo, hi);
  return v;
}

std::string get_choice(const Ctx& c, const table& t, const std::string& key, const std::string& def,
                       const std::vector<std::string>& choices) {
  const std::string v = get_string(c, t, key, def);
  if (std::find(choices.begin(), choices.end(), v) == choices.end())
    c.fail_at(*find(t, key), "'{}' = \"{}\" is not one of {}", key, v, fmt::join(choices, ", "));
  return v;
}

// An array of strings (or one string), with each element's position.
std::vector<std::pair<std::string, SourcePos>> get_strings(const Ctx& c, const table& t, const std::string& key) {
  std::vector<std::pair<std::string, SourcePos>> out;
  const node* n = find(t, key);
  if (n == nullptr) return out;
  if (n->is_string()) {
    out.emplace_back(std::string(*n->value<std::string>()), c.pos(*n));
    return out;
  }
  const toml::array* a = n->as_array();
  if (a == nullptr) c.fail_at(*n, "'{}' must be an array of strings", key);
  for (const node& e : *a) {
    if (!e.is_string()) c.fail_at(e, "'{}': every element must be a string", key);
    out.emplace_back(std::string(*e.value<std::string>()), c.pos(e));
  }
  return out;
}

// A path as written: ${VAR} expanded, relative to the spec's directory.
std::string resolve_path(const Ctx& c, const SourcePos& p, const std::string& s) {
  const std::string e = c.at(p, [&] { return expand_env(s); });
  if (e.empty()) c.fail_at(p, "empty path");
  fs::path path(e);
  if (path.is_relative()) path = fs::absolute(fs::path(c.path)).parent_path() / path;
  return path.lexically_normal().string();
}

// A method option's value as the spec string writes it.
std::string option_text(const Ctx& c, const node& n, const std::string& key) {
  if (n.is_integer()) return std::to_string(*n.value<int64_t>());
  if (n.is_floating_point()) return fmt::format("{}", *n.value<double>());
  if (n.is_boolean()) return *n.value<bool>() ? "1" : "0";
  if (n.is_string()) {
    std::string s(*n.value<std::string>());
    if (s.empty() || s.find_first_of(",:= ") != std::string::npos) c.fail_at(n, "option '{}': \"{}\" is not a valid value", key, s);
    return s;
  }
  c.fail_at(n, "option '{}' must be a number, a boolean, a string, or an array of them", key);
}

// A device string of the spec: parsed, and (when files are checked) available in this build.
void check_device_text(const Ctx& c, const node& at, const std::string& s, const SpecOptions& opt) {
  c.at(c.pos(at), [&] { (void)parse_device(s); });
  if (s != "cpu" && opt.check_files && !cuda_backend_built())
    c.fail_at(at, "device \"{}\": this lowbit was built without the CUDA backend (nvcc was not found at build time)", s);
}

// The [[method]] tables, expanded.
void parse_methods(const Ctx& c, const toml::array& methods, StudySpec& spec, const SpecOptions& opt) {
  std::map<std::string, SourcePos> seen;
  for (const node& mn : methods) {
    const table* mt = mn.as_table();
    if (mt == nullptr) c.fail_at(mn, "[[method]] must be a table");
    const SourcePos tpos = c.pos(mn);
    const node* name_node = find(*mt, "name");
    if (name_node == nullptr) c.fail_at(tpos, "[[method]] has no 'name' (one of {})", fmt::join(method_names(), ", "));
    const std::string name = get_string(c, *mt, "name", "");
    const auto names = method_names();
    if (std::find(names.begin(), names.end(), name) == names.end())
      c.fail_at(*name_node, "unknown method '{}' (known: {})", name, fmt::join(names, ", "));
    if (is_baseline_method(name)) {
      for (const auto& [k, v] : *mt)
        if (k.str() != "name")
          c.fail_at(c.pos(k.source()), "method {} (the 16-bit baseline) takes no options ('{}')", name, k.str());
      if (seen.count(name)) c.fail_at(*name_node, "method '{}' appears twice (first at {})", name, seen[name].str());
      seen[name] = c.pos(*name_node);
      spec.methods.push_back({name, name, tpos, "", {}});
      continue;
    }
    std::string device;
    if (const node* d = find(*mt, "device")) {
      device = get_string(c, *mt, "device", "");
      check_device_text(c, *d, device, opt);
    }
    // a=16 ("activations not quantized") is left out of the spec string where it is the
    // method's default, so that "rtn:w=4,g=128" names one cell however the grid is written.
    const bool a16_default = make_method(name)->activation_bits() == 16;

    std::vector<std::string> zip;
    if (const node* z = find(*mt, "zip")) {
      for (const auto& [s, p] : get_strings(c, *mt, "zip")) {
        if (!mt->contains(s)) c.fail_at(p, "zip names '{}', which this [[method]] does not set", s);
        zip.push_back(s);
      }
      if (zip.size() < 2) c.fail_at(*z, "zip needs at least two options to walk together");
    }
    // Options in the spec string's order: w, a, g, then the rest alphabetically.
    std::vector<std::string> keys;
    for (const char* k : {"w", "a", "g"})
      if (mt->contains(k)) keys.push_back(k);
    for (const auto& [k, v] : *mt) {
      const std::string ks(k.str());
      if (ks != "name" && ks != "zip" && ks != "device" && ks != "w" && ks != "a" && ks != "g") keys.push_back(ks);
    }
    std::vector<std::pair<std::string, std::vector<std::string>>> options;
    std::vector<std::vector<SourcePos>> positions;  // of each option's values
    for (const std::string& key : keys) {
      const node& v = *find(*mt, key);
      std::vector<std::pair<std::string, SourcePos>> values;
      if (const toml::array* a = v.as_array()) {
        if (a->empty()) c.fail_at(v, "option '{}' has no values", key);
        for (const node& e : *a) values.emplace_back(option_text(c, e, key), c.pos(e));
      } else {
        values.emplace_back(option_text(c, v, key), c.pos(v));
      }
      std::vector<std::string> texts;
      std::vector<SourcePos> at;
      for (auto& [text, p] : values) {
        texts.push_back(key == "a" && text == "16" && a16_default ? "" : text);
        at.push_back(p);
      }
      options.emplace_back(key, texts);
      positions.push_back(std::move(at));
    }
    const auto specs = c.at(tpos, [&] { return expand_method_grid(name, options, zip); });
    // Each value alone first, so that an error names the element that causes it. A value that
    // is valid only beside another option's (pbllm's g=64 with block=64, block's default being
    // 128) passes when some combination of the grid that holds it is valid; the combinations
    // are checked below.
    for (size_t o = 0; o < options.size(); ++o) {
      const auto& [key, texts] = options[o];
      for (size_t i = 0; i < texts.size(); ++i) {
        if (texts[i].empty()) continue;
        try {
          make_method(name + ":" + key + "=" + texts[i]);
          continue;
        } catch (const Error&) {
        }
        // The grid's combinations that hold value i: this option (with its zipped partners) fixed
        // at index i.
        const bool zipped = std::find(zip.begin(), zip.end(), key) != zip.end();
        auto fixed = options;
        for (auto& [k, vals] : fixed)
          if (k == key || (zipped && std::find(zip.begin(), zip.end(), k) != zip.end())) vals = {vals[i]};
        bool valid_somewhere = false;
        for (const auto& s : expand_method_grid(name, fixed, zip)) {
          try {
            make_method(s);
            valid_somewhere = true;
            break;
          } catch (const Error&) {
          }
        }
        if (!valid_somewhere) c.at(positions[o][i], [&] { make_method(name + ":" + key + "=" + texts[i]); });
      }
    }
    for (const auto& s : specs) {
      c.at(tpos, [&] { make_method(s); });  // combinations (e.g. options that exclude each other)
      if (auto it = seen.find(s); it != seen.end())
        c.fail_at(tpos, "method '{}' appears twice in the grid (first from {})", s, it->second.str());
      seen[s] = tpos;
      spec.methods.push_back({s, name, tpos, device, {}});
    }
  }
}


}  // namespace spec_detail

using namespace spec_detail;


StudySpec parse_study_spec(const std::string& text, const std::string& path, const SpecOptions& opt) {
  Ctx c{path};
  StudySpec spec;
  spec.path = path;
  spec.text = text;
  table root;
  try {
    root = toml::parse(text, path);
  } catch (const toml::parse_error& e) {
    c.fail_at(c.pos(e.source()), "{}", e.description());
  }
  check_keys(c, root, "the spec", {"study", "model", "calibration", "eval", "method", "finetune", "distill"});

  // [study]
  const table* st = root["study"].as_table();
  if (st == nullptr) c.fail_at(SourcePos{path, 1, 1}, "no [study] table (it names the study: [study] name = \"...\")");
  const SourcePos study_pos = c.pos(*st);
  check_keys(c, *st, "[study]", {"name", "db", "device", "threads", "data_dir", "spm"});
  spec.name = get_string(c, *st, "name", "");
  if (spec.name.empty()) c.fail_at(study_pos, "[study] needs a name");
  const node* db = find(*st, "db");
  if (db != nullptr) {
    // A PostgreSQL URI is no path: it stays as written (with ${VAR} expanded).
    const std::string text = get_string(c, *st, "db", "");
    const std::string expanded = c.at(c.pos(*db), [&] { return expand_env(text); });
    spec.db = is_postgres_uri(expanded) ? expanded : resolve_path(c, c.pos(*db), text);
  } else {
    spec.db = resolve_path(c, study_pos, spec.name + ".sqlite");
  }
  spec.device = get_string(c, *st, "device", "cpu");
  if (const node* d = find(*st, "device")) check_device_text(c, *d, spec.device, opt);
  spec.threads = int(get_int(c, *st, "threads", 0, 0, 4096));
  spec.spm = get_choice(c, *st, "spm", "auto", {"auto", "llama", "generic", "sentencepiece"});
  if (const node* d = find(*st, "data_dir")) spec.data_dir = resolve_path(c, c.pos(*d), get_string(c, *st, "data_dir", ""));

  // [[model]]
  const toml::array* models = root["model"].as_array();
  if (models == nullptr || models->empty())
    c.fail_at(study_pos, "no [[model]] table (each names a model: [[model]] path = \"...\")");
  for (const node& mn : *models) {
    const table* mt = mn.as_table();
    if (mt == nullptr) c.fail_at(mn, "[[model]] must be a table");
    check_keys(c, *mt, "[[model]]", {"name", "path"});
    const node* p = find(*mt, "path");
    if (p == nullptr) c.fail_at(mn, "[[model]] has no 'path'");
    ModelSpec m;
    m.pos = c.pos(*p);
    m.path = resolve_path(c, m.pos, get_string(c, *mt, "path", ""));
    m.name = get_string(c, *mt, "name", fs::path(m.path).filename().string());
    if (m.name.empty() || m.name.find('|') != std::string::npos) c.fail_at(mn, "model name \"{}\" is not valid", m.name);
    for (const auto& o : spec.models)
      if (o.name == m.name) c.fail_at(mn, "model name '{}' is used twice (first at {})", m.name, o.pos.str());
    spec.models.push_back(m);
  }

  // [[method]], [[finetune]], [[distill]]: the cells in the spec's order.
  const toml::array* methods = root["method"].as_array();
  const toml::array* finetunes = root["finetune"].as_array();
  const toml::array* distills = root["distill"].as_array();
  for (const char* k : {"method", "finetune", "distill"})
    if (root.contains(k) && root[k].as_array() == nullptr) c.fail_at(*root.get(k), "[[{}]] must be an array of tables", k);
  if ((methods == nullptr || methods->empty()) && (finetunes == nullptr || finetunes->empty()) &&
      (distills == nullptr || distills->empty()))
    c.fail_at(study_pos, "no [[method]] table (each names a method and its grid: [[method]] name = \"rtn\", w = [4])");
  if (methods) parse_methods(c, *methods, spec, opt);
  std::map<std::string, SourcePos> trained;
  if (finetunes) parse_finetune(c, *finetunes, spec, trained);
  if (distills) parse_distill(c, *distills, spec, trained);
  std::stable_sort(spec.methods.begin(), spec.methods.end(), [](const MethodCell& a, const MethodCell& b) {
    return a.pos.line < b.pos.line;
  });

  // [calibration]
  const table* ct = root["calibration"].as_table();
  if (root.contains("calibration") && ct == nullptr) c.fail_at(*root.get("calibration"), "[calibration] must be a table");
  static const table empty;
  const table& cal = ct ? *ct : empty;
  spec.calibration.pos = ct ? c.pos(*ct) : study_pos;
  check_keys(c, cal, "[calibration]", {"set", "nsamples", "seqlen", "seed", "bos"});
  spec.calibration.set = get_string(c, cal, "set", "wikitext2");
  if (!is_named_dataset(spec.calibration.set, DatasetRole::Calibration))
    spec.calibration.set = resolve_path(c, c.pos(*find(cal, "set")), spec.calibration.set);
  spec.calibration.nsamples = get_int(c, cal, "nsamples", 128, 1, int64_t(1) << 20);
  spec.calibration.seqlen = get_int(c, cal, "seqlen", 2048, 2, int64_t(1) << 20);
  spec.calibration.seed = uint64_t(get_int(c, cal, "seed", 0, 0, INT64_MAX));
  spec.calibration.bos = get_choice(c, cal, "bos", "auto", {"auto", "on", "off"});
  for (const MethodCell& mc : spec.methods)
    if (mc.train.kind == TrainKind::Distill && mc.train.distill.data == "calib" &&
        mc.train.distill.batch > spec.calibration.nsamples)
      c.fail_at(mc.pos, "{}: batch {} is more than the [calibration] windows it distills on (nsamples {})", mc.spec,
                mc.train.distill.batch, spec.calibration.nsamples);

  // [eval]
  const table* et = root["eval"].as_table();
  if (et == nullptr) c.fail_at(study_pos, "no [eval] table (it names what to evaluate: ppl = [...], tasks = [...])");
  check_keys(c, *et, "[eval]",
             {"ppl", "kld", "seqlen", "limit", "tasks", "task_limit", "mmlu_limit", "mmlu_shots", "bos", "max_length",
              "batch", "vlm_tasks", "vlm_data", "vlm_limit", "vlm_max_new_tokens", "vlm_conversation"});
  EvalSpec& ev = spec.eval;
  ev.seqlen = get_int(c, *et, "seqlen", 2048, 2, int64_t(1) << 20);
  ev.limit = get_int(c, *et, "limit", 0, 0, int64_t(1) << 30);
  ev.task_limit = get_int(c, *et, "task_limit", 0, 0, int64_t(1) << 30);
  ev.mmlu_limit = get_int(c, *et, "mmlu_limit", ev.task_limit, 0, int64_t(1) << 30);
  ev.mmlu_shots = int(get_int(c, *et, "mmlu_shots", 5, 0, 5));
  ev.max_length = get_int(c, *et, "max_length", 0, 0, int64_t(1) << 20);
  ev.batch = get_int(c, *et, "batch", 4, 1, 1 << 16);
  ev.bos = get_choice(c, *et, "bos", "auto", {"auto", "on", "off"});
  std::vector<std::pair<std::string, SourcePos>> ppl = get_strings(c, *et, "ppl"), tasks = get_strings(c, *et, "tasks"),
                                                  kld = get_strings(c, *et, "kld"),
                                                  vlm_tasks = get_strings(c, *et, "vlm_tasks");
  if (ppl.empty() && tasks.empty() && kld.empty() && vlm_tasks.empty())
    c.fail_at(*et, "[eval] names nothing to evaluate (ppl = [...], kld = [...], tasks = [...], vlm_tasks = [...])");
  ev.vlm_limit = get_int(c, *et, "vlm_limit", 0, 0, int64_t(1) << 30);
  ev.vlm_max_new_tokens = get_int(c, *et, "vlm_max_new_tokens", 0, 0, int64_t(1) << 20);
  ev.vlm_conversation = get_choice(c, *et, "vlm_conversation", "llava", {"llava", "llava_hf"});
  const auto& vlm_known = vlm::vlm_task_names();
  for (const auto& [name, p] : vlm_tasks) {
    if (std::find(vlm_known.begin(), vlm_known.end(), name) == vlm_known.end())
      c.fail_at(p, "unknown vision-language task '{}' (known: {})", name, fmt::join(vlm_known, ", "));
    if (std::find(ev.vlm_tasks.begin(), ev.vlm_tasks.end(), name) != ev.vlm_tasks.end())
      c.fail_at(p, "vision-language task '{}' is listed twice", name);
    ev.vlm_tasks.push_back(name);
  }
  const node* vlm_data_node = find(*et, "vlm_data");
  if (vlm_data_node != nullptr)
    ev.vlm_data = resolve_path(c, c.pos(*vlm_data_node), get_string(c, *et, "vlm_data", ""));
  if (!ev.vlm_tasks.empty() && ev.vlm_data.empty())
    c.fail_at(*et->get("vlm_tasks"), "vlm_tasks need vlm_data (a folder holding TASK.jsonl for each task, as written "
              "by scripts/vlm_parquet_to_jsonl.py)");
  for (const char* k : {"vlm_data", "vlm_limit", "vlm_max_new_tokens", "vlm_conversation"})
    if (ev.vlm_tasks.empty() && et->contains(k))
      c.fail_at(c.pos(*et->get(k)), "'{}' is set but vlm_tasks names no vision-language task", k);
  for (auto* list : {&ppl, &kld}) {
    std::vector<std::string>& out = list == &ppl ? ev.ppl : ev.kld;
    for (auto& [name, p] : *list) {
      if (!is_named_dataset(name, DatasetRole::Evaluation)) {
        if (name.find('/') == std::string::npos && name.find('.') == std::string::npos)
          c.fail_at(p, "unknown dataset '{}': not one of wikitext2, ptb, ptb-new, c4, c4-new, nor a file path", name);
        name = resolve_path(c, p, name);
      }
      for (const auto& o : out)
        if (o == name) c.fail_at(p, "dataset '{}' is listed twice", name);
      out.push_back(name);
    }
  }
  const auto& known = task_names();
  const auto& subjects = mmlu_subjects();
  for (const auto& [name, p] : tasks) {
    const bool ok = std::find(known.begin(), known.end(), name) != known.end() ||
                    (name.starts_with("mmlu_") &&
                     std::find(subjects.begin(), subjects.end(), name.substr(5)) != subjects.end());
    if (!ok) c.fail_at(p, "unknown task '{}' (known: {}, and mmlu_SUBJECT for one MMLU subject)", name, fmt::join(known, ", "));
    if (std::find(ev.tasks.begin(), ev.tasks.end(), name) != ev.tasks.end()) c.fail_at(p, "task '{}' is listed twice", name);
    ev.tasks.push_back(name);
  }
  if (!opt.check_files) return spec;

  // Vision-language tasks run LLaVA-Next models: every model must be one, whole.
  if (!ev.vlm_tasks.empty())
    for (const auto& m : spec.models)
      c.at(m.pos, [&] {
        LB_CHECK(is_llava_next_dir(m.path), "model '{}' is not a LLaVA-Next model (config.json with model_type "
                 "llava_next); vlm_tasks (at {}) evaluate LLaVA-Next models only", m.name, vlm_tasks[0].second.str());
        (void)check_llava_next_source(m.path);
      });
  // Their items, every field and image path checked now rather than after hours of work.
  for (size_t i = 0; i < ev.vlm_tasks.size(); ++i)
    c.at(vlm_tasks[i].second, [&] { vlm::load_vlm_items(vlm::vlm_task(ev.vlm_tasks[i]), ev.vlm_data, ev.vlm_limit); });

  // Files: models, data, tasks. Reading them now means a study never stops half-way for a
  // missing file.
  for (const auto& m : spec.models) {
    c.at(m.pos, [&] {
      LB_CHECK(fs::exists(m.path), "model '{}' not found: {} does not exist", m.name, m.path);
      const Checkpoint ck = open_model(m.path);
      LB_CHECK(ck.quantization.is_null(), "model '{}' is already quantized; a study starts from a 16-bit model", m.name);
      LB_CHECK(!ck.tokenizer_path.empty(), "model '{}' has no tokenizer beside it", m.name);
      const int64_t ctx = ck.config.max_position_embeddings;
      LB_CHECK(ev.seqlen <= ctx || ev.ppl.empty(), "[eval] seqlen {} exceeds model '{}''s max_position_embeddings ({})",
               ev.seqlen, m.name, ctx);
      LB_CHECK(ev.max_length <= ctx, "[eval] max_length {} exceeds model '{}''s max_position_embeddings ({})",
               ev.max_length, m.name, ctx);
      LB_CHECK(spec.calibration.seqlen <= ctx || !spec.needs_calibration(),
               "[calibration] seqlen {} exceeds model '{}''s max_position_embeddings ({})", spec.calibration.seqlen,
               m.name, ctx);
    });
    const LlamaConfig config = open_model(m.path).config;
    for (const auto& mc : spec.methods) {
      if (is_baseline_method(mc.name)) continue;
      c.at(mc.pos, [&] {
        try {
          const std::string q = mc.quant_spec();
          if (!q.empty()) make_method(q)->check_shapes(config);
          // Before any work: IEC's rank must divide the adapted linears.
          if (mc.train.kind == TrainKind::Finetune)
            train::check_lora_config(config, train::parse_finetune_method(mc.spec).lora);
          // Generated windows fit the model's context and start with a BOS it has.
          if (mc.train.kind == TrainKind::Distill && mc.train.distill.data == "generated") {
            const train::GenDataOptions& g = mc.train.distill.gen;
            LB_CHECK(g.seqlen <= config.max_position_embeddings,
                     "gen_seqlen {} exceeds the model's max_position_embeddings ({})", g.seqlen,
                     config.max_position_embeddings);
            LB_CHECK(g.bos == "off" || config.bos_token_id.has_value(),
                     "gen_bos \"{}\": the model's config has no bos_token_id; give gen_bos = \"off\"", g.bos);
          }
        } catch (const Error& e) {
          fail("{} on model '{}': {}", mc.spec, m.name, e.what());
        }
      });
    }
  }
  // Each method's quantization device: refused here, before any work, rather than moved.
  for (const auto& mc : spec.methods) {
    if (is_baseline_method(mc.name) || mc.train.kind != TrainKind::None) continue;  // training: below
    c.at(mc.pos, [&] {
      const Device d = parse_device(mc.device.empty() ? spec.device : mc.device);
      try {
        make_method(mc.spec)->check_device(d);
      } catch (const Error& e) {
        fail("{}{}", e.what(), mc.device.empty() ? "; give its [[method]] table device = \"cpu\" to quantize it there" : "");
      }
    });
  }
  // Each trained cell's training device (the study's or its table's): a GPU this build lacks is
  // refused here, before any work.
  for (const auto& mc : spec.methods) {
    if (mc.train.kind == TrainKind::None || !opt.check_files || cuda_backend_built()) continue;
    const std::string& d = mc.train.kind == TrainKind::Finetune ? mc.train.finetune.device : mc.train.distill.device;
    if (d != "cpu")
      c.fail_at(mc.pos, "{}: training device \"{}\": this lowbit was built without the CUDA backend (nvcc was not "
                "found at build time)", mc.spec, d);
  }
  // Fine-tuning data: read whole (every record checked) now rather than after hours of work.
  std::set<std::string> data_checked;
  for (const auto& mc : spec.methods) {
    if (mc.train.kind != TrainKind::Finetune) continue;
    const train::FinetuneOptions& o = mc.train.finetune;
    if (!data_checked.insert(o.data + "|" + std::to_string(o.eval_size) + "|" + std::to_string(o.limit)).second)
      continue;
    c.at(mc.train.data_pos, [&] {
      LB_CHECK(fs::exists(o.data), "fine-tuning data '{}' does not exist", o.data);
      const int64_t n = int64_t(train::read_alpaca_json(o.data).size());
      const int64_t used = o.limit > 0 ? std::min(o.limit, n) : n;
      LB_CHECK(used > o.eval_size, "fine-tuning data '{}': {} records{} leave none to train on after eval_size {}",
               o.data, used, o.limit > 0 ? fmt::format(" (limit {})", o.limit) : "", o.eval_size);
    });
  }
  bool named_data = !ev.tasks.empty() || (spec.needs_calibration() && !fs::path(spec.calibration.set).is_absolute());
  for (const auto* list : {&ev.ppl, &ev.kld})
    for (const auto& d : *list) named_data = named_data || is_named_dataset(d, DatasetRole::Evaluation);
  std::string data_dir = spec.data_dir;
  if (named_data) {
    data_dir = c.at(spec.data_dir.empty() ? study_pos : c.pos(*find(*st, "data_dir")),
                    [&] { return resolve_data_dir(spec.data_dir); });
    spec.data_dir = data_dir;
  }
  for (size_t i = 0; i < ev.ppl.size(); ++i) c.at(ppl[i].second, [&] { resolve_eval_set(ev.ppl[i], data_dir); });
  for (size_t i = 0; i < ev.kld.size(); ++i) c.at(kld[i].second, [&] { resolve_eval_set(ev.kld[i], data_dir); });
  for (size_t i = 0; i < ev.tasks.size(); ++i)
    c.at(tasks[i].second, [&] { load_task(ev.tasks[i], data_dir, ev.mmlu_shots); });
  if (spec.needs_calibration())
    c.at(ct && find(cal, "set") ? c.pos(*find(cal, "set")) : spec.calibration.pos,
         [&] { resolve_calibration_set(spec.calibration.set, data_dir); });
  return spec;
}

StudySpec load_study_spec(const std::string& path, const SpecOptions& opt) {
  std::ifstream in(path, std::ios::binary);
  LB_CHECK(in.good(), "cannot read study spec '{}'", path);
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_study_spec(ss.str(), path, opt);
}

}  // namespace lowbit::study
