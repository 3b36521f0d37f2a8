r"""Benchmark: sentence embeddings through the study pipeline (the ``embedding`` task type; issue 16).

The same split as ``benchmarks/embeddings.py`` (SQuAD-es by article, read from ``../shared/data``, never copied):
``--train-texts`` questions and paragraphs of the training articles as unpaired text (with ``--pairs``, each
question paired with its paragraph when both are among them, for the gold term ``--alpha``), optionally
``--sentences`` sentences cut from those paragraphs (as queries: short in-domain text like the questions) and
``--windows`` runs of 2 or 3 consecutive sentences of them (as passages: more passage-side text than the paragraphs
whole), ``--crops`` random runs of 4-12 of their words (as queries: Contriever's cropping), ``--augment`` copies of
all that text with words replaced by similar ones (TinyBERT's augmentation, the neighbours from a static student's
token vectors), ``--extra-texts`` other Spanish sentences (CoNLL-2002 ``esp.train`` and the package's Bible verses)
as transfer text, and the ``--validation-articles`` held-out articles as the retrieval task (each question's
paragraph among all their paragraphs). The study's test split is the same validation file: every figure here is a
validation figure.

The teacher (multilingual-e5-small) is used as it is; students of ``--depths`` layers (the teacher's layers spread,
or the ``--layers`` named; vocabulary pruned to the study's text) learn its cached vectors by ``--loss`` (mse or
cosine), and with ``--relation-weight`` also how each text of a batch relates to the others (the teacher's in-batch
similarities of its last layer's mean-pooled states, i.e. of its vectors: ``distill.relation_weight``), with
``--token-weight`` every real token's state (what the vector is the mean of: ``distill.hidden_units: tokens``), with
early stopping on validation nDCG@10 and the best checkpoint kept. The study lives in ``--output`` and resumes when
killed. It prints, and writes to ``<output>/embedding-study.md``, one row per model: nDCG@10, MRR@10, R@1, R@10, the
share of the teacher's nDCG@10, epochs run and wall time. Speed is not timed here (``speedy measure`` on the study,
with nothing else on the CPU, does). Example::

    python benchmarks/embedding_study.py --train-texts 3000 --depths 4 --epochs 10 --output runs/bench-embed-study
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from common import REPO
from embeddings import (SQUAD, other_spanish_texts, paragraph_crops, paragraph_sentences, paragraph_windows,
                        split_articles, training_texts)

PREFIXES = {"query: ": "query", "passage: ": "passage"}


def kind_and_body(text: str) -> tuple[str, str]:
    """``("query" | "passage", text without its e5 prefix)``."""
    prefix = next(p for p in PREFIXES if text.startswith(p))
    return PREFIXES[prefix], text[len(prefix):]


def write_json_lines(path: Path, rows: list[dict]) -> str:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), "utf-8")
    os.replace(tmp, path)
    return str(path)


def write_unpaired(path: Path, texts: list[str]) -> str:
    """``texts`` (e5-prefixed) as JSON lines of one unpaired text each, ``{"query": ...}`` or ``{"passage": ...}``,
    written atomically."""
    return write_json_lines(path, [dict([kind_and_body(text)]) for text in texts])


def write_paired(path: Path, texts: list[str], train_file: Path) -> str:
    """``texts`` (e5-prefixed) as JSON lines, each question paired with its paragraph when both are among them
    (``{"query": ..., "passage": ...}``: the gold term's pairs, first), every other text unpaired; written
    atomically."""
    data = json.loads(train_file.read_text("utf-8"))
    paragraph_of = {}
    for article in data["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                paragraph_of.setdefault(qa["question"], paragraph["context"])
    texts = [kind_and_body(text) for text in texts]
    chosen = {body for kind, body in texts if kind == "passage"}
    pairs = [{"query": body, "passage": paragraph_of[body]} for kind, body in texts
             if kind == "query" and paragraph_of.get(body) in chosen]
    in_pairs = {(kind, pair[kind]) for pair in pairs for kind in pair}
    return write_json_lines(path, pairs + [{kind: body} for kind, body in texts if (kind, body) not in in_pairs])


def write_plain(path: Path, texts: list[str]) -> str:
    """Passages (prefix removed: the task adds it) one a line, written atomically."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(text.removeprefix("passage: ").replace("\n", " ") + "\n" for text in texts), "utf-8")
    os.replace(tmp, path)
    return str(path)


def augmented_texts(texts: list[str], args) -> list[str]:
    """``args.augment`` copies of ``texts`` (e5-prefixed), words replaced by their neighbours in the static
    student ``args.augment_vectors`` (TinyBERT's augmentation, :mod:`speedy.embed.augment`), prefixes kept."""
    from speedy.embed.augment import augmented, word_neighbours
    from speedy.embed.static import StaticEmbedder
    from speedy.errors import SpeedyError

    try:
        table = StaticEmbedder.load(args.augment_vectors)
    except SpeedyError as error:
        raise SystemExit(f"error: --augment-vectors: {error}") from None
    kinds, bodies = zip(*map(kind_and_body, texts))
    try:  # words are counted over all the training text: a paragraph's words again in its sentences and crops
        neighbours = word_neighbours(list(bodies), table.tokenizer, table.vectors)
        new = augmented(list(bodies), neighbours, copies=args.augment, rate=args.augment_rate, seed=args.seed)
    except SpeedyError as error:
        raise SystemExit(f"error: --augment: {error}") from None
    prefix_of = {kind: prefix for prefix, kind in PREFIXES.items()}
    return [prefix_of[kind] + body for kind, body in zip(kinds * args.augment, new)]


def study_config(args, files: dict, transfer: list[str]) -> dict:
    from speedy.models.students import spread_layers

    kept = f"-layers-{'-'.join(map(str, args.layers))}" if args.layers else ""
    return {
        "name": "embedding-study", "output_dir": str(Path(args.output) / "study"), "seed": args.seed,
        "tasks": [{"name": "squad-es-retrieval", "type": "embedding", "max_length": args.max_length, "data": files,
                   "transfer_files": transfer}],
        "teachers": [{"name": "multilingual-e5-small", "prune_vocab": True}],
        "students": [args.continued] if args.continued else
                    [{"name": f"e5-{d}L{kept}", "base": "multilingual-e5-small", "kind": "truncate",
                      "layers": args.layers or spread_layers(12, d), "prune_vocab": True} for d in args.depths],
        "grid": {"batch_size": [args.batch_size], "epochs": [1], "learning_rate": [args.learning_rate]},
        "distill": {"loss": args.loss, "alpha": args.alpha, "relation_weight": args.relation_weight,
                    "epochs": args.epochs,
                    **({"hidden_weight": args.token_weight, "hidden_loss": args.token_loss,  # keys unchanged when off
                        "hidden_layers": args.token_layers, "hidden_units": "tokens"} if args.token_weight else {}),
                    "patience": args.patience,
                    "batch_size": args.batch_size, "learning_rate": args.learning_rate, "warmup_ratio": 0.05,
                    "weight_decay": 0.0},
        "speed": {"batch_size": 1, "length": 128, "warmup": 10, "runs": 100},
    }


def continued_student(folder: str) -> dict:
    """A student that starts where a saved one stopped (its folder: a trial's ``model``), trained on by a new
    schedule: the "more epochs" lever without a run as long as all of them."""
    config = Path(folder) / "config.json"
    if not config.is_file():
        raise SystemExit(f"error: --student-base {folder}: no config.json there (a saved student's folder)")
    depth = json.loads(config.read_text("utf-8"))["num_hidden_layers"]
    return {"name": f"e5-{depth}L-continued", "base": str(folder), "kind": "pretrained", "prune_vocab": True}


def table(study, args) -> str:
    task = study.config.tasks[0].name
    teacher = study.store.selection(task)
    rows = [("teacher e5-small (12 layers, as it is)", teacher)]
    rows += [(f"student {t.name}", t) for t in sorted(study.store.trials("distill", task), key=lambda t: t.name)]
    reference = (teacher.val_metrics or {}).get("ndcg@10") if teacher else None
    lines = ["| model | nDCG@10 | MRR@10 | R@1 | R@10 | of teacher | epochs | min |", "|---|---|---|---|---|---|---|---|"]
    for name, trial in rows:
        if trial is None or trial.status != "done":
            lines.append(f"| {name} | (not done) | | | | | | |")
            continue
        m = trial.val_metrics or {}
        share = f"{100 * m['ndcg@10'] / reference:.1f}%" if reference else "-"
        epochs = (trial.info or {}).get("epochs_run", "-")
        lines.append(f"| {name} | {100 * m['ndcg@10']:.2f} | {100 * m['mrr@10']:.2f} | {100 * m['recall@1']:.2f} | "
                     f"{100 * m['recall@10']:.2f} | {share} | {epochs} | {(trial.seconds or 0) / 60:.1f} |")
    lines += ["", f"Validation: {args.validation_articles} held-out SQuAD-es articles (each question's paragraph among "
              f"all their paragraphs). Training text: {args.train_texts:,} unpaired questions and paragraphs of the "
              f"other articles" + (f", + up to {args.sentences:,} sentences of their paragraphs as queries" if
                                   args.sentences else "") +
              (f", + up to {args.windows:,} runs of 2-3 of their sentences as passages" if args.windows else "") +
              (f", + up to {args.crops:,} random 4-12-word crops of their paragraphs as queries" if args.crops
               else "") +
              (f", + {args.augment} cop{'y' if args.augment == 1 else 'ies'} of all that with each replaceable word "
               f"replaced by a neighbour at rate {args.augment_rate:g}" if args.augment else "") +
              (f", + {args.extra_texts:,} other Spanish sentences as transfer text" if args.extra_texts else "") +
              (", questions paired with their paragraphs" if args.pairs else "") +
              f". Students: KD ({args.loss}" + (f" + gold in-batch contrastive, alpha {args.alpha:g}" if args.alpha
                                                else "") + (f" + in-batch relations, weight {args.relation_weight:g}"
                                                if args.relation_weight else "") +
              (f" + every token's states ({args.token_loss}, {args.token_layers} layers), weight "
               f"{args.token_weight:g}" if args.token_weight else "") +
              f") on the teacher's cached vectors, up to {args.epochs} epochs, patience "
              f"{args.patience}, lr {args.learning_rate:g}, batch {args.batch_size}, max length {args.max_length}, "
              f"vocabulary pruned to the study's text; best checkpoint by validation nDCG@10."]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-embed-study"))
    parser.add_argument("--validation-articles", type=int, default=10)
    parser.add_argument("--train-texts", type=int, default=3000)
    parser.add_argument("--extra-texts", type=int, default=0)
    parser.add_argument("--sentences", type=int, default=0,
                        help="add up to N sentences cut from the training paragraphs, as queries (0: none)")
    parser.add_argument("--windows", type=int, default=0,
                        help="add up to N runs of 2 or 3 consecutive sentences of the training paragraphs, as "
                             "passages (0: none)")
    parser.add_argument("--crops", type=int, default=0,
                        help="add up to N random runs of 4-12 words of the training paragraphs, as queries "
                             "(Contriever's cropping; 0: none)")
    parser.add_argument("--augment", type=int, default=0,
                        help="add N copies of the training text with words replaced by their neighbours in "
                             "--augment-vectors (TinyBERT's augmentation; 0: none)")
    parser.add_argument("--augment-rate", type=float, default=0.3,
                        help="the chance that each replaceable word is replaced")
    parser.add_argument("--augment-vectors", default=None,
                        help="a static student's folder (benchmarks/embeddings.py --context): its token vectors "
                             "give each word's neighbours")
    parser.add_argument("--depths", type=int, nargs="+", default=[4])
    parser.add_argument("--layers", type=int, nargs="+", default=None,
                        help="the teacher's layers (0-11) a student keeps, one student (default: --depths of them, "
                             "spread, ending with the last)")
    parser.add_argument("--student-base", default=None,
                        help="train on from this saved student's folder (a trial's model/) instead of "
                             "truncating the teacher (--depths and --layers are then unused)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--loss", choices=["mse", "cosine"], default="mse")
    parser.add_argument("--pairs", action="store_true",
                        help="pair each training question with its paragraph when both are in the training text "
                             "(the gold term's pairs); without it every text is unpaired")
    parser.add_argument("--alpha", type=float, default=0.0,
                        help="weight of the gold term, each training question against the paragraphs of its batch "
                             "(in-batch contrastive, distill.alpha; needs --pairs; 0: KD alone)")
    parser.add_argument("--relation-weight", type=float, default=0.0,
                        help="weight of in-batch similarity-relation KD beside the vectors' loss (0: off)")
    parser.add_argument("--token-weight", type=float, default=0.0,
                        help="weight of token-level KD: every real token's state of the student's layers against "
                             "the teacher's (distill.hidden_units: tokens; 0: off)")
    parser.add_argument("--token-loss", choices=["mse", "cosine"], default="cosine")
    parser.add_argument("--token-layers", choices=["last", "uniform"], default="last",
                        help="last: the last layers only; uniform: each student layer with the teacher's it came from")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stages", nargs="+", default=["finetune", "select", "distill"],
                        help="the study's stages to run (measure: only with nothing else on the CPU)")
    parser.add_argument("--table", action="store_true", help="only print the table from the study's store")
    args = parser.parse_args()
    if args.layers:
        args.depths = [len(args.layers)]
    if args.alpha and not args.pairs:
        parser.error("--alpha needs --pairs (the gold term learns from the training questions' paragraphs)")
    if args.augment < 0 or not 0 <= args.augment_rate <= 1:
        parser.error(f"--augment ({args.augment}) must not be negative and --augment-rate ({args.augment_rate:g}) "
                     f"must lie in [0, 1]")
    if args.augment and not args.augment_vectors:
        parser.error("--augment needs --augment-vectors (a static student's folder: its words' neighbours)")
    args.continued = continued_student(args.student_base) if args.student_base else None  # a bad folder: now
    source = Path(args.data_dir) / SQUAD
    if not source.is_file():
        print(f"error: {source}: no such file (the shared Spanish data)", file=sys.stderr)
        return 2

    from speedy.configfile import load_config
    from speedy.console import quiet_libraries
    from speedy.pipeline import Study

    quiet_libraries()
    out = Path(args.output)
    train_file, validation_file = split_articles(source, out / "data", args.validation_articles, args.seed)
    texts = training_texts(train_file, args.train_texts, args.seed)
    if args.sentences:
        texts += paragraph_sentences(train_file, args.sentences, args.seed)
    if args.windows:
        texts += paragraph_windows(train_file, args.windows, args.seed)
    if args.crops:
        texts += paragraph_crops(train_file, args.crops, args.seed)
    if args.augment:
        texts += augmented_texts(texts, args)
    train = (write_paired(out / "data" / "train-pairs.jsonl", texts, train_file) if args.pairs else
             write_unpaired(out / "data" / "train.jsonl", texts))
    files = {"train": train,
             "validation": str(validation_file), "test": str(validation_file)}
    transfer = [write_plain(out / "data" / f"extra-{args.extra_texts}.txt",
                            other_spanish_texts(Path(args.data_dir), args.extra_texts, args.seed))] \
        if args.extra_texts else []
    config_path = out / "study.yaml"
    config_path.write_text(yaml.safe_dump(study_config(args, files, transfer), sort_keys=False), "utf-8")
    study = Study(load_config(config_path))
    if not args.table:
        study.run(args.stages)
    text = table(study, args)
    tmp = out / "embedding-study.md.tmp"
    tmp.write_text(text + "\n", "utf-8")
    os.replace(tmp, out / "embedding-study.md")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
