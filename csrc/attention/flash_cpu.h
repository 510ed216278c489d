#pragma once
// The CPU flash-attention engine shared by spatial, temporal and frame-decode attention.
//
// Work is split over groups (b, x, h) (x = t for spatial, s for temporal; h fastest, so a thread's run of
// groups reads neighbouring memory). A group is one sequence: its K and V are packed once into fp32 (fp64
// for float64) tiles, K transposed, with the qk LayerNorm applied while packing; queries go in tiles of
// kTileQ rows with the scale folded in. Scores are computed per key block of kTileK with an online softmax,
// and only the log-sum-exp per query is stored for the backward, which recomputes the probabilities.
// Short temporal sequences (T = 16) are one tile each, and a thread runs many of them back to back, so
// packing and the tile loops are the whole cost: no per-sequence allocation or dispatch.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "attention/attention.h"
#include "common/attention.h"

namespace wmk::attention::cpu {

constexpr int64_t kTileQ = 32;
constexpr int64_t kTileK = 256;
inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

template <typename scalar_t>
struct Operand {
  const scalar_t* ptr;
  Roles st;
  const scalar_t* group(int64_t b, int64_t x, int64_t h) const { return ptr + b * st.b + x * st.x + h * st.h; }
};

template <typename scalar_t>
struct MutOperand {
  scalar_t* ptr;
  Roles st;
  scalar_t* group(int64_t b, int64_t x, int64_t h) const { return ptr + b * st.b + x * st.x + h * st.h; }
};

// Converts one row of D values (stride sd) into acc_t, zero-padding to `padded`.
template <typename scalar_t, typename acc_t>
inline void load_row(const scalar_t* src, int64_t sd, int64_t d, int64_t padded, acc_t* dst) {
  if (std::is_same_v<scalar_t, acc_t> && sd == 1) {
    std::memcpy(dst, src, d * sizeof(acc_t));
  } else if (sd == 1) {
    for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<acc_t>(src[i]);
  } else {
    for (int64_t i = 0; i < d; ++i) dst[i] = static_cast<acc_t>(src[i * sd]);
  }
  for (int64_t i = d; i < padded; ++i) dst[i] = 0;
}

// dst[i * sd] = src[i] * mul for i < d, converted to scalar_t.
template <typename Kern, typename scalar_t, typename acc_t>
inline void store_row(const acc_t* src, int64_t d, acc_t mul, scalar_t* dst, int64_t sd) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (sd == 1) return Kern::scale(src, d, mul, dst);
  }
  for (int64_t i = 0; i < d; ++i) dst[i * sd] = static_cast<scalar_t>(src[i] * mul);
}

// Starts loading one row of D values into cache (rows with a unit stride only).
template <typename scalar_t>
inline void prefetch_row(const scalar_t* row_ptr, int64_t sd, int64_t d) {
  if (sd != 1) return;
  const char* row = reinterpret_cast<const char*>(row_ptr);
  const int64_t bytes = d * static_cast<int64_t>(sizeof(scalar_t));
  for (int64_t o = 0; o < bytes; o += 64) {
#if defined(__x86_64__) && defined(__GNUC__)
    // Not __builtin_prefetch: C++'s forward-progress rule lets GCC delete a loop of nothing but prefetches.
    asm volatile("prefetcht0 %0" : : "m"(row[o]));
#else
    __builtin_prefetch(row + o);
#endif
  }
}

// The rows of one group lie far apart (a spatial sequence's rows are 3 * H * D elements apart in a fused
// projection, a temporal sequence's frames S * H * D), so the hardware prefetcher does not follow them and
// each row would be a cache miss waited on in turn. The packing loops therefore prefetch the row
// kPrefetchRows ahead of the one they read, and the start of the next group while the current one runs.
// Prefetching whole groups at once does not work: the CPU keeps only ~20 misses in flight and drops or
// stalls on the rest.
constexpr int64_t kPrefetchRows = 16;

