// Bad input to the EmbeddingBag gets a clear error naming the field, its value and what is
// accepted: index out of range, k = 0, dim = 0, batch = 0, null and misaligned pointers, bad
// strides and dtypes, and shapes a variant does not support. Also the declared bytes and flops.
// Build and run: cmake --build build --target embbag_test && ctest --test-dir build -L embbag
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "embbag/embbag.h"

namespace memlayers::embbag {
namespace {

using ::testing::HasSubstr;

// A valid forward problem over host buffers, to break one field at a time.
struct FwdFixture {
  std::vector<float> values = std::vector<float>(10 * 8, 0.5f);
  std::vector<int64_t> idx{0, 9, 3, 3, 1, 2};
  std::vector<float> w = std::vector<float>(6, 1.0f);
  std::vector<float> out = std::vector<float>(2 * 8);
  FwdParams params() {
    FwdParams p;
    p.values = values.data();
    p.indices = idx.data();
    p.weights = w.data();
    p.out = out.data();
    p.batch = 2, p.k = 3, p.dim = 8, p.num_rows = 10;
    return p;
  }
};

struct BwdFixture {
  std::vector<float> values = std::vector<float>(10 * 8, 0.5f);
  std::vector<int32_t> idx{0, 9, 3, 3, 1, 2};
  std::vector<float> w = std::vector<float>(6, 1.0f), dy = std::vector<float>(2 * 8, 1.0f);
  std::vector<float> dw = std::vector<float>(6), dense = std::vector<float>(10 * 8),
                     compact = std::vector<float>(6 * 8);
  std::vector<int64_t> rows = std::vector<int64_t>(6);
  int64_t nu = 0;
  BwdParams params() {
    BwdParams p;
    p.values = values.data();
    p.indices = idx.data();
    p.weights = w.data();
    p.grad_out = dy.data();
    p.batch = 2, p.k = 3, p.dim = 8, p.num_rows = 10;
    p.index_dtype = DType::i32;
    p.grad_weights = dw.data();
    p.grad_values_dense = dense.data();
    p.unique_rows = rows.data();
    p.grad_values_compact = compact.data();
    p.num_unique = &nu;
    return p;
  }
};

TEST(EmbbagErrors, FindBadIndexNamesIndexBagAndSlot) {
  const std::vector<int64_t> ok{0, 5, 9, 1};
  EXPECT_EQ(find_bad_index(ok.data(), DType::i64, 2, 2, 10), "");
  const std::vector<int64_t> high{0, 5, 9, 10, 11, 1};
  EXPECT_EQ(find_bad_index(high.data(), DType::i64, 3, 2, 10),
            "index 10 out of range [0, 10) at bag 1, slot 1");
  const std::vector<int32_t> neg{3, 4, 5, -1};
  EXPECT_EQ(find_bad_index(neg.data(), DType::i32, 2, 2, 10),
            "index -1 out of range [0, 10) at bag 1, slot 1");
  const std::vector<int64_t> big{0, 1048577};
  EXPECT_EQ(find_bad_index(big.data(), DType::i64, 1, 2, 1048576),
            "index 1048577 out of range [0, 1048576) at bag 0, slot 1");
  EXPECT_THAT(find_bad_index(ok.data(), DType::f32, 2, 2, 10),
              HasSubstr("index_dtype = fp32: accepted int32, int64"));
}

TEST(EmbbagErrors, ValidInputPasses) {
  FwdFixture f;
  EXPECT_EQ(validate(f.params()), "");
  BwdFixture g;
  EXPECT_EQ(validate(g.params()), "");
}

TEST(EmbbagErrors, FwdShapes) {
  FwdFixture f;
  auto with = [&](auto edit) {
    FwdParams p = f.params();
    edit(p);
    return validate(p);
  };
  EXPECT_EQ(with([](FwdParams& p) { p.k = 0; }), "k = 0: accepted 1 <= k <= 256");
  EXPECT_EQ(with([](FwdParams& p) { p.k = 257; }), "k = 257: accepted 1 <= k <= 256");
  EXPECT_EQ(with([](FwdParams& p) { p.dim = 0; }), "dim = 0: accepted 1 <= dim <= 8192");
  EXPECT_EQ(with([](FwdParams& p) { p.dim = 8193; }), "dim = 8193: accepted 1 <= dim <= 8192");
  EXPECT_EQ(with([](FwdParams& p) { p.batch = 0; }), "batch = 0: accepted batch >= 1");
  EXPECT_EQ(with([](FwdParams& p) { p.batch = -3; }), "batch = -3: accepted batch >= 1");
  EXPECT_EQ(with([](FwdParams& p) { p.num_rows = 0; }), "num_rows = 0: accepted num_rows >= 1");
  EXPECT_EQ(with([](FwdParams& p) { p.values_stride = 7; }),
            "values_stride = 7: accepted 0 (meaning dim) or >= dim = 8");
  EXPECT_EQ(with([](FwdParams& p) { p.out_stride = -1; }),
            "out_stride = -1: accepted 0 (meaning dim) or >= dim = 8");
  EXPECT_EQ(with([](FwdParams& p) { p.values_dtype = DType::f16; }),
            "values_dtype = fp16: accepted fp32, bf16");
  EXPECT_EQ(with([](FwdParams& p) { p.index_dtype = DType::f32; }),
            "index_dtype = fp32: accepted int32, int64");
  EXPECT_EQ(with([](FwdParams& p) { p.out_dtype = DType::i32; }),
            "out_dtype = int32: accepted fp32, bf16");
  EXPECT_THAT(with([](FwdParams& p) { p.batch = int64_t{1} << 60; }),
              HasSubstr("overflows 64-bit offsets"));
}

TEST(EmbbagErrors, FwdPointers) {
  FwdFixture f;
  auto with = [&](auto edit) {
    FwdParams p = f.params();
    edit(p);
    return validate(p);
  };
  EXPECT_THAT(with([](FwdParams& p) { p.values = nullptr; }), HasSubstr("values is null"));
  EXPECT_THAT(with([](FwdParams& p) { p.indices = nullptr; }), HasSubstr("indices is null"));
  EXPECT_THAT(with([](FwdParams& p) { p.weights = nullptr; }), HasSubstr("weights is null"));
  EXPECT_THAT(with([](FwdParams& p) { p.out = nullptr; }), HasSubstr("out is null"));
  const std::string mis =
      with([&](FwdParams& p) { p.values = reinterpret_cast<const char*>(f.values.data()) + 2; });
  EXPECT_THAT(mis, HasSubstr("values = 0x"));
  EXPECT_THAT(mis, HasSubstr("is misaligned: accepted pointers aligned to 4 bytes"));
  // bf16 values need only 2-byte alignment.
  EXPECT_EQ(with([&](FwdParams& p) {
              p.values = reinterpret_cast<const char*>(f.values.data()) + 2;
              p.values_dtype = DType::bf16;
            }),
            "");
  EXPECT_THAT(
      with([&](FwdParams& p) { p.indices = reinterpret_cast<const char*>(f.idx.data()) + 4; }),
      HasSubstr("aligned to 8 bytes"));
}

TEST(EmbbagErrors, BwdOutputsAndPointers) {
  BwdFixture g;
  auto with = [&](auto edit) {
    BwdParams p = g.params();
    edit(p);
    return validate(p);
  };
  EXPECT_EQ(with([](BwdParams& p) { p.k = 0; }), "k = 0: accepted 1 <= k <= 256");
  EXPECT_EQ(with([](BwdParams& p) { p.dim = 0; }), "dim = 0: accepted 1 <= dim <= 8192");
  EXPECT_EQ(with([](BwdParams& p) { p.batch = 0; }), "batch = 0: accepted batch >= 1");
  EXPECT_THAT(with([](BwdParams& p) { p.grad_out = nullptr; }), HasSubstr("grad_out is null"));
  EXPECT_THAT(with([](BwdParams& p) {
                p.grad_weights = nullptr;
                p.grad_values_dense = nullptr;
                p.unique_rows = nullptr;
                p.grad_values_compact = nullptr;
                p.num_unique = nullptr;
              }),
              HasSubstr("no output requested"));
  EXPECT_EQ(with([](BwdParams& p) { p.num_unique = nullptr; }),
            "compact dV needs unique_rows, grad_values_compact and num_unique together; got "
            "unique_rows set, grad_values_compact set, num_unique null");
  // Any one output alone is fine.
  EXPECT_EQ(with([](BwdParams& p) {
              p.grad_values_dense = nullptr;
              p.unique_rows = nullptr;
              p.grad_values_compact = nullptr;
              p.num_unique = nullptr;
            }),
            "");
  EXPECT_THAT(with([&](BwdParams& p) {
                p.unique_rows =
                    reinterpret_cast<int64_t*>(reinterpret_cast<char*>(g.rows.data()) + 4);
              }),
              HasSubstr("unique_rows = 0x"));
}

// Registry::run validates before it launches, and refuses what a variant does not support.
TEST(EmbbagErrors, RunRefusesBadInputWithoutLaunching) {
  bool launched = false;
  Variant<FwdParams> v{.name = "needs_dim_multiple_of_4",
                       .backend = Backend::cpu,
                       .launch = [&](const FwdParams&, Stream) { launched = true; },
                       .supports =
                           [](const FwdParams& p) {
                             return p.dim % 4 ? std::string("dim must be a multiple of 4")
                                              : std::string();
                           },
                       .summary = "test-local: refuses dims that are not multiples of 4"};
  FwdFixture f;
  FwdParams p = f.params();
  p.k = 0;
  try {
    Registry<Fwd>::run(v, p);
    ADD_FAILURE() << "k = 0 was accepted";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "embbag_fwd: k = 0: accepted 1 <= k <= 256");
  }
  p = f.params();
  p.dim = 6;
  try {
    Registry<Fwd>::run(v, p);
    ADD_FAILURE() << "an unsupported dim was launched";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(),
                 "embbag_fwd/needs_dim_multiple_of_4 does not support this input: dim must be a "
                 "multiple of 4");
  }
  EXPECT_FALSE(launched);
  p.dim = 8;
  Registry<Fwd>::run(v, p);
  EXPECT_TRUE(launched);
}

