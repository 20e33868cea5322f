"""The C++ side: ctest on a standalone build of cpp/ (the kernel, the cascade engine, the
C ABI), and a native app built against the installed package with
find_package(edgeadapt CONFIG), the engine's header included."""

import shutil
import subprocess
from pathlib import Path

import pytest

from edgeadapt.kernel import cmake_dir

ROOT = Path(__file__).resolve().parents[1]
CMAKE = shutil.which("cmake")
CTEST = shutil.which("ctest")
CXX = shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")
GENERATOR = ["-G", "Ninja"] if shutil.which("ninja") else []

pytestmark = pytest.mark.skipif(
    None in (CMAKE, CTEST, CXX), reason="needs cmake, ctest and a C++ compiler on PATH"
)

APP = r"""
#include <cstdio>
#include <edgeadapt/cascade.hpp>
#include <edgeadapt/edgeadapt.h>

int main() {
    const float logits[2][3] = {{0.f, 9.f, 1.f}, {1.f, 1.f, 1.f}};
    std::int64_t pred[2], idx[2], k = 0;
    float conf[2];
    std::uint8_t mask[2];
    if (edgeadapt::decide(&logits[0][0], 2, 3, edgeadapt::Measure::MaxProb, 0.5, pred, conf,
                          mask, idx, &k) != edgeadapt::Status::Ok) return 1;
    edgeadapt_policy* policy = nullptr;
    const double th[1] = {0.9}, cost[2] = {1.0, 2.0};
    if (edgeadapt_policy_create(th, 1, cost, 2, 0.2, EDGEADAPT_MAXPROB, nullptr, 1, &policy)) return 2;
    edgeadapt_action action;
    if (edgeadapt_policy_next(policy, 0, conf[1], 0.5, 2.0, &action)) return 3;
    edgeadapt_policy_destroy(policy);
    std::printf("pred=%lld continue=%lld action=%d version=%s\n", (long long)pred[0],
                (long long)k, (int)action, edgeadapt_version());
    return 0;
}
"""

APP_CMAKE = """
cmake_minimum_required(VERSION 3.18)
project(app LANGUAGES CXX)
find_package(edgeadapt CONFIG REQUIRED)
add_executable(app main.cpp)
target_link_libraries(app PRIVATE edgeadapt::kernel edgeadapt::c)
"""


def _run(*cmd: str | Path | None) -> str:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, check=False)
    assert done.returncode == 0, f"{cmd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_ctest_passes(tmp_path):
    build = tmp_path / "build"
    _run(CMAKE, "-S", ROOT / "cpp", "-B", build, *GENERATOR, "-DCMAKE_BUILD_TYPE=Release")
    _run(CMAKE, "--build", build, "--parallel", "2")
    out = _run(CTEST, "--test-dir", build, "--output-on-failure")
    assert "100% tests passed" in out


@pytest.mark.slow
def test_native_app_finds_installed_package(tmp_path):
    (tmp_path / "main.cpp").write_text(APP)
    (tmp_path / "CMakeLists.txt").write_text(APP_CMAKE)
    build = tmp_path / "build"
    _run(CMAKE, "-S", tmp_path, "-B", build, *GENERATOR, f"-Dedgeadapt_DIR={cmake_dir()}")
    _run(CMAKE, "--build", build)
    out = _run(build / "app")
    assert out.strip() == f"pred=1 continue=1 action=2 version={_kernel_version()}"


def _kernel_version() -> str:
    from edgeadapt import _kernel

    return _kernel.version()