template <typename scalar_t>
inline void prefetch_rows(const scalar_t* base, int64_t n, int64_t sl, int64_t sd, int64_t d) {
  for (int64_t i = 0; i < n; ++i) prefetch_row(base + i * sl, sd, d);
}

// qk LayerNorm parameters converted to acc_t once per call.
template <typename acc_t>
struct Norm {
  bool on = false;
  std::vector<acc_t> w, b;
  acc_t eps = 0;
};

// Per-thread scratch of one group: packed K (row-major and transposed) and V (row-major, and transposed
// for the backward). The transposed tiles have dv rows (rows d..dv-1 zero) so they transpose in 8x8 blocks.
template <typename acc_t>
struct KeyPack {
  int64_t lkp = 0, dv = 0;
  std::vector<acc_t> kt, kr, vr, vt, khat, krstd;

  void resize(int64_t lk, int64_t d, bool backward, bool norm) {
    lkp = round_up(std::max<int64_t>(lk, 1), 16);
    dv = round_up(d, 16);
    kt.assign(dv * lkp, 0);
    vr.assign(lkp * dv, 0);
    kr.assign(lkp * dv, 0);
    if (backward) {
      vt.assign(dv * lkp, 0);
      if (norm) {
        khat.assign(lkp * d, 0);
        krstd.assign(lkp, 0);
      }
    }
  }
};

// Key/value row j of one group into the pack (row-major; the qk LayerNorm applied to the key, its
// normalized row and 1/std kept for the backward).
template <typename Kern, typename scalar_t, typename acc_t>
inline void pack_key_row(const scalar_t* k_row, int64_t ksd, const scalar_t* v_row, int64_t vsd, int64_t j, int64_t d,
                         const Norm<acc_t>& norm, bool backward, KeyPack<acc_t>& pack) {
  const int64_t dv = pack.dv;
  acc_t* row = pack.kr.data() + j * dv;
  load_row(k_row, ksd, d, dv, row);
  if (norm.on) {
    acc_t* xhat = backward ? pack.khat.data() + j * d : nullptr;
    const acc_t rstd = Kern::layer_norm(row, d, norm.w.data(), norm.b.data(), norm.eps, xhat);
    if (backward) pack.krstd[j] = rstd;
  }
  load_row(v_row, vsd, d, dv, pack.vr.data() + j * dv);
}

// Once rows 0..lk-1 are packed: zero the padding keys and transpose K (and V for the backward) through the
// kernels' block transpose.
template <typename Kern, typename acc_t>
inline void finish_keys(int64_t lk, bool backward, KeyPack<acc_t>& pack) {
  const int64_t lkp = pack.lkp, dv = pack.dv;
  // Stale keys past lk (a shorter group after a longer one) must read as zeros in the padded tiles.
  std::fill(pack.kr.begin() + lk * dv, pack.kr.end(), acc_t(0));
  std::fill(pack.vr.begin() + lk * dv, pack.vr.end(), acc_t(0));
  Kern::transpose(pack.kr.data(), dv, lkp, dv, pack.kt.data(), lkp);
  if (backward) Kern::transpose(pack.vr.data(), dv, lkp, dv, pack.vt.data(), lkp);
}

// Packs keys/values 0..lk-1 of one group; the caller sized `pack` for the call's largest lk.
template <typename Kern, typename scalar_t, typename acc_t>
void pack_keys(const scalar_t* k, const Roles& ks, const scalar_t* v, const Roles& vs, int64_t lk, int64_t d,
               const Norm<acc_t>& norm, bool backward, KeyPack<acc_t>& pack) {
  for (int64_t j = 0; j < lk; ++j) {
    if (j + kPrefetchRows < lk) {
      prefetch_row(k + (j + kPrefetchRows) * ks.l, ks.d, d);
      prefetch_row(v + (j + kPrefetchRows) * vs.l, vs.d, d);
    }
    pack_key_row<Kern>(k + j * ks.l, ks.d, v + j * vs.l, vs.d, j, d, norm, backward, pack);
  }
  finish_keys<Kern>(lk, backward, pack);
}

