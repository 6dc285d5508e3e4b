// The step's orders, call auctions, settlement and consumption as one XLA FFI custom call for the CPU
// (loaded by economy/native.py, which documents the Python side).
//
// agora_market: per market, the same integers as economy/env.py's XLA path (orders
// clipped to cash and holdings, economy/market.py's clear, then goods and money
// settled), in three passes over the market's [B, G] orders, which stay in cache:
//   1. clip each order (the same float32 operations as the XLA path, so the same
//      quantities) and histogram the book per good and tick;
//   2. per good, the clearing tick, the volume and the marginal quantities to fill, then
//      the marginal orders' totals and the lottery's start units;
//   3. each agent's fills (full above/below the clearing tick, the circular window of the
//      unit lottery at it), its money after trade and its sales proceeds, then its
//      consumption (economy/utility.py consume: eaten and spoiled units by stochastic
//      rounding with economy/rng.py's counter-based uniforms, the same integer hash) and
//      its goods after it; the market's sums of what was eaten and spoiled (the ledger's
//      terms) as they pass.
// Markets are split over XLA's intra-op thread pool; a market's result does not depend on
// the split. XLA computes the same fills in several fusions, some of them recomputed in
// each output that reads them; here each is computed once.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "native_pool.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int32_t kBuy = 0, kSell = 2;

// Integer sums wrap like XLA's int32 (two's complement), without C++'s signed-overflow UB.
inline int32_t wrap_add(int32_t a, int32_t b) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) + static_cast<uint32_t>(b));
}
inline int32_t wrap_mul(int32_t a, int32_t b) {
  return static_cast<int32_t>(static_cast<uint32_t>(a) * static_cast<uint32_t>(b));
}

// The first n lanes (all for n >= 8) as a mask.
inline __m256i valid_lanes(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(std::min<int64_t>(n, 8))),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
// Loads 8 lanes; where the row may end the array (``tail``) only the valid ones (others
// 0), else whatever follows (masked out by the caller; a store's lanes past the row are
// written over by the next row's). Masked loads and stores are slow on some CPUs
// (microcoded stores on AMD's), so only the rows whose 8 lanes would pass the market's end
// use them (its last row where G >= 4).
inline __m256i load(const int32_t* p, __m256i valid, bool tail) {
  return tail ? _mm256_maskload_epi32(p, valid) : _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
inline void store(int32_t* p, __m256i valid, __m256i v, bool tail) {
  if (tail) _mm256_maskstore_epi32(p, valid, v);
  else _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v);
}
// 8 lanes of a per-good array (padded with 8 zeros past its G goods).
inline __m256i load_good(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline void store_good(int32_t* p, __m256i v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
inline int32_t hsum(__m256i v) {
  __m128i x = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0x4e));
  x = _mm_add_epi32(x, _mm_shuffle_epi32(x, 0xb1));
  return _mm_cvtsi128_si32(x);
}
// market.py ration, per lane: the units of [lo, lo + n) inside the circular window [s, s + r)
// of total units.
inline __m256i window(__m256i lo, __m256i n, __m256i s, __m256i r, __m256i total) {
  const __m256i hi = _mm256_add_epi32(lo, n), end = _mm256_add_epi32(s, r), zero = _mm256_setzero_si256();
  const __m256i inside = _mm256_max_epi32(_mm256_sub_epi32(_mm256_min_epi32(hi, end), _mm256_max_epi32(lo, s)), zero);
  const __m256i wrapped = _mm256_max_epi32(_mm256_sub_epi32(_mm256_min_epi32(hi, _mm256_sub_epi32(end, total)), lo), zero);
  return _mm256_add_epi32(inside, wrapped);
}
// economy/rng.py _mix, per lane.
inline __m256i mix(__m256i x) {
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(0x7FEB352D));
  x = _mm256_xor_si256(x, _mm256_srli_epi32(x, 15));
  x = _mm256_mullo_epi32(x, _mm256_set1_epi32(static_cast<int32_t>(0x846CA68Bu)));
  return _mm256_xor_si256(x, _mm256_srli_epi32(x, 16));
}
// economy/rng.py stochastic_round: min(floor(x + u), ceil(x)), the same float32 operations.
inline __m256i stochastic_round(__m256 x, __m256 u) {
  return _mm256_cvttps_epi32(_mm256_min_ps(_mm256_floor_ps(_mm256_add_ps(x, u)), _mm256_ceil_ps(x)));
}
// market.py lottery_start: the same float32 operations.
inline int32_t lottery_start(float u, int32_t total) {
  const int32_t s = static_cast<int32_t>(std::floor(u * static_cast<float>(total)));
  return std::min(std::max(s, 0), std::max(total - 1, 0));
}

// Scratch of one worker thread: the clipped orders (8 entries of padding), the book, and
// per-good arrays (ctick, buy_to, sell_to, buy_tot, sell_tot, buy_start, sell_start,
// price, traded, buy_before, sell_before), each G + 8 long, zero past G.
struct MarketScratch {
  static constexpr int kPerGood = 13;
  std::vector<int32_t> q, bids, asks, demand, supply, goods;
  std::vector<float> rates;
  MarketScratch(int64_t bg, int64_t g, int64_t l)
      : q(bg + 8), bids(g * l), asks(g * l), demand(l), supply(l), goods(kPerGood * (g + 8)), rates(2 * (g + 8)) {}
};

