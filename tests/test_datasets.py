"""The paper's eight datasets by name, each read from small files written in that dataset's real format."""

from __future__ import annotations

import json

import pytest

from speedy.config import DataSpec, TaskSpec
from speedy.configfile import validate
from speedy.data.catalog import DATASETS
from speedy.tasks import load_task_data
from speedy.errors import SpeedyError

XNLI_HEADER = ("language\tgold_label\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
               "sentence2_parse\tsentence1\tsentence2\tpromptID\tpairID\tgenre\tlabel1\tlabel2\tlabel3\tlabel4\tlabel5")


def xnli_row(language, label, premise, hypothesis, pair):
    return "\t".join([language, label, "( x )", "( y )", "(ROOT x)", "(ROOT y)", premise, hypothesis, "1", str(pair),
                      "fiction", label, label, label, label, label])


def squad(questions):
    """SQuAD v1.1 JSON as MLQA, SQAC, TAR and XQuAD ship it: data -> paragraphs -> qas."""
    context = "El Real Madrid ganó la final en Lisboa en 2014."
    qas = [{"id": f"q{i}", "question": q, "answers": [{"answer_start": context.index(a), "text": a}]}
           for i, (q, a) in enumerate(questions)]
    return json.dumps({"version": "1.1", "data": [{"title": "Final", "paragraphs": [{"context": context,
                                                                                      "qas": qas}]}]})


QUESTIONS = [("¿Quién ganó la final?", "El Real Madrid"), ("¿Dónde?", "Lisboa"), ("¿Cuándo?", "2014")]
CONLLU = """# sent_id = 1
# text = Vamos al cine.
1	Vamos	ir	VERB	_	_	0	root	_	_
2-3	al	_	_	_	_	_	_	_	_
2	a	a	ADP	_	_	4	case	_	_
3	el	el	DET	_	_	4	det	_	_
4	cine	cine	NOUN	_	_	1	obl	_	_
5	.	.	PUNCT	_	_	1	punct	_	_

"""
CONLL = "-DOCSTART- -DOCSTART- O\n\nEl DA O\nReal NC B-ORG\nMadrid NC I-ORG\nganó VMI O\nen SPS O\nLisboa NC B-LOC\n. Fp O\n\n"

FILES = {
    "mldoc": {"spanish.train.10000": "CCAT\tLa empresa ganó dinero.\nECAT\tLa inflación subió.\n"
                                     "GCAT\tEl gobierno habló.\nMCAT\tLa bolsa cayó.\n",
              "spanish.dev": "CCAT\tOtra empresa.\nMCAT\tEl mercado.\n",
              "spanish.test": "GCAT\tLas elecciones.\nECAT\tEl paro.\n"},
    "pawsx-es": {f"es/{name}": "id\tsentence1\tsentence2\tlabel\n1\tEl gato duerme.\tDuerme el gato.\t1\n"
                              "2\tLlueve hoy.\tHoy hace sol.\t0\n"
                 for name in ("translated_train.tsv", "dev_2k.tsv", "test_2k.tsv")},
    "xnli-es": {"XNLI-MT-1.0/multinli/multinli.train.es.tsv":
                "premise\thypo\tlabel\nEl perro corre.\tUn animal se mueve.\tentailment\n"
                "El perro corre.\tEl perro duerme.\tcontradictory\nEl perro corre.\tEs marrón.\tneutral\n",
                **{f"XNLI-1.0/xnli.{split}.tsv": "\n".join([
                    XNLI_HEADER, xnli_row("en", "entailment", "The dog runs.", "An animal moves.", 1),
                    xnli_row("es", "entailment", "El perro corre.", "Un animal se mueve.", 1),
                    xnli_row("es", "contradiction", "El perro corre.", "El perro duerme.", 2),
                    xnli_row("de", "neutral", "Der Hund läuft.", "Er ist braun.", 3)]) + "\n"
                   for split in ("dev", "test")}},
    "ancora-pos": {f"es_ancora-ud-{split}.conllu": CONLLU for split in ("train", "dev", "test")},
    "conll2002-es": {name: CONLL for name in ("esp.train", "esp.testa", "esp.testb")},
    "mlqa-es": {"train-v1.1-es.json": squad(QUESTIONS), "dev/dev-context-es-question-es.json": squad(QUESTIONS[:2]),
                "test/test-context-es-question-es.json": squad(QUESTIONS[1:])},
    "sqac": {name: squad(QUESTIONS) for name in ("train.json", "dev.json", "test.json")},
    "tar-xquad": {"train-v1.1-es.json": squad(QUESTIONS), "dev-v1.1-es.json": squad(QUESTIONS[:1]),
                  "xquad.es.json": squad(QUESTIONS[2:])},
}