// One query row as scale * LayerNorm(q) into `row` (dv values, zero-padded); qhat/qrstd (may be null) get
// the normalized row and 1/std for the backward.
template <typename Kern, typename scalar_t, typename acc_t>
inline void pack_query_row(const scalar_t* q_row, int64_t qsd, int64_t d, int64_t dv, acc_t scale,
                           const Norm<acc_t>& norm, acc_t* row, acc_t* qhat, acc_t* qrstd) {
  load_row(q_row, qsd, d, dv, row);
  if (norm.on) {
    const acc_t rstd = Kern::layer_norm(row, d, norm.w.data(), norm.b.data(), norm.eps, qhat);
    if (qrstd != nullptr) *qrstd = rstd;
  }
  Kern::scale(row, d, scale, row);
}

// Packs query rows i0 .. i0+mq-1 into tile (mq4 x dv, zero-padded).
template <typename Kern, typename scalar_t, typename acc_t>
void pack_queries(const scalar_t* q, const Roles& qs, int64_t i0, int64_t mq, int64_t d, int64_t dv, acc_t scale,
                  const Norm<acc_t>& norm, acc_t* tile, acc_t* qhat, acc_t* qrstd) {
  const int64_t mq4 = round_up(mq, 4);
  for (int64_t r = 0; r < mq; ++r) {
    if (r + kPrefetchRows < mq) prefetch_row(q + (i0 + r + kPrefetchRows) * qs.l, qs.d, d);
    pack_query_row<Kern>(q + (i0 + r) * qs.l, qs.d, d, dv, scale, norm, tile + r * dv,
                         qhat != nullptr ? qhat + r * d : nullptr, qrstd != nullptr ? qrstd + r : nullptr);
  }
  std::fill(tile + mq * dv, tile + mq4 * dv, acc_t(0));
}

// Query rows i0 .. i0+mq-1 (packed in qt) against keys 0..lk-1 in blocks of kTileK with an online softmax:
// leaves the unnormalised output rows in ob, row maxima in m and sums in l.
template <typename Kern, typename acc_t>
void attend_key_blocks(const Problem& p, const KeyPack<acc_t>& pack, const acc_t* qt, int64_t i0, int64_t mq,
                       int64_t lk, acc_t* sc, acc_t* ob, acc_t* m, acc_t* l) {
  const int64_t d = p.dim, dv = pack.dv, lq = p.lq, mq4 = round_up(mq, 4);
  std::fill(m, m + kTileQ, -std::numeric_limits<acc_t>::infinity());
  std::fill(l, l + kTileQ, acc_t(0));
  std::fill(ob, ob + mq4 * dv, acc_t(0));
  const int64_t key_end = visible_keys(i0 + mq - 1, lq, lk, p.causal);
  for (int64_t kb = 0; kb < key_end; kb += kTileK) {
    const int64_t nk = std::min(kTileK, key_end - kb), nkp = round_up(nk, 16);
    Kern::gemm(qt, dv, pack.kt.data() + kb, pack.lkp, sc, kTileK, mq4, nkp, d, false);
    for (int64_t r = 0; r < mq4; ++r) {
      acc_t* s = sc + r * kTileK;
      const int64_t nv = r < mq ? std::clamp<int64_t>(visible_keys(i0 + r, lq, lk, p.causal) - kb, 0, nk) : 0;
      if (nv > 0) {
        const acc_t m_new = std::max(m[r], Kern::max(s, nv));
        const acc_t alpha = std::exp(m[r] - m_new);  // 0 on the first block (m = -inf)
        if (alpha != acc_t(1) && l[r] != acc_t(0))  // nothing to rescale before the first visible key
          for (int64_t i = 0; i < dv; ++i) ob[r * dv + i] *= alpha;
        l[r] = l[r] * alpha + Kern::exp_shift(s, nv, m_new);
        m[r] = m_new;
      }
      std::fill(s + nv, s + nkp, acc_t(0));
    }
    Kern::gemm(sc, kTileK, pack.vr.data() + kb * dv, dv, ob, dv, mq4, dv, nk, true);
  }
}

