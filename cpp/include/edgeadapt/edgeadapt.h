/* edgeadapt C ABI: the decision kernel for C and other languages (FFI).
 *
 * Every function returns an edgeadapt_status (0 = EDGEADAPT_OK) and writes results
 * through out-pointers; nothing throws across this boundary. edgeadapt_last_error()
 * gives a message for the last failed call on the calling thread. Semantics are those
 * of the C++ header <edgeadapt/kernel.hpp>.
 */
#ifndef EDGEADAPT_H
#define EDGEADAPT_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#if defined(_WIN32)
#if defined(EDGEADAPT_C_BUILD)
#define EDGEADAPT_API __declspec(dllexport)
#else
#define EDGEADAPT_API __declspec(dllimport)
#endif
#else
#define EDGEADAPT_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum edgeadapt_status {
    EDGEADAPT_OK = 0,
    EDGEADAPT_E_NULL = 1,        /* a required pointer is NULL */
    EDGEADAPT_E_SHAPE = 2,       /* batch < 1, classes < 2, or lengths that do not match */
    EDGEADAPT_E_VALUE = 3,       /* NaN threshold, negative/NaN budget or cost, bad EWMA weight,
                                    non-finite gate weight */
    EDGEADAPT_E_RANGE = 4,       /* state or hop index outside the policy */
    EDGEADAPT_E_MEASURE = 5,     /* unknown confidence measure */
    EDGEADAPT_E_NO_MEMORY = 6    /* allocation failed (policy creation only) */
} edgeadapt_status;

typedef enum edgeadapt_measure {
    EDGEADAPT_MAXPROB = 0, /* max softmax probability */
    EDGEADAPT_MARGIN = 1,  /* top-1 minus top-2 probability */
    EDGEADAPT_ENTROPY = 2  /* negative entropy (higher = more confident) */
} edgeadapt_measure;

typedef enum edgeadapt_action {
    EDGEADAPT_EXIT = 0,       /* confident enough, or the last state */
    EDGEADAPT_CONTINUE = 1,   /* run the next hop */
    EDGEADAPT_EXIT_BUDGET = 2 /* next hop would overrun the budget: keep this answer */
} edgeadapt_action;

/* Budget value meaning "no deadline" (+infinity). */
#define EDGEADAPT_NO_BUDGET HUGE_VAL

EDGEADAPT_API const char* edgeadapt_version(void);
EDGEADAPT_API const char* edgeadapt_status_string(edgeadapt_status status);
/* Message for the last failed call on this thread ("" when none failed yet). */
EDGEADAPT_API const char* edgeadapt_last_error(void);

/* conf[b] = confidence of row b of row-major float logits[batch][classes]; a row holding
 * NaN or +-Inf gets NaN. */
EDGEADAPT_API edgeadapt_status edgeadapt_confidence(const float* logits, int64_t batch,
                                                    int64_t classes, edgeadapt_measure measure,
                                                    float* conf);

/* Batch exit decision; every output has room for `batch` entries. pred[b] = argmax
 * (first on ties, -1 for a NaN/Inf row), conf[b], exit_mask[b] = conf >= threshold (0/1),
 * continue_idx[0..*n_continue) = rows that do not exit, in order. */
EDGEADAPT_API edgeadapt_status edgeadapt_decide(const float* logits, int64_t batch,
                                                int64_t classes, edgeadapt_measure measure,
                                                double threshold, int64_t* pred, float* conf,
                                                uint8_t* exit_mask, int64_t* continue_idx,
                                                int64_t* n_continue);

/* Learned exit gate (kernel.hpp, "Learned exit gates"): weights over the features
 * maxprob, margin, negative entropy, agreement with the earlier kept exits' argmax, and
 * the previous gate's score, in that order; all finite. */
#define EDGEADAPT_GATE_FEATURES 5
typedef struct edgeadapt_gate {
    double weights[EDGEADAPT_GATE_FEATURES];
    double bias;
} edgeadapt_gate;

/* Gate score of one row of `classes` logits at kept position `position`: history[0..
 * position) holds the row's argmax at the earlier kept exits (NULL allowed at position
 * 0), previous the previous gate's score (ignored at position 0); NaN for a NaN/Inf row. */
EDGEADAPT_API edgeadapt_status edgeadapt_gate_score(const float* row, int64_t classes,
                                                    const edgeadapt_gate* gate,
                                                    const int64_t* history, int64_t position,
                                                    float previous, int64_t* pred, float* score);

/* Batch gate decision: outputs as edgeadapt_decide (score in place of conf). history is
 * row-major [batch][stride] (stride > position) with each row's earlier argmax in columns
 * 0..position-1, previous[batch] the previous gate's scores; both are compacted in place:
 * afterwards rows 0..*n_continue-1 hold the continuing rows, with this argmax appended in
 * column `position` and this score, ready for the next kept state. */
