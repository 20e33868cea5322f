// make_backend: the registry of the backends this build was compiled with.
#include "backends.hpp"

#include "detail.hpp"

namespace edgeadapt::runner {

Error make_backend(const std::string& name, const BackendOptions& options,
                   std::shared_ptr<Backend>& out) noexcept {
    return detail::guard(Code::Backend, name, [&] {
        if (options.threads < 0) detail::fail(Code::Input, "threads", "", "must be >= 0");
#ifdef EDGEADAPT_RUNNER_OPENVINO
        if (name == "openvino") {
            out = make_openvino(options);
            return;
        }
#endif
#ifdef EDGEADAPT_RUNNER_TENSORRT
        if (name == "tensorrt") {
            out = make_tensorrt(options);
            return;
        }
#endif
        if (name == "openvino" || name == "tensorrt")
            detail::fail(Code::Unavailable, name, "",
                         "this build of the runner was compiled without the " + name +
                             " backend (its CMake package was not found)");
        detail::fail(Code::Input, "backend", "",
                     "unknown backend '" + name + "' (openvino or tensorrt)");
    });
}

}  // namespace edgeadapt::runner
