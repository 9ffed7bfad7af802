"""Method specs, paired statistics, and the output-targeted schedule search."""

import numpy as np
import pytest
import torch

from bac_ros.bac.baselines import build_schedule
from bac_ros.bac.flops import model_flops
from bac_ros.bac.methods import MethodSpec, parse_method
from bac_ros.bac.search import (
    SearchConfig,
    budget_flops,
    objective_from_observations,
    schedule_cost,
    search_schedule,
)
from bac_ros.engine.testing import make_tiny_policy
from bac_ros.stats import paired_difference


@pytest.mark.parametrize("text, spec", [
    ("full", MethodSpec("full")),
    ("ddim:10", MethodSpec("full", sampler="ddim", num_steps=10)),
    ("bac:10", MethodSpec("bac", 10)),
    ("bac+last:15", MethodSpec("bac", 15, True)),
    ("shared_acs:20", MethodSpec("shared_acs", 20)),
    ("uniform:20", MethodSpec("uniform", 20)),
    ("search:20", MethodSpec("search", 20)),
    ("bac:5@ddim:10", MethodSpec("bac", 5, False, "ddim", 10)),
    ("file:a/b.yaml", MethodSpec("file", path="a/b.yaml")),
])
def test_parse_method_roundtrip(text, spec):
    assert parse_method(text) == spec
    assert parse_method(spec.name) == spec  # the canonical name parses back


@pytest.mark.parametrize("text", ["bac", "bac:0", "bac:x", "foo:3", "uniform+last:10",
                                  "bac:20@ddim:10", "bac:5@dpm:10", "file:", "ddim:0"])
def test_parse_method_rejects_with_help(text):
    with pytest.raises(ValueError, match="method|budget|sampler|K"):
        parse_method(text)


def test_paired_difference_hand_computed():
    """d = [0.1, -0.2, 0.3, 0.0]: mean 0.05, sd sqrt(0.0433..) , se sd/2."""
    a = np.array([0.6, 0.3, 0.9, 0.5])
    b = np.array([0.5, 0.5, 0.6, 0.5])
    r = paired_difference(a, b, n_boot=20000, margin=0.03)
    d = a - b
    assert r["n"] == 4 and r["mean"] == pytest.approx(0.05)
    assert r["sd"] == pytest.approx(np.sqrt(((d - 0.05) ** 2).sum() / 3))
    assert r["se"] == pytest.approx(r["sd"] / 2)
    # Bootstrap means of 4 values lie within [min d, max d] and straddle the mean.
    assert -0.2 <= r["ci95"][0] < 0.05 < r["ci95"][1] <= 0.3
    assert r["noninferior"] is False  # lower end far below -0.03
    big = paired_difference(np.full(400, 0.5) + np.tile([0.01, -0.01], 200), np.full(400, 0.5))
    assert big["noninferior"] and abs(big["ci95"][0]) < 0.002
    with pytest.raises(ValueError):
        paired_difference([1, 2], [1])


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    p = make_tiny_policy("lowdim", num_inference_steps=12, scheduler="ddpm")
    obs = [{k: torch.randn(1, p.config.n_obs_steps, *s.shape).numpy()
            for k, s in p.config.shape_meta.obs.items()} for _ in range(3)]
    return p, obs


@pytest.mark.parametrize("budget", [3, 5])
def test_search_within_budget_and_never_worse(tiny, budget):
    p, obs = tiny
    blocks, (per_block, _) = p.model.blocks(), model_flops(p.model)
    objective = objective_from_observations(p, obs, [0, 1])
    start = build_schedule("uniform", blocks, 12, budget, p.fingerprint, "ddpm")
    found, log = search_schedule(start, blocks, objective, per_block,
                                 SearchConfig(budget=budget, max_evals=40), progress=False)
    assert schedule_cost(found.update_steps, per_block) <= budget_flops(budget, per_block)
    assert objective(found) <= objective(start) + 1e-12
    assert log["final_error"] <= log["start_error"] and log["evaluations"] <= 40
    assert found.method == "search" and all(s[0] == 0 for s in found.update_steps)
    full = build_schedule("full", blocks, 12, 12, p.fingerprint, "ddpm")
    assert objective(full) == 0.0  # full compute reproduces the reference exactly


def test_search_refuses_a_start_over_budget(tiny):
    p, obs = tiny
    blocks, (per_block, _) = p.model.blocks(), model_flops(p.model)
    objective = objective_from_observations(p, obs[:1], [0])
    start = build_schedule("uniform", blocks, 12, 6, p.fingerprint, "ddpm")
    with pytest.raises(ValueError, match="budget"):
        search_schedule(start, blocks, objective, per_block, SearchConfig(budget=3),
                        progress=False)


def test_unpaired_difference():
    from bac_ros.stats import unpaired_difference

    a, b = np.array([0.5, 0.7, 0.6]), np.array([0.4, 0.5, 0.6, 0.5])
    r = unpaired_difference(a, b, margin=0.03)
    assert r["mean"] == pytest.approx(0.6 - 0.5) and r["n"] == 3 and r["n_reference"] == 4
    assert r["se"] == pytest.approx(np.sqrt(a.var(ddof=1) / 3 + b.var(ddof=1) / 4))
    assert r["ci95"][0] < 0.1 < r["ci95"][1]
