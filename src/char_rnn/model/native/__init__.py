"""The compiled time loops of the fused CPU GRU and LSTM (cells.cpp).

They are built on first use with PyTorch's extension builder and the machine's C++
compiler, for this machine's CPU (-march=native), and cached (in $TORCH_EXTENSIONS_DIR, by
default ~/.cache/torch_extensions): the first run on a machine pays about a minute, later
ones load in a moment. Where they cannot be built (no compiler, say) the fused layers fall
back to their PyTorch loops, which compute the same thing more slowly; CHAR_RNN_NATIVE=0
asks for that fallback explicitly, and CHAR_RNN_PACKED_GEMM=0 keeps the compiled loops but
runs their recurrent GEMMs through at::mm instead of oneDNN's reordered weights (to compare).

The module is built with OpenMP, as PyTorch is: its gate loops split a step's rows among
PyTorch's own intra-op threads (the process's one libgomp), following torch.set_num_threads.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import platform
import shutil
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import torch  # noqa: F401  (loaded first: _openmp_flags reads which OpenMP runtime it brought)

SOURCE = Path(__file__).with_name("cells.cpp")
# -fno-trapping-math lets the compiler turn the clamps in fast_exp into selects: without it,
# on CPUs without AVX-512's masked compares (AVX2 laptops), the forward loops stayed scalar
# and took as long as the step's GEMMs. It changes no value, only which traps may be lost.
# -mprefer-vector-width=512 (x86 only): on AVX-512 CPUs gcc otherwise keeps to 256-bit
# vectors, and the gate loops ran 10 to 20 % slower so.
_WIDE = ["-mprefer-vector-width=512"] if platform.machine().lower() in ("x86_64", "amd64") else []


def _openmp_flags() -> list[str]:
    """-fopenmp where this process's PyTorch runs on GNU libgomp (PyPI's Linux wheels): the
    module then links the same runtime and its gate loops share PyTorch's threads, following
    torch.set_num_threads. With another runtime (Intel's, LLVM's) a second pool of threads
    would ignore that setting, so the loops run on one thread instead."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return ["-fopenmp-simd"]
    return ["-fopenmp"] if "libgomp" in maps else ["-fopenmp-simd"]


_OPENMP = _openmp_flags()
FLAGS = ["-O3", "-march=native", *_WIDE, "-fno-trapping-math", *_OPENMP]


def cpu_identity() -> str:
    """What the build depends on besides its source: -march=native code runs only on CPUs
    with the same features, so a cache shared between machines keeps one build per kind."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    except OSError:
        wanted = []
    return "\n".join([platform.machine(), platform.processor(), *wanted])


def _ensure_ninja_on_path() -> None:
    """The builder runs `ninja`; the PyPI wheel's copy serves where the system has none."""
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def wanted() -> bool:
    """Whether the compiled loops are to be used at all here."""
    return os.environ.get("CHAR_RNN_NATIVE", "1") != "0" and sys.platform != "win32"


@functools.cache
def build_name() -> str:
    """The name of this source's build for this CPU and flags."""
    # The source's path is part of the key: the builder rebuilds whenever the path it compiles
    # changes, so two installs sharing one cache would otherwise rebuild each other's build.
    identity = [" ".join(FLAGS), cpu_identity(), str(SOURCE.resolve())]
    key = hashlib.sha256(SOURCE.read_bytes() + "\n".join(identity).encode())
    return f"char_rnn_cells_{key.hexdigest()[:16]}"


def needs_build() -> bool:
    """True where the first call of `kernels()` in this process will compile (about half a
    minute) rather than load a build from the cache."""
    if not wanted() or kernels.cache_info().currsize:
        return False
    folder = _build_folder()
    return folder is None or not any(folder.glob(f"{build_name()}*.so"))  # unknown: "may build"


def _build_folder() -> Path | None:
    """Where PyTorch's builder keeps this build, or None where its layout is not as known."""
    try:
        from torch.utils import cpp_extension

        return Path(cpp_extension._get_build_directory(build_name(), verbose=False))
    except Exception:  # the builder's layout is its own
        return None


BUILDER_LOCK = "lock"  # the file PyTorch's builder holds while it builds or checks a build


@contextlib.contextmanager
def _only_loader(folder: Path | None) -> Iterator[None]:
    """Load with no other char-rnn process loading the same build. The builder's own lock is
    a file that only its holder removes: a process killed while holding it (a few
    milliseconds of every load, half a minute of a build) left it behind, and every later
    load waited for it forever. This lock is the kernel's, released when its process dies;
    holding it, a builder's lock file can only be such a leftover, and goes."""
    import fcntl  # POSIX, as the compiled loops are (wanted())

    if folder is None:  # the builder's layout is not as known: load as it does
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "char_rnn.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        (folder / BUILDER_LOCK).unlink(missing_ok=True)
        yield


@functools.cache
def kernels() -> ModuleType | None:
    """The compiled module, or None where it cannot be had."""
    if not wanted():
        return None
    try:
        from torch.utils import cpp_extension

        _ensure_ninja_on_path()
        with _only_loader(_build_folder()):
            return cpp_extension.load(
                name=build_name(),
                sources=[str(SOURCE)],
                extra_cflags=FLAGS,
                extra_ldflags=[flag for flag in _OPENMP if flag == "-fopenmp"],
                verbose=False,
            )
    except Exception as error:  # a missing compiler or ninja, a failed build: all mean "fall back"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        warnings.warn(
            f"fused CPU kernels unavailable ({reason}); using the slower PyTorch loops", stacklevel=2
        )
        return None
