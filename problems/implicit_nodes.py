"""Zoo of declarative nodes (`declarative.implicit`) with closed forms and closed-form Jacobians.

Each entry is an :class:`ImplicitProblem`:

* ``node(framework)`` — the node for ``"torch"`` or ``"jax"`` (the same math in either);
* ``sample(rng, scale)`` — ``(z0, params)`` as float64 NumPy arrays, data at ``scale``;
* ``solution(*params)`` and ``jacobian(*params)`` — the closed forms (``jacobian`` returns
  one block per parameter, shaped ``z.shape + param.shape``);
* ``reference`` — where the closed form comes from.

Kepler's equation and Welsch pooling have no elementary closed-form solution; their solution
reference is a bracketing root finder (SciPy's ``brentq`` to 1e-15), independent of the
node's Newton solver, and their Jacobians are the closed-form implicit derivatives.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import brentq

from declarative import implicit


def namespace(framework: str) -> Any:
    """torch or jax.numpy: the functions (sin, exp, ...) both spell alike."""
    if framework == "torch":
        import torch

        return torch
    if framework == "jax":
        import jax.numpy as jnp

        return jnp
    raise ValueError(f"framework must be 'torch' or 'jax', got {framework!r}")


@dataclass(frozen=True)
class ImplicitProblem:
    name: str
    node: Callable[[str], implicit.Node]
    sample: Callable[[np.random.Generator, float], tuple[np.ndarray, list[np.ndarray]]]
    solution: Callable[..., np.ndarray]
    jacobian: Callable[..., list[np.ndarray]]
    reference: str


# -- Kepler's equation E − e sin E = M ------------------------------------------------------
def kepler_node(framework: str) -> implicit.Node:
    xp = namespace(framework)
    return implicit.root(lambda E, M, e: E - e * xp.sin(E) - M)


def kepler_sample(rng: np.random.Generator, scale: float = 1.0):
    M = scale * rng.uniform(0.1, 2 * np.pi, size=5)
    e = np.array(rng.uniform(0.1, 0.9))
    return M.copy(), [M, e]


def kepler_solution(M: np.ndarray, e: np.ndarray) -> np.ndarray:
    ecc = float(e)
    # E − e sin E − M is increasing (e < 1) and changes sign on [M − e, M + e].
    return np.array([brentq(lambda E, m=m: E - ecc * np.sin(E) - m, m - ecc - 1e-12 * abs(m),
                            m + ecc + 1e-12 * abs(m), xtol=1e-15 * max(1.0, abs(m)), rtol=1e-15)
                     for m in M])


def kepler_jacobian(M: np.ndarray, e: np.ndarray) -> list[np.ndarray]:
    E = kepler_solution(M, e)
    d = 1 - float(e) * np.cos(E)
    return [np.diag(1 / d), np.sin(E) / d]


# -- linear fixed point Z = Z Wᵀ + X (a batch of z = Wz + x) ------------------------------
def linear_node(framework: str) -> implicit.Node:
    return implicit.fixed_point(lambda Z, W, X: Z @ W.T + X)


def linear_sample(rng: np.random.Generator, scale: float = 1.0):
    n, batch = 4, 3
    W = rng.standard_normal((n, n))
    W *= 0.5 / np.linalg.norm(W, 2)
    X = scale * rng.standard_normal((batch, n))
    return np.zeros_like(X), [W, X]


def linear_solution(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    return np.linalg.solve(np.eye(len(W)) - W, X.T).T


def linear_jacobian(W: np.ndarray, X: np.ndarray) -> list[np.ndarray]:
    """Z = X Aᵀ, A = (I − W)⁻¹: dZ_bi/dW_kl = A_ik Z_bl, dZ_bi/dX_cj = δ_bc A_ij."""
    A = np.linalg.inv(np.eye(len(W)) - W)
    Z = linear_solution(W, X)
    b = X.shape[0]
    return [np.einsum("ik,bl->bikl", A, Z), np.einsum("bc,ij->bicj", np.eye(b), A)]


# -- projection onto the unit sphere: min ‖y − x‖² s.t. ‖y‖² = 1 ---------------------------
def sphere_node(framework: str) -> implicit.Node:
    xp = namespace(framework)
    return implicit.argmin(lambda y, x: ((y - x) ** 2).sum(),
                           eq=lambda y, x: xp.reshape((y * y).sum() - 1, (1,)))


def sphere_sample(rng: np.random.Generator, scale: float = 1.0):
    x = scale * rng.standard_normal(4)
    return x / np.linalg.norm(x) + 0.3 * rng.standard_normal(4), [x]


def sphere_solution(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x)


def sphere_jacobian(x: np.ndarray) -> list[np.ndarray]:
    y = sphere_solution(x)
    return [(np.eye(len(x)) - np.outer(y, y)) / np.linalg.norm(x)]


# -- ridge regression's weights as a function of λ (bilevel inner problem) -----------------
def ridge_node(framework: str) -> implicit.Node:
    return implicit.argmin(lambda w, X, t, lam: ((X @ w - t) ** 2).sum() + lam * (w * w).sum())


def ridge_sample(rng: np.random.Generator, scale: float = 1.0):
    X = rng.standard_normal((8, 3))
    t = scale * rng.standard_normal(8)
    return np.zeros(3), [X, t, np.array(rng.uniform(0.5, 2.0))]


def ridge_solution(X: np.ndarray, t: np.ndarray, lam: np.ndarray) -> np.ndarray:
    return np.linalg.solve(X.T @ X + float(lam) * np.eye(X.shape[1]), X.T @ t)


def ridge_jacobian(X: np.ndarray, t: np.ndarray, lam: np.ndarray) -> list[np.ndarray]:
    """w = H⁻¹Xᵀt, H = XᵀX + λI: dw/dt = H⁻¹Xᵀ, dw/dλ = −H⁻¹w,
    dw/dX_kl = H⁻¹(e_l r_k − w_l X[k]) with r = t − Xw."""
    n = X.shape[1]
    Hinv = np.linalg.inv(X.T @ X + float(lam) * np.eye(n))
    w = Hinv @ X.T @ t
    r = t - X @ w
    # d(Xᵀt − XᵀXw)/dX_kl = e_l t_k − e_l (Xw)_k − Xᵀe_k w_l = e_l r_k − X[k] w_l
    dX = np.einsum("il,k->ikl", Hinv, r) - np.einsum("ij,kj,l->ikl", Hinv, X, w)
    return [dX, Hinv @ X.T, -Hinv @ w]


# -- Welsch robust pooling: y_b = argmin Σ_i 1 − exp(−(y − x_bi)²/(2α²)) (non-convex) -------
def welsch_node(framework: str) -> implicit.Node:
    xp = namespace(framework)
    return implicit.argmin(
        lambda y, x, alpha: (1 - xp.exp(-((y[:, None] - x) ** 2) / (2 * alpha**2))).sum())


def welsch_sample(rng: np.random.Generator, scale: float = 1.0):
    b, m = 3, 9
    x = rng.normal(1.0, 0.15, size=(b, m))
    x[:, :2] += rng.choice([-1, 1], size=(b, 2)) * rng.uniform(4, 8, size=(b, 2))  # outliers
    return scale * np.median(x, axis=1), [scale * x, np.array(scale * 1.0)]


def _welsch_gradient(y: float, x: np.ndarray, alpha: float) -> float:
    u = y - x
    return float(np.sum(u / alpha**2 * np.exp(-(u**2) / (2 * alpha**2))))


def welsch_solution(x: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Stationary point within α/2 of each row's median (where the samples put a minimum)."""
    a = float(alpha)
    out = []
    for row in x:
        med = float(np.median(row))
        out.append(brentq(_welsch_gradient, med - a / 2, med + a / 2, args=(row, a),
                          xtol=1e-15 * a, rtol=1e-15))
    return np.array(out)


