// Validation, activation sizes, and the declared bytes and flops of the memory layer (DESIGN.md
// §5), plus the registration of the fp64 reference as variants of backend `reference`.
#include "memory_layer/memory_layer.h"

#include <algorithm>
#include <cstdint>
#include <limits>

#include "common/validate.h"
#include "embbag/embbag.h"
#include "pk_topk/pk_topk.h"
#include "reference/memory_layer.h"

namespace memlayers::memory_layer {

std::string to_string(Kind k) {
  switch (k) {
    case Kind::memory:
      return "memory";
    case Kind::memory_plus:
      return "memory_plus";
    case Kind::peer:
      return "peer";
  }
  return "?";
}

std::optional<Kind> parse_kind(std::string_view s) {
  for (Kind k : {Kind::memory, Kind::memory_plus, Kind::peer})
    if (s == to_string(k)) return k;
  return std::nullopt;
}

namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

// With a bag override (memory_layer.h, BagOverride) the value table may be null: the override
// reads its own.
std::string check_weights(const Config& c, const Weights& w, bool bag_override) {
  std::string e;
  const std::size_t sv = dtype_size(c.values_dtype);
  auto need = [&](const char* name, const void* p, std::size_t align, const char* what) {
    if (e.empty()) e = check_pointer(name, p, align, true, what);
  };
  need("weights.wq", w.wq, 4, "the (d_model, heads·k_dim) fp32 query projection");
  need("weights.bq", w.bq, 4, "the (heads·k_dim) fp32 query bias");
  need("weights.keys1", w.keys1, 4, "the (heads, n_keys, k_dim/2) fp32 sub-keys");
  need("weights.keys2", w.keys2, 4, "the (heads, n_keys, k_dim/2) fp32 sub-keys");
  if (!bag_override || w.values)
    need("weights.values", w.values, sv, "the (n_keys², value_width) value table");
  if (c.kind == Kind::peer)
    need("weights.down", w.down, sv, "peer's (n_keys², d_model) down experts");
  if (c.kind == Kind::memory_plus) {
    need("weights.w1", w.w1, 4, "memory+'s (d_model, value_dim) fp32 gate projection");
    need("weights.b1", w.b1, 4, "memory+'s (value_dim) fp32 bias");
    need("weights.w2", w.w2, 4, "memory+'s (value_dim, d_model) fp32 output projection");
    need("weights.b2", w.b2, 4, "memory+'s (d_model) fp32 bias");
  }
  if (c.scalar_gate) need("weights.wg", w.wg, 4, "the scalar gate's (d_model) fp32 weights");
  return e;
}

// Optional outputs: null is fine, a set pointer must be aligned.
std::string check_optional(std::initializer_list<std::pair<const char*, const void*>> fields,
                           std::size_t align, const char* what) {
  for (const auto& [name, p] : fields)
    if (std::string e = check_pointer(name, p, align, false, what); !e.empty()) return e;
  return {};
}

std::string check_saved_alignment(const Saved& s) {
  std::string e = check_optional({{"saved.q", s.q},
                                  {"saved.scores", s.scores},
                                  {"saved.weights", s.weights},
                                  {"saved.y", s.y},
                                  {"saved.hidden", s.hidden},
                                  {"saved.peer_pre", s.peer_pre},
                                  {"saved.gate", s.gate}},
                                 4, "fp32");
  if (e.empty()) e = check_optional({{"saved.indices", s.indices}}, 8, "int64");
  return e;
}

std::string check_batch(const Config& c, int64_t batch) {
  if (batch < 1) return fmt::format("batch = {}: accepted batch >= 1", batch);
  const int64_t widest = std::max({c.d_model, c.heads * c.k_dim, c.heads * c.k, c.value_width()});
  if (batch > kMax / widest)
    return fmt::format("batch = {} overflows 64-bit offsets with rows of {} elements", batch,
                       widest);
  return {};
}

// A compact gradient is the trio (rows, compact, count), all set or none.
std::string check_compact(const char* name, const int64_t* rows, const float* compact,
                          const int64_t* count) {
  const int set = (rows != nullptr) + (compact != nullptr) + (count != nullptr);
  if (set == 0 || set == 3) return {};
  return fmt::format(
      "the compact {} gradient needs its rows, compact and count pointers together; got rows {}, "
      "compact {}, count {}",
      name, rows ? "set" : "null", compact ? "set" : "null", count ? "set" : "null");
}

}  // namespace