EDGEADAPT_API edgeadapt_status edgeadapt_gate_decide(
    const float* logits, int64_t batch, int64_t classes, const edgeadapt_gate* gate,
    double threshold, int64_t position, int64_t* history, int64_t stride, float* previous,
    int64_t* pred, float* score, uint8_t* exit_mask, int64_t* continue_idx, int64_t* n_continue);

/* The content-aware scheduler of a branches plan (kernel.hpp, "The content-aware
 * scheduler"): one estimator per kept branch but the last, weights over the first
 * branch's maxprob, margin and negative entropy, in that order; all finite. */
#define EDGEADAPT_SCHEDULER_FEATURES 3
typedef struct edgeadapt_estimator {
    double weights[EDGEADAPT_SCHEDULER_FEATURES];
    double bias;
} edgeadapt_estimator;

/* The scheduler's choice for a batch of the first kept branch's logits over `states`
 * kept branches: estimators[states - 1], thresholds[states - 1], costs_ms[states] (each
 * branch's tracked cost, finite and >= 0; costs_ms[0] is not read), available_ms what is
 * left of the budget (INFINITY: none; not NaN). Writes pred[batch] (the first branch's
 * argmax), scores[batch][states - 1] (may be NULL when states == 1) and choice[batch],
 * the kept position that answers. */
EDGEADAPT_API edgeadapt_status edgeadapt_schedule(const float* logits, int64_t batch,
                                                  int64_t classes,
                                                  const edgeadapt_estimator* estimators,
                                                  const double* thresholds,
                                                  const double* costs_ms, int64_t states,
                                                  double available_ms, int64_t* pred,
                                                  float* scores, int64_t* choice);

/* Opaque latency-aware policy over N kept states (see kernel.hpp, class Policy). Hop i
 * is what runs to reach kept state i: the bundle steps since kept state i - 1. */
typedef struct edgeadapt_policy edgeadapt_policy;

/* thresholds: N - 1 values (the last state always exits); hop_costs_ms: N values;
 * accuracies: N values in [0, 1] or NULL; cumulative: nonzero for early-exit bundles. */
EDGEADAPT_API edgeadapt_status edgeadapt_policy_create(
    const double* thresholds, size_t n_thresholds, const double* hop_costs_ms, size_t n_hops,
    double ewma, edgeadapt_measure measure, const double* accuracies, int cumulative,
    edgeadapt_policy** out);
EDGEADAPT_API void edgeadapt_policy_destroy(edgeadapt_policy* policy);

EDGEADAPT_API edgeadapt_status edgeadapt_policy_num_states(const edgeadapt_policy* policy,
                                                           int64_t* out);
EDGEADAPT_API edgeadapt_status edgeadapt_policy_threshold(const edgeadapt_policy* policy,
                                                          int64_t state, double* out);
EDGEADAPT_API edgeadapt_status edgeadapt_policy_predicted_ms(const edgeadapt_policy* policy,
                                                             int64_t hop, double* out);
EDGEADAPT_API edgeadapt_status edgeadapt_policy_state_ms(const edgeadapt_policy* policy,
                                                         int64_t state, double* out);
EDGEADAPT_API edgeadapt_status edgeadapt_policy_observe(edgeadapt_policy* policy, int64_t hop,
                                                        double measured_ms);
/* Track the q-quantile of each hop's measured cost instead of its mean: q in (0, 1), or
   0 for the mean (the default). A plan made on p90 costs tracks q = 0.9. */
EDGEADAPT_API edgeadapt_status edgeadapt_policy_set_quantile(edgeadapt_policy* policy, double q);
EDGEADAPT_API edgeadapt_status edgeadapt_policy_quantile(const edgeadapt_policy* policy,
                                                         double* out);
/* Move hop's prediction one EWMA update back toward its initial cost: call it for a hop
   skipped for the budget, so one slow run cannot lock the hop out for good. */
EDGEADAPT_API edgeadapt_status edgeadapt_policy_decay(edgeadapt_policy* policy, int64_t hop);
EDGEADAPT_API edgeadapt_status edgeadapt_policy_fits(const edgeadapt_policy* policy,
                                                     int64_t next_hop, double elapsed_ms,
                                                     double budget_ms, int* out);
EDGEADAPT_API edgeadapt_status edgeadapt_policy_next(const edgeadapt_policy* policy,
                                                     int64_t state, double confidence,
                                                     double elapsed_ms, double budget_ms,
                                                     edgeadapt_action* out);
/* *state = most accurate state whose predicted cost fits, or -1 when none does. */
EDGEADAPT_API edgeadapt_status edgeadapt_policy_lookup(const edgeadapt_policy* policy,
                                                       double budget_ms, int64_t* state);

#ifdef __cplusplus
}
#endif

#endif /* EDGEADAPT_H */
