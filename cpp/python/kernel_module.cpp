// pybind11 module edgeadapt._kernel: the Python face of the decision kernel.
//
// Zero-copy on C-contiguous, aligned, native float32 logits; anything else is a
// TypeError (wrong dtype or layout) or ValueError (wrong rank, empty batch, C < 2, NaN
// threshold or budget). The GIL is released while a batch is processed.
#include <pybind11/native_enum.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "edgeadapt/cascade.hpp"

namespace py = pybind11;
namespace ea = edgeadapt;

namespace {

struct Logits {
    const float* data;
    std::int64_t batch;
    std::int64_t classes;
};

constexpr int kCStyle = py::detail::npy_api::NPY_ARRAY_C_CONTIGUOUS_;
constexpr int kAligned = py::detail::npy_api::NPY_ARRAY_ALIGNED_;
constexpr int kWriteable = py::detail::npy_api::NPY_ARRAY_WRITEABLE_;

std::string text(py::handle h) { return py::repr(h).cast<std::string>(); }

template <typename T>
bool has_dtype(const py::array& a) {
    return py::detail::npy_api::get().PyArray_EquivTypes_(a.dtype().ptr(),
                                                          py::dtype::of<T>().ptr());
}

py::array as_array(py::handle obj, const char* name, const char* dtype) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy.ndarray of " + dtype + ", got " +
                             text(py::type::handle_of(obj)));
    return py::reinterpret_borrow<py::array>(obj);
}

Logits check_logits(py::handle obj) {
    py::array a = as_array(obj, "logits", "float32");
    if (!has_dtype<float>(a))
        throw py::type_error("logits must have dtype float32 (native byte order), got " +
                             text(a.dtype()) +
                             "; convert once with np.ascontiguousarray(logits, dtype=np.float32)");
    if (a.ndim() != 2)
        throw py::value_error("logits must be 2-D [batch, classes], got " +
                              std::to_string(a.ndim()) + "-D shape " + text(a.attr("shape")));
    if ((a.flags() & (kCStyle | kAligned)) != (kCStyle | kAligned))
        throw py::type_error(
            "logits must be C-contiguous and aligned (zero-copy); convert once with "
            "np.ascontiguousarray(logits)");
    const auto batch = static_cast<std::int64_t>(a.shape(0));
    const auto classes = static_cast<std::int64_t>(a.shape(1));
    if (batch < 1) throw py::value_error("logits has an empty batch (shape[0] == 0)");
    if (classes < 2)
        throw py::value_error("logits needs at least 2 classes, got shape[1] == " +
                              std::to_string(classes));
    return {static_cast<const float*>(a.data()), batch, classes};
}

template <typename T>
T* check_out(py::handle obj, const char* name, const char* dtype, std::int64_t batch) {
    py::array a = as_array(obj, name, dtype);
    if (!has_dtype<T>(a))
        throw py::type_error(std::string(name) + " must have dtype " + dtype + ", got " +
                             text(a.dtype()));
    if (a.ndim() != 1 || a.shape(0) < batch)
        throw py::value_error(std::string(name) + " must be 1-D with at least " +
                              std::to_string(batch) + " entries, got shape " +
                              text(a.attr("shape")));
    if ((a.flags() & (kCStyle | kAligned | kWriteable)) != (kCStyle | kAligned | kWriteable))
        throw py::type_error(std::string(name) + " must be C-contiguous, aligned and writeable");
    return static_cast<T*>(a.mutable_data());
}

// The four caller-owned outputs of a batch decision, each checked as `check_out` does.
struct DecideOut {
    std::int64_t* pred;
    float* score;
    std::uint8_t* exit_mask;
    std::int64_t* continue_idx;
};

DecideOut check_decide_out(py::handle pred, py::handle score, const char* score_name,
                           py::handle exit_mask, py::handle continue_idx, std::int64_t batch) {
    return {check_out<std::int64_t>(pred, "pred", "int64", batch),
            check_out<float>(score, score_name, "float32", batch),
            reinterpret_cast<std::uint8_t*>(check_out<bool>(exit_mask, "exit_mask", "bool", batch)),
            check_out<std::int64_t>(continue_idx, "continue_idx", "int64", batch)};
}

ea::Measure parse_measure(const std::string& m) {
    if (m == "maxprob") return ea::Measure::MaxProb;
    if (m == "margin") return ea::Measure::Margin;
    if (m == "entropy") return ea::Measure::Entropy;
    throw py::value_error("measure must be 'maxprob', 'margin' or 'entropy', got '" + m + "'");
}

const char* measure_name(ea::Measure m) {
    switch (m) {
        case ea::Measure::Margin: return "margin";
        case ea::Measure::Entropy: return "entropy";
        default: return "maxprob";
    }
}

void check_threshold(double threshold) {
    if (std::isnan(threshold)) throw py::value_error("threshold must be a number, got NaN");
}

double check_budget(std::optional<double> budget_ms) {
    if (!budget_ms) return ea::kNoBudget;
    if (std::isnan(*budget_ms) || *budget_ms < 0.0)
        throw py::value_error("budget_ms must be >= 0 (or None for no deadline), got " +
                              std::to_string(*budget_ms));
    return *budget_ms;
}

void check_elapsed(double elapsed_ms) {
    if (!std::isfinite(elapsed_ms) || elapsed_ms < 0.0)
        throw py::value_error("elapsed_ms must be finite and >= 0, got " +
                              std::to_string(elapsed_ms));
}

void check_index(const ea::Policy& p, std::int64_t i, const char* what) {
    if (i < 0 || i >= p.num_states())
        throw py::index_error(std::string(what) + " " + std::to_string(i) + " is outside 0.." +
                              std::to_string(p.num_states() - 1));
}

// The kernel's own validation backs up the checks above; any status left is a bug.
void ensure_ok(ea::Status s) {
    if (s != ea::Status::Ok) throw std::runtime_error(ea::status_string(s));
}

// A per-state figure of the policy (its threshold, its cost), the index checked first.
template <ea::Status (ea::Policy::*Get)(std::int64_t, double*) const noexcept>
double state_figure(const ea::Policy& p, std::int64_t state) {
    check_index(p, state, "state");
    double v = 0.0;
    ensure_ok((p.*Get)(state, &v));
    return v;
}

py::array_t<float> confidence(py::handle logits, const std::string& measure) {
    const Logits x = check_logits(logits);
    const ea::Measure m = parse_measure(measure);
    py::array_t<float> conf(x.batch);
    float* out = conf.mutable_data();
    ea::Status s;
    {
        py::gil_scoped_release nogil;
        s = ea::confidence(x.data, x.batch, x.classes, m, out);
    }
    ensure_ok(s);
    return conf;
}

