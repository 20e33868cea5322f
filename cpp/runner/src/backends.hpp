// Internal: the backend factories compiled into this build (see backends.cpp).
#pragma once

#include <memory>

#include "edgeadapt/runner.hpp"

namespace edgeadapt::runner {

#ifdef EDGEADAPT_RUNNER_OPENVINO
std::shared_ptr<Backend> make_openvino(const BackendOptions& options);
#endif
#ifdef EDGEADAPT_RUNNER_TENSORRT
std::shared_ptr<Backend> make_tensorrt(const BackendOptions& options);
#endif

}  // namespace edgeadapt::runner
