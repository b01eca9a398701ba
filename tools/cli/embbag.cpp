// `memlayers embbag`: one registered weighted-EmbeddingBag variant, forward or backward, run on
// .npy files — the way to try a variant on real indices and weights, or to check it against
// another framework's numbers.
//   memlayers embbag --indices idx.npy --weights w.npy --values V.npy --out y.npy
//       [--backend reference|cpu|cuda|simt] [--variant NAME] [--dtype fp32|bf16]
//       [--out-dtype fp32|bf16] [--no-check-indices]
//   memlayers embbag --backward --indices idx.npy --weights w.npy --values V.npy --grad-out dy.npy
//       [--grad-values dV.npy] [--grad-weights dw.npy] [--out y.npy] ...
// Files are float32 (indices int32 or int64); --dtype bf16 narrows V to bf16 inside the op, as a
// bf16 model stores it, and the results come back widened to float32. Buffers go through the
// backend's memory functions, so the same command runs on the GPU where there is one.
// Build and run:
//   cmake --build build --target memlayers && build/tools/cli/memlayers embbag --help
#include <algorithm>
#include <cstdint>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "common/backend.h"
#include "common/registry.h"
#include "embbag/embbag.h"
#include "npy/convert.h"
#include "npy/npy.h"
#include "run_helpers.h"
#include "subcommand.h"

