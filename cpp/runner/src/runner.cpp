// The runner: a bundle's steps loaded into a Backend's sessions, run by the cascade
// engine (cascade.hpp) as its hops.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>

#include "detail.hpp"

namespace edgeadapt::runner {

using detail::fail;

namespace {

using Clock = Cascade::Clock;

double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// Copy rows `idx[0..k)` of a [*, row] float matrix into `dst` (resized as needed).
const float* gather(const float* src, std::int64_t row, const std::int64_t* idx, std::int64_t k,
                    std::vector<float>& dst) {
    const auto need = static_cast<std::size_t>(k * row);
    if (dst.size() < need) dst.resize(need);
    const auto bytes = static_cast<std::size_t>(row) * sizeof(float);
    for (std::int64_t j = 0; j < k; ++j) std::memcpy(dst.data() + j * row, src + idx[j] * row, bytes);
    return dst.data();
}

// The same over rows of `row_bytes` bytes (a model input of any dtype).
const void* gather_bytes(const void* src, std::int64_t row_bytes, const std::int64_t* idx,
                         std::int64_t k, std::vector<unsigned char>& dst) {
    const auto need = static_cast<std::size_t>(k * row_bytes);
    if (dst.size() < need) dst.resize(need);
    const auto* from = static_cast<const unsigned char*>(src);
    const auto bytes = static_cast<std::size_t>(row_bytes);
    for (std::int64_t j = 0; j < k; ++j)
        std::memcpy(dst.data() + j * row_bytes, from + idx[j] * row_bytes, bytes);
    return dst.data();
}

bool parse_dtype(const std::string& name, DType& out) {
    if (name == "float32") {
        out = DType::Float32;
    } else if (name == "int64") {
        out = DType::Int64;
    } else {
        return false;
    }
    return true;
}

}  // namespace

const char* dtype_name(DType type) noexcept {
    return type == DType::Int64 ? "int64" : "float32";
}

std::size_t dtype_size(DType type) noexcept { return type == DType::Int64 ? 8 : 4; }

// One step's feed j: model input `index` when `model_input`, else output `index` of the
// previous step (0 = its activation, or its logits when it has none; 1 = its logits).
struct Feed {
    bool model_input = false;
    std::size_t index = 0;
};

// One loaded step; outputs are (activation?, logits).
struct Runner::StepRun {
    std::unique_ptr<Session> session;
    std::vector<Feed> feeds;
    std::size_t logits_out = 0;
};

Runner::Runner() = default;
Runner::~Runner() = default;

std::vector<std::int64_t> Runner::states() const { return cascade_.states(); }

Error Runner::create(const Bundle& bundle, const Plan& plan, std::shared_ptr<Backend> backend,
                     const RunnerOptions& options, std::unique_ptr<Runner>& out) noexcept {
    return detail::guard(Code::Backend, bundle.path.string(), [&] {
        const std::string source = plan.source.empty() ? "plan" : plan.source;
        if (plan.manifest_sha256 != bundle.manifest_sha256)
            fail(Code::Mismatch, source, "$.bundle.manifest_sha256",
                 "was made for another bundle (manifest sha256 " + plan.manifest_sha256.substr(0, 12) +
                     "..., " + bundle.path.string() + " has " + bundle.manifest_sha256.substr(0, 12) +
                     "...)");
        if (plan.bundle_states.size() != bundle.steps.size())
            fail(Code::Mismatch, source, "$.bundle.states",
                 "names " + std::to_string(plan.bundle_states.size()) + " states, the bundle has " +
                     std::to_string(bundle.steps.size()));
        for (std::int64_t s : plan.states)
            if (s < 0 || s >= static_cast<std::int64_t>(bundle.steps.size()))
                fail(Code::Input, source, "$.states", "state index out of range");
        if (plan.thresholds.size() + 1 != plan.states.size() || plan.cost_ms.size() != plan.states.size())
            fail(Code::Input, source, "", "needs one threshold per kept state but the last and one cost each");
        if (!plan.gates.empty() && plan.gates.size() + 1 != plan.states.size())
            fail(Code::Input, source, "$.policy.gates", "needs one gate per kept state but the last");
        if (plan.scheduler) {
            if (plan.kind != "branches")
                fail(Code::Input, source, "$.policy", "the scheduler policy picks branches");
            const auto first = plan.scheduler_first;
            if (first < 0 || first >= static_cast<std::int64_t>(plan.states.size()) ||
                plan.estimators.size() + 1 + static_cast<std::size_t>(first) != plan.states.size())
                fail(Code::Input, source, "$.policy.estimators",
                     "needs one estimator per kept branch from position first on but the last");
            if (!edgeadapt::detail::valid_estimators(plan.estimators.data(),
                                                     static_cast<std::int64_t>(plan.estimators.size())))
                fail(Code::Input, source, "$.policy.estimators", "must be finite");
        }
        // the cost of each kept state's hop beyond the previous one, as
        // np.diff(cost_ms).clip(0); a branch plan that runs its budget table (it does not
        // walk its branches) has each branch's own cost
        const bool walks = plan.kind != "branches" || plan.branches_run == "cascade";
        std::vector<double> hop_costs;
        for (std::size_t j = 0; j < plan.cost_ms.size(); ++j)
            hop_costs.push_back(!walks
                                      ? plan.cost_ms[j]
                                      : std::max(0.0, plan.cost_ms[j] - (j ? plan.cost_ms[j - 1] : 0.0)));
        // the budget table's accuracy per kept state; a state without a row is dominated
        std::vector<double> accuracies;
        if (!plan.budget.empty()) {
            for (std::int64_t s : plan.states) {
                double acc = 0.0;
                for (const BudgetRow& row : plan.budget)
                    if (row.state == s) acc = row.accuracy;
                accuracies.push_back(acc);
            }
        }
        build(bundle, plan.states, plan.thresholds, plan.measure, std::move(hop_costs), true,
              plan.cost_quantile, std::move(accuracies), plan.gates, plan.hop_overhead_ms, walks,
              std::move(backend), options, out);
        // a scheduler plan of one kept branch runs it alone, as any plan of one state
        if (plan.scheduler && plan.states.size() > 1) {
            out->scheduler_ = true;
            out->scheduler_first_ = static_cast<std::size_t>(plan.scheduler_first);
            out->estimators_ = plan.estimators;
        }
    });
}

Error Runner::create(const Bundle& bundle, const std::vector<double>& thresholds, Measure measure,
                     std::shared_ptr<Backend> backend, const RunnerOptions& options,
                     std::unique_ptr<Runner>& out) noexcept {
    return detail::guard(Code::Backend, bundle.path.string(), [&] {
        const std::size_t n = bundle.steps.size();
        std::vector<double> t = thresholds;
        if (t.size() == 1) t.assign(n - 1, thresholds[0]);
        if (t.size() != n - 1)
            fail(Code::Input, "thresholds", "",
                 "expected one value or " + std::to_string(n - 1) +
                     " (one per state but the last), got " + std::to_string(thresholds.size()));
        for (std::size_t j = 0; j < thresholds.size(); ++j)
            if (std::isnan(thresholds[j]))
                fail(Code::Input, "thresholds", "[" + std::to_string(j) + "]", "must not be NaN");
        std::vector<std::int64_t> kept;
        for (std::size_t i = 0; i < n; ++i) kept.push_back(static_cast<std::int64_t>(i));
        build(bundle, std::move(kept), std::move(t), measure, std::vector<double>(n, 0.0), false,
              0.0, {}, {}, 0.0, bundle.kind != "branches", std::move(backend), options, out);
    });
}

void Runner::build(const Bundle& bundle, std::vector<std::int64_t> kept,
                   std::vector<double> thresholds, Measure measure, std::vector<double> hop_costs,
                   bool costs_known, double quantile, std::vector<double> accuracies,
                   std::vector<Gate> gates, double hop_overhead_ms, bool walks,
                   std::shared_ptr<Backend> backend, const RunnerOptions& options,
                   std::unique_ptr<Runner>& out) {
    if (!backend) fail(Code::Input, "backend", "", "no backend given");
    if (bundle.steps.empty()) fail(Code::Input, bundle.path.string(), "", "the bundle has no steps");
    if (bundle.inputs.empty()) fail(Code::Input, bundle.path.string(), "", "the bundle has no inputs");
    std::unique_ptr<Runner> r(new Runner());
    const std::string manifest = (bundle.path / "manifest.json").string();
    for (std::size_t k = 0; k < bundle.inputs.size(); ++k) {
        const InputSpec& spec = bundle.inputs[k];
        DType type = DType::Float32;
        if (!parse_dtype(spec.dtype, type))
            fail(Code::Input, manifest, "$.inputs[" + std::to_string(k) + "].dtype",
                 "the native runner feeds float32 and int64 inputs, input '" + spec.name +
                     "' is " + spec.dtype);
        r->input_types_.push_back(type);
        r->input_bytes_.push_back(spec.row_elements() * static_cast<std::int64_t>(dtype_size(type)));
    }
    r->bundle_ = bundle;
    const bool early_exit = bundle.kind == "early-exit";
    // A hop runs its chain's steps after that chain's previous kept state (from the
    // chain's first step when none: the model inputs); an ensemble member alone.
    std::size_t start = 0;
    const std::size_t none = bundle.steps.size();
    std::size_t before = none;
    for (std::int64_t state : kept) {
        const auto s = static_cast<std::size_t>(state);
        const bool same = before != none && bundle.chain_start(before) == bundle.chain_start(s);
        start = same ? before + 1 : bundle.chain_start(s);
        std::vector<std::size_t> steps;
        for (std::size_t i = early_exit ? start : s; i <= s; ++i) steps.push_back(i);
        before = s;
        r->hop_steps_.push_back(std::move(steps));
    }
    const std::vector<double>& step_costs = options.step_costs_ms;
    if (!step_costs.empty()) {
        if (step_costs.size() != bundle.steps.size())
            fail(Code::Input, "step_costs_ms", "",
                 "expected " + std::to_string(bundle.steps.size()) + " values (one per step), got " +
                     std::to_string(step_costs.size()));
        for (std::size_t j = 0; j < r->hop_steps_.size(); ++j) {
            hop_costs[j] = 0.0;
            for (std::size_t i : r->hop_steps_[j]) hop_costs[j] += step_costs[i];
        }
        costs_known = true;
    }
    const Status s = Policy::create(thresholds.data(), thresholds.size(), hop_costs.data(),
                                    hop_costs.size(), options.ewma, measure,
                                    accuracies.empty() ? nullptr : accuracies.data(), early_exit,
                                    r->policy_);
    if (s != Status::Ok) fail(Code::Input, "policy", "", status_string(s));
    // costs at a plan's percentile keep tracking it; costs given as numbers, their mean
    if (step_costs.empty() && quantile > 0.0) r->policy_.set_quantile(quantile);
    for (std::size_t j = 0; j < gates.size(); ++j) {
        for (double w : gates[j].weights)
            if (!std::isfinite(w))
                fail(Code::Input, "plan", "$.policy.gates[" + std::to_string(j) + "]", "must be finite");
        if (!std::isfinite(gates[j].bias))
            fail(Code::Input, "plan", "$.policy.gates[" + std::to_string(j) + "]", "must be finite");
    }
    // a branches plan that runs its budget table answers, without a budget, with its most
    // accurate (last) branch; a branches cascade walks its branches as an ensemble's members
    const auto walk = walks ? Cascade::Walk::Cascade : Cascade::Walk::LastAlone;
    const Status c = Cascade::create(&r->policy_, std::move(kept), std::move(gates),
                                     hop_overhead_ms, bundle.num_classes, walk, r->cascade_);
    if (c != Status::Ok) fail(Code::Input, "plan", "", status_string(c));
    r->costs_known_ = costs_known;
    r->backend_ = std::move(backend);

    r->steps_.resize(bundle.steps.size());
    std::vector<bool> needed(bundle.steps.size(), false);
    for (const auto& steps : r->hop_steps_)
        for (std::size_t i : steps) needed[i] = true;
    for (std::size_t i = 0; i < bundle.steps.size(); ++i) {
        if (!needed[i]) continue;
        const Step& step = bundle.steps[i];
        std::vector<std::string> outputs;
        if (!step.activation.empty()) outputs.push_back(step.activation);
        outputs.push_back(step.logits);
        StepRun& run = r->steps_[i];
        run.logits_out = outputs.size() - 1;
        std::vector<DType> want;
        for (const std::string& name : step.inputs) {
            Feed feed;
            const auto model = std::find_if(bundle.inputs.begin(), bundle.inputs.end(),
                                            [&](const InputSpec& in) { return in.name == name; });
            if (model != bundle.inputs.end()) {
                feed.model_input = true;
                feed.index = static_cast<std::size_t>(model - bundle.inputs.begin());
                want.push_back(r->input_types_[feed.index]);
            } else {
                const Step& prev = bundle.steps[i - 1];  // load_bundle checked the chain
                feed.index = name == prev.activation || prev.activation.empty() ? 0 : 1;
                want.push_back(DType::Float32);
            }
            run.feeds.push_back(feed);
        }
        try {
            run.session = r->backend_->load(step.path, step.inputs, outputs);
            for (std::size_t j = 0; j < want.size(); ++j) {
                const DType got = run.session->input_type(j);
                if (got != want[j])
                    fail(Code::Format, step.path.string(), "input '" + step.inputs[j] + "'",
                         std::string("is ") + dtype_name(got) + " in the ONNX file; the manifest " +
                             "feeds it " + dtype_name(want[j]));
            }
        } catch (const detail::Failure&) {
            throw;
        } catch (const std::exception& e) {
            fail(Code::Backend, step.path.string(), "", r->backend_->name() + ": " + e.what());
        }
    }
    r->gathered_.resize(2);
    r->gathered_inputs_.resize(bundle.inputs.size());
    r->input_gathered_.assign(bundle.inputs.size(), false);
    out = std::move(r);
}

// Every output of a step keeps the rows of its input (a fixed batch of 1 would be read
// past its end when rows are compacted) and the logits are [rows, num_classes]: as
// edgeadapt/formats/stepcheck.py.
void Runner::check_outputs(std::size_t step, const TensorView* views, std::size_t count,
                           std::size_t logits, std::int64_t rows) const {
    const Step& s = bundle_.steps[step];
    for (std::size_t k = 0; k < count; ++k) {
        const TensorView& v = views[k];
        const std::string& name = k == logits ? s.logits : s.activation;
        if (v.rank < 1 || v.rows != rows)
            fail(Code::Backend, s.path.string(), "output '" + name + "'",
                 "has " + std::to_string(v.rows) + " row(s) (rank " + std::to_string(v.rank) +
                     ") for an input of " + std::to_string(rows) +
                     " row(s): every output of a step must keep the batch axis (axis 0) of its input");
    }
    const TensorView& v = views[logits];
    if (v.rank != 2 || v.row_elements != bundle_.num_classes)
        fail(Code::Backend, s.path.string(), "output '" + s.logits + "'",
             "logits have rank " + std::to_string(v.rank) + " and " +
                 std::to_string(v.row_elements) + " values a row; expected float32 [" +
                 std::to_string(rows) + ", " + std::to_string(bundle_.num_classes) +
                 "] (batch rows by the bundle's num_classes)");
}

// The engine's hop runner: a hop runs its steps' sessions on the active rows, fed the
// model inputs (gathered to the active rows after a compaction) and the previous step's
// outputs, each step's outputs checked and its time recorded.
struct Runner::HopRunner {
    static constexpr bool kCompacts = true;

