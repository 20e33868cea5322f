// ctest: the header-only kernel on hand-checked cases, edge rows and bad input.
#include <cmath>
#include <cstring>
#include <cstdio>
#include <limits>
#include <vector>

#include "check.hpp"
#include "edgeadapt/kernel.hpp"

namespace ea = edgeadapt;

static bool near(double a, double b, double tol = 1e-6) { return std::fabs(a - b) <= tol; }

static void exp_accuracy() {
    CHECK(ea::detail::exp_neg(0.0f) == 1.0f);
    CHECK(ea::detail::exp_neg(-81.0f) == 0.0f);
    CHECK(ea::detail::exp_neg(-std::numeric_limits<float>::infinity()) == 0.0f);
    for (float t = -79.9f; t <= 0.0f; t += 0.0137f) {
        const double want = std::exp(static_cast<double>(t));
        CHECK(std::fabs(ea::detail::exp_neg(t) - want) <= 3e-7 * want);
    }
}

static void confidence_values() {
    const float x[3] = {1.0f, 2.0f, 3.0f};
    const double z = std::exp(-2.0) + std::exp(-1.0) + 1.0;
    ea::RowResult r = ea::row_confidence(x, 3, ea::Measure::MaxProb);
    CHECK(r.pred == 2 && near(r.conf, 1.0 / z));
    r = ea::row_confidence(x, 3, ea::Measure::Margin);
    CHECK(r.pred == 2 && near(r.conf, (1.0 - std::exp(-1.0)) / z));
    double neg_h = 0.0;
    for (float v : x) {
        const double p = std::exp(v - 3.0) / z;
        neg_h += p * std::log(p);
    }
    r = ea::row_confidence(x, 3, ea::Measure::Entropy);
    CHECK(r.pred == 2 && near(r.conf, neg_h));

    // ties: first index wins, margin 0, uniform row gives 1/C and -log C
    const float tie[5] = {7.0f, 9.0f, 9.0f, 9.0f, 9.0f};
    CHECK(ea::row_confidence(tie, 5, ea::Measure::Margin).pred == 1);
    CHECK(ea::row_confidence(tie, 5, ea::Measure::Margin).conf == 0.0f);
    const std::vector<float> flat(10, -3.3e38f);
    CHECK(ea::row_confidence(flat.data(), 10, ea::Measure::MaxProb).conf == 0.1f);
    CHECK(near(ea::row_confidence(flat.data(), 10, ea::Measure::Entropy).conf, -std::log(10.0)));

    // huge magnitudes: no overflow, a clear winner is certain
    const float huge[4] = {-3.4e38f, 3.4e38f, 0.0f, -1.0f};
    r = ea::row_confidence(huge, 4, ea::Measure::Entropy);
    CHECK(r.pred == 1 && r.conf == 0.0f);
    CHECK(ea::row_confidence(huge, 4, ea::Measure::MaxProb).conf == 1.0f);

    // NaN / Inf rows are invalid
    const float inf = std::numeric_limits<float>::infinity();
    const float bad[3][3] = {{0.0f, std::nanf(""), 1.0f}, {inf, 0.0f, 1.0f}, {-inf, 0.0f, 1.0f}};
    for (const auto& row : bad) {
        r = ea::row_confidence(row, 3, ea::Measure::MaxProb);
        CHECK(r.pred == -1 && std::isnan(r.conf));
    }
}

