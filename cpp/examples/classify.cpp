// classify: run a bundle's adaptive cascade on the samples of a .npy or .npz file.
//
//   classify BUNDLE INPUTS.(npy|npz) (--plan PLAN.json | --thresholds T[,T...]) [--measure M]
//            [--budget-ms B] [--step-costs-ms C0,C1,...] [--backend openvino]
//            [--device CPU] [--threads N] [--batch N] [--warmup N] [--json OUT.json] [--quiet]
//
// INPUTS holds the bundle's model inputs as `edgeadapt run --input` reads them: an .npz
// (numpy.savez) with one array per input named as the input, [N, *input shape] of its
// dtype (float32, or int64 token ids and masks); a one-input bundle also takes a bare
// .npy or an .npz key `x`. A plan may be a threshold, a gate or (a branches bundle's) a
// scheduler plan (version 1 or 2); its runtime block, when present, sets the backend's
// threads and the options it understands (see edgeadapt::runner::apply_runtime) unless
// --threads or --device is given, and every setting not applied is noted on stderr. The samples run in batches
// of --batch (default: all at once), after --warmup untimed passes over them without a
// budget: OpenVINO compiles kernels for each new shape on first use (~5 ms here), and
// the policy folds every measured step time into its cost table, so a cold first call
// would otherwise keep a state predicted not to fit (and never measured again). Prints one line per sample (exit state, prediction,
// confidence; '*' marks a budget exit) and a latency summary; --json writes the
// per-sample results and timings. On an error it prints the message and exits with
// the runner's error code (1 file, 2 format, 3 sha256, 4 path, 5 plan/bundle mismatch,
// 6 input, 7 backend, 8 backend not built; 1 too when stdout cannot be written, a full
// disk); 64 for bad usage. --budget-ms is a finite number > 0; numbers past double's
// range (1e309) and lists with an empty item ("0.5,") are bad usage.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "edgeadapt/runner.hpp"
#include "npy.hpp"

namespace ea = edgeadapt::runner;