    Runner& r;
    const std::vector<const void*>& inputs;
    TensorView prev[2];  // the last step's outputs: (activation?, logits)

    const float* run(std::size_t hop, std::int64_t active, const std::int64_t* rows, Result& out) {
        for (std::size_t i : r.hop_steps_[hop]) {
            StepRun& s = r.steps_[i];
            const Clock::time_point ts = Clock::now();
            for (std::size_t j = 0; j < s.feeds.size(); ++j) {
                const Feed& feed = s.feeds[j];
                if (feed.model_input) {
                    const std::size_t k = feed.index;
                    s.session->set_input(j, rows ? input_rows(k, rows, active) : inputs[k], active,
                                         r.bundle_.inputs[k].row_elements());
                } else {
                    const TensorView& v = prev[feed.index];
                    s.session->set_input(j, v.data, v.rows, v.row_elements);
                }
            }
            s.session->infer();
            const std::size_t n_out = s.logits_out + 1;
            for (std::size_t k = 0; k < n_out; ++k) prev[k] = s.session->output(k);
            r.check_outputs(i, prev, n_out, s.logits_out, active);
            out.add_step(static_cast<std::int64_t>(i), ms_since(ts), active);
        }
        return prev[r.steps_[r.hop_steps_[hop].back()].logits_out].data;
    }

