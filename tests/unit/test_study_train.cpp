// A study's trained cells without models: [[finetune]] and [[distill]] tables (grids, keys that
// name every training option, errors at file:line:column), the training columns of the store
// (and a store written before them), and the paper's labels of trained rows.
#include "backend/device_check.h"
#include "core/error.h"
#include "study/grid.h"
#include "study/report.h"
#include "study/spec.h"
#include "study/store.h"
#include "train/distill.h"
#include "train/finetune.h"
#include "study_spec_errors.h"
#include "test_util.h"

#include <gtest/gtest.h>

#include <sqlite3.h>

#include <set>
#include <sstream>

namespace lowbit::study {
namespace {

using spec_test::error_of;
using spec_test::kNoFiles;

// Lines 1-16 are the study, the model, the calibration and the evaluation; the tables start on
// line 17.
std::string spec_with(const std::string& tables) {
  return "[study]\nname = \"t\"\n\n[[model]]\nname = \"m\"\npath = \"models/m\"\n\n"
         "[calibration]\nset = \"ptb\"\nnsamples = 8\nseqlen = 64\n\n"
         "[eval]\nppl = [\"ptb\"]\ntasks = [\"mmlu\"]\n\n" +
         tables;
}

TEST(StudyTrainSpec, FinetuneGridAndKeys) {
  const StudySpec s = parse_study_spec(
      spec_with("[[method]]\nname = \"nf4\"\ndq = 1\n\n"
                "[[finetune]]\nmethod = [\"qlora\", \"irqlora\"]\ndata = \"alpaca.json\"\nsteps = [10, 20]\nlr = 1e-4\n"),
      "/tmp/x/spec.toml", kNoFiles);
  ASSERT_EQ(s.methods.size(), 5u);
  EXPECT_EQ(s.methods[0].spec, "nf4:dq=1");
  EXPECT_EQ(s.methods[0].train.kind, TrainKind::None);
  // Axes in the keys' order (a TOML table's: alphabetical), the last varying fastest.
  EXPECT_EQ(s.methods[1].spec, "qlora");
  EXPECT_EQ(s.methods[1].name, "qlora");
  EXPECT_EQ(s.methods[1].train.kind, TrainKind::Finetune);
  EXPECT_EQ(s.methods[1].train.finetune.steps, 10);
  EXPECT_EQ(s.methods[2].train.finetune.steps, 20);
  EXPECT_EQ(s.methods[3].spec, "irqlora");
  EXPECT_EQ(s.methods[1].train.finetune.data, "/tmp/x/alpaca.json");
  EXPECT_EQ(s.methods[1].train.finetune.lr, 1e-4);
  EXPECT_EQ(s.methods[1].quant_spec(), "nf4:dq=1");
  EXPECT_EQ(s.methods[3].quant_spec(), "icq:tau_range=0.1,tau_n=100,dq=1");
  EXPECT_FALSE(s.needs_calibration());

  const StudyPlan p = expand_plan(s);
  ASSERT_EQ(p.cells.size(), 5u);
  // Every option in the key, defaults included (those of lowbit finetune).
  EXPECT_EQ(p.cells[1].key,
            "m|qlora|none|finetune:r=64,alpha=16,dropout=0,targets=all,iec=0,data=/tmp/x/alpaca.json,steps=10,batch=1,"
            "grad_accum=16,lr=0.0001,warmup_ratio=0.03,max_grad_norm=0.3,weight_decay=0,adam_beta1=0.9,"
            "adam_beta2=0.999,adam_eps=1e-08,source_max_len=384,target_max_len=128,eval_size=0,limit=0,seed=0,"
            "data_seed=42,spm=auto");
  EXPECT_NE(p.cells[1].key, p.cells[2].key);
  EXPECT_NE(p.cells[3].key.find("|irqlora|none|finetune:r=64,alpha=16,dropout=0,targets=all,iec=1,"), std::string::npos);
  // #W #A #G of the base quantization: NF4 at 4 bits in blocks of 64.
  EXPECT_EQ(p.cells[1].w, 4);
  EXPECT_EQ(p.cells[1].a, 16);
  EXPECT_EQ(p.cells[1].g, 64);
  EXPECT_FALSE(p.cells[1].calibrated);
  // An untrained cell keeps its key.
  EXPECT_EQ(p.cells[0].key, "m|nf4:dq=1|none");
}

TEST(StudyTrainSpec, LoraOptionsFormTheMethodSpec) {
  const StudySpec s = parse_study_spec(
      spec_with("[[finetune]]\nmethod = \"irqlora\"\ndata = \"/d/a.json\"\nr = [8, 16]\niec = false\n"
                "targets = \"q_proj+v_proj\"\n"),
      "/tmp/spec.toml", kNoFiles);
  ASSERT_EQ(s.methods.size(), 2u);
  // Options in the table's (alphabetical) order, as the method spec `lowbit finetune` takes.
  EXPECT_EQ(s.methods[0].spec, "irqlora:iec=0,r=8,targets=q_proj+v_proj");
  EXPECT_EQ(s.methods[0].train.finetune.method, s.methods[0].spec);
  const StudyPlan p = expand_plan(s);
  EXPECT_NE(p.cells[1].key.find("finetune:r=16,alpha=16,dropout=0,targets=q_proj+v_proj,iec=0,data=/d/a.json,"),
            std::string::npos)
      << p.cells[1].key;
}

TEST(StudyTrainSpec, DistillGridAndKeys) {
  const StudySpec s = parse_study_spec(
      spec_with("[[distill]]\ng = [64, 128]\nsteps = 150\nlr = 5e-4\ndad = \"teacher\"\nlatent = true\n"),
      "/tmp/spec.toml", kNoFiles);
  ASSERT_EQ(s.methods.size(), 2u);
  EXPECT_EQ(s.methods[0].spec, "dbllm:g=64");
  EXPECT_EQ(s.methods[0].name, "dbllm");
  EXPECT_EQ(s.methods[0].train.kind, TrainKind::Distill);
  EXPECT_EQ(s.methods[0].train.distill.method, "dbllm:g=64");
  EXPECT_EQ(s.methods[1].train.distill.steps, 150);
  EXPECT_TRUE(s.methods[1].train.distill.latent);
  EXPECT_TRUE(s.needs_calibration());  // DAD trains on the calibration windows
  const StudyPlan p = expand_plan(s);
  EXPECT_EQ(p.cells[1].key,
            "m|dbllm:g=128|ptb:n=8,seqlen=64,seed=0,bos=auto|dad:steps=150,batch=1,grad_accum=4,lr=0.0005,"
            "warmup_ratio=0,max_grad_norm=1,dad=teacher,gamma=1,train_beta=1,latent=1,latent_lr_scale=1");
  EXPECT_TRUE(p.cells[1].calibrated);
  EXPECT_EQ(p.cells[1].w, 2);
  EXPECT_EQ(p.cells[1].g, 128);
}

// data = "generated": the cell reads no calibration text; its training key names the generation
// (every option), so that it never shares a key with a calibration cell, whose key is unchanged.
TEST(StudyTrainSpec, DistillOnGeneratedData) {
  const StudySpec s = parse_study_spec(
      spec_with("[[distill]]\ng = 64\ndata = [\"calib\", \"generated\"]\n\n"
                "[[distill]]\ng = 64\ndata = \"generated\"\ngen_nsamples = 16\ngen_seqlen = 32\ngen_seed = [1, 2]\n"
                "gen_first = \"sweep\"\ngen_greedy = 3\ngen_temperature = 0.7\ngen_top_k = 0\ngen_eos = \"continue\"\n"
                "gen_bos = \"both\"\n"),
      "/tmp/spec.toml", kNoFiles);
  ASSERT_EQ(s.methods.size(), 4u);
  EXPECT_EQ(s.methods[0].train.distill.data, "calib");
  EXPECT_EQ(s.methods[1].train.distill.data, "generated");
  const train::GenDataOptions& g = s.methods[3].train.distill.gen;
  EXPECT_EQ(g.nsamples, 16);
  EXPECT_EQ(g.seqlen, 32);
  EXPECT_EQ(g.seed, 2u);
  EXPECT_EQ(g.first, "sweep");
  EXPECT_EQ(g.greedy, "3");
  EXPECT_EQ(g.temperature, 0.7);
  EXPECT_EQ(g.top_k, 0);
  EXPECT_EQ(g.eos, "continue");
  EXPECT_EQ(g.bos, "both");
  const StudyPlan p = expand_plan(s);
  const std::string calib_key = "m|dbllm:g=64|ptb:n=8,seqlen=64,seed=0,bos=auto|dad:steps=100,batch=1,grad_accum=4,"
                                "lr=0.0001,warmup_ratio=0,max_grad_norm=1,dad=cross,gamma=1,train_beta=1,latent=0,"
                                "latent_lr_scale=1";
  EXPECT_EQ(p.cells[0].key, calib_key);
  EXPECT_TRUE(p.cells[0].calibrated);
  EXPECT_EQ(p.cells[1].key,
            "m|dbllm:g=64|none|dad:steps=100,batch=1,grad_accum=4,lr=0.0001,warmup_ratio=0,max_grad_norm=1,dad=cross,"
            "gamma=1,train_beta=1,latent=0,latent_lr_scale=1,data=generated,gen_nsamples=128,gen_seqlen=2048,"
            "gen_seed=0,gen_first=random,gen_greedy=2-4,gen_temperature=1,gen_top_k=50,gen_eos=stop,gen_bos=window");
  EXPECT_FALSE(p.cells[1].calibrated);
  EXPECT_EQ(p.cells[1].calibration, "none");
  EXPECT_NE(p.cells[2].key, p.cells[3].key);  // gen_seed 1 and 2
  EXPECT_NE(p.cells[3].key.find("gen_seed=2,gen_first=sweep,gen_greedy=3,gen_temperature=0.7,gen_top_k=0,"
                                "gen_eos=continue,gen_bos=both"),
            std::string::npos);
  // Generated data alone needs no calibration text.
  EXPECT_FALSE(parse_study_spec(spec_with("[[distill]]\ndata = \"generated\"\n"), "/tmp/spec.toml", kNoFiles)
                   .needs_calibration());
  // Its batch is checked against the generated windows, not [calibration]'s.
  EXPECT_NO_THROW(parse_study_spec(spec_with("[[distill]]\ndata = \"generated\"\nbatch = 16\ngen_nsamples = 16\n"),
                                   "/tmp/spec.toml", kNoFiles));
}

TEST(StudyTrainSpec, BadGenerationOptionsNameTheLine) {
  EXPECT_EQ(error_of(spec_with("[[distill]]\ndata = \"web\"\n")),
            "/tmp/spec.toml:18:8: option 'data': \"web\" is not one of calib, generated");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ndata = \"generated\"\ngen_greedy = \"4-2\"\n")),
            "/tmp/spec.toml:19:14: option 'gen_greedy': \"4-2\" is not N or \"LO-HI\" (non-negative integers, LO <= HI)");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ndata = \"generated\"\ngen_temperature = 0\n")),
            "/tmp/spec.toml:19:19: option 'gen_temperature' = 0 is out of range [1e-06, 1000000]");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ndata = \"generated\"\ngen_top_k = -1\n")),
            "/tmp/spec.toml:19:13: option 'gen_top_k' = -1 is out of range [0, 2147483648]");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ndata = \"generated\"\ngen_first = \"zipf\"\n")),
            "/tmp/spec.toml:19:13: option 'gen_first': \"zipf\" is not one of random, sweep");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ndata = \"generated\"\ngen_eos = \"never\"\n")),
            "/tmp/spec.toml:19:11: option 'gen_eos': \"never\" is not one of stop, continue");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ndata = \"generated\"\ngen_bos = \"on\"\n")),
            "/tmp/spec.toml:19:11: option 'gen_bos': \"on\" is not one of window, both, off");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ndata = \"generated\"\ngen_nsamples = 0\n")),
            "/tmp/spec.toml:19:16: option 'gen_nsamples' = 0 is out of range [1, 1048576]");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ndata = \"generated\"\ngen_seqlen = 1\n")),
            "/tmp/spec.toml:19:14: option 'gen_seqlen' = 1 is out of range [2, 1048576]");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ndata = \"generated\"\nbatch = 4\ngen_nsamples = 2\n")),
            "/tmp/spec.toml:17:1: --gen-nsamples 2 is fewer than one batch of 4");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ngen_seed = 3\n")),
            "/tmp/spec.toml:18:12: option 'gen_seed' needs data = \"generated\" (this cell's data is \"calib\")");
}

