// Acting's output layer and draws as XLA FFI custom calls for the CPU (loaded by
// agents/native.py, which documents the Python side).
//
// agora_sample: logits float32 [..., W] whose first sum(sizes) columns are K consecutive
//   categoricals of sizes[j] choices, uniforms float32 [..., K] -> the inverse-CDF draw of
//   every categorical, int32 [..., K], and each row's joint log-probability [...].
// agora_act: features h [*g, n, H], output kernel w [*g, H, sum(sizes) + 1], bias b
//   [*g, sum(sizes) + 1], uniforms [*g, n, K] -> the same draws and log-probabilities of
//   the logits h . w + b, and the value (the last column); the logits of a tile of 6
//   rows are formed in cache (6x16 register tiles) and drawn at once, never written out.
// agora_stats, agora_stats_grad: the PPO loss's per-categorical log-probabilities and
//   entropies of the same logits, and their gradient for given cotangents.
// The loss itself is written once, in JAX (selfplay/ppo.py), on these per-sample terms.
//
// Each row is read once (max, exp, prefix sums, draws and logs in one pass); rows are
// split over XLA's intra-op thread pool and a row's result does not depend on the split.
// Built with -mavx2 -mfma; agents/native.py loads it only on CPUs that have both.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "native_pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

inline __m256 exp8(__m256 v) {
  // exp(v) for v in [-87, 0]: reduction by ln 2, degree-7 Taylor polynomial; rel. error ~2e-7.
  v = _mm256_max_ps(v, _mm256_set1_ps(-87.f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693145751953125f), v);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428606765330187045e-06f), r);
  __m256 p = _mm256_set1_ps(1.f / 5040.f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 720.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 120.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 24.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f / 6.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.f));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// e[i] = exp(x[i] - m) for i < c (x[i] <= m).
inline void exp_shift(const float* x, float m, float* e, int64_t c) {
  const __m256 mv = _mm256_set1_ps(m);
  int64_t i = 0;
  for (; i + 8 <= c; i += 8) _mm256_storeu_ps(e + i, exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv)));
  if (i < c) {
    float xt[8], et[8];
    for (int l = 0; l < 8; ++l) xt[l] = i + l < c ? x[i + l] : m;
    _mm256_storeu_ps(et, exp8(_mm256_sub_ps(_mm256_loadu_ps(xt), mv)));
    for (int64_t l = 0; i + l < c; ++l) e[i + l] = et[l];
  }
}

// log(s[i]) for normal positive s[i]; error ~1e-7 (atanh series). Vectorised by the compiler.
void log_many(const float* s, float* out, int64_t k) {
  for (int64_t i = 0; i < k; ++i) {
    int32_t bits;
    std::memcpy(&bits, &s[i], 4);
    int32_t ex = ((bits >> 23) & 0xff) - 127;
    int32_t mb = (bits & 0x7fffff) | 0x3f800000;
    float mant;
    std::memcpy(&mant, &mb, 4);
    const bool big = mant > 1.41421356f;
    mant = big ? mant * 0.5f : mant;
    ex = big ? ex + 1 : ex;
    const float f = mant - 1.f;
    const float z = f / (2.f + f);
    const float z2 = z * z;
    float p = 1.f / 11.f;
    p = p * z2 + 1.f / 9.f;
    p = p * z2 + 1.f / 7.f;
    p = p * z2 + 1.f / 5.f;
    p = p * z2 + 1.f / 3.f;
    p = p * z2 + 1.f;
    out[i] = static_cast<float>(ex) * 0.693147180559945f + 2.f * z * p;
  }
}

// (min, max) of x[0..c), c >= 1.
inline void min_max(const float* x, int64_t c, float* lo_out, float* hi_out) {
  float lo = x[0], hi = x[0];
  int64_t i = 0;
  if (c >= 8) {
    __m256 l = _mm256_loadu_ps(x), h = l;
    for (i = 8; i + 8 <= c; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      l = _mm256_min_ps(l, v);
      h = _mm256_max_ps(h, v);
    }
    float lt[8], ht[8];
    _mm256_storeu_ps(lt, l);
    _mm256_storeu_ps(ht, h);
    for (int q = 0; q < 8; ++q) {
      lo = std::min(lo, lt[q]);
      hi = std::max(hi, ht[q]);
    }
  }
  for (; i < c; ++i) {
    lo = std::min(lo, x[i]);
    hi = std::max(hi, x[i]);
  }
  *lo_out = lo;
  *hi_out = hi;
}

