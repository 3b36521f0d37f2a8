"""``speedy bench``: size and MACs of any model, and its speed in each engine, printed as tables."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from speedy.bench.cpu import cpu_description
from speedy.bench.engines import ENGINES, get_engine, load_engine
from speedy.bench.size import count_parameters
from speedy.console import fail, quiet_libraries
from speedy.errors import SpeedyError

# `speedy --help` imports this module: what imports torch or transformers is imported by the commands, when they run.
bench_app = typer.Typer(no_args_is_help=True, help="Measure parameters, MACs and speed of models.")
console = Console()


def load_for_measure(name: str, layers: int | None = None):
    """A speedy model folder with its task head, or any encoder by folder, known name or Hub id (no head).
    ``layers`` runs only the first n layers (ALBERT base-n: same weights, fewer layers)."""
    # lazy: start-up time (these import torch and transformers)
    from transformers import AutoConfig, AutoModel

    from speedy.models.registry import check_name, resolve
    from speedy.tasks import task_from_model
    from speedy.trained import check_model_folder

    check_name(name, "MODEL")
    path = resolve(name)
    if Path(path).is_dir():  # a user's folder: a broken one is one line naming the file
        check_model_folder(path, need_tokenizer=False, need_task=False)  # a bare encoder is measured too
    overrides = {"num_hidden_layers": layers} if layers else {}
    try:
        config = AutoConfig.from_pretrained(path, **overrides)
    except OSError as error:
        raise SpeedyError(f"MODEL: cannot load '{name}': {str(error).splitlines()[0]}") from None
    if getattr(config, "speedy_task", None):
        task, _ = task_from_model(config)
        return task.model_class().from_pretrained(path, config=config).eval()
    return AutoModel.from_pretrained(path, config=config).eval()


@bench_app.command()
def macs(models: List[str] = typer.Argument(..., help="Model folders, known names or Hub ids."),
         length: List[int] = typer.Option([128, 512], help="Sequence lengths (repeat the option)."),
         batch_size: int = typer.Option(1, help="Batch size."),
         layers: Optional[int] = typer.Option(None, help="Run only the first n layers (ALBERT base-n).")):
    """Parameters (total, without embeddings) and MACs: with attention products, and THOP 0.1.1's count (linear layers and LayerNorm)."""
    quiet_libraries()
    from speedy.bench.macs import count_macs  # lazy: start-up time (imports torch)

    try:
        table = Table(title=f"Size and MACs (batch {batch_size})")
        for column in ("model", "layers", "params (M)", "params w/o emb. (M)", "length", "MACs (G)",
                       "THOP (G)", "attention share"):
            table.add_column(column, justify="right" if column != "model" else "left")
        for name in models:
            model = load_for_measure(name, layers)
            size = count_parameters(model)
            for n in length:
                counted = count_macs(model, batch_size, n)
                table.add_row(name, str(size["layers"]), f"{size['parameters'] / 1e6:.2f}",
                              f"{size['non_embedding_parameters'] / 1e6:.2f}", str(n), f"{counted['macs'] / 1e9:.3f}",
                              f"{counted['thop_macs'] / 1e9:.3f}",
                              f"{100 * counted['attention_macs'] / counted['macs']:.1f}%")
        console.print(table)
    except (SpeedyError, ValueError) as error:
        fail(SpeedyError(str(error)))


@bench_app.command()
def speed(models: List[str] = typer.Argument(..., help="Model folders (ONNX engines: folders trained with speedy); "
                                                       "the first is the reference of the speed-ups."),
          engine: List[str] = typer.Option(["torch"], help=f"{' | '.join(ENGINES)} (repeat the option)."),
          length: List[int] = typer.Option([512, 128], help="Fixed lengths of random ids (repeat the option)."),
          batch_size: int = typer.Option(1, help="Batch size of the fixed-length workload."),
          sentences: Optional[Path] = typer.Option(None, help="A file of real sentences, one per line: timed with "
                                                              "dynamic padding, batched by length."),
          sentence_batch: int = typer.Option(32, help="Batch size of the real-sentence workload."),
          threads: Optional[int] = typer.Option(None, help="CPU threads (default: all cores)."),
          warmup: int = typer.Option(10, help="Untimed runs first (the paper: 10)."),
          runs: int = typer.Option(100, help="Timed runs (the paper: 100)."),
          json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the results here.")):
    """Inferences per second: the paper's protocol (filtered mean) beside the median and spread, per engine."""
    quiet_libraries()
    # lazy: start-up time (these import torch and transformers)
    import torch

    from speedy.bench.speed import pin_threads, random_inputs, read_sentences, time_model, time_sentences
    from speedy.models.build import load_tokenizer
    from speedy.models.registry import resolve

    try:
        chosen = {e: get_engine(e) for e in engine}
        texts = read_sentences(sentences) if sentences is not None else None
        threads = pin_threads(threads)
        console.print(f"threads: {threads} (torch intra-op and ONNX Runtime intra-op; inter-op 1); "
                      f"device: {'cuda' if torch.cuda.is_available() else 'cpu'}")
        results = []
        for name in models:
            for e in engine:
                if chosen[e].file is None:  # it runs the PyTorch model: any encoder, by folder, known name or Hub id
                    model = chosen[e].load(name, None, threads, model=load_for_measure(name))
                else:
                    model = load_engine(name, e, threads, export_missing=True)
                for n in length:
                    r = time_model(model, random_inputs(model.config.vocab_size, batch_size, n), warmup, runs, threads)
                    results.append({"model": name, "engine": e, "workload": f"fixed {n}", **r})
                if texts is not None:
                    r = time_sentences(model, load_tokenizer(resolve(name)), texts, sentence_batch, threads=threads)
                    results.append({"model": name, "engine": e, "workload": "sentences", **r})
        print_speed_table(results, models[0])
        if json_out is not None:
            tmp = json_out.with_name(json_out.name + ".tmp")
            tmp.write_text(json.dumps(results, indent=2), "utf-8")
            os.replace(tmp, json_out)
    except SpeedyError as error:
        fail(error)


def print_speed_table(results: list[dict], reference: str) -> None:
    table = Table(title=f"Speed (speed-up: against {reference} in PyTorch, same workload, this run)",
                  caption=f"CPU: {cpu_description()}")
    for column in ("model", "engine", "workload", "inferences/s (paper)", "inferences/s (median)", "IQR (ms)",
                   "kept runs", "speed-up"):
        table.add_column(column, justify="left" if column in ("model", "engine", "workload") else "right")
    base = {r["workload"]: r["inferences_per_second"] for r in results
            if r["model"] == reference and r["engine"] == "torch"}
    for r in results:
        ref = base.get(r["workload"])
        iqr = r.get("seconds_iqr", r.get("seconds_per_pass_iqr"))
        table.add_row(r["model"], r["engine"], r["workload"] + (f" (b{r['batch_size']})"),
                      f"{r['inferences_per_second']:.1f}", f"{r['inferences_per_second_median']:.1f}",
                      f"{1000 * iqr:.2f}" if iqr is not None else "-",
                      f"{r['kept_runs']}/{r['runs']}" if "kept_runs" in r else f"{r['repeats']} passes",
                      f"{r['inferences_per_second'] / ref:.2f}x" if ref else "-")
    console.print(table)
