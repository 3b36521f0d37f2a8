"""The study's report, from the experiment store: the paper's tables and figure, and a score-against-speed plot.

- ``report.md`` / ``results.csv``: one row per model and task (role, size, MACs, scores, speed, training time).
- Table 1 (``table1_speed.csv``): inferences per second per model and engine, and speed-ups.
- Table 3 (``table3_global.csv``): parameters, speed-up and the global score (plain mean over tasks of each
  task's primary test metric; QA counts by F1).
- Figure 1 (``figure1_params_macs.png``): parameters against MACs, one point per model.
- ``score_vs_speed.png``: global score against speed-up, every engine measured, the Pareto front marked.

Speed-ups are ratios of speeds measured on this machine in the same protocol, against the selected teacher of
the task in PyTorch.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from matplotlib.figure import Figure
from rich.console import Console
from rich.markdown import Markdown

from speedy.bench.cpu import cpu_description
from speedy.bench.engines import ENGINES
from speedy.config import StudyConfig
from speedy.data.load import data_source
from speedy.selection import models_to_report, speed_kind
from speedy.store import Store
from speedy.tasks import TASK_CLASSES

COLUMNS = ("task", "model", "role", "layers", "params_M", "non_embedding_params_M", "gmacs", "thop_gmacs", "metric",
           "test_score", "test_accuracy", "test_macro_f1", "val_loss", "inferences_per_s", "speedup", "train_minutes")
ENGINE_NAMES = {name: engine.title for name, engine in ENGINES.items()}


def report_rows(store: Store, config: StudyConfig) -> list[dict]:
    """One row per (task, model), with every engine's speed and score under ``engines``."""
    rows = []
    for task_spec in config.tasks:
        selected = store.selection(task_spec.name)
        metric = TASK_CLASSES[task_spec.type].primary_metric
        teacher_speed = store.measurement(selected.key, speed_kind(config.speed, "torch")) if selected else None
        base = (teacher_speed or {}).get("inferences_per_second")
        for trial in models_to_report(store, config, task_spec):
            size = store.measurement(trial.key, "size") or {}
            if trial.stage == "finetune":
                role = "teacher (selected)" if selected and trial.key == selected.key else "teacher candidate"
            else:
                role = "student, KD" if trial.params["mode"] == "kd" else "student, fine-tuned only"
            engines = {}
            for engine in config.speed.engines:
                speed = store.measurement(trial.key, speed_kind(config.speed, engine)) or {}
                ips = speed.get("inferences_per_second")
                score = (speed.get("test_metrics") or trial.test_metrics).get(metric)
                engines[engine] = {"inferences_per_s": ips, "speedup": ips / base if ips and base else None,
                                   "test_score": score}
            torch_speed = engines.get("torch", {})
            rows.append({
                "task": task_spec.name, "model": trial.params["model"]["name"], "role": role,
                "layers": size.get("layers"),
                "params_M": size["parameters"] / 1e6 if size else None,
                "non_embedding_params_M": size["non_embedding_parameters"] / 1e6 if size else None,
                "gmacs": size["macs"] / 1e9 if "macs" in size else None,
                "thop_gmacs": size["thop_macs"] / 1e9 if "thop_macs" in size else None,
                "metric": metric, "test_score": trial.test_metrics.get(metric),
                "test_accuracy": trial.test_metrics.get("accuracy"), "test_macro_f1": trial.test_metrics.get("macro_f1"),
                "val_loss": trial.val_loss, "inferences_per_s": torch_speed.get("inferences_per_s"),
                "speedup": torch_speed.get("speedup"), "train_minutes": (trial.seconds or 0) / 60,
                "engines": engines,
            })
    return rows


