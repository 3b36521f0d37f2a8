"""The demo's data ships with the package: every verse of the RV1909 Bible, split by genre without a download."""

from collections import Counter

import pytest

from speedy.data.bible import BOOK_GENRE, build_bible_dataset, shipped_verses
from speedy.data.readers import read_labelled_texts


def test_every_shipped_verse_has_a_book_with_a_genre():
    verses = shipped_verses()
    assert len(verses) == 31084
    assert {book for book, _ in verses} == set(BOOK_GENRE)  # all 66 books, each with its genre
    assert all(text.strip() and "\t" not in text and "<" not in text for _, text in verses)


def test_demo_splits_are_balanced_disjoint_and_seeded(tmp_path):
    paths = build_bible_dataset(tmp_path / "a", 20, 5, 10, seed=0)
    splits = {name: read_labelled_texts(path) for name, path in paths.items()}
    for name, size in (("train", 20), ("validation", 5), ("test", 10)):
        assert set(Counter(splits[name]["label"]).values()) == {size}  # per genre
    texts = [set(split["text"]) for split in splits.values()]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    again = build_bible_dataset(tmp_path / "b", 20, 5, 10, seed=0)
    assert all(again[name].read_text("utf-8") == paths[name].read_text("utf-8") for name in paths)


def test_demo_transfer_verses_are_unlabelled_unused_and_leave_the_splits_alone(tmp_path):
    plain = build_bible_dataset(tmp_path / "plain", 20, 5, 10, seed=0)
    paths = build_bible_dataset(tmp_path / "t", 20, 5, 10, seed=0, transfer=30)
    assert all(paths[name].read_text("utf-8") == plain[name].read_text("utf-8") for name in plain)
    lines = paths["transfer"].read_text("utf-8").splitlines()
    assert len(lines) == len(set(lines)) == 30 and all(line.strip() and "\t" not in line for line in lines)
    used = {text for name in plain for text in read_labelled_texts(plain[name])["text"]}
    assert not used & set(lines)
    assert set(lines) <= {text for _, text in shipped_verses()}


def test_each_demo_setting_has_its_own_whole_folder(tmp_path):
    first = build_bible_dataset(tmp_path, 20, 5, 10, seed=0)
    assert len(read_labelled_texts(build_bible_dataset(tmp_path, 10, 5, 10, seed=0)["train"])) == 60
    assert build_bible_dataset(tmp_path, 20, 5, 10, seed=1)["train"].read_text("utf-8") != first["train"].read_text("utf-8")
    five = build_bible_dataset(tmp_path, 20, 5, 10, transfer=5)["transfer"]
    assert len(build_bible_dataset(tmp_path, 20, 5, 10, transfer=7)["transfer"].read_text("utf-8").splitlines()) == 7
    assert len(five.read_text("utf-8").splitlines()) == 5 and "transfer" not in first
    assert build_bible_dataset(tmp_path, 20, 5, 10, seed=0) == first  # made once, then found


def test_a_build_killed_half_way_leaves_nothing_a_later_build_reads(tmp_path, monkeypatch):
    from pathlib import Path

    real, written = Path.write_text, []

    def dies_after_one_file(self, *args, **kwargs):
        if written:
            raise KeyboardInterrupt  # the process is killed while writing the second file
        written.append(self)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", dies_after_one_file)
    with pytest.raises(KeyboardInterrupt):
        build_bible_dataset(tmp_path, 20, 5, 10, seed=0)
    monkeypatch.setattr(Path, "write_text", real)
    assert written and not [p for p in tmp_path.rglob("*.tsv")]  # no half-made folder stays, hidden or not
    paths = build_bible_dataset(tmp_path, 20, 5, 10, seed=0)
    assert all(len(read_labelled_texts(paths[name])) == 6 * size for name, size in
               (("train", 20), ("validation", 5), ("test", 10)))


def test_a_study_reads_the_demo_transfer_verses_as_its_transfer_text(tmp_path):
    from speedy.configfile import load_config
    from speedy.pipeline import Study

    def study(transfer: int) -> Study:
        path = tmp_path / f"s{transfer}.yaml"
        path.write_text(f"name: s\noutput_dir: {tmp_path / str(transfer)}\nteachers: [{{name: multilingual-e5-small}}]\n"
                        f"tasks: [{{name: t, data: {{builtin: rv1909-genre, per_class: [4, 2, 2], transfer: {transfer}}}}}]\n")
        return Study(load_config(path))

    with_text, without = study(12), study(0)
    task = with_text.config.tasks[0]
    lines = with_text.transfer_lines(task)
    assert len(lines) == 12 and lines[0][0].endswith("transfer.txt") and lines[0][1] == 1
    assert without.transfer_lines(without.config.tasks[0]) == []
    assert with_text.data_fingerprint(task) != without.data_fingerprint(without.config.tasks[0])
    assert set(text for _, _, text in lines) <= set(with_text.corpus(task))  # a pruned vocabulary keeps them


def test_the_demo_transfer_verses_key_trials_wherever_the_study_lives(tmp_path):
    from speedy.configfile import load_config
    from speedy.pipeline import Study

    def fingerprint(folder: str) -> str:
        path = tmp_path / f"{folder}.yaml"
        path.write_text(f"name: s\noutput_dir: {tmp_path / folder}\nteachers: [{{name: multilingual-e5-small}}]\n"
                        f"tasks: [{{name: t, data: {{builtin: rv1909-genre, per_class: [4, 2, 2], transfer: 5}}}}]\n")
        study = Study(load_config(path))
        return study.data_fingerprint(study.config.tasks[0])

    assert fingerprint("here") == fingerprint("there")


def test_user_transfer_files_keep_their_trial_keys(tmp_path, monkeypatch):
    """Keys of studies with the user's own transfer files are what they were before the data source could add
    files: the text with each line's file as read_transfer_lines names it (``./x`` is ``x``)."""
    from speedy.configfile import load_config
    from speedy.distill.cache import fingerprint_inputs
    from speedy.pipeline import Study

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.tsv").write_text("label\ttext\nx\tuno\ny\tdos\n", "utf-8")
    (tmp_path / "d" / "u.txt").write_text("tres\ncuatro\n", "utf-8")
    path = tmp_path / "s.yaml"
    path.write_text("name: s\noutput_dir: out\nteachers: [{name: multilingual-e5-small}]\n"
                    "tasks: [{name: t, data: {train: d/a.tsv, validation: d/a.tsv, test: d/a.tsv}, "
                    "transfer_files: [./d/u.txt]}]\n")
    study = Study(load_config(path))
    task = study.config.tasks[0]
    splits = study.data(task).splits
    before = fingerprint_inputs([(name, split.to_dict()) for name, split in sorted(splits.items())]
                                + [("transfer", [("d/u.txt", 1, "tres"), ("d/u.txt", 2, "cuatro")])])[:16]
    assert study.data_fingerprint(task) == before