namespace {

constexpr int kUsage = 64;
// upper bounds of the integer options (as `edgeadapt profile` and `run` bound theirs)
constexpr double kMaxThreads = 1024, kMaxBatch = 1 << 20, kMaxWarmup = 1e6;

struct Args {
    std::string bundle, inputs, plan, json, backend = "openvino", measure = "maxprob";
    std::vector<double> thresholds, step_costs;
    double budget_ms = edgeadapt::kNoBudget;
    ea::BackendOptions backend_options;
    ea::GivenSettings given;
    std::int64_t batch = 0, warmup = 0;
    bool quiet = false;
};

int usage(const std::string& why) {
    std::fprintf(stderr,
                 "classify: %s\nusage: classify BUNDLE INPUTS.(npy|npz) (--plan PLAN.json | --thresholds "
                 "T[,T...]) [--measure M] [--budget-ms B] [--step-costs-ms C0,C1,...] "
                 "[--backend openvino|tensorrt] [--device D] [--threads N] [--batch N] [--warmup N] "
                 "[--json OUT.json] [--quiet]\n",
                 why.c_str());
    return kUsage;
}

// A number, the whole of `s`: not NaN, and not past double's range (strtod's ERANGE,
// e.g. 1e309; "inf" itself is read).
bool parse_number(const std::string& s, double& out) {
    char* end = nullptr;
    errno = 0;
    out = std::strtod(s.c_str(), &end);
    const bool overflow = errno == ERANGE && std::isinf(out);
    return !s.empty() && end == s.c_str() + s.size() && !std::isnan(out) && !overflow;
}

// Comma-separated numbers, every item present ("0.5," and "0.5,,0.6" are refused).
bool parse_list(const std::string& s, std::vector<double>& out) {
    if (s.empty() || s.back() == ',') return false;
    std::stringstream in(s);
    std::string item;
    while (std::getline(in, item, ',')) {
        double v = 0.0;
        if (!parse_number(item, v)) return false;
        out.push_back(v);
    }
    return true;
}

// Returns 0 when parsed, else the exit status.
int parse(int argc, char** argv, Args& a) {
    std::vector<std::string> positional;
    for (int i = 1; i < argc; ++i) {
        const std::string opt = argv[i];
        if (opt == "--quiet") {
            a.quiet = true;
            continue;
        }
        if (opt.rfind("--", 0) != 0) {
            positional.push_back(opt);
            continue;
        }
        if (i + 1 >= argc) return usage(opt + " needs a value");
        const std::string v = argv[++i];
        double num = 0.0;
        if (opt == "--plan") {
            a.plan = v;
        } else if (opt == "--thresholds") {
            if (!parse_list(v, a.thresholds)) return usage("--thresholds: expected numbers, got " + v);
        } else if (opt == "--step-costs-ms") {
            if (!parse_list(v, a.step_costs)) return usage("--step-costs-ms: expected numbers, got " + v);
            for (double c : a.step_costs)
                if (!(c >= 0.0 && std::isfinite(c)))
                    return usage("--step-costs-ms: expected finite numbers >= 0, got " + v);
        } else if (opt == "--measure") {
            a.measure = v;
        } else if (opt == "--budget-ms") {
            if (!parse_number(v, a.budget_ms) || !(a.budget_ms > 0.0 && std::isfinite(a.budget_ms)))
                return usage("--budget-ms: expected a finite number > 0, got " + v);
        } else if (opt == "--backend") {
            a.backend = v;
        } else if (opt == "--device") {
            a.backend_options.device = v;
            a.given.device = true;
        } else if (opt == "--threads" || opt == "--batch" || opt == "--warmup") {
            // bounded before the cast: a double past the integer's range is undefined behaviour
            const double most = opt == "--threads" ? kMaxThreads : opt == "--batch" ? kMaxBatch : kMaxWarmup;
            if (!parse_number(v, num) || !(num >= 0 && num <= most) || num != std::floor(num))
                return usage(opt + ": expected a whole number in 0.." +
                             std::to_string(static_cast<long long>(most)) + ", got " + v);
            if (opt == "--threads") {
                a.backend_options.threads = static_cast<int>(num);
                a.given.threads = true;
            } else {
                (opt == "--batch" ? a.batch : a.warmup) = static_cast<std::int64_t>(num);
            }
        } else if (opt == "--json") {
            a.json = v;
        } else {
            return usage("unknown option " + opt);
        }
    }
    if (positional.size() != 2) return usage("expected BUNDLE and INPUTS (.npy or .npz)");
    a.bundle = positional[0];
    a.inputs = positional[1];
    if (a.plan.empty() == a.thresholds.empty()) return usage("give --plan or --thresholds");
    return 0;
}

int report(const ea::Error& e) {
    std::fprintf(stderr, "classify: error %d (%s): %s\n", static_cast<int>(e.code),
                 ea::code_string(e.code), e.message.c_str());
    return static_cast<int>(e.code);
}

double percentile(std::vector<double> v, double q) {
    std::sort(v.begin(), v.end());
    const double at = q * static_cast<double>(v.size() - 1);
    const auto lo = static_cast<std::size_t>(at);
    const std::size_t hi = std::min(lo + 1, v.size() - 1);
    return v[lo] + (v[hi] - v[lo]) * (at - static_cast<double>(lo));
}

// Write `text` to `path` atomically: a temp file of a unique name beside it, synced,
// then renamed over `path`; on any failure the temp file is removed.
bool write_atomic(const std::string& path, const std::string& text) {
    std::string tmp = path + ".XXXXXX";
    const int fd = ::mkstemp(tmp.data());
    if (fd < 0) return false;
    const char* p = text.data();
    std::size_t left = text.size();
    bool ok = ::fchmod(fd, 0644) == 0;
    while (ok && left > 0) {
        const ssize_t n = ::write(fd, p, left);
        if (n < 0 && errno == EINTR) continue;
        ok = n > 0;
        if (ok) {
            p += n;
            left -= static_cast<std::size_t>(n);
        }
    }
    ok = ok && ::fsync(fd) == 0;
    ok = ::close(fd) == 0 && ok;
    ok = ok && std::rename(tmp.c_str(), path.c_str()) == 0;
    if (!ok) ::unlink(tmp.c_str());
    return ok;
}

}  // namespace