// Every registered variant that turns down some shape: run() throws with its reason.
TEST(EmbbagErrors, RegisteredVariantsRefuseWhatTheyDoNotSupport) {
  std::vector<float> values(17 * 8193, 0.5f), out(3 * 8193);
  std::vector<int64_t> idx(3 * 256, 1);
  std::vector<float> w(3 * 256, 1.0f);
  int refused = 0;
  for (const auto* v : Registry<Fwd>::of()) {
    if (!usable(v->backend).empty() || v->backend == Backend::cuda) continue;
    for (int64_t dim : {1, 3, 5, 8, 100, 1000, 4095, 4096, 8192})
      for (int64_t k : {1, 7, 256}) {
        FwdParams p;
        p.values = values.data();
        p.indices = idx.data();
        p.weights = w.data();
        p.out = out.data();
        p.batch = 3, p.k = k, p.dim = dim, p.num_rows = 17;
        const std::string why = v->supports(p);
        if (why.empty()) continue;
        ++refused;
        try {
          Registry<Fwd>::run(*v, p);
          ADD_FAILURE() << v->name << " launched a shape it refuses: " << why;
        } catch (const Error& e) {
          EXPECT_THAT(e.what(), HasSubstr(why)) << v->name;
        }
      }
  }
  RecordProperty("refusals", refused);
}

