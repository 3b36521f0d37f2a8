"""Where ``speedy export`` writes the ONNX graphs in a model folder, by engine name (no imports: the CLI reads it
at start-up)."""

ONNX_FOLDER = "onnx"
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model-int8.onnx"}  # in ONNX_FOLDER, by engine name
RUNTIME_ENGINES = tuple(ONNX_FILES)  # the engines the torch-free runtime runs