int main(int argc, char** argv) {
    Args a;
    if (const int rc = parse(argc, argv, a)) return rc;

    ea::Bundle bundle;
    if (auto e = ea::load_bundle(a.bundle, bundle)) return report(e);
    edgeadapt::examples::InputArrays x;
    if (auto e = edgeadapt::examples::read_inputs(a.inputs, bundle.inputs, x)) return report(e);
    const std::int64_t n = x.rows;
    // bytes of one row of each input, to point each batch at its first row
    std::vector<std::int64_t> row_bytes;
    for (std::size_t k = 0; k < bundle.inputs.size(); ++k)
        row_bytes.push_back(bundle.inputs[k].row_elements() *
                            static_cast<std::int64_t>(ea::dtype_size(x.arrays[k].dtype)));
    std::vector<const void*> feed(bundle.inputs.size());
    const auto rows_from = [&](std::int64_t first) -> const std::vector<const void*>& {
        for (std::size_t k = 0; k < feed.size(); ++k)
            feed[k] = static_cast<const unsigned char*>(x.arrays[k].raw()) + first * row_bytes[k];
        return feed;
    };
    const std::int64_t batch = a.batch > 0 ? std::min(a.batch, n) : n;
    a.backend_options.max_batch = static_cast<int>(std::min<std::int64_t>(batch, 1 << 30));
    ea::Plan plan;
    if (!a.plan.empty()) {
        if (auto e = ea::load_plan(a.plan, plan)) return report(e);
        std::vector<std::string> notes;
        if (auto e = ea::apply_runtime(plan, a.backend, a.given, a.backend_options, notes))
            return report(e);
        for (const std::string& note : notes) std::fprintf(stderr, "classify: note: %s\n", note.c_str());
    }
    std::shared_ptr<ea::Backend> backend;
    if (auto e = ea::make_backend(a.backend, a.backend_options, backend)) return report(e);
    ea::RunnerOptions options;
    options.step_costs_ms = a.step_costs;
    std::unique_ptr<ea::Runner> runner;
    if (!a.plan.empty()) {
        if (auto e = ea::Runner::create(bundle, plan, backend, options, runner)) return report(e);
    } else {
        edgeadapt::Measure measure;
        if (auto e = ea::parse_measure(a.measure, measure)) return report(e);
        if (auto e = ea::Runner::create(bundle, a.thresholds, measure, backend, options, runner))
            return report(e);
    }

    nlohmann::json pred, exit_state, conf, budget_exit, calls = nlohmann::json::array();
    std::vector<double> call_ms;
    std::vector<std::int64_t> runs(bundle.steps.size(), 0);
    ea::Result out;
    for (std::int64_t w = 0; w < a.warmup; ++w) {
        for (std::int64_t first = 0; first < n; first += batch) {
            const std::int64_t b = std::min(batch, n - first);
            if (auto e = runner->predict(rows_from(first), b, edgeadapt::kNoBudget, out))
                return report(e);
        }
    }
    if (!a.quiet) std::printf("%8s %6s %5s %10s\n", "sample", "state", "pred", "conf");
    for (std::int64_t first = 0; first < n; first += batch) {
        const std::int64_t b = std::min(batch, n - first);
        if (auto e = runner->predict(rows_from(first), b, a.budget_ms, out)) return report(e);
        call_ms.push_back(out.total_ms);
        calls.push_back({{"rows", b}, {"total", out.total_ms}, {"steps", out.step_ms},
                         {"step_rows", out.step_rows}, {"step_index", out.step_index}});
        for (std::size_t j = 0; j < out.step_index.size(); ++j) runs[out.step_index[j]] += out.step_rows[j];
        for (std::int64_t i = 0; i < b; ++i) {
            const auto s = static_cast<std::size_t>(i);
            pred.push_back(out.pred[s]);
            exit_state.push_back(out.exit_state[s]);
            conf.push_back(std::isnan(out.conf[s]) ? nlohmann::json(nullptr) : nlohmann::json(out.conf[s]));
            budget_exit.push_back(out.budget_exit[s] != 0);
            if (!a.quiet)
                std::printf("%8lld %6s %5lld %10.6f%s\n", static_cast<long long>(first + i),
                            bundle.state_names[static_cast<std::size_t>(out.exit_state[s])].c_str(),
                            static_cast<long long>(out.pred[s]), static_cast<double>(out.conf[s]),
                            out.budget_exit[s] ? " *" : "");
        }
    }
    double total = 0.0;
    for (double ms : call_ms) total += ms;
    std::printf("%lld samples in %zu calls of up to %lld on %s: total %.3f ms, %.1f us/sample; "
                "per call p50 %.1f us, p90 %.1f us, max %.1f us\n",
                static_cast<long long>(n), call_ms.size(), static_cast<long long>(batch),
                backend->name().c_str(), total, 1e3 * total / static_cast<double>(n),
                1e3 * percentile(call_ms, 0.5), 1e3 * percentile(call_ms, 0.9),
                1e3 * percentile(call_ms, 1.0));
    std::printf("rows run per step:");
    for (std::size_t i = 0; i < runs.size(); ++i)
        std::printf(" %s=%lld", bundle.state_names[i].c_str(), static_cast<long long>(runs[i]));
    std::printf("\n");
    if (!a.json.empty()) {
        const nlohmann::json doc = {{"pred", pred},
                                    {"exit_state", exit_state},
                                    {"conf", conf},
                                    {"budget_exit", budget_exit},
                                    {"states", runner->states()},
                                    {"backend", backend->name()},
                                    {"policy", runner->scheduled() ? "scheduler"
                                                                 : runner->gated() ? "gate"
                                                                                   : "threshold"},
                                    {"threads", a.backend_options.threads},
                                    {"latency_ms", {{"calls", calls}}}};
        if (!write_atomic(a.json, doc.dump(1) + "\n"))
            return report({ea::Code::Io, a.json + ": cannot write (" + std::strerror(errno) + ")"});
    }
    // the printed results are output too: a full disk or a closed pipe is an error
    errno = 0;
    if (std::fflush(stdout) != 0 || std::ferror(stdout))
        return report({ea::Code::Io, std::string("stdout: cannot write (") +
                                         std::strerror(errno ? errno : EIO) + ")"});
    return 0;
}
