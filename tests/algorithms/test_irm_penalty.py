import math

import pytest
import torch

from metairm_pl.algorithms.base import accuracy, irm_penalty, risk_function


def test_binary_penalty_equals_hand_computed_value():
    # d/dw mean BCE(w*l, y) at w=1 is mean((sigmoid(l) - y) * l); the penalty is its square.
    logits = torch.tensor([[2.0], [-1.0], [0.5]], dtype=torch.float64)
    y = torch.tensor([1, 1, 0])
    sig = [1 / (1 + math.exp(-v)) for v in (2.0, -1.0, 0.5)]
    grad = ((sig[0] - 1) * 2.0 + (sig[1] - 1) * -1.0 + (sig[2] - 0) * 0.5) / 3
    assert irm_penalty(logits, y, risk_function(2)).item() == pytest.approx(grad**2, rel=1e-12)


def test_multiclass_penalty_uses_one_dummy_scale_per_class():
    # d/dw_c CE(w*l, y) at w=1 is the mean over rows of (softmax(l)_c - onehot_c) * l_c;
    # the penalty is the sum over classes of the squared gradients.
    logits = torch.tensor([[1.0, 0.0, -1.0], [0.2, 0.3, 0.1]], dtype=torch.float64)
    y = torch.tensor([2, 0])
    grads = [0.0, 0.0, 0.0]
    for row, label in zip(logits.tolist(), y.tolist()):
        exps = [math.exp(v) for v in row]
        for c, v in enumerate(row):
            grads[c] += (exps[c] / sum(exps) - (c == label)) * v / 2
    expected = sum(g**2 for g in grads)
    assert irm_penalty(logits, y, risk_function(3)).item() == pytest.approx(expected, rel=1e-12)


def test_penalty_is_differentiable_wrt_logits():
    logits = torch.tensor([[2.0], [-1.0]], dtype=torch.float64, requires_grad=True)
    penalty = irm_penalty(logits, torch.tensor([0, 1]), risk_function(2))
    (grad,) = torch.autograd.grad(penalty, logits)
    eps = 1e-6
    for index in range(2):
        bumped = [logits.detach().clone(), logits.detach().clone()]
        bumped[0][index, 0] += eps
        bumped[1][index, 0] -= eps
        values = [irm_penalty(b, torch.tensor([0, 1]), risk_function(2)).item() for b in bumped]
        assert grad[index, 0].item() == pytest.approx((values[0] - values[1]) / (2 * eps), rel=1e-6)


def test_accuracy_binary_uses_sign_of_logit_and_multiclass_argmax():
    assert accuracy(torch.tensor([[0.3], [-0.2], [0.9], [0.1]]), torch.tensor([1, 1, 1, 0]), 2).item() == 0.5
    logits = torch.tensor([[0.1, 0.5, 0.2], [0.9, 0.0, 0.0], [0.0, 0.0, 1.0]])
    assert accuracy(logits, torch.tensor([1, 0, 0]), 3).item() == pytest.approx(2 / 3)


def test_a_binary_task_on_two_logits_uses_softmax_risk_argmax_accuracy_and_a_1x2_dummy_scale():
    logits = torch.tensor([[2.0, -1.0], [0.5, 1.5], [0.0, 3.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 1])
    risk = risk_function(2, num_outputs=2)
    assert risk(logits, y).item() == pytest.approx(torch.nn.functional.cross_entropy(logits, y).item(), rel=1e-12)
    assert accuracy(logits, y, 2).item() == pytest.approx(2 / 3)
    scale = torch.ones((1, 2), dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(logits * scale, y), [scale])
    assert irm_penalty(logits, y, risk).item() == pytest.approx(grad.pow(2).sum().item(), rel=1e-12)
    assert risk_function(2)(logits[:, :1], y.double()).item() != risk(logits, y).item()  # one-logit default differs
