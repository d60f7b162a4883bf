"""PunctuatedSST-2: TSV reading, the punctuation artifact, env rates and the DataModule.

Tiny synthetic SST-2 TSVs and a 3-d GloVe file are written to ``tmp_path``; the real data
is only used by the ``slow`` test at the end.
"""

from __future__ import annotations

import math
import os
import random
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from metairm_pl.data.environments import EnvSpec
from metairm_pl.data.psst2 import (
    PunctuatedSST2DataModule,
    draw_labels_and_marks,
    punctuate,
    read_sst2_tsv,
    tokenize,
)
from metairm_pl.errors import ConfigError, DataCorruptedError, DataUnavailableError

WORDS = [f"w{i}" for i in range(12)] + [",", "...", "?"]
UNKNOWN = ["zq-1", "zq-2"]  # written in the TSVs, absent from the GloVe file
ENDINGS = [".", "!", "?", "w3", "...", ","]
N_TRAIN, N_DEV = 4000, 400


def assert_rate(observed: float, expected: float, n: int, sds: float = 5.0) -> None:
    tol = sds * math.sqrt(expected * (1.0 - expected) / n)
    assert abs(observed - expected) <= tol, f"rate {observed:.4f} not within {tol:.4f} of {expected:.4f}"


def write_tsv(path: Path, n: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = ["sentence\tlabel"]
    for _ in range(n):
        words = rng.choices(WORDS + UNKNOWN, k=rng.randint(1, 6)) + [rng.choice(ENDINGS)]
        rows.append(f"{' '.join(words).upper() if rng.random() < 0.1 else ' '.join(words)} \t{rng.randint(0, 1)}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_glove(path: Path, words=tuple(WORDS + ["!", "."])) -> Path:
    lines = [f"{word} {i} {-i} {i / 10}" for i, word in enumerate(words, start=1)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("psst2")
    write_tsv(root / "train.tsv", N_TRAIN, seed=1)
    write_tsv(root / "dev.tsv", N_DEV, seed=2)
    write_glove(root / "glove.txt")
    return root


ENVS = dict(
    train_envs=[{"name": "p0.1", "p_color": 0.1}, {"name": "p0.2", "p_color": 0.2}],
    test_envs=[{"name": "p0.9", "p_color": 0.9}],
)


def make_dm(data_dir, **kw) -> PunctuatedSST2DataModule:
    args = dict(
        ENVS, data_dir=str(data_dir), glove_file="glove.txt", val_fraction=0.1, data_seed=0, construction="even"
    )
    args.update(kw)
    dm = PunctuatedSST2DataModule(**args)
    dm.setup()
    return dm


def decode(dm, x: torch.Tensor) -> list[list[str]]:
    words = {i: w for w, i in dm.table.token_ids.items()}
    return [[words[i] for i in row if i != 0] for row in x.tolist()]


# -- the artifact ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sentence, mark_id, expected",
    [
        ("a fine film . ", 0, "a fine film !"),  # GLUE rows end with a space before the tab
        ("a fine film .", 1, "a fine film ."),
        ("is it good ?", 1, "is it good ."),
        ("wow !", 1, "wow ."),
        ("wow !", 0, "wow !"),
        ("no punctuation here", 0, "no punctuation here !"),
        ("  padded   words  ", 1, "padded words ."),
        ("trails off ...", 1, "trails off ... ."),  # "..." is not a trailing mark: kept
        ("and , ", 0, "and !"),  # the reference's rule: any ASCII punctuation token
        ("a ( parenthetical )", 1, "a ( parenthetical ."),
        ("it 's -- ", 0, "it 's -- !"),  # "--" is not a run of string.punctuation: kept
        ("two marks ! .", 0, "two marks ! !"),  # only one trailing token is dropped
        ("?", 0, "!"),
    ],
)
def test_punctuate_drops_one_trailing_mark_and_appends_exactly_one(sentence, mark_id, expected):
    assert " ".join(punctuate(tokenize(sentence), mark_id)) == expected


def test_punctuate_honours_a_custom_trailing_set():
    assert punctuate(["and", ","], 1, trailing=[",", "."]) == ["and", "."]
    assert punctuate(["and", ","], 1, trailing=[".", "!", "?"]) == ["and", ",", "."]


def test_tokenize_lowercases_and_splits_on_whitespace():
    assert tokenize("It 's  A\tfilm . ") == ["it", "'s", "a", "film", "."]


@pytest.mark.parametrize("p_label_noise, p_color", [(0.25, 0.1), (0.0, 0.2), (0.25, 0.9)])
def test_label_noise_and_mark_rates(p_label_noise, p_color):
    n = 20_000
    clean = torch.randint(0, 2, (n,), generator=torch.Generator().manual_seed(0))
    spec = EnvSpec("e", p_color=p_color, p_label_noise=p_label_noise)
    labels, marks = draw_labels_and_marks(clean, spec, torch.Generator().manual_seed(1))
    if p_label_noise == 0.0:
        assert torch.equal(labels, clean)
    else:
        assert_rate((labels == clean).double().mean().item(), 1 - p_label_noise, n)
    assert_rate((marks == labels).double().mean().item(), 1 - p_color, n)


# -- reading the TSVs ------------------------------------------------------------------------


def test_reads_sentences_and_labels(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("sentence\tlabel\nA good film . \t1\nbad \t0\n", encoding="utf-8")
    rows = read_sst2_tsv(path, "data.train_file")
    assert rows.tokens == [["a", "good", "film", "."], ["bad"]] and rows.labels.tolist() == [1, 0]


@pytest.mark.parametrize(
    "body, pattern",
    [
        ("text\tlabel\na\t1\n", r"line 1: header 'text\\tlabel'"),
        ("sentence\tlabel\na\t1\nb\t1\textra\n", "line 3: found 3 tab-separated"),
        ("sentence\tlabel\na\t1\nb\t2\n", "line 3: label '2' is not allowed, expected 0 or 1"),
        ("sentence\tlabel\n  \t1\n", "line 2: the sentence is empty"),
        ("sentence\tlabel\na 1\n", "line 2: found 1 tab-separated"),
        ("sentence\tlabel\n", "no rows"),
    ],
)
def test_malformed_tsv_names_file_and_line(tmp_path, body, pattern):
    path = tmp_path / "bad.tsv"
    path.write_text(body, encoding="utf-8")
    with pytest.raises(DataCorruptedError, match=pattern) as info:
        read_sst2_tsv(path, "data.train_file")
    assert str(path) in str(info.value)


def test_missing_tsv_names_path_and_config_key(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        make_dm(tmp_path)
    assert str(tmp_path / "train.tsv") in str(info.value) and "data.train_file" in str(info.value)


# -- the DataModule --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dm(data_dir):
    return make_dm(data_dir)


def test_env_sizes_and_shapes(dm):
    share = N_TRAIN // 2
    for env in ("p0.1", "p0.2"):
        assert len(dm.splits.train[env][1]) == share - share // 10
        assert len(dm.splits.val[env][1]) == share // 10
    x, y = dm.splits.test["p0.9"]
    assert len(y) == N_DEV and x.dtype == torch.int64 and y.dtype == torch.int64
    widths = {x.shape[1] for group in dm.splits.as_eval_batch().values() for x, _ in group.values()}
    assert widths == {dm.input_shape[0]}
    assert dm.num_classes == 2 and dm.embedding_dim == 3


def test_training_rows_are_disjoint_across_envs_and_splits(data_dir):
    """Every row of train.tsv is used at most once (a unique token traces it)."""
    root = data_dir.parent / "unique"
    root.mkdir(exist_ok=True)
    names = [f"r{i}" for i in range(200)]
    (root / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{n} .\t{i % 2}\n" for i, n in enumerate(names)))
    (root / "dev.tsv").write_text("sentence\tlabel\nr0 .\t1\n")
    write_glove(root / "glove.txt", names + ["!", "."])
    dm = make_dm(root)
    seen = [
        w
        for group in (dm.splits.train, dm.splits.val)
        for x, _ in group.values()
        for row in decode(dm, x)
        for w in row[:-1]
    ]
    assert len(seen) == len(set(seen)) == 200


def test_mark_agrees_with_label_at_one_minus_p_e(dm):
    dot = dm.table.token_ids["."]
    for group in (dm.splits.train, dm.splits.test):
        for env, (x, y) in group.items():
            p_e = float(env[1:])
            lengths = (x != 0).sum(1)
            marks = (x[torch.arange(len(x)), lengths - 1] == dot).long()
            assert_rate((marks == y).double().mean().item(), 1 - p_e, len(y))


def test_test_rows_are_the_dev_sentences_with_the_mark_replacing_trailing_punctuation(dm, data_dir):
    dev = read_sst2_tsv(data_dir / "dev.tsv", "data.dev_file")
    x, _ = dm.splits.test["p0.9"]
    for tokens, row in zip(dev.tokens, decode(dm, x)):
        assert row[-1] in ("!", ".")
        body = tokens[:-1] if tokens[-1] in string.punctuation else tokens  # the reference's rule
        assert row[:-1] == [t for t in body if t not in UNKNOWN]


def test_grayscale_keeps_the_text_and_the_labels(dm, data_dir):
    gray = make_dm(data_dir, artifact="none")
    dev = read_sst2_tsv(data_dir / "dev.tsv", "data.dev_file")
    x, y = gray.splits.test["p0.9"]
    assert decode(gray, x) == [[t for t in tokens if t not in UNKNOWN] for tokens in dev.tokens]
    for group, gray_group in zip(dm.splits.as_eval_batch().values(), gray.splits.as_eval_batch().values()):
        for env in group:
            assert torch.equal(group[env][1], gray_group[env][1])


def test_label_noise_zero_keeps_dev_labels(data_dir):
    envs = [{"name": "p0.9", "p_color": 0.9, "p_label_noise": 0.0}]
    dm = make_dm(data_dir, test_envs=envs)
    assert torch.equal(dm.splits.test["p0.9"][1], read_sst2_tsv(data_dir / "dev.tsv", "k").labels)


def test_data_seed_determines_the_data(dm, data_dir):
    again, other = make_dm(data_dir), make_dm(data_dir, data_seed=1)
    assert torch.equal(again.splits.train["p0.1"][0], dm.splits.train["p0.1"][0])
    assert not torch.equal(other.splits.train["p0.1"][0], dm.splits.train["p0.1"][0])


def test_model_kwargs_hold_the_table_with_a_zero_padding_row(dm):
    embeddings = dm.model_kwargs()["embeddings"]
    assert embeddings.shape == (len(dm.table.token_ids) + 1, 3) and embeddings[0].abs().sum() == 0
    assert dm.coverage.n_unknown_types == len(UNKNOWN) and dm.coverage.n_unknown_tokens > 0


@pytest.mark.parametrize(
    "kw, error, pattern",
    [
        (dict(embedding_dim=50), ConfigError, r"data.embedding_dim=50 .* 3 values"),
        (dict(artifact="colour"), ConfigError, r"data.artifact='colour' is not allowed"),
        (dict(val_fraction=1.0), ConfigError, "leaves no training examples"),
        (dict(p_label_noise=1.5), ConfigError, r"data.p_label_noise=1.5"),
        (dict(trailing_punctuation="."), ConfigError, "trailing_punctuation"),
        (dict(train_envs=[{"name": "a", "p_color": 0.1, "size": N_TRAIN + 1}]), ConfigError, "size=4001 exceeds"),
        (dict(test_envs=[{"name": "t", "p_color": 0.9, "size": N_DEV + 1}]), ConfigError, "size=401 exceeds"),
        (dict(glove_file="missing.txt"), DataUnavailableError, "data.glove_file"),
    ],
)
def test_bad_config_values(data_dir, kw, error, pattern):
    with pytest.raises(error, match=pattern):
        make_dm(data_dir, **kw)


def test_glove_without_the_marks_is_rejected_for_the_punctuation_artifact(data_dir, tmp_path):
    write_glove(tmp_path / "nomarks.txt", WORDS)
    with pytest.raises(DataCorruptedError, match="'!'"):
        make_dm(data_dir, glove_file=str(tmp_path / "nomarks.txt"))
    make_dm(data_dir, glove_file=str(tmp_path / "nomarks.txt"), artifact="none")


def test_presets_compose_label_the_dimension_and_feed_the_bow_model(make_config, data_dir):
    overrides = [
        "model=bow_mlp",
        f"data.data_dir={data_dir}",
        "data.glove_file=glove.txt",
        "data.embedding_dim=3",
        "data.p_label_noise=0",
    ]
    for data, name in (("psst2", "psst2_glove3d_eta0.0"), ("psst2_grayscale", "psst2_grayscale_glove3d_eta0.0")):
        cfg = make_config([f"data={data}"] + overrides)
        assert cfg.data.name == name
        assert {e.p_label_noise for e in cfg.data.train_envs + cfg.data.test_envs} == {0.0}
        datamodule = instantiate(cfg.data, _convert_="all")
        datamodule.setup()
        network = instantiate(cfg.model, input_shape=datamodule.input_shape, num_outputs=1, **datamodule.model_kwargs())
        x, _ = datamodule.splits.test["p0.9"]
        assert network(x).shape == (len(x), 1) and len(x) < N_DEV  # the reference: a random third of dev


@pytest.mark.slow
def test_real_data(make_config):
    """The offline PunctuatedSST-2 files: sizes, GloVe 50d coverage (README: 99.01% of tokens)."""
    cfg = make_config(["data=psst2", "data_seed=1"])  # seed 1: the reference's own files
    if not os.path.isdir(cfg.data.data_dir):
        pytest.skip(f"no PunctuatedSST-2 data in {cfg.data.data_dir}")
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.setup()
    assert {env: len(y) for env, (_, y) in datamodule.splits.train.items()} == {"p0.2": 33706, "p0.1": 33706}
    assert {env: len(y) for env, (_, y) in datamodule.splits.val.items()} == {"p0.2": 296, "p0.1": 277}
    assert len(datamodule.splits.test["p0.9"][1]) == 299  # the three dev envs: all 872 rows
    assert datamodule.embedding_dim == 50 and cfg.data.name == "psst2_glove50d_eta0.25"
    coverage = datamodule.coverage
    assert (coverage.n_tokens, coverage.n_unknown_tokens) == (650_770, 6_455)
    assert (coverage.n_types, coverage.n_unknown_types) == (15_756, 1_187)


def test_every_training_sentence_is_marked_as_the_reference_marks_it(make_config):
    """The reference's rule from its definition (drop the last token if it is in
    ``string.punctuation``, append the mark) against ours, on all 67,349 SST-2 training
    sentences of the offline copy: 0 differ.  The earlier ``.``/``!``/``?`` rule differed on 2,461."""
    cfg = make_config(["data=psst2"])
    if not os.path.isdir(cfg.data.data_dir):
        pytest.skip(f"no PunctuatedSST-2 data in {cfg.data.data_dir}")
    rows = read_sst2_tsv(Path(cfg.data.data_dir) / "train.tsv", "data.train_file")

    def reference(tokens, mark_id):
        tokens = list(tokens)
        if tokens[-1] in string.punctuation:
            tokens = tokens[:-1]
        return tokens + ["!" if mark_id == 0 else "."]  # " !" for z = 0, " ." for z = 1

    assert len(rows.tokens) == 67_349
    assert sum(punctuate(t, z) != reference(t, z) for t in rows.tokens for z in (0, 1)) == 0
    assert sum(punctuate(t, 1, trailing=[".", "!", "?"]) != reference(t, 1) for t in rows.tokens) == 2_461


@pytest.mark.parametrize("binary_logits", [2, 1])
def test_the_reference_head_is_two_softmax_logits_and_irm_trains_on_it(make_config, data_dir, binary_logits):
    """data=psst2 builds a two-logit network trained with softmax cross-entropy (IRMv1's dummy
    scale is then (1, 2)), as the reference; data.binary_logits=1 keeps one logistic logit."""
    import torch.nn.functional as F

    from metairm_pl.build import build_algorithm, build_datamodule
    from metairm_pl.run import train

    overrides = ["data=psst2", "model=bow_mlp", f"data.data_dir={data_dir}", "data.glove_file=glove.txt",
                 "data.embedding_dim=3", f"data.binary_logits={binary_logits}", "algorithm=irm",
                 "trainer.max_steps=3", "trainer.val_check_interval=3"]  # fmt: skip
    cfg = make_config(overrides)
    datamodule = build_datamodule(cfg)
    algorithm = build_algorithm(cfg, datamodule)
    x, y = datamodule.splits.test["p0.9"]
    logits = algorithm.network(x)
    assert logits.shape == (len(y), binary_logits)
    expected = (
        F.cross_entropy(logits, y)
        if binary_logits == 2
        else F.binary_cross_entropy_with_logits(logits.squeeze(-1), y.float())
    )
    assert algorithm.risk_fn(logits, y).item() == pytest.approx(expected.item(), rel=1e-6)
    assert train(cfg)["step"] == 3


def released_make_environments(train_rows, dev_rows, seed, p_envs, p_test, eta):
    """Choe et al.'s make_environments.py from its definition (numpy RandomState(seed): split
    train at random, top up the smaller env, colour each env sentence by sentence with one
    ``random(1)`` draw for the label flip and one for the mark; split dev into len(p_envs) + 1
    envs and colour them), returning {env: [(tokens, label)]} in the reference's env order."""
    rng = np.random.RandomState(seed)

    def split(rows, n_envs, match):
        assignment = rng.randint(n_envs, size=len(rows.tokens))
        envs = [[(rows.tokens[i], int(rows.labels[i])) for i in range(len(rows.tokens)) if assignment[i] == e]
                for e in range(n_envs)]  # fmt: skip
        if match:
            longest = max(len(env) for env in envs)
            for env in envs:
                if longest - len(env) >= 1:
                    extra = rng.choice(len(env), size=longest - len(env))
                    env += [env[i] for i in extra]
        return envs

    def colour(env, p_env):
        out = []
        for tokens, label in env:
            if eta > 0.0 and rng.random(1).item() < eta:
                label = 1 - label
            mark = label if rng.random(1).item() >= p_env else 1 - label
            tokens = list(tokens)
            if tokens[-1] in string.punctuation:
                tokens = tokens[:-1]
            out.append((tokens + (["."] if mark == 1 else ["!"]), label))
        return out

    train = [colour(env, p) for env, p in zip(split(train_rows, len(p_envs), True), p_envs)]
    dev = [colour(env, p) for env, p in zip(split(dev_rows, len(p_envs) + 1, False), p_envs + [p_test])]
    return train, dev


@pytest.mark.parametrize("eta", [0.25, 0.0])
def test_reference_construction_equals_the_released_script(data_dir, eta):
    """Every env, example by example (tokens with a GloVe vector, label), equals what the
    released script builds with the same seed; validation envs are its in-distribution test
    envs, the test env its test_ood."""
    specs = dict(
        train_envs=[{"name": "p0.2", "p_color": 0.2, "p_label_noise": eta}, {"name": "p0.1", "p_color": 0.1, "p_label_noise": eta}],
        test_envs=[{"name": "p0.9", "p_color": 0.9, "p_label_noise": eta}],
    )  # fmt: skip
    dm = make_dm(data_dir, construction="reference", data_seed=1, **specs)
    train_rows = read_sst2_tsv(data_dir / "train.tsv", "data.train_file")
    dev_rows = read_sst2_tsv(data_dir / "dev.tsv", "data.dev_file")
    train, dev = released_make_environments(train_rows, dev_rows, 1, [0.2, 0.1], 0.9, eta)
    ours = [dm.splits.train["p0.2"], dm.splits.train["p0.1"], dm.splits.val["p0.2"], dm.splits.val["p0.1"],
            dm.splits.test["p0.9"]]  # fmt: skip
    for (x, y), released in zip(ours, train + dev):
        known = [([t for t in tokens if t not in UNKNOWN], label) for tokens, label in released]
        known = [(tokens, label) for tokens, label in known if tokens]
        assert list(zip(decode(dm, x), y.tolist())) == known
    assert len(dm.splits.train["p0.2"][1]) == len(dm.splits.train["p0.1"][1])  # topped up to equal length
