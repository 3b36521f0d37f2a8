"""KD over named signals and several teachers: the teacher cache's format 2, the objective's terms, and that the
default path (one teacher, logits, KL, alpha 0, T 1) computes exactly the floats it computed before."""

import json
import os

import numpy as np
import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

from speedy.distill.cache import TeacherCache, fingerprint_model
from speedy.distill.losses import DistillationLoss, DistillationObjective, KDTerm
from speedy.distill.teacher import teacher_cache_for
from speedy.distill.trainer import DistillationTrainer
from speedy.errors import SpeedyError
from speedy.tasks import ClassificationTask, TaggingTask
from speedy.tasks.base import PAD_LOGIT, gold_cross_entropy


def old_layout(folder, per_example, meta=None):
    """A cache as speedy wrote it before named signals (format 1), by that code: values.npy, offsets.npy."""
    folder.mkdir(parents=True)
    per_example = [np.asarray(rows, dtype=np.float32) for rows in per_example]
    dim = next((rows.shape[1] for rows in per_example if rows.ndim == 2), 1)
    counts = np.array([len(rows) for rows in per_example], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    values = np.lib.format.open_memmap(folder / "values.npy", mode="w+", dtype=np.float32,
                                       shape=(int(offsets[-1]), dim))
    for i, rows in enumerate(per_example):
        if len(rows):
            values[offsets[i] : offsets[i + 1]] = rows
    values.flush()
    del values
    np.save(folder / "offsets.npy", offsets)
    info = {"key": folder.name, "examples": len(per_example), "rows": int(offsets[-1]), "dim": dim, **(meta or {})}
    (folder / "meta.json").write_text(json.dumps(info, indent=1))
    return np.load(folder / "values.npy"), offsets


def ragged(seed=0, examples=7, dim=3):
    rng = np.random.default_rng(seed)
    rows = [rng.normal(size=(n, dim)).astype(np.float32) for n in [2, 3, 0, 1, 4, 1, 2][:examples]]
    rows[1][0] = np.nan  # a word the teacher saw no piece of
    return rows


def must_not_run():
    raise AssertionError("the cache holds what was asked: the teacher must not run")


# ------------------------------------------------------------------ the cache
def test_a_cache_built_now_holds_the_old_arrays_bit_for_bit_and_names_its_signals(tmp_path):
    rows = ragged()
    old_values, old_offsets = old_layout(tmp_path / "old" / "k", rows)
    cache = TeacherCache.load_or_build(tmp_path / "new", "k", lambda: iter(rows),
                                       teacher={"fingerprint": "f" * 64, "name": "beto"})
    assert np.asarray(cache.values).tobytes() == old_values.tobytes() and cache.values.shape == old_values.shape
    assert cache.offsets.tobytes() == old_offsets.tobytes()
    files = sorted(p.name for p in cache.folder.iterdir())
    assert files == ["logits.offsets.npy", "logits.values.npy", "meta.json"]
    meta = json.loads((cache.folder / "meta.json").read_text())
    assert meta["format"] == 2 and meta["signals"]["logits"]["dim"] == 3 and meta["examples"] == 7
    assert meta["signals"]["logits"]["rows"] == len(old_values) and cache.teacher["name"] == "beto"
    for i in range(7):
        assert cache.example(i).tobytes() == cache.example(i, "logits").tobytes() == rows[i].tobytes()
    assert cache.rows([3, 0], signal="logits")[1] == [len(rows[3]), len(rows[0])]


def test_a_format_1_cache_is_read_as_logits_with_one_message(tmp_path, capsys):
    rows = ragged(1)
    old_values, _ = old_layout(tmp_path / "k", rows, meta={"task": "tagging", "build_seconds": 2.5})
    cache = TeacherCache.load_or_build(tmp_path, "k", must_not_run)
    message = capsys.readouterr().err
    assert message.count("\n") == 1 and "format 1" in message and "'logits'" in message
    assert cache.format == 1 and cache.signals == ("logits",) and len(cache) == 7 and cache.build_seconds == 2.5
    assert np.asarray(cache.values).tobytes() == old_values.tobytes()
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["meta.json", "offsets.npy", "values.npy"]


def test_a_format_1_cache_asked_for_another_signal_is_rebuilt(tmp_path, capsys):
    old_layout(tmp_path / "k", ragged(1))
    fresh = ragged(2)
    cache = TeacherCache.load_or_build(tmp_path, "k", lambda: {"logits": fresh, "hidden.2": ragged(3, dim=5)},
                                       signals=("logits", "hidden.2"))
    assert "rebuilding" in capsys.readouterr().err
    assert cache.format == 2 and cache.signals == ("logits", "hidden.2") and cache.dim("hidden.2") == 5
    assert cache.example(0).tobytes() == fresh[0].tobytes()
    assert not (tmp_path / "k" / "values.npy").exists() and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("damage", ["garbage", "missing", "rows", "examples", "truncated"])
def test_a_cache_whose_meta_or_arrays_cannot_be_trusted_is_rebuilt_never_misread(tmp_path, capsys, damage):
    rows = ragged(4)
    TeacherCache.load_or_build(tmp_path, "k", lambda: iter(rows))
    folder, meta = tmp_path / "k", json.loads((tmp_path / "k" / "meta.json").read_text())
    if damage == "garbage":
        (folder / "meta.json").write_text('{"format": 2, "sig')
    elif damage == "missing":
        (folder / "meta.json").unlink()
    elif damage == "rows":  # the arrays of another cache under this meta
        meta["signals"]["logits"]["rows"] += 1
        (folder / "meta.json").write_text(json.dumps(meta))
    elif damage == "examples":
        meta["examples"] = 99
        (folder / "meta.json").write_text(json.dumps(meta))
    else:
        data = (folder / "logits.values.npy").read_bytes()
        (folder / "logits.values.npy").write_bytes(data[: len(data) - 8])
    fresh = ragged(5)
    cache = TeacherCache.load_or_build(tmp_path, "k", lambda: iter(fresh))
    assert "rebuilding" in capsys.readouterr().err
    assert len(cache) == 7 and all(cache.example(i).tobytes() == fresh[i].tobytes() for i in range(7))
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_cache_of_a_newer_format_is_an_error_not_overwritten(tmp_path):
    TeacherCache.load_or_build(tmp_path, "k", lambda: iter(ragged()))
    meta = json.loads((tmp_path / "k" / "meta.json").read_text())
    (tmp_path / "k" / "meta.json").write_text(json.dumps({**meta, "format": 3}))
    with pytest.raises(SpeedyError, match="format 3"):
        TeacherCache.load_or_build(tmp_path, "k", must_not_run)
    assert json.loads((tmp_path / "k" / "meta.json").read_text())["format"] == 3


def test_a_signal_the_cache_lacks_is_added_beside_the_others(tmp_path, capsys):
    rows = ragged()
    first = TeacherCache.load_or_build(tmp_path, "k", lambda: iter(rows), teacher={"fingerprint": "x", "name": "t"})
    logits_file = os.stat(first.folder / "logits.values.npy")
    hidden = ragged(6, dim=4)
    cache = TeacherCache.load_or_build(tmp_path, "k", lambda: {"logits": ragged(9), "hidden.1": hidden},
                                       signals=("logits", "hidden.1"))
    assert "adding" in capsys.readouterr().err
    assert cache.signals == ("logits", "hidden.1") and cache.teacher == {"fingerprint": "x", "name": "t"}
    assert os.stat(cache.folder / "logits.values.npy").st_ino == logits_file.st_ino  # logits left as they were
    assert cache.example(2).tobytes() == rows[2].tobytes()
    assert cache.example(2, "hidden.1").tobytes() == hidden[2].tobytes()
    again = TeacherCache.load_or_build(tmp_path, "k", must_not_run, signals=("hidden.1",))
    assert again.signals == ("logits", "hidden.1")
    with pytest.raises(SpeedyError, match="no signal 'attention.0'"):
        again.rows([0], "attention.0")


@pytest.mark.parametrize("signal", ["../x", "Logits", "", "a/b"])
def test_signal_names_are_checked(tmp_path, signal):
    with pytest.raises(SpeedyError, match="signal name"):
        TeacherCache.load_or_build(tmp_path, "k", must_not_run, signals=(signal,))


# ------------------------------------------------------------------ the teacher pass
@pytest.fixture
def tagging(bert_dir):
    task = TaggingTask(["O", "B-PER", "I-PER"])
    sentences = [["Juan", "\u200b", "entrenó", "con", "el", "balón", "ayer", "."], ["La", "ministra", "votó"],
                 ("el equipo ganó el partido ayer " * 3).split()]
    data = Dataset.from_dict({"tokens": sentences, "tags": [["O"] * len(s) for s in sentences],
                              "lines": [[1] * len(s) for s in sentences]})
    torch.manual_seed(0)
    teacher = AutoModelForTokenClassification.from_pretrained(bert_dir, num_labels=3).eval()
    return task, data, teacher, AutoTokenizer.from_pretrained(bert_dir)


def test_the_teacher_pass_stores_what_the_old_pass_stored_and_who_the_teacher_is(tagging, tmp_path):
    task, data, teacher, tokenizer = tagging
    cache = teacher_cache_for(teacher, tokenizer, task, data, 8, tmp_path, batch_size=2, teacher_name="beto-cased")
    # The old pass: NaN rows per word, filled by task.teacher_rows, batches in order of length.
    encoded = task.encode(data, tokenizer, 8, with_index=True)
    expected = [np.full((n, 3), np.nan, dtype=np.float32) for n in task.rows_per_example(data)]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    for start in range(0, len(order), 2):
        batch = task.collator(tokenizer)([encoded[i] for i in order[start : start + 2]])
        with torch.no_grad():
            outputs = teacher(**{k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
        for example, positions, values in task.teacher_rows(outputs, batch):
            expected[example][positions] = values
    assert all(cache.example(i).tobytes() == expected[i].tobytes() for i in range(len(data)))
    assert np.isnan(cache.example(0)[1]).all()  # the zero-width space: no piece, no row
    assert cache.teacher == {"fingerprint": fingerprint_model(teacher), "name": "beto-cased"}
    assert cache.meta["signals"] == {"logits": {"dim": 3, "rows": 29, "build_seconds": cache.build_seconds}}


def test_a_signal_the_task_cannot_give_fails_before_the_teacher_runs(tagging, tmp_path):
    task, data, teacher, tokenizer = tagging
    teacher.register_forward_pre_hook(lambda *a: (_ for _ in ()).throw(AssertionError("the teacher ran")))
    with pytest.raises(SpeedyError, match="no KD signal 'attention.2'"):
        teacher_cache_for(teacher, tokenizer, task, data, 8, tmp_path, signals=("logits", "attention.2"))
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------ the objective
class RowsTask:
    """A task whose KD rows are given: per cache (a dict here), the student's, the teacher's, the labels."""

    def kd_rows(self, outputs, inputs, extras, cache, signal="logits", student_signal=None):
        return cache[signal]

    gold_loss = staticmethod(gold_cross_entropy)  # as every task type but embeddings


def random_rows(seed, rows=6, width=5, pad=True):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, width, generator=generator, requires_grad=True)
    teacher = 3 * torch.randn(rows, width, generator=generator)
    if pad:  # QA-like rows of different widths
        teacher[::2, -2:] = PAD_LOGIT
        student = torch.cat([student[:, :-2], torch.where(teacher[:, -2:] == PAD_LOGIT, PAD_LOGIT, student[:, -2:])], 1)
    labels = torch.randint(0, 3, (rows,), generator=generator)
    labels[1] = -100
    return student, teacher, labels


@pytest.mark.parametrize("kind", ["kl", "ce", "mse"])
@pytest.mark.parametrize("alpha, temperature", [(0.0, 1.0), (0.3, 1.0), (0.0, 2.5), (1.0, 4.0)])
@pytest.mark.parametrize("pad", [False, True])
def test_the_one_term_objective_is_distillation_loss_bit_for_bit(kind, alpha, temperature, pad):
    for seed in range(3):
        student, teacher, labels = random_rows(seed, pad=pad)
        leaf = student
        old = DistillationLoss(kind, alpha, temperature)(student, teacher, labels)
        (old_grad,) = torch.autograd.grad(old, leaf)
        new = DistillationObjective.single(kind, alpha, temperature)(
            RowsTask(), None, None, None, [{"logits": (student, teacher, labels)}])
        (new_grad,) = torch.autograd.grad(new, leaf)
        spelled = DistillationObjective([KDTerm("logits", kind, 1.0, temperature)], alpha)(
            RowsTask(), None, None, None, [{"logits": (student, teacher, labels)}])
        assert torch.equal(old, new) and torch.equal(old, spelled) and torch.equal(old_grad, new_grad)


def test_terms_are_weighted_and_summed_and_each_is_averaged_over_the_teachers():
    s1, t1, labels = random_rows(0, pad=False)
    _, t2, _ = random_rows(1, pad=False)
    s2 = s1[:4]  # the second teacher pairs fewer rows (another tokenizer left two words out)
    t2 = t2[:4]
    caches = [{"logits": (s1, t1, labels), "hidden.1": (s1, t1, None)}, {"logits": (s2, t2, labels[:4]),
                                                                          "hidden.1": (s2, t2, None)}]
    objective = DistillationObjective([KDTerm("logits", "kl", 1.0, 2.0), KDTerm("hidden.1", "mse", 0.5)], alpha=0.25)
    assert objective.signals == ("logits", "hidden.1")
    loss = objective(RowsTask(), None, None, None, caches)
    kl = DistillationLoss("kl", 0.0, 2.0)
    mse = DistillationLoss("mse")
    kd = (kl(s1, t1) + kl(s2, t2)) / 2 + 0.5 * (mse(s1, t1) + mse(s2, t2)) / 2
    gold = torch.nn.functional.cross_entropy(s1, labels, ignore_index=-100)  # on the first teacher's rows
    torch.testing.assert_close(loss, 0.25 * gold + 0.75 * kd, rtol=1e-6, atol=0)


def test_teachers_weighted_by_their_scores_give_the_weighted_mean_of_each_term():
    s1, t1, labels = random_rows(0, pad=False)
    _, t2, _ = random_rows(1, pad=False)
    caches = [{"logits": (s1, t1, labels)}, {"logits": (s1, t2, labels)}]
    kl = DistillationLoss("kl", 0.0, 1.0)
    weighted = DistillationObjective([KDTerm("logits", "kl", 1.0)], teacher_weights=[0.9, 0.3])  # scores 90 / 30
    torch.testing.assert_close(weighted(RowsTask(), None, None, None, caches),
                               0.75 * kl(s1, t1) + 0.25 * kl(s1, t2), rtol=1e-6, atol=0)
    equal = DistillationObjective([KDTerm("logits", "kl", 1.0)], teacher_weights=[2.0, 2.0])
    torch.testing.assert_close(equal(RowsTask(), None, None, None, caches),
                               DistillationObjective([KDTerm("logits", "kl", 1.0)])(RowsTask(), None, None, None, caches))
    with pytest.raises(SpeedyError, match="non-negative with a positive sum"):
        DistillationObjective([KDTerm()], teacher_weights=[0.0, 0.0])
    with pytest.raises(SpeedyError, match="3 teacher weights for 2 teachers"):
        DistillationObjective([KDTerm()], teacher_weights=[1, 1, 1])(RowsTask(), None, None, None, caches)


def test_objective_settings_are_checked():
    with pytest.raises(SpeedyError, match="distill.weight"):
        KDTerm(weight=-1.0)
    with pytest.raises(SpeedyError, match="distill.loss"):
        KDTerm(kind="relation")  # a hidden-state kind, not one for logits
    with pytest.raises(SpeedyError, match="at least one term"):
        DistillationObjective([])
    assert DistillationObjective([KDTerm("hidden.3", "mse")], alpha=0.5).signals == ("hidden.3", "logits")


# ------------------------------------------------------------------ the trainer
def test_the_trainer_computes_the_loss_of_the_rows_and_averages_teachers(bert_dir, tmp_path):
    from transformers import TrainingArguments

    task = ClassificationTask(["a", "b"])
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    data = Dataset.from_dict({"text": ["el equipo ganó", "la ministra votó", "el gol"], "label": ["a", "b", "a"],
                              "line": [1, 2, 3]})
    torch.manual_seed(0)
    teacher = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2)
    cache = teacher_cache_for(teacher, tokenizer, task, data, 16, tmp_path / "c")
    torch.manual_seed(1)
    student = AutoModelForSequenceClassification.from_pretrained(bert_dir, num_labels=2).eval()  # no dropout
    args = TrainingArguments(output_dir=str(tmp_path / "run"), use_cpu=True, report_to=[])
    new = DistillationTrainer(model=student, args=args, task=task, teacher_caches=[cache],
                              objective=DistillationObjective.single("kl", 0.0, 1.0))
    encoded = task.encode(data, tokenizer, 16, with_index=True)
    batch = task.collator(tokenizer)([encoded[i] for i in (2, 0, 1)])
    expected = DistillationLoss()(student(**{k: v for k, v in batch.items() if k != "example_index"}).logits,
                                  cache.rows([2, 0, 1])[0], batch["labels"])
    assert torch.equal(new.compute_loss(student, dict(batch)), expected)
    two = DistillationTrainer(model=student, args=args, task=task, teacher_caches=[cache, cache],
                              objective=DistillationObjective.single())
    torch.testing.assert_close(two.compute_loss(student, dict(batch)), expected)
    other = TeacherCache.load_or_build(tmp_path / "o", "k", lambda: iter([np.zeros((1, 2))]))
    with pytest.raises(SpeedyError, match="different numbers of examples"):
        DistillationTrainer(model=student, args=args, task=task, teacher_caches=[cache, other],
                            objective=DistillationObjective.single())
