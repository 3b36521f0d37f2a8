"""Tagging: CoNLL / CoNLL-U readers, word windows, first-sub-token alignment across two different tokenizers,
word-level KD rows, and one tag per input word."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForTokenClassification, AutoTokenizer

from speedy.data.readers import read_conll, read_conllu
from speedy.distill.cache import TeacherCache
from speedy.errors import SpeedyError
from speedy.tasks import TaggingTask
from speedy.runtime.alignment import first_subtokens, word_windows

CONLL = """-DOCSTART- -X- O

El DA O
Real NC B-ORG
Madrid NC I-ORG
ganó VMI O
en SP O
Valencia NC B-LOC
. Fp O

Juan NC B-PER
habla VMI O
"""

CONLLU = """# sent_id = 1
# text = Vámonos al mar.
1-2\tVámonos\t_\t_\t_\t_\t_\t_\t_\t_
1\tVamos\tir\tVERB\t_\t_\t0\troot\t_\t_
2\tnos\tnosotros\tPRON\t_\t_\t1\tobj\t_\t_
3-4\tal\t_\t_\t_\t_\t_\t_\t_\t_
3\ta\ta\tADP\t_\t_\t5\tcase\t_\t_
4\tel\tel\tDET\t_\t_\t5\tdet\t_\t_
5\tmar\tmar\tNOUN\t_\t_\t1\tobl\t_\t_
5.1\tva\tir\tVERB\t_\t_\t_\t_\t1:conj\t_
6\t.\t.\tPUNCT\t_\t_\t1\tpunct\t_\t_

