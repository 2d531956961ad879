// Data-free distillation data: windows of text the 16-bit model writes itself, as LLM-QAT
// (Liu et al. 2023, arXiv 2305.17888, Sec. 2.1) generates them and DB-LLM (Chen et al. 2024,
// arXiv 2402.11960) takes them over for its distillation: a first token from the vocabulary, a
// few top-1 tokens, then tokens sampled from the model's softmax.
//
// Each decision of the reference code (facebookresearch/LLM-QAT, generate_data.py, run with
// Hugging Face transformers' generate() on LLaMA-7B) and lowbit's, each free choice an option:
//
//   first token  reference: every vocabulary id in turn (64 chunks of 500 ids: 0 .. 31999), the
//                whole sweep once per greedy count; the paper says "randomly sampled".
//                first = random (default): uniform over [0, V), V = the model's vocab_size,
//                  id = floor(u * V) with u = (mt19937_64() >> 11) * 2^-53;
//                first = sweep: sample s starts with id s mod V (the reference's order).
//                Special ids (BOS, EOS, UNK) are drawn like any other, as in the reference.
//   greedy       reference: generate(do_sample=False, max_length=j) for j = 3, 4, 5, the length
//                counting the first token: 2, 3 or 4 argmax tokens after it ("the first 3~5
//                tokens" of the paper include the first). greedy = "LO-HI" (default "2-4"):
//                sample s takes LO + (s mod (HI-LO+1)) argmax tokens under first = random, and
//                LO + ((s div V) mod (HI-LO+1)) under first = sweep (a whole sweep per count, the
//                reference's loop order); greedy = "N": N for every sample. The argmax is the
//                first maximum of the fp32 logits (the lowest id on ties).
//   sampling     reference: generate(do_sample=True) with transformers' defaults, which LLaMA-7B's
//                generation config leaves alone: temperature 1, top_k 50, top_p 1, applied in
//                that order (ties at the k-th logit are kept). temperature (> 0, default 1) and
//                top_k (default 50; 0: the whole vocabulary) are options; no top-p. The kept
//                logits z_i = l_i / temperature give fp64 weights w_i = exp(z_i - max z), summed
//                in id order to S; one u (as above) per sampled token picks the first id whose
//                running sum exceeds u * S (inverse CDF; the last kept id if rounding leaves none).
//   length       reference: max_length = 2048 tokens, the prompt included, and 2048-token
//                training blocks. seqlen (default 2048) is both: a sequence holds at most seqlen
//                tokens, BOS included, so that a sequence that runs its full length is one window.
//   EOS          reference: generate() ends a sequence at the EOS id of the model's config.
//                eos = stop (default): an EOS (any of config.eos_token_ids, greedy or sampled)
//                ends the sequence and is not kept (the reference's decoding drops it);
//                eos = continue: EOS is a token like the others and every sequence runs seqlen.
//   special      reference: the prompt is the first token alone (no BOS); the text is decoded
//   tokens       with skip_special_tokens, re-tokenized for training (the tokenizer prepends BOS
//                to each text), concatenated and cut into 2048-token blocks, the remainder
//                dropped. lowbit keeps the generated ids (no decode / re-encode round trip);
//                bos = window (default): BOS (config.bos_token_id) opens each sequence's
//                training tokens, the generation context has none (the reference's);
//                bos = both: BOS also opens the generation context; bos = off: no BOS.
//                Sequences (BOS + ids) are concatenated in order and cut into seqlen windows
//                until nsamples are full; the rest of the last sequence is dropped.
//
// Generation runs on the CPU (LlamaModel::forward_cached with a KV cache, one sequence at a
// time), also when the training steps run on a GPU: the ids, drawn from one mt19937_64(seed)
// stream in order (the first token's u, then one u per sampled token, sequence after sequence),
// are then the same in every build and on every device, and so is the data identity.
#pragma once

#include "calib/calib_data.h"
#include "model/llama_model.h"

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string>

namespace lowbit::train {

struct GenDataOptions {
  int64_t nsamples = 128, seqlen = 2048;  // windows [nsamples][seqlen]
  uint64_t seed = 0;
  std::string first = "random";  // random, sweep
  std::string greedy = "2-4";    // "N" or "LO-HI"
  double temperature = 1.0;
  int64_t top_k = 50;          // 0: the whole vocabulary
  std::string eos = "stop";    // stop, continue
  std::string bos = "window";  // window, both, off
};

// Throws lowbit::Error naming the option and its value for values no run can take.
void check_gen_data_options(const GenDataOptions& o);

// greedy's "N" or "LO-HI" as {LO, HI}; throws naming the text.
std::pair<int64_t, int64_t> parse_gen_greedy(const std::string& text);

// {"set": "generated", "convention", "nsamples", "seqlen", "seed", "first", "greedy",
//  "temperature", "top_k", "eos", "bos"}: what a trained model records as its data.
nlohmann::json gen_data_identity(const GenDataOptions& o);

// The argmax of logits[V] (the first maximum).
int32_t greedy_token(std::span<const float> logits);
// One token sampled from softmax(logits / temperature) restricted to the top_k logits (0: all),
// with u in [0, 1) (the inverse CDF above).
int32_t sample_token(std::span<const float> logits, double temperature, int64_t top_k, double u);
// u in [0, 1) from 53 bits of one draw.
double uniform01(std::mt19937_64& rng);

// One generated sequence, before BOS and packing: the first token, the greedy ones, then the
// sampled ones, at most `max_len` ids, ended early by EOS under eos = stop (EOS not included).
// `cache` (emptied first) holds at least max_len positions, one more under bos = both.
std::vector<int32_t> generate_sequence(const LlamaModel& teacher, const GenDataOptions& o, int64_t sample,
                                       int64_t max_len, std::mt19937_64& rng, KvCache& cache);

// The windows: a Calibration whose set is {"generated", convention} (no files), nsamples and
// seqlen as asked, seed o.seed and bos o.bos. on_sequence(windows full so far, nsamples) after
// each sequence. Throws when bos needs a BOS id the model's config lacks, or seqlen exceeds the
// model's context.
Calibration generate_distill_data(const LlamaModel& teacher, const GenDataOptions& o,
                                  const std::function<void(int64_t, int64_t)>& on_sequence = {});

}  // namespace lowbit::train
