// The weighted EmbeddingBag with its value table split along the embedding dimension across a
// memory-parallel group (issue 8), as in the reference implementation's memory parallelism:
//
//   rank r holds columns [begin(r), end(r)) of every row of V: a (num_rows, width(r)) table;
//   forward   each rank's tokens (its `batch` bags) are its own; indices and weights are
//             all-gathered over the group (B_total = Σ batch bags, in rank order); each rank sums
//             its column slice for all B_total bags; an all-to-all returns to every rank the
//             (batch, dim) outputs of its own tokens;
//   backward  dy returns through the matching all-to-all (each rank gets its columns of all
//             B_total rows of dy); dV stays local to its shard (touched rows of all B_total bags,
//             the shard's columns); the dw partial sums (B_total, k) are reduce-scattered, so each
//             rank gets the dw of its own bags, summed over the shards in rank order.
//
// Bytes sent per token, declared like an op's bytes (comm_bytes_per_token). Rank r owns b_r
// tokens; B_total = Σ b_r; "sent" counts what a rank hands to the collectives for OTHER ranks
// (its own block is a local copy), which is what the benchmark counts:
//   forward   all-gather of the bags: rank r sends b_r·k·(s_idx + 4) to each of P−1 ranks;
//             all-to-all of outputs: rank r sends its width(r) columns of every other rank's
//             tokens, (B_total − b_r)·width(r)·4;
//   backward  the all-gather of the bags again (no state is kept between calls); the all-to-all
//             of dy: rank r sends every other rank s its tokens' width(s) columns,
//             b_r·(dim − width(r))·4; the reduce-scatter of dw partials: rank r sends the
//             (b_s, k) block of every other rank s, (B_total − b_r)·k·4.
// Summed over the group and divided by B_total, with every rank owning the same number of
// tokens, that is exactly, per token:
//   all-gather k·(s_idx + 4)·(P−1), all-to-all dim·4·(P−1)/P, reduce-scatter k·4·(P−1).
// The all-gather and reduce-scatter terms are exact for any batches; the all-to-all terms are
// exact when the batches are equal or the widths are (dim % P == 0), averages otherwise. Besides
// these, each call exchanges a small control header (P·kHeaderValues fp64 per rank through
// all_reduce_sum_host: every rank's batch, the shape and an error flag), whatever the batch.
//
// The local work runs the registered EmbeddingBag variants of the backend (embbag.h); the
// kernels see a (num_rows, width) table and bag counts of B_total. With deterministic variants
// whose arithmetic per column does not depend on the column's place in a row (simt, reference;
// cpu on AVX-512, which masks a row's tail) y and dV are bitwise those of one process; a SIMD
// target with a scalar tail (AVX2) rounds a row's last columns differently (within 1e-6), and a
// shard moves columns into the tail. dw's shard sums change the order of the dot product's
// additions (fp tolerance).
#pragma once
#include <cstdint>
#include <memory>
#include <string>

#include "common/backend.h"
#include "dist/comm.h"
#include "embbag/embbag.h"

namespace memlayers::dist {

// The column split of `dim` over `ranks`: the first dim % ranks ranks get one column more.
struct ColumnSplit {
  int64_t dim = 0;
  int ranks = 1;
  int64_t begin(int r) const;
  int64_t end(int r) const;
  int64_t width(int r) const { return end(r) - begin(r); }
};

struct CommBytes {
  double fwd_all_gather = 0, fwd_all_to_all = 0;
  double bwd_all_gather = 0, bwd_all_to_all = 0, bwd_reduce_scatter = 0;
  double fwd() const { return fwd_all_gather + fwd_all_to_all; }
  double bwd() const { return bwd_all_gather + bwd_all_to_all + bwd_reduce_scatter; }
};
// Bytes sent per token for a group of `ranks`, each collective's count (the formulas above);
// all zero for one rank.
CommBytes comm_bytes_per_token(int64_t dim, int64_t k, DType index_dtype, int ranks);

class ShardedEmbBag {
 public:
  // The control header of every call: per rank, fp64 values all-reduced over the group
  // (P·kHeaderValues·8 bytes through all_reduce_sum_host), separate from the data's bytes above.
  static constexpr int kHeaderValues = 8;

  // `comm` serves `backend`'s memory (mpi or single: reference, cpu, simt; nccl: cuda). The
  // variants: "" picks the highest-numbered deterministic one of the backend that supports the
  // problem (memory_layer/parts.h find_part), else the named one.
  ShardedEmbBag(Comm& comm, Backend backend, std::string fwd_variant = "",
                std::string bwd_variant = "");
  ~ShardedEmbBag();
  ShardedEmbBag(const ShardedEmbBag&) = delete;
  ShardedEmbBag& operator=(const ShardedEmbBag&) = delete;

  // p describes this rank's share: p.values its (num_rows, width(rank)) shard (values_stride
  // ≥ width; may be null when width(rank) is 0, i.e. dim < P), p.dim the FULL dim, p.batch its
  // own bags (≥ 0 and may differ across ranks; the group's total must be ≥ 1; with batch 0 the
  // indices, weights and out may be null), p.out its (batch, dim) outputs (out_stride ≥ dim),
  // fp32 only (a bf16 out is refused: the all-to-all carries the fp32 partial sums).
  // Collective. Every rank validates its own problem and the shard's first; the shape (dim, k,
  // num_rows, dtypes) must agree across ranks (check_agreement's error on every rank), and a
  // problem refused on any rank throws memlayers::Error with that rank's reason on every rank,
  // all before any data moves.
  void forward(const embbag::FwdParams& p);

  // As the forward's p, plus p.grad_out this rank's (batch, dim) dy; outputs:
  //   grad_weights      (batch, k) this rank's bags' dw (summed over shards)
  //   grad_values_dense (num_rows, width(rank)): the shard's dV
  //   unique_rows, grad_values_compact, num_unique: the shard's compact dV over all B_total
  //     bags, capacity total_batch()·k rows of width(rank) (the row ids are the same on every
  //     rank: those the whole group's bags touch; a width-0 shard lists them with no columns)
  // dw is computed when any rank asks for it (the reduce-scatter needs every rank's partial
  // sums); a rank may leave grad_weights null and still take part.
  // Collective. No state is kept between calls (the backward gathers the bags again, k·(s_idx
  // + 4) bytes per token), so one object serves several layers in any order.
  void backward(const embbag::BwdParams& p);

  // B_total of the last call (forward or backward): the bags of the whole group.
  int64_t total_batch() const;
  // "embbag_fwd <backend>/<variant>, embbag_bwd <backend>/<variant>" of the last calls.
  std::string variants() const;
  // The variant names alone ("v2_hwy_threads"); "" before the first call and on a rank whose
  // shard has no columns (dim < P).
  std::string fwd_variant() const;
  std::string bwd_variant() const;

 private:
  struct State;
  std::unique_ptr<State> s_;
};

}  // namespace memlayers::dist
