"""Embedding distillation: students built from the teacher, the teacher's vectors cached, a student that learns
them, saved as a sentence-transformers folder."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import corpus
from speedy.embed.distill import distill_student, teacher_vectors
from speedy.embed.encoder import build_student, encode, sentence_model, with_prefix
from speedy.errors import SpeedyError

pytest.importorskip("sentence_transformers")


def test_a_student_keeps_spread_layers_and_a_pruned_vocabulary(bert_dir, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    texts = corpus()[:20]
    folder = build_student(bert_dir, 2, tmp_path / "student", prune_texts=texts)
    assert AutoConfig.from_pretrained(folder).num_hidden_layers == 2
    assert len(AutoTokenizer.from_pretrained(folder)) < len(AutoTokenizer.from_pretrained(bert_dir))
    with pytest.raises(SpeedyError, match="a student of 9 layers from a teacher of 4"):
        build_student(bert_dir, 9, tmp_path / "too-deep")


def test_the_teacher_vectors_are_cached_per_teacher_and_texts(bert_dir, tmp_path, monkeypatch):
    teacher = sentence_model(bert_dir, max_length=64)
    texts = with_prefix(corpus()[:12], "passage")
    first = teacher_vectors(teacher, bert_dir, texts, tmp_path)
    assert first.shape == (12, 32) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    monkeypatch.setattr("speedy.embed.distill.encode", lambda *a, **k: pytest.fail("encoded again"))
    assert np.array_equal(teacher_vectors(teacher, bert_dir, texts, tmp_path), first)
    monkeypatch.undo()
    other = teacher_vectors(teacher, bert_dir, texts[:6], tmp_path)
    assert len(list((tmp_path / "teacher-vectors").glob("*.npy"))) == 2 and other.shape == (6, 32)


def test_a_student_learns_the_teacher_vectors_and_loads_with_sentence_transformers(bert_dir, bert_unigram_dir,
                                                                                    tmp_path):
    from sentence_transformers import SentenceTransformer

    texts = with_prefix(corpus()[:48], "passage")
    teacher = sentence_model(bert_dir, max_length=64)
    targets = teacher_vectors(teacher, bert_dir, texts, tmp_path)
    # another random encoder, with another tokenizer: it starts far from the teacher (a copy of the teacher's own
    # layer would start almost where it ends)
    student = sentence_model(build_student(bert_unigram_dir, 1, tmp_path / "student"), max_length=64)
    held_out = encode(student, texts[40:])
    before = float(np.mean(np.sum((held_out - targets[40:]) ** 2, axis=1)))
    summary = distill_student(student, texts[:40], targets[:40], texts[40:], targets[40:], tmp_path / "out",
                              epochs=4, learning_rate=2e-3, batch_size=8, patience=2)
    saved = SentenceTransformer(str(tmp_path / "out"), device="cpu")
    after_vectors = encode(saved, texts[40:])
    after = float(np.mean(np.sum((after_vectors - targets[40:]) ** 2, axis=1)))
    assert after < before and 1 <= summary["epochs_run"] <= 4
    assert np.allclose(after_vectors, encode(student, texts[40:]), atol=1e-5)  # the best epoch is what was saved
    assert not (tmp_path / "out.work").exists() and not (tmp_path / "out.tmp").exists()


def test_mismatched_texts_and_vectors_are_one_line(bert_dir, tmp_path):
    student = sentence_model(bert_dir, max_length=64)
    with pytest.raises(SpeedyError, match="each text needs its vector"):
        distill_student(student, ["a", "b"], np.zeros((1, 32)), ["c"], np.zeros((1, 32)), tmp_path / "x")
    with pytest.raises(SpeedyError, match="16-dimensional vectors, the teacher 32"):
        distill_student(sentence_model(bert_dir, dims=16), ["a"], np.zeros((1, 32)), ["c"], np.zeros((1, 32)),
                        tmp_path / "x")


def test_speedy_embed_writes_npy_and_parquet_and_refuses_bad_files(bert_dir, tmp_path):
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from speedy.cli import app

    lines = tmp_path / "texts.txt"
    lines.write_text("\ufeffEl equipo ganó.\n\nLa ministra aprobó la ley.\nSeñor, ten piedad.\n", "utf-8")
    runner = CliRunner()
    result = runner.invoke(app, ["embed", str(bert_dir), str(lines), "--out", str(tmp_path / "v.npy")])
    assert result.exit_code == 0, result.output
    vectors = np.load(tmp_path / "v.npy")
    assert vectors.shape == (3, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    expected = encode(sentence_model(bert_dir), with_prefix(["El equipo ganó."], "passage"))
    assert np.allclose(vectors[0], expected[0], atol=1e-5)
    result = runner.invoke(app, ["embed", str(bert_dir), str(lines), "--out", str(tmp_path / "v.parquet"),
                                 "--kind", "query"])
    table = pq.read_table(tmp_path / "v.parquet")
    assert result.exit_code == 0 and table.column("text").to_pylist()[1] == "La ministra aprobó la ley."
    assert np.asarray(table.column("embedding").to_pylist()).shape == (3, 32)

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"bien\n\xff\xfe mal\n")
    for arguments, message in (([str(bad)], "bad.txt:2: not UTF-8 text"),
                               ([str(tmp_path / "missing.txt")], "missing.txt: no such file"),
                               ([str(lines), "--kind", "title"], "--kind: 'title'"),
                               ([str(lines), "--out", str(tmp_path / "v.csv")], "write .npy or .parquet")):
        if "--out" not in arguments:
            arguments = [*arguments, "--out", str(tmp_path / "w.npy")]
        result = runner.invoke(app, ["embed", str(bert_dir), *arguments])
        assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "w.npy").exists()


def test_an_exported_student_is_served_by_the_runtime_as_sentence_transformers_embeds(bert_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    from sentence_transformers import SentenceTransformer
    from typer.testing import CliRunner

    from speedy.cli import app
    from speedy.runtime.predictor import RuntimePredictor

    student = sentence_model(build_student(bert_dir, 2, tmp_path / "encoder"), max_length=64)
    student.save(str(tmp_path / "student"))
    result = CliRunner().invoke(app, ["export", str(tmp_path / "student"), str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    texts = ["El equipo ganó el partido.", "¿Quién aprobó la ley?"]
    expected = encode(SentenceTransformer(str(tmp_path / "out"), device="cpu"), with_prefix(texts, "query"))
    runtime = RuntimePredictor(tmp_path / "out", "onnx")
    answers = runtime.run_batch([(text, "query") for text in texts])
    assert np.allclose([a["embedding"] for a in answers], expected, atol=1e-4)
    int8 = RuntimePredictor(tmp_path / "out", "onnx-int8").run_batch([(texts[0], "passage")])[0]["embedding"]
    assert np.dot(int8, encode(student, with_prefix(texts[:1], "passage"))[0]) > 0.98
    assert isinstance(runtime.run_each([(texts[0], "title")])[0], SpeedyError)
    pytest.importorskip("fastapi")
    from starlette.testclient import TestClient

    from speedy.serve.app import ServeSettings, create_app

    with TestClient(create_app(tmp_path / "out", ServeSettings(engine="onnx", max_items=2))) as client:
        served = client.post("/embed", json={"inputs": [{"text": texts[0], "kind": "query"}, {"text": texts[1]}]})
        assert served.status_code == 200
        vectors = [r["embedding"] for r in served.json()["results"]]
        assert np.allclose(vectors[0], expected[0], atol=1e-4) and len(vectors[1]) == expected.shape[1]
        assert client.post("/embed", json={"inputs": [{"text": "a", "kind": "title"}]}).status_code == 422
        assert client.post("/embed", json={"inputs": [{"text": "a"}] * 3}).status_code == 413


def test_frozen_embeddings_stay_as_the_teacher_gave_them(bert_dir, tmp_path):
    texts = with_prefix(corpus()[:24], "passage")
    teacher = sentence_model(bert_dir, max_length=64)
    targets = teacher_vectors(teacher, bert_dir, texts, tmp_path)
    student = sentence_model(build_student(bert_dir, 1, tmp_path / "student"), max_length=64)
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    distill_student(student, texts[:16], targets[:16], texts[16:], targets[16:], tmp_path / "out", epochs=1,
                    learning_rate=1e-2, batch_size=8, freeze_embeddings=True)
    after = dict(student.named_parameters())
    assert all(torch_equal(before[n], after[n]) == ("word_embeddings" in n) for n in before if "weight" in n and
               ("word_embeddings" in n or "attention.self.query" in n))


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