std::string validate(const Config& c) {
  if (c.kind != Kind::memory && c.kind != Kind::memory_plus && c.kind != Kind::peer)
    return fmt::format("kind = {}: accepted memory, memory_plus, peer", static_cast<int>(c.kind));
  if (c.d_model < 1) return fmt::format("d_model = {}: accepted d_model >= 1", c.d_model);
  if (c.heads < 1) return fmt::format("heads = {}: accepted heads >= 1", c.heads);
  if (c.n_keys < 1 || c.n_keys > pk_topk::kMaxNKeys)
    return fmt::format("n_keys = {}: accepted 1 <= n_keys <= {}", c.n_keys, pk_topk::kMaxNKeys);
  if (c.k_dim < 2 || c.k_dim > pk_topk::kMaxKDim || c.k_dim % 2 != 0)
    return fmt::format("k_dim = {}: accepted even k_dim (two halves) with 2 <= k_dim <= {}",
                       c.k_dim, pk_topk::kMaxKDim);
  if (c.k < 1 || c.k > std::min(c.n_keys, pk_topk::kMaxK))
    return fmt::format("k = {}: accepted 1 <= k <= min(n_keys = {}, {})", c.k, c.n_keys,
                       pk_topk::kMaxK);
  if (c.kind == Kind::memory && c.value_dim != c.d_model)
    return fmt::format(
        "value_dim = {} with kind memory: the output is the bag itself, so value_dim must equal "
        "d_model = {} (memory_plus accepts any value_dim)",
        c.value_dim, c.d_model);
  if (c.kind == Kind::memory_plus && c.value_dim < 1)
    return fmt::format("value_dim = {}: accepted value_dim >= 1", c.value_dim);
  if (std::string e = check_dtype("values_dtype", c.values_dtype, {DType::f32, DType::bf16});
      !e.empty())
    return e;
  // Every flat offset into V (and U), the keys and the projections must fit in 64 bits.
  if (c.heads > kMax / c.n_keys / c.k_dim || c.d_model > kMax / (c.heads * c.k_dim))
    return fmt::format(
        "heads = {} with n_keys = {}, k_dim = {}, d_model = {} overflows 64-bit "
        "offsets",
        c.heads, c.n_keys, c.k_dim, c.d_model);
  if (c.num_values() > kMax / c.value_width() || c.d_model > kMax / c.value_width())
    return fmt::format("n_keys² = {} rows of {} overflow 64-bit offsets", c.num_values(),
                       c.value_width());
  return {};
}

std::string check_override(const Config& c, const BagOverride* bag) {
  if (bag && c.kind == Kind::peer)
    return "a bag override (BagOverride) is set with kind = peer: accepted for memory and "
           "memory_plus only (peer reads two tables)";
  return {};
}

std::string validate(const FwdParams& p) {
  std::string e;
  if (!(e = validate(p.config)).empty()) return e;
  if (!(e = check_override(p.config, p.bag)).empty()) return e;
  if (!(e = check_batch(p.config, p.batch)).empty()) return e;
  if (!(e = check_pointer("x", p.x, 4, true, "the (batch, d_model) fp32 input")).empty()) return e;
  if (!(e = check_pointer("out", p.out, 4, true, "the (batch, d_model) fp32 output")).empty())
    return e;
  if (!(e = check_weights(p.config, p.weights, p.bag != nullptr)).empty()) return e;
  return check_saved_alignment(p.saved);
}