// One market's arrays: orders [M, B, G] and so on, flattened; see MarketImpl.
struct Market {
  int64_t B, G, L;
  int32_t hold_max;
  const int32_t *side, *qty, *tick, *held, *money, *grid;  // side, quantity level and tick: actions, unclipped
  const int32_t* levels;  // units wanted at each quantity level
  int32_t n_levels;
  const float* lottery;
  const uint32_t* counter;  // [M, 4]: the step's two seeds, the market's first counter, real goods
  const float* rates;       // [M, 2, G]: each good's share eaten, then its perish rate
  int32_t *goods_out, *eaten_out, *eaten_sum_out, *consumed_out, *money_out, *proceeds_out, *price_out, *volume_out;
};

// Market m: the three passes of the header comment.
void clear_market(const Market& k, int64_t m, MarketScratch& sc) {
  const int64_t B = k.B, G = k.G, L = k.L, last_chunk = (G - 1) / 8 * 8;
  const int32_t hold_max = k.hold_max, centre = static_cast<int32_t>(L / 2);
  // Inputs, outputs and scratch never overlap (XLA's buffers; the thread's own scratch).
  const int32_t *__restrict side = k.side, *__restrict qty = k.qty, *__restrict tick = k.tick;
  const int32_t *__restrict held = k.held, *__restrict money = k.money, *__restrict grid = k.grid;
  const float* __restrict lottery = k.lottery;
  int32_t *__restrict goods_out = k.goods_out, *__restrict money_out = k.money_out;
  int32_t *__restrict eaten_out = k.eaten_out;
  int32_t *__restrict proceeds_out = k.proceeds_out, *__restrict price_out = k.price_out;
  int32_t *__restrict volume_out = k.volume_out;
  const int64_t o = m * B * G;
  const int32_t* sd = side + o;
  const int32_t* qt = qty + o;
  const int32_t* tk = tick + o;
  const int32_t* hd = held + o;
  const int32_t* gr = grid + m * G * L;
  int32_t* __restrict q = sc.q.data();
  int32_t* __restrict bids = sc.bids.data();
  int32_t* __restrict asks = sc.asks.data();
  std::fill(sc.bids.begin(), sc.bids.end(), 0);
  std::fill(sc.asks.begin(), sc.asks.end(), 0);

  // 1. Orders clipped to what each agent owns and can pay (env.py step 2), and the book.
  // An agent's goods are one row of lanes (8 at a time), so no branch depends on the data.
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i zero = _mm256_setzero_si256(), one = _mm256_set1_epi32(1);
  const __m256i vbuy = _mm256_set1_epi32(kBuy), vsell = _mm256_set1_epi32(kSell);
  const __m256i vhold = _mm256_set1_epi32(hold_max);
  // The actions clipped into range as env.py's reference does (jnp.clip), and a quantity
  // level's units looked up, as each is loaded.
  const __m256i side_hi = _mm256_set1_epi32(2), tick_hi = _mm256_set1_epi32(static_cast<int32_t>(L - 1));
  const __m256i level_hi = _mm256_set1_epi32(k.n_levels - 1);
  const auto clip = [zero](__m256i x, __m256i hi) { return _mm256_min_epi32(_mm256_max_epi32(x, zero), hi); };
  const int32_t* levels = k.levels;
  alignas(32) int32_t out_l[8], tick_l[8], buy_l[8], sell_l[8];
  for (int64_t b = 0; b < B; ++b) {
    const int64_t r = b * G;
    const bool tail = b * G + last_chunk + 8 > B * G;  // rows whose 8 lanes would pass the market's end
    int32_t n_buy = 0;
    for (int64_t g0 = 0; g0 < G; g0 += 8) {
      const __m256i valid = valid_lanes(G - g0);
      const __m256i is_buy = _mm256_and_si256(valid, _mm256_cmpeq_epi32(clip(load(sd + r + g0, valid, tail), side_hi), vbuy));
      n_buy += __builtin_popcount(_mm256_movemask_ps(_mm256_castsi256_ps(is_buy)));
    }
    const int32_t cash = money[m * B + b];
    const __m256 fcash = _mm256_set1_ps(static_cast<float>(cash));
    const __m256i vcash = _mm256_set1_epi32(cash), share = _mm256_set1_epi32(std::max(n_buy, 1));
    for (int64_t g0 = 0; g0 < G; g0 += 8) {
      const int64_t n = std::min<int64_t>(8, G - g0);
      const __m256i valid = valid_lanes(n);
      const __m256i s = clip(load(sd + r + g0, valid, tail), side_hi);
      const __m256i want = _mm256_i32gather_epi32(levels, clip(load(qt + r + g0, valid, tail), level_hi), 4);
      const __m256i t = clip(load(tk + r + g0, valid, tail), tick_hi), h = load(hd + r + g0, valid, tail);
      const __m256i is_buy = _mm256_and_si256(valid, _mm256_cmpeq_epi32(s, vbuy));
      const __m256i is_sell = _mm256_and_si256(valid, _mm256_cmpeq_epi32(s, vsell));
      // limit = grid[g, t]; cost = limit * n_buy; the largest v <= want with v * cost <= cash.
      const __m256i idx = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_add_epi32(lane, _mm256_set1_epi32(g0)),
                                                              _mm256_set1_epi32(L)), t);
      const __m256i limit = _mm256_mask_i32gather_epi32(one, gr, idx, is_buy, 4);
      const __m256i cost = _mm256_mullo_epi32(limit, share);
      const __m256 afford = _mm256_floor_ps(_mm256_div_ps(fcash, _mm256_cvtepi32_ps(cost)));
      __m256i v = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(afford, _mm256_setzero_ps()),
                                                    _mm256_cvtepi32_ps(want)));
      v = _mm256_add_epi32(v, _mm256_cmpgt_epi32(_mm256_mullo_epi32(v, cost), vcash));  // -1 where v * cost > cash
      const __m256i up = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_mullo_epi32(_mm256_add_epi32(v, one), cost), vcash),
                                             _mm256_cmpgt_epi32(want, v));
      v = _mm256_sub_epi32(v, up);  // +1 where (v + 1) * cost <= cash and v < want
      const __m256i buy_q = _mm256_min_epi32(v, _mm256_sub_epi32(vhold, h)), sell_q = _mm256_min_epi32(want, h);
      const __m256i out = _mm256_or_si256(_mm256_and_si256(is_buy, buy_q), _mm256_and_si256(is_sell, sell_q));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + r + g0), out);  // q has 8 entries of padding
      _mm256_store_si256(reinterpret_cast<__m256i*>(out_l), out);
      _mm256_store_si256(reinterpret_cast<__m256i*>(tick_l), t);
      _mm256_store_si256(reinterpret_cast<__m256i*>(buy_l), is_buy);
      _mm256_store_si256(reinterpret_cast<__m256i*>(sell_l), is_sell);
      for (int64_t j = 0; j < n; ++j) {  // the book: a scatter, one add per side
        const int64_t at = (g0 + j) * L + tick_l[j];
        bids[at] = wrap_add(bids[at], out_l[j] & buy_l[j]);
        asks[at] = wrap_add(asks[at], out_l[j] & sell_l[j]);
      }
    }
  }

  // 2. Each good's clearing tick (economy/market.py clearing_tick) and lottery starts.
  // Per-good arrays, zero past G (so the lanes past a row's goods fill nothing).
  std::fill(sc.goods.begin(), sc.goods.end(), 0);
  int32_t* per_good[MarketScratch::kPerGood];
  for (int i = 0; i < MarketScratch::kPerGood; ++i) per_good[i] = sc.goods.data() + i * (G + 8);
  int32_t *__restrict ctick = per_good[0], *__restrict buy_to = per_good[1], *__restrict sell_to = per_good[2];
  int32_t *__restrict buy_tot = per_good[3], *__restrict sell_tot = per_good[4], *__restrict buy_start = per_good[5];
  int32_t *__restrict sell_start = per_good[6], *__restrict price = per_good[7], *__restrict traded = per_good[8];
  int32_t *__restrict buy_before = per_good[9], *__restrict sell_before = per_good[10];
  int32_t *__restrict eaten_sum = per_good[11], *__restrict consumed = per_good[12];  // the market's sums
  const float* lot = lottery + m * G * 2;
  for (int64_t g = 0; g < G; ++g) {
    const int32_t* bd = bids + g * L;
    const int32_t* as = asks + g * L;
    // demand D(l) = sum_{t >= l} bids, supply S(l) = sum_{t <= l} asks.
    int32_t* demand = sc.demand.data();
    int32_t* supply = sc.supply.data();
    int32_t acc = 0;
    for (int64_t l = L - 1; l >= 0; --l) demand[l] = acc = wrap_add(acc, bd[l]);
    acc = 0;
    for (int64_t l = 0; l < L; ++l) supply[l] = acc = wrap_add(acc, as[l]);
    int32_t vmax = std::min(demand[0], supply[0]);
    for (int64_t l = 1; l < L; ++l) vmax = std::max(vmax, std::min(demand[l], supply[l]));
    int32_t best = 0, best_d = 4 * static_cast<int32_t>(L);
    for (int64_t l = 0; l < L; ++l) {
      const int32_t above = l + 1 < L ? demand[l + 1] : 0, below = l > 0 ? supply[l - 1] : 0;
      const bool valid = std::min(demand[l], supply[l]) == vmax && above <= vmax && below <= vmax;
      const int32_t lt = static_cast<int32_t>(l);
      const int32_t dist = valid ? 2 * std::abs(lt - centre) + (lt > centre) : 4 * static_cast<int32_t>(L);
      if (dist < best_d) best_d = dist, best = lt;
    }
    const bool is_traded = vmax > 0;
    const int32_t t = is_traded ? best : centre;
    ctick[g] = t;
    traded[g] = is_traded ? -1 : 0;
    buy_to[g] = is_traded ? vmax - (t + 1 < L ? demand[t + 1] : 0) : 0;
    sell_to[g] = is_traded ? vmax - (t > 0 ? supply[t - 1] : 0) : 0;
    // The marginal orders' totals: the book at the clearing tick (every order's quantity is
    // >= 0, as money >= 0 and holdings lie in [0, max_holding]), none where nothing trades.
    buy_tot[g] = is_traded ? bd[t] : 0;
    sell_tot[g] = is_traded ? as[t] : 0;
    buy_start[g] = lottery_start(lot[2 * g], buy_tot[g]);
    sell_start[g] = lottery_start(lot[2 * g + 1], sell_tot[g]);
    price[g] = gr[g * L + t];
    price_out[m * G + g] = price[g];
    volume_out[m * G + g] = vmax;
  }

  // 3. Fills (market.py ration: the circular window [start, start + to_fill) of the
  // marginal units laid end to end in agent order), settlement and consumption, a row of
  // goods at a time. Consumption's uniforms: bits = mix(mix(counter * golden ^ seed0) +
  // seed1) at counter = agent * real goods + good (rng.py bits; uniform_pair's high and
  // low 16 bits, each centred in its cell).
  const uint32_t* cm = k.counter + m * 4;
  const __m256i seed0 = _mm256_set1_epi32(static_cast<int32_t>(cm[0])), seed1 = _mm256_set1_epi32(static_cast<int32_t>(cm[1]));
  const __m256i golden = _mm256_set1_epi32(static_cast<int32_t>(0x9E3779B9u)), low16 = _mm256_set1_epi32(0xFFFF);
  const __m256 scale = _mm256_set1_ps(1.f / 65536.f), half = _mm256_set1_ps(1.f / 131072.f);
  const float* eat_rate = k.rates + m * 2 * G;
  const float* perish_rate = eat_rate + G;
  float* rate_pad = reinterpret_cast<float*>(sc.rates.data());  // 2 x (G + 8), zero past G
  std::fill(sc.rates.begin(), sc.rates.end(), 0);
  std::copy(eat_rate, eat_rate + G, rate_pad);
  std::copy(perish_rate, perish_rate + G, rate_pad + G + 8);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t r = b * G;
    const bool tail = b * G + last_chunk + 8 > B * G;  // rows whose 8 lanes would pass the market's end
    const uint32_t row_counter = cm[2] + static_cast<uint32_t>(b) * cm[3];
    __m256i dcash = zero, dproc = zero;
    for (int64_t g0 = 0; g0 < G; g0 += 8) {
      const __m256i valid = valid_lanes(G - g0);
      const __m256i s = clip(load(sd + r + g0, valid, tail), side_hi), t = clip(load(tk + r + g0, valid, tail), tick_hi);
      const __m256i ct = load_good(ctick + g0);
      // v: the order's quantity where its book trades and it is positive, else 0 (also in
      // the lanes past the row, whose goods' `traded` is 0).
      const __m256i qv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(q + r + g0));
      const __m256i v = _mm256_and_si256(_mm256_and_si256(load_good(traded + g0), _mm256_cmpgt_epi32(qv, zero)), qv);
      const __m256i is_buy = _mm256_and_si256(valid, _mm256_cmpeq_epi32(s, vbuy));
      const __m256i is_sell = _mm256_and_si256(valid, _mm256_cmpeq_epi32(s, vsell));
      const __m256i at = _mm256_cmpeq_epi32(t, ct);
      const __m256i bm = _mm256_and_si256(_mm256_and_si256(is_buy, at), v);
      const __m256i sm = _mm256_and_si256(_mm256_and_si256(is_sell, at), v);
      const __m256i bb = load_good(buy_before + g0), sb = load_good(sell_before + g0);
      const __m256i bf = _mm256_add_epi32(
          _mm256_and_si256(_mm256_and_si256(is_buy, _mm256_cmpgt_epi32(t, ct)), v),
          window(bb, bm, load_good(buy_start + g0), load_good(buy_to + g0), load_good(buy_tot + g0)));
      const __m256i sf = _mm256_add_epi32(
          _mm256_and_si256(_mm256_and_si256(is_sell, _mm256_cmpgt_epi32(ct, t)), v),
          window(sb, sm, load_good(sell_start + g0), load_good(sell_to + g0), load_good(sell_tot + g0)));
      store_good(buy_before + g0, _mm256_add_epi32(bb, bm));
      store_good(sell_before + g0, _mm256_add_epi32(sb, sm));
      const __m256i p = load_good(price + g0);
      const __m256i traded_goods = _mm256_sub_epi32(_mm256_add_epi32(load(hd + r + g0, valid, tail), bf), sf);
      // Consumption (lanes past the row: rates 0, so nothing eaten or spoiled; they write the
      // next agent's entries, rewritten in its turn).
      const __m256i ctr = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(row_counter + g0)), lane);
      const __m256i bits = mix(_mm256_add_epi32(mix(_mm256_xor_si256(_mm256_mullo_epi32(ctr, golden), seed0)), seed1));
      const __m256 u_eat = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_srli_epi32(bits, 16)), scale), half);
      const __m256 u_spoil = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_and_si256(bits, low16)), scale), half);
      const __m256i eaten = stochastic_round(_mm256_mul_ps(_mm256_loadu_ps(rate_pad + g0), _mm256_cvtepi32_ps(traded_goods)), u_eat);
      const __m256i left = _mm256_sub_epi32(traded_goods, eaten);
      const __m256i spoiled = stochastic_round(_mm256_mul_ps(_mm256_loadu_ps(rate_pad + G + 8 + g0), _mm256_cvtepi32_ps(left)), u_spoil);
      store(goods_out + o + r + g0, valid, _mm256_sub_epi32(left, spoiled), tail);
      store(eaten_out + o + r + g0, valid, eaten, tail);
      store_good(eaten_sum + g0, _mm256_add_epi32(load_good(eaten_sum + g0), eaten));
      store_good(consumed + g0, _mm256_add_epi32(load_good(consumed + g0), _mm256_add_epi32(eaten, spoiled)));
      dcash = _mm256_add_epi32(dcash, _mm256_mullo_epi32(p, _mm256_sub_epi32(sf, bf)));
      dproc = _mm256_add_epi32(dproc, _mm256_mullo_epi32(p, sf));
    }
    money_out[m * B + b] = wrap_add(money[m * B + b], hsum(dcash));  // integer sums wrap: any order
    proceeds_out[m * B + b] = hsum(dproc);
  }
  std::copy(eaten_sum, eaten_sum + G, k.eaten_sum_out + m * G);
  std::copy(consumed, consumed + G, k.consumed_out + m * G);
}