py::tuple decide(py::handle logits, double threshold, const std::string& measure) {
    const Logits x = check_logits(logits);
    check_threshold(threshold);
    const ea::Measure m = parse_measure(measure);
    py::array_t<std::int64_t> pred(x.batch);
    py::array_t<float> conf(x.batch);
    py::array_t<bool> exit_mask(x.batch);
    py::array_t<std::int64_t> idx(x.batch);
    std::int64_t* p = pred.mutable_data();
    float* c = conf.mutable_data();
    auto* e = reinterpret_cast<std::uint8_t*>(exit_mask.mutable_data());
    std::int64_t* i = idx.mutable_data();
    std::int64_t k = 0;
    ea::Status s;
    {
        py::gil_scoped_release nogil;
        s = ea::decide(x.data, x.batch, x.classes, m, threshold, p, c, e, i, &k);
    }
    ensure_ok(s);
    if (k != x.batch) idx.resize({k});
    return py::make_tuple(std::move(pred), std::move(conf), std::move(exit_mask), std::move(idx));
}

std::int64_t decide_into(py::handle logits, double threshold, py::handle pred, py::handle conf,
                         py::handle exit_mask, py::handle continue_idx,
                         const std::string& measure) {
    const Logits x = check_logits(logits);
    check_threshold(threshold);
    const ea::Measure m = parse_measure(measure);
    const DecideOut out = check_decide_out(pred, conf, "conf", exit_mask, continue_idx, x.batch);
    std::int64_t k = 0;
    ea::Status s;
    {
        py::gil_scoped_release nogil;
        s = ea::decide(x.data, x.batch, x.classes, m, threshold, out.pred, out.score, out.exit_mask,
                       out.continue_idx, &k);
    }
    ensure_ok(s);
    return k;
}

ea::Gate make_gate(const std::vector<double>& weights, double bias) {
    if (weights.size() != static_cast<std::size_t>(ea::kGateFeatures))
        throw py::value_error("a gate has " + std::to_string(ea::kGateFeatures) +
                              " weights (maxprob, margin, entropy, agreement, previous), got " +
                              std::to_string(weights.size()));
    ea::Gate g{};
    for (std::size_t k = 0; k < weights.size(); ++k) {
        if (!std::isfinite(weights[k]))
            throw py::value_error("weights[" + std::to_string(k) + "] must be finite");
        g.weights[k] = weights[k];
    }
    if (!std::isfinite(bias)) throw py::value_error("bias must be finite");
    g.bias = bias;
    return g;
}

ea::Estimator make_estimator(const std::vector<double>& weights, double bias) {
    if (weights.size() != static_cast<std::size_t>(ea::kSchedulerFeatures))
        throw py::value_error("an estimator has " + std::to_string(ea::kSchedulerFeatures) +
                              " weights (maxprob, margin, entropy), got " +
                              std::to_string(weights.size()));
    ea::Estimator e{};
    for (std::size_t k = 0; k < weights.size(); ++k) {
        if (!std::isfinite(weights[k]))
            throw py::value_error("weights[" + std::to_string(k) + "] must be finite");
        e.weights[k] = weights[k];
    }
    if (!std::isfinite(bias)) throw py::value_error("bias must be finite");
    e.bias = bias;
    return e;
}

// The scheduler's choice for a batch of the first kept branch's logits:
// (pred int64[B], scores float32[B, S - 1], choice int64[B]).
py::tuple schedule(py::handle logits, const std::vector<ea::Estimator>& estimators,
                   const std::vector<double>& thresholds, const std::vector<double>& costs_ms,
                   double available_ms) {
    const Logits x = check_logits(logits);
    const auto n_est = static_cast<std::int64_t>(estimators.size());
    if (thresholds.size() != estimators.size() || costs_ms.size() != estimators.size() + 1)
        throw py::value_error("expected one threshold per estimator and one cost per kept "
                              "branch (estimators + 1), got " +
                              std::to_string(thresholds.size()) + " thresholds and " +
                              std::to_string(costs_ms.size()) + " costs for " +
                              std::to_string(n_est) + " estimators");
    for (double t : thresholds) check_threshold(t);
    for (double c : costs_ms)
        if (!std::isfinite(c) || c < 0.0)
            throw py::value_error("costs_ms must be finite and >= 0");
    if (std::isnan(available_ms)) throw py::value_error("available_ms must not be NaN");
    py::array_t<std::int64_t> pred(x.batch), choice(x.batch);
    py::array_t<float> scores({x.batch, n_est});
    std::int64_t* p = pred.mutable_data();
    std::int64_t* c = choice.mutable_data();
    float* sc = scores.mutable_data();
    ea::Status s;
    {
        py::gil_scoped_release nogil;
        s = ea::schedule(x.data, x.batch, x.classes, estimators.data(), thresholds.data(),
                         costs_ms.data(), n_est + 1, available_ms, p, sc, c);
    }
    ensure_ok(s);
    return py::make_tuple(std::move(pred), std::move(scores), std::move(choice));
}

// The running features: int64 [rows >= batch, stride > position], C-contiguous, writeable.
std::int64_t* check_history(py::handle obj, std::int64_t batch, std::int64_t position,
                            std::int64_t* stride) {
    py::array a = as_array(obj, "history", "int64");
    if (!has_dtype<std::int64_t>(a))
        throw py::type_error("history must have dtype int64, got " + text(a.dtype()));
    if (a.ndim() != 2 || a.shape(0) < batch || a.shape(1) <= position)
        throw py::value_error("history must be 2-D with at least " + std::to_string(batch) +
                              " rows and more than " + std::to_string(position) +
                              " columns, got shape " + text(a.attr("shape")));
    if ((a.flags() & (kCStyle | kAligned | kWriteable)) != (kCStyle | kAligned | kWriteable))
        throw py::type_error("history must be C-contiguous, aligned and writeable");
    *stride = static_cast<std::int64_t>(a.shape(1));
    return static_cast<std::int64_t*>(a.mutable_data());
}

std::int64_t gate_decide_into(py::handle logits, const ea::Gate& gate, double threshold,
                              std::int64_t position, py::handle history, py::handle previous,
                              py::handle pred, py::handle score, py::handle exit_mask,
                              py::handle continue_idx) {
    const Logits x = check_logits(logits);
    check_threshold(threshold);
    if (position < 0) throw py::value_error("position must be >= 0, got " + std::to_string(position));
    std::int64_t stride = 0;
    auto* h = check_history(history, x.batch, position, &stride);
    auto* prev = check_out<float>(previous, "previous", "float32", x.batch);
    const DecideOut out = check_decide_out(pred, score, "score", exit_mask, continue_idx, x.batch);
    std::int64_t k = 0;
    ea::Status s;
    {
        py::gil_scoped_release nogil;
        s = ea::gate_decide(x.data, x.batch, x.classes, gate, threshold, position, h, stride, prev,
                            out.pred, out.score, out.exit_mask, out.continue_idx, &k);
    }
    ensure_ok(s);
    return k;
}