std::string validate(const BwdParams& p) {
  std::string e;
  const Config& c = p.config;
  if (!(e = validate(c)).empty()) return e;
  if (!(e = check_batch(c, p.batch)).empty()) return e;
  if (!(e = check_pointer("x", p.x, 4, true, "the (batch, d_model) fp32 input")).empty()) return e;
  if (!(e = check_pointer("grad_out", p.grad_out, 4, true, "the (batch, d_model) fp32 dout"))
           .empty())
    return e;
  if (!(e = check_override(c, p.bag)).empty()) return e;
  if (!(e = check_weights(c, p.weights, p.bag != nullptr)).empty()) return e;
  if (!(e = check_saved_alignment(p.saved)).empty()) return e;

  // What the forward must have kept (memory_layer.h, Saved).
  const Saved& s = p.saved;
  auto need = [&](const char* name, const void* ptr, const char* why) {
    if (e.empty() && !ptr)
      e = fmt::format("saved.{} is null: the backward of kind {}{} needs {}", name,
                      to_string(c.kind), c.scalar_gate ? " with scalar_gate" : "", why);
  };
  need("q", s.q, "the forward's projected queries");
  need("indices", s.indices, "the forward's selection");
  need("weights", s.weights, "the forward's softmax weights");
  if (c.kind == Kind::memory_plus) {
    need("y", s.y, "the bag sum");
    need("hidden", s.hidden, "x·W1 + b1");
  } else if (c.scalar_gate) {
    need("y", s.y, "the output before the gate");
  }
  if (c.kind == Kind::peer) need("peer_pre", s.peer_pre, "U[I]·x before the gelu");
  if (c.scalar_gate) need("gate", s.gate, "x·wg before the sigmoid");
  if (!e.empty()) return e;

  const Grads& g = p.grads;
  if (!(e = check_optional({{"grads.x", g.x},
                            {"grads.wq", g.wq},
                            {"grads.bq", g.bq},
                            {"grads.keys1", g.keys1},
                            {"grads.keys2", g.keys2},
                            {"grads.values_dense", g.values_dense},
                            {"grads.values_compact", g.values_compact},
                            {"grads.down_dense", g.down_dense},
                            {"grads.down_compact", g.down_compact},
                            {"grads.w1", g.w1},
                            {"grads.b1", g.b1},
                            {"grads.w2", g.w2},
                            {"grads.b2", g.b2},
                            {"grads.wg", g.wg}},
                           4, "fp32"))
           .empty())
    return e;
  if (!(e = check_optional({{"grads.value_rows", g.value_rows},
                            {"grads.num_value_rows", g.num_value_rows},
                            {"grads.down_rows", g.down_rows},
                            {"grads.num_down_rows", g.num_down_rows}},
                           8, "int64"))
           .empty())
    return e;
  if (!(e = check_compact("values", g.value_rows, g.values_compact, g.num_value_rows)).empty())
    return e;
  if (!(e = check_compact("down", g.down_rows, g.down_compact, g.num_down_rows)).empty()) return e;
  // A gradient of a parameter the kind does not have is a caller's mistake, not a no-op.
  if (c.kind != Kind::peer && (g.down_dense || g.down_rows))
    return fmt::format("grads.down_* is set but kind = {}: only peer has down experts",
                       to_string(c.kind));
  if (c.kind != Kind::memory_plus && (g.w1 || g.b1 || g.w2 || g.b2))
    return fmt::format("grads.w1/b1/w2/b2 is set but kind = {}: only memory_plus has them",
                       to_string(c.kind));
  if (!c.scalar_gate && g.wg) return "grads.wg is set but scalar_gate is off";
  if (!g.x && !g.wq && !g.bq && !g.keys1 && !g.keys2 && !g.values_dense && !g.value_rows &&
      !g.down_dense && !g.down_rows && !g.w1 && !g.b1 && !g.w2 && !g.b2 && !g.wg)
    return "no gradient requested: set at least one pointer of grads";
  if (g.values_dense && c.num_values() > kMax / 4 / c.value_width())
    return fmt::format("grads.values_dense of {} x {} fp32 overflows 64-bit byte offsets",
                       c.num_values(), c.value_width());
  return {};
}

int64_t activation_floats(const Config& c, int64_t batch) {
  const int64_t hk = c.heads * c.k;
  int64_t n = batch * c.heads * c.k_dim  // q
              + batch * hk * 4;          // scores, indices (two floats each), weights
  if (c.kind == Kind::memory_plus)
    n += 2 * batch * c.value_dim;  // y (the bag sum), hidden
  else
    n += batch * c.d_model;  // y (before the gate)
  if (c.kind == Kind::peer) n += batch * hk;
  if (c.scalar_gate) n += batch;
  return n;
}

int64_t compact_capacity(const Config& c, int64_t batch) { return batch * c.heads * c.k; }

// ---- declared bytes and flops (DESIGN.md §5) ----

