"""The teacher cache: one teacher pass however many epochs, shuffling, invalidation, and killed writes."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from speedy.config import DataSpec, TaskSpec
from speedy.tasks import load_task_data
from speedy.distill.cache import TeacherCache
from speedy.distill.losses import DistillationObjective
from speedy.distill.teacher import teacher_cache_for
from speedy.distill.trainer import DistillationTrainer
from speedy.tasks import ClassificationTask
from speedy.training import fit


@pytest.fixture
def task_data(tiny_files, tmp_path):
    spec = TaskSpec(name="tiny", data=DataSpec(**tiny_files), max_length=32)
    return load_task_data(spec, tmp_path / "cache", tmp_path / "data")


def _teacher(bert_dir, labels, seed=0):
    import torch

    torch.manual_seed(seed)
    return AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=len(labels))


def test_teacher_runs_once_over_the_data_however_many_epochs(bert_dir, bert_unigram_dir, task_data, tmp_path,
                                                             monkeypatch):
    task = ClassificationTask(task_data.labels)
    teacher = _teacher(bert_dir, task.labels)
    seen = []
    teacher.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"].shape[0]),
                                      with_kwargs=True)
    orders = []
    original = DistillationTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if "example_index" in inputs:
            orders.append(inputs["example_index"].tolist())
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(DistillationTrainer, "compute_loss", recording)

    cache = teacher_cache_for(teacher, AutoTokenizer.from_pretrained(bert_dir), task, task_data.splits["train"], 32,
                              tmp_path / "teacher-cache", batch_size=16)
    student = AutoModelForSequenceClassification.from_pretrained(bert_unigram_dir, num_labels=len(task.labels))
    fit(student, AutoTokenizer.from_pretrained(bert_unigram_dir), task, task_data, tmp_path / "run", epochs=3,
        batch_size=16, learning_rate=1e-3, seed=0, max_length=32, metric="accuracy", teacher_caches=[cache],
        objective=DistillationObjective.single())
    n = len(task_data.splits["train"])
    assert sum(seen) == n and len(seen) == -(-n // 16)  # one pass over the training set, in batches of 16
    assert len(cache) == n and cache.values.shape == (n, len(task.labels))
    # Three epochs of shuffled data: each epoch sees every example once, in a different order.
    epochs = [sum(orders[i * 4 : (i + 1) * 4], []) for i in range(3)]
    assert all(sorted(e) == list(range(n)) for e in epochs)
    assert epochs[0] != epochs[1] != epochs[2]

    # Built again for the same teacher and data: read from disk, the teacher does not run.
    before = len(seen)
    again = teacher_cache_for(teacher, AutoTokenizer.from_pretrained(bert_dir), task, task_data.splits["train"], 32,
                              tmp_path / "teacher-cache", batch_size=16)
    assert len(seen) == before and again.folder == cache.folder


def test_cache_rows_are_the_teachers_logits_by_example_index(bert_dir, task_data, tmp_path):
    import torch

    task = ClassificationTask(task_data.labels)
    teacher = _teacher(bert_dir, task.labels).eval()
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    cache = teacher_cache_for(teacher, tokenizer, task, task_data.splits["train"], 32, tmp_path / "c", batch_size=7)
    texts = list(task_data.splits["train"]["text"])
    for index in (0, 5, 63):
        with torch.no_grad():
            expected = teacher(**tokenizer(texts[index], return_tensors="pt")).logits
        rows, counts = cache.rows([index])
        assert counts == [1]
        torch.testing.assert_close(rows, expected, rtol=1e-4, atol=1e-5)


def test_a_changed_teacher_never_reuses_old_outputs(bert_dir, task_data, tmp_path):
    import torch

    task = ClassificationTask(task_data.labels)
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    teacher = _teacher(bert_dir, task.labels)
    first = teacher_cache_for(teacher, tokenizer, task, task_data.splits["train"], 32, tmp_path / "c")
    with torch.no_grad():
        teacher.classifier.bias += 1.0  # "retrained": one parameter changed
    second = teacher_cache_for(teacher, tokenizer, task, task_data.splits["train"], 32, tmp_path / "c")
    assert second.folder != first.folder
    np.testing.assert_allclose(np.asarray(second.values), np.asarray(first.values) + 1.0, rtol=1e-4, atol=1e-4)
    # Other inputs (a different maximum length cuts the texts differently) also get their own cache.
    third = teacher_cache_for(teacher, tokenizer, task, task_data.splits["train"], 6, tmp_path / "c")
    assert third.folder not in (first.folder, second.folder)


def test_a_failed_write_leaves_no_cache(tmp_path):
    def compute():
        yield np.ones((1, 2))
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        TeacherCache.load_or_build(tmp_path, "k", compute)
    assert not TeacherCache.exists(tmp_path, "k")
    assert list(tmp_path.iterdir()) == []
    cache = TeacherCache.load_or_build(tmp_path, "k", lambda: iter([np.ones((1, 2)), np.zeros((2, 2))]))
    assert len(cache) == 2 and cache.rows([1])[1] == [2]


def test_a_process_killed_while_writing_leaves_no_valid_cache(tmp_path):
    """SIGKILL in the middle of a write: no cleanup code runs, yet the half-written cache is never read."""
    script = textwrap.dedent(f"""
        import time, numpy as np, sys
        from speedy.distill.cache import TeacherCache
        def compute():
            for i in range(1000):
                if i == 10:
                    print("writing", flush=True)
                    time.sleep(60)
                yield np.full((1, 4), i, dtype=np.float32)
        TeacherCache.load_or_build({str(tmp_path)!r}, "k", compute)
    """)
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "writing"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not TeacherCache.exists(tmp_path, "k")
    cache = TeacherCache.load_or_build(tmp_path, "k", lambda: (np.full((1, 4), i, np.float32) for i in range(5)))
    assert len(cache) == 5 and float(cache.rows([4])[0][0, 0]) == 4.0


def test_a_training_batch_without_example_index_is_an_error_not_a_silent_gold_loss(bert_dir, task_data):
    """Falling back to the gold loss would train the 'KD' student without its teacher and say nothing."""
    from types import SimpleNamespace

    from speedy.errors import SpeedyError

    task = ClassificationTask(task_data.labels)
    model = _teacher(bert_dir, task.labels)
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    encoded = task.encode(task_data.splits["train"].select(range(4)), tokenizer, 32)
    batch = task.collator(tokenizer)([encoded[i] for i in range(4)])
    trainer = SimpleNamespace()  # compute_loss must fail before it needs the cache or the loss
    with pytest.raises(SpeedyError, match="example_index"):
        DistillationTrainer.compute_loss(trainer, model.train(), dict(batch))
    loss = DistillationTrainer.compute_loss(trainer, model.eval(), dict(batch))  # evaluation: the gold loss
    assert loss.item() > 0


def test_the_cache_keeps_the_time_of_the_run_that_built_it(tmp_path):
    """Tables 5-8 compare KD time with and without the cache: a rerun that only loads the cache must report the
    teacher pass of the run that built it, not its own load time."""
    import time

    def slow():
        time.sleep(0.3)
        return [np.ones((1, 2))]

    def must_not_run():
        raise AssertionError("the cache exists: the teacher must not run again")

    built = TeacherCache.load_or_build(tmp_path, "k", slow)
    loaded = TeacherCache.load_or_build(tmp_path, "k", must_not_run)
    assert built.build_seconds >= 0.3 and loaded.build_seconds == built.build_seconds


def test_a_built_cache_says_its_size_on_disk_per_1000_examples(tmp_path, capsys):
    """The issue asks what a cache costs per 1,000 examples: logits in float32, hidden states in float16."""
    per_example = [np.ones((3, 4)), np.ones((5, 4))]  # 8 rows
    hidden = [np.ones((3, 10)), np.ones((5, 10))]
    cache = TeacherCache.load_or_build(tmp_path, "k", lambda: {"logits": per_example, "hidden.2": hidden,
                                                               "hidden.4": hidden},
                                       signals=("logits", "hidden.2", "hidden.4"))
    sizes = cache.disk_bytes()
    header_and_offsets = {name: sizes[name] - rows for name, rows in
                          (("logits", 8 * 4 * 4), ("hidden.2", 8 * 10 * 2), ("hidden.4", 8 * 10 * 2))}
    # Each signal's size is its float32 / float16 rows plus the .npy headers and the 3 int64 offsets.
    assert all(3 * 8 < extra < 3 * 8 + 2 * 256 for extra in header_and_offsets.values()), header_and_offsets
    assert sum(sizes.values()) == sum((tmp_path / "k" / f).stat().st_size for f in os.listdir(tmp_path / "k")
                                      if f.endswith(".npy"))
    said = capsys.readouterr().err.strip().splitlines()[-1]
    per_1000 = sum(sizes.values()) / 1e6 * 1000 / 2
    assert said.startswith("teacher cache k: 2 examples") and f"({per_1000:.1f} MB per 1,000 examples" in said
    assert f"hidden.* {(sizes['hidden.2'] + sizes['hidden.4']) / 1e6 * 500:.1f}" in said
    TeacherCache.load_or_build(tmp_path, "k", lambda: None, signals=("logits",))  # loading says nothing
    assert capsys.readouterr().err == ""