TEST(StudyTrainSpec, ZipWalksTrainingOptionsTogether) {
  const StudySpec s = parse_study_spec(
      spec_with("[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\nsteps = [100, 200]\nseed = [0, 1]\n"
                "data_seed = [42, 43]\nzip = [\"seed\", \"data_seed\"]\n"),
      "/tmp/spec.toml", kNoFiles);
  ASSERT_EQ(s.methods.size(), 4u);
  // Axes in the keys' order (a TOML table's): data_seed with seed, then steps.
  EXPECT_EQ(s.methods[1].train.finetune.seed, 0u);
  EXPECT_EQ(s.methods[1].train.finetune.steps, 200);
  EXPECT_EQ(s.methods[2].train.finetune.seed, 1u);
  EXPECT_EQ(s.methods[2].train.finetune.data_seed, 43u);
  EXPECT_EQ(s.methods[2].train.finetune.steps, 100);
}

// Fine-tuning trains on the study's device unless the table names one (an axis like any option).
TEST(StudyTrainSpec, FinetuneDeviceIsTheStudysOrTheTables) {
  // spec_with's study on a GPU.
  std::string cuda_study = spec_with("");
  cuda_study.insert(cuda_study.find('\n', cuda_study.find("name")) + 1, "device = \"cuda\"\n");
  const StudySpec s = parse_study_spec(
      cuda_study + "[[finetune]]\nmethod = [\"qlora\", \"irqlora\"]\ndevice = [\"cuda\", \"cpu\"]\n"
                   "zip = [\"method\", \"device\"]\ndata = \"a.json\"\n\n"
                   "[[finetune]]\nmethod = \"lora\"\ndata = \"a.json\"\n",
      "/tmp/spec.toml", kNoFiles);
  ASSERT_EQ(s.methods.size(), 3u);
  EXPECT_EQ(s.methods[0].spec, "qlora");
  EXPECT_EQ(s.methods[0].train.finetune.device, "cuda");
  EXPECT_EQ(s.methods[1].spec, "irqlora");
  EXPECT_EQ(s.methods[1].train.finetune.device, "cpu");
  EXPECT_EQ(s.methods[2].train.finetune.device, "cuda");
  // The device is where the cell trains, not what it computes: the cell's key leaves it out. What
  // it computes in is named when it is not fp32: a GPU cell's default, bf16, is; fp32 is not.
  const StudySpec cpu = parse_study_spec(spec_with("[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\n"),
                                         "/tmp/spec.toml", kNoFiles);
  EXPECT_EQ(cpu.methods[0].train.finetune.device, "cpu");
  const std::string cpu_key = expand_plan(cpu).cells[0].key;
  EXPECT_EQ(cpu_key.find("compute="), std::string::npos);
  EXPECT_EQ(expand_plan(s).cells[0].key, cpu_key + ",compute=bf16");
  const StudySpec fp32 = parse_study_spec(
      cuda_study + "[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\ncompute = [\"fp32\", \"tf32\"]\n",
      "/tmp/spec.toml", kNoFiles);
  ASSERT_EQ(fp32.methods.size(), 2u);
  EXPECT_EQ(fp32.methods[0].train.finetune.compute, "fp32");
  EXPECT_EQ(expand_plan(fp32).cells[0].key, cpu_key);
  EXPECT_EQ(expand_plan(fp32).cells[1].key, cpu_key + ",compute=tf32");
  EXPECT_EQ(error_of(spec_with("[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\ndevice = \"gpu\"\n")),
            "/tmp/spec.toml:20:10: device 'gpu': expected cpu, cuda or cuda:N");
  // A precision the device does not run, or none at all.
  EXPECT_NE(error_of(spec_with("[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\ncompute = \"bf16\"\n"))
                .find("--compute bf16 on device cpu: the CPU trains in fp32 only"),
            std::string::npos);
  EXPECT_NE(error_of(spec_with("[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\ncompute = \"fp16\"\n"))
                .find("--compute 'fp16': unknown precision"),
            std::string::npos);
}

