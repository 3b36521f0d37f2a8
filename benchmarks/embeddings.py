"""Benchmark: fast Spanish sentence embeddings by distillation, evaluated on semantic search (issue 16).

SQuAD-es (``../shared/data/squad-es``, read there, never copied) is split by article (seeded): the training
articles give unlabelled text (their questions as ``query: ...``, their paragraphs as ``passage: ...``; no
question is ever paired with its paragraph in training), the validation articles give the retrieval task: each
question's gold paragraph among all validation paragraphs. The teacher is multilingual-e5-small as its authors
use it (mean pooling, unit vectors, prefixes). One run compares side by side:

* the teacher; truncated students of ``--depths`` layers (the teacher's layers spread; their 250k token embeddings frozen, as the teacher's
  own), and a 4-layer one with its vocabulary pruned to the training text (embeddings trained), each distilled on
  the teacher's cached vectors (MSE on unit vectors, early stopping on held-out training text);
* a static student (token vectors of the teacher, PCA to ``--static-dims``, weighted mean), the same tuned on the
  training texts' cached teacher vectors (tokenlearn-style; with ``--extra-texts`` or ``--sentences`` one more row
  each, tuned on more text; with ``--context`` each tuned row once more, starting from the teacher's average token
  states in the tuning texts instead of its tokens run alone, SIF-weighted by the tokens' frequencies there, and
  with ``--remove-common K...`` one such row per K, its first K common directions removed), and ``model2vec``'s own
  distillation of the same teacher (run by ``--model2vec-python``: model2vec's distill extra needs transformers
  < 5.4, so it lives in its own venv: ``python -m venv m2v && m2v/bin/pip install torch==2.13.0
  'model2vec[distill]'``; evaluating its model needs only ``pip install model2vec`` here);
* BM25 (``bm25s``), the sanity anchor; and, for the 4-layer student, an HNSW index against exact search (the
  recall it loses).

Quality: nDCG@10, MRR@10, Recall@1/10 (``ir-measures``). Speed (``--phase time``, run it with nothing else on the
CPU): encoded texts per second on ``--threads`` threads, a mix of validation questions and paragraphs. Size: the
model folder on disk. Targets: 4-layer >= 95% of the teacher's nDCG@10 at >= 3x its speed; 2-layer >= 90%;
static >= 80% at >= 100x and better than model2vec; every student above BM25. Example (the README's sizes)::

    python benchmarks/embeddings.py --train-texts 3000 --epochs 8 --depths 2 4 --phase train
    python benchmarks/embeddings.py --train-texts 3000 --epochs 8 --depths 2 4 --phase time
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from common import REPO

SQUAD = Path("squad-es") / "squad-es-v1.1-dev-small-minus-xquad.json"


def split_articles(source: Path, out: Path, validation_articles: int, seed: int) -> tuple[Path, Path]:
    """Two SQuAD files, train and validation, of whole articles."""
    data = json.loads(source.read_text("utf-8"))
    articles = list(data["data"])
    random.Random(seed).shuffle(articles)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, part in (("train", articles[validation_articles:]), ("validation", articles[:validation_articles])):
        path = out / f"{name}.json"
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"version": data.get("version", "1.1"), "data": part}, ensure_ascii=False), "utf-8")
        os.replace(tmp, path)
        paths.append(path)
    return paths[0], paths[1]


def training_texts(path: Path, limit: int, seed: int) -> list[str]:
    """The training articles' questions and paragraphs as unlabelled text, prefixed as e5 reads them."""
    from speedy.embed.encoder import with_prefix

    data = json.loads(path.read_text("utf-8"))
    paragraphs = [p["context"] for a in data["data"] for p in a["paragraphs"]]
    questions = [q["question"] for a in data["data"] for p in a["paragraphs"] for q in p["qas"]]
    texts = with_prefix(questions, "query") + with_prefix(paragraphs, "passage")
    random.Random(seed).shuffle(texts)
    return texts[:limit]


SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[¿¡\"«(]?[A-ZÁÉÍÓÚÑ0-9])")


def _paragraphs(path: Path, exclude=frozenset()) -> list[str]:
    """The paragraphs of a SQuAD file, but those in ``exclude`` (held-out text kept for early stopping)."""
    data = json.loads(path.read_text("utf-8"))
    return [p["context"] for a in data["data"] for p in a["paragraphs"] if p["context"] not in exclude]


def _sentences(paragraph: str) -> list[str]:
    return [s.strip() for s in SENTENCE_END.split(paragraph) if s.strip()]


