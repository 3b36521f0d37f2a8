"""The torch-free runtime: an exported model folder (``speedy export``) answering inputs of its task type with
ONNX Runtime, the ``tokenizers`` library and numpy alone. ``speedy serve`` and ``speedy predict`` use it for the
ONNX engines, so a server needs neither PyTorch nor transformers, datasets or Optuna (``pip install
'speedy[serve]'``).

Its modules import nothing of speedy but ``speedy.errors`` (and this package's ``__init__`` imports nothing, so
the CLI reads ``files.py`` at start-up for free); the task types in ``speedy.tasks`` take their
route, inputs and results from its classes (``Task.runtime``), so they are declared once.
"""