static void decide_batch() {
    // rows: confident, unsure, NaN, confident (C = 9 exercises the vector body and tail)
    std::vector<float> x(4 * 9, 0.0f);
    x[0 * 9 + 4] = 20.0f;
    x[2 * 9 + 1] = std::nanf("");
    x[3 * 9 + 8] = 30.0f;
    std::vector<std::int64_t> pred(4), idx(4);
    std::vector<float> conf(4);
    std::vector<std::uint8_t> mask(4);
    std::int64_t k = -1;
    CHECK(ea::decide(x.data(), 4, 9, ea::Measure::MaxProb, 0.9, pred.data(), conf.data(),
                     mask.data(), idx.data(), &k) == ea::Status::Ok);
    CHECK(pred[0] == 4 && pred[1] == 0 && pred[2] == -1 && pred[3] == 8);
    CHECK(mask[0] == 1 && mask[1] == 0 && mask[2] == 0 && mask[3] == 1);
    CHECK(k == 2 && idx[0] == 1 && idx[1] == 2);
    CHECK(near(conf[1], 1.0 / 9.0));

    // -inf threshold: every valid row exits, NaN rows still continue
    CHECK(ea::decide(x.data(), 4, 9, ea::Measure::Entropy, -std::numeric_limits<double>::infinity(),
                     pred.data(), conf.data(), mask.data(), idx.data(), &k) == ea::Status::Ok);
    CHECK(k == 1 && idx[0] == 2);

    // bad input
    CHECK(ea::decide(x.data(), 0, 9, ea::Measure::MaxProb, 0.5, pred.data(), conf.data(),
                     mask.data(), idx.data(), &k) == ea::Status::BadShape);
    CHECK(ea::decide(x.data(), 4, 1, ea::Measure::MaxProb, 0.5, pred.data(), conf.data(),
                     mask.data(), idx.data(), &k) == ea::Status::BadShape);
    CHECK(ea::decide(x.data(), 4, 9, ea::Measure::MaxProb, std::nan(""), pred.data(), conf.data(),
                     mask.data(), idx.data(), &k) == ea::Status::BadValue);
    CHECK(ea::decide(nullptr, 4, 9, ea::Measure::MaxProb, 0.5, pred.data(), conf.data(),
                     mask.data(), idx.data(), &k) == ea::Status::NullPointer);
    CHECK(ea::decide(x.data(), 4, 9, static_cast<ea::Measure>(7), 0.5, pred.data(), conf.data(),
                     mask.data(), idx.data(), &k) == ea::Status::BadMeasure);
    CHECK(ea::confidence(x.data(), 4, 9, ea::Measure::MaxProb, nullptr) == ea::Status::NullPointer);

    // answer: decide's pred and conf for every row, for each measure
    for (ea::Measure m : {ea::Measure::MaxProb, ea::Measure::Margin, ea::Measure::Entropy}) {
        std::vector<std::int64_t> apred(4, -7);
        std::vector<float> aconf(4, -7.0f);
        CHECK(ea::answer(x.data(), 4, 9, m, apred.data(), aconf.data()) == ea::Status::Ok);
        CHECK(ea::decide(x.data(), 4, 9, m, 0.5, pred.data(), conf.data(), mask.data(), idx.data(),
                         &k) == ea::Status::Ok);
        for (int b = 0; b < 4; ++b) {
            CHECK(apred[b] == pred[b]);
            CHECK(std::memcmp(&aconf[b], &conf[b], sizeof(float)) == 0);  // NaN row included
        }
    }
    CHECK(ea::answer(x.data(), 0, 9, ea::Measure::MaxProb, pred.data(), conf.data()) ==
          ea::Status::BadShape);
    CHECK(ea::answer(x.data(), 4, 9, ea::Measure::MaxProb, nullptr, conf.data()) ==
          ea::Status::NullPointer);
    CHECK(ea::answer(x.data(), 4, 9, static_cast<ea::Measure>(7), pred.data(), conf.data()) ==
          ea::Status::BadMeasure);
}

