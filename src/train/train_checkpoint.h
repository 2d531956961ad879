// A LoRA training run's checkpoint: everything a killed run needs to continue to the same result.
//
//   DIR/adapter_config.json, DIR/adapter_model.safetensors   the adapters (PEFT's format)
//   DIR/optimizer.safetensors   AdamW's moments: "exp_avg.<peft key>", "exp_avg_sq.<peft key>" (fp32)
//   DIR/trainer_state.json      {"step": optimizer steps taken, "run": the run's identity (model,
//                                method, data, every option that changes the result),
//                                "log": per-step records}
// The data order is not stored: it is a function of the data seed and the step.
//
// Writing is atomic at the directory level: the new checkpoint is written to DIR.tmp, the old one
// renamed to DIR.old, DIR.tmp to DIR, then DIR.old removed. A run killed at any moment leaves DIR
// or (between the two renames) DIR.old holding the last complete checkpoint; load finds either.
#pragma once

#include "train/optimizer.h"

#include <nlohmann/json.hpp>

#include <optional>
#include <string>

namespace lowbit::train {

struct TrainCheckpoint {
  LoraAdapters params;
  AdamWState state;
  nlohmann::json run;  // the identity saved with it
  nlohmann::json log;  // array
};

void save_train_checkpoint(const std::string& dir, const LoraAdapters& params, const AdamWState& state,
                           const nlohmann::json& run, const nlohmann::json& log);

// The checkpoint in DIR (or DIR.old), or nullopt when there is none. Its run identity must equal
// `run`: a difference (a key of either missing in the other included) is a lowbit::Error naming
// the first differing key and both values.
std::optional<TrainCheckpoint> load_train_checkpoint(const std::string& dir, const LlamaConfig& c,
                                                     const nlohmann::json& run);

}  // namespace lowbit::train
