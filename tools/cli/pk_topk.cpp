// `memlayers pk-topk`: one registered product-key top-k variant, forward or backward, run on .npy
// files — the way to try a variant on real queries and keys, or to check it against another
// framework's numbers.
//   memlayers pk-topk --queries q.npy --keys1 K1.npy --keys2 K2.npy --k K
//       --scores s.npy --indices i.npy [--qk-norm] [--backend reference|cpu|cuda|simt]
//       [--variant NAME] [--index int32|int64] [--dtype fp32|bf16]
//   memlayers pk-topk --backward --queries q.npy --keys1 K1.npy --keys2 K2.npy --k K
//       --indices i.npy --grad-scores ds.npy [--grad-queries dq.npy] [--grad-keys1 dK1.npy]
//       [--grad-keys2 dK2.npy] [--scores s.npy] ...
// q is (batch, heads, k_dim), K1 and K2 are (heads, n_keys, k_dim/2), all float32 files; --dtype
// bf16 narrows them to bf16 inside the op, as a bf16 model stores them. Scores and gradients are
// float32, indices int64 (or --index int32), each index i1·n_keys + i2.
// The backward reads the forward's indices from --indices when that file exists (shape (batch,
// heads, k), int32 or int64, checked to be in [0, n_keys²)); when it does not, the forward runs
// first (the backend's default forward variant) and writes --indices, and --scores if given.
// The key gradients are written dense, (heads, n_keys, k_dim/2) float32.
// Build and run:
//   cmake --build build --target memlayers && build/tools/cli/memlayers pk-topk --help
#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/backend.h"
#include "common/registry.h"
#include "npy/convert.h"
#include "npy/npy.h"
#include "pk_topk/pk_topk.h"
#include "run_helpers.h"
#include "subcommand.h"

