#include "train/compact_base.h"

#include "core/error.h"
#include "model/llama_model.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/nf4.h"
#include "quant/quantized_linear.h"

#include <fmt/format.h>

#include <algorithm>
#include <set>

namespace lowbit::train {

namespace {

template <typename T>
int64_t vbytes(const std::vector<T>& v) {
  return int64_t(v.size() * sizeof(T));
}

int64_t scale_groups(int64_t rows, int64_t cols, int64_t group_size, bool flat) {
  return flat ? (rows * cols + group_size - 1) / group_size : rows * ((cols + group_size - 1) / group_size);
}

CompactLinear f32_linear(Tensor t, int64_t rows, int64_t cols) {
  CompactLinear w;
  w.kind = CompactKind::F32;
  w.rows = rows;
  w.cols = cols;
  const Tensor f = t.dtype() == DType::F32 && t.is_contiguous() ? t : t.to_f32();
  w.f32.assign(f.data_as<float>(), f.data_as<float>() + f.numel());
  return w;
}

}  // namespace

const char* compact_kind_name(CompactKind k) {
  switch (k) {
    case CompactKind::F32: return "f32";
    case CompactKind::Half16: return "16-bit";
    case CompactKind::Int: return "int";
    case CompactKind::Codebook: return "codebook";
  }
  return "?";
}

int64_t CompactLinear::bytes() const {
  return vbytes(f32) + vbytes(half) + vbytes(codes) + vbytes(scales) + vbytes(zeros) + vbytes(codebook) + vbytes(tau) +
         vbytes(g_idx);
}

CompactLinear compact_linear(const QuantizedLinear& q) {
  const std::string fmt_name = q.format_name();
  const bool icq = fmt_name == "icq";
  if (!(fmt_name == "int" || fmt_name == "codebook" || icq) || q.bits < 1 || q.bits > 8)
    return f32_linear(q.dequantize_f32(), q.rows, q.cols);
  CompactLinear w;
  w.kind = fmt_name == "int" ? CompactKind::Int : CompactKind::Codebook;
  w.rows = q.rows;
  w.cols = q.cols;
  w.code_bits = q.bits <= 4 ? 4 : 8;
  const int64_t n = q.rows * q.cols;
  LB_CHECK(int64_t(q.codes.size()) == n, "quantized linear [{}, {}] has {} codes", q.rows, q.cols, q.codes.size());
  if (w.code_bits == 8) {
    w.codes = q.codes;
  } else {
    w.codes.assign(size_t((n + 1) / 2), 0);
    for (int64_t i = 0; i < n; ++i) w.codes[size_t(i / 2)] |= uint8_t((q.codes[size_t(i)] & 0xF) << (4 * (i & 1)));
  }
  w.scales = q.scales;
  if (w.kind == CompactKind::Int) w.zeros = q.zeros;
  if (w.kind == CompactKind::Codebook) w.codebook = q.codebook;
  w.g_idx = q.g_idx;
  w.group_size = q.group_size;
  w.flat_groups = q.flat_groups;
  w.round_to = q.dequant_dtype;
  if (icq) {
    // The decoded shift per block, as icq_format.cpp's dequantize computes it (one fp32 product).
    const auto& map = dynamic_map_signed();
    const uint8_t* tq = q.extras.at("icq.tau_q").data_as<uint8_t>();
    const float* ta = q.extras.at("icq.tau_absmax").data_as<float>();
    const int64_t g2 = q.params.value("tau_group", int64_t(256)), blocks = n / q.group_size;
    w.tau.resize(size_t(blocks));
    for (int64_t b = 0; b < blocks; ++b) w.tau[size_t(b)] = map[tq[b]] * ta[b / g2];
  }
  return w;
}

// Built with -ffp-contract=off (src/CMakeLists.txt): every product and sum rounded on its own, as
// the formats' dequantization and the GPU's __fmul_rn / __fadd_rn.
void expand_compact_linear(const CompactLinear& w, float* out) {
  const int64_t n = w.numel();
  switch (w.kind) {
    case CompactKind::F32:
      std::copy(w.f32.begin(), w.f32.end(), out);
      return;
    case CompactKind::Half16:
      for (int64_t i = 0; i < n; ++i)
        out[i] = w.half_dtype == DType::BF16 ? bf16_to_f32(w.half[size_t(i)]) : f16_to_f32(w.half[size_t(i)]);
      return;
    case CompactKind::Int:
    case CompactKind::Codebook: break;
  }
  const int64_t gpr = (w.cols + w.group_size - 1) / w.group_size;
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < w.rows; ++r)
    for (int64_t c = 0; c < w.cols; ++c) {
      const int64_t i = r * w.cols + c;
      const int code = w.code_bits == 8 ? w.codes[size_t(i)] : (w.codes[size_t(i / 2)] >> (4 * (i & 1))) & 0xF;
      const int64_t s =
          w.flat_groups ? i / w.group_size : r * gpr + (w.g_idx.empty() ? c / w.group_size : w.g_idx[size_t(c)]);
      float v;
      if (w.kind == CompactKind::Int) {
        const float d = float(code) - w.zeros[size_t(s)];
        v = w.scales[size_t(s)] * d;
      } else {
        v = w.codebook[size_t(code)] * w.scales[size_t(s)];
        if (!w.tau.empty()) v = v + w.tau[size_t(i / w.group_size)];
      }
      out[i] = round_to_dtype(v, w.round_to);  // as QuantizedLinear::dequantize rounds
    }
}

