// Tokenizer encode throughput on the WikiText2 test text (joined as PROTOCOL.md says),
// single-threaded. Compare with scripts/make_tokenizer_fixtures.py, which times HF tokenizers
// (Rust), transformers and tiktoken on the same text and CPU.
//
//   bench_tokenizer --data-dir DATA --models-dir MODELS [benchmark flags]
//
// Reports bytes_per_second (MB/s of UTF-8 input) and tokens per second.
#include "core/mapped_file.h"
#include "formats/text_datasets.h"
#include "formats/tokenizer.h"

#include <benchmark/benchmark.h>

#include <cstring>
#include <string>
#include <vector>

namespace {

std::string g_data = "../shared/data", g_models = "../shared/models";

const std::string& wikitext2() {
  static std::string t =
      lowbit::join(lowbit::wikitext_rows(lowbit::read_file(g_data + "/wikitext2/wiki.test.raw")), "\n\n");
  return t;
}

void encode(benchmark::State& state, const std::string& rel, lowbit::SpmConvention spm) {
  auto tok = lowbit::load_tokenizer(g_models + "/" + rel, {spm});
  const std::string& text = wikitext2();
  size_t n = 0;
  for (auto _ : state) {
    auto ids = tok->encode(text, lowbit::BosMode::Off);
    n = ids.size();
    benchmark::DoNotOptimize(ids.data());
  }
  state.SetBytesProcessed(int64_t(state.iterations()) * int64_t(text.size()));
  state.counters["tokens"] = double(n);
  state.counters["tokens/s"] = benchmark::Counter(double(n) * double(state.iterations()), benchmark::Counter::kIsRate);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    if (i + 1 < argc && std::strcmp(argv[i], "--data-dir") == 0) g_data = argv[++i];
    else if (i + 1 < argc && std::strcmp(argv[i], "--models-dir") == 0) g_models = argv[++i];
    else rest.push_back(argv[i]);
  }
  benchmark::RegisterBenchmark("encode/llama3/wikitext2", encode, "tokenizers/llama3",
                               lowbit::SpmConvention::Auto)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("encode/llama2-llama/wikitext2", encode, "tokenizers/llama2/tokenizer.model",
                               lowbit::SpmConvention::Llama)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("encode/llama2-generic/wikitext2", encode, "tokenizers/llama2/tokenizer.model",
                               lowbit::SpmConvention::Generic)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("encode/llama2-sentencepiece/wikitext2", encode, "tokenizers/llama2/tokenizer.model",
                               lowbit::SpmConvention::SentencePiece)->Unit(benchmark::kMillisecond);
  int n = int(rest.size());
  benchmark::Initialize(&n, rest.data());
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
