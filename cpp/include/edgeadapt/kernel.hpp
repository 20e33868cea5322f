// edgeadapt decision kernel: header-only C++17, no dependencies.
//
// What runs on every inference: the confidence of a row of logits, the batch exit
// decision with compaction of the rows that continue, learned exit gates (gate_score,
// gate_decide: numerics below, at their definition), and the latency-aware policy
// (per-state thresholds, EWMA cost table, budget checks, AdaInf lookup table), and the
// content-aware scheduler of a branches plan (schedule). The cascade that walks a
// bundle's hops with them is cascade.hpp.
//
// Numerics (the readable specification is edgeadapt/kernel_ref.py):
//   t_i = x_i - max(x)                      float32
//   e_i = exp_neg(t_i)                      float32, Cephes-style polynomial, 0 below -80
//   Z   = sum_i e_i                         accumulated in double
//   maxprob = 1 / Z
//   margin  = (1 - e_(2)) / Z               e_(2): exp of the second-largest logit
//   entropy = (sum_i e_i t_i) / Z - log Z   the negative entropy (higher = more confident)
// each rounded once to float32. The prediction is the first index of the maximum.
// A row holding NaN or +-Inf is invalid: prediction -1, confidence NaN, never exits.
// With the compiler not contracting a*b+c into FMA (the default on x86-64), exp_neg is
// bit-identical to the numpy reference; otherwise it differs by at most an ulp or two.
//
// No exceptions, no allocation on the hot path: every function reports a Status; only
// Policy::create allocates (its std::vector members) and may throw std::bad_alloc.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

