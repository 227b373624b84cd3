"""The package index's description: README.md, with each picture (a file of the repository,
which the index cannot show from a relative link) named by its caption and path instead.
Everything else about the package is in pyproject.toml."""

import json
import re
import warnings
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).resolve().parent

RELATIVE_PICTURE = re.compile(r"!\[([^\]]*)\]\((?!https?://)([^)\s]+)\)")


def for_the_index(readme: str) -> str:
    return RELATIVE_PICTURE.sub(r"*Picture: \1 (`\2` in the source distribution).*", readme)


def warn_without_web_runtime() -> None:
    """A package built without onnxruntime-web's files cannot export web pages; say so."""
    web = HERE / "src" / "char_rnn" / "web"
    names = json.loads((web / "runtime.json").read_text(encoding="utf-8"))["files"].values()
    if not all((web / "runtime" / name).is_file() for name in names):
        warnings.warn(
            "src/char_rnn/web/runtime/ is incomplete, so this build cannot export web pages; "
            "run python scripts/vendor_web_runtime.py first (scripts/build_release.sh does)",
            stacklevel=1,
        )


warn_without_web_runtime()
setup(
    long_description=for_the_index((HERE / "README.md").read_text(encoding="utf-8")),
    long_description_content_type="text/markdown",
)