// Inclusive prefix sums of the 8 lanes of v.
inline __m256 prefix8(__m256 v) {
  v = _mm256_add_ps(v, _mm256_castsi256_ps(_mm256_slli_si256(_mm256_castps_si256(v), 4)));
  v = _mm256_add_ps(v, _mm256_castsi256_ps(_mm256_slli_si256(_mm256_castps_si256(v), 8)));
  const __m256 low_total = _mm256_shuffle_ps(v, v, _MM_SHUFFLE(3, 3, 3, 3));      // [l3 x4 | h3 x4]
  return _mm256_add_ps(v, _mm256_permute2f128_ps(low_total, low_total, 0x08));  // high lane += l3
}

// One categorical of c choices with unnormalised probabilities e[0..c) (readable up to the
// next multiple of 8): its CDF in cdf[], the total in *total, and the inverse-CDF draw at
// u, a = #{i : cdf_i <= u * total} clamped to c - 1, without branches on the data.
inline int64_t seg_draw(const float* e, int64_t c, float u, float* cdf, float* total) {
  __m256 run = _mm256_setzero_ps();
  for (int64_t i = 0; i < c; i += 8) {
    const __m256 v = _mm256_add_ps(prefix8(_mm256_loadu_ps(e + i)), run);
    _mm256_storeu_ps(cdf + i, v);
    run = _mm256_permute2f128_ps(v, v, 0x11);
    run = _mm256_shuffle_ps(run, run, _MM_SHUFFLE(3, 3, 3, 3));
  }
  const float s = cdf[c - 1];
  const __m256 t = _mm256_set1_ps(u * s);
  int64_t a = 0, i = 0;
  for (; i + 8 <= c; i += 8)
    a += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(cdf + i), t, _CMP_LE_OQ)));
  if (i < c) {
    const int tail = (1 << (c - i)) - 1;
    a += __builtin_popcount(_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(cdf + i), t, _CMP_LE_OQ)) & tail);
  }
  *total = s;
  return a < c - 1 ? a : c - 1;
}

// Scratch of one worker thread.
struct Scratch {
  std::vector<float> e, cdf, sums, logs, shifts, wsums, glp, gent;
  // e and cdf padded by 8: a categorical's last 8-lane load may run past the row.
  Scratch(int64_t need, int64_t k)
      : e(need + 8, 0.f), cdf(need + 8), sums(k), logs(k), shifts(k), wsums(k), glp(k), gent(k) {}
};

// One row: for each of the k categoricals (consecutive runs of sizes[j] logits of x), the
// draw a_j = min{a : p_0 + ... + p_a > u_j} (the inverse CDF at u_j); returns the row's
// joint log-probability sum_j log p_{a_j}.
float sample_row(const float* x, const float* ur, int32_t* ar, const int64_t* sizes, int64_t k, int64_t need,
                 Scratch& sc) {
  float* e = sc.e.data();
  float lo, hi;
  min_max(x, need, &lo, &hi);
  if (lo >= hi - 80.f) {
    // One shift for the whole row: every exp(x - hi) is a normal float in [e^-80, 1].
    exp_shift(x, hi, e, need);
    for (int64_t j = 0; j < k; ++j) sc.shifts[j] = hi;
  } else {
    // Rare: some logits far below the row's max; shift each categorical by its own max.
    int64_t off = 0;
    for (int64_t j = 0; j < k; ++j) {
      float l2, h2;
      min_max(x + off, sizes[j], &l2, &h2);
      exp_shift(x + off, h2, e + off, sizes[j]);
      sc.shifts[j] = h2;
      off += sizes[j];
    }
  }
  float picked = 0.f;
  int64_t off = 0;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t c = sizes[j];
    const int64_t a = seg_draw(e + off, c, ur[j], sc.cdf.data(), &sc.sums[j]);
    ar[j] = static_cast<int32_t>(a);
    picked += x[off + a] - sc.shifts[j];
    off += c;
  }
  log_many(sc.sums.data(), sc.logs.data(), k);
  float total = picked;
  for (int64_t j = 0; j < k; ++j) total -= sc.logs[j];
  return total;
}

// Runs body(item, scratch) for item in [0, items) over XLA's intra-op pool, each thread
// with its own Scratch (economy/native_pool.h).
template <typename Body>
void parallel_for(ffi::ThreadPool& pool, int64_t items, int64_t need, int64_t k, Body body) {
  agora::parallel_for(pool, items, [need, k] { return Scratch(need, k); }, body);
}

// Checks the categoricals' sizes against the uniforms; returns their total (or -1).
int64_t total_size(ffi::Span<const int64_t> sizes) {
  int64_t need = 0;
  for (auto c : sizes) {
    if (c < 1) return -1;
    need += c;
  }
  return need;
}

