"""PunctuatedSST-2 (Choe et al. 2020; Meta-IRM paper, appendix B) as a multi-environment DataModule.

Construction, per example (as Colored MNIST, with a punctuation mark for the colour):
the SST-2 label is flipped with ``p_label_noise`` (eta) to give ``y``; the mark id ``z`` is
``y`` flipped with the env's ``p_color`` (p_e); with ``artifact="punctuation"`` a trailing
punctuation token is dropped and exactly one mark is appended: ``!`` if ``z = 0``, ``.`` if
``z = 1``.  Which trailing token counts as punctuation is the reference's rule by default
(``trailing_punctuation=None``: a token that is a contiguous run of Python's
``string.punctuation``, so ``,`` ``'`` ``)`` ``;`` ``-`` ... as well as ``.`` ``!`` ``?``, but
not ``...``); a list of tokens replaces the rule (``[".", "!", "?"]`` was this module's
earlier rule, which left 2,461 of the 67,349 training sentences marked differently).  ``artifact="none"`` (the grayscale
oracle data) leaves the text unchanged, as the reference's ``grayscale`` version does; ``z``
is still drawn, so for one ``data_seed`` both variants have identical labels.

Splits, ``construction="reference"`` (default; kakaobrain/irm-empirical-study,
``punctuated_sst2/make_environments.py``), all draws from ``numpy.random.RandomState(data_seed)``
in the reference's order (``data_seed=1`` gives the reference's own files):

* training envs: each ``train.tsv`` row goes to a random training env (``randint``); the
  smaller envs are then topped up to the largest's length with rows drawn with replacement
  from themselves (``choice``);
* per example, in env order: a label-noise draw (only when ``p_label_noise > 0``), then a
  mark draw;
* ``dev.tsv``: each row goes to a random env among the training envs' validation twins and
  the test envs (``randint``); the twins are coloured with their training env's rates and
  are the validation sets (the reference's in-distribution test envs), the rest are the test
  envs (``val_fraction`` and env ``size`` are not used);
* examples left without any token that has a GloVe vector are dropped, as the reference does.

``construction="even"`` is this module's earlier construction: ``train.tsv`` shuffled with a
torch generator and dealt evenly (no duplicates), ``val_fraction`` of each training env carved
out for validation, and every test env built from all of ``dev.tsv``.

Head: ``binary_logits=2`` (default) makes the network output two logits trained with softmax
cross-entropy, and IRMv1's dummy scale is then ``(1, 2)``, as in the reference code (so its
penalty weights carry over); ``1`` keeps one logistic logit.

Inputs: ``x`` is int64 ``[n, max_len]`` of token ids, 0 = padding, one width for all envs;
tokens are ``sentence.lower().split()``; tokens without a GloVe vector are dropped from the
bag (see :mod:`metairm_pl.data.glove`).  The network gets the embedding table through
:meth:`PunctuatedSST2DataModule.model_kwargs`.
"""

from __future__ import annotations

import logging
import string
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from omegaconf import MISSING
from torch import Tensor

from metairm_pl.data.environments import EnvSpec, check_probability, flip_with_probability, parse_env_specs
from metairm_pl.data.glove import Coverage, EmbeddingTable, build_embedding, pad_ids, read_glove
from metairm_pl.data.multienv import EnvironmentSplits, MultiEnvDataModule
from metairm_pl.errors import ConfigError, DataCorruptedError, DataUnavailableError

log = logging.getLogger(__name__)

ARTIFACTS = ("punctuation", "none")
CONSTRUCTIONS = ("reference", "even")
HEADER = "sentence\tlabel"
MARKS = ("!", ".")  # MARKS[z]: "!" for z = 0, "." for z = 1
DEFAULT_TRAILING = None  # None: the reference's rule (is_punctuation_token)


@dataclass(frozen=True)
class Sentences:
    """Tokenized sentences and their int64 labels (0/1)."""

    tokens: list[list[str]]
    labels: Tensor


def tokenize(sentence: str) -> list[str]:
    return sentence.lower().split()


def _parse_row(path: Path, number: int, raw: bytes) -> tuple[list[str], int]:
    where = f"SST-2 file {path}, line {number}"
    try:
        fields = raw.decode("utf-8").rstrip("\r\n").split("\t")
    except UnicodeDecodeError as error:
        raise DataCorruptedError(f"{where}: not UTF-8 ({error}).") from error
    if len(fields) != 2:
        raise DataCorruptedError(f"{where}: found {len(fields)} tab-separated field(s), expected 2 (sentence, label).")
    sentence, label = fields
    if label not in ("0", "1"):
        raise DataCorruptedError(f"{where}: label {label!r} is not allowed, expected 0 or 1.")
    tokens = tokenize(sentence)
    if not tokens:
        raise DataCorruptedError(f"{where}: the sentence is empty.")
    return tokens, int(label)


