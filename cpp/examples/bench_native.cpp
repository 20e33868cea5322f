// bench_native: the runner's per-sample time at batch 1 against the steps' own latencies.
//
//   bench_native BUNDLE [--threads N] [--iters N] [--backend openvino] [--device CPU]
//
// Every threshold is 2 (above any maxprob), so every step runs. Each iteration times one
// Runner::predict on one fixed random sample, then a bare hand loop over separately
// loaded sessions of the same steps (same input, no decisions, no bookkeeping): the
// two alternate so both see the same machine load. Prints one JSON object with the
// medians in us: `full` (predict), `inside` (the steps' times as predict records them)
// and `alone` (the bare loop), for bench/native.py to tabulate.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "edgeadapt/runner.hpp"

namespace ea = edgeadapt::runner;
using Clock = std::chrono::steady_clock;

namespace {

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const std::size_t n = v.size();
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

int fail(const ea::Error& e) {
    std::fprintf(stderr, "bench_native: error %d: %s\n", static_cast<int>(e.code), e.message.c_str());
    return static_cast<int>(e.code);
}

}  // namespace

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: bench_native BUNDLE [--threads N] [--iters N] [--backend B] [--device D]\n");
        return 64;
    }
    ea::BackendOptions bo;
    bo.threads = 1;
    std::string backend_name = "openvino";
    int iters = 1000;
    for (int i = 2; i + 1 < argc; i += 2) {
        const std::string opt = argv[i], v = argv[i + 1];
        if (opt == "--threads") {
            bo.threads = std::stoi(v);
        } else if (opt == "--iters") {
            iters = std::max(1, std::stoi(v));
        } else if (opt == "--backend") {
            backend_name = v;
        } else if (opt == "--device") {
            bo.device = v;
        } else {
            std::fprintf(stderr, "bench_native: unknown option %s\n", opt.c_str());
            return 64;
        }
    }
    ea::Bundle bundle;
    if (auto e = ea::load_bundle(argv[1], bundle)) return fail(e);
    std::shared_ptr<ea::Backend> backend;
    if (auto e = ea::make_backend(backend_name, bo, backend)) return fail(e);
    std::unique_ptr<ea::Runner> runner;
    if (auto e = ea::Runner::create(bundle, {2.0}, edgeadapt::Measure::MaxProb, backend, {}, runner))
        return fail(e);

    // the bare loop: the same steps, loaded again, chained by hand
    std::vector<std::unique_ptr<ea::Session>> sessions;
    for (const ea::Step& s : bundle.steps) {
        std::vector<std::string> outputs;
        if (!s.activation.empty()) outputs.push_back(s.activation);
        outputs.push_back(s.logits);
        sessions.push_back(backend->load(s.path, s.inputs, outputs));
    }
    const std::int64_t row = bundle.inputs[0].row_elements();
    std::vector<float> x(static_cast<std::size_t>(row));
    std::mt19937 gen(0);
    std::normal_distribution<float> normal;
    for (float& v : x) v = normal(gen);

    const int warmup = 20;
    std::vector<double> full, inside, alone;
    ea::Result out;
    for (int it = 0; it < iters + warmup; ++it) {
        const Clock::time_point t0 = Clock::now();
        if (auto e = runner->predict(x.data(), 1, edgeadapt::kNoBudget, out)) return fail(e);
        const double f = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
        double in = 0.0;
        for (double ms : out.step_ms) in += 1e3 * ms;
        double bare = 0.0;
        ea::TensorView prev[2];
        for (std::size_t i = 0; i < sessions.size(); ++i) {
            const ea::Step& s = bundle.steps[i];
            const Clock::time_point ts = Clock::now();
            for (std::size_t j = 0; j < s.inputs.size(); ++j) {
                if (s.inputs[j] == bundle.inputs[0].name) {
                    sessions[i]->set_input(j, x.data(), 1, row);
                } else {
                    const ea::TensorView& v = prev[s.inputs[j] == bundle.steps[i - 1].activation ? 0 : 1];
                    sessions[i]->set_input(j, v.data, v.rows, v.row_elements);
                }
            }
            sessions[i]->infer();
            prev[0] = sessions[i]->output(0);
            if (!s.activation.empty()) prev[1] = sessions[i]->output(1);
            bare += std::chrono::duration<double, std::micro>(Clock::now() - ts).count();
        }
        if (it >= warmup) {
            full.push_back(f);
            inside.push_back(in);
            alone.push_back(bare);
        }
    }
    const nlohmann::json doc = {{"bundle", bundle.path.filename().string()},
                                {"backend", backend->name()},
                                {"threads", bo.threads},
                                {"steps", bundle.steps.size()},
                                {"iters", iters},
                                {"full_us", median(full)},
                                {"inside_us", median(inside)},
                                {"alone_us", median(alone)}};
    std::printf("%s\n", doc.dump().c_str());
    return 0;
}