def global_rows(rows: list[dict], tasks: list[str]) -> list[dict]:
    """Table 3: per model and role, the mean over tasks of the primary test score, per engine."""
    grouped: dict[tuple, list[dict]] = {}
    for row in rows:
        grouped.setdefault((row["model"], row["role"]), []).append(row)
    out = []
    for (model, role), group in grouped.items():
        scores = [r["test_score"] for r in group if r["test_score"] is not None]
        entry = {"model": model, "role": role, "tasks": len(group), "of_tasks": len(tasks),
                 "params_M": group[0]["params_M"], "gmacs": _mean([r["gmacs"] for r in group]),
                 "global_score": sum(scores) / len(scores) if len(scores) == len(tasks) else None, "engines": {}}
        for engine in group[0]["engines"]:
            cells = [r["engines"][engine] for r in group]
            engine_scores = [c["test_score"] for c in cells if c["test_score"] is not None]
            entry["engines"][engine] = {
                "speedup": _mean([c["speedup"] for c in cells]),
                "global_score": sum(engine_scores) / len(engine_scores) if len(engine_scores) == len(tasks) else None}
        out.append(entry)
    return out


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both axes (higher is better on both)."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((ox >= x and oy >= y) and (ox > x or oy > y) for j, (ox, oy) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i][0])


def _fmt(value, digits=2, scale=1.0, suffix="") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{scale * value:.{digits}f}{suffix}"
    return str(value)


def _md(header: list[str], lines: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
                     ["| " + " | ".join(line) + " |" for line in lines])


def main_table(rows: list[dict]) -> str:
    header = ["Task", "Model", "Role", "Layers", "Params (M)", "Params w/o emb. (M)", "GMACs", "GMACs (THOP)",
              "Val loss", "Test score", "Test acc.", "Test macro-F1", "Inferences/s", "Speed-up", "Train (min)"]
    return _md(header, [[
        r["task"], r["model"], r["role"], _fmt(r["layers"]), _fmt(r["params_M"], 1), _fmt(r["non_embedding_params_M"], 1),
        _fmt(r["gmacs"], 3), _fmt(r["thop_gmacs"], 3), _fmt(r["val_loss"], 3),
        f"{_fmt(r['test_score'], scale=100)} ({r['metric']})", _fmt(r["test_accuracy"], scale=100),
        _fmt(r["test_macro_f1"], scale=100), _fmt(r["inferences_per_s"], 1), _fmt(r["speedup"], suffix="x"),
        _fmt(r["train_minutes"], 1)] for r in rows])


def table1(rows: list[dict], engines: list[str]) -> str:
    header = ["Task", "Model", "Role"] + [f"{ENGINE_NAMES[e]} inf/s (speed-up)" for e in engines] + \
             [f"test score, {ENGINE_NAMES[e]}" for e in engines if e != "torch"]
    lines = []
    for r in rows:
        cells = [f"{_fmt(r['engines'][e]['inferences_per_s'], 1)} ({_fmt(r['engines'][e]['speedup'], suffix='x')})"
                 for e in engines]
        scores = [_fmt(r["engines"][e]["test_score"], scale=100) for e in engines if e != "torch"]
        lines.append([r["task"], r["model"], r["role"]] + cells + scores)
    return _md(header, lines)


def table3(globals_: list[dict], engines: list[str]) -> str:
    header = ["Model", "Role", "Params (M)", "GMACs (mean)"] + \
             [f"speed-up, {ENGINE_NAMES[e]}" for e in engines] + ["Global score"] + \
             [f"global score, {ENGINE_NAMES[e]}" for e in engines if e != "torch"]
    lines = []
    for g in globals_:
        lines.append([g["model"], g["role"], _fmt(g["params_M"], 1), _fmt(g["gmacs"], 3)] +
                     [_fmt(g["engines"][e]["speedup"], suffix="x") for e in engines] +
                     [_fmt(g["global_score"], scale=100) + ("" if g["tasks"] == g["of_tasks"] else
                                                              f" ({g['tasks']}/{g['of_tasks']} tasks)")] +
                     [_fmt(g["engines"][e]["global_score"], scale=100) for e in engines if e != "torch"])
    return _md(header, lines)


