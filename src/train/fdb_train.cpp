#include "train/fdb_train.h"

#include "backend/device_check.h"
#include "core/error.h"
#include "quant/formats/bit_plane.h"
#include "quant/formats/fdb_format.h"

#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>

namespace lowbit::train {

void fdb_group_grad(const QuantizedLinear& q, const float* dw, float* dalpha) {
  const uint8_t* b1 = q.extras.at("fdb.b1").data_as<uint8_t>();
  const uint8_t* b2 = q.extras.at("fdb.b2").data_as<uint8_t>();
  const int64_t ng = q.cols / q.group_size;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t g = 0; g < ng; ++g) {
      double s1 = 0, s2 = 0, s0 = 0;
      for (int64_t c = g * q.group_size; c < (g + 1) * q.group_size; ++c) {
        const double d = dw[r * q.cols + c];
        if (plane_bit(b1, q.cols, r, c)) s1 += d;
        if (plane_bit(b2, q.cols, r, c)) s2 += d;
        s0 += d;
      }
      float* out = dalpha + 3 * (r * ng + g);
      out[0] = float(s1);
      out[1] = float(s2);
      out[2] = float(s0);
    }
}

void fdb_rebinarize(QuantizedLinear& q, const float* w) {
  const float* alpha = fdb_alpha(q);
  const int64_t ng = q.cols / q.group_size;
  std::vector<uint8_t> p1(size_t(q.rows * q.cols)), p2(p1.size());
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < q.rows; ++r)
    for (int64_t c = 0; c < q.cols; ++c) {
      const float* a = alpha + 3 * (r * ng + c / q.group_size);
      const float x = w[r * q.cols + c] - a[2];
      const bool b1 = x - (a[0] + a[1]) / 2 >= 0;
      const bool b2 = -(x - (b1 ? a[0] : 0.0f) - a[1] / 2) >= 0;
      p1[size_t(r * q.cols + c)] = b1;
      p2[size_t(r * q.cols + c)] = b2;
    }
  q.extras["fdb.b1"] = pack_plane(p1, q.rows, q.cols);
  q.extras["fdb.b2"] = pack_plane(p2, q.rows, q.cols);
}

FdbTrainer::FdbTrainer(LlamaModel& student, const LlamaModel& teacher, FdbLinears linears, FdbTrainOptions opt)
    : student_(student), teacher_(teacher), q_(std::move(linears)), opt_(opt) {
  const LlamaConfig& c = student.config();
  check_compute_precision(opt_.device, opt_.compute);
  LB_CHECK(int64_t(q_.size()) == c.num_hidden_layers, "fdb training: {} layers of fdb weights for a model of {}",
           q_.size(), c.num_hidden_layers);
  LB_CHECK(teacher.config().vocab_size == c.vocab_size && teacher.config().num_hidden_layers == c.num_hidden_layers &&
               teacher.config().hidden_size == c.hidden_size,
           "fdb training: the teacher's shape differs from the student's");
  alpha_m_.resize(q_.size());
  if (opt_.latent) {
    latent_.resize(q_.size());
    latent_m_.resize(q_.size());
  }
  for (size_t l = 0; l < q_.size(); ++l) {
    auto tw = opt_.latent ? teacher.block_weights(int64_t(l)) : nullptr;
    for (LinearKind k : kAllLinears) {
      QuantizedLinear& q = q_[l][size_t(k)];
      const std::string what = fmt::format("layer {} {}", l, linear_name(k));
      LB_CHECK(q.format == &kFdbFormat, "fdb training: {} is in format '{}', not fdb", what, q.format_name());
      q.validate(what);
      // Tensors share their storage when copied: the trainer owns the one tensor it updates in
      // place (the group parameters; re-binarization assigns new planes), so two trainers, or the
      // caller's linears, never see its steps.
      {
        Tensor& t = q.extras.at("fdb.alpha");
        Tensor own = Tensor::empty(t.dtype(), t.shape());
        std::memcpy(own.mutable_data(), t.data(), size_t(t.nbytes()));
        t = std::move(own);
      }
      LB_CHECK(q.rows == linear_out_features(c, k) && q.cols == linear_in_features(c, k),
               "fdb training: {} is [{}, {}], the model's is [{}, {}]", what, q.rows, q.cols,
               linear_out_features(c, k), linear_in_features(c, k));
      const size_t n = size_t(q.extras.at("fdb.alpha").numel());
      alpha_m_[l][size_t(k)] = {std::vector<float>(n, 0.0f), std::vector<float>(n, 0.0f)};
      if (opt_.latent) {
        const Tensor& w = (*tw)[k];
        latent_[l][size_t(k)].assign(w.data_as<float>(), w.data_as<float>() + w.numel());
        latent_m_[l][size_t(k)] = {std::vector<float>(size_t(w.numel()), 0.0f),
                                   std::vector<float>(size_t(w.numel()), 0.0f)};
      }
    }
    if (!opt_.device.is_cuda()) refresh(int64_t(l));
  }
  warmup_ = warmup_steps(opt_.warmup_ratio, opt_.total_steps);
  if (opt_.device.is_cuda()) {
    check_device_available(opt_.device);
    gpu_ = make_fdb_cuda_engine(opt_.device, teacher_, q_, 0, opt_.compute);
  } else {
    cpu_grads_ = BaseGrads::linears_only(c);
  }
}

