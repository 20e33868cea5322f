// ctest: the runner's loaders refuse bad bundles, plans (gate and scheduler policies and
// runtime blocks included) and .npy/.npz files with an error code and a message naming
// the file and field (never a crash), a plan's runtime block sets the backend's options,
// and the cascade runs the shipped bundles: with thresholds, a plan, a gate plan, a
// budget, compaction and bad inputs; and a scheduler plan over branches.
//
//   test_runner MULTIEXIT_BUNDLE FAMILY_BUNDLE SCRATCH_DIR
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <sstream>
#include <string>

#include "check.hpp"
#include "edgeadapt/runner.hpp"
#include "npy.hpp"
#include "zip_writer.hpp"

namespace fs = std::filesystem;
namespace ea = edgeadapt::runner;

namespace {

// The error has `code` and its message contains every one of `parts`.
bool is_error(const ea::Error& e, ea::Code code, std::initializer_list<const char*> parts) {
    bool ok = e.code == code;
    for (const char* p : parts) ok = ok && e.message.find(p) != std::string::npos;
    if (!ok)
        std::printf("  got code %d (want %d): %s\n", static_cast<int>(e.code),
                    static_cast<int>(code), e.message.c_str());
    return ok;
}

std::string read(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write(const fs::path& p, const std::string& text) {
    std::ofstream f(p, std::ios::binary | std::ios::trunc);
    f << text;
}

void replace(const fs::path& p, const std::string& from, const std::string& to) {
    std::string text = read(p);
    const std::size_t at = text.find(from);
    if (at == std::string::npos) {
        std::printf("  '%s' not in %s\n", from.c_str(), p.c_str());
        ++edgeadapt::testing::failures;
        return;
    }
    write(p, text.replace(at, from.size(), to));
}

// A fresh copy of `bundle` under scratch/name.
fs::path copy(const fs::path& bundle, const fs::path& scratch, const std::string& name) {
    const fs::path dst = scratch / name;
    fs::remove_all(dst);
    fs::create_directories(dst);
    fs::copy(bundle, dst, fs::copy_options::recursive);
    return dst;
}

// A plan for `b` keeping `states` as plan.json in `dir`; returns its path.
fs::path write_plan(const ea::Bundle& b, const fs::path& dir, const std::string& states,
                    const std::string& thresholds, const std::string& cost_ms,
                    const std::string& version = "1", const std::string& extra = "") {
    std::string names, kept;
    for (const auto& n : b.state_names) names += (names.empty() ? "\"" : ", \"") + n + "\"";
    std::string s = states;
    for (char& c : s)
        if (c == ',') c = ' ';
    std::istringstream in(s);
    for (std::size_t i; in >> i;) {
        const std::string name = i < b.state_names.size() ? b.state_names[i] : "?";
        kept += (kept.empty() ? "\"" : ", \"") + name + "\"";
    }
    const fs::path p = dir / "plan.json";
    write(p, "{\"format\": \"edgeadapt-plan\", \"version\": " + version +
                 ", \"bundle\": {\"manifest_sha256\": \"" + b.manifest_sha256 + "\", \"kind\": \"" +
                 b.kind + "\", \"states\": [" + names + "]}, \"measure\": \"maxprob\", \"states\": [" +
                 states + "], \"state_names\": [" + kept + "], \"thresholds\": [" + thresholds +
                 "], \"cost_ms\": [" + cost_ms +
                 "], \"budget\": [{\"budget_ms\": 0.1, \"state\": 0, \"accuracy\": 0.5}]" + extra +
                 "}");
    return p;
}

void bundle_faults(const fs::path& src, const fs::path& scratch) {
    ea::Bundle b;
    CHECK(!ea::load_bundle(src, b));
    CHECK(b.kind == "early-exit" && b.steps.size() == 4 && b.num_classes == 10);
    CHECK(b.manifest_sha256.size() == 64);
    CHECK(!ea::load_bundle(src / "manifest.json", b));

    CHECK(is_error(ea::load_bundle(scratch / "nowhere", b), ea::Code::Io, {"no such bundle"}));
    fs::path d = copy(src, scratch, "no-manifest");
    fs::remove(d / "manifest.json");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Io, {"manifest.json", "file not found"}));