ffi::Error MarketImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> side_b, ffi::Buffer<ffi::S32> qty_b,
                      ffi::Buffer<ffi::S32> tick_b, ffi::Buffer<ffi::S32> held_b, ffi::Buffer<ffi::S32> money_b,
                      ffi::Buffer<ffi::S32> grid_b, ffi::Buffer<ffi::F32> lottery_b, ffi::Buffer<ffi::U32> counter_b,
                      ffi::Buffer<ffi::F32> rates_b, int64_t max_holding, ffi::Span<const int32_t> levels,
                      ffi::ResultBuffer<ffi::S32> goods_o,
                      ffi::ResultBuffer<ffi::S32> eaten_o, ffi::ResultBuffer<ffi::S32> eaten_sum_o,
                      ffi::ResultBuffer<ffi::S32> consumed_o,
                      ffi::ResultBuffer<ffi::S32> money_o,
                      ffi::ResultBuffer<ffi::S32> proceeds_o, ffi::ResultBuffer<ffi::S32> price_o,
                      ffi::ResultBuffer<ffi::S32> volume_o) {
  // Leading axes (markets, and any batch axes before them) are flattened into M markets.
  const auto d = side_b.dimensions();
  const auto gd = grid_b.dimensions();
  const size_t rank = d.size();
  if (rank < 3 || gd.size() != rank) return ffi::Error::InvalidArgument("agora_market: orders [..., M, B, G], grid [..., M, G, L]");
  const int64_t B = d[rank - 2], G = d[rank - 1], L = gd[rank - 1];
  int64_t M = 1;
  for (size_t i = 0; i + 2 < rank; ++i) {
    if (gd[i] != d[i]) return ffi::Error::InvalidArgument("agora_market: grid and orders differ in their market axes");
    M *= d[i];
  }
  if (gd[rank - 2] != G || L < 1) return ffi::Error::InvalidArgument("agora_market: grid is not [..., M, G, L]");
  for (auto* x : {&qty_b, &tick_b, &held_b}) {
    const auto xd = x->dimensions();
    if (xd.size() != rank || !std::equal(xd.begin(), xd.end(), d.begin()))
      return ffi::Error::InvalidArgument("agora_market: orders and holdings differ in shape");
  }
  const auto md = money_b.dimensions();
  const auto ld = lottery_b.dimensions();
  if (md.size() != rank - 1 || ld.size() != rank) return ffi::Error::InvalidArgument("agora_market: money [..., M, B], lottery [..., M, G, 2]");
  for (size_t i = 0; i + 1 < rank; ++i)
    if (md[i] != d[i]) return ffi::Error::InvalidArgument("agora_market: money is not [..., M, B]");
  for (size_t i = 0; i + 2 < rank; ++i)
    if (ld[i] != d[i]) return ffi::Error::InvalidArgument("agora_market: lottery is not [..., M, G, 2]");
  if (ld[rank - 2] != G || ld[rank - 1] != 2) return ffi::Error::InvalidArgument("agora_market: lottery is not [..., M, G, 2]");
  const auto cd = counter_b.dimensions();
  const auto rd = rates_b.dimensions();
  if (cd.size() != rank - 1 || cd[rank - 2] != 4 || rd.size() != rank || rd[rank - 2] != 2 || rd[rank - 1] != G)
    return ffi::Error::InvalidArgument("agora_market: counter is not [..., M, 4] or rates not [..., M, 2, G]");
  for (size_t i = 0; i + 2 < rank; ++i)
    if (cd[i] != d[i] || rd[i] != d[i]) return ffi::Error::InvalidArgument("agora_market: counter or rates differ in their market axes");

  if (levels.size() < 1) return ffi::Error::InvalidArgument("agora_market: no quantity levels");
  const Market k{B, G, L, static_cast<int32_t>(max_holding), side_b.typed_data(), qty_b.typed_data(),
                 tick_b.typed_data(), held_b.typed_data(), money_b.typed_data(), grid_b.typed_data(),
                 levels.begin(), static_cast<int32_t>(levels.size()),
                 lottery_b.typed_data(), counter_b.typed_data(), rates_b.typed_data(), goods_o->typed_data(),
                 eaten_o->typed_data(), eaten_sum_o->typed_data(), consumed_o->typed_data(), money_o->typed_data(), proceeds_o->typed_data(),
                 price_o->typed_data(), volume_o->typed_data()};
  agora::parallel_for(pool, M, [=] { return MarketScratch(B * G, G, L); },
                      [k](int64_t m, MarketScratch& sc) { clear_market(k, m, sc); });
  return ffi::Error::Success();
}