void FdbTrainer::refresh(int64_t layer) {
  if (gpu_) {
    for (LinearKind k : kAllLinears) gpu_->set_linear(layer, k, q_[size_t(layer)][size_t(k)], opt_.latent);
    return;
  }
  auto w = std::make_shared<BlockWeights>(clone_block_weights(*student_.block_weights(layer)));
  for (LinearKind k : kAllLinears) {
    w->linear[size_t(k)] = q_[size_t(layer)][size_t(k)].dequantize_f32();
    w->kernel[size_t(k)] = nullptr;
  }
  w->qkv = nullptr;
  w->gate_up = nullptr;
  student_.set_block_weights(layer, std::move(w));
}

std::vector<float> FdbTrainer::teacher_logits(const Batch& b) const {
  const int64_t V = teacher_.config().vocab_size;
  std::vector<float> out(size_t(b.B * b.T * V));
  for (int64_t s = 0; s < b.B; ++s) {
    const Tensor t = teacher_.forward(std::span<const int32_t>(b.tokens.data() + s * b.T, size_t(b.T)));
    std::memcpy(out.data() + s * b.T * V, t.data(), size_t(t.nbytes()));
  }
  return out;
}

namespace {

// The batch as the backward needs it: every position is a distillation target, so the targets
// only need to be valid ids (they are not read by the DAD loss).
Batch distill_batch(const Batch& b) {
  Batch out = b;
  out.targets.assign(b.tokens.size(), 0);
  return out;
}

}  // namespace

FdbStepStats FdbTrainer::step(std::span<const Batch> micro) {
  LB_CHECK(!micro.empty(), "fdb training step without batches");
  const LlamaConfig& c = student_.config();
  const int64_t L = c.num_hidden_layers;
  int64_t positions = 0;
  for (const Batch& b : micro) positions += b.B * b.T;
  const double scale = 1.0 / double(positions);

  FdbGradBuffers galpha(static_cast<size_t>(L)), glatent(opt_.latent ? static_cast<size_t>(L) : 0);
  for (int64_t l = 0; l < L; ++l)
    for (LinearKind k : kAllLinears) {
      galpha[size_t(l)][size_t(k)].assign(size_t(q_[size_t(l)][size_t(k)].extras.at("fdb.alpha").numel()), 0.0f);
      if (opt_.latent) glatent[size_t(l)][size_t(k)].assign(latent_[size_t(l)][size_t(k)].size(), 0.0f);
    }
  FdbStepStats st;
  st.positions = positions;
  if (gpu_) gpu_->begin_step();
  for (const Batch& b0 : micro) {
    const Batch b = distill_batch(b0);
    FdbGradBuffers* gl = opt_.latent ? &glatent : nullptr;
    const DadSums sums = gpu_ ? gpu_->micro_step(b, opt_.dad, scale, gl) : cpu_micro_step(b, scale, galpha, gl);
    st.loss += sums.loss;
    st.kl += sums.kl * scale;
    st.weight += sums.weight * scale;
  }
  if (gpu_) gpu_->end_step(galpha);
  const auto t_host = std::chrono::steady_clock::now();
  // Offsets that are not trained (or not stored) get no gradient.
  const bool any_beta = opt_.train_beta;
  double ss = 0;
  for (int64_t l = 0; l < L; ++l)
    for (LinearKind k : kAllLinears) {
      std::vector<float>& ga = galpha[size_t(l)][size_t(k)];
      const bool beta_on = any_beta && q_[size_t(l)][size_t(k)].params.value("has_beta", true);
      if (!beta_on)
        for (size_t i = 2; i < ga.size(); i += 3) ga[i] = 0.0f;
      for (float g : ga) ss += double(g) * g;
      if (opt_.latent)
        for (float g : glatent[size_t(l)][size_t(k)]) ss += double(g) * g;
    }
  st.grad_norm = std::sqrt(ss);
  LB_CHECK(std::isfinite(st.loss) && std::isfinite(st.grad_norm),
           "fdb training: non-finite loss {} or gradient norm {} at step {}", st.loss, st.grad_norm, step_ + 1);
  const float coef =
      opt_.max_grad_norm > 0 ? float(std::min(1.0, opt_.max_grad_norm / (st.grad_norm + 1e-6))) : 1.0f;
  st.lr = constant_with_warmup_lr(opt_.adamw.lr, step_, warmup_);
  step_ += 1;
  for (int64_t l = 0; l < L; ++l) {
    for (LinearKind k : kAllLinears) {
      QuantizedLinear& q = q_[size_t(l)][size_t(k)];
      std::vector<float>& ga = galpha[size_t(l)][size_t(k)];
      for (float& g : ga) g *= coef;
      Tensor& at = q.extras.at("fdb.alpha");
      std::vector<float> p(at.data_as<float>(), at.data_as<float>() + at.numel());
      Moments& mo = alpha_m_[size_t(l)][size_t(k)];
      adamw_update(p, ga, mo.m, mo.v, step_, opt_.adamw, st.lr);
      std::memcpy(at.mutable_data(), p.data(), p.size() * sizeof(float));
      if (opt_.latent) {
        std::vector<float>& gl = glatent[size_t(l)][size_t(k)];
        for (float& g : gl) g *= coef;
        Moments& lm = latent_m_[size_t(l)][size_t(k)];
        adamw_update(latent_[size_t(l)][size_t(k)], gl, lm.m, lm.v, step_, opt_.adamw, st.lr * opt_.latent_lr_scale);
        fdb_rebinarize(q, latent_[size_t(l)][size_t(k)].data());
      }
    }
    refresh(l);
  }
  if (gpu_ && gpu_->profiling()) {
    // The host's part first (wall time), then the device's, whose last phase (the uploads of
    // refresh) is waited for by the take.
    const double host = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_host).count();
    st.phases = gpu_->take_phase_seconds();
    st.phases.push_back({"host clipping and AdamW", host});
  }
  return st;
}