// base_resident (train/base_residency.h): auto, on or off, a boolean for on and off; it changes
// no number, so a cell's key leaves it out (and a grid over it repeats one cell: refused); on
// where it does not apply (the CPU) is refused.
TEST(StudyTrainSpec, BaseResidentIsNotInTheKey) {
  std::string cuda_study = spec_with("");
  cuda_study.insert(cuda_study.find('\n', cuda_study.find("name")) + 1, "device = \"cuda\"\n");
  const std::string table = "[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\n";
  const StudySpec plain = parse_study_spec(cuda_study + table, "/tmp/spec.toml", kNoFiles);
  EXPECT_EQ(plain.methods[0].train.finetune.base_resident, "auto");
  const std::string key = expand_plan(plain).cells[0].key;
  EXPECT_EQ(key.find("resident"), std::string::npos);
  for (const auto& [value, want] : std::vector<std::pair<std::string, std::string>>{
           {"\"on\"", "on"}, {"\"off\"", "off"}, {"\"auto\"", "auto"}, {"true", "on"}, {"false", "off"}}) {
    SCOPED_TRACE(value);
    const StudySpec s = parse_study_spec(cuda_study + table + "base_resident = " + value + "\n", "/tmp/spec.toml",
                                         kNoFiles);
    EXPECT_EQ(s.methods[0].train.finetune.base_resident, want);
    EXPECT_EQ(expand_plan(s).cells[0].key, key);
  }
  EXPECT_NE(error_of(cuda_study + table + "base_resident = [\"on\", \"off\"]\n").find("appears twice in the grid"),
            std::string::npos);
  EXPECT_NE(error_of(spec_with(table + "base_resident = \"on\"\n")).find("--base-resident on with --compute fp32 on "
                                                                       "device cpu"),
            std::string::npos);
  EXPECT_NE(error_of(spec_with(table + "base_resident = \"maybe\"\n")).find("--base-resident 'maybe': unknown value"),
            std::string::npos);
}