ffi::Error SampleImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> logits, ffi::Buffer<ffi::F32> u,
                      ffi::Span<const int64_t> sizes, ffi::ResultBuffer<ffi::S32> act,
                      ffi::ResultBuffer<ffi::F32> lp) {
  const auto ld = logits.dimensions();
  const auto ud = u.dimensions();
  if (ld.size() < 1 || ud.size() < 1) return ffi::Error::InvalidArgument("agora_sample: scalar input");
  const int64_t width = ld.back(), k = ud.back(), need = total_size(sizes);
  if (need < 0) return ffi::Error::InvalidArgument("agora_sample: a categorical with no choices");
  if (static_cast<int64_t>(sizes.size()) != k)
    return ffi::Error::InvalidArgument("agora_sample: uniforms' last axis differs from the number of categoricals");
  if (need > width) return ffi::Error::InvalidArgument("agora_sample: logits have fewer columns than the categoricals");
  if (ld.size() != ud.size()) return ffi::Error::InvalidArgument("agora_sample: logits and uniforms differ in rank");
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < ld.size(); ++i) {
    if (ld[i] != ud[i]) return ffi::Error::InvalidArgument("agora_sample: logits and uniforms differ in batch shape");
    rows *= ld[i];
  }
  const float* x = logits.typed_data();
  const float* uu = u.typed_data();
  int32_t* a = act->typed_data();
  float* l = lp->typed_data();
  const int64_t* sz = sizes.begin();
  const int64_t chunk = 512;  // rows per work item
  parallel_for(pool, (rows + chunk - 1) / chunk, need, k, [=](int64_t item, Scratch& sc) {
    const int64_t r1 = std::min(rows, (item + 1) * chunk);
    for (int64_t r = item * chunk; r < r1; ++r) l[r] = sample_row(x + r * width, uu + r * k, a + r * k, sz, k, need, sc);
  });
  return ffi::Error::Success();
}

// ---- the output layer and the draws in one pass -------------------------------------------

constexpr int64_t kTileRows = 6;   // rows of the register tile: 6 x 16 outputs in 12 ymm
constexpr int64_t kPanel = 16;     // output columns per packed panel
constexpr int64_t kBlockRows = 96;  // rows per work item

// out[r][0..cp) = bias + h[r] . W for kTileRows rows (kAcc: out[r] += h[r] . W), h's rows
// of length hdim (the inner dimension), W packed in panels [cp/16][hdim][16].
template <bool kAcc = false>
inline void tile_matmul(const float* h, int64_t hdim, const float* packed, const float* bias, int64_t cp,
                        float* out) {
  for (int64_t p = 0; p < cp / kPanel; ++p) {
    const float* w = packed + p * hdim * kPanel;
    float* o = out + p * kPanel;
    __m256 a00, a01, a10, a11, a20, a21, a30, a31, a40, a41, a50, a51;
    if (kAcc) {
      a00 = _mm256_loadu_ps(o); a01 = _mm256_loadu_ps(o + 8);
      a10 = _mm256_loadu_ps(o + cp); a11 = _mm256_loadu_ps(o + cp + 8);
      a20 = _mm256_loadu_ps(o + 2 * cp); a21 = _mm256_loadu_ps(o + 2 * cp + 8);
      a30 = _mm256_loadu_ps(o + 3 * cp); a31 = _mm256_loadu_ps(o + 3 * cp + 8);
      a40 = _mm256_loadu_ps(o + 4 * cp); a41 = _mm256_loadu_ps(o + 4 * cp + 8);
      a50 = _mm256_loadu_ps(o + 5 * cp); a51 = _mm256_loadu_ps(o + 5 * cp + 8);
    } else {
      const __m256 b0 = _mm256_loadu_ps(bias + p * kPanel), b1 = _mm256_loadu_ps(bias + p * kPanel + 8);
      a00 = b0; a01 = b1; a10 = b0; a11 = b1; a20 = b0; a21 = b1;
      a30 = b0; a31 = b1; a40 = b0; a41 = b1; a50 = b0; a51 = b1;
    }
    for (int64_t q = 0; q < hdim; ++q) {
      const __m256 w0 = _mm256_loadu_ps(w + q * kPanel), w1 = _mm256_loadu_ps(w + q * kPanel + 8);
      __m256 v = _mm256_broadcast_ss(h + q);
      a00 = _mm256_fmadd_ps(v, w0, a00); a01 = _mm256_fmadd_ps(v, w1, a01);
      v = _mm256_broadcast_ss(h + hdim + q);
      a10 = _mm256_fmadd_ps(v, w0, a10); a11 = _mm256_fmadd_ps(v, w1, a11);
      v = _mm256_broadcast_ss(h + 2 * hdim + q);
      a20 = _mm256_fmadd_ps(v, w0, a20); a21 = _mm256_fmadd_ps(v, w1, a21);
      v = _mm256_broadcast_ss(h + 3 * hdim + q);
      a30 = _mm256_fmadd_ps(v, w0, a30); a31 = _mm256_fmadd_ps(v, w1, a31);
      v = _mm256_broadcast_ss(h + 4 * hdim + q);
      a40 = _mm256_fmadd_ps(v, w0, a40); a41 = _mm256_fmadd_ps(v, w1, a41);
      v = _mm256_broadcast_ss(h + 5 * hdim + q);
      a50 = _mm256_fmadd_ps(v, w0, a50); a51 = _mm256_fmadd_ps(v, w1, a51);
    }
    _mm256_storeu_ps(o, a00); _mm256_storeu_ps(o + 8, a01); o += cp;
    _mm256_storeu_ps(o, a10); _mm256_storeu_ps(o + 8, a11); o += cp;
    _mm256_storeu_ps(o, a20); _mm256_storeu_ps(o + 8, a21); o += cp;
    _mm256_storeu_ps(o, a30); _mm256_storeu_ps(o + 8, a31); o += cp;
    _mm256_storeu_ps(o, a40); _mm256_storeu_ps(o + 8, a41); o += cp;
    _mm256_storeu_ps(o, a50); _mm256_storeu_ps(o + 8, a51);
  }
}

