#include "train/fdb_train_cuda.h"

#include "backend/cuda/fdb_train.cuh"
#include "backend/cuda/ops_backward.cuh"
#include "core/error.h"
#include "train/llama_backward_cuda.h"

#include <algorithm>

namespace lowbit::train {

namespace {

using cuda::DeviceBuffer;

// One student linear's fdb parameters on the GPU.
struct GpuFdb {
  int64_t rows = 0, cols = 0, group = 0;
  DeviceBuffer<uint8_t> b1, b2;     // planes [rows, ceil(cols / 8)]
  DeviceBuffer<float> alpha, grad;  // [groups, 3]
  DType round_to = DType::F32;      // the linear's dequant_dtype: what its dequantized weight holds
};

// This engine's phases (fdb_train_cuda.h, "Phase timing").
constexpr const char* kPhaseTeacher = "teacher forward";
constexpr const char* kPhaseDequant = "fdb dequantization";
constexpr const char* kPhaseGroupGrad = "fdb group gradients";
constexpr const char* kPhaseTeacherLogits = "teacher logits";
constexpr const char* kPhaseDad = "DAD loss";
constexpr const char* kPhaseLatent = "fdb latent dW download";
constexpr const char* kPhaseGradDownload = "fdb gradients download";
constexpr const char* kPhaseUpload = "fdb parameters upload";

int dad_mode(DadWeight w) {
  switch (w) {
    case DadWeight::None: return 0;
    case DadWeight::Teacher: return 1;
    default: return 2;
  }
}

class Engine final : public FdbCudaEngine {
 public:
  Engine(const Device& d, const LlamaModel& teacher, const std::vector<std::array<QuantizedLinear, 7>>& linears,
         int64_t max_chunk_rows, ComputePrecision compute)
      : c_(teacher.config()), gpu_(teacher, d.index, compute) {
    student_.max_chunk_rows = max_chunk_rows;
    LB_CHECK(int64_t(linears.size()) == c_.num_hidden_layers, "fdb training on {}: {} layers of fdb weights for a "
             "model of {}", d.str(), linears.size(), c_.num_hidden_layers);
    lin_.resize(linears.size());
    int64_t most = 0;
    for (size_t l = 0; l < linears.size(); ++l)
      for (LinearKind k : kAllLinears) {
        set_linear(int64_t(l), k, linears[l][size_t(k)], true);
        most = std::max(most, linear_out_features(c_, k) * linear_in_features(c_, k));
      }
    weight_.resize(size_t(most));
    gpu_.context().synchronize();
    (void)gpu_.take_phase_seconds();  // the initial uploads are no step's
    // The student's weights: each fdb linear dequantized into one scratch right before each use.
    student_.weight = [this](int64_t layer, LinearKind k) -> const float* {
      const GpuFdb& g = lin_[size_t(layer)][size_t(k)];
      gpu_.mark_phase(kPhaseDequant);
      cuda::fdb_dequantize_f32(g.b1.get(), g.b2.get(), g.alpha.get(), weight_.get(), g.rows, g.cols, g.group, stream(),
                               g.round_to);
      return weight_.get();
    };
  }

  std::string name() const override { return gpu_.device_name(); }

  void set_linear(int64_t layer, LinearKind k, const QuantizedLinear& q, bool planes) override {
    GpuFdb& g = lin_[size_t(layer)][size_t(k)];
    const cudaStream_t s = stream();
    const Tensor& a = q.extras.at("fdb.alpha");
    gpu_.mark_phase(kPhaseUpload);
    if (planes || g.rows == 0) {
      LB_CHECK(q.rows == linear_out_features(c_, k) && q.cols == linear_in_features(c_, k),
               "fdb training: layer {} {} is [{}, {}], the model's is [{}, {}]", layer, linear_name(k), q.rows, q.cols,
               linear_out_features(c_, k), linear_in_features(c_, k));
      g.rows = q.rows;
      g.cols = q.cols;
      g.group = q.group_size;
      g.round_to = q.dequant_dtype;
      for (auto [dev, name] : {std::pair{&g.b1, "fdb.b1"}, std::pair{&g.b2, "fdb.b2"}}) {
        const Tensor& p = q.extras.at(name);
        dev->resize(size_t(p.numel()));
        cuda::upload(dev->get(), p.data_as<uint8_t>(), size_t(p.numel()), s);
      }
      g.alpha.resize(size_t(a.numel()));
      g.grad.resize(size_t(a.numel()));
    }
    cuda::upload(g.alpha.get(), a.data_as<float>(), size_t(a.numel()), s);
  }

  void begin_step() override {
    for (auto& layer : lin_)
      for (GpuFdb& g : layer) LB_CUDA_CHECK(cudaMemsetAsync(g.grad.get(), 0, g.grad.bytes(), stream()));
  }

