"""The Gymnasium environment ``rlrouter/LLMRouting-v0``.

One step routes one request: the observation is the shared router observation
(:func:`quicgw.core.features.observation`, the same function the gateway's ``dqn`` router
calls), the action is an instance slot (``Discrete(MAX_INSTANCES)``; ``info["action_mask"]``
marks the routable ones), the reward is the simulator's (:mod:`rlrouter.sim`: rewards of an
episode sum to its weighted score). All randomness (cluster draw, workload, sizes) comes from
``self.np_random``.

Options go through ``gymnasium.make("rlrouter/LLMRouting-v0", config={...})``; see
:class:`EnvConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from quicgw.core.features import (
    MAX_INSTANCES,
    OBS_DIM,
    OBS_HIGH,
    OBS_LOW,
    REQ_BUFFER_LEN,
    observation,
)
from rlrouter.cluster import build_instances, cluster_specs, random_cluster
from rlrouter.routers import SlackFitRouter
from rlrouter.sim import REWARDS, Simulator
from rlrouter.workloads import WORKLOADS, make_workload, nominal_capacity_rps

ENV_ID = "rlrouter/LLMRouting-v0"


@dataclass(slots=True)
class EnvConfig:
    """Environment options (pass as a dict: ``config={"cluster": "random", ...}``)."""

    # A name in rlrouter.cluster.CLUSTERS, a spec string, "random", or a list of those (one is
    # drawn per episode).
    cluster: str | list[str] = "poster"
    cluster_size: tuple[int, int] = (2, MAX_INSTANCES)  # instance count range for "random"
    workload: str = "mixed"  # stable | unpredictable | trace | mixed (stable or unpredictable)
    trace: str | None = None  # CSV for the trace workload
    duration_s: float = 300.0  # simulated seconds of arrivals generated per episode
    load_scale: float | tuple[float, float] = 1.0  # rate multiplier (or a range drawn per episode)
    max_steps: int = 4096  # truncate the episode after this many decisions (0: run to the end)
    warmup_s: float = 10.0  # a slack-fit router serves this long before the agent takes over
    reward: str = "shaped"  # shaped | completion (see rlrouter.sim)
    reward_scale: float = 1.0
    engine_policy: str = "priority"  # the engines' admission order: priority | fcfs
    network: dict | None = None  # network stage options (rlrouter.network.NetworkConfig)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, config: dict | EnvConfig | None) -> EnvConfig:
        if config is None:
            return cls()
        if isinstance(config, EnvConfig):
            return config
        known = {f.name for f in fields(cls)}
        unknown = set(config) - known
        if unknown:
            raise ValueError(f"unknown env config keys {sorted(unknown)} (known: {sorted(known)})")
        cfg = cls(**config)
        if cfg.workload not in (*WORKLOADS, "mixed"):
            raise ValueError(f"unknown workload {cfg.workload!r}")
        if cfg.reward not in REWARDS:
            raise ValueError(f"unknown reward {cfg.reward!r} (choose from {REWARDS})")
        if isinstance(cfg.cluster_size, list):
            cfg.cluster_size = tuple(cfg.cluster_size)
        if isinstance(cfg.load_scale, list):
            cfg.load_scale = tuple(cfg.load_scale)
        return cfg


class LLMRoutingEnv(gym.Env):
    metadata = {"render_modes": []}

    # The spaces are fixed by the shared feature layout, whatever the cluster.
    observation_space = spaces.Box(OBS_LOW, OBS_HIGH, shape=(OBS_DIM,), dtype=np.float32)
    action_space = spaces.Discrete(MAX_INSTANCES)

    def __init__(self, config: dict | EnvConfig | None = None, render_mode: str | None = None) -> None:
        super().__init__()
        self.config = EnvConfig.from_dict(config)
        self.render_mode = render_mode
        self.observation_space = LLMRoutingEnv.observation_space
        self.action_space = LLMRoutingEnv.action_space
        self.sim: Simulator | None = None
        choices = [self.config.cluster] if isinstance(self.config.cluster, str) else list(
            self.config.cluster)
        if not choices:
            raise ValueError("cluster: give at least one cluster")
        # None stands for "random"; fixed clusters are built once.
        self._clusters = [None if c == "random" else build_instances(cluster_specs(c))
                          for c in choices]
        self._mask = np.zeros(MAX_INSTANCES, dtype=bool)
        self._valid: list[int] = []
        self._steps = 0
        self._last_obs = np.zeros(OBS_DIM, dtype=np.float32)
        self._req = np.zeros(REQ_BUFFER_LEN)  # observation()'s scratch buffer

    # -- gym api -------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        cfg = self.config
        pick = 0 if len(self._clusters) == 1 else int(rng.integers(len(self._clusters)))
        instances = self._clusters[pick]
        if instances is None:
            lo, hi = cfg.cluster_size
            instances = build_instances(random_cluster(rng, lo, hi))
        kind = cfg.workload
        if kind == "mixed":
            kind = ("stable", "unpredictable")[int(rng.integers(2))]
        scale = cfg.load_scale
        if isinstance(scale, tuple):
            scale = float(rng.uniform(*scale))
        cap = nominal_capacity_rps(instances)
        arrivals = make_workload(kind, rng, cfg.duration_s, cap, trace=cfg.trace, load_scale=scale)
        network = None
        if cfg.network is not None:
            from rlrouter.network import NetworkStage
            network = NetworkStage.from_config(cfg.network, rng)
        self.sim = Simulator(instances, arrivals, reward=cfg.reward,
                             engine_policy=cfg.engine_policy, network=network)
        if cfg.warmup_s > 0:
            warm = SlackFitRouter(margin=0.5)
            sim = self.sim
            while not sim.done and sim.now < cfg.warmup_s:
                sim.route(warm.route(sim.request, sim.view))
        self._mask = np.zeros(MAX_INSTANCES, dtype=bool)
        self._mask[:len(instances)] = True
        self._valid = list(range(len(instances)))
        self._steps = 0
        self._workload = kind
        self._scale = scale
        if self.sim.done:  # an empty workload: nothing to route
            return self._last_obs.copy(), self._info()
        obs = observation(self.sim.request, self.sim.view, self._req)
        self._last_obs = obs
        return obs, self._info()

    def step(self, action):
        sim = self.sim
        if sim is None or sim.request is None:
            raise RuntimeError("call reset() first: the episode is over")
        a = int(action)
        valid = self._valid  # slots 0..n-1, the ones the mask marks
        if not 0 <= a < len(valid):
            # An absent slot (random exploration without the mask): the valid slot at a % n.
            a = valid[a % len(valid)]
        cfg = self.config
        reward = sim.route(a) * cfg.reward_scale
        self._steps += 1
        terminated = sim.request is None
        truncated = not terminated and cfg.max_steps > 0 and self._steps >= cfg.max_steps
        if terminated:
            obs = self._last_obs
        else:
            obs = self._last_obs = observation(sim.request, sim.view, self._req)
        info = {"action_mask": self._mask.copy()}  # fresh per call (gymnasium's checker)
        if terminated or truncated:
            info["score"] = sim.board.score
            info["requests"] = self._steps
            info["workload"] = self._workload
            info["load_scale"] = self._scale
        return obs, float(reward), terminated, truncated, info

    def action_masks(self) -> np.ndarray:
        """The mask, for sb3-contrib's MaskablePPO and friends."""
        return self._mask.copy()

    def _info(self) -> dict[str, Any]:
        return {"action_mask": self._mask.copy()}  # fresh per call (gymnasium's checker)
