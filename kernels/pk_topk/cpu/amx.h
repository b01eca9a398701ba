// The AMX tile scoring of v3_amx_rescored: bf16 query rows against bf16 sub-key panels, fp32
// sums, on the matrix units of Intel Sapphire Rapids and later (AMX-TILE, AMX-BF16). Host only,
// x86-64 Linux; elsewhere amx_unavailable() says why not and nothing here runs.
#pragma once
#include <cstdint>
#include <string>

namespace memlayers::pk_topk::cpu {

// "" when this process can run AMX-BF16 tiles (the CPU has them and Linux granted the tile state
// on request, once per process), else why not.
const std::string& amx_unavailable();

inline constexpr int64_t kAmxRows = 32;   // query rows a pass: two A tiles of 16
inline constexpr int64_t kAmxKeys = 32;   // keys a panel: two B tiles of 16
inline constexpr int64_t kAmxDepth = 32;  // bf16 elements of a row a k-step (64 bytes)

// The tile state of the calling thread: configured on construction (eight tiles of 16 rows × 64
// bytes), released on destruction. amx_score needs one alive on its thread.
class AmxTiles {
 public:
  AmxTiles();
  ~AmxTiles();
  AmxTiles(const AmxTiles&) = delete;
  AmxTiles& operator=(const AmxTiles&) = delete;
};

// out[r·ld + j] = Σ_d a[r·lda + d] · key j's element d, in fp32, for rows r in [0, rows) and the
// keys of `panels` consecutive panels, j in [0, panels·kAmxKeys).
//   a:      bf16 bits, rows × depth (row stride lda elements, 64-byte aligned rows);
//   panels: bf16 bits, per panel and k-step two B tiles (keys 0-15, 16-31) of 16 pairs of
//           elements × 16 keys × 2 (AMX's VNNI layout), 2 KiB a k-step, depth / kAmxDepth k-steps;
//   rows a multiple of kAmxRows, depth of kAmxDepth; out 64-byte aligned, ld a multiple of 16.
void amx_score(const uint16_t* a, int64_t lda, int64_t rows, const uint16_t* panels,
               int64_t n_panels, int64_t depth, float* out, int64_t ld);

}  // namespace memlayers::pk_topk::cpu
