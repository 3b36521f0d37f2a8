r"""Benchmark: which KD recipe beats fine-tuning the same student, at equal budget, over several seeds.

One row per recipe and student depth: validation score as mean ± std over the seeds, the gap to the fine-tuned
student, the share of the teacher's score kept, and the wall time of one student run. Every recipe trains the
same student (multilingual-e5-small truncated to its first n layers, vocabulary pruned to the task's text) with
the same epoch cap, early stopping, learning rate and batch size; only the training signal differs:

* ``finetuned``: gold labels only (the baseline);
* ``logit-kd``: the paper's KD (KL on logits, alpha 0, T 1);
* ``hidden``: + hidden-state MSE, uniform layer map (PKD / TinyBERT);
* ``relation``: + similarity relations of the last layer (MiniLM-style, width-free);
* ``transfer``: + the unlabelled transfer text, labelled by the teacher (XtremeDistil);
* ``teacher-init``: the student starts from the fine-tuned teacher's first n layers (DistilBERT);
* ``teacher-init-finetuned``: the same start, gold labels only: the control that tells what ``teacher-init`` owes
  to KD from what it owes to starting from a model already fine-tuned on the task;
* ``two-teachers``: the top-2 teacher candidates of stage 1 (two seeds of the grid) averaged;
* ``combined``: transfer + hidden + teacher-init together (chosen before any result, not tuned on them);
* ``transfer-relation``: transfer + similarity relations (the two levers that won alone, combined afterwards);
* ``transfer-gold``: transfer with alpha 0.5 (half the loss is cross-entropy on the gold labels, which the
  transfer text has none of): for a teacher barely better than the fine-tuned student, whose soft labels on
  unlabelled text are mostly its mistakes;
* ``logit-kd-gold``: the paper's KD with alpha 0.5, no transfer text (Hinton et al.'s mix of soft and gold targets);
* ``logit-kd-gold-t4``: the same at temperature 4 (Hinton et al.'s softer targets: a teacher that has nearly
  memorised its training examples gives them almost one-hot at T 1).

NER (the default task) trains on ``--labelled`` sentences of CoNLL-2002 ``esp.train`` and uses ``--transfer`` other
sentences of ``esp.train`` as unlabelled text (their tags are never read); validation is a sample of ``esp.testa``
(the test split ``esp.testb`` stays unseen). POS splits AnCora's dev file (the one here) into validation,
labelled and transfer sentences. ``qa`` splits SQuAD-es by article: ``--val`` questions of held-out articles,
``--labelled`` questions of the others, and ``--transfer`` further questions of those as unlabelled ``{"question",
"context"}`` pairs (the teacher's start/end distributions over the context are their targets). ``demo`` is the demo's classification task (the Bible's verses -> the genre of
their book; its 200 / 50 verses per genre for training / validation) with ``--transfer`` other verses, without
their genre, as transfer text; it needs no shared data, and ignores ``--labelled``, ``--val`` and ``--data-seed``
(the demo's own sizes and seed). The demo's own settings (the README's demo rows)::

    python benchmarks/recipes.py --task demo --output runs/bench-recipes-demo --transfer 2400 --max-length 64 \
        --batch-size 16 --teacher-epochs 8 --teacher-lr 1.5e-4 --teacher-seeds 42 --student-epochs 8 --depths 4 \
        --seeds 1 2 3 --recipes finetuned transfer

The teacher is multilingual-e5-small (12 layers), fine-tuned with ``--teacher-seeds`` seeds and selected
by validation F1; every recipe distils the same teacher.

All runs go through the ordinary pipeline into one study folder and store, so a killed benchmark resumes where it
stopped, and finished runs are reused across sessions. Results are written (atomically) to
``<output>/recipes.md`` and ``<output>/recipes.json``. Runs go seed by seed (the first seed of every recipe
first), so a stopped run still compares every recipe. Example (the sizes of the README's table)::

    python benchmarks/recipes.py --labelled 1000 --transfer 2000 --val 500 --depths 4 --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import yaml

from common import REPO

RECIPES = {  # in the order they run: the baseline, the paper's KD, then the levers most likely to win first
    "finetuned": ({}, {"kd": False, "finetune": True}),
    "logit-kd": ({}, {}),
    "transfer": ({"transfer": True}, {}),
    "combined": ({"transfer": True, "hidden_weight": 1.0}, {"init": "teacher"}),
    "hidden": ({"hidden_weight": 1.0}, {}),
    "relation": ({"relation_weight": 1.0}, {}),
    "teacher-init": ({}, {"init": "teacher"}),
    "teacher-init-finetuned": ({}, {"init": "teacher", "kd": False, "finetune": True}),
    "two-teachers": ({"teachers": 2}, {}),
    "transfer-relation": ({"transfer": True, "relation_weight": 1.0}, {}),
    "transfer-gold": ({"transfer": True, "alpha": 0.5}, {}),
    "logit-kd-gold": ({"alpha": 0.5}, {}),
    "logit-kd-gold-t4": ({"alpha": 0.5, "temperature": 4.0}, {}),
}


def write_conll(path: Path, sentences) -> str:
    lines = []
    for sentence in sentences:
        lines += [f"{word} {tag}" for word, tag in zip(sentence["tokens"], sentence["tags"])] + [""]
    path.write_text("\n".join(lines) + "\n", "utf-8")
    return str(path)


def prepare(args, out: Path) -> dict:
    """The labelled, transfer and validation files, sampled with ``--data-seed`` (the same for every recipe)."""
    from speedy.data.readers import read_conll, read_conllu

    if args.task == "demo":  # the package's own data: the study draws its splits and transfer verses
        return {"builtin": "rv1909-genre", "per_class": [200, 50, 100], "seed": 0, "transfer": args.transfer}
    data_dir = Path(args.data_dir)
    rng = random.Random(args.data_seed)
    if args.task == "qa":
        return prepare_qa(args, data_dir, out, rng)
    if args.task == "ner":
        train = read_conll(data_dir / "conll2002-es" / "esp.train")
        validation = read_conll(data_dir / "conll2002-es" / "esp.testa")
        order = list(range(len(train)))
        rng.shuffle(order)
        val = sorted(rng.sample(range(len(validation)), min(args.val, len(validation))))
    else:  # only AnCora's dev file is here: its sentences are split into validation and the rest
        train = validation = read_conllu(data_dir / "ancora-es" / "es_ancora-ud-dev.conllu")
        order = list(range(len(train)))
        rng.shuffle(order)
        val, order = sorted(order[: args.val]), order[args.val :]
    labelled, rest = order[: args.labelled], order[args.labelled :][: args.transfer]
    out.mkdir(parents=True, exist_ok=True)
    files = {"train": write_conll(out / "train.conll", [train[i] for i in sorted(labelled)]),
             "validation": write_conll(out / "validation.conll", [validation[i] for i in val])}
    files["test"] = files["validation"]  # never evaluated here: the test split stays unseen
    transfer = out / "transfer.txt"  # words only: the tags of these sentences are never read
    transfer.write_text("".join(" ".join(train[i]["tokens"]) + "\n" for i in rest), "utf-8")
    return {"files": files, "transfer": str(transfer)}


def prepare_qa(args, data_dir: Path, out: Path, rng: random.Random) -> dict:
    """SQuAD-es split by article: ``--val`` questions of the held-out articles for validation, ``--labelled``
    questions of the others with their answers, and ``--transfer`` further questions of those articles as
    unlabelled ``{"question", "context"}`` lines (their answers are never written)."""
    from common import write_squad
    from speedy.data.squad import read_squad, split_by_article

    source = data_dir / "squad-es" / "squad-es-v1.1-dev-small-minus-xquad.json"
    train, validation = split_by_article(read_squad(source, report=lambda *a: None), 0.2, args.data_seed)
    order = list(range(len(train)))
    rng.shuffle(order)
    labelled, rest = order[: args.labelled], order[args.labelled :][: args.transfer]
    val = sorted(rng.sample(range(len(validation)), min(args.val, len(validation))))
    out.mkdir(parents=True, exist_ok=True)
    files = {"train": write_squad(out / "train.json", train.select(sorted(labelled))),
             "validation": write_squad(out / "validation.json", validation.select(val))}
    files["test"] = files["validation"]  # never evaluated here
    transfer = out / "transfer.jsonl"
    transfer.write_text("".join(json.dumps({"question": train[i]["question"], "context": train[i]["context"]},
                                           ensure_ascii=False) + "\n" for i in rest), "utf-8")
    return {"files": files, "transfer": str(transfer)}


def config_for(args, data: dict, recipe: str, depth: int, seed: int) -> dict:
    distill, student = RECIPES[recipe]
    if args.task == "demo":
        task = {"name": "rv1909-genre", "type": "classification", "max_length": args.max_length, "data": data}
    elif args.task == "qa":
        task = {"name": "squad-es", "type": "qa", "max_length": args.max_length, "stride": args.stride,
                "normalization": "es", "data": data["files"]}
        if args.transfer:
            task["transfer_files"] = [data["transfer"]]
    else:
        task = {"name": f"{args.task}-es", "type": "tagging", "scheme": "bio" if args.task == "ner" else "pos",
                "max_length": args.max_length, "data": data["files"]}
        if args.transfer:  # with none (all of esp.train labelled), the task has no transfer text at all
            task["transfer_files"] = [data["transfer"]]
    config = {
        "name": f"recipes-{args.task}-{recipe}-{depth}L-s{seed}", "output_dir": str(Path(args.output) / "study"),
        "seed": args.teacher_seeds[0], "tasks": [task],
        "teachers": [{"name": "multilingual-e5-small", "prune_vocab": True}],
        "students": [{"name": f"e5-{depth}L", "base": "multilingual-e5-small", "kind": "truncate", "layers": depth,
                      "prune_vocab": True, **student}],
        "grid": {"batch_size": [args.batch_size], "epochs": [args.teacher_epochs], "learning_rate": [args.teacher_lr],
                 "seeds": list(args.teacher_seeds), "select_by": "metric"},
        "distill": {"epochs": args.student_epochs, "patience": args.patience, "batch_size": args.batch_size,
                    "learning_rate": args.student_lr, "seed": seed, "transfer": False, "restarts": args.restarts,
                    **distill},
        "speed": {"batch_size": 1, "length": 64, "warmup": 1, "runs": 3},
    }
    if args.task == "demo":  # the teacher as demo.yaml states it, so a demo study's store can lend its teacher
        config["teachers"][0]["learning_rate"] = [args.teacher_lr]
        if args.teacher_seeds == [config["seed"]]:
            del config["grid"]["seeds"]
    return config


def run_recipe(args, data: dict, recipe: str, depth: int, seed: int, train: bool = True) -> dict | None:
    """One recipe's student at one depth and seed: trained (or found done in the store), as a result row; with
    ``train=False``, the row only if the store has it done (None otherwise)."""
    from rich.console import Console

    from speedy.configfile import load_config
    from speedy.pipeline import Study
    from speedy.trials import FINETUNE

    folder = Path(args.output) / "configs"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{recipe}-{depth}L-s{seed}.yaml"
    path.write_text(yaml.safe_dump(config_for(args, data, recipe, depth, seed)))
    study = Study(load_config(path), Console(stderr=True))
    if train:
        study.run(["finetune", "select", "distill"])
    task = study.config.tasks[0]
    teacher = study.store.selection(task.name)
    trial = study.store.get(_key(study, recipe, depth, seed)) if teacher else None
    if trial is None or trial.status != "done":
        return None
    teachers = study.store.trials(FINETUNE, task.name)
    return {"recipe": recipe, "depth": depth, "seed": seed, "score": validation_score(study, trial),
            "teacher": validation_score(study, teacher),
            "teachers": {t.name: validation_score(study, t) for t in teachers},
            "minutes": (trial.seconds or 0) / 60, "epochs": trial.info.get("epochs_run"),
            "best_epoch": trial.info.get("best_epoch"),  # absent in trials recorded before the tenth session
            "train_examples": trial.info.get("train_examples"), "restarts": trial.info.get("restarts", 0),
            "seed_used": trial.info.get("seed", seed), "collapsed": trial.info.get("collapsed")}


def validation_score(study, trial) -> float:
    """A trial's validation score on the task's metric. A QA trial recorded before QA validated by F1 (it selected
    by the loss) has no F1 in its record: it is scored from its checkpoint once, and the score kept in the store."""
    task_spec = study.config.tasks[0]
    task = study.task(task_spec)
    if task.primary_metric in trial.val_metrics or task.type != "qa":
        return trial.val_metrics[task.primary_metric]
    scores = study.store.measurement(trial.key, "validation_squad")
    if scores is None:
        from speedy.evaluate import evaluate_model
        from speedy.models.build import load_tokenizer

        data = study.data(task_spec)
        model = task.model_class().from_pretrained(trial.checkpoint)
        scores = evaluate_model(model, load_tokenizer(trial.checkpoint), task, data.splits["validation"],
                                task_spec.max_length, source=data.sources["validation"])
        study.store.measure(trial.key, "validation_squad", scores)
    return scores[task.primary_metric]


def _key(study, recipe: str, depth: int, seed: int) -> str:
    from speedy.stages.distill import selected_teachers, teachers_key
    from speedy.trials import GOLD, KD, distill_spec

    config, task = study.config, study.config.tasks[0]
    mode = KD if RECIPES[recipe][1].get("kd", True) else GOLD
    point = {"batch_size": config.distill.batch_size[0], "learning_rate": config.distill.learning_rate[0]}
    spec = distill_spec(config, task, config.students[0], mode, point)
    teacher_key = teachers_key(selected_teachers(study, task))
    return spec.key(study.data_fingerprint(task), teacher_key)


def table(results: list[dict], args) -> str:
    metric = "F1" if args.task in ("ner", "qa") else "accuracy"  # POS: every word is scored: its F1 is the accuracy
    lines = [f"| recipe | layers | seeds | val {metric} (mean ± std) | vs fine-tuned | of teacher | min / run | "
             f"epochs (best) |",
             "|---|---|---|---|---|---|---|---|"]
    teacher = max((r["teacher"] for r in results), default=float("nan"))
    for depth in args.depths:
        base = [r["score"] for r in results if r["depth"] == depth and r["recipe"] == "finetuned"]
        for recipe in args.recipes:
            rows = [r for r in results if r["depth"] == depth and r["recipe"] == recipe]
            if not rows:
                continue
            scores = [100 * r["score"] for r in rows]
            mean, std = statistics.mean(scores), (statistics.stdev(scores) if len(scores) > 1 else 0.0)
            gap = f"{mean - 100 * statistics.mean(base):+.2f}" if base and recipe != "finetuned" else ""
            minutes = statistics.mean(r["minutes"] for r in rows)
            epochs = statistics.mean(r["epochs"] or 0 for r in rows)
            best = [r["best_epoch"] for r in rows if r.get("best_epoch") is not None]
            kept = f" ({'-'.join(f'{b:g}' for b in sorted({min(best), max(best)}))})" if best else ""
            lines.append(f"| {recipe} | {depth} | {len(rows)} | {mean:.2f} ± {std:.2f} | {gap} | "
                         f"{mean / (100 * teacher):.1%} | {minutes:.1f} | {epochs:.1f}{kept} |")
    teachers = next((r["teachers"] for r in results), {})
    from speedy.tasks import task_class

    # what early stopping and the best checkpoint follow: the task type's own selection metric
    selection = task_class({"qa": "qa", "demo": "classification"}.get(args.task, "tagging")).selection_metric
    followed = metric if selection != "loss" else f"loss ({metric} is scored on the best checkpoint)"
    if args.task == "demo":
        data = (f"Task demo (rv1909-genre): 1,200 labelled verses (200 a genre), {args.transfer:,} other verses as "
                f"unlabelled transfer text, 300 validation verses, max length {args.max_length}.")
    elif args.task == "qa":
        data = (f"Task qa (SQuAD-es, split by article): {args.labelled} labelled questions, {args.transfer} other "
                f"questions of the training articles as unlabelled (question, context) pairs, {args.val} validation "
                f"questions of held-out articles, max length {args.max_length}, stride {args.stride}, Spanish "
                f"normalisation.")
    else:
        data = (f"Task {args.task}: {args.labelled} labelled sentences, {args.transfer} unlabelled transfer sentences, "
                f"{args.val} validation sentences ({'esp.testa' if args.task == 'ner' else 'AnCora dev'}), max length "
                f"{args.max_length}.")
    sizes = (f"{data} Teacher "
             f"multilingual-e5-small (12 layers), {args.teacher_epochs} epochs, lr {args.teacher_lr:g}, seeds "
             f"{args.teacher_seeds}, selected by validation {metric}: "
             + ", ".join(f"{name} {100 * score:.2f}" for name, score in teachers.items())
             + f". Students: up to {args.student_epochs} epochs, patience {args.patience}, lr {args.student_lr:g}, "
             f"batch {args.batch_size}, best checkpoint by validation {followed}.")
    return "\n".join(lines) + "\n\n" + sizes + " " + collapse_note(results, args.restarts) + "\n"


def collapse_note(results: list[dict], restarts: int) -> str:
    """What the table's rows say about collapsed runs (one class on every validation example): which were
    trained again from seed + 1000, which ended collapsed, which were recorded before speedy checked."""
    def names(rows):
        return ", ".join(f"{r['recipe']} {r['depth']}L seed {r['seed']}" for r in rows)
    restarted = [r for r in results if r.get("restarts")]
    collapsed = [r for r in results if r.get("collapsed")]
    unchecked = [r for r in results if r.get("collapsed") is None]
    parts = [f"Collapsed runs were trained again from seed + 1000, up to {restarts} time(s), every recipe alike: "
             + (", ".join(f"{r['recipe']} {r['depth']}L seed {r['seed']} (ran as seed {r['seed_used']})"
                          for r in restarted) if restarted else "none was") + "."]
    if collapsed:
        parts.append(f"Still collapsed: {names(collapsed)}.")
    if unchecked:
        parts.append(f"Recorded before collapsed runs were detected (no verdict stored; see their scores): "
                     f"{names(unchecked)}.")
    return " ".join(parts)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, "utf-8")
    os.replace(tmp, path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", choices=["ner", "pos", "demo", "qa"], default="ner")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-recipes"))
    parser.add_argument("--labelled", type=int, default=1000)
    parser.add_argument("--transfer", type=int, default=2000)
    parser.add_argument("--val", type=int, default=500)
    parser.add_argument("--depths", type=int, nargs="+", default=[4])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--max-length", type=int, default=None, help="default: 256 for qa, 128 otherwise")
    parser.add_argument("--stride", type=int, default=64, help="qa: tokens of overlap between context windows")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--teacher-epochs", type=int, default=10)
    parser.add_argument("--teacher-lr", type=float, default=2e-4)
    parser.add_argument("--teacher-seeds", type=int, nargs="+", default=[42, 43])
    parser.add_argument("--student-epochs", type=int, default=10)
    parser.add_argument("--student-lr", type=float, default=2e-4)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--restarts", type=int, default=1, help="a student run that collapses (one class on every "
                        "validation example) is trained again from a new seed this many times, every recipe alike")
    parser.add_argument("--table", action="store_true", help="only rebuild the table from the finished runs")
    args = parser.parse_args(argv)
    args.max_length = args.max_length or (256 if args.task == "qa" else 128)
    if args.task != "demo" and not Path(args.data_dir).is_dir():
        print(f"error: {args.data_dir}: no such folder (the shared Spanish data)", file=sys.stderr)
        return 2

    from speedy.console import quiet_libraries

    quiet_libraries()
    out = Path(args.output)
    data = prepare(args, out / "data")
    if args.table:  # every finished run in the store (several benchmark processes may share it), no training
        results = [row for seed in args.seeds for depth in args.depths for recipe in args.recipes
                   if (row := run_recipe(args, data, recipe, depth, seed, train=False))]
        report = table(results, args)
        write_atomically(out / "recipes.md", report)
        write_atomically(out / "recipes.json", json.dumps(results, indent=1))
        print(report)
        return 0
    results = []
    start = time.time()
    for seed in args.seeds:
        for depth in args.depths:
            for recipe in args.recipes:
                row = run_recipe(args, data, recipe, depth, seed)
                if row is None:  # under way in another process sharing the store: its own table has it
                    print(f"[{(time.time() - start) / 60:.0f} min] {recipe} {depth}L seed {seed}: in another "
                          f"process", flush=True)
                    continue
                results.append(row)
                report = table(results, args)
                write_atomically(out / "recipes.md", report)
                write_atomically(out / "recipes.json", json.dumps(results, indent=1))
                print(f"[{(time.time() - start) / 60:.0f} min] {recipe} {depth}L seed {seed}: "
                      f"{100 * row['score']:.2f}", flush=True)
    print(table(results, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
