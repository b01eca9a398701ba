// CPU reference of the weighted EmbeddingBag: obvious loops, fp64 accumulation, host pointers.
// The ground truth every variant is compared with; it trusts validate() to have passed, but still
// refuses an out-of-range index rather than read outside the table.
#pragma once
#include "embbag/embbag.h"

namespace memlayers::reference {

// y[b,:] = Σ_j w[b,j] · V[idx[b,j], :], summed in fp64, rounded once to out_dtype.
void embbag_fwd(const embbag::FwdParams& p);

// dV (dense and/or compact, as requested) and dw, each summed in fp64 and rounded once to fp32.
// Duplicate rows are summed in (bag, slot) order.
void embbag_bwd(const embbag::BwdParams& p);

}  // namespace memlayers::reference
