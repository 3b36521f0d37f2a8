"""The demo's dataset: verses of the Reina-Valera 1909 Bible labelled with the genre of their book.

The package ships every verse (``rv1909.tsv.xz``: ``book osisID<TAB>text``, 31,084 lines, 0.96 MB), so the demo
runs on any OS without a download. The text is public domain ("This work is not copyrighted. It is in the Public
Domain.", per the copyright file of its source).

Source, and how the shipped file was made (``python -m speedy.data.bible OUT.tsv.xz`` makes it again, on a
Debian or Ubuntu machine): Debian's package ``sword-text-sparv`` (the SWORD module ``spaRV1909eb``);
``apt-get download`` and ``dpkg-deb -x`` fetch and unpack it without root. The module is a SWORD zText with
``BlockType=BOOK``: ``*.bzs`` lists zlib blocks (offset, size, unpacked size as three uint32), ``*.bzv`` lists
entries (block, offset, size as uint32, uint32, uint16), and each book opens with an OSIS
``<div type="book" osisID="...">``, which names the book of the verses that follow.
"""

from __future__ import annotations

import lzma
import random
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zlib
from collections import defaultdict
from pathlib import Path

from speedy.errors import SpeedyError

SHIPPED = Path(__file__).with_name("rv1909.tsv.xz")
PACKAGE = "sword-text-sparv"
MODULE_DIR = "usr/share/sword/modules/texts/ztext/spaRV1909eb"

GENRES = {
    "ley": "Gen Exod Lev Num Deut",
    "historia": "Josh Judg Ruth 1Sam 2Sam 1Kgs 2Kgs 1Chr 2Chr Ezra Neh Esth Acts",
    "poesia": "Job Ps Prov Eccl Song",
    "profecia": "Isa Jer Lam Ezek Dan Hos Joel Amos Obad Jonah Mic Nah Hab Zeph Hag Zech Mal Rev",
    "evangelio": "Matt Mark Luke John",
    "epistola": "Rom 1Cor 2Cor Gal Eph Phil Col 1Thess 2Thess 1Tim 2Tim Titus Phlm Heb Jas 1Pet 2Pet 1John "
                "2John 3John Jude",
}
BOOK_GENRE = {book: genre for genre, books in GENRES.items() for book in books.split()}

_BOOK = re.compile(r'<div[^>]*osisID="([^".]+)"[^>]*type="book"|<div[^>]*type="book"[^>]*osisID="([^".]+)"')
_DROP = re.compile(r"<(title|note)\b[^>]*>.*?</\1>", re.S)
_TAG = re.compile(r"<[^>]+>")


def fetch_package(cache_dir: Path) -> Path:
    """Download and unpack the Debian package once; returns the module folder."""
    target = Path(cache_dir) / PACKAGE
    module = target / MODULE_DIR
    if module.is_dir():
        return module
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        raise SpeedyError(f"demo data: apt-get and dpkg-deb are needed to fetch Debian's {PACKAGE}")
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        download = ["apt-get", "download", PACKAGE]
        result = subprocess.run(download, cwd=tmp, capture_output=True, text=True)
        if result.returncode != 0:
            # A fresh machine may have no package lists yet; refresh them once (needs root) and retry.
            subprocess.run(["apt-get", "update"], capture_output=True, text=True)
            result = subprocess.run(download, cwd=tmp, capture_output=True, text=True)
        debs = list(Path(tmp).glob(f"{PACKAGE}_*.deb"))
        if result.returncode != 0 or not debs:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise SpeedyError(f"demo data: 'apt-get download {PACKAGE}' failed: {last}")
        unpacked = Path(tmp) / "root"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True)
        unpacked.rename(target)  # atomic: a killed fetch leaves no half-unpacked module
    return module


def read_verses(module: Path) -> list[tuple[str, str]]:
    """All verses as ``(book osisID, plain text)``, in canonical order."""
    verses = []
    for testament in ("ot", "nt"):
        index = (module / f"{testament}.bzs").read_bytes()
        entries = (module / f"{testament}.bzv").read_bytes()
        compressed = (module / f"{testament}.bzz").read_bytes()
        blocks = [struct.unpack_from("<III", index, i) for i in range(0, len(index), 12)]
        unpacked: dict[int, bytes] = {}
        book = None
        for i in range(0, len(entries), 10):
            block, offset, size = struct.unpack_from("<IIH", entries, i)
            if size == 0:
                continue
            if block not in unpacked:
                start, length, _ = blocks[block]
                unpacked[block] = zlib.decompress(compressed[start : start + length])
            markup = unpacked[block][offset : offset + size].decode("utf-8")
            found = _BOOK.search(markup)
            if found:
                book = found.group(1) or found.group(2)
            text = " ".join(_TAG.sub("", _DROP.sub(" ", markup)).split())
            if book and text:
                verses.append((book, text))
    return verses