# sent_id = 2
1\tHola\thola\tINTJ\t_\t_\t0\troot\t_\t_
"""


def test_conll_reader(tmp_path):
    path = tmp_path / "esp.train"
    path.write_text(CONLL, "utf-8")
    data = read_conll(path)
    assert data["tokens"][0] == ["El", "Real", "Madrid", "ganó", "en", "Valencia", "."]
    assert data["tags"][0] == ["O", "B-ORG", "I-ORG", "O", "O", "B-LOC", "O"]
    assert data["tags"][1] == ["B-PER", "O"] and data["lines"][1] == [11, 12]


def test_conllu_reader_skips_ranges_and_empty_nodes(tmp_path):
    path = tmp_path / "x.conllu"
    path.write_text(CONLLU, "utf-8")
    data = read_conllu(path)
    assert data["tokens"][0] == ["Vamos", "nos", "a", "el", "mar", "."]
    assert data["tags"][0] == ["VERB", "PRON", "ADP", "DET", "NOUN", "PUNCT"]
    assert data["tokens"][1] == ["Hola"] and data["lines"][1] == [14]


@pytest.mark.parametrize("name, text, fragment", [
    ("x.conll", "El O\n B-PER\n", "x.conll:2: a tag with no word"),
    ("x.conll", "El O\nB-PER\n", "x.conll:2: a tag with no word"),
    ("x.conllu", "1\tHola\thola\tINTJ\t_\n", "x.conllu:1: 5 tab-separated columns"),
    ("x.conllu", "# sent_id = 1\n# text = nada\n\n", "x.conllu:1: a sentence with no tokens"),
])
def test_bad_lines_name_file_and_line(tmp_path, name, text, fragment):
    path = tmp_path / name
    path.write_text(text, "utf-8")
    reader = read_conllu if name.endswith(".conllu") else read_conll
    with pytest.raises(SpeedyError, match=fragment):
        reader(path)


def test_non_utf8_tagging_file(tmp_path):
    path = tmp_path / "x.conll"
    path.write_bytes("El O\nNiño O\n".encode("latin-1"))
    with pytest.raises(SpeedyError, match="x.conll:2: not valid UTF-8"):
        read_conll(path)


# ----------------------------------------------------------------------------------------------- windows


def test_word_windows_cover_every_word_once_with_context():
    pieces = [1, 3, 1, 2, 1, 1, 4, 1, 1, 2]
    windows = word_windows(pieces, budget=6, stride=2)
    owned = sorted(w for window in windows for w in window.owned)
    assert owned == list(range(len(pieces)))  # every word exactly once
    for window in windows:
        assert sum(pieces[window.start : window.end]) <= 6 or window.end - window.start == 1
        assert all(window.start <= w < window.end for w in window.owned)
    assert any(a.end > b.start for a, b in zip(windows, windows[1:]))  # consecutive windows overlap
    assert word_windows([2, 2], budget=10) == [word_windows([2, 2], budget=10)[0]] and len(word_windows([2, 2], 10)) == 1


def test_a_word_longer_than_the_budget_gets_its_own_window():
    windows = word_windows([1, 9, 1], budget=4, stride=1)
    assert sorted(w for window in windows for w in window.owned) == [0, 1, 2]
    assert any(window.start == 1 and window.end == 2 for window in windows)


def test_first_subtokens():
    assert first_subtokens([None, 0, 0, 1, 3, 3, None]) == {0: 1, 1: 3, 3: 4}


# ------------------------------------------------------------------------------------- cross-tokenizer


@pytest.fixture
def tokenizers(wordpiece_dir, unigram_dir):
    return AutoTokenizer.from_pretrained(wordpiece_dir), AutoTokenizer.from_pretrained(unigram_dir)


def _words_at_first_subtokens(task, tokenizer, sentence, max_length):
    from datasets import Dataset

    encoded = task.encode(Dataset.from_dict({"tokens": [sentence]}), tokenizer, max_length, with_index=True)
    found = {}
    for row in range(len(encoded)):
        ids, words = encoded[row]["input_ids"], encoded[row]["word_index"]
        for position, word in enumerate(words):
            if word >= 0:
                assert word not in found, "a word must get exactly one row"
                found[word] = tokenizer.convert_ids_to_tokens(ids[position])
    return found


def test_each_word_maps_to_its_own_first_subtoken_in_both_tokenizers(tokenizers):
    wordpiece, unigram = tokenizers
    task = TaggingTask(["O", "B-PER"])
    # "entrenador" is one piece in one tokenizer and several in the other; "\u200b" has no piece at all in
    # the WordPiece tokenizer (its normaliser drops it); "Zyx" has characters neither vocabulary has much of.
    sentence = ["El", "entrenador", "\u200b", "habló", "con", "Zyx", "ayer", "."]
    for tokenizer in (wordpiece, unigram):
        found = _words_at_first_subtokens(task, tokenizer, sentence, max_length=64)
        pieces = tokenizer(sentence, is_split_into_words=True, add_special_tokens=False)
        for word, token in found.items():
            own = tokenizer(sentence[word : word + 1], is_split_into_words=True, add_special_tokens=False)
            assert token == tokenizer.convert_ids_to_tokens(own["input_ids"][0]), (word, token)
        missing = set(range(len(sentence))) - set(found)
        assert missing == set(range(len(sentence))) - {w for w in pieces.word_ids() if w is not None}
    wp = _words_at_first_subtokens(task, wordpiece, sentence, 64)
    assert 2 not in wp  # the zero-width space has no piece in WordPiece: no row, never a shifted one


def test_alignment_survives_windows_that_differ_between_tokenizers(tokenizers):
    wordpiece, unigram = tokenizers
    task = TaggingTask(["O"])
    sentence = ("El entrenador del equipo habló con la ministra y el diputado ayer en el estadio de la ciudad "
                "mientras la portera entrenaba con el balón .").split()
    for tokenizer in (wordpiece, unigram):
        short = _words_at_first_subtokens(task, tokenizer, sentence, max_length=12)  # many windows
        full = _words_at_first_subtokens(task, tokenizer, sentence, max_length=128)  # one window
        assert short == full and sorted(full) == list(range(len(sentence)))


def test_kd_rows_pair_teacher_and_student_by_word(tokenizers, tmp_path, bert_dir, bert_unigram_dir):
    """The teacher (WordPiece) and the student (Unigram) see different pieces and windows; KD rows still pair
    word k of the teacher with word k of the student, and skip words the teacher had no piece of."""
    from datasets import Dataset

    wordpiece, unigram = tokenizers
    labels = ["O", "B-PER", "I-PER"]
    task = TaggingTask(labels)
    sentences = [["Juan", "\u200b", "entrenó", "con", "el", "balón", "ayer", "."], ["La", "ministra", "votó"]]
    dataset = Dataset.from_dict({"tokens": sentences, "tags": [["O"] * 8, ["O"] * 3], "lines": [[1] * 8, [2] * 3]})
    # A fake cache: the teacher's row for word k of sentence s is filled with the number 10*s + k.
    rows = [np.stack([np.full(3, 10.0 * s + k, dtype=np.float32) for k in range(len(words))])
            for s, words in enumerate(sentences)]
    rows[0][1] = np.nan  # the teacher saw no piece of the zero-width space
    cache = TeacherCache.load_or_build(tmp_path, "fake", lambda: iter(rows))

    encoded = task.encode(dataset, unigram, max_length=6, with_index=True)  # the student cuts into windows
    batch = task.collator(unigram)([encoded[i] for i in range(len(encoded))])
    student = AutoModelForTokenClassification.from_pretrained(bert_unigram_dir, num_labels=3)
    extras = {k: batch.pop(k) for k in ("example_index", "word_index")}
    outputs = student(**{k: v for k, v in batch.items() if k != "labels"})
    s_rows, t_rows, gold = task.kd_rows(outputs, batch, extras, cache)
    expected = []
    for row in range(extras["word_index"].shape[0]):
        s = int(extras["example_index"][row])
        for word in extras["word_index"][row].tolist():
            if word >= 0 and not (s == 0 and word == 1):
                expected.append(10.0 * s + word)
    assert t_rows[:, 0].tolist() == expected
    assert s_rows.shape == t_rows.shape == (len(expected), 3) and gold.shape == (len(expected),)
    assert sorted(expected) == sorted([10.0 * 0 + k for k in range(8) if k != 1] + [10.0, 11.0, 12.0])


def test_predict_gives_one_tag_per_input_word_even_past_the_maximum_length(bert_dir):
    tokenizer = AutoTokenizer.from_pretrained(bert_dir)
    task = TaggingTask(["O", "B-PER", "I-PER"])
    model = AutoModelForTokenClassification.from_pretrained(bert_dir, num_labels=3)
    sentences = [("el equipo ganó el partido ayer " * 12).split(), ["Juan"], ["\u200b", "hola"]]
    predicted = task.predict_words(model, tokenizer, sentences, max_length=16)
    assert [len(p) for p in predicted] == [len(s) for s in sentences]
    assert predicted[2][0] == "O"  # no piece: the fallback tag
    assert all(tag in task.labels for p in predicted for tag in p)


def test_unknown_tag_in_a_test_file_names_file_and_line(tmp_path, bert_dir):
    path = tmp_path / "esp.testb"
    path.write_text("Juan B-PER\nhabla B-MISC\n", "utf-8")
    data = read_conll(path)
    task = TaggingTask(["O", "B-PER"])
    with pytest.raises(SpeedyError, match=r"esp.testb:2: tag 'B-MISC'"):
        task.evaluate(None, AutoTokenizer.from_pretrained(bert_dir), data, 32, source=str(path))


def test_metrics_ner_entity_level_and_pos_as_accuracy():
    ner = TaggingTask(["O", "B-PER", "I-PER", "B-LOC"])
    gold = [["B-PER", "I-PER", "O", "B-LOC"]]
    scores = ner.score(gold, [["B-PER", "O", "O", "B-LOC"]])  # the PER entity is cut: 1 of 2 entities right
    assert scores["f1"] == pytest.approx(0.5) and scores["accuracy"] == pytest.approx(0.75)
    pos = TaggingTask(["DET", "NOUN", "VERB"], scheme="pos")
    scores = pos.score([["DET", "NOUN", "NOUN", "VERB"]], [["DET", "NOUN", "VERB", "VERB"]])
    assert scores["f1"] == pytest.approx(0.75) == scores["accuracy"]
    assert 0 < scores["macro_f1"] < 1
