"""Bad inputs through the real command line.

Every case runs `python -m char_rnn ...` and asserts what a user is promised: the exit
status (2 for a usage error, 1 otherwise), exactly one line on stderr and no traceback, and
every file that existed before the command byte-identical after it. Pickled payloads in a run
folder are refused without running a line of them.
"""

from __future__ import annotations

import codecs
import contextlib
import hashlib
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import TINY_FLAGS, run_cli

from char_rnn.run.folder import RunFolder

SRC = Path(__file__).resolve().parents[1] / "src" / "char_rnn"


def _snapshot(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _assert_one_clean_line(result: subprocess.CompletedProcess, status: int, pattern: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert re.search(pattern, lines[0], re.IGNORECASE), lines[0]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, shakespeare_text) -> Path:
    """A trained run, copies of it with damaged files, and corpora good and bad."""
    root = tmp_path_factory.mktemp("bad-inputs")
    corpus = root / "corpus.txt"
    corpus.write_text(shakespeare_text[:5_000], encoding="utf-8")
    trained = run_cli("train", "--data", corpus, "--out", root / "run", *TINY_FLAGS, "--max-steps", "4",
                      "--quiet")  # fmt: skip
    assert trained.returncode == 0, trained.stderr
    (root / "empty.txt").write_bytes(b"")
    (root / "short.txt").write_text("to be", encoding="utf-8")
    (root / "binary.bin").write_bytes(bytes(range(256)) * 8)
    (root / "latin1.txt").write_bytes("First Citizen: café\n".encode("latin-1") * 50)
    (root / "no_text").mkdir()
    (root / "no_text" / ".hidden").write_text("not read", encoding="utf-8")
    (root / "a_file").write_text("I am not a folder", encoding="utf-8")
    (root / "other.txt").write_text(shakespeare_text[-5_000:] + "Ωμέγα", encoding="utf-8")
    for name in ("missing", "truncated", "corrupted", "newer", "not_json", "no_best", "bad_shape"):
        shutil.copytree(root / "run", root / f"run_{name}")
    (root / "run_missing" / "model.safetensors").unlink()
    weights = (root / "run" / "model.safetensors").read_bytes()
    (root / "run_truncated" / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    corrupted = bytearray(weights)
    corrupted[8:40] = b"\xff" * 32  # the JSON header
    (root / "run_corrupted" / "model.safetensors").write_bytes(bytes(corrupted))
    config = json.loads((root / "run" / "config.json").read_text(encoding="utf-8"))
    (root / "run_newer" / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    (root / "run_not_json" / "config.json").write_text("{ this is not json")
    (root / "run_no_best" / "best.safetensors").unlink()
    config["model"]["units"] = 1000
    (root / "run_bad_shape" / "config.json").write_text(json.dumps(config))
    return root


def _train(ws: Path, *args: object) -> tuple:
    return ("train", *TINY_FLAGS, "--max-steps", "2", "--quiet", *args)


# (id, arguments given the workspace, exit status, pattern the one stderr line must match)
CASES = [
    ("empty corpus", lambda ws: _train(ws, "--data", ws / "empty.txt", "--out", ws / "o1"), 1, "empty"),
    ("corpus shorter than a sequence", lambda ws: _train(ws, "--data", ws / "short.txt", "--out", ws / "o2"),
     1, "short|too few|characters"),
    ("binary file", lambda ws: _train(ws, "--data", ws / "binary.bin", "--out", ws / "o3"), 1, "binary"),
    ("not UTF-8", lambda ws: _train(ws, "--data", ws / "latin1.txt", "--out", ws / "o4"), 1,
     r"byte offset \d+.*--encoding"),
    ("folder without text", lambda ws: _train(ws, "--data", ws / "no_text", "--out", ws / "o5"), 1,
     "no text files"),
    ("missing corpus", lambda ws: _train(ws, "--data", ws / "nowhere.txt", "--out", ws / "o6"), 1,
     "does not exist"),
    ("output path is a file", lambda ws: _train(ws, "--data", ws / "corpus.txt", "--out", ws / "a_file"), 1,
     "not a folder"),
    ("unknown encoding", lambda ws: _train(ws, "--data", ws / "corpus.txt", "--out", ws / "o7",
                                           "--encoding", "klingon"), 2, "unknown encoding"),
    ("batch size zero", lambda ws: _train(ws, "--data", ws / "corpus.txt", "--batch-size", "0"), 2,
     "batch_size"),
    ("negative sequence length", lambda ws: _train(ws, "--data", ws / "corpus.txt", "--seq-length", "-5"),
     2, "seq_length"),
    ("NaN learning rate", lambda ws: _train(ws, "--lr", "nan"), 2, "lr must be a finite"),
    ("zero learning rate", lambda ws: _train(ws, "--lr", "0"), 2, "lr must be positive"),
    ("negative units", lambda ws: _train(ws, "--units", "-1"), 2, "units"),
    ("dropout of 1.5", lambda ws: _train(ws, "--dropout", "1.5"), 2, "dropout"),
    ("weight average decay of one", lambda ws: _train(ws, "--ema-decay", "1"), 2, "ema_decay must be in"),
    ("weight drop of 1", lambda ws: _train(ws, "--weight-drop", "1"), 2, "weight_drop"),
    ("NaN grad clip", lambda ws: _train(ws, "--grad-clip", "nan"), 2, "grad_clip"),
    ("zero epochs", lambda ws: _train(ws, "--epochs", "0"), 2, "epochs"),
    ("validation fraction above one", lambda ws: _train(ws, "--val-fraction", "1.5"), 2, "val_fraction"),
    ("unknown cell", lambda ws: _train(ws, "--cell", "transformer"), 2, "invalid choice"),
    ("keep-last zero", lambda ws: _train(ws, "--keep-last", "0"), 2, "keep_last"),
    ("size that is not a number", lambda ws: _train(ws, "--units", "many"), 2, "invalid int"),
    ("existing run without --resume", lambda ws: _train(ws, "--data", ws / "corpus.txt", "--out", ws / "run"),
     1, "already holds a run.*--resume"),
    ("resume with a different corpus", lambda ws: _train(ws, "--data", ws / "other.txt", "--out", ws / "run",
                                                         "--resume"), 1, "vocabulary mismatch"),
    ("resume with another model shape", lambda ws: _train(ws, "--out", ws / "run", "--resume", "--units",
                                                          "64"), 2, "keeps its shape"),
    ("resume with a config that does not fit", lambda ws: ("train", "--out", ws / "run_bad_shape", "--resume",
                                                           "--max-steps", "8"), 1, "shape"),
    ("resume with a preset of another shape",
     lambda ws: ("train", "--out", ws / "run", "--resume", "--preset", "tutorial"), 2, "keeps its shape"),
    ("negative temperature", lambda ws: ("generate", ws / "run", "--temperature", "-1"), 2, "temperature"),
    ("NaN temperature", lambda ws: ("generate", ws / "run", "--temperature", "nan"), 2, "temperature"),
    ("negative length", lambda ws: ("generate", ws / "run", "--length", "-5"), 2, "length"),
    ("top-p zero", lambda ws: ("generate", ws / "run", "--top-p", "0"), 2, "top_p"),
    ("top-p above one", lambda ws: ("generate", ws / "run", "--top-p", "1.5"), 2, "top_p"),
    ("negative top-k", lambda ws: ("generate", ws / "run", "--top-k", "-3"), 2, "top_k"),
    ("zero samples", lambda ws: ("generate", ws / "run", "--num-samples", "0"), 2, "num_samples"),
    ("unknown character in the start", lambda ws: ("generate", ws / "run", "--start", "Ωmega"), 1,
     "not in this model's vocabulary"),
    ("control character in the start", lambda ws: ("generate", ws / "run", "--start", "a\x07b"), 1,
     "U\\+0007"),
    ("missing weights", lambda ws: ("generate", ws / "run_missing"), 1, "missing"),
    ("truncated weights", lambda ws: ("generate", ws / "run_truncated"), 1, "not a readable safetensors"),
    ("corrupted weights", lambda ws: ("eval", ws / "run_corrupted"), 1, "not a readable safetensors"),
    ("config from a newer version", lambda ws: ("generate", ws / "run_newer"), 1, "newer char-rnn"),
    ("config that is not JSON", lambda ws: ("eval", ws / "run_not_json"), 1, "not valid JSON"),
    ("no best weights yet", lambda ws: ("generate", ws / "run_no_best", "--checkpoint", "best"), 1,
     "no best weights"),
    ("run folder that does not exist", lambda ws: ("eval", ws / "nothing"), 1, "does not exist"),
    ("eval on a binary file", lambda ws: ("eval", ws / "run", "--data", ws / "binary.bin"), 1, "binary"),
    ("eval on text outside the vocabulary", lambda ws: ("eval", ws / "run", "--data", ws / "other.txt"), 1,
     "not in this model's vocabulary"),
    ("unknown command", lambda ws: ("fly",), 2, "invalid choice"),
]  # fmt: skip


# More of a kind already covered: run with `-m slow` to keep the default suite short.
SLOW_CASES = {"NaN grad clip", "negative units", "zero epochs", "validation fraction above one",
              "NaN temperature", "zero samples", "top-p above one", "unknown command"}  # fmt: skip


@pytest.mark.parametrize(
    ("make_args", "status", "pattern"),
    [pytest.param(*c[1:], id=c[0], marks=[pytest.mark.slow] if c[0] in SLOW_CASES else []) for c in CASES],
)
def test_bad_input_gives_one_line_and_changes_nothing(workspace, make_args, status, pattern):
    before = _snapshot(workspace)
    result = run_cli(*make_args(workspace), cwd=workspace)
    _assert_one_clean_line(result, status, pattern)
    after = _snapshot(workspace)
    assert {p: h for p, h in after.items() if p in before} == before


# ---- read-only folder and full disk: real mounts ---------------------------------------------


@contextlib.contextmanager
def _tmpfs(folder: Path, size: str, read_only: bool = False) -> Iterator[Path]:
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not permitted'})")
    try:
        (folder / "keep.txt").write_text("a file that was here before", encoding="utf-8")
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_output_folder(workspace, tmp_path):
    with _tmpfs(tmp_path / "ro", "1m", read_only=True) as folder:
        before = _snapshot(folder)
        result = run_cli(*_train(workspace, "--data", workspace / "corpus.txt", "--out", folder / "run"))
        _assert_one_clean_line(result, 1, "cannot write to .*read-only")
        assert _snapshot(folder) == before


def test_full_disk(workspace, tmp_path):
    # 64 KiB holds the run config but not the first checkpoint.
    with _tmpfs(tmp_path / "full", "64k") as folder:
        before = _snapshot(folder)
        result = run_cli(*_train(workspace, "--data", workspace / "corpus.txt", "--out", folder / "run"))
        _assert_one_clean_line(result, 1, "no space left on device")
        assert {p: h for p, h in _snapshot(folder).items() if p in before} == before
        assert not list((folder / "run").rglob("*.tmp"))  # no half-written file left behind


# ---- pickles ----------------------------------------------------------------------------------


class _Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _pickle_into(path: Path, marker: Path) -> None:
    torch.save({"weights": _Payload(marker)}, path)


PICKLED = [
    ("config.json", [("generate", "{run}"), ("eval", "{run}"), ("train", "--out", "{run}", "--resume")]),
    ("model.safetensors", [("generate", "{run}"), ("eval", "{run}")]),
    ("best.safetensors", [("generate", "{run}", "--checkpoint", "best")]),
    ("checkpoint", [("train", "--out", "{run}", "--resume", "--max-steps", "8")]),
]


@pytest.mark.parametrize(("target", "commands"), PICKLED, ids=[p[0] for p in PICKLED])
def test_pickled_files_are_refused_and_never_run(workspace, tmp_path, target, commands):
    run = tmp_path / "run"
    shutil.copytree(workspace / "run", run)
    marker = tmp_path / "pwned"
    if target == "checkpoint":
        # The attacker rewrites the manifest too, so that the checkpoint looks complete.
        newest = RunFolder(run).latest_checkpoint()
        manifest = json.loads((newest / "manifest.json").read_text())
        for name in ("model.safetensors", "trainer.safetensors"):
            _pickle_into(newest / name, marker)
            manifest["files"][name] = hashlib.sha256((newest / name).read_bytes()).hexdigest()
        (newest / "manifest.json").write_text(json.dumps(manifest))
    else:
        _pickle_into(run / target, marker)
    for command in commands:
        result = run_cli(*(str(a).format(run=run) for a in command))
        _assert_one_clean_line(result, 1, "not valid JSON|not a readable safetensors")
        assert not marker.exists(), f"{' '.join(command)} ran code from a pickle"


def test_torch_load_is_never_used_without_weights_only():
    for path in SRC.rglob("*.py"):
        source = path.read_text(encoding="utf-8")
        assert "import pickle" not in source and "from pickle" not in source, path
        for call in re.finditer(r"torch\.load\((?:[^()]|\([^()]*\))*\)", source):
            assert "weights_only=True" in call.group(0), f"{path}: {call.group(0)}"


# ---- encodings --------------------------------------------------------------------------------


def test_a_utf8_byte_order_mark_is_dropped(tmp_path):
    from char_rnn.data.corpus import load_corpus

    path = tmp_path / "bom.txt"
    path.write_bytes(codecs.BOM_UTF8 + "café au lait\n".encode() * 20)
    corpus = load_corpus(str(path))
    assert "\ufeff" not in corpus.vocab.chars
    assert corpus.vocab.decode(corpus.ids[:4]) == "café"


def test_an_invalid_byte_is_reported_at_its_offset_in_the_file(tmp_path):
    from char_rnn.data.corpus import load_corpus
    from char_rnn.errors import CharRNNError

    path = tmp_path / "bad.txt"
    path.write_bytes(codecs.BOM_UTF8 + b"abc\xffdef")
    with pytest.raises(CharRNNError, match=r"byte offset 6 \(0xff\).*--encoding"):
        load_corpus(str(path))


def test_the_locale_encoding_is_never_used(workspace, tmp_path):
    corpus = tmp_path / "accents.txt"
    corpus.write_text("Où est la bibliothèque ? Ça va, déjà.\n" * 200, encoding="utf-8")
    result = run_cli(*_train(workspace, "--data", corpus, "--out", tmp_path / "run"),
                     env={"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "è" in json.loads((tmp_path / "run" / "config.json").read_text(encoding="utf-8"))["vocab"]
