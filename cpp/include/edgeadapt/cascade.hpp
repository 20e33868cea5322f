// edgeadapt cascade engine: header-only C++17 over kernel.hpp, no other dependency.
//
// The one cascade algorithm of the native paths: the Python binding's batch-1 cascade
// (edgeadapt._kernel.CascadeCall, whose hops call the steps' Python sessions) and the
// native runner (edgeadapt::runner::Runner, whose hops run OpenVINO or TensorRT
// requests) both call Cascade::run with their own hop runner. edgeadapt/cascade/model.py
// `AdaptiveModel.predict` is the readable reference it follows, and the tests hold the
// three to the same answers.
//
// N hops reach N kept states (hop i: the bundle steps from kept state i - 1 to kept
// state i). A call on a batch:
//
//   route    with a budget and a budget table (the policy has accuracies), the most
//            accurate kept state predicted to fit (Policy::lookup): the hops up to it
//            when costs are cumulative (an early-exit bundle), else that hop alone;
//            nothing fits: every hop. Otherwise every hop, or with Walk::LastAlone the
//            last hop alone (a branches bundle's most accurate branch).
//   budget   before each hop after the route's first: elapsed time plus the hop
//            overhead plus the hop's predicted cost must fit the budget (Policy::fits);
//            else the hop is skipped, its prediction decays toward its prior
//            (Policy::decay: unmeasured, it could never come back otherwise), and every
//            active row exits with its answer at the last hop run (budget_exit).
//   run      the hop runner runs the hop's steps on the active rows and hands back
//            their logits; the hop's measured time folds into its predicted cost
//            (Policy::observe).
//   decide   every kept state but the route's last decides which rows exit: the
//            measure's confidence against the state's threshold, or for a gate plan on
//            a route that starts at the first kept state the learned gate's score
//            (gate_decide, which carries each row's earlier answers); the last kept
//            state's confidence is the measure's. The route's last hop answers every row.
//   compact  rows that exit take their answer; the hop runner carries only the rows
//            that continue.
//
// A hop runner `Hops` provides:
//
//   static constexpr bool kCompacts;  // false: it runs one row (batch 1) and never compacts
//   // Run hop `hop` on the `active` rows (`rows`: their indices in the batch, nullptr
//   // while every row is active, in order), add each step it runs to `out` (add_step),
//   // and return the active rows' logits, row-major float32 [active, classes]; nullptr
//   // declines the call (outputs the runner cannot vouch for: the caller's slower path
//   // then words the error). Its exceptions propagate.
//   const float* run(std::size_t hop, std::int64_t active, const std::int64_t* rows,
//                    CascadeResult& out);
//   // Keep rows keep[0..k) (positions among the active rows, increasing) of what the
//   // hop after `hop` reads. Only when kCompacts.
//   void compact(std::size_t hop, const std::int64_t* keep, std::int64_t k);
//
// Allocation: only when a call's batch is larger than any before (the per-row buffers
// grow; std::bad_alloc may propagate). Not thread-safe: a call updates the policy.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

#include "edgeadapt/kernel.hpp"

namespace edgeadapt {

// Per-row answers of one cascade call and the steps it ran. `exit_state` is the bundle
// state that answered each row; `step_ms`/`step_rows`/`step_index` list every step run,
// in order: its time, the rows it ran on and its bundle step index.
struct CascadeResult {
    std::vector<std::int64_t> pred;
    std::vector<std::int64_t> exit_state;
    std::vector<float> conf;
    std::vector<std::uint8_t> budget_exit;
    double total_ms = 0.0;
    std::vector<double> step_ms;
    std::vector<std::int64_t> step_rows;
    std::vector<std::int64_t> step_index;

    // Record one step run (hop runners call it).
    void add_step(std::int64_t index, double ms, std::int64_t rows) {
        step_ms.push_back(ms);
        step_rows.push_back(rows);
        step_index.push_back(index);
    }

    // Empty answers for `batch` rows (pred -1, conf NaN), no steps; capacity is kept.
    void start(std::int64_t batch) {
        const auto n = static_cast<std::size_t>(batch);
        pred.assign(n, -1);
        exit_state.assign(n, -1);
        conf.assign(n, std::numeric_limits<float>::quiet_NaN());
        budget_exit.assign(n, 0);
        total_ms = 0.0;
        step_ms.clear();
        step_rows.clear();
        step_index.clear();
    }
};

class Cascade {
  public:
    using Clock = std::chrono::steady_clock;