// The same for a group of at most 16 keys (temporal attention over T <= 16 frames), through the kernels'
// fused register tile when they have one; returns false (nothing done) otherwise.
template <typename Kern, typename acc_t>
bool attend_short_tile(const Problem& p, const KeyPack<acc_t>& pack, const acc_t* qt, int64_t i0, int64_t mq,
                       int64_t lk, int64_t* nvis, acc_t* ob, acc_t* m, acc_t* l) {
  if constexpr (Kern::kHasShort) {
    if (pack.lkp != Kern::kShortKeys) return false;
    for (int64_t r = 0; r < mq; ++r) nvis[r] = visible_keys(i0 + r, p.lq, lk, p.causal);
    Kern::attend_short(qt, pack.dv, pack.kt.data(), pack.vr.data(), p.dim, mq, nvis, ob, m, l);
    return true;
  }
  return false;
}

// Short sequences (temporal attention over T <= 16 frames, frame decoding) go a position (b, x) at a time,
// with all its heads: one group is too little work to hide the latency of its own rows, which lie a frame
// apart, but the rows of every head of one frame lie next to each other. So rows are read frame by frame
// across the heads, and the next position's rows are prefetched while this one's are read.
constexpr int64_t kShortTileQ = 16;

template <typename scalar_t>
struct NextPosition {
  bool valid;
  int64_t b, x;
  NextPosition(int64_t pos, int64_t end, int64_t other) : valid(pos + 1 < end), b((pos + 1) / other), x((pos + 1) % other) {}
  // Row i of every head of operand t at the next position.
  void prefetch(const Operand<scalar_t>& t, int64_t heads, int64_t i, int64_t d) const {
    if (!valid) return;
    for (int64_t h = 0; h < heads; ++h) prefetch_row(t.group(b, x, h) + i * t.st.l, t.st.d, d);
  }
};

// Packs keys 0..lk-1 of every head of position (b, x), frame by frame, into pack_of(h) (a KeyPack<acc_t>&).
template <typename Kern, typename scalar_t, typename acc_t, typename PackOf>
void pack_position_keys(const Problem& p, const Operand<scalar_t>& k, const Operand<scalar_t>& v, int64_t b,
                        int64_t x, int64_t lk, const NextPosition<scalar_t>& next, int64_t next_lk,
                        const Norm<acc_t>& norm, bool backward, PackOf pack_of) {
  for (int64_t j = 0; j < lk; ++j) {
    if (j < next_lk) {
      next.prefetch(k, p.heads, j, p.dim);
      next.prefetch(v, p.heads, j, p.dim);
    }
    for (int64_t h = 0; h < p.heads; ++h)
      pack_key_row<Kern>(k.group(b, x, h) + j * k.st.l, k.st.d, v.group(b, x, h) + j * v.st.l, v.st.d, j, p.dim,
                         norm, backward, pack_of(h));
  }
  for (int64_t h = 0; h < p.heads; ++h) finish_keys<Kern>(lk, backward, pack_of(h));
}