py::tuple gate_decide(py::handle logits, const ea::Gate& gate, double threshold,
                      py::handle history, py::handle previous) {
    const Logits x = check_logits(logits);
    check_threshold(threshold);
    py::array hist_in = as_array(history, "history", "int64");
    if (!has_dtype<std::int64_t>(hist_in) || hist_in.ndim() != 2 || hist_in.shape(0) != x.batch)
        throw py::value_error("history must be int64 [batch, position], got " +
                              text(hist_in.dtype()) + " " + text(hist_in.attr("shape")));
    const auto j = static_cast<std::int64_t>(hist_in.shape(1));
    py::array_t<std::int64_t> hist({x.batch, j + 1});
    auto hin = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(hist_in);
    std::int64_t* hd = hist.mutable_data();
    for (std::int64_t b = 0; b < x.batch; ++b)
        for (std::int64_t c = 0; c < j; ++c) hd[b * (j + 1) + c] = hin.data()[b * j + c];
    py::array_t<float> prev(x.batch);
    if (j > 0) {
        auto pin = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(previous);
        if (!pin || pin.ndim() != 1 || pin.shape(0) != x.batch)
            throw py::value_error("previous must be float32 [batch]");
        std::memcpy(prev.mutable_data(), pin.data(), static_cast<std::size_t>(x.batch) * sizeof(float));
    } else {
        std::fill(prev.mutable_data(), prev.mutable_data() + x.batch, 0.0f);
    }
    py::array_t<std::int64_t> pred(x.batch), idx(x.batch);
    py::array_t<float> score(x.batch);
    py::array_t<bool> exit_mask(x.batch);
    std::int64_t k = gate_decide_into(logits, gate, threshold, j, hist, prev, pred, score,
                                      exit_mask, idx);
    if (k != x.batch) idx.resize({k});
    py::object keep = py::slice(0, k, 1);
    return py::make_tuple(std::move(pred), std::move(score), std::move(exit_mask), std::move(idx),
                          hist[keep].attr("copy")(), prev[keep].attr("copy")());
}

ea::Policy make_policy(const std::vector<double>& thresholds,
                       const std::vector<double>& hop_costs_ms, double ewma,
                       const std::string& measure,
                       const std::optional<std::vector<double>>& accuracies, bool cumulative,
                       std::optional<double> quantile = std::nullopt) {
    const std::size_t n = hop_costs_ms.size();
    if (n == 0) throw py::value_error("hop_costs_ms must hold one cost per hop, got none");
    if (thresholds.size() != n - 1)
        throw py::value_error("thresholds must hold one value per state but the last (" +
                              std::to_string(n - 1) + " for " + std::to_string(n) +
                              " hops), got " + std::to_string(thresholds.size()));
    for (std::size_t i = 0; i < thresholds.size(); ++i)
        if (std::isnan(thresholds[i]))
            throw py::value_error("thresholds[" + std::to_string(i) + "] is NaN");
    for (std::size_t i = 0; i < n; ++i)
        if (!std::isfinite(hop_costs_ms[i]) || hop_costs_ms[i] < 0.0)
            throw py::value_error("hop_costs_ms[" + std::to_string(i) +
                                  "] must be finite and >= 0, got " +
                                  std::to_string(hop_costs_ms[i]));
    if (!(ewma > 0.0 && ewma <= 1.0))
        throw py::value_error("ewma must be in (0, 1], got " + std::to_string(ewma));
    if (accuracies) {
        if (accuracies->size() != n)
            throw py::value_error("accuracies must hold one value per state (" + std::to_string(n) +
                                  "), got " + std::to_string(accuracies->size()));
        for (std::size_t i = 0; i < n; ++i)
            if (!((*accuracies)[i] >= 0.0 && (*accuracies)[i] <= 1.0))
                throw py::value_error("accuracies[" + std::to_string(i) + "] must be in [0, 1], got " +
                                      std::to_string((*accuracies)[i]));
    }
    ea::Policy p;
    ensure_ok(ea::Policy::create(thresholds.data(), thresholds.size(), hop_costs_ms.data(), n, ewma,
                                 parse_measure(measure), accuracies ? accuracies->data() : nullptr,
                                 cumulative, p));
    if (quantile && !(*quantile > 0.0 && *quantile < 1.0))
        throw py::value_error("quantile must be in (0, 1) (or None for the mean), got " +
                              std::to_string(*quantile));
    if (quantile) ensure_ok(p.set_quantile(*quantile));
    return p;
}

// The keywords the Policy took before a kept state's run of steps was named a hop
// still work, with a DeprecationWarning, so that callers passing them by name keep
// running; positional calls never reach these overloads.
void warn_renamed(const char* old_name, const char* new_name) {
    const std::string message = std::string("Policy keyword '") + old_name + "' is deprecated; use '" +
                                new_name + "' (the same value)";
    if (PyErr_WarnEx(PyExc_DeprecationWarning, message.c_str(), 1) < 0) throw py::error_already_set();
}

double predicted_ms(const ea::Policy& p, std::int64_t hop) {
    check_index(p, hop, "hop");
    double v = 0.0;
    ensure_ok(p.predicted_ms(hop, &v));
    return v;
}

void observe(ea::Policy& p, std::int64_t hop, double measured_ms) {
    check_index(p, hop, "hop");
    if (!std::isfinite(measured_ms) || measured_ms < 0.0)
        throw py::value_error("measured_ms must be finite and >= 0, got " +
                              std::to_string(measured_ms));
    ensure_ok(p.observe(hop, measured_ms));
}

void decay(ea::Policy& p, std::int64_t hop) {
    check_index(p, hop, "hop");
    ensure_ok(p.decay(hop));
}

bool fits(const ea::Policy& p, std::int64_t next_hop, double elapsed_ms,
          std::optional<double> budget_ms) {
    check_index(p, next_hop, "next_hop");
    check_elapsed(elapsed_ms);
    bool v = false;
    ensure_ok(p.fits(next_hop, elapsed_ms, check_budget(budget_ms), &v));
    return v;
}

// ---- One hop that answers alone ------------------------------------------------------
//
// A plan that keeps one state deploys one model, and each predict is: accept the batch,
// run the model, answer every row, record its cost, build the result. From Python that
// is a dozen Python-to-C calls of a few tenths of a microsecond each; `OneCall` makes it
// one. It never raises for a batch or an output it cannot vouch for: it returns None
// (the batch goes to the complete input check, which words any error) or hands the
// outputs back (their check words it).

// Whether none of the `n` values at `data` is NaN or infinite: a value is when its
// exponent bits (`mask`) are all ones. Chunked so a bad value ends the scan soon.
template <typename U>
bool all_finite(const char* data, std::size_t n, U mask) noexcept {
    constexpr std::size_t kChunk = 256;
    for (std::size_t i = 0; i < n;) {
        const std::size_t end = std::min(n, i + kChunk);
        U bad = 0;
        for (; i < end; ++i) {
            U v;
            std::memcpy(&v, data + i * sizeof(U), sizeof(U));
            bad |= static_cast<U>((v & mask) == mask);
        }
        if (bad) return false;
    }
    return true;
}

