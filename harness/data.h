// The harness's synthetic knowledge base (harness/README.md, Data): F facts "subject relation →
// object" generated from a seed, their batches for the model, the epoch order, the exact-match
// measure and the capacity argument that sizes the task.
//
// Vocabulary layout (token ids):
//   [0, kSpecialTokens)                     special tokens: 0 = pad
//   [name_base, name_base + names)          name tokens; a subject is named by an ordered pair
//   [relation_base, + relations)            relation tokens, one per relation
//   [object_base, + objects)                object tokens, one per object
// A fact is the 4-token sequence [s1 s2 r o]: s1, s2 the subject's two name tokens, r the
// relation's token, o the object's token. The model reads [s1 s2 r] and is scored on predicting o
// after r; every (subject, relation) pair that is a fact has exactly one object.
//
// The generator (platform-independent: std::mt19937_64 is fully specified by the C++ standard,
// and only its raw 64-bit outputs are used, never a std:: distribution):
//   uniform_below(n): draw x; reject while x ≥ 2⁶⁴ − (2⁶⁴ mod n); return x mod n.
//   sample(k of n):   Floyd's algorithm (for j = n−k … n−1: t = uniform_below(j+1); take t, or j
//                     when t was taken), then sorted ascending.
//   One engine seeded with `seed` draws, in this order:
//   1. the subjects' names: sample(subjects of names²); subject i gets the i-th pair p as
//      (s1, s2) = (p / names, p % names), so names compose and no two subjects share a name;
//   2. the facts: sample(facts of subjects·relations); fact i gets the i-th pair q as
//      (subject, relation) = (q / relations, q % relations), so facts are distinct and ordered by
//      subject, then relation;
//   3. the objects: one uniform_below(objects) per fact, in fact order.
#pragma once
#include <array>
#include <cstdint>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "harness/model.h"

namespace memlayers::harness {

inline constexpr int32_t kPadToken = 0;
inline constexpr int64_t kSpecialTokens = 1;
inline constexpr int64_t kFactTokens = 4;  // [s1 s2 r o]

struct DataConfig {
  uint64_t seed = 1;
  int64_t names = 128;      // name tokens; up to names² subjects
  int64_t subjects = 4096;  // ≤ names²
  int64_t relations = 8;
  int64_t objects = 256;
  int64_t facts = 32768;  // ≤ subjects·relations
  // Throws memlayers::Error naming the first impossible field and what is accepted.
  void validate() const;
};

struct Fact {
  int32_t subject = 0, relation = 0, object = 0;  // indices, not token ids
};

struct KnowledgeBase {
  DataConfig config;
  std::vector<int32_t> subject_names;  // (subjects, 2): name indices of each subject, in [0, names)
  std::vector<Fact> facts;             // (facts), distinct (subject, relation), ascending

  // The vocabulary layout (see the header): the first token id of each range, and the size.
  int64_t name_base() const { return kSpecialTokens; }
  int64_t relation_base() const { return name_base() + config.names; }
  int64_t object_base() const { return relation_base() + config.relations; }
  int64_t vocab() const { return object_base() + config.objects; }

  // Fact i as its token ids [s1 s2 r o].
  std::array<int32_t, kFactTokens> tokens(int64_t i) const;
};

KnowledgeBase make_knowledge_base(const DataConfig& c);

// The generator's primitives (header comment), exposed for tests and for other seeded streams.
uint64_t uniform_below(std::mt19937_64& gen, uint64_t n);  // n ≥ 1

// A batch of facts for the model, in host memory: row b holds fact indices[b] as tokens
// [s1 s2 r pad …] and next-token targets [s2 r o pad …] over `seq` ≥ 3 positions, with loss
// weight 1 at position 2 (the one that predicts the object) and 0 elsewhere: the cross-entropy
// entry's weighted mean (harness/ops.h) is then the mean object loss of the batch.
struct FactBatch {
  std::vector<int32_t> tokens, targets;  // (batch, seq)
  std::vector<float> weights;            // (batch, seq)
  int64_t batch = 0, seq = 0;
  // A view for a host backend; a device backend copies the three arrays first.
  Batch view() const { return {tokens.data(), targets.data(), weights.data(), batch, seq}; }
};
inline constexpr int64_t kObjectPosition = 2;  // the position whose target is the object

FactBatch make_batch(const KnowledgeBase& kb, std::span<const int64_t> indices,
                     int64_t seq = kFactTokens - 1);

// The order of the facts in epoch `epoch`: a Fisher–Yates shuffle of [0, facts) (for i = n−1 … 1:
// swap(i, uniform_below(i+1))) by an mt19937_64 seeded with splitmix64(seed ⊕
// splitmix64(epoch)), so every (seed, epoch) has its own order, reproducible anywhere.
std::vector<int64_t> epoch_order(int64_t facts, uint64_t seed, int64_t epoch);
uint64_t splitmix64(uint64_t x);

// Exact match over a batch: the rows whose counted position (weight > 0) has its target as the
// strict argmax of the logits (host memory, (batch·seq, vocab); ties count as wrong, NaN too).
int64_t count_exact_matches(std::span<const float> logits, const FactBatch& b, int64_t vocab);

// ---- the capacity argument ----
// The facts' information: F·log2(objects) bits (each object is uniform and independent).
double bits_of_knowledge(const KnowledgeBase& kb);
// Parameters needed to store `bits` at `bits_per_param` (2: Allen-Zhu & Li, Physics of Language
// Models 3.3, knowledge capacity scaling laws), rounded up.
int64_t params_to_store(double bits, double bits_per_param = 2.0);
// One line stating the argument for a model of `params` parameters, e.g. "32768 facts × log2(256)
// = 262144 bits; at 2 bits/parameter they need ≥ 131072 parameters; the model has 90000: it
// cannot hold them all".
std::string capacity_statement(const KnowledgeBase& kb, int64_t params,
                               double bits_per_param = 2.0);

}  // namespace memlayers::harness
