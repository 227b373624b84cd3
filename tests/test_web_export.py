"""`char-rnn export --format web`: the folder, served by `python -m http.server`, generates in
a real headless Chromium with nothing fetched from elsewhere; its greedy text is the onnx
engine's; its sampler means what Python's does; bad input is one line."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import torch
from conftest import run_cli
from test_browser import CHROMEDRIVER, CHROMIUM, chromium
from test_server import shared_tiny_run

from char_rnn import CharRNN, CharRNNError
from char_rnn.generate.sampling import filter_logits
from char_rnn.onnx.export import export
from char_rnn.web.export import RUNTIME, STATIC, runtime_files

needs_runtime = pytest.mark.skipif(
    not (RUNTIME / "ort.wasm.min.js").is_file(),
    reason="onnxruntime-web is not vendored: python scripts/vendor_web_runtime.py",
)
needs_chromium = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER),
    reason="needs Debian's chromium and chromedriver: apt-get install chromium chromium-driver",
)
NODE = shutil.which("node")


@pytest.fixture(scope="module")
def run_with_onnx(tmp_path_factory, shakespeare_text) -> Path:
    """The shared tiny run, copied, with model.onnx for `generate --engine onnx`."""
    shared = shared_tiny_run(tmp_path_factory, shakespeare_text)
    run = Path(shutil.copytree(shared, tmp_path_factory.mktemp("web") / "run"))
    export(run)
    return run


@contextmanager
def static_server(folder: Path):
    """`python -m http.server` on 127.0.0.1 serving `folder`; yields its base URL."""
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory", str(folder)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        line = process.stdout.readline()
        port = re.search(r"port (\d+)", line)
        assert port, f"http.server did not start: {line!r}"
        yield f"http://127.0.0.1:{port.group(1)}/"
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def browser(tmp_path):
    with chromium(tmp_path, network_log=True) as driver:
        yield driver


def requested_urls(browser, page: str) -> list[str]:
    """Every URL that documents loaded from `page`'s origin asked for, from Chromium's network
    log (DevTools events); the browser's own pages (its new-tab page) are left out."""
    origin = urlsplit(page)[:2]
    urls = []
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            params = message["params"]
            if urlsplit(params.get("documentURL", ""))[:2] == origin:
                urls.append(params["request"]["url"])
    return urls