// Packs rows x cols of src (row stride ld) into panels [ceil(cols/16)][rows][16] of dst,
// zero-padding the last panel: the layout tile_matmul's W takes (rows: the inner dimension).
void pack_panels(const float* src, int64_t ld, int64_t rows, int64_t cols, float* dst) {
  const int64_t cp = (cols + kPanel - 1) / kPanel * kPanel;
  std::fill(dst, dst + cp * rows, 0.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      dst[(c / kPanel) * rows * kPanel + r * kPanel + c % kPanel] = src[r * ld + c];
}

// The output layer of a call: features h [*g, n, H], kernel w [*g, H, C], bias b [*g, C]
// with C = sum(sizes) + 1 (the categoricals' logits, then the value), every group's kernel
// packed into zero-padded panels [cp/16][H][16] and its bias padded to cp columns.
struct Layer {
  int64_t groups = 1, n = 0, hdim = 0, cols = 0, cp = 0, need = 0;
  size_t gr = 0;
  std::shared_ptr<std::vector<float>> packed, bias;
  const float* h = nullptr;
};

// Checks h, w, b (and each per-row array's shape [*g, n, last] given in rows) and packs w.
ffi::Error make_layer(const char* name, ffi::Buffer<ffi::F32>& h, ffi::Buffer<ffi::F32>& w, ffi::Buffer<ffi::F32>& b,
                      ffi::Span<const int64_t> sizes, std::initializer_list<std::pair<ffi::Span<const int64_t>, int64_t>> rows,
                      Layer* L) {
  auto bad = [name](const char* what) { return ffi::Error::InvalidArgument(std::string(name) + ": " + what); };
  const auto hd = h.dimensions(), wd = w.dimensions(), bd = b.dimensions();
  if (hd.size() < 2 || wd.size() != hd.size() || bd.size() + 1 != hd.size())
    return bad("expected h [*g, n, H], w [*g, H, C], b [*g, C]");
  L->gr = hd.size() - 2;
  for (size_t i = 0; i < L->gr; ++i) {
    if (wd[i] != hd[i] || bd[i] != hd[i]) return bad("h, w and b differ in their group axes");
    L->groups *= hd[i];
  }
  L->n = hd[L->gr];
  L->hdim = hd[L->gr + 1];
  L->cols = wd[L->gr + 1];
  L->need = total_size(sizes);
  if (L->need < 0) return bad("a categorical with no choices");
  if (wd[L->gr] != L->hdim) return bad("w's rows differ from h's features");
  if (bd[L->gr] != L->cols) return bad("b's length differs from w's columns");
  if (L->cols != L->need + 1) return bad("w must have sum(sizes) + 1 columns (logits, value)");
  for (const auto& [dims, last] : rows) {
    if (dims.size() != hd.size() && dims.size() + 1 != hd.size()) return bad("a per-row array has the wrong rank");
    for (size_t i = 0; i <= L->gr; ++i)
      if (dims[i] != hd[i]) return bad("a per-row array differs from h in its group or row axes");
    if (last >= 0 && (dims.size() != hd.size() || dims[L->gr + 1] != last))
      return bad("a per-row array's last axis differs from the number of categoricals");
  }
  L->cp = (L->cols + kPanel - 1) / kPanel * kPanel;
  L->packed = std::make_shared<std::vector<float>>(static_cast<size_t>(L->groups * L->cp * L->hdim), 0.f);
  L->bias = std::make_shared<std::vector<float>>(static_cast<size_t>(L->groups * L->cp), 0.f);
  const float* wp = w.typed_data();
  const float* bp = b.typed_data();
  for (int64_t g = 0; g < L->groups; ++g) {
    pack_panels(wp + g * L->hdim * L->cols, L->cols, L->hdim, L->cols, L->packed->data() + g * L->cp * L->hdim);
    std::memcpy(L->bias->data() + g * L->cp, bp + g * L->cols, L->cols * sizeof(float));
  }
  L->h = h.typed_data();
  return ffi::Error::Success();
}

// Runs row_fn(row, logits of the row) for every row of the layer, the logits formed a tile
// of kTileRows rows at a time in cache (h . w + b), blocks of rows split over the pool.
template <typename RowFn>
void for_each_row(ffi::ThreadPool& pool, const Layer& L, int64_t k, RowFn row_fn) {
  const int64_t blocks = (L.n + kBlockRows - 1) / kBlockRows;
  const Layer* lp = &L;
  parallel_for(pool, L.groups * blocks, L.need, k, [=](int64_t item, Scratch& sc) {
    const Layer& l = *lp;
    const int64_t g = item / blocks, r0 = (item % blocks) * kBlockRows, r1 = std::min(l.n, r0 + kBlockRows);
    const float* pg = l.packed->data() + g * l.cp * l.hdim;
    const float* bg = l.bias->data() + g * l.cp;
    std::vector<float> out(kTileRows * l.cp), pad;
    for (int64_t t = r0; t < r1; t += kTileRows) {
      const int64_t rows = std::min(kTileRows, r1 - t);
      const float* ht = l.h + (g * l.n + t) * l.hdim;
      if (rows < kTileRows) {  // the last tile: copy its rows into a zero-padded tile
        pad.assign(kTileRows * l.hdim, 0.f);
        std::memcpy(pad.data(), ht, rows * l.hdim * sizeof(float));
        ht = pad.data();
      }
      tile_matmul(ht, l.hdim, pg, bg, l.cp, out.data());
      for (int64_t r = 0; r < rows; ++r) row_fn(g * l.n + t + r, out.data() + r * l.cp, sc);
    }
  });
}

// features h [*g, n, H], kernel w [*g, H, C], bias b [*g, C], uniforms u [*g, n, K]:
// logits = h . w + b (C = sum(sizes) + 1: the categoricals' logits, then the value) are
// formed a tile of rows at a time in cache and drawn at once; they never reach memory.
ffi::Error ActImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                   ffi::Buffer<ffi::F32> u, ffi::Span<const int64_t> sizes, ffi::ResultBuffer<ffi::S32> act,
                   ffi::ResultBuffer<ffi::F32> lp, ffi::ResultBuffer<ffi::F32> value) {
  Layer L;
  const int64_t k = static_cast<int64_t>(sizes.size());
  if (auto e = make_layer("agora_act", h, w, b, sizes, {{u.dimensions(), k}}, &L); e.failure()) return e;
  const float* uu = u.typed_data();
  int32_t* a = act->typed_data();
  float* l = lp->typed_data();
  float* v = value->typed_data();
  const int64_t* sz = sizes.begin();
  const int64_t need = L.need;
  for_each_row(pool, L, k, [=](int64_t row, const float* x, Scratch& sc) {
    l[row] = sample_row(x, uu + row * k, a + row * k, sz, k, need, sc);
    v[row] = x[need];
  });
  return ffi::Error::Success();
}

