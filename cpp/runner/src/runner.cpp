// The cascade: edgeadapt/cascade/model.py `AdaptiveModel.predict`, step for step, over a Backend.
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>

#include "detail.hpp"

namespace edgeadapt::runner {

using detail::fail;

namespace {

using Clock = std::chrono::steady_clock;

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

// One kept state's hop: the bundle steps it runs (those since the previous kept state).
struct Runner::Hop {
    std::int64_t state = 0;
    std::vector<std::size_t> steps;
    double threshold = 0.0;
};

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

std::vector<std::int64_t> Runner::states() const {
    std::vector<std::int64_t> out;
    for (const Hop& h : hops_) out.push_back(h.state);
    return out;
}

Error Runner::create(const Bundle& bundle, const Plan& plan, std::shared_ptr<Backend> backend,
                     const RunnerOptions& options, std::unique_ptr<Runner>& out) noexcept {
    return detail::guard(Code::Backend, bundle.path.string(), [&] {
        if (plan.manifest_sha256 != bundle.manifest_sha256)
            fail(Code::Mismatch, "plan", "$.bundle.manifest_sha256",
                 "was made for another bundle (manifest sha256 " + plan.manifest_sha256.substr(0, 12) +
                     "..., " + bundle.path.string() + " has " + bundle.manifest_sha256.substr(0, 12) +
                     "...)");
        if (plan.bundle_states.size() != bundle.steps.size())
            fail(Code::Mismatch, "plan", "$.bundle.states",
                 "names " + std::to_string(plan.bundle_states.size()) + " states, the bundle has " +
                     std::to_string(bundle.steps.size()));
        for (std::int64_t s : plan.states)
            if (s < 0 || s >= static_cast<std::int64_t>(bundle.steps.size()))
                fail(Code::Input, "plan", "$.states", "state index out of range");
        if (plan.thresholds.size() + 1 != plan.states.size() || plan.cost_ms.size() != plan.states.size())
            fail(Code::Input, "plan", "", "needs one threshold per kept state but the last and one cost each");
        if (!plan.gates.empty() && plan.gates.size() + 1 != plan.states.size())
            fail(Code::Input, "plan", "$.policy.gates", "needs one gate per kept state but the last");
        // the cost of each kept state's hop beyond the previous one, as
        // np.diff(cost_ms).clip(0); a branch plan's costs are each branch's own
        std::vector<double> hop_costs;
        for (std::size_t j = 0; j < plan.cost_ms.size(); ++j)
            hop_costs.push_back(plan.kind == "branches"
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
              plan.cost_quantile, std::move(accuracies), plan.gates, std::move(backend), options,
              out);
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
              0.0, {}, {}, std::move(backend), options, out);
    });
}

void Runner::build(const Bundle& bundle, std::vector<std::int64_t> kept,
                   std::vector<double> thresholds, Measure measure, std::vector<double> hop_costs,
                   bool costs_known, double quantile, std::vector<double> accuracies,
                   std::vector<Gate> gates,
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
    std::size_t start = 0;
    for (std::size_t j = 0; j < kept.size(); ++j) {
        Hop hop;
        hop.state = kept[j];
        const auto s = static_cast<std::size_t>(kept[j]);
        for (std::size_t i = early_exit ? start : s; i <= s; ++i) hop.steps.push_back(i);
        start = s + 1;
        r->hops_.push_back(std::move(hop));
    }
    const std::vector<double>& step_costs = options.step_costs_ms;
    if (!step_costs.empty()) {
        if (step_costs.size() != bundle.steps.size())
            fail(Code::Input, "step_costs_ms", "",
                 "expected " + std::to_string(bundle.steps.size()) + " values (one per step), got " +
                     std::to_string(step_costs.size()));
        for (std::size_t j = 0; j < r->hops_.size(); ++j) {
            hop_costs[j] = 0.0;
            for (std::size_t i : r->hops_[j].steps) hop_costs[j] += step_costs[i];
        }
        costs_known = true;
    }
    r->table_ = !accuracies.empty();
    const Status s = Policy::create(thresholds.data(), thresholds.size(), hop_costs.data(),
                                    hop_costs.size(), options.ewma, measure,
                                    r->table_ ? accuracies.data() : nullptr, early_exit,
                                    r->policy_);
    if (s != Status::Ok) fail(Code::Input, "policy", "", status_string(s));
    // costs at a plan's percentile keep tracking it; costs given as numbers, their mean
    if (step_costs.empty() && quantile > 0.0) r->policy_.set_quantile(quantile);
    for (std::size_t j = 0; j < r->hops_.size(); ++j)
        r->policy_.threshold(static_cast<std::int64_t>(j), &r->hops_[j].threshold);
    for (std::size_t j = 0; j < gates.size(); ++j) {
        for (double w : gates[j].weights)
            if (!std::isfinite(w))
                fail(Code::Input, "plan", "$.policy.gates[" + std::to_string(j) + "]", "must be finite");
        if (!std::isfinite(gates[j].bias))
            fail(Code::Input, "plan", "$.policy.gates[" + std::to_string(j) + "]", "must be finite");
    }
    r->gates_ = std::move(gates);
    r->costs_known_ = costs_known;
    r->backend_ = std::move(backend);

    r->steps_.resize(bundle.steps.size());
    std::vector<bool> needed(bundle.steps.size(), false);
    for (const Hop& hop : r->hops_)
        for (std::size_t i : hop.steps) needed[i] = true;
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

const void* Runner::rows_of_input(std::size_t input, const void* x) {
    if (!input_gathered_[input]) {
        gather_bytes(x, input_bytes_[input], rows_.data(), static_cast<std::int64_t>(rows_.size()),
                     gathered_inputs_[input]);
        input_gathered_[input] = true;
    }
    return gathered_inputs_[input].data();
}

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
        run(inputs, batch, budget_ms, out);
    });
}

