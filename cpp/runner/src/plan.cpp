// Plan loading: the runner's block of plan.json, checked as edgeadapt/plan.py
// `plan_from_doc` checks it (the record of how the plan did is not read here).
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

void load(const std::filesystem::path& path, Plan& out) {
    const std::string source = path.string();
    const detail::Json doc =
        detail::parse_document(detail::read_bytes(path), source, "edgeadapt-plan", {1});
    const Fields f(doc, source);
    Plan p;
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
    double low = 0.0, high = 0.0;
    measure_range(p.measure, low, high);
    p.thresholds = numbers(f, "thresholds", p.states.size() - 1, low, high);
    p.cost_ms = numbers(f, "cost_ms", p.states.size(), 0.0, detail::kMaxMs);

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