def shipped_verses() -> list[tuple[str, str]]:
    """Every verse as ``(book osisID, plain text)``, in canonical order, from the file the package ships."""
    try:
        text = lzma.decompress(SHIPPED.read_bytes()).decode("utf-8")
    except (OSError, lzma.LZMAError) as error:
        raise SpeedyError(f"demo data: {SHIPPED}: cannot read ({error}); reinstall speedy") from None
    return [tuple(line.split("\t", 1)) for line in text.split("\n") if line]


def write_shipped_verses(out: Path, cache_dir: Path) -> Path:
    """Make the shipped file again from Debian's package (see the module's docstring)."""
    rows = "".join(f"{book}\t{text}\n" for book, text in read_verses(fetch_package(cache_dir)))
    Path(out).write_bytes(lzma.compress(rows.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME))
    return Path(out)


def build_bible_dataset(out_dir: Path, train_per_class: int, validation_per_class: int,
                        test_per_class: int, seed: int = 0, transfer: int = 0) -> dict[str, Path]:
    """Write balanced ``train.tsv``, ``validation.tsv`` and ``test.tsv`` (``label<TAB>text``, with a header), and
    with ``transfer`` > 0, ``transfer.txt``: that many other verses, one a line, without their genre.

    Verses are drawn without replacement, per genre, with a fixed seed; the three splits never share a verse. The
    transfer verses are drawn from all the verses no split uses, whatever their genre (unlabelled text comes as it
    is, not balanced by a label nobody has). Each setting has its own folder under ``out_dir``, built aside and
    renamed into place whole: a killed build leaves nothing half-made, and processes building at once do not mix
    their files.
    """
    sizes = (train_per_class, validation_per_class, test_per_class)
    folder = Path(out_dir) / f"per-class-{'-'.join(map(str, sizes))}-seed-{seed}-transfer-{transfer}"
    names = ("train", "validation", "test")
    paths = {name: folder / f"{name}.tsv" for name in names} | ({"transfer": folder / "transfer.txt"} if transfer else {})
    if folder.is_dir():  # only a finished build is ever renamed to this name
        return paths
    by_genre = defaultdict(list)
    for book, text in shipped_verses():
        if book not in BOOK_GENRE:
            raise SpeedyError(f"demo data: book '{book}' has no genre")
        by_genre[BOOK_GENRE[book]].append(text.replace("\t", " "))
    rng = random.Random(seed)
    rows = {name: [] for name in names}
    for genre in sorted(by_genre):
        texts = sorted(set(by_genre[genre]))
        rng.shuffle(texts)
        if len(texts) < sum(sizes):
            raise SpeedyError(f"demo data: genre '{genre}' has {len(texts)} verses, fewer than {sum(sizes)} asked")
        start = 0
        for name, size in zip(names, sizes):
            rows[name] += [(genre, text) for text in texts[start : start + size]]
            start += size
    contents = {}
    for name in names:
        rng.shuffle(rows[name])
        contents[name] = "label\ttext\n" + "".join(f"{label}\t{text}\n" for label, text in rows[name])
    if transfer:
        used = {text for name in names for _, text in rows[name]}
        rest = sorted({text for genre in by_genre.values() for text in genre} - used)
        if len(rest) < transfer:
            raise SpeedyError(f"demo data: data.transfer asks for {transfer} verses, {len(rest)} are left")
        contents["transfer"] = "".join(f"{text}\n" for text in random.Random(seed + 1).sample(rest, transfer))
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=".building-", dir=out_dir))
    try:
        for name, text in contents.items():
            (building / paths[name].name).write_text(text, "utf-8")
        try:
            building.rename(folder)
        except OSError:
            if not folder.is_dir():  # not "another process finished first"
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return paths


if __name__ == "__main__":
    print(write_shipped_verses(Path(sys.argv[1]), Path(tempfile.gettempdir()) / "speedy-bible"))
