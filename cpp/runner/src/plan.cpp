// Plan loading: the runner's block of plan.json (versions 1 and 2: the policy, gates
// and scheduler estimators included, and the optional runtime block), checked as edgeadapt/formats/plan.py
// `plan_from_doc` and edgeadapt/formats/presets.py `RuntimeConfig.from_json` check it (the
// record of how the plan did is not read here).
#include <algorithm>
#include <cmath>
#include <limits>
#include <set>

#include "detail.hpp"

namespace edgeadapt::runner {

using detail::Fields;

namespace {

// Confidence range of each measure; thresholds must lie in it.
void measure_range(Measure m, double& low, double& high) {
    low = m == Measure::Entropy ? -std::numeric_limits<double>::infinity() : 0.0;
    high = m == Measure::Entropy ? 0.0 : 1.0;
}

// `length` finite numbers within [low, high].
std::vector<double> numbers(const Fields& f, const std::string& key, std::size_t length,
                            double low, double high) {
    const detail::Json& values = f.list(key);
    if (values.size() != length)
        f.fail("expected " + std::to_string(length) + " numbers, got " +
                   std::to_string(values.size()),
               key);
    std::vector<double> out;
    for (std::size_t j = 0; j < values.size(); ++j) {
        const double v = detail::finite_number(values[j], f.source(), f.at(key, j));
        if (v < low || v > high)
            f.fail_at(f.at(key, j), "must be within [" + std::to_string(low) + ", " +
                                        std::to_string(high) + "], got " + values[j].dump());
        out.push_back(v);
    }
    return out;
}

// The runtimes a plan's costs may have been measured on (edgeadapt.runtimes).
const std::set<std::string> kRuntimes = {"onnxruntime", "openvino", "tensorrt"};

// A scheduler threshold that no estimate clears (edgeadapt/kernel_ref.py SCHEDULER_NEVER):
// the branch is never picked by its estimate.
constexpr double kSchedulerNever = 2.0;

// The largest thread count a runtime block may hold (as classify bounds --threads).
constexpr std::int64_t kMaxThreads = 1024;

// A gate or an estimator of the policy block: `n` finite weights and a finite bias.
template <class T>
T weights_and_bias(const Fields& f, std::size_t n, const std::string& names) {
    const detail::Json& w = f.list("weights");
    if (w.size() != n)
        f.fail("expected " + std::to_string(n) + " numbers (" + names + "), got " +
                   std::to_string(w.size()),
               "weights");
    T out{};
    for (std::size_t k = 0; k < w.size(); ++k)
        out.weights[k] = detail::finite_number(w[k], f.source(), f.at("weights", k));
    out.bias = f.number("bias");
    return out;
}

// A scheduler block: its "first" kept position (0 when absent), its "features"
// (exactly kernel_ref.SCHEDULER_FEATURES) and one estimator per kept branch from
// "first" on but the last (edgeadapt/formats/plan.py `_estimators`).
void parse_scheduler(const Fields& f, std::size_t n_states, Plan& p) {
    p.scheduler_first = 0;
    if (f.has("first")) {
        p.scheduler_first = f.integer("first");
        const auto top = static_cast<std::int64_t>(n_states) - 1;
        if (p.scheduler_first < 0 || p.scheduler_first > top)
            f.fail("must be in [0, " + std::to_string(top) + "], got " +
                       std::to_string(p.scheduler_first),
                   "first");
    }
    const detail::Json want = {"maxprob", "margin", "entropy"};
    const detail::Json& features = f.list("features");
    if (features != want) f.fail("must be " + want.dump() + ", got " + features.dump(), "features");
    const detail::Json& list = f.list("estimators");
    for (std::size_t j = 0; j < list.size(); ++j)
        p.estimators.push_back(weights_and_bias<Estimator>(
            f.item("estimators", j), static_cast<std::size_t>(kSchedulerFeatures),
            "maxprob, margin, entropy"));
    const std::size_t need = n_states - 1 - static_cast<std::size_t>(p.scheduler_first);
    if (p.estimators.size() != need)
        f.fail("expected " + std::to_string(need) +
                   " estimators (one per kept branch from position first on but the last)",
               "estimators");
}

// The "policy" block: the threshold policy; the gate policy, one gate per kept state but
// the last, each five finite weights (kernel_ref.GATE_FEATURES order) and a bias; or the
// scheduler policy (parse_scheduler).
void parse_policy(const Fields& f, std::size_t n_states, Plan& p) {
    const std::string kind = f.str("kind");
    if (kind != "threshold" && kind != "gate" && kind != "scheduler")
        f.fail("must be one of threshold, gate, scheduler, got '" + kind + "'", "kind");
    p.scheduler = kind == "scheduler";
    if (p.scheduler) return parse_scheduler(f, n_states, p);
    if (kind == "threshold") return;
    const detail::Json& list = f.list("gates");
    for (std::size_t j = 0; j < list.size(); ++j)
        p.gates.push_back(weights_and_bias<Gate>(f.item("gates", j),
                                                 static_cast<std::size_t>(kGateFeatures),
                                                 "maxprob, margin, entropy, agreement, previous"));
    if (p.gates.size() + 1 != n_states)
        f.fail("expected " + std::to_string(n_states - 1) +
                   " gates (one per kept state but the last)",
               "gates");
}

RuntimeConfig parse_runtime(const Fields& f) {
    RuntimeConfig rc;
    rc.runtime = f.str("runtime");
    if (!kRuntimes.count(rc.runtime))
        f.fail("unknown runtime '" + rc.runtime + "'; choose one of onnxruntime, openvino, tensorrt",
               "runtime");
    const detail::Json& preset = f.get("preset");
    if (!preset.is_null() && !preset.is_string())
        f.fail("expected a string or null, got " + preset.dump(), "preset");
    if (preset.is_string()) rc.preset = preset.get<std::string>();
    rc.precision = f.str("precision");
    const detail::Json& threads = f.get("threads");
    if (!threads.is_null()) {
        const std::int64_t t = detail::json_integer(threads, f.source(), f.at("threads"));
        if (t < 1 || t > kMaxThreads)
            f.fail("must be null or 1.." + std::to_string(kMaxThreads) + ", got " + threads.dump(),
                   "threads");
        rc.threads = static_cast<int>(t);
    }
    if (f.has("options")) {
        for (const auto& [key, value] : f.object("options").items()) {
            const std::string at = f.at("options") + "." + key;
            if (key == "threads" || key == "precision")
                f.fail_at(f.at("options"), "set '" + key + "' at the top level, not in options");
            if (value.is_object() || value.is_array())
                f.fail_at(at, "expected a JSON scalar (string, number, bool or null), got " +
                                  value.dump());
            if (value.is_number_float()) detail::finite_number(value, f.source(), at);
            OptionValue v;
            v.json = value.dump();
            v.is_string = value.is_string();
            if (v.is_string) v.text = value.get<std::string>();
            rc.options.emplace_back(key, std::move(v));
        }
    }
    return rc;
}

void load(const std::filesystem::path& path, Plan& out) {
    const std::string source = path.string();
    const detail::Json doc =
        detail::parse_document(detail::read_bytes(path, detail::kMaxTextBytes), source, "edgeadapt-plan", {1, 2});
    const Fields f(doc, source);
    Plan p;
    p.source = source;
    const Fields bundle = f.child("bundle");
    p.manifest_sha256 = bundle.str("manifest_sha256");
    if (!detail::is_sha256_hex(p.manifest_sha256))
        bundle.fail("must be 64 lowercase hex digits", "manifest_sha256");
    p.kind = bundle.str("kind");
    if (p.kind != "early-exit" && p.kind != "ensemble" && p.kind != "branches")
        bundle.fail("must be one of early-exit, ensemble, branches", "kind");
    const detail::Json& names = bundle.list("states");
    for (std::size_t j = 0; j < names.size(); ++j) {
        if (!names[j].is_string() || names[j].get<std::string>().empty())
            f.fail_at(bundle.at("states", j), "must be a non-empty string");
        p.bundle_states.push_back(names[j].get<std::string>());
    }
    if (p.bundle_states.empty() ||
        std::set<std::string>(p.bundle_states.begin(), p.bundle_states.end()).size() !=
            p.bundle_states.size())
        bundle.fail("must be a non-empty list of unique names", "states");

    const detail::Json& states = f.list("states");
    if (states.empty()) f.fail("must keep at least one state", "states");
    std::vector<std::string> kept_names;
    for (std::size_t j = 0; j < states.size(); ++j) {
        const std::int64_t s = detail::json_integer(states[j], source, f.at("states", j));
        if (s < 0 || s >= static_cast<std::int64_t>(p.bundle_states.size()))
            f.fail("state index " + std::to_string(s) + " is out of range for a bundle of " +
                       std::to_string(p.bundle_states.size()) + " states",
                   "states");
        if (j > 0 && s <= p.states.back()) f.fail("state indices must be strictly increasing", "states");
        p.states.push_back(s);
        kept_names.push_back(p.bundle_states[static_cast<std::size_t>(s)]);
    }
    const detail::Json& given_names = f.list("state_names");
    if (given_names != detail::Json(kept_names))
        f.fail("must be " + detail::Json(kept_names).dump() + " (bundle.states at $.states)",
               "state_names");

    const std::string measure = f.str("measure");
    if (parse_measure(measure, p.measure))
        f.fail("must be one of maxprob, margin, entropy, got '" + measure + "'", "measure");
    if (f.has("policy")) parse_policy(f.child("policy"), p.states.size(), p);
    if (p.scheduler && p.kind != "branches")
        f.fail("the scheduler policy picks branches; this plan's bundle is " + p.kind, "policy");
    double low = 0.0, high = 0.0;
    measure_range(p.measure, low, high);
    if (!p.gates.empty()) low = 0.0, high = 1.0;  // gate scores
    if (p.scheduler) low = 0.0, high = kSchedulerNever;  // scheduler estimates
    p.thresholds = numbers(f, "thresholds", p.states.size() - 1, low, high);
    p.cost_ms = numbers(f, "cost_ms", p.states.size(), 0.0, detail::kMaxMs);
    if (f.has("cost_stat")) {
        const std::string stat = f.str("cost_stat");
        if (stat == "p50") p.cost_quantile = 0.5;
        else if (stat == "p90") p.cost_quantile = 0.9;
        else if (stat == "p99") p.cost_quantile = 0.99;
        else f.fail("must be one of p50, p90, p99, got '" + stat + "'", "cost_stat");
    }

    if (f.has("branches")) {  // the rest of the block is the record, not read here
        if (p.kind != "branches") f.fail("only a branches plan has this block", "branches");
        const Fields b = f.child("branches");
        p.branches_run = b.str("run");
        if (p.branches_run != "cascade" && p.branches_run != "table")
            b.fail("must be one of cascade, table, got '" + p.branches_run + "'", "run");
    }

    if (f.has("hop_overhead_ms")) {
        p.hop_overhead_ms = f.number("hop_overhead_ms");
        if (p.hop_overhead_ms < 0.0 || p.hop_overhead_ms > detail::kMaxMs)
            f.fail("must be >= 0 and <= 1e12", "hop_overhead_ms");
    }

    const detail::Json& rows = f.list("budget");
    if (rows.empty()) f.fail("must hold at least one row", "budget");
    for (std::size_t j = 0; j < rows.size(); ++j) {
        const Fields row = f.item("budget", j);
        BudgetRow r;
        r.state = row.integer("state");
        if (std::find(p.states.begin(), p.states.end(), r.state) == p.states.end())
            row.fail("state " + std::to_string(r.state) + " is not kept ($.states)", "state");
        r.budget_ms = row.number("budget_ms");
        if (r.budget_ms < 0.0 || r.budget_ms > detail::kMaxMs)
            row.fail("must be >= 0 and <= 1e12", "budget_ms");
        r.accuracy = row.number("accuracy");
        if (r.accuracy < 0.0 || r.accuracy > 1.0) row.fail("must be within [0, 1]", "accuracy");
        if (j > 0 && r.budget_ms <= p.budget.back().budget_ms)
            f.fail("budget_ms must be strictly increasing", "budget[" + std::to_string(j) + "]");
        p.budget.push_back(r);
    }
    if (f.has("runtime")) {
        p.runtime = parse_runtime(f.child("runtime"));
        p.has_runtime = true;
    }
    out = std::move(p);
}

}  // namespace

Error parse_measure(const std::string& name, Measure& out) noexcept {
    if (name == "maxprob") {
        out = Measure::MaxProb;
    } else if (name == "margin") {
        out = Measure::Margin;
    } else if (name == "entropy") {
        out = Measure::Entropy;
    } else {
        return {Code::Input, "measure: must be one of maxprob, margin, entropy, got '" + name + "'"};
    }
    return {};
}

Error load_plan(const std::filesystem::path& path, Plan& out) noexcept {
    return detail::guard(Code::Io, path.string(), [&] { load(path, out); });
}

}  // namespace edgeadapt::runner