DadSums FdbTrainer::cpu_micro_step(const Batch& b, double scale, FdbGradBuffers& galpha, FdbGradBuffers* glatent) {
  const int64_t L = student_.config().num_hidden_layers;
  const std::vector<float> tl = teacher_logits(b);
  StepOptions so;
  DadSums sums;
  so.logits_loss = [&](int64_t row0, int64_t rows, int64_t V, float* logits) {
    const DadSums s = dad_loss_backward(tl.data() + row0 * V, logits, rows, V, opt_.dad, scale);
    sums.loss += s.loss;
    sums.kl += s.kl;
    sums.weight += s.weight;
    return s.loss;
  };
  for (auto& blk : cpu_grads_.blocks)
    for (auto& g : blk.linear) std::fill(g.begin(), g.end(), 0.0f);
  forward_backward(student_, nullptr, b, so, nullptr, &cpu_grads_);
  std::vector<float> dalpha;
  for (int64_t l = 0; l < L; ++l)
    for (LinearKind k : kAllLinears) {
      const QuantizedLinear& q = q_[size_t(l)][size_t(k)];
      const std::vector<float>& dw = cpu_grads_.blocks[size_t(l)].linear[size_t(k)];
      std::vector<float>& ga = galpha[size_t(l)][size_t(k)];
      dalpha.resize(ga.size());
      fdb_group_grad(q, dw.data(), dalpha.data());
      for (size_t i = 0; i < ga.size(); ++i) ga[i] += dalpha[i];
      if (glatent != nullptr) {
        std::vector<float>& gl = (*glatent)[size_t(l)][size_t(k)];
        for (size_t i = 0; i < gl.size(); ++i) gl[i] += dw[i];
      }
    }
  return sums;
}

double FdbTrainer::eval_kl(const Batch& b0) const {
  const Batch b = distill_batch(b0);
  if (gpu_) return gpu_->kl_sum(b) / double(b.B * b.T);
  const std::vector<float> tl = teacher_logits(b);
  const int64_t V = student_.config().vocab_size;
  double kl = 0;
  for (int64_t s = 0; s < b.B; ++s) {
    Tensor z = student_.forward(std::span<const int32_t>(b.tokens.data() + s * b.T, size_t(b.T)));
    DadOptions plain;
    plain.weight = DadWeight::None;
    kl += dad_loss_backward(tl.data() + s * b.T * V, z.mutable_data_as<float>(), b.T, V, plain, 1.0).kl;
  }
  return kl / double(b.B * b.T);
}

}  // namespace lowbit::train