    d = copy(src, scratch, "missing");
    fs::remove(d / "step2.onnx");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Io, {"$.files.step2.onnx", "missing"}));

    d = copy(src, scratch, "tampered");
    std::ofstream(d / "step1.onnx", std::ios::app | std::ios::binary) << '\0';
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Integrity, {"step1.onnx", "altered"}));
    CHECK(!ea::load_bundle(d, b, /*verify=*/false));  // the hashes only with verify

    d = copy(src, scratch, "version");
    replace(d / "manifest.json", "\"version\": 1", "\"version\": 4");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Format, {"$.version", "unsupported version 4"}));

    d = copy(src, scratch, "chains");  // version 3 without any state's chain
    replace(d / "manifest.json", "\"version\": 1", "\"version\": 3");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Format, {"$.version", "no state has a chain"}));

    d = copy(src, scratch, "version2");  // version 2 holds a list of inputs
    replace(d / "manifest.json", "\"version\": 1", "\"version\": 2");
    replace(d / "manifest.json", "\"input\": {", "\"inputs\": [{");
    replace(d / "manifest.json", "},\n  \"num_classes\"", "}],\n  \"num_classes\"");
    CHECK(!ea::load_bundle(d, b));
    replace(d / "manifest.json", "}],\n  \"num_classes\"",
            "}, {\"name\": \"m\", \"shape\": [\"batch\", 4], \"dtype\": \"int64\"}],\n"
            "  \"num_classes\"");
    CHECK(!ea::load_bundle(d, b));  // several inputs
    CHECK(b.inputs.size() == 2 && b.inputs[1].name == "m" && b.inputs[1].dtype == "int64" &&
          b.inputs[1].row_elements() == 4);
    replace(d / "manifest.json", "\"activation0\"\n      ]", "\"activation0\", \"m\"\n      ]");
    CHECK(!ea::load_bundle(d, b, false));  // a later step may read a model input
    // (which step1.onnx does not: verification compares the file's inputs)
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Format,
                   {"$.states[1]", "'step1.onnx' has inputs ['activation0']", "['activation0', 'm']"}));
    replace(d / "manifest.json", "\"dtype\": \"int64\"", "\"dtype\": \"complex\"");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Format, {"$.inputs[1].dtype"}));
    replace(d / "manifest.json", "\"inputs\": [{", "\"inputs\": [], \"was\": [{");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Format, {"$.inputs", "at least one input"}));

    d = copy(src, scratch, "format");
    replace(d / "manifest.json", "edgeadapt-bundle", "edgeadapt-plan");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Format, {"$.format"}));

    d = copy(src, scratch, "json");
    write(d / "manifest.json", read(d / "manifest.json").substr(0, 200));
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Format, {"invalid JSON"}));

    d = copy(src, scratch, "nan");
    replace(d / "manifest.json", "\"num_classes\": 10", "\"num_classes\": NaN");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Format, {"invalid JSON"}));

    d = copy(src, scratch, "type");
    replace(d / "manifest.json", "\"num_classes\": 10", "\"num_classes\": true");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Format, {"$.num_classes", "integer"}));

    d = copy(src, scratch, "dotdot");
    replace(d / "manifest.json", "\"step3.onnx\": \"", "\"../step3.onnx\": \"");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::UnsafePath, {"$.files.../step3.onnx", "'..'"}));

    d = copy(src, scratch, "absolute");
    replace(d / "manifest.json", "\"file\": \"step0.onnx\"", "\"file\": \"/etc/passwd\"");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::UnsafePath, {"$.states[0].file", "absolute"}));

    d = copy(src, scratch, "symlink");
    fs::rename(d / "step0.onnx", scratch / "outside.onnx");
    fs::create_symlink(scratch / "outside.onnx", d / "step0.onnx");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::UnsafePath, {"step0.onnx", "symlink"}));

    d = copy(src, scratch, "chain");
    replace(d / "manifest.json", "\"activation0\"\n      ]", "\"nothing\"\n      ]");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Format, {"$.states[1].inputs", "chain"}));

    d = copy(src, scratch, "flops");
    replace(d / "manifest.json", "\"flops\": 4513930", "\"flops\": 4513931");
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Format, {"$.states[0].flops"}));
}

