"""The study's stages, each reading the previous stage's results from the experiment store and writing its own.

finetune (grid over teacher candidates) -> select (lowest validation loss) -> distill (students, with the
teacher cache; optionally also without KD) -> evaluate (test split) -> measure (size, speed) -> report.
Every stage can run alone; finished trials are skipped, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from speedy.config import ModelSpec, StudyConfig, TaskSpec
from speedy.data.load import load_task_data
from speedy.distill.cache import fingerprint_inputs
from speedy.errors import SpeedyError
from speedy.models.offline import default_cache_dir
from speedy.models.registry import check_name
from speedy.store import Store, Trial, trial_key
from speedy.tasks import make_task
from speedy.tasks.base import Task, TaskData, selection_score

STAGES = ("finetune", "select", "distill", "evaluate", "measure", "report")


class Study:
    def __init__(self, config: StudyConfig, console: Console | None = None):
        self.config = config
        self.console = console or Console()
        self.output_dir = Path(config.output_dir)
        self.cache_dir = default_cache_dir()
        for section in ("teachers", "students"):
            for i, spec in enumerate(getattr(config, section)):
                check_name(spec.base or spec.name, f"{section}[{i}].base")
        self._store: Store | None = None
        if "://" in config.store_url and not config.store_url.startswith("sqlite"):
            self.store  # a database server that cannot be reached is a config error: say so before any work
        self._data: dict[str, TaskData] = {}
        self._search = None
        self._fingerprints: dict[str, str] = {}

    # ------------------------------------------------------------------ helpers
    @property
    def store(self) -> Store:
        """The experiment store, opened (and for SQLite, created) on first use: after the data is checked."""
        if self._store is None:
            self._store = Store(self.config.store_url, root=self.output_dir)
        return self._store

    def data(self, spec: TaskSpec) -> TaskData:
        if spec.name not in self._data:
            self._data[spec.name] = load_task_data(spec, self.cache_dir, self.output_dir / "data")
        return self._data[spec.name]

    def task(self, spec: TaskSpec) -> Task:
        task = make_task(spec.type, self.data(spec).labels, spec.scheme, spec.normalization, spec.stride,
                         spec.max_windows)
        task.prepare(self.data(spec).splits["train"])
        return task

    @staticmethod
    def task_params(spec: TaskSpec) -> dict:
        """The task settings that change what a trial learns (part of every trial's key)."""
        return {"name": spec.name, "type": spec.type, "max_length": spec.max_length, "scheme": spec.scheme,
                "stride": spec.stride}

    def data_fingerprint(self, spec: TaskSpec) -> str:
        if spec.name not in self._fingerprints:  # hashed once: every trial key of the task needs it
            data = self.data(spec)
            self._fingerprints[spec.name] = fingerprint_inputs(
                (name, split.to_dict()) for name, split in sorted(data.splits.items()))[:16]
        return self._fingerprints[spec.name]

    def trial_dir(self, key: str) -> Path:
        return self.output_dir / "trials" / key

    @property
    def search(self):
        """Optuna studies in the store's database (see ``speedy.search``), made on first use."""
        if self._search is None:
            from speedy.search import Search

            self._search = Search(self.store)
        return self._search

    def _run_trial(self, key: str, stage: str, task_name: str, name: str, params: dict, work) -> Trial | None:
        """Run ``work()`` unless the store has this trial done; record its result. None when another live
        worker holds the trial (it will record the result)."""
        from speedy.search import GRACE, claimable_now

        done = self.store.get(key)
        if done and done.status == "done" and done.checkpoint and Path(done.checkpoint).is_dir():
            self.console.print(f"  [dim]skip {name}: done earlier (trial {key})[/dim]")
            return done
        if done and done.status == "done":  # its model folder is gone: train it again
            self.console.print(f"  [yellow]{name}: done earlier but {done.checkpoint} is missing: again[/yellow]")
            self.store.update(key, status="failed", checkpoint=None)
            done = self.store.get(key)
        lease = 0.0 if claimable_now(done, self.search.worker) else GRACE
        if not self.store.claim(key, stage, task_name, name, params, self.search.worker, lease):
            self.console.print(f"  [dim]{name}: under way in another worker (trial {key})[/dim]")
            return None
        self.console.print(f"  [bold]{stage}[/bold] {name} [dim](trial {key})[/dim]")
        start = time.time()
        try:
            with self.search.held(key):
                result = work()
        except BaseException:
            self.store.finish(key, self.search.worker, status="failed")
            raise
        if not self.store.finish(key, self.search.worker, status="done", val_loss=result["val_loss"],
                                 val_metrics=result["val_metrics"], checkpoint=result["checkpoint"],
                                 info=result.get("info", {}), seconds=time.time() - start):
            self.console.print(f"  [yellow]{name}: another worker took this trial over; its record stands[/yellow]")
        return self.store.get(key)

    # ------------------------------------------------------------------ stage 1
    def finetune_params(self, task_spec: TaskSpec, teacher: ModelSpec, point: dict) -> dict:
        """Everything a fine-tuning trial's result depends on (its key hashes this)."""
        return {"stage": "finetune", "task": self.task_params(task_spec), "data": self.data_fingerprint(task_spec),
                "model": dataclasses.asdict(teacher), "batch_size": point["batch_size"], "epochs": point["epochs"],
                "learning_rate": point["learning_rate"], "seed": self.config.seed}

    def finetune(self) -> None:
        """Stage 1: every teacher candidate over its grid (an Optuna grid study per task and candidate)."""
        from speedy.models.build import build_model
        from speedy.training import fit

        grid = self.config.grid
        for task_spec in self.config.tasks:
            data, task = self.data(task_spec), self.task(task_spec)
            self.console.rule(f"Stage 1: fine-tuning teacher candidates on '{task_spec.name}'")
            for teacher in self.config.teachers:
                space = {"batch_size": list(grid.batch_size), "epochs": list(grid.epochs),
                         "learning_rate": list(teacher.learning_rate or grid.learning_rate)}

                def run(point, teacher=teacher, task_spec=task_spec, data=data, task=task):
                    params = self.finetune_params(task_spec, teacher, point)
                    key = trial_key(params)
                    name = (f"{teacher.name} bs={point['batch_size']} ep={point['epochs']} "
                            f"lr={point['learning_rate']:g}")

                    def work():
                        model, tokenizer = build_model(teacher, task, data.texts(), self.cache_dir,
                                                       seed=self.config.seed)
                        return fit(model, tokenizer, task, data, self.trial_dir(key), epochs=point["epochs"],
                                   batch_size=point["batch_size"], learning_rate=point["learning_rate"],
                                   seed=self.config.seed, max_length=task_spec.max_length, metric="loss",
                                   warmup_ratio=0.1, mixed_precision=self.config.distill.mixed_precision)

                    trial = self._run_trial(key, "finetune", task_spec.name, name, params, work)
                    return key, (trial.val_loss if trial else None)

                self.search.grid(f"{self.config.name}/{task_spec.name}/finetune/{teacher.name}", space, run,
                                 keys=lambda point, t=teacher, ts=task_spec: trial_key(self.finetune_params(ts, t, point)))

    # ------------------------------------------------------------------ stage 2
    def select(self) -> dict[str, Trial]:
        chosen = {}
        for task_spec in self.config.tasks:
            trials = self.store.trials("finetune", task_spec.name)
            if not trials:
                raise SpeedyError(f"select: no finished fine-tuning trial for task '{task_spec.name}': "
                                  "run 'speedy finetune' first")
            best = min(trials, key=lambda t: t.val_loss)
            self.store.select(task_spec.name, best.key)
            chosen[task_spec.name] = best
            table = Table(title=f"Stage 2: teacher candidates for '{task_spec.name}' (lowest validation loss wins)")
            for column in ("", "model", "batch", "epochs", "lr", "val loss", "val accuracy", "minutes"):
                table.add_column(column)
            for trial in sorted(trials, key=lambda t: t.val_loss):
                p = trial.params
                table.add_row("*" if trial.key == best.key else "", p["model"]["name"], str(p["batch_size"]),
                              str(p["epochs"]), f"{p['learning_rate']:g}", f"{trial.val_loss:.4f}",
                              f"{trial.val_metrics.get('accuracy', float('nan')):.4f}",
                              f"{(trial.seconds or 0) / 60:.1f}")
            self.console.print(table)
        return chosen

    def selected_teacher(self, task_spec: TaskSpec) -> Trial:
        trial = self.store.selection(task_spec.name)
        if trial is None:
            raise SpeedyError(f"distill: no teacher selected for task '{task_spec.name}': run 'speedy select' first")
        return trial

    # ------------------------------------------------------------------ stage 3
    def distill(self) -> None:
        from transformers import AutoTokenizer

        from speedy.distill.losses import DistillationLoss
        from speedy.distill.teacher import teacher_cache_for
        from speedy.models.build import build_model, check_layers
        from speedy.training import fit

        for i, student in enumerate(self.config.students):
            check_layers(student, self.cache_dir, f"students[{i}]")
        settings = self.config.distill
        for task_spec in self.config.tasks:
            data, task = self.data(task_spec), self.task(task_spec)
            teacher_trial = self.selected_teacher(task_spec)
            self.console.rule(f"Stage 3: distilling '{teacher_trial.name}' on '{task_spec.name}'")
            cache, load_seconds = None, 0.0

            def teacher_cache():
                nonlocal cache, load_seconds
                if cache is None:
                    start = time.time()
                    teacher = task.model_class().from_pretrained(teacher_trial.checkpoint)
                    tokenizer = AutoTokenizer.from_pretrained(teacher_trial.checkpoint)
                    cache = teacher_cache_for(teacher, tokenizer, task, data.splits["train"], task_spec.max_length,
                                              self.output_dir / "teacher-cache", source=data.sources["train"])
                    load_seconds = time.time() - start  # this run's: a build, or only reading one from disk
                    self.console.print(f"  teacher cache {cache.folder.name}: {len(cache)} examples (teacher pass "
                                       f"{cache.build_seconds or 0:.1f} s when built; {load_seconds:.1f} s now)")
                return cache

            points = {"batch_size": list(settings.batch_size), "learning_rate": list(settings.learning_rate)}
            for student in self.config.students:
                modes = [mode for mode, wanted in (("kd", student.kd), ("finetune", student.finetune)) if wanted]
                for mode in modes:
                    def run(point, student=student, mode=mode, task_spec=task_spec, data=data, task=task,
                            teacher_key=teacher_trial.key, teacher_cache=teacher_cache):
                        point = dataclasses.replace(settings, **point)
                        params = self.distill_params(task_spec, student, mode, point, teacher_key)
                        key = trial_key(params)
                        name = f"{student.name} ({'KD' if mode == 'kd' else 'fine-tuned'})"
                        if len(settings.batch_size) * len(settings.learning_rate) > 1:
                            name += f" bs={point.batch_size} lr={point.learning_rate:g}"
                        if mode == "kd" and settings.search_trials > 0:
                            name += f" {point.loss} alpha={point.alpha:.2f} T={point.temperature:.2f}"

                        def work():
                            model, tokenizer = build_model(student, task, data.texts(), self.cache_dir,
                                                           seed=self.config.seed)
                            kd = mode == "kd"
                            result = fit(model, tokenizer, task, data, self.trial_dir(key), epochs=point.epochs,
                                         batch_size=point.batch_size, learning_rate=point.learning_rate,
                                         seed=self.config.seed, max_length=task_spec.max_length,
                                         metric=point.metric or task.selection_metric,
                                         patience=point.patience, warmup_ratio=point.warmup_ratio,
                                         weight_decay=point.weight_decay, mixed_precision=point.mixed_precision,
                                         teacher_cache=teacher_cache() if kd else None,
                                         distillation_loss=DistillationLoss(point.loss, point.alpha,
                                                                            point.temperature) if kd else None)
                            result["info"] = {"epochs_run": result.get("epochs_run")}
                            if kd:  # the cache's cost is paid once per teacher; later students read it for free.
                                # Tables 5-8 need the teacher pass's time, which a rerun that finds the cache on
                                # disk did not pay: it is kept in the cache; this run's load time apart.
                                result["info"].update(teacher_cache=cache.folder.name,
                                                      teacher_cache_seconds=cache.build_seconds,
                                                      teacher_cache_load_seconds=load_seconds)
                            return result

                        trial = self._run_trial(key, "distill", task_spec.name, name, params, work)
                        selection = point.metric or task.selection_metric
                        return key, (selection_score(trial.val_metrics, trial.val_loss, selection) if trial else None)

                    def keys(point, student=student, mode=mode, task_spec=task_spec, teacher_key=teacher_trial.key):
                        point = dataclasses.replace(settings, **point)
                        return trial_key(self.distill_params(task_spec, student, mode, point, teacher_key))

                    study_name = f"{self.config.name}/{task_spec.name}/distill/{student.name}/{mode}"
                    if mode == "kd" and settings.search_trials > 0:
                        def suggest(trial, settings=settings):
                            low_a, high_a = settings.search_alpha
                            low_t, high_t = settings.search_temperature
                            return {"loss": trial.suggest_categorical("loss", list(settings.search_losses)),
                                    "alpha": trial.suggest_float("alpha", low_a, high_a),
                                    "temperature": trial.suggest_float("temperature", low_t, high_t),
                                    "batch_size": trial.suggest_categorical("batch_size", list(settings.batch_size)),
                                    "learning_rate": trial.suggest_categorical("learning_rate",
                                                                               list(settings.learning_rate))}

                        context = keys({"batch_size": settings.batch_size[0],
                                        "learning_rate": settings.learning_rate[0]})
                        self.search.tpe(f"{study_name}/tpe/{context[:12]}", settings.search_trials, suggest, run)
                        continue

                    self.search.grid(study_name, points, run, keys, direction="maximize")  # scores: higher is better

    def distill_params(self, task_spec: TaskSpec, student: ModelSpec, mode: str, point, teacher_key: str) -> dict:
        """Everything a distillation trial's result depends on (its key hashes this)."""
        return {"stage": "distill", "mode": mode, "task": self.task_params(task_spec),
                "data": self.data_fingerprint(task_spec), "model": dataclasses.asdict(student),
                "settings": dataclasses.asdict(point), "teacher": teacher_key if mode == "kd" else None,
                "seed": self.config.seed}

    # ------------------------------------------------------------------ evaluate, measure
    def models_to_report(self, task_spec: TaskSpec) -> list[Trial]:
        """Per teacher candidate its best grid point (lowest validation loss); per student and mode (KD or not)
        its best grid point by the validation metric early stopping followed (highest, or lowest for a loss)."""
        best_per_teacher = {}
        for trial in self.store.trials("finetune", task_spec.name):
            name = trial.params["model"]["name"]
            if name not in best_per_teacher or trial.val_loss < best_per_teacher[name].val_loss:
                best_per_teacher[name] = trial
        best_per_student = {}
        distilled = self.store.trials("distill", task_spec.name)
        selection = self.task(task_spec).selection_metric if distilled else None
        for trial in distilled:
            group = (trial.params["model"]["name"], trial.params["mode"])
            metric = trial.params["settings"].get("metric") or selection
            score = selection_score(trial.val_metrics, trial.val_loss, metric)
            if group not in best_per_student or score > best_per_student[group][0]:
                best_per_student[group] = (score, trial)
        return list(best_per_teacher.values()) + [trial for _, trial in best_per_student.values()]

    def _load(self, trial: Trial, task: Task):
        from transformers import AutoTokenizer

        return task.model_class().from_pretrained(trial.checkpoint), AutoTokenizer.from_pretrained(trial.checkpoint)

    def evaluate(self) -> None:
        from speedy.evaluate import evaluate_model

        for task_spec in self.config.tasks:
            data, task = self.data(task_spec), self.task(task_spec)
            self.console.rule(f"Evaluating on the test split of '{task_spec.name}'")
            for trial in self.models_to_report(task_spec):
                if trial.test_metrics:
                    continue
                model, tokenizer = self._load(trial, task)
                metrics = evaluate_model(model, tokenizer, task, data.splits["test"], task_spec.max_length,
                                         source=data.sources["test"])
                self.store.update(trial.key, test_metrics=metrics)
                shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
                self.console.print(f"  {trial.name}: {shown}")

    def measure(self) -> None:
        """Parameters and MACs, then speed in every engine of the config; an ONNX engine also scores the test
        split (what int8 costs). Each measurement is stored as it finishes, so a killed run redoes only one."""
        from speedy.bench.engines import load_engine
        from speedy.bench.macs import count_macs
        from speedy.bench.size import count_parameters
        from speedy.bench.speed import random_inputs, time_model
        from speedy.evaluate import evaluate_model

        speed = self.config.speed
        for task_spec in self.config.tasks:
            data, task = self.data(task_spec), self.task(task_spec)
            self.console.rule(f"Measuring '{task_spec.name}': size, MACs and speed (batch {speed.batch_size}, "
                              f"length {speed.length}, {speed.warmup} warm-up + {speed.runs} runs, "
                              f"engines {', '.join(speed.engines)})")
            for trial in self.models_to_report(task_spec):
                if not self.store.measurement(trial.key, "size"):
                    model = load_engine(trial.checkpoint, "torch")
                    size = count_parameters(model)
                    macs = count_macs(model, speed.batch_size, speed.length)
                    self.store.measure(trial.key, "size", {**size, "macs": macs["macs"],
                                                           "thop_macs": macs["thop_macs"],
                                                           "macs_batch_size": speed.batch_size,
                                                           "macs_length": speed.length})
                for engine in speed.engines:
                    kind = self.speed_kind(engine)
                    if self.store.measurement(trial.key, kind):
                        continue
                    model = load_engine(trial.checkpoint, engine, speed.threads, export_missing=True)
                    if engine == "torch" and torch.cuda.is_available():
                        model = model.cuda()
                    inputs = random_inputs(model.config.vocab_size, speed.batch_size, speed.length)
                    result = time_model(model, inputs, speed.warmup, speed.runs, speed.threads)
                    if engine != "torch":
                        tokenizer = self._load_tokenizer(trial)
                        result["test_metrics"] = evaluate_model(model, tokenizer, task, data.splits["test"],
                                                                task_spec.max_length, source=data.sources["test"])
                    self.store.measure(trial.key, kind, result)
                    shown = f", test {task.primary_metric} {result['test_metrics'][task.primary_metric]:.4f}" \
                        if "test_metrics" in result else ""
                    self.console.print(f"  {trial.name} \\[{engine}]: {result['inferences_per_second']:.1f} "
                                       f"inferences/s ({result['threads']} threads){shown}")

    def _load_tokenizer(self, trial: Trial):
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(trial.checkpoint)

    def speed_kind(self, engine: str = "torch") -> str:
        speed = self.config.speed
        device = "cuda" if torch.cuda.is_available() and engine == "torch" else "cpu"
        return f"speed-{engine}-{device}-b{speed.batch_size}-l{speed.length}"

    # ------------------------------------------------------------------ all
    def run(self, stages=STAGES) -> None:
        for task_spec in self.config.tasks:  # bad data stops the run before anything is created
            self.data(task_spec)
        for stage in stages:
            if stage == "report":
                from speedy.report import write_report

                write_report(self)
            else:
                getattr(self, stage)()
