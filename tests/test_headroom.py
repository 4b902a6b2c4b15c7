"""training/headroom.py: the rollout router's machinery (forks, horizons, both flavours) on
short runs. With one instance there is no choice, so the rollout router must score exactly
what its base scores: any state a rollout's fork shared with the run and wrote would show as a
difference. On a real cluster it must finish the run with a valid score."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from rlrouter.evaluation import Scenario
from rlrouter.routers import baseline_routers

_spec = importlib.util.spec_from_file_location(
    "training_headroom", Path(__file__).resolve().parents[1] / "training" / "headroom.py")
headroom = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = headroom
_spec.loader.exec_module(headroom)


@pytest.mark.parametrize("sampled", [False, True])
def test_single_instance_rollout_equals_its_base(sampled):
    sc = Scenario("medium@a100-80gb", "stable", 8.0)
    base = sc.run(baseline_routers()["slackfit-reserve"], 500).score
    rng = np.random.default_rng(1) if sampled else None
    got = headroom.rollout_run(sc, 500, "slackfit-reserve", 1.0, 2, rng)
    assert got == pytest.approx(base, abs=1e-12)


def test_clairvoyant_rollout_on_the_poster_cluster_is_a_score():
    sc = Scenario("poster", "unpredictable", 5.0)
    got = headroom.rollout_run(sc, 500, "slackfit-reserve", 1.0, 1, None)
    assert 0.0 < got <= 1.0


def test_cli_needs_something_to_run(capsys):
    with pytest.raises(SystemExit) as e:
        headroom.main(["--no-clairvoyant", "--no-sampled"])
    assert e.value.code == 2
    assert "nothing to run" in capsys.readouterr().err
