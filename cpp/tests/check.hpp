// The ctest programs' check: CHECK(cond) prints a condition that does not hold, with its
// file and line, and counts it; `checks_passed(name)` is the program's exit status.
#pragma once

#include <cstdio>

namespace edgeadapt::testing {

inline int failures = 0;

inline int checks_passed(const char* name) {
    if (failures == 0) std::printf("%s: all checks passed\n", name);
    else std::printf("%s: %d check(s) failed\n", name, failures);
    return failures == 0 ? 0 : 1;
}

}  // namespace edgeadapt::testing

#define CHECK(cond)                                                              \
    do {                                                                         \
        if (!(cond)) {                                                           \
            std::printf("%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++edgeadapt::testing::failures;                                      \
        }                                                                        \
    } while (0)
