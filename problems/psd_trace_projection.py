r"""Frobenius projection onto the spectraplex {X ⪰ 0, tr X = 1}.

Problem (parameter Y ∈ ℝᵏˣᵏ, a plain — not ``symmetric`` — matrix parameter; variable X ∈ 𝕊ᵏ)::

    X*(Y) = argmin_{X ⪰ 0, tr X = 1}  ‖X − sym(Y)‖_F²,        sym(Y) = (Y + Yᵀ)/2

Convention as in ``psd_projection``: the objective symmetrises Y, so the Jacobian is the plain
entrywise derivative ∂X*_pq / ∂Y_ij, symmetric under (i, j) ↔ (j, i) and (p, q) ↔ (q, p).

Closed form (the matrix analogue of sparsemax: both problems are invariant under X ↦ QXQᵀ, so
X* shares sym(Y)'s eigenvectors and its eigenvalues are the simplex projection of λ)::

    sym(Y) = U diag(λ) Uᵀ,     X* = U diag(f(λ)) Uᵀ,     f(λ) = max(λ − τ, 0),
    τ solving Σ_i max(λ_i − τ, 0) = 1   (sparsemax's threshold of λ).

Jacobian (Daleckii–Krein for f at fixed τ, plus τ's own derivative): with Γ the first divided
differences of f (Γ_ab = (f(λ_a) − f(λ_b))/(λ_a − λ_b), Γ_aa = 1[λ_a > τ]) and P₊ = U₊U₊ᵀ the
projector on the r eigenvectors with λ > τ, a symmetric direction E moves X* by

    dX = U (Γ ∘ (UᵀEU)) Uᵀ − dτ P₊,      dτ = tr(P₊ E) / r   (from tr dX = 0),

so, entrywise, with T_pqij = Σ_ab U_pa Γ_ab U_ia U_jb U_qb,

    ∂X*_pq / ∂Y_ij = ½ (T_pqij + T_pqji) − (P₊)_pq (P₊)_ij / r.

Differentiable wherever no eigenvalue equals τ.

Sampler (margins so the map is differentiable and well conditioned): r ~ U{1, …, min(k − 1,
MAX_RANK)} eigenvalues above τ with λ − τ a sorted Dirichlet draw, accepted when every λ_i − τ
and every gap between them is >= MARGIN; the k − r others below τ, the first at τ − MARGIN·(1 +
U[0, 1]), then gaps MARGIN·(1 + U[0, 1]); τ ~ U[−1, 1]; Y = U diag(λ) Uᵀ with U Haar-random
orthogonal. So min_i |λ_i − τ| >= MARGIN and every eigenvalue gap is >= MARGIN.

Cone form: one zero-cone row (the trace), one PSD cone of order k and (``use_quad_obj=False``)
one second-order cone for the objective.
"""

from __future__ import annotations

import cvxpy as cp
import numpy as np

from ._common import as_array, rejection_sample, resolve_sizes
from .sparsemax import threshold

NAME = "psd_trace_projection"
REFERENCE = (
    "Spectraplex projection = simplex projection of the eigenvalues (Martins & Astudillo 2016 "
    "threshold); Jacobian by the Daleckii–Krein formula (Bhatia, Matrix Analysis, Thm. V.3.3) "
    "with the threshold's derivative dτ = tr(P₊E)/r"
)
CONES = ("zero", "soc", "psd")
SIZES = {"k": 4}

MARGIN = 0.05  # min |λ_i − τ| and min eigenvalue gap (tr X* = 1 sets the scale)
MAX_RANK = 4   # r = rank X* <= MAX_RANK: r(r + 1)/2 · MARGIN <= 1 leaves room to sample


def build(**sizes: int) -> tuple[cp.Problem, list[cp.Parameter], list[cp.Variable]]:
    k = resolve_sizes(SIZES, sizes)["k"]
    Y = cp.Parameter((k, k), name="Y")
    X = cp.Variable((k, k), PSD=True, name="X")
    problem = cp.Problem(cp.Minimize(cp.sum_squares(X - (Y + Y.T) / 2)), [cp.trace(X) == 1])
    return problem, [Y], [X]


