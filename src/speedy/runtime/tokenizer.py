"""A model folder's fast tokenizer (``tokenizer.json``), read with the ``tokenizers`` library alone.

It gives what transformers' ``PreTrainedTokenizerFast`` gives speedy's tasks (the same Rust tokenizer makes both,
so the ids, word ids, sequence ids, offsets and overflowing windows are the same), without importing transformers.
"""

from __future__ import annotations

from pathlib import Path

from speedy.errors import SpeedyError
from speedy.runtime.folder import read_json


TYPE_ID_TOKENIZERS = {"BertTokenizer", "ElectraTokenizer", "FunnelTokenizer", "MobileBertTokenizer", "SqueezeBertTokenizer",
                      "LayoutLMTokenizer"}  # classes whose default model_input_names include token_type_ids


def _token(value) -> str | None:
    """A special token as ``tokenizer_config.json`` writes it: a string or ``{"content": ...}``."""
    return value.get("content") if isinstance(value, dict) else value


class FastTokenizer:
    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer  # lazy: only prediction needs it, not the task declarations

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise SpeedyError(f"model folder {folder}: no tokenizer.json (the fast tokenizer speedy saves with "
                              f"every model)")
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as error:  # noqa: BLE001 - tokenizers raises its own exception types
            raise SpeedyError(f"{path}: not a readable tokenizer ({str(error).splitlines()[0]})") from None
        config = folder / "tokenizer_config.json"
        settings = read_json(config) if config.is_file() else {}
        # Whether the model is fed token type ids, by transformers' own rule: the names saved with the tokenizer,
        # else its class's (only BERT-style tokenizers give them; transformers' generic backend does not).
        names = settings.get("model_input_names")
        if names is None:
            kind = str(settings.get("tokenizer_class") or "").removesuffix("Fast")
            names = ["token_type_ids"] if kind in TYPE_ID_TOKENIZERS else []
        self.type_ids = "token_type_ids" in names
        pad = _token(settings.get("pad_token"))
        self.pad_id = self.tokenizer.token_to_id(pad) if pad else None
        if self.pad_id is None:
            self.pad_id = (self.tokenizer.padding or {}).get("pad_id", 0)
        processor = self.tokenizer.post_processor
        self._specials = {pair: processor.num_special_tokens_to_add(pair) if processor else 0
                          for pair in (False, True)}
        self.tokenizer.no_padding()  # batches are padded per model call (runtime.session), not here

    def num_special_tokens_to_add(self, pair: bool = False) -> int:
        return self._specials[pair]

    def encode_batch(self, inputs: list, *, words: bool = False, max_length: int | None = None,
                     strategy: str = "longest_first", stride: int = 0, special_tokens: bool = True) -> list:
        """``tokenizers.Encoding`` objects for texts, ``(text, pair)`` tuples or (``words``) word lists; cut at
        ``max_length`` with ``strategy`` (the windows past it are each encoding's ``overflowing``)."""
        if max_length is None:
            self.tokenizer.no_truncation()
        else:
            self.tokenizer.enable_truncation(max_length, stride=stride, strategy=strategy)
        return self.tokenizer.encode_batch(inputs, is_pretokenized=words, add_special_tokens=special_tokens)

    def count_tokens(self, texts: list[str]) -> list[int]:
        """How many tokens each text makes, without special tokens."""
        return [len(e.ids) for e in self.encode_batch(texts, special_tokens=False)]
