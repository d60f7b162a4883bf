"""GloVe word vectors: read a GloVe text file and build a padded embedding table for a corpus.

File format (Pennington et al. 2014): one word per line followed by its floats, separated by
single spaces; no header; plain text or gzip (``.gz``).  The dimension is the number of
floats on the first line and every later line must have the same count.

Unknown words (not in the GloVe file) are **dropped from the bag**, as in the PunctuatedSST-2
reference code (kakaobrain/irm-empirical-study, ``punctuated_sst2/main.py``, which keeps only
``word in vocab.stoi``); :class:`Coverage` counts them and the builder logs the counts.
Index 0 of the embedding table is reserved for padding (a zero row).
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Collection, Iterable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from metairm_pl.errors import ConfigError, DataCorruptedError, DataUnavailableError

log = logging.getLogger(__name__)

PAD_ID = 0


@dataclass(frozen=True)
class GloveVectors:
    """Words and their vectors (float32 ``[len(words), dim]``) in file order."""

    words: list[str]
    vectors: Tensor
    path: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def _open_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line number, raw line)``; gzip is detected from the file's magic bytes."""
    with path.open("rb") as probe:
        is_gzip = probe.read(2) == b"\x1f\x8b"
    opener = gzip.open if is_gzip else open
    try:
        with opener(path, "rb") as handle:
            yield from enumerate(handle, start=1)
    except (OSError, EOFError, zlib.error) as error:
        raise DataCorruptedError(
            f"GloVe file {path} cannot be read as {'gzip' if is_gzip else 'text'}: {error}."
        ) from error


def _parse_line(path: Path, number: int, raw: bytes, dim: Optional[int]) -> tuple[str, np.ndarray]:
    """``(word, float32 vector)`` of one line; ``dim=None`` accepts any positive count."""
    where = f"GloVe file {path}, line {number}"
    try:
        fields = raw.decode("utf-8").rstrip("\r\n").rstrip(" ").split(" ")
    except UnicodeDecodeError as error:
        raise DataCorruptedError(f"{where}: not UTF-8 ({error}).") from error
    found = len(fields) - 1
    if found < 1 or (dim is not None and found != dim):
        expected = f"{dim}" if dim is not None else "at least 1"
        raise DataCorruptedError(
            f"{where}: found {found} value(s) after the word {fields[0]!r}, expected {expected} "
            "(a word, then its floats, separated by single spaces)."
        )
    try:
        vector = np.asarray(fields[1:], dtype=np.float32)
    except ValueError:
        bad = next(f for f in fields[1:] if not _is_float(f))
        raise DataCorruptedError(f"{where}: {bad!r} is not a number.") from None
    if not np.isfinite(vector).all():
        raise DataCorruptedError(f"{where}: the vector of {fields[0]!r} holds a non-finite value.")
    return fields[0], vector


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _check_not_a_header(path: Path, fields: Sequence[str]) -> None:
    if len(fields) == 2 and all(f.isdigit() for f in fields):
        raise DataCorruptedError(
            f"GloVe file {path}, line 1: {' '.join(fields)!r} looks like a word2vec header; "
            "GloVe text files have none (remove that line)."
        )


def read_glove(
    path: str | Path,
    expected_dim: Optional[int] = None,
    keep: Optional[Collection[str]] = None,
    config_key: str = "data.glove_file",
) -> GloveVectors:
    """Read a GloVe text file (plain or gzip); keep only words in ``keep`` when given.

    Raises DataUnavailableError when the file is missing (naming ``config_key``),
    ConfigError when its dimension differs from ``expected_dim``, and DataCorruptedError
    (file, line number, what was found) for a malformed line.  Repeated words keep their
    first vector.
    """
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(
            f"GloVe file {path} does not exist: set {config_key} to a GloVe text file (plain or .gz), "
            "e.g. glove.6B.300d.txt from https://nlp.stanford.edu/projects/glove/."
        )
    words: list[str] = []
    rows: list[np.ndarray] = []
    seen: set[str] = set()
    dim: Optional[int] = None
    for number, raw in _open_lines(path):
        if dim is None:
            _check_not_a_header(path, raw.decode("utf-8", "replace").split())
        word, vector = _parse_line(path, number, raw, dim)
        if dim is None:
            dim = len(vector)
            _check_dim(path, dim, expected_dim)
        if word in seen or (keep is not None and word not in keep):
            continue
        seen.add(word)
        words.append(word)
        rows.append(vector)
    if dim is None:
        raise DataCorruptedError(f"GloVe file {path} is empty: expected lines of a word and its floats.")
    vectors = torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, dim)
    return GloveVectors(words=words, vectors=vectors, path=str(path))