def table2(rows: list[dict], tasks: list[str]) -> str:
    """Table 2 of the paper: test score per task (columns) per model (rows), QA by F1, and the mean."""
    models: dict[tuple, dict] = {}
    for r in rows:
        models.setdefault((r["model"], r["role"]), {})[r["task"]] = r["test_score"]
    lines = []
    for (model, role), scores in models.items():
        known = [scores.get(t) for t in tasks]
        mean = sum(known) / len(known) if all(v is not None for v in known) else None
        lines.append([model, role] + [_fmt(v, scale=100) for v in known] + [_fmt(mean, scale=100)])
    return _md(["Model", "Role"] + tasks + ["Average"], lines)


def kd_against_finetuning(store: Store, config: StudyConfig) -> str:
    """Tables 5-8 of the paper: per task and student, the test score trained without KD, with KD, the gain, and
    KD's training time with the teacher cache (measured) against without it (the measured teacher pass once
    per epoch run, added: what a KD loop that calls the teacher every step pays)."""
    lines = []
    for task_spec in config.tasks:
        trials = {(t.params["model"]["name"], t.params["mode"]): t
                  for t in models_to_report(store, config, task_spec) if t.stage == "distill"}
        for name in dict.fromkeys(n for n, _ in trials):
            kd, ft = trials.get((name, "kd")), trials.get((name, "finetune"))
            metric = TASK_CLASSES[task_spec.type].primary_metric
            score = lambda t: t.test_metrics.get(metric) if t else None  # noqa: E731
            gain = score(kd) - score(ft) if score(kd) is not None and score(ft) is not None else None
            with_cache = kd.seconds / 60 if kd and kd.seconds else None
            cache_seconds = (kd.info or {}).get("teacher_cache_seconds") if kd else None
            epochs = (kd.info or {}).get("epochs_run") if kd else None
            without = (with_cache + cache_seconds * max(0.0, epochs - 1) / 60
                       if with_cache is not None and cache_seconds and epochs else None)
            lines.append([task_spec.name, name, _fmt(score(ft), scale=100), _fmt(score(kd), scale=100),
                          _fmt(gain, scale=100), _fmt(with_cache, 1), _fmt(without, 1)])
    return _md(["Task", "Student", "Fine-tuned only", "KD", "KD gain (points)", "KD minutes (cache)",
                "KD minutes without cache (est.)"], lines)