    // Which hops a call without a budget table's pick walks.
    enum class Walk : int {
        Cascade = 0,    // every hop, in order
        LastAlone = 1,  // the last hop alone (a branches bundle's most accurate branch)
    };

    // A cascade over `policy`'s kept states (the policy outlives the cascade and is
    // updated by its calls): `states` the bundle state each kept state is (policy
    // num_states() values), `gates` none (threshold policy) or one per kept state but
    // the last (gate plan; all finite), `hop_overhead_ms` the cascade's own cost per
    // hop that a budget counts (finite, >= 0), `classes` the logits' columns.
    static Status create(Policy* policy, std::vector<std::int64_t> states,
                         std::vector<Gate> gates, double hop_overhead_ms,
                         std::int64_t classes, Walk walk, Cascade& out) {
        if (policy == nullptr) return Status::NullPointer;
        const auto n = static_cast<std::size_t>(policy->num_states());
        if (states.size() != n || (!gates.empty() && gates.size() + 1 != n))
            return Status::BadShape;
        if (classes < 2 || classes > std::numeric_limits<std::int32_t>::max())
            return Status::BadShape;
        if (!std::isfinite(hop_overhead_ms) || hop_overhead_ms < 0.0) return Status::BadValue;
        if (walk != Walk::Cascade && walk != Walk::LastAlone) return Status::BadValue;
        for (const Gate& g : gates)
            if (!detail::valid_gate(g)) return Status::BadValue;
        Cascade c;
        c.policy_ = policy;
        c.states_ = std::move(states);
        c.gates_ = std::move(gates);
        c.hop_overhead_ms_ = hop_overhead_ms;
        c.classes_ = classes;
        c.walk_ = walk;
        out = std::move(c);
        return Status::Ok;
    }

    std::size_t num_hops() const noexcept { return states_.size(); }
    const std::vector<std::int64_t>& states() const noexcept { return states_; }
    bool gated() const noexcept { return !gates_.empty(); }
    double hop_overhead_ms() const noexcept { return hop_overhead_ms_; }
    const Policy& policy() const noexcept { return *policy_; }

    // Run the cascade on `batch` (>= 1) rows under `budget_ms` (> 0, or kNoBudget), the
    // call having started at `t0` (the budget counts from there). True with every row's
    // answer in `out`; false when the hop runner declined (then `out` is incomplete,
    // and the hops run so far have been observed).
    template <class Hops>
    bool run(Hops& hops, std::int64_t batch, double budget_ms, Clock::time_point t0,
             CascadeResult& out) {
        if constexpr (!Hops::kCompacts) {
            if (batch != 1) return false;
        }
        out.start(batch);
        grow(batch);
        const bool budget = budget_ms != kNoBudget;
        const auto [first, end] = route(budget, budget_ms);
        const bool gated = !gates_.empty() && first == 0;
        std::size_t active = static_cast<std::size_t>(batch);
        bool all = true;  // every row active, in order (rows_ is then the identity)
        const auto row_of = [&](std::size_t b) {
            return all ? b : static_cast<std::size_t>(rows_[b]);
        };
        for (std::size_t pos = first; pos < end; ++pos) {
            const auto hop = static_cast<std::int64_t>(pos);
            if (budget && pos > first && !fits(hop, t0, budget_ms)) {
                policy_->decay(hop);  // skipped, so unmeasured: back toward its prior
                for (std::size_t b = 0; b < active; ++b) {
                    const std::size_t r = row_of(b);
                    out.pred[r] = best_pred_[r];
                    out.conf[r] = best_conf_[r];
                    out.exit_state[r] = states_[pos - 1];
                    out.budget_exit[r] = 1;
                }
                break;
            }
            const Clock::time_point h0 = Clock::now();
            const float* logits = hops.run(pos, static_cast<std::int64_t>(active),
                                           all ? nullptr : rows_.data(), out);
            if (logits == nullptr) return false;
            policy_->observe(hop, ms_since(h0));
            const auto k = static_cast<std::size_t>(decide(pos, gated, logits, active));
            if (pos + 1 == end || k == 0) {  // every active row answers here
                for (std::size_t b = 0; b < active; ++b) answer(out, row_of(b), b, pos);
                break;
            }
            if (budget) {  // the answer of the rows that continue, should the budget stop them
                for (std::size_t j = 0; j < k; ++j) {
                    const auto b = static_cast<std::size_t>(keep_[j]);
                    best_pred_[row_of(b)] = pred_[b];
                    best_conf_[row_of(b)] = conf_[b];
                }
            }
            if constexpr (Hops::kCompacts) {
                if (k < active) {
                    for (std::size_t b = 0; b < active; ++b)
                        if (exit_mask_[b]) answer(out, row_of(b), b, pos);
                    for (std::size_t j = 0; j < k; ++j)
                        next_rows_[j] = static_cast<std::int64_t>(row_of(static_cast<std::size_t>(keep_[j])));
                    std::swap(rows_, next_rows_);
                    hops.compact(pos, keep_.data(), static_cast<std::int64_t>(k));
                    all = false;
                    active = k;
                }
            }
        }
        out.total_ms = ms_since(t0);
        return true;
    }