def _check_dim(path: Path, dim: int, expected_dim: Optional[int]) -> None:
    if expected_dim is not None and dim != expected_dim:
        raise ConfigError(
            f"data.embedding_dim={expected_dim} does not match GloVe file {path}, whose vectors have "
            f"{dim} values: set data.embedding_dim={dim} (or null to accept any dimension)."
        )


@dataclass(frozen=True)
class Coverage:
    """How much of a corpus the embedding covers (unknown tokens are dropped from the bag)."""

    n_tokens: int
    n_unknown_tokens: int
    n_types: int
    n_unknown_types: int

    @property
    def unknown_token_fraction(self) -> float:
        return self.n_unknown_tokens / self.n_tokens if self.n_tokens else 0.0

    @property
    def unknown_type_fraction(self) -> float:
        return self.n_unknown_types / self.n_types if self.n_types else 0.0

    def describe(self) -> str:
        return (
            f"{self.n_unknown_tokens:,} of {self.n_tokens:,} tokens ({100 * self.unknown_token_fraction:.2f}%) "
            f"and {self.n_unknown_types:,} of {self.n_types:,} types ({100 * self.unknown_type_fraction:.2f}%) "
            "are not in GloVe and are dropped from the bag"
        )


def measure_coverage(corpus: Iterable[Sequence[str]], known: Collection[str]) -> Coverage:
    """Count the tokens and types of ``corpus`` (token lists) that are not in ``known``."""
    counts: dict[str, int] = {}
    for tokens in corpus:
        for token in tokens:
            counts[token] = counts.get(token, 0) + 1
    unknown = [token for token in counts if token not in known]
    return Coverage(
        n_tokens=sum(counts.values()),
        n_unknown_tokens=sum(counts[token] for token in unknown),
        n_types=len(counts),
        n_unknown_types=len(unknown),
    )


@dataclass(frozen=True)
class EmbeddingTable:
    """Token ids ``1..V`` (0 = padding) and the float32 table ``[V + 1, dim]`` (row 0 zero)."""

    token_ids: dict[str, int]
    vectors: Tensor

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def encode(self, tokens: Iterable[str]) -> list[int]:
        """Ids of the known tokens, in order; unknown tokens are dropped."""
        ids = self.token_ids
        return [ids[token] for token in tokens if token in ids]


def build_embedding(
    glove: GloveVectors, corpus: Iterable[Sequence[str]], required: Collection[str] = ()
) -> tuple[EmbeddingTable, Coverage]:
    """Table of the GloVe words that occur in ``corpus`` or ``required`` (GloVe order); logs coverage.

    Coverage is measured on ``corpus`` only.  A ``required`` word without a vector raises
    DataCorruptedError (e.g. a punctuation mark the data construction appends).
    """
    corpus = list(corpus)
    position = {word: index for index, word in enumerate(glove.words)}
    missing = [word for word in required if word not in position]
    if missing:
        raise DataCorruptedError(f"GloVe file {glove.path} has no vector for the required word(s) {missing}.")
    coverage = measure_coverage(corpus, position)
    used = {token for tokens in corpus for token in tokens if token in position} | set(required)
    used = sorted(used, key=position.__getitem__)
    vectors = torch.zeros(len(used) + 1, glove.dim)
    if used:
        vectors[1:] = glove.vectors[[position[word] for word in used]]
    log.info("GloVe %dd from %s: %s.", glove.dim, glove.path, coverage.describe())
    return EmbeddingTable({word: index + 1 for index, word in enumerate(used)}, vectors), coverage


def pad_ids(sequences: Sequence[Sequence[int]], width: Optional[int] = None) -> Tensor:
    """int64 ``[n, width]`` with each sequence left-aligned and padded with ``PAD_ID``."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    width = int(lengths.max(initial=0)) if width is None else width
    if lengths.size and lengths.max() > width:
        raise ValueError(f"a sequence of length {int(lengths.max())} does not fit width {width}.")
    out = np.full((len(sequences), width), PAD_ID, dtype=np.int64)
    flat = np.fromiter((i for s in sequences for i in s), dtype=np.int64, count=int(lengths.sum()))
    out[np.arange(width)[None, :] < lengths[:, None]] = flat
    return torch.from_numpy(out)
