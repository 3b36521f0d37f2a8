"""Publishing a trained model: a Hugging Face folder with a model card, its ONNX model and the int8 version.

``export_model`` writes everything under a temporary name and renames it at the end, so an export folder that
exists is complete. The card says what the model is for, where it came from (teacher and data, when the
experiment store knows the model) and how good and how fast it is, with the equivalence checks of its engines.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import transformers

from speedy.bench.engines import ENGINES, get_engine
from speedy.bench.export import ONNX_FOLDER, check_export, check_head, compare_engines, export_onnx
from speedy.bench.speed import random_inputs, time_model
from speedy.errors import SpeedyError
from speedy.store import Store, measurements
from speedy.trained import check_model_folder, load_torch_model


def find_trial(model_dir: Path, store_url: str | None):
    """The store's trial whose checkpoint is ``model_dir`` (and the store), looking in the study folder itself
    (``<study>/trials/<key>``) when no store is given."""
    model_dir = Path(model_dir).resolve()
    if store_url is None:
        guess = model_dir.parent.parent / "store.sqlite"
        if not guess.is_file():
            return None, None
        store_url = str(guess)
    store = Store(store_url)
    for trial in store.trials():
        if trial.checkpoint and Path(trial.checkpoint).resolve() == model_dir:
            return trial, store
    return None, store


def provenance(model_dir: Path, store_url: str | None) -> dict:
    """What the experiment store knows about a model: its role, teacher, task data, scores and speeds."""
    trial, store = find_trial(model_dir, store_url)
    if trial is None:
        return {}
    info = {"name": trial.params.get("model", {}).get("name", trial.name), "task": trial.task,
            "role": "teacher" if trial.stage == "finetune" else
            ("student (knowledge distillation)" if trial.params.get("mode") == "kd" else "student (fine-tuned)"),
            "validation": trial.val_metrics, "test": trial.test_metrics, "measurements": {}}
    teacher_key = trial.params.get("teacher")
    if teacher_key:
        teacher = store.get(teacher_key)
        info["teacher"] = teacher.params["model"]["name"] if teacher else teacher_key
        info["distillation"] = trial.params.get("settings", {})
    with store.engine.connect() as conn:
        for row in conn.execute(measurements.select().where(measurements.c.trial_key == trial.key)):
            info["measurements"][row.kind] = json.loads(row.value)
    return info


def _table(rows: list[tuple]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows[1:]])


def model_card(config, task, origin: dict, checks: dict, speed: dict) -> str:
    """A Hugging Face model card (README.md with YAML front matter) for an exported model."""
    pipeline = task.pipeline_tag
    name = origin.get("name", config.name_or_path or "model")
    front = (f"---\nlanguage: es\nlibrary_name: transformers\npipeline_tag: {pipeline}\n"
             "tags:\n- knowledge-distillation\n- speedy\n- onnx\n---\n")
    lines = [front, f"# {name}", "",
             f"A {task.type} model ({config.model_type}, {getattr(config, 'num_hidden_layers', '?')} layers) made "
             "with speedy, the toolkit of *Speedy Gonzales: A Collection of Fast Task-Specific Models for Spanish* "
             "(Cañete and Bravo-Marquez).", ""]
    if origin:
        lines += [f"- Task: `{origin['task']}`", f"- Role: {origin['role']}"]
        if origin.get("teacher"):
            settings = origin.get("distillation", {})
            lines.append(f"- Teacher: `{origin['teacher']}` (loss {settings.get('loss')}, alpha {settings.get('alpha')}, "
                         f"temperature {settings.get('temperature')})")
    if task.labels and task.classifies:  # an embedding model's output is a vector, not labels
        lines.append(f"- Labels: {', '.join(task.labels)}")
    if origin.get("test") or origin.get("validation"):
        lines += ["", "## Scores", ""]
        rows = [("split", "metric", "value")]
        for split in ("validation", "test"):
            rows += [(split, k, f"{100 * v:.2f}") for k, v in sorted(origin.get(split, {}).items())
                     if isinstance(v, float) and k != "loss"]
        lines.append(_table(rows))
    engines = [engine() for engine in ENGINES.values()]
    lines += ["", "## Files", ""] + [f"- `{e.file}`: {e.card}" if e.file else f"- {e.card}" for e in engines]
    lines += ["", "## Engines checked against PyTorch", "",
              f"- fp32 ONNX: max abs difference of the outputs {checks['fp32_max_abs_diff']:.2e} "
              f"(tolerance {checks['tolerance']:g}); int8: {checks['int8_max_abs_diff']:.2e}"]
    if "int8" in checks:
        c = checks["int8"]
        lines.append(f"- int8 on {checks['int8_on']}: the same prediction as PyTorch on {100 * c['agreement']:.2f}% "
                     f"of {c['compared']} predictions; {c['metric']} {100 * c['reference_score']:.2f} -> "
                     f"{100 * c['engine_score']:.2f} (drop {100 * c['score_drop']:.2f} points)")
    else:
        lines.append("- int8 agreement: not measured (export with --validation-file)")
    if speed:
        lines += ["", f"## Speed on the exporting machine (batch 1, length {speed['length']}, "
                  f"{speed['threads']} threads)", ""]
        rows = [("engine", "inferences/s", "speed-up")]
        base = speed["engines"].get("torch")
        for engine, ips in speed["engines"].items():
            rows.append((engine, f"{ips:.1f}", f"{ips / base:.2f}x" if base else "-"))
        lines.append(_table(rows))
    lines += ["", "## Use", "", "```bash", "speedy predict --model THIS_FOLDER --engine onnx-int8 --text '...'",
              "```", ""]
    return "\n".join(lines)


def export_model(model_dir: Path, out: Path, validation_file: Path | None = None, store_url: str | None = None,
                 threads: int | None = None, speed_length: int = 128, speed_runs: int = 30, report=print) -> dict:
    """Write ``out``: the model, its tokenizer, ``onnx/`` (fp32 and int8), ``README.md`` and ``export.json``."""
    model_dir, out = Path(model_dir), Path(out)
    folder = check_model_folder(model_dir)  # one line naming the file, for any broken folder
    config, task, max_length, tokenizer = folder.config, folder.task, folder.max_length, folder.tokenizer
    architecture = (config.architectures or ["none"])[0]
    # A bare encoder (an embedding model) is loaded by its type's class, which wraps it as it was trained
    bare = task.head_architecture == "Model" and architecture.endswith("Model")
    model_class = task.model_class() if bare else getattr(transformers, architecture, None)
    if model_class is None:
        raise SpeedyError(f"export: unknown task head '{architecture}' in {model_dir}/config.json (known: models "
                          "trained by speedy for classification, tagging or qa)")
    model = load_torch_model(model_dir, model_class).eval()  # the class it was saved as: never a fresh head
    check_head(getattr(model, "onnx_module", model))  # what the export writes

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    report("exporting to ONNX, fusing, quantizing to int8")
    fused = export_onnx(model, tmp / ONNX_FOLDER)
    for engine in ENGINES.values():  # what any other engine runs (the ONNX ones are written above)
        engine().prepare(tmp, model)
    checks = check_export(model, tmp / ONNX_FOLDER, threads)
    report(f"fp32 ONNX max abs difference {checks['fp32_max_abs_diff']:.2e}, int8 {checks['int8_max_abs_diff']:.2e}")
    if validation_file is not None:
        data = task.read_file(Path(validation_file), task.read_options(), report=report)
        int8 = get_engine("onnx-int8").load(tmp, config, threads)
        checks["int8"] = compare_engines(model, int8, tokenizer, task, data, max_length)
        checks["int8_on"] = str(validation_file)
        c = checks["int8"]
        report(f"int8 agrees with PyTorch on {100 * c['agreement']:.2f}% of {c['compared']} predictions; "
               f"{c['metric']} drop {100 * c['score_drop']:.2f} points")
    speed = {"length": speed_length, "threads": None, "engines": {}}
    for engine, chosen in ENGINES.items():
        runner = chosen().load(tmp, config, threads, model=model)
        result = time_model(runner, random_inputs(config.vocab_size, 1, speed_length), 5, speed_runs, threads)
        speed["engines"][engine] = result["inferences_per_second"]
        speed["threads"] = result["threads"]
    origin = provenance(model_dir, store_url)
    (tmp / "README.md").write_text(model_card(config, task, origin, checks, speed), "utf-8")
    summary = {"source": str(model_dir), "task": task.type, "checks": checks, "speed": speed, "origin": origin,
               "fused_operators": {k: v for k, v in fused["fused_operators"].items() if v}, "time": time.time()}
    (tmp / "export.json").write_text(json.dumps(summary, indent=2, default=str), "utf-8")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return summary