// Whether a dtype's byte order character names this machine's order.
bool native_order(char order) {
    if (order == '=' || order == '|') return true;
    const std::uint16_t one = 1;
    unsigned char first = 0;
    std::memcpy(&first, &one, 1);
    return order == (first == 1 ? '<' : '>');
}

// The byte width of a native IEEE float16/32/64 dtype, else 0.
int float_width(const py::dtype& d) {
    const auto size = d.itemsize();
    if (d.kind() != 'f' || !native_order(d.byteorder())) return 0;
    return size == 2 || size == 4 || size == 8 ? static_cast<int>(size) : 0;
}

// Whether the `n` values of `width` bytes at `data` are all finite, without the GIL for
// a large array.
bool finite_values(const char* data, std::size_t n, int width) {
    constexpr std::size_t kReleaseGil = 1 << 16;  // values; below, releasing costs more
    std::optional<py::gil_scoped_release> nogil;
    if (n >= kReleaseGil) nogil.emplace();
    switch (width) {
        case 2: return all_finite<std::uint16_t>(data, n, 0x7C00u);
        case 4: return all_finite<std::uint32_t>(data, n, 0x7F800000u);
        default: return all_finite<std::uint64_t>(data, n, 0x7FF0000000000000ull);
    }
}

bool all_finite_array(py::handle obj) {
    py::array a = as_array(obj, "x", "float16, float32 or float64");
    const int width = float_width(a.dtype());
    if (width == 0)
        throw py::type_error("x must have a native float16, float32 or float64 dtype, got " +
                             text(a.dtype()));
    if ((a.flags() & (kCStyle | kAligned)) != (kCStyle | kAligned))
        throw py::type_error("x must be C-contiguous and aligned (zero-copy)");
    return finite_values(static_cast<const char*>(a.data()), static_cast<std::size_t>(a.size()),
                         width);
}

using Clock = std::chrono::steady_clock;

std::int64_t ns_since(Clock::time_point t0) {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count();
}

// A fresh 1-D array of `n` values of `descr` (numpy's own allocation, without the
// generic array constructor's shape and stride vectors).
py::object vector(const py::detail::npy_api& api, const py::dtype& descr, py::ssize_t n) {
    const Py_intptr_t dims[1] = {static_cast<Py_intptr_t>(n)};
    Py_INCREF(descr.ptr());  // NewFromDescr steals it
    PyObject* a = api.PyArray_NewFromDescr_(api.PyArray_Type_, descr.ptr(), 1, dims, nullptr,
                                            nullptr, 0, nullptr);
    if (a == nullptr) throw py::error_already_set();
    return py::reinterpret_steal<py::object>(a);
}

// numpy's builtin descriptors are singletons: the pointer test settles the usual case,
// EquivTypes (a cast lookup in numpy 2, ~0.1 us) the rest.
bool same_dtype(const py::detail::npy_api& api, PyObject* descr, const py::dtype& want) {
    return descr == want.ptr() || api.PyArray_EquivTypes_(descr, want.ptr());
}

template <typename T>
T* data_of(const py::object& a) {
    return reinterpret_cast<T*>(py::detail::array_proxy(a.ptr())->data);
}

// An attribute of a result written into its instance dict, as object.__setattr__ does
// (a frozen dataclass's own __setattr__ refuses).
void set(const py::object& obj, const py::str& name, const py::object& value) {
    if (PyObject_GenericSetAttr(obj.ptr(), name.ptr(), value.ptr()) != 0)
        throw py::error_already_set();
}

// Builds the `result` class's instances (edgeadapt.cascade.model.Prediction: pred,
// exit_state, conf, budget_exit, latency_ms) without running its __init__.
class Results {
public:
    explicit Results(py::object cls) : cls_(std::move(cls)) {
        if (!PyType_Check(cls_.ptr())) throw py::type_error("result must be a class");
    }

    // The result; latency_ms is {"total": ms since t0, "steps": steps, "rows": rows}, the
    // total taken last.
    py::object make(const py::object& pred, const py::object& exit_state, const py::object& conf,
                    const py::object& budget_exit, py::list steps, py::list rows,
                    Clock::time_point t0) const {
        py::dict latency;
        latency[total_] = py::none();  // first key; the figure is the last thing done
        latency[steps_] = std::move(steps);
        latency[rows_] = std::move(rows);
        auto* type = reinterpret_cast<PyTypeObject*>(cls_.ptr());
        py::object p = py::reinterpret_steal<py::object>(type->tp_alloc(type, 0));
        if (!p) throw py::error_already_set();
        set(p, pred_, pred);
        set(p, exit_state_, exit_state);
        set(p, conf_, conf);
        set(p, budget_exit_, budget_exit);
        set(p, latency_, latency);
        latency[total_] = py::float_(static_cast<double>(ns_since(t0)) / 1e6);
        return p;
    }

private:
    py::object cls_;
    py::str pred_{"pred"}, exit_state_{"exit_state"}, conf_{"conf"}, budget_exit_{"budget_exit"},
        latency_{"latency_ms"}, total_{"total"}, steps_{"steps"}, rows_{"rows"};
};

// The quick input acceptance of `edgeadapt.data.inputs.BatchCheck` for one input: a plain
// C-contiguous, aligned ndarray of the input's dtype and shape with a non-empty batch
// and, for a float input, no NaN or infinity.
class Accept {
public:
    Accept(const py::dtype& dtype, const std::vector<std::int64_t>& shape) : dtype_(dtype) {
        for (std::int64_t d : shape) {
            if (d < 0) throw py::value_error("shape holds a negative size");
            shape_.push_back(static_cast<py::ssize_t>(d));
        }
        if (dtype.kind() == 'f') {
            finite_bytes_ = float_width(dtype);
            accepts_ = finite_bytes_ != 0;
        }
    }

    // The batch size of `x` when it passes, else 0; with `only` > 0, a batch of any
    // other size is 0 before its values are read.
    py::ssize_t rows(const py::detail::npy_api& api, py::handle x, py::ssize_t only = 0) const {
        if (!accepts_ || Py_TYPE(x.ptr()) != api.PyArray_Type_) return 0;
        const auto* a = py::detail::array_proxy(x.ptr());
        if (a->nd != static_cast<int>(shape_.size()) + 1 || a->dimensions[0] < 1 ||
            (only > 0 && a->dimensions[0] != only) ||
            (a->flags & (kCStyle | kAligned)) != (kCStyle | kAligned) ||
            !same_dtype(api, a->descr, dtype_))
            return 0;
        std::size_t n = static_cast<std::size_t>(a->dimensions[0]);
        for (std::size_t k = 0; k < shape_.size(); ++k) {
            if (a->dimensions[k + 1] != shape_[k]) return 0;
            n *= static_cast<std::size_t>(shape_[k]);
        }
        if (finite_bytes_ != 0 && !finite_values(a->data, n, finite_bytes_)) return 0;
        return a->dimensions[0];
    }

private:
    py::dtype dtype_;
    std::vector<py::ssize_t> shape_;
    int finite_bytes_ = 0;  // 0: not a float input, no finiteness test
    bool accepts_ = true;   // false for a float type the test does not know (Python decides)
};

