#include "model/decode_graph_rules.h"

#include "core/error.h"

#include <cstdlib>
#include <string_view>

namespace lowbit {

bool cuda_graphs_allowed(const char* value) {
  if (value == nullptr) return true;
  const std::string_view v(value);
  if (v == "1" || v == "on") return true;
  if (v == "0" || v == "off") return false;
  fail("LOWBIT_CUDA_GRAPHS='{}': expected 1 or on (graph decode, the default), 0 or off (eager)", value);
}

bool cuda_graphs_allowed() { return cuda_graphs_allowed(std::getenv("LOWBIT_CUDA_GRAPHS")); }

std::string graph_decode_refusal(const GraphDecodeConditions& c) {
  if (!c.graphs_allowed) return "LOWBIT_CUDA_GRAPHS=0";
  if (!c.resident) return "blocks streamed from the host";
  if (c.profiled) return "per-op profile";
  if (c.activation_quantized) return "activation quantization";
  return "";
}

}  // namespace lowbit
