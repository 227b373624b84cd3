"""char-rnn: character-level recurrent language models.

from char_rnn import CharRNN
model = CharRNN.load("runs/shakespeare")
print(model.generate("ROMEO:", length=200))
"""

__version__ = "0.1.0"

from .api import CharRNN  # noqa: E402
from .config import AdaptConfig, ModelConfig, SampleConfig, TrainConfig, build_configs  # noqa: E402
from .errors import CharRNNError, UsageError  # noqa: E402
from .train import TrainResult, train  # noqa: E402

__all__ = [
    "AdaptConfig",
    "CharRNN",
    "CharRNNError",
    "ModelConfig",
    "SampleConfig",
    "TrainConfig",
    "TrainResult",
    "UsageError",
    "build_configs",
    "train",
]
