#include "model/cuda_decode_graph.h"

#include "core/error.h"
#include "model/decode_graph_rules.h"

#include <cstring>
#include <exception>

namespace lowbit {

std::string CudaDecodeGraph::refusal(const CudaModel& model) {
  GraphDecodeConditions c;
  c.graphs_allowed = cuda_graphs_allowed();
  c.resident = model.resident();
  c.profiled = model.profile() != nullptr;
  c.activation_quantized = model.act_.has_value();
  return graph_decode_refusal(c);
}

CudaDecodeGraph::CudaDecodeGraph(CudaModel& model, GpuKvCache& cache) : m_(model), cache_(cache) {
  const std::string why = refusal(model);
  LB_CHECK(why.empty(), "CUDA-graph decode cannot run on this model: {}", why);
  LB_CHECK(!cache.k.empty() && cache.capacity > 0, "CUDA-graph decode: a KV cache of {} positions and {} layers",
           cache.capacity, cache.k.size());
  const LlamaConfig& c = model.config();
  hidden_.resize(size_t(c.hidden_size));
  normed_.resize(size_t(c.hidden_size));
  logits_.resize(size_t(c.vocab_size));
  token_.resize(1);
  pos_.resize(1);
  if (model.embedding_on_host()) row_.resize(size_t(c.hidden_size));
  // Pinned, so that the uploads before a replay and the token's download are plain DMA (every
  // step ends with a synchronization, so the next step may overwrite them).
  const size_t bytes = 2 * sizeof(int32_t) + (model.embedding_on_host() ? size_t(c.hidden_size) * sizeof(uint16_t) : 0);
  LB_CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&staging_), bytes));
}

CudaDecodeGraph::~CudaDecodeGraph() {
  destroy_graph();
  if (staging_ != nullptr) cudaFreeHost(staging_);
}

void CudaDecodeGraph::destroy_graph() {
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  if (graph_ != nullptr) cudaGraphDestroy(graph_);
  exec_ = nullptr;
  graph_ = nullptr;
}

std::string CudaDecodeGraph::describe() const {
  return failed_.empty() ? "CUDA graph" : "eager (" + failed_ + ")";
}

std::vector<const void*> CudaDecodeGraph::workspace_addresses() const {
  const cuda::W4A16Workspace& w = m_.w4ws_;
  return {m_.x_.get(),         m_.qkv_.get(),     m_.att_.get(),      m_.gate_up_.get(),
          w.gathered.get(),    w.partial.get(),   w.counters.get(),   w.dequantized.get(),
          cache_.k[0].get(),   cache_.v[0].get()};
}

void CudaDecodeGraph::enqueue() {
  const LlamaConfig& c = m_.config();
  const int64_t H = c.hidden_size;
  const cudaStream_t s = m_.context().stream();
  // The eager step's kernels in its order (CudaModel::embed, run_cached, lm_head), on buffers
  // that stay put, with the position read from pos_.
  if (m_.embedding_on_host())
    cuda::bf16_to_f32(row_.get(), hidden_.get(), H, s);
  else
    cuda::embed(token_.get(), m_.embed_.get(), hidden_.get(), 1, H, s);
  struct DevicePast {
    CudaModel& m;
    DevicePast(CudaModel& model, const int32_t* pos) : m(model) { m.device_past_ = pos; }
    ~DevicePast() { m.device_past_ = nullptr; }
  } device_past(m_, pos_.get());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) m_.run_block(i, m_.blocks_[size_t(i)], hidden_.get(), 1, 1, &cache_);
  m_.final_norm(hidden_.get(), normed_.get(), 1);
  m_.lm_head(normed_.get(), logits_.get(), 1);
  cuda::argmax_rows(logits_.get(), token_.get(), 1, c.vocab_size, s);
  cuda::add_i32(pos_.get(), 1, s);
}

bool CudaDecodeGraph::capture() {
  const cudaStream_t s = m_.context().stream();
  // Thread-local: a call of this thread that may not be captured (an allocation, a
  // synchronization) fails the capture instead of running.
  LB_CUDA_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
  cudaGraph_t g = nullptr;
  std::string error;
  try {
    enqueue();
  } catch (const std::exception& e) {
    error = e.what();
  }
  const cudaError_t end = cudaStreamEndCapture(s, &g);
  if (error.empty() && end != cudaSuccess) error = std::string("cudaStreamEndCapture: ") + cudaGetErrorString(end);
  if (!error.empty()) {
    if (g != nullptr) cudaGraphDestroy(g);
    (void)cudaGetLastError();  // capture errors are not sticky; clear the last one
    failed_ = "capture failed: " + error;
    return false;
  }
  const cudaError_t inst = cudaGraphInstantiate(&exec_, g, 0);
  if (inst != cudaSuccess) {  // as a failed capture: the steps run eagerly
    cudaGraphDestroy(g);
    exec_ = nullptr;
    (void)cudaGetLastError();
    failed_ = std::string("capture failed: cudaGraphInstantiate: ") + cudaGetErrorString(inst);
    return false;
  }
  graph_ = g;
  captured_addresses_ = workspace_addresses();
  ++captures_;
  return true;
}

int32_t CudaDecodeGraph::step(int32_t token) {
  const LlamaConfig& c = m_.config();
  LB_CHECK(token >= 0 && token < c.vocab_size, "CUDA-graph decode: token id {} is outside the vocabulary (size {})",
           token, c.vocab_size);
  cache_.check_room(1);
  const cudaStream_t s = m_.context().stream();
  // The step's inputs, uploaded outside the graph when the device does not hold them already
  // (after a step it holds the position that follows and the token it chose).
  if (pos_on_device_ != cache_.length) {
    staging_[1] = int32_t(cache_.length);
    cuda::upload(pos_.get(), staging_ + 1, 1, s);
  }
  if (m_.embedding_on_host()) {
    const int64_t H = c.hidden_size;
    uint16_t* row = reinterpret_cast<uint16_t*>(staging_ + 2);
    std::memcpy(row, m_.embed_host_.data_as<uint16_t>() + int64_t(token) * H, size_t(H) * sizeof(uint16_t));
    cuda::upload(row_.get(), reinterpret_cast<const cuda::bf16*>(row), size_t(H), s);
  } else if (token_on_device_ != token) {
    staging_[0] = token;
    cuda::upload(token_.get(), staging_, 1, s);
  }
  // A forward of more rows since the capture may have moved the workspaces the graph uses.
  if (exec_ != nullptr && workspace_addresses() != captured_addresses_) destroy_graph();
  // The first step runs eagerly, so that everything it allocates exists before the capture.
  if (exec_ == nullptr && warmed_ && failed_.empty()) capture();
  if (exec_ != nullptr) {
    LB_CUDA_CHECK(cudaGraphLaunch(exec_, s));
    ++replays_;
  } else {
    enqueue();
    warmed_ = true;
  }
  cache_.length += 1;
  pos_on_device_ = cache_.length;
  cuda::download(staging_, token_.get(), 1, s);
  token_on_device_ = staging_[0];
  return staging_[0];
}

}  // namespace lowbit
