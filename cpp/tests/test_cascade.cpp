// ctest: the cascade engine (cascade.hpp) over a hop runner that serves fixed logits:
// routes, decisions and compaction, budgets, the budget table, gates, declines.
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "check.hpp"
#include "edgeadapt/cascade.hpp"

namespace ea = edgeadapt;

constexpr std::int64_t kClasses = 3;

// Logits per hop and batch row; records what it was asked to run and to carry.
struct FixedHops {
    static constexpr bool kCompacts = true;
    std::vector<std::vector<std::vector<float>>> logits;  // [hop][row][class]
    std::size_t decline_at = 99;
    std::vector<std::size_t> ran;
    std::vector<std::vector<std::int64_t>> carried;  // each compaction's keep list
    std::vector<float> buffer;

    const float* run(std::size_t hop, std::int64_t active, const std::int64_t* rows,
                     ea::CascadeResult& out) {
        ran.push_back(hop);
        if (hop == decline_at) return nullptr;
        buffer.clear();
        for (std::int64_t b = 0; b < active; ++b) {
            const auto& row = logits[hop][static_cast<std::size_t>(rows ? rows[b] : b)];
            buffer.insert(buffer.end(), row.begin(), row.end());
        }
        out.add_step(static_cast<std::int64_t>(hop), 0.5, active);
        return buffer.data();
    }
    void compact(std::size_t, const std::int64_t* keep, std::int64_t k) {
        carried.emplace_back(keep, keep + k);
    }
};

// The same at batch 1 only, never compacting (as the Python binding's hop runner).
struct OneRowHops {
    static constexpr bool kCompacts = false;
    FixedHops inner;
    const float* run(std::size_t hop, std::int64_t active, const std::int64_t* rows,
                     ea::CascadeResult& out) {
        return inner.run(hop, active, rows, out);
    }
};

// A row whose maxprob is about `p` over 3 classes, argmax `arg`.
static std::vector<float> sure(double p, int arg) {
    const float hi = static_cast<float>(std::log(2.0 * p / (1.0 - p)));
    std::vector<float> row(kClasses, 0.0f);
    row[static_cast<std::size_t>(arg)] = hi;
    return row;
}

static ea::Policy policy(std::vector<double> thresholds, std::vector<double> costs,
                         const std::vector<double>* accuracies = nullptr, bool cumulative = true) {
    ea::Policy p;
    const ea::Status s = ea::Policy::create(thresholds.data(), thresholds.size(), costs.data(),
                                            costs.size(), 0.2, ea::Measure::MaxProb,
                                            accuracies ? accuracies->data() : nullptr, cumulative, p);
    CHECK(s == ea::Status::Ok);
    return p;
}

static ea::Cascade cascade(ea::Policy& p, std::vector<ea::Gate> gates = {},
                           ea::Cascade::Walk walk = ea::Cascade::Walk::Cascade,
                           double overhead = 0.0) {
    ea::Cascade c;
    std::vector<std::int64_t> states;
    for (std::int64_t i = 0; i < p.num_states(); ++i) states.push_back(10 + i);
    CHECK(ea::Cascade::create(&p, states, std::move(gates), overhead, kClasses, walk, c) ==
          ea::Status::Ok);
    return c;
}

// Rows exit where their confidence first reaches the threshold; survivors are compacted.
static void thresholds_and_compaction() {
    ea::Policy p = policy({0.8, 0.8}, {1.0, 1.0, 1.0});
    ea::Cascade c = cascade(p);
    FixedHops h;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    h.logits = {
        {sure(0.9, 0), sure(0.5, 1), sure(0.5, 2), {nan, 0.0f, 0.0f}},
        {sure(0.9, 1), sure(0.5, 1), sure(0.9, 2), {nan, 0.0f, 0.0f}},
        {sure(0.6, 1), sure(0.6, 0), sure(0.6, 1), {nan, 0.0f, 0.0f}},
    };
    ea::CascadeResult out;
    CHECK(c.run(h, 4, ea::kNoBudget, ea::Cascade::Clock::now(), out));
    CHECK((out.exit_state == std::vector<std::int64_t>{10, 12, 11, 12}));
    CHECK((out.pred == std::vector<std::int64_t>{0, 0, 2, -1}));
    CHECK(out.conf[0] == ea::row_confidence(h.logits[0][0].data(), kClasses, ea::Measure::MaxProb).conf);
    CHECK(out.conf[1] == ea::row_confidence(h.logits[2][1].data(), kClasses, ea::Measure::MaxProb).conf);
    CHECK(std::isnan(out.conf[3]));  // a NaN row never exits and answers -1 at the last
    CHECK((out.budget_exit == std::vector<std::uint8_t>{0, 0, 0, 0}));
    CHECK((out.step_rows == std::vector<std::int64_t>{4, 3, 2}));
    CHECK((out.step_index == std::vector<std::int64_t>{0, 1, 2}));
    // hop 0 keeps active rows 1, 2, 3; hop 1 keeps active positions 0 and 2 (rows 1, 3)
    CHECK(h.carried.size() == 2);
    CHECK((h.carried[0] == std::vector<std::int64_t>{1, 2, 3}));
    CHECK((h.carried[1] == std::vector<std::int64_t>{0, 2}));
    CHECK(out.total_ms >= 0.0);
    // every hop was observed: its tiny measured time pulled the cost below 1 ms
    for (double cost : p.costs_ms()) CHECK(cost < 1.0);
}

