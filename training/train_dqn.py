"""Train the routing Q-network with Stable-Baselines3 and export it to numpy.

    nice -n 10 .venv/bin/python training/train_dqn.py --seeds 0 1 2
    nice -n 10 .venv/bin/python training/train_dqn.py --algo ddqn --n-timesteps 50000 --seeds 0

Hyperparameters come from ``training/hyperparams/<algo>.yml`` (rl-baselines3-zoo layout: one
entry per env id; ``policy_kwargs`` as a Python expression string). For each seed the script
writes, under ``--out-dir/<algo>/seed<k>/``: TensorBoard logs, the final SB3 model, the
validation history (JSON) and ``policy.npz`` (the checkpoint with the best validation score,
exported to numpy). Validation runs the exported policy in the simulator on the poster cluster,
both workloads, on validation seeds (disjoint from training and from the test seeds
``training/evaluate.py`` reports). ``--ship`` copies each seed's policy into
``rlrouter/policies/`` (``dqn_seed<k>.npz``; ``dqn.npz`` is the seed with the best validation
score).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch as th
import yaml

th.set_num_threads(1)

import gymnasium as gym  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.monitor import Monitor  # noqa: E402
from stable_baselines3.common.utils import set_random_seed  # noqa: E402

import rlrouter  # noqa: E402,F401  (registers the env)
from rlrouter.env import ENV_ID  # noqa: E402
from rlrouter.evaluation import VALIDATION_SEEDS, Scenario, evaluate, mean_score  # noqa: E402
from rlrouter.policy import NumpyQPolicy  # noqa: E402
from rlrouter.qnet import (  # noqa: E402
    InstanceDQNPolicy,
    InstanceQRDQNPolicy,
    RoutingDQN,
    RoutingQRDQN,
    export_numpy,
)
from rlrouter.routers import DQNRouter  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
HYPERPARAMS = Path(__file__).resolve().parent / "hyperparams"
ALGOS = ("dqn", "ddqn", "qrdqn")
POLICY_DIR = ROOT / "rlrouter" / "policies"


def load_hyperparams(path: Path) -> dict:
    with path.open() as f:
        data = yaml.safe_load(f)
    if ENV_ID not in data:
        raise SystemExit(f"{path}: no entry for {ENV_ID}")
    hp = dict(data[ENV_ID])
    lr = hp.get("learning_rate")
    if isinstance(lr, str) and lr.startswith("lin_"):  # rl-zoo convention: linear decay to 0
        start = float(lr[4:])
        hp["learning_rate"] = lambda progress_remaining: progress_remaining * start
    if isinstance(hp.get("policy_kwargs"), str):
        import torch.nn as nn  # noqa: F401  (for expressions like activation_fn=nn.ReLU)
        hp["policy_kwargs"] = eval(hp["policy_kwargs"])  # rl-zoo convention
    return hp


class ValidationCallback(BaseCallback):
    """Every ``eval_freq`` steps: export the Q-network, run it in the simulator on the
    validation seeds of both workloads, log the scores, keep the best as ``policy.npz``."""

    def __init__(self, eval_freq: int, out_dir: Path, meta: dict, duration_s: float = 150.0,
                 seeds: tuple[int, ...] = VALIDATION_SEEDS) -> None:
        super().__init__()
        self.eval_freq = eval_freq
        self.out_dir = out_dir
        self.meta = meta
        self.scenarios = {w: Scenario("poster", w, duration_s) for w in ("stable", "unpredictable")}
        self.seeds = seeds
        self.best = -np.inf
        self.history: list[dict] = []

    def _on_step(self) -> bool:
        if self.n_calls % self.eval_freq == 0:
            self.validate()
        return True

    def _on_training_end(self) -> None:
        self.validate()

    def validate(self) -> None:
        t0 = time.perf_counter()
        policy = export_numpy(self.model.value_net,
                              dict(self.meta, timesteps=self.num_timesteps))
        scores = {w: mean_score(evaluate(lambda: DQNRouter(policy), sc, self.seeds))
                  for w, sc in self.scenarios.items()}
        mean = float(np.mean(list(scores.values())))
        for w, s in scores.items():
            self.logger.record(f"validation/score_{w}", s)
        self.logger.record("validation/score_mean", mean)
        self.history.append({"timesteps": self.num_timesteps, **scores, "mean": mean,
                             "seconds": time.perf_counter() - t0})
        if mean > self.best:
            self.best = mean
            policy.meta["validation"] = scores
            policy.save(self.out_dir / "policy.npz")
        (self.out_dir / "validation.json").write_text(json.dumps(self.history, indent=1))
        if self.verbose:
            print(f"validation @ {self.num_timesteps}: {scores} (best mean {self.best:.4f})")


def make_model(algo: str, hp: dict, env, seed: int, tb_dir: Path | None):
    common = {k: hp[k] for k in (
        "learning_rate", "buffer_size", "learning_starts", "batch_size", "gamma", "train_freq",
        "gradient_steps", "target_update_interval", "exploration_fraction",
        "exploration_initial_eps", "exploration_final_eps", "max_grad_norm") if k in hp}
    if "n_steps" in hp:
        common["n_steps"] = hp["n_steps"]
    kwargs = dict(policy_kwargs=hp.get("policy_kwargs", {}), seed=seed, verbose=0,
                  tensorboard_log=str(tb_dir) if tb_dir else None, device="cpu")
    if algo in ("dqn", "ddqn"):
        return RoutingDQN(InstanceDQNPolicy, env, double_q=(algo == "ddqn"), **common, **kwargs)
    if algo == "qrdqn":
        if "n_quantiles" in hp:  # else InstanceQuantileNetwork's default
            kwargs["policy_kwargs"] = dict(kwargs["policy_kwargs"],
                                           n_quantiles=int(hp["n_quantiles"]))
        return RoutingQRDQN(InstanceQRDQNPolicy, env, **common, **kwargs)
    raise SystemExit(f"unknown algo {algo!r} ({' | '.join(ALGOS)})")


def train_seed(algo: str, hp: dict, seed: int, out_root: Path, n_timesteps: int,
               progress: bool) -> dict:
    out_dir = out_root / algo / f"seed{seed}"
    out_dir.mkdir(parents=True, exist_ok=True)
    set_random_seed(seed)
    env_kwargs = hp.get("env_kwargs", {})
    env = Monitor(gym.make(ENV_ID, **env_kwargs))
    model = make_model(algo, hp, env, seed, out_dir / "tb")
    meta = {"algo": algo, "seed": seed, "hyperparams": {k: v for k, v in hp.items()
                                                          if k not in ("policy_kwargs",
                                                                       "learning_rate")},
            "net_arch": hp.get("policy_kwargs", {}).get("net_arch")}
    cb = ValidationCallback(int(hp.get("eval_freq", 20000)), out_dir, meta)
    cb.verbose = 1
    t0 = time.perf_counter()
    model.learn(total_timesteps=n_timesteps, callback=cb, progress_bar=progress,
                tb_log_name=f"{algo}_seed{seed}")
    seconds = time.perf_counter() - t0
    model.save(out_dir / "model")
    summary = {"seed": seed, "algo": algo, "timesteps": n_timesteps, "train_seconds": seconds,
               "best_validation": cb.best, "history": cb.history}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    env.close()
    return summary


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algo", default=None, choices=ALGOS,
                    help="dqn, ddqn (Double DQN) or qrdqn (QR-DQN, sb3-contrib); default: the "
                         "YAML's algo")
    ap.add_argument("--hyperparams", type=Path, default=None,
                    help="YAML file (default: training/hyperparams/dqn.yml)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-timesteps", type=int, default=None, help="override n_timesteps")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "runs")
    ap.add_argument("--ship", action="store_true",
                    help="copy the policies into rlrouter/policies/ (dqn_seed<k>.npz, dqn.npz)")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    hp = load_hyperparams(args.hyperparams or HYPERPARAMS / "dqn.yml")
    algo = args.algo or hp.get("algo", "dqn")
    n = int(args.n_timesteps or hp["n_timesteps"])
    summaries = []
    for seed in args.seeds:
        print(f"== {algo} seed {seed}: {n} steps", flush=True)
        summaries.append(train_seed(algo, hp, seed, args.out_dir, n, not args.no_progress))
        print(f"   best validation {summaries[-1]['best_validation']:.4f} "
              f"({summaries[-1]['train_seconds']:.0f} s)", flush=True)
    if args.ship:
        POLICY_DIR.mkdir(parents=True, exist_ok=True)
        best = max(summaries, key=lambda s: s["best_validation"])
        for s in summaries:
            src = args.out_dir / algo / f"seed{s['seed']}" / "policy.npz"
            NumpyQPolicy.load(src)  # validate before shipping
            shutil.copy(src, POLICY_DIR / f"dqn_seed{s['seed']}.npz")
        shutil.copy(args.out_dir / algo / f"seed{best['seed']}" / "policy.npz",
                    POLICY_DIR / "dqn.npz")
        print(f"shipped {len(summaries)} policies to {POLICY_DIR} (dqn.npz = seed {best['seed']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
