// Deviation-Aware Distillation (DB-LLM, Chen et al. 2024, arXiv 2402.11960, Sec. "DAD"): logit
// distillation from the 16-bit teacher to the quantized student in which each position is
// reweighted by how ambiguous its prediction is, so that ambiguous positions, where a quantized
// model deviates most, weigh more.
//
// The paper's text names the teacher-student entropy as the indicator of ambiguity; its exact
// formula, temperature and normalization could not be established from public sources (no code
// was released). lowbit's loss, every choice an option:
//
//   p = softmax(z_teacher), q = softmax(z_student) over the vocabulary, per position t;
//   KL_t = sum_v p_v (log p_v - log q_v)                        (forward KL, temperature 1)
//   w_t  = 1                                  weight = none     (plain logit distillation)
//          H(p)        = -sum_v p_v log p_v   weight = teacher  (teacher entropy)
//          H(p, q)     = -sum_v p_v log q_v   weight = cross    (teacher-student cross-entropy;
//                                                               the default reading of "teacher-
//                                                               student entropy")
//          then raised to the power gamma (1 by default);
//   loss = scale * sum_t w_t KL_t,  scale = 1 / (positions in the step) for the mean.
//
// w_t is a weight, not a path of the gradient: it is computed from the current logits and held
// constant (stop-gradient), so d loss / d z_student[t] = scale * w_t * (q - p). The weights are
// not normalized: with Adam a constant factor on the loss changes nothing but the clipping
// threshold and epsilon's relative size.
#pragma once

#include <cstdint>
#include <string>

namespace lowbit::train {

enum class DadWeight { None, Teacher, Cross };
DadWeight parse_dad_weight(const std::string& s);  // "none", "teacher", "cross"; throws otherwise
const char* dad_weight_name(DadWeight w);

struct DadOptions {
  DadWeight weight = DadWeight::Cross;
  double gamma = 1.0;
};

struct DadSums {
  double loss = 0;    // scale * sum_t w_t KL_t
  double kl = 0;      // sum_t KL_t (unscaled, unweighted: for reporting)
  double weight = 0;  // sum_t w_t
};

// Rows of logits [rows, V]: `teacher` is read, `student` is overwritten with d loss / d logits.
// Softmax sums in double.
DadSums dad_loss_backward(const float* teacher, float* student, int64_t rows, int64_t V, const DadOptions& opt,
                          double scale);

}  // namespace lowbit::train