namespace memlayers::cli::pk_topk_command {
namespace {

struct Options {
  std::string queries, keys1, keys2, scores, indices;
  std::int64_t k = 0;
  bool qk_norm = false;
  std::string backend = "cpu";
  std::string variant;
  std::string dtype = "fp32", index = "int64";
  bool backward = false;
  std::string grad_scores, grad_queries, grad_keys1, grad_keys2;
};

// ---- inputs ----

// q, K1 and K2 as the op stores them: the file's float32, or its bf16 rounding.
std::unique_ptr<Buffer> upload_data(const Memory& mem, const npy::Array& a, DType dtype) {
  if (dtype == DType::bf16) {
    const std::vector<std::uint16_t> narrow = npy::fp32_to_bf16(a.values<float>());
    return upload(mem, narrow.data(), narrow.size() * 2);
  }
  return upload(mem, a.bytes.data(), a.bytes.size());
}

// ---- the command ----

void run(const Options& o) {
  const Backend backend = *parse_backend(o.backend);  // CLI11 checked the spelling
  const DType dtype = *parse_dtype(o.dtype);
  const DType out_index = o.index == "int32" ? DType::i32 : DType::i64;

  const npy::Array q =
      npy::read(o.queries, {.name = "--queries", .dtypes = {DType::f32}, .rank = 3, .shape = {}});
  const std::int64_t batch = q.shape[0], heads = q.shape[1], k_dim = q.shape[2];
  if (k_dim % 2 != 0)
    fail("{}: k_dim = {} (the last dim of {}) is odd: the query splits into two halves of k_dim/2",
         label("--queries", o.queries), k_dim, q.shape_string());
  const npy::Array K1 =
      npy::read(o.keys1, {.name = "--keys1", .dtypes = {DType::f32}, .rank = 3, .shape = {}});
  const std::int64_t n_keys = K1.shape[1];
  const std::string keys_why =
      fmt::format("(heads, n_keys, k_dim/2), heads and k_dim from --queries {}", q.shape_string());
  require_shape(K1, "--keys1", o.keys1, {heads, n_keys, k_dim / 2}, keys_why);
  const npy::Array K2 =
      npy::read(o.keys2, {.name = "--keys2", .dtypes = {DType::f32}, .rank = 3, .shape = {}});
  require_shape(K2, "--keys2", o.keys2, {heads, n_keys, k_dim / 2},
                fmt::format("as --keys1 {}", K1.shape_string()));
  // The sizes and types that FwdParams and BwdParams share; `index_dtype` is the indices' own.
  const auto set_shape = [&](auto& p, DType index_dtype) {
    p.batch = batch;
    p.heads = heads;
    p.n_keys = n_keys;
    p.k_dim = k_dim;
    p.k = o.k;
    p.dtype = dtype;
    p.index_dtype = index_dtype;
  };
  {
    // The op's shape rules (k against n_keys, sizes, int32 indices) before anything is sized by
    // them; stand-in pointers pass the pointer checks, which the real run repeats.
    alignas(64) static unsigned char stand_in[64];
    pk_topk::FwdParams probe;
    probe.queries = probe.keys1 = probe.keys2 = probe.indices = stand_in;
    probe.scores = reinterpret_cast<float*>(stand_in);
    set_shape(probe, out_index);
    if (std::string why = pk_topk::validate(probe); !why.empty())
      fail("{}: {}", pk_topk::Fwd::name, why);
  }
  const std::vector<std::int64_t> result_shape{batch, heads, o.k};

  // The search needs finite queries (a NaN would rank below every key and yield arbitrary
  // indices); refuse them here, on every backend, before anything runs. Checked as the op will
  // store them: a finite fp32 beyond bf16's range becomes infinite under --dtype bf16.
  std::vector<std::uint16_t> q_bf16;
  if (dtype == DType::bf16) q_bf16 = npy::fp32_to_bf16(q.values<float>());
  if (std::string bad = pk_topk::find_nonfinite(
          dtype == DType::bf16 ? static_cast<const void*>(q_bf16.data()) : q.bytes.data(), dtype,
          batch, heads, k_dim);
      !bad.empty())
    fail("{}: {}{}", label("--queries", o.queries), bad,
         dtype == DType::bf16 ? " (after rounding to bf16 for --dtype bf16)" : "");

  // The backward's indices: from the file when it exists, else from a forward run here first.
  std::optional<npy::Array> idx, ds;
  const bool run_forward = !o.backward || !std::filesystem::exists(o.indices);
  if (o.backward) {
    if (!run_forward) {
      if (!o.scores.empty())
        fail(
            "--scores {} is given but --indices {} exists, so no forward runs to write it: "
            "remove the indices file to run the forward first, or drop --scores",
            o.scores, o.indices);
      idx = npy::read(
          o.indices,
          {.name = "--indices", .dtypes = {DType::i32, DType::i64}, .rank = 3, .shape = {}});
      require_shape(*idx, "--indices", o.indices, result_shape,
                    fmt::format("(batch, heads, k) of the forward, batch and heads from "
                                "--queries {} and k from --k {}",
                                q.shape_string(), o.k));
      if (std::string bad =
              pk_topk::find_bad_index(idx->bytes.data(), idx->dtype, batch, heads, o.k, n_keys);
          !bad.empty())
        fail("{}: {}", label("--indices", o.indices), bad);
    }
    ds = npy::read(o.grad_scores,
                   {.name = "--grad-scores", .dtypes = {DType::f32}, .rank = 3, .shape = {}});
    require_shape(*ds, "--grad-scores", o.grad_scores, result_shape,
                  fmt::format("one gradient per score, (batch, heads, k) with batch and heads "
                              "from --queries {} and k from --k {}",
                              q.shape_string(), o.k));
  }

  if (std::string why = usable(backend); !why.empty())
    fail("backend {} is not usable here: {}", to_string(backend), why);
  const Memory& mem = *backend_info(backend).memory;

  const auto d_q = upload_data(mem, q, dtype);
  const auto d_k1 = upload_data(mem, K1, dtype);
  const auto d_k2 = upload_data(mem, K2, dtype);
  const std::string inputs =
      fmt::format("queries {} {}, keys ({}, {}, {}) {}, k {}{}", q.shape_string(), to_string(dtype),
                  heads, n_keys, k_dim / 2, to_string(dtype), o.k, o.qk_norm ? ", qk-norm" : "");

  // Results stay in host memory until every run has succeeded, so a failure writes nothing.
  std::vector<std::pair<std::string, npy::Array>> results;
  const std::size_t n_results = static_cast<std::size_t>(batch * heads * o.k);
  std::unique_ptr<Buffer> d_idx;
  DType idx_dtype = out_index;

  if (run_forward) {
    Buffer d_s(mem, n_results * 4);
    d_idx = std::make_unique<Buffer>(mem, n_results * dtype_size(out_index));
    pk_topk::FwdParams p;
    p.queries = d_q->get();
    p.keys1 = d_k1->get();
    p.keys2 = d_k2->get();
    p.scores = d_s.as<float>();
    p.indices = d_idx->get();
    set_shape(p, out_index);
    p.qk_norm = o.qk_norm;
    if (std::string why = pk_topk::validate(p); !why.empty())
      fail("{}: {}", pk_topk::Fwd::name, why);
    // With --backward, --variant names the backward variant; the forward takes the default.
    const auto& v = choose<pk_topk::Fwd>(backend, o.backward ? "" : o.variant, p);
    const double ms = timed_run<pk_topk::Fwd>(backend, v, p);
    if (!o.scores.empty())
      results.emplace_back(o.scores, npy::Array::from<float>(result_shape, d_s.download<float>()));
    if (out_index == DType::i32)
      results.emplace_back(
          o.indices, npy::Array::from<std::int32_t>(result_shape, d_idx->download<std::int32_t>()));
    else
      results.emplace_back(
          o.indices, npy::Array::from<std::int64_t>(result_shape, d_idx->download<std::int64_t>()));
    std::cerr << fmt::format("pk-topk forward: {}/{}, {} -> {}indices ({}, {}, {}) {}, {}\n",
                             to_string(backend), v.name, inputs,
                             o.scores.empty()
                                 ? std::string()
                                 : fmt::format("scores ({}, {}, {}) fp32, ", batch, heads, o.k),
                             batch, heads, o.k, to_string(out_index), ms_text(ms));
  } else {
    d_idx = upload(mem, idx->bytes.data(), idx->bytes.size());
    idx_dtype = idx->dtype;
  }

  if (o.backward) {
    const auto d_ds = upload(mem, ds->bytes.data(), ds->bytes.size());
    const std::int64_t key_elems = heads * n_keys * (k_dim / 2);
    std::unique_ptr<Buffer> d_dq, d_dk1, d_dk2;
    if (!o.grad_queries.empty())
      d_dq = std::make_unique<Buffer>(mem, static_cast<std::size_t>(batch * heads * k_dim) * 4);
    if (!o.grad_keys1.empty())
      d_dk1 = std::make_unique<Buffer>(mem, static_cast<std::size_t>(key_elems) * 4);
    if (!o.grad_keys2.empty())
      d_dk2 = std::make_unique<Buffer>(mem, static_cast<std::size_t>(key_elems) * 4);
    pk_topk::BwdParams p;
    p.queries = d_q->get();
    p.keys1 = d_k1->get();
    p.keys2 = d_k2->get();
    p.indices = d_idx->get();
    p.grad_scores = d_ds->as<float>();
    set_shape(p, idx_dtype);
    p.qk_norm = o.qk_norm;
    p.grad_queries = d_dq ? d_dq->as<float>() : nullptr;
    p.grad_keys1.dense = d_dk1 ? d_dk1->as<float>() : nullptr;
    p.grad_keys2.dense = d_dk2 ? d_dk2->as<float>() : nullptr;
    if (std::string why = pk_topk::validate(p); !why.empty())
      fail("{}: {}", pk_topk::Bwd::name, why);
    const auto& v = choose<pk_topk::Bwd>(backend, o.variant, p);
    const double ms = timed_run<pk_topk::Bwd>(backend, v, p);
    std::vector<std::string> outputs;
    if (d_dq) {
      results.emplace_back(o.grad_queries,
                           npy::Array::from<float>({batch, heads, k_dim}, d_dq->download<float>()));
      outputs.push_back(fmt::format("grad-queries {} fp32", q.shape_string()));
    }
    const std::pair<const std::string*, Buffer*> keys[] = {{&o.grad_keys1, d_dk1.get()},
                                                           {&o.grad_keys2, d_dk2.get()}};
    for (int h = 0; h < 2; ++h) {
      if (!keys[h].second) continue;
      results.emplace_back(
          *keys[h].first,
          npy::Array::from<float>({heads, n_keys, k_dim / 2}, keys[h].second->download<float>()));
      outputs.push_back(
          fmt::format("grad-keys{} ({}, {}, {}) fp32", h + 1, heads, n_keys, k_dim / 2));
    }
    std::cerr << fmt::format(
        "pk-topk backward: {}/{}, {}, indices ({}, {}, {}) {} {}, grad-scores ({}, {}, {}) fp32 "
        "-> {}, {}\n",
        to_string(backend), v.name, inputs, batch, heads, o.k, to_string(idx_dtype),
        run_forward ? "from the forward" : "from the file", batch, heads, o.k,
        fmt::join(outputs, ", "), ms_text(ms));
  }

  for (const auto& [path, a] : results) npy::write(path, a);
}

Action setup(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "pk-topk",
      "Product-key top-k search: scores and indices of the k best of the n_keys² full keys "
      "[K1[i1], K2[i2]] per token and head (or its backward), with a registered variant, on "
      ".npy files");
  auto opt = std::make_shared<Options>();
  sub->add_option("--queries", opt->queries, "q: (batch, heads, k_dim) float32, k_dim even")
      ->required();
  sub->add_option("--keys1", opt->keys1, "K1: (heads, n_keys, k_dim/2) float32 sub-keys")
      ->required();
  sub->add_option("--keys2", opt->keys2, "K2: (heads, n_keys, k_dim/2) float32 sub-keys")
      ->required();
  sub->add_option("--k", opt->k, "results per token and head, 1 <= k <= min(n_keys, 1024)")
      ->required();
  sub->add_option("--indices", opt->indices,
                  "(batch, heads, k) indices i1*n_keys + i2: the forward's output; with "
                  "--backward its input when the file exists (else the forward runs first and "
                  "writes it)")
      ->required();
  sub->add_option("--scores", opt->scores,
                  "(batch, heads, k) float32 scores, descending per (token, head); required "
                  "without --backward");
  sub->add_flag("--qk-norm", opt->qk_norm,
                "RMS-normalise each query half and each sub-key before the dot products");
  add_backend_and_variant(sub, &opt->backend, &opt->variant);
  sub->add_option("--dtype", opt->dtype,
                  "storage of q, K1, K2 inside the op: bf16 rounds them to bf16 before the run "
                  "(fp32 sums either way)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  sub->add_option("--index", opt->index, "element type of the indices the forward writes")
      ->check(CLI::IsMember({"int32", "int64"}))
      ->capture_default_str();
  auto* backward = sub->add_flag("--backward", opt->backward,
                                 "run the backward: dq and/or dense dK1, dK2 from ds");
  auto* grad_scores = sub->add_option("--grad-scores", opt->grad_scores,
                                      "ds: (batch, heads, k) float32; with --backward");
  auto* grad_queries = sub->add_option("--grad-queries", opt->grad_queries,
                                       "dq: (batch, heads, k_dim) float32 output; with --backward");
  auto* grad_keys1 =
      sub->add_option("--grad-keys1", opt->grad_keys1,
                      "dK1: (heads, n_keys, k_dim/2) float32 output, dense; with --backward");
  auto* grad_keys2 =
      sub->add_option("--grad-keys2", opt->grad_keys2,
                      "dK2: (heads, n_keys, k_dim/2) float32 output, dense; with --backward");
  backward->needs(grad_scores);
  grad_scores->needs(backward);
  grad_queries->needs(backward);
  grad_keys1->needs(backward);
  grad_keys2->needs(backward);
  // Parse-time checks, so a missing output is a usage error (exit 2) before anything is read.
  sub->callback([opt] {
    if (!opt->backward && opt->scores.empty())
      throw CLI::ValidationError("--scores",
                                 "--scores is required (or --backward with --grad-scores)");
    if (opt->backward && opt->grad_queries.empty() && opt->grad_keys1.empty() &&
        opt->grad_keys2.empty())
      throw CLI::ValidationError("--backward",
                                 "--backward needs at least one of --grad-queries, --grad-keys1, "
                                 "--grad-keys2");
  });
  return [opt] { run(*opt); };
}

MEMLAYERS_SUBCOMMAND("pk-topk", setup);

}  // namespace
}  // namespace memlayers::cli::pk_topk_command