// ---- the policy's loss terms: log-probabilities, entropies and their gradient ------------

// sum_i v[i] and sum_i v[i] * w[i] for i < c.
inline void seg_sums(const float* v, const float* w, int64_t c, float* sv, float* svw) {
  int64_t i = 0;
  float s = 0.f, t = 0.f;
  if (c >= 8) {
    __m256 a = _mm256_setzero_ps(), b = _mm256_setzero_ps();
    for (; i + 8 <= c; i += 8) {
      const __m256 x = _mm256_loadu_ps(v + i);
      a = _mm256_add_ps(a, x);
      b = _mm256_fmadd_ps(x, _mm256_loadu_ps(w + i), b);
    }
    float at[8], bt[8];
    _mm256_storeu_ps(at, a);
    _mm256_storeu_ps(bt, b);
    for (int q = 0; q < 8; ++q) {
      s += at[q];
      t += bt[q];
    }
  }
  for (; i < c; ++i) {
    s += v[i];
    t += v[i] * w[i];
  }
  *sv = s;
  *svw = t;
}

// For each categorical j of the row x (sizes[j] consecutive logits), with a shift m_j (the
// row's max, or the categorical's own where the row spans more than 80): e_i = exp(x_i -
// m_j) in sc.e, d_i = x_i - m_j in sc.cdf, s_j = sum_i e_i (sc.sums), t_j = sum_i e_i d_i
// (sc.wsums), log s_j (sc.logs), m_j (sc.shifts).
void row_sums(const float* x, const int64_t* sizes, int64_t k, int64_t need, Scratch& sc) {
  float* e = sc.e.data();
  float* d = sc.cdf.data();
  float lo, hi;
  min_max(x, need, &lo, &hi);
  if (lo >= hi - 80.f) {
    exp_shift(x, hi, e, need);
    for (int64_t j = 0; j < k; ++j) sc.shifts[j] = hi;
  } else {
    int64_t off = 0;
    for (int64_t j = 0; j < k; ++j) {
      float l2, h2;
      min_max(x + off, sizes[j], &l2, &h2);
      exp_shift(x + off, h2, e + off, sizes[j]);
      sc.shifts[j] = h2;
      off += sizes[j];
    }
  }
  int64_t off = 0;
  for (int64_t j = 0; j < k; ++j) {
    const int64_t c = sizes[j];
    const __m256 m = _mm256_set1_ps(sc.shifts[j]);
    int64_t i = 0;
    for (; i + 8 <= c; i += 8) _mm256_storeu_ps(d + off + i, _mm256_sub_ps(_mm256_loadu_ps(x + off + i), m));
    for (; i < c; ++i) d[off + i] = x[off + i] - sc.shifts[j];
    seg_sums(e + off, d + off, c, &sc.sums[j], &sc.wsums[j]);
    off += c;
  }
  log_many(sc.sums.data(), sc.logs.data(), k);
}