// DB-LLM's distillation too: the study's device unless the table names one, not in the key.
TEST(StudyTrainSpec, DistillDeviceIsTheStudysOrTheTables) {
  std::string cuda_study = spec_with("");
  cuda_study.insert(cuda_study.find('\n', cuda_study.find("name")) + 1, "device = \"cuda\"\n");
  const StudySpec s = parse_study_spec(cuda_study + "[[distill]]\ng = [64, 128]\ndevice = [\"cuda\", \"cpu\"]\n"
                                                    "zip = [\"g\", \"device\"]\n\n[[distill]]\nsteps = 5\n",
                                       "/tmp/spec.toml", kNoFiles);
  ASSERT_EQ(s.methods.size(), 3u);
  EXPECT_EQ(s.methods[0].spec, "dbllm:g=64");
  EXPECT_EQ(s.methods[0].train.distill.device, "cuda");
  EXPECT_EQ(s.methods[1].train.distill.device, "cpu");
  EXPECT_EQ(s.methods[2].train.distill.device, "cuda");
  const StudySpec cpu = parse_study_spec(spec_with("[[distill]]\ng = 64\n"), "/tmp/spec.toml", kNoFiles);
  EXPECT_EQ(cpu.methods[0].train.distill.device, "cpu");
  // The device is where the cell trains, not what it computes: the cell's key leaves it out.
  EXPECT_EQ(expand_plan(cpu).cells[0].key, expand_plan(s).cells[0].key);
  EXPECT_EQ(error_of(spec_with("[[distill]]\ndevice = \"gpu\"\n")),
            "/tmp/spec.toml:18:10: device 'gpu': expected cpu, cuda or cuda:N");
}

