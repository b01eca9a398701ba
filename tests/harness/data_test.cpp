// The synthetic knowledge base (harness/data.h): the documented generator (pinned values computed
// by a separate implementation of it: mt19937_64 written from the standard's definition,
// rejection-sampled uniform_below, Floyd's sampling, in Python), determinism, distinct facts,
// every token in its range of the vocabulary layout, batches that match the facts and feed the
// model's cross-entropy, the epoch order, exact match, the capacity argument and the errors.
// Build and run: cmake --build build --target harness_data_test && ctest --test-dir build -L
// harness
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <set>
#include <utility>
#include <vector>

#include "common/error.h"
#include "harness/data.h"
#include "harness/model.h"
#include "tests/harness/expect_error.h"

namespace memlayers::harness {
namespace {

using test::expect_error;

DataConfig small_config() {
  DataConfig c;
  c.seed = 42, c.names = 10, c.subjects = 30, c.relations = 5, c.objects = 17, c.facts = 100;
  return c;
}

uint64_t fingerprint(const KnowledgeBase& kb) {
  uint64_t h = 1469598103934665603ull;  // FNV-1a over the token ids
  for (int64_t i = 0; i < static_cast<int64_t>(kb.facts.size()); ++i)
    for (int32_t t : kb.tokens(i)) h = (h ^ static_cast<uint64_t>(t)) * 1099511628211ull;
  return h;
}

TEST(KnowledgeBase, MatchesTheDocumentedGenerator) {
  // The standard's own check of mt19937_64: the 10000th output of a default-seeded engine.
  std::mt19937_64 check;
  check.discard(9999);
  ASSERT_EQ(check(), 9981545732273789042ull);

  const KnowledgeBase kb = make_knowledge_base(small_config());
  ASSERT_EQ(kb.facts.size(), 100u);
  const std::vector<std::array<int32_t, 4>> first = {{1, 1, 12, 16}, {1, 1, 13, 21}, {1, 1, 14, 26},
                                                     {1, 1, 15, 31}, {1, 9, 11, 17}, {1, 9, 14, 18},
                                                     {2, 1, 11, 32}, {2, 1, 14, 27}};
  for (std::size_t i = 0; i < first.size(); ++i) EXPECT_EQ(kb.tokens(int64_t(i)), first[i]) << i;
  EXPECT_EQ(kb.tokens(99), (std::array<int32_t, 4>{10, 7, 15, 19}));
  EXPECT_EQ(fingerprint(kb), 5544987959063211516ull);

  // Every pair and every name taken: Floyd's sampling at k = n.
  DataConfig full;
  full.seed = 7, full.names = 3, full.subjects = 9, full.relations = 4, full.objects = 5;
  full.facts = 36;
  const KnowledgeBase all = make_knowledge_base(full);
  const std::vector<std::array<int32_t, 4>> all_first = {
      {1, 1, 4, 10}, {1, 1, 5, 10}, {1, 1, 6, 8}, {1, 1, 7, 12}, {1, 2, 4, 10}, {1, 2, 5, 11}};
  for (std::size_t i = 0; i < all_first.size(); ++i)
    EXPECT_EQ(all.tokens(int64_t(i)), all_first[i]) << i;
}

TEST(KnowledgeBase, UniformBelowRejectsTheIncompleteTop) {
  // n = 2⁶³ + 1: 2⁶⁴ mod n = 2⁶³ − 1, so raw draws ≥ 2⁶³ + 1 (about half) are rejected.
  const uint64_t n = (uint64_t{1} << 63) + 1;
  std::mt19937_64 gen(3), raw(3);
  int rejected = 0;
  for (int k = 0; k < 200; ++k) {
    const uint64_t got = uniform_below(gen, n);
    uint64_t x;
    while ((x = raw()) >= n) ++rejected;
    ASSERT_EQ(got, x) << "draw " << k;
  }
  EXPECT_GT(rejected, 50);  // the rejection path ran
  // A power of two rejects nothing: the raw draw mod n.
  std::mt19937_64 a(5), b(5);
  for (int k = 0; k < 100; ++k) ASSERT_EQ(uniform_below(a, 64), b() % 64);
  expect_error([&] { uniform_below(a, 0); }, "accepted are n ≥ 1");
}

TEST(KnowledgeBase, DeterministicPerSeed) {
  DataConfig c = small_config();
  const KnowledgeBase a = make_knowledge_base(c), b = make_knowledge_base(c);
  EXPECT_EQ(fingerprint(a), fingerprint(b));
  EXPECT_EQ(a.subject_names, b.subject_names);
  c.seed = 43;
  EXPECT_NE(fingerprint(make_knowledge_base(c)), fingerprint(a));
}

TEST(KnowledgeBase, FactsDistinctAndTokensInTheirRanges) {
  DataConfig c;
  c.seed = 11, c.names = 40, c.subjects = 1000, c.relations = 6, c.objects = 300, c.facts = 4000;
  const KnowledgeBase kb = make_knowledge_base(c);
  ASSERT_EQ(static_cast<int64_t>(kb.facts.size()), c.facts);
  EXPECT_EQ(kb.vocab(), 1 + 40 + 6 + 300);
  std::set<std::pair<int32_t, int32_t>> names;
  for (int64_t s = 0; s < c.subjects; ++s)
    names.insert({kb.subject_names[2 * s], kb.subject_names[2 * s + 1]});
  EXPECT_EQ(static_cast<int64_t>(names.size()), c.subjects) << "two subjects share a name";
  std::set<std::pair<int32_t, int32_t>> pairs;
  std::set<int32_t> objects;
  for (int64_t i = 0; i < c.facts; ++i) {
    const Fact& f = kb.facts[i];
    pairs.insert({f.subject, f.relation});
    objects.insert(f.object);
    const auto t = kb.tokens(i);
    ASSERT_TRUE(t[0] >= kb.name_base() && t[0] < kb.relation_base()) << "fact " << i;
    ASSERT_TRUE(t[1] >= kb.name_base() && t[1] < kb.relation_base()) << "fact " << i;
    ASSERT_TRUE(t[2] >= kb.relation_base() && t[2] < kb.object_base()) << "fact " << i;
    ASSERT_TRUE(t[3] >= kb.object_base() && t[3] < kb.vocab()) << "fact " << i;
    ASSERT_EQ(t[0] - kb.name_base(), kb.subject_names[2 * f.subject]);
    ASSERT_EQ(t[2] - kb.relation_base(), f.relation);
    ASSERT_EQ(t[3] - kb.object_base(), f.object);
  }
  EXPECT_EQ(static_cast<int64_t>(pairs.size()), c.facts) << "duplicate (subject, relation)";
  // 4000 uniform draws over 300 objects leave none out with probability ~300·e^(−13.3).
  EXPECT_EQ(static_cast<int64_t>(objects.size()), c.objects);
  EXPECT_TRUE(std::is_sorted(kb.facts.begin(), kb.facts.end(), [](const Fact& a, const Fact& b) {
    return std::pair(a.subject, a.relation) < std::pair(b.subject, b.relation);
  }));
}

TEST(KnowledgeBase, BatchesMatchTheFacts) {
  const KnowledgeBase kb = make_knowledge_base(small_config());
  const std::vector<int64_t> idx = {99, 0, 57, 57, 13};
  for (int64_t seq : {3, 6}) {
    const FactBatch b = make_batch(kb, idx, seq);
    ASSERT_EQ(b.batch, 5);
    ASSERT_EQ(b.seq, seq);
    ASSERT_EQ(static_cast<int64_t>(b.tokens.size()), 5 * seq);
    for (int64_t r = 0; r < b.batch; ++r) {
      const auto t = kb.tokens(idx[r]);
      for (int64_t p = 0; p < seq; ++p) {
        const int64_t k = r * seq + p;
        if (p < 3) {
          EXPECT_EQ(b.tokens[k], t[p]) << "row " << r << " position " << p;
          EXPECT_EQ(b.targets[k], t[p + 1]) << "row " << r << " position " << p;
        } else {
          EXPECT_EQ(b.tokens[k], kPadToken);
          EXPECT_EQ(b.targets[k], kPadToken);
        }
        EXPECT_EQ(b.weights[k], p == kObjectPosition ? 1.0f : 0.0f);
      }
      EXPECT_EQ(b.targets[r * seq + kObjectPosition], t[3]) << "the counted target is the object";
    }
  }
}

TEST(KnowledgeBase, BatchFeedsTheModelsCrossEntropy) {
  const KnowledgeBase kb = make_knowledge_base(small_config());
  Config mc;
  mc.vocab = kb.vocab(), mc.ctx = 3, mc.d_model = 12, mc.layers = 1, mc.heads = 2;
  mc.ffn_hidden = 8;
  Model model(mc, ops_for(Backend::cpu));
  const std::vector<float> params = init_params(mc, 1);
  const std::vector<int64_t> idx = epoch_order(100, 1, 0);
  const FactBatch b = make_batch(kb, std::span(idx).first(16));
  const double loss = model.loss(params.data(), nullptr, b.view());
  // At initialisation the logits are near zero: the object loss is near ln(vocab).
  EXPECT_NEAR(loss, std::log(double(kb.vocab())), 0.1);
}

TEST(KnowledgeBase, EpochOrderIsADeterministicPermutation) {
  const std::vector<int64_t> a = epoch_order(1000, 5, 0);
  EXPECT_EQ(a, epoch_order(1000, 5, 0));
  std::vector<int64_t> sorted = a;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_NE(a, sorted) << "not shuffled";
  EXPECT_NE(a, epoch_order(1000, 5, 1)) << "epochs share an order";
  EXPECT_NE(a, epoch_order(1000, 6, 0)) << "seeds share an order";
  EXPECT_EQ(epoch_order(1, 5, 3), std::vector<int64_t>{0});
  // The documented seeding: Fisher–Yates by mt19937_64(splitmix64(seed ^ splitmix64(epoch))).
  EXPECT_EQ(splitmix64(0), 0xE220A8397B1DCDAFull);  // splitmix64's published first output
  std::mt19937_64 gen(splitmix64(5 ^ splitmix64(2)));
  std::vector<int64_t> want(10);
  for (int64_t i = 0; i < 10; ++i) want[i] = i;
  for (int64_t i = 9; i >= 1; --i) std::swap(want[i], want[uniform_below(gen, uint64_t(i) + 1)]);
  EXPECT_EQ(epoch_order(10, 5, 2), want);
}

TEST(KnowledgeBase, ExactMatchCountsStrictArgmaxAtCountedPositions) {
  const KnowledgeBase kb = make_knowledge_base(small_config());
  const std::vector<int64_t> idx = {0, 1, 2, 3};
  const FactBatch b = make_batch(kb, idx);
  const int64_t V = kb.vocab(), rows = b.batch * b.seq;
  std::vector<float> logits(static_cast<std::size_t>(rows * V), 0.0f);
  // Every uncounted position predicts its target perfectly: they must not count.
  for (int64_t r = 0; r < rows; ++r) logits[r * V + b.targets[r]] = 5.0f;
  auto at_object = [&](int64_t row) { return row * b.seq + kObjectPosition; };
  auto cell = [&](int64_t row, int64_t v) -> float& { return logits[at_object(row) * V + v]; };
  const int32_t wrong = static_cast<int32_t>(kb.object_base());
  ASSERT_NE(b.targets[at_object(1)], wrong);
  cell(1, wrong) = 9.0f;  // row 1: another token wins
  ASSERT_NE(b.targets[at_object(2)], wrong);
  cell(2, wrong) = 5.0f;  // row 2: a tie is wrong
  cell(3, b.targets[at_object(3)]) = std::numeric_limits<float>::quiet_NaN();  // row 3: NaN
  EXPECT_EQ(count_exact_matches(logits, b, V), 1);
  expect_error([&] { count_exact_matches(std::span(logits).first(10), b, V); },
               "accepted are exactly rows·vocab");
}

TEST(KnowledgeBase, CapacityArgument) {
  const KnowledgeBase kb = make_knowledge_base(small_config());
  EXPECT_DOUBLE_EQ(bits_of_knowledge(kb), 100 * std::log2(17.0));
  EXPECT_EQ(params_to_store(409.0), 205);  // ceil(409 / 2)
  EXPECT_EQ(params_to_store(400.0, 4.0), 100);
  EXPECT_EQ(capacity_statement(kb, 100),
            "100 facts × log2(17) = 409 bits; at 2 bits/parameter they need ≥ 205 parameters; "
            "the model has 100: it cannot hold them all");
  EXPECT_NE(capacity_statement(kb, 205).find("it may hold them all"), std::string::npos);
  expect_error([] { params_to_store(10.0, 0.0); }, "bits_per_param is 0");
}

TEST(KnowledgeBase, ImpossibleConfigsAreRefused) {
  auto with = [](auto change) {
    DataConfig c = small_config();
    change(c);
    return c;
  };
  expect_error([&] { make_knowledge_base(with([](DataConfig& c) { c.facts = 151; })); },
               "only 30 subjects × 5 relations = 150 distinct (subject, relation) pairs");
  expect_error([&] { make_knowledge_base(with([](DataConfig& c) { c.subjects = 101; })); },
               "accepted are subjects ≤ names²");
  expect_error([&] { make_knowledge_base(with([](DataConfig& c) { c.objects = 0; })); },
               "objects is 0: accepted are objects ≥ 1");
  expect_error([&] { make_knowledge_base(with([](DataConfig& c) { c.names = -1; })); },
               "names is -1");
  expect_error(
      [&] { make_knowledge_base(with([](DataConfig& c) { c.objects = int64_t{1} << 31; })); },
      "overflows int32 token ids");
  expect_error(
      [&] {
        make_knowledge_base(
            with([](DataConfig& c) { c.relations = c.objects = int64_t{1} << 30; }));
      },
      "overflows int32 token ids");
  const KnowledgeBase kb = make_knowledge_base(small_config());
  const std::vector<int64_t> bad = {0, 100};
  expect_error([&] { make_batch(kb, bad); }, "fact index 100 out of range [0, 100) at row 1");
  expect_error([&] { make_batch(kb, std::span(bad).first(1), 2); }, "accepted are seq ≥ 3");
  expect_error([&] { make_batch(kb, {}); }, "no fact indices");
  expect_error([] { epoch_order(0, 1, 0); }, "facts is 0");
}

}  // namespace
}  // namespace memlayers::harness