// agora_work: the integer part of economy/production.py's work, per agent of each market:
// the units each agent can do (its raw units capped by the inputs it holds and the room
// left for the outputs), its goods after work, its public units, and the market's sums of
// goods produced and used. The same integers as the XLA path, each computed once.
struct WorkArrays {
  int64_t B, G, J1, markets_per_world;
  int32_t hold_max;
  const int32_t *niche, *units, *goods, *inputs, *outputs, *pub;
  int32_t *goods_out, *units_out, *cap_out, *public_out, *produced_out, *used_out;
};

// economy/rng.py floor_div per lane: a // b for 0 <= a < 2^24, 1 <= b < 2^24, by the float
// quotient a x (1 / b) corrected by one step (exact; integer division does not vectorise).
inline __m256i floor_div(__m256i a, __m256i b, __m256 recip_b) {
  __m256i q = _mm256_cvttps_epi32(_mm256_floor_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(a), recip_b)));
  q = _mm256_add_epi32(q, _mm256_cmpgt_epi32(_mm256_mullo_epi32(q, b), a));  // q - 1 where q b > a
  const __m256i q1 = _mm256_add_epi32(q, _mm256_set1_epi32(1));
  return _mm256_add_epi32(q1, _mm256_cmpgt_epi32(_mm256_mullo_epi32(q1, b), a));  // q + 1 where (q + 1) b <= a
}
inline int32_t hmin(__m256i v) {
  __m128i x = _mm_min_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  x = _mm_min_epi32(x, _mm_shuffle_epi32(x, 0x4e));
  x = _mm_min_epi32(x, _mm_shuffle_epi32(x, 0xb1));
  return _mm_cvtsi128_si32(x);
}

