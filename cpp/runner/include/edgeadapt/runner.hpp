// edgeadapt::runner: run a bundle's states as an adaptive cascade from C++.
//
// The native counterpart of the Python `AdaptiveModel` (edgeadapt/cascade/model.py), with the
// same semantics: load a bundle (manifest.json, every file's sha256 and path checked as
// edgeadapt/formats/bundle.py does) and a plan (plan.json, edgeadapt/formats/plan.py) or
// plain thresholds, and run the cascade engine (cascade.hpp, the one the Python binding's
// batch-1 cascade runs too) with a backend's sessions as the hops: each kept state's hop
// (its run of steps since the previous kept state) runs on the rows still active, the
// decision kernel decides which rows exit, by a confidence threshold or a plan's learned
// gates, and only the rows that continue go on (batch compaction). Skipped early-exit
// states still run their steps (they produce the activation) but do not decide. Each
// step is fed exactly the tensors its manifest entry lists: model inputs by name
// (float32 or int64) and, along an early-exit bundle, the previous step's outputs. A row
// whose logits hold NaN never exits early; at the last state it answers with pred -1
// and conf NaN. Budget: the first hop always runs; a later one starts only if its
// predicted cost, with the plan's hop overhead, fits what is left, else every active
// row keeps its answer from the last completed hop.
//
// A scheduler plan (a branches bundle's content-aware scheduler, as
// edgeadapt/cascade/scheduler.py runs it) instead runs its first scheduled branch on every
// row; the kernel's `schedule` reads its logits and picks, per row, that branch's answer
// or a later branch that fits what is left of the budget, and each later branch picked
// runs once, from the input, on the rows that picked it. Under a budget that cannot pay
// the first branch and the budget table's pick (each with the hop overhead), that pick
// runs alone.
//
// Errors: every public function is noexcept and returns an Error (code + message that
// names the file and JSON path at fault); nothing throws across this interface.
//
//     edgeadapt::runner::Bundle bundle;
//     if (auto e = edgeadapt::runner::load_bundle("bundle/", bundle)) { puts(e.message.c_str()); }
//     std::shared_ptr<edgeadapt::runner::Backend> backend;
//     edgeadapt::runner::make_backend("openvino", {}, backend);
//     std::unique_ptr<edgeadapt::runner::Runner> runner;
//     edgeadapt::runner::Runner::create(bundle, plan, backend, {}, runner);
//     edgeadapt::runner::Result out;
//     runner->predict(x, batch, edgeadapt::kNoBudget, out);   // out.pred, out.exit_state, ...
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "edgeadapt/cascade.hpp"

namespace edgeadapt::runner {

enum class Code : int {
    Ok = 0,
    Io = 1,           // a file is missing or unreadable
    Format = 2,       // invalid JSON, wrong format/version, a field of the wrong type or value
    Integrity = 3,    // a file's sha256 does not match the manifest
    UnsafePath = 4,   // a path leaves the bundle ('..', absolute, symlink)
    Mismatch = 5,     // a plan made for another bundle
    Input = 6,        // bad arguments or input data
    Backend = 7,      // the inference runtime failed
    Unavailable = 8,  // the backend was not compiled into this build
};

const char* code_string(Code code) noexcept;

// Ok when `code` is Ok; converts to true when something failed.
struct Error {
    Code code = Code::Ok;
    std::string message;