// What a distillation cell computes in: fp32 by default on every device (its key as before the
// option), tf32 or bf16 named in the key; the GPU modes refused on the CPU at spec check, naming
// the device, and an unknown mode refused naming the value.
TEST(StudyTrainSpec, DistillComputeIsInTheKeyWhenNotFp32) {
  std::string cuda_study = spec_with("");
  cuda_study.insert(cuda_study.find('\n', cuda_study.find("name")) + 1, "device = \"cuda\"\n");
  const StudySpec dflt = parse_study_spec(cuda_study + "[[distill]]\ng = 64\n", "/tmp/spec.toml", kNoFiles);
  const std::string key = expand_plan(dflt).cells[0].key;
  EXPECT_EQ(key.find("compute="), std::string::npos);
  EXPECT_EQ(dflt.methods[0].train.distill.compute, "");
  EXPECT_EQ(train::distill_compute(dflt.methods[0].train.distill), train::ComputePrecision::Fp32);
  const StudySpec s = parse_study_spec(cuda_study + "[[distill]]\ng = 64\ncompute = [\"fp32\", \"tf32\", \"bf16\"]\n",
                                       "/tmp/spec.toml", kNoFiles);
  ASSERT_EQ(s.methods.size(), 3u);
  const StudyPlan p = expand_plan(s);
  EXPECT_EQ(s.methods[1].train.distill.compute, "tf32");
  EXPECT_EQ(p.cells[0].key, key);
  EXPECT_EQ(p.cells[1].key, key + ",compute=tf32");
  EXPECT_EQ(p.cells[2].key, key + ",compute=bf16");
  // The CPU's cell has the GPU's default key (the device is not in it).
  const StudySpec cpu = parse_study_spec(spec_with("[[distill]]\ng = 64\ncompute = \"fp32\"\n"), "/tmp/spec.toml",
                                         kNoFiles);
  EXPECT_EQ(expand_plan(cpu).cells[0].key, key);
  EXPECT_NE(error_of(spec_with("[[distill]]\ng = 64\ncompute = \"bf16\"\n"))
                .find("--compute bf16 on device cpu: the CPU trains in fp32 only"),
            std::string::npos);
  EXPECT_NE(error_of(cuda_study + "[[distill]]\ng = 64\ndevice = \"cpu\"\ncompute = \"tf32\"\n")
                .find("--compute tf32 on device cpu"),
            std::string::npos);
  EXPECT_NE(error_of(spec_with("[[distill]]\ng = 64\ncompute = \"fp16\"\n"))
                .find("--compute 'fp16': unknown precision"),
            std::string::npos);
}

// A cell with both a GPU compute mode and generated data names the compute first, then the
// generation; fp32 generated cells keep datafree's key, and each axis gives its own cells.
TEST(StudyTrainSpec, DistillComputeThenGeneratedDataInTheKey) {
  std::string cuda_study = spec_with("");
  cuda_study.insert(cuda_study.find('\n', cuda_study.find("name")) + 1, "device = \"cuda\"\n");
  const StudySpec s = parse_study_spec(cuda_study + "[[distill]]\ng = 64\ndata = [\"calib\", \"generated\"]\n"
                                                    "compute = [\"fp32\", \"bf16\"]\n",
                                       "/tmp/spec.toml", kNoFiles);
  const StudyPlan p = expand_plan(s);
  ASSERT_EQ(p.cells.size(), 4u);
  const std::string train = "dad:steps=100,batch=1,grad_accum=4,lr=0.0001,warmup_ratio=0,max_grad_norm=1,dad=cross,"
                            "gamma=1,train_beta=1,latent=0,latent_lr_scale=1";
  const std::string gen = ",data=generated,gen_nsamples=128,gen_seqlen=2048,gen_seed=0,gen_first=random,"
                          "gen_greedy=2-4,gen_temperature=1,gen_top_k=50,gen_eos=stop,gen_bos=window";
  const std::string calib_prefix = "m|dbllm:g=64|ptb:n=8,seqlen=64,seed=0,bos=auto|";
  std::set<std::string> keys;
  for (const auto& cell : p.cells) keys.insert(cell.key);
  EXPECT_EQ(keys.size(), 4u);
  EXPECT_EQ(keys.count(calib_prefix + train), 1u);
  EXPECT_EQ(keys.count(calib_prefix + train + ",compute=bf16"), 1u);
  EXPECT_EQ(keys.count("m|dbllm:g=64|none|" + train + gen), 1u);
  EXPECT_EQ(keys.count("m|dbllm:g=64|none|" + train + ",compute=bf16" + gen), 1u);
}

// `lowbit distill`'s options: --compute checked with the others, before any work.
TEST(StudyTrainSpec, DistillOptionsCheckTheCompute) {
  train::DistillOptions o;
  EXPECT_EQ(train::distill_compute(o), train::ComputePrecision::Fp32);
  o.device = "cuda";
  EXPECT_EQ(train::distill_compute(o), train::ComputePrecision::Fp32) << "fp32 is the default on a GPU too";
  for (const char* c : {"fp32", "tf32", "bf16"}) {
    o.compute = c;
    EXPECT_NO_THROW(train::check_distill_options(o)) << c;
    EXPECT_STREQ(train::compute_precision_name(train::distill_compute(o)), c);
  }
  o.device = "cpu";
  for (const char* c : {"tf32", "bf16"}) {
    o.compute = c;
    try {
      train::check_distill_options(o);
      ADD_FAILURE() << "--compute " << c << " accepted on the CPU";
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), std::string("--compute ") + c +
                                           " on device cpu: the CPU trains in fp32 only (tf32 and bf16 are GPU modes)");
    }
  }
  o.compute = "fp32";
  EXPECT_NO_THROW(train::check_distill_options(o));
  o.compute = "int8";
  EXPECT_THROW(train::check_distill_options(o), Error);
}

// lowbit finetune's device is checked with its other options, before any work (whether the
// device exists here is checked when the run starts).
TEST(StudyTrainSpec, DistillOptionsCheckTheDevice) {
  train::DistillOptions o;
  for (const char* d : {"cpu", "cuda", "cuda:1"}) {
    o.device = d;
    EXPECT_NO_THROW(train::check_distill_options(o)) << d;
  }
  o.device = "gpu";
  try {
    train::check_distill_options(o);
    ADD_FAILURE() << "device 'gpu' accepted";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "device 'gpu': expected cpu, cuda or cuda:N");
  }
}

