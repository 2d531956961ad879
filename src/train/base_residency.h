// Whether the GPU's bf16 training step keeps the frozen base expanded for the whole run
// (`lowbit finetune --base-resident auto|on|off`, a study's [[finetune]] key `base_resident`).
//
// The bf16 mode (compute_precision.h) holds the base compact (train/compact_base.h: NF4 codes and
// scales for QLoRA) and expands each block's seven linears into a bf16 scratch once per block
// visit: the forward, then the backward's recomputation and backward of the block (about a fifth
// of a QLoRA step on LLaMA-3-8B shapes). A resident base expands every block once, when the
// engine is built, into one bf16 buffer [layers, the block's seven linears] kept for the run; the
// compact form is then dropped from the device. The values are the same expansion
// (backend/cuda/compact_weight.cuh), so losses and gradients are bit for bit those of the
// per-step expansion; only memory and time change. It costs 2 bytes a base weight (~13 GiB for
// LLaMA-3-8B's linears instead of ~3.7 GiB of NF4 + DQ codes and scales).
//
//   off   expand per block visit (the compact base on the device)
//   on    resident; refused on the CPU and for fp32 or tf32 compute (their base is fp32 and
//         expanded per linear), and when the device's free memory cannot take the bf16 base
//   auto  resident when the device's free memory, measured once the engine holds everything else
//         of the model (LM head, norms), minus `other` (the run's adapters and step buffers at its
//         longest micro-batch: gpu_adapter_bytes + gpu_step_bytes), is enough for the bf16 base
//         with kResidentMargin to spare (resident_base_fits); off otherwise, and always off on the
//         CPU and for fp32 or tf32 compute (so `auto` is every run's default and changes no number).
#pragma once

#include "core/device.h"
#include "train/compute_precision.h"

#include <cstdint>
#include <string_view>

namespace lowbit::train {

enum class BaseResidency { Auto, On, Off };

const char* base_residency_name(BaseResidency r);  // "auto", "on", "off"

// "auto", "on" or "off"; throws lowbit::Error naming --base-resident and the text otherwise.
BaseResidency parse_base_residency(std::string_view text);

// What a run on device d computing in p asks of the engine: Off where a resident base does not
// apply (the CPU, fp32, tf32) and `r` is Auto; `r` otherwise. Throws lowbit::Error naming
// --base-resident, the device and the precision for On where it does not apply.
BaseResidency resolve_base_residency(const Device& d, ComputePrecision p, BaseResidency r);

// The fraction of the free memory a resident base may take: the rest is left to what the
// estimate of `other` leaves out (cuBLAS' workspaces, the allocator's rounding, buffers grown by
// a longer micro-batch than planned).
constexpr double kResidentMargin = 0.9;

// auto's rule: resident_bytes <= kResidentMargin * (free_bytes - other_bytes).
bool resident_base_fits(int64_t resident_bytes, int64_t free_bytes, int64_t other_bytes);

}  // namespace lowbit::train
