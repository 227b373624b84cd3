"""ONNX: the model exported as one generation step, and generation from that file
(the `onnx` extra: pip install 'char-rnn[onnx]')."""

# What `char-rnn export --format` writes (export.py), with a line for its help; importing
# this package imports neither torch nor the extra.
FORMATS = {
    "onnx": "RUN/model.onnx, one generation step, which --engine onnx reads",
    "web": "a folder with a page that generates in the browser, served by any static file server",
}