// The next hop must fit the budget; else every active row keeps its last answer.
static void budget_exit() {
    ea::Policy p = policy({2.0, 2.0}, {1.0, 1000.0, 1.0});
    ea::Cascade c = cascade(p);
    FixedHops h;
    h.logits = {{sure(0.6, 2), sure(0.7, 1)}, {sure(0.9, 0), sure(0.9, 0)}, {sure(0.9, 0), sure(0.9, 0)}};
    ea::CascadeResult out;
    CHECK(c.run(h, 2, 500.0, ea::Cascade::Clock::now(), out));
    CHECK((h.ran == std::vector<std::size_t>{0}));
    CHECK((out.exit_state == std::vector<std::int64_t>{10, 10}));
    CHECK((out.budget_exit == std::vector<std::uint8_t>{1, 1}));
    CHECK((out.pred == std::vector<std::int64_t>{2, 1}));
    CHECK(p.costs_ms()[1] == 1000.0);  // decayed toward its prior, which it is
    // a budget the hop overhead leaves no room in stops after the first hop too
    ea::Policy q = policy({2.0, 2.0}, {1.0, 1.0, 1.0});
    ea::Cascade costly = cascade(q, {}, ea::Cascade::Walk::Cascade, 499.5);
    FixedHops g = h;
    g.ran.clear();
    CHECK(costly.run(g, 2, 500.0, ea::Cascade::Clock::now(), out));
    CHECK((g.ran == std::vector<std::size_t>{0}));
    CHECK(out.budget_exit[0] == 1);
    ea::Cascade free = cascade(q);
    g.ran.clear();
    CHECK(free.run(g, 2, 500.0, ea::Cascade::Clock::now(), out));
    CHECK((g.ran == std::vector<std::size_t>{0, 1, 2}));
    CHECK(out.budget_exit[0] == 0);
}

// With accuracies, a budget picks the most accurate state that fits: the cascade up to it
// (cumulative costs) or it alone; without a budget a LastAlone walk runs the last hop.
static void budget_table() {
    const std::vector<double> acc = {0.5, 0.9, 0.8};
    FixedHops h;
    h.logits = {{sure(0.6, 0)}, {sure(0.6, 1)}, {sure(0.6, 2)}};
    ea::CascadeResult out;
    ea::Policy chain = policy({2.0, 2.0}, {100.0, 100.0, 100.0}, &acc, true);
    ea::Cascade c = cascade(chain);
    CHECK(c.run(h, 1, 250.0, ea::Cascade::Clock::now(), out));
    CHECK((h.ran == std::vector<std::size_t>{0, 1}));
    CHECK(out.exit_state[0] == 11 && out.pred[0] == 1 && out.budget_exit[0] == 0);

    ea::Policy alone = policy({2.0, 2.0}, {100.0, 100.0, 100.0}, &acc, false);
    ea::Cascade e = cascade(alone, {}, ea::Cascade::Walk::LastAlone);
    h.ran.clear();
    CHECK(e.run(h, 1, 150.0, ea::Cascade::Clock::now(), out));
    CHECK((h.ran == std::vector<std::size_t>{1}));
    CHECK(out.exit_state[0] == 11);
    h.ran.clear();
    CHECK(e.run(h, 1, 50.0, ea::Cascade::Clock::now(), out));  // nothing fits: every hop
    CHECK((h.ran == std::vector<std::size_t>{0}));
    CHECK(out.exit_state[0] == 10 && out.budget_exit[0] == 1);
    h.ran.clear();
    CHECK(e.run(h, 1, ea::kNoBudget, ea::Cascade::Clock::now(), out));
    CHECK((h.ran == std::vector<std::size_t>{2}));
    CHECK(out.exit_state[0] == 12);
}