namespace {

// fp32 parameters of the layer (not the value table): each read once per call.
double parameter_floats(const Config& c) {
  const double d = double(c.d_model), h = double(c.heads), n = double(c.k_dim),
               nk = double(c.n_keys), v = double(c.value_dim);
  double f = d * h * n + h * n + 2 * h * nk * (n / 2);
  if (c.kind == Kind::memory_plus) f += d * v + v + v * d + d;
  if (c.scalar_gate) f += d;
  return f;
}

double gathered_row_bytes(const Config& c, int64_t batch) {
  const double rows = double(batch) * double(c.heads) * double(c.k);
  return rows * double(c.value_width()) * double(dtype_size(c.values_dtype)) *
         (c.kind == Kind::peer ? 2 : 1);
}

double gemm_flops(const Config& c, int64_t batch) {
  const double B = double(batch), d = double(c.d_model);
  double f = 2 * B * d * double(c.heads) * double(c.k_dim);
  if (c.kind == Kind::memory_plus) f += 4 * B * d * double(c.value_dim);
  return f;
}

double bag_flops(const Config& c, int64_t batch) {
  return 2.0 * double(batch) * double(c.heads) * double(c.k) * double(c.value_width()) *
         (c.kind == Kind::peer ? 2 : 1);
}

}  // namespace

double Fwd::bytes_moved(const Params& p) {
  const Config& c = p.config;
  return parameter_floats(c) * 4 + 2.0 * double(p.batch) * double(c.d_model) * 4 +
         gathered_row_bytes(c, p.batch);
}

double Fwd::flops(const Params& p) {
  const Config& c = p.config;
  return gemm_flops(c, p.batch) +
         2.0 * double(p.batch) * double(c.heads) * double(c.n_keys) * double(c.k_dim) +
         bag_flops(c, p.batch);
}

double Bwd::bytes_moved(const Params& p) {
  const Config& c = p.config;
  const Grads& g = p.grads;
  const double B = double(p.batch), d = double(c.d_model), h = double(c.heads), n = double(c.k_dim),
               nk = double(c.n_keys), v = double(c.value_dim), width = double(c.value_width());
  double bytes = parameter_floats(c) * 4 + 2 * B * d * 4 + gathered_row_bytes(c, p.batch);
  if (g.x) bytes += B * d * 4;
  if (g.wq) bytes += d * h * n * 4;
  if (g.bq) bytes += h * n * 4;
  if (g.keys1) bytes += h * nk * (n / 2) * 4;
  if (g.keys2) bytes += h * nk * (n / 2) * 4;
  if (g.w1) bytes += d * v * 4;
  if (g.b1) bytes += v * 4;
  if (g.w2) bytes += v * d * 4;
  if (g.b2) bytes += d * 4;
  if (g.wg) bytes += d * 4;
  const double unique = embbag::expected_unique_rows(compact_capacity(c, p.batch), c.num_values());
  for (auto [dense, compact] : {std::pair{g.values_dense, g.value_rows != nullptr},
                                std::pair{g.down_dense, g.down_rows != nullptr}}) {
    if (dense) bytes += double(c.num_values()) * width * 4;
    if (compact) bytes += unique * (width * 4 + 8);
  }
  return bytes;
}

double Bwd::flops(const Params& p) {
  const Config& c = p.config;
  return 2 * gemm_flops(c, p.batch) +
         4.0 * double(p.batch) * double(c.heads) * double(c.k) * double(c.k_dim) +
         2 * bag_flops(c, p.batch);
}

// ---- the reference as a variant ----
namespace {
std::string refuse_override(const BagOverride* bag) {
  return bag ? "the fp64 reference reads the whole value table: no bag override (BagOverride); "
               "the cpu, cuda and simt compositions accept one"
             : "";
}

MEMLAYERS_REGISTER(Fwd,
                   Variant<FwdParams>{
                       .name = "reference",
                       .backend = Backend::reference,
                       .launch = [](const FwdParams& p, Stream) { reference::memory_layer_fwd(p); },
                       .supports = [](const FwdParams& p) { return refuse_override(p.bag); },
                       .summary = "fp64 loops end to end (projection, search, softmax, bag, "
                                  "gating): the truth",
                       .deterministic = true,
                   });
MEMLAYERS_REGISTER(Bwd,
                   Variant<BwdParams>{
                       .name = "reference",
                       .backend = Backend::reference,
                       .launch = [](const BwdParams& p, Stream) { reference::memory_layer_bwd(p); },
                       .supports = [](const BwdParams& p) { return refuse_override(p.bag); },
                       .summary = "fp64 backward from the forward's selection, everything "
                                  "else recomputed: the truth",
                       .deterministic = true,
                   });
}  // namespace

}  // namespace memlayers::memory_layer
