#include "eval/vlm/vlm_task.h"

#include "core/error.h"
#include "eval/vlm/vlm_tasks_internal.h"

#include <filesystem>
#include <fstream>

namespace lowbit::vlm {

namespace {

const std::vector<VlmTask>& tasks() {
  static const std::vector<VlmTask> t = {ai2d_task(), chartqa_task(), docvqa_task(), mmbench_en_task(), mme_task()};
  return t;
}

const char* kind_name(FieldKind k) {
  switch (k) {
    case FieldKind::String: return "a string";
    case FieldKind::StringOrNull: return "a string or null";
    case FieldKind::StringList: return "a list of strings";
    case FieldKind::Int: return "an integer";
    case FieldKind::IndexLike: return "an integer or a string of digits";
    case FieldKind::IntOrString: return "an integer or a string";
  }
  return "?";
}

bool matches(const Json& v, FieldKind k) {
  switch (k) {
    case FieldKind::String: return v.is_string();
    case FieldKind::StringOrNull: return v.is_string() || v.is_null();
    case FieldKind::StringList:
      if (!v.is_array()) return false;
      for (const Json& e : v)
        if (!e.is_string()) return false;
      return true;
    case FieldKind::Int: return v.is_number_integer();
    case FieldKind::IndexLike: {
      if (v.is_number_integer()) return true;
      if (!v.is_string()) return false;
      const std::string& s = v.get_ref<const std::string&>();
      return !s.empty() && s.size() < 18 && s.find_first_not_of("0123456789") == std::string::npos;
    }
    case FieldKind::IntOrString: return v.is_number_integer() || v.is_string();
  }
  return false;
}

std::string type_of(const Json& v) { return v.type_name(); }

}  // namespace

const std::vector<std::string>& vlm_task_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> n;
    for (const VlmTask& t : tasks()) n.push_back(t.name);
    return n;
  }();
  return names;
}

const VlmTask& vlm_task(const std::string& name) {
  for (const VlmTask& t : tasks())
    if (t.name == name) return t;
  std::string known;
  for (const std::string& n : vlm_task_names()) known += (known.empty() ? "" : ", ") + n;
  throw Error(fmt::format("unknown vision-language task '{}' (known: {})", name, known));
}

int64_t index_value(const Json& v) {
  if (v.is_number_integer()) return v.get<int64_t>();
  return std::stoll(v.get<std::string>());
}

Json mean_of(const std::vector<Json>& records, const char* key) {
  double sum = 0;
  int64_t n = 0;
  for (const Json& r : records) {
    if (!r.contains(key)) continue;
    sum += r[key].get<double>();
    ++n;
  }
  if (n == 0) return nullptr;
  return sum / double(n);
}

void check_vlm_doc(const VlmTask& task, const Json& doc, const std::string& where) {
  LB_CHECK(doc.is_object(), "{}: a {} item must be a JSON object, got {}", where, task.name, type_of(doc));
  for (const FieldSpec& f : task.fields) {
    if (!doc.contains(f.name)) {
      LB_CHECK(!f.required, "{}: {} item has no field '{}' ({})", where, task.name, f.name, kind_name(f.kind));
      continue;
    }
    const Json& v = doc[f.name];
    LB_CHECK(matches(v, f.kind), "{}: field '{}' must be {}, got {} {}", where, f.name, kind_name(f.kind),
             type_of(v), v.dump().substr(0, 80));
  }
}

std::string vlm_data_file(const VlmTask& task, const std::string& path) {
  namespace fs = std::filesystem;
  std::string file = path;
  if (fs::is_directory(path)) file = (fs::path(path) / (task.name + ".jsonl")).string();
  LB_CHECK(fs::is_regular_file(file), "{} data '{}' not found (a jsonl file, or a folder holding {}.jsonl; "
           "scripts/vlm_parquet_to_jsonl.py writes it from the Hugging Face parquet files)",
           task.name, file, task.name);
  return file;
}

std::vector<VlmItem> load_vlm_items(const VlmTask& task, const std::string& path, int64_t limit) {
  namespace fs = std::filesystem;
  const std::string file = vlm_data_file(task, path);
  std::ifstream in(file, std::ios::binary);
  LB_CHECK(in.good(), "cannot open '{}'", file);
  const fs::path base = fs::path(file).parent_path();
  std::vector<VlmItem> items;
  std::string line;
  int64_t lineno = 0;
  while (std::getline(in, line)) {
    ++lineno;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", file, lineno);
    VlmItem item;
    item.where = where;
    try {
      item.doc = Json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw Error(fmt::format("{}: not valid JSON: {}", where, e.what()));
    }
    check_vlm_doc(task, item.doc, where);
    LB_CHECK(item.doc.contains("image") && item.doc["image"].is_string(),
             "{}: {} item has no field 'image' (the image file's path, relative to the jsonl)", where, task.name);
    const fs::path img = base / item.doc["image"].get<std::string>();
    LB_CHECK(fs::is_regular_file(img), "{}: image '{}' not found", where, img.string());
    item.image = img.string();
    items.push_back(std::move(item));
    if (limit > 0 && int64_t(items.size()) >= limit) break;
  }
  LB_CHECK(!items.empty(), "{}: no items", file);
  return items;
}

}  // namespace lowbit::vlm
