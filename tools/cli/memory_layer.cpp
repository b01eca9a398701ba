// `memlayers memory-layer`: the whole memory layer (kernels/memory_layer/memory_layer.h), forward
// and backward, on .npy inputs and a safetensors parameter file — the way to run a registered
// composition on real activations, or to check it against another framework's numbers; and
// `--init`, random parameters of a given shape, so a run can start without Python.
//   memlayers memory-layer --params layer.safetensors --input x.npy --out out.npy
//       [--values V.npy] [--indices i.npy] [--scores s.npy]
//       [--backend reference|cpu|cuda|simt] [--variant NAME]
//   memlayers memory-layer --params layer.safetensors --input x.npy --backward --grad-out dout.npy
//       --grads grads.safetensors [--grad-input dx.npy] [--out out.npy] ...
//   memlayers memory-layer --init --kind memory|memory_plus|peer --d-model D --heads H
//       --n-keys NK --k-dim N --k K [--value-dim V] [--qk-norm] [--gate]
//       [--values-dtype fp32|bf16] --seed S --params layer.safetensors
// The parameter file is weights_io.h's: one tensor per parameter, the Config in __metadata__; a
// file that leaves the shared value table out takes it from --values ((n_keys², value_width)
// float32, stored as the file's value dtype). x and dout are (batch, d_model) float32. The backward
// runs the forward first, keeping what it needs, and writes every parameter's gradient (dense,
// float32, named as the parameter: "wq", "bq", "keys1", "keys2", "values", and "down", "w1", "b1",
// "w2", "b2", "wg" where the kind has them) with the Config in the metadata.
// Build and run:
//   cmake --build build --target memlayers && build/tools/cli/memlayers memory-layer --help
#include <cmath>
#include <cstdint>
#include <cstring>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "common/backend.h"
#include "common/registry.h"
#include "common/safetensors.h"
#include "memory_layer/memory_layer.h"
#include "memory_layer/weights_io.h"
#include "npy/convert.h"
#include "npy/npy.h"
#include "run_helpers.h"
#include "subcommand.h"

namespace memlayers::cli::memory_layer_command {
namespace {

namespace ml = memory_layer;

struct Options {
  std::string params, input, out, values, indices, scores;
  std::string backend = "cpu";
  std::string variant;
  bool backward = false;
  std::string grad_out, grads, grad_input;
  // --init
  bool init = false;
  std::string kind;
  std::int64_t d_model = 0, heads = 0, n_keys = 0, k_dim = 0, k = 0, value_dim = 0;
  bool value_dim_given = false;
  bool qk_norm = false, gate = false;
  std::string values_dtype = "fp32";
  std::uint64_t seed = 0;
};

std::string describe(const ml::Config& c) {
  std::string s = fmt::format("{} d_model {}, heads {}, n_keys {}, k_dim {}, k {}",
                              ml::to_string(c.kind), c.d_model, c.heads, c.n_keys, c.k_dim, c.k);
  if (c.kind == ml::Kind::memory_plus) s += fmt::format(", value_dim {}", c.value_dim);
  if (c.qk_norm) s += ", qk-norm";
  if (c.scalar_gate) s += ", gate";
  return s + ", values " + std::string(to_string(c.values_dtype));
}

// ---- --init: random parameters ----

// Uniform in [-scale, scale) from the engine's raw bits, so a seed gives the same file with any
// standard library (the std distributions are implementation-defined).
class Uniform {
 public:
  explicit Uniform(std::uint64_t seed) : gen_(seed) {}
  float operator()(double scale) {
    const double u = static_cast<double>(gen_() >> 11) * 0x1.0p-53;  // [0, 1)
    return static_cast<float>((2 * u - 1) * scale);
  }

