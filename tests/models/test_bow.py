"""BagOfWordsMLP: forward = hand-computed bag mean through the MLP; the embedding stays frozen."""

from __future__ import annotations

import pytest
import torch
from torch.func import functional_call

from metairm_pl.algorithms.inner_loop import adapt
from metairm_pl.errors import ConfigError
from metairm_pl.models.bow import BagOfWordsMLP

# row 0 is padding: its (non-zero) value must never enter a mean
EMBEDDINGS = torch.tensor([[9.0, 9.0], [1.0, 2.0], [3.0, -1.0], [5.0, 5.0]])
X = torch.tensor([[1, 2, 0], [3, 0, 0], [1, 1, 3], [0, 0, 0]])


def make_model(**kw) -> BagOfWordsMLP:
    args = dict(input_shape=(3,), num_outputs=1, embeddings=EMBEDDINGS, hidden_dim=2)
    args.update(kw)
    return BagOfWordsMLP(**args)


def set_weights(model: BagOfWordsMLP) -> None:
    first, last = model.head.layers[0], model.head.layers[2]
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, -1.0], [0.5, 1.0]]))
        first.bias.copy_(torch.tensor([0.0, -1.0]))
        last.weight.copy_(torch.tensor([[1.0, 2.0]]))
        last.bias.copy_(torch.tensor([0.5]))


def by_hand(mean: tuple[float, float]) -> float:
    a, b = mean
    h1, h2 = max(a - b, 0.0), max(0.5 * a + b - 1.0, 0.0)
    return h1 + 2.0 * h2 + 0.5


def test_forward_is_the_mlp_of_the_mean_of_the_non_padding_rows():
    model = make_model()
    set_weights(model)
    means = [(2.0, 0.5), (5.0, 5.0), (7.0 / 3.0, 3.0), (0.0, 0.0)]  # the last row is all padding
    assert torch.allclose(model.bag_means(X), torch.tensor(means))
    assert torch.allclose(model(X).squeeze(1), torch.tensor([by_hand(m) for m in means]))


def test_embeddings_are_frozen_and_not_parameters():
    model = make_model()
    model(X).sum().backward()
    assert not model.embeddings.requires_grad and model.embeddings.grad is None
    assert torch.equal(model.embeddings, EMBEDDINGS)
    assert all(p.grad is not None for p in model.parameters())
    assert sum(p.numel() for p in model.parameters()) == (2 * 2 + 2) + (2 + 1)
    assert "embeddings" in model.state_dict()


def test_works_with_the_functional_meta_irm_inner_loop():
    model = make_model()
    set_weights(model)  # both hidden units active on some rows: every parameter gets a gradient
    params = dict(model.named_parameters())
    assert torch.equal(functional_call(model, params, (X,)), model(X))
    y = torch.tensor([1.0, 0.0, 1.0, 0.0])

    def risk(logits, target):
        return torch.nn.functional.binary_cross_entropy_with_logits(logits.squeeze(1), target)

    adapted = adapt(model, params, X, y, risk, inner_lr=0.1)
    assert set(adapted) == set(params)
    assert all(not torch.equal(adapted[name], params[name]) for name in params)


def test_hidden_width_defaults_to_the_embedding_dimension():
    model = make_model(hidden_dim=None, n_hidden_layers=2)
    assert model.embedding_dim == 2
    assert [layer.out_features for layer in model.head.layers if hasattr(layer, "out_features")] == [2, 2, 1]


@pytest.mark.parametrize(
    "kw, pattern",
    [
        (dict(embeddings=None), "needs the embedding table"),
        (dict(grayscale=True), "data=psst2_grayscale"),
        (dict(input_shape=(2, 14, 14)), r"token ids of shape \(max_len,\)"),
        (dict(embeddings=torch.zeros(5)), "not allowed"),
    ],
)
def test_bad_arguments_are_config_errors(kw, pattern):
    with pytest.raises(ConfigError, match=pattern):
        make_model(**kw)