inline int64_t clamp_action(int32_t a, int64_t c) { return a < 0 ? 0 : (a >= c ? c - 1 : a); }

// h, w, b as agora_act, actions a [*g, n, K] -> per categorical log p(a_j) [*g, n, K] and
// entropy [*g, n, K], and the value [*g, n].
ffi::Error StatsImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                     ffi::Buffer<ffi::S32> act, ffi::Span<const int64_t> sizes, ffi::ResultBuffer<ffi::F32> lp,
                     ffi::ResultBuffer<ffi::F32> ent, ffi::ResultBuffer<ffi::F32> value) {
  Layer L;
  const int64_t k = static_cast<int64_t>(sizes.size());
  if (auto e = make_layer("agora_stats", h, w, b, sizes, {{act.dimensions(), k}}, &L); e.failure()) return e;
  const int32_t* a = act.typed_data();
  float* l = lp->typed_data();
  float* en = ent->typed_data();
  float* v = value->typed_data();
  const int64_t* sz = sizes.begin();
  const int64_t need = L.need;
  for_each_row(pool, L, k, [=](int64_t row, const float* x, Scratch& sc) {
    row_sums(x, sz, k, need, sc);
    const float* tp = sc.wsums.data();
    const float* d = sc.cdf.data();
    int64_t off = 0;
    for (int64_t j = 0; j < k; ++j) {
      const int64_t c = sz[j];
      l[row * k + j] = d[off + clamp_action(a[row * k + j], c)] - sc.logs[j];
      en[row * k + j] = sc.logs[j] - tp[j] / sc.sums[j];
      off += c;
    }
    v[row] = x[need];
  });
  return ffi::Error::Success();
}