// The policy behind a Python Policy object, which the caller keeps alive.
ea::Policy* policy_of(const py::object& policy) {
    if (!py::isinstance<ea::Policy>(policy))
        throw py::type_error("policy must be a Policy, got " + text(py::type::handle_of(policy)));
    return &policy.cast<ea::Policy&>();
}

class OneCall {
public:
    OneCall(py::object run, const std::string& input, const py::dtype& dtype,
            const std::vector<std::int64_t>& shape, const std::string& logits,
            std::int64_t classes, const std::string& measure, py::object policy,
            std::int64_t hop, std::int64_t state, py::object result)
        : run_(std::move(run)), input_(input), accept_(dtype, shape), logits_(logits),
          f32_(py::dtype::of<float>()), i64_(py::dtype::of<std::int64_t>()),
          bool_(py::dtype::of<bool>()), policy_(std::move(policy)),
          result_(std::move(result)), classes_(classes), measure_(parse_measure(measure)),
          hop_(hop), state_(state) {
        if (!PyCallable_Check(run_.ptr())) throw py::type_error("run must be callable");
        if (classes < 2) throw py::value_error("classes must be >= 2");
        policy_ref_ = policy_of(policy_);
        check_index(*policy_ref_, hop, "hop");
    }

    // None; a `result` (pred, exit_state, conf, budget_exit, latency_ms); or (outputs,
    // run_ns, elapsed_ns) when the logits need the caller's checks. An error of `run`
    // propagates.
    py::object call(py::handle x) {
        const auto t0 = Clock::now();
        const auto& api = py::detail::npy_api::get();
        const py::ssize_t batch = accept_.rows(api, x);
        if (batch == 0) return py::none();

        py::dict feeds;
        feeds[input_] = x;
        const auto t1 = Clock::now();
        PyObject* got = PyObject_CallOneArg(run_.ptr(), feeds.ptr());
        const std::int64_t run_ns = ns_since(t1);
        if (got == nullptr) throw py::error_already_set();
        py::object out = py::reinterpret_steal<py::object>(got);
        PyObject* lg = PyDict_CheckExact(out.ptr()) ? PyDict_GetItem(out.ptr(), logits_.ptr())
                                                    : nullptr;
        const auto* l = lg != nullptr && Py_TYPE(lg) == api.PyArray_Type_
                            ? py::detail::array_proxy(lg)
                            : nullptr;
        if (l == nullptr || l->nd != 2 || l->dimensions[0] != batch ||
            l->dimensions[1] != classes_ ||
            (l->flags & (kCStyle | kAligned)) != (kCStyle | kAligned) ||
            !same_dtype(api, l->descr, f32_))
            return py::make_tuple(std::move(out), run_ns, ns_since(t0));

        py::object pred = vector(api, i64_, batch);
        py::object conf = vector(api, f32_, batch);
        ensure_ok(ea::answer(reinterpret_cast<const float*>(l->data), batch, classes_, measure_,
                             data_of<std::int64_t>(pred), data_of<float>(conf)));
        const double run_ms = static_cast<double>(run_ns) / 1e6;
        ensure_ok(policy_ref_->observe(hop_, run_ms));
        if (batch != cached_batch_) cache(api, batch);

        py::list steps(1), rows(1);
        steps[0] = py::float_(run_ms);
        rows[0] = py::int_(batch);
        return result_.make(pred, exit_state_, conf, budget_exit_, std::move(steps),
                            std::move(rows), t0);
    }

private:
    // The every-row-alike exit_state and budget_exit of `batch` rows, read-only: shared by
    // every result of that batch size.
    void cache(const py::detail::npy_api& api, py::ssize_t batch) {
        py::object es = vector(api, i64_, batch);
        py::object be = vector(api, bool_, batch);
        std::fill_n(data_of<std::int64_t>(es), batch, state_);
        std::fill_n(data_of<bool>(be), batch, false);
        py::detail::array_proxy(es.ptr())->flags &= ~kWriteable;
        py::detail::array_proxy(be.ptr())->flags &= ~kWriteable;
        exit_state_ = std::move(es);
        budget_exit_ = std::move(be);
        cached_batch_ = batch;
    }

    py::object run_;
    py::str input_;
    Accept accept_;
    py::str logits_;
    py::dtype f32_, i64_, bool_;
    py::object policy_;
    ea::Policy* policy_ref_ = nullptr;
    Results result_;
    std::int64_t classes_;
    ea::Measure measure_;
    std::int64_t hop_, state_;
    py::ssize_t cached_batch_ = 0;
    py::object exit_state_, budget_exit_;
};

// ---- The cascade of several hops at batch 1 -------------------------------------------
//
// At batch 1 a cascade's hops are each: feed the step, run it, check its outputs,
// record the hop's cost, decide on one row, go on or stop; with a budget, first check
// that the next hop fits what is left. From Python each of those is a call into C that
// runs with the caches the step's runtime call left cold; `CascadeCall` makes the whole
// call one: it accepts the row and the budget, and the cascade engine (cascade.hpp, the
// native runner's too) walks the route, its hops run by `PyHops` through the steps'
// Python sessions. Like `OneCall` it never raises for a batch or an output it cannot
// vouch for: it returns None and the caller runs the batch its own way (whose checks
// word any error); an error of a step's call propagates, and `failed` names the session
// it came from.

// The engine's hop runner over Python sessions, one row at a time: a hop calls each of
// its steps' `unchecked_run` with the feeds it names (the model input, or an output of
// the call before) and hands back the row of logits of the last; outputs that are not a
// dict of one-row arrays, or logits that are not float32 [1, classes], decline the call.
class PyHops {
public:
    static constexpr bool kCompacts = false;

    struct Call {
        py::object session, run;
        std::vector<std::pair<py::str, bool>> feeds;  // (name, is the model input)
        std::int64_t step = 0;                        // the bundle step it runs
    };
    struct Hop {
        py::str logits;
        std::vector<Call> calls;
    };

    PyHops() = default;
    PyHops(std::vector<Hop> hops, std::int64_t classes)
        : hops_(std::move(hops)), f32_(py::dtype::of<float>()), classes_(classes),
          row_(static_cast<std::size_t>(classes)) {}

    // Hops run on the row `x` while the returned scope lives; the outputs of the last
    // call they ran are released with it.
    struct Scope {
        PyHops& hops;
        ~Scope() {
            hops.x_ = nullptr;
            hops.prev_ = py::object();
        }
    };
    Scope begin(py::handle x) {
        x_ = x.ptr();
        failed_ = py::none();
        return Scope{*this};
    }

