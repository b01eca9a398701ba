// The reference backend's forwards with their outputs unrounded (fp64), for finite-difference
// checks: the loss of a perturbed input is then exact up to the fp64 sums. The params are those of
// harness/ops.h; their fp32 output pointers are not written (embedding_fwd64 with `accumulate`
// reads p.out as the values the rows are added to). Host pointers. The same functions, rounded to
// fp32, are the `reference` entries of ops_for().
#pragma once
#include <vector>

#include "harness/ops.h"

namespace memlayers::harness::reference {

std::vector<double> embedding_fwd64(const EmbeddingFwd& p);
// y; the inverse RMS per row into `inv_rms` when set.
std::vector<double> rmsnorm_fwd64(const RmsNormFwd& p, std::vector<double>* inv_rms = nullptr);
std::vector<double> linear_fwd64(const LinearFwd& p);
// out (rows, d); the log-sum-exp per (sequence, head, position) into `lse` when set.
std::vector<double> attention_fwd64(const AttentionFwd& p, std::vector<double>* lse = nullptr);
std::vector<double> swiglu_fwd64(const SwigluFwd& p);
double cross_entropy_fwd64(const CrossEntropyFwd& p);

}  // namespace memlayers::harness::reference
