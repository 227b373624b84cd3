"""The web page and HTTP API (the `serve` extra: pip install 'char-rnn[serve]')."""

from ..errors import require_extra

for _module in ("fastapi", "uvicorn"):
    require_extra("serve", _module, "char-rnn serve")
