// A quantized model held in memory and seen as a checkpoint: what write_quantized_checkpoint()
// would write and open_model() read back, without the round trip through the disk.
//
// Its weights are the source checkpoint's tensors, with every quantized linear replaced by its
// dequantized weight (computed on request, in the dtype the written checkpoint would store) and
// the norms the method rewrote. Its `quantization` member carries the method, calibration,
// activation scheme and source like the file's metadata, so install_quantized_forward(), the
// CPU and GPU forwards, and every evaluation treat it exactly like the checkpoint read back.
#pragma once

#include "formats/checkpoint.h"
#include "quant/quantize.h"

#include <nlohmann/json.hpp>

namespace lowbit {

// `source` is the checkpoint `qm` was quantized from; `source_identity` is recorded as the
// metadata's "source" (e.g. {"path", "sha256", ...}).
Checkpoint quantized_checkpoint_in_memory(const Checkpoint& source, QuantizedModel qm,
                                          const nlohmann::json& source_identity);

}  // namespace lowbit
