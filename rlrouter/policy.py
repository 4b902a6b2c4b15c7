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

When every slot is present (the router's usual case) the hidden layers run compiled
(:func:`_hidden`, numba, biases folded into the weights), computing what numpy's matrix products
do (to the bit with OpenBLAS's AVX2 kernels, which sum as they do; within float32 rounding
elsewhere). The dqn router's decision is one compiled call (:func:`_decide`: the observation
kernel of quicgw.core.features and the hidden layers), then numpy's ``z @ w3`` and argmax. With
absent slots the plain numpy formula runs (``_q_masked``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from quicgw.core import features
from quicgw.core.features import GLOBAL_DIM, INSTANCE_DIM, MAX_INSTANCES

POLICY_DIR = "policies"
DEFAULT_POLICY = "dqn.npz"
NEG = np.float32(-1e9)


# -- the compiled forward pass ----------------------------------------------------------------
#
# The hidden layers of the all-present fast path, compiled with numba (see
# quicgw.core.features.jit): each output of a matrix product is accumulated in input order with
# fused multiply-adds in float32 (fastmath "contract" and nothing else), which is how OpenBLAS's
# sgemm/sgemv kernels sum, so the hidden activations equal numpy's `x @ W` to the bit
# (tests/test_fastpaths.py pins them to the plain numpy products). The last layer stays numpy's
# product: compiling it too saved ~1.7 us of ~14 per decision, not worth imitating the lane
# order of one BLAS kernel to keep the decisions equal.


def _hidden(obs, n, w, z):  # compiled: see above
    """z = relu(h @ W2h + b2 + sum_i h_i @ (W2c / n)), h = relu(x @ W1i + b1 + g @ W1g), from
    the flat observation ``obs`` (global features, then n slots) and the :meth:`packed`
    weights. Inner loops run along contiguous weight rows (they vectorise); every output
    still sums its inputs in order."""
    r2 = INSTANCE_DIM + GLOBAL_DIM
    h1 = w.shape[0] - r2
    h2 = z.shape[1]
    zero = np.float32(0.0)
    gw = np.zeros(h1, np.float32)
    for k in range(GLOBAL_DIM):
        gk = obs[k]
        wk = w[INSTANCE_DIM + k]
        for j in range(h1):
            gw[j] += gk * wk[j]
    h = np.empty(h1, np.float32)
    zc = np.empty(2 * h2, np.float32)  # this slot's h @ W2h, then h @ (W2c / n)
    csum = np.zeros(h2, np.float32)
    for i in range(n):
        o = GLOBAL_DIM + INSTANCE_DIM * i
        for j in range(h1):
            h[j] = zero
        for k in range(INSTANCE_DIM):
            xk = obs[o + k]
            wk = w[k]
            for j in range(h1):
                h[j] += xk * wk[j]
        for j in range(h1):
            v = h[j] + gw[j]
            h[j] = v if v > zero or v != v else zero  # np.maximum(v, 0): NaN stays
        for j in range(2 * h2):
            zc[j] = zero
        for k in range(h1):
            hk = h[k]
            wk = w[r2 + k]
            for j in range(2 * h2):
                zc[j] += hk * wk[j]
        zi = z[i]
        for j in range(h2):  # the pooled term: the column sum over slots, in slot order
            zi[j] = zc[j]
            csum[j] += zc[h2 + j]
    for i in range(n):
        zi = z[i]
        for j in range(h2):
            v = zi[j] + csum[j]
            zi[j] = v if v > zero or v != v else zero
    return n


def _decide(req, st, obs, w, z):  # compiled: the router's decision up to the last layer
    """The observation (quicgw.core.features' kernel) into ``obs``; then, if every instance is
    healthy, the hidden layers into ``z``. Returns n, or -1 (an unhealthy instance: the caller
    takes the masked path on ``obs``)."""
    n = st.shape[0]
    if _fill_k(req, st, obs) < n:
        return -1
    return _hidden_k(obs, n, w, z)


_fill_k = _hidden_k = _decide_k = None


def _kernels():
    """(hidden, decide), compiled on first use (or loaded from numba's cache)."""
    global _fill_k, _hidden_k, _decide_k
    if _decide_k is None:
        jit = features.jit
        _fill_k = features.kernel()
        _hidden_k = jit(_hidden, ["int64(float32[::1], int64, float32[:, ::1], float32[:, ::1])"],
                        fastmath={"contract"})
        _decide_k = jit(_decide, ["int64(float64[::1], float64[:, ::1], float32[::1], "
                                  "float32[:, ::1], float32[:, ::1])"])
    return _hidden_k, _decide_k


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
        # a column sum. The compiled layers read them packed per slot count (packed()).
        self._W1i_b = np.zeros((INSTANCE_DIM, h + 1), dtype=np.float32)
        self._W1i_b[:, :h] = self._W1i
        self._W1i_b[0, :h] += self.b1
        self._W1i_b[0, h] = 1.0
        self._W1g_b = np.zeros((GLOBAL_DIM, h + 1), dtype=np.float32)
        self._W1g_b[:, :h] = self._W1g
        self._W2h_b = np.concatenate([self._W2h, self.b2[None, :]], axis=0)
        self._W2c_b = np.concatenate([self._W2c, np.zeros((1, self._h2), np.float32)], axis=0)
        # Per slot count n: the packed weights (pooling weights divided by n) and the output
        # buffers. Reused across calls, so one policy object must not run two forward passes
        # at once (threads).
        self._packed: dict[int, np.ndarray] = {}
        self._bufs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

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
        if obs.dtype != np.float32 or not obs.flags.c_contiguous:  # what the kernel reads
            obs = np.ascontiguousarray(obs, np.float32)
        if n and obs[GLOBAL_DIM:GLOBAL_DIM + n * INSTANCE_DIM:INSTANCE_DIM].min() > 0.5:
            return self.q_all_present(obs, n) + self.b3
        return self._q_masked(obs, n)

    def packed(self, n: int) -> np.ndarray:
        """The weights the compiled layers read for ``n`` slots, one float32 array: rows
        ``[0, INSTANCE_DIM)`` W1i (with b1 on the "present" row and the always-1 unit), then
        GLOBAL_DIM rows of W1g (both h+1 wide), then h+1 rows of ``[W2h | W2c / n]`` (b2 on
        the last row of W2h; mean pooling as a sum). Cached per n."""
        w = self._packed.get(n)
        if w is None:
            h1, h2 = self._W1i_b.shape[1], self._h2
            r2 = INSTANCE_DIM + GLOBAL_DIM
            w = np.zeros((r2 + h1, max(h1, 2 * h2)), np.float32)
            w[:INSTANCE_DIM, :h1] = self._W1i_b
            w[INSTANCE_DIM:r2, :h1] = self._W1g_b
            w[r2:r2 + h1, :h2] = self._W2h_b
            w[r2:r2 + h1, h2:2 * h2] = self._W2c_b / np.float32(n)
            self._packed[n] = w
        return w

    def buffers(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(z, q): the second hidden layer's (n, h2) output and the (n,) Q-values, reused."""
        b = self._bufs.get(n)
        if b is None:
            b = self._bufs[n] = (np.empty((n, self._h2), np.float32), np.empty(n, np.float32))
        return b

    def q_all_present(self, obs: np.ndarray, n: int) -> np.ndarray:
        """Q-values without b3 (a constant; the decision skips it) when the first ``n`` slots of
        the flat observation ``obs`` (C-contiguous float32) are all present: the compiled
        hidden layers, then one numpy matrix-vector product. The result is a buffer that the
        next call overwrites."""
        z, q = self._bufs.get(n) or self.buffers(n)
        w = self._packed.get(n)
        if w is None:
            w = self.packed(n)
        (_hidden_k or _kernels()[0])(obs, n, w, z)
        z.dot(self.w3, q)
        return q

    def best(self, obs: np.ndarray, n: int, all_present: bool | None = None) -> int:
        """The argmax slot among the first ``n`` (the router's hot path); ``all_present``
        (when the caller knows every slot is routable) skips the check."""
        if obs.dtype != np.float32 or not obs.flags.c_contiguous:
            obs = np.ascontiguousarray(obs, np.float32)
        if all_present or (all_present is None and obs[GLOBAL_DIM:GLOBAL_DIM + n * INSTANCE_DIM:
                                                         INSTANCE_DIM].min() > 0.5):
            return int(self.q_all_present(obs, n).argmax())
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
