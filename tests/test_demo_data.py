"""The demo's data ships with the package: every verse of the RV1909 Bible, split by genre without a download."""

from collections import Counter

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


def test_demo_files_are_made_again_when_the_sizes_change(tmp_path):
    first = build_bible_dataset(tmp_path, 20, 5, 10, seed=0)["train"].read_text("utf-8")
    second = build_bible_dataset(tmp_path, 10, 5, 10, seed=0)
    assert len(read_labelled_texts(second["train"])) == 60 and second["train"].read_text("utf-8") != first
    assert "transfer" not in second and build_bible_dataset(tmp_path, 10, 5, 10, transfer=5)["transfer"].is_file()


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
