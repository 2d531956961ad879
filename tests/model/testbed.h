// The trained testbed-44m checkpoint and transformers' perplexities for it
// (tests/fixtures/ppl/testbed-44m.json, written by scripts/make_model_fixtures.py --ppl-model).
#pragma once

#include "formats/checkpoint.h"
#include "formats/tokenizer.h"
#include "model/llama_model.h"
#include "test_util.h"

#include <nlohmann/json.hpp>

#include <memory>

namespace lowbit {

inline const nlohmann::json& reference() {
  static nlohmann::json j = nlohmann::json::parse(test::slurp(test::fixtures_dir() + "/ppl/testbed-44m.json"));
  return j;
}

struct Testbed {
  std::unique_ptr<LlamaModel> model;
  std::unique_ptr<Tokenizer> tok;
};

inline Testbed& testbed() {
  static Testbed t = [] {
    Testbed t;
    Checkpoint ck = open_checkpoint(test::models_dir() + "/testbed-44m");
    t.tok = load_tokenizer(ck.tokenizer_path);
    t.model = std::make_unique<LlamaModel>(std::move(ck));
    return t;
  }();
  return t;
}

}  // namespace lowbit
