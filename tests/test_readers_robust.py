"""Readers on awkward input: only \\n ends a line, a BOM on any file, huge or unclosed CSV fields, SQuAD files with
repeated ids, QA contexts too long to window. Bad input is one SpeedyError naming the file and line (or setting)."""

import json
import time

import pytest
from datasets import Dataset
from transformers import AutoTokenizer

from speedy.data import readers
from speedy.data.readers import read_conll, read_conllu, read_labelled_texts
from speedy.data.squad import read_squad
from speedy.errors import SpeedyError
from speedy.tasks import QATask

# Characters str.splitlines() treats as line ends; none of them ends a line of a data file.
SEPARATORS = ["\u2028", "\u2029", "\u0085", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e"]
BOM = "\ufeff"


def write(path, text):
    path.write_text(text, "utf-8")
    return path


def squad_text(qas_by_paragraph, context="El Real Madrid ganó la final en Lisboa en 2014."):
    return json.dumps({"version": "1.1", "data": [{"title": "t", "paragraphs": [
        {"context": context, "qas": qas} for qas in qas_by_paragraph]}]}, ensure_ascii=False)


def qa(qid, question="¿Dónde?", text="Lisboa", start=32):
    return {"id": qid, "question": question, "answers": [{"text": text, "answer_start": start}]}


# ------------------------------------------------------------------------------ 1. only \n ends a line


@pytest.mark.parametrize("separator", SEPARATORS)
def test_unicode_separators_stay_inside_fields(tmp_path, separator):
    text = f"uno{separator}dos"
    tsv = read_labelled_texts(write(tmp_path / "x.tsv", f"label\ttext\na\t{text}\nb\tfin\n"))
    assert tsv["text"] == [text, "fin"] and tsv["line"] == [2, 3]
    csv_ = read_labelled_texts(write(tmp_path / "x.csv", f"label,text\na,{text}\nb,fin\n"))
    assert csv_["text"] == [text, "fin"] and csv_["line"] == [2, 3]
    jsonl = read_labelled_texts(write(tmp_path / "x.jsonl", json.dumps({"label": "a", "text": text},
                                                                      ensure_ascii=False) + "\n"))
    assert jsonl["text"] == [text]
    conll = read_conll(write(tmp_path / "x.conll", f"{text} O\nfin O\n"))
    assert conll["tokens"] == [[text, "fin"]] and conll["lines"] == [[1, 2]]
    conllu = read_conllu(write(tmp_path / "x.conllu", f"1\t{text}\t_\tNOUN\t_\t_\t0\troot\t_\t_\n\n"))
    assert conllu["tokens"] == [[text]]


def test_a_field_with_a_separator_does_not_shift_later_line_numbers(tmp_path):
    path = write(tmp_path / "x.tsv", "label\ttext\na\tuno\u2028dos\nb\ttres\nc\n")
    with pytest.raises(SpeedyError, match=r"x\.tsv:4: malformed row"):
        read_labelled_texts(path)


def test_crlf_still_ends_a_line_and_a_lone_cr_is_named(tmp_path):
    assert read_labelled_texts(write(tmp_path / "x.tsv", "label\ttext\r\na\tuno\r\n"))["text"] == ["uno"]
    assert read_conll(write(tmp_path / "x.conll", "El O\r\n\r\nfin O\r\n"))["tokens"] == [["El"], ["fin"]]
    with pytest.raises(SpeedyError, match=r"y\.tsv:2: a carriage return"):
        read_labelled_texts(write(tmp_path / "y.tsv", "label\ttext\na\tuno\rdos\n"))


def test_conll_columns_are_split_on_spaces_and_tabs_only(tmp_path):
    data = read_conll(write(tmp_path / "x.conll", "10\u00a0000 Z O\nEl\tDA\tO\n"))
    assert data["tokens"] == [["10\u00a0000", "El"]] and data["tags"] == [["O", "O"]]


def test_conllu_line_of_unicode_spaces_is_not_a_sentence_break(tmp_path):
    token = "1\tHola\t_\tINTJ\t_\t_\t0\troot\t_\t_\n"
    with pytest.raises(SpeedyError, match=r"x\.conllu:2: 1 tab-separated columns"):
        read_conllu(write(tmp_path / "x.conllu", token + "\u3000\n" + token.replace("Hola", "Adiós")))


# ------------------------------------------------------------------------------------------ 2. BOM


def test_a_bom_is_dropped_from_every_file(tmp_path):
    assert read_labelled_texts(write(tmp_path / "x.tsv", BOM + "label\ttext\na\tuno\n"))["label"] == ["a"]
    assert read_labelled_texts(write(tmp_path / "x.csv", BOM + "a,uno\n"), columns=["label", "text"])["label"] == ["a"]
    assert read_labelled_texts(write(tmp_path / "x.jsonl", BOM + '{"label": "a", "text": "uno"}\n'))["label"] == ["a"]
    assert read_conll(write(tmp_path / "x.conll", BOM + "El O\n"))["tokens"] == [["El"]]
    conllu = BOM + "# sent_id = 1\n1\tHola\t_\tINTJ\t_\t_\t0\troot\t_\t_\n\n"
    assert read_conllu(write(tmp_path / "x.conllu", conllu))["tokens"] == [["Hola"]]
    assert read_squad(write(tmp_path / "x.json", BOM + squad_text([[qa("q1")]])))["id"] == ["q1"]


def test_a_bom_on_a_later_split_file_of_a_task(tmp_path):
    from speedy.config import DataSpec, TaskSpec
    from speedy.tasks import load_task_data

    train = write(tmp_path / "train.tsv", "label\ttext\na\tuno\nb\tdos\n")
    dev = write(tmp_path / "dev.tsv", BOM + "label\ttext\na\ttres\n")
    task = TaskSpec(name="t", data=DataSpec(train=str(train), validation=str(dev), test=str(dev)))
    data = load_task_data(task, tmp_path, tmp_path)
    assert data.splits["validation"]["label"] == ["a"] and data.splits["test"]["text"] == ["tres"]


# ------------------------------------------------------------------------------------- 3. big fields


def test_a_csv_field_over_128_kib_is_read(tmp_path):
    big = "palabra " * 40_000  # 320 KB
    for name, sep in (("x.csv", ","), ("x.tsv", "\t")):
        data = read_labelled_texts(write(tmp_path / name, f"label{sep}text\na{sep}{big}\nb{sep}fin\n"))
        assert data["text"] == [big.strip(), "fin"]


def test_a_field_over_the_limit_names_file_and_line(tmp_path, monkeypatch):
    monkeypatch.setattr(readers, "CSV_FIELD_LIMIT", 1000)
    with pytest.raises(SpeedyError, match=r"x\.csv:3: a field longer than 1000 characters"):
        read_labelled_texts(write(tmp_path / "x.csv", "label,text\na,uno\nb," + "x" * 2000 + "\n"))


# -------------------------------------------------------------------------------- 4. unclosed quotes


@pytest.mark.parametrize("rest", ["c,tres\nd,cuatro\n", 'c,tres\n"d",cuatro\n'])
def test_an_unclosed_csv_quote_names_the_line_it_opened(tmp_path, rest):
    path = write(tmp_path / "x.csv", 'label,text\na,uno\nb,"dos\n' + rest)
    with pytest.raises(SpeedyError, match=r"x\.csv:3: a quote opened in the row that starts here is never closed"):
        read_labelled_texts(path)


def test_text_after_a_closing_quote_is_named(tmp_path):
    with pytest.raises(SpeedyError, match=r"x\.csv:2: text after a closing quote"):
        read_labelled_texts(write(tmp_path / "x.csv", 'label,text\na,"uno" dos\n'))


def test_quoted_multiline_csv_fields_keep_line_numbers_and_tsv_quotes_are_literal(tmp_path):
    path = write(tmp_path / "x.csv", 'label,text\na,"uno\ndos"\nb,tres\nc\n')
    with pytest.raises(SpeedyError, match=r"x\.csv:5: malformed row"):
        read_labelled_texts(path)
    data = read_labelled_texts(write(tmp_path / "y.csv", 'label,text\na,"uno\ndos"\nb,"tres, ""cuatro"""\n'))
    assert data["text"] == ["uno\ndos", 'tres, "cuatro"'] and data["line"] == [2, 4]
    tsv = read_labelled_texts(write(tmp_path / "x.tsv", 'label\ttext\na\t"uno\nb\tdos"\n'))
    assert tsv["text"] == ['"uno', 'dos"']


def test_a_header_naming_a_column_twice_is_rejected(tmp_path):
    with pytest.raises(SpeedyError, match=r"x\.tsv:1: column 'text' appears twice"):
        read_labelled_texts(write(tmp_path / "x.tsv", "label\ttext\ttext\na\tuno\tdos\n"))


# ----------------------------------------------------------------------------------- 6. SQuAD ids


def test_a_repeated_question_id_names_both_places(tmp_path):
    path = write(tmp_path / "x.json", squad_text([[qa("q1"), qa("q2")], [qa("q3"), qa("q1", "¿Qué?")]]))
    with pytest.raises(SpeedyError, match=r"x\.json: question id q1 occurs twice \(data\[0\]\.paragraphs\[0\]\.qas\[0\] "
                                          r"and data\[0\]\.paragraphs\[1\]\.qas\[1\]\)"):
        read_squad(path)


@pytest.mark.parametrize("question, fragment", [
    ({"question": "¿Dónde?", "answers": []}, r"data\[0\]\.paragraphs\[0\]\.qas\[1\]: a question with no 'id'"),
    ("q", r"data\[0\]\.paragraphs\[0\]\.qas\[1\]: not SQuAD-shaped"),
    ({"id": "q2", "question": "¿Dónde?", "answers": ["Lisboa"]}, "question id q2: an answer needs"),
    ({"id": "q2", "question": "¿Dónde?", "answers": [{"text": "Lisboa", "answer_start": True}]},
     "question id q2: an answer needs"),
])
def test_malformed_questions_are_named(tmp_path, question, fragment):
    with pytest.raises(SpeedyError, match=r"x\.json: " + fragment):
        read_squad(write(tmp_path / "x.json", squad_text([[qa("q1"), question]])))


# -------------------------------------------------------------------------------- 5. windows per example


@pytest.fixture(scope="module")
def tokenizer(wordpiece_dir):
    return AutoTokenizer.from_pretrained(wordpiece_dir)


def one_question(context, qid="q7"):
    return Dataset.from_dict({"id": [qid], "question": ["¿Quién?"], "context": [context],
                              "answers": [{"text": [context[:2]], "answer_start": [0]}]})


def test_the_window_cap_is_exact_at_its_edge(tokenizer):
    context = " ".join(["el equipo ganó el partido ayer"] * 12)
    windows = len(QATask(stride=4).encode(one_question(context), tokenizer, max_length=24))
    assert windows > 3
    assert len(QATask(stride=4, max_windows=windows).encode(one_question(context), tokenizer, max_length=24)) == windows
    with pytest.raises(SpeedyError, match=rf"x\.json: question id q7: the context needs more than {windows - 1} "
                                          r"windows.*raise tasks\.max_windows"):
        QATask(stride=4, max_windows=windows - 1).encode(one_question(context), tokenizer, 24, source="x.json")


def test_a_huge_context_is_refused_before_its_windows_are_made(tmp_path, tokenizer):
    context = "El equipo ganó el partido ayer. " * 330_000  # 10 MB
    path = write(tmp_path / "big.json", squad_text([[qa("q9", text="El", start=0)]], context=context))
    data = read_squad(path)
    began = time.perf_counter()
    with pytest.raises(SpeedyError, match=r"big\.json: question id q9: the context needs more than 64 windows"):
        QATask().encode(data, tokenizer, max_length=128, source=str(path))
    assert time.perf_counter() - began < 10