// A gate plan decides as gate_decide does at each kept state, carrying the features.
static void gates() {
    const ea::Gate g0{{4.0, 0.0, 0.0, 0.0, 0.0}, -3.0};
    const ea::Gate g1{{0.0, 0.0, 0.0, 3.0, 2.0}, -2.5};
    ea::Policy p = policy({0.6, 0.6}, {1.0, 1.0, 1.0});
    ea::Cascade c = cascade(p, {g0, g1});
    CHECK(c.gated());
    FixedHops h;
    h.logits = {
        {sure(0.95, 0), sure(0.5, 1), sure(0.4, 2)},
        {sure(0.6, 0), sure(0.6, 1), sure(0.6, 0)},
        {sure(0.6, 2), sure(0.6, 2), sure(0.6, 2)},
    };
    ea::CascadeResult out;
    CHECK(c.run(h, 3, ea::kNoBudget, ea::Cascade::Clock::now(), out));
    // the reference: gate_decide by hand, compacting as a caller does
    std::vector<std::int64_t> rows = {0, 1, 2}, hist(3 * 2), pred(3), idx(3), want_state(3), want_pred(3);
    std::vector<float> prev(3), score(3), want_conf(3);
    std::vector<std::uint8_t> mask(3);
    const ea::Gate gs[2] = {g0, g1};
    for (std::size_t pos = 0; pos < 3 && !rows.empty(); ++pos) {
        std::vector<float> x;
        for (std::int64_t r : rows) x.insert(x.end(), h.logits[pos][static_cast<std::size_t>(r)].begin(),
                                             h.logits[pos][static_cast<std::size_t>(r)].end());
        const auto n = static_cast<std::int64_t>(rows.size());
        std::int64_t k = 0;
        if (pos < 2) {
            CHECK(ea::gate_decide(x.data(), n, kClasses, gs[pos], 0.6, static_cast<std::int64_t>(pos),
                                  hist.data(), 2, prev.data(), pred.data(), score.data(), mask.data(),
                                  idx.data(), &k) == ea::Status::Ok);
        } else {
            CHECK(ea::decide(x.data(), n, kClasses, ea::Measure::MaxProb, -INFINITY, pred.data(),
                             score.data(), mask.data(), idx.data(), &k) == ea::Status::Ok);
        }
        std::vector<std::int64_t> next;
        for (std::int64_t b = 0; b < n; ++b) {
            const auto r = static_cast<std::size_t>(rows[static_cast<std::size_t>(b)]);
            if (mask[static_cast<std::size_t>(b)] || pos == 2) {
                want_state[r] = 10 + static_cast<std::int64_t>(pos);
                want_pred[r] = pred[static_cast<std::size_t>(b)];
                want_conf[r] = score[static_cast<std::size_t>(b)];
            } else {
                next.push_back(rows[static_cast<std::size_t>(b)]);
            }
        }
        rows = next;
    }
    CHECK(out.exit_state == want_state);
    CHECK(out.pred == want_pred);
    CHECK(out.conf == want_conf);
    // the sure row leaves at the first gate, the row whose answers agree at the second
    CHECK((out.exit_state == std::vector<std::int64_t>{10, 11, 12}));
}

static void declines_and_refusals() {
    ea::Policy p = policy({2.0}, {1.0, 1.0});
    ea::Cascade c = cascade(p);
    FixedHops h;
    h.logits = {{sure(0.6, 0)}, {sure(0.6, 1)}};
    h.decline_at = 1;
    ea::CascadeResult out;
    CHECK(!c.run(h, 1, ea::kNoBudget, ea::Cascade::Clock::now(), out));
    OneRowHops one;
    one.inner.logits = {{sure(0.6, 0), sure(0.6, 0)}, {sure(0.6, 1), sure(0.6, 1)}};
    CHECK(!c.run(one, 2, ea::kNoBudget, ea::Cascade::Clock::now(), out));  // one row at a time
    CHECK(one.inner.ran.empty());
    CHECK(c.run(one, 1, ea::kNoBudget, ea::Cascade::Clock::now(), out));
    CHECK(out.exit_state[0] == 11 && out.pred[0] == 1);

    ea::Cascade bad;
    const auto W = ea::Cascade::Walk::Cascade;
    CHECK(ea::Cascade::create(nullptr, {0, 1}, {}, 0.0, 3, W, bad) == ea::Status::NullPointer);
    CHECK(ea::Cascade::create(&p, {0}, {}, 0.0, 3, W, bad) == ea::Status::BadShape);
    CHECK(ea::Cascade::create(&p, {0, 1}, {}, 0.0, 1, W, bad) == ea::Status::BadShape);
    const ea::Gate g{{0, 0, 0, 0, 0}, 0};
    CHECK(ea::Cascade::create(&p, {0, 1}, {g, g}, 0.0, 3, W, bad) == ea::Status::BadShape);
    CHECK(ea::Cascade::create(&p, {0, 1}, {ea::Gate{{NAN, 0, 0, 0, 0}, 0}}, 0.0, 3, W, bad) ==
          ea::Status::BadValue);
    CHECK(ea::Cascade::create(&p, {0, 1}, {}, -1.0, 3, W, bad) == ea::Status::BadValue);
    CHECK(ea::Cascade::create(&p, {0, 1}, {}, INFINITY, 3, W, bad) == ea::Status::BadValue);
    CHECK(ea::Cascade::create(&p, {0, 1}, {g}, 0.0, 3, W, bad) == ea::Status::Ok);
}

int main() {
    thresholds_and_compaction();
    budget_exit();
    budget_table();
    gates();
    declines_and_refusals();
    return edgeadapt::testing::checks_passed("cascade");
}