// The gradient pass of agora_stats_grad: with the cotangents of
// sum_j (glp_j log p(a_j) + gent_j H_j) + gv * value given per row by
// cot(row, logits x, scratch) (called after row_sums; it fills sc.glp and sc.gent and
// returns gv), the gradient with respect to h, w and b, in one pass: each tile of rows'
// logits is formed in cache, its dz (for categorical j, dz_i = glp_j [i = a_j] - p_i
// (glp_j + gent_j (log p_i + H_j)), gv in the value column) computed there, dh = dz . w^T
// written out, and dz . h summed into dw and db block by block; dz never reaches memory.
// Every group's rows are split into a fixed number of slots (a function of the shapes
// alone), each summed in row order, and the slots are added in order, so the result does
// not depend on the threads.
template <typename CotFn>
void grad_pass(ffi::ThreadPool& pool, const Layer& L, const float* wp, const int32_t* a, const int64_t* sz, int64_t k,
               CotFn cot, float* dhp, float* dwo, float* dbo) {
  const int64_t n = L.n, hdim = L.hdim, cols = L.cols, cp = L.cp, need = L.need, groups = L.groups;
  const int64_t hp = (hdim + kPanel - 1) / kPanel * kPanel;             // dh's columns, padded
  const int64_t hr = (hdim + kTileRows - 1) / kTileRows * kTileRows;  // dw's rows, padded
  const int64_t blocks = (n + kBlockRows - 1) / kBlockRows;
  // Slots of at least 16 blocks, at most 8: a function of n alone, so a group sums the same
  // way vmapped or not (and few rows do not pay for many partial sums).
  const int64_t slots = std::max<int64_t>(1, std::min<int64_t>(blocks / 16, 8));
  // w^T of every group in panels [hp/16][cp][16] (inner dimension: the padded columns).
  auto packed_t = std::make_shared<std::vector<float>>(static_cast<size_t>(groups * hp * cp), 0.f);
  std::vector<float> wt(cp * hdim);
  for (int64_t g = 0; g < groups; ++g) {  // w^T zero-padded to cp rows, then packed
    std::fill(wt.begin(), wt.end(), 0.f);
    for (int64_t q = 0; q < hdim; ++q)
      for (int64_t c = 0; c < cols; ++c) wt[c * hdim + q] = wp[(g * hdim + q) * cols + c];
    pack_panels(wt.data(), hdim, cp, hdim, packed_t->data() + g * hp * cp);
  }
  // per (group, slot): dw rows [hr][cp] and db [cp]
  auto acc = std::make_shared<std::vector<float>>(static_cast<size_t>(groups * slots * (hr + 1) * cp), 0.f);
  auto zero = std::make_shared<std::vector<float>>(static_cast<size_t>(hp), 0.f);
  const Layer* lp = &L;
  parallel_for(pool, groups * slots, need, k, [=](int64_t item, Scratch& sc) {
    const Layer& l = *lp;
    const int64_t g = item / slots, slot = item % slots;
    const float* pg = l.packed->data() + g * cp * hdim;
    const float* bg = l.bias->data() + g * cp;
    const float* pt = packed_t->data() + g * hp * cp;
    float* dw_acc = acc->data() + item * (hr + 1) * cp;
    float* db_acc = dw_acc + hr * cp;
    std::vector<float> logits(kTileRows * cp), dz(kTileRows * cp, 0.f), out(kTileRows * hp);
    std::vector<float> dzp(kBlockRows * cp), ht(hr * kBlockRows), pad;
    const float* tp = sc.wsums.data();
    for (int64_t blk = slot; blk < blocks; blk += slots) {
      const int64_t r0 = blk * kBlockRows, r1 = std::min(n, r0 + kBlockRows), nb = r1 - r0;
      std::fill(dzp.begin(), dzp.end(), 0.f);
      for (int64_t t0 = r0; t0 < r1; t0 += kTileRows) {
        const int64_t rows = std::min(kTileRows, r1 - t0);
        const float* htile = l.h + (g * n + t0) * hdim;
        if (rows < kTileRows) {
          pad.assign(kTileRows * hdim, 0.f);
          std::memcpy(pad.data(), htile, rows * hdim * sizeof(float));
          htile = pad.data();
          std::fill(dz.begin(), dz.end(), 0.f);
        }
        tile_matmul(htile, hdim, pg, bg, cp, logits.data());
        for (int64_t r = 0; r < rows; ++r) {
          const int64_t row = g * n + t0 + r;
          const float* x = logits.data() + r * cp;
          float* dr = dz.data() + r * cp;
          row_sums(x, sz, k, need, sc);
          const float gvr = cot(row, x, sc);
          const float* e = sc.e.data();
          const float* d = sc.cdf.data();
          int64_t off = 0;
          for (int64_t j = 0; j < k; ++j) {
            const int64_t c = sz[j];
            const float inv = 1.f / sc.sums[j];
            const float g1 = sc.glp[j], g2 = sc.gent[j];
            // log p_i + H_j = d_i - ls + (ls - t_j / s): dz_i = -e_i / s (c0 + g2 d_i)
            const float c0 = g1 - g2 * tp[j] * inv;
            const __m256 vc0 = _mm256_set1_ps(c0), vg2 = _mm256_set1_ps(g2), vinv = _mm256_set1_ps(-inv);
            int64_t i = 0;
            for (; i + 8 <= c; i += 8) {
              const __m256 q = _mm256_fmadd_ps(vg2, _mm256_loadu_ps(d + off + i), vc0);
              _mm256_storeu_ps(dr + off + i, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(e + off + i), vinv), q));
            }
            for (; i < c; ++i) dr[off + i] = -e[off + i] * inv * (c0 + g2 * d[off + i]);
            dr[off + clamp_action(a[row * k + j], c)] += g1;
            off += c;
          }
          dr[need] = gvr;
          // db, and the block's dz in panels [cp/16][kBlockRows][16] for dw (dr is zero past cols)
          const int64_t rb = t0 - r0 + r;
          for (int64_t c = 0; c < cp; c += kPanel) {
            const __m256 v0 = _mm256_loadu_ps(dr + c), v1 = _mm256_loadu_ps(dr + c + 8);
            _mm256_storeu_ps(db_acc + c, _mm256_add_ps(_mm256_loadu_ps(db_acc + c), v0));
            _mm256_storeu_ps(db_acc + c + 8, _mm256_add_ps(_mm256_loadu_ps(db_acc + c + 8), v1));
            float* dst = dzp.data() + (c / kPanel) * kBlockRows * kPanel + rb * kPanel;
            _mm256_storeu_ps(dst, v0);
            _mm256_storeu_ps(dst + 8, v1);
          }
        }
        tile_matmul(dz.data(), cp, pt, zero->data(), hp, out.data());  // dh = dz . w^T
        for (int64_t r = 0; r < rows; ++r)
          std::memcpy(dhp + (g * n + t0 + r) * hdim, out.data() + r * hp, hdim * sizeof(float));
      }
      // dw += h_block^T . dz_block: h^T's rows (features) kTileRows at a time, inner: the block's rows
      std::fill(ht.begin(), ht.end(), 0.f);
      for (int64_t r = 0; r < nb; ++r)
        for (int64_t q = 0; q < hdim; ++q) ht[q * kBlockRows + r] = l.h[(g * n + r0 + r) * hdim + q];
      for (int64_t q = 0; q < hr; q += kTileRows)
        tile_matmul<true>(ht.data() + q * kBlockRows, kBlockRows, dzp.data(), nullptr, cp, dw_acc + q * cp);
    }
  });
  for (int64_t g = 0; g < groups; ++g) {
    for (int64_t q = 0; q < hdim; ++q)
      for (int64_t c = 0; c < cols; ++c) {
        float s = 0.f;
        for (int64_t slot = 0; slot < slots; ++slot) s += (*acc)[((g * slots + slot) * (hr + 1) + q) * cp + c];
        dwo[(g * hdim + q) * cols + c] = s;
      }
    for (int64_t c = 0; c < cols; ++c) {
      float s = 0.f;
      for (int64_t slot = 0; slot < slots; ++slot) s += (*acc)[((g * slots + slot) * (hr + 1) + hr) * cp + c];
      dbo[g * cols + c] = s;
    }
  }
}

