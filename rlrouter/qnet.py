"""Training-side (torch) twin of :mod:`rlrouter.policy`: the instance-scoring Q-network as an
SB3 policy, a DQN with action-masked exploration and optional Double-DQN targets, its QR-DQN
(sb3-contrib) counterpart with the same trunk and one quantile head per instance slot, and the
export to the numpy policy file. Only training imports this module; serving needs numpy alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
import torch.nn.functional as F
from gymnasium import spaces
from sb3_contrib import QRDQN
from sb3_contrib.qrdqn.policies import QRDQNPolicy
from stable_baselines3 import DQN
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.dqn.policies import DQNPolicy
from torch import nn

from quicgw.core.features import GLOBAL_DIM, INSTANCE_DIM, MAX_INSTANCES
from rlrouter.policy import NumpyQPolicy

NEG = -1e9


class _InstanceScoringNetwork(BasePolicy):
    """The shared layers over every instance slot (see :mod:`rlrouter.policy` for the
    architecture) and a head of ``heads`` outputs per slot: one Q-value (DQN) or the return
    quantiles (QR-DQN). Layers are built in the order l1, l2, out, so a seed gives the same
    initial weights whatever the head."""

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Discrete,
                 features_extractor: nn.Module, features_dim: int, net_arch: list[int] | None,
                 activation_fn: type[nn.Module], normalize_images: bool, heads: int,
                 default_arch: list[int]) -> None:
        super().__init__(observation_space, action_space, features_extractor=features_extractor,
                         normalize_images=normalize_images)
        if action_space.n != MAX_INSTANCES or features_dim != GLOBAL_DIM + MAX_INSTANCES * INSTANCE_DIM:
            raise ValueError(f"{type(self).__name__} needs the shared router observation and "
                             f"actions")
        net_arch = list(net_arch or default_arch)
        if len(net_arch) != 2:
            raise ValueError("net_arch must be [hidden1, hidden2]")
        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.features_dim = features_dim
        h1, h2 = net_arch
        self.l1 = nn.Linear(GLOBAL_DIM + INSTANCE_DIM, h1)
        self.l2 = nn.Linear(2 * h1, h2)
        self.out = nn.Linear(h2, heads)

    def _scores(self, obs: th.Tensor) -> tuple[th.Tensor, th.Tensor]:
        """(head outputs (batch, slots, heads), present (batch, slots))."""
        x = self.extract_features(obs, self.features_extractor)
        g = x[:, :GLOBAL_DIM]
        inst = x[:, GLOBAL_DIM:].reshape(-1, MAX_INSTANCES, INSTANCE_DIM)
        present = inst[..., 0] > 0.5
        xi = th.cat([g.unsqueeze(1).expand(-1, MAX_INSTANCES, -1), inst], dim=-1)
        h = F.relu(self.l1(xi))
        pm = present.unsqueeze(-1).to(h.dtype)
        c = (h * pm).sum(dim=1) / pm.sum(dim=1).clamp(min=1.0)
        z = F.relu(self.l2(th.cat([h, c.unsqueeze(1).expand(-1, MAX_INSTANCES, -1)], dim=-1)))
        return self.out(z), present

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(dict(net_arch=self.net_arch, features_dim=self.features_dim,
                         activation_fn=self.activation_fn,
                         features_extractor=self.features_extractor))
        return data


class InstanceQNetwork(_InstanceScoringNetwork):
    """Scores every instance slot with shared weights; absent slots get -1e9."""

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Discrete,
                 features_extractor: nn.Module, features_dim: int,
                 net_arch: list[int] | None = None, activation_fn: type[nn.Module] = nn.ReLU,
                 normalize_images: bool = True) -> None:
        super().__init__(observation_space, action_space, features_extractor, features_dim,
                         net_arch, activation_fn, normalize_images, heads=1,
                         default_arch=[128, 128])

    def forward(self, obs: th.Tensor) -> th.Tensor:
        q, present = self._scores(obs)
        return q.squeeze(-1).masked_fill(~present, NEG)

    def _predict(self, observation: th.Tensor, deterministic: bool = True) -> th.Tensor:
        return self(observation).argmax(dim=1).reshape(-1)


class InstanceDQNPolicy(DQNPolicy):
    """SB3 DQN policy whose Q-network is :class:`InstanceQNetwork`."""

    def make_q_net(self) -> InstanceQNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return InstanceQNetwork(**net_args).to(self.device)


class InstanceQuantileNetwork(_InstanceScoringNetwork):
    """QR-DQN's quantile network with the instance-scoring layers: each slot gets
    ``n_quantiles`` return quantiles from its own features plus the global ones (shared
    weights); absent slots get -1e9. Output (batch, n_quantiles, slots), as sb3-contrib's
    QuantileNetwork. Its Q-value (the mean of the quantiles) is linear in the last layer, so
    it exports exactly to the numpy policy (:func:`export_numpy`)."""

    def __init__(self, observation_space: spaces.Box, action_space: spaces.Discrete,
                 features_extractor: nn.Module, features_dim: int, n_quantiles: int = 50,
                 net_arch: list[int] | None = None, activation_fn: type[nn.Module] = nn.ReLU,
                 normalize_images: bool = True) -> None:
        self.n_quantiles = n_quantiles
        super().__init__(observation_space, action_space, features_extractor, features_dim,
                         net_arch, activation_fn, normalize_images, heads=n_quantiles,
                         default_arch=[64, 64])

    def forward(self, obs: th.Tensor) -> th.Tensor:
        quantiles, present = self._scores(obs)
        return quantiles.masked_fill(~present.unsqueeze(-1), NEG).permute(0, 2, 1)

    def _predict(self, observation: th.Tensor, deterministic: bool = True) -> th.Tensor:
        return self(observation).mean(dim=1).argmax(dim=1).reshape(-1)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return dict(super()._get_constructor_parameters(), n_quantiles=self.n_quantiles)


class InstanceQRDQNPolicy(QRDQNPolicy):
    """sb3-contrib QR-DQN policy whose quantile network is :class:`InstanceQuantileNetwork`."""

    def make_quantile_net(self) -> InstanceQuantileNetwork:
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        return InstanceQuantileNetwork(**net_args).to(self.device)


def _present(observation: np.ndarray) -> np.ndarray:
    obs = np.asarray(observation).reshape(-1, observation.shape[-1])
    return obs[:, GLOBAL_DIM::INSTANCE_DIM][:, :MAX_INSTANCES] > 0.5


class _MaskedExploration:
    """Epsilon-greedy exploration among the present instances only (the action mask is in the
    observation), for SB3's DQN and sb3-contrib's QR-DQN alike."""

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        if not deterministic and np.random.rand() < self.exploration_rate:
            present = _present(observation)
            action = np.array([np.random.choice(np.flatnonzero(p)) if p.any() else 0
                               for p in present])
            if not self.policy.is_vectorized_observation(observation):
                action = action[0]
            return action, state
        return self.policy.predict(observation, state, episode_start, deterministic)


class RoutingQRDQN(_MaskedExploration, QRDQN):
    """sb3-contrib QR-DQN (Dabney et al. 2018: the return distribution as quantiles, a quantile
    Huber loss) with exploration restricted to present instances."""

    @property
    def value_net(self) -> InstanceQuantileNetwork:
        return self.quantile_net


class RoutingDQN(_MaskedExploration, DQN):
    """SB3 DQN with exploration restricted to present instances and, with ``double_q=True``,
    Double-DQN targets (van Hasselt et al. 2016: the online network picks the next action, the
    target network values it)."""

    def __init__(self, *args: Any, double_q: bool = False, **kwargs: Any) -> None:
        self.double_q = double_q
        super().__init__(*args, **kwargs)

    @property
    def value_net(self) -> InstanceQNetwork:
        return self.q_net

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        if not self.double_q:
            return super().train(gradient_steps, batch_size)
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        losses = []
        for _ in range(gradient_steps):
            data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)
            discounts = data.discounts if data.discounts is not None else self.gamma
            with th.no_grad():
                next_online = self.q_net(data.next_observations)
                next_actions = next_online.argmax(dim=1, keepdim=True)
                next_q = th.gather(self.q_net_target(data.next_observations), 1, next_actions)
                target = data.rewards + (1 - data.dones) * discounts * next_q
            current = th.gather(self.q_net(data.observations), 1, data.actions.long())
            loss = F.smooth_l1_loss(current, target)
            losses.append(loss.item())
            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", float(np.mean(losses)))


def export_numpy(q_net: InstanceQNetwork | InstanceQuantileNetwork,
                 meta: dict | None = None) -> NumpyQPolicy:
    """The numpy twin of a trained Q-network (``x @ W`` convention). A quantile network's
    Q-value is the mean of its quantiles, ``mean_k(w_k . z + b_k) = mean(w) . z + mean(b)``:
    the mean of the head is the exported last layer (for one output it is the layer itself)."""
    def arr(t: th.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    weights = {
        "W1": arr(q_net.l1.weight).T, "b1": arr(q_net.l1.bias),
        "W2": arr(q_net.l2.weight).T, "b2": arr(q_net.l2.bias),
        "w3": arr(q_net.out.weight.mean(dim=0)), "b3": arr(q_net.out.bias.mean().reshape(1)),
    }
    return NumpyQPolicy(weights, meta)