template <typename scalar_t, typename acc_t, typename Kern, typename LkOf>
void short_forward(const Problem& p, Operand<scalar_t> q, Operand<scalar_t> k, Operand<scalar_t> v,
                   MutOperand<scalar_t> out, acc_t* lse, Roles ls, const Norm<acc_t>& norm, LkOf lk_of) {
  const int64_t heads = p.heads, d = p.dim, dv = round_up(d, 16), lq = p.lq;
  const acc_t scale = static_cast<acc_t>(p.scale);
  at::parallel_for(0, p.batch * p.other, 1, [&](int64_t begin, int64_t end) {
    std::vector<KeyPack<acc_t>> packs(heads);
    for (auto& pack : packs) pack.resize(p.lk, d, false, norm.on);
    std::vector<acc_t> qt(heads * kShortTileQ * dv), ob(kShortTileQ * dv), m(kShortTileQ), l(kShortTileQ);
    std::vector<int64_t> nvis(kShortTileQ);
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t x = pos % p.other, b = pos / p.other, lk = lk_of(b);
      const NextPosition<scalar_t> next(pos, end, p.other);
      pack_position_keys<Kern>(p, k, v, b, x, lk, next, next.valid ? lk_of(next.b) : 0, norm, false,
                               [&](int64_t h) -> KeyPack<acc_t>& { return packs[h]; });
      for (int64_t i0 = 0; i0 < lq; i0 += kShortTileQ) {
        const int64_t mq = std::min(kShortTileQ, lq - i0);
        for (int64_t r = 0; r < mq; ++r) {
          next.prefetch(q, heads, i0 + r, d);
          for (int64_t h = 0; h < heads; ++h)
            pack_query_row<Kern>(q.group(b, x, h) + (i0 + r) * q.st.l, q.st.d, d, dv, scale, norm,
                                 qt.data() + (h * kShortTileQ + r) * dv, (acc_t*)nullptr, (acc_t*)nullptr);
          nvis[r] = visible_keys(i0 + r, lq, lk, p.causal);
        }
        for (int64_t h = 0; h < heads; ++h) {
          Kern::attend_short(qt.data() + h * kShortTileQ * dv, dv, packs[h].kt.data(), packs[h].vr.data(), d, mq,
                             nvis.data(), ob.data(), m.data(), l.data());
          scalar_t* og = out.group(b, x, h);
          for (int64_t r = 0; r < mq; ++r) {
            store_row<Kern>(ob.data() + r * dv, d, acc_t(1) / l[r], og + (i0 + r) * out.st.l, out.st.d);
            if (lse != nullptr) lse[b * ls.b + x * ls.x + (i0 + r) * ls.l + h * ls.h] = m[r] + std::log(l[r]);
          }
        }
      }
    }
  });
}

// The current frames' keys and values for frame decoding to write into slots lk - 1 .. lk - 2 + n of the caches
// (keys through the qk LayerNorm) just before each position attends, so the rows it then reads are already in cache.
struct FrameWrite {
  Operand<float> k, v;                 // (B, n, S, H, D) views of the current frames
  MutOperand<float> k_cache, v_cache;  // the caches the decode reads
  const Norm<float>* norm;
  // false: the last frame's K/V are not stored (the caller will not read that slot); its queries read them from a
  // local copy instead. Skips writing a frame of cold cache lines per layer (~0.7 ms of a GENIE-35M MaskGIT step).
  bool store_last = true;
};