void plan_faults(const fs::path& src, const fs::path& scratch) {
    ea::Bundle b;
    CHECK(!ea::load_bundle(src, b));
    const fs::path dir = scratch / "plans";
    fs::create_directories(dir);
    ea::Plan plan;
    CHECK(!ea::load_plan(write_plan(b, dir, "0, 2, 3", "0.9, 0.8", "0.1, 0.2, 0.3"), plan));
    CHECK(plan.states.size() == 3 && plan.thresholds[1] == 0.8 && plan.cost_ms[2] == 0.3);
    CHECK(is_error(ea::load_plan(dir / "none.json", plan), ea::Code::Io, {"none.json", "not found"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "7"), plan),
                   ea::Code::Format, {"plan.json", "$.version"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "NaN", "0.1, 0.3"), plan),
                   ea::Code::Format, {"plan.json", "invalid JSON"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "1.5", "0.1, 0.3"), plan),
                   ea::Code::Format, {"$.thresholds[0]"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.5, 0.5", "0.1, 0.3"), plan),
                   ea::Code::Format, {"$.thresholds", "expected 1 numbers"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "3, 0", "0.5", "0.1, 0.3"), plan),
                   ea::Code::Format, {"$.states", "increasing"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 9", "0.5", "0.1, 0.3"), plan),
                   ea::Code::Format, {"$.states", "out of range"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.5", "0.1, -1"), plan),
                   ea::Code::Format, {"$.cost_ms[1]"}));
    // the percentile of the costs: p50 unless the plan says
    CHECK(plan.cost_quantile == 0.5);
    CHECK(!ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "1", ", \"cost_stat\": \"p90\""), plan));
    CHECK(plan.cost_quantile == 0.9);
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "1",
                                            ", \"cost_stat\": \"p75\""),
                                 plan),
                   ea::Code::Format, {"$.cost_stat", "p75"}));

    // version 2: a gate policy (one gate per kept state but the last), thresholds on the
    // gates' scores in [0, 1]; the threshold policy spelt out; the runtime block
    const std::string gate = "{\"weights\": [1, 0.5, 0.25, -1, 2], \"bias\": -0.5}";
    const std::string gates = ", \"policy\": {\"kind\": \"gate\", \"gates\": [" + gate + ", " + gate + "]}";
    CHECK(!ea::load_plan(write_plan(b, dir, "0, 2, 3", "0.9, 0.8", "0.1, 0.2, 0.3", "2", gates), plan));
    CHECK(plan.gates.size() == 2 && plan.gates[1].weights[4] == 2.0 && plan.gates[0].bias == -0.5);
    CHECK(!plan.has_runtime);
    CHECK(!ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "2",
                                    ", \"policy\": {\"kind\": \"threshold\"}"),
                         plan));
    CHECK(plan.gates.empty());
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 2, 3", "0.9, 0.8", "0.1, 0.2, 0.3", "2",
                                            ", \"policy\": {\"kind\": \"gate\", \"gates\": [" + gate + "]}"),
                                 plan),
                   ea::Code::Format, {"$.policy.gates", "expected 2 gates"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "2",
                                            ", \"policy\": {\"kind\": \"gate\", \"gates\": [{\"weights\": [1, 2], \"bias\": 0}]}"),
                                 plan),
                   ea::Code::Format, {"$.policy.gates[0].weights", "expected 5 numbers"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "2",
                                            ", \"policy\": {\"kind\": \"gate\", \"gates\": [{\"weights\": [1, 2, 3, 4, true], \"bias\": 0}]}"),
                                 plan),
                   ea::Code::Format, {"$.policy.gates[0].weights[4]"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "2",
                                            ", \"policy\": {\"kind\": \"gate\", \"gates\": [{\"weights\": [1, 2, 3, 4, 5]}]}"),
                                 plan),
                   ea::Code::Format, {"$.policy.gates[0].bias", "missing"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "2",
                                            ", \"policy\": {\"kind\": \"learned\"}"),
                                 plan),
                   ea::Code::Format, {"$.policy.kind"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 2, 3", "-0.5, 0.8", "0.1, 0.2, 0.3", "2", gates), plan),
                   ea::Code::Format, {"$.thresholds[0]"}));  // gate scores lie in [0, 1]

    // version 2, a branches plan: the scheduler policy (one estimator per kept branch
    // from position first on but the last), thresholds on the estimates in [0, 2]
    {
        ea::Bundle br = b;
        br.kind = "branches";
        const auto sched = [&](const std::string& first, const std::string& features,
                               const std::string& estimators) {
            return ", \"policy\": {\"kind\": \"scheduler\"" + first + ", \"features\": " + features +
                   ", \"estimators\": [" + estimators + "]}";
        };
        const std::string feats = "[\"maxprob\", \"margin\", \"entropy\"]";
        const std::string est = "{\"weights\": [1, 0.5, -2], \"bias\": 0.25}";
        CHECK(!ea::load_plan(write_plan(br, dir, "0, 1, 2", "0.5, 2", "0.1, 0.2, 0.3", "2",
                                        sched("", feats, est + ", " + est)),
                             plan));
        CHECK(plan.scheduler && plan.scheduler_first == 0 && plan.estimators.size() == 2 &&
              plan.estimators[1].weights[2] == -2.0 && plan.estimators[0].bias == 0.25 &&
              plan.gates.empty());
        CHECK(!ea::load_plan(write_plan(br, dir, "0, 1, 2", "2, 0.5", "0.1, 0.2, 0.3", "2",
                                        sched(", \"first\": 1", feats, est)),
                             plan));
        CHECK(plan.scheduler && plan.scheduler_first == 1 && plan.estimators.size() == 1);
        CHECK(is_error(ea::load_plan(write_plan(br, dir, "0, 1, 2", "0.5, 0.5", "0.1, 0.2, 0.3", "2",
                                                sched("", feats, est)),
                                     plan),
                       ea::Code::Format, {"plan.json", "$.policy.estimators", "expected 2 estimators"}));
        CHECK(is_error(ea::load_plan(write_plan(br, dir, "0, 1, 2", "0.5, 0.5", "0.1, 0.2, 0.3", "2",
                                                sched(", \"first\": 3", feats, "")),
                                     plan),
                       ea::Code::Format, {"$.policy.first", "must be in [0, 2]"}));
        CHECK(is_error(ea::load_plan(write_plan(br, dir, "0, 1, 2", "0.5, 0.5", "0.1, 0.2, 0.3", "2",
                                                sched("", "[\"maxprob\", \"margin\"]", est + ", " + est)),
                                     plan),
                       ea::Code::Format, {"$.policy.features"}));
        CHECK(is_error(ea::load_plan(write_plan(br, dir, "0, 1, 2", "0.5, 0.5", "0.1, 0.2, 0.3", "2",
                                                sched("", feats, est + ", {\"weights\": [1, 2], \"bias\": 0}")),
                                     plan),
                       ea::Code::Format, {"$.policy.estimators[1].weights", "expected 3 numbers"}));
        CHECK(is_error(ea::load_plan(write_plan(br, dir, "0, 1, 2", "2.5, 0.5", "0.1, 0.2, 0.3", "2",
                                                sched("", feats, est + ", " + est)),
                                     plan),
                       ea::Code::Format, {"$.thresholds[0]"}));  // estimates lie in [0, 1], or 2
        // the scheduler picks among branches: an early-exit plan may not use it
        CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 1, 2", "0.5, 0.5", "0.1, 0.2, 0.3", "2",
                                                sched("", feats, est + ", " + est)),
                                     plan),
                       ea::Code::Format, {"plan.json", "$.policy", "picks branches", "early-exit"}));
    }

    const auto runtime = [](const std::string& body) { return ", \"runtime\": {" + body + "}"; };
    const std::string ort = "\"runtime\": \"onnxruntime\", \"preset\": \"x86-ort-2t\", "
                            "\"precision\": \"as-exported\", \"threads\": 2";
    CHECK(!ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "1",
                                    runtime(ort + ", \"options\": {\"spin\": false, \"optimization\": "
                                                  "\"all\", \"fast\": true}")),
                         plan));
    CHECK(plan.has_runtime && plan.runtime.runtime == "onnxruntime" && plan.runtime.threads == 2 &&
          plan.runtime.preset == "x86-ort-2t" && plan.runtime.options.size() == 3);
    {
        ea::BackendOptions bo;
        std::vector<std::string> notes;
        CHECK(!ea::apply_runtime(plan, "openvino", {}, bo, notes));
        CHECK(bo.threads == 2 && notes.size() == 2);
        CHECK(notes[0].find("spin=false, optimization=\"all\"") != std::string::npos);
        CHECK(notes[1].find("fast") != std::string::npos);
        ea::BackendOptions given;
        given.threads = 1;
        notes.clear();
        CHECK(!ea::apply_runtime(plan, "openvino", {true, false}, given, notes));
        CHECK(given.threads == 1 && notes[0].find("override") != std::string::npos);
    }
    CHECK(!ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "1",
                                    runtime("\"runtime\": \"openvino\", \"preset\": null, \"precision\": "
                                            "\"fp16\", \"threads\": null, \"options\": {\"hint\": "
                                            "\"THROUGHPUT\", \"device\": \"CPU\"}")),
                         plan));
    {
        ea::BackendOptions bo;
        std::vector<std::string> notes;
        CHECK(!ea::apply_runtime(plan, "openvino", {}, bo, notes));
        CHECK(bo.threads == 0 && bo.hint == "THROUGHPUT" && bo.precision == "fp16" && bo.device == "CPU");
        CHECK(notes.empty());
    }
    CHECK(!ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "1",
                                    runtime(ort + ", \"options\": {\"allow_magic\": 1}")),
                         plan));
    {
        ea::BackendOptions bo;
        std::vector<std::string> notes;
        CHECK(is_error(ea::apply_runtime(plan, "openvino", {}, bo, notes), ea::Code::Format,
                       {"plan.json", "$.runtime.options.allow_magic", "unknown onnxruntime option"}));
    }
    CHECK(!ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "1",
                                    runtime("\"runtime\": \"openvino\", \"preset\": null, \"precision\": "
                                            "\"int4\", \"threads\": 1")),
                         plan));
    {
        ea::BackendOptions bo;
        std::vector<std::string> notes;
        CHECK(is_error(ea::apply_runtime(plan, "openvino", {}, bo, notes), ea::Code::Format,
                       {"plan.json", "$.runtime.precision"}));
    }
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "1",
                                            runtime("\"runtime\": \"tvm\", \"preset\": null, "
                                                    "\"precision\": \"as-exported\", \"threads\": 1")),
                                 plan),
                   ea::Code::Format, {"plan.json", "$.runtime.runtime", "unknown runtime"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "1",
                                            runtime("\"runtime\": \"openvino\", \"preset\": null, "
                                                    "\"precision\": \"fp32\", \"threads\": 0")),
                                 plan),
                   ea::Code::Format, {"plan.json", "$.runtime.threads"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "1",
                                            runtime("\"runtime\": \"openvino\", \"preset\": null, "
                                                    "\"precision\": \"fp32\", \"threads\": 1, "
                                                    "\"options\": {\"hint\": [1]}")),
                                 plan),
                   ea::Code::Format, {"plan.json", "$.runtime.options.hint", "scalar"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "1",
                                            runtime("\"runtime\": \"openvino\", \"preset\": 3, "
                                                    "\"precision\": \"fp32\", \"threads\": 1")),
                                 plan),
                   ea::Code::Format, {"plan.json", "$.runtime.preset"}));
    CHECK(is_error(ea::load_plan(write_plan(b, dir, "0, 3", "0.9", "0.1, 0.3", "1",
                                            runtime("\"runtime\": \"openvino\", \"preset\": null, "
                                                    "\"threads\": 1")),
                                 plan),
                   ea::Code::Format, {"plan.json", "$.runtime.precision", "missing"}));

    // a plan made for another bundle
    CHECK(!ea::load_plan(write_plan(b, dir, "0, 3", "0.5", "0.1, 0.3"), plan));
    plan.manifest_sha256 = std::string(64, '0');
    std::shared_ptr<ea::Backend> backend;
    std::unique_ptr<ea::Runner> runner;
    CHECK(is_error(ea::Runner::create(b, plan, backend, {}, runner), ea::Code::Mismatch,
                   {"another bundle"}));
    CHECK(is_error(ea::Runner::create(b, {NAN}, edgeadapt::Measure::MaxProb, backend, {}, runner),
                   ea::Code::Input, {"thresholds", "NaN"}));
    CHECK(is_error(ea::Runner::create(b, {0.5, 0.5}, edgeadapt::Measure::MaxProb, backend, {}, runner),
                   ea::Code::Input, {"thresholds", "expected one value or 3"}));
    CHECK(is_error(ea::make_backend("cuda-magic", {}, backend), ea::Code::Input, {"unknown backend"}));
}