    const float* run(std::size_t hop, std::int64_t, const std::int64_t*, ea::CascadeResult& out) {
        const auto& api = py::detail::npy_api::get();
        const Hop& h = hops_[hop];
        for (const Call& c : h.calls) {
            py::dict feeds;
            for (const auto& [name, is_input] : c.feeds) {
                PyObject* v = is_input ? x_ : PyDict_GetItem(prev_.ptr(), name.ptr());
                if (v == nullptr) return nullptr;
                if (PyDict_SetItem(feeds.ptr(), name.ptr(), v) != 0) throw py::error_already_set();
            }
            const auto t1 = Clock::now();
            PyObject* got = PyObject_CallOneArg(c.run.ptr(), feeds.ptr());
            const std::int64_t run_ns = ns_since(t1);
            if (got == nullptr) {
                failed_ = c.session;
                throw py::error_already_set();
            }
            prev_ = py::reinterpret_steal<py::object>(got);
            if (!one_row_each(api, prev_)) return nullptr;
            out.add_step(c.step, static_cast<double>(run_ns) / 1e6, 1);
        }
        return logits_row(api, PyDict_GetItem(prev_.ptr(), h.logits.ptr()));
    }

    py::object failed() const { return failed_; }

private:
    // Whether `out` is a dict of arrays that each keep the batch axis of one row (what
    // `edgeadapt.formats.stepcheck.check_rows` accepts, narrowed to plain arrays).
    static bool one_row_each(const py::detail::npy_api& api, const py::object& out) {
        if (!PyDict_CheckExact(out.ptr())) return false;
        PyObject *key = nullptr, *value = nullptr;
        Py_ssize_t i = 0;
        while (PyDict_Next(out.ptr(), &i, &key, &value)) {
            if (Py_TYPE(value) != api.PyArray_Type_) return false;
            const auto* a = py::detail::array_proxy(value);
            if (a->nd < 1 || a->dimensions[0] != 1) return false;
        }
        return true;
    }

    // The one row of float32 [1, classes] logits `obj`, read in place when contiguous
    // and aligned, else copied; nullptr for anything else.
    const float* logits_row(const py::detail::npy_api& api, PyObject* obj) {
        if (obj == nullptr || Py_TYPE(obj) != api.PyArray_Type_) return nullptr;
        const auto* l = py::detail::array_proxy(obj);
        if (l->nd != 2 || l->dimensions[0] != 1 || l->dimensions[1] != classes_ ||
            !same_dtype(api, l->descr, f32_))
            return nullptr;
        if ((l->flags & (kCStyle | kAligned)) == (kCStyle | kAligned))
            return reinterpret_cast<const float*>(l->data);
        const py::ssize_t stride = l->strides[1];
        for (std::int64_t c = 0; c < classes_; ++c)
            std::memcpy(&row_[static_cast<std::size_t>(c)], l->data + c * stride, sizeof(float));
        return row_.data();
    }

    std::vector<Hop> hops_;
    py::dtype f32_;
    std::int64_t classes_ = 0;
    std::vector<float> row_;
    PyObject* x_ = nullptr;
    py::object prev_;
    py::object failed_ = py::none();
};

// A route: its hops and the bundle state each reaches.
struct Route {
    std::vector<PyHops::Hop> hops;
    std::vector<std::int64_t> states;
};

// The route given as hops (state, logits, calls), each call (session, feeds, step) and
// each feed (name, is the model input); `input` is the only model input.
Route parse_route(const py::sequence& route, const py::str& input) {
    std::vector<PyHops::Hop> hops;
    std::vector<std::int64_t> states;
    for (py::handle item : route) {
        py::sequence h = py::reinterpret_borrow<py::sequence>(item);
        if (h.size() != 3) throw py::value_error("a hop is (state, logits, calls)");
        states.push_back(h[0].cast<std::int64_t>());
        PyHops::Hop hop;
        hop.logits = py::str(h[1]);
        for (py::handle c : py::reinterpret_borrow<py::sequence>(h[2])) {
            py::sequence sc = py::reinterpret_borrow<py::sequence>(c);
            if (sc.size() != 3) throw py::value_error("a call is (session, feeds, step)");
            PyHops::Call call;
            call.session = py::reinterpret_borrow<py::object>(sc[0]);
            call.run = call.session.attr("unchecked_run");
            if (!PyCallable_Check(call.run.ptr()))
                throw py::type_error("a session's unchecked_run must be callable");
            for (py::handle f : py::reinterpret_borrow<py::sequence>(sc[1])) {
                py::sequence sf = py::reinterpret_borrow<py::sequence>(f);
                if (sf.size() != 2) throw py::value_error("a feed is (name, is_input)");
                const bool is_input = sf[1].cast<bool>();
                py::str name(sf[0]);
                if (is_input && !name.equal(input))
                    throw py::value_error("the only model input is " + input.cast<std::string>());
                call.feeds.emplace_back(std::move(name), is_input);
            }
            call.step = sc[2].cast<std::int64_t>();
            hop.calls.push_back(std::move(call));
        }
        if (hop.calls.empty()) throw py::value_error("a hop runs at least one call");
        hops.push_back(std::move(hop));
    }
    if (hops.empty()) throw py::value_error("route holds no hop");
    return {std::move(hops), std::move(states)};
}

std::int64_t checked_classes(std::int64_t classes) {
    if (classes < 2) throw py::value_error("classes must be >= 2");
    return classes;
}

std::vector<ea::Gate> gate_list(const py::object& gates) {
    std::vector<ea::Gate> out;
    if (!gates.is_none())
        for (py::handle g : py::reinterpret_borrow<py::sequence>(gates)) out.push_back(g.cast<ea::Gate>());
    return out;
}

class CascadeCall {
public:
    CascadeCall(const py::sequence& route, const std::string& input, const py::dtype& dtype,
                const std::vector<std::int64_t>& shape, std::int64_t classes, py::object policy,
                py::object result, double hop_overhead_ms, bool costs_known, bool last_alone,
                const py::object& gates)
        : accept_(dtype, shape), i64_(py::dtype::of<std::int64_t>()),
          f32_(py::dtype::of<float>()), bool_(py::dtype::of<bool>()),
          policy_(std::move(policy)), result_(std::move(result)), costs_known_(costs_known) {
        Route r = parse_route(route, py::str(input));
        hops_ = PyHops(std::move(r.hops), checked_classes(classes));
        ea::Policy* p = policy_of(policy_);
        if (static_cast<std::int64_t>(r.states.size()) != p->num_states())
            throw py::value_error("route must hold one hop per kept state of the policy (" +
                                  std::to_string(p->num_states()) + "), got " +
                                  std::to_string(r.states.size()));
        if (!std::isfinite(hop_overhead_ms) || hop_overhead_ms < 0.0)
            throw py::value_error("hop_overhead_ms must be finite and >= 0");
        std::vector<ea::Gate> g = gate_list(gates);
        if (!g.empty() && g.size() + 1 != r.states.size())
            throw py::value_error("gates must hold one gate per kept state but the last (" +
                                  std::to_string(r.states.size() - 1) + "), got " +
                                  std::to_string(g.size()));
        const auto walk = last_alone ? ea::Cascade::Walk::LastAlone : ea::Cascade::Walk::Cascade;
        ensure_ok(ea::Cascade::create(p, std::move(r.states), std::move(g), hop_overhead_ms,
                                      classes, walk, cascade_));
    }

