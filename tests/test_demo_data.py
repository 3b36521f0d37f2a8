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
