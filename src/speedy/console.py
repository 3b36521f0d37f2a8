"""What every command line (``speedy``, ``speedy bench``, the benchmarks) shares: quiet libraries and the one-line
error exit."""

from __future__ import annotations

import os
import sys

import typer

from speedy.errors import SpeedyError


def quiet_libraries(training: bool = True) -> None:
    """Quiet transformers' and datasets' logs and progress bars; ``training=False`` (the torch-free runtime of
    ``speedy serve`` and ``speedy predict`` with an ONNX engine) imports neither."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not training:
        return
    try:  # Lazy (start-up time): `speedy --help` imports this module; transformers and datasets take about a second.
        import transformers
    except ImportError:  # the serving install (`speedy[serve]`) has the runtime only
        fail(SpeedyError("this command needs the training install, which is not here: pip install 'speedy[train]' "
                         "(an exported model is served and predicted without it: --engine onnx-int8)"))

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # per-model "Loading weights" bars; training keeps its own
    import datasets  # lazy: start-up time, as above

    datasets.disable_progress_bars()


def fail(error: SpeedyError) -> None:
    print(f"error: {error}", file=sys.stderr)
    raise typer.Exit(2)
