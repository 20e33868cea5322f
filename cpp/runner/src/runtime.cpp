// apply_runtime: a plan's runtime block (the settings its costs were measured under)
// turned into the native backend's options, with a note for every setting that the
// user's own options override or that this backend cannot use.
#include <algorithm>
#include <map>
#include <set>

#include "detail.hpp"

namespace edgeadapt::runner {

namespace {

// The options each Python runtime takes (edgeadapt/runtimes): every other key in a
// plan's runtime block is refused. `applied`: those a native backend of that runtime
// turns into its own settings; the rest are listed in a note.
struct KnownOptions {
    std::set<std::string> applied;
    std::set<std::string> python_only;  // switches of the Python session wrappers
    std::set<std::string> not_native;   // settings the native backend has no counterpart for
};

const std::map<std::string, KnownOptions>& known_options() {
    static const std::map<std::string, KnownOptions> known = {
        {"onnxruntime", {{}, {"fast", "check_finite"}, {"device", "spin", "optimization"}}},
        {"openvino", {{"device", "hint"}, {"fast", "check_finite"}, {}}},
        {"tensorrt",
         {{},
          {"check_finite", "cache_dir"},
          {"max_batch", "opt_batch", "gpu", "workspace_mb"}}},
    };
    return known;
}

std::string joined(const std::vector<std::string>& names) {
    std::string out;
    for (const auto& n : names) out += (out.empty() ? "" : ", ") + n;
    return out;
}

void apply(const Plan& plan, const std::string& backend, const GivenSettings& given,
           BackendOptions& options, std::vector<std::string>& notes) {
    if (!plan.has_runtime) return;
    const RuntimeConfig& rc = plan.runtime;
    const std::string& source = plan.source.empty() ? std::string("plan") : plan.source;
    const auto known = known_options().find(rc.runtime);
    if (known == known_options().end())
        detail::fail(Code::Format, source, "$.runtime.runtime", "unknown runtime '" + rc.runtime + "'");
    const bool same = rc.runtime == backend;
    const bool cpu_threads = backend == "openvino";  // TensorRT has no CPU threads

    if (rc.threads > 0) {
        if (!cpu_threads) {
            notes.push_back("the plan's " + std::to_string(rc.threads) + " thread(s) do not apply to the " +
                            backend + " backend");
        } else if (given.threads) {
            if (options.threads != rc.threads)
                notes.push_back("the given threads (" + std::to_string(options.threads) +
                                ") override the plan's runtime setting (" +
                                std::to_string(rc.threads) + " threads)");
        } else {
            options.threads = rc.threads;
        }
    }

    if (same && backend == "openvino") {
        if (rc.precision == "as-exported" || rc.precision == "fp32" || rc.precision == "fp16" ||
            rc.precision == "bf16") {
            options.precision = rc.precision == "as-exported" ? "fp32" : rc.precision;
        } else {
            detail::fail(Code::Format, source, "$.runtime.precision",
                         "OpenVINO precision must be as-exported, fp32, fp16 or bf16, got '" +
                             rc.precision + "'");
        }
    } else if (same && backend == "tensorrt") {
        if (rc.precision != "as-exported" && rc.precision != "fp32")
            detail::fail(Code::Format, source, "$.runtime.precision",
                         "the native TensorRT backend builds fp32 engines; the plan was measured at " +
                             rc.precision);
    } else if (rc.precision != "as-exported") {
        notes.push_back("the plan's " + rc.runtime + " precision " + rc.precision +
                        " does not apply to the " + backend + " backend");
    }

    std::vector<std::string> python_only, not_applied;
    for (const auto& [key, value] : rc.options) {
        const std::string at = "$.runtime.options." + key;
        const KnownOptions& k = known->second;
        if (k.python_only.count(key)) {
            python_only.push_back(key);
            continue;
        }
        if (k.not_native.count(key) || (k.applied.count(key) && !same)) {
            not_applied.push_back(key + "=" + value.json);
            continue;
        }
        if (!k.applied.count(key))
            detail::fail(Code::Format, source, at,
                         "unknown " + rc.runtime + " option '" + key + "' (the native runner knows " +
                             [&] {
                                 std::vector<std::string> all(k.applied.begin(), k.applied.end());
                                 all.insert(all.end(), k.python_only.begin(), k.python_only.end());
                                 all.insert(all.end(), k.not_native.begin(), k.not_native.end());
                                 std::sort(all.begin(), all.end());
                                 return joined(all);
                             }() +
                             ")");
        if (!value.is_string) detail::fail(Code::Format, source, at, "expected a string, got " + value.json);
        if (key == "device") {
            if (value.text.empty()) detail::fail(Code::Format, source, at, "must not be empty");
            if (!given.device) {
                options.device = value.text;
            } else if (options.device != value.text) {
                notes.push_back("the given device (" + options.device +
                                ") overrides the plan's runtime setting (" + value.text + ")");
            }
        } else if (key == "hint") {
            if (value.text != "LATENCY" && value.text != "THROUGHPUT" &&
                value.text != "CUMULATIVE_THROUGHPUT")
                detail::fail(Code::Format, source, at,
                             "must be LATENCY, THROUGHPUT or CUMULATIVE_THROUGHPUT, got " + value.json);
            options.hint = value.text;
        }
    }
    if (!not_applied.empty())
        notes.push_back("the plan was measured on " + rc.runtime + "; these of its options have no " +
                        "counterpart in the native " + backend + " backend: " + joined(not_applied));
    if (!python_only.empty())
        notes.push_back("options only the Python runtime reads, not used here: " + joined(python_only));
}

}  // namespace

Error apply_runtime(const Plan& plan, const std::string& backend, const GivenSettings& given,
                    BackendOptions& options, std::vector<std::string>& notes) noexcept {
    return detail::guard(Code::Format, plan.source, [&] { apply(plan, backend, given, options, notes); });
}

}  // namespace edgeadapt::runner
