"""A model in a static page: the exported ONNX step, a sampler in JavaScript and
onnxruntime-web's WebAssembly build, in one folder that any static file server can serve
(export.py). The page fetches nothing outside that folder."""
