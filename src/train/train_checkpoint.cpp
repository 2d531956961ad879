#include "train/train_checkpoint.h"

#include "core/error.h"
#include "formats/safetensors.h"
#include "train/adapter_io.h"

#include <filesystem>
#include <fstream>

namespace lowbit::train {

namespace fs = std::filesystem;

namespace {

void add_moments(SafetensorsWriter& w, const char* prefix, const LoraAdapters& m) {
  m.for_each([&](const std::string& key, const std::vector<float>& v) {
    Tensor t = Tensor::empty(DType::F32, {int64_t(v.size())});
    std::copy(v.begin(), v.end(), t.mutable_data_as<float>());
    w.add(std::string(prefix) + key, t);
  });
}

void read_moments(const SafetensorsFile& f, const char* prefix, LoraAdapters& m) {
  m.for_each([&](const std::string& key, std::vector<float>& v) {
    const std::string name = std::string(prefix) + key;
    LB_CHECK(f.find(name) != nullptr, "'{}': tensor '{}' is missing", f.path(), name);
    const Tensor t = f.tensor(name);
    LB_CHECK(t.dtype() == DType::F32 && t.numel() == int64_t(v.size()),
             "'{}': tensor '{}' has {} elements of {}, expected {} fp32", f.path(), name, t.numel(),
             dtype_name(t.dtype()), v.size());
    std::copy(t.data_as<float>(), t.data_as<float>() + t.numel(), v.begin());
  });
}

}  // namespace

void save_train_checkpoint(const std::string& dir, const LoraAdapters& params, const AdamWState& state,
                           const nlohmann::json& run, const nlohmann::json& log) {
  const std::string tmp = dir + ".tmp", old = dir + ".old";
  fs::remove_all(tmp);
  save_peft_adapter(tmp, params, run.value("model", std::string()));
  SafetensorsWriter w;
  add_moments(w, "exp_avg.", state.m);
  add_moments(w, "exp_avg_sq.", state.v);
  w.write(tmp + "/optimizer.safetensors");
  {
    std::ofstream out(tmp + "/trainer_state.json", std::ios::trunc);
    out << nlohmann::json{{"step", state.step}, {"run", run}, {"log", log}}.dump(1) << "\n";
    out.flush();
    LB_CHECK(out.good(), "cannot write '{}/trainer_state.json'", tmp);
  }
  if (fs::exists(dir)) {
    fs::remove_all(old);
    fs::rename(dir, old);
  }
  fs::rename(tmp, dir);
  fs::remove_all(old);
}

std::optional<TrainCheckpoint> load_train_checkpoint(const std::string& dir, const LlamaConfig& c,
                                                     const nlohmann::json& run) {
  std::string d = dir;
  if (!fs::exists(d + "/trainer_state.json")) {
    d = dir + ".old";
    if (!fs::exists(d + "/trainer_state.json")) return std::nullopt;
  }
  std::ifstream in(d + "/trainer_state.json");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    LB_CHECK(false, "'{}/trainer_state.json': not valid JSON ({})", d, e.what());
  }
  LB_CHECK(j.contains("step") && j.contains("run"), "'{}/trainer_state.json' lacks \"step\" or \"run\"", d);
  const nlohmann::json& saved = j["run"];
  for (const auto& [k, v] : run.items())
    LB_CHECK(saved.contains(k) && saved[k] == v,
             "checkpoint '{}' belongs to another run: its {} is {}, this run's {}; remove it or use another output",
             d, k, saved.contains(k) ? saved[k].dump() : "absent", v.dump());
  // Options recorded only when given (an init adapter, IEC): the checkpoint's must be given too.
  for (const auto& [k, v] : saved.items())
    LB_CHECK(run.contains(k), "checkpoint '{}' belongs to another run: its {} is {}, this run has none; remove it or "
             "use another output", d, k, v.dump());
  TrainCheckpoint ck;
  ck.params = load_peft_adapter(d, c);
  ck.state = AdamWState::zeros_like(ck.params);
  ck.state.step = j["step"].get<int64_t>();
  auto f = SafetensorsFile::open(d + "/optimizer.safetensors");
  read_moments(*f, "exp_avg.", ck.state.m);
  read_moments(*f, "exp_avg_sq.", ck.state.v);
  ck.run = saved;
  ck.log = j.value("log", nlohmann::json::array());
  return ck;
}

}  // namespace lowbit::train
