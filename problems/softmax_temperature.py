r"""Softmax with a learnable temperature, as entropy-regularised maximisation over the simplex.

Problem (parameters θ ∈ ℝⁿ, τ > 0; variable x ∈ ℝⁿ)::

    x*(θ, τ) = argmax_x  θᵀx + τ·H(x)   s.t.  1ᵀx = 1,        H(x) = Σ_i entr(x_i)

DPP: τ is declared ``nonneg``, so τ·H(x) is a nonnegative parameter times a concave expression
(concave, and parameter-affine in the DPP sense).  Dividing by τ instead (θ/τ) would be a
parameter-by-parameter quotient and not DPP.  CVXPY canonicalises each ``entr`` to one
exponential cone and the simplex equality to one zero-cone row; x >= 0 is implicit.

Closed form (Gibbs variational principle applied to θ/τ)::

    x*(θ, τ) = softmax(θ/τ)

Jacobian, with S = diag(x*) − x*x*ᵀ (the softmax Jacobian at θ/τ)::

    ∂x*/∂θ = S / τ,          ∂x*/∂τ = −S θ / τ²

Smooth for τ > 0, x* > 0 always.

Sampler: τ ~ U[0.5, 2], θ ~ N(0, 1) truncated to [−2.5, 2.5] per coordinate, rejected unless
min x* >= MIN_MASS / n = 0.02 / n (exponential-cone solvers lose relative accuracy on tiny
entries).
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, rejection_sample, resolve_sizes

NAME = "softmax_temperature"
REFERENCE = (
    "Gibbs variational principle: softmax(θ/τ) = argmax_{x in simplex} θᵀx + τH(x) "
    "(Blondel, Martins & Niculae, 'Learning with Fenchel-Young Losses', JMLR 2020)"
)
CONES = ("zero", "exp")
SIZES = {"n": 6}

THETA_CLIP = 2.5
TAU_RANGE = (0.5, 2.0)
MIN_MASS = 0.02


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    n = resolve_sizes(SIZES, sizes)["n"]
    theta = cp.Parameter(n, name="theta")
    tau = cp.Parameter(nonneg=True, name="tau")
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Maximize(theta @ x + tau * cp.sum(cp.entr(x))), [cp.sum(x) == 1])
    return problem, [theta, tau], [x]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    n = resolve_sizes(SIZES, sizes)["n"]

    def draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        theta = rng.standard_normal(n)
        bad = np.abs(theta) > THETA_CLIP
        while bad.any():  # truncated normal by per-coordinate resampling
            theta[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(theta) > THETA_CLIP
        return theta, np.array(rng.uniform(*TAU_RANGE))

    def accept(candidate: tuple[np.ndarray, np.ndarray]) -> bool:
        theta, tau = candidate
        return bool(_softmax(theta / tau).min() >= MIN_MASS / n)

    theta, tau = rejection_sample(draw, accept, rng, NAME)
    return [theta, tau]


def _check(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, float]:
    if len(params) != 2:
        raise TypeError(f"{NAME} takes 2 parameters (theta, tau), got {len(params)}")
    theta = np.asarray(params[0], dtype=np.float64)
    if theta.ndim != 1:
        raise ValueError(f"{NAME}: theta must be a vector, got shape {theta.shape}")
    tau = float(as_array(params[1], (), "tau"))
    if tau <= 0:
        raise ValueError(f"{NAME}: temperature τ must be positive, got {tau}")
    return as_array(theta, theta.shape, "theta"), tau


def solution(*params: np.ndarray) -> list[np.ndarray]:
    theta, tau = _check(params)
    return [_softmax(theta / tau)]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    theta, tau = _check(params)
    x = _softmax(theta / tau)
    S = np.diag(x) - np.outer(x, x)
    return [[S / tau, -(S @ theta) / tau**2]]
