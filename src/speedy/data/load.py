"""A task's splits from its :class:`~speedy.config.DataSpec`, checked: no empty split, no unknown label.

Where the splits come from (a named dataset's files or Hub source, the demo's Bible, local files, the Hub) is
decided here; how a file or a Hub split of a task type is read is the type's own (its ``Reader``: the task class,
which ``speedy.tasks.load_task_data`` finds in the registry and passes here)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from datasets import Dataset

from speedy.config import TaskSpec
from speedy.data.bible import build_bible_dataset
from speedy.data.catalog import dataset_entry, hub_source
from speedy.data.readers import read_labelled_texts
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
    transfer_files: list[str] = field(default_factory=list)  # unlabelled text the data source itself provides

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


class Reader(Protocol):
    """What loading needs from a task type (a class in ``speedy.tasks``; see ``speedy.tasks.base.Task``)."""

    fixed_labels: tuple[str, ...] | None

    def read_file(self, path, options: Mapping, report=print) -> Dataset: ...

    def load_hub(self, name: str, config: str | None, split: str, columns: Mapping) -> Dataset: ...

    def gold_labels(self, split: Dataset) -> Iterable[tuple[str, int]]: ...

    def check_split(self, name: str, split: Dataset, source: str) -> None: ...


BIBLE_SOURCE = "Reina-Valera 1909 (Debian sword-text-sparv, public domain): verse -> genre of its book"


def data_source(task: TaskSpec) -> str | None:
    """Where a task's data comes from, for reports, from the config alone (nothing is read)."""
    if task.data.dataset:
        return dataset_entry(task.data.dataset).source
    return BIBLE_SOURCE if task.data.builtin == "rv1909-genre" else None


def load_splits(task: TaskSpec, reader: Reader, cache_dir: Path, data_dir: Path) -> TaskData:
    """A task's three splits, from wherever its config says, read by ``reader`` (its type's class), checked: no
    empty split, no unknown label."""
    spec, transfer = task.data, []
    if spec.dataset:
        (splits, sources), info = _named_dataset(spec, reader), {"source": dataset_entry(spec.dataset).source}
    elif spec.builtin == "rv1909-genre":
        (splits, sources), info = _bible(task, data_dir), {"source": BIBLE_SOURCE}
        if spec.transfer:
            transfer = [sources.pop("transfer")]
    elif spec.hub:
        (splits, sources), info = _hub(task, reader), {}
    else:
        (splits, sources), info = _local(task, reader), {}
    for name in SPLITS:
        if len(splits[name]) == 0:
            raise SpeedyError(f"{sources[name]}: no examples (the {name} split is empty)")
        reader.check_split(name, splits[name], sources[name])
    labels = list(reader.fixed_labels) if reader.fixed_labels else _check_labels(task, splits, sources, reader)
    return TaskData(task.name, splits, sources, labels, info, transfer)


def _named_dataset(spec, reader: Reader) -> tuple[dict, dict]:
    """A dataset of the paper by name: its files under ``dir`` (or given one by one), else the Hub."""
    entry, splits, sources = dataset_entry(spec.dataset), {}, {}
    for name in SPLITS:
        given = getattr(spec, name)
        if given or spec.dir:
            path = Path(given) if given else Path(spec.dir) / entry.splits[name].file
            splits[name], sources[name] = reader.read_file(path, entry.read_options(name)), str(path)
        else:
            splits[name] = reader.load_hub(*hub_source(entry, name), entry.hub_read)
            sources[name] = ":".join(p for p in entry.splits[name].hub if p)
    return splits, sources


def _bible(task: TaskSpec, data_dir: Path) -> tuple[dict, dict]:
    spec = task.data
    paths = build_bible_dataset(Path(data_dir) / task.name, *spec.per_class, seed=spec.seed, transfer=spec.transfer)
    return {name: read_labelled_texts(paths[name]) for name in SPLITS}, {name: str(path) for name, path in paths.items()}


def _hub(task: TaskSpec, reader: Reader) -> tuple[dict, dict]:
    """A Hub dataset's splits; the config's data settings name its columns."""
    spec = task.data
    splits = {name: reader.load_hub(spec.hub, spec.hub_config, spec.hub_splits[name], vars(spec)) for name in SPLITS}
    return splits, {name: f"{spec.hub}:{spec.hub_splits[name]}" for name in SPLITS}


def _local(task: TaskSpec, reader: Reader) -> tuple[dict, dict]:
    """Local files, one per split; the config's data settings are the reader's options."""
    spec, splits, sources = task.data, {}, {}
    for name in SPLITS:
        path = getattr(spec, name)
        if not path:
            raise SpeedyError(f"tasks.{task.name}.data.{name}: no file given for the {name} split")
        splits[name], sources[name] = reader.read_file(path, vars(spec)), str(path)
    return splits, sources


def _check_labels(task: TaskSpec, splits: dict, sources: dict, reader: Reader) -> list[str]:
    """The training split's label set; a validation or test label outside it (or outside a named dataset's
    labels) is an error naming the file and line."""
    spec = task.data
    labels = sorted({label for label, _ in reader.gold_labels(splits["train"])})
    checks = ((name, reader.gold_labels(splits[name])) for name in ("validation", "test"))
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