def read_sst2_tsv(path: str | Path, config_key: str) -> Sentences:
    """Read a GLUE SST-2 TSV (header ``sentence<TAB>label``, labels 0/1)."""
    path = Path(path)
    if not path.is_file():
        raise DataUnavailableError(
            f"SST-2 file {path} does not exist: set {config_key} (or data.data_dir, default "
            "$METAIRM_PSST2_DIR) to the GLUE SST-2 file."
        )
    tokens, labels = [], []
    with path.open("rb") as handle:
        header = handle.readline().decode("utf-8", "replace").rstrip("\r\n")
        if header != HEADER:
            raise DataCorruptedError(f"SST-2 file {path}, line 1: header {header!r}, expected {HEADER!r}.")
        for number, raw in enumerate(handle, start=2):
            sentence_tokens, label = _parse_row(path, number, raw)
            tokens.append(sentence_tokens)
            labels.append(label)
    if not tokens:
        raise DataCorruptedError(f"SST-2 file {path} has a header but no rows.")
    return Sentences(tokens=tokens, labels=torch.tensor(labels, dtype=torch.long))


def is_punctuation_token(token: str) -> bool:
    """The reference's test of a trailing token: a contiguous run of ``string.punctuation``."""
    return bool(token) and token in string.punctuation


def punctuate(tokens: Sequence[str], mark_id: int, trailing: Optional[Sequence[str]] = DEFAULT_TRAILING) -> list[str]:
    """Drop one trailing punctuation token (the reference's rule, or one in ``trailing``),
    then append ``MARKS[mark_id]``."""
    drops = tokens and (is_punctuation_token(tokens[-1]) if trailing is None else tokens[-1] in trailing)
    kept = list(tokens[:-1]) if drops else list(tokens)
    return kept + [MARKS[mark_id]]


