// harness::Ops: the checks every backend shares and the table of each backend (harness/ops.h).
#include "harness/ops.h"

#include <cmath>
#include <string>
#include <string_view>

#include "common/error.h"
#include "harness/cuda/tables.h"
#include "harness/ops_internal.h"

namespace memlayers::harness {

namespace {

void not_null(const void* p, std::string_view op, std::string_view name) {
  MEMLAYERS_CHECK(p != nullptr, "{}: {} is null", op, name);
}

void at_least_one(int64_t v, std::string_view op, std::string_view name) {
  MEMLAYERS_CHECK(v >= 1, "{}: {} is {}: accepted are {} ≥ 1", op, name, v, name);
}

void stride_covers(int64_t ld, int64_t width, std::string_view op, std::string_view ld_name,
                   std::string_view width_name) {
  MEMLAYERS_CHECK(ld >= width, "{}: {} {} is narrower than {} {}: accepted are {} ≥ {}", op,
                  ld_name, ld, width_name, width, ld_name, width_name);
}

void attention_shape(std::string_view op, int64_t batch, int64_t seq, int64_t heads, int64_t d,
                     int64_t ld_qkv) {
  at_least_one(batch, op, "batch");
  at_least_one(seq, op, "seq");
  at_least_one(heads, op, "heads");
  at_least_one(d, op, "d");
  MEMLAYERS_CHECK(d % heads == 0,
                  "{}: d {} is not divisible by heads {}: accepted are d = heads·head_dim", op, d,
                  heads);
  stride_covers(ld_qkv, d, op, "ld_qkv", "d");
}

template <class P>
Op<P> checked(Op<P> raw) {
  return [raw = std::move(raw)](const P& p) {
    validate(p);
    raw(p);
  };
}

Ops with_checks(Ops t) {
  t.embedding_fwd = checked(std::move(t.embedding_fwd));
  t.embedding_bwd = checked(std::move(t.embedding_bwd));
  t.rmsnorm_fwd = checked(std::move(t.rmsnorm_fwd));
  t.rmsnorm_bwd = checked(std::move(t.rmsnorm_bwd));
  t.linear_fwd = checked(std::move(t.linear_fwd));
  t.linear_bwd = checked(std::move(t.linear_bwd));
  t.attention_fwd = checked(std::move(t.attention_fwd));
  t.attention_bwd = checked(std::move(t.attention_bwd));
  t.swiglu_fwd = checked(std::move(t.swiglu_fwd));
  t.swiglu_bwd = checked(std::move(t.swiglu_bwd));
  t.add = checked(std::move(t.add));
  t.cross_entropy_fwd = checked(std::move(t.cross_entropy_fwd));
  t.cross_entropy_bwd = checked(std::move(t.cross_entropy_bwd));
  return t;
}

}  // namespace

// ---- validation ----

void validate(const EmbeddingFwd& p) {
  constexpr std::string_view op = "embedding_fwd";
  not_null(p.ids, op, "ids"), not_null(p.table, op, "table"), not_null(p.out, op, "out");
  at_least_one(p.rows, op, "rows"), at_least_one(p.num_rows, op, "num_rows");
  at_least_one(p.dim, op, "dim");
}

void validate(const EmbeddingBwd& p) {
  constexpr std::string_view op = "embedding_bwd";
  not_null(p.ids, op, "ids"), not_null(p.dout, op, "dout"), not_null(p.dtable, op, "dtable");
  at_least_one(p.rows, op, "rows"), at_least_one(p.num_rows, op, "num_rows");
  at_least_one(p.dim, op, "dim");
}

void validate(const RmsNormFwd& p) {
  constexpr std::string_view op = "rmsnorm_fwd";
  not_null(p.x, op, "x"), not_null(p.scale, op, "scale"), not_null(p.y, op, "y");
  at_least_one(p.rows, op, "rows"), at_least_one(p.dim, op, "dim");
}

void validate(const RmsNormBwd& p) {
  constexpr std::string_view op = "rmsnorm_bwd";
  not_null(p.x, op, "x"), not_null(p.scale, op, "scale"), not_null(p.inv_rms, op, "inv_rms");
  not_null(p.dy, op, "dy"), not_null(p.dx, op, "dx"), not_null(p.dscale, op, "dscale");
  at_least_one(p.rows, op, "rows"), at_least_one(p.dim, op, "dim");
}

void validate(const LinearFwd& p) {
  constexpr std::string_view op = "linear_fwd";
  not_null(p.x, op, "x"), not_null(p.w, op, "w"), not_null(p.y, op, "y");
  at_least_one(p.rows, op, "rows"), at_least_one(p.in, op, "in"), at_least_one(p.out, op, "out");
}

void validate(const LinearBwd& p) {
  constexpr std::string_view op = "linear_bwd";
  not_null(p.x, op, "x"), not_null(p.w, op, "w"), not_null(p.dy, op, "dy");
  MEMLAYERS_CHECK(p.dx || p.dw || p.db, "{}: dx, dw and db are all null: nothing to compute", op);
  at_least_one(p.rows, op, "rows"), at_least_one(p.in, op, "in"), at_least_one(p.out, op, "out");
}

void validate(const AttentionFwd& p) {
  constexpr std::string_view op = "attention_fwd";
  not_null(p.q, op, "q"), not_null(p.k, op, "k"), not_null(p.v, op, "v");
  not_null(p.out, op, "out");
  attention_shape(op, p.batch, p.seq, p.heads, p.d, p.ld_qkv);
}

void validate(const AttentionBwd& p) {
  constexpr std::string_view op = "attention_bwd";
  not_null(p.q, op, "q"), not_null(p.k, op, "k"), not_null(p.v, op, "v");
  not_null(p.out, op, "out"), not_null(p.lse, op, "lse"), not_null(p.dout, op, "dout");
  not_null(p.dq, op, "dq"), not_null(p.dk, op, "dk"), not_null(p.dv, op, "dv");
  attention_shape(op, p.batch, p.seq, p.heads, p.d, p.ld_qkv);
}

void validate(const SwigluFwd& p) {
  constexpr std::string_view op = "swiglu_fwd";
  not_null(p.a, op, "a"), not_null(p.b, op, "b"), not_null(p.out, op, "out");
  at_least_one(p.rows, op, "rows"), at_least_one(p.hidden, op, "hidden");
  stride_covers(p.ld_ab, p.hidden, op, "ld_ab", "hidden");
}

void validate(const SwigluBwd& p) {
  constexpr std::string_view op = "swiglu_bwd";
  not_null(p.a, op, "a"), not_null(p.b, op, "b"), not_null(p.dout, op, "dout");
  not_null(p.da, op, "da"), not_null(p.db, op, "db");
  at_least_one(p.rows, op, "rows"), at_least_one(p.hidden, op, "hidden");
  stride_covers(p.ld_ab, p.hidden, op, "ld_ab", "hidden");
}

void validate(const Add& p) {
  constexpr std::string_view op = "add";
  not_null(p.x, op, "x"), not_null(p.y, op, "y"), not_null(p.out, op, "out");
  at_least_one(p.n, op, "n");
}

void validate(const CrossEntropyFwd& p) {
  constexpr std::string_view op = "cross_entropy_fwd";
  not_null(p.logits, op, "logits"), not_null(p.targets, op, "targets");
  not_null(p.loss, op, "loss");
  at_least_one(p.rows, op, "rows"), at_least_one(p.vocab, op, "vocab");
}

void validate(const CrossEntropyBwd& p) {
  constexpr std::string_view op = "cross_entropy_bwd";
  not_null(p.logits, op, "logits"), not_null(p.targets, op, "targets");
  not_null(p.dlogits, op, "dlogits");
  at_least_one(p.rows, op, "rows"), at_least_one(p.vocab, op, "vocab");
  MEMLAYERS_CHECK(std::isfinite(p.dloss), "{}: dloss {} is not finite", op, p.dloss);
}

// ---- checks of index values (host backends) ----

namespace detail {

void check_ids(const int32_t* ids, int64_t rows, int64_t num_rows, const char* what) {
  for (int64_t r = 0; r < rows; ++r)
    MEMLAYERS_CHECK(ids[r] >= 0 && ids[r] < num_rows, "{} {} out of range [0, {}) at row {}", what,
                    ids[r], num_rows, r);
}

double check_targets(const int32_t* targets, const float* weights, int64_t rows, int64_t vocab) {
  double total = 0;
  for (int64_t r = 0; r < rows; ++r) {
    const float w = weights ? weights[r] : 1.0f;
    MEMLAYERS_CHECK(std::isfinite(w) && w >= 0,
                    "cross-entropy weight {} at row {}: accepted are finite weights ≥ 0", w, r);
    if (w == 0) continue;  // padding: any target
    MEMLAYERS_CHECK(targets[r] >= 0 && targets[r] < vocab,
                    "target {} out of range [0, {}) at row {} (weight {})", targets[r], vocab, r,
                    w);
    total += w;
  }
  MEMLAYERS_CHECK(total > 0,
                  "cross-entropy: the weights of all {} rows are 0: accepted is at least one "
                  "counted position",
                  rows);
  return total;
}

}  // namespace detail

// ---- the tables ----

const Ops& ops_for(Backend b) {
  static const Ops reference = with_checks(detail::reference_ops());
  static const Ops cpu = with_checks(detail::cpu_ops());
  switch (b) {
    case Backend::reference:
      return reference;
    case Backend::cpu:
      return cpu;
    case Backend::simt: {
      static const Ops simt = with_checks(detail::simt_ops());
      return simt;
    }
    case Backend::cuda: {
#if defined(MEMLAYERS_HAVE_CUDA)
      const std::string why = usable(Backend::cuda);
      MEMLAYERS_CHECK(why.empty(), "harness ops: backend cuda is not usable here: {}", why);
      static const Ops cuda = with_checks(detail::cuda_ops());
      return cuda;
#else
      break;
#endif
    }
  }
  fail(
      "harness ops: backend {} is not built (no nvcc when configured): built are reference, cpu, "
      "simt",
      to_string(b));
}

}  // namespace memlayers::harness
