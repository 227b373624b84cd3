"""ONNX: the model exported as one generation step, and generation from that file
(the `onnx` extra: pip install 'char-rnn[onnx]')."""
