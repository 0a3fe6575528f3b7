r"""Softmax as the entropy-regularised linear maximisation over the probability simplex.

Problem (θ ∈ ℝⁿ the parameter, x ∈ ℝⁿ the variable)::

    x*(θ) = argmax_x  θᵀx + H(x)   s.t.  1ᵀx = 1,        H(x) = Σ_i entr(x_i) = −Σ_i x_i log x_i

(x >= 0 is implicit in the domain of ``entr``; CVXPY canonicalises each ``entr`` to one
exponential cone, the simplex equality to one zero-cone row.)

Closed form (Gibbs variational principle: the maximiser of θᵀx + H(x) over the simplex is the
gradient of the convex conjugate log-sum-exp)::

    x*(θ) = softmax(θ) = exp(θ − lse(θ)),          lse(θ) = log Σ_j exp(θ_j)

Jacobian (Hessian of lse)::

    ∂x*/∂θ = diag(x*) − x* x*ᵀ

The map is smooth everywhere; x* > 0 always.  The sampler keeps every x*_i >= 0.02 / n (a
truncated standard-normal θ) because exponential-cone solvers lose relative accuracy on tiny
entries.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, rejection_sample, resolve_sizes

NAME = "softmax"
REFERENCE = (
    "Gibbs variational principle: softmax(θ) = argmax_{x in simplex} θᵀx + H(x) = ∇ logsumexp(θ); "
    "Blondel, Martins & Niculae, 'Learning with Fenchel-Young Losses', JMLR 2020"
)
CONES = ("zero", "exp")
SIZES = {"n": 8}

# θ ~ N(0, 1) truncated to [−THETA_CLIP, THETA_CLIP]; then require min x >= MIN_MASS / n.
THETA_CLIP = 2.5
MIN_MASS = 0.02


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    n = resolve_sizes(SIZES, sizes)["n"]
    theta = cp.Parameter(n, name="theta")
    x = cp.Variable(n, name="x")
    problem = cp.Problem(cp.Maximize(theta @ x + cp.sum(cp.entr(x))), [cp.sum(x) == 1])
    return problem, [theta], [x]


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    n = resolve_sizes(SIZES, sizes)["n"]

    def draw(rng: np.random.Generator) -> np.ndarray:
        theta = rng.standard_normal(n)
        bad = np.abs(theta) > THETA_CLIP
        while bad.any():  # truncated normal by per-coordinate resampling
            theta[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(theta) > THETA_CLIP
        return theta

    def accept(theta: np.ndarray) -> bool:
        return bool(_softmax(theta).min() >= MIN_MASS / n)

    return [rejection_sample(draw, accept, rng, NAME)]


def _softmax(theta: np.ndarray) -> np.ndarray:
    z = np.exp(theta - theta.max())
    return z / z.sum()


def _check(theta: np.ndarray) -> np.ndarray:
    theta = np.asarray(theta, dtype=np.float64)
    if theta.ndim != 1:
        raise ValueError(f"parameter 'theta' must be a vector, got shape {theta.shape}")
    return as_array(theta, theta.shape, "theta")


def solution(theta: np.ndarray) -> list[np.ndarray]:
    return [_softmax(_check(theta))]


def jacobian(theta: np.ndarray) -> list[list[np.ndarray]]:
    x = _softmax(_check(theta))
    return [[np.diag(x) - np.outer(x, x)]]