void npy_faults(const fs::path& scratch) {
    edgeadapt::examples::NpyArray a;
    const fs::path p = scratch / "x.npy";
    std::string header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
    header.resize(117, ' ');
    header += '\n';  // the data starts at byte 128
    const std::string magic = std::string("\x93NUMPY\x01\x00", 8) + char(header.size()) + char(0);
    std::string data(24, '\0');
    for (int k = 0; k < 6; ++k) {
        const float v = static_cast<float>(k);
        std::memcpy(&data[static_cast<std::size_t>(k) * 4], &v, 4);
    }
    write(p, magic + header + data);
    CHECK(!edgeadapt::examples::read_npy(p, a));
    CHECK(a.shape.size() == 2 && a.shape[0] == 2 && a.shape[1] == 3 && a.data.size() == 6);
    CHECK(a.data[1] == 1.0f && a.data[3] == 3.0f);
    // data one byte later, not aligned to its float32 values: read the same
    write(p, magic.substr(0, 8) + char(header.size() + 1) + char(0) + " " + header + data);
    CHECK(!edgeadapt::examples::read_npy(p, a));
    CHECK(a.shape.size() == 2 && a.data.size() == 6 && a.data[1] == 1.0f && a.data[5] == 5.0f);
    write(p, magic + header + data.substr(4));
    CHECK(is_error(edgeadapt::examples::read_npy(p, a), ea::Code::Format, {"x.npy", "data bytes"}));
    std::string f8 = header;
    f8.replace(f8.find("<f4"), 3, "<f8");
    write(p, magic + f8 + data);  // 24 bytes are 3 doubles, not 6
    CHECK(is_error(edgeadapt::examples::read_npy(p, a), ea::Code::Format, {"x.npy", "data bytes"}));
    std::string wide(48, '\0');  // float64 is read as float32; beyond its range as infinity
    const double values[6] = {0.5, -1.0, 2.0, 1e300, -1e300, 3.0};
    std::memcpy(wide.data(), values, sizeof values);
    write(p, magic + f8 + wide);
    CHECK(!edgeadapt::examples::read_npy(p, a));
    CHECK(a.data.size() == 6 && a.data[0] == 0.5f && a.data[2] == 2.0f && std::isinf(a.data[3]) &&
          a.data[4] < 0 && std::isinf(a.data[4]));
    std::string i4 = header;
    i4.replace(i4.find("<f4"), 3, "<i4");
    write(p, magic + i4 + data);
    CHECK(is_error(edgeadapt::examples::read_npy(p, a), ea::Code::Format, {"float32"}));
    std::string fortran = header;  // the values 0..5 in Fortran order: [[0, 2, 4], [1, 3, 5]]
    fortran.replace(fortran.find("False"), 5, "True ");
    write(p, magic + fortran + data);
    CHECK(!edgeadapt::examples::read_npy(p, a));
    CHECK((a.data == std::vector<float>{0, 2, 4, 1, 3, 5}));
    fortran.replace(fortran.find("True "), 5, "1    ");
    write(p, magic + fortran + data);
    CHECK(is_error(edgeadapt::examples::read_npy(p, a), ea::Code::Format, {"fortran_order"}));
    write(p, "not numpy at all");
    CHECK(is_error(edgeadapt::examples::read_npy(p, a), ea::Code::Format, {"magic"}));
    CHECK(is_error(edgeadapt::examples::read_npy(scratch / "none.npy", a), ea::Code::Io, {"none.npy"}));
}

