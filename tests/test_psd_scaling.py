"""PSD cones whose blocks hold entries of different scales: the scaling at a solution.

tr_inv(X) is written with a PSD block [X, eᵢ; eᵢᵀ, uᵢ] per i, uᵢ ~ 1/X beside the constant 1,
and matrix_frac(x, P) with [P, x; xᵀ, t], t ~ 1/P: one factor per block cannot balance
either. Oracles: closed forms (X = C^(−1/2); x = Pa/(aᵀPa)), their derivatives by the
Daleckii–Krein formula and by the complex step, and the congruence itself checked on
matrices.
"""

from __future__ import annotations

from types import SimpleNamespace

import cvxpy as cp
import numpy as np
import pytest

import declarative as dl
from declarative.cones import ConeDims, _svec, _unvec, svec_index
from declarative.equilibrate import _psd_shape

K = 3


def _spd(rng: np.random.Generator) -> np.ndarray:
    M = rng.standard_normal((K, K))
    return M @ M.T + K * np.eye(K)


def _sym(rng: np.random.Generator) -> np.ndarray:
    M = rng.standard_normal((K, K))
    return (M + M.T) / 2


def _inv_sqrt_derivative(C: np.ndarray, E: np.ndarray) -> np.ndarray:
    """D(C^(−1/2))[E] by the Daleckii–Krein formula (divided differences of w^(−1/2))."""
    w, V = np.linalg.eigh(C)
    f = w**-0.5
    D = np.subtract.outer(w, w)
    off = np.abs(D) > 1e-12 * w.max()
    G = np.where(off, np.subtract.outer(f, f) / np.where(off, D, 1.0), 0.0)
    G[np.diag_indices(K)] = -0.5 * w**-1.5
    return V @ (G * (V.T @ E @ V)) @ V.T


@pytest.mark.parametrize("scale", [1e-3, 1e3, 1e6])
def test_tr_inv_at_scale_is_solved_with_its_jacobian(scale):
    """min tr_inv(X) + tr(CX) with C ~ 1/scale²: X = C^(−1/2) ~ scale. Every instance
    solved; X within 1e-10 of the closed form and the VJP's pairing with a random symmetric
    direction within 1e-9 of the closed form's derivative (both relative)."""
    X, C = cp.Variable((K, K), PSD=True), cp.Parameter((K, K), PSD=True)
    layer = dl.compile(cp.Problem(cp.Minimize(cp.tr_inv(X) + cp.trace(C @ X))), [C], [X])
    rng = np.random.default_rng(2)
    Cs = np.stack([_spd(rng) / scale**2 for _ in range(3)])
    fwd = layer.forward([Cs], on_failure="nan")
    assert fwd.ok.all(), fwd.info.status
    G = rng.standard_normal((3, K, K))
    (gC,) = fwd.vjp([G])
    for i in range(3):
        w, V = np.linalg.eigh(Cs[i])
        exact = (V / np.sqrt(w)) @ V.T
        assert np.abs(fwd.outputs[0][i] - exact).max() <= 1e-10 * np.abs(exact).max()
        E = _sym(rng) / scale**2
        dX = _inv_sqrt_derivative(Cs[i], E)
        assert abs(np.sum(gC[i] * E) - np.sum(G[i] * dX)) \
            <= 1e-9 * np.abs(G[i]).sum() * np.abs(dX).max()


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1e6, 1e9])
def test_matrix_frac_with_a_parameter_at_scale_is_solved_with_its_jacobian(scale):
    """min matrix_frac(x, P) s.t. aᵀx = 1 with P ~ scale: x = Pa/(aᵀPa). Every instance
    solved; x within 1e-10 of the closed form and the VJP's pairing with a random direction
    (of P and a) within 1e-8 of the complex-step derivative of the closed form (3e-9
    measured at scale 1e9)."""
    x, P, a = cp.Variable(K), cp.Parameter((K, K), PSD=True), cp.Parameter(K)
    layer = dl.compile(cp.Problem(cp.Minimize(cp.matrix_frac(x, P)), [a @ x == 1]), [P, a],
                       [x])
    rng = np.random.default_rng(2)
    Ps = np.stack([_spd(rng) * scale for _ in range(3)])
    As = rng.uniform(0.5, 1.5, (3, K))
    fwd = layer.forward([Ps, As], on_failure="nan")
    assert fwd.ok.all(), fwd.info.status
    G = rng.standard_normal((3, K))
    gP, ga = fwd.vjp([G])

    def solution(Pm, av):
        return Pm @ av / (av @ Pm @ av)

    for i in range(3):
        exact = solution(Ps[i], As[i])
        assert np.abs(fwd.outputs[0][i] - exact).max() <= 1e-10 * np.abs(exact).max()
        E, e = _sym(rng) * scale, rng.standard_normal(K)
        h = 1e-20
        dx = solution(Ps[i] + 1j * h * E, As[i] + 1j * h * e).imag / h
        got = np.sum(gP[i] * E) + ga[i] @ e
        assert abs(got - G[i] @ dx) <= 1e-8 * np.abs(G[i]).sum() * np.abs(dx).max()