  DadSums micro_step(const Batch& b, const DadOptions& dad, double scale, FdbGradBuffers* glatent) override {
    const cudaStream_t s = stream();
    const float* th = teacher_hidden(b);
    std::vector<float> host_dw;
    // The chunks' rows, in the order the step hands them out: the loss is summed per chunk at
    // the end, from one download of the per-row losses (no wait for the device per chunk).
    std::vector<std::pair<int64_t, int64_t>> chunks;
    CudaStepHooks hooks = student_;
    hooks.logits_loss = [&](int64_t row0, int64_t rows, int64_t V, float* logits) {
      gpu_.mark_phase(kPhaseTeacherLogits);
      teacher_logits(th, row0, rows);
      gpu_.mark_phase(kPhaseDad);
      cuda::dad_loss_backward_f32(tlogits_.get(), logits, rloss_.get() + row0, rkl_.get() + row0, rw_.get() + row0,
                                  rows, V, dad_mode(dad.weight), dad.gamma, scale, s);
      chunks.emplace_back(row0, rows);
      return 0.0;
    };
    hooks.weight_grad = [&](int64_t layer, LinearKind k, const float* dw) {
      GpuFdb& g = lin_[size_t(layer)][size_t(k)];
      gpu_.mark_phase(kPhaseGroupGrad);
      cuda::fdb_group_grad_f32(dw, g.b1.get(), g.b2.get(), g.grad.get(), g.rows, g.cols, g.group, s);
      if (glatent != nullptr) {
        std::vector<float>& dst = (*glatent)[size_t(layer)][size_t(k)];
        LB_CHECK(int64_t(dst.size()) == g.rows * g.cols, "fdb training: latent gradient of layer {} {} has {} values "
                 "for [{}, {}]", layer, linear_name(k), dst.size(), g.rows, g.cols);
        gpu_.mark_phase(kPhaseLatent);
        host_dw.resize(dst.size());
        cuda::download(host_dw.data(), dw, host_dw.size(), s);
        for (size_t i = 0; i < dst.size(); ++i) dst[i] += host_dw[i];
      }
    };
    const StepResult r = gpu_.forward_backward_hooked(b, hooks);
    const int64_t N = b.B * b.T;
    std::vector<double> loss(static_cast<size_t>(N)), kl(static_cast<size_t>(N)), w(static_cast<size_t>(N));
    gpu_.mark_phase(kPhaseDad);
    cuda::download(loss.data(), rloss_.get(), loss.size(), s);
    cuda::download(kl.data(), rkl_.get(), kl.size(), s);
    cuda::download(w.data(), rw_.get(), w.size(), s);
    // The step's sum in its order: each chunk's rows summed from zero, the chunks' sums added to
    // the step's (zero: the hook returned none).
    DadSums sums;
    sums.loss = r.loss_sum;
    for (const auto& [row0, rows] : chunks) {
      double part = 0;
      for (int64_t i = row0; i < row0 + rows; ++i) part += loss[size_t(i)];
      sums.loss += part;
    }
    for (double x : kl) sums.kl += x;
    for (double x : w) sums.weight += x;
    fold_phases(nullptr);
    return sums;
  }

  void end_step(FdbGradBuffers& galpha) override {
    const cudaStream_t s = stream();
    std::vector<float> tmp;
    gpu_.mark_phase(kPhaseGradDownload);
    for (size_t l = 0; l < lin_.size(); ++l)
      for (LinearKind k : kAllLinears) {
        const GpuFdb& g = lin_[l][size_t(k)];
        std::vector<float>& dst = galpha[l][size_t(k)];
        LB_CHECK(dst.size() == g.grad.size(), "fdb training: {} group gradients of layer {} {} for {} groups",
                 dst.size(), l, linear_name(k), g.grad.size() / 3);
        tmp.resize(dst.size());
        cuda::download(tmp.data(), g.grad.get(), tmp.size(), s);
        for (size_t i = 0; i < dst.size(); ++i) dst[i] += tmp[i];
      }
    fold_phases(nullptr);
  }

  double kl_sum(const Batch& b) override {
    // Not a step's work: its phases are dropped, the step's so far kept.
    fold_phases(nullptr);
    std::vector<PhaseSeconds> keep = phases_;
    const cudaStream_t s = stream();
    const float* th = teacher_hidden(b);
    const float* sh = gpu_.forward_hidden(b, &student_);
    const int64_t N = b.B * b.T, H = c_.hidden_size, V = c_.vocab_size;
    const int64_t chunk = rows_per_chunk(N);
    slogits_.resize(size_t(chunk * V));
    for (int64_t r0 = 0; r0 < N; r0 += chunk) {
      const int64_t rows = std::min(chunk, N - r0);
      gpu_.mark_phase(kPhaseTeacherLogits);
      teacher_logits(th, r0, rows);
      gpu_.mark_phase(kPhaseDad);
      gpu_.head_logits(sh + r0 * H, slogits_.get(), rows);
      cuda::dad_loss_backward_f32(tlogits_.get(), slogits_.get(), rloss_.get() + r0, rkl_.get() + r0,
                                  rw_.get() + r0, rows, V, 0, 1.0, 1.0, s);
    }
    std::vector<double> kl(static_cast<size_t>(N));
    cuda::download(kl.data(), rkl_.get(), kl.size(), s);
    double sum = 0;
    for (double x : kl) sum += x;
    (void)gpu_.take_phase_seconds();
    phases_ = std::move(keep);
    return sum;
  }