 private:
  std::mt19937_64 gen_;
};

// The scales of the layer's tests (tests/memory_layer): scores O(1), so the softmax is neither
// flat nor one-hot, and the memory+ and PEER pre-activations in the curved part of SiLU and GELU.
ml::HostWeights random_weights(const ml::Config& c, std::uint64_t seed) {
  Uniform draw(seed);
  ml::HostWeights w;
  w.config = c;
  const auto fill = [&](std::vector<float>& v, std::int64_t n, double scale) {
    v.resize(static_cast<std::size_t>(n));
    for (float& e : v) e = draw(scale);
  };
  const auto table = [&](std::vector<unsigned char>& v, std::int64_t n) {
    v.resize(static_cast<std::size_t>(n) * dtype_size(c.values_dtype));
    if (c.values_dtype == DType::bf16) {
      auto* p = reinterpret_cast<std::uint16_t*>(v.data());
      for (std::int64_t i = 0; i < n; ++i) p[i] = npy::fp32_to_bf16_bits(draw(1.0));
    } else {
      auto* p = reinterpret_cast<float*>(v.data());
      for (std::int64_t i = 0; i < n; ++i) p[i] = draw(1.0);
    }
  };
  const std::int64_t d = c.d_model, hn = c.heads * c.k_dim, v = c.value_dim;
  const std::int64_t sub_keys = c.heads * c.n_keys * (c.k_dim / 2);
  fill(w.wq, d * hn, 1 / std::sqrt(double(d)));
  fill(w.bq, hn, 0.5);
  fill(w.keys1, sub_keys, 1 / std::sqrt(double(c.k_dim / 2)));
  fill(w.keys2, sub_keys, 1 / std::sqrt(double(c.k_dim / 2)));
  table(w.values, c.num_values() * c.value_width());
  if (c.kind == ml::Kind::peer) table(w.down, c.num_values() * d);
  if (c.kind == ml::Kind::memory_plus) {
    fill(w.w1, d * v, 2 / std::sqrt(double(d)));
    fill(w.b1, v, 0.5);
    fill(w.w2, v * d, 1 / std::sqrt(double(v)));
    fill(w.b2, d, 0.5);
  }
  if (c.scalar_gate) fill(w.wg, d, 1 / std::sqrt(double(d)));
  return w;
}

void write_init(const Options& o) {
  ml::Config c;
  c.kind = *ml::parse_kind(o.kind);  // CLI11 checked the spelling
  c.d_model = o.d_model;
  c.heads = o.heads;
  c.n_keys = o.n_keys;
  c.k_dim = o.k_dim;
  c.k = o.k;
  // memory reads values as wide as the model; peer's experts are d_model wide by definition.
  c.value_dim = o.value_dim_given && c.kind == ml::Kind::memory_plus ? o.value_dim : o.d_model;
  if (o.value_dim_given && c.kind != ml::Kind::memory_plus && o.value_dim != o.d_model)
    fail(
        "--value-dim {} with --kind {}: only memory_plus takes a value width other than "
        "--d-model {}",
        o.value_dim, o.kind, o.d_model);
  c.qk_norm = o.qk_norm;
  c.scalar_gate = o.gate;
  c.values_dtype = *parse_dtype(o.values_dtype);
  if (std::string why = ml::validate(c); !why.empty()) fail("--init: {}", why);
  const ml::HostWeights w = random_weights(c, o.seed);
  ml::save_weights(o.params, c, w.view());
  std::int64_t count = 0;
  for (const ml::TensorSpec& s : ml::weight_specs(c)) {
    std::int64_t n = 1;
    for (std::int64_t e : s.shape) n *= e;
    count += n;
  }
  std::cerr << fmt::format(
      "memory-layer init: {}, seed {} -> params '{}' ({} tensors, {} values)\n", describe(c),
      o.seed, o.params, ml::weight_specs(c).size(), count);
}

// ---- a run: inputs ----

// The parameter file, its errors prefixed with the flag.
ml::HostWeights read_params(const std::string& path) {
  safetensors::File f;
  try {
    f = safetensors::load(path);
  } catch (const Error& e) {
    fail("--params: {}", e.what());
  }
  return ml::weights_from_file(f, label("--params", path));
}

// The value table a file left out, from --values, stored as the layer's value dtype.
std::vector<unsigned char> read_values(const Options& o, const ml::Config& c) {
  const std::vector<std::int64_t> shape{c.num_values(), c.value_width()};
  if (o.values.empty())
    fail(
        "{} holds no 'values' tensor (the shared value table): give it with --values, a "
        "({}, {}) float32 .npy file",
        label("--params", o.params), shape[0], shape[1]);
  const npy::Array V =
      npy::read(o.values, {.name = "--values", .dtypes = {DType::f32}, .rank = 2, .shape = {}});
  require_shape(V, "--values", o.values, shape,
                fmt::format("(n_keys², value_width) of the {} layer in --params '{}'",
                            ml::to_string(c.kind), o.params));
  std::vector<unsigned char> out(V.bytes.size() / 4 * dtype_size(c.values_dtype));
  if (c.values_dtype == DType::bf16) {
    const std::vector<std::uint16_t> narrow = npy::fp32_to_bf16(V.values<float>());
    std::memcpy(out.data(), narrow.data(), out.size());
  } else {
    std::memcpy(out.data(), V.bytes.data(), out.size());
  }
  return out;
}

// The search ranks the scores of x·Wq + bq: a NaN or infinity in x would make them meaningless.
void require_finite(const npy::Array& x, const std::string& flag, const std::string& path) {
  const auto v = x.values<float>();
  const std::int64_t width = x.shape[1];
  for (std::size_t i = 0; i < v.size(); ++i)
    if (!std::isfinite(v[i]))
      fail("{}: element [{}, {}] is {}: the layer needs finite inputs", label(flag, path),
           static_cast<std::int64_t>(i) / width, static_cast<std::int64_t>(i) % width, v[i]);
}

// ---- a run: buffers ----

// The host vector in backend memory (null when empty: a parameter the kind does not use).
template <class T>
std::unique_ptr<Buffer> upload_vector(const Memory& mem, const std::vector<T>& v) {
  if (v.empty()) return nullptr;
  return upload(mem, v.data(), v.size() * sizeof(T));
}

// Buffers in backend memory that the run keeps until it ends.
struct Pool {
  const Memory& mem;
  std::vector<std::unique_ptr<Buffer>> held;