namespace edgeadapt {

enum class Status : int {
    Ok = 0,
    NullPointer = 1,  // a required pointer is null
    BadShape = 2,     // batch < 1 or classes < 2, or a length that does not match (or stride)
    BadValue = 3,     // NaN threshold, negative/NaN budget or cost, EWMA weight outside (0, 1],
                      // a gate weight or bias that is not finite
    OutOfRange = 4,   // state or hop index outside the policy
    BadMeasure = 5,   // unknown confidence measure
};

enum class Measure : int { MaxProb = 0, Margin = 1, Entropy = 2 };

enum class Action : int {
    Exit = 0,        // confident enough (or last state): return this state's answer
    Continue = 1,    // run the next hop
    ExitBudget = 2,  // the next hop cannot finish inside the budget: return this answer
};

inline const char* status_string(Status s) noexcept {
    switch (s) {
        case Status::Ok: return "ok";
        case Status::NullPointer: return "null pointer";
        case Status::BadShape: return "bad shape (batch must be >= 1, classes >= 2)";
        case Status::BadValue: return "bad value (NaN, negative or out-of-range number)";
        case Status::OutOfRange: return "state or hop index out of range";
        case Status::BadMeasure: return "unknown confidence measure";
    }
    return "unknown status";
}

// Prediction and confidence of one row.
struct RowResult {
    std::int64_t pred;
    float conf;
};

namespace detail {

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2Hi = 0.693359375f;
constexpr float kLn2Lo = -2.12194440e-4f;
constexpr float kRound = 12582912.0f;  // 1.5 * 2^23: (y + kRound) - kRound == rint(y)
constexpr float kCutoff = -80.0f;      // exp(-80) ~ 1.8e-35: below it a term is 0
constexpr float kP0 = 1.9875691500e-4f;
constexpr float kP1 = 1.3981999507e-3f;
constexpr float kP2 = 8.3334519073e-3f;
constexpr float kP3 = 4.1665795894e-2f;
constexpr float kP4 = 1.6666665459e-1f;
constexpr float kP5 = 5.0000001201e-1f;

// exp(t) for finite t <= 0; 0 below kCutoff. Same operations, in the same order, as
// kernel_ref.exp_neg.
inline float exp_neg(float t) noexcept {
    const float tc = t > kCutoff ? t : kCutoff;
    const float k = (tc * kLog2e + kRound) - kRound;
    float r = tc - k * kLn2Hi;
    r = r - k * kLn2Lo;
    float p = kP0;
    p = p * r + kP1;
    p = p * r + kP2;
    p = p * r + kP3;
    p = p * r + kP4;
    p = p * r + kP5;
    p = (p * (r * r) + r) + 1.0f;
    const std::int32_t bits = (static_cast<std::int32_t>(k) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return t < kCutoff ? 0.0f : p * scale;
}

// Sums of e_i (and of e_i * t_i when Entropy) over a row, given its maximum m.
struct Sums {
    double z;
    double zt;
};

#if defined(__GNUC__) || defined(__clang__)
#define EDGEADAPT_VECTOR 1
typedef float f4 __attribute__((vector_size(16)));
typedef std::int32_t i4 __attribute__((vector_size(16)));
typedef double d2 __attribute__((vector_size(16)));

inline f4 load4(const float* p) noexcept {
    f4 v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

inline f4 splat(float x) noexcept { return f4{x, x, x, x}; }

inline f4 select(i4 mask, f4 a, f4 b) noexcept {
    i4 ai, bi;
    std::memcpy(&ai, &a, sizeof ai);
    std::memcpy(&bi, &b, sizeof bi);
    const i4 ri = (ai & mask) | (bi & ~mask);
    f4 r;
    std::memcpy(&r, &ri, sizeof r);
    return r;
}

// Four lanes of exp_neg, operation for operation.
inline f4 exp_neg4(f4 t) noexcept {
    const f4 cut = splat(kCutoff);
    const f4 tc = select(t > cut, t, cut);
    const f4 k = (tc * splat(kLog2e) + splat(kRound)) - splat(kRound);
    f4 r = tc - k * splat(kLn2Hi);
    r = r - k * splat(kLn2Lo);
    f4 p = splat(kP0);
    p = p * r + splat(kP1);
    p = p * r + splat(kP2);
    p = p * r + splat(kP3);
    p = p * r + splat(kP4);
    p = p * r + splat(kP5);
    p = (p * (r * r) + r) + splat(1.0f);
    const i4 bits = (__builtin_convertvector(k, i4) + 127) << 23;
    f4 scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return select(t < cut, splat(0.0f), p * scale);
}

inline d2 lo2(f4 v) noexcept { return d2{v[0], v[1]}; }
inline d2 hi2(f4 v) noexcept { return d2{v[2], v[3]}; }

// x[0..r) (0 < r < 4) in the low lanes, `pad` in the others.
inline f4 load_tail(const float* x, std::int64_t r, float pad) noexcept {
    return f4{x[0], r > 1 ? x[1] : pad, r > 2 ? x[2] : pad, pad};
}
#endif

constexpr float kLowest = -std::numeric_limits<float>::max();

// Maximum and first index of it over x[0..n) (n >= 1); `finite` is false when a value
// is NaN or +-Inf (x * 0 is then NaN), and the other fields are meaningless.
struct RowMax {
    float max;
    std::int64_t arg;
    bool finite;
};

inline RowMax row_max(const float* x, std::int64_t n) noexcept {
#ifdef EDGEADAPT_VECTOR
    f4 mv = splat(kLowest), zero = splat(0.0f);
    i4 iv = i4{0, 0, 0, 0}, lane = i4{0, 1, 2, 3};
    std::int64_t i = 0;
    for (; i + 4 <= n; i += 4) {
        const f4 v = load4(x + i);
        const i4 gt = v > mv;
        mv = select(gt, v, mv);
        iv = (gt & (lane + static_cast<std::int32_t>(i))) | (~gt & iv);
        zero += v * splat(0.0f);
    }
    if (i < n) {
        const f4 v = load_tail(x + i, n - i, kLowest);
        const i4 gt = v > mv;
        mv = select(gt, v, mv);
        iv = (gt & (lane + static_cast<std::int32_t>(i))) | (~gt & iv);
        zero += v * splat(0.0f);
    }
    float m = mv[0];
    std::int64_t arg = iv[0];
    for (int l = 1; l < 4; ++l) {
        if (mv[l] > m || (mv[l] == m && iv[l] < arg)) {
            m = mv[l];
            arg = iv[l];
        }
    }
    return {m, arg, ((zero[0] + zero[1]) + (zero[2] + zero[3])) == 0.0f};
#else
    float m = x[0], zero = 0.0f;
    std::int64_t arg = 0;
    for (std::int64_t i = 0; i < n; ++i) {
        if (x[i] > m) {
            m = x[i];
            arg = i;
        }
        zero += x[i] * 0.0f;
    }
    return {m, arg, zero == 0.0f};
#endif
}

template <bool kWithT>
inline Sums row_sums(const float* x, std::int64_t n, float m) noexcept {
    std::int64_t i = 0;
    double z = 0.0, zt = 0.0;
#ifdef EDGEADAPT_VECTOR
    d2 za = {0.0, 0.0}, zb = {0.0, 0.0}, ta = {0.0, 0.0}, tb = {0.0, 0.0};
    const f4 cut = splat(kCutoff);
    const auto add = [&](f4 t) {
        const f4 e = exp_neg4(t);
        za += lo2(e);
        zb += hi2(e);
        if constexpr (kWithT) {
            const f4 tc = select(t > cut, t, cut);
            ta += lo2(e) * lo2(tc);
            tb += hi2(e) * hi2(tc);
        }
    };
    for (; i + 4 <= n; i += 4) add(load4(x + i) - splat(m));
    if (i < n) {  // padded lanes get t = 2 * kCutoff, so e = 0
        const std::int64_t r = n - i;
        const float pad = 2.0f * kCutoff;
        add(f4{x[i] - m, r > 1 ? x[i + 1] - m : pad, r > 2 ? x[i + 2] - m : pad, pad});
    }
    z = (za[0] + zb[0]) + (za[1] + zb[1]);
    zt = (ta[0] + tb[0]) + (ta[1] + tb[1]);
#else
    for (; i < n; ++i) {
        const float t = x[i] - m;
        const float e = exp_neg(t);
        z += static_cast<double>(e);
        if constexpr (kWithT) {
            const float tc = t > kCutoff ? t : kCutoff;
            zt += static_cast<double>(e) * static_cast<double>(tc);
        }
    }
#endif
    return {z, zt};
}

// Largest value of x[0..n) other than the one at index `skip` (-inf when n == 1).
inline float second_max(const float* x, std::int64_t n, std::int64_t skip) noexcept {
    float m = -std::numeric_limits<float>::infinity();
    if (skip > 0) m = row_max(x, skip).max;
    if (skip + 1 < n) {
        const float after = row_max(x + skip + 1, n - skip - 1).max;
        m = after > m ? after : m;
    }
    return m;
}

template <Measure M>
inline RowResult row(const float* x, std::int64_t n) noexcept {
    const RowMax rm = row_max(x, n);
    if (!rm.finite) return {-1, std::numeric_limits<float>::quiet_NaN()};
    const float m = rm.max;
    const std::int64_t arg = rm.arg;
    const Sums s = row_sums<M == Measure::Entropy>(x, n, m);
    double c;
    if constexpr (M == Measure::MaxProb) {
        c = 1.0 / s.z;
    } else if constexpr (M == Measure::Margin) {
        c = (1.0 - static_cast<double>(exp_neg(second_max(x, n, arg) - m))) / s.z;
    } else {
        c = s.zt / s.z - std::log(s.z);
    }
    return {arg, static_cast<float>(c)};
}

inline bool valid_measure(Measure m) noexcept {
    return m == Measure::MaxProb || m == Measure::Margin || m == Measure::Entropy;
}

inline Status check_batch(const float* logits, std::int64_t batch, std::int64_t classes) noexcept {
    if (logits == nullptr) return Status::NullPointer;
    if (batch < 1 || classes < 2 || classes > std::numeric_limits<std::int32_t>::max())
        return Status::BadShape;
    return Status::Ok;
}

template <Measure M>
inline void confidence_rows(const float* logits, std::int64_t batch, std::int64_t classes,
                            float* conf) noexcept {
    for (std::int64_t b = 0; b < batch; ++b) conf[b] = row<M>(logits + b * classes, classes).conf;
}

template <Measure M>
inline std::int64_t decide_rows(const float* logits, std::int64_t batch, std::int64_t classes,
                                double threshold, std::int64_t* pred, float* conf,
                                std::uint8_t* exit_mask, std::int64_t* continue_idx) noexcept {
    std::int64_t k = 0;
    for (std::int64_t b = 0; b < batch; ++b) {
        const RowResult r = row<M>(logits + b * classes, classes);
        const bool leave = static_cast<double>(r.conf) >= threshold;  // false for NaN
        pred[b] = r.pred;
        conf[b] = r.conf;
        exit_mask[b] = static_cast<std::uint8_t>(leave);
        continue_idx[k] = b;
        k += static_cast<std::int64_t>(!leave);
    }
    return k;
}

// decide_rows for a valid `measure` given at run time.
inline std::int64_t decide_measure(const float* logits, std::int64_t batch, std::int64_t classes,
                                   Measure measure, double threshold, std::int64_t* pred,
                                   float* conf, std::uint8_t* exit_mask,
                                   std::int64_t* continue_idx) noexcept {
    switch (measure) {
        case Measure::Margin:
            return decide_rows<Measure::Margin>(logits, batch, classes, threshold, pred, conf,
                                                exit_mask, continue_idx);
        case Measure::Entropy:
            return decide_rows<Measure::Entropy>(logits, batch, classes, threshold, pred, conf,
                                                 exit_mask, continue_idx);
        default:
            return decide_rows<Measure::MaxProb>(logits, batch, classes, threshold, pred, conf,
                                                 exit_mask, continue_idx);
    }
}

template <Measure M>
inline void answer_rows(const float* logits, std::int64_t batch, std::int64_t classes,
                        std::int64_t* pred, float* conf) noexcept {
    for (std::int64_t b = 0; b < batch; ++b) {
        const RowResult r = row<M>(logits + b * classes, classes);
        pred[b] = r.pred;
        conf[b] = r.conf;
    }
}

}  // namespace detail

// Prediction and confidence of one row of `classes` (>= 2) logits.
inline RowResult row_confidence(const float* row, std::int64_t classes, Measure measure) noexcept {
    switch (measure) {
        case Measure::Margin: return detail::row<Measure::Margin>(row, classes);
        case Measure::Entropy: return detail::row<Measure::Entropy>(row, classes);
        default: return detail::row<Measure::MaxProb>(row, classes);
    }
}

// conf[b] = confidence of row b of the row-major [batch, classes] logits.
inline Status confidence(const float* logits, std::int64_t batch, std::int64_t classes,
                         Measure measure, float* conf) noexcept {
    if (const Status s = detail::check_batch(logits, batch, classes); s != Status::Ok) return s;
    if (conf == nullptr) return Status::NullPointer;
    switch (measure) {
        case Measure::MaxProb: detail::confidence_rows<Measure::MaxProb>(logits, batch, classes, conf); break;
        case Measure::Margin: detail::confidence_rows<Measure::Margin>(logits, batch, classes, conf); break;
        case Measure::Entropy: detail::confidence_rows<Measure::Entropy>(logits, batch, classes, conf); break;
        default: return Status::BadMeasure;
    }
    return Status::Ok;
}

// pred[b] and conf[b] of every row of the row-major [batch, classes] logits: what
// decide() gives when every row exits (a state that answers alone), without the exit
// mask and the continue list.
inline Status answer(const float* logits, std::int64_t batch, std::int64_t classes,
                     Measure measure, std::int64_t* pred, float* conf) noexcept {
    if (const Status s = detail::check_batch(logits, batch, classes); s != Status::Ok) return s;
    if (!pred || !conf) return Status::NullPointer;
    switch (measure) {
        case Measure::MaxProb: detail::answer_rows<Measure::MaxProb>(logits, batch, classes, pred, conf); break;
        case Measure::Margin: detail::answer_rows<Measure::Margin>(logits, batch, classes, pred, conf); break;
        case Measure::Entropy: detail::answer_rows<Measure::Entropy>(logits, batch, classes, pred, conf); break;
        default: return Status::BadMeasure;
    }
    return Status::Ok;
}

// Batch exit decision. Every output holds `batch` entries (caller-provided): pred[b]
// (argmax, -1 for an invalid row), conf[b], exit_mask[b] = conf[b] >= threshold, and
// continue_idx[0..*n_continue) = the rows that do not exit, in order.
inline Status decide(const float* logits, std::int64_t batch, std::int64_t classes,
                     Measure measure, double threshold, std::int64_t* pred, float* conf,
                     std::uint8_t* exit_mask, std::int64_t* continue_idx,
                     std::int64_t* n_continue) noexcept {
    if (const Status s = detail::check_batch(logits, batch, classes); s != Status::Ok) return s;
    if (!pred || !conf || !exit_mask || !continue_idx || !n_continue) return Status::NullPointer;
    if (std::isnan(threshold)) return Status::BadValue;
    if (!detail::valid_measure(measure)) return Status::BadMeasure;
    *n_continue = detail::decide_measure(logits, batch, classes, measure, threshold, pred, conf,
                                         exit_mask, continue_idx);
    return Status::Ok;
}

// ---- Learned exit gates -------------------------------------------------------------
//
// A gate at kept state j (all but the last) scores a row from the features of every
// exit seen so far, in this order: this exit's maxprob, margin and negative entropy
// (each the float32 value row_confidence gives), the agreement of this exit's argmax
// with the row's argmax at the j earlier kept exits (agreeing count / j in double, 0
// when j == 0) and the previous gate's float32 score (0 when j == 0). In double:
//   z = bias;  z = z + w[k] * f_k for k = 0..4, in order (no FMA contraction)
//   z = clamp(z, -80, 80)       (NaN stays NaN)
//   score = 1 / (1 + exp(-z))   rounded once to float32
// (edgeadapt/kernel_ref.py gate_score). The only libm call is exp in double, so the
// score equals the numpy reference's bit for bit unless exp's last-place rounding
// differs there and the double lies next to a float32 rounding boundary: at most 1
// float32 ulp apart. An invalid row (NaN or +-Inf logits) scores NaN and never exits,
// nor do its later gates (their `previous` is NaN).

constexpr std::int64_t kGateFeatures = 5;

// One gate: weights over the features above, and a bias. All finite.
struct Gate {
    double weights[kGateFeatures];
    double bias;
};

namespace detail {

constexpr double kGateClamp = 80.0;

inline bool valid_gate(const Gate& g) noexcept {
    for (double w : g.weights)
        if (!std::isfinite(w)) return false;
    return std::isfinite(g.bias);
}

// A row's maxprob, margin and entropy (the float32 confidences), the features gates and
// the scheduler's estimators read.
struct Confidences {
    float maxprob, margin, entropy;
};

// The confidences of one row into *c and its argmax into *arg; false (and *arg = -1)
// for a row that is not all finite.
inline bool row_confidences(const float* x, std::int64_t classes, Confidences* c,
                            std::int64_t* arg) noexcept {
    const RowMax rm = row_max(x, classes);
    if (!rm.finite) {
        *arg = -1;
        return false;
    }
    const float m = rm.max;
    const Sums s = row_sums<true>(x, classes, m);
    c->maxprob = static_cast<float>(1.0 / s.z);
    c->margin = static_cast<float>(
        (1.0 - static_cast<double>(exp_neg(second_max(x, classes, rm.arg) - m))) / s.z);
    c->entropy = static_cast<float>(s.zt / s.z - std::log(s.z));
    *arg = rm.arg;
    return true;
}

// The logistic of a linear score z (in float64), clamped, rounded once to float32.
inline float logistic(double z) noexcept {
    z = z < -kGateClamp ? -kGateClamp : (z > kGateClamp ? kGateClamp : z);
    return static_cast<float>(1.0 / (1.0 + std::exp(-z)));
}

// Score of one row at position j; *pred gets the row's argmax (-1 when invalid).
inline float gate_row(const float* x, std::int64_t classes, const Gate& g,
                      const std::int64_t* history, std::int64_t j, float previous,
                      std::int64_t* pred) noexcept {
    Confidences c;
    std::int64_t arg;
    if (!row_confidences(x, classes, &c, &arg)) {
        *pred = -1;
        return std::numeric_limits<float>::quiet_NaN();
    }
    std::int64_t agree = 0;
    for (std::int64_t i = 0; i < j; ++i) agree += static_cast<std::int64_t>(history[i] == arg);
    const double agreement = j > 0 ? static_cast<double>(agree) / static_cast<double>(j) : 0.0;
    const double prev = j > 0 ? static_cast<double>(previous) : 0.0;
    double z = g.bias;
    z = z + g.weights[0] * static_cast<double>(c.maxprob);
    z = z + g.weights[1] * static_cast<double>(c.margin);
    z = z + g.weights[2] * static_cast<double>(c.entropy);
    z = z + g.weights[3] * agreement;
    z = z + g.weights[4] * prev;
    *pred = arg;
    return logistic(z);
}

// gate_decide on checked arguments; returns the number of rows that continue.
inline std::int64_t gate_rows(const float* logits, std::int64_t batch, std::int64_t classes,
                              const Gate& gate, double threshold, std::int64_t position,
                              std::int64_t* history, std::int64_t stride, float* previous,
                              std::int64_t* pred, float* score, std::uint8_t* exit_mask,
                              std::int64_t* continue_idx) noexcept {
    std::int64_t k = 0;
    for (std::int64_t b = 0; b < batch; ++b) {
        const std::int64_t* h = history + b * stride;
        std::int64_t p = -1;
        const float sc = gate_row(logits + b * classes, classes, gate, h, position, previous[b], &p);
        const bool leave = static_cast<double>(sc) >= threshold;  // false for NaN
        pred[b] = p;
        score[b] = sc;
        exit_mask[b] = static_cast<std::uint8_t>(leave);
        if (!leave) {
            // k <= b: row k was read already, so moving row b onto it loses nothing.
            std::int64_t* dst = history + k * stride;
            if (k != b) std::memmove(dst, h, static_cast<std::size_t>(position) * sizeof *dst);
            dst[position] = p;
            previous[k] = sc;
            continue_idx[k] = b;
            ++k;
        }
    }
    return k;
}

}  // namespace detail

// Gate score of one row of `classes` logits at kept position `position` (>= 0):
// `history` holds the row's argmax at the `position` earlier kept exits (may be null
// when position == 0), `previous` the previous gate's score (ignored at position 0).
inline Status gate_score(const float* row, std::int64_t classes, const Gate& gate,
                         const std::int64_t* history, std::int64_t position, float previous,
                         std::int64_t* pred, float* score) noexcept {
    if (const Status s = detail::check_batch(row, 1, classes); s != Status::Ok) return s;
    if (!pred || !score || (position > 0 && history == nullptr)) return Status::NullPointer;
    if (position < 0) return Status::BadShape;
    if (!detail::valid_gate(gate)) return Status::BadValue;
    *score = detail::gate_row(row, classes, gate, history, position, previous, pred);
    return Status::Ok;
}

// Batch gate decision at kept position `position`, with the same outputs as decide()
// (pred, score in place of conf, exit_mask = score >= threshold, continue_idx and
// *n_continue) plus the running per-row features, updated and compacted in place:
// `history` is row-major [batch, stride] (stride > position), columns 0..position-1
// holding each row's earlier argmax; `previous` [batch] the previous gate's scores
// (read only when position > 0). Afterwards rows 0..*n_continue-1 of both hold the
// rows that continue, in order, with this state's argmax in column `position` and this
// gate's score: exactly what the next kept state reads. Rows that exit are dropped
// from them, as the caller drops their activations.
inline Status gate_decide(const float* logits, std::int64_t batch, std::int64_t classes,
                          const Gate& gate, double threshold, std::int64_t position,
                          std::int64_t* history, std::int64_t stride, float* previous,
                          std::int64_t* pred, float* score, std::uint8_t* exit_mask,
                          std::int64_t* continue_idx, std::int64_t* n_continue) noexcept {
    if (const Status s = detail::check_batch(logits, batch, classes); s != Status::Ok) return s;
    if (!history || !previous || !pred || !score || !exit_mask || !continue_idx || !n_continue)
        return Status::NullPointer;
    if (position < 0 || stride <= position) return Status::BadShape;
    if (std::isnan(threshold) || !detail::valid_gate(gate)) return Status::BadValue;
    *n_continue = detail::gate_rows(logits, batch, classes, gate, threshold, position, history,
                                    stride, previous, pred, score, exit_mask, continue_idx);
    return Status::Ok;
}

// ---- The content-aware scheduler (branches) ------------------------------------------
//
// A branches plan's scheduler (edgeadapt/planning/scheduler.py) runs the first kept
// branch, then reads its logits' features, in this order: maxprob, margin and negative
// entropy (the float32 values row_confidence gives). One estimator per kept branch but
// the last scores them exactly as a gate does (z = bias; z = z + w[k] * f_k for k =
// 0..2, in order, no FMA contraction; clamp to [-80, 80]; 1 / (1 + exp(-z)) rounded once
// to float32: edgeadapt/kernel_ref.py scheduler_scores). The choice among the S kept
// branches (positions 0..S-1, rising in cost and accuracy), given what is left of the
// budget, `available_ms` (+inf: none), and each branch's tracked cost `costs_ms[j]`
// (costs_ms[0], the first branch's, is not read: it has run):
//   position 0 when score[0] >= threshold[0] (answer with the first branch);
//   else the least j in 1..S-2 with score[j] >= threshold[j] and costs_ms[j] <= available;
//   else the last j >= 1 with costs_ms[j] <= available; else 0.
// Scores compare in double; a NaN score (an invalid row) clears nothing
// (kernel_ref.scheduler_choice).

constexpr std::int64_t kSchedulerFeatures = 3;

// One estimator: weights over the features above, and a bias. All finite.
struct Estimator {
    double weights[kSchedulerFeatures];
    double bias;
};

namespace detail {

inline bool valid_estimators(const Estimator* est, std::int64_t n) noexcept {
    for (std::int64_t e = 0; e < n; ++e) {
        for (double w : est[e].weights)
            if (!std::isfinite(w)) return false;
        if (!std::isfinite(est[e].bias)) return false;
    }
    return true;
}

// The scheduler's choice for one row of checked arguments; scores[0..states-2] and
// *pred are written.
inline std::int64_t schedule_row(const float* x, std::int64_t classes, const Estimator* est,
                                 const double* thresholds, const double* costs_ms,
                                 std::int64_t states, double available_ms, std::int64_t* pred,
                                 float* scores) noexcept {
    const std::int64_t n_est = states - 1;
    Confidences c;
    float f[kSchedulerFeatures];
    if (row_confidences(x, classes, &c, pred)) {
        f[0] = c.maxprob;
        f[1] = c.margin;
        f[2] = c.entropy;
    } else {
        f[0] = f[1] = f[2] = std::numeric_limits<float>::quiet_NaN();
    }
    for (std::int64_t e = 0; e < n_est; ++e) {
        double z = est[e].bias;
        for (std::int64_t k = 0; k < kSchedulerFeatures; ++k)
            z = z + est[e].weights[k] * static_cast<double>(f[k]);
        scores[e] = logistic(z);
    }
    if (n_est == 0) return 0;
    if (static_cast<double>(scores[0]) >= thresholds[0]) return 0;
    for (std::int64_t j = 1; j < n_est; ++j)
        if (static_cast<double>(scores[j]) >= thresholds[j] && costs_ms[j] <= available_ms)
            return j;
    for (std::int64_t j = states - 1; j >= 1; --j)
        if (costs_ms[j] <= available_ms) return j;
    return 0;
}

inline Status check_schedule(const Estimator* est, const double* thresholds,
                             const double* costs_ms, std::int64_t states,
                             double available_ms) noexcept {
    if (states < 1) return Status::BadShape;
    if (states > 1 && (!est || !thresholds)) return Status::NullPointer;
    if (!costs_ms) return Status::NullPointer;
    if (std::isnan(available_ms) || !valid_estimators(est, states - 1)) return Status::BadValue;
    for (std::int64_t j = 0; j < states - 1; ++j)
        if (std::isnan(thresholds[j])) return Status::BadValue;
    for (std::int64_t j = 0; j < states; ++j)
        if (!(costs_ms[j] >= 0.0) || !std::isfinite(costs_ms[j])) return Status::BadValue;
    return Status::Ok;
}

}  // namespace detail

// The scheduler's decision for a batch of the first kept branch's logits [batch, classes]
// over `states` kept branches: `estimators` and `thresholds` hold states - 1 entries,
// `costs_ms` states (each finite and >= 0); `available_ms` must not be NaN (it may be
// negative: nothing fits). Writes pred [batch] (the first branch's argmax, -1 for an
// invalid row), scores [batch, states - 1] row-major and choice [batch] (the kept
// position to answer with).
inline Status schedule(const float* logits, std::int64_t batch, std::int64_t classes,
                       const Estimator* estimators, const double* thresholds,
                       const double* costs_ms, std::int64_t states, double available_ms,
                       std::int64_t* pred, float* scores, std::int64_t* choice) noexcept {
    if (const Status s = detail::check_batch(logits, batch, classes); s != Status::Ok) return s;
    if (!pred || !choice || (states > 1 && !scores)) return Status::NullPointer;
    if (const Status s = detail::check_schedule(estimators, thresholds, costs_ms, states,
                                                available_ms);
        s != Status::Ok)
        return s;
    const std::int64_t n_est = states - 1;
    for (std::int64_t b = 0; b < batch; ++b)
        choice[b] = detail::schedule_row(logits + b * classes, classes, estimators, thresholds,
                                         costs_ms, states, available_ms, pred + b,
                                         scores + b * n_est);
    return Status::Ok;
}

// Budget meaning "no deadline".
constexpr double kNoBudget = std::numeric_limits<double>::infinity();

// The run-time policy over N kept states reached by N hops. Hop i is what the cascade
// runs to reach kept state i: the bundle steps since kept state i - 1 (one step when
// every state is kept, several when a plan skips states; one member for an ensemble).
//
// thresholds: N - 1 values, one per state but the last (the last state always exits).
// hop_costs_ms: N predicted hop latencies, seeded from a profile; observe() moves
// them toward measured latencies, cost <- (1 - ewma) * cost + ewma * measured, so
// contention raises the prediction. cumulative: state i costs hops 0..i (early-exit
// bundle) when true, hop i alone (ensemble run by direct selection) when false; used
// by state_ms() and lookup(). accuracies (optional, N values in [0, 1]): validation
// accuracy per state for lookup(); without them, a later state counts as more accurate.
// Budgets are in ms, >= 0; kNoBudget (+inf) is the deadline-free mode.
// Not thread-safe: observe() mutates the cost table.
class Policy {
  public:
    static Status create(const double* thresholds, std::size_t n_thresholds,
                         const double* hop_costs_ms, std::size_t n_hops, double ewma,
                         Measure measure, const double* accuracies, bool cumulative,
                         Policy& out) {
        if (n_hops < 1) return Status::BadShape;
        if (n_thresholds != n_hops - 1) return Status::BadShape;
        if (hop_costs_ms == nullptr || (n_thresholds > 0 && thresholds == nullptr))
            return Status::NullPointer;
        if (!detail::valid_measure(measure)) return Status::BadMeasure;
        if (!(ewma > 0.0 && ewma <= 1.0)) return Status::BadValue;
        Policy p;
        // Room for every value before one is read: a length past what memory can hold
        // (a caller's wrong count, near SIZE_MAX) is std::bad_alloc, not a read past
        // the end of the caller's arrays.
        if (n_hops > p.costs_.max_size()) throw std::bad_alloc();
        p.thresholds_.reserve(n_thresholds);
        p.costs_.reserve(n_hops);
        p.priors_.reserve(n_hops);
        if (accuracies != nullptr) p.accuracies_.reserve(n_hops);
        for (std::size_t i = 0; i < n_thresholds; ++i)
            if (std::isnan(thresholds[i])) return Status::BadValue;
        for (std::size_t i = 0; i < n_hops; ++i)
            if (!std::isfinite(hop_costs_ms[i]) || hop_costs_ms[i] < 0.0) return Status::BadValue;
        if (accuracies != nullptr)
            for (std::size_t i = 0; i < n_hops; ++i)
                if (!(accuracies[i] >= 0.0 && accuracies[i] <= 1.0)) return Status::BadValue;
        p.thresholds_.assign(thresholds, thresholds + n_thresholds);
        p.costs_.assign(hop_costs_ms, hop_costs_ms + n_hops);
        p.priors_ = p.costs_;
        if (accuracies != nullptr) p.accuracies_.assign(accuracies, accuracies + n_hops);
        p.ewma_ = ewma;
        p.measure_ = measure;
        p.cumulative_ = cumulative;
        out = std::move(p);
        return Status::Ok;
    }

    std::int64_t num_states() const noexcept { return static_cast<std::int64_t>(costs_.size()); }
    Measure measure() const noexcept { return measure_; }
    double ewma() const noexcept { return ewma_; }
    bool cumulative() const noexcept { return cumulative_; }
    const std::vector<double>& thresholds() const noexcept { return thresholds_; }
    const std::vector<double>& costs_ms() const noexcept { return costs_; }
    const std::vector<double>& accuracies() const noexcept { return accuracies_; }

    // Threshold of `state`; -inf for the last state (it always exits).
    Status threshold(std::int64_t state, double* out) const noexcept {
        if (out == nullptr) return Status::NullPointer;
        if (!has_state(state)) return Status::OutOfRange;
        *out = state + 1 == num_states() ? -std::numeric_limits<double>::infinity()
                                         : thresholds_[static_cast<std::size_t>(state)];
        return Status::Ok;
    }

    // Predicted latency of one hop.
    Status predicted_ms(std::int64_t hop, double* out) const noexcept {
        if (out == nullptr) return Status::NullPointer;
        if (!has_state(hop)) return Status::OutOfRange;
        *out = costs_[static_cast<std::size_t>(hop)];
        return Status::Ok;
    }

    // Predicted cost of reaching `state` from scratch (see `cumulative`).
    Status state_ms(std::int64_t state, double* out) const noexcept {
        if (out == nullptr) return Status::NullPointer;
        if (!has_state(state)) return Status::OutOfRange;
        *out = state_cost(static_cast<std::size_t>(state));
        return Status::Ok;
    }

    // Track the `q`-quantile of each hop's measured cost instead of its mean (q in (0, 1);
    // 0 goes back to the mean): what a plan made on p90 costs needs, since a mean drifts
    // from the p90 it was seeded with, and one preempted call drags a mean up by its
    // whole size but a quantile by one bounded step.
    Status set_quantile(double q) noexcept {
        if (!(q == 0.0 || (q > 0.0 && q < 1.0))) return Status::BadValue;
        quantile_ = q;
        return Status::Ok;
    }
    double quantile() const noexcept { return quantile_; }

    // Fold one measured latency of `hop` into its prediction. Mean (quantile 0): the EWMA
    // c = (1 - ewma) c + ewma x. Quantile q: c *= 1 + ewma q when x > c, else
    // c *= 1 - ewma (1 - q); at rest P(x > c) q = P(x <= c) (1 - q), so P(x <= c) = q.
    // A zero prediction (nothing to scale) moves ewma of the way to x instead.
    Status observe(std::int64_t hop, double measured_ms) noexcept {
        if (!has_state(hop)) return Status::OutOfRange;
        if (!std::isfinite(measured_ms) || measured_ms < 0.0) return Status::BadValue;
        double& c = costs_[static_cast<std::size_t>(hop)];
        if (quantile_ == 0.0 || c <= 0.0)
            c = (1.0 - ewma_) * c + ewma_ * measured_ms;
        else if (measured_ms > c)
            c *= 1.0 + ewma_ * quantile_;
        else
            c *= 1.0 - ewma_ * (1.0 - quantile_);
        return Status::Ok;
    }

    // Move the prediction of `hop` one EWMA update back toward its prior (the cost given
    // at creation). Call it when a hop was skipped for the budget: a hop is measured
    // only when it runs, so without this one slow run (a preempted call) could inflate
    // its prediction and keep it from ever running, and so from being measured, again.
    Status decay(std::int64_t hop) noexcept {
        if (!has_state(hop)) return Status::OutOfRange;
        const auto s = static_cast<std::size_t>(hop);
        costs_[s] = (1.0 - ewma_) * costs_[s] + ewma_ * priors_[s];
        return Status::Ok;
    }

    // Whether `next_hop` is predicted to finish inside the budget, `elapsed_ms` spent.
    Status fits(std::int64_t next_hop, double elapsed_ms, double budget_ms, bool* out) const noexcept {
        if (out == nullptr) return Status::NullPointer;
        if (!has_state(next_hop)) return Status::OutOfRange;
        if (!valid_time(elapsed_ms) || !valid_budget(budget_ms)) return Status::BadValue;
        *out = elapsed_ms + costs_[static_cast<std::size_t>(next_hop)] <= budget_ms;
        return Status::Ok;
    }

    // What to do after `state` produced `confidence`, `elapsed_ms` into the sample:
    // Exit at the last state or when confidence >= threshold (NaN never is); else
    // ExitBudget when the next hop does not fit the budget; else Continue.
    Status next(std::int64_t state, double confidence, double elapsed_ms, double budget_ms,
                Action* out) const noexcept {
        if (out == nullptr) return Status::NullPointer;
        if (!has_state(state)) return Status::OutOfRange;
        if (!valid_time(elapsed_ms) || !valid_budget(budget_ms)) return Status::BadValue;
        const auto s = static_cast<std::size_t>(state);
        if (state + 1 == num_states() || confidence >= thresholds_[s]) {
            *out = Action::Exit;
        } else if (elapsed_ms + costs_[s + 1] > budget_ms) {
            *out = Action::ExitBudget;
        } else {
            *out = Action::Continue;
        }
        return Status::Ok;
    }

    // AdaInf's content-agnostic lookup table: the most accurate state whose predicted
    // cost fits the budget (ties: the cheaper one); -1 when none fits.
    Status lookup(double budget_ms, std::int64_t* state) const noexcept {
        if (state == nullptr) return Status::NullPointer;
        if (!valid_budget(budget_ms)) return Status::BadValue;
        std::int64_t best = -1;
        double best_acc = -1.0, best_cost = 0.0;
        for (std::size_t i = 0; i < costs_.size(); ++i) {
            const double cost = state_cost(i);
            if (cost > budget_ms) continue;
            const double acc = accuracies_.empty() ? static_cast<double>(i) : accuracies_[i];
            if (acc > best_acc || (acc == best_acc && cost < best_cost)) {
                best = static_cast<std::int64_t>(i);
                best_acc = acc;
                best_cost = cost;
            }
        }
        *state = best;
        return Status::Ok;
    }

  private:
    bool has_state(std::int64_t i) const noexcept { return i >= 0 && i < num_states(); }
    static bool valid_time(double ms) noexcept { return std::isfinite(ms) && ms >= 0.0; }
    static bool valid_budget(double ms) noexcept { return !std::isnan(ms) && ms >= 0.0; }

    double state_cost(std::size_t state) const noexcept {
        if (!cumulative_) return costs_[state];
        double total = 0.0;
        for (std::size_t i = 0; i <= state; ++i) total += costs_[i];
        return total;
    }

    std::vector<double> thresholds_;
    std::vector<double> costs_;
    std::vector<double> priors_;
    std::vector<double> accuracies_;
    double ewma_ = 0.2;
    double quantile_ = 0.0;
    Measure measure_ = Measure::MaxProb;
    bool cumulative_ = true;
};

}  // namespace edgeadapt