def _save(fig: Figure, path: Path) -> None:
    tmp = path.with_suffix(f".{os.getpid()}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=120)  # drawn by Agg, whatever pyplot's backend: the figures never touch pyplot
    os.replace(tmp, path)


MARKERS = {"teacher (selected)": ("*", "tab:red"), "teacher candidate": ("s", "tab:gray"),
           "student, KD": ("o", "tab:blue"), "student, fine-tuned only": ("^", "tab:orange")}


def plot_params_macs(globals_: list[dict], path: Path) -> None:
    """Figure 1 of the paper: parameters against MACs, one point per model."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    for role, (marker, color) in MARKERS.items():
        points = [g for g in globals_ if g["role"] == role and g["params_M"] and g["gmacs"]]
        if points:
            ax.scatter([g["gmacs"] for g in points], [g["params_M"] for g in points], marker=marker, color=color,
                       s=90, label=role)
            for g in points:
                ax.annotate(g["model"], (g["gmacs"], g["params_M"]), textcoords="offset points", xytext=(5, 5),
                            fontsize=8)
    ax.set_xlabel("GMACs per inference (with the attention products)")
    ax.set_ylabel("parameters (M)")
    ax.set_title("Size against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def plot_score_speed(globals_: list[dict], engines: list[str], path: Path) -> None:
    """Global score against measured speed-up, a point per model and engine, the Pareto front joined."""
    fig = Figure(figsize=(7.5, 4.8))
    ax = fig.subplots()
    fills = {"torch": "full", "onnx": "left", "onnx-int8": "none"}
    points, labels = [], []
    for g in globals_:
        marker, color = MARKERS[g["role"]]
        for engine in engines:
            cell = g["engines"][engine]
            if cell["speedup"] is None or cell["global_score"] is None:
                continue
            x, y = cell["speedup"], 100 * cell["global_score"]
            ax.plot([x], [y], marker=marker, color=color, markersize=9, fillstyle=fills[engine], linestyle="none")
            points.append((x, y))
            labels.append(f"{g['model']}" + ("" if engine == "torch" else f" [{engine}]"))
    front = pareto_front(points)
    if front:
        ax.plot([points[i][0] for i in front], [points[i][1] for i in front], color="black", linewidth=1,
                linestyle="--", label="Pareto front")
    for i, (x, y) in enumerate(points):
        ax.annotate(labels[i], (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7,
                    fontweight="bold" if i in front else "normal")
    for role, (marker, color) in MARKERS.items():
        ax.plot([], [], marker=marker, color=color, linestyle="none", label=role)
    for engine in engines:
        ax.plot([], [], marker="o", color="black", fillstyle=fills[engine], linestyle="none", label=ENGINE_NAMES[engine])
    ax.set_xscale("log")
    ax.set_xlabel("speed-up over the selected teacher in PyTorch (measured here, log scale)")
    ax.set_ylabel("global test score (%)")
    ax.set_title("Score against speed")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, path)


def _write_csv(path: Path, rows: list[dict], columns) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_report(store: Store, config: StudyConfig, console: Console | None = None) -> Path:
    """Write the report of the study ``config`` names from what ``store`` holds; print it to ``console``."""
    out = Path(config.output_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    engines = list(config.speed.engines)
    rows = report_rows(store, config)
    globals_ = global_rows(rows, [t.name for t in config.tasks])
    speed = config.speed
    note = (f"Speed: this machine ({cpu_description()}), batch {speed.batch_size}, length {speed.length}, random ids, {speed.warmup} "
            f"warm-up and {speed.runs} measured runs, outliers dropped by modified Z-score > 0.75 (the paper's "
            "protocol); speed-up is against the selected teacher in PyTorch, measured in the same run. MACs at the "
            "same batch and length; GMACs (THOP) is what THOP 0.1.1 counts (linear layers and LayerNorm, no attention products).")
    for task_spec in config.tasks:
        if data_source(task_spec):
            note += f"\n\nData ({task_spec.name}): {data_source(task_spec)}."
    text = (f"# {config.name}: results\n\n{main_table(rows)}\n\n{note}\n\n"
            f"## Table 1: inferences per second, per engine\n\n{table1(rows, engines)}\n\n"
            f"## Table 2: test scores per task\n\n{table2(rows, [t.name for t in config.tasks])}\n\n"
            f"## Table 3: size, speed-up and global score (mean over tasks; QA by F1)\n\n{table3(globals_, engines)}\n\n"
            f"## Tables 5-8: fine-tuning against KD, per student\n\n{kd_against_finetuning(store, config)}\n\n"
            "Figures: `figure1_params_macs.png` (parameters against MACs), `score_vs_speed.png` (global score "
            "against speed-up, every engine, the Pareto front dashed).\n")
    tmp = out / f"report.md.{os.getpid()}.tmp"
    tmp.write_text(text, "utf-8")
    os.replace(tmp, out / "report.md")
    _write_csv(out / "results.csv", rows, COLUMNS)
    flat1 = [{"task": r["task"], "model": r["model"], "role": r["role"], "engine": e, **r["engines"][e]}
             for r in rows for e in engines]
    _write_csv(out / "table1_speed.csv", flat1, ["task", "model", "role", "engine", "inferences_per_s", "speedup",
                                                 "test_score"])
    flat3 = [{k: g[k] for k in ("model", "role", "params_M", "gmacs", "global_score", "tasks")} |
             {f"speedup_{e}": g["engines"][e]["speedup"] for e in engines} |
             {f"global_score_{e}": g["engines"][e]["global_score"] for e in engines} for g in globals_]
    _write_csv(out / "table3_global.csv", flat3, list(flat3[0]) if flat3 else ["model"])
    plot_params_macs(globals_, out / "figure1_params_macs.png")
    plot_score_speed(globals_, engines, out / "score_vs_speed.png")
    console = console or Console()
    console.print(Markdown(text))
    console.print(f"Report written to {out}/ (report.md, results.csv, table1_speed.csv, table3_global.csv, "
                        "figure1_params_macs.png, score_vs_speed.png)")
    return out
