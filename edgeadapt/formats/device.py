"""The device fingerprint a profile records: what was measured, where, in what state.

Everything is read from ``/proc`` and ``/sys`` where readable and left out where not
(containers, other OSes), so a fingerprint never fails. `device_id` is a short stable
name derived from the parts that do not change between runs (CPU model, core count,
OS, machine, Jetson board): it names the default profile file of a bundle.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from pathlib import Path
from typing import Any

__all__ = ["clock_state", "cpu_model", "device_id", "fingerprint", "load_average", "temperatures"]

_SYS_CPU = Path("/sys/devices/system/cpu")
_THERMAL = Path("/sys/class/thermal")


def _read(path: Path | str) -> str | None:
    """The stripped text of a small system file, or None where it is absent or unreadable."""
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace").strip("\x00 \n\t")
    except OSError:
        return None


def cpu_model() -> str:
    """The CPU model name (``model name`` / ``Model`` / ``Hardware`` of /proc/cpuinfo)."""
    text = _read("/proc/cpuinfo") or ""
    for key in ("model name", "Model", "Hardware"):
        m = re.search(rf"^{re.escape(key)}\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine()


def _cores() -> dict[str, int]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    logical = os.cpu_count() or 1
    return {"logical": logical, "usable": usable if usable is not None else logical}


def clock_state() -> dict[str, Any]:
    """Governor and current/min/max frequency (MHz) of cpu0, where readable."""
    base = _SYS_CPU / "cpu0" / "cpufreq"
    out: dict[str, Any] = {}
    governor = _read(base / "scaling_governor")
    if governor:
        out["governor"] = governor
    for key, name in (
        ("cur_mhz", "scaling_cur_freq"),
        ("min_mhz", "scaling_min_freq"),
        ("max_mhz", "scaling_max_freq"),
    ):
        value = _read(base / name)
        if value and value.isdigit():
            out[key] = int(value) / 1000.0
    return out


def temperatures() -> dict[str, float]:
    """Thermal zone temperatures in degrees Celsius (``{zone type: temp}``), where readable."""
    temps: dict[str, float] = {}
    if not _THERMAL.is_dir():
        return temps
    for zone in sorted(_THERMAL.glob("thermal_zone*")):
        raw = _read(zone / "temp")
        if raw is None or not raw.lstrip("-").isdigit():
            continue
        name = _read(zone / "type") or zone.name
        if name in temps:
            name = f"{name}:{zone.name}"
        temps[name] = int(raw) / 1000.0
    return temps


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (runnable threads), where readable: on a
    machine shared with other work they say how busy it was around a measurement."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _jetson() -> dict[str, Any]:
    """Board model, nvpmodel mode and jetson_clocks state on NVIDIA Jetson, where readable."""
    out: dict[str, Any] = {}
    model = _read("/proc/device-tree/model")
    if model and ("jetson" in model.lower() or "nvidia" in model.lower()):
        out["board"] = model
    release = _read("/etc/nv_tegra_release")
    if release:
        out["l4t"] = release.splitlines()[0]
    status = _read("/var/lib/nvpmodel/status")
    if status:
        m = re.search(r"pmode:\s*(\S+)", status)
        out["nvpmodel"] = m.group(1) if m else status
    if out:
        gpu_max = _read("/sys/devices/gpu.0/devfreq/17000000.gv11b/max_freq") or _read(
            "/sys/devices/gpu.0/devfreq/57000000.gpu/max_freq"
        )
        if gpu_max and gpu_max.isdigit():
            out["gpu_max_mhz"] = int(gpu_max) / 1e6
    return out


def _stable_parts() -> dict[str, Any]:
    return {
        "cpu": cpu_model(),
        "cores": _cores()["logical"],
        "machine": platform.machine(),
        "os": platform.system(),
        "board": _jetson().get("board"),
    }


def device_id() -> str:
    """A short stable name for this device: ``<machine>-<cpu words>-<hash>``."""
    parts = _stable_parts()
    words = re.sub(r"\(r\)|\(tm\)|cpu|@.*$", "", str(parts["cpu"]).lower())
    slug = "-".join(re.findall(r"[a-z0-9]+", words)[:4]) or "cpu"
    digest = hashlib.sha256(repr(sorted(parts.items())).encode()).hexdigest()[:8]
    return f"{parts['machine'].lower() or 'unknown'}-{slug}-{digest}"


def fingerprint(runtime: dict[str, Any] | None = None) -> dict[str, Any]:
    """The device fingerprint: id, CPU, cores, clocks, OS/kernel, Jetson facts, the
    backend's own `describe()` (version, threads, precision) and the current temperatures."""
    out: dict[str, Any] = {
        "device_id": device_id(),
        "cpu": cpu_model(),
        "cores": _cores(),
        "machine": platform.machine(),
        "os": platform.system(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "clock": clock_state(),
        "temperatures": temperatures(),
    }
    jetson = _jetson()
    if jetson:
        out["jetson"] = jetson
    if runtime is not None:
        out["runtime"] = runtime
    return out
