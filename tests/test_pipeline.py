"""The whole study on tiny models and files: every stage, the report, and resumption after a kill."""

import dataclasses
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import yaml

from conftest import make_examples, write_tsv
from speedy.configfile import load_config
from speedy.distill.cache import TeacherCache
from speedy.pipeline import Study
from speedy.plan import plan, settings_signature


def study_config(tmp_path, files, teachers, students, grid=None, epochs=3, task=None, batch_size=16,
                 engines=("torch",)):
    config = {
        "name": "tiny",
        "output_dir": str(tmp_path / "out"),
        "seed": 1,
        "tasks": [{"name": "tiny", "max_length": 32, "data": files, **(task or {})}],
        "teachers": teachers,
        "students": students,
        "grid": grid or {"batch_size": [batch_size], "epochs": [2], "learning_rate": [1e-3]},
        "distill": {"epochs": epochs, "patience": 2, "batch_size": batch_size, "learning_rate": 1e-3},
        "speed": {"batch_size": 1, "length": 16, "warmup": 1, "runs": 5, "engines": list(engines)},
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_cross_tokenizer_study(tmp_path, files, task, bert_dir, bert_unigram_dir, epochs):
    """Teacher with the WordPiece tokenizer, a 2-layer student with the Unigram one, KD and fine-tuned only."""
    path = study_config(tmp_path, files, teachers=[{"name": "teacher", "base": str(bert_dir)}],
                        students=[{"name": "student", "base": str(bert_unigram_dir), "kind": "truncate",
                                   "layers": 2, "finetune": True}],
                        grid={"batch_size": [8], "epochs": [epochs], "learning_rate": [1e-3]}, epochs=epochs,
                        task=task, batch_size=8)
    result = subprocess.run([sys.executable, "-m", "speedy", "run", str(path)], capture_output=True, text=True,
                            env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = Study(load_config(path))
    students = study.store.trials("distill", "tiny")
    assert sorted(t.name for t in students) == ["student (KD)", "student (fine-tuned)"]
    return study, students


def _env():
    return {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"}  # rich wraps no line that tests read


def test_every_stage_runs_and_the_report_compares_teacher_and_students(tmp_path, tiny_files, bert_dir, albert_dir):
    path = study_config(
        tmp_path, tiny_files,
        teachers=[{"name": "bert", "base": str(bert_dir)}, {"name": "albert", "base": str(albert_dir)}],
        students=[{"name": "bert-2L", "base": str(bert_dir), "kind": "truncate", "layers": [0, 3],
                   "finetune": True, "prune_vocab": True},
                  {"name": "albert-base-2", "base": str(albert_dir), "kind": "albert-base-n", "layers": 2}],
        engines=("torch", "onnx-int8"))
    result = subprocess.run([sys.executable, "-m", "speedy", "run", str(path)], capture_output=True, text=True,
                            env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    study = Study(load_config(path))
    candidates = study.store.trials("finetune", "tiny")
    assert len(candidates) == 2
    selected = study.store.selection("tiny")
    assert selected.val_loss == min(t.val_loss for t in candidates)  # stage 2: lowest validation loss
    planned = {(t.stage, t.task, t.settings) for t in plan(study.config)}
    assert planned == {(t.stage, t.task, t.name) for t in study.store.trials()}  # the plan is what ran
    done = {(t.task, settings_signature(t.params)) for t in study.store.trials() if t.status == "done"}
    assert all(t.done for t in plan(study.config, done))
    # a KD setting the trial names leave out makes other trials: --plan must not call them done
    hotter = dataclasses.replace(study.config, distill=dataclasses.replace(study.config.distill, temperature=4.0))
    assert {(t.stage, t.done) for t in plan(hotter, done)} == {("finetune", True), ("distill", False)}
    students = study.store.trials("distill", "tiny")
    assert sorted(t.name for t in students) == ["albert-base-2 (KD)", "bert-2L (KD)", "bert-2L (fine-tuned)"]
    for trial in candidates + students:
        assert 0.0 <= trial.test_metrics["accuracy"] <= 1.0 and "macro_f1" in trial.test_metrics
        size = study.store.measurement(trial.key, "size")
        assert size["parameters"] > 0 and size["macs"] > 0 and size["thop_macs"] > 0
        int8 = study.store.measurement(trial.key, study.speed_kind("onnx-int8"))
        assert int8["inferences_per_second"] > 0 and 0 <= int8["test_metrics"]["accuracy"] <= 1
        assert study.store.measurement(trial.key, study.speed_kind("torch"))["inferences_per_second"] > 0
    report = (tmp_path / "out" / "report" / "report.md").read_text()
    for name in ("bert-2L", "albert-base-2", "student, KD", "student, fine-tuned only", "teacher (selected)",
                 "Table 1", "ONNX Runtime int8 inf/s", "Table 2", "Table 3", "Global score", "Tables 5-8",
                 "KD minutes without cache (est.)"):
        assert name in report
    for figure in ("score_vs_speed.png", "figure1_params_macs.png"):
        assert (tmp_path / "out" / "report" / figure).stat().st_size > 1000
    table3 = (tmp_path / "out" / "report" / "table3_global.csv").read_text().splitlines()
    assert len(table3) == 1 + 2 + 3 and "speedup_onnx-int8" in table3[0]
    assert "Stage 2: teacher candidates" in result.stdout

    # Any stage re-runs alone, reusing what the store has: nothing is trained again.
    again = subprocess.run([sys.executable, "-m", "speedy", "distill", str(path)], capture_output=True, text=True,
                           env=_env(), timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("skip ") == 3


def _done_trials(store):
    if not store.exists():
        return []
    with sqlite3.connect(store) as conn:
        try:
            return conn.execute("select key, updated from speedy_trials where status = 'done'").fetchall()
        except sqlite3.OperationalError:
            return []


def test_a_killed_run_resumes_without_redoing_finished_trials(tmp_path, tiny_files, bert_dir):
    path = study_config(tmp_path, tiny_files, teachers=[{"name": "bert", "base": str(bert_dir)}], students=[],
                        grid={"batch_size": [8], "epochs": [3], "learning_rate": [1e-3, 5e-4, 2e-4, 1e-4]})
    store = tmp_path / "out" / "store.sqlite"
    process = subprocess.Popen([sys.executable, "-m", "speedy", "finetune", str(path)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 300
    while not _done_trials(store) and time.time() < deadline and process.poll() is None:
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    finished = dict(_done_trials(store))
    assert 1 <= len(finished) < 4, "the kill should land after the first trial and before the last"

    result = subprocess.run([sys.executable, "-m", "speedy", "finetune", str(path)], capture_output=True, text=True,
                            env=_env(), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    after = dict(_done_trials(store))
    assert len(after) == 4
    for key, updated in finished.items():
        assert after[key] == updated  # untouched: not trained again
    # Each finished trial is reported as skipped (a point killed between its record and Optuna's may be handed
    # out, and skipped, once more: count distinct trials).
    assert len(set(re.findall(r"skip .*\(trial (\w+)\)", result.stdout))) == len(finished)


def _conll(path, sentences):
    path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n", "utf-8")
    return str(path)


def tagged_sentences(n, seed):
    """Tiny NER: names of people are B-PER (I-PER), cities B-LOC, everything else O."""
    import random

    rng = random.Random(seed)
    people, cities = [["Juan"], ["María", "López"], ["Ana"]], ["Madrid", "Lima", "Quito"]
    out = []
    for _ in range(n):
        name = rng.choice(people)
        sentence = [(name[0], "B-PER")] + [(w, "I-PER") for w in name[1:]]
        sentence += [("viajó", "O"), ("a", "O"), (rng.choice(cities), "B-LOC"), ("ayer", "O"), (".", "O")]
        out.append(sentence)
    return out


def test_tagging_study_distils_across_tokenizers_and_scores_any_conll_file(tmp_path, bert_dir, bert_unigram_dir):
    files = {"train": _conll(tmp_path / "train.conll", tagged_sentences(48, 1)),
             "validation": _conll(tmp_path / "dev.conll", tagged_sentences(12, 2)),
             "test": _conll(tmp_path / "test.conll", tagged_sentences(12, 3))}
    study, students = run_cross_tokenizer_study(tmp_path, files, {"type": "tagging", "max_length": 16}, bert_dir,
                                                bert_unigram_dir, epochs=3)
    for trial in students + study.store.trials("finetune", "tiny"):
        assert set(trial.test_metrics) == {"f1", "accuracy"} and 0 <= trial.test_metrics["f1"] <= 1
    kd = next(t for t in students if t.params["mode"] == "kd")
    cache = TeacherCache(tmp_path / "out" / "teacher-cache" / kd.info["teacher_cache"])
    assert kd.info["teacher_cache_seconds"] == cache.build_seconds > 0 and "teacher_cache_load_seconds" in kd.info
    assert len(cache) == 48 and cache.example(0).shape[1] == 4  # one row per word, 4 tags: word level

    other = _conll(tmp_path / "other.conll", tagged_sentences(5, 9))
    scored = subprocess.run([sys.executable, "-m", "speedy", "evaluate", "--model", kd.checkpoint, "--test-file",
                             other], capture_output=True, text=True, env=_env(), timeout=300)
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert "f1" in scored.stdout and "accuracy" in scored.stdout


def squad_examples(n, seed):
    import random

    rng = random.Random(seed)
    actors, acts = ["la ministra", "el diputado", "la alcaldesa", "el presidente"], ["aprobó la ley", "votó hoy"]
    articles = []
    for a in range(n // 2):
        qas = []
        actor, act = rng.choice(actors), rng.choice(acts)
        context = f"El equipo ganó el partido ayer. {actor.capitalize()} {act} en el congreso."
        start = context.index(actor.capitalize())
        qas.append({"id": f"{seed}-{a}-a", "question": f"¿Quién {act}?",
                    "answers": [{"text": actor.capitalize(), "answer_start": start}]})
        qas.append({"id": f"{seed}-{a}-b", "question": "¿Qué ganó el equipo?",
                    "answers": [{"text": "el partido", "answer_start": context.index("el partido")}]})
        articles.append({"title": f"t{seed}-{a}", "paragraphs": [{"context": context, "qas": qas}]})
    return {"version": "1.1", "data": articles}


def test_qa_study_distils_across_tokenizers_and_predicts(tmp_path, bert_dir, bert_unigram_dir):
    import json

    files = {}
    for name, (n, seed) in {"train": (40, 1), "validation": (10, 2), "test": (10, 3)}.items():
        files[name] = str(tmp_path / f"{name}.json")
        (tmp_path / f"{name}.json").write_text(json.dumps(squad_examples(n, seed), ensure_ascii=False), "utf-8")
    task = {"type": "qa", "max_length": 32, "stride": 4, "normalization": "es"}
    study, students = run_cross_tokenizer_study(tmp_path, files, task, bert_dir, bert_unigram_dir, epochs=2)
    for trial in students:
        assert set(trial.test_metrics) == {"f1", "exact_match"}
    kd = next(t for t in students if t.params["mode"] == "kd")
    cache = TeacherCache(tmp_path / "out" / "teacher-cache" / kd.info["teacher_cache"])
    from speedy.tasks.qa import context_units

    first_context = squad_examples(40, 1)["data"][0]["paragraphs"][0]["context"]
    assert len(cache) == 40 and cache.example(0).shape == (len(context_units(first_context)), 2)  # per unit

    scored = subprocess.run([sys.executable, "-m", "speedy", "evaluate", "--model", kd.checkpoint, "--test-file",
                             files["test"]], capture_output=True, text=True, env=_env(), timeout=300)
    assert scored.returncode == 0 and "exact_match" in scored.stdout, scored.stderr[-2000:]
    context = "El equipo ganó el partido ayer. La ministra votó hoy en el congreso."
    answer = subprocess.run([sys.executable, "-m", "speedy", "predict", "--model", kd.checkpoint, "--question",
                             "¿Quién votó hoy?", "--context", context], capture_output=True, text=True, env=_env(),
                            timeout=300)
    assert answer.returncode == 0, answer.stderr[-2000:]
    out = json.loads(answer.stdout)
    assert context[out["start"] : out["end"]] == out["answer"] and isinstance(out["score"], float)


def test_kd_settings_searched_by_tpe_in_the_store_database(tmp_path, tiny_files, bert_dir):
    import optuna

    path = study_config(tmp_path, tiny_files, teachers=[{"name": "teacher", "base": str(bert_dir)}],
                        students=[{"name": "student", "base": str(bert_dir), "kind": "truncate", "layers": 1}],
                        grid={"batch_size": [16], "epochs": [1], "learning_rate": [1e-3]}, epochs=1)
    config = yaml.safe_load(path.read_text())
    config["distill"].update(search_trials=3, search_losses=["kl", "mse"], search_temperature=[1.0, 4.0])
    path.write_text(yaml.safe_dump(config))
    study = Study(load_config(path))
    study.run(["finetune", "select", "distill"])
    students = study.store.trials("distill", "tiny")
    assert len(students) == 3 and all("alpha=" in t.name for t in students)
    drawn = {(t.params["settings"]["loss"], t.params["settings"]["alpha"], t.params["settings"]["temperature"])
             for t in students}
    assert len(drawn) == 3 and all(loss in ("kl", "mse") and 1.0 <= temp <= 4.0 for loss, _, temp in drawn)
    names = [x.study_name for x in optuna.get_all_study_summaries(study.store.url)
             if x.study_name.startswith("tiny/tiny/distill/student/kd/tpe/")]
    assert len(names) == 1
    tpe = optuna.load_study(study_name=names[0], storage=study.store.url)
    assert len([t for t in tpe.trials if t.state.name == "COMPLETE"]) == 3
    best = [t for t in study.models_to_report(study.config.tasks[0]) if t.stage == "distill"]
    assert len(best) == 1 and best[0].val_metrics["accuracy"] == max(t.val_metrics["accuracy"] for t in students)
