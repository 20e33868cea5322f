// The C ABI (edgeadapt.h) over the header-only kernel: status codes, no exceptions out.
#include "edgeadapt/edgeadapt.h"

#include <cstddef>
#include <new>
#include <string>

#include "edgeadapt/kernel.hpp"

struct edgeadapt_policy {
    edgeadapt::Policy policy;
};

namespace {

thread_local std::string last_error;

edgeadapt_status report(edgeadapt::Status s, const char* where) noexcept {
    if (s != edgeadapt::Status::Ok) {
        try {
            last_error = std::string(where) + ": " + edgeadapt::status_string(s);
        } catch (...) {
            last_error.clear();
        }
    }
    return static_cast<edgeadapt_status>(s);
}

edgeadapt_status null_policy(const char* where) noexcept {
    return report(edgeadapt::Status::NullPointer, where);
}

}  // namespace

extern "C" {

const char* edgeadapt_version(void) { return EDGEADAPT_VERSION; }

const char* edgeadapt_status_string(edgeadapt_status status) {
    if (status == EDGEADAPT_E_NO_MEMORY) return "out of memory";
    return edgeadapt::status_string(static_cast<edgeadapt::Status>(status));
}

const char* edgeadapt_last_error(void) { return last_error.c_str(); }

edgeadapt_status edgeadapt_confidence(const float* logits, int64_t batch, int64_t classes,
                                      edgeadapt_measure measure, float* conf) {
    return report(edgeadapt::confidence(logits, batch, classes,
                                        static_cast<edgeadapt::Measure>(measure), conf),
                  "edgeadapt_confidence");
}

edgeadapt_status edgeadapt_decide(const float* logits, int64_t batch, int64_t classes,
                                  edgeadapt_measure measure, double threshold, int64_t* pred,
                                  float* conf, uint8_t* exit_mask, int64_t* continue_idx,
                                  int64_t* n_continue) {
    return report(edgeadapt::decide(logits, batch, classes,
                                    static_cast<edgeadapt::Measure>(measure), threshold, pred,
                                    conf, exit_mask, continue_idx, n_continue),
                  "edgeadapt_decide");
}

namespace {

edgeadapt::Gate to_gate(const edgeadapt_gate& g) noexcept {
    edgeadapt::Gate out{};
    for (int k = 0; k < EDGEADAPT_GATE_FEATURES; ++k) out.weights[k] = g.weights[k];
    out.bias = g.bias;
    return out;
}

}  // namespace

edgeadapt_status edgeadapt_gate_score(const float* row, int64_t classes, const edgeadapt_gate* gate,
                                      const int64_t* history, int64_t position, float previous,
                                      int64_t* pred, float* score) {
    if (gate == nullptr) return report(edgeadapt::Status::NullPointer, "edgeadapt_gate_score");
    return report(edgeadapt::gate_score(row, classes, to_gate(*gate), history, position, previous,
                                        pred, score),
                  "edgeadapt_gate_score");
}

edgeadapt_status edgeadapt_gate_decide(const float* logits, int64_t batch, int64_t classes,
                                       const edgeadapt_gate* gate, double threshold,
                                       int64_t position, int64_t* history, int64_t stride,
                                       float* previous, int64_t* pred, float* score,
                                       uint8_t* exit_mask, int64_t* continue_idx,
                                       int64_t* n_continue) {
    if (gate == nullptr) return report(edgeadapt::Status::NullPointer, "edgeadapt_gate_decide");
    return report(edgeadapt::gate_decide(logits, batch, classes, to_gate(*gate), threshold,
                                         position, history, stride, previous, pred, score,
                                         exit_mask, continue_idx, n_continue),
                  "edgeadapt_gate_decide");
}

static_assert(sizeof(edgeadapt_estimator) == sizeof(edgeadapt::Estimator) &&
                  offsetof(edgeadapt_estimator, bias) == offsetof(edgeadapt::Estimator, bias) &&
                  EDGEADAPT_SCHEDULER_FEATURES == edgeadapt::kSchedulerFeatures,
              "edgeadapt_estimator must match edgeadapt::Estimator");

edgeadapt_status edgeadapt_schedule(const float* logits, int64_t batch, int64_t classes,
                                    const edgeadapt_estimator* estimators,
                                    const double* thresholds, const double* costs_ms,
                                    int64_t states, double available_ms, int64_t* pred,
                                    float* scores, int64_t* choice) {
    const auto* est = reinterpret_cast<const edgeadapt::Estimator*>(estimators);
    return report(edgeadapt::schedule(logits, batch, classes, est, thresholds, costs_ms, states,
                                      available_ms, pred, scores, choice),
                  "edgeadapt_schedule");
}

edgeadapt_status edgeadapt_policy_create(const double* thresholds, size_t n_thresholds,
                                         const double* hop_costs_ms, size_t n_hops, double ewma,
                                         edgeadapt_measure measure, const double* accuracies,
                                         int cumulative, edgeadapt_policy** out) {
    if (out == nullptr) return null_policy("edgeadapt_policy_create");
    *out = nullptr;
    try {
        auto* handle = new edgeadapt_policy;
        const auto s = edgeadapt::Policy::create(
            thresholds, n_thresholds, hop_costs_ms, n_hops, ewma,
            static_cast<edgeadapt::Measure>(measure), accuracies, cumulative != 0, handle->policy);
        if (s != edgeadapt::Status::Ok) {
            delete handle;
            return report(s, "edgeadapt_policy_create");
        }
        *out = handle;
        return EDGEADAPT_OK;
    } catch (const std::bad_alloc&) {
        last_error = "edgeadapt_policy_create: out of memory";
        return EDGEADAPT_E_NO_MEMORY;
    }
}

void edgeadapt_policy_destroy(edgeadapt_policy* policy) { delete policy; }

edgeadapt_status edgeadapt_policy_num_states(const edgeadapt_policy* policy, int64_t* out) {
    if (policy == nullptr || out == nullptr) return null_policy("edgeadapt_policy_num_states");
    *out = policy->policy.num_states();
    return EDGEADAPT_OK;
}

edgeadapt_status edgeadapt_policy_threshold(const edgeadapt_policy* policy, int64_t state,
                                            double* out) {
    if (policy == nullptr) return null_policy("edgeadapt_policy_threshold");
    return report(policy->policy.threshold(state, out), "edgeadapt_policy_threshold");
}

edgeadapt_status edgeadapt_policy_predicted_ms(const edgeadapt_policy* policy, int64_t hop,
                                               double* out) {
    if (policy == nullptr) return null_policy("edgeadapt_policy_predicted_ms");
    return report(policy->policy.predicted_ms(hop, out), "edgeadapt_policy_predicted_ms");
}

edgeadapt_status edgeadapt_policy_state_ms(const edgeadapt_policy* policy, int64_t state,
                                           double* out) {
    if (policy == nullptr) return null_policy("edgeadapt_policy_state_ms");
    return report(policy->policy.state_ms(state, out), "edgeadapt_policy_state_ms");
}

edgeadapt_status edgeadapt_policy_observe(edgeadapt_policy* policy, int64_t hop,
                                          double measured_ms) {
    if (policy == nullptr) return null_policy("edgeadapt_policy_observe");
    return report(policy->policy.observe(hop, measured_ms), "edgeadapt_policy_observe");
}

edgeadapt_status edgeadapt_policy_set_quantile(edgeadapt_policy* policy, double q) {
    if (policy == nullptr) return null_policy("edgeadapt_policy_set_quantile");
    return report(policy->policy.set_quantile(q), "edgeadapt_policy_set_quantile");
}

edgeadapt_status edgeadapt_policy_quantile(const edgeadapt_policy* policy, double* out) {
    if (policy == nullptr || out == nullptr) return null_policy("edgeadapt_policy_quantile");
    *out = policy->policy.quantile();
    return EDGEADAPT_OK;
}

edgeadapt_status edgeadapt_policy_decay(edgeadapt_policy* policy, int64_t hop) {
    if (policy == nullptr) return null_policy("edgeadapt_policy_decay");
    return report(policy->policy.decay(hop), "edgeadapt_policy_decay");
}

edgeadapt_status edgeadapt_policy_fits(const edgeadapt_policy* policy, int64_t next_hop,
                                       double elapsed_ms, double budget_ms, int* out) {
    if (policy == nullptr || out == nullptr) return null_policy("edgeadapt_policy_fits");
    bool fits = false;
    const auto s = policy->policy.fits(next_hop, elapsed_ms, budget_ms, &fits);
    if (s == edgeadapt::Status::Ok) *out = fits ? 1 : 0;
    return report(s, "edgeadapt_policy_fits");
}

edgeadapt_status edgeadapt_policy_next(const edgeadapt_policy* policy, int64_t state,
                                       double confidence, double elapsed_ms, double budget_ms,
                                       edgeadapt_action* out) {
    if (policy == nullptr || out == nullptr) return null_policy("edgeadapt_policy_next");
    edgeadapt::Action action = edgeadapt::Action::Exit;
    const auto s = policy->policy.next(state, confidence, elapsed_ms, budget_ms, &action);
    if (s == edgeadapt::Status::Ok) *out = static_cast<edgeadapt_action>(action);
    return report(s, "edgeadapt_policy_next");
}

edgeadapt_status edgeadapt_policy_lookup(const edgeadapt_policy* policy, double budget_ms,
                                         int64_t* state) {
    if (policy == nullptr) return null_policy("edgeadapt_policy_lookup");
    return report(policy->policy.lookup(budget_ms, state), "edgeadapt_policy_lookup");
}

}  // extern "C"

static_assert(static_cast<int>(edgeadapt::Status::BadMeasure) == EDGEADAPT_E_MEASURE,
              "C and C++ status codes must agree");
static_assert(static_cast<int>(edgeadapt::Action::ExitBudget) == EDGEADAPT_EXIT_BUDGET,
              "C and C++ actions must agree");
static_assert(edgeadapt::kGateFeatures == EDGEADAPT_GATE_FEATURES,
              "C and C++ gates must have the same features");
static_assert(static_cast<int>(edgeadapt::Measure::Entropy) == EDGEADAPT_ENTROPY,
              "C and C++ measures must agree");
