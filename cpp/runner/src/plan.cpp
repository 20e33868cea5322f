// Plan loading: the runner's block of plan.json (versions 1 and 2: the policy, gates
// included, and the optional runtime block), checked as edgeadapt/formats/plan.py
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

// The largest thread count a runtime block may hold (as classify bounds --threads).
constexpr std::int64_t kMaxThreads = 1024;

// The "policy" block: no gates for the threshold policy, else one per kept state but
// the last, each five finite weights (kernel_ref.GATE_FEATURES order) and a bias.
std::vector<Gate> parse_policy(const Fields& f, std::size_t n_states) {
    const std::string kind = f.str("kind");
    if (kind != "threshold" && kind != "gate")
        f.fail("must be one of threshold, gate, got '" + kind + "'", "kind");
    std::vector<Gate> gates;
    if (kind == "threshold") return gates;
    const detail::Json& list = f.list("gates");
    for (std::size_t j = 0; j < list.size(); ++j) {
        const Fields g = f.item("gates", j);
        const detail::Json& w = g.list("weights");
        if (w.size() != static_cast<std::size_t>(kGateFeatures))
            g.fail("expected " + std::to_string(kGateFeatures) + " numbers (maxprob, margin, " +
                       "entropy, agreement, previous), got " + std::to_string(w.size()),
                   "weights");
        Gate gate{};
        for (std::size_t k = 0; k < w.size(); ++k)
            gate.weights[k] = detail::finite_number(w[k], g.source(), g.at("weights", k));
        gate.bias = g.number("bias");
        gates.push_back(gate);
    }
    if (gates.size() + 1 != n_states)
        f.fail("expected " + std::to_string(n_states - 1) +
                   " gates (one per kept state but the last)",
               "gates");
    return gates;
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
    if (f.has("policy")) p.gates = parse_policy(f.child("policy"), p.states.size());
    double low = 0.0, high = 0.0;
    measure_range(p.measure, low, high);
    if (!p.gates.empty()) low = 0.0, high = 1.0;  // gate scores
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
