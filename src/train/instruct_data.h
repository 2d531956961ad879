// Instruction data for fine-tuning, as QLoRA's qlora.py prepares Stanford Alpaca:
//   - records {"instruction", "input" (optional, may be ""), "output"} in one JSON array;
//   - the prompt is Alpaca's template, with or without the input (the two texts below);
//   - source = BOS + prompt, target = output + EOS, each tokenized on its own without other
//     special tokens and truncated separately (keeping its first tokens) to the source and
//     target limits (QLoRA's Alpaca script: 384 and 128);
//   - the example is source + target; the loss is taken on the target tokens only
//     (train_on_source=False);
//   - a batch is right-padded with a pad token that no loss sees.
// Not reproduced: QLoRA's group_by_length sampler (batches of similar length); the held-out split
// and the data order here are lowbit's own seeded shuffles (mt19937_64), not HF datasets'.
#pragma once

#include "formats/tokenizer.h"
#include "train/llama_backward.h"

#include <cstdint>
#include <random>
#include <string>
#include <vector>

namespace lowbit::train {

struct InstructRecord {
  std::string instruction, input, output;
};

// Reads an Alpaca-format JSON file. A record that is not an object, lacks a string
// "instruction" or "output", or has a non-string "input" is a lowbit::Error naming the file and
// the record's index.
std::vector<InstructRecord> read_alpaca_json(const std::string& path);

// Alpaca's prompt for a record (the with-input template when input is not empty).
std::string alpaca_prompt(const InstructRecord& r);

struct InstructExample {
  std::vector<int32_t> tokens;  // source then target
  int64_t source_len = 0;       // tokens before the target
  bool source_truncated = false, target_truncated = false;
};

struct InstructLimits {
  int64_t source_max = 384, target_max = 128;
};

InstructExample tokenize_example(const Tokenizer& tok, const InstructRecord& r, const InstructLimits& lim);

// Right-padded batch of examples (T = the longest), targets shifted for a causal LM: position t
// of a sequence predicts its token t+1 when that token is part of the target.
Batch make_batch(const std::vector<const InstructExample*>& examples, int32_t pad_id);

// A seeded split into training and held-out indices: the indices 0..n-1 shuffled, the first
// `held_out` of them held out (both lists then sorted).
struct Split {
  std::vector<int64_t> train, held_out;
};
Split split_indices(int64_t n, int64_t held_out, uint64_t seed);

// The order of the training examples in epoch `epoch` (0-based): `train` shuffled by a generator
// seeded with (seed, epoch), so a resumed run reproduces the order without saving it.
std::vector<int64_t> epoch_order(const std::vector<int64_t>& train, uint64_t seed, int64_t epoch);

}  // namespace lowbit::train
