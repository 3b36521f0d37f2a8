"""``speedy serve``: an HTTP JSON API for one model, with dynamic batching (FastAPI on uvicorn)."""

from __future__ import annotations

from pathlib import Path

from speedy.errors import SpeedyError


def require_serving():
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise SpeedyError("serving needs fastapi and uvicorn, which are not installed: "
                          "pip install 'speedy[serve]'") from None
    return uvicorn


def run_server(model_dir: Path, host: str, port: int, graceful_seconds: int = 30, **settings) -> None:
    """Serve until SIGINT/SIGTERM; on either, stop taking requests and finish those under way."""
    uvicorn = require_serving()
    from speedy.bench.engines import check_engine
    from speedy.serve.app import ServeSettings, create_app

    check_engine(settings.get("engine", "onnx-int8"))
    if not (Path(model_dir) / "config.json").is_file():
        raise SpeedyError(f"{model_dir}: not a model folder (no config.json)")
    for name in ("max_chars", "max_items", "max_batch"):
        if settings.get(name, 1) < 1:
            raise SpeedyError(f"--{name.replace('_', '-')}: must be at least 1")
    app = create_app(model_dir, ServeSettings(**settings))
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=graceful_seconds)
