"""A task's splits from its :class:`~speedy.config.DataSpec`, checked: no empty split, no unknown label."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

from speedy.config import TaskSpec
from speedy.data.bible import build_bible_dataset
from speedy.data.catalog import dataset_entry, read_hub, read_local
from speedy.data.readers import load_hub_split, load_hub_tagging, read_labelled_texts, read_tagged
from speedy.data.squad import load_hub_squad, read_squad
from speedy.errors import SpeedyError, where

SPLITS = ("train", "validation", "test")


@dataclass
class TaskData:
    """A task's splits, where each came from (for error messages), and its label set."""

    name: str
    splits: dict[str, Dataset]
    sources: dict[str, str]
    labels: list[str]
    info: dict = field(default_factory=dict)

    def texts(self, splits: tuple[str, ...] = ("train", "validation")) -> list[str]:
        """The texts of ``splits`` (for vocabulary pruning); a tagged sentence is its words joined by spaces.

        Only what training may see, by default: pruning on the test split would let its words shape the model."""
        out = []
        for split in (self.splits[name] for name in splits if name in self.splits):
            for column in ("text", "text_pair"):
                if column in split.column_names:
                    out += list(split[column])
            for column in ("question", "context"):
                if column in split.column_names:
                    out += list(split[column])
            if "tokens" in split.column_names:
                out += [" ".join(tokens) for tokens in split["tokens"]]
        return out


def read_task_file(task_type: str, path, report=print):
    """One labelled file in the usual format of a task type: SQuAD JSON (qa; misplaced answers fixed and
    reported), CoNLL / CoNLL-U (tagging), TSV / CSV / JSONL with ``text`` and ``label`` (classification)."""
    if task_type == "qa":
        return read_squad(path, require_answers=True, bad_answers="fix", report=report)
    if task_type == "tagging":
        return read_tagged(path)
    return read_labelled_texts(path)


BIBLE_SOURCE = "Reina-Valera 1909 (Debian sword-text-sparv, public domain): verse -> genre of its book"


def data_source(task: TaskSpec) -> str | None:
    """Where a task's data comes from, for reports, from the config alone (nothing is read)."""
    if task.data.dataset:
        return dataset_entry(task.data.dataset).source
    return BIBLE_SOURCE if task.data.builtin == "rv1909-genre" else None


def load_task_data(task: TaskSpec, cache_dir: Path, data_dir: Path) -> TaskData:
    """A task's three splits, from wherever its config says, checked: no empty split, no unknown label."""
    spec = task.data
    if spec.dataset:
        (splits, sources), info = _named_dataset(spec), {"source": dataset_entry(spec.dataset).source}
    elif spec.builtin == "rv1909-genre":
        (splits, sources), info = _bible(task, data_dir), {"source": BIBLE_SOURCE}
    elif spec.hub:
        (splits, sources), info = _hub(task), {}
    else:
        (splits, sources), info = _local(task), {}
    for name in SPLITS:
        if len(splits[name]) == 0:
            raise SpeedyError(f"{sources[name]}: no examples (the {name} split is empty)")
    labels = ["start", "end"] if task.type == "qa" else _check_labels(task, splits, sources)
    return TaskData(task.name, splits, sources, labels, info)


def _named_dataset(spec) -> tuple[dict, dict]:
    """A dataset of the paper by name: its files under ``dir`` (or given one by one), else the Hub."""
    entry, splits, sources = dataset_entry(spec.dataset), {}, {}
    for name in SPLITS:
        given = getattr(spec, name)
        if given or spec.dir:
            path = Path(given) if given else Path(spec.dir) / entry.splits[name].file
            splits[name], sources[name] = read_local(entry, name, path), str(path)
        else:
            splits[name] = read_hub(entry, name)
            sources[name] = ":".join(p for p in entry.splits[name].hub if p)
    return splits, sources


def _bible(task: TaskSpec, data_dir: Path) -> tuple[dict, dict]:
    spec = task.data
    paths = build_bible_dataset(Path(data_dir) / task.name, *spec.per_class, seed=spec.seed)
    return ({name: read_labelled_texts(paths[name]) for name in SPLITS},
            {name: str(paths[name]) for name in SPLITS})


def _hub(task: TaskSpec) -> tuple[dict, dict]:
    spec, splits = task.data, {}
    for name in SPLITS:
        split = spec.hub_splits[name]
        if task.type == "qa":
            splits[name] = load_hub_squad(spec.hub, spec.hub_config, split)
        elif task.type == "tagging":
            splits[name] = load_hub_tagging(spec.hub, spec.hub_config, split, spec.hub_tokens, spec.hub_tags)
        else:
            splits[name] = load_hub_split(spec.hub, spec.hub_config, split, spec.text, spec.label, spec.text_pair)
    return splits, {name: f"{spec.hub}:{spec.hub_splits[name]}" for name in SPLITS}


def _local(task: TaskSpec) -> tuple[dict, dict]:
    spec, splits, sources = task.data, {}, {}
    for name in SPLITS:
        path = getattr(spec, name)
        if not path:
            raise SpeedyError(f"tasks.{task.name}.data.{name}: no file given for the {name} split")
        if task.type == "qa":
            splits[name] = read_squad(path, require_answers=True, bad_answers=spec.bad_answers)
        elif task.type == "tagging":
            splits[name] = read_tagged(path, spec.format, spec.tag_column)
        else:
            splits[name] = read_labelled_texts(path, spec.text, spec.label, spec.text_pair, spec.format,
                                               spec.columns)
        sources[name] = str(path)
    return splits, sources


def _check_labels(task: TaskSpec, splits: dict, sources: dict) -> list[str]:
    """The training split's label set; a validation or test label outside it (or outside a named dataset's
    labels) is an error naming the file and line."""
    spec = task.data
    if task.type == "tagging":
        labels = sorted({tag for tags in splits["train"]["tags"] for tag in tags})
        checks = ((name, ((tag, line) for tags, lines in zip(splits[name]["tags"], splits[name]["lines"])
                          for tag, line in zip(tags, lines))) for name in ("validation", "test"))
    else:
        labels = sorted(set(splits["train"]["label"]))
        checks = ((name, zip(splits[name]["label"], splits[name]["line"])) for name in ("validation", "test"))
    if spec.dataset:  # a named dataset's label set is known: a file with another label is not that dataset
        expected = dataset_entry(spec.dataset).labels
        strange = sorted(set(labels) - set(expected)) if expected else []
        if strange:
            raise SpeedyError(f"{sources['train']}: label '{strange[0]}' is not one of {spec.dataset}'s labels "
                              f"({', '.join(expected)})")
    known = set(labels)
    for name, pairs in checks:
        for label, line in pairs:
            if label not in known:
                raise SpeedyError(f"{where(sources[name], line)}: label '{label}' does not occur in the training "
                                  f"split ({', '.join(labels)})")
    return labels
