// AMX bf16 matrix products (amx.h). Each AMX function carries its own target attribute, so this
// file builds with the project's flags and runs only where amx_unavailable() is "".
#include "common/amx.h"

#include <cstdint>
#include <string>

#include "common/error.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__)
#define MEMLAYERS_HAVE_AMX 1
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#else
#define MEMLAYERS_HAVE_AMX 0
#endif

namespace memlayers {

#if MEMLAYERS_HAVE_AMX
namespace {

constexpr long kArchReqXcompPerm = 0x1023;  // arch_prctl: ask for an extended state component
constexpr long kXfeatureXtiledata = 18;     // the tile data

// ldtilecfg's 64-byte operand, palette 1: per tile its rows and bytes per row; all eight tiles
// 16 rows × 64 bytes. A constant in memory: the intrinsic's asm reads it through a pointer the
// compiler does not follow, so a stack copy's field stores would be dropped as dead.
struct alignas(64) TileConfig {
  uint8_t palette, start_row;
  uint8_t reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};
constexpr TileConfig kTileConfig = {
    1, 0, {}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

std::string probe() {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("amx-tile") || !__builtin_cpu_supports("amx-bf16"))
    return "needs AMX-TILE and AMX-BF16 (Intel Sapphire Rapids or later); this CPU has none";
  // Linux hands out the 8 KiB of tile state only to a process that asks for it.
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0)
    return "the CPU has AMX but Linux refused the tile state (arch_prctl ARCH_REQ_XCOMP_PERM)";
  return {};
}

}  // namespace

const std::string& amx_unavailable() {
  static const std::string why = probe();
  return why;
}

namespace {

__attribute__((target("amx-tile"))) void load_tile_config() { _tile_loadconfig(&kTileConfig); }

__attribute__((target("amx-tile"))) void release_tiles() { _tile_release(); }

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
// The sanitizers do not see the tiles' loads and stores (asm): read each row's and panel's first
// and last element, and write each output row's, as plain C++, so that an overrun of a buffer (a
// row count or stride past its end) or a race on one is reported at this call.
void touch_spans(const uint16_t* a, int64_t lda, int64_t rows, const uint16_t* panels,
                 int64_t n_panels, int64_t depth, float* out, int64_t ld) {
  uint32_t sum = 0;
  const int64_t panel = kAmxKeys * depth;
  for (int64_t r = 0; r < rows; ++r) sum += a[r * lda] + a[r * lda + depth - 1];
  for (int64_t p = 0; p < n_panels; ++p) sum += panels[p * panel] + panels[(p + 1) * panel - 1];
  for (int64_t r = 0; r < rows; ++r) {
    out[r * ld] = static_cast<float>(sum & 1u);
    out[r * ld + n_panels * kAmxKeys - 1] = 0;
  }
}
// The same for amx_pack_panel's masked loads: each row's first and last element it reads, as
// volatile reads the compiler keeps.
void touch_rows(const uint16_t* rows, int64_t ld, int64_t keys, int64_t n) {
  const volatile uint16_t* v = rows;
  for (int64_t t = 0; n > 0 && t < keys; ++t) (void)(v[t * ld] + v[t * ld + n - 1]);
}
#else
void touch_spans(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, int64_t, float*,
                 int64_t) {}
void touch_rows(const uint16_t*, int64_t, int64_t, int64_t) {}
#endif

// GCC 12's AVX-512 intrinsics fill their unused operands from a self-initialised variable
// (_mm512_undefined_epi32), which -Wmaybe-uninitialized reports once inlined (GCC bug 105593).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// The 16 × 16 32-bit words of r transposed in place: word j of r[i] becomes word i of r[j].
__attribute__((target("avx512f"))) inline void transpose_words(__m512i (&r)[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {  // rows i, i + 1 interleaved a word at a time
    t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
  }
  // u[4g + c]: in each 128-bit lane L, word 4L + c of rows 4g .. 4g + 3
  for (int g = 0; g < 16; g += 4) {
    u[g] = _mm512_unpacklo_epi64(t[g], t[g + 2]);
    u[g + 1] = _mm512_unpackhi_epi64(t[g], t[g + 2]);
    u[g + 2] = _mm512_unpacklo_epi64(t[g + 1], t[g + 3]);
    u[g + 3] = _mm512_unpackhi_epi64(t[g + 1], t[g + 3]);
  }
  // word 4L + c of all 16 rows: lane L of u[c], u[4 + c], u[8 + c], u[12 + c]
  for (int c = 0; c < 4; ++c) {
    const __m512i even01 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88);  // lanes 0, 2 of each
    const __m512i odd01 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xDD);   // lanes 1, 3
    const __m512i even23 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
    const __m512i odd23 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xDD);
    r[c] = _mm512_shuffle_i32x4(even01, even23, 0x88);
    r[4 + c] = _mm512_shuffle_i32x4(odd01, odd23, 0x88);
    r[8 + c] = _mm512_shuffle_i32x4(even01, even23, 0xDD);
    r[12 + c] = _mm512_shuffle_i32x4(odd01, odd23, 0xDD);
  }
}

}  // namespace