  template <class T>
  const T* keep(std::unique_ptr<Buffer> b) {
    if (!b) return nullptr;
    held.push_back(std::move(b));
    return held.back()->as<T>();
  }
  // `n` elements of T, or null for n = 0.
  template <class T>
  T* alloc(std::int64_t n) {
    if (n == 0) return nullptr;
    held.push_back(std::make_unique<Buffer>(mem, static_cast<std::size_t>(n) * sizeof(T)));
    return held.back()->as<T>();
  }
};

template <class T>
std::vector<T> download(const Memory& mem, const T* p, std::int64_t n) {
  std::vector<T> host(static_cast<std::size_t>(n));
  mem.synchronize();
  mem.to_host(host.data(), p, host.size() * sizeof(T));
  return host;
}

// ---- a run ----

void run(const Options& o) {
  const Backend backend = *parse_backend(o.backend);  // CLI11 checked the spelling

  ml::HostWeights hw = read_params(o.params);
  const ml::Config& c = hw.config;
  if (hw.values.empty())
    hw.values = read_values(o, c);
  else if (!o.values.empty())
    fail(
        "--values '{}' is given but {} holds its own 'values' tensor: drop --values, or save the "
        "parameters without the value table",
        o.values, label("--params", o.params));

  const std::string x_why = fmt::format(
      "(batch, d_model), d_model = {} from the config in --params '{}'", c.d_model, o.params);
  const npy::Array x =
      npy::read(o.input, {.name = "--input", .dtypes = {DType::f32}, .rank = 2, .shape = {}});
  const std::int64_t batch = x.shape[0], d = c.d_model;
  require_shape(x, "--input", o.input, {batch, d}, x_why);
  if (batch < 1)
    fail("{}: shape {} holds no token: accepted batch >= 1", label("--input", o.input),
         x.shape_string());
  require_finite(x, "--input", o.input);
  std::optional<npy::Array> dout;
  if (o.backward) {
    dout = npy::read(o.grad_out,
                     {.name = "--grad-out", .dtypes = {DType::f32}, .rank = 2, .shape = {}});
    require_shape(*dout, "--grad-out", o.grad_out, {batch, d},
                  fmt::format("one gradient per output, as --input {} is", x.shape_string()));
  }

  if (std::string why = usable(backend); !why.empty())
    fail("backend {} is not usable here: {}", to_string(backend), why);
  Pool pool{*backend_info(backend).memory, {}};
  const Memory& mem = pool.mem;

  ml::Weights w;
  w.wq = pool.keep<float>(upload_vector(mem, hw.wq));
  w.bq = pool.keep<float>(upload_vector(mem, hw.bq));
  w.keys1 = pool.keep<float>(upload_vector(mem, hw.keys1));
  w.keys2 = pool.keep<float>(upload_vector(mem, hw.keys2));
  w.values = pool.keep<void>(upload_vector(mem, hw.values));
  w.down = pool.keep<void>(upload_vector(mem, hw.down));
  w.w1 = pool.keep<float>(upload_vector(mem, hw.w1));
  w.b1 = pool.keep<float>(upload_vector(mem, hw.b1));
  w.w2 = pool.keep<float>(upload_vector(mem, hw.w2));
  w.b2 = pool.keep<float>(upload_vector(mem, hw.b2));
  w.wg = pool.keep<float>(upload_vector(mem, hw.wg));
  const float* d_x = pool.keep<float>(upload(mem, x.bytes.data(), x.bytes.size()));

  // What the forward keeps: the search's results when asked for, and everything the backward
  // reads (memory_layer.h, Saved) when it runs.
  const std::int64_t hk = c.heads * c.k;
  const bool mplus = c.kind == ml::Kind::memory_plus, peer = c.kind == ml::Kind::peer;
  ml::Saved s;
  s.scores = o.scores.empty() ? nullptr : pool.alloc<float>(batch * hk);
  s.indices = o.indices.empty() && !o.backward ? nullptr : pool.alloc<std::int64_t>(batch * hk);
  if (o.backward) {
    s.q = pool.alloc<float>(batch * c.heads * c.k_dim);
    s.weights = pool.alloc<float>(batch * hk);
    if (mplus || c.scalar_gate) s.y = pool.alloc<float>(batch * (mplus ? c.value_dim : d));
    if (mplus) s.hidden = pool.alloc<float>(batch * c.value_dim);
    if (peer) s.peer_pre = pool.alloc<float>(batch * hk);
    if (c.scalar_gate) s.gate = pool.alloc<float>(batch);
  }

  // Results stay in host memory until every run has succeeded, so a failure writes nothing.
  std::vector<std::pair<std::string, npy::Array>> results;
  std::optional<safetensors::File> grads;
  const std::vector<std::int64_t> search_shape{batch, c.heads, c.k};

  ml::FwdParams fp;
  fp.config = c;
  fp.weights = w;
  fp.x = d_x;
  fp.out = pool.alloc<float>(batch * d);
  fp.batch = batch;
  fp.saved = s;
  if (std::string why = ml::validate(fp); !why.empty()) fail("{}: {}", ml::Fwd::name, why);
  const auto& fv = choose<ml::Fwd>(backend, o.variant, fp);
  const double fwd_ms = timed_run<ml::Fwd>(backend, fv, fp);
  std::string written;
  if (!o.out.empty()) {
    results.emplace_back(o.out,
                         npy::Array::from<float>({batch, d}, download(mem, fp.out, batch * d)));
    written = fmt::format("out ({}, {}) fp32", batch, d);
  }
  if (s.scores) {
    results.emplace_back(
        o.scores, npy::Array::from<float>(search_shape, download(mem, s.scores, batch * hk)));
    written +=
        fmt::format("{}scores ({}, {}, {}) fp32", written.empty() ? "" : ", ", batch, c.heads, c.k);
  }
  if (!o.indices.empty()) {
    results.emplace_back(o.indices, npy::Array::from<std::int64_t>(
                                        search_shape, download(mem, s.indices, batch * hk)));
    written += fmt::format("{}indices ({}, {}, {}) int64", written.empty() ? "" : ", ", batch,
                           c.heads, c.k);
  }
  const std::string inputs = fmt::format("{}; x {} fp32", describe(c), x.shape_string());
  std::cerr << fmt::format(
      "memory-layer forward: {}/{}, {} -> {}, {}\n", to_string(backend), fv.name, inputs,
      written.empty() ? std::string("kept for the backward") : written, ms_text(fwd_ms));

  if (o.backward) {
    const std::int64_t hn = c.heads * c.k_dim, v = c.value_dim;
    const std::int64_t sub_keys = c.heads * c.n_keys * (c.k_dim / 2);
    const std::int64_t table = c.num_values() * c.value_width();
    ml::BwdParams bp;
    bp.config = c;
    bp.weights = w;
    bp.x = d_x;
    bp.grad_out = pool.keep<float>(upload(mem, dout->bytes.data(), dout->bytes.size()));
    bp.batch = batch;
    bp.saved = s;
    ml::Grads& g = bp.grads;
    if (!o.grad_input.empty()) g.x = pool.alloc<float>(batch * d);
    g.wq = pool.alloc<float>(d * hn);
    g.bq = pool.alloc<float>(hn);
    g.keys1 = pool.alloc<float>(sub_keys);
    g.keys2 = pool.alloc<float>(sub_keys);
    g.values_dense = pool.alloc<float>(table);
    if (peer) g.down_dense = pool.alloc<float>(c.num_values() * d);
    if (mplus) {
      g.w1 = pool.alloc<float>(d * v);
      g.b1 = pool.alloc<float>(v);
      g.w2 = pool.alloc<float>(v * d);
      g.b2 = pool.alloc<float>(d);
    }
    if (c.scalar_gate) g.wg = pool.alloc<float>(d);
    if (std::string why = ml::validate(bp); !why.empty()) fail("{}: {}", ml::Bwd::name, why);
    const auto& bv = choose<ml::Bwd>(backend, o.variant, bp);
    const double bwd_ms = timed_run<ml::Bwd>(backend, bv, bp);

    // The gradients as a parameter file of the same layer with fp32 value tables: same names,
    // same shapes, the Config in the metadata (weights_from_file reads it back).
    ml::HostWeights gh;
    gh.config = c;
    gh.config.values_dtype = DType::f32;
    gh.wq = download(mem, g.wq, d * hn);
    gh.bq = download(mem, g.bq, hn);
    gh.keys1 = download(mem, g.keys1, sub_keys);
    gh.keys2 = download(mem, g.keys2, sub_keys);
    const auto bytes_of = [](const std::vector<float>& f) {
      std::vector<unsigned char> b(f.size() * 4);
      std::memcpy(b.data(), f.data(), b.size());
      return b;
    };
    gh.values = bytes_of(download(mem, g.values_dense, table));
    if (peer) gh.down = bytes_of(download(mem, g.down_dense, c.num_values() * d));
    if (mplus) {
      gh.w1 = download(mem, g.w1, d * v);
      gh.b1 = download(mem, g.b1, v);
      gh.w2 = download(mem, g.w2, v * d);
      gh.b2 = download(mem, g.b2, d);
    }
    if (c.scalar_gate) gh.wg = download(mem, g.wg, d);
    grads = ml::weights_to_file(gh.config, gh.view());
    std::string outputs =
        fmt::format("grads '{}' ({} tensors, fp32)", o.grads, grads->tensors.size());
    if (g.x) {
      results.emplace_back(o.grad_input,
                           npy::Array::from<float>({batch, d}, download(mem, g.x, batch * d)));
      outputs += fmt::format(", grad-input ({}, {}) fp32", batch, d);
    }
    std::cerr << fmt::format("memory-layer backward: {}/{}, {}, grad-out {} fp32 -> {}, {}\n",
                             to_string(backend), bv.name, inputs, dout->shape_string(), outputs,
                             ms_text(bwd_ms));
  }
  for (const auto& [path, a] : results) npy::write(path, a);
  if (grads) safetensors::save(o.grads, *grads);
}

// ---- options ----

Action setup(CLI::App& app) {
  auto* sub = app.add_subcommand(
      "memory-layer",
      "The memory layer (query projection, product-key search, softmax, EmbeddingBag over the "
      "value table, memory / memory+ / PEER output, optional scalar gate), forward or backward, "
      "with a registered composition, on .npy inputs and a safetensors parameter file; or --init "
      "to write random parameters");
  auto opt = std::make_shared<Options>();
  sub->add_option("--params", opt->params,
                  "the layer's parameters, a safetensors file (one tensor per parameter, the "
                  "config in __metadata__); with --init the file written")
      ->required();
  auto* input = sub->add_option("--input", opt->input, "x: (batch, d_model) float32, finite");
  auto* out = sub->add_option(
      "--out", opt->out,
      "out: (batch, d_model) float32 output; required without --backward, optional with it");
  auto* values = sub->add_option(
      "--values", opt->values,
      "V: (n_keys², value_width) float32, the shared value table, when --params leaves it out "
      "(stored as the file's value dtype: bf16 when its 'down' table is bf16, else fp32)");
  auto* indices = sub->add_option(
      "--indices", opt->indices,
      "(batch, heads, k) int64 output: the search's rows of V, i1*n_keys + i2, per token and head");
  auto* scores = sub->add_option("--scores", opt->scores,
                                 "(batch, heads, k) float32 output: the search's scores, "
                                 "descending per token and head");
  add_backend_and_variant(sub, &opt->backend, &opt->variant);
  auto* backend = sub->get_option("--backend");
  auto* variant = sub->get_option("--variant");
  variant->description(
      "composition name (see 'memlayers info'); default: the backend's first registered one, in "
      "name order, that supports the layer (cpu: v1_compose). With --backward it names the "
      "forward and the backward, which share their names");
  auto* backward = sub->add_flag(
      "--backward", opt->backward,
      "run the forward, keeping what the backward needs, then the backward from --grad-out");
  auto* grad_out = sub->add_option("--grad-out", opt->grad_out,
                                   "dout: (batch, d_model) float32; with --backward");
  auto* grads = sub->add_option(
      "--grads", opt->grads,
      "the parameters' gradients, a safetensors file written with --backward: float32, named and "
      "shaped as the parameters (dense 'values' and, for peer, 'down'), the config in "
      "__metadata__");
  auto* grad_input = sub->add_option("--grad-input", opt->grad_input,
                                     "dx: (batch, d_model) float32 output; with --backward");

  auto* init = sub->add_flag("--init", opt->init,
                             "write random parameters of the shape given below to --params "
                             "(uniform, scaled so the scores are O(1)) instead of running");
  auto* kind = sub->add_option("--kind", opt->kind, "with --init: the layer's output")
                   ->check(CLI::IsMember({"memory", "memory_plus", "peer"}));
  auto* d_model = sub->add_option("--d-model", opt->d_model, "with --init: the model width d");
  auto* heads = sub->add_option("--heads", opt->heads, "with --init: query heads h");
  auto* n_keys = sub->add_option("--n-keys", opt->n_keys,
                                 "with --init: sub-keys per half; the table holds n_keys² rows");
  auto* k_dim = sub->add_option("--k-dim", opt->k_dim,
                                "with --init: the query width n per head, even (two halves)");
  auto* k = sub->add_option("--k", opt->k,
                            "with --init: rows per head, 1 <= k <= min(n_keys, 1024); a token "
                            "reads heads*k rows");
  auto* value_dim = sub->add_option(
      "--value-dim", opt->value_dim,
      "with --init: the value width v of memory_plus (default d_model; memory and peer use "
      "d_model)");
  auto* qk_norm = sub->add_flag(
      "--qk-norm", opt->qk_norm,
      "with --init: RMS-normalise each query half and each sub-key before the scores");
  auto* gate =
      sub->add_flag("--gate", opt->gate, "with --init: the scalar output gate sigmoid(x·wg)");
  auto* values_dtype = sub->add_option("--values-dtype", opt->values_dtype,
                                       "with --init: storage of the value tables")
                           ->check(CLI::IsMember({"fp32", "bf16"}))
                           ->capture_default_str();
  auto* seed = sub->add_option("--seed", opt->seed, "with --init: the random seed");

  for (auto* o :
       {kind, d_model, heads, n_keys, k_dim, k, value_dim, qk_norm, gate, values_dtype, seed})
    o->needs(init);
  for (auto* o : {input, out, values, indices, scores, backend, variant, backward, grad_out, grads,
                  grad_input})
    init->excludes(o);
  for (auto* o : {grad_out, grads, grad_input}) o->needs(backward);
  backward->needs(grad_out);
  backward->needs(grads);
  // Parse-time checks, so a missing option is a usage error (exit 2) before anything is read.
  sub->callback([opt, sub] {
    if (opt->init) {
      for (const char* name :
           {"--kind", "--d-model", "--heads", "--n-keys", "--k-dim", "--k", "--seed"})
        if (sub->count(name) == 0)
          throw CLI::ValidationError(name, std::string(name) + " is required with --init");
      opt->value_dim_given = sub->count("--value-dim") != 0;
      return;
    }
    if (opt->input.empty())
      throw CLI::ValidationError("--input", "--input is required (or --init)");
    if (!opt->backward && opt->out.empty())
      throw CLI::ValidationError("--out",
                                 "--out is required (or --backward with --grad-out and --grads)");
  });
  return [opt] {
    if (opt->init)
      write_init(*opt);
    else
      run(*opt);
  };
}

MEMLAYERS_SUBCOMMAND("memory-layer", setup);

}  // namespace
}  // namespace memlayers::cli::memory_layer_command
