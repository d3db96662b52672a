"""Random-weight models are built from a seed: the same seed, the same weights."""

from __future__ import annotations

import torch

from trainer.models.components import seeded_modules


def _build(seed: int) -> list[torch.nn.Module]:
    return seeded_modules(seed, lambda: torch.nn.Linear(3, 3), lambda: torch.nn.Linear(3, 3))


def test_each_module_has_its_own_seed_and_the_callers_state_is_kept():
    torch.manual_seed(5)
    expected_next = torch.rand(4)
    torch.manual_seed(5)
    first = _build(0)
    assert torch.equal(torch.rand(4), expected_next)  # building drew nothing from the caller
    torch.rand(100)  # whatever was drawn before, the same seed gives the same weights
    again = _build(0)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a.weight, b.weight)
    # Module i is built right after manual_seed(seed + i): the second module of seed 0 is the
    # first module of seed 1, and the two modules of one seed differ.
    assert torch.equal(first[1].weight, _build(1)[0].weight)
    assert not torch.equal(first[0].weight, first[1].weight)


def test_the_meta_device_gives_shapes_only():
    (module,) = seeded_modules(0, lambda: torch.nn.Linear(3, 2), device=torch.device("meta"))
    assert module.weight.is_meta and tuple(module.weight.shape) == (2, 3)