// The gradient of sum_j (glp_j log p(a_j) + gent_j H_j) + gv * value (of agora_stats) with
// respect to h, w and b (grad_pass, the cotangents read from glp, gent and gv).
ffi::Error StatsGradImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> h, ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> b,
                         ffi::Buffer<ffi::S32> act, ffi::Buffer<ffi::F32> glp, ffi::Buffer<ffi::F32> gent,
                         ffi::Buffer<ffi::F32> gv, ffi::Span<const int64_t> sizes, ffi::ResultBuffer<ffi::F32> dh,
                         ffi::ResultBuffer<ffi::F32> dw, ffi::ResultBuffer<ffi::F32> db) {
  Layer L;
  const int64_t k = static_cast<int64_t>(sizes.size());
  if (auto e = make_layer("agora_stats_grad", h, w, b, sizes,
                          {{act.dimensions(), k}, {glp.dimensions(), k}, {gent.dimensions(), k}, {gv.dimensions(), -1}}, &L);
      e.failure())
    return e;
  const float* gl = glp.typed_data();
  const float* ge = gent.typed_data();
  const float* gvv = gv.typed_data();
  auto cot = [=](int64_t row, const float*, Scratch& sc) {
    std::memcpy(sc.glp.data(), gl + row * k, k * sizeof(float));
    std::memcpy(sc.gent.data(), ge + row * k, k * sizeof(float));
    return gvv[row];
  };
  grad_pass(pool, L, w.typed_data(), act.typed_data(), sizes.begin(), k, cot, dh->typed_data(), dw->typed_data(),
            db->typed_data());
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AgoraSample, SampleImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("sizes")
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AgoraStats, StatsImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Attr<ffi::Span<const int64_t>>("sizes")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AgoraStatsGrad, StatsGradImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("sizes")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(AgoraAct, ActImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<ffi::Span<const int64_t>>("sizes")
                                  .Ret<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
