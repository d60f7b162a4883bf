"""GloVe reader and embedding table on tiny temporary files (plain and gzip)."""

from __future__ import annotations

import gzip
import logging

import pytest
import torch

from metairm_pl.data.glove import (
    PAD_ID,
    GloveVectors,
    build_embedding,
    measure_coverage,
    pad_ids,
    read_glove,
)
from metairm_pl.errors import ConfigError, DataCorruptedError, DataUnavailableError

LINES = ["the 0.1 0.2 0.3 0.4", "cat -1 2.5 1e-05 0", "! 1 1 1 1", ". -0.5 0 0.5 1"]


def write(path, lines, compress=False):
    data = ("\n".join(lines) + "\n").encode("utf-8")
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


@pytest.mark.parametrize("compress", [False, True])
def test_reads_plain_and_gzip_with_the_dimension_from_the_first_line(tmp_path, compress):
    path = write(tmp_path / ("g.txt.gz" if compress else "g.txt"), LINES, compress)
    glove = read_glove(path)
    assert glove.dim == 4 and glove.words == ["the", "cat", "!", "."]
    assert glove.vectors.dtype == torch.float32
    assert torch.equal(glove.vectors[1], torch.tensor([-1.0, 2.5, 1e-05, 0.0]))


def test_other_dimensions_and_filtering(tmp_path):
    path = write(tmp_path / "g.txt", ["a 1 2", "b 3 4", "c 5 6"])
    glove = read_glove(path, expected_dim=2, keep={"c", "a", "zzz"})
    assert glove.words == ["a", "c"] and torch.equal(glove.vectors, torch.tensor([[1.0, 2.0], [5.0, 6.0]]))


def test_repeated_word_keeps_its_first_vector(tmp_path):
    glove = read_glove(write(tmp_path / "g.txt", ["a 1", "a 2", "b 3"]))
    assert glove.words == ["a", "b"] and glove.vectors[:, 0].tolist() == [1.0, 3.0]


@pytest.mark.parametrize("compress", [False, True])
def test_line_with_another_value_count_names_file_line_and_counts(tmp_path, compress):
    path = write(tmp_path / "bad.txt.gz", LINES[:2] + ["dog 1 2 3"] + LINES[2:], compress)
    with pytest.raises(DataCorruptedError) as info:
        read_glove(path)
    message = str(info.value)
    assert str(path) in message and "line 3" in message and "found 3" in message and "expected 4" in message


def test_non_number_names_line_and_value(tmp_path):
    path = write(tmp_path / "g.txt", ["a 1 2", "b 1 x2"])
    with pytest.raises(DataCorruptedError, match=r"line 2: 'x2' is not a number"):
        read_glove(path)


def test_non_finite_value_is_rejected(tmp_path):
    with pytest.raises(DataCorruptedError, match="line 2.*non-finite"):
        read_glove(write(tmp_path / "g.txt", ["a 1 2", "b nan 2"]))


def test_word2vec_header_is_named(tmp_path):
    with pytest.raises(DataCorruptedError, match="word2vec header"):
        read_glove(write(tmp_path / "g.txt", ["2 2", "a 1 2", "b 3 4"]))


def test_empty_and_truncated_files(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(DataCorruptedError, match="empty"):
        read_glove(tmp_path / "empty.txt")
    whole = gzip.compress(("\n".join(LINES * 50) + "\n").encode())
    (tmp_path / "cut.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(DataCorruptedError, match="cut.gz"):
        read_glove(tmp_path / "cut.gz")


def test_missing_file_names_path_and_config_key(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        read_glove(tmp_path / "nope.txt")
    assert "nope.txt" in str(info.value) and "data.glove_file" in str(info.value)


def test_expected_dimension_mismatch_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        read_glove(write(tmp_path / "g.txt", LINES), expected_dim=300)
    assert "data.embedding_dim=300" in str(info.value) and "4 values" in str(info.value)


def glove_of(words_and_rows):
    words = [w for w, _ in words_and_rows]
    return GloveVectors(words, torch.tensor([r for _, r in words_and_rows], dtype=torch.float32), "mem")


def test_coverage_counts_unknown_tokens_and_types():
    corpus = [["a", "b", "x"], ["x", "y", "a"], ["a"]]
    coverage = measure_coverage(corpus, {"a", "b"})
    assert (coverage.n_tokens, coverage.n_unknown_tokens, coverage.n_types, coverage.n_unknown_types) == (7, 3, 4, 2)
    assert coverage.unknown_token_fraction == pytest.approx(3 / 7)
    assert coverage.unknown_type_fraction == pytest.approx(0.5)


def test_table_keeps_used_words_in_glove_order_with_a_zero_padding_row(caplog):
    glove = glove_of([("the", [1.0, 1.0]), ("cat", [2.0, 0.0]), ("dog", [0.0, 3.0]), ("!", [5.0, 5.0])])
    with caplog.at_level(logging.INFO, logger="metairm_pl.data.glove"):
        table, coverage = build_embedding(glove, [["dog", "zebra", "the"], ["dog"]], required=["!"])
    assert table.token_ids == {"the": 1, "dog": 2, "!": 3}
    assert torch.equal(table.vectors, torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.0, 3.0], [5.0, 5.0]]))
    assert table.vectors[PAD_ID].abs().sum() == 0
    assert table.encode(["zebra", "dog", "the", "zebra"]) == [2, 1]  # unknown words are dropped
    assert (coverage.n_unknown_tokens, coverage.n_tokens) == (1, 4)  # required words are not counted
    assert "1 of 4 tokens (25.00%)" in caplog.text and "1 of 3 types" in caplog.text


def test_required_word_without_a_vector_is_an_error():
    with pytest.raises(DataCorruptedError, match=r"required word\(s\) \['!'\]"):
        build_embedding(glove_of([("a", [1.0])]), [["a"]], required=["!", "a"])


def test_pad_ids_left_aligns_and_pads_with_zero():
    x = pad_ids([[3, 1], [], [2, 2, 2]])
    assert x.dtype == torch.int64
    assert x.tolist() == [[3, 1, 0], [0, 0, 0], [2, 2, 2]]
    assert pad_ids([[1]], width=3).tolist() == [[1, 0, 0]]