// Scratch of one worker thread: the world's recipes with each niche's row padded to Gp (a
// multiple of 8) goods, as inputs, outputs and the reciprocals of both (1 where 0), and the
// running sums produced and used (Gp each), kept out of the output arrays so that no store
// waits on the previous agent's.
struct WorkScratch {
  int64_t Gp;
  std::vector<int32_t> in, out, acc;
  std::vector<float> r_in, r_out;
  WorkScratch(int64_t g, int64_t j1)
      : Gp((g + 7) / 8 * 8), in(j1 * Gp), out(j1 * Gp), acc(2 * Gp), r_in(j1 * Gp), r_out(j1 * Gp) {}
};

// Market m: per agent, branch-free over its row of goods (recipes differ by niche, so
// branches on them would be mispredicted).
void work_market(const WorkArrays& k, int64_t m, WorkScratch& sc) {
  const int64_t B = k.B, G = k.G, J1 = k.J1, Gp = sc.Gp, world = m / k.markets_per_world;
  const int64_t last_chunk = (G - 1) / 8 * 8;
  const int32_t* inp_w = k.inputs + world * J1 * G;
  const int32_t* out_w = k.outputs + world * J1 * G;
  const int32_t* pub_w = k.pub + world * J1;
  for (int64_t j = 0; j < J1; ++j)
    for (int64_t g = 0; g < Gp; ++g) {
      const int32_t a = g < G ? inp_w[j * G + g] : 0, o = g < G ? out_w[j * G + g] : 0;
      sc.in[j * Gp + g] = a;
      sc.out[j * Gp + g] = o;
      sc.r_in[j * Gp + g] = 1.0f / static_cast<float>(std::max(a, 1));
      sc.r_out[j * Gp + g] = 1.0f / static_cast<float>(std::max(o, 1));
    }
  std::fill(sc.acc.begin(), sc.acc.end(), 0);
  const int32_t *__restrict niche = k.niche + m * B, *__restrict raw = k.units + m * B;
  const int32_t* __restrict goods = k.goods + m * B * G;
  int32_t *__restrict after = k.goods_out + m * B * G, *__restrict units = k.units_out + m * B;
  int32_t *__restrict caps = k.cap_out + m * B, *__restrict pub = k.public_out + m * B;
  int32_t *__restrict produced = sc.acc.data(), *__restrict used = sc.acc.data() + Gp;
  const __m256i zero = _mm256_setzero_si256(), none = _mm256_set1_epi32(INT32_MAX);
  const __m256i room = _mm256_set1_epi32(k.hold_max);
  for (int64_t b = 0; b < B; ++b) {
    // the step clips niches to [0, J]; an index outside is clamped here only to stay in bounds
    const int64_t j = std::min<int64_t>(std::max<int32_t>(niche[b], 0), J1 - 1);
    const bool tail = b * G + last_chunk + 8 > B * G;  // rows whose 8 lanes would pass the market's end
    __m256i capv = none;
    for (int64_t g0 = 0; g0 < G; g0 += 8) {
      const __m256i valid = valid_lanes(G - g0);
      const __m256i h = load(goods + b * G + g0, valid, tail);
      const __m256i in = load_good(&sc.in[j * Gp + g0]), out = load_good(&sc.out[j * Gp + g0]);
      const __m256i by_in = floor_div(h, in, _mm256_loadu_ps(&sc.r_in[j * Gp + g0]));
      const __m256i by_out = floor_div(_mm256_sub_epi32(room, h), out, _mm256_loadu_ps(&sc.r_out[j * Gp + g0]));
      capv = _mm256_min_epi32(capv, _mm256_blendv_epi8(none, by_in, _mm256_cmpgt_epi32(in, zero)));
      capv = _mm256_min_epi32(capv, _mm256_blendv_epi8(none, by_out, _mm256_cmpgt_epi32(out, zero)));
    }
    const int32_t cap = hmin(capv), u = std::min(raw[b], cap);
    const __m256i uv = _mm256_set1_epi32(u);
    for (int64_t g0 = 0; g0 < G; g0 += 8) {
      const __m256i valid = valid_lanes(G - g0);
      const __m256i h = load(goods + b * G + g0, valid, tail);
      const __m256i use = _mm256_mullo_epi32(uv, load_good(&sc.in[j * Gp + g0]));
      const __m256i make = _mm256_mullo_epi32(uv, load_good(&sc.out[j * Gp + g0]));
      // lanes past G: written over by the next agent's row (or masked, at a market's end)
      store(after + b * G + g0, valid, _mm256_add_epi32(_mm256_sub_epi32(h, use), make), tail);
      store_good(produced + g0, _mm256_add_epi32(load_good(produced + g0), make));
      store_good(used + g0, _mm256_add_epi32(load_good(used + g0), use));
    }
    units[b] = u;
    caps[b] = cap;
    pub[b] = wrap_mul(u, pub_w[j]);
  }
  std::copy(produced, produced + G, k.produced_out + m * G);
  std::copy(used, used + G, k.used_out + m * G);
}

