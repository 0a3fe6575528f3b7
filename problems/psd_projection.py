r"""Frobenius projection onto the positive semidefinite cone.

Problem (parameter Y ∈ ℝᵏˣᵏ, a plain — not ``symmetric`` — matrix parameter; variable X ∈ 𝕊ᵏ)::

    X*(Y) = argmin_{X ⪰ 0}  ‖X − sym(Y)‖_F²,        sym(Y) = (Y + Yᵀ)/2

Convention: Y is declared as an unstructured (k, k) parameter and the objective symmetrises it,
so X* is defined for every Y (for symmetric Y, sym(Y) = Y) and the Jacobian is the plain
entrywise derivative ∂X*_pq / ∂Y_ij for Y as the user passes it, with no triangle bookkeeping:
it is symmetric under (i, j) ↔ (j, i) as well as (p, q) ↔ (q, p).  X is declared ``PSD=True``.

Closed form (Higham 1988), with the eigendecomposition sym(Y) = U diag(λ) Uᵀ::

    X* = U diag(max(λ, 0)) Uᵀ

Jacobian (Daleckii–Krein formula for the matrix function f(λ) = max(λ, 0)): the directional
derivative of X* at S = sym(Y) in a symmetric direction E is U (Γ ∘ (UᵀEU)) Uᵀ with the first
divided differences

    Γ_ab = (f(λ_a) − f(λ_b)) / (λ_a − λ_b)   (λ_a ≠ λ_b),      Γ_ab = f'(λ_a) ∈ {0, 1}  (equal),

i.e. Γ_ab = 1 when λ_a, λ_b > 0, 0 when both < 0, and λ_a⁺/(λ_a − λ_b) for mixed signs; so

    ∂X*_pq / ∂Y_ij = ½ (T_pqij + T_pqji),      T_pqij = Σ_ab U_pa Γ_ab U_ia U_jb U_qb.

Differentiable whenever no eigenvalue of sym(Y) is 0 (repeated nonzero eigenvalues are fine).

Sampler: Y = U diag(λ) Uᵀ (exactly symmetric) with U Haar-random orthogonal and λ_i ~ U[−2, 2],
rejected unless min |λ_i| >= MARGIN = 0.2, the λ_i are pairwise separated by >= MARGIN, and
there are both positive and negative eigenvalues.

Cone form: one PSD cone of order k (the PSD variable) and (``use_quad_obj=False``) one
second-order cone for the objective.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, rejection_sample, resolve_sizes

NAME = "psd_projection"
REFERENCE = (
    "Higham, 'Computing a nearest symmetric positive semidefinite matrix', Linear Algebra Appl. "
    "1988 (X = U max(Λ, 0) Uᵀ); Jacobian by the Daleckii–Krein formula (Bhatia, Matrix Analysis, "
    "Thm. V.3.3)"
)
CONES = ("soc", "psd")
SIZES = {"k": 4}

MARGIN = 0.2
EIG_RANGE = (-2.0, 2.0)


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    k = resolve_sizes(SIZES, sizes)["k"]
    Y = cp.Parameter((k, k), name="Y")
    X = cp.Variable((k, k), PSD=True, name="X")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(X - (Y + Y.T) / 2)))
    return problem, [Y], [X]


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    k = resolve_sizes(SIZES, sizes)["k"]
    if k < 2:
        raise ValueError(f"{NAME}: the sampler needs k >= 2, got k={k}")

    def draw(rng: np.random.Generator) -> np.ndarray:
        return rng.uniform(*EIG_RANGE, k)

    def accept(lam: np.ndarray) -> bool:
        return bool(
            np.abs(lam).min() >= MARGIN
            and np.diff(np.sort(lam)).min() >= MARGIN
            and lam.max() > 0 > lam.min()
        )

    lam = rejection_sample(draw, accept, rng, NAME)
    Q, R = np.linalg.qr(rng.standard_normal((k, k)))
    U = Q * np.sign(np.diag(R))  # Haar-distributed orthogonal matrix
    Y = (U * lam) @ U.T
    return [(Y + Y.T) / 2]


def _eig(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
    if len(params) != 1:
        raise TypeError(f"{NAME} takes 1 parameter (Y), got {len(params)}")
    Y = np.asarray(params[0], dtype=np.float64)
    if Y.ndim != 2 or Y.shape[0] != Y.shape[1]:
        raise ValueError(f"{NAME}: Y must be a square matrix, got shape {Y.shape}")
    Y = as_array(Y, Y.shape, "Y")
    return np.linalg.eigh((Y + Y.T) / 2)


def solution(*params: np.ndarray) -> list[np.ndarray]:
    lam, U = _eig(params)
    X = (U * np.maximum(lam, 0.0)) @ U.T
    return [(X + X.T) / 2]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    lam, U = _eig(params)
    pos = np.maximum(lam, 0.0)
    la, lb = lam[:, None], lam[None, :]
    same_sign = (la > 0) == (lb > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        mixed = (pos[:, None] - pos[None, :]) / (la - lb)
    gamma = np.where(same_sign, (la > 0) & (lb > 0), mixed).astype(np.float64)
    T = np.einsum("pa,ab,ia,jb,qb->pqij", U, gamma, U, U, U)
    return [[(T + T.transpose(0, 1, 3, 2)) / 2]]
