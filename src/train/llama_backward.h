// Forward and backward of a LlamaModel on a batch, for training: the loss (mean cross-entropy
// over the target tokens, or any loss on the logits: StepOptions::logits_loss) and its gradients
// with respect to LoRA adapters (A, B and, with IEC, IR-QLoRA's two scalars per linear: iec.h)
// and, optionally, every base weight (for full fine-tuning, for parameters that live in the
// linears, and for checking the backward against autograd).
//
// Gradient checkpointing per block: the forward keeps only each block's input [B*T, H]; the
// backward runs the block's forward again to get its intermediates, then its backward. Peak
// activation memory is L * B*T*H floats plus one block's intermediates.
//
// The batch: B sequences of T tokens; targets[b*T + t] is the token position t must predict
// (tokens[b*T + t + 1] for a causal LM) or negative where no loss is taken (the prompt, padding,
// the last position). Sequences attend causally from position 0; right padding therefore never
// affects the real tokens.
#pragma once

#include "model/llama_model.h"
#include "train/lora.h"

#include <cstdint>
#include <functional>
#include <vector>

namespace lowbit::train {

struct Batch {
  int64_t B = 0, T = 0;
  std::vector<int32_t> tokens;   // [B*T]
  std::vector<int32_t> targets;  // [B*T], < 0: no loss
  int64_t num_targets() const;
};

// Gradients of every base weight, fp32, shapes as torch stores them. Sized by zeros().
struct BaseGrads {
  std::vector<float> embed;       // [V, H] (includes the LM head's gradient when tied)
  std::vector<float> lm_head;     // [V, H] (empty when tied)
  std::vector<float> final_norm;  // [H]
  struct Block {
    std::vector<float> input_norm, post_norm;  // [H]
    std::array<std::vector<float>, 7> linear;  // [out, in], by LinearKind
  };
  std::vector<Block> blocks;
  static BaseGrads zeros(const LlamaConfig& c);
  // Only the blocks' linears (the embedding, LM head and norms empty: their gradients are not
  // computed), for training parameters that live in the linears alone.
  static BaseGrads linears_only(const LlamaConfig& c);
};

// A loss on the logits other than cross-entropy with the batch's targets (distillation):
// called for consecutive row chunks [row0, row0 + rows) of the [B*T, V] logits, in order; it
// receives the chunk's logits in `logits` [rows, V], overwrites them with d loss / d logits and
// returns the chunk's loss. The step's loss_sum is the sum of its returns.
using LogitsLoss = std::function<double(int64_t row0, int64_t rows, int64_t V, float* logits)>;

struct StepOptions {
  // dlogits = loss_scale * (softmax - onehot): 1 / (target tokens in the whole accumulated
  // batch) gives the gradient of the mean loss; 0 = 1 / batch.num_targets().
  double loss_scale = 0;
  // Seeds LoRA dropout's masks (a counter-based hash of seed, layer, linear and element, so the
  // recomputation in the backward draws the same mask).
  uint64_t dropout_seed = 0;
  // Replaces the cross-entropy (and loss_scale) when set.
  LogitsLoss logits_loss;
  // The caller's promise that `lora` is the same object, holding the same values, as in its
  // previous call to the same engine (a later micro-batch of one optimizer step): an engine that
  // keeps the adapters on a device (llama_backward_cuda.h) then does not upload them again. The
  // CPU ignores it.
  bool adapters_unchanged = false;
  // The caller's promise that another call follows for the same step, with the same `lora`
  // (adapters_unchanged) and the same `lora_grads`: an engine on a device may then keep this
  // call's adapter gradients there, summed in call order, and add the sum into lora_grads with
  // the last call's (one download per optimizer step instead of one per micro-batch). Into
  // gradient buffers that start at zero, as the trainer's do, the result is bit for bit that of
  // adding each call's gradients on the host. A call without adapters_unchanged starts anew
  // (a sum left by a step that failed midway is dropped). The CPU ignores it.
  bool more_micro_batches = false;
};

struct StepResult {
  double loss_sum = 0;      // sum of -log p(target) over the batch's target tokens
  int64_t num_targets = 0;  // their count
  double mean_loss() const { return num_targets ? loss_sum / double(num_targets) : 0.0; }
};

// Runs the batch forward and backward. `lora` may be null (the bare base model); its gradients
// are added into `lora_grads` (same shapes; may be null), the base weights' into `base_grads`
// (may be null: the base is frozen). Bad input (token ids outside the vocabulary, targets
// outside it, a sequence longer than the model's context) is a lowbit::Error.
StepResult forward_backward(const LlamaModel& model, const LoraAdapters* lora, const Batch& batch,
                            const StepOptions& opt, LoraAdapters* lora_grads, BaseGrads* base_grads);

// The loss alone (no gradients), with the adapters applied unmerged; dropout is off.
StepResult forward_loss(const LlamaModel& model, const LoraAdapters* lora, const Batch& batch);

// The checks both functions make before any work (and the GPU twin, llama_backward_cuda.h): the
// batch's shape, its length against the model's context, its targets against the vocabulary, the
// adapters' layer count. Throws lowbit::Error naming the values. (Token ids are checked where
// they are embedded.)
void check_step_input(const LlamaModel& model, const LoraAdapters* lora, const Batch& batch);

}  // namespace lowbit::train