def draw_labels_and_marks(clean_labels: Tensor, spec: EnvSpec, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``y`` = clean label flipped w.p. ``p_label_noise``; mark id ``z`` = ``y`` flipped w.p. ``p_color``."""
    labels = flip_with_probability(clean_labels, spec.p_label_noise, 2, generator)
    marks = flip_with_probability(labels, spec.p_color, 2, generator)
    return labels, marks


class PunctuatedSST2DataModule(MultiEnvDataModule):
    """PunctuatedSST-2 environments over GloVe token ids (see module docstring).

    ``name`` should carry the GloVe dimension (the preset's ``psst2_glove50d_...``);
    :attr:`embedding_dim` is the dimension actually read, and ``embedding_dim`` in the
    config, when set, must match the file.  File names are relative to ``data_dir``
    (absolute ones are used as they are).  ``p_label_noise`` is the eta that the preset's
    env lists interpolate (validated and kept for labelling); each env's own
    ``p_label_noise`` is what is applied.
    """

    schema_name = "psst2"
    config_defaults = {"data_dir": MISSING, "glove_file": MISSING}  # conf/data/psst2.yaml names them

    def __init__(
        self,
        train_envs: Sequence,
        test_envs: Sequence,
        data_dir: str = ".",
        train_file: str = "train.tsv",
        dev_file: str = "dev.tsv",
        glove_file: str = "glove.6B.50d.sst2.txt.gz",
        embedding_dim: Optional[int] = None,
        name: str = "psst2",
        artifact: str = "punctuation",
        p_label_noise: float = 0.25,
        trailing_punctuation: Optional[Sequence[str]] = DEFAULT_TRAILING,
        val_fraction: float = 0.1,
        data_seed: int = 0,
        full_batch: bool = True,
        batch_size: Optional[int] = None,
        binary_logits: int = 2,
        construction: str = "reference",
    ) -> None:
        super().__init__(full_batch=full_batch, batch_size=batch_size, data_seed=data_seed)
        if binary_logits not in (1, 2):
            raise ConfigError(
                f"data.binary_logits={binary_logits!r} is not allowed: use 2 (softmax over two logits, "
                "the reference's head) or 1 (one logistic logit)."
            )
        if construction not in CONSTRUCTIONS:
            raise ConfigError(f"data.construction={construction!r} is not allowed: use one of {list(CONSTRUCTIONS)}.")
        self.construction = construction
        self.binary_logits = binary_logits
        self.name = name
        self.train_specs = parse_env_specs("train_envs", train_envs)
        self.test_specs = parse_env_specs("test_envs", test_envs)
        overlap = {s.name for s in self.train_specs} & {s.name for s in self.test_specs}
        if overlap:
            raise ConfigError(f"data: env names {sorted(overlap)} are used for both train and test envs.")
        if artifact not in ARTIFACTS:
            raise ConfigError(f"data.artifact={artifact!r} is not allowed: use one of {list(ARTIFACTS)}.")
        if embedding_dim is not None and (isinstance(embedding_dim, bool) or embedding_dim <= 0):
            raise ConfigError(f"data.embedding_dim={embedding_dim!r} is not allowed: use a positive integer or null.")
        if trailing_punctuation is not None and (
            isinstance(trailing_punctuation, str) or not all(isinstance(t, str) and t for t in trailing_punctuation)
        ):
            raise ConfigError(
                f"data.trailing_punctuation={trailing_punctuation!r} is not allowed: use null (the reference's "
                "rule) or a list of non-empty tokens."
            )
        self.p_label_noise = check_probability("data.p_label_noise", p_label_noise)
        self.val_fraction = check_probability("data.val_fraction", val_fraction)
        self.artifact = artifact
        self.trailing_punctuation = None if trailing_punctuation is None else tuple(trailing_punctuation)
        self.expected_dim = embedding_dim
        self.files = {
            key: Path(data_dir) / file
            for key, file in (("train_file", train_file), ("dev_file", dev_file), ("glove_file", glove_file))
        }
        self.table: Optional[EmbeddingTable] = None
        self.coverage: Optional[Coverage] = None

    # -- information for the network and the records --------------------------------
    @property
    def num_classes(self) -> int:
        return 2

    @property
    def embedding_dim(self) -> int:
        """Dimension of the GloVe vectors read (label results with it, e.g. 50d vs 300d)."""
        return self._require_table().dim

    def model_kwargs(self) -> dict:
        """Extra constructor arguments of the network: the frozen embedding table."""
        return {"embeddings": self._require_table().vectors}

    def _require_table(self) -> EmbeddingTable:
        self._require_splits()
        return self.table

    # -- construction ------------------------------------------------------------------
    def build_environments(self) -> EnvironmentSplits:
        start = time.perf_counter()
        train_rows = read_sst2_tsv(self.files["train_file"], "data.train_file")
        dev_rows = read_sst2_tsv(self.files["dev_file"], "data.dev_file")
        self.table, self.coverage = self._load_embedding(train_rows.tokens + dev_rows.tokens)
        if self.construction == "reference":
            train, val, test = self._reference_envs(train_rows, dev_rows)
        else:
            generator = torch.Generator().manual_seed(int(self.data_seed))
            order = torch.randperm(len(train_rows.tokens), generator=generator)
            train, val = self._build_train_envs(train_rows, order, generator)
            test = {
                spec.name: self._build_env(dev_rows, self._test_rows(spec, dev_rows), spec, generator)
                for spec in self.test_specs
            }
        splits = self._pad(EnvironmentSplits(train=train, val=val, test=test))
        log.info(
            "PunctuatedSST-2 (GloVe %dd, artifact=%s) built in %.1f s: %s.",
            self.table.dim,
            self.artifact,
            time.perf_counter() - start,
            self._describe_sizes(splits),
        )
        return splits

    def _load_embedding(self, corpus: list[list[str]]) -> tuple[EmbeddingTable, Coverage]:
        """GloVe table for the SST-2 tokens (+ the marks, which must have vectors); coverage of the raw text."""
        required = MARKS if self.artifact == "punctuation" else ()
        keep = {token for tokens in corpus for token in tokens} | set(required)
        glove = read_glove(self.files["glove_file"], expected_dim=self.expected_dim, keep=keep)
        return build_embedding(glove, corpus, required=required)

    def _build_train_envs(self, rows: Sentences, order: Tensor, generator: torch.Generator):
        n_envs = len(self.train_specs)
        share = len(order) // n_envs
        train, val = {}, {}
        for index, spec in enumerate(self.train_specs):
            size = self._check_size(spec, share, f"{len(order)} SST-2 training rows shared by {n_envs} envs")
            val_size = int(round(self.val_fraction * size))
            if val_size >= size:
                raise ConfigError(
                    f"data.val_fraction={self.val_fraction} leaves no training examples in env {spec.name} "
                    f"({size} examples): use a value below 1."
                )
            x_ids, y = self._build_env(rows, order[index::n_envs][:size], spec, generator)
            train[spec.name] = (x_ids[val_size:], y[val_size:])
            if val_size:
                val[spec.name] = (x_ids[:val_size], y[:val_size])
        return train, val

    def _reference_envs(self, train_rows: Sentences, dev_rows: Sentences):
        """Training, validation and test envs as the reference builds them (module docstring)."""
        sized = [spec.name for spec in self.train_specs + self.test_specs if spec.size is not None]
        if sized:
            raise ConfigError(
                f"envs {sized} set a size, which data.construction=reference does not use (it assigns rows "
                "at random): remove it, or use data.construction=even."
            )
        rng = np.random.RandomState(int(self.data_seed))
        n_train = len(self.train_specs)
        groups = _random_groups(len(train_rows.tokens), n_train, rng)
        longest = max(len(group) for group in groups)
        groups = [
            group + [group[i] for i in rng.choice(len(group), size=longest - len(group))]
            if len(group) < longest
            else group
            for group in groups
        ]
        train = {
            spec.name: self._reference_env(train_rows, group, spec, rng)
            for spec, group in zip(self.train_specs, groups)
        }
        dev_groups = _random_groups(len(dev_rows.tokens), n_train + len(self.test_specs), rng)
        built = [
            self._reference_env(dev_rows, group, spec, rng)
            for spec, group in zip(self.train_specs + self.test_specs, dev_groups)
        ]
        val = {spec.name: env for spec, env in zip(self.train_specs, built[:n_train])}
        test = {spec.name: env for spec, env in zip(self.test_specs, built[n_train:])}
        return train, val, test

    def _reference_env(self, rows: Sentences, indices: list[int], spec: EnvSpec, rng: np.random.RandomState):
        """One env, drawing per example (in order) the label flip (only if eta > 0), then the mark."""
        n = len(indices)
        flips = spec.p_label_noise > 0
        draws = rng.random_sample(2 * n if flips else n)
        noise_draws, mark_draws = (draws[0::2], draws[1::2]) if flips else (np.ones(n), draws)
        ids, labels = [], []
        for index, u_noise, u_mark in zip(indices, noise_draws, mark_draws):
            label = int(rows.labels[index])
            if u_noise < spec.p_label_noise:
                label = 1 - label
            mark = label if u_mark >= spec.p_color else 1 - label
            tokens = rows.tokens[index]
            if self.artifact == "punctuation":
                tokens = punctuate(tokens, mark, self.trailing_punctuation)
            encoded = self.table.encode(tokens)
            if encoded:  # the reference drops examples without a known word
                ids.append(encoded)
                labels.append(label)
        return ids, torch.tensor(labels, dtype=torch.long)

    @staticmethod
    def _check_size(spec: EnvSpec, available: int, what: str) -> int:
        if spec.size is not None and spec.size > available:
            raise ConfigError(
                f"env {spec.name}: size={spec.size} exceeds the data available to it: {what} give at most {available}."
            )
        return spec.size or available

    def _test_rows(self, spec: EnvSpec, rows: Sentences) -> Tensor:
        size = self._check_size(spec, len(rows.tokens), f"the {len(rows.tokens)} SST-2 dev rows")
        return torch.arange(size)

    def _build_env(self, rows: Sentences, indices: Tensor, spec: EnvSpec, generator: torch.Generator):
        """``(list of token-id lists, y)`` of one env over ``rows[indices]`` (padded later)."""
        labels, marks = draw_labels_and_marks(rows.labels[indices], spec, generator)
        texts = [rows.tokens[i] for i in indices.tolist()]
        if self.artifact == "punctuation":
            texts = [punctuate(t, z, self.trailing_punctuation) for t, z in zip(texts, marks.tolist())]
        return [self.table.encode(t) for t in texts], labels

    @staticmethod
    def _pad(splits: EnvironmentSplits) -> EnvironmentSplits:
        """Pad every env's id lists to one common width (the longest bag of all envs)."""
        groups = (splits.train, splits.val, splits.test)
        width = max((len(ids) for group in groups for ids_list, _ in group.values() for ids in ids_list), default=0)
        empty = sum(not ids for group in groups for ids_list, _ in group.values() for ids in ids_list)
        if empty:
            log.warning("%d example(s) have no token with a GloVe vector; their bag embedding is zero.", empty)
        padded = [{env: (pad_ids(ids, width), y) for env, (ids, y) in group.items()} for group in groups]
        return EnvironmentSplits(train=padded[0], val=padded[1], test=padded[2])

    @staticmethod
    def _describe_sizes(splits: EnvironmentSplits) -> str:
        return "; ".join(
            f"{kind} " + ", ".join(f"{env}={len(y)}" for env, (_, y) in group.items())
            for kind, group in splits.as_eval_batch().items()
            if group
        )


def _random_groups(n_rows: int, n_groups: int, rng: np.random.RandomState) -> list[list[int]]:
    """Row indices per group, each row sent to ``rng.randint(n_groups)``, in row order."""
    assignment = rng.randint(n_groups, size=n_rows)
    return [np.flatnonzero(assignment == group).tolist() for group in range(n_groups)]