void npz_faults(const fs::path& scratch) {
    namespace ex = edgeadapt::examples;
    using ex::testing::npy_bytes;
    using ex::testing::zip_bytes;
    std::string ids_data, mask_data, x_data(3 * 4 * sizeof(float), '\0');
    for (std::int64_t v : {1, 2, 3, 4, 5, 6}) ids_data.append(reinterpret_cast<const char*>(&v), 8);
    for (std::int64_t v : {1, 1, 1, 1, 0, 0}) mask_data.append(reinterpret_cast<const char*>(&v), 8);
    const std::string ids = npy_bytes("<i8", "(2, 3)", ids_data);
    const std::string mask = npy_bytes("<i8", "(2, 3)", mask_data);
    const std::vector<ea::InputSpec> specs = {{"input_ids", {3}, "int64"}, {"attention_mask", {3}, "int64"}};
    const fs::path p = scratch / "data.npz";
    ex::InputArrays in;
    write(p, zip_bytes({{"input_ids.npy", ids}, {"attention_mask.npy", mask}, {"y.npy", ids}}));
    CHECK(!ex::read_inputs(p, specs, in));
    CHECK(in.rows == 2 && in.arrays.size() == 2 && in.arrays[0].ints[5] == 6 && in.arrays[1].ints[4] == 0);
    // the order of the manifest, whatever the archive's
    write(p, zip_bytes({{"attention_mask.npy", mask}, {"input_ids.npy", ids}}));
    CHECK(!ex::read_inputs(p, specs, in));
    CHECK(in.arrays[0].ints[0] == 1 && in.arrays[1].ints[5] == 0);
    write(p, zip_bytes({{"input_ids.npy", ids}}));
    CHECK(is_error(ex::read_inputs(p, specs, in), ea::Code::Input, {"data.npz", "attention_mask", "missing"}));
    write(p, zip_bytes({{"input_ids.npy", ids}, {"attention_mask.npy", npy_bytes("<f4", "(2, 3)", x_data.substr(0, 24))}}));
    CHECK(is_error(ex::read_inputs(p, specs, in), ea::Code::Input, {"data.npz: attention_mask", "expected dtype int64"}));
    write(p, zip_bytes({{"input_ids.npy", ids}, {"attention_mask.npy", npy_bytes("<i8", "(3, 2)", mask_data)}}));
    CHECK(is_error(ex::read_inputs(p, specs, in), ea::Code::Input, {"attention_mask", "expected shape [N, 3]"}));
    write(p, zip_bytes({{"input_ids.npy", ids}, {"attention_mask.npy", npy_bytes("<i8", "(1, 3)", mask_data.substr(0, 24))}}));
    CHECK(is_error(ex::read_inputs(p, specs, in), ea::Code::Input, {"attention_mask", "same number of rows"}));
    write(p, zip_bytes({{"input_ids.npy", ids}, {"input_ids.npy", ids}}));
    CHECK(is_error(ex::read_inputs(p, specs, in), ea::Code::Format, {"input_ids", "twice"}));
    std::string corrupt = zip_bytes({{"input_ids.npy", ids}, {"attention_mask.npy", mask}});
    corrupt[corrupt.find("\x93NUMPY", 100) + 70] ^= 1;  // a data byte of the second member
    write(p, corrupt);
    CHECK(is_error(ex::read_inputs(p, specs, in), ea::Code::Format, {"attention_mask", "CRC-32"}));
    std::string deflated = zip_bytes({{"input_ids.npy", ids}, {"attention_mask.npy", mask}});
    deflated[8] = 8;  // the local header's method: deflate
    const std::size_t central = deflated.find("PK\x01\x02");
    deflated[central + 10] = 8;
    write(p, deflated);
    CHECK(is_error(ex::read_inputs(p, specs, in), ea::Code::Format, {"input_ids", "savez_compressed"}));
    write(p, zip_bytes({{"input_ids.npy", ids}, {"attention_mask.npy", mask}}).substr(0, 200));
    CHECK(is_error(ex::read_inputs(p, specs, in), ea::Code::Format, {"data.npz"}));
    write(p, ids);  // a bare .npy for a bundle of two inputs
    CHECK(is_error(ex::read_inputs(p, specs, in), ea::Code::Input, {"2 inputs", "npz"}));
    // a one-input bundle: the input's name, or `x`, or a bare .npy
    const std::vector<ea::InputSpec> one = {{"input", {4}, "float32"}};
    write(p, zip_bytes({{"x.npy", npy_bytes("<f4", "(3, 4)", x_data)}}));
    CHECK(!ex::read_inputs(p, one, in) && in.rows == 3 && in.arrays[0].data.size() == 12);
    write(p, zip_bytes({{"x.npy", npy_bytes("<f4", "(3, 4)", x_data)}, {"input.npy", npy_bytes("<f4", "(3, 4)", x_data)}}));
    CHECK(is_error(ex::read_inputs(p, one, in), ea::Code::Input, {"both 'x' and 'input'"}));
    write(p, npy_bytes("<f4", "(3, 4)", x_data));
    CHECK(!ex::read_inputs(p, one, in) && in.rows == 3);
    CHECK(is_error(ex::read_inputs(scratch / "none.npz", one, in), ea::Code::Io, {"none.npz", "not found"}));
}

