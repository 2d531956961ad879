// CUDA-graph decode: a CudaModel's batch-1, one-token decode step captured once into a cudaGraph
// and replayed for every new token (`lowbit generate --device cuda`, eval/cuda_eval.cpp's
// decoder). At batch 1 a step is a few hundred short kernels (norms, RoPE, the KV-cache append,
// attention, the packed or cuBLAS products, the residual adds in their epilogues, the LM head);
// launched one by one from the host the step is bound by the launches, replayed as one graph it
// is not.
//
// What one replay runs, on the model's stream, with no host work inside:
//   hidden [H] fp32 = embedding of the token id held on the device (or, for a host-held table
//                     (CudaModel::embedding_on_host), of the bf16 row uploaded before the replay)
//   every block (CudaModel::run_block, T = 1) with its KV-cache append at the position held on
//                     the device (RoPE, the append and attention read it there)
//   normed [H] bf16 = final norm; logits [V] fp32 = LM head
//   token = argmax(logits) (first index on ties), written over the token id; position += 1
// so the next replay decodes the token this one chose, at the next position: one graph serves
// every step of one cache (model, cache, capacity). The kernels, their launch parameters and
// their order are the eager step's (forward_cached of one token, then lm_head; only the KV-cache
// append is a copy kernel, cuda::kv_append, where the eager step copies the same bytes with
// cudaMemcpy2DAsync at a host-side address): the logits are the eager path's bit for bit, and
// so are the greedy tokens (tests/cuda/test_cuda_graph.cpp).
//
// Capture. A graph may not allocate, synchronize with the host or branch on host values, so the
// first step runs the same enqueue eagerly (it allocates what the step needs: the model's
// workspace at one row, the W4A16 split-K sums of one row, cuBLAS's workspace) and the second is
// captured, instantiated and launched. The captured workspaces are the model's, which a later
// forward of more rows may reallocate: each step compares their addresses with those captured
// and, if one moved, captures again (workspaces only grow, so nothing needs allocating then). A
// capture that fails (a call that may not be captured) leaves the steps eager (the same enqueue,
// launched kernel by kernel), with the reason in describe().
//
// Where it runs: graph_decode_refusal() (model/decode_graph_rules.h) says when it does not
// (LOWBIT_CUDA_GRAPHS=0, blocks streamed from the host, a profile, activation quantization);
// steps of more than one token (the prompt) always run eagerly.
#pragma once

#include "model/cuda_model.h"

#include <cstdint>
#include <string>
#include <vector>

namespace lowbit {

class CudaDecodeGraph {
 public:
  // Why `model`'s decode cannot run as a graph ("" when it can; LOWBIT_CUDA_GRAPHS is read now).
  static std::string refusal(const CudaModel& model);

  // Decodes into `cache` (which must outlive this and keep its buffers); allocates the step's own
  // buffers (hidden, normed, logits, token, position). Throws lowbit::Error where refusal() is
  // not empty.
  CudaDecodeGraph(CudaModel& model, GpuKvCache& cache);
  ~CudaDecodeGraph();
  CudaDecodeGraph(const CudaDecodeGraph&) = delete;
  CudaDecodeGraph& operator=(const CudaDecodeGraph&) = delete;

  // Runs `token` at position cache.length (then cache.length += 1) and returns the greedy next
  // token (the argmax of logits()). Synchronizes with the device for that one id.
  int32_t step(int32_t token);
  // The last step's logits [V] (fp32, device), valid until the next step.
  const float* logits() const { return logits_.get(); }
  // Steps replayed from a graph, and captures made so far.
  int64_t replays() const { return replays_; }
  int64_t captures() const { return captures_; }
  // "CUDA graph", or "eager (capture failed: ...)".
  std::string describe() const;

 private:
  // The step's work on the model's stream (eager, or recorded under capture).
  void enqueue();
  // Captures enqueue() into exec_; false (and failed_ set) when the capture is refused.
  bool capture();
  // The addresses of the model's workspaces that a captured step reads or writes.
  std::vector<const void*> workspace_addresses() const;
  void destroy_graph();

  CudaModel& m_;
  GpuKvCache& cache_;
  cuda::DeviceBuffer<float> hidden_, logits_;
  cuda::DeviceBuffer<cuda::bf16> normed_, row_;  // row_: the host-held table's looked-up row
  cuda::DeviceBuffer<int32_t> token_, pos_;      // the device-held token id and position
  // Pinned host staging of the transfers around a step: [0] the token id, [1] the position,
  // then the host-held table's row (H bf16 values).
  int32_t* staging_ = nullptr;
  int64_t token_on_device_ = -1, pos_on_device_ = -1;  // what token_ and pos_ hold (-1: unknown)
  bool warmed_ = false;                                  // enqueue() ran eagerly once
  std::vector<const void*> captured_addresses_;
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
  std::string failed_;
  int64_t replays_ = 0, captures_ = 0;
};

}  // namespace lowbit
