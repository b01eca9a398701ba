// The synthetic knowledge base (harness/data.h): the documented generator, batches, epoch order,
// exact match and the capacity argument.
#include "harness/data.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <unordered_set>

#include <fmt/format.h>

#include "common/error.h"

namespace memlayers::harness {

namespace {

// k distinct values of [0, n), ascending (Floyd's algorithm; data.h documents the draws).
std::vector<int64_t> sample_sorted(std::mt19937_64& gen, int64_t k, int64_t n) {
  std::unordered_set<int64_t> taken;
  taken.reserve(static_cast<std::size_t>(k));
  std::vector<int64_t> out;
  out.reserve(static_cast<std::size_t>(k));
  for (int64_t j = n - k; j < n; ++j) {
    const auto t = static_cast<int64_t>(uniform_below(gen, static_cast<uint64_t>(j) + 1));
    const int64_t pick = taken.insert(t).second ? t : j;
    if (pick == j) taken.insert(j);
    out.push_back(pick);
  }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

// ---- config and generator ----

void DataConfig::validate() const {
  auto positive = [](int64_t v, const char* name) {
    MEMLAYERS_CHECK(v >= 1, "data config: {} is {}: accepted are {} ≥ 1", name, v, name);
  };
  positive(names, "names"), positive(subjects, "subjects"), positive(relations, "relations");
  positive(objects, "objects"), positive(facts, "facts");
  const int64_t max_tokens = std::numeric_limits<int32_t>::max();
  MEMLAYERS_CHECK(names <= max_tokens && relations <= max_tokens && objects <= max_tokens &&
                      kSpecialTokens + names + relations + objects <= max_tokens,
                  "data config: vocabulary of {} special + {} names + {} relations + {} objects "
                  "tokens overflows int32 token ids: accepted is a total ≤ {}",
                  kSpecialTokens, names, relations, objects, max_tokens);
  MEMLAYERS_CHECK(subjects <= names * names,
                  "data config: {} subjects but only {} names make {}² = {} distinct two-token "
                  "names: accepted are subjects ≤ names²",
                  subjects, names, names, names * names);
  MEMLAYERS_CHECK(subjects <= max_tokens,
                  "data config: {} subjects: accepted are subjects ≤ {} (int32 indices)", subjects,
                  max_tokens);
  MEMLAYERS_CHECK(facts <= subjects * relations,
                  "data config: {} facts but only {} subjects × {} relations = {} distinct "
                  "(subject, relation) pairs: accepted are facts ≤ subjects·relations",
                  facts, subjects, relations, subjects * relations);
}

uint64_t uniform_below(std::mt19937_64& gen, uint64_t n) {
  MEMLAYERS_CHECK(n >= 1, "uniform_below: n is 0: accepted are n ≥ 1");
  // 2⁶⁴ mod n, computed in 64 bits as (2⁶⁴ − n) mod n.
  const uint64_t rem = (0 - n) % n;
  const uint64_t limit = 0 - rem;  // 2⁶⁴ − rem; 0 stands for 2⁶⁴ (rem = 0: nothing rejected)
  for (;;) {
    const uint64_t x = gen();
    if (rem == 0 || x < limit) return x % n;
  }
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

KnowledgeBase make_knowledge_base(const DataConfig& c) {
  c.validate();
  KnowledgeBase kb;
  kb.config = c;
  std::mt19937_64 gen(c.seed);
  const std::vector<int64_t> names = sample_sorted(gen, c.subjects, c.names * c.names);
  kb.subject_names.reserve(names.size() * 2);
  for (int64_t p : names) {
    kb.subject_names.push_back(static_cast<int32_t>(p / c.names));
    kb.subject_names.push_back(static_cast<int32_t>(p % c.names));
  }
  const std::vector<int64_t> pairs = sample_sorted(gen, c.facts, c.subjects * c.relations);
  kb.facts.reserve(pairs.size());
  for (int64_t q : pairs)
    kb.facts.push_back(
        {static_cast<int32_t>(q / c.relations), static_cast<int32_t>(q % c.relations), 0});
  for (Fact& f : kb.facts)
    f.object = static_cast<int32_t>(uniform_below(gen, static_cast<uint64_t>(c.objects)));
  return kb;
}

std::array<int32_t, kFactTokens> KnowledgeBase::tokens(int64_t i) const {
  MEMLAYERS_CHECK(i >= 0 && i < static_cast<int64_t>(facts.size()),
                  "knowledge base: fact {} out of range [0, {})", i, facts.size());
  // cppcheck-suppress containerOutOfBounds ; the check above throws
  const Fact& f = facts[static_cast<std::size_t>(i)];
  return {static_cast<int32_t>(name_base() + subject_names[2 * std::size_t(f.subject)]),
          static_cast<int32_t>(name_base() + subject_names[2 * std::size_t(f.subject) + 1]),
          static_cast<int32_t>(relation_base() + f.relation),
          static_cast<int32_t>(object_base() + f.object)};
}

// ---- batches and epochs ----

FactBatch make_batch(const KnowledgeBase& kb, std::span<const int64_t> indices, int64_t seq) {
  MEMLAYERS_CHECK(!indices.empty(), "make_batch: no fact indices: accepted is a batch ≥ 1 fact");
  MEMLAYERS_CHECK(seq >= kFactTokens - 1,
                  "make_batch: seq {} is shorter than a fact's {} input tokens: accepted are seq "
                  "≥ {}",
                  seq, kFactTokens - 1, kFactTokens - 1);
  const int64_t n = static_cast<int64_t>(kb.facts.size());
  FactBatch b;
  b.batch = static_cast<int64_t>(indices.size());
  b.seq = seq;
  const auto cells = static_cast<std::size_t>(b.batch * seq);
  b.tokens.assign(cells, kPadToken);
  b.targets.assign(cells, kPadToken);
  b.weights.assign(cells, 0.0f);
  for (int64_t r = 0; r < b.batch; ++r) {
    const int64_t i = indices[static_cast<std::size_t>(r)];
    MEMLAYERS_CHECK(i >= 0 && i < n, "make_batch: fact index {} out of range [0, {}) at row {}", i,
                    n, r);
    const std::array<int32_t, kFactTokens> t = kb.tokens(i);
    const std::size_t row = static_cast<std::size_t>(r * seq);
    for (int64_t p = 0; p + 1 < kFactTokens; ++p) {
      b.tokens[row + p] = t[p];
      b.targets[row + p] = t[p + 1];
    }
    b.weights[row + kObjectPosition] = 1.0f;
  }
  return b;
}

std::vector<int64_t> epoch_order(int64_t facts, uint64_t seed, int64_t epoch) {
  MEMLAYERS_CHECK(facts >= 1, "epoch_order: facts is {}: accepted are facts ≥ 1", facts);
  MEMLAYERS_CHECK(epoch >= 0, "epoch_order: epoch is {}: accepted are epoch ≥ 0", epoch);
  std::vector<int64_t> order(static_cast<std::size_t>(facts));
  for (int64_t i = 0; i < facts; ++i) order[i] = i;
  std::mt19937_64 gen(splitmix64(seed ^ splitmix64(static_cast<uint64_t>(epoch))));
  for (int64_t i = facts - 1; i >= 1; --i)
    std::swap(order[i], order[uniform_below(gen, static_cast<uint64_t>(i) + 1)]);
  return order;
}

int64_t count_exact_matches(std::span<const float> logits, const FactBatch& b, int64_t vocab) {
  MEMLAYERS_CHECK(vocab >= 1, "count_exact_matches: vocab is {}: accepted are vocab ≥ 1", vocab);
  const int64_t rows = b.batch * b.seq;
  MEMLAYERS_CHECK(static_cast<int64_t>(logits.size()) == rows * vocab,
                  "count_exact_matches: {} logits for {} rows × vocab {}: accepted are exactly "
                  "rows·vocab = {}",
                  logits.size(), rows, vocab, rows * vocab);
  int64_t hits = 0;
  for (int64_t r = 0; r < rows; ++r) {
    if (!(b.weights[static_cast<std::size_t>(r)] > 0.0f)) continue;
    const int32_t t = b.targets[static_cast<std::size_t>(r)];
    MEMLAYERS_CHECK(t >= 0 && t < vocab,
                    "count_exact_matches: target {} out of range [0, {}) at row {}", t, vocab, r);
    const float* row = logits.data() + r * vocab;
    const float want = row[t];
    bool strict_max = !std::isnan(want);
    for (int64_t v = 0; v < vocab && strict_max; ++v)
      if (v != t && !(row[v] < want)) strict_max = false;
    hits += strict_max;
  }
  return hits;
}

// ---- the capacity argument ----

double bits_of_knowledge(const KnowledgeBase& kb) {
  return static_cast<double>(kb.facts.size()) * std::log2(static_cast<double>(kb.config.objects));
}

int64_t params_to_store(double bits, double bits_per_param) {
  MEMLAYERS_CHECK(bits >= 0 && std::isfinite(bits),
                  "params_to_store: bits is {}: accepted are finite bits ≥ 0", bits);
  MEMLAYERS_CHECK(bits_per_param > 0 && std::isfinite(bits_per_param),
                  "params_to_store: bits_per_param is {}: accepted are finite values > 0",
                  bits_per_param);
  return static_cast<int64_t>(std::ceil(bits / bits_per_param));
}

std::string capacity_statement(const KnowledgeBase& kb, int64_t params, double bits_per_param) {
  const double bits = bits_of_knowledge(kb);
  const int64_t need = params_to_store(bits, bits_per_param);
  return fmt::format(
      "{} facts × log2({}) = {:.0f} bits; at {:g} bits/parameter they need ≥ {} parameters; the "
      "model has {}: {}",
      kb.facts.size(), kb.config.objects, bits, bits_per_param, need, params,
      params < need ? "it cannot hold them all" : "it may hold them all");
}

}  // namespace memlayers::harness
