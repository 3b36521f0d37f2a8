"""``speedy serve``: an HTTP JSON API for one model, with dynamic batching (FastAPI on uvicorn).

With an ONNX engine (the default, ``onnx-int8``) the server runs in the torch-free runtime (``speedy.runtime``):
``pip install 'speedy[serve]'`` is all it needs. ``--engine torch`` needs the training install as well.
"""

from __future__ import annotations

from pathlib import Path

from speedy.errors import SpeedyError


def require_serving():
    try:  # lazy: optional (the serve extra)
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise SpeedyError("serving needs fastapi and uvicorn, which are not installed: "
                          "pip install 'speedy[serve]'") from None
    return uvicorn


def run_server(model_dir: Path, host: str, port: int, graceful_seconds: int = 30, **settings) -> None:
    """Serve until SIGINT/SIGTERM; on either, stop taking requests and finish those under way."""
    uvicorn = require_serving()
    from speedy.serve.app import ServeSettings, create_app, server_options  # lazy: optional (imports fastapi)

    for name in ("max_chars", "max_items", "max_batch", "max_batch_tokens", "max_body_bytes", "max_header_bytes",
                 "idle_seconds", "read_seconds"):
        if settings.get(name) is not None and settings[name] <= 0:
            raise SpeedyError(f"--{name.replace('_', '-')}: must be positive")
    serve_settings = ServeSettings(**settings)
    app = create_app(model_dir, serve_settings)  # the folder is checked here: a broken one is one line
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=graceful_seconds,
                **server_options(serve_settings))