TEST(StudyTrainSpec, FinetuneOptionsCheckTheDevice) {
  train::FinetuneOptions o;
  o.method = "irqlora:r=8";
  for (const char* d : {"cpu", "cuda", "cuda:1"}) {
    o.device = d;
    EXPECT_NO_THROW(train::check_finetune_options(o)) << d;
  }
  o.device = "gpu";
  try {
    train::check_finetune_options(o);
    ADD_FAILURE() << "device 'gpu' accepted";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "device 'gpu': expected cpu, cuda or cuda:N");
  }
}

TEST(StudyTrainSpec, ATableWithTrainingAloneIsAStudy) {
  EXPECT_EQ(parse_study_spec(spec_with("[[distill]]\n"), "/tmp/spec.toml", kNoFiles).methods.size(), 1u);
  EXPECT_EQ(error_of(spec_with("")),
            "/tmp/spec.toml:1:1: no [[method]] table (each names a method and its grid: [[method]] name = \"rtn\", w = "
            "[4])");
}

TEST(StudyTrainSpec, ErrorsNameTheLine) {
  EXPECT_EQ(error_of(spec_with("[[finetune]]\ndata = \"a.json\"\n")),
            "/tmp/spec.toml:17:1: [[finetune]] has no 'method' (qlora, irqlora or lora)");
  EXPECT_EQ(error_of(spec_with("[[finetune]]\nmethod = \"qlora\"\n")),
            "/tmp/spec.toml:17:1: [[finetune]] has no 'data' (instruction data in Stanford Alpaca's JSON format)");
  EXPECT_EQ(error_of(spec_with("[[finetune]]\nmethod = [\"qlora\", \"dora\"]\ndata = \"a.json\"\n")),
            "/tmp/spec.toml:18:20: unknown fine-tuning method 'dora' (known: qlora, irqlora, lora)");
  EXPECT_EQ(error_of(spec_with("[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\nsteps = [10, 0]\n")),
            "/tmp/spec.toml:20:14: option 'steps' = 0 is out of range [1, 1099511627776]");
  EXPECT_EQ(error_of(spec_with("[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\nlr = \"fast\"\n")),
            "/tmp/spec.toml:20:6: option 'lr': fast is not a number");
  EXPECT_EQ(error_of(spec_with("[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\nbatch = 1.5\n")),
            "/tmp/spec.toml:20:9: option 'batch': 1.5 is not an integer");
  EXPECT_EQ(error_of(spec_with("[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\nrank = 8\n")),
            "/tmp/spec.toml:20:1: unknown key 'rank' in [[finetune]] (known: adam_beta1, adam_beta2, adam_eps, alpha, "
            "base_resident, batch, compute, data, data_seed, device, dropout, eval_size, grad_accum, iec, limit, lr, "
            "max_grad_norm, method, r, seed, source_max_len, steps, target_max_len, targets, warmup_ratio, weight_decay, "
            "zip)");
  EXPECT_EQ(error_of(spec_with("[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\ntargets = \"qkv_proj\"\n")),
            "/tmp/spec.toml:20:11: unknown LoRA target 'qkv_proj' (known: q_proj, k_proj, v_proj, o_proj, gate_proj, "
            "up_proj, down_proj)");
  EXPECT_EQ(error_of(spec_with("[[finetune]]\nmethod = \"qlora\"\ndata = [\"a.json\"]\n")),
            "/tmp/spec.toml:19:8: 'data' must be a string (a file path)");
  EXPECT_EQ(error_of(spec_with("[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\n\n"
                               "[[finetune]]\nmethod = \"qlora\"\ndata = \"a.json\"\nsteps = 100\n")),
            "/tmp/spec.toml:21:1: fine-tuning 'qlora' with the same options appears twice in the grid (first from "
            "/tmp/spec.toml:17:1)");
  EXPECT_EQ(error_of(spec_with("[[distill]]\nbatch = 16\n")),
            "/tmp/spec.toml:17:1: dbllm: batch 16 is more than the [calibration] windows it distills on (nsamples 8)");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ng = 128\nsteps = -1\n")),
            "/tmp/spec.toml:19:9: option 'steps' = -1 is out of range [0, 1099511627776]");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ndad = \"kl\"\n")),
            "/tmp/spec.toml:18:7: DAD weight 'kl' is not one of none, teacher, cross");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ng = 1\n")), "/tmp/spec.toml:18:5: dbllm: option g=1 is out of range [2, 1048576] (group size along the input dimension "
            "(two scales per group))");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ng = 128\nepochs = 2\n")),
            "/tmp/spec.toml:19:10: unknown key 'epochs' in [[distill]] (training options: steps, batch, grad_accum, "
            "lr, warmup_ratio, max_grad_norm, dad, gamma, train_beta, latent, latent_lr_scale, device, compute, "
            "data, gen_nsamples, gen_seqlen, gen_seed, gen_first, gen_greedy, gen_temperature, gen_top_k, gen_eos, "
            "gen_bos; and the dbllm method's options)");
  EXPECT_EQ(error_of(spec_with("[[distill]]\ng = [64, 128]\nsteps = [1]\nzip = [\"g\", \"steps\"]\n")),
            "/tmp/spec.toml:17:1: distill: zipped options 'g' (2 values) and 'steps' (1 values) differ in length");
}