std::vector<float> random_inputs(std::int64_t rows, std::int64_t row, unsigned seed) {
    std::vector<float> x(static_cast<std::size_t>(rows * row));
    std::mt19937 gen(seed);
    std::normal_distribution<float> normal;
    for (float& v : x) v = normal(gen);
    return x;
}

void runs(const fs::path& multiexit, const fs::path& family, const fs::path& scratch) {
    std::shared_ptr<ea::Backend> backend;
    ea::BackendOptions bo;
    bo.threads = 1;
    const ea::Error be = ea::make_backend("openvino", bo, backend);
    if (be.code == ea::Code::Unavailable) {
        std::printf("runs: skipped (%s)\n", be.message.c_str());
        return;
    }
    CHECK(!be);
    CHECK(is_error(ea::make_backend("openvino", {"NO-SUCH-DEVICE", 0}, backend), ea::Code::Input,
                   {"not available"}));
    CHECK(!ea::make_backend("openvino", bo, backend));
    for (const fs::path& path : {multiexit, family}) {
        ea::Bundle b;
        CHECK(!ea::load_bundle(path, b));
        const std::int64_t n = 48, row = b.inputs[0].row_elements();
        const auto last = static_cast<std::int64_t>(b.steps.size()) - 1;
        const std::string kept = "0, " + std::to_string(last);
        const std::vector<float> x = random_inputs(n, row, 1);
        std::unique_ptr<ea::Runner> all, first, mixed;
        ea::Result out;
        // thresholds above any confidence: the last state answers every row
        CHECK(!ea::Runner::create(b, {2.0}, edgeadapt::Measure::MaxProb, backend, {}, all));
        CHECK(!all->predict(x.data(), n, edgeadapt::kNoBudget, out));
        const std::vector<std::int64_t> last_pred = out.pred;
        for (std::int64_t i = 0; i < n; ++i) CHECK(out.exit_state[i] == last && out.pred[i] >= 0);
        CHECK(out.step_rows.size() == b.steps.size() && out.step_rows.back() == n);
        // thresholds 0: the first state answers every row, later steps never run
        CHECK(!ea::Runner::create(b, {0.0}, edgeadapt::Measure::Margin, backend, {}, first));
        CHECK(!first->predict(x.data(), n, edgeadapt::kNoBudget, out));
        CHECK(out.step_rows.size() == 1);
        for (std::int64_t i = 0; i < n; ++i) CHECK(out.exit_state[i] == 0 && out.conf[i] >= 0.0f);
        // a plan with compaction: rows leave at state 0, the rest carry on, and a row
        // that reaches the last kept state answers as the all-states run did
        const fs::path dir = scratch / ("plan-" + b.kind);
        fs::create_directories(dir);
        ea::Plan plan;
        CHECK(!ea::load_plan(write_plan(b, dir, kept, "0.5", "0.1, 0.3"), plan));
        CHECK(!ea::Runner::create(b, plan, backend, {}, mixed));
        // the plan's costs keep tracking their percentile (p50 here), given ones their mean
        CHECK(mixed->policy().quantile() == 0.5);
        CHECK(all->policy().quantile() == 0.0);
        {
            ea::RunnerOptions given;
            given.step_costs_ms.assign(b.steps.size(), 0.1);
            std::unique_ptr<ea::Runner> numbers;
            CHECK(!ea::Runner::create(b, plan, backend, given, numbers));
            CHECK(numbers->policy().quantile() == 0.0);
        }
        CHECK(!mixed->predict(x.data(), n, edgeadapt::kNoBudget, out));
        std::int64_t early = 0;
        for (std::int64_t i = 0; i < n; ++i) {
            CHECK(out.exit_state[i] == 0 || out.exit_state[i] == last);
            if (out.exit_state[i] == 0) {
                ++early;
                CHECK(out.conf[i] >= 0.5f);
            } else {
                CHECK(out.pred[i] == last_pred[i]);
            }
        }
        CHECK(early > 0 && early < n);
        CHECK(out.step_rows.front() == n && out.step_rows.back() == n - early);
        // budget: below the plan's cost of the second kept state, every row leaves at the
        // first with its answer there; the runner reuses `out`
        CHECK(!mixed->predict(x.data(), n, 1e-6, out));
        for (std::int64_t i = 0; i < n; ++i) CHECK(out.exit_state[i] == 0);
        CHECK(out.step_rows.size() == 1);
        // bad inputs and budgets
        std::vector<float> bad = x;
        bad[row * 5 + 2] = NAN;
        CHECK(is_error(mixed->predict(bad.data(), n, edgeadapt::kNoBudget, out), ea::Code::Input,
                       {"NaN or infinity in 1 row(s), first row 5"}));
        CHECK(is_error(mixed->predict(nullptr, n, edgeadapt::kNoBudget, out), ea::Code::Input, {"null"}));
        CHECK(is_error(mixed->predict(x.data(), 0, edgeadapt::kNoBudget, out), ea::Code::Input, {"empty"}));
        CHECK(is_error(mixed->predict(x.data(), n, -1.0, out), ea::Code::Input, {"budget_ms"}));
        CHECK(is_error(all->predict(x.data(), n, 1.0, out), ea::Code::Input, {"step costs"}));
        CHECK(is_error(all->predict(std::vector<const void*>{x.data(), x.data()}, n, edgeadapt::kNoBudget, out),
                       ea::Code::Input, {"expected 1 input(s)"}));
        // a gate plan: a gate sure of every row (score 1) sends all out at the first kept
        // state; one sure of none leaves them to the last, which answers with its measure
        const auto gate_plan = [&](const char* bias) {
            const std::string g = std::string("{\"weights\": [0, 0, 0, 0, 0], \"bias\": ") + bias + "}";
            ea::Plan gp;
            CHECK(!ea::load_plan(write_plan(b, dir, kept, "0.5", "0.1, 0.3", "2",
                                            ", \"policy\": {\"kind\": \"gate\", \"gates\": [" + g + "]}"),
                                 gp));
            return gp;
        };
        std::unique_ptr<ea::Runner> gated;
        CHECK(!ea::Runner::create(b, gate_plan("80"), backend, {}, gated));
        CHECK(gated->gated());
        CHECK(!gated->predict(x.data(), n, edgeadapt::kNoBudget, out));
        for (std::int64_t i = 0; i < n; ++i) CHECK(out.exit_state[i] == 0 && out.conf[i] == 1.0f);
        CHECK(!ea::Runner::create(b, gate_plan("-80"), backend, {}, gated));
        CHECK(!gated->predict(x.data(), n, edgeadapt::kNoBudget, out));
        for (std::int64_t i = 0; i < n; ++i) CHECK(out.exit_state[i] == last && out.pred[i] == last_pred[i]);
    }
    // a scheduler plan over the family bundle declared as branches: the first branch runs
    // on every row; an estimate sure of every row (score 1) answers all with it, one sure
    // of none sends every row to the last branch that fits (branch 1's threshold 2: never
    // picked by its estimate); a budget too small for the first branch and the budget
    // table's pick runs that pick alone (nothing fits: the first kept branch)
    {
        const fs::path d = copy(family, scratch, "branches");
        replace(d / "manifest.json", "\"kind\": \"ensemble\"", "\"kind\": \"branches\"");
        ea::Bundle b;
        CHECK(!ea::load_bundle(d, b));
        const std::int64_t n = 40, row = b.inputs[0].row_elements();
        const std::vector<float> x = random_inputs(n, row, 2);
        ea::Result out;
        std::unique_ptr<ea::Runner> alone;  // the last branch alone answers every row
        CHECK(!ea::Runner::create(b, {1.0}, edgeadapt::Measure::MaxProb, backend, {}, alone));
        CHECK(!alone->predict(x.data(), n, edgeadapt::kNoBudget, out));
        const std::vector<std::int64_t> last_pred = out.pred;
        const std::vector<float> last_conf = out.conf;
        const auto sched_plan = [&](const char* bias) {
            const std::string e = std::string("{\"weights\": [0, 0, 0], \"bias\": ") + bias + "}";
            ea::Plan sp;
            CHECK(!ea::load_plan(write_plan(b, scratch, "0, 1, 2", "0.5, 2", "0.1, 0.2, 0.3", "2",
                                            ", \"policy\": {\"kind\": \"scheduler\", \"features\": "
                                            "[\"maxprob\", \"margin\", \"entropy\"], \"estimators\": [" +
                                                e + ", " + e + "]}"),
                                 sp));
            return sp;
        };
        std::unique_ptr<ea::Runner> sched;
        CHECK(!ea::Runner::create(b, sched_plan("80"), backend, {}, sched));
        CHECK(sched->scheduled() && !sched->gated());
        CHECK(!sched->predict(x.data(), n, edgeadapt::kNoBudget, out));
        CHECK(out.step_index == std::vector<std::int64_t>{0} && out.step_rows == std::vector<std::int64_t>{n});
        for (std::int64_t i = 0; i < n; ++i) CHECK(out.exit_state[i] == 0 && !out.budget_exit[i]);
        CHECK(!ea::Runner::create(b, sched_plan("-80"), backend, {}, sched));
        CHECK(!sched->predict(x.data(), n, edgeadapt::kNoBudget, out));
        CHECK((out.step_index == std::vector<std::int64_t>{0, 2}) &&
              (out.step_rows == std::vector<std::int64_t>{n, n}));
        for (std::int64_t i = 0; i < n; ++i) {
            const auto r = static_cast<std::size_t>(i);
            CHECK(out.exit_state[r] == 2 && out.pred[r] == last_pred[r] && out.conf[r] == last_conf[r]);
        }
        // an ample budget changes nothing; a tiny one runs the first kept branch alone
        CHECK(!sched->predict(x.data(), n, 1e6, out));
        for (std::int64_t i = 0; i < n; ++i) CHECK(out.exit_state[i] == 2 && !out.budget_exit[i]);
        CHECK(!sched->predict(x.data(), n, 1e-6, out));
        CHECK(out.step_index == std::vector<std::int64_t>{0});
        for (std::int64_t i = 0; i < n; ++i) CHECK(out.exit_state[i] == 0 && !out.budget_exit[i]);
    }
    // a manifest whose I/O names do not match the ONNX file: refused when verified, and
    // unverified, when the backend loads it
    const fs::path d = copy(multiexit, scratch, "io-names");
    replace(d / "manifest.json", "\"logits\": \"logits1\"", "\"logits\": \"other\"");
    ea::Bundle b;
    CHECK(is_error(ea::load_bundle(d, b), ea::Code::Format, {"$.states[1]", "step1.onnx", "'other'"}));
    CHECK(!ea::load_bundle(d, b, false));
    std::unique_ptr<ea::Runner> runner;
    CHECK(is_error(ea::Runner::create(b, {0.5}, edgeadapt::Measure::MaxProb, backend, {}, runner),
                   ea::Code::Format, {"step1.onnx", "'other'"}));
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 4) {
        std::printf("usage: test_runner MULTIEXIT_BUNDLE FAMILY_BUNDLE SCRATCH_DIR\n");
        return 2;
    }
    const fs::path scratch = argv[3];
    fs::remove_all(scratch);
    fs::create_directories(scratch);
    bundle_faults(argv[1], scratch);
    plan_faults(argv[1], scratch);
    npy_faults(scratch);
    npz_faults(scratch);
    runs(argv[1], argv[2], scratch);
    return edgeadapt::testing::checks_passed("runner");
}
