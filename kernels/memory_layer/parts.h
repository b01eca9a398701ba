// The parameters a memory-layer composition hands to its parts, written once for every backend:
// the search (pk_topk) and the bag (embbag) over one bag of heads·k rows per token, int64 indices
// and fp32 queries, weights and outputs. Host code; the pointers are the backend's memory.
#pragma once
#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "common/registry.h"

#include "embbag/embbag.h"
#include "memory_layer/memory_layer.h"
#include "pk_topk/pk_topk.h"

namespace memlayers::memory_layer::parts {

inline pk_topk::FwdParams search_fwd(const Config& c, const Weights& W, const float* q,
                                     float* scores, int64_t* idx, int64_t batch) {
  pk_topk::FwdParams sp;
  sp.queries = q, sp.keys1 = W.keys1, sp.keys2 = W.keys2, sp.scores = scores, sp.indices = idx;
  sp.batch = batch, sp.heads = c.heads, sp.n_keys = c.n_keys, sp.k_dim = c.k_dim, sp.k = c.k;
  sp.dtype = DType::f32, sp.index_dtype = DType::i64, sp.qk_norm = c.qk_norm;
  return sp;
}

// The search backward from d(scores) `ds`; the caller sets the gradient outputs.
inline pk_topk::BwdParams search_bwd(const Config& c, const Weights& W, const float* q,
                                     const int64_t* idx, const float* ds, int64_t batch) {
  pk_topk::BwdParams sp;
  sp.queries = q, sp.keys1 = W.keys1, sp.keys2 = W.keys2, sp.indices = idx, sp.grad_scores = ds;
  sp.batch = batch, sp.heads = c.heads, sp.n_keys = c.n_keys, sp.k_dim = c.k_dim, sp.k = c.k;
  sp.dtype = DType::f32, sp.index_dtype = DType::i64, sp.qk_norm = c.qk_norm;
  return sp;
}

// out = Σ_bag w · table[idx] over a (num_values, dim) table of values_dtype.
inline embbag::FwdParams bag_fwd(const Config& c, const void* table, int64_t dim,
                                 const int64_t* idx, const float* w, float* out, int64_t batch) {
  embbag::FwdParams e;
  e.values = table, e.indices = idx, e.weights = w, e.out = out;
  e.batch = batch, e.k = c.heads * c.k, e.dim = dim, e.num_rows = c.num_values();
  e.values_dtype = c.values_dtype, e.index_dtype = DType::i64, e.out_dtype = DType::f32;
  return e;
}

// The bag's backward from dy; the caller sets the outputs (dw, dense and/or compact dV).
inline embbag::BwdParams bag_bwd(const Config& c, const void* table, int64_t dim,
                                 const int64_t* idx, const float* w, const float* dy,
                                 int64_t batch) {
  embbag::BwdParams e;
  e.values = table, e.indices = idx, e.weights = w, e.grad_out = dy;
  e.batch = batch, e.k = c.heads * c.k, e.dim = dim, e.num_rows = c.num_values();
  e.values_dtype = c.values_dtype, e.index_dtype = DType::i64;
  return e;
}

// Whether a bag backward has anything to write.
inline bool any_output(const embbag::BwdParams& e) {
  return e.grad_weights || e.grad_values_dense || e.unique_rows;
}

// The variant of Op that runs p on `backend`: `preferred` (may be null) when it supports p, else
// the highest-numbered deterministic variant that does (the compositions promise bitwise-identical
// runs); null, with `why`, when none does.
template <class Op>
const Variant<typename Op::Params>* find_part(Backend backend, const typename Op::Params& p,
                                              const char* preferred, std::string& why) {
  std::vector<const Variant<typename Op::Params>*> mine = Registry<Op>::of(backend);
  std::stable_sort(mine.begin(), mine.end(), [&](const auto* a, const auto* b) {
    const bool pa = preferred && a->name == preferred, pb = preferred && b->name == preferred;
    return pa != pb ? pa : a->name > b->name;
  });
  std::string reasons;
  for (const auto* v : mine) {
    if (!v->deterministic) continue;
    const std::string r = v->supports(p);
    if (r.empty()) return v;
    reasons += (reasons.empty() ? "" : "; ") + v->name + ": " + r;
  }
  why = fmt::format("no deterministic {} variant on backend {} supports the problem ({})", Op::name,
                    to_string(backend), reasons.empty() ? "none registered" : reasons);
  return nullptr;
}

}  // namespace memlayers::memory_layer::parts
