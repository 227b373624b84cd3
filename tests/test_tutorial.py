"""docs/tutorial.ipynb runs from top to bottom in a real Jupyter kernel (nbclient), on a budget
of a few steps, and shows what a reader should see: a live progress bar with the loss and
chars/s, a line with the validation loss, the curves inline and generated text; and that
`progress=False` shows nothing."""

from __future__ import annotations

import json

import pytest
from conftest import REPO

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOK = REPO / "docs" / "tutorial.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


def outputs_of(cell) -> tuple[str, set[str]]:
    """A code cell's printed text (streams and text/plain) and the MIME types it displayed."""
    text, kinds = [], set()
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            text.append(output["text"])
        else:
            kinds |= set(output.get("data", {}))
            text.append(output.get("data", {}).get("text/plain", ""))
    return "".join(text), kinds


def test_the_notebook_is_kept_without_outputs():
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)
    assert "widgets" not in notebook.metadata


def test_the_tutorial_runs_and_shows_progress_curves_and_text(tmp_path, monkeypatch):
    monkeypatch.setenv("CHAR_RNN_TUTORIAL_STEPS", "3")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    # One step more with progress=False, in the same kernel: nothing is shown.
    silent = "CharRNN.train(out=RUN, resume=True, max_steps=6, progress=False);"
    notebook.cells.append(nbformat.v4.new_code_cell(silent))
    client = nbclient.NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # any cell that raises fails the test with its traceback
    nbformat.write(notebook, tmp_path / "executed.ipynb")

    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    train_cell = next(c for c in cells if "CharRNN.train(preset=" in c.source)
    printed, kinds = outputs_of(train_cell)
    assert WIDGET_VIEW in kinds  # tqdm's notebook bar
    bars = [
        model["state"].get("value", "")
        for model in notebook.metadata["widgets"][WIDGET_STATE]["state"].values()
        if model.get("model_name") == "HTMLModel"
    ]
    assert any("3/3" in bar and "loss=" in bar and "chars/s=" in bar for bar in bars), bars
    assert "step 3: loss" in printed and "step 3: validation loss" in printed, printed

    _, kinds = outputs_of(next(c for c in cells if c.source.startswith("model.plot()")))
    assert "image/png" in kinds

    generated, _ = outputs_of(next(c for c in cells if "for temperature in" in c.source))
    for temperature in ("0.0", "0.5", "1.0"):
        assert f"--- temperature {temperature} ---\nROMEO:" in generated
    resumed, _ = outputs_of(cells[-2])
    assert "before: 3 steps" in resumed and "after:  5 steps" in resumed and "QUEEN:" in resumed
    assert cells[-1].outputs == []
    run = json.loads((tmp_path / "runs" / "tutorial" / "config.json").read_text())
    assert run["model"]["units"] == 128 and run["train"]["max_steps"] == 6