void Runner::run(const std::vector<const void*>& inputs, std::int64_t batch, double budget_ms,
                 Result& out) {
    const Clock::time_point start = Clock::now();
    const auto B = static_cast<std::size_t>(batch);
    out.pred.assign(B, -1);
    out.exit_state.assign(B, -1);
    out.conf.assign(B, std::numeric_limits<float>::quiet_NaN());
    out.budget_exit.assign(B, 0);
    out.step_ms.clear();
    out.step_rows.clear();
    out.step_index.clear();
    gathered_.resize(2);
    if (pred_.size() < B) {
        pred_.resize(B);
        keep_.resize(B);
        next_rows_.resize(B);
        best_pred_.resize(B);
        conf_.resize(B);
        best_conf_.resize(B);
        exit_mask_.resize(B);
    }
    const bool budget = budget_ms != kNoBudget;
    bool all = true;  // every row is active, in order (rows_ is then the identity)
    std::int64_t active = batch;
    rows_.clear();
    input_gathered_.assign(inputs.size(), false);
    TensorView prev[2];
    // The route, as AdaptiveModel walks it: with a budget table, the most accurate kept
    // state that fits (early-exit: the cascade up to it; ensemble and branches: it alone);
    // a branch plan without a budget: its most accurate branch alone.
    std::size_t first = 0, end = hops_.size();
    const bool early_exit = bundle_.kind == "early-exit";
    if (budget && table_) {
        std::int64_t target = -1;
        policy_.lookup(budget_ms, &target);
        if (target >= 0) {
            end = static_cast<std::size_t>(target) + 1;
            if (!early_exit) first = end - 1;
        }
    } else if (!budget && bundle_.kind == "branches") {
        first = end - 1;
    }
    const std::size_t last = end - 1;
    // Gates read the features of every earlier kept state: they decide only on a route
    // that starts at the first kept state (a member picked alone answers plainly).
    const bool gated = !gates_.empty() && first == 0;
    const auto stride = static_cast<std::int64_t>(std::max<std::size_t>(1, gates_.size()));
    if (gated && history_.size() < B * static_cast<std::size_t>(stride)) {
        history_.resize(B * static_cast<std::size_t>(stride));
        previous_.resize(B);
    }
    const auto row_of = [&](std::int64_t b) { return all ? b : rows_[static_cast<std::size_t>(b)]; };

    for (std::size_t pos = first; pos < end; ++pos) {
        const Hop& hop = hops_[pos];
        if (budget && pos > first) {
            bool fits = false;
            policy_.fits(static_cast<std::int64_t>(pos), ms_since(start), budget_ms, &fits);
            if (!fits) {
                // skipped, so unmeasured: drift back toward the prior (as AdaptiveModel)
                policy_.decay(static_cast<std::int64_t>(pos));
                for (std::int64_t b = 0; b < active; ++b) {
                    const auto r = static_cast<std::size_t>(row_of(b));
                    out.pred[r] = best_pred_[r];
                    out.conf[r] = best_conf_[r];
                    out.exit_state[r] = hops_[pos - 1].state;
                    out.budget_exit[r] = 1;
                }
                break;
            }
        }
        const Clock::time_point t0 = Clock::now();
        for (std::size_t i : hop.steps) {
            StepRun& s = steps_[i];
            const Clock::time_point ts = Clock::now();
            for (std::size_t j = 0; j < s.feeds.size(); ++j) {
                const Feed& feed = s.feeds[j];
                if (feed.model_input) {
                    const std::size_t k = feed.index;
                    s.session->set_input(j, all ? inputs[k] : rows_of_input(k, inputs[k]), active,
                                         bundle_.inputs[k].row_elements());
                } else {
                    const TensorView& v = prev[feed.index];
                    s.session->set_input(j, v.data, v.rows, v.row_elements);
                }
            }
            s.session->infer();
            const std::size_t n_out = s.logits_out + 1;
            for (std::size_t k = 0; k < n_out; ++k) prev[k] = s.session->output(k);
            check_outputs(i, prev, n_out, s.logits_out, active);
            out.step_ms.push_back(ms_since(ts));
            out.step_rows.push_back(active);
            out.step_index.push_back(static_cast<std::int64_t>(i));
        }
        policy_.observe(static_cast<std::int64_t>(pos), ms_since(t0));
        const StepRun& tail = steps_[hop.steps.back()];
        const TensorView logits = prev[tail.logits_out];
        std::int64_t k = 0;
        Status st = Status::Ok;
        if (gated && pos < gates_.size()) {
            st = gate_decide(logits.data, active, logits.row_elements, gates_[pos], hop.threshold,
                             static_cast<std::int64_t>(pos), history_.data(), stride,
                             previous_.data(), pred_.data(), conf_.data(), exit_mask_.data(),
                             keep_.data(), &k);
        } else {
            st = decide(logits.data, active, logits.row_elements, policy_.measure(), hop.threshold,
                        pred_.data(), conf_.data(), exit_mask_.data(), keep_.data(), &k);
        }
        if (st != Status::Ok)
            fail(Code::Backend, bundle_.steps[hop.steps.back()].file, "",
                 std::string("cannot decide on its logits: ") + status_string(st));
        if (pos == last || k == 0) {  // every active row answers here
            for (std::int64_t b = 0; b < active; ++b) {
                const auto r = static_cast<std::size_t>(row_of(b));
                out.pred[r] = pred_[b];
                out.conf[r] = conf_[b];
                out.exit_state[r] = hop.state;
            }
            break;
        }
        if (budget) {  // the answer of the rows that continue, should the budget stop them
            for (std::int64_t j = 0; j < k; ++j) {
                const auto r = static_cast<std::size_t>(row_of(keep_[j]));
                best_pred_[r] = pred_[keep_[j]];
                best_conf_[r] = conf_[keep_[j]];
            }
        }
        if (k < active) {
            for (std::int64_t b = 0; b < active; ++b) {
                if (!exit_mask_[b]) continue;
                const auto r = static_cast<std::size_t>(row_of(b));
                out.pred[r] = pred_[b];
                out.conf[r] = conf_[b];
                out.exit_state[r] = hop.state;
            }
            for (std::int64_t j = 0; j < k; ++j) next_rows_[j] = row_of(keep_[j]);
            rows_.assign(next_rows_.begin(), next_rows_.begin() + k);
            // carry only the rows that continue of what the next hop's first step reads
            const StepRun& next = steps_[hops_[pos + 1].steps.front()];
            for (const Feed& feed : next.feeds) {
                if (feed.model_input) continue;
                TensorView& v = prev[feed.index];
                v.data = gather(v.data, v.row_elements, keep_.data(), k, gathered_[feed.index]);
                v.rows = k;
            }
            all = false;
            active = k;
            input_gathered_.assign(inputs.size(), false);
        }
    }
    out.total_ms = ms_since(start);
}

}  // namespace edgeadapt::runner