// The data file is read when the spec is checked: missing or malformed, the spec fails, naming it.
TEST(StudyTrainSpec, MissingOrBadDataFailsTheCheck) {
  test::TempDir dir;
  const std::string model = test::models_dir() + "/stories260K/stories260K.bin";
  LOWBIT_REQUIRE_PATH(model);
  auto spec = [&](const std::string& data, const std::string& extra = "") {
    return "[study]\nname = \"t\"\n\n[[model]]\npath = \"" + model + "\"\n\n[eval]\nppl = [\"" +
           std::string(dir / "t.txt") + "\"]\nseqlen = 64\n\n[[finetune]]\nmethod = \"qlora\"\nr = 4\ndata = \"" + data + "\"\n" +
           extra;
  };
  test::spit(dir / "t.txt", "some text to evaluate on\n");
  EXPECT_EQ(error_of(spec(dir / "missing.json"), SpecOptions{true}),
            "/tmp/spec.toml:14:8: fine-tuning data '" + std::string(dir / "missing.json") + "' does not exist");
  test::spit(dir / "bad.json", "[{\"instruction\": \"a\", \"output\": 5}]");
  const std::string bad = error_of(spec(dir / "bad.json"), SpecOptions{true});
  EXPECT_EQ(bad.substr(0, 21), "/tmp/spec.toml:14:8: ") << bad;
  EXPECT_NE(bad.find("bad.json"), std::string::npos) << bad;
  test::spit(dir / "two.json", "[{\"instruction\": \"a\", \"output\": \"b\"}, {\"instruction\": \"c\", \"output\": \"d\"}]");
  EXPECT_EQ(error_of(spec(dir / "two.json", "eval_size = 2\n"), SpecOptions{true}),
            "/tmp/spec.toml:14:8: fine-tuning data '" + std::string(dir / "two.json") +
                "': 2 records leave none to train on after eval_size 2");
  // IEC's rank must divide every adapted linear (stories260K: hidden 64, MLP 172).
  const std::string iec =
      error_of("[study]\nname = \"t\"\n\n[[model]]\npath = \"" + model + "\"\n\n[eval]\nppl = [\"" +
                   std::string(dir / "t.txt") + "\"]\nseqlen = 64\n\n[[finetune]]\nmethod = \"irqlora\"\nr = 24\ndata = \"" +
                   std::string(dir / "two.json") + "\"\n",
               SpecOptions{true});
  EXPECT_EQ(iec.substr(0, 47), "/tmp/spec.toml:11:1: irqlora:r=24 on model 'sto") << iec;
}

// A table's training device that this build cannot use is refused when the spec is checked.
TEST(StudyTrainSpec, TrainingOnAMissingBackendFailsTheCheck) {
  if (cuda_backend_built()) GTEST_SKIP() << "this build has the CUDA backend";
  test::TempDir dir;
  const std::string model = test::models_dir() + "/stories260K/stories260K.bin";
  LOWBIT_REQUIRE_PATH(model);
  test::spit(dir / "t.txt", "some text to calibrate and evaluate on, long enough for a few windows of tokens\n");
  const std::string text = "[study]\nname = \"t\"\n\n[[model]]\npath = \"" + model +
                           "\"\n\n[calibration]\nset = \"" + std::string(dir / "t.txt") +
                           "\"\nnsamples = 2\nseqlen = 8\n\n[eval]\nppl = [\"" + std::string(dir / "t.txt") +
                           "\"]\nseqlen = 64\n\n[[distill]]\ng = 4\ndevice = \"cuda\"\n";
  EXPECT_EQ(error_of(text, SpecOptions{true}),
            "/tmp/spec.toml:16:1: dbllm:g=4: training device \"cuda\": this lowbit was built without the CUDA "
            "backend (nvcc was not found at build time)");
}