ffi::Error WorkImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> niche_b, ffi::Buffer<ffi::S32> units_b,
                    ffi::Buffer<ffi::S32> goods_b, ffi::Buffer<ffi::S32> inputs_b, ffi::Buffer<ffi::S32> outputs_b,
                    ffi::Buffer<ffi::S32> public_b, int64_t max_holding, ffi::ResultBuffer<ffi::S32> goods_o,
                    ffi::ResultBuffer<ffi::S32> units_o, ffi::ResultBuffer<ffi::S32> cap_o,
                    ffi::ResultBuffer<ffi::S32> public_o, ffi::ResultBuffer<ffi::S32> produced_o,
                    ffi::ResultBuffer<ffi::S32> used_o) {
  // niche, units [..., M, B]; goods [..., M, B, G]; recipes [..., J + 1, G]; public [..., J + 1]
  const auto d = niche_b.dimensions(), gd = goods_b.dimensions(), id = inputs_b.dimensions(),
             od = outputs_b.dimensions(), pd = public_b.dimensions(), ud = units_b.dimensions();
  const size_t rank = d.size();
  const char* shapes = "agora_work: niche and units [..., M, B], goods [..., M, B, G], recipes [..., J+1, G], public [..., J+1]";
  if (rank < 2 || ud.size() != rank || gd.size() != rank + 1 || id.size() != rank || od.size() != rank ||
      pd.size() != rank - 1)
    return ffi::Error::InvalidArgument(shapes);
  const int64_t Mw = d[rank - 2], B = d[rank - 1], G = gd[rank], J1 = id[rank - 2];
  int64_t worlds = 1;
  for (size_t i = 0; i < rank; ++i)
    if (ud[i] != d[i] || gd[i] != d[i]) return ffi::Error::InvalidArgument(shapes);
  for (size_t i = 0; i + 2 < rank; ++i) {
    if (id[i] != d[i] || od[i] != d[i] || pd[i] != d[i]) return ffi::Error::InvalidArgument(shapes);
    worlds *= d[i];
  }
  if (J1 < 1 || id[rank - 1] != G || od[rank - 2] != J1 || od[rank - 1] != G || pd[rank - 2] != J1)
    return ffi::Error::InvalidArgument(shapes);
  const WorkArrays k{B, G, J1, Mw, static_cast<int32_t>(max_holding), niche_b.typed_data(), units_b.typed_data(),
                     goods_b.typed_data(), inputs_b.typed_data(), outputs_b.typed_data(), public_b.typed_data(),
                     goods_o->typed_data(), units_o->typed_data(), cap_o->typed_data(), public_o->typed_data(),
                     produced_o->typed_data(), used_o->typed_data()};
  agora::parallel_for(pool, worlds * Mw, [G, J1] { return WorkScratch(G, J1); },
                      [k](int64_t m, WorkScratch& sc) { work_market(k, m, sc); });
  return ffi::Error::Success();
}

