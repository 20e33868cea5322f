/* c_abi: the decision kernel from plain C, through edgeadapt.h alone.
 *
 * The loop of a native app, sketched: for each frame, run the states in order, let
 * edgeadapt_decide give the prediction and confidence of the state's logits, ask
 * edgeadapt_policy_next whether to exit, continue or stop for the budget, and fold the
 * latency of the state's hop (its steps) into the policy's cost table
 * (edgeadapt_policy_observe). Here fixed
 * logits stand in for the model and each state takes its predicted time, so the run is
 * deterministic; it checks its own decisions and exits 1 if one differs.
 *
 *   cc c_abi.c -ledgeadapt_c -lm && ./a.out
 */
#include <stdio.h>

#include "edgeadapt/edgeadapt.h"

#define FRAMES 4
#define STATES 3
#define CLASSES 4

static int check(edgeadapt_status s) {
    if (s != EDGEADAPT_OK) fprintf(stderr, "edgeadapt: %s\n", edgeadapt_last_error());
    return s == EDGEADAPT_OK;
}

int main(void) {
    /* logits[frame][state]: frame 0 is easy, 1 needs state 1, 2 and 3 are hard */
    static const float logits[FRAMES][STATES][CLASSES] = {
        {{6, 0, 0, 0}, {6, 0, 0, 0}, {6, 0, 0, 0}},
        {{1, 1, 0, 0}, {0, 5, 0, 0}, {0, 6, 0, 0}},
        {{1, 1, 1, 0}, {0, 1, 1, 0}, {0, 0, 7, 0}},
        {{1, 1, 1, 0}, {0, 1, 1, 0}, {0, 0, 0, 7}},
    };
    /* frame 3 runs without a deadline; the others have 2.5 ms */
    const double budget[FRAMES] = {2.5, 2.5, 2.5, EDGEADAPT_NO_BUDGET};
    const double thresholds[STATES - 1] = {0.9, 0.9};
    const double cost_ms[STATES] = {1.0, 1.0, 2.0};
    const int want_state[FRAMES] = {0, 1, 1, 2};
    const int want_budget[FRAMES] = {0, 0, 1, 0};
    edgeadapt_policy* policy = NULL;
    int failures = 0;

    if (!check(edgeadapt_policy_create(thresholds, STATES - 1, cost_ms, STATES, 0.2,
                                       EDGEADAPT_MAXPROB, NULL, 1, &policy)))
        return 1;
    printf("edgeadapt %s\n", edgeadapt_version());
    for (int f = 0; f < FRAMES; ++f) {
        double elapsed = 0.0;
        int64_t pred = -1;
        int state = 0;
        edgeadapt_action action = EDGEADAPT_CONTINUE;
        for (state = 0; state < STATES; ++state) {
            float conf;
            uint8_t exit_mask;
            int64_t keep, n_keep;
            double hop_ms;
            if (!check(edgeadapt_decide(logits[f][state], 1, CLASSES, EDGEADAPT_MAXPROB,
                                        state + 1 < STATES ? thresholds[state] : 0.0, &pred,
                                        &conf, &exit_mask, &keep, &n_keep)) ||
                !check(edgeadapt_policy_predicted_ms(policy, state, &hop_ms)))
                return 1;
            elapsed += hop_ms; /* a real app measures the hop's latency here */
            if (!check(edgeadapt_policy_observe(policy, state, hop_ms)) ||
                !check(edgeadapt_policy_next(policy, state, conf, elapsed, budget[f], &action)))
                return 1;
            if (action != EDGEADAPT_CONTINUE) {
                printf("frame %d: state %d pred %lld conf %.3f after %.1f ms%s\n", f, state,
                       (long long)pred, conf, elapsed,
                       action == EDGEADAPT_EXIT_BUDGET ? " (budget exit)" : "");
                break;
            }
        }
        if (state != want_state[f] || (action == EDGEADAPT_EXIT_BUDGET) != want_budget[f]) {
            printf("frame %d: expected state %d%s\n", f, want_state[f],
                   want_budget[f] ? " by the budget" : "");
            ++failures;
        }
    }
    edgeadapt_policy_destroy(policy);
    return failures == 0 ? 0 : 1;
}
