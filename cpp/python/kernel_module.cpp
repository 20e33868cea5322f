// pybind11 module edgeadapt._kernel: the Python face of the decision kernel.
#include <pybind11/pybind11.h>

namespace py = pybind11;

PYBIND11_MODULE(_kernel, m) {
    m.doc() = "edgeadapt decision kernel (C++)";
    m.def("version", [] { return std::string(EDGEADAPT_VERSION); },
          "Version of the compiled kernel (matches the package version).");
}