  double peak_device_bytes() const override { return double(cuda::peak_device_bytes()); }

  ComputePrecision compute() const override { return gpu_.compute(); }
  bool profiling() const override { return gpu_.profiling(); }
  std::vector<PhaseSeconds> take_phase_seconds() override {
    fold_phases(nullptr);
    std::vector<PhaseSeconds> out;
    out.swap(phases_);
    return out;
  }

 private:
  cudaStream_t stream() const { return gpu_.context().stream(); }

  // The [N, V] logits in chunks of at most 256 MiB (and max_chunk_rows), as the step's own loop.
  int64_t rows_per_chunk(int64_t N) const {
    const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(256) << 20) / (4 * c_.vocab_size)));
    return student_.max_chunk_rows > 0 ? std::min(chunk, student_.max_chunk_rows) : chunk;
  }

  // Adds the engine's phase times since the last fold into phases_ (by name, in order of first
  // appearance), all of them under `as` when it is not null.
  void fold_phases(const char* as) {
    if (!gpu_.profiling()) return;
    for (const PhaseSeconds& p : gpu_.take_phase_seconds()) {
      const std::string name = as != nullptr ? std::string(as) : p.name;
      auto it = std::find_if(phases_.begin(), phases_.end(), [&](const PhaseSeconds& e) { return e.name == name; });
      if (it == phases_.end()) it = phases_.insert(phases_.end(), PhaseSeconds{name, 0.0});
      it->seconds += p.seconds;
    }
  }

  // The teacher's normalized hidden states of the batch (the model's own weights), copied out of
  // the engine's buffers, which the student's pass reuses; the per-row sums sized for it. Timed
  // as one phase, "teacher forward".
  const float* teacher_hidden(const Batch& b) {
    fold_phases(nullptr);  // whatever came before (set_linear's uploads)
    const float* th = gpu_.forward_hidden(b);
    fold_phases(kPhaseTeacher);
    gpu_.mark_phase(kPhaseTeacher);
    const size_t N = size_t(b.B * b.T);
    teacher_h_.resize(N * size_t(c_.hidden_size));
    LB_CUDA_CHECK(cudaMemcpyAsync(teacher_h_.get(), th, N * size_t(c_.hidden_size) * sizeof(float),
                                  cudaMemcpyDeviceToDevice, stream()));
    rloss_.resize(N);
    rkl_.resize(N);
    rw_.resize(N);
    return teacher_h_.get();
  }

  // tlogits_ [rows, V] = the teacher's logits of rows [row0, row0 + rows) (the LM head is the
  // student's too: frozen).
  void teacher_logits(const float* th, int64_t row0, int64_t rows) {
    const int64_t H = c_.hidden_size, V = c_.vocab_size;
    tlogits_.resize(size_t(rows * V));
    gpu_.head_logits(th + row0 * H, tlogits_.get(), rows);
  }

  const LlamaConfig& c_;
  // One engine over the 16-bit model: run as it is, the teacher; with student_'s weight hook, the
  // student (the embedding, norms and LM head are the 16-bit model's on both sides).
  CudaLlamaBackward gpu_;
  CudaStepHooks student_;
  std::vector<std::array<GpuFdb, 7>> lin_;
  DeviceBuffer<float> weight_;              // [largest linear]: the fdb weight in use
  DeviceBuffer<float> teacher_h_;           // [N, H]: the teacher's normalized hidden states
  DeviceBuffer<float> tlogits_, slogits_;   // [chunk, V]
  DeviceBuffer<double> rloss_, rkl_, rw_;  // [N]: per row, the DAD loss, KL and weight
  std::vector<PhaseSeconds> phases_;        // profiling: the seconds per phase since the last take
};

}  // namespace

std::unique_ptr<FdbCudaEngine> make_fdb_cuda_engine(const Device& d, const LlamaModel& teacher,
                                                    const std::vector<std::array<QuantizedLinear, 7>>& linears,
                                                    int64_t max_chunk_rows, ComputePrecision compute) {
  return std::make_unique<Engine>(d, teacher, linears, max_chunk_rows, compute);
}

}  // namespace lowbit::train
