"""An online autoencoder: a one-hidden-layer MLP that reconstructs its input.

Seed 000's representation-learning layer ("an autoencoder learns normal
vibration; abnormal shaking reconstructs badly"). For a standardised reading
x in R^d (a vector of all metrics of a sensor):

    h     = tanh(a) + leak * a,  a = W1 x + b1     W1: k x d, k < d (the bottleneck)
    x_hat = W2 h + b2                  W2: d x k (linear output)
    score = mean((x - x_hat)^2)        the reconstruction error

`learn_one` takes one step of Adam (Kingma & Ba 2015) on the squared error
L = 1/2 sum (x_hat - x)^2 with the back-propagated gradients

    g2 = x_hat - x;   dW2 = g2 h^T;  db2 = g2
    g1 = (W2^T g2) * (1 - tanh(a)^2 + leak);     dW1 = g1 x^T;  db1 = g1

A leak > 0 (a "leaky tanh") keeps the hidden units from saturating: a reading
beyond the training range along a direction the model knows (a sensor's load
at 3.5 sigma after a warm-up that saw 2.5) is still reconstructed, instead of
reading as an anomaly because tanh flattened it.

and the Adam update m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2,
theta <- theta - lr * m_hat / (sqrt(v_hat) + eps) with bias-corrected
m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t). Weights start as Glorot
uniform draws from a seeded generator (Glorot & Bengio 2010).

Why numpy and not scikit-learn's `MLPRegressor.partial_fit`: the same model
and optimiser, but sklearn validates its input on every call (a single-reading
`partial_fit` costs several times a step here: BENCHMARKS.md), its Adam
moments are private attributes, so a checkpoint could not restore a model
mid-training through its public API, and it would add a ~40 MB dependency to
a path that needs 40 lines. The state here is a handful of small arrays,
serialised as nested lists (msgpack-able).

>>> import numpy as np
>>> ae = Autoencoder(3, hidden=2, seed=0, lr=0.01)
>>> rng = np.random.default_rng(0)
>>> t = rng.normal(size=(500, 1))
>>> data = np.hstack([t, 2 * t, -t])     # one latent factor: compressible
>>> def error() -> float:
...     return sum(ae.score_one(x) for x in data) / len(data)
>>> before = error()
>>> for _ in range(20):
...     for x in data:
...         ae.learn_one(x)
>>> error() < before / 10
True
>>> ae.score_one(np.array([1.0, -2.0, 1.0])) > 10 * ae.score_one(np.array([1.0, 2.0, -1.0]))
True
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec
import numpy as np

BETA1, BETA2, ADAM_EPS = 0.9, 0.999, 1e-8
PARAMS = ("w1", "b1", "w2", "b2")


class Autoencoder:
    __slots__ = ("leak", "lr", "m", "p", "steps", "v")

    def __init__(
        self, n_inputs: int, hidden: int, seed: int = 0, lr: float = 1e-3, leak: float = 0.0
    ) -> None:
        rng = np.random.default_rng(seed)
        limit = np.sqrt(6.0 / (n_inputs + hidden))  # Glorot uniform, both layers
        self.p: dict[str, np.ndarray] = {
            "w1": rng.uniform(-limit, limit, (hidden, n_inputs)),
            "b1": np.zeros(hidden),
            "w2": rng.uniform(-limit, limit, (n_inputs, hidden)),
            "b2": np.zeros(n_inputs),
        }
        self.m = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.v = {k: np.zeros_like(v) for k, v in self.p.items()}
        self.lr = lr
        self.leak = leak  # h = tanh(a) + leak * a: > 0 keeps extremes reconstructible
        self.steps = 0

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(hidden activations, reconstruction) of one reading."""
        p = self.p
        a = p["w1"] @ x + p["b1"]
        h = np.tanh(a) + self.leak * a if self.leak else np.tanh(a)
        return h, p["w2"] @ h + p["b2"]

    def score_one(self, x: np.ndarray) -> float:
        """Mean squared reconstruction error of x (the model is not changed)."""
        _, x_hat = self.forward(x)
        d = x_hat - x
        return float(d @ d) / len(x)

    def gradients(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Gradients of L = 1/2 ||x_hat - x||^2 with respect to each parameter."""
        p = self.p
        a = p["w1"] @ x + p["b1"]
        t = np.tanh(a)
        h = t + self.leak * a
        g2 = p["w2"] @ h + p["b2"] - x
        g1 = (p["w2"].T @ g2) * (1.0 - t * t + self.leak)
        return {"w1": np.outer(g1, x), "b1": g1, "w2": np.outer(g2, h), "b2": g2}

    def batch_gradients(self, xs: np.ndarray) -> dict[str, np.ndarray]:
        """Mean gradients of L over the rows of xs (n x d): the same formulas in
        matrix form, G2 = X_hat - X, dW2 = G2^T H / n, G1 = (G2 W2) * (1 - H^2),
        dW1 = G1^T X / n (biases: the column means)."""
        p = self.p
        a = xs @ p["w1"].T + p["b1"]
        t = np.tanh(a)
        h = t + self.leak * a
        g2 = h @ p["w2"].T + p["b2"] - xs
        g1 = (g2 @ p["w2"]) * (1.0 - t * t + self.leak)
        n = len(xs)
        return {
            "w1": g1.T @ xs / n,
            "b1": g1.mean(axis=0),
            "w2": g2.T @ h / n,
            "b2": g2.mean(axis=0),
        }

    def learn_many(self, xs: np.ndarray) -> None:
        """One Adam step on the mean gradient of a mini-batch (the warm-up training:
        a batch step costs about one single-reading step, so training is cheap)."""
        self._step(self.batch_gradients(xs))

    def learn_one(self, x: np.ndarray) -> None:
        """One Adam step on one reading."""
        self._step(self.gradients(x))

    def _step(self, grads: dict[str, np.ndarray]) -> None:
        self.steps += 1
        c1 = 1.0 - BETA1**self.steps
        c2 = 1.0 - BETA2**self.steps
        lr = self.lr
        for k, g in grads.items():
            m = self.m[k]
            v = self.v[k]
            m *= BETA1
            m += (1.0 - BETA1) * g
            v *= BETA2
            v += (1.0 - BETA2) * (g * g)
            self.p[k] -= lr * (m / c1) / (np.sqrt(v / c2) + ADAM_EPS)

    def snapshot(self) -> NetworkState:
        """The model as a typed checkpoint: every array as (nested) lists of floats, a
        named field each (msgspec does not encode numpy arrays; lists round-trip float64
        exactly)."""

        def params(arrays: dict[str, np.ndarray]) -> Params:
            return Params(**{k: arrays[k].tolist() for k in PARAMS})

        return NetworkState(
            lr=self.lr,
            leak=self.leak,
            steps=self.steps,
            p=params(self.p),
            m=params(self.m),
            v=params(self.v),
        )

    @classmethod
    def from_snapshot(cls, state: NetworkState | Mapping[str, Any]) -> Autoencoder:
        """The model of a checkpoint (typed, or as plain data after msgpack)."""
        if isinstance(state, Mapping):
            state = msgspec.convert(state, NetworkState)

        def arrays(params: Params) -> dict[str, np.ndarray]:
            return {k: np.asarray(getattr(params, k), dtype=float) for k in PARAMS}

        ae = cls.__new__(cls)
        ae.lr, ae.leak, ae.steps = state.lr, state.leak, state.steps
        ae.p, ae.m, ae.v = arrays(state.p), arrays(state.m), arrays(state.v)
        return ae


class Params(msgspec.Struct):
    """One value per parameter of the network: the weights, or an Adam moment of each."""

    w1: list[list[float]]  # k x d
    b1: list[float]  # k
    w2: list[list[float]]  # d x k
    b2: list[float]  # d


class NetworkState(msgspec.Struct):
    """`Autoencoder`'s checkpoint: step size, leak, Adam's step count, the parameters
    and Adam's first and second moments."""

    lr: float
    leak: float
    steps: int
    p: Params
    m: Params
    v: Params


def network_state_from_format_1(old: Mapping[str, Any]) -> dict[str, Any]:
    """State format 1 (the same names; "leak" absent before it existed: 0) as plain
    `NetworkState` data."""
    return {
        "lr": float(old["lr"]),
        "leak": float(old.get("leak", 0.0)),
        "steps": int(old["steps"]),
        **{k: {name: old[k][name] for name in PARAMS} for k in ("p", "m", "v")},
    }