// A k-step's 16 rows of a tile are 16 words each (elements [32·step, 32·step + 32), the ones past
// n masked to 0): transposed, they are the tile's 16 rows of 16 keys.
__attribute__((target("avx512f,avx512bw"))) void amx_pack_panel(const uint16_t* rows, int64_t ld,
                                                                int64_t keys, int64_t n,
                                                                int64_t depth, uint16_t* panel) {
  touch_rows(rows, ld, keys, n);
  __m512i r[16];
  for (int64_t e0 = 0; e0 < depth; e0 += kAmxDepth) {
    const int64_t left = n - e0;
    const __mmask32 mask = left >= 32  ? ~__mmask32{0}
                           : left <= 0 ? __mmask32{0}
                                       : (__mmask32{1} << left) - 1;
    for (int64_t tile = 0; tile < 2; ++tile) {
      for (int64_t c = 0; c < 16; ++c) {
        const int64_t t = tile * 16 + c;
        r[c] = t < keys && mask ? _mm512_maskz_loadu_epi16(mask, rows + t * ld + e0)
                                : _mm512_setzero_si512();
      }
      transpose_words(r);
      for (int64_t w = 0; w < 16; ++w, panel += 2 * 16) _mm512_storeu_si512(panel, r[w]);
    }
  }
}

#pragma GCC diagnostic pop

AmxTiles::AmxTiles() { load_tile_config(); }
AmxTiles::~AmxTiles() { release_tiles(); }

// Tiles: 0, 1 the two 16-row halves of 32 query rows (A); 2, 3 the panel's two 16-key B tiles;
// 4-7 the 32 × 32 fp32 scores. Four loads feed four tile products a k-step; the panel (2 KiB a
// k-step) stays in L1 while every row group passes over it.
__attribute__((target("amx-tile,amx-bf16"))) void amx_gemm_bf16(const uint16_t* a, int64_t lda,
                                                                int64_t rows,
                                                                const uint16_t* panels,
                                                                int64_t n_panels, int64_t depth,
                                                                float* out, int64_t ld) {
  touch_spans(a, lda, rows, panels, n_panels, depth, out, ld);
  const int64_t steps = depth / kAmxDepth, a_stride = lda * 2, c_stride = ld * 4;
  for (int64_t p = 0; p < n_panels; ++p) {
    const uint16_t* panel = panels + p * steps * 2 * 16 * kAmxDepth;
    for (int64_t g = 0; g < rows; g += kAmxRows) {
      _tile_zero(4);
      _tile_zero(5);
      _tile_zero(6);
      _tile_zero(7);
      const uint16_t* a0 = a + g * lda;
      const uint16_t* a1 = a0 + 16 * lda;
      for (int64_t s = 0; s < steps; ++s) {
        const uint16_t* b = panel + s * 2 * 16 * kAmxDepth;
        _tile_loadd(0, a0 + s * kAmxDepth, a_stride);
        _tile_loadd(1, a1 + s * kAmxDepth, a_stride);
        _tile_loadd(2, b, 64);
        _tile_loadd(3, b + 16 * kAmxDepth, 64);
        _tile_dpbf16ps(4, 0, 2);
        _tile_dpbf16ps(5, 0, 3);
        _tile_dpbf16ps(6, 1, 2);
        _tile_dpbf16ps(7, 1, 3);
      }
      float* c = out + g * ld + p * kAmxKeys;
      _tile_stored(4, c, c_stride);
      _tile_stored(5, c + 16, c_stride);
      _tile_stored(6, c + 16 * ld, c_stride);
      _tile_stored(7, c + 16 * ld + 16, c_stride);
    }
  }
}

#else  // no AMX on this platform or compiler

const std::string& amx_unavailable() {
  static const std::string why = "needs AMX-BF16 on x86-64 Linux; this build targets neither";
  return why;
}
AmxTiles::AmxTiles() = default;
AmxTiles::~AmxTiles() = default;
void amx_pack_panel(const uint16_t*, int64_t, int64_t, int64_t, int64_t, uint16_t*) {
  fail("amx_pack_panel: {}", amx_unavailable());
}
void amx_gemm_bf16(const uint16_t*, int64_t, int64_t, const uint16_t*, int64_t, int64_t, float*,
                   int64_t) {
  fail("amx_gemm_bf16: {}", amx_unavailable());
}

#endif

}  // namespace memlayers