// The store holds each trained cell's training; a store written before those columns reads as
// untrained cells and gains them when opened for writing.
TEST(StudyTrainStore, TrainingColumnsAndOlderStores) {
  test::TempDir dir;
  const std::string db = dir / "s.sqlite";
  CellRecord c;
  c.key = "m|qlora|none|finetune:steps=3";
  c.model = "m";
  c.model_path = "/m";
  c.model_sha256 = "abc";
  c.method = "qlora";
  c.method_name = "qlora";
  c.resolved = "qlora:r=64";
  c.w = 4;
  c.g = 64;
  c.calibration = "none";
  c.calibration_json = "null";
  c.train_seconds = 12.5;
  c.train_loss = 1.25;
  c.training = R"({"kind":"finetune","key":"finetune:steps=3"})";
  EvalRecord e;
  e.eval = e.eval_key = "ptb";
  e.kind = "perplexity";
  e.identity = "{}";
  {
    Store s(db, Store::Mode::ReadWrite);
    s.lock();
    s.set_study_name("t");
    e.run_id = s.begin_run({});
    s.write_evaluation(c, e, {{"ppl", 10, std::nullopt, 1}});
  }
  {
    const auto cells = Store(db, Store::Mode::ReadOnly).cells();
    ASSERT_EQ(cells.size(), 1u);
    EXPECT_EQ(cells[0].train_seconds, 12.5);
    EXPECT_EQ(cells[0].train_loss.value_or(-1), 1.25);
    EXPECT_EQ(cells[0].training, c.training);
  }
  // A store of the earlier layout: the cells table without the training columns.
  sqlite3* h = nullptr;
  ASSERT_EQ(sqlite3_open(db.c_str(), &h), SQLITE_OK);
  for (const char* col : {"train_seconds", "train_loss", "training"})
    ASSERT_EQ(sqlite3_exec(h, (std::string("ALTER TABLE cells DROP COLUMN ") + col).c_str(), nullptr, nullptr, nullptr),
              SQLITE_OK)
        << sqlite3_errmsg(h);
  sqlite3_close(h);
  {
    const auto cells = Store(db, Store::Mode::ReadOnly).cells();
    ASSERT_EQ(cells.size(), 1u);
    EXPECT_EQ(cells[0].train_seconds, 0);
    EXPECT_FALSE(cells[0].train_loss.has_value());
    EXPECT_EQ(cells[0].training, "null");
  }
  {
    Store s(db, Store::Mode::ReadWrite);
    s.lock();
    CellRecord d = c;
    d.key = "m|qlora|none|finetune:steps=4";
    s.write_evaluation(d, e, {{"ppl", 9, std::nullopt, 1}});
    const auto cells = s.cells();
    ASSERT_EQ(cells.size(), 2u);
    EXPECT_EQ(cells[0].training, "null");
    EXPECT_EQ(cells[1].train_loss.value_or(-1), 1.25);
  }
}

// Rows of trained cells as the paper labels them (Table 5: NormalFloat, QLoRA, IR-QLoRA; DB-LLM
// before its FDB initialization), and the training options that differ between rows of one
// method named in their labels.
TEST(StudyTrainReport, PaperLabels) {
  test::TempDir dir;
  const std::string db = dir / "s.sqlite";
  auto cell = [](const std::string& method, const std::string& name, double w, int64_t g, const std::string& training,
                 int64_t ord) {
    CellRecord c;
    c.key = "m|" + method + "|none" + (training.empty() ? "" : "|" + training);
    c.model = "m";
    c.model_path = "/m";
    c.model_sha256 = "abc";
    c.method = method;
    c.method_name = name;
    c.resolved = method;
    c.w = w;
    c.g = g;
    c.calibration = "none";
    c.calibration_json = "null";
    c.ord = ord;
    if (!training.empty()) {
      const std::string kind = training.starts_with("dad:") ? "distill" : "finetune";
      c.training = R"({"kind":")" + kind + R"(","key":")" + training + "\"" +
                   (training.find("steps=200") != std::string::npos ? R"(,"eval_loss":2.5})" : "}");
      c.train_loss = 1;
    }
    return c;
  };
  {
    Store s(db, Store::Mode::ReadWrite);
    s.lock();
    s.set_study_name("t");
    EvalRecord e;
    e.eval = "mmlu";
    e.eval_key = "mmlu:k";
    e.kind = "multiple_choice";
    e.identity = "{}";
    e.run_id = s.begin_run({});
    int64_t ord = 0;
    for (const CellRecord& c :
         {cell("irqlora", "irqlora", 4, 64, "finetune:r=64,steps=100,seed=0", ord++),
          cell("qlora", "qlora", 4, 64, "finetune:r=64,steps=100,seed=0", ord++),
          cell("qlora", "qlora", 4, 64, "finetune:r=64,steps=200,seed=0", ord++),
          cell("nf4:dq=1", "nf4", 4, 64, "", ord++), cell("fp16", "fp16", 16, -1, "", ord++),
          cell("dbllm:g=128", "dbllm", 2, 128, "dad:steps=150", ord++), cell("dbllm:g=128", "dbllm", 2, 128, "", ord++)})
      s.write_evaluation(c, e, {{"avg_subjects", 0.5, std::nullopt, 57}});
  }
  const std::string md = render_markdown(load_report(db));
  // Each row's label and #W.
  std::vector<std::string> labels;
  std::stringstream ss(md.substr(md.find("| Method")));
  std::string line;
  std::getline(ss, line);
  std::getline(ss, line);
  auto trim = [](std::string x) {
    while (!x.empty() && x.front() == ' ') x.erase(x.begin());
    while (!x.empty() && x.back() == ' ') x.pop_back();
    return x;
  };
  while (std::getline(ss, line) && line.starts_with("|")) {
    std::vector<std::string> fields;
    std::stringstream ls(line);
    std::string f;
    while (std::getline(ls, f, '|')) fields.push_back(trim(f));
    ASSERT_GE(fields.size(), 3u) << line;
    labels.push_back(fields[1] + " #W" + fields[2]);
  }
  const std::vector<std::string> want = {"m #W16",           "DB-LLM #W2",           "DB-LLM (FDB init) #W2",
                                         "NormalFloat (dq=1) #W4", "QLoRA (steps=100) #W4", "QLoRA (steps=200) #W4",
                                         "IR-QLoRA #W4"};
  EXPECT_EQ(labels, want) << md;
  EXPECT_NE(md.find("m, QLoRA (steps=200): trained `finetune:r=64,steps=200,seed=0`; 0 steps in 0 s, last loss 1.0000, "
                     "held-out loss 2.5000"),
            std::string::npos)
      << md;
}

}  // namespace
}  // namespace lowbit::study
