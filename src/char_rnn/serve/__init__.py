"""The web page and HTTP API (the `serve` extra: pip install 'char-rnn[serve]')."""
