// Which GPU layout --packed --device cuda runs each quantized linear of a whole model with, read
// from the checkpoint's metadata (pack::gpu_packed_execution; no GPU needed): stories260K
// quantized in memory and on disk, 2/3/4/8-bit int and NF4, g_idx that do and do not permute the
// groups, and the refusal of a model with a linear no layout holds, before anything runs.
#include "core/error.h"
#include "pack/gpu_packed.h"
#include "quant/lowbit_checkpoint.h"
#include "quant/quantize.h"
#include "quant/quantized_in_memory.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <string>

namespace lowbit {
namespace {

std::string stories() { return test::models_dir() + "/stories260K/stories260K.bin"; }

QuantizedModel quantize_stories(const Checkpoint& source, const std::string& spec) {
  LlamaModel work(source);
  auto method = make_method(spec);
  return quantize_model(work, *method, nullptr, {});
}

std::string execution_in_memory(const Checkpoint& source, QuantizedModel qm) {
  LlamaModel q(quantized_checkpoint_in_memory(source, std::move(qm), {{"path", stories()}}));
  return pack::gpu_packed_execution(q);
}

TEST(GpuPackedExecution, NamesTheLayoutsOfAWholeModel) {
  LOWBIT_REQUIRE_PATH(stories());
  const Checkpoint source = open_checkpoint(stories());
  EXPECT_EQ(execution_in_memory(source, quantize_stories(source, "rtn:w=4,g=32")), "packed-w4a16");
  EXPECT_EQ(execution_in_memory(source, quantize_stories(source, "rtn:w=2,g=32")), "packed-gemv");
  EXPECT_EQ(execution_in_memory(source, quantize_stories(source, "rtn:w=3,g=64")), "packed-gemv");
  EXPECT_EQ(execution_in_memory(source, quantize_stories(source, "rtn:w=8,g=32")), "packed-gemv");
  // Groups of 48 columns: the GEMV layout wants multiples of 32, the tiles take any size.
  EXPECT_EQ(execution_in_memory(source, quantize_stories(source, "rtn:w=2,g=48")), "packed-w4a16");

  // A g_idx is read from the linear's data: c / 32 everywhere is no act_order (GEMV); one that
  // permutes the groups of q_proj sends that linear to the tiles.
  QuantizedModel qm = quantize_stories(source, "rtn:w=2,g=32");
  for (QuantizedBlock& b : qm.blocks)
    for (auto& l : b.linear) {
      l->g_idx.resize(size_t(l->cols));
      for (int64_t c = 0; c < l->cols; ++c) l->g_idx[size_t(c)] = int32_t(c / 32);
    }
  QuantizedModel permuted = qm;
  QuantizedLinear& q0 = *permuted.blocks[0].linear[size_t(LinearKind::Q)];
  ASSERT_EQ(q0.cols, 64);
  for (int64_t c = 0; c < 64; ++c) q0.g_idx[size_t(c)] = int32_t(c % 2);  // two groups of 32
  EXPECT_EQ(execution_in_memory(source, std::move(qm)), "packed-gemv");
  EXPECT_EQ(execution_in_memory(source, std::move(permuted)), "packed-w4a16+gemv");
}

TEST(GpuPackedExecution, ReadsAWrittenCheckpoint) {
  LOWBIT_REQUIRE_PATH(stories());
  const std::filesystem::path dir = std::filesystem::path(::testing::TempDir()) / "gpu_packed_execution_nf4";
  std::filesystem::remove_all(dir);
  {
    LlamaModel m(open_checkpoint(stories()));
    auto method = make_method("nf4:dq=1,b=32");
    write_quantized_checkpoint(dir.string(), m, quantize_model(m, *method, nullptr, {}), nlohmann::json::object(),
                               false);
  }
  const std::unique_ptr<LlamaModel> q = load_model(dir.string());
  // NF4 blocks of 32 over down_proj's rows of 172 columns straddle rows: refused, naming it.
  try {
    (void)pack::gpu_packed_execution(*q);
    FAIL() << "no error";
  } catch (const Error& e) {
    const std::string m = e.what();
    EXPECT_NE(m.find("down_proj"), std::string::npos) << m;
    EXPECT_NE(m.find("straddle rows"), std::string::npos) << m;
  }
  std::filesystem::remove_all(dir);
}

TEST(GpuPackedExecution, RefusesAModelThatIsNotQuantized) {
  LOWBIT_REQUIRE_PATH(stories());
  LlamaModel plain(open_checkpoint(stories()));
  EXPECT_THROW(pack::gpu_packed_execution(plain), Error);
}

}  // namespace
}  // namespace lowbit