static void policy() {
    const double th[2] = {0.8, 0.9};
    const double cost[3] = {1.0, 2.0, 4.0};
    const double acc[3] = {0.6, 0.8, 0.75};
    ea::Policy p;
    CHECK(ea::Policy::create(th, 2, cost, 3, 0.5, ea::Measure::MaxProb, nullptr, true, p) ==
          ea::Status::Ok);
    ea::Action a;
    CHECK(p.next(0, 0.85, 1.0, ea::kNoBudget, &a) == ea::Status::Ok && a == ea::Action::Exit);
    CHECK(p.next(0, 0.5, 1.0, ea::kNoBudget, &a) == ea::Status::Ok && a == ea::Action::Continue);
    CHECK(p.next(0, std::nan(""), 1.0, 10.0, &a) == ea::Status::Ok && a == ea::Action::Continue);
    CHECK(p.next(0, 0.5, 1.0, 3.0, &a) == ea::Status::Ok && a == ea::Action::Continue);
    CHECK(p.next(0, 0.5, 1.0, 2.9, &a) == ea::Status::Ok && a == ea::Action::ExitBudget);
    CHECK(p.next(2, 0.0, 50.0, 1.0, &a) == ea::Status::Ok && a == ea::Action::Exit);
    double v = 0.0;
    CHECK(p.threshold(2, &v) == ea::Status::Ok && std::isinf(v) && v < 0);

    // EWMA: contention raises the predicted cost until the hop no longer fits
    CHECK(p.observe(1, 6.0) == ea::Status::Ok);
    CHECK(p.predicted_ms(1, &v) == ea::Status::Ok && v == 4.0);
    CHECK(p.next(0, 0.5, 1.0, 3.0, &a) == ea::Status::Ok && a == ea::Action::ExitBudget);
    bool fits = true;
    CHECK(p.fits(1, 1.0, 5.0, &fits) == ea::Status::Ok && fits);
    CHECK(p.fits(1, 1.5, 5.0, &fits) == ea::Status::Ok && !fits);

    // decay: a skipped hop drifts back toward its prior (4 -> 3 -> 2.5 with ewma 0.5)
    CHECK(p.decay(1) == ea::Status::Ok);
    CHECK(p.predicted_ms(1, &v) == ea::Status::Ok && v == 3.0);
    CHECK(p.decay(1) == ea::Status::Ok);
    CHECK(p.predicted_ms(1, &v) == ea::Status::Ok && v == 2.5);
    CHECK(p.decay(3) == ea::Status::OutOfRange);
    CHECK(p.observe(1, 2.0) == ea::Status::Ok);  // back to the prior: lookup below holds

    // lookup: cumulative costs 1, 5, 9
    std::int64_t s = 99;
    CHECK(p.lookup(0.5, &s) == ea::Status::Ok && s == -1);
    CHECK(p.lookup(5.0, &s) == ea::Status::Ok && s == 1);
    CHECK(p.lookup(ea::kNoBudget, &s) == ea::Status::Ok && s == 2);
    ea::Policy q;
    CHECK(ea::Policy::create(th, 2, cost, 3, 0.2, ea::Measure::Margin, acc, false, q) == ea::Status::Ok);
    CHECK(q.lookup(100.0, &s) == ea::Status::Ok && s == 1);  // most accurate, not the last
    CHECK(q.state_ms(2, &v) == ea::Status::Ok && v == 4.0);

    // bad input
    CHECK(p.next(3, 0.5, 1.0, 3.0, &a) == ea::Status::OutOfRange);
    CHECK(p.next(0, 0.5, 1.0, -1.0, &a) == ea::Status::BadValue);
    CHECK(p.next(0, 0.5, 1.0, std::nan(""), &a) == ea::Status::BadValue);
    CHECK(p.next(0, 0.5, -1.0, 3.0, &a) == ea::Status::BadValue);
    CHECK(p.lookup(-2.0, &s) == ea::Status::BadValue);
    CHECK(p.observe(0, std::nan("")) == ea::Status::BadValue);
    CHECK(p.observe(-1, 1.0) == ea::Status::OutOfRange);
    const double nan_th[2] = {std::nan(""), 0.5};
    ea::Policy r;
    CHECK(ea::Policy::create(nan_th, 2, cost, 3, 0.2, ea::Measure::MaxProb, nullptr, true, r) ==
          ea::Status::BadValue);
    CHECK(ea::Policy::create(th, 1, cost, 3, 0.2, ea::Measure::MaxProb, nullptr, true, r) ==
          ea::Status::BadShape);
    CHECK(ea::Policy::create(th, 2, cost, 3, 0.0, ea::Measure::MaxProb, nullptr, true, r) ==
          ea::Status::BadValue);
    const double neg_cost[3] = {1.0, -2.0, 4.0};
    CHECK(ea::Policy::create(th, 2, neg_cost, 3, 0.2, ea::Measure::MaxProb, nullptr, true, r) ==
          ea::Status::BadValue);
}

// The gate score written out from its definition (kernel.hpp, "Learned exit gates").
static double gate_by_hand(const float* x, std::int64_t c, const ea::Gate& g,
                           const std::int64_t* hist, std::int64_t j, float prev) {
    const ea::RowResult mp = ea::row_confidence(x, c, ea::Measure::MaxProb);
    const double f[5] = {mp.conf, ea::row_confidence(x, c, ea::Measure::Margin).conf,
                         ea::row_confidence(x, c, ea::Measure::Entropy).conf, 0.0,
                         j > 0 ? static_cast<double>(prev) : 0.0};
    double agree = 0.0;
    for (std::int64_t i = 0; i < j; ++i) agree += hist[i] == mp.pred ? 1.0 : 0.0;
    const double fa[5] = {f[0], f[1], f[2], j > 0 ? agree / static_cast<double>(j) : 0.0, f[4]};
    double z = g.bias;
    for (int k = 0; k < 5; ++k) z = z + g.weights[k] * fa[k];
    z = std::fmin(80.0, std::fmax(-80.0, z));
    return 1.0 / (1.0 + std::exp(-z));
}