def sample(rng: np.random.Generator, **sizes: int) -> list[np.ndarray]:
    k = resolve_sizes(SIZES, sizes)["k"]
    if k < 2:
        raise ValueError(f"{NAME}: the sampler needs k >= 2, got k={k}")
    r = int(rng.integers(1, min(k - 1, MAX_RANK) + 1))

    def draw(rng: np.random.Generator) -> np.ndarray:
        return np.sort(rng.dirichlet(np.ones(r)))[::-1]  # λ − τ above τ, summing to 1

    def accept(above: np.ndarray) -> bool:
        return bool(above.min() >= MARGIN and (r == 1 or (-np.diff(above)).min() >= MARGIN))

    above = rejection_sample(draw, accept, rng, NAME)
    below = np.cumsum(MARGIN * (1.0 + rng.uniform(0.0, 1.0, k - r)))
    tau = rng.uniform(-1.0, 1.0)
    lam = np.concatenate([tau + above, tau - below])
    Q, R = np.linalg.qr(rng.standard_normal((k, k)))
    U = Q * np.sign(np.diag(R))  # Haar-distributed orthogonal matrix
    Y = (U * lam) @ U.T
    return [(Y + Y.T) / 2]


def _spectrum(params: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray, float]:
    """(λ, U, τ) of sym(Y) = U diag(λ) Uᵀ and the threshold τ of λ."""
    if len(params) != 1:
        raise TypeError(f"{NAME} takes 1 parameter (Y), got {len(params)}")
    Y = np.asarray(params[0], dtype=np.float64)
    if Y.ndim != 2 or Y.shape[0] != Y.shape[1]:
        raise ValueError(f"{NAME}: Y must be a square matrix, got shape {Y.shape}")
    Y = as_array(Y, Y.shape, "Y")
    lam, U = np.linalg.eigh((Y + Y.T) / 2)
    return lam, U, threshold(lam)


def solution(*params: np.ndarray) -> list[np.ndarray]:
    lam, U, tau = _spectrum(params)
    X = (U * np.maximum(lam - tau, 0.0)) @ U.T
    return [(X + X.T) / 2]


def jacobian(*params: np.ndarray) -> list[list[np.ndarray]]:
    lam, U, tau = _spectrum(params)
    k = lam.size
    f = np.maximum(lam - tau, 0.0)
    on = lam > tau
    la, lb = lam[:, None], lam[None, :]
    # Γ_ab, the divided difference of max(λ − τ, 0): exactly 1 where both λ_a, λ_b > τ and 0
    # where neither is (forming (λ_a − τ) − (λ_b − τ) there loses the digits of λ_a − λ_b when
    # |τ| dwarfs them: relative error 1e-5 at Y ~ 1e-12); the quotient where one is
    with np.errstate(divide="ignore", invalid="ignore"):
        mixed = (f[:, None] - f[None, :]) / (la - lb)
    ona, onb = on[:, None], on[None, :]
    gamma = np.where(ona & onb, 1.0, np.where(ona | onb, mixed, 0.0))
    # T_pqij = Σ_ab U_pa U_ia Γ_ab U_jb U_qb as a (k², k) (k, k) (k, k²) product: O(k⁵)
    W = (U[:, None, :] * U[None, :, :]).reshape(k * k, k)          # W[(p, i), a] = U_pa U_ia
    T = (W @ gamma @ W.T).reshape(k, k, k, k).transpose(0, 3, 1, 2)  # [p, i, j, q] → [p, q, i, j]
    P = U[:, on] @ U[:, on].T
    J = (T + T.transpose(0, 1, 3, 2)) / 2 - np.einsum("pq,ij->pqij", P, P) / on.sum()
    return [[J]]
