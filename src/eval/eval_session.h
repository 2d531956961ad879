// Evaluation on the device a command or study chose (core/device.h), without the caller knowing
// which backends this build has: an EvalSession owns the device (on a GPU, its context), places
// models on it, and each placed model answers perplexity, KL-divergence and multiple-choice
// requests there. open_eval_session() is the one place that knows the CUDA backend
// (eval/cuda_eval.cpp implements it); the CPU session is the reference every GPU result is
// tested against.
#pragma once

#include "core/device.h"
#include "eval/kl_divergence.h"
#include "eval/multiple_choice.h"
#include "eval/perplexity.h"
#include "model/llama_model.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

namespace lowbit {

// Incremental decoding on a placed model (generate): a KV cache of a fixed capacity; step() runs
// tokens after those already seen and returns the fp32 logits [vocab] of the last one, valid
// until the next step. next_greedy() runs them the same way and returns the argmax of those
// logits (the first index on ties, as std::max_element) without bringing them to the host where
// the device can take it (the GPU's one-token steps: a CUDA graph with the argmax on the device).
class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual std::span<const float> step(std::span<const int32_t> tokens) = 0;
  virtual int32_t next_greedy(std::span<const int32_t> tokens);
  // How the one-token steps run where a device has several ways ("CUDA graph", "eager (...)");
  // empty otherwise.
  virtual std::string decode_path() const { return {}; }
};

// A model as placed on a session's device (on a GPU: its weights uploaded once, for all the
// evaluations asked of it). It refers to the LlamaModel it was placed from, which must outlive it.
class PlacedModel {
 public:
  virtual ~PlacedModel() = default;
  // `batch`: windows per forward where the device batches them (the CPU runs one at a time; the
  // result does not depend on it).
  virtual PerplexityResult perplexity(const std::vector<std::vector<int32_t>>& windows, int64_t batch,
                                      const PerplexityProgress& progress = {}) = 0;
  // KLD(base || this model); base must be placed on the same session (throws otherwise).
  virtual KlDivergenceResult kl_divergence(PlacedModel& base, const std::vector<std::vector<int32_t>>& windows,
                                           const KlDivergenceProgress& progress = {}) = 0;
  virtual std::unique_ptr<McBackend> mc_backend(int64_t max_length) = 0;
  // Logits [T, vocab] (fp32) of every position of one sequence.
  virtual Tensor logits(std::span<const int32_t> ids) = 0;
  // A decoder over `capacity` positions (throws beyond the model's context).
  virtual std::unique_ptr<Decoder> decoder(int64_t capacity) = 0;
  // The GPU time of each op of the perplexity passes (ppl --profile), when the model was placed
  // with profiling on a device that has it; null otherwise.
  virtual nlohmann::json profile(const PerplexityResult& r) const { return nullptr; }
};

class EvalSession {
 public:
  virtual ~EvalSession() = default;
  virtual const Device& device() const = 0;
  // As results record it: "cpu", or the GPU's name.
  virtual std::string name() const = 0;
  virtual std::unique_ptr<PlacedModel> place(const LlamaModel& model, bool profile = false) = 0;
  // Device memory high-water mark since the last reset (GPU sessions; nullopt on the CPU, whose
  // peak is the process's resident set).
  virtual void reset_peak_memory() {}
  virtual std::optional<double> peak_memory_bytes() const { return std::nullopt; }
};

// Throws lowbit::Error naming the device when this build or machine cannot use it
// (check_device_available).
std::unique_ptr<EvalSession> open_eval_session(const Device& device);

// The GPU's EvalSession, which open_eval_session opens for a CUDA device: one cuda::Context; each
// placed model is a CudaModel on it, and KL-divergence runs both models in that context
// (eval/cuda_eval.cpp). A build without CUDA links eval/cuda_eval_none.cpp instead, which refuses.
std::unique_ptr<EvalSession> open_cuda_eval_session(const Device& device);

}  // namespace lowbit
