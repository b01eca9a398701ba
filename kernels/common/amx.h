// bf16 matrix products on the CPU's matrix units, AMX (Intel Sapphire Rapids and later: AMX-TILE,
// AMX-BF16): C = A·Bᵀ with fp32 sums, B packed in AMX's pair layout. The scoring of pk_topk's
// v3_amx_rescored and the host bf16 compute ceiling of bench_pk_topk. Host only, x86-64 Linux;
// elsewhere amx_unavailable() says why not and nothing here runs.
#pragma once
#include <cstdint>
#include <string>

namespace memlayers {

// "" when this process can run AMX-BF16 tiles (the CPU has them and Linux granted the tile state
// on request, once per process), else why not.
const std::string& amx_unavailable();

inline constexpr int64_t kAmxRows = 32;   // query rows a pass: two A tiles of 16
inline constexpr int64_t kAmxKeys = 32;   // B rows (keys) a panel: two B tiles of 16
inline constexpr int64_t kAmxDepth = 32;  // bf16 elements of a row a k-step (64 bytes)

// The tile state of the calling thread: configured on construction (eight tiles of 16 rows × 64
// bytes), released on destruction. amx_gemm_bf16 needs one alive on its thread.
class AmxTiles {
 public:
  AmxTiles();
  ~AmxTiles();
  AmxTiles(const AmxTiles&) = delete;
  AmxTiles& operator=(const AmxTiles&) = delete;
};

// One B panel from up to kAmxKeys rows: row t < keys is rows[t·ld, t·ld + n), and every other
// element of the panel is 0. AMX's layout: a pair of elements (2P, 2P + 1) of row t is one 32-bit
// word of a tile, k-step P / 16, tile t / 16, tile row P % 16, column t % 16 (an odd n's last pair
// padded with 0); the panel holds kAmxKeys × depth elements (depth a multiple of kAmxDepth, n <=
// depth). Each k-step's tile is a 16 × 16 transpose of 32-bit words, done in AVX-512 registers
// (every AMX CPU has AVX-512BW); rows are read only in [0, n). Runs only where amx_unavailable()
// is "", as amx_gemm_bf16.
void amx_pack_panel(const uint16_t* rows, int64_t ld, int64_t keys, int64_t n, int64_t depth,
                    uint16_t* panel);

// out[r·ld + j] = Σ_d a[r·lda + d] · (row j of B)[d], in fp32, for rows r in [0, rows) and the
// B rows of `n_panels` consecutive panels, j in [0, n_panels·kAmxKeys).
//   a:      bf16 bits, rows × depth (row stride lda elements);
//   panels: bf16 bits, per panel and k-step two B tiles (keys 0-15, 16-31) of 16 pairs of
//           elements × 16 keys × 2 (AMX's VNNI layout), 2 KiB a k-step, depth / kAmxDepth k-steps;
//   rows a multiple of kAmxRows, depth of kAmxDepth.
void amx_gemm_bf16(const uint16_t* a, int64_t lda, int64_t rows, const uint16_t* panels,
                   int64_t n_panels, int64_t depth, float* out, int64_t ld);

}  // namespace memlayers