TEST(EmbbagErrors, ReferenceRefusesOutOfRangeIndex) {
  FwdFixture f;
  f.idx[4] = 10;
  EXPECT_EQ(find_bad_index(f.idx.data(), DType::i64, 2, 3, 10),
            "index 10 out of range [0, 10) at bag 1, slot 1");
  try {
    Registry<Fwd>::run(Registry<Fwd>::find(Backend::reference, "reference"), f.params());
    ADD_FAILURE() << "the reference read row 10 of 10";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "index 10 out of range [0, 10) at bag 1, slot 1");
  }
}

TEST(EmbbagErrors, FindNamesKnownVariants) {
  try {
    Registry<Fwd>::find(Backend::cpu, "no_such_variant");
    ADD_FAILURE();
  } catch (const Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("no variant 'no_such_variant' on backend cpu"));
    EXPECT_THAT(e.what(), HasSubstr("v1_scalar"));
  }
}

// ---- declared bytes and flops (DESIGN.md §5) ----

TEST(EmbbagDeclared, ForwardBytesAndFlops) {
  FwdParams p;
  p.batch = 2, p.k = 3, p.dim = 5, p.num_rows = 100;
  // 2·3·5·4 (rows) + 2·3·(8 + 4) (indices, weights) + 2·5·4 (output)
  EXPECT_DOUBLE_EQ(Fwd::bytes_moved(p), 120 + 72 + 40);
  p.values_dtype = DType::bf16, p.index_dtype = DType::i32, p.out_dtype = DType::bf16;
  EXPECT_DOUBLE_EQ(Fwd::bytes_moved(p), 60 + 48 + 20);
  EXPECT_DOUBLE_EQ(Fwd::flops(p), 60);
}