// Frame decoding (p.lq consecutive query frames, float, contiguous head dims) through the kernels' decode_rows:
// per position and head, the scores, softmax and weighted sum of the cached rows read in place, with nothing
// packed but the query rows. Query frame i sees lk + i keys (lk = lk_of(b)). The decode is bound by reading the
// cache (2 x frames x S x H x D floats per layer and step), so each head's rows at the next position can be
// prefetched into L2 while this one runs (Kern::kPrefetchDecode), and the n query frames of a position run one
// after another while its rows are in L1: the cache is read from memory once per call, not once per frame.
template <typename Kern, typename LkOf>
void decode_forward(const Problem& p, Operand<float> q, Operand<float> k, Operand<float> v, MutOperand<float> out,
                    const Norm<float>& norm, LkOf lk_of, const FrameWrite* write = nullptr) {
  const int64_t d = p.dim, dv = round_up(d, 16), heads = p.heads, n = p.lq;
  const float scale = static_cast<float>(p.scale);
  // Rows of every head of one position, normalized together (Kern::layer_norm_rows), 16 heads at a time.
  auto normalize = [&](float* rows, const Norm<float>& nm) {
    if (!nm.on) return;
    for (int64_t h0 = 0; h0 < heads; h0 += 16)
      Kern::layer_norm_rows(rows + h0 * dv, std::min<int64_t>(16, heads - h0), dv, d, nm.w.data(), nm.b.data(),
                            nm.eps);
  };
  // The last frame's K/V rows kept here, not stored (write->store_last false).
  const bool keep_last = write != nullptr && !write->store_last;
  at::parallel_for(0, p.batch * p.other, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> rows(heads * dv), last_k(keep_last ? heads * dv : 0), last_v(keep_last ? heads * dv : 0);
    for (int64_t pos = begin; pos < end; ++pos) {
      const int64_t x = pos % p.other, b = pos / p.other, lk = lk_of(b);
      if (write != nullptr) {
        for (int64_t i = 0; i < n; ++i) {
          const int64_t slot = lk - 1 + i;
          const bool local = keep_last && i == n - 1;
          float* keys = local ? last_k.data() : rows.data();
          for (int64_t h = 0; h < heads; ++h)
            load_row(write->k.group(b, x, h) + i * write->k.st.l, write->k.st.d, d, dv, keys + h * dv);
          normalize(keys, *write->norm);
          for (int64_t h = 0; h < heads; ++h) {
            const float* value = write->v.group(b, x, h) + i * write->v.st.l;
            if (local) {
              load_row(value, write->v.st.d, d, dv, last_v.data() + h * dv);
              continue;
            }
            store_row<Kern>(rows.data() + h * dv, d, 1.0f, write->k_cache.group(b, x, h) + slot * write->k_cache.st.l,
                            write->k_cache.st.d);
            load_row(value, write->v.st.d, d, dv, rows.data());
            store_row<Kern>(rows.data(), d, 1.0f, write->v_cache.group(b, x, h) + slot * write->v_cache.st.l,
                            write->v_cache.st.d);
          }
        }
      }
      const NextPosition<float> next(pos, end, p.other);
      // The cached rows the next position reads (not the kept last frame's slot).
      const int64_t next_lk = next.valid ? lk_of(next.b) + n - 1 - (keep_last ? 1 : 0) : 0;
      for (int64_t i = 0; i < n; ++i) {
        for (int64_t h = 0; h < heads; ++h)
          load_row(q.group(b, x, h) + i * q.st.l, q.st.d, d, dv, rows.data() + h * dv);
        normalize(rows.data(), norm);
        const bool local = keep_last && i == n - 1;
        constexpr int64_t kRows = Kern::kDecodeRows;
        for (int64_t h0 = 0; h0 < heads; h0 += kRows) {  // kRows heads per call (see Kern::decode_rows)
          const int64_t hn = std::min(kRows, heads - h0);
          const float *kp[kRows], *vp[kRows], *klp[kRows], *vlp[kRows], *pfk[kRows], *pfv[kRows];
          float* op[kRows];
          // The heads' cached rows at the next position, prefetched into L2 inside decode_rows, head by head
          // (all of a call's heads before it was slower: 0.94x at 12 cached frames with 8 heads a call, the
          // prefetches holding the miss buffers).
          const bool pf = Kern::kPrefetchDecode && i == 0 && next_lk > 0;
          for (int64_t r = 0; r < hn; ++r) {
            const int64_t h = h0 + r;
            if (pf) {
              pfk[r] = k.group(next.b, next.x, h);
              pfv[r] = v.group(next.b, next.x, h);
            }
            float* row = rows.data() + h * dv;
            Kern::scale(row, d, scale, row);
            kp[r] = k.group(b, x, h);
            vp[r] = v.group(b, x, h);
            op[r] = out.group(b, x, h) + i * out.st.l;
            klp[r] = local ? last_k.data() + h * dv : nullptr;
            vlp[r] = local ? last_v.data() + h * dv : nullptr;
          }
          Kern::decode_rows(hn, rows.data() + h0 * dv, dv, kp, k.st.l, vp, v.st.l, lk + i, d, op,
                            local ? klp : nullptr, local ? vlp : nullptr, pf ? pfk : nullptr, pf ? pfv : nullptr,
                            pf ? next_lk : 0);
        }
      }
    }
  });
}

