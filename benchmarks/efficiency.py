"""Benchmark: how fast a teacher and its 2-, 4- and 6-layer students really run on this CPU, in every engine.

Reads a finished study (its store and model folders): the selected teacher of its first task and that task's KD
students. In one run, with threads pinned, it prints:

1. MACs ratio (teacher / student) against the measured PyTorch speed-up, at length 512 and 128
   (target: speed-up >= 85% of the MACs ratio);
2. ONNX Runtime fp32 and int8 against PyTorch fp32 for each model at length 128 and 512, and what int8 costs
   on the task's validation split: prediction agreement and score drop (target: int8 >= 3x PyTorch at 128 on a
   student, <= 1 point lost);
3. the machine's measured fp32 matrix-multiply peak and, per model and engine, the fraction of it that the
   model's MACs reach at length 512 (2 x MACs x inferences/s / peak; target: ONNX fp32 >= 70%);
4. sentences per second on real Spanish sentences (dynamic padding, batched by length) against the paper's
   setting for the teacher (PyTorch fp32, fixed length 512, batch 1) (target: int8 student >= 50x).

Real sentences: CoNLL-2002 ``esp.testa`` from ``../shared/data`` (read there, never copied). Example, after
``python benchmarks/tagging.py --tasks ner --output /tmp/bench/tagging`` has trained the NER study::

    python benchmarks/efficiency.py --study /tmp/bench/tagging/ner --sentences 1000
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from common import REPO


def read_sentences(data_dir: Path, count: int) -> list[str]:
    from speedy.data.readers import read_conll

    data = read_conll(data_dir / "conll2002-es" / "esp.testa")
    return [" ".join(tokens) for tokens in data["tokens"][:count]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--study", default="/tmp/bench/tagging/ner", help="a finished study's output folder")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--sentences", type=int, default=1000, help="real sentences to time")
    parser.add_argument("--sentence-batch", type=int, default=32)
    parser.add_argument("--score-examples", type=int, default=500, help="validation examples for int8 vs PyTorch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 128])
    parser.add_argument("--out", default=None, help="JSON results (default: <study>/efficiency.json)")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table
    from transformers import AutoConfig

    from speedy.bench.engines import ENGINES, load_engine
    from speedy.bench.export import compare_engines
    from speedy.bench.macs import count_macs
    from speedy.bench.size import count_parameters
    from speedy.bench.speed import matmul_peak_gflops, pin_threads, random_inputs, time_model, time_sentences
    from speedy.configfile import load_config
    from speedy.console import quiet_libraries
    from speedy.pipeline import Study

    quiet_libraries()
    console = Console(width=160)
    study_dir = Path(args.study)
    if not (study_dir / "study.yaml").is_file() or not (study_dir / "store.sqlite").is_file():
        print(f"error: {study_dir}: no finished study (study.yaml and store.sqlite); train one first, e.g. "
              "python benchmarks/tagging.py --tasks ner", file=sys.stderr)
        return 2
    study = Study(load_config(study_dir / "study.yaml"), console)
    task_spec = study.config.tasks[0]
    teacher = study.selected_teacher(task_spec)
    students = sorted((t for t in study.store.trials("distill", task_spec.name) if t.params["mode"] == "kd"),
                      key=lambda t: AutoConfig.from_pretrained(t.checkpoint).num_hidden_layers)
    models = [("teacher " + teacher.params["model"]["name"], teacher)] + \
             [(t.params["model"]["name"], t) for t in students]
    task, data = study.task(task_spec), study.data(task_spec)
    validation = data.splits["validation"]
    validation = validation.select(range(min(args.score_examples, len(validation))))
    sentences = read_sentences(Path(args.data_dir), args.sentences)
    threads = pin_threads(args.threads)
    engines = tuple(ENGINES)
    started = time.time()

    peak = matmul_peak_gflops(threads)
    console.print(f"threads {threads} (torch intra-op; ONNX Runtime intra-op {threads}, inter-op 1); "
                  f"fp32 matmul peak {peak:.0f} GFLOP/s (2048 x 2048, best of 10); study {study_dir}; "
                  f"task {task_spec.name}; {len(sentences)} real sentences; {len(validation)} validation examples")

    results = {"peak_gflops": peak, "threads": threads, "study": str(study_dir), "models": {}}
    for label, trial in models:
        torch_model = load_engine(trial.checkpoint, "torch")
        tokenizer = study._load_tokenizer(trial)
        entry = {"params": count_parameters(torch_model), "macs": {}, "speed": {}, "sentences": {}, "int8": None}
        for length in args.lengths:
            entry["macs"][length] = count_macs(torch_model, 1, length)["macs"]
        for engine in engines:
            model = load_engine(trial.checkpoint, engine, threads, export_missing=True, model=torch_model)
            for length in args.lengths:
                r = time_model(model, random_inputs(model.config.vocab_size, 1, length), args.warmup, args.runs,
                               threads)
                entry["speed"][f"{engine}@{length}"] = r
            entry["sentences"][engine] = time_sentences(model, tokenizer, sentences, args.sentence_batch,
                                                        task_spec.max_length, threads=threads)
            if engine == "onnx-int8":
                entry["int8"] = compare_engines(torch_model, model, tokenizer, task, validation,
                                                task_spec.max_length)
            console.print(f"  measured {label} \\[{engine}] ({(time.time() - started) / 60:.1f} min)")
        results["models"][label] = entry

    teacher_label = models[0][0]
    t = results["models"][teacher_label]

    def ips(entry, engine, length):
        return entry["speed"][f"{engine}@{length}"]["inferences_per_second"]

    table = Table(title="1. MACs ratio against measured PyTorch speed-up (batch 1; target: speed-up >= 85% of "
                        "the MACs ratio)")
    for column in ["model", "layers", "params (M)"] + [f"{c} @{n}" for n in args.lengths
                                                       for c in ("GMACs", "MACs ratio", "speed-up", "share")]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for label, entry in results["models"].items():
        cells = [label, str(entry["params"]["layers"]), f"{entry['params']['parameters'] / 1e6:.1f}"]
        for n in args.lengths:
            ratio = t["macs"][n] / entry["macs"][n]
            speedup = ips(entry, "torch", n) / ips(t, "torch", n)
            cells += [f"{entry['macs'][n] / 1e9:.2f}", f"{ratio:.2f}x", f"{speedup:.2f}x", f"{100 * speedup / ratio:.0f}%"]
        table.add_row(*cells)
    console.print(table)

    table = Table(title="2. Engines: inferences/s (paper's filtered mean; batch 1) and what int8 costs on the "
                        "validation split (target: int8 >= 3x PyTorch at 128, <= 1 point lost)")
    for column in ["model"] + [f"{e} @{n}" for n in args.lengths for e in engines] + \
                  [f"int8/torch @{n}" for n in args.lengths] + ["int8 agreement", "score torch", "score int8", "drop"]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for label, entry in results["models"].items():
        c = entry["int8"]
        table.add_row(label, *[f"{ips(entry, e, n):.1f}" for n in args.lengths for e in engines],
                      *[f"{ips(entry, 'onnx-int8', n) / ips(entry, 'torch', n):.2f}x" for n in args.lengths],
                      f"{100 * c['agreement']:.2f}%", f"{100 * c['reference_score']:.2f}",
                      f"{100 * c['engine_score']:.2f}", f"{100 * c['score_drop']:.2f}")
    console.print(table)

    n = max(args.lengths)
    table = Table(title=f"3. Fraction of the fp32 matmul peak ({peak:.0f} GFLOP/s) reached at length {n} "
                        "(2 x MACs x inferences/s / peak; target: ONNX fp32 >= 70%)")
    for column in ["model", f"GMACs @{n}", "fp32 bound (inf/s)"] + list(engines):
        table.add_column(column, justify="left" if column == "model" else "right")
    for label, entry in results["models"].items():
        bound = peak * 1e9 / (2 * entry["macs"][n])
        table.add_row(label, f"{entry['macs'][n] / 1e9:.2f}", f"{bound:.1f}",
                      *[f"{100 * ips(entry, e, n) / bound:.0f}%" for e in engines])
    console.print(table)

    paper = ips(t, "torch", max(args.lengths))
    table = Table(title=f"4. Real Spanish sentences (dynamic padding, batch {args.sentence_batch}, sorted by length) "
                        f"against the paper's setting for the teacher (PyTorch fp32, fixed {max(args.lengths)}, "
                        f"batch 1: {paper:.2f}/s) (target: int8 student >= 50x)")
    for column in ["model", "mean tokens", "padding"] + [f"{e} sent/s" for e in engines] + \
                  [f"{e} vs paper" for e in engines]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for label, entry in results["models"].items():
        s = entry["sentences"]
        table.add_row(label, f"{s['torch']['mean_tokens']:.1f}", f"{100 * s['torch']['padding_fraction']:.1f}%",
                      *[f"{s[e]['sentences_per_second']:.1f}" for e in engines],
                      *[f"{s[e]['sentences_per_second'] / paper:.0f}x" for e in engines])
    console.print(table)
    console.print(f"total {(time.time() - started) / 60:.1f} min")

    out = Path(args.out or study_dir / "efficiency.json")
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, default=str), "utf-8")
    os.replace(tmp, out)
    console.print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