def test_the_psd_factors_are_a_congruence_by_powers_of_two():
    """`_psd_shape`'s factors on a block are λᵢλⱼ at svec entry (i, j), each λᵢ a power of
    two: D svec(W) = svec(ΛWΛ) for every symmetric W (so D maps the cone onto itself and
    D⁻¹ its dual), tr(SY) is kept, and the scaled diagonals of a slack and multiplier that
    span 1e±12 come to within a factor of 64 of each other."""
    dims = ConeDims(nonneg=2, psd=(K, K + 1))
    m = 2 + K * (K + 1) // 2 + (K + 1) * (K + 2) // 2
    t = SimpleNamespace(dims=dims, m=m)  # (all `_psd_shape` reads of a template)
    rng = np.random.default_rng(0)
    spread = np.array([1e-6, 1.0, 1e6])
    S3 = np.diag(spread) @ _spd(rng) @ np.diag(spread)  # S_ii ~ spread²
    Y3 = np.diag(1 / spread) @ _spd(rng) @ np.diag(1 / spread)
    M4 = rng.standard_normal((K + 1, K + 1))
    s = np.concatenate([[1.0, 2.0], _svec(S3, K), _svec(M4 @ M4.T, K + 1)])
    y = np.concatenate([[0.5, 0.0], _svec(Y3, K), np.zeros((K + 1) * (K + 2) // 2)])
    f = _psd_shape(t, np.abs(y)[None], np.abs(s)[None])[0]
    assert np.all(f[:2] == 1.0)
    assert np.all(np.log2(f) == np.rint(np.log2(f)))
    lo = 2
    for k in (K, K + 1):
        n = k * (k + 1) // 2
        I, J, _, _ = svec_index(k)
        d = f[lo : lo + n]
        lam = np.sqrt(d[I == J])
        assert np.array_equal(d, lam[I] * lam[J])
        W = _sym(rng) if k == K else rng.standard_normal((k, k))
        W = (W + W.T) / 2
        assert np.allclose(d * _svec(W, k), _svec(np.diag(lam) @ W @ np.diag(lam), k),
                           rtol=1e-15, atol=0)
        lo += n
    d3 = f[2 : 2 + K * (K + 1) // 2]
    S, Y = _unvec(d3 * s[2 : 2 + d3.size], K), _unvec(y[2 : 2 + d3.size] / d3, K)
    assert np.isclose(np.trace(S @ Y), np.trace(S3 @ Y3), rtol=1e-13)
    diagonals = np.concatenate([np.diag(S), np.diag(Y)])
    assert np.ptp(np.log2(np.concatenate([np.diag(S3), np.diag(Y3)]))) > 75
    assert diagonals.max() <= 64 * diagonals.min()


def test_no_psd_factors_where_the_diagonal_products_spread():
    """A slack of rank one along a coordinate beside a dense multiplier (the spectraplex
    projection of huge data): diagonal products 1e-13 … 1 apart. Its block keeps the factor
    1, where a congruence set by the diagonals would spread the multiplier's eigenvalues by
    2^26; so does a block with fewer than two positive products."""
    t = SimpleNamespace(dims=ConeDims(psd=(K, K)), m=K * (K + 1))
    rng = np.random.default_rng(1)
    v = np.array([1.0, 1e-7, 3e-7])
    Y = _spd(rng)
    s = np.concatenate([_svec(np.outer(v, v), K), _svec(np.diag([1.0, 0.0, 0.0]), K)])
    y = np.concatenate([_svec(Y, K), _svec(Y, K)])
    f = _psd_shape(t, np.abs(y)[None], np.abs(s)[None])[0]
    assert np.all(f == 1.0)


def _lambda_max_prox(A: np.ndarray, E: np.ndarray, w: float = 1.0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """argmin_X λ_max(A + X) + w‖X‖²_F and its derivative along E: with A = U diag(a) Uᵀ
    (a descending), X = −U diag((a − t)⁺) Uᵀ, Σ(aᵢ − t)⁺ = 1/(2w) (the prox of λ_max's
    conjugate-free form: water-filling of the top eigenvalues). X = F(A) for the spectral
    map f(a) = −(a − t(a))⁺, so DF[E] = U (Γ ∘ H + diag(J diag H)) Uᵀ with H = UᵀEU,
    Γᵢⱼ = (fᵢ − fⱼ)/(aᵢ − aⱼ) off the diagonal and J = ∂f/∂a: −(δᵢⱼ − 1/r) on the r top
    eigenvalues, 0 elsewhere (Lewis 1996, spectral functions)."""
    a, U = np.linalg.eigh(A)
    a, U = a[::-1], U[:, ::-1]
    n = len(a)
    for r in range(1, n + 1):
        t = (a[:r].sum() - 1 / (2 * w)) / r
        if r == n or t >= a[r]:
            break
    f = -np.clip(a - t, 0.0, None)
    gap = np.subtract.outer(a, a)
    off = ~np.eye(n, dtype=bool)
    G = np.where(off, np.subtract.outer(f, f) / np.where(off, gap, 1.0), 0.0)
    top = a > t
    J = np.where(np.outer(top, top), 1.0 / top.sum() - np.eye(n), 0.0)
    H = U.T @ E @ U
    dH = G * H
    dH[np.diag_indices(n)] = J @ np.diag(H)
    return (U * f) @ U.T, U @ dH @ U.T


@pytest.mark.parametrize("big", [1e6, 1e8])
def test_lambda_max_prox_with_one_dominant_eigenvalue_has_its_jacobian(big):
    """min λ_max(A + X) + ‖X‖²_F with A's top eigenvalue `big` times the others: X = −½uuᵀ
    (u A's top eigenvector), whose derivative is the rotation of u, ~1/big. In the program
    scaled at the solution the PSD block's multiplier (~1/big) sat beside a slack ~big², and
    DΠ kept the multiplier's eigenvalue only to the slack's rounding: the Jacobian came back
    2.5e-3 (big = 1e6) and 1e-3 (1e8) off, `solved`. Every instance solved is within 1e-8 of
    the closed form in its value, its JVP and its VJP (relative to each one's largest entry);
    the batch's seeds include those."""
    n = 4
    A, w = cp.Parameter((n, n), symmetric=True), cp.Parameter(nonneg=True)
    X = cp.Variable((n, n), symmetric=True)
    layer = dl.compile(cp.Problem(cp.Minimize(cp.lambda_max(A + X) + w * cp.sum_squares(X))),
                       [A, w], [X])
    seeds = {1e6: [21, 1, 2, 6, 10], 1e8: [3, 15, 6, 10, 2]}[big]
    As = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        U, _ = np.linalg.qr(rng.standard_normal((n, n)))
        a = rng.standard_normal(n)
        a[0] = big * abs(a[0])
        As.append((U * a) @ U.T)
    As = np.stack([(M + M.T) / 2 for M in As])
    rng = np.random.default_rng(5)
    E = rng.standard_normal((len(seeds), n, n))
    E = E + np.swapaxes(E, 1, 2)
    G = rng.standard_normal((len(seeds), n, n))
    fwd = layer.forward([As, np.ones(len(seeds))], on_failure="nan")
    assert fwd.ok.sum() >= 3, fwd.info.status
    (dX,) = fwd.jvp([E, np.zeros(len(seeds))])
    gA, _ = fwd.vjp([G])
    for i in np.flatnonzero(fwd.ok):
        Xr, dXr = _lambda_max_prox(As[i], E[i])
        assert np.abs(fwd.outputs[0][i] - Xr).max() <= 1e-8 * np.abs(Xr).max()
        assert np.abs(dX[i] - dXr).max() <= 1e-8 * np.abs(dXr).max(), (seeds[i], dX[i], dXr)
        # the VJP, paired with E, is the JVP paired with G (A symmetric: E's two triangles)
        pair = float((gA[i] * E[i]).sum())
        want = float((dXr * G[i]).sum())
        assert abs(pair - want) <= 1e-8 * np.abs(gA[i]).max() * np.abs(E[i]).sum(), (pair, want)
