"""The exported routing policy: numpy weights and a torch-free forward pass.

Architecture (shared weights over instance slots, so one policy serves any cluster of up to
``MAX_INSTANCES`` instances; see :mod:`rlrouter.qnet` for the torch twin used in training)::

    x_i = [global features, features of instance i]          for each present instance i
    h_i = relu(W1 x_i + b1)
    c   = mean of h_i over present instances                  (what the other instances offer)
    z_i = relu(W2 [h_i, c] + b2)
    Q_i = w3 . z_i + b3                                       absent instances: -inf

The file is a ``.npz`` with arrays ``W1 b1 W2 b2 w3 b3`` (float32, ``x @ W`` convention) and a
``meta`` JSON string (training config, feature layout sizes) checked at load time.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from quicgw.core.features import GLOBAL_DIM, INSTANCE_DIM, MAX_INSTANCES

POLICY_DIR = "policies"
DEFAULT_POLICY = "dqn.npz"
NEG = np.float32(-1e9)
_add, _maximum = np.add, np.maximum
_ZERO = np.zeros((), np.float32)  # relu's 0 as an array: no scalar conversion per call


class NumpyQPolicy:
    """Torch-free forward pass of the instance-scoring Q-network."""

    def __init__(self, weights: dict[str, np.ndarray], meta: dict | None = None) -> None:
        self.W1 = np.ascontiguousarray(weights["W1"], dtype=np.float32)
        self.b1 = np.ascontiguousarray(weights["b1"], dtype=np.float32)
        self.W2 = np.ascontiguousarray(weights["W2"], dtype=np.float32)
        self.b2 = np.ascontiguousarray(weights["b2"], dtype=np.float32)
        self.w3 = np.ascontiguousarray(weights["w3"], dtype=np.float32).reshape(-1)
        self.b3 = float(np.asarray(weights["b3"]).reshape(-1)[0])
        self.meta = meta or {}
        if self.W1.shape[0] != GLOBAL_DIM + INSTANCE_DIM:
            raise ValueError(
                f"policy expects {self.W1.shape[0] - INSTANCE_DIM} global + {INSTANCE_DIM} "
                f"instance features; this build has {GLOBAL_DIM} + {INSTANCE_DIM}")
        h = self.W1.shape[1]
        self._h2 = self.W2.shape[1]
        # Split W1 so the global part is computed once per decision.
        self._W1g = np.ascontiguousarray(self.W1[:GLOBAL_DIM])
        self._W1i = np.ascontiguousarray(self.W1[GLOBAL_DIM:])
        self._W2h = np.ascontiguousarray(self.W2[:h])
        self._W2c = np.ascontiguousarray(self.W2[h:])
        # Fast path (every slot up to n present). Biases ride on the "present" feature, which
        # is exactly 1: b1 joins its row of W1, and an extra hidden unit that is always 1
        # carries b2 into the second layer; W2c / n turns the mean pooling into a matmul and
        # a column sum. 10 numpy calls per decision.
        self._W1i_b = np.zeros((INSTANCE_DIM, h + 1), dtype=np.float32)
        self._W1i_b[:, :h] = self._W1i
        self._W1i_b[0, :h] += self.b1
        self._W1i_b[0, h] = 1.0
        self._W1g_b = np.zeros((GLOBAL_DIM, h + 1), dtype=np.float32)
        self._W1g_b[:, :h] = self._W1g
        self._W2h_b = np.concatenate([self._W2h, self.b2[None, :]], axis=0)
        self._W2c_b = np.concatenate([self._W2c, np.zeros((1, self._h2), np.float32)], axis=0)
        # Per slot count n: the pooling weights divided by n and preallocated buffers for every
        # intermediate (`out=` everywhere: no allocation per decision). Reused across calls, so
        # one policy object must not run two forward passes at once (threads).
        self._work: dict[int, tuple[np.ndarray, ...]] = {}

    # -- io ------------------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path | None = None) -> NumpyQPolicy:
        """Load a policy file; ``None`` loads the policy shipped in the package."""
        if path is None:
            ref = resources.files("rlrouter").joinpath(POLICY_DIR, DEFAULT_POLICY)
            with resources.as_file(ref) as p:
                return cls.load(p)
        with np.load(Path(path), allow_pickle=False) as z:
            weights = {k: z[k] for k in ("W1", "b1", "W2", "b2", "w3", "b3")}
            meta = json.loads(str(z["meta"])) if "meta" in z.files else {}
        return cls(weights, meta)

    def save(self, path: str | Path) -> None:
        np.savez(Path(path), W1=self.W1, b1=self.b1, W2=self.W2, b2=self.b2, w3=self.w3,
                 b3=np.asarray([self.b3], dtype=np.float32), meta=np.asarray(json.dumps(self.meta)))

    # -- forward -------------------------------------------------------------------------------
    def q_values(self, obs: np.ndarray, n: int = MAX_INSTANCES) -> np.ndarray:
        """Q-values of the first ``n`` instance slots of one flat observation (absent: -1e9)."""
        if obs.dtype != np.float32:  # the observation's own dtype (the buffers are float32)
            obs = obs.astype(np.float32)
        x = obs[GLOBAL_DIM:GLOBAL_DIM + n * INSTANCE_DIM].reshape(n, INSTANCE_DIM)
        if n and x[:, 0].min() > 0.5:
            return self.q_all_present(obs[:GLOBAL_DIM], x) + self.b3
        return self._q_masked(obs, n)

    def _workspace(self, n: int) -> tuple[np.ndarray, ...]:
        h1, h2 = self._W1i_b.shape[1], self._h2
        ws = (self._W1i_b, self._W1g_b, self._W2h_b,
              np.ascontiguousarray(self._W2c_b / np.float32(n)),  # mean pooling: / n up front
              self.w3, np.ones(n, np.float32),
              np.empty((n, h1), np.float32), np.empty(h1, np.float32),
              np.empty((n, h2), np.float32), np.empty((n, h2), np.float32),
              np.empty(h2, np.float32), np.empty(n, np.float32))
        self._work[n] = ws
        return ws

    def q_all_present(self, g: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Q-values without b3 (a constant; the decision skips it) when every slot of ``x`` is
        present, from views of one observation: the global features ``g`` and the
        (n, INSTANCE_DIM) slot block ``x`` (float32). 10 numpy calls on contiguous buffers, no
        allocation; the result is a buffer that the next call overwrites."""
        n = len(x)
        ws = self._work.get(n) or self._workspace(n)
        w1i, w1g, w2h, w2c, w3, ones, h, gw, z, c, csum, q = ws
        # `out` positional where numpy allows it (cheaper than the keyword).
        x.dot(w1i, h)
        g.dot(w1g, gw)
        _add(h, gw, h)
        _maximum(h, _ZERO, out=h)
        h.dot(w2h, z)
        h.dot(w2c, c)
        # The mean over instances (w2c is pre-divided by n): the column sum of c, as a
        # matrix-vector product (cheaper than add.reduce, and the same sequential sum: tested).
        ones.dot(c, csum)
        _add(z, csum, z)
        _maximum(z, _ZERO, out=z)
        z.dot(w3, q)
        return q

    def best(self, obs: np.ndarray, n: int, all_present: bool | None = None) -> int:
        """The argmax slot among the first ``n`` (the router's hot path); ``all_present``
        (when the caller knows every slot is routable) skips the check."""
        if obs.dtype != np.float32:
            obs = obs.astype(np.float32)
        x = obs[GLOBAL_DIM:GLOBAL_DIM + n * INSTANCE_DIM].reshape(n, INSTANCE_DIM)
        if all_present or (all_present is None and x[:, 0].min() > 0.5):
            return int(self.q_all_present(obs[:GLOBAL_DIM], x).argmax())
        q = self._q_masked(obs, n)
        return -1 if q.max() <= NEG else int(q.argmax())

    def _q_masked(self, obs: np.ndarray, n: int) -> np.ndarray:
        g = obs[:GLOBAL_DIM]
        x = obs[GLOBAL_DIM:GLOBAL_DIM + n * INSTANCE_DIM].reshape(n, INSTANCE_DIM)
        present = x[:, 0] > 0.5
        h = x @ self._W1i
        h += g @ self._W1g + self.b1
        np.maximum(h, 0.0, out=h)
        cnt = present.sum()
        c = (h[present].sum(axis=0) / cnt) if cnt else np.zeros(h.shape[1], np.float32)
        z = h @ self._W2h
        z += c @ self._W2c + self.b2
        np.maximum(z, 0.0, out=z)
        q = z @ self.w3 + self.b3
        q[~present] = NEG
        return q

    def act(self, obs: np.ndarray, n: int = MAX_INSTANCES, mask: np.ndarray | None = None) -> int:
        q = self.q_values(obs, n)
        if mask is not None:
            q = np.where(mask[:n], q, NEG)
        return int(np.argmax(q))

    def q_values_batch(self, obs: np.ndarray) -> np.ndarray:
        """Q-values for a batch of flat observations, shape (batch, MAX_INSTANCES)."""
        g = obs[:, :GLOBAL_DIM]
        x = obs[:, GLOBAL_DIM:].reshape(len(obs), MAX_INSTANCES, INSTANCE_DIM)
        present = x[..., 0] > 0.5
        h = np.maximum(x @ self._W1i + (g @ self._W1g + self.b1)[:, None, :], 0.0)
        cnt = np.maximum(present.sum(axis=1, keepdims=True), 1)
        c = (h * present[..., None]).sum(axis=1) / cnt
        z = np.maximum(h @ self._W2h + (c @ self._W2c + self.b2)[:, None, :], 0.0)
        q = z @ self.w3 + self.b3
        return np.where(present, q, NEG)
