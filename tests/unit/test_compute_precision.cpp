// The precision of a training step's products (train/compute_precision.h) as the options name
// it: the names, each device's default, and the CPU's refusal of the GPU modes with an error
// naming --compute and the device, from the precision alone and from `lowbit finetune`'s options
// (tests/cli/test_finetune.sh checks the command's refusal). Also the bf16 mode's resident base
// (train/base_residency.h): its names, where it applies, auto's rule, and `lowbit finetune`'s and
// a study's refusals.
#include "core/error.h"
#include "test_util.h"
#include "train/base_residency.h"
#include "train/compact_base.h"
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

TEST(BaseResidency, Names) {
  for (BaseResidency r : {BaseResidency::Auto, BaseResidency::On, BaseResidency::Off})
    EXPECT_EQ(parse_base_residency(base_residency_name(r)), r);
  EXPECT_EQ(error_text([] { parse_base_residency("yes"); }),
            "--base-resident 'yes': unknown value (known: auto, on, off)");
}

// A resident base is the GPU's bf16 mode's: elsewhere auto (and off) resolve to off and on is
// refused, naming the option, the precision and the device.
TEST(BaseResidency, AppliesToTheGpusBf16ModeOnly) {
  const Device cpu = parse_device("cpu"), gpu = parse_device("cuda");
  EXPECT_EQ(resolve_base_residency(gpu, ComputePrecision::Bf16, BaseResidency::Auto), BaseResidency::Auto);
  EXPECT_EQ(resolve_base_residency(gpu, ComputePrecision::Bf16, BaseResidency::On), BaseResidency::On);
  EXPECT_EQ(resolve_base_residency(gpu, ComputePrecision::Bf16, BaseResidency::Off), BaseResidency::Off);
  for (ComputePrecision p : {ComputePrecision::Fp32, ComputePrecision::Tf32}) {
    EXPECT_EQ(resolve_base_residency(gpu, p, BaseResidency::Auto), BaseResidency::Off);
    EXPECT_EQ(resolve_base_residency(gpu, p, BaseResidency::Off), BaseResidency::Off);
    EXPECT_EQ(error_text([&] { resolve_base_residency(gpu, p, BaseResidency::On); }),
              std::string("--base-resident on with --compute ") + compute_precision_name(p) +
                  " on device cuda:0: a resident base is the GPU's bf16 mode's (--device cuda --compute bf16); use "
                  "auto or off");
  }
  EXPECT_EQ(resolve_base_residency(cpu, ComputePrecision::Fp32, BaseResidency::Auto), BaseResidency::Off);
  EXPECT_EQ(error_text([&] { resolve_base_residency(cpu, ComputePrecision::Fp32, BaseResidency::On); }),
            "--base-resident on with --compute fp32 on device cpu: a resident base is the GPU's bf16 mode's (--device "
            "cuda --compute bf16); use auto or off");
}

// auto's rule: the resident base within kResidentMargin of what the rest of the run leaves free.
TEST(BaseResidency, AutoFitsWithinTheMargin) {
  const int64_t GiB = int64_t(1) << 30;
  EXPECT_TRUE(resident_base_fits(9 * GiB, 20 * GiB, 10 * GiB));
  EXPECT_FALSE(resident_base_fits(9 * GiB + 1, 20 * GiB, 10 * GiB));
  EXPECT_FALSE(resident_base_fits(1, 10 * GiB, 10 * GiB)) << "nothing left";
  EXPECT_FALSE(resident_base_fits(1, 10 * GiB, 11 * GiB)) << "the rest does not fit either";
  EXPECT_TRUE(resident_base_fits(0, 1, 0));
}

// `lowbit finetune`'s options (a study's [[finetune]] table goes through the same check):
// --base-resident is checked before any work; its default, auto, runs everywhere.
TEST(BaseResidency, FinetuneOptions) {
  FinetuneOptions o;
  EXPECT_EQ(o.base_resident, "auto");
  EXPECT_NO_THROW(check_finetune_options(o));
  EXPECT_EQ(finetune_base_residency(o), BaseResidency::Off) << "auto on the CPU";
  o.base_resident = "on";
  EXPECT_NE(error_text([&] { check_finetune_options(o); }).find("--base-resident on with --compute fp32 on device cpu"),
            std::string::npos);
  o.base_resident = "sometimes";
  EXPECT_NE(error_text([&] { check_finetune_options(o); }).find("--base-resident 'sometimes'"), std::string::npos);
  o.device = "cuda";
  o.base_resident = "on";
  EXPECT_EQ(finetune_base_residency(o), BaseResidency::On) << "bf16, the GPU's default";
  o.compute = "tf32";
  EXPECT_NE(error_text([&] { finetune_base_residency(o); }).find("--base-resident on with --compute tf32"),
            std::string::npos);
  o.base_resident = "auto";
  EXPECT_EQ(finetune_base_residency(o), BaseResidency::Off);
}

// LOWBIT_TRAIN_ATTENTION: unset and fp32 keep the SGEMM attention, tf32 asks for tensor cores in
// the tf32 and bf16 modes (the fp32 mode keeps its kernels), anything else is refused naming the
// variable and its value.
TEST(ComputePrecision, AttentionVariable) {
  {
    const test::ScopedEnv env("LOWBIT_TRAIN_ATTENTION", nullptr);
    EXPECT_FALSE(tf32_attention(ComputePrecision::Bf16));
  }
  {
    const test::ScopedEnv env("LOWBIT_TRAIN_ATTENTION", "fp32");
    EXPECT_FALSE(tf32_attention(ComputePrecision::Bf16));
  }
  {
    const test::ScopedEnv env("LOWBIT_TRAIN_ATTENTION", "tf32");
    EXPECT_TRUE(tf32_attention(ComputePrecision::Bf16));
    EXPECT_TRUE(tf32_attention(ComputePrecision::Tf32));
    EXPECT_FALSE(tf32_attention(ComputePrecision::Fp32)) << "fp32 keeps its kernels";
  }
  const test::ScopedEnv env("LOWBIT_TRAIN_ATTENTION", "TF32");
  EXPECT_NE(error_text([] { tf32_attention(ComputePrecision::Bf16); }).find("LOWBIT_TRAIN_ATTENTION='TF32'"),
            std::string::npos);
}

}  // namespace
}  // namespace lowbit::train