    explicit operator bool() const noexcept { return code != Code::Ok; }
};

// The element types a session is fed: float32 tensors and int64 token ids or masks.
enum class DType : int { Float32 = 0, Int64 = 1 };

const char* dtype_name(DType type) noexcept;
std::size_t dtype_size(DType type) noexcept;

// One model input: `dims` are the static dimensions after the dynamic batch axis;
// `dtype` is the manifest's name for its element type.
struct InputSpec {
    std::string name;
    std::vector<std::int64_t> dims;
    std::string dtype;
    std::int64_t row_elements() const noexcept;
};

// One step (early-exit) or member (ensemble); `activation` is empty when it has none (the
// last step of each chain).
struct Step {
    std::string file;
    std::filesystem::path path;
    std::vector<std::string> inputs;
    std::string activation;
    std::string logits;
};

struct Bundle {
    std::filesystem::path path;
    std::string kind;  // "early-exit", "ensemble" or "branches"
    std::int64_t num_classes = 0;
    std::vector<InputSpec> inputs;  // every model input, in the manifest's order
    std::vector<std::string> state_names;
    std::vector<Step> steps;
    std::string manifest_sha256;
    // Each state's chain (version 3: an early-exit bundle of several chains, e.g. one
    // model's exits at several precisions), empty for a bundle of one chain.
    std::vector<std::string> chains;
    // The first step of state i's chain (0 for a one-chain early-exit bundle, i itself
    // for an ensemble member or branch).
    std::size_t chain_start(std::size_t i) const noexcept;
};

// Load and validate a bundle directory (or its manifest.json): the schema, the paths
// (no '..', absolute paths or symlinks), the chaining of the steps and, with `verify`,
// every listed file's sha256. Each step's ONNX I/O names are checked when a backend
// loads it (Runner::create).
Error load_bundle(const std::filesystem::path& path, Bundle& out, bool verify = true) noexcept;

struct BudgetRow {
    double budget_ms = 0.0;
    std::int64_t state = 0;
    double accuracy = 0.0;
};

// One scalar of a runtime block's options: its JSON text ("true", "2", "\"LATENCY\"").
struct OptionValue {
    std::string json;
    bool is_string = false;
    std::string text;  // the string, when is_string
};

// plan.json's optional "runtime" block: the runtime settings the plan was measured
// under (edgeadapt/formats/presets.py RuntimeConfig). threads 0 = null (the runtime's choice).
struct RuntimeConfig {
    std::string runtime;
    std::string preset;  // "" = null
    std::string precision;
    int threads = 0;
    std::vector<std::pair<std::string, OptionValue>> options;
};

// The part of plan.json a runner needs (the record of how the plan did is not read).
// `gates` is empty for the threshold policy, else one per kept state but the last
// (plan version 2, policy "gate"): the thresholds then apply to the gates' scores.
// `scheduler` marks the content-aware scheduler of a branches plan (policy
// "scheduler"): the kept branch at position `scheduler_first` always runs and
// `estimators` (one per kept branch from it on but the last, kernel.hpp Estimator)
// score its logits; the thresholds of those positions apply to the scores.
struct Plan {
    std::string manifest_sha256;
    std::string kind;
    std::vector<std::string> bundle_states;
    Measure measure = Measure::MaxProb;
    std::vector<std::int64_t> states;
    std::vector<double> thresholds;
    std::vector<double> cost_ms;
    double cost_quantile = 0.5;  // the percentile cost_ms is at ($.cost_stat, p50 by default)
    double hop_overhead_ms = 0.0;  // the cascade's own cost per hop a budget counts (0: absent)
    std::vector<BudgetRow> budget;
    std::vector<Gate> gates;  // kernel.hpp Gate
    bool scheduler = false;
    std::int64_t scheduler_first = 0;
    std::vector<Estimator> estimators;
    // a branches plan's $.branches.run: "cascade" walks the kept branches (each from the
    // input, cost_ms cumulative), "table" or "" (absent: an older plan) runs the most
    // accurate kept branch alone without a budget
    std::string branches_run;
    bool has_runtime = false;
    RuntimeConfig runtime;
    std::string source;  // the file it was read from
};

Error load_plan(const std::filesystem::path& path, Plan& out) noexcept;

// "maxprob", "margin" or "entropy".
Error parse_measure(const std::string& name, Measure& out) noexcept;

// A float32 tensor the backend owns: valid until the session's next run. `rows` is the
// size of axis 0 (1 for a scalar), `rank` the number of axes.
struct TensorView {
    const float* data = nullptr;
    std::int64_t rows = 0;
    std::int64_t row_elements = 0;
    std::int64_t rank = 0;
};

// One compiled step with its reused request and tensors. Inputs and outputs are
// addressed by their position in the names given to Backend::load.
class Session {
  public:
    virtual ~Session() = default;
    // The element type the step's ONNX file declares for input `index`.
    virtual DType input_type(std::size_t index) const = 0;
    // Feed input `index` with `rows` rows of `row_elements` values of its input_type
    // (C order).
    virtual void set_input(std::size_t index, const void* data, std::int64_t rows,
                           std::int64_t row_elements) = 0;
    virtual void infer() = 0;
    virtual TensorView output(std::size_t index) const = 0;
};

// An inference runtime that compiles steps into sessions; its methods may throw.
class Backend {
  public:
    virtual ~Backend() = default;
    virtual std::string name() const = 0;
    // Compile `onnx`; its inputs and outputs must be exactly these names, the outputs
    // float32 (inputs float32, or int64 where the backend feeds int64).
    virtual std::unique_ptr<Session> load(const std::filesystem::path& onnx,
                                          const std::vector<std::string>& inputs,
                                          const std::vector<std::string>& outputs) = 0;
};

struct BackendOptions {
    std::string device;  // "" = the backend's default ("CPU" for OpenVINO, GPU 0 for TensorRT)
    int threads = 0;     // CPU inference threads; 0 = the backend's choice
    int max_batch = 64;  // TensorRT: the largest batch its engines are built for
    std::string hint = "LATENCY";  // OpenVINO PERFORMANCE_HINT
    std::string precision = "fp32";  // OpenVINO inference precision: fp32, fp16 or bf16
};

// "openvino" or "tensorrt" (Code::Unavailable when not compiled into this build).
Error make_backend(const std::string& name, const BackendOptions& options,
                   std::shared_ptr<Backend>& out) noexcept;

// The settings the user gave on the command line, which win over a plan's.
struct GivenSettings {
    bool threads = false;
    bool device = false;
};

// Apply a plan's runtime block to the options of `backend`: its threads (the CPU
// threads the plan's costs were measured with) unless given, and the options the
// native backend understands (OpenVINO: device, hint, precision). Options that only
// the Python runtimes read, and the options of a runtime this build has no native
// backend for (onnxruntime's spin, optimization, device), are listed in `notes`, as
// is every override by a given setting; an unknown option, or a value the backend
// cannot take, is a Format error naming the plan file and field. Without a runtime
// block nothing changes.
Error apply_runtime(const Plan& plan, const std::string& backend, const GivenSettings& given,
                    BackendOptions& options, std::vector<std::string>& notes) noexcept;

// Per-sample results of one predict call (cascade.hpp): `exit_state` is the bundle state
// that answered; `step_ms`/`step_rows`/`step_index` list every step run, in order.
using Result = CascadeResult;

struct RunnerOptions {
    // Predicted latency of each bundle step for the budget (ms); empty = the plan's
    // cost_ms, and without a plan a budget is refused. The plan's costs keep tracking
    // their percentile of the measured costs; these, their EWMA mean.
    std::vector<double> step_costs_ms;
    double ewma = 0.2;
};

class Runner {
  public:
    // Run the plan's states under its thresholds and measure. The plan must have been
    // made for this bundle (its manifest sha256).
    static Error create(const Bundle& bundle, const Plan& plan, std::shared_ptr<Backend> backend,
                        const RunnerOptions& options, std::unique_ptr<Runner>& out) noexcept;
    // Run every state: one threshold for every exit, or one per state but the last.
    static Error create(const Bundle& bundle, const std::vector<double>& thresholds,
                        Measure measure, std::shared_ptr<Backend> backend,
                        const RunnerOptions& options, std::unique_ptr<Runner>& out) noexcept;

