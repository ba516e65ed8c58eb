"""Build (once, into a cache folder) and load the CPU kernels of ``class_kernels.c`` with ctypes.

The kernels are optional: :func:`load_class_kernels` returns None, and the loss uses its
PyTorch path, wherever they cannot be had: not an x86-64 CPU with AVX2 and FMA, not Linux or
macOS, no C compiler, a compiler error, an unwritable cache, or ``PLC_MONAI_NATIVE=0``. The reason
is kept (:func:`class_kernels_status`) and logged once as a warning when a build fails.

The library is compiled with the system C compiler (``$CC``, else the one Python was built with,
else ``cc``), no PyTorch headers, in well under a second, and cached under
``$PLC_MONAI_NATIVE_CACHE`` (default ``$XDG_CACHE_HOME/plc_monai/native`` or
``~/.cache/plc_monai/native``) in a file named by a hash of the source, the compiler command and
the flags; a changed source or compiler gets a new file. The file is written under a temporary
name and renamed, so concurrent processes (DDP ranks) never load a half-written library.
This is the same pattern as MONAI's own just-in-time C++ extensions (``monai._extensions``), without
their minutes of compiling against the PyTorch headers.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

__all__ = ["SOURCE", "ClassKernels", "load_class_kernels", "class_kernels_status", "reset_class_kernels"]

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("class_kernels.c")
# no -mavx2: the source enables AVX2/FMA for its kernels only, so that the CPU check runs on any x86-64
_FLAGS = ["-O3", "-fPIC", "-shared"]
# tried in order: with OpenMP (PyTorch's worker threads), then serial for a compiler without it (Apple clang)
_THREADING = (["-fopenmp"], [])
_COMPILE_TIMEOUT_S = 120

_lock = threading.Lock()
_state: tuple[ClassKernels | None, str] | None = None


class ClassKernels:
    """The loaded library, with the argument types of its entry points declared."""

    def __init__(self, path: Path) -> None:
        self.path = path
        lib = ctypes.CDLL(str(path))
        ptr, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        lib.plc_cpu_supported.argtypes, lib.plc_cpu_supported.restype = [], c_int
        lib.plc_class_sums.argtypes = [ptr, ptr, i64, i64, i64, ptr, i64, ptr, c_int]
        lib.plc_class_fill.argtypes = [ptr, ptr, i64, i64, i64, i64, ptr, c_int]
        lib.plc_block_counts.argtypes = [ptr, i64, i64, ptr, i64, i64, ptr, c_int]
        for name in ("plc_class_sums", "plc_class_fill", "plc_block_counts"):
            getattr(lib, name).restype = None
        self.lib = lib

    def cpu_supported(self) -> bool:
        """Whether this CPU has AVX2 and FMA (asked of the library, whose check runs on any x86-64)."""
        return bool(self.lib.plc_cpu_supported())


def _cache_dir() -> Path:
    if os.environ.get("PLC_MONAI_NATIVE_CACHE"):
        return Path(os.environ["PLC_MONAI_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "plc_monai" / "native"


def _compiler() -> list[str] | None:
    """The C compiler command: ``$CC``, the one Python was built with, or ``cc``; None if none is found."""
    for candidate in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc"):
        if not candidate:
            continue
        words = shlex.split(candidate)
        if words and shutil.which(words[0]):
            return words
    return None


def _build(compiler: list[str], flags: list[str], directory: Path) -> Path:
    """Compile the source with ``flags`` into ``directory`` (atomically) unless that library is already there.

    Raises:
        RuntimeError: when the compiler fails (its last lines of output in the message).
        OSError: when the folder cannot be written.
    """
    source = SOURCE.read_bytes()
    key = hashlib.sha256(b"\0".join([source, " ".join(compiler).encode(), " ".join(flags).encode(),
                                     platform.machine().encode()])).hexdigest()[:16]
    target = directory / f"class_kernels_{key}.so"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=".class_kernels_", suffix=".so.tmp", dir=directory)
    os.close(handle)
    try:
        done = subprocess.run([*compiler, *flags, "-o", tmp, str(SOURCE)], capture_output=True, text=True,
                              timeout=_COMPILE_TIMEOUT_S)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"`{' '.join([*compiler, *flags])}` failed on {SOURCE} (exit {done.returncode}): "
                               + " | ".join(tail))
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load() -> tuple[ClassKernels | None, str]:
    if os.environ.get("PLC_MONAI_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "disabled by PLC_MONAI_NATIVE"
    machine = platform.machine().lower()
    if machine not in ("x86_64", "amd64") or not (sys.platform.startswith("linux") or sys.platform == "darwin"):
        return None, f"no kernels for {sys.platform}/{machine} (x86-64 Linux or macOS only)"
    compiler = _compiler()
    if compiler is None:
        return None, "no C compiler found ($CC, Python's CC or cc)"
    errors = []
    for threading_flags in _THREADING:
        try:
            path = _build(compiler, [*_FLAGS, *threading_flags], _cache_dir())
            kernels = ClassKernels(path)
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            errors.append(str(err))
            continue
        if not kernels.cpu_supported():
            return None, "this CPU lacks AVX2 or FMA"
        how = "OpenMP" if threading_flags else "serial (the compiler has no OpenMP)"
        logger.info("plc_monai CPU kernels loaded from %s (%s)", path, how)
        return kernels, f"loaded from {path} ({how})"
    logger.warning("plc_monai CPU kernels unavailable, the loss uses its PyTorch path: %s", errors[-1])
    return None, "build or load failed: " + "; ".join(errors)


def load_class_kernels() -> ClassKernels | None:
    """The kernels, built and loaded on first use; None where they cannot be had (see the module doc)."""
    global _state
    with _lock:
        if _state is None:
            _state = _load()
        return _state[0]


def class_kernels_status() -> dict:
    """``{"available": bool, "reason": str}`` after trying to load the kernels."""
    kernels = load_class_kernels()
    assert _state is not None
    return {"available": kernels is not None, "reason": _state[1]}


def reset_class_kernels() -> None:
    """Forget the loaded state, so that the next use tries again (after changing ``PLC_MONAI_NATIVE``)."""
    global _state
    with _lock:
        _state = None
