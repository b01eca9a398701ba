// What the cpu composition (v1_compose.cpp) ran, for benchmarks and reports to print beside
// their figures: the search and bag variants are looked up in the registry at launch time.
#pragma once
#include <string>

namespace memlayers::memory_layer::cpu {

// "search pk_topk_fwd cpu/v2_fused_pruned; search backward pk_topk_bwd reference/reference
// (no cpu variant registered); bag embbag_fwd cpu/v2_hwy_threads; ..." for the most recent
// launch of the forward and of the backward ("not run yet" before the first).
std::string v1_compose_parts();

}  // namespace memlayers::memory_layer::cpu
