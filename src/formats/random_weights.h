// Synthetic checkpoints for measurements at sizes no disk here holds: "random:DIR" opens DIR's
// config.json (and tokenizer) with weights generated on request, deterministic per tensor name
// (bf16, uniform with standard deviation 0.02; norms 1). A 70B-shaped model can then be
// quantized block by block without its 140 GB of weights ever being stored.
#pragma once

#include "formats/checkpoint.h"

#include <string>

namespace lowbit {

// True for "random:..." paths.
bool is_random_checkpoint(const std::string& path);
Checkpoint open_random_checkpoint(const std::string& path);

}  // namespace lowbit