  private:
    static double ms_since(Clock::time_point t0) {
        return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    }

    // The route [first, end) over the hops for this call.
    std::pair<std::size_t, std::size_t> route(bool budget, double budget_ms) const {
        const std::size_t n = states_.size();
        if (budget && !policy_->accuracies().empty()) {
            std::int64_t target = -1;
            policy_->lookup(budget_ms, &target);
            if (target < 0) return {0, n};  // nothing fits: the first hop, then out
            const auto t = static_cast<std::size_t>(target);
            return {policy_->cumulative() ? 0 : t, t + 1};
        }
        if (walk_ == Walk::LastAlone) return {n - 1, n};
        return {0, n};
    }

    // Whether `hop` is predicted to fit what is left of the budget, its overhead counted.
    bool fits(std::int64_t hop, Clock::time_point t0, double budget_ms) const {
        bool ok = false;
        return policy_->fits(hop, ms_since(t0) + hop_overhead_ms_, budget_ms, &ok) == Status::Ok &&
               ok;
    }

    // The decision at hop `pos` on the active rows' logits; the number that continue
    // (their positions in keep_).
    std::int64_t decide(std::size_t pos, bool gated, const float* logits, std::size_t active) {
        const auto rows = static_cast<std::int64_t>(active);
        const bool last_state = pos + 1 == states_.size();
        const double threshold = last_state ? -std::numeric_limits<double>::infinity()
                                            : policy_->thresholds()[pos];
        if (gated && pos < gates_.size()) {
            const auto stride = static_cast<std::int64_t>(gates_.size());
            return detail::gate_rows(logits, rows, classes_, gates_[pos], threshold,
                                     static_cast<std::int64_t>(pos), history_.data(), stride,
                                     previous_.data(), pred_.data(), conf_.data(),
                                     exit_mask_.data(), keep_.data());
        }
        return detail::decide_measure(logits, rows, classes_, policy_->measure(), threshold,
                                      pred_.data(), conf_.data(), exit_mask_.data(), keep_.data());
    }

    // Row `r` of the batch (active position `b`) answers at hop `pos`.
    void answer(CascadeResult& out, std::size_t r, std::size_t b, std::size_t pos) const {
        out.pred[r] = pred_[b];
        out.conf[r] = conf_[b];
        out.exit_state[r] = states_[pos];
    }

    void grow(std::int64_t batch) {
        const auto n = static_cast<std::size_t>(batch);
        if (pred_.size() >= n) return;
        pred_.resize(n);
        conf_.resize(n);
        exit_mask_.resize(n);
        keep_.resize(n);
        rows_.resize(n);
        next_rows_.resize(n);
        best_pred_.resize(n);
        best_conf_.resize(n);
        if (!gates_.empty()) {
            history_.resize(n * gates_.size());
            previous_.resize(n);
        }
    }

    Policy* policy_ = nullptr;
    std::vector<std::int64_t> states_;
    std::vector<Gate> gates_;
    double hop_overhead_ms_ = 0.0;
    std::int64_t classes_ = 0;
    Walk walk_ = Walk::Cascade;
    // per-row buffers, reused across calls: the decision at the current hop (over the
    // active rows), the active rows' batch indices, each row's answer at the last hop
    // run (for a budget exit), and a gate plan's running features
    std::vector<std::int64_t> pred_, keep_, rows_, next_rows_, best_pred_, history_;
    std::vector<float> conf_, best_conf_, previous_;
    std::vector<std::uint8_t> exit_mask_;
};

}  // namespace edgeadapt
