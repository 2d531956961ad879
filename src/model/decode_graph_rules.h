// When a GPU model's decode steps may run as a CUDA graph (model/cuda_decode_graph.h): the host
// side of that choice, compiled in every build so that it is tested on the CPU too.
//
// LOWBIT_CUDA_GRAPHS: unset, "1" or "on": graph decode where it is valid; "0" or "off": every
// decode step runs eagerly, kernel by kernel (the reference the graph is tested against). Any
// other value is a lowbit::Error naming it.
#pragma once

#include <string>

namespace lowbit {

// Whether a LOWBIT_CUDA_GRAPHS value (null: unset) allows graph decode; throws on other values.
bool cuda_graphs_allowed(const char* value);
// The same, read from the environment at each call.
bool cuda_graphs_allowed();

// What decides whether a CudaModel's one-token decode step can be captured: a captured step may
// not synchronize with the host, allocate or branch on host values, so blocks streamed from the
// host (uploaded with a synchronization each step), a per-op profile (host events) and
// activation quantization (not covered by the graph's tests) keep the eager path.
struct GraphDecodeConditions {
  bool graphs_allowed = true;  // cuda_graphs_allowed()
  bool resident = true;        // every block's weights stay on the GPU
  bool profiled = false;       // a per-op profile is recorded
  bool activation_quantized = false;
};

// Why the decode steps cannot run as a CUDA graph, as a short phrase ("" when they can), e.g.
// "LOWBIT_CUDA_GRAPHS=0".
std::string graph_decode_refusal(const GraphDecodeConditions& c);

}  // namespace lowbit
