/* ctest: the C ABI from plain C: a decision, a policy round trip, error codes. */
#include <math.h>
#include <stdio.h>
#include <stdint.h>
#include <string.h>

#include "edgeadapt/edgeadapt.h"

static int failures = 0;
#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) {                                                       \
            printf("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                      \
        }                                                                    \
    } while (0)

int main(void) {
    const float logits[2][3] = {{0.0f, 10.0f, 0.0f}, {1.0f, 1.0f, 1.0f}};
    int64_t pred[2], idx[2], k = -1;
    float conf[2];
    uint8_t mask[2];
    CHECK(edgeadapt_decide(&logits[0][0], 2, 3, EDGEADAPT_MAXPROB, 0.5, pred, conf, mask, idx, &k) ==
          EDGEADAPT_OK);
    CHECK(pred[0] == 1 && mask[0] == 1 && mask[1] == 0 && k == 1 && idx[0] == 1);
    CHECK(fabsf(conf[1] - 1.0f / 3.0f) < 1e-6f);
    CHECK(edgeadapt_confidence(&logits[0][0], 2, 3, EDGEADAPT_MARGIN, conf) == EDGEADAPT_OK);
    CHECK(conf[1] == 0.0f);

    CHECK(edgeadapt_decide(&logits[0][0], 0, 3, EDGEADAPT_MAXPROB, 0.5, pred, conf, mask, idx, &k) ==
          EDGEADAPT_E_SHAPE);
    CHECK(strstr(edgeadapt_last_error(), "edgeadapt_decide") != NULL);
    CHECK(edgeadapt_decide(&logits[0][0], 2, 3, EDGEADAPT_MAXPROB, NAN, pred, conf, mask, idx, &k) ==
          EDGEADAPT_E_VALUE);
    CHECK(edgeadapt_confidence(NULL, 2, 3, EDGEADAPT_MAXPROB, conf) == EDGEADAPT_E_NULL);
    CHECK(edgeadapt_confidence(&logits[0][0], 2, 3, (edgeadapt_measure)9, conf) == EDGEADAPT_E_MEASURE);

    /* a gate that exits on agreement with the earlier exit: row 0 agrees, row 1 does not */
    const edgeadapt_gate gate = {{0.0, 0.0, 0.0, 10.0, 0.0}, -5.0};
    int64_t hist[4] = {1, 77, 2, 77}; /* [2][2]: column 0 is the earlier argmax */
    float prev[2] = {0.5f, 0.5f}, score[2];
    CHECK(edgeadapt_gate_decide(&logits[0][0], 2, 3, &gate, 0.5, 1, hist, 2, prev, pred, score,
                                mask, idx, &k) == EDGEADAPT_OK);
    CHECK(mask[0] == 1 && mask[1] == 0 && k == 1 && idx[0] == 1);
    CHECK(hist[0] == 2 && hist[1] == 0 && prev[0] == score[1]); /* row 1 compacted to row 0 */
    float one = 0.0f;
    CHECK(edgeadapt_gate_score(&logits[0][0], 3, &gate, hist, 1, 0.0f, &pred[0], &one) ==
          EDGEADAPT_OK);
    CHECK(pred[0] == 1 && one < 0.01f);
    CHECK(edgeadapt_gate_score(&logits[0][0], 3, NULL, hist, 1, 0.0f, &pred[0], &one) ==
          EDGEADAPT_E_NULL);
    CHECK(edgeadapt_gate_decide(&logits[0][0], 2, 3, &gate, 0.5, 2, hist, 2, prev, pred, score,
                                mask, idx, &k) == EDGEADAPT_E_SHAPE);
    CHECK(strstr(edgeadapt_last_error(), "edgeadapt_gate_decide") != NULL);

    const double th[1] = {0.9};
    const double cost[2] = {1.0, 3.0};
    edgeadapt_policy* p = NULL;
    CHECK(edgeadapt_policy_create(th, 1, cost, 2, 0.5, EDGEADAPT_MAXPROB, NULL, 1, &p) == EDGEADAPT_OK);
    edgeadapt_action a = EDGEADAPT_EXIT;
    CHECK(edgeadapt_policy_next(p, 0, 0.3, 1.0, EDGEADAPT_NO_BUDGET, &a) == EDGEADAPT_OK &&
          a == EDGEADAPT_CONTINUE);
    CHECK(edgeadapt_policy_next(p, 0, 0.3, 1.0, 3.5, &a) == EDGEADAPT_OK && a == EDGEADAPT_EXIT_BUDGET);
    CHECK(edgeadapt_policy_observe(p, 1, 1.0) == EDGEADAPT_OK);
    double ms = 0.0;
    CHECK(edgeadapt_policy_predicted_ms(p, 1, &ms) == EDGEADAPT_OK && ms == 2.0);
    CHECK(edgeadapt_policy_state_ms(p, 1, &ms) == EDGEADAPT_OK && ms == 3.0);
    CHECK(edgeadapt_policy_decay(p, 1) == EDGEADAPT_OK); /* 2.0 -> back toward 3.0 */
    CHECK(edgeadapt_policy_predicted_ms(p, 1, &ms) == EDGEADAPT_OK && ms == 2.5);
    CHECK(edgeadapt_policy_decay(p, 7) == EDGEADAPT_E_RANGE);
    CHECK(edgeadapt_policy_decay(NULL, 0) == EDGEADAPT_E_NULL);
    CHECK(edgeadapt_policy_observe(p, 1, 1.5) == EDGEADAPT_OK); /* 2.0 again */
    double quant = -1.0;
    CHECK(edgeadapt_policy_quantile(p, &quant) == EDGEADAPT_OK && quant == 0.0); /* the mean */
    CHECK(edgeadapt_policy_set_quantile(p, 1.0) == EDGEADAPT_E_VALUE);
    CHECK(edgeadapt_policy_set_quantile(NULL, 0.5) == EDGEADAPT_E_NULL);
    CHECK(edgeadapt_policy_set_quantile(p, 0.5) == EDGEADAPT_OK);
    CHECK(edgeadapt_policy_quantile(p, &quant) == EDGEADAPT_OK && quant == 0.5);
    CHECK(edgeadapt_policy_observe(p, 1, 9.0) == EDGEADAPT_OK); /* above: 2.0 * 1.25 */
    CHECK(edgeadapt_policy_predicted_ms(p, 1, &ms) == EDGEADAPT_OK && ms == 2.5);
    CHECK(edgeadapt_policy_observe(p, 1, 0.0) == EDGEADAPT_OK); /* below: 2.5 * 0.75 */
    CHECK(edgeadapt_policy_predicted_ms(p, 1, &ms) == EDGEADAPT_OK && ms == 1.875);
    CHECK(edgeadapt_policy_observe(p, 1, 1.875) == EDGEADAPT_OK); /* equal counts as below */
    CHECK(edgeadapt_policy_set_quantile(p, 0.0) == EDGEADAPT_OK);
    CHECK(edgeadapt_policy_observe(p, 1, 2.0) == EDGEADAPT_OK); /* the mean's step again */
    int fits = 0;
    CHECK(edgeadapt_policy_fits(p, 1, 1.0, 3.0, &fits) == EDGEADAPT_OK && fits == 1);
    int64_t state = -2, n = 0;
    CHECK(edgeadapt_policy_lookup(p, 2.0, &state) == EDGEADAPT_OK && state == 0);
    CHECK(edgeadapt_policy_num_states(p, &n) == EDGEADAPT_OK && n == 2);
    CHECK(edgeadapt_policy_next(p, 0, 0.3, 1.0, -1.0, &a) == EDGEADAPT_E_VALUE);
    CHECK(edgeadapt_policy_next(p, 5, 0.3, 1.0, 1.0, &a) == EDGEADAPT_E_RANGE);
    CHECK(edgeadapt_policy_lookup(p, NAN, &state) == EDGEADAPT_E_VALUE);
    CHECK(edgeadapt_policy_next(NULL, 0, 0.3, 1.0, 1.0, &a) == EDGEADAPT_E_NULL);
    edgeadapt_policy_destroy(p);

    edgeadapt_policy* q = (edgeadapt_policy*)&failures;
    CHECK(edgeadapt_policy_create(th, 1, cost, 2, 1.5, EDGEADAPT_MAXPROB, NULL, 1, &q) ==
          EDGEADAPT_E_VALUE);
    CHECK(q == NULL);

    /* lengths no memory can hold, for 3-element arrays: refused before a value is read */
    const double three[3] = {0.5, 0.5, 0.5}, acc[3] = {0.1, 0.2, 0.3};
    const size_t huge[] = {SIZE_MAX, SIZE_MAX - 1, SIZE_MAX / 2, (SIZE_MAX >> 4) + 1,
                           (size_t)1 << 50};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; ++i) {
        q = (edgeadapt_policy*)&failures;
        CHECK(edgeadapt_policy_create(three, huge[i] - 1, three, huge[i], 0.2, EDGEADAPT_MAXPROB,
                                      acc, 1, &q) == EDGEADAPT_E_NO_MEMORY);
        CHECK(q == NULL);
        CHECK(strstr(edgeadapt_last_error(), "out of memory") != NULL);
    }
    /* the scheduler: a sure row answers with the first branch, an unsure one runs the
       branch whose estimate (always 0.9) clears; with no room, the first answers */
    {
        const float rows[2][3] = {{10.0f, 0.0f, 0.0f}, {1.0f, 1.0f, 1.0f}};
        const edgeadapt_estimator est[2] = {{{20.0, 0.0, 0.0}, -10.0},
                                            {{0.0, 0.0, 0.0}, 2.1972245773362196}};
        const double t[2] = {0.5, 0.5}, costs[3] = {1.0, 2.0, 3.0};
        int64_t spred[2], choice[2];
        float sc[4];
        CHECK(edgeadapt_schedule(&rows[0][0], 2, 3, est, t, costs, 3, INFINITY, spred, sc,
                                 choice) == EDGEADAPT_OK);
        CHECK(choice[0] == 0 && choice[1] == 1 && spred[0] == 0);
        CHECK(fabsf(sc[3] - 0.9f) < 1e-6f);
        CHECK(edgeadapt_schedule(&rows[0][0], 2, 3, est, t, costs, 3, 1.0, spred, sc, choice) ==
              EDGEADAPT_OK);
        CHECK(choice[0] == 0 && choice[1] == 0);
        CHECK(edgeadapt_schedule(&rows[0][0], 2, 3, est, t, costs, 3, NAN, spred, sc, choice) ==
              EDGEADAPT_E_VALUE);
        CHECK(strstr(edgeadapt_last_error(), "edgeadapt_schedule") != NULL);
    }
    CHECK(strcmp(edgeadapt_status_string(EDGEADAPT_OK), "ok") == 0);
    CHECK(strlen(edgeadapt_version()) > 0);
    if (failures == 0) printf("c_abi: all checks passed\n");
    return failures == 0 ? 0 : 1;
}
