"""What the benchmark scripts share: the training-size flags and running the study's stages with timings."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ("finetune", "select", "distill", "evaluate", "measure")


def add_training_flags(parser: argparse.ArgumentParser, *, max_length: int, teacher_epochs: int,
                       student_epochs: int, speed_length: int, speed_runs: int) -> None:
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--max-length", type=int, default=max_length)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher-epochs", type=int, default=teacher_epochs)
    parser.add_argument("--teacher-lr", type=float, default=1.5e-4)
    parser.add_argument("--student-epochs", type=int, default=student_epochs)
    parser.add_argument("--student-lr", type=float, default=2e-4)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--finetune-layers", type=int, default=4, help="the depth also trained without KD")
    parser.add_argument("--speed-length", type=int, default=speed_length)
    parser.add_argument("--speed-runs", type=int, default=speed_runs)
    parser.add_argument("--seed", type=int, default=42)


def study_settings(args) -> dict:
    """The teacher, grid, KD and speed sections of a benchmark's study config."""
    return {
        "seed": args.seed,
        "teachers": [{"name": "multilingual-e5-small", "prune_vocab": True, "learning_rate": [args.teacher_lr]}],
        "grid": {"batch_size": [args.batch_size], "epochs": [args.teacher_epochs], "learning_rate": [args.teacher_lr]},
        "distill": {"epochs": args.student_epochs, "patience": args.patience, "batch_size": args.batch_size,
                    "learning_rate": args.student_lr},
        "speed": {"batch_size": 1, "length": args.speed_length, "warmup": 10, "runs": args.speed_runs},
    }


def run_stages(config_path: Path) -> tuple[object, dict]:
    """Run every stage but the report; returns the study and the minutes each stage took."""
    from rich.console import Console

    from speedy.configfile import load_config
    from speedy.console import quiet_libraries
    from speedy.pipeline import Study

    quiet_libraries()
    study = Study(load_config(config_path), Console())
    minutes = {}
    for stage in STAGES:
        start = time.time()
        study.run([stage])
        minutes[stage] = (time.time() - start) / 60
    return study, minutes


def stage_line(minutes: dict) -> str:
    return "stage minutes: " + ", ".join(f"{k} {v:.1f}" for k, v in minutes.items())


def write_squad(path: Path, dataset) -> str:
    articles = {}
    for row in dataset:
        article = articles.setdefault(row["title"], {"title": row["title"], "paragraphs": {}})
        paragraph = article["paragraphs"].setdefault(row["context"], {"context": row["context"], "qas": []})
        paragraph["qas"].append({"id": row["id"], "question": row["question"],
                                 "answers": [{"text": t, "answer_start": s} for t, s in
                                             zip(row["answers"]["text"], row["answers"]["answer_start"])]})
    data = [{"title": a["title"], "paragraphs": list(a["paragraphs"].values())} for a in articles.values()]
    path.write_text(json.dumps({"version": "1.1", "data": data}, ensure_ascii=False), "utf-8")
    return str(path)