def paragraph_sentences(path: Path, limit: int, seed: int, min_words: int = 4, exclude=frozenset()) -> list[str]:
    """``limit`` sentences of the training articles' paragraphs but ``exclude`` (split after ``.``, ``!`` or ``?``
    before a capital or a digit; fragments under ``min_words`` words dropped), shuffled, prefixed as queries: short
    in-domain texts like the questions, never from validation articles (nor from held-out paragraphs)."""
    from speedy.embed.encoder import with_prefix

    sentences = sorted({s for p in _paragraphs(path, exclude) for s in _sentences(p) if len(s.split()) >= min_words})
    random.Random(seed).shuffle(sentences)
    return with_prefix(sentences[:limit], "query")


def paragraph_windows(path: Path, limit: int, seed: int, sizes: tuple[int, ...] = (2, 3),
                      exclude=frozenset()) -> list[str]:
    """``limit`` runs of ``sizes`` consecutive sentences of the training articles' paragraphs but ``exclude``,
    shuffled, prefixed as passages: more passage-side text than the few paragraphs whole (the students' passage
    vectors see only those otherwise), never from validation articles. A window as long as its whole paragraph is
    left out (the paragraph itself may be in the training text)."""
    from speedy.embed.encoder import with_prefix

    windows = set()
    for paragraph in _paragraphs(path, exclude):
        sentences = _sentences(paragraph)
        for size in sizes:
            if size < len(sentences):
                windows.update(" ".join(sentences[i:i + size]) for i in range(len(sentences) - size + 1))
    windows = sorted(windows)
    random.Random(seed).shuffle(windows)
    return with_prefix(windows[:limit], "passage")


def paragraph_crops(path: Path, limit: int, seed: int, words: tuple[int, int] = (4, 12),
                    exclude=frozenset()) -> list[str]:
    """Up to ``limit`` distinct random runs of ``words`` (inclusive range) consecutive words of the training
    articles' paragraphs but ``exclude``, prefixed as queries: Contriever's independent cropping (Izacard et al.,
    2022), short pseudo-queries about what the paragraphs say, never from validation articles. The paragraphs are
    shuffled, then drawn in turn, so each gives about as many."""
    from speedy.embed.encoder import with_prefix

    paragraphs = [p.split() for p in _paragraphs(path, exclude) if len(p.split()) >= words[1]]
    rng = random.Random(seed)
    rng.shuffle(paragraphs)
    crops: list[str] = []
    seen: set[str] = set()
    for attempt in range(20 * limit):
        if len(crops) >= limit or not paragraphs:
            break
        text = paragraphs[attempt % len(paragraphs)]
        length = rng.randint(*words)
        start = rng.randrange(len(text) - length + 1)
        crop = " ".join(text[start:start + length])
        if crop not in seen:
            seen.add(crop)
            crops.append(crop)
    return with_prefix(crops, "query")


def other_spanish_texts(data_dir: Path, limit: int, seed: int) -> list[str]:
    """``limit`` Spanish sentences that are not SQuAD-es (none of its questions or paragraphs): CoNLL-2002
    ``esp.train`` sentences (words joined by spaces) and the package's Bible verses, half each where they have as
    many, shuffled; prefixed as passages."""
    from speedy.data.bible import shipped_verses
    from speedy.data.readers import read_conll
    from speedy.embed.encoder import with_prefix

    rng = random.Random(seed)
    conll = [" ".join(s["tokens"]) for s in read_conll(data_dir / "conll2002-es" / "esp.train")]
    verses = [text for _, text in shipped_verses()]
    rng.shuffle(conll)
    rng.shuffle(verses)
    half = min(limit // 2, len(conll))
    texts = conll[:half] + verses[: limit - half]
    rng.shuffle(texts)
    return with_prefix(texts, "passage")


def folder_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file() and "checkpoint" not in str(p)) / 1e6


def evaluate(encode_fn, data, k: int = 10) -> tuple[dict, np.ndarray, np.ndarray]:
    from speedy.embed.encoder import with_prefix
    from speedy.embed.retrieval import exact_search, retrieval_metrics, to_run

    queries = encode_fn(with_prefix(data.queries, "query"))
    passages = encode_fn(with_prefix(data.passages, "passage"))
    scores, indices = exact_search(queries, passages, k)
    return retrieval_metrics(to_run(scores, indices, data.query_ids, data.passage_ids), data.qrels), queries, passages


