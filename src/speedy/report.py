"""The study's report: a Markdown and CSV table like the paper's Tables 2/3, and a score-against-speed plot.

Everything comes from the experiment store. Speed-ups are ratios of speeds measured on this machine in the
same protocol, against the selected teacher of the task.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

COLUMNS = ("task", "model", "role", "layers", "params_M", "non_embedding_params_M", "metric", "test_score",
           "test_accuracy",
           "test_macro_f1", "val_loss", "inferences_per_s", "speedup", "train_minutes")


def report_rows(study) -> list[dict]:
    rows = []
    kind = study.speed_kind()
    for task_spec in study.config.tasks:
        selected = study.store.selection(task_spec.name)
        trials = study.models_to_report(task_spec)
        teacher_speed = study.store.measurement(selected.key, kind) if selected else None
        for trial in trials:
            size = study.store.measurement(trial.key, "size") or {}
            speed = study.store.measurement(trial.key, kind) or {}
            if trial.stage == "finetune":
                role = "teacher (selected)" if selected and trial.key == selected.key else "teacher candidate"
                name = trial.params["model"]["name"]
            else:
                role = "student, KD" if trial.params["mode"] == "kd" else "student, fine-tuned only"
                name = trial.params["model"]["name"]
            metric = study.task(task_spec).primary_metric
            ips = speed.get("inferences_per_second")
            base = (teacher_speed or {}).get("inferences_per_second")
            rows.append({
                "task": task_spec.name, "model": name, "role": role, "layers": size.get("layers"),
                "params_M": size.get("parameters", 0) / 1e6 if size else None,
                "non_embedding_params_M": size.get("non_embedding_parameters", 0) / 1e6 if size else None,
                "metric": metric, "test_score": trial.test_metrics.get(metric),
                "test_accuracy": trial.test_metrics.get("accuracy"), "test_macro_f1": trial.test_metrics.get("macro_f1"),
                "val_loss": trial.val_loss, "inferences_per_s": ips,
                "speedup": ips / base if ips and base else None, "train_minutes": (trial.seconds or 0) / 60,
            })
    return rows


def _fmt(value, digits=2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(rows: list[dict], speed_note: str) -> str:
    header = ("| Task | Model | Role | Layers | Params (M) | Params w/o emb. (M) | Val loss | Test score | Test acc. "
              "| Test macro-F1 | Inferences/s | Speed-up | Train (min) |")
    lines = [header, "|" + "---|" * 13]
    for r in rows:
        lines.append("| " + " | ".join([
            r["task"], r["model"], r["role"], _fmt(r["layers"]), _fmt(r["params_M"], 1),
            _fmt(r["non_embedding_params_M"], 1), _fmt(r["val_loss"], 3),
            f"{_fmt(100 * r['test_score'] if r['test_score'] is not None else None)} ({r['metric']})", _fmt(100 * r["test_accuracy"] if r["test_accuracy"] is not None else None),
            _fmt(100 * r["test_macro_f1"] if r["test_macro_f1"] is not None else None), _fmt(r["inferences_per_s"], 1),
            _fmt(r["speedup"], 2) + ("x" if r["speedup"] else ""), _fmt(r["train_minutes"], 1)]) + " |")
    return "\n".join(lines) + f"\n\n{speed_note}\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    markers = {"teacher (selected)": ("*", "tab:red"), "teacher candidate": ("s", "tab:gray"),
               "student, KD": ("o", "tab:blue"), "student, fine-tuned only": ("^", "tab:orange")}
    for role, (marker, color) in markers.items():
        points = [r for r in rows if r["role"] == role and r["speedup"] and r["test_score"] is not None]
        if points:
            ax.scatter([r["speedup"] for r in points], [100 * r["test_score"] for r in points], marker=marker,
                       color=color, s=90, label=role)
            for r in points:
                ax.annotate(r["model"], (r["speedup"], 100 * r["test_score"]), textcoords="offset points",
                            xytext=(5, 5), fontsize=8)
    ax.set_xlabel("speed-up over the selected teacher (measured here)")
    ax.set_ylabel(f"test {rows[0]['metric'] if rows else 'score'} (%)")
    ax.set_title("Score against speed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def write_report(study) -> Path:
    from rich.markdown import Markdown

    out = Path(study.output_dir) / "report"
    out.mkdir(parents=True, exist_ok=True)
    rows = report_rows(study)
    speed = study.config.speed
    note = (f"Speed: PyTorch fp32 on this machine, batch {speed.batch_size}, length {speed.length}, random ids, "
            f"{speed.warmup} warm-up and {speed.runs} measured runs, outliers dropped by modified Z-score > 0.75; "
            "speed-up is against the selected teacher, measured in the same run.")
    for task_spec in study.config.tasks:
        info = study.data(task_spec).info
        if info.get("source"):
            note += f"\n\nData ({task_spec.name}): {info['source']}."
    text = f"# {study.config.name}: results\n\n" + markdown_table(rows, note)
    (out / "report.md.tmp").write_text(text, "utf-8")
    os.replace(out / "report.md.tmp", out / "report.md")
    with open(out / "results.csv.tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(out / "results.csv.tmp", out / "results.csv")
    plot(rows, out / "score_vs_speed.png")
    study.console.print(Markdown(text))
    study.console.print(f"Report written to {out}/ (report.md, results.csv, score_vs_speed.png)")
    return out
