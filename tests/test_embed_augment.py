"""TinyBERT-style word replacement (speedy.embed.augment): which words get neighbours, which neighbours, and how
texts are rewritten. A word-level tokenizer and hand-made vectors make every expected neighbour known."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from speedy.embed.augment import augmented, replace_words, word_neighbours
from speedy.errors import SpeedyError

WORDS = ["[UNK]", "gato", "felino", "perro", "can", "casa", "hogar", "vivienda", "los", "come"]
# 2-d directions: gato ~ felino, perro ~ can, casa ~ hogar (vivienda a little further), the rest apart
VECTORS = np.array([[0, 0], [1, 0.05], [1, 0.1], [0.05, 1], [0.1, 1], [-1, 0.02], [-1, 0.04], [-1, 0.3],
                    [0.7, -0.7], [-0.7, -0.7]], dtype=np.float32)
TEXTS = ["Los gato come los casa", "los perro come los hogar", "Los felino, los can y los vivienda",
         "gato perro casa felino can hogar vivienda come", "xyzzy xyzzy xyzzy gato perro casa"]


@pytest.fixture()
def tokenizer():
    tok = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return tok


def test_each_word_gets_its_nearest_word(tokenizer):
    neighbours = word_neighbours(TEXTS, tokenizer, VECTORS, k=1, min_count=2, skip_common=1)
    assert neighbours["gato"] == ["felino"] and neighbours["felino"] == ["gato"]
    assert neighbours["perro"] == ["can"] and neighbours["casa"] == ["hogar"]
    assert "los" not in neighbours  # the most frequent word (7 times, capitalised ones counted) is never replaced
    assert "xyzzy" not in neighbours  # unknown to the tokenizer: its one token is [UNK]


def test_rare_words_and_k_nearest(tokenizer):
    # at min_count 3 only los, gato, come, casa and perro qualify (felino, can, hogar, vivienda are used twice)
    neighbours = word_neighbours(TEXTS, tokenizer, VECTORS, k=2, min_count=3, skip_common=0)
    assert set(neighbours) == {"los", "gato", "come", "casa", "perro"}
    assert set(neighbours["gato"]) == {"los", "perro"}  # the two largest cosines: 0.67 and 0.10
    assert set(neighbours["casa"]) == {"come", "perro"}  # 0.69 and -0.03


def test_replacing_keeps_case_and_leaves_other_words(tokenizer):
    import random

    neighbours = word_neighbours(TEXTS, tokenizer, VECTORS, k=1, min_count=2, skip_common=1)
    text = "Gato y perro en los casa, 3 veces."
    assert replace_words(text, neighbours, 0.0, random.Random(0)) == text
    assert replace_words(text, neighbours, 1.0, random.Random(0)) == "Felino y can en los hogar, 3 veces."


def test_copies_are_seeded_and_in_order(tokenizer):
    neighbours = word_neighbours(TEXTS, tokenizer, VECTORS, k=3, min_count=2, skip_common=1)
    first = augmented(TEXTS, neighbours, copies=2, rate=0.5, seed=1)
    assert len(first) == 2 * len(TEXTS)
    assert first == augmented(TEXTS, neighbours, copies=2, rate=0.5, seed=1)
    assert first != augmented(TEXTS, neighbours, copies=2, rate=0.5, seed=2)
    assert first[:len(TEXTS)] != TEXTS and first[:len(TEXTS)] != first[len(TEXTS):]
    for new, old in zip(first, TEXTS * 2):  # only replaceable words change: the rest of each text stays
        assert len(new.split()) == len(old.split())
        for a, b in zip(new.split(), old.split()):
            assert a == b or b.strip(",").lower() in neighbours and a.strip(",").lower() in \
                neighbours[b.strip(",").lower()]
    assert augmented(TEXTS, neighbours, copies=0) == []


@pytest.mark.parametrize("call, message", [
    (lambda tok: word_neighbours(TEXTS, tok, VECTORS, k=0), "k .0."),
    (lambda tok: word_neighbours(TEXTS, tok, VECTORS, min_count=0), "min_count .0."),
    (lambda tok: word_neighbours(TEXTS, tok, VECTORS, skip_common=-1), "skip_common .-1."),
    (lambda tok: word_neighbours(["gato gato gato"], tok, VECTORS, k=1, min_count=1), "give more text"),
    (lambda tok: augmented(TEXTS, {}, rate=1.5), "rate .1.5."),
    (lambda tok: augmented(TEXTS, {}, copies=-1), "copies .-1."),
])
def test_bad_settings_are_one_line(tokenizer, call, message):
    with pytest.raises(SpeedyError, match=message) as error:
        call(tokenizer)
    assert "\n" not in str(error.value)


def test_zero_rows_and_one_token_twice_are_no_words(tokenizer):
    from tokenizers import normalizers

    vectors = VECTORS.copy()
    vectors[WORDS.index("come")] = 0.0  # how a static model marks a special token
    before = vectors.copy()
    assert "come" not in word_neighbours(TEXTS, tokenizer, vectors, k=1, min_count=2, skip_common=1)
    assert np.array_equal(vectors, before)  # the table is read, not normalised in place
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents()])
    texts = TEXTS + ["gáto gáto gáto"]  # one token with gato once accents are stripped: the first seen stays
    neighbours = word_neighbours(texts, tokenizer, VECTORS, k=1, min_count=2, skip_common=1)
    assert "gato" in neighbours and "gáto" not in neighbours
    assert all("gáto" not in near for near in neighbours.values())


def test_chunks_give_the_whole_matrix_answer(tokenizer, monkeypatch):
    import speedy.embed.augment as augment

    whole = word_neighbours(TEXTS, tokenizer, VECTORS, k=2, min_count=2, skip_common=0)
    monkeypatch.setattr(augment, "CHUNK", 3)  # 9 words: chunks of 3, 3 and 3, each row's own column at an offset
    chunked = word_neighbours(TEXTS, tokenizer, VECTORS, k=2, min_count=2, skip_common=0)
    assert {w: set(n) for w, n in chunked.items()} == {w: set(n) for w, n in whole.items()}
    assert all(word not in near for word, near in chunked.items())