    // Run the cascade on `x`: float32 [batch, *input dims], C order, finite, for a bundle
    // with one float32 input. `budget_ms` > 0, or kNoBudget. `out` is reused: its
    // vectors keep their capacity.
    Error predict(const float* x, std::int64_t batch, double budget_ms, Result& out) noexcept;
    // The same for any bundle: `inputs[k]` holds bundle input k ([batch, *its dims] of
    // its dtype, C order; floats finite), one pointer per input in the manifest's order.
    Error predict(const std::vector<const void*>& inputs, std::int64_t batch, double budget_ms,
                  Result& out) noexcept;

    const Bundle& bundle() const noexcept { return bundle_; }
    // Bundle indices of the states that decide, in order.
    std::vector<std::int64_t> states() const;
    const Policy& policy() const noexcept { return policy_; }
    // Whether the plan's learned gates decide (a gate plan) rather than thresholds.
    bool gated() const noexcept { return cascade_.gated(); }
    // Whether the content-aware scheduler picks each row's branch (a scheduler plan of
    // several kept branches).
    bool scheduled() const noexcept { return scheduler_; }

    Runner(const Runner&) = delete;
    Runner& operator=(const Runner&) = delete;
    ~Runner();

  private:
    struct StepRun;
    struct HopRunner;
    Runner();
    static void build(const Bundle& bundle, std::vector<std::int64_t> kept,
                      std::vector<double> thresholds, Measure measure,
                      std::vector<double> hop_costs, bool costs_known, double quantile,
                      std::vector<double> accuracies, std::vector<Gate> gates,
                      double hop_overhead_ms, bool walks, std::shared_ptr<Backend> backend,
                      const RunnerOptions& options, std::unique_ptr<Runner>& out);
    void check_outputs(std::size_t step, const TensorView* views, std::size_t count,
                       std::size_t logits, std::int64_t rows) const;
    const float* run_hop(HopRunner& hops, std::size_t hop, std::int64_t active,
                         const std::int64_t* rows, Result& out);
    void answer_rows(const float* logits, std::size_t hop, std::int64_t active,
                     const std::int64_t* rows, Result& out);
    void schedule(HopRunner& hops, std::int64_t batch, double budget_ms,
                  Cascade::Clock::time_point t0, Result& out);

    Bundle bundle_;
    Policy policy_;
    Cascade cascade_;  // the engine, over policy_
    bool costs_known_ = false;
    std::shared_ptr<Backend> backend_;
    std::vector<std::vector<std::size_t>> hop_steps_;  // the bundle steps each hop runs
    std::vector<StepRun> steps_;
    std::vector<DType> input_types_;         // of each model input
    std::vector<std::int64_t> input_bytes_;  // bytes of one row of each model input
    // reused across calls: the carried activations and model inputs gathered to the
    // rows that continue
    std::vector<std::vector<float>> gathered_;
    std::vector<std::vector<unsigned char>> gathered_inputs_;
    std::vector<bool> input_gathered_;
    std::vector<const void*> one_input_;
    // a scheduler plan's: the kept position that always runs, the estimators, and
    // buffers reused across calls (the tracked costs from that position on, each row's
    // choice without and with the budget, the first branch's argmax and scores, the rows
    // a branch runs on and their answers)
    bool scheduler_ = false;
    std::size_t scheduler_first_ = 0;
    std::vector<Estimator> estimators_;
    std::vector<double> scheduler_costs_;
    std::vector<std::int64_t> free_choice_, choice_, first_pred_, branch_rows_, branch_pred_;
    std::vector<float> scores_, branch_conf_;
};

}  // namespace edgeadapt::runner
