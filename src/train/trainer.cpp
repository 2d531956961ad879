#include "train/trainer.h"

#include "core/error.h"

#include <chrono>
#include <cmath>

namespace lowbit::train {

LoraTrainer::LoraTrainer(const LlamaModel& model, LoraAdapters init, TrainOptions opt, StepEngine* engine)
    : model_(model), engine_(engine), params_(std::move(init)), opt_(opt) {
  if (engine_ == nullptr) {
    own_engine_ = make_step_engine(Device{}, model_);
    engine_ = own_engine_.get();
  }
  LB_CHECK(opt_.total_steps > 0, "training needs at least one step, got {}", opt_.total_steps);
  LB_CHECK(opt_.adamw.lr >= 0, "learning rate must not be negative, got {}", opt_.adamw.lr);
  state_ = AdamWState::zeros_like(params_);
  warmup_ = warmup_steps(opt_.warmup_ratio, opt_.total_steps);
  if (opt_.optimizer_on_device && engine_->can_hold_adapters(params_)) {
    hold();
  } else {
    grads_ = params_.zeros_like();
  }
}

LoraTrainer::~LoraTrainer() {
  if (held_) engine_->release_adapters();
}

void LoraTrainer::hold() {
  engine_->hold_adapters(params_, state_);
  held_ = true;
  host_stale_ = false;
}

void LoraTrainer::sync() const {
  if (!host_stale_) return;
  engine_->download_held(&params_, &state_, nullptr);
  host_stale_ = false;
}

const LoraAdapters& LoraTrainer::adapters() const {
  sync();
  return params_;
}

const AdamWState& LoraTrainer::optimizer_state() const {
  sync();
  return state_;
}

void LoraTrainer::restore(LoraAdapters params, AdamWState state) {
  LB_CHECK(params.layers.size() == params_.layers.size() && params.num_parameters() == params_.num_parameters(),
           "saved adapters have {} parameters in {} layers; this run's have {} in {}", params.num_parameters(),
           params.layers.size(), params_.num_parameters(), params_.layers.size());
  params_ = std::move(params);
  state_ = std::move(state);
  if (held_) hold();  // the saved values go up
}

uint64_t LoraTrainer::dropout_seed(size_t micro_batch) const {
  return opt_.dropout_seed ^ (uint64_t(state_.step) << 20) ^ uint64_t(micro_batch);
}

void LoraTrainer::check_finite(const StepStats& st) const {
  LB_CHECK(std::isfinite(st.loss) && std::isfinite(st.grad_norm),
           "training step {}: the loss is {} and the gradient norm {}; stopping with the adapters of step {}",
           state_.step + 1, st.loss, st.grad_norm, state_.step);
}

StepStats LoraTrainer::step(std::span<const Batch> micro, LoraAdapters* gradient) {
  LB_CHECK(!micro.empty(), "a training step needs at least one micro-batch");
  StepStats st;
  for (const Batch& b : micro) {
    st.targets += b.num_targets();
    st.tokens += b.B * b.T;
  }
  LB_CHECK(st.targets > 0, "training step {} has no target tokens (every target truncated or masked)",
           state_.step + 1);
  if (held_) return step_on_device(micro, gradient, st);
  grads_.set_zero();
  StepOptions so;
  so.loss_scale = 1.0 / double(st.targets);
  double loss_sum = 0;
  for (size_t i = 0; i < micro.size(); ++i) {
    so.dropout_seed = dropout_seed(i);
    so.adapters_unchanged = i > 0;  // AdamW changes them only after the last micro-batch
    so.more_micro_batches = i + 1 < micro.size();
    loss_sum += engine_->forward_backward(&params_, micro[i], so, &grads_, nullptr).loss_sum;
  }
  st.loss = loss_sum / double(st.targets);
  if (gradient != nullptr) *gradient = grads_;
  const auto t_host = std::chrono::steady_clock::now();
  st.grad_norm = clip_grad_norm(grads_, opt_.max_grad_norm);
  check_finite(st);
  st.lr = constant_with_warmup_lr(opt_.adamw.lr, state_.step, warmup_);
  adamw_step(params_, grads_, state_, opt_.adamw, st.lr);
  if (engine_->profiling()) {
    st.phases = engine_->take_phase_seconds();
    st.phases.push_back(
        {"host AdamW", std::chrono::duration<double>(std::chrono::steady_clock::now() - t_host).count()});
  }
  return st;
}

// The same step with the adapters held by the engine: the gradients summed, the norm taken and
// AdamW applied on its device; the non-finite check comes before the update, as on the host.
StepStats LoraTrainer::step_on_device(std::span<const Batch> micro, LoraAdapters* gradient, StepStats st) {
  StepOptions so;
  so.loss_scale = 1.0 / double(st.targets);
  double loss_sum = 0;
  for (size_t i = 0; i < micro.size(); ++i) {
    so.dropout_seed = dropout_seed(i);
    loss_sum += engine_->held_forward_backward(micro[i], so, i == 0).loss_sum;
  }
  st.loss = loss_sum / double(st.targets);
  if (gradient != nullptr) {
    *gradient = params_.zeros_like();
    engine_->download_held(nullptr, nullptr, gradient);
  }
  st.grad_norm = engine_->held_grad_norm();
  check_finite(st);
  st.lr = constant_with_warmup_lr(opt_.adamw.lr, state_.step, warmup_);
  engine_->held_adamw_step(st.grad_norm, opt_.max_grad_norm, opt_.adamw, st.lr, state_.step + 1);
  state_.step += 1;
  host_stale_ = true;
  if (engine_->profiling()) st.phases = engine_->take_phase_seconds();
  return st;
}

}  // namespace lowbit::train