int64_t resident_block_elements(const LlamaConfig& c) {
  int64_t n = 0;
  for (LinearKind k : kAllLinears) n += linear_out_features(c, k) * linear_in_features(c, k);
  return (n + 127) / 128 * 128;
}

GpuModelBytes CompactBase::bytes(const LlamaConfig& c, ComputePrecision p, bool resident) const {
  const bool bf16 = p == ComputePrecision::Bf16;
  GpuModelBytes b;
  b.norms = (2 * c.num_hidden_layers + 1) * c.hidden_size * 4;
  b.head = c.vocab_size * c.hidden_size * (bf16 ? 2 : 4);
  if (bf16 && resident) {
    b.resident = 2 * int64_t(layers.size()) * resident_block_elements(c);
    return b;
  }
  for (const auto& layer : layers) {
    int64_t block = 0;
    for (const CompactLinear& w : layer) {
      b.linears += w.bytes();
      block += w.numel();
      if (!bf16 && w.needs_scratch()) b.scratch = std::max(b.scratch, w.numel() * 4);
    }
    if (bf16) b.scratch = std::max(b.scratch, 2 * block);
  }
  return b;
}

std::string CompactBase::describe() const {
  std::string s;
  for (const auto& k : kind_names()) s += (s.empty() ? "" : " + ") + k;
  return s;
}

std::set<std::string> CompactBase::kind_names() const {
  std::set<std::string> kinds;
  for (const auto& layer : layers)
    for (const CompactLinear& w : layer) {
      std::string d = compact_kind_name(w.kind);
      if (w.kind == CompactKind::Half16) d = w.half_dtype == DType::BF16 ? "bf16" : "f16";
      if (w.kind == CompactKind::Int || w.kind == CompactKind::Codebook) {
        d += fmt::format(" ({}-bit storage, {} of {}{}{})", w.code_bits, w.flat_groups ? "flat blocks" : "row groups",
                         w.group_size, w.g_idx.empty() ? "" : ", g_idx", w.tau.empty() ? "" : ", tau");
      }
      kinds.insert(d);
    }
  return kinds;
}

std::array<CompactLinear, 7> make_compact_block(const LlamaModel& model, int64_t l) {
  const LlamaConfig& c = model.config();
  const auto* qsrc = dynamic_cast<const QuantizedWeightSource*>(model.checkpoint().weights.get());
  const bool replaced = model.block_weights_replaced(l);
  std::array<CompactLinear, 7> out;
  for (LinearKind k : kAllLinears) {
    const int64_t rows = linear_out_features(c, k), cols = linear_in_features(c, k);
    const std::string name = linear_weight_name(l, k);
    CompactLinear w;
    if (replaced) {
      const Tensor& t = (*model.block_weights(l))[k];
      LB_CHECK(t.numel() == rows * cols, "block {} {}: {} weights for a [{}, {}] linear", l, linear_name(k),
               t.numel(), rows, cols);
      w = f32_linear(t, rows, cols);
    } else if (qsrc != nullptr && qsrc->is_quantized(name)) {
      w = compact_linear(qsrc->quantized(name));
    } else {
      Tensor t = model.checkpoint().weights->get(name);
      if ((t.dtype() == DType::BF16 || t.dtype() == DType::F16) && t.is_contiguous()) {
        w.kind = CompactKind::Half16;
        w.rows = rows;
        w.cols = cols;
        w.half_dtype = t.dtype();
        w.half.assign(t.data_as<uint16_t>(), t.data_as<uint16_t>() + t.numel());
      } else {
        w = f32_linear(t, rows, cols);
      }
    }
    LB_CHECK(w.rows == rows && w.cols == cols &&
                 int64_t(w.kind == CompactKind::F32 ? w.f32.size()
                                                    : w.kind == CompactKind::Half16 ? w.half.size() : w.numel()) ==
                     rows * cols,
             "{}: a [{}, {}] linear read as [{}, {}]", name, rows, cols, w.rows, w.cols);
    out[size_t(k)] = std::move(w);
  }
  return out;
}

