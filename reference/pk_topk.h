// CPU reference of the product-key top-k search and its backward: obvious loops, fp64 arithmetic
// on the inputs as stored (bf16 widened exactly), host pointers. Refuses non-finite queries.
#pragma once
#include "pk_topk/pk_topk.h"

namespace memlayers::reference {

// The product-key way (DESIGN.md §1 steps 2–4): per-half fp64 scores, per-half top-k, all k×k
// candidate pairs, final top-k; scores rounded once to fp32.
void pk_topk_fwd(const pk_topk::FwdParams& p);

// The definition the product-key way must equal: the top-k over all N = n_keys² full keys
// [K1[m / n_keys], K2[m % n_keys]], each score one k_dim-wide fp64 dot product. O(B·h·N·n).
void pk_topk_brute_force(const pk_topk::FwdParams& p);

// The fp64 score of full key m for token b, head h (what the tests check returned indices with).
double pk_topk_score(const pk_topk::FwdParams& p, int64_t b, int64_t h, int64_t m);

// dq and the key gradients (dense and/or compact), summed in fp64 and rounded once to fp32.
void pk_topk_bwd(const pk_topk::BwdParams& p);

}  // namespace memlayers::reference
