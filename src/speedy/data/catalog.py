"""The paper's eight datasets by name: their task, their Hub source, and their native local files.

A task names a dataset with ``data: {dataset: NAME}`` (loaded from the Hub) or ``data: {dataset: NAME, dir:
FOLDER}`` (read from the files the dataset is distributed as, under their usual names in ``FOLDER``; any split's
file can be overridden with ``train``/``validation``/``test``). Each split has both sources; the splits follow the
paper (MLQA trains on the translated SQuAD-es train, TAR is tested on XQuAD-es).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from speedy.errors import SpeedyError


@dataclass(frozen=True)
class Split:
    file: str  # the file's usual name (path relative to the dataset's folder)
    hub: tuple[str, str | None, str]  # (Hub dataset, config, split)
    read: dict = field(default_factory=dict)  # reader options: format, text, text_pair, label, columns, keep, label_map


@dataclass(frozen=True)
class DatasetEntry:
    name: str
    type: str  # classification | tagging | qa
    source: str  # where it comes from, for reports
    splits: dict[str, Split]
    labels: tuple[str, ...] = ()  # classification/tagging: the label set the files must use (checked)
    scheme: str = "bio"
    normalization: str = "en"
    hub_read: dict = field(default_factory=dict)  # Hub columns: text, text_pair, label / hub_tokens, hub_tags
    fmt: str | None = None  # local format: tsv | conll | conllu (QA: SQuAD JSON)
    train_examples: int = 0  # the published size of the training split (for planning a study)

    def read_options(self, split: str) -> dict:
        """The options its task type's ``read_file`` reads a split's native file with."""
        return {"format": self.fmt, **self.splits[split].read}


MLDOC = {"columns": ["label", "text"], "format": "tsv"}
PAWSX = {"text": "sentence1", "text_pair": "sentence2", "label": "label", "format": "tsv"}
XNLI_TEST = {"text": "sentence1", "text_pair": "sentence2", "label": "gold_label", "keep": {"language": "es"},
             "format": "tsv"}
XNLI_TRAIN = {"text": "premise", "text_pair": "hypo", "label": "label", "label_map": {"contradictory": "contradiction"},
              "format": "tsv"}
SQUAD_ES = ("squad_es", "v1.1.0")

DATASETS = {e.name: e for e in [
    DatasetEntry("mldoc", "classification", "MLDoc (Schwenk and Li, 2018), Spanish; local files only", {
        "train": Split("spanish.train.10000", ("", None, ""), MLDOC),
        "validation": Split("spanish.dev", ("", None, ""), MLDOC),
        "test": Split("spanish.test", ("", None, ""), MLDOC)},
        labels=("CCAT", "ECAT", "GCAT", "MCAT"), train_examples=10_000),
    DatasetEntry("pawsx-es", "classification", "PAWS-X (Yang et al., 2019), Spanish", {
        "train": Split("es/translated_train.tsv", ("paws-x", "es", "train"), PAWSX),
        "validation": Split("es/dev_2k.tsv", ("paws-x", "es", "validation"), PAWSX),
        "test": Split("es/test_2k.tsv", ("paws-x", "es", "test"), PAWSX)},
        labels=("0", "1"), train_examples=49_401, hub_read={"text": "sentence1", "text_pair": "sentence2", "label": "label"}),
    DatasetEntry("xnli-es", "classification", "XNLI (Conneau et al., 2018), Spanish; train: XNLI-MT", {
        "train": Split("XNLI-MT-1.0/multinli/multinli.train.es.tsv", ("xnli", "es", "train"), XNLI_TRAIN),
        "validation": Split("XNLI-1.0/xnli.dev.tsv", ("xnli", "es", "validation"), XNLI_TEST),
        "test": Split("XNLI-1.0/xnli.test.tsv", ("xnli", "es", "test"), XNLI_TEST)},
        labels=("contradiction", "entailment", "neutral"), train_examples=392_702,
        hub_read={"text": "premise", "text_pair": "hypothesis", "label": "label"}),
    DatasetEntry("ancora-pos", "tagging", "UD Spanish AnCora (UPOS)", {
        "train": Split("es_ancora-ud-train.conllu", ("universal_dependencies", "es_ancora", "train")),
        "validation": Split("es_ancora-ud-dev.conllu", ("universal_dependencies", "es_ancora", "validation")),
        "test": Split("es_ancora-ud-test.conllu", ("universal_dependencies", "es_ancora", "test"))},
        scheme="pos", hub_read={"hub_tokens": "tokens", "hub_tags": "upos"}, fmt="conllu", train_examples=14_305),
    DatasetEntry("conll2002-es", "tagging", "CoNLL-2002 NER (Tjong Kim Sang, 2002), Spanish", {
        "train": Split("esp.train", ("conll2002", "es", "train")),
        "validation": Split("esp.testa", ("conll2002", "es", "validation")),
        "test": Split("esp.testb", ("conll2002", "es", "test"))},
        labels=("B-LOC", "B-MISC", "B-ORG", "B-PER", "I-LOC", "I-MISC", "I-ORG", "I-PER", "O"),
        scheme="bio", hub_read={"hub_tokens": "tokens", "hub_tags": "ner_tags"}, fmt="conll", train_examples=8_323),
    DatasetEntry("mlqa-es", "qa", "MLQA (Lewis et al., 2020) es-es; train: SQuAD-es v1.1 (TAR)", {
        "train": Split("train-v1.1-es.json", (*SQUAD_ES, "train")),
        "validation": Split("dev/dev-context-es-question-es.json", ("mlqa", "mlqa.es.es", "validation")),
        "test": Split("test/test-context-es-question-es.json", ("mlqa", "mlqa.es.es", "test"))},
        normalization="es", train_examples=87_595),
    DatasetEntry("sqac", "qa", "SQAC (Gutiérrez-Fandiño et al., 2022)", {
        "train": Split("train.json", ("PlanTL-GOB-ES/SQAC", None, "train")),
        "validation": Split("dev.json", ("PlanTL-GOB-ES/SQAC", None, "validation")),
        "test": Split("test.json", ("PlanTL-GOB-ES/SQAC", None, "test"))},
        normalization="es", train_examples=15_036),
    DatasetEntry("tar-xquad", "qa", "TAR / SQuAD-es v1.1 (Carrino et al., 2020); test: XQuAD-es (Artetxe et al.)", {
        "train": Split("train-v1.1-es.json", (*SQUAD_ES, "train")),
        "validation": Split("dev-v1.1-es.json", (*SQUAD_ES, "validation")),
        "test": Split("xquad.es.json", ("xquad", "xquad.es", "validation"))},
        normalization="es", train_examples=87_595),
]}


def dataset_entry(name: str, setting: str = "data.dataset") -> DatasetEntry:
    if name not in DATASETS:
        raise SpeedyError(f"{setting}: unknown dataset '{name}' (allowed: {', '.join(DATASETS)})")
    return DATASETS[name]


def hub_source(entry: DatasetEntry, split: str) -> tuple[str, str | None, str]:
    """``(Hub dataset, config, split)`` of one split, for users who have the Hub; its task type's ``load_hub``
    reads it with the entry's ``hub_read`` columns."""
    name, config, hub_split = entry.splits[split].hub
    if not name:
        raise SpeedyError(f"data.dataset: '{entry.name}' is not on the Hub: give data.dir, the folder of its files "
                          f"({', '.join(s.file for s in entry.splits.values())})")
    return name, config, hub_split