@needs_runtime
@needs_chromium
def test_the_page_generates_the_onnx_engines_greedy_text_and_fetches_only_its_folder(
    run_with_onnx, tmp_path, browser
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    site = tmp_path / "site"
    done = run_cli("export", run_with_onnx, "--format", "web", "--out", site)
    assert done.returncode == 0, done.stderr
    size = re.fullmatch(rf"wrote {re.escape(str(site))} \((\d+\.\d) MB\); serve it with: .*\n", done.stdout)
    assert size, done.stdout
    on_disk = sum(f.stat().st_size for f in site.rglob("*") if f.is_file())
    assert float(size.group(1)) == round(on_disk / 1e6, 1)

    def element(element_id: str):
        return browser.find_element(By.ID, element_id)

    def fill(element_id: str, value: str) -> None:
        element(element_id).clear()
        if value:
            element(element_id).send_keys(value)

    def page_text(**fields: str) -> str:
        for name, value in fields.items():
            fill(name, value)
        element("generate").click()
        WebDriverWait(browser, 60).until(
            lambda _: re.match(r"(done|stopped)|.*error", element("status").text)
        )
        assert element("status").get_attribute("class") != "error", element("status").text
        return element("prompt").get_attribute("textContent") + element("generated").get_attribute(
            "textContent"
        )

    def cli_text(*flags: str) -> str:
        done = run_cli("generate", run_with_onnx, "--temperature", "0", "--engine", "onnx", *flags)
        assert done.returncode == 0, done.stderr
        return done.stdout.removesuffix("\n")

    with static_server(site) as url:
        browser.get(url)
        assert browser.title == "char-rnn"
        WebDriverWait(browser, 120).until(
            lambda _: "running in this browser" in element("model").text or "error" in element("status").text
        )
        assert element("status").text == "ready", element("status").text

        # The CLI's defaults: the start is a newline (the page's empty start).
        greedy = page_text(start="", length="200", temperature="0", seed="", stop_at="")
        assert element("status").text == "done: 200 characters"
        expected = cli_text("--length", "200")
        assert len(greedy) == 201 and greedy[:200] == expected[:200] and greedy == expected
        onnx = CharRNN.load(run_with_onnx, engine="onnx")  # what `char-rnn generate` prints
        assert page_text(start="ROMEO:") == onnx.generate("ROMEO:", 200, temperature=0)

        # A stop string ends the text right after its first occurrence, which it keeps.
        stop = expected[41:44]
        stopped = page_text(start="", stop_at=stop)
        assert stopped == expected[: expected.index(stop, 1) + len(stop)]
        assert element("status").text.startswith("done (stop string)")

        # Sampling: one seed, one text; another seed, another text.
        sampled = {
            seed: page_text(temperature="1", top_k="20", top_p="0.95", seed=seed, stop_at="")
            for seed in "117"
        }
        assert sampled["1"] != sampled["7"] and len(sampled["1"]) == 201
        assert page_text(seed="1") == sampled["1"]

        # A start the model cannot read is one message on the page.
        page_text_error = fill("start", "ROMEO\u03a9")
        element("generate").click()
        WebDriverWait(browser, 30).until(lambda _: "does not know" in element("status").text)
        assert page_text_error is None and element("status").get_attribute("class") == "error"

        urls = requested_urls(browser, url)
    origin = urlsplit(url)
    outside = [u for u in urls if urlsplit(u)[:2] != origin[:2] and not u.startswith(("data:", "blob:"))]
    assert not outside, outside
    fetched = {urlsplit(u).path for u in urls}
    assert {"/", "/model.onnx", "/model.json", "/runtime/ort-wasm-simd-threaded.wasm"} <= fetched
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


@pytest.mark.skipif(NODE is None, reason="needs node to run the page's sampler")
def test_the_pages_sampler_filters_as_pythons_does(tmp_path):
    """top-k and top-p keep the same candidates in sampler.js as in sampling.py."""
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(40, 30, generator=generator) * 3).tolist()
    logits[0] = [1.0] * 30  # ties everywhere
    cases = [
        dict(temperature=t, topK=k, topP=p)
        for t in (0.5, 1.3)
        for k in (None, 1, 7)
        for p in (None, 0.3, 0.9)
    ]
    module = tmp_path / "sampler.mjs"
    shutil.copy(STATIC / "sampler.js", module)
    script = f"""
import {{ filterLogits, parseStops, argmax }} from {json.dumps(module.as_uri())};
const logits = {json.dumps(logits)};
const cases = {json.dumps(cases)};
const kept = cases.map((c) => logits.map((row) => Array.from(filterLogits(row, c), (x) => x !== -Infinity)));
console.log(JSON.stringify({{
  kept, argmax: logits.map(argmax),
  stops: [parseStops("a|b"), parseStops("\\\\n\\\\n|x\\\\|y||"), parseStops("")],
}}));
"""
    done = subprocess.run(
        [NODE, "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    rows = torch.tensor(logits)
    for case, kept in zip(cases, result["kept"], strict=True):
        expected = (
            filter_logits(rows, case["temperature"], case["topK"], case["topP"]) != float("-inf")
        ).tolist()
        if case["topP"] is not None:  # which of equal candidates top-p keeps is torch.sort's choice
            kept, expected = kept[1:], expected[1:]
        assert kept == expected, case
    assert result["argmax"] == rows.argmax(dim=-1).tolist()
    assert result["stops"] == [["a", "b"], ["\n\n", "x|y"], []]


def test_bad_input_is_refused_before_anything_is_written(run_with_onnx, tmp_path):
    """A folder that is not a run, a run with no weights yet, a non-empty folder without
    --force and the run folder itself are refused, and nothing is written."""
    empty_run = tmp_path / "fresh"
    empty_run.mkdir()
    shutil.copy(run_with_onnx / "config.json", empty_run / "config.json")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    cases = [
        ((tmp_path / "nothing", tmp_path / "a", False), "does not exist"),
        ((empty_run, tmp_path / "b", False), "this run has no latest weights yet"),
        (
            (run_with_onnx, taken, False),
            "exists and is not empty; choose another folder, or replace it with --force",
        ),
        ((run_with_onnx, run_with_onnx, False), "holds the run folder itself"),
        ((run_with_onnx, run_with_onnx.parent, True), "holds the run folder itself"),
    ]
    for (run, out, force), message in cases:
        with pytest.raises(CharRNNError, match=re.escape(message)):
            export(run, format="web", out=out, force=force)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh", "taken"]
    assert [p.name for p in taken.iterdir()] == ["notes.txt"]
    assert (run_with_onnx / "model.safetensors").is_file()

    done = run_cli("export", run_with_onnx, "--format", "web", "--out", taken)
    assert done.returncode == 1 and done.stdout == ""
    refusal = f"{taken} exists and is not empty; choose another folder, or replace it with --force"
    assert done.stderr == f"char-rnn: error: {refusal}\n"


@needs_runtime
def test_force_replaces_a_folder_and_a_missing_runtime_is_one_line(run_with_onnx, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "old.txt").write_text("old")
    assert export(run_with_onnx, format="web", out=taken, force=True) == taken
    assert not (taken / "old.txt").exists() and (taken / "index.html").is_file()
    assert {f.name for f in (taken / "runtime").iterdir()} == {f.name for f in runtime_files()}
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]  # no staging folder left behind

    # An installation without the runtime files: the package copied without them.
    package = tmp_path / "package"
    shutil.copytree(Path(STATIC).parents[1], package / "char_rnn", ignore=shutil.ignore_patterns("runtime"))
    env = {"PYTHONPATH": str(package)}
    done = run_cli("export", run_with_onnx, "--format", "web", "--out", tmp_path / "site", env=env)
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert "lacks onnxruntime-web's files" in done.stderr
    assert "python scripts/vendor_web_runtime.py" in done.stderr
    assert not (tmp_path / "site").exists()