    // None, or a `result` (pred, exit_state, conf, budget_exit, latency_ms) of the batch
    // of one row `x` run by the engine under `budget_ms` (None: no budget).
    py::object call(py::handle x, py::handle budget_ms) {
        const auto t0 = Clock::now();
        double budget = ea::kNoBudget;
        if (!budget_ms.is_none() && !read_budget(budget_ms, budget)) return py::none();
        const auto& api = py::detail::npy_api::get();
        if (accept_.rows(api, x, 1) != 1) return py::none();
        {
            const PyHops::Scope scope = hops_.begin(x);
            if (!cascade_.run(hops_, 1, budget, t0, out_)) return py::none();
        }
        py::object pred = vector(api, i64_, 1), conf = vector(api, f32_, 1);
        py::object exit_state = vector(api, i64_, 1), budget_exit = vector(api, bool_, 1);
        *data_of<std::int64_t>(pred) = out_.pred[0];
        *data_of<float>(conf) = out_.conf[0];
        *data_of<std::int64_t>(exit_state) = out_.exit_state[0];
        *data_of<bool>(budget_exit) = out_.budget_exit[0] != 0;
        const std::size_t n = out_.step_ms.size();
        py::list steps(n), rows(n);
        for (std::size_t i = 0; i < n; ++i) {
            PyList_SET_ITEM(steps.ptr(), i, py::float_(out_.step_ms[i]).release().ptr());
            PyList_SET_ITEM(rows.ptr(), i, one_.inc_ref().ptr());
        }
        return result_.make(pred, exit_state, conf, budget_exit, std::move(steps), std::move(rows),
                            t0);
    }

    // The session whose call raised the error the last `call` propagated; else None.
    py::object failed() const { return hops_.failed(); }

private:
    // A budget the costs can answer: a float or int in (0, inf); false for anything else
    // (the caller's check words the error).
    bool read_budget(py::handle budget_ms, double& out) const {
        if (!costs_known_) return false;
        PyObject* b = budget_ms.ptr();
        if (PyFloat_Check(b)) {
            out = PyFloat_AS_DOUBLE(b);
        } else if (PyLong_CheckExact(b)) {
            out = PyLong_AsDouble(b);
            if (out == -1.0 && PyErr_Occurred()) {
                PyErr_Clear();
                return false;
            }
        } else {
            return false;
        }
        return out > 0.0 && out < ea::kNoBudget;
    }

    Accept accept_;
    py::dtype i64_, f32_, bool_;
    py::object policy_;  // keeps the engine's policy alive
    Results result_;
    bool costs_known_;
    PyHops hops_;
    ea::Cascade cascade_;
    ea::CascadeResult out_;
    py::int_ one_{1};
};

}  // namespace