// Forward of one call. lk_of(b) gives the number of keys of batch b (frame decode: per-batch num_frames).
// lse may be null (inference). Output rows are written in scalar_t.
template <typename scalar_t, typename acc_t, typename Kern, typename LkOf>
void flash_forward(const Problem& p, Operand<scalar_t> q, Operand<scalar_t> k, Operand<scalar_t> v,
                   MutOperand<scalar_t> out, acc_t* lse, Roles ls, const Norm<acc_t>& norm, LkOf lk_of) {
  const int64_t groups = num_groups(p);
  if (groups == 0 || p.lq == 0) return;
  if constexpr (Kern::kHasShort) {
    if (round_up(std::max<int64_t>(p.lk, 1), 16) == Kern::kShortKeys)
      return short_forward<scalar_t, acc_t, Kern>(p, q, k, v, out, lse, ls, norm, lk_of);
  }
  const int64_t d = p.dim, dv = round_up(d, 16), lq = p.lq;
  const acc_t scale = static_cast<acc_t>(p.scale);
  const int64_t grain = std::max<int64_t>(1, 2048 / std::max<int64_t>(1, lq * p.lk));
  at::parallel_for(0, groups, grain, [&](int64_t begin, int64_t end) {
    KeyPack<acc_t> pack;
    pack.resize(p.lk, d, false, norm.on);
    std::vector<acc_t> qt(kTileQ * dv), sc(kTileQ * kTileK), ob(kTileQ * dv), m(kTileQ), l(kTileQ);
    std::vector<int64_t> nvis(kTileQ);
    for (int64_t g = begin; g < end; ++g) {
      const int64_t h = g % p.heads, x = (g / p.heads) % p.other, b = g / (p.heads * p.other);
      const int64_t lk = lk_of(b);
      if (g + 1 < end) {
        const int64_t gn = g + 1;
        const int64_t hn = gn % p.heads, xn = (gn / p.heads) % p.other, bn = gn / (p.heads * p.other);
        prefetch_rows(q.group(bn, xn, hn), std::min(lq, kPrefetchRows), q.st.l, q.st.d, d);
        prefetch_rows(k.group(bn, xn, hn), std::min(lk_of(bn), kPrefetchRows), k.st.l, k.st.d, d);
        prefetch_rows(v.group(bn, xn, hn), std::min(lk_of(bn), kPrefetchRows), v.st.l, v.st.d, d);
      }
      pack_keys<Kern>(k.group(b, x, h), k.st, v.group(b, x, h), v.st, lk, d, norm, false, pack);
      for (int64_t i0 = 0; i0 < lq; i0 += kTileQ) {
        const int64_t mq = std::min(kTileQ, lq - i0);
        pack_queries<Kern>(q.group(b, x, h), q.st, i0, mq, d, dv, scale, norm, qt.data(), (acc_t*)nullptr,
                     (acc_t*)nullptr);
        if (!attend_short_tile<Kern>(p, pack, qt.data(), i0, mq, lk, nvis.data(), ob.data(), m.data(), l.data()))
          attend_key_blocks<Kern>(p, pack, qt.data(), i0, mq, lk, sc.data(), ob.data(), m.data(), l.data());
        scalar_t* og = out.group(b, x, h);
        for (int64_t r = 0; r < mq; ++r) {
          store_row<Kern>(ob.data() + r * dv, d, acc_t(1) / l[r], og + (i0 + r) * out.st.l, out.st.d);
          if (lse != nullptr) lse[b * ls.b + x * ls.x + (i0 + r) * ls.l + h * ls.h] = m[r] + std::log(l[r]);
        }
      }
    }
  });
}

}  // namespace wmk::attention::cpu