def write_dataset(folder, name):
    for relative, text in FILES[name].items():
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, "utf-8")
    return folder


def named_task(name, folder, **settings):
    config = validate_one(TaskSpec(name=name, data=DataSpec(dataset=name, dir=str(folder)), **settings))
    return config


def validate_one(task):
    from speedy.config import ModelSpec, StudyConfig

    validate(StudyConfig(name="t", tasks=[task], teachers=[ModelSpec(name="x")]))
    return task


def test_every_dataset_of_the_paper_is_in_the_catalog():
    assert set(DATASETS) == {"mldoc", "pawsx-es", "xnli-es", "ancora-pos", "conll2002-es", "mlqa-es", "sqac",
                             "tar-xquad"}


@pytest.mark.parametrize("name, task_type, sizes, labels", [
    ("mldoc", "classification", (4, 2, 2), ["CCAT", "ECAT", "GCAT", "MCAT"]),
    ("pawsx-es", "classification", (2, 2, 2), ["0", "1"]),
    ("xnli-es", "classification", (3, 2, 2), ["contradiction", "entailment", "neutral"]),
    ("ancora-pos", "tagging", (1, 1, 1), ["ADP", "DET", "NOUN", "PUNCT", "VERB"]),
    ("conll2002-es", "tagging", (1, 1, 1), ["B-LOC", "B-ORG", "I-ORG", "O"]),
    ("mlqa-es", "qa", (3, 2, 2), ["start", "end"]),
    ("sqac", "qa", (3, 3, 3), ["start", "end"]),
    ("tar-xquad", "qa", (3, 1, 1), ["start", "end"]),
])
def test_each_dataset_reads_its_native_files(tmp_path, name, task_type, sizes, labels):
    task = named_task(name, write_dataset(tmp_path, name))
    assert task.type == task_type
    data = load_task_data(task, tmp_path / "cache", tmp_path / "data")
    assert tuple(len(data.splits[s]) for s in ("train", "validation", "test")) == sizes
    assert data.labels == labels
    assert data.info["source"]


def test_xnli_keeps_spanish_rows_and_maps_the_translated_train_labels(tmp_path):
    data = load_task_data(named_task("xnli-es", write_dataset(tmp_path, "xnli-es")), tmp_path, tmp_path)
    assert list(data.splits["validation"]["text"]) == ["El perro corre.", "El perro corre."]
    assert list(data.splits["validation"]["line"]) == [3, 4]  # lines of the file: errors can name them
    assert "contradiction" in data.splits["train"]["label"] and "contradictory" not in data.splits["train"]["label"]


def test_dataset_settings_follow_the_dataset(tmp_path):
    assert named_task("ancora-pos", write_dataset(tmp_path, "ancora-pos")).scheme == "pos"
    assert named_task("mlqa-es", write_dataset(tmp_path, "mlqa-es")).normalization == "es"
    with pytest.raises(SpeedyError, match=r"tasks\[0\]\.type: 'qa', but dataset 'conll2002-es' needs 'tagging'"):
        named_task("conll2002-es", write_dataset(tmp_path, "conll2002-es"), type="qa")


def test_bad_dataset_settings_are_one_line_errors(tmp_path):
    with pytest.raises(SpeedyError, match=r"unknown dataset 'paws' \(allowed: mldoc, pawsx-es"):
        validate_one(TaskSpec(name="t", data=DataSpec(dataset="paws")))
    with pytest.raises(SpeedyError, match="data.dir: .*no such folder"):
        validate_one(TaskSpec(name="t", data=DataSpec(dataset="mldoc", dir=str(tmp_path / "missing"))))
    task = validate_one(TaskSpec(name="t", data=DataSpec(dataset="mldoc")))
    with pytest.raises(SpeedyError, match="'mldoc' is not on the Hub: give data.dir"):
        load_task_data(task, tmp_path, tmp_path)
    folder = write_dataset(tmp_path / "m", "mldoc")
    (folder / "spanish.train.10000").write_text("CCAT\tUno.\nSPORT\tDos.\n", "utf-8")
    with pytest.raises(SpeedyError, match="label 'SPORT' is not one of mldoc's labels"):
        load_task_data(named_task("mldoc", folder), tmp_path, tmp_path)