PYBIND11_MODULE(_kernel, m) {
    m.doc() = "edgeadapt decision kernel (C++)";
    m.def("version", [] { return std::string(EDGEADAPT_VERSION); },
          "Version of the compiled kernel (matches the package version).");

    m.def("confidence", &confidence, py::arg("logits"), py::arg("measure") = "maxprob",
          "Confidence per row of float32 logits [B, C]; NaN for a row holding NaN or Inf.");
    m.def("all_finite", &all_finite_array, py::arg("x"),
          "Whether a C-contiguous native float16/32/64 array holds no NaN or infinity (an "
          "exact bit test; the GIL is released for a large array).");
    m.def("decide", &decide, py::arg("logits"), py::arg("threshold"),
          py::arg("measure") = "maxprob",
          "(pred int64[B], conf float32[B], exit_mask bool[B], continue_idx int64[K]).");
    m.def("decide_into", &decide_into, py::arg("logits"), py::arg("threshold"), py::arg("pred"),
          py::arg("conf"), py::arg("exit_mask"), py::arg("continue_idx"),
          py::arg("measure") = "maxprob",
          "decide() writing into caller-provided arrays; returns K, the rows that continue.");

    py::class_<OneCall>(m, "OneCall",
                        "One hop that answers alone: accept a batch, run it, answer every row, "
                        "record its cost and build the result, in one call.")
        .def(py::init<py::object, const std::string&, const py::dtype&,
                      const std::vector<std::int64_t>&, const std::string&, std::int64_t,
                      const std::string&, py::object, std::int64_t, std::int64_t,
                      py::object>(),
             py::arg("run"), py::arg("input"), py::arg("dtype"), py::arg("shape"),
             py::arg("logits"), py::arg("classes"), py::arg("measure"), py::kw_only(),
             py::arg("policy"), py::arg("hop"), py::arg("state"), py::arg("result"))
        .def("__call__", &OneCall::call, py::arg("x"),
             "None when `x` is not a plain C-contiguous batch of the input's dtype and shape "
             "with no NaN or infinity; else `run({input: x})` answered: a `result` instance, "
             "or (outputs, run_ns, elapsed_ns) when its logits are not a C-contiguous "
             "float32 [B, classes] array.");

    py::class_<CascadeCall>(m, "CascadeCall",
                            "A cascade of several hops at batch 1: accept the row and the "
                            "budget, and the cascade engine walks the route (budget checks, "
                            "runs, output checks, costs, decisions) and builds the result, in "
                            "one call.")
        .def(py::init<const py::sequence&, const std::string&, const py::dtype&,
                      const std::vector<std::int64_t>&, std::int64_t, py::object, py::object,
                      double, bool, bool, const py::object&>(),
             py::arg("route"), py::arg("input"), py::arg("dtype"), py::arg("shape"),
             py::arg("classes"), py::kw_only(), py::arg("policy"), py::arg("result"),
             py::arg("hop_overhead_ms"), py::arg("costs_known"), py::arg("last_alone"),
             py::arg("gates") = py::none())
        .def("__call__", &CascadeCall::call, py::arg("x"), py::arg("budget_ms") = py::none(),
             "None when `x` is not one plain C-contiguous row of the input's dtype and shape "
             "with no NaN or infinity, `budget_ms` not None or a number in (0, inf) the "
             "costs can answer, or a step's outputs are not what the cascade reads; else a "
             "`result` instance.")
        .def_property_readonly("failed", &CascadeCall::failed,
                               "The session whose call raised the last error; else None.");

    py::class_<ea::Gate>(m, "Gate", "A learned exit gate: weights over (maxprob, margin, "
                                    "entropy, agreement, previous) and a bias.")
        .def(py::init(&make_gate), py::arg("weights"), py::arg("bias"))
        .def_property_readonly("weights",
                               [](const ea::Gate& g) {
                                   return std::vector<double>(g.weights, g.weights + ea::kGateFeatures);
                               })
        .def_property_readonly("bias", [](const ea::Gate& g) { return g.bias; })
        .def("__repr__", [](const ea::Gate& g) {
            std::string w;
            for (double v : g.weights) w += (w.empty() ? "" : ", ") + std::to_string(v);
            return "Gate(weights=[" + w + "], bias=" + std::to_string(g.bias) + ")";
        });
    m.def("gate_decide", &gate_decide, py::arg("logits"), py::arg("gate"), py::arg("threshold"),
          py::arg("history"), py::arg("previous"),
          "Gate decision at position history.shape[1]: (pred, score, exit_mask, continue_idx, "
          "history [K, j + 1], previous [K]) of the rows that continue.");
    m.def("gate_decide_into", &gate_decide_into, py::arg("logits"), py::arg("gate"),
          py::arg("threshold"), py::arg("position"), py::arg("history"), py::arg("previous"),
          py::arg("pred"), py::arg("score"), py::arg("exit_mask"), py::arg("continue_idx"),
          "gate_decide() into caller-provided arrays; history and previous are compacted in "
          "place; returns K, the rows that continue.");

    py::class_<ea::Estimator>(m, "Estimator", "One of a branches plan's scheduler estimators: "
                                              "weights over (maxprob, margin, entropy) of the "
                                              "first branch, and a bias.")
        .def(py::init(&make_estimator), py::arg("weights"), py::arg("bias"))
        .def_property_readonly("weights",
                               [](const ea::Estimator& e) {
                                   return std::vector<double>(e.weights,
                                                              e.weights + ea::kSchedulerFeatures);
                               })
        .def_property_readonly("bias", [](const ea::Estimator& e) { return e.bias; });
    m.def("schedule", &schedule, py::arg("logits"), py::arg("estimators"), py::arg("thresholds"),
          py::arg("costs_ms"), py::arg("available_ms") = ea::kNoBudget,
          "The scheduler's choice on the first kept branch's logits: (pred int64[B], scores "
          "float32[B, S - 1], choice int64[B]), choice the kept position that answers.");

    py::native_enum<ea::Action>(m, "Action", "enum.IntEnum",
                                "What the policy says after a state produced its answer.")
        .value("EXIT", ea::Action::Exit)
        .value("CONTINUE", ea::Action::Continue)
        .value("EXIT_BUDGET", ea::Action::ExitBudget)
        .finalize();

    py::class_<ea::Policy>(m, "Policy", "Latency-aware exit policy over N states.")
        .def(py::init(&make_policy), py::arg("thresholds"), py::arg("hop_costs_ms"),
             py::kw_only(), py::arg("ewma") = 0.2, py::arg("measure") = "maxprob",
             py::arg("accuracies") = py::none(), py::arg("cumulative") = true,
             py::arg("quantile") = py::none())
        .def(py::init([](const std::vector<double>& thresholds,
                         const std::vector<double>& step_costs_ms, double ewma,
                         const std::string& measure,
                         const std::optional<std::vector<double>>& accuracies, bool cumulative) {
                 warn_renamed("step_costs_ms", "hop_costs_ms");
                 return make_policy(thresholds, step_costs_ms, ewma, measure, accuracies,
                                    cumulative);
             }),
             py::arg("thresholds"), py::kw_only(), py::arg("step_costs_ms"),
             py::arg("ewma") = 0.2, py::arg("measure") = "maxprob",
             py::arg("accuracies") = py::none(), py::arg("cumulative") = true,
             "Deprecated keyword: step_costs_ms (now hop_costs_ms).")
        .def_property_readonly("num_states", &ea::Policy::num_states)
        .def_property_readonly("measure", [](const ea::Policy& p) { return measure_name(p.measure()); })
        .def_property_readonly("ewma", &ea::Policy::ewma)
        .def_property_readonly("quantile",
                               [](const ea::Policy& p) -> std::optional<double> {
                                   if (p.quantile() == 0.0) return std::nullopt;
                                   return p.quantile();
                               })
        .def_property_readonly("cumulative", &ea::Policy::cumulative)
        .def_property_readonly("thresholds", &ea::Policy::thresholds)
        .def_property_readonly("costs_ms", &ea::Policy::costs_ms)
        .def_property_readonly("accuracies",
                               [](const ea::Policy& p) -> std::optional<std::vector<double>> {
                                   if (p.accuracies().empty()) return std::nullopt;
                                   return p.accuracies();
                               })
        .def("threshold", &state_figure<&ea::Policy::threshold>, py::arg("state"))
        .def("predicted_ms", &predicted_ms, py::arg("hop"))
        .def("predicted_ms",
             [](const ea::Policy& p, std::int64_t step) {
                 warn_renamed("step", "hop");
                 return predicted_ms(p, step);
             },
             py::kw_only(), py::arg("step"), "Deprecated keyword: step (now hop).")
        .def("state_ms", &state_figure<&ea::Policy::state_ms>, py::arg("state"))
        .def("observe", &observe, py::arg("hop"), py::arg("measured_ms"))
        .def("observe",
             [](ea::Policy& p, std::int64_t step, double measured_ms) {
                 warn_renamed("step", "hop");
                 observe(p, step, measured_ms);
             },
             py::kw_only(), py::arg("step"), py::arg("measured_ms"),
             "Deprecated keyword: step (now hop).")
        .def("decay", &decay, py::arg("hop"))
        .def("decay",
             [](ea::Policy& p, std::int64_t step) {
                 warn_renamed("step", "hop");
                 decay(p, step);
             },
             py::kw_only(), py::arg("step"), "Deprecated keyword: step (now hop).")
        .def("fits", &fits, py::arg("next_hop"), py::arg("elapsed_ms"),
             py::arg("budget_ms") = py::none())
        .def("fits",
             [](const ea::Policy& p, std::int64_t next_step, double elapsed_ms,
                std::optional<double> budget_ms) {
                 warn_renamed("next_step", "next_hop");
                 return fits(p, next_step, elapsed_ms, budget_ms);
             },
             py::kw_only(), py::arg("next_step"), py::arg("elapsed_ms"),
             py::arg("budget_ms") = py::none(), "Deprecated keyword: next_step (now next_hop).")
        .def("next",
             [](const ea::Policy& p, std::int64_t state, double confidence, double elapsed_ms,
                std::optional<double> budget_ms) {
                 check_index(p, state, "state");
                 check_elapsed(elapsed_ms);
                 ea::Action a = ea::Action::Exit;
                 ensure_ok(p.next(state, confidence, elapsed_ms, check_budget(budget_ms), &a));
                 return a;
             },
             py::arg("state"), py::arg("confidence"), py::arg("elapsed_ms"),
             py::arg("budget_ms") = py::none())
        .def("lookup",
             [](const ea::Policy& p, double budget_ms) -> std::optional<std::int64_t> {
                 std::int64_t s = -1;
                 ensure_ok(p.lookup(check_budget(budget_ms), &s));
                 if (s < 0) return std::nullopt;
                 return s;
             },
             py::arg("budget_ms"))
        .def("__repr__", [](const ea::Policy& p) {
            return "Policy(num_states=" + std::to_string(p.num_states()) + ", measure='" +
                   measure_name(p.measure()) + "', ewma=" + std::to_string(p.ewma()) + ")";
        });
}