def welsch_jacobian(x: np.ndarray, alpha: np.ndarray) -> list[np.ndarray]:
    """dy/dθ = −(∂²L/∂y∂θ)/(∂²L/∂y²) (IFT on the stationarity condition, Gould et al. 2021)."""
    a = float(alpha)
    y = welsch_solution(x, alpha)
    u = y[:, None] - x
    e = np.exp(-(u**2) / (2 * a**2))
    phi2 = (1 - u**2 / a**2) * e / a**2          # φ''(u)
    dphi1_da = u * e * (u**2 / a**5 - 2 / a**3)   # ∂φ'(u)/∂α
    H = phi2.sum(axis=1)
    b = x.shape[0]
    dx = np.einsum("bc,ci->bci", np.eye(b), phi2 / H[:, None])
    return [dx, -dphi1_da.sum(axis=1) / H]


NODES: dict[str, ImplicitProblem] = {
    p.name: p for p in [
        ImplicitProblem("kepler", kepler_node, kepler_sample, kepler_solution, kepler_jacobian,
                        "Kepler's equation; dE/dM = 1/(1 − e cos E), dE/de = sin E/(1 − e cos E)"),
        ImplicitProblem("linear_fixed_point", linear_node, linear_sample, linear_solution,
                        linear_jacobian, "z = Wz + x: z = (I − W)⁻¹x, dz/dx = (I − W)⁻¹"),
        ImplicitProblem("sphere_projection", sphere_node, sphere_sample, sphere_solution,
                        sphere_jacobian, "min ‖y − x‖² s.t. ‖y‖² = 1: y = x/‖x‖, "
                        "dy/dx = (I − yyᵀ)/‖x‖"),
        ImplicitProblem("ridge", ridge_node, ridge_sample, ridge_solution, ridge_jacobian,
                        "ridge regression w(λ) = (XᵀX + λI)⁻¹Xᵀt, dw/dλ = −(XᵀX + λI)⁻¹w"),
        ImplicitProblem("welsch_pooling", welsch_node, welsch_sample, welsch_solution,
                        welsch_jacobian, "Welsch robust mean (non-convex), Gould et al. 2021 "
                        "Deep Declarative Networks §5: dy/dx_i = φ''(y − x_i)/Σ_j φ''(y − x_j)"),
    ]
}


def get(name: str) -> ImplicitProblem:
    if name not in NODES:
        raise KeyError(f"no implicit node {name!r}; expected one of {sorted(NODES)}")
    return NODES[name]
