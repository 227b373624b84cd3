"""Fine-tuning: a new run that starts from another run's weights (`init_from`).

The model keeps the origin's shape; the vocabulary is the origin's with the new text's
characters added. A character both know keeps its learned rows of the embedding and the
output layer; a new one starts as NEW_ROWS says (chosen by measurement: README,
Fine-tuning). The optimizer, the schedule and the step count start
afresh; the new run's config.json says where it came from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..data.vocab import Vocab
from ..errors import CharRNNError
from ..model.network import CharRNNModel
from ..run.folder import RunFolder, SavedRun
from ..run.storage import read_tensors

# How a character the origin never saw starts: "random" keeps PyTorch's fresh init of its
# rows; "mean" gives its embedding the mean of the known rows and its output row the mean
# weights with the lowest known bias (as likely as the rarest known character). Measured
# (README, Fine-tuning): "random" reached 1.3066 against 1.3286 for "mean".
NEW_ROWS = "random"


def open_origin(path: str | Path) -> SavedRun:
    """The run a fine-tune starts from, with a clear error where there is none."""
    folder = RunFolder(path)
    if not folder.path.is_dir():
        raise CharRNNError(f"init_from {path}: no such run folder")
    if not folder.config_path.is_file():
        raise CharRNNError(f"init_from {path} is not a run folder (it has no config.json)")
    saved = folder.open()
    folder.weights_path("latest")  # a run killed before its first checkpoint has none
    return saved


def origin_record(path: str | Path, origin: SavedRun, vocab: Vocab) -> dict[str, Any]:
    """What the new run's config.json records of where it came from."""
    added = sorted(set(vocab.chars) - set(origin.vocab.chars))
    return {
        "run": str(Path(path).resolve()),
        "corpus": origin.corpus.get("source"),
        "added_chars": "".join(added),
    }


@torch.no_grad()
def start_from(model: CharRNNModel, path: str | Path, origin: SavedRun, vocab: Vocab) -> None:
    """Load the origin's weights into `model` (built for `vocab`, a superset of the origin's)."""
    tensors = read_tensors(RunFolder(path).weights_path("latest"))
    rows = {"embedding.weight", "head.weight", "head.bias"}
    state = model.state_dict()
    for name, tensor in tensors.items():
        if name in rows:
            continue
        if name not in state or state[name].shape != tensor.shape:
            raise CharRNNError(f"init_from {path}: {name} does not fit the model ({tuple(tensor.shape)})")
        state[name].copy_(tensor)
    known = torch.tensor([vocab.index(c) for c in origin.vocab.chars])
    new = torch.tensor([i for i, c in enumerate(vocab.chars) if c not in origin.vocab])
    for name in sorted(rows):
        target = state[name]
        target[known] = tensors[name]
        if len(new) and NEW_ROWS == "mean":
            if name == "head.bias":
                target[new] = tensors[name].min()
            else:
                target[new] = tensors[name].mean(dim=0)
