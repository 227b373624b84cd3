"""`char-rnn export RUN --format web`: a folder that generates text in the browser.

    DIR/index.html, page.js, style.css   the page (style.css is the served page's own)
    DIR/sampler.js                       temperature, top-k, top-p, seed, stop strings, length
    DIR/model.onnx                       one generation step (onnx/export.py)
    DIR/model.json                       the vocabulary, the shape and the state's names
    DIR/runtime/                         onnxruntime-web's WebAssembly build, single-threaded

The runtime files come from npm's onnxruntime-web at the version pinned in runtime.json and
travel inside this package (scripts/vendor_web_runtime.py puts them there before a build),
so exporting needs neither npm nor a network. The folder is built beside DIR and moved into
place whole, so a failed export leaves DIR as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from .. import __version__
from ..errors import CharRNNError
from ..onnx.export import export_onnx, state_names
from ..run.folder import ONNX_FILE, WEB_DIR, RunFolder

HERE = Path(__file__).resolve().parent
STATIC = HERE / "static"
RUNTIME = HERE / "runtime"
RUNTIME_MANIFEST = HERE / "runtime.json"
PAGE_STYLE = HERE.parent / "serve" / "static" / "style.css"
MODEL_JSON = "model.json"


def runtime_files() -> list[Path]:
    """onnxruntime-web's files in this installation, or an error that says how to get them."""
    manifest = json.loads(RUNTIME_MANIFEST.read_text(encoding="utf-8"))
    files = [RUNTIME / name for name in manifest["files"].values()]
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise CharRNNError(
            f"this installation of char-rnn lacks onnxruntime-web's files ({', '.join(missing)} in "
            f"{RUNTIME}); in a source checkout fetch them once with: python scripts/vendor_web_runtime.py"
        )
    return [*files, *(f for f in RUNTIME.iterdir() if f.suffix == ".txt")]


def folder_size(path: str | os.PathLike) -> int:
    """Bytes of all the files under `path`."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _check_target(target: Path, run: Path, force: bool) -> None:
    resolved, run_resolved = target.resolve(), run.resolve()
    if resolved == run_resolved or resolved in run_resolved.parents:
        raise CharRNNError(
            f"--out {target} holds the run folder itself; choose a folder such as {run / WEB_DIR}"
        )
    if target.exists() and not target.is_dir():
        raise CharRNNError(f"--out {target} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise CharRNNError(
            f"{target} exists and is not empty; choose another folder, or replace it with --force"
        )


def export_web(
    run: str | os.PathLike,
    *,
    which: str = "latest",
    out: str | os.PathLike | None = None,
    force: bool = False,
) -> Path:
    """Write the static page of the run's weights (`which`) into `out` (default RUN/web) and
    return its path. An existing, non-empty `out` is replaced only with `force`."""
    folder = RunFolder(run)
    saved = folder.open()
    folder.weights_path(which)  # a run with no weights yet is refused before anything is written
    runtime = runtime_files()
    target = Path(out) if out is not None else folder.path / WEB_DIR
    _check_target(target, folder.path, force)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    except OSError as error:
        raise CharRNNError(f"cannot write next to {target}: {error.strerror}") from None
    try:
        export_onnx(run, which=which, out=staging / ONNX_FILE)
        model = saved.model
        description = {
            "name": folder.path.resolve().name,
            "cell": model.cell,
            "layers": model.layers,
            "units": model.units,
            "state": state_names(model.cell),
            "vocab": list(saved.vocab.chars),
            "checkpoint": which,
            "char_rnn": __version__,
        }
        (staging / MODEL_JSON).write_text(json.dumps(description, ensure_ascii=False), encoding="utf-8")
        for page_file in STATIC.iterdir():
            shutil.copy2(page_file, staging / page_file.name)
        shutil.copy2(PAGE_STYLE, staging / PAGE_STYLE.name)
        (staging / "runtime").mkdir()
        for runtime_file in runtime:
            shutil.copy2(runtime_file, staging / "runtime" / runtime_file.name)
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the page from a server run by another user
        _replace(target, staging)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise CharRNNError(f"cannot write {target}: {error.strerror}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _replace(target: Path, staging: Path) -> None:
    """Move the finished folder to `target`; what stood there is removed only after the move."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.urandom(4).hex()}")
        os.replace(target, old)
    os.replace(staging, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
