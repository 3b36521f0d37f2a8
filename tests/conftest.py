"""Tiny models and tokenizers built from configs and trained here: the tests never need the Hub."""

from __future__ import annotations

import os
import random
import threading
import time
from contextlib import contextmanager

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

SUBJECTS = ["el equipo", "la selección", "el delantero", "la portera", "el árbitro", "el entrenador"]
SPORT = ["ganó el partido", "marcó un gol", "perdió la final", "jugó en el estadio", "entrenó con el balón"]
POLITICS = ["aprobó la ley", "votó en el congreso", "ganó las elecciones", "firmó el decreto", "habló en el senado"]
ACTORS = ["el gobierno", "la ministra", "el diputado", "la alcaldesa", "el partido", "el presidente"]


def make_examples(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short Spanish sentences whose label (deporte / politica) follows from their words: learnable fast."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        if i % 2 == 0:
            rows.append(("deporte", f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(SPORT)} ayer."))
        else:
            rows.append(("politica", f"{rng.choice(ACTORS).capitalize()} {rng.choice(POLITICS)} hoy."))
    return rows


def write_tsv(path, rows, header=("label", "text")) -> str:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows), "utf-8")
    return str(path)


def corpus() -> list[str]:
    return [text for _, text in make_examples(400, seed=1)] + ["¿Dónde está el niño?", "Señor, ten piedad."]


def train_wordpiece(folder, vocab_size: int = 300):
    """A tiny BERT-style (WordPiece) tokenizer trained on the test corpus, saved as a fast tokenizer."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus(), trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=128,
                                   model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    fast.save_pretrained(folder)
    return fast


def train_unigram(folder, vocab_size: int = 200):
    """A tiny XLM-R-style (SentencePiece Unigram, metaspace) tokenizer: a *different* tokenizer from the above."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(corpus(), trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                              unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>",
                                   model_max_length=128)
    fast.save_pretrained(folder)
    return fast


def tiny_bert(folder, tokenizer, layers: int = 4, hidden: int = 32, seed: int = 0):
    """A tiny random BERT encoder saved with its tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128,
                        pad_token_id=tokenizer.pad_token_id)
    model = BertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


def tiny_albert(folder, tokenizer, layers: int = 6, seed: int = 0):
    import torch
    from transformers import AlbertConfig, AlbertModel

    torch.manual_seed(seed)
    config = AlbertConfig(vocab_size=len(tokenizer), embedding_size=16, hidden_size=32, num_hidden_layers=layers,
                          num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                          pad_token_id=tokenizer.pad_token_id)
    model = AlbertModel(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return model


TASKS = {"classification": ["deporte", "politica"], "tagging": ["O", "B-PER", "I-PER", "B-ORG", "I-ORG"], "qa": []}


def speedy_model(base_dir, task_type, folder, seed=0):
    """A model folder as speedy saves one: the task head and ``speedy_task`` in its config."""
    import torch
    from transformers import AutoTokenizer

    from speedy.tasks import make_task

    torch.manual_seed(seed)
    task = make_task(task_type, TASKS[task_type])
    model = task.load_model(str(base_dir))
    model.config.speedy_task = task.describe(64)
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(folder)
    return folder


@contextmanager
def serving(app):
    """``app`` on a real uvicorn server on loopback, with the connection settings ``speedy serve`` uses; yields
    its port."""
    import uvicorn  # the serve extra: only the serving tests need it

    from speedy.serve.app import server_options

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           **server_options(app.state.settings)))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def free_port() -> int:
    """A TCP port nobody listens on, on loopback (for servers the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def wordpiece_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("wordpiece")
    train_wordpiece(folder)
    return folder


@pytest.fixture(scope="session")
def unigram_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("unigram")
    train_unigram(folder)
    return folder


@pytest.fixture(scope="session")
def bert_dir(tmp_path_factory, wordpiece_dir):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert")
    tiny_bert(folder, AutoTokenizer.from_pretrained(wordpiece_dir), layers=4)
    return folder


@pytest.fixture(scope="session")
def bert_unigram_dir(tmp_path_factory, unigram_dir):
    """A second tiny encoder with a different tokenizer (the student side of cross-tokenizer KD)."""
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-bert-unigram")
    tiny_bert(folder, AutoTokenizer.from_pretrained(unigram_dir), layers=4, seed=1)
    return folder


@pytest.fixture(scope="session")
def albert_dir(tmp_path_factory, wordpiece_dir):
    from transformers import AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-albert")
    tiny_albert(folder, AutoTokenizer.from_pretrained(wordpiece_dir), layers=6)
    return folder


@pytest.fixture
def tiny_files(tmp_path):
    """train / validation / test TSV files of the tiny two-class task."""
    return {
        "train": write_tsv(tmp_path / "train.tsv", make_examples(64, seed=2)),
        "validation": write_tsv(tmp_path / "validation.tsv", make_examples(16, seed=3)),
        "test": write_tsv(tmp_path / "test.tsv", make_examples(16, seed=4)),
    }
