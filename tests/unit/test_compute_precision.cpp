// The precision of a training step's products (train/compute_precision.h) as the options name
// it: the names, each device's default, and the CPU's refusal of the GPU modes with an error
// naming --compute and the device, from the precision alone and from `lowbit finetune`'s options
// (tests/cli/test_finetune.sh checks the command's refusal).
#include "core/error.h"
#include "test_util.h"
#include "train/compute_precision.h"
#include "train/finetune.h"

#include <gtest/gtest.h>

#include <functional>
#include <string>

namespace lowbit::train {
namespace {

using lowbit::test::error_text;

TEST(ComputePrecision, NamesAndDefaults) {
  for (ComputePrecision p : {ComputePrecision::Fp32, ComputePrecision::Tf32, ComputePrecision::Bf16})
    EXPECT_EQ(parse_compute_precision(compute_precision_name(p)), p);
  EXPECT_STREQ(compute_precision_name(ComputePrecision::Bf16), "bf16");
  EXPECT_EQ(error_text([] { parse_compute_precision("fp16"); }),
            "--compute 'fp16': unknown precision (known: fp32, tf32, bf16)");
  const Device cpu = parse_device("cpu"), gpu = parse_device("cuda:1");
  EXPECT_EQ(default_compute_precision(cpu), ComputePrecision::Fp32);
  EXPECT_EQ(default_compute_precision(gpu), ComputePrecision::Bf16);
  EXPECT_EQ(resolve_compute_precision(cpu, ""), ComputePrecision::Fp32);
  EXPECT_EQ(resolve_compute_precision(gpu, ""), ComputePrecision::Bf16);
  EXPECT_EQ(resolve_compute_precision(gpu, "tf32"), ComputePrecision::Tf32);
  EXPECT_EQ(resolve_compute_precision(gpu, "fp32"), ComputePrecision::Fp32);
  EXPECT_EQ(resolve_compute_precision(cpu, "fp32"), ComputePrecision::Fp32);
}

TEST(ComputePrecision, TheCpuRefusesTheGpuModes) {
  const Device cpu = parse_device("cpu");
  for (const char* p : {"bf16", "tf32"})
    EXPECT_EQ(error_text([&] { resolve_compute_precision(cpu, p); }),
              std::string("--compute ") + p + " on device cpu: the CPU trains in fp32 only (tf32 and bf16 are GPU "
              "modes)");
  // `lowbit finetune`'s options, checked before any work.
  FinetuneOptions o;
  o.compute = "bf16";
  EXPECT_NE(error_text([&] { check_finetune_options(o); }).find("--compute bf16 on device cpu"), std::string::npos);
  o.compute = "fp32";
  EXPECT_NO_THROW(check_finetune_options(o));
  EXPECT_EQ(finetune_compute(o), ComputePrecision::Fp32);
  o.compute.clear();
  EXPECT_EQ(finetune_compute(o), ComputePrecision::Fp32);
  o.device = "cuda";
  EXPECT_EQ(finetune_compute(o), ComputePrecision::Bf16);
  // What the engine factory (make_step_engine) checks first.
  EXPECT_NE(error_text([&] { check_compute_precision(cpu, ComputePrecision::Tf32); }).find("--compute tf32 on device cpu"),
            std::string::npos);
  EXPECT_NO_THROW(check_compute_precision(parse_device("cuda"), ComputePrecision::Tf32));
}

}  // namespace
}  // namespace lowbit::train