static void gates() {
    const ea::Gate g{{2.0, 1.5, 0.5, 1.0, -0.7}, -1.25};
    const float x[5] = {0.3f, 2.0f, -1.0f, 1.9f, 0.0f};
    const std::int64_t hist[3] = {1, 3, 1};
    std::int64_t p = -7;
    float sc = 0.0f;
    CHECK(ea::gate_score(x, 5, g, hist, 3, 0.4f, &p, &sc) == ea::Status::Ok);
    CHECK(p == 1 && sc == static_cast<float>(gate_by_hand(x, 5, g, hist, 3, 0.4f)));
    CHECK(ea::gate_score(x, 5, g, nullptr, 0, std::nanf(""), &p, &sc) == ea::Status::Ok);
    CHECK(sc == static_cast<float>(gate_by_hand(x, 5, g, nullptr, 0, 0.0f)));  // previous unread
    // saturation: the clamp keeps exp finite, the float32 score is exactly 1 or tiny
    const ea::Gate big{{1e6, 0, 0, 0, 0}, 0.0}, neg{{-1e6, 0, 0, 0, 0}, 0.0};
    CHECK(ea::gate_score(x, 5, big, nullptr, 0, 0.0f, &p, &sc) == ea::Status::Ok && sc == 1.0f);
    CHECK(ea::gate_score(x, 5, neg, nullptr, 0, 0.0f, &p, &sc) == ea::Status::Ok);
    CHECK(sc == static_cast<float>(1.0 / (1.0 + std::exp(80.0))) && sc > 0.0f);

    // batch: rows 0 and 2 agree with their history and exit; row 1 NaN; row 3 disagrees
    const ea::Gate agree{{0, 0, 0, 10.0, 0}, -5.0};
    std::vector<float> lx(4 * 6, 0.0f);
    lx[0 * 6 + 2] = 5.0f;
    lx[1 * 6 + 0] = std::nanf("");
    lx[2 * 6 + 4] = 5.0f;
    lx[3 * 6 + 1] = 5.0f;
    // stride 3, position 1: column 0 holds the earlier argmax
    std::vector<std::int64_t> h = {2, 9, 9, 0, 9, 9, 4, 9, 9, 5, 9, 9};
    std::vector<float> prev = {0.1f, 0.2f, 0.3f, 0.4f};
    std::vector<std::int64_t> pred(4), idx(4);
    std::vector<float> score(4);
    std::vector<std::uint8_t> mask(4);
    std::int64_t k = -1;
    CHECK(ea::gate_decide(lx.data(), 4, 6, agree, 0.5, 1, h.data(), 3, prev.data(), pred.data(),
                          score.data(), mask.data(), idx.data(), &k) == ea::Status::Ok);
    CHECK(pred[0] == 2 && pred[1] == -1 && pred[2] == 4 && pred[3] == 1);
    CHECK(mask[0] == 1 && mask[1] == 0 && mask[2] == 1 && mask[3] == 0);
    CHECK(std::isnan(score[1]) && score[0] > 0.99f && score[3] < 0.01f);
    CHECK(k == 2 && idx[0] == 1 && idx[1] == 3);
    // compacted in place: rows 1 and 3 moved up, this argmax appended, this score kept
    CHECK(h[0] == 0 && h[1] == -1 && h[3] == 5 && h[4] == 1);
    CHECK(std::isnan(prev[0]) && prev[1] == score[3]);
    for (std::int64_t b = 0; b < 4; ++b) {
        const std::int64_t before[4] = {2, 0, 4, 5};
        if (b == 1) continue;
        CHECK(score[b] == static_cast<float>(gate_by_hand(&lx[b * 6], 6, agree, &before[b], 1,
                                                          0.1f * static_cast<float>(b + 1))));
    }

    // bad input
    CHECK(ea::gate_decide(lx.data(), 4, 6, agree, 0.5, 3, h.data(), 3, prev.data(), pred.data(),
                          score.data(), mask.data(), idx.data(), &k) == ea::Status::BadShape);
    CHECK(ea::gate_decide(lx.data(), 4, 6, agree, std::nan(""), 0, h.data(), 3, prev.data(),
                          pred.data(), score.data(), mask.data(), idx.data(), &k) ==
          ea::Status::BadValue);
    const ea::Gate inf_gate{{0, std::numeric_limits<double>::infinity(), 0, 0, 0}, 0.0};
    CHECK(ea::gate_decide(lx.data(), 4, 6, inf_gate, 0.5, 0, h.data(), 3, prev.data(),
                          pred.data(), score.data(), mask.data(), idx.data(), &k) ==
          ea::Status::BadValue);
    CHECK(ea::gate_decide(lx.data(), 4, 6, agree, 0.5, 0, nullptr, 3, prev.data(), pred.data(),
                          score.data(), mask.data(), idx.data(), &k) == ea::Status::NullPointer);
    CHECK(ea::gate_score(x, 5, g, nullptr, 2, 0.0f, &p, &sc) == ea::Status::NullPointer);
    CHECK(ea::gate_score(x, 5, g, hist, -1, 0.0f, &p, &sc) == ea::Status::BadShape);
}