// agora_observe: economy/env.py's observation written in one pass, row by row: each
// agent's goods and money square-root scaled (the same float32 operations as the XLA path),
// then float blocks copied in order, each [..., R, k] with R dividing the agents N: a block
// of agents (R = N), of markets (R = M: agent i reads row i / (N / M)) or of the world (R = 1).
struct ObsBlock {
  const float* data;
  int64_t width, per_row, last;  // columns; agents per row of the block; its last row (all axes flattened)
};

ffi::Error ObserveImpl(ffi::ThreadPool pool, ffi::Buffer<ffi::S32> goods_b, ffi::Buffer<ffi::S32> money_b,
                       ffi::RemainingArgs rest, float goods_scale, float money_scale,
                       ffi::ResultBuffer<ffi::F32> obs_o) {
  const auto d = goods_b.dimensions(), md = money_b.dimensions(), od = obs_o->dimensions();
  const size_t rank = d.size();
  const char* shapes = "agora_observe: goods [..., N, G], money [..., N], blocks [..., R, k] with R dividing N, obs [..., N, D]";
  if (rank < 2 || md.size() != rank - 1 || od.size() != rank) return ffi::Error::InvalidArgument(shapes);
  const int64_t N = d[rank - 2], G = d[rank - 1];
  int64_t rows = 1;
  for (size_t i = 0; i + 1 < rank; ++i) {
    if (md[i] != d[i] || od[i] != d[i]) return ffi::Error::InvalidArgument(shapes);
    rows *= d[i];
  }
  std::vector<ObsBlock> blocks;
  int64_t D = G + 1;
  for (size_t i = 0; i < rest.size(); ++i) {
    auto buf = rest.get<ffi::Buffer<ffi::F32>>(i);
    if (!buf.has_value()) return ffi::Error::InvalidArgument("agora_observe: every block must be float32");
    const auto bd = buf->dimensions();
    if (bd.size() != rank) return ffi::Error::InvalidArgument(shapes);
    for (size_t j = 0; j + 2 < rank; ++j)
      if (bd[j] != d[j]) return ffi::Error::InvalidArgument(shapes);
    const int64_t R = bd[rank - 2];
    if (R < 1 || N % R != 0) return ffi::Error::InvalidArgument(shapes);
    blocks.push_back({buf->typed_data(), bd[rank - 1], N / R, rows / (N / R) - 1});
    D += bd[rank - 1];
  }
  if (od[rank - 1] != D) return ffi::Error::InvalidArgument(shapes);
  const int32_t *goods = goods_b.typed_data(), *money = money_b.typed_data();
  float* obs = obs_o->typed_data();
  // Each row is built in the thread's buffer by 8-lane copies (a lane past a block's row
  // is written over by the next block's; the last row of a block's array is copied by
  // element, so nothing is read past it), then copied out whole: a copy call per block of
  // a few floats would cost more than the row.
  constexpr int64_t kChunk = 2048;
  agora::parallel_for(pool, (rows + kChunk - 1) / kChunk, [D] { return std::vector<float>(D + 8); },
                      [=](int64_t c, std::vector<float>& row) {
    float* __restrict tmp = row.data();
    const int64_t end = std::min(rows, (c + 1) * kChunk);
    for (int64_t t = c * kChunk; t < end; ++t) {
      const int32_t* __restrict h = goods + t * G;
      for (int64_t g = 0; g < G; ++g) tmp[g] = std::sqrt(static_cast<float>(h[g]) * goods_scale);
      tmp[G] = std::sqrt(static_cast<float>(money[t]) * money_scale);
      float* col = tmp + G + 1;
      for (const ObsBlock& blk : blocks) {
        const int64_t r = t / blk.per_row;
        const float* src = blk.data + r * blk.width;
        if (r == blk.last) {
          for (int64_t k = 0; k < blk.width; ++k) col[k] = src[k];
        } else {
          for (int64_t k = 0; k < blk.width; k += 8) _mm256_storeu_ps(col + k, _mm256_loadu_ps(src + k));
        }
        col += blk.width;
      }
      std::memcpy(obs + t * D, tmp, D * sizeof(float));
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(AgoraMarket, MarketImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()   // side [M, B, G] (an action: clipped here)
                                  .Arg<ffi::Buffer<ffi::S32>>()   // quantity level [M, B, G] (likewise)
                                  .Arg<ffi::Buffer<ffi::S32>>()   // tick [M, B, G] (likewise)
                                  .Arg<ffi::Buffer<ffi::S32>>()   // holdings after work [M, B, G]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // money [M, B]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // price grid [M, G, L]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // lottery uniforms [M, G, 2]
                                  .Arg<ffi::Buffer<ffi::U32>>()   // consumption's counter [M, 4]
                                  .Arg<ffi::Buffer<ffi::F32>>()   // shares eaten and perish rates [M, 2, G]
                                  .Attr<int64_t>("max_holding")
                                  .Attr<ffi::Span<const int32_t>>("levels")  // units wanted per quantity level
                                  .Ret<ffi::Buffer<ffi::S32>>()   // goods after consumption [M, B, G]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // eaten [M, B, G]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // eaten, the market's sums [M, G]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // eaten and spoiled, the market's sums [M, G]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // money after trade [M, B]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // sales proceeds [M, B]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // clearing price [M, G]
                                  .Ret<ffi::Buffer<ffi::S32>>()); // volume [M, G]

XLA_FFI_DEFINE_HANDLER_SYMBOL(AgoraWork, WorkImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()   // niche [M, B]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // units before the caps [M, B]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // goods before work [M, B, G]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // recipe inputs [J + 1, G]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // recipe outputs [J + 1, G]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // public units per unit of work [J + 1]
                                  .Attr<int64_t>("max_holding")
                                  .Ret<ffi::Buffer<ffi::S32>>()   // goods after work [M, B, G]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // units [M, B]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // cap: the most units the goods allow [M, B]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // public units [M, B]
                                  .Ret<ffi::Buffer<ffi::S32>>()   // goods produced, market sums [M, G]
                                  .Ret<ffi::Buffer<ffi::S32>>()); // goods used, market sums [M, G]

XLA_FFI_DEFINE_HANDLER_SYMBOL(AgoraObserve, ObserveImpl,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::S32>>()   // goods [N, G]
                                  .Arg<ffi::Buffer<ffi::S32>>()   // money [N]
                                  .RemainingArgs()                // float blocks [R, k], R in {N, M, 1}
                                  .Attr<float>("goods_scale")
                                  .Attr<float>("money_scale")
                                  .Ret<ffi::Buffer<ffi::F32>>()); // the observation [N, D]