    // Carry only rows keep[0..k) of what the next hop's first step reads; model inputs
    // are gathered again, to the new active rows, when a later step reads them.
    void compact(std::size_t hop, const std::int64_t* keep, std::int64_t k) {
        const StepRun& next = r.steps_[r.hop_steps_[hop + 1].front()];
        for (const Feed& feed : next.feeds) {
            if (feed.model_input) continue;
            TensorView& v = prev[feed.index];
            v.data = gather(v.data, v.row_elements, keep, k, r.gathered_[feed.index]);
            v.rows = k;
        }
        r.input_gathered_.assign(inputs.size(), false);
    }

    // Model input `k`'s rows `rows[0..active)`, gathered once per compaction.
    const void* input_rows(std::size_t k, const std::int64_t* rows, std::int64_t active) {
        if (!r.input_gathered_[k]) {
            gather_bytes(inputs[k], r.input_bytes_[k], rows, active, r.gathered_inputs_[k]);
            r.input_gathered_[k] = true;
        }
        return r.gathered_inputs_[k].data();
    }
};

Error Runner::predict(const float* x, std::int64_t batch, double budget_ms, Result& out) noexcept {
    if (bundle_.inputs.size() != 1 || input_types_[0] != DType::Float32)
        return {Code::Input, "input: the bundle has " + std::to_string(bundle_.inputs.size()) +
                                 " input(s), not one float32 input: pass one pointer per input"};
    one_input_.assign(1, x);
    return predict(one_input_, batch, budget_ms, out);
}

Error Runner::predict(const std::vector<const void*>& inputs, std::int64_t batch, double budget_ms,
                      Result& out) noexcept {
    return detail::guard(Code::Backend, bundle_.path.string(), [&] {
        if (inputs.size() != bundle_.inputs.size())
            fail(Code::Input, "input", "",
                 "expected " + std::to_string(bundle_.inputs.size()) +
                     " input(s), one per bundle input, got " + std::to_string(inputs.size()));
        if (batch < 1) fail(Code::Input, "input", "", "empty batch (" + std::to_string(batch) + " rows)");
        for (std::size_t k = 0; k < inputs.size(); ++k) {
            const std::string& name = bundle_.inputs[k].name;
            if (inputs[k] == nullptr) fail(Code::Input, "input", name, "null input pointer");
            if (input_types_[k] != DType::Float32) continue;
            const auto* x = static_cast<const float*>(inputs[k]);
            const std::int64_t row = bundle_.inputs[k].row_elements();
            std::int64_t bad = 0, first = -1;
            for (std::int64_t b = 0; b < batch; ++b) {
                bool finite = true;
                for (std::int64_t e = 0; e < row; ++e) finite = finite && std::isfinite(x[b * row + e]);
                if (!finite && bad++ == 0) first = b;
            }
            if (bad)
                fail(Code::Input, "input", bundle_.inputs.size() > 1 ? name : "",
                     "holds NaN or infinity in " + std::to_string(bad) + " row(s), first row " +
                         std::to_string(first));
        }
        if (budget_ms != kNoBudget) {
            if (!(budget_ms > 0.0 && budget_ms < kNoBudget))
                fail(Code::Input, "budget_ms", "", "must be a finite number > 0 (or kNoBudget)");
            if (!costs_known_)
                fail(Code::Input, "budget_ms", "",
                     "a budget needs predicted step costs: give step_costs_ms or a plan");
        }
        const Clock::time_point start = Clock::now();
        input_gathered_.assign(inputs.size(), false);
        HopRunner hops{*this, inputs, {}};
        if (scheduler_) return schedule(hops, batch, budget_ms, start, out);
        if (!cascade_.run(hops, batch, budget_ms, start, out))  // a backend gave no logits
            fail(Code::Backend, bundle_.path.string(), "", backend_->name() + ": a step returned no data");
    });
}

// Run kept position `hop` on `active` rows (`rows`: their batch indices, nullptr for the
// whole batch, in order) and fold its time into its tracked cost: its logits.
const float* Runner::run_hop(HopRunner& hops, std::size_t hop, std::int64_t active,
                             const std::int64_t* rows, Result& out) {
    input_gathered_.assign(input_gathered_.size(), false);  // these rows' inputs, gathered anew
    const Clock::time_point h0 = Clock::now();
    const float* logits = hops.run(hop, active, rows, out);
    if (logits == nullptr)
        fail(Code::Backend, bundle_.path.string(), "", backend_->name() + ": a step returned no data");
    policy_.observe(static_cast<std::int64_t>(hop), ms_since(h0));
    return logits;
}

// The rows (as run_hop) answer with kept position `hop`'s `logits` under the plan's
// measure.
void Runner::answer_rows(const float* logits, std::size_t hop, std::int64_t active,
                         const std::int64_t* rows, Result& out) {
    const auto n = static_cast<std::size_t>(active);
    if (branch_pred_.size() < n) {
        branch_pred_.resize(n);
        branch_conf_.resize(n);
    }
    const Status s = answer(logits, active, bundle_.num_classes, policy_.measure(),
                            branch_pred_.data(), branch_conf_.data());
    if (s != Status::Ok) fail(Code::Backend, bundle_.path.string(), "", status_string(s));
    const std::int64_t state = cascade_.states()[hop];
    for (std::size_t j = 0; j < n; ++j) {
        const std::size_t r = rows ? static_cast<std::size_t>(rows[j]) : j;
        out.pred[r] = branch_pred_[j];
        out.conf[r] = branch_conf_[j];
        out.exit_state[r] = state;
    }
}

// A scheduler plan's call (edgeadapt/cascade/model.py `_predict_scheduled` and
// edgeadapt/cascade/scheduler.py): under a budget that cannot pay the first scheduled
// branch and the budget table's pick (kernel_ref.table_first), that pick alone; else the
// first branch on every row, the kernel's choice per row on the tracked costs and what
// is left of the budget (its hop overhead counted once), and each later branch picked
// once, on the rows that picked it. A row the budget moved off its choice without one
// is a budget exit.
void Runner::schedule(HopRunner& hops, std::int64_t batch, double budget_ms,
                      Clock::time_point t0, Result& out) {
    out.start(batch);
    const bool budget = budget_ms != kNoBudget;
    const double hop_ms = cascade_.hop_overhead_ms();
    const std::size_t first = scheduler_first_;
    if (budget) {
        std::int64_t slot = -1;
        policy_.lookup(budget_ms, &slot);
        const std::size_t pick = slot < 0 ? 0 : static_cast<std::size_t>(slot);
        const std::vector<double>& costs = policy_.costs_ms();
        if (budget_ms - 2.0 * hop_ms - costs[first] < costs[pick]) {
            answer_rows(run_hop(hops, pick, batch, nullptr, out), pick, batch, nullptr, out);
            out.total_ms = ms_since(t0);
            return;
        }
    }
    const float* logits = run_hop(hops, first, batch, nullptr, out);
    answer_rows(logits, first, batch, nullptr, out);
    const std::vector<double>& tracked = policy_.costs_ms();
    scheduler_costs_.assign(tracked.begin() + static_cast<std::ptrdiff_t>(first), tracked.end());
    const auto states = static_cast<std::int64_t>(scheduler_costs_.size());
    const auto n = static_cast<std::size_t>(batch);
    if (free_choice_.size() < n) {
        free_choice_.resize(n);
        choice_.resize(n);
        first_pred_.resize(n);
        branch_rows_.resize(n);
    }
    scores_.resize(std::max<std::size_t>(n * static_cast<std::size_t>(states - 1), 1));
    const double* thresholds = policy_.thresholds().data() + first;
    const auto pick = [&](double available_ms, std::int64_t* choice) {
        const Status s = edgeadapt::schedule(logits, batch, bundle_.num_classes, estimators_.data(),
                                             thresholds, scheduler_costs_.data(), states,
                                             available_ms, first_pred_.data(), scores_.data(), choice);
        if (s != Status::Ok) fail(Code::Backend, bundle_.path.string(), "", status_string(s));
    };
    pick(kNoBudget, free_choice_.data());
    const std::int64_t* choice = free_choice_.data();
    if (budget) {
        pick(budget_ms - (ms_since(t0) + hop_ms), choice_.data());
        for (std::size_t b = 0; b < n; ++b)
            out.budget_exit[b] = static_cast<std::uint8_t>(choice_[b] != free_choice_[b]);
        choice = choice_.data();
    }
    for (std::int64_t j = 1; j < states; ++j) {
        std::int64_t k = 0;
        for (std::size_t b = 0; b < n; ++b)
            if (choice[b] == j) branch_rows_[static_cast<std::size_t>(k++)] = static_cast<std::int64_t>(b);
        if (k == 0) continue;
        const std::size_t hop = first + static_cast<std::size_t>(j);
        answer_rows(run_hop(hops, hop, k, branch_rows_.data(), out), hop, k, branch_rows_.data(), out);
    }
    out.total_ms = ms_since(t0);
}

}  // namespace edgeadapt::runner