TEST(EmbbagDeclared, BackwardBytesAndFlops) {
  BwdFixture g;
  BwdParams p = g.params();  // B 2, k 3, dim 8, N 10, fp32 values, int32 indices
  const double dw = 2 * 3 * 8 * 4 + 2 * 3 * 4, dy = 2 * 8 * 4, dv_u4 = 4 * 8 * 4 + 2 * 3 * 8 * 2;
  EXPECT_DOUBLE_EQ(Bwd::bytes_moved(p, 4), dy + dw + dv_u4);
  p.grad_values_dense = nullptr, p.unique_rows = nullptr, p.grad_values_compact = nullptr,
  p.num_unique = nullptr;
  EXPECT_DOUBLE_EQ(Bwd::bytes_moved(p, 4), dy + dw);
  EXPECT_DOUBLE_EQ(Bwd::flops(p), 2 * 3 * 8 * 2);
  EXPECT_DOUBLE_EQ(Bwd::dense_zeroing_bytes(p), 10 * 8 * 4);
}

TEST(EmbbagDeclared, ExpectedUniqueRows) {
  EXPECT_DOUBLE_EQ(expected_unique_rows(1, 1000), 1.0);
  EXPECT_DOUBLE_EQ(expected_unique_rows(50, 1), 1.0);
  EXPECT_DOUBLE_EQ(expected_unique_rows(0, 1000), 0.0);
  // Two draws from two rows: distinct with probability 1/2, so 1.5 rows on average.
  EXPECT_NEAR(expected_unique_rows(2, 2), 1.5, 1e-12);
  // Few draws from a huge table are almost all distinct; many draws cover it.
  EXPECT_NEAR(expected_unique_rows(1000, int64_t{1} << 40), 1000.0, 1e-3);
  EXPECT_NEAR(expected_unique_rows(int64_t{1} << 30, 1000), 1000.0, 1e-9);
  // 131072 draws (B 4096 × k 32) from 2^20 rows: N·(1 − e^{-1/8}) ≈ 123,169.
  EXPECT_NEAR(expected_unique_rows(131072, 1 << 20), (1 << 20) * -std::expm1(-0.125), 10.0);
}

}  // namespace
}  // namespace memlayers::embbag