// The scheduler's rule on hand-set estimators (kernel.hpp, "The content-aware scheduler").
static void scheduler() {
    // row 0 sure, row 1 unsure, row 2 invalid (NaN)
    const float x[3][3] = {{10.0f, 0.0f, 0.0f}, {1.0f, 1.0f, 1.0f}, {0.0f, std::nanf(""), 0.0f}};
    // estimator 0 rises with maxprob, estimator 1 is always 0.7, estimator 2 always 0.1
    const ea::Estimator est[3] = {{{20.0, 0.0, 0.0}, -10.0}, {{0, 0, 0}, 0.8472978603872037},
                                  {{0, 0, 0}, -2.1972245773362196}};
    const double t[3] = {0.5, 0.6, 0.5};
    const double costs[4] = {1.0, 2.0, 3.0, 4.0};
    std::int64_t pred[3], choice[3];
    float scores[9];
    CHECK(ea::schedule(&x[0][0], 3, 3, est, t, costs, 4, ea::kNoBudget, pred, scores, choice) ==
          ea::Status::Ok);
    CHECK(pred[0] == 0 && pred[2] == -1);
    const double mp = ea::row_confidence(x[0], 3, ea::Measure::MaxProb).conf;
    double z = -10.0;
    z = z + 20.0 * mp;
    CHECK(scores[0] == static_cast<float>(1.0 / (1.0 + std::exp(-z))));
    CHECK(near(scores[1], 0.7, 1e-6) && near(scores[2], 0.1, 1e-6));
    CHECK(choice[0] == 0);  // sure: the first branch answers
    CHECK(choice[1] == 1);  // the cheapest branch whose estimate clears
    // an invalid row scores NaN everywhere, clears nothing: the most accurate branch
    CHECK(std::isnan(scores[6]) && std::isnan(scores[7]) && choice[2] == 3);
    // 1.5 ms left: no second branch fits, the first answers
    CHECK(ea::schedule(&x[0][0], 3, 3, est, t, costs, 4, 1.5, pred, scores, choice) ==
          ea::Status::Ok);
    CHECK(choice[0] == 0 && choice[1] == 0 && choice[2] == 0);
    // estimator 1 never clears: the most accurate affordable (the last that fits)
    const double never[3] = {0.5, 2.0, 0.5};
    CHECK(ea::schedule(&x[0][0], 3, 3, est, never, costs, 4, 3.5, pred, scores, choice) ==
          ea::Status::Ok);
    CHECK(choice[0] == 0 && choice[1] == 2);
    CHECK(ea::schedule(&x[0][0], 3, 3, est, never, costs, 4, ea::kNoBudget, pred, scores,
                       choice) == ea::Status::Ok);
    CHECK(choice[1] == 3);
    // one kept branch: nothing to decide
    CHECK(ea::schedule(&x[0][0], 3, 3, nullptr, nullptr, costs, 1, 0.0, pred, nullptr, choice) ==
          ea::Status::Ok);
    CHECK(choice[0] == 0 && choice[1] == 0);
    // bad input
    CHECK(ea::schedule(&x[0][0], 3, 3, est, t, costs, 4, std::nan(""), pred, scores, choice) ==
          ea::Status::BadValue);
    const double nan_t[3] = {0.5, std::nan(""), 0.5};
    CHECK(ea::schedule(&x[0][0], 3, 3, est, nan_t, costs, 4, 1.0, pred, scores, choice) ==
          ea::Status::BadValue);
    const double bad_costs[4] = {1.0, -2.0, 3.0, 4.0};
    CHECK(ea::schedule(&x[0][0], 3, 3, est, t, bad_costs, 4, 1.0, pred, scores, choice) ==
          ea::Status::BadValue);
    const ea::Estimator inf_est[1] = {{{0, std::numeric_limits<double>::infinity(), 0}, 0.0}};
    CHECK(ea::schedule(&x[0][0], 3, 3, inf_est, t, costs, 2, 1.0, pred, scores, choice) ==
          ea::Status::BadValue);
    CHECK(ea::schedule(&x[0][0], 3, 3, est, t, costs, 0, 1.0, pred, scores, choice) ==
          ea::Status::BadShape);
    CHECK(ea::schedule(&x[0][0], 3, 3, est, t, costs, 4, 1.0, pred, nullptr, choice) ==
          ea::Status::NullPointer);
}

int main() {
    exp_accuracy();
    confidence_values();
    decide_batch();
    gates();
    scheduler();
    policy();
    return edgeadapt::testing::checks_passed("kernel");
}