std::optional<CompactLayout> CompactBase::uniform_layout() const {
  std::optional<CompactLayout> out;
  for (const auto& layer : layers)
    for (const CompactLinear& w : layer) {
      CompactLayout l;
      l.kind = w.kind;
      if (w.kind == CompactKind::Int || w.kind == CompactKind::Codebook) {
        l.code_bits = w.code_bits;
        int bits = 0;
        while ((size_t(1) << bits) < w.codebook.size()) ++bits;
        l.bits = w.kind == CompactKind::Codebook ? bits : w.code_bits;
        l.group_size = w.group_size;
        l.flat_groups = w.flat_groups;
        l.g_idx = !w.g_idx.empty();
        l.tau = !w.tau.empty();
      }
      if (!out) {
        out = l;
        continue;
      }
      if (!(*out == l)) return std::nullopt;
    }
  return out;
}

CompactBase make_compact_base(const LlamaModel& model) {
  CompactBase base;
  for (int64_t l = 0; l < model.config().num_hidden_layers; ++l) base.layers.push_back(make_compact_block(model, l));
  return base;
}

GpuModelBytes gpu_model_bytes(const LlamaConfig& c, const CompactLayout& l, ComputePrecision p, bool resident) {
  const bool bf16 = p == ComputePrecision::Bf16;
  GpuModelBytes b;
  if (bf16 && resident) {
    b.resident = 2 * c.num_hidden_layers * resident_block_elements(c);
    b.norms = (2 * c.num_hidden_layers + 1) * c.hidden_size * 4;
    b.head = c.vocab_size * c.hidden_size * 2;
    return b;
  }
  for (LinearKind k : kAllLinears) {
    const int64_t rows = linear_out_features(c, k), cols = linear_in_features(c, k), n = rows * cols;
    int64_t bytes = 0;
    switch (l.kind) {
      case CompactKind::F32: bytes = 4 * n; break;
      case CompactKind::Half16: bytes = 2 * n; break;
      case CompactKind::Int:
      case CompactKind::Codebook: {
        const int64_t groups = scale_groups(rows, cols, l.group_size, l.flat_groups);
        bytes = (n * l.code_bits + 7) / 8 + 4 * groups;
        if (l.kind == CompactKind::Int) bytes += 4 * groups;  // zero-points
        if (l.kind == CompactKind::Codebook) bytes += 4 * (int64_t(1) << l.bits);
        if (l.tau) bytes += 4 * (n / l.group_size);
        if (l.g_idx) bytes += 4 * cols;
        break;
      }
    }
    b.linears += bytes * c.num_hidden_layers;
    if (bf16) {
      b.scratch += 2 * n;  // a block's seven linears
    } else if (l.kind != CompactKind::F32) {
      b.scratch = std::max(b.scratch, 4 * n);
    }
  }
  b.norms = (2 * c.num_hidden_layers + 1) * c.hidden_size * 4;
  b.head = c.vocab_size * c.hidden_size * (bf16 ? 2 : 4);
  return b;
}

int64_t gpu_step_bytes(const LlamaConfig& c, int64_t B, int64_t T, ComputePrecision p) {
  const int64_t N = B * T, H = c.hidden_size, F = c.intermediate_size, L = c.num_hidden_layers, V = c.vocab_size;
  const int64_t qd = c.num_attention_heads * c.head_dim, kvd = c.num_key_value_heads * c.head_dim;
  const int64_t wide = std::max({H, F, qd});
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(N, (int64_t(256) << 20) / (4 * V)));
  int64_t floats = 8 * N * H + 4 * N * qd + 4 * N * kvd + 6 * N * F + 2 * N * wide;
  floats += 2 * c.num_attention_heads * T * T + L * N * H + chunk * V + T * c.head_dim;
  int64_t bytes = 4 * floats + 8 * N + 4 * N;  // the rows' fp64 losses, int32 targets
  if (p == ComputePrecision::Bf16) bytes += 2 * (N * wide + std::max(N * wide, chunk * V));
  return bytes;
}

int64_t gpu_adapter_bytes(const LlamaConfig& c, int64_t r, const std::array<bool, 7>& targets, int64_t tokens,
                          ComputePrecision p, bool moments) {
  int64_t bytes = 0;
  for (LinearKind k : kAllLinears) {
    if (!targets[size_t(k)]) continue;
    const int64_t params = r * (linear_in_features(c, k) + linear_out_features(c, k));
    // A, B, dA, dB, their sums over a step's micro-batches, the forward's [N, r] product and the
    // two IEC scalars' gradients; AdamW's two moments when held; A and B in bf16 for the bf16
    // products.
    bytes += 4 * ((moments ? 5 : 3) * params + tokens * r + 2);
    if (p == ComputePrecision::Bf16) bytes += 2 * params;
  }
  return bytes * c.num_hidden_layers;
}

}  // namespace lowbit::train