def texts_per_second(encode_fn, texts: list[str], seconds: float = 8.0) -> float:
    encode_fn(texts[:32])  # warm-up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        encode_fn(texts)
        done += len(texts)
    return done / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--output", default=str(REPO / "runs" / "bench-embed"))
    parser.add_argument("--validation-articles", type=int, default=10)
    parser.add_argument("--train-texts", type=int, default=3000)
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--static-dims", type=int, default=256)
    parser.add_argument("--static-pooling", choices=["mean", "token"], default="mean")
    parser.add_argument("--static-lr", type=float, default=1e-2, help="the tuned static student's learning rate")
    parser.add_argument("--static-max-tokens", type=int, default=None, help="only the first N vocabulary ids (a "
                        "smoke test)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--speed-texts", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--phase", choices=["train", "time", "all"], default="all")
    parser.add_argument("--no-pruned", action="store_true", help="leave out the pruned-vocabulary student")
    parser.add_argument("--extra-texts", type=int, default=0, help="one more static row, tuned on the training "
                        "texts and this many other Spanish sentences (CoNLL-2002 esp.train, the Bible's verses)")
    parser.add_argument("--sentences", type=int, default=0, help="one more static row, tuned on the training "
                        "texts, up to this many sentences of the training paragraphs and as many 4-12-word crops of "
                        "them (in-domain text, never from validation articles nor held-out paragraphs)")
    parser.add_argument("--context", action="store_true", help="each tuned static row once more, its token vectors "
                        "first the teacher's average states of them in the tuning texts (speedy.embed.context)")
    parser.add_argument("--remove-common", type=int, nargs="+", default=[0], help="--context rows, one per K: the "
                        "first K common directions of the tuning texts' sentence vectors removed (SIF's second "
                        "step; 0: none)")
    parser.add_argument("--no-students", action="store_true", help="leave out every transformer student (static "
                        "rows and anchors only)")
    parser.add_argument("--model2vec-python", default="/work/m2v/bin/python",
                        help="a Python with 'model2vec[distill]' (it needs transformers < 5.4: its own venv)")
    args = parser.parse_args()
    if args.remove_common != [0] and not args.context or min(args.remove_common) < 0:
        parser.error("--remove-common: numbers >= 0, and only with --context (it shapes the --context rows)")
    source = Path(args.data_dir) / SQUAD
    if not source.is_file():
        print(f"error: {source}: no such file (the shared Spanish data)", file=sys.stderr)
        return 2

    import torch

    from speedy.console import quiet_libraries
    from speedy.embed.distill import distill_student, teacher_vectors
    from speedy.embed.encoder import build_student, encode, sentence_model, teacher_folder, with_prefix
    from speedy.embed.retrieval import bm25_search, hnsw_search, recall_of_approximation, retrieval_metrics, \
        squad_retrieval, to_run
    from speedy.embed.static import SentenceTargets, distill_static, token_vectors

    quiet_libraries()
    torch.manual_seed(args.seed)
    out = Path(args.output)
    train_file, validation_file = split_articles(source, out / "data", args.validation_articles, args.seed)
    data = squad_retrieval(validation_file)
    texts = training_texts(train_file, args.train_texts, args.seed)
    held = max(50, len(texts) // 10)
    train, held_out = texts[held:], texts[:held]
    teacher_dir = teacher_folder()
    teacher = sentence_model(teacher_dir, args.max_length)
    results_path = out / "embeddings.json"
    results = json.loads(results_path.read_text("utf-8")) if results_path.is_file() else {}

    def save():
        tmp = results_path.with_name(results_path.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=1), "utf-8")
        os.replace(tmp, results_path)

    models = {"teacher e5-small (12 layers)": ("st", teacher_dir)}
    for depth in [] if args.no_students else args.depths:
        models[f"student {depth} layers"] = ("st", out / "models" / f"e5-{depth}L")
    if not args.no_pruned and not args.no_students:
        models["student 4 layers, pruned vocabulary"] = ("st", out / "models" / "e5-4L-pruned")
    models[f"static ({args.static_dims} dims)"] = ("static", out / "models" / "static")
    models[f"static ({args.static_dims} dims), tuned on the training texts"] = ("static", out / "models" / "static-tuned")
    if args.extra_texts:
        models[f"static ({args.static_dims} dims), tuned on the training texts + {args.extra_texts:,} other "
               f"sentences"] = ("static", out / "models" / f"static-tuned-extra-{args.extra_texts}")
    if args.sentences:
        sentences_folder = out / "models" / f"static-tuned-sentences-{args.sentences}"
        models[f"static ({args.static_dims} dims), tuned on the training texts + up to {args.sentences:,} of their "
               f"sentences and {args.sentences:,} crops"] = ("static", sentences_folder)
    common_removed = {}  # --context row -> how many common directions it removes
    if args.context:  # each tuned row again, its token vectors first averaged from the teacher's states in context
        for name, (kind, folder) in list(models.items()):
            for k in args.remove_common if kind == "static" and "tuned" in name else []:
                row = name + ", from the teacher's token states in them" + (f", {k} common directions removed"
                                                                            if k else "")
                models[row] = ("static", folder.with_name(folder.name + "-context" + (f"-common{k}" if k else "")))
                common_removed[row] = k
    models["model2vec (its own distillation)"] = ("model2vec", out / "models" / "model2vec")

    if args.phase in ("train", "all"):
        targets = teacher_vectors(teacher, teacher_dir, train, out / "cache")
        held_targets = teacher_vectors(teacher, teacher_dir, held_out, out / "cache")
        for name, (kind, folder) in models.items():
            if name.startswith("student") and not (folder / "modules.json").is_file():
                depth = int(name.split()[1])
                base = build_student(teacher_dir, depth, out / "encoders" / folder.name,
                                     prune_texts=train if "pruned" in name else None)
                start = time.time()
                summary = distill_student(sentence_model(base, args.max_length), train, targets, held_out, held_targets,
                                          folder, epochs=args.epochs, learning_rate=args.learning_rate,
                                          batch_size=args.batch_size, patience=args.patience, seed=args.seed,
                                          freeze_embeddings="pruned" not in name)
                results.setdefault(name, {})["train_minutes"] = (time.time() - start) / 60
                results[name]["epochs_run"] = summary["epochs_run"]
            elif kind == "static" and not (folder / "static.json").is_file():
                start = time.time()
                vectors, tokenizer_path = static_token_vectors(token_vectors, teacher_dir, args, out / "cache")
                tune_texts, tune_targets = train, targets
                extra = []  # more text joins the training texts (never the held-out)
                if "other sentences" in name:
                    extra = other_spanish_texts(Path(args.data_dir), args.extra_texts, args.seed)
                elif "their sentences" in name:  # none cut from the held-out paragraphs (early stopping's)
                    held = {text.removeprefix("passage: ") for text in held_out}
                    extra = (paragraph_sentences(train_file, args.sentences, args.seed, exclude=held)
                             + paragraph_crops(train_file, args.sentences, args.seed, exclude=held))
                if extra:
                    tune_texts = train + extra
                    tune_targets = np.concatenate([targets, teacher_vectors(teacher, teacher_dir, extra,
                                                                            out / "cache")])
                tune = SentenceTargets(tune_texts, tune_targets, held_out, held_targets, learning_rate=args.static_lr,
                                       seed=args.seed) if "tuned" in name else None
                distill_static(str(teacher_dir), dims=args.static_dims, pooling=args.static_pooling, vectors=vectors,
                               tokenizer_path=tokenizer_path, tune=tune, context_max_length=args.max_length,
                               context_texts=tune_texts if name in common_removed else None,
                               remove_common=common_removed.get(name, 0)).save(folder)
                results.setdefault(name, {})["train_minutes"] = (time.time() - start) / 60
            elif kind == "model2vec" and not folder.is_dir() and not Path(args.model2vec_python).is_file():
                print(f"--model2vec-python {args.model2vec_python}: no such file; model2vec's row is left out",
                      file=sys.stderr)
            elif kind == "model2vec" and not folder.is_dir():
                # model2vec's distillation pins transformers < 5.4 (speedy uses 5.23): it runs in its own venv
                code = ("import sys; from model2vec.distill import distill; "
                        "distill(model_name=sys.argv[1], pca_dims=int(sys.argv[3])).save_pretrained(sys.argv[2])")
                start = time.time()
                done = subprocess.run([args.model2vec_python, "-c", code, str(teacher_dir), str(folder),
                                       str(args.static_dims)], capture_output=True, text=True)
                if done.returncode != 0:
                    print(f"model2vec's distillation failed; its row is left out: {done.stderr[-500:]}", file=sys.stderr)
                    continue
                results.setdefault(name, {})["train_minutes"] = (time.time() - start) / 60
        for name, (kind, folder) in models.items():
            if not Path(folder).exists():
                continue
            encode_fn = loader(kind, folder, args.max_length)
            metrics, queries, passages = evaluate(encode_fn, data)
            results.setdefault(name, {}).update(metrics, size_mb=folder_mb(folder))
            if name == "student 4 layers":
                exact = np.argsort(-queries @ passages.T, axis=1)[:, :10]
                _, approx = hnsw_search(queries, passages, 10)
                results[name]["hnsw_recall@10"] = recall_of_approximation(exact, approx, 10)
            save()
            print(f"{name}: nDCG@10 {100 * metrics['ndcg@10']:.2f}", flush=True)
        scores, indices = bm25_search(data.queries, data.passages, 10)
        results["BM25 (bm25s)"] = retrieval_metrics(to_run(scores, indices, data.query_ids, data.passage_ids),
                                                    data.qrels)
        save()

    if args.phase in ("time", "all"):
        torch.set_num_threads(args.threads)
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        rng = random.Random(args.seed)
        mix = rng.sample(with_prefix(data.queries, "query"), args.speed_texts // 2) + \
            rng.sample(with_prefix(data.passages, "passage"), args.speed_texts // 2)
        for name, (kind, folder) in models.items():
            if Path(folder).exists():
                results.setdefault(name, {})["texts_per_second"] = texts_per_second(loader(kind, folder,
                                                                                           args.max_length), mix)
                save()
    print(table(results, args, len(data.queries), len(data.passages), len(train)))
    (out / "embeddings.md").write_text(table(results, args, len(data.queries), len(data.passages), len(train)), "utf-8")
    return 0


def static_token_vectors(token_vectors, teacher_dir: Path, args, cache: Path) -> tuple[np.ndarray, str]:
    """The teacher's token vectors, computed once for both static rows (kept in ``cache``)."""
    path = cache / f"token-vectors-{args.static_pooling}-{args.static_max_tokens or 'all'}.npy"
    if path.is_file():
        return np.load(path), str(teacher_dir / "tokenizer.json")
    vectors, tokenizer_path = token_vectors(str(teacher_dir), max_tokens=args.static_max_tokens,
                                            pooling=args.static_pooling)
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), vectors)
    os.replace(path.with_suffix(".tmp.npy"), path)
    return vectors, tokenizer_path


def loader(kind: str, folder: Path, max_length: int):
    """``texts -> unit vectors`` for a model folder of one kind (speedy's own: what ``speedy embed`` loads)."""
    if kind == "model2vec":
        from model2vec import StaticModel

        model = StaticModel.from_pretrained(str(folder))
        return lambda texts: _unit(model.encode(texts))
    from speedy.embed.files import encoder_of

    return encoder_of(folder, max_length, batch_size=32)


def _unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def table(results: dict, args, queries: int, passages: int, train: int) -> str:
    from speedy.bench.cpu import cpu_description

    teacher = results.get("teacher e5-small (12 layers)", {})
    lines = ["| model | nDCG@10 | MRR@10 | R@1 | R@10 | of teacher nDCG | texts/s | speed-up | MB on disk |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "ndcg@10" not in r:
            continue
        share = f"{r['ndcg@10'] / teacher['ndcg@10']:.1%}" if teacher.get("ndcg@10") else ""
        speed = r.get("texts_per_second")
        up = f"{speed / teacher['texts_per_second']:.1f}x" if speed and teacher.get("texts_per_second") else ""
        lines.append(f"| {name} | {100 * r['ndcg@10']:.2f} | {100 * r['mrr@10']:.2f} | {100 * r['recall@1']:.2f} | "
                     f"{100 * r['recall@10']:.2f} | {share} | {f'{speed:.0f}' if speed else ''} | {up} | "
                     f"{r['size_mb']:.0f} |" if "size_mb" in r else
                     f"| {name} | {100 * r['ndcg@10']:.2f} | {100 * r['mrr@10']:.2f} | {100 * r['recall@1']:.2f} | "
                     f"{100 * r['recall@10']:.2f} | {share} | | | |")
    hnsw = results.get("student 4 layers", {}).get("hnsw_recall@10")
    notes = (f"\nSQuAD-es split by article: {args.validation_articles} validation articles ({queries} questions, each "
             f"against all {passages} validation paragraphs); {train} training texts (questions and paragraphs of "
             f"the other articles, unpaired) + held-out text for early stopping; up to {args.epochs} epochs, "
             f"patience {args.patience}, lr {args.learning_rate:g}, batch {args.batch_size}, max length "
             f"{args.max_length}; static tuning lr {args.static_lr:g}. Speed: {args.speed_texts} texts (half "
             f"questions, half paragraphs), "
             f"{args.threads} threads, CPU: {cpu_description()}.")
    if hnsw is not None:
        notes += f" HNSW (faiss, M 32, efSearch 64) keeps {hnsw:.1%} of the 4-layer student's exact top 10."
    return "\n".join(lines) + "\n" + notes + "\n"


if __name__ == "__main__":
    sys.exit(main())
