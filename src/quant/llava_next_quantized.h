// A LLaVA-Next checkpoint with its language model quantized: the paper's multimodal track
// (Tables 7-8), where the LLaMA-3 inside LLaVA-Next-8B is quantized and the CLIP vision tower
// and the projector stay 16-bit.
//
// On disk it is one self-contained directory, a lowbit quantized checkpoint
// (lowbit_checkpoint.h) of the language model with the vision parts beside it:
//   config.json               the source's LlavaNextForConditionalGeneration config, verbatim
//   preprocessor_config.json  and the other side files the source has (tokenizer.json,
//                             tokenizer_config.json, special_tokens_map.json, chat template,
//                             generation_config.json), copied
//   model.safetensors         the language model as any quantized checkpoint holds it, under
//                             LLaMA's names ("model.layers.3.mlp.down_proj.qcodes", ...,
//                             "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight");
//                             and every tensor of the source that is not the language model's (the
//                             vision tower, the projector, image_newline) under its name as
//                             stored, with its dtype, shape and bytes unchanged
// The metadata "lowbit.quantization" is the language model's (method, calibration, source with
// the SHA-256 of the whole LLaVA checkpoint, linears) plus "multimodal":
//   {"architecture": "LlavaNextForConditionalGeneration",
//    "calibration_input": "text",       the calibration windows ran through the LLM alone
//    "kept": [names], "kept_bytes": N}   the tensors written as stored
// open_model() reads the directory as its quantized language model (ppl, eval, export see the
// LLM part, as they see a 16-bit LLaVA-Next directory's); load_llava_next() reads it whole.
//
// Calibration: the study quantizes LLaVA's LLM the way its methods' repositories quantize a
// language model (the paper follows AWQ's practice for VILA): text windows (WikiText2 by
// default) through the language model alone, the vision tower never run. lowbit does the same;
// image-conditioned calibration (image features spliced into the calibration windows) would need
// an image-text calibration set and is not offered.
#pragma once

#include "formats/checkpoint.h"
#include "model/llava_next.h"
#include "quant/quantize.h"

#include <nlohmann/json.hpp>

#include <memory>
#include <string>
#include <vector>

namespace lowbit {

// Checks before any work that the LLaVA-Next directory `dir` opens whole (config, processor,
// language model, vision tower, projector and image_newline, every tensor with its shape) and
// returns the names of the tensors that are not the language model's, which a quantized
// checkpoint keeps as stored. Throws naming the file and tensor.
std::vector<std::string> check_llava_next_source(const std::string& dir);

// Writes the quantized LLaVA-Next checkpoint `out_dir` (layout above) from the LLaVA-Next
// directory `source_dir`, whose language model `language_model` was quantized into `qm`.
// Atomic as write_quantized_checkpoint is: nothing is left at `out_dir` on error.
void write_quantized_llava_next(const std::string& out_dir, const std::string& source_dir,
                                const LlamaModel& language_model, const QuantizedModel& qm,
                                const nlohmann::json& extra, bool overwrite);

// Whether an opened checkpoint is the language model of a quantized LLaVA-Next checkpoint.
bool is_quantized_llava_next(const Checkpoint& ck);

// A LLaVA-Next model from a directory, 16-bit or quantized (fake-quant: the LLM's linears
// dequantized, its activation quantization installed as forward hooks); the vision tower and
// projector as stored.
std::unique_ptr<LlavaNextModel> load_llava_next(const std::string& dir);

// The vision parts of the LLaVA-Next directory `dir` around the language model `language_model`
// (e.g. a quantized one held in memory, quantized_in_memory.h), with its activation
// quantization installed: what load_llava_next() gives for that model written to disk.
std::unique_ptr<LlavaNextModel> llava_next_with_language_model(const std::string& dir, const Checkpoint& language_model);

}  // namespace lowbit
