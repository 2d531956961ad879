// Shared by the benchmark files: the task constructors vlm_task.cpp lists, and small helpers.
#pragma once

#include "core/error.h"
#include "eval/vlm/vlm_task.h"

#include <string>
#include <vector>

namespace lowbit::vlm {

VlmTask ai2d_task();
VlmTask chartqa_task();
VlmTask docvqa_task();
VlmTask mmbench_en_task();
VlmTask mme_task();

// int(doc["answer"]) for an integer or a decimal string (checked by check_vlm_doc).
int64_t index_value(const Json& v);
// sum(values) / len(values) over the records that have `key` (Python's left-to-right sum), or
// null when none has it (lmms-eval reports nothing for such a metric).
Json mean_of(const std::vector<Json>& records, const char* key);

}  // namespace lowbit::vlm
