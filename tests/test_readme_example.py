"""The README's "Adding a method" example is a real method: built and run as written."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

from metairm_pl.models.mlp import MLP
from metairm_pl.run import train

ROOT = Path(__file__).resolve().parents[1]


def readme_example_source() -> str:
    """The Python block of the README's "Adding a method or a dataset" section."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Adding a method or a dataset") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.fixture
def readme_module(tmp_path, monkeypatch):
    """The README's code as a module of its own, importable by Hydra's ``_target_``."""
    (tmp_path / "readme_method.py").write_text(readme_example_source())
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = importlib.util.spec_from_file_location("readme_method", tmp_path / "readme_method.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "readme_method", module)
    spec.loader.exec_module(module)
    return module


def test_the_example_takes_exponentiated_gradient_steps_on_a_buffer(readme_module):
    network = MLP(input_shape=(4,), num_outputs=1, hidden_dim=3)
    method = readme_module.GroupDRO(network, optimizer=lambda params: torch.optim.SGD(params, lr=0.1), eta=0.5)
    method.setup_environments(["a", "b", "c"])
    assert "q" in dict(method.named_buffers()) and torch.equal(method.q, torch.full((3,), 1 / 3))
    generator = torch.Generator().manual_seed(0)
    batch = {
        e: (torch.randn(16, 4, generator=generator), torch.randint(0, 2, (16,), generator=generator)) for e in "abc"
    }
    for _ in range(2):  # two steps of q: q_t ∝ q_{t-1} · exp(eta · R_e), by hand
        q_before = method.q.clone()
        objective = method.objective(batch)
        risks = torch.stack([method.risk_fn(network(x), y) for x, y in batch.values()]).detach()
        expected_q = q_before * torch.exp(0.5 * risks)
        expected_q /= expected_q.sum()
        torch.testing.assert_close(method.q, expected_q, rtol=0, atol=1e-7)
        torch.testing.assert_close(objective.risk, (expected_q * risks).sum(), rtol=1e-6, atol=0)
    assert objective.risk.requires_grad and objective.penalty is None


def test_the_example_trains_through_train_py_and_its_checkpoint_holds_q(readme_module, make_config):
    cfg = make_config(
        ["data=synthetic", "algorithm=erm", "algorithm._target_=readme_method.GroupDRO", "algorithm.name=readme_dro",
         "+algorithm.eta=0.2", "model.hidden_dim=8", "trainer.max_steps=6", "trainer.val_check_interval=3"]
    )  # fmt: skip
    final = train(cfg)
    assert final["status"] == "done" and final["algorithm"] == "readme_dro"
    checkpoint = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "final.ckpt", weights_only=True)
    q = checkpoint["state_dict"]["q"]
    assert q.shape == (2,) and torch.isclose(q.sum(), torch.tensor(1.0)) and not torch.equal(q, torch.full((2,), 0.5))


def test_the_example_is_algorithms_group_dro_step_for_step(readme_module):
    """The README's class and algorithms/group_dro.py (which adds docstrings and a check of eta)
    give the same q and risk at every step."""
    from metairm_pl.algorithms.group_dro import GroupDRO

    generator = torch.Generator().manual_seed(1)
    batches = [
        {e: (torch.randn(32, 4, generator=generator), torch.randint(0, 2, (32,), generator=generator)) for e in "ab"}
        for _ in range(3)
    ]
    methods = []
    for cls in (readme_module.GroupDRO, GroupDRO):
        torch.manual_seed(0)
        method = cls(MLP(input_shape=(4,), num_outputs=1, hidden_dim=3), optimizer=None, eta=0.3)
        method.setup_environments(["a", "b"])
        methods.append(method)
    for batch in batches:
        risks = [method.objective(batch).risk for method in methods]
        assert torch.equal(risks[0], risks[1]) and torch.equal(methods[0].q, methods[1].q)
    assert (readme_module.GroupDRO.name, readme_module.GroupDRO.label) == (GroupDRO.name, GroupDRO.label)
