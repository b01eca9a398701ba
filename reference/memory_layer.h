// CPU reference of the whole memory layer (kernels/memory_layer/memory_layer.h), forward and
// backward: plain fp64 loops over tokens, no kernel of the suite. The selection comes from the
// fp64 product-key reference (reference/pk_topk.h) on the queries rounded to fp32 (what every
// backend stores); everything else (projection, the selected keys' scores, softmax, bag, gating,
// PEER, gate) is computed here in fp64 and rounded once to fp32. Host pointers.
#pragma once
#include <cstdint>
#include <vector>

#include "memory_layer/memory_layer.h"

namespace memlayers::reference {

// out, and every Saved field that is set.
void memory_layer_fwd(const memory_layer::FwdParams& p);

// The forward with the selection given, `indices` (batch, heads, k) host int64 rows of V, in the
// order the scores and weights are then written. The layer is a smooth function of x and every
// parameter for a fixed selection: the finite-difference checks differentiate this, reading the
// output unrounded from `out64` (batch·d_model doubles) when that is set; p.out may then be null.
void memory_layer_fwd_fixed(const memory_layer::FwdParams& p, const int64_t* indices,
                            std::vector<double>* out64 = nullptr);

// Every requested gradient of p.grads (dense ones written in full; compact rows ascending,
// duplicates summed). The selection is p.saved.indices; the other Saved fields are not read:
// every activation is recomputed in fp64 from x and the weights.
void memory_layer_bwd(const memory_layer::BwdParams& p);

}  // namespace memlayers::reference