namespace memlayers::cli::embbag_command {
namespace {

struct Options {
  std::string indices, weights, values, out;
  std::string backend = "cpu";
  std::string variant;
  std::string dtype = "fp32", out_dtype = "fp32";
  bool no_check_indices = false;
  bool backward = false;
  std::string grad_out, grad_values, grad_weights;
};

// ---- inputs ----

std::string describe(const char* what, const npy::Array& a, DType dtype) {
  return fmt::format("{} {} {}", what, a.shape_string(), to_string(dtype));
}

// ---- the command ----

void run(const Options& o) {
  const Backend backend = *parse_backend(o.backend);  // CLI11 checked the spelling
  const DType values_dtype = *parse_dtype(o.dtype);
  const DType out_dtype = *parse_dtype(o.out_dtype);

  const npy::Array idx = npy::read(
      o.indices, {.name = "--indices", .dtypes = {DType::i32, DType::i64}, .rank = 2, .shape = {}});
  const std::int64_t batch = idx.shape[0], k = idx.shape[1];
  const npy::Array w =
      npy::read(o.weights, {.name = "--weights", .dtypes = {DType::f32}, .rank = 2, .shape = {}});
  require_shape(
      w, "--weights", o.weights, {batch, k},
      fmt::format("one weight per index, as --indices {} is (batch, k)", idx.shape_string()));
  const npy::Array V =
      npy::read(o.values, {.name = "--values", .dtypes = {DType::f32}, .rank = 2, .shape = {}});
  const std::int64_t num_rows = V.shape[0], dim = V.shape[1];
  std::optional<npy::Array> dy;
  if (o.backward) {
    dy = npy::read(o.grad_out,
                   {.name = "--grad-out", .dtypes = {DType::f32}, .rank = 2, .shape = {}});
    require_shape(*dy, "--grad-out", o.grad_out, {batch, dim},
                  fmt::format("(batch, dim), batch from --indices {} and dim from --values {}",
                              idx.shape_string(), V.shape_string()));
  }

  // The kernels trust their indices (a bad one reads outside the table), so check on the host.
  if (!o.no_check_indices)
    if (std::string bad = embbag::find_bad_index(idx.bytes.data(), idx.dtype, batch, k, num_rows);
        !bad.empty())
      fail("{}: {}", label("--indices", o.indices), bad);

  if (std::string why = usable(backend); !why.empty())
    fail("backend {} is not usable here: {}", to_string(backend), why);
  const Memory& mem = *backend_info(backend).memory;

  std::vector<std::uint16_t> v_bf16;
  const void* v_host = V.bytes.data();
  if (values_dtype == DType::bf16) {
    v_bf16 = npy::fp32_to_bf16(V.values<float>());
    v_host = v_bf16.data();
  }
  const auto d_idx = upload(mem, idx.bytes.data(), idx.bytes.size());
  const auto d_w = upload(mem, w.bytes.data(), w.bytes.size());
  const auto d_v =
      upload(mem, v_host, static_cast<std::size_t>(V.numel()) * dtype_size(values_dtype));
  const std::string inputs =
      fmt::format("{}, {}, {}", describe("indices", idx, idx.dtype),
                  describe("weights", w, DType::f32), describe("values", V, values_dtype));

  // Results stay in host memory until every run has succeeded, so a failure writes nothing.
  std::vector<std::pair<std::string, npy::Array>> results;

  if (!o.out.empty()) {
    Buffer d_y(mem, static_cast<std::size_t>(batch * dim) * dtype_size(out_dtype));
    embbag::FwdParams p;
    p.values = d_v->get();
    p.indices = d_idx->get();
    p.weights = d_w->as<float>();
    p.out = d_y.get();
    p.batch = batch;
    p.k = k;
    p.dim = dim;
    p.num_rows = num_rows;
    p.values_dtype = values_dtype;
    p.index_dtype = idx.dtype;
    p.out_dtype = out_dtype;
    // With --backward, --variant names the backward variant; the forward takes the default.
    const auto& v = choose<embbag::Fwd>(backend, o.backward ? "" : o.variant, p);
    const double ms = timed_run<embbag::Fwd>(backend, v, p);
    std::vector<float> y;
    if (out_dtype == DType::bf16)
      y = npy::bf16_to_fp32(d_y.download<std::uint16_t>());
    else
      y = d_y.download<float>();
    results.emplace_back(o.out, npy::Array::from<float>({batch, dim}, y));
    std::cerr << fmt::format("embbag forward: {}/{}, {} -> out ({}, {}) {}, {}\n",
                             to_string(backend), v.name, inputs, batch, dim, to_string(out_dtype),
                             ms_text(ms));
  }

  if (o.backward) {
    const auto d_dy = upload(mem, dy->bytes.data(), dy->bytes.size());
    std::unique_ptr<Buffer> d_dv, d_dw;
    if (!o.grad_values.empty())
      d_dv = std::make_unique<Buffer>(mem, static_cast<std::size_t>(num_rows * dim) * 4);
    if (!o.grad_weights.empty())
      d_dw = std::make_unique<Buffer>(mem, static_cast<std::size_t>(batch * k) * 4);
    embbag::BwdParams p;
    p.values = d_v->get();
    p.indices = d_idx->get();
    p.weights = d_w->as<float>();
    p.grad_out = d_dy->as<float>();
    p.batch = batch;
    p.k = k;
    p.dim = dim;
    p.num_rows = num_rows;
    p.values_dtype = values_dtype;
    p.index_dtype = idx.dtype;
    p.grad_values_dense = d_dv ? d_dv->as<float>() : nullptr;
    p.grad_weights = d_dw ? d_dw->as<float>() : nullptr;
    const auto& v = choose<embbag::Bwd>(backend, o.variant, p);
    const double ms = timed_run<embbag::Bwd>(backend, v, p);
    std::string outputs;
    if (d_dv) {
      results.emplace_back(o.grad_values,
                           npy::Array::from<float>({num_rows, dim}, d_dv->download<float>()));
      outputs += fmt::format("grad-values ({}, {}) fp32", num_rows, dim);
    }
    if (d_dw) {
      results.emplace_back(o.grad_weights,
                           npy::Array::from<float>({batch, k}, d_dw->download<float>()));
      outputs += fmt::format("{}grad-weights ({}, {}) fp32", outputs.empty() ? "" : ", ", batch, k);
    }
    std::cerr << fmt::format("embbag backward: {}/{}, {}, grad-out ({}, {}) fp32 -> {}, {}\n",
                             to_string(backend), v.name, inputs, batch, dim, outputs, ms_text(ms));
  }

  for (const auto& [path, a] : results) npy::write(path, a);
}

Action setup(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "embbag",
      "Weighted EmbeddingBag y[b,:] = sum_j w[b,j] * V[idx[b,j],:] (or its backward) "
      "with a registered variant, on .npy files");
  auto opt = std::make_shared<Options>();
  sub->add_option("--indices", opt->indices, "idx: (batch, k) int32 or int64 row ids")->required();
  sub->add_option("--weights", opt->weights, "w: (batch, k) float32")->required();
  sub->add_option("--values", opt->values, "V: (num_rows, dim) float32 table")->required();
  sub->add_option("--out", opt->out,
                  "y: (batch, dim) float32 output, written atomically; required without "
                  "--backward, optional with it (then the forward runs too)");
  add_backend_and_variant(sub, &opt->backend, &opt->variant);
  sub->add_option("--dtype", opt->dtype,
                  "storage of V inside the op: bf16 rounds V to bf16 before the run (fp32 "
                  "accumulation either way)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  sub->add_option("--out-dtype", opt->out_dtype,
                  "storage of y inside the op (the file is float32 either way)")
      ->check(CLI::IsMember({"fp32", "bf16"}))
      ->capture_default_str();
  sub->add_flag("--no-check-indices", opt->no_check_indices,
                "skip the host check that every index is in [0, num_rows) (a bad index then "
                "reads outside the table)");
  auto* backward =
      sub->add_flag("--backward", opt->backward, "run the backward: dV and/or dw from dy");
  auto* grad_out =
      sub->add_option("--grad-out", opt->grad_out, "dy: (batch, dim) float32; with --backward");
  auto* grad_values = sub->add_option("--grad-values", opt->grad_values,
                                      "dV: (num_rows, dim) float32 output, dense; with --backward");
  auto* grad_weights = sub->add_option("--grad-weights", opt->grad_weights,
                                       "dw: (batch, k) float32 output; with --backward");
  backward->needs(grad_out);
  grad_out->needs(backward);
  grad_values->needs(backward);
  grad_weights->needs(backward);
  // Parse-time checks, so a missing output is a usage error (exit 2) before anything is read.
  sub->callback([opt] {
    if (!opt->backward && opt->out.empty())
      throw CLI::ValidationError("--out", "--out is required (or --backward with --grad-out)");
    if (opt->backward && opt->grad_values.empty() && opt->grad_weights.empty())
      throw CLI::ValidationError("--backward",
                                 "--backward needs at least one of --grad-values, --grad-weights");
  });
  return [opt] { run(*opt); };
}

MEMLAYERS_SUBCOMMAND("embbag", setup);

}  // namespace
}  // namespace memlayers::cli::embbag_command
