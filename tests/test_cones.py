"""Tests of `declarative.cones`: projections onto cones and their derivatives.

Oracles: diffcp (`diffcp.cones.pi`, `diffcp._diffcp.dprojection`) for every cone kind, a
high-precision mpmath implementation of Friberg's exponential-cone projection (diffcp's own
exponential-cone projection is accurate to only ~1e-9..1e-6, so it cannot check the last digits),
and central finite differences.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from declarative.cones import (
    ConeDims,
    DProjection,
    curved_limits,
    dproject,
    interior_depth,
    power_apexes_released,
    project,
    release_kinks,
    snap_kinks,
)

diffcp_cones = pytest.importorskip("diffcp.cones")
_diffcp = pytest.importorskip("diffcp._diffcp")
mp = pytest.importorskip("mpmath")

# ----------------------------------------------------------------------------------------------
# Cone collections and random points
# ----------------------------------------------------------------------------------------------
DIMS = {
    "zero": ConeDims(zero=4),
    "nonneg": ConeDims(nonneg=7),
    "soc": ConeDims(soc=(3, 1, 5, 3, 2)),
    "psd": ConeDims(psd=(3, 1, 2, 4, 3)),
    "exp": ConeDims(exp=12),
    "exp_dual": ConeDims(exp_dual=12),
    "mixed": ConeDims(zero=2, nonneg=3, soc=(3, 4, 1), psd=(2, 3), exp=6, exp_dual=6),
}
SEED = {name: i for i, name in enumerate(DIMS)}


def _exp_points(rng: np.random.Generator, n: int, near: bool = True) -> np.ndarray:
    """(n, 3) points (r, s, t) covering Friberg's four cases, and (if ``near``) points just
    outside the boundaries of K_exp and of its polar (relative distance ~1e-7)."""
    k = max(n // 6, 1)

    def k_boundary():  # (r, s, s e^{r/s}) on the boundary of K_exp
        r, s = rng.standard_normal(k), rng.exponential(size=k) + 0.5
        return np.stack([r, s, s * np.exp(r / s)], 1)

    def polar_boundary():  # (r, s, −r e^{s/r − 1}) on the boundary of the polar
        r, s = rng.exponential(size=k) + 0.5, rng.standard_normal(k)
        return np.stack([r, s, -r * np.exp(s / r - 1)], 1)

    up = 1 + rng.uniform(0.1, 2.0, k)
    inside = k_boundary() * np.stack([np.ones(k), np.ones(k), up], 1)  # case 1
    polar = polar_boundary() * np.stack([np.ones(k), np.ones(k), up], 1)  # case 2
    case3 = np.stack([-rng.exponential(size=k) - 0.1, -rng.exponential(size=k) - 0.1,
                      rng.standard_normal(k)], 1)
    # case 4: general position, and just outside either boundary (ill-conditioned)
    g = rng.standard_normal((n - 5 * k, 3)) * np.exp(rng.uniform(-1, 1, (n - 5 * k, 1)))
    down = 1 - (np.full(k, 1e-7) if near else rng.uniform(0.2, 0.8, k))
    near_k = k_boundary() * np.stack([np.ones(k), np.ones(k), down], 1)
    near_p = polar_boundary() * np.stack([np.ones(k), np.ones(k), down], 1)
    return rng.permutation(np.concatenate([inside, polar, case3, g, near_k, near_p]))


def _soc_points(rng: np.random.Generator, B: int, k: int) -> np.ndarray:
    x = rng.standard_normal((B, k - 1))
    c = rng.choice([-2.0, -0.5, 0.5, 2.0], size=B)  # polar, general, general, inside
    t = c * np.linalg.norm(x, axis=1) if k > 1 else c
    return np.concatenate([t[:, None], x], axis=1)


def _psd_points(rng: np.random.Generator, B: int, k: int) -> np.ndarray:
    Q = np.linalg.qr(rng.standard_normal((B, k, k)))[0]
    lam = rng.standard_normal((B, k)) + rng.choice([-2.0, 0.0, 2.0], size=(B, 1))
    X = (Q * lam[:, None, :]) @ np.swapaxes(Q, 1, 2)
    rows, cols = np.triu_indices(k)
    scale = np.where(rows == cols, 1.0, np.sqrt(2.0))
    return X[:, cols, rows] * scale


def random_points(dims: ConeDims, B: int, seed: int = 0, near: bool = True) -> np.ndarray:
    """(B, m) points with every cone block drawn inside, in the polar, or in general position
    (exponential cones: also near the boundaries, unless ``near`` is False)."""
    rng = np.random.default_rng(seed)
    parts = [rng.standard_normal((B, dims.zero)), rng.standard_normal((B, dims.nonneg))]
    parts += [_soc_points(rng, B, k) for k in dims.soc]
    parts += [_psd_points(rng, B, k) for k in dims.psd]
    n3 = dims.exp + dims.exp_dual
    if n3:
        parts.append(_exp_points(rng, B * n3, near).reshape(B, 3 * n3))
    return np.concatenate(parts, axis=1)


def exp_mask(dims: ConeDims) -> np.ndarray:
    """Boolean (m,) mask of the coordinates of exponential cones (primal and dual)."""
    n3 = 3 * (dims.exp + dims.exp_dual)
    mask = np.zeros(dims.size, dtype=bool)
    mask[dims.size - n3:] = True
    return mask


# ----------------------------------------------------------------------------------------------
# Oracles
# ----------------------------------------------------------------------------------------------
def diffcp_pi(V: np.ndarray, dims: ConeDims, dual: bool) -> np.ndarray:
    cones = diffcp_cones.parse_cone_dict(dims.scs())
    return np.stack([diffcp_cones.pi(v, cones, dual=dual) for v in V])


def diffcp_dpi(V: np.ndarray, dims: ConeDims, dual: bool) -> np.ndarray:
    """diffcp's DΠ as dense matrices, by applying its linear operator to the basis vectors."""
    cones = diffcp_cones.parse_cone_dict_cpp(diffcp_cones.parse_cone_dict(dims.scs()))
    eye = np.eye(dims.size)
    out = []
    for v in V:
        op = _diffcp.dprojection(v, cones, dual)
        out.append(np.stack([op.matvec(e) for e in eye], axis=1))
    return np.stack(out)


def _mp_proj_exp(r0, s0, t0):
    """Friberg's projection onto K_exp in mpmath arithmetic (the caller sets the precision).

    Cases 1-3 in closed form; case 4 by bisection on h(ρ) over the bracket where s(ρ), m(ρ) > 0,
    re-solved in δ = ρ − (1 − s0/r0) on a log scale when ρ is that close to the bracket end
    (there s(ρ) = δ r0 / q would lose all its digits to cancellation).
    """
    if (s0 > 0 and s0 * mp.exp(r0 / s0) <= t0) or (s0 == 0 and r0 <= 0 and t0 >= 0):
        return r0, s0, t0
    if (r0 > 0 and r0 * mp.exp(s0 / r0 - 1) <= -t0) or (r0 == 0 and s0 <= 0 and t0 <= 0):
        return mp.mpf(0), mp.mpf(0), mp.mpf(0)
    if r0 <= 0 and s0 <= 0:
        return r0, mp.mpf(0), max(t0, mp.mpf(0))

    def hd(rho, L, M):
        return L * mp.exp(rho) - M * mp.exp(-rho) - (rho * (rho - 1) + 1) * t0

    def h(rho):
        return hd(rho, (rho - 1) * r0 + s0, r0 - rho * s0)

    lo = 1 - s0 / r0 if r0 > 0 else None
    hi = r0 / s0 if s0 > 0 else None
    a, b, step = lo, hi, mp.mpf(1)
    while a is None:
        c = b - step
        a, b, step = (c, b, step) if h(c) < 0 else (None, c, 2 * step)
    while b is None:
        c = a + step
        a, b, step = (a, c, step) if h(c) > 0 else (c, None, 2 * step)
    tol = mp.mpf(10) ** (-mp.mp.dps + 5)
    while b - a > tol * max(1, abs(a), abs(b)):
        mid = (a + b) / 2
        a, b = (mid, b) if h(mid) < 0 else (a, mid)
    rho = (a + b) / 2
    L = (rho - 1) * r0 + s0
    if lo is not None and rho - lo < 1e-8 * max(1, abs(rho)):
        def f(u):
            d = mp.exp(u)
            return hd(lo + d, d * r0, r0 - (lo + d) * s0)

        ua, ub = -2 * abs(rho) - 2000, mp.log(1e-7 * max(1, abs(rho)))
        while ub - ua > tol * max(1, abs(ua)):
            mid = (ua + ub) / 2
            ua, ub = (mid, ub) if f(mid) < 0 else (ua, mid)
        d = mp.exp((ua + ub) / 2)
        rho, L = lo + d, d * r0
    s = L / (rho * (rho - 1) + 1)
    return s * rho, s, s * mp.exp(rho)


def mp_proj_exp(v: np.ndarray) -> np.ndarray:
    with mp.workdps(50):
        return np.array([float(x) for x in _mp_proj_exp(*(mp.mpf(float(c)) for c in v))])


def mp_dproj_exp(v: np.ndarray) -> np.ndarray:
    """DΠ_{K_exp}(v) by central differences in 50-digit arithmetic (step 1e-18 |v|)."""
    return _mp_dproj_exp_parts(v, 50, 1e-18)[0]


def _mp_dproj_exp_parts(v: np.ndarray, dps: int = 60, step: float = 1e-25
                        ) -> tuple[np.ndarray, np.ndarray]:
    """DΠ_{K_exp}(v) and the polar projection's derivative I − DΠ_{K_exp}(v), each by central
    differences in ``dps``-digit arithmetic (step ``step`` |v|): I − D is formed in mpmath,
    so its small entries keep their digits."""
    with mp.workdps(dps):
        x = [mp.mpf(float(c)) for c in v]
        h = mp.mpf(step) * max(1, max(abs(c) for c in x))
        D, C = np.empty((3, 3)), np.empty((3, 3))
        for j in range(3):
            xp, xm = list(x), list(x)
            xp[j] += h
            xm[j] -= h
            P, M = _mp_proj_exp(*xp), _mp_proj_exp(*xm)
            D[:, j] = [float((p - m) / (2 * h)) for p, m in zip(P, M, strict=True)]
            C[:, j] = [float(((a - p) - (b - m)) / (2 * h))
                       for a, p, b, m in zip(xp, P, xm, M, strict=True)]
        return D, C


def exp_case(V: np.ndarray) -> np.ndarray:
    """Friberg's case (1-4) of each row (r, s, t) of V."""
    r, s, t = V.T
    with np.errstate(all="ignore"):
        in_k = (s > 0) & (s * np.exp(r / s) <= t)
        in_p = (r > 0) & (r * np.exp(s / r - 1) <= -t)
    c3 = (r <= 0) & (s <= 0)
    return np.select([in_k, in_p, c3], [1, 2, 3], 4)


def fd_jacobian(V: np.ndarray, dims: ConeDims, dual: bool, h: float = 1e-6) -> np.ndarray:
    B, m = V.shape
    J = np.empty((B, m, m))
    for j in range(m):
        E = np.zeros(m)
        E[j] = h
        J[:, :, j] = (project(V + E, dims, dual) - project(V - E, dims, dual)) / (2 * h)
    return J


def block_diag_mask(dims: ConeDims) -> np.ndarray:
    """(m, m) True inside the diagonal cone blocks."""
    sizes = [1] * (dims.zero + dims.nonneg) + list(dims.soc)
    sizes += [k * (k + 1) // 2 for k in dims.psd] + [3] * (dims.exp + dims.exp_dual)
    mask = np.zeros((dims.size, dims.size), dtype=bool)
    off = 0
    for k in sizes:
        mask[off:off + k, off:off + k] = True
        off += k
    return mask


# ----------------------------------------------------------------------------------------------
# ConeDims
# ----------------------------------------------------------------------------------------------
def test_conedims_size_scs_kinds():
    d = ConeDims(zero=2, nonneg=3, soc=(3, 4), psd=(2, 3), exp=2, exp_dual=1, power=(0.3,))
    assert d.size == 2 + 3 + 7 + (3 + 6) + 6 + 3 + 3
    assert d.scs() == {"z": 2, "l": 3, "q": [3, 4], "s": [2, 3], "ep": 2, "ed": 1, "p": [0.3]}
    assert d.kinds() == ("zero", "nonneg", "soc", "psd", "exp", "exp_dual", "power")
    e = ConeDims(nonneg=5, psd=[4])
    assert e.scs() == {"l": 5, "s": [4]} and e.size == 15 and e.kinds() == ("nonneg", "psd")
    assert e.psd == (4,) and hash(e) == hash(ConeDims(nonneg=5, psd=(4,)))
    assert ConeDims().size == 0 and ConeDims().scs() == {} and ConeDims().kinds() == ()
    assert ConeDims.from_scs(d.scs()) == d
    assert ConeDims.from_scs({"f": 2, "l": 1}) == ConeDims(zero=2, nonneg=1)
    for bad in (dict(nonneg=-1), dict(soc=(0,)), dict(psd=(2.5,)), dict(power=(1.5,))):
        with pytest.raises(ValueError):
            ConeDims(**bad)


def test_layout_matches_diffcp_on_every_dims():
    for dims in DIMS.values():
        assert diffcp_pi(np.zeros((1, dims.size)), dims, False).shape == (1, dims.size)


# ----------------------------------------------------------------------------------------------
# Projection: against diffcp and, for exponential cones, against mpmath
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dual", [False, True])
@pytest.mark.parametrize("name", list(DIMS))
def test_project_matches_diffcp(name, dual):
    dims = DIMS[name]
    V = random_points(dims, 24, seed=SEED[name])
    P, R = project(V, dims, dual), diffcp_pi(V, dims, dual)
    ex = exp_mask(dims)
    # exact kinds: 1e-10 (observed ~1e-15)
    np.testing.assert_allclose(P[:, ~ex], R[:, ~ex], rtol=0, atol=1e-10)
    if ex.any():
        # diffcp's exponential-cone projection is only accurate to ~1e-9..1e-6 (its own error,
        # measured against mpmath, below); agree with it up to that error, and to 1e-10 in
        # Friberg's closed-form cases 1-3.
        Vx = V[:, ex].reshape(-1, 3)
        Px, Rx = P[:, ex].reshape(-1, 3), R[:, ex].reshape(-1, 3)
        flip = np.tile(np.repeat([dual, not dual], [dims.exp, dims.exp_dual]), V.shape[0])
        W = np.where(flip[:, None], -Vx, Vx)  # dual cones: Π_{K*}(v) = v + Π_K(−v)
        M = np.stack([mp_proj_exp(w) for w in W])
        M = np.where(flip[:, None], Vx + M, M)
        dc_err = np.abs(Rx - M).max(axis=1)
        my_err = np.abs(Px - M).max(axis=1)
        gap = np.abs(Px - Rx).max(axis=1)
        assert np.all(gap <= 1e-10 + 1.01 * dc_err), gap.max()
        assert np.all(gap <= 1e-5 * np.maximum(1, np.abs(Vx).max(axis=1)))
        assert np.all(my_err <= 1e-13 * np.maximum(1, np.abs(Vx).max(axis=1)))
        trivial = exp_case(W) < 4
        assert np.all(gap[trivial] <= 1e-10)


def test_exp_project_matches_mpmath_over_wide_range():
    """Friberg's test domain (±e^k, k = -20..21, and 0, in every coordinate), subsampled, plus
    the four cases and both boundaries: relative error ≲ 1e-15 in the projection onto K_exp and
    onto its polar (through dual=True: Π_{K*}(v) = −Π_{K°}(−v))."""
    rng = np.random.default_rng(7)
    dom = np.concatenate([-np.exp(np.arange(-20.0, 22.0)), [0.0], np.exp(np.arange(-20.0, 22.0))])
    V = np.concatenate([rng.choice(dom, (300, 3)), _exp_points(rng, 120)])
    dims = ConeDims(exp=len(V))
    P = project(V.ravel(), dims).reshape(-1, 3)
    Pd = project(-V.ravel(), dims, dual=True).reshape(-1, 3)  # = −Π_{K°}(v) = Π_K(v) − v
    M = np.stack([mp_proj_exp(v) for v in V])
    nv = np.linalg.norm(V, axis=1)
    assert np.all(np.abs(P - M).max(axis=1) <= 1e-14 * nv)  # observed ~7e-16
    assert np.all(np.abs((V + Pd) - M).max(axis=1) <= 1e-13 * nv)  # observed ~7e-15
    assert set(exp_case(V)) == {1, 2, 3, 4}


def test_exp_kkt_on_friberg_grid():
    """Friberg's grid (±e^k and 0 in every coordinate; k = -20..21 in steps of 2 here): Moreau
    decomposition, orthogonality and feasibility to ~1e-14 relative."""
    k = np.arange(-20.0, 22.0, 2)
    dom = np.concatenate([-np.exp(k), [0.0], np.exp(k + 1)])
    V = np.stack(np.meshgrid(dom, dom, dom, indexing="ij"), -1).reshape(-1, 3)
    dims = ConeDims(exp=len(V))
    P = project(V.ravel(), dims).reshape(-1, 3)
    Q = project(-V.ravel(), dims, dual=True).reshape(-1, 3)  # Π_{K*}(−v) = −Π_{K°}(v)
    nv = np.linalg.norm(V, axis=1) + 1e-300
    assert np.all(np.isfinite(P)) and np.all(np.isfinite(Q))
    assert np.all(np.linalg.norm(P - Q - V, axis=1) <= 1e-13 * nv)
    assert np.all(np.abs(np.sum(P * Q, axis=1)) <= 1e-14 * nv**2)
    # P in K_exp: s, t >= 0 and s e^{r/s} <= t; upper bounds on the distance to K_exp are
    # s e^{r/s} − t (raise t) and r − s log(t/s) (lower r); r itself where s = 0
    r, s, t = P.T
    assert np.all(s >= 0) and np.all(t >= 0)
    with np.errstate(all="ignore"):
        gap = np.minimum(s * np.exp(r / s) - t, np.where(t > 0, r - s * np.log(t / s), np.inf))
    viol = np.where(s > 0, gap, r)
    assert np.all(viol <= 1e-13 * nv)


# ----------------------------------------------------------------------------------------------
# Derivative: against diffcp, finite differences, mpmath
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dual", [False, True])
@pytest.mark.parametrize("name", list(DIMS))
def test_dproject_matches_diffcp(name, dual):
    dims = DIMS[name]
    V = random_points(dims, 8, seed=10 + SEED[name], near=False)
    D, R = dproject(V, dims, dual).dense(), diffcp_dpi(V, dims, dual)
    ex = exp_mask(dims)
    np.testing.assert_allclose(D[:, ~ex][:, :, ~ex], R[:, ~ex][:, :, ~ex], rtol=0, atol=1e-8)
    assert np.all(D[:, ~ex][:, :, ex] == 0) and np.all(D[:, ex][:, :, ~ex] == 0)
    if ex.any():
        # diffcp differentiates at its own (inexact) exponential-cone projection: exact in cases
        # 1-3, ~1e-6 in case 4 (and wrong where its projection lands on s = 0 exactly; those
        # are excluded here, our derivative is checked against mpmath below).
        n3 = dims.exp + dims.exp_dual
        Dx = D[:, ex][:, :, ex].reshape(-1, n3, 3, n3, 3)
        Rx = R[:, ex][:, :, ex].reshape(-1, n3, 3, n3, 3)
        Dx = np.stack([Dx[:, i, :, i, :] for i in range(n3)], 1).reshape(-1, 3, 3)
        Rx = np.stack([Rx[:, i, :, i, :] for i in range(n3)], 1).reshape(-1, 3, 3)
        Vx = V[:, ex].reshape(-1, 3)
        flip = np.tile(np.repeat([dual, not dual], [dims.exp, dims.exp_dual]), V.shape[0])
        W = np.where(flip[:, None], -Vx, Vx)
        case = exp_case(W)
        Pdc = np.stack([_diffcp.project_exp_cone(w) for w in W])
        gap = np.abs(Dx - Rx).max(axis=(1, 2))
        assert np.all(gap[case < 4] <= 1e-8)
        ok = (case == 4) & (Pdc[:, 1] > 0)
        assert np.all(gap[ok] <= 1e-5), gap[ok].max()


@pytest.mark.parametrize("dual", [False, True])
@pytest.mark.parametrize("name", list(DIMS))
def test_dproject_matches_finite_differences(name, dual):
    dims = DIMS[name]
    V = random_points(dims, 6, seed=20 + SEED[name], near=False)  # steps of 1e-6 stay put
    D = dproject(V, dims, dual).dense()
    J = fd_jacobian(V, dims, dual)
    np.testing.assert_allclose(D, J, rtol=0, atol=1e-6)


def test_exp_dproject_matches_mpmath():
    """Exponential-cone derivative against 50-digit central differences of the mpmath projection,
    in all four cases (away from the kinks) and over a range of scales."""
    rng = np.random.default_rng(11)
    V = _exp_points(rng, 36)
    V *= np.exp(rng.uniform(-5, 5, (len(V), 1)))
    D = dproject(V.ravel()[None], ConeDims(exp=len(V))).dense()[0]
    Dx = np.stack([D[3 * i:3 * i + 3, 3 * i:3 * i + 3] for i in range(len(V))])
    M = np.stack([mp_dproj_exp(v) for v in V])
    err = np.abs(Dx - M).max(axis=(1, 2))
    assert np.all(err <= 1e-12), err.max()  # observed ~5e-16
    assert set(exp_case(V)) == {1, 2, 3, 4}


def test_exp_dproject_keeps_every_entry_where_one_part_is_tiny():
    """v = sp·(ρ, 1, e^ρ) + m·(1, 1 − ρ, −e^{−ρ}) with m/sp over 1e-14 … 1e10 and ρ over
    −30 … 20: every entry of DΠ_K(v) and of the polar cone's I − DΠ_K(v) (the dual
    projection's derivative at −v) within 1e-8 of itself, against 60-digit mpmath. Formed as
    I − D in float64, entries down to 1e-20 came out as rounding of 1 (relative errors up to
    1e4, and 1e-7 … 1e-3 at entries of 1e-14 … 1e-10)."""
    worst = 0.0
    for rho in (-30.0, -22.0, -5.0, 0.5, 3.0, 20.0):
        for ratio in (1e-14, 1e-10, 1e-6, 1.0, 1e6, 1e10):
            v = np.array([rho, 1.0, np.exp(rho)]) + ratio * np.array([1.0, 1 - rho,
                                                                        -np.exp(-rho)])
            v /= np.abs(v).max()
            D = dproject(v, ConeDims(exp=1)).dense()
            C = dproject(-v, ConeDims(exp=1), dual=True).dense()  # I − DΠ_K(v)
            MD, MC = _mp_dproj_exp_parts(v)
            for got, want in ((D, MD), (C, MC)):
                worst = max(worst, float((np.abs(got - want) / np.abs(want)).max()))
    assert worst <= 1e-8, worst  # observed 2e-10


# ----------------------------------------------------------------------------------------------
# Properties
# ----------------------------------------------------------------------------------------------
ALL = DIMS["mixed"]


@pytest.mark.parametrize("dual", [False, True])
def test_idempotent_moreau_orthogonal(dual):
    V = random_points(ALL, 20, seed=5)
    P = project(V, ALL, dual)
    np.testing.assert_allclose(project(P, ALL, dual), P, rtol=0, atol=1e-12)
    # Moreau: v = Π_K(v) − Π_{K*}(−v), the two parts orthogonal (and K** = K)
    Q = project(-V, ALL, not dual)
    np.testing.assert_allclose(P - Q, V, rtol=0, atol=1e-12)
    assert np.abs(np.sum(P * Q, axis=1)).max() <= 1e-12


@pytest.mark.parametrize("dual", [False, True])
def test_dense_symmetric_matvec_and_moreau_derivative(dual):
    V = random_points(ALL, 10, seed=6)
    Dop = dproject(V, ALL, dual)
    assert isinstance(Dop, DProjection) and Dop.shape == (10, ALL.size, ALL.size)
    D = Dop.dense()
    assert D.shape == (10, ALL.size, ALL.size)
    np.testing.assert_allclose(D, np.swapaxes(D, 1, 2), rtol=0, atol=1e-13)
    assert np.all(D[:, ~block_diag_mask(ALL)] == 0)
    lam = np.linalg.eigvalsh(D)  # derivative of a projection onto a convex set: 0 ⪯ D ⪯ I
    assert lam.min() >= -1e-12 and lam.max() <= 1 + 1e-12
    rng = np.random.default_rng(0)
    dv = rng.standard_normal((10, ALL.size))
    np.testing.assert_allclose(Dop.matvec(dv), np.einsum("bij,bj->bi", D, dv), atol=1e-13)
    dvk = rng.standard_normal((10, ALL.size, 4))
    np.testing.assert_allclose(Dop.matvec(dvk), D @ dvk, atol=1e-13)
    np.testing.assert_allclose(Dop.rmatvec(dvk), D @ dvk, atol=1e-13)
    for i in (0, 9):
        np.testing.assert_allclose(Dop.sparse(i).toarray(), D[i], rtol=0, atol=0)
    # Π_{K*}(v) = v + Π_K(−v)  ⇒  DΠ_{K*}(v) = I − DΠ_K(−v)
    np.testing.assert_allclose(dproject(-V, ALL, not dual).dense(), np.eye(ALL.size) - D,
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("dual", [False, True])
def test_batched_equals_looped_and_unbatched_shapes(dual):
    V = random_points(ALL, 7, seed=8)
    P, Dop = project(V, ALL, dual), dproject(V, ALL, dual)
    D = Dop.dense()
    dv = np.random.default_rng(1).standard_normal((7, ALL.size, 2))
    for i in range(7):
        Pi = project(V[i], ALL, dual)
        assert Pi.shape == (ALL.size,)
        np.testing.assert_allclose(Pi, P[i], rtol=0, atol=1e-14)
        Di = dproject(V[i], ALL, dual)
        assert Di.dense().shape == (ALL.size, ALL.size) and Di.shape == (ALL.size, ALL.size)
        np.testing.assert_allclose(Di.dense(), D[i], rtol=0, atol=1e-14)
        np.testing.assert_allclose(Di.matvec(dv[i]), D[i] @ dv[i], atol=1e-13)
        np.testing.assert_allclose(Di.matvec(dv[i, :, 0]), D[i] @ dv[i, :, 0], atol=1e-13)


def test_per_kind_formulas_and_kink_conventions():
    # zero cone: Π = 0, dual (free) Π = v
    v = np.array([[1.0, -2.0]])
    d = ConeDims(zero=2)
    assert np.all(project(v, d) == 0) and np.all(project(v, d, dual=True) == v)
    assert np.all(dproject(v, d).dense() == 0)
    assert np.all(dproject(v, d, True).dense() == np.eye(2))
    # nonneg: d max(x, 0)/dx = 1 at x = 0 (boundary counted in the cone)
    d = ConeDims(nonneg=3)
    np.testing.assert_array_equal(dproject(np.array([[-1.0, 0.0, 2.0]]), d).dense()[0],
                                  np.diag([0.0, 1.0, 1.0]))
    # SOC: ||x|| = t → I, ||x|| = −t ≠ 0 → 0, apex → I; closed form in between
    d = ConeDims(soc=(3,))
    assert np.all(dproject(np.array([[5.0, 3.0, 4.0]]), d).dense()[0] == np.eye(3))
    assert np.all(dproject(np.array([[-5.0, 3.0, 4.0]]), d).dense()[0] == 0)
    assert np.all(dproject(np.zeros((1, 3)), d).dense()[0] == np.eye(3))
    np.testing.assert_allclose(project(np.array([1.0, 3.0, 4.0]), d), [3.0, 1.8, 2.4])
    # PSD: diag(2, −1) → diag(2, 0); Γ = [[1, 2/3], [2/3, 0]] in svec coordinates (x11, √2 x21,
    # x22): D = diag(1, 2/3, 0); a zero eigenvalue counts as nonnegative
    d = ConeDims(psd=(2,))
    np.testing.assert_allclose(project(np.array([2.0, 0.0, -1.0]), d), [2.0, 0.0, 0.0])
    np.testing.assert_allclose(dproject(np.array([2.0, 0.0, -1.0]), d).dense(),
                               np.diag([1.0, 2.0 / 3.0, 0.0]), atol=1e-15)
    np.testing.assert_allclose(dproject(np.array([2.0, 0.0, 0.0]), d).dense(), np.eye(3),
                               atol=1e-15)
    # exp: interior of K → I, interior of the polar → 0, case 3 → diag(1, 0, [t >= 0])
    d = ConeDims(exp=4)
    v = np.array([0.0, 1.0, 2.0, 1.0, 0.0, -1.0, -1.0, -1.0, 1.0, -1.0, -1.0, -1.0])
    np.testing.assert_allclose(project(v, d), [0, 1, 2, 0, 0, 0, -1, 0, 1, -1, 0, 0])
    D = dproject(v, d).dense()
    blocks = [D[3 * i:3 * i + 3, 3 * i:3 * i + 3] for i in range(4)]
    np.testing.assert_array_equal(blocks[0], np.eye(3))
    np.testing.assert_array_equal(blocks[1], np.zeros((3, 3)))
    np.testing.assert_array_equal(blocks[2], np.diag([1.0, 0.0, 1.0]))
    np.testing.assert_array_equal(blocks[3], np.diag([1.0, 0.0, 0.0]))


def test_exp_scale_invariance_and_nonfinite():
    rng = np.random.default_rng(4)
    V = _exp_points(rng, 60)
    d = ConeDims(exp=len(V))
    P = project(V.ravel(), d)
    for c in (1e-150, 1e150):
        np.testing.assert_allclose(project(c * V.ravel(), d) / c, P, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(dproject(c * V.ravel(), d).dense(), dproject(V.ravel(), d)
                                   .dense(), rtol=0, atol=1e-12)


def test_exp_extreme_magnitudes():
    """Coordinates of magnitude 1e-300..1e300 and exact zeros: finite results, Moreau
    decomposition and orthogonality to ~1e-14 relative, 0 ⪯ DΠ ⪯ I (no overflow, no hang)."""
    rng = np.random.default_rng(12)
    V = rng.choice([-1.0, 1.0], (20000, 3)) * 10.0 ** rng.uniform(-300, 300, (20000, 3))
    V[rng.random(V.shape) < 0.05] = 0.0
    d = ConeDims(exp=len(V))
    P = project(V.ravel(), d).reshape(-1, 3)
    Q = project(-V.ravel(), d, dual=True).reshape(-1, 3)  # Π_{K*}(−v) = −Π_{K°}(v)
    D = dproject(V.ravel()[None], d)._exp[0]  # the (n, 3, 3) blocks
    assert np.all(np.isfinite(P)) and np.all(np.isfinite(Q)) and np.all(np.isfinite(D))
    sc = np.abs(V).max(axis=1, keepdims=True)
    keep = sc[:, 0] > 0
    Vs, Ps, Qs = V[keep] / sc[keep], P[keep] / sc[keep], Q[keep] / sc[keep]
    nv = np.linalg.norm(Vs, axis=1)
    assert np.all(np.linalg.norm(Ps - Qs - Vs, axis=1) <= 1e-13 * nv)
    assert np.all(np.abs(np.sum(Ps * Qs, axis=1)) <= 1e-13 * nv**2)
    lam = np.linalg.eigvalsh(D)
    assert lam.min() >= -1e-12 and lam.max() <= 1 + 1e-12


@pytest.mark.parametrize("dual", [False, True])
def test_exp_warm_started_roots_give_the_cold_projection(dual):
    """DΠ at points moved from those of ``near`` (relative steps 1e-12 … 1, and a fresh point)
    equals DΠ computed from scratch to ~1e-14 relative, across 1e-200 … 1e200; a ``near`` of
    another batch size or of the other cone is not read."""
    rng = np.random.default_rng(21)
    d = ConeDims(exp=40, exp_dual=20)
    B = 6
    V0 = rng.standard_normal((B, d.size)) * 10.0 ** rng.uniform(-200, 200, (B, 1))
    step = 10.0 ** rng.uniform(-12, 0, (B, 1)) * rng.standard_normal((B, d.size))
    V1 = V0 + step * np.abs(V0).max(axis=1, keepdims=True)
    V1[-1] = rng.standard_normal(d.size)  # nothing near
    near = dproject(V0, d, dual)
    warm, cold = dproject(V1, d, dual, near=near), dproject(V1, d, dual)
    sc = np.abs(V1).max(axis=1)[:, None]
    np.testing.assert_allclose(warm.point / sc, cold.point / sc, rtol=0, atol=1e-14)
    np.testing.assert_allclose(warm.dense(), cold.dense(), rtol=0, atol=1e-12)
    roots = np.isfinite(cold._exp_roots)
    assert roots.sum() > 100  # the root-finding case is exercised
    np.testing.assert_array_equal(np.isfinite(warm._exp_roots), roots)
    for other in (dproject(V0[:2], d, dual), dproject(V0, d, not dual)):
        again = dproject(V1, d, dual, near=other)
        np.testing.assert_array_equal(again.point, cold.point)


def _exp_ray_points(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) points v = s·(ρ, 1, e^ρ) + m·(1, 1 − ρ, −e^{−ρ}) with |ρ| up to 45 and the two
    parts' factors s, m over 1e-18 … 1 (v within 1e-18 of K or of its polar, and far from
    both), each entry then moved by a relative 1e-17 … 1e-8."""
    rho = rng.uniform(-45, 45, n) * 10.0 ** rng.uniform(-2, 0, n)
    sp, m = 10.0 ** rng.uniform(-18, 0, (2, n))
    V = (sp[:, None] * np.stack([rho, np.ones(n), np.exp(rho)], 1)
         + m[:, None] * np.stack([np.ones(n), 1 - rho, -np.exp(-rho)], 1))
    return V * (1 + 10.0 ** rng.uniform(-17, -8, (n, 1)) * rng.standard_normal((n, 3)))


def test_exp_root_candidates_alone_where_heuristics_are_skipped(monkeypatch):
    """Where `_exp` leaves out Friberg's heuristic points, they would not have been taken: the
    same projections and derivatives, bitwise, as with them formed for every cone (near K and
    its polar, at large |ρ|, on Friberg's grid, at 1e±300)."""
    from declarative import cones

    rng = np.random.default_rng(5)
    k = np.arange(-20.0, 22.0, 2)
    dom = np.concatenate([-np.exp(k), [0.0], np.exp(k + 1)])
    grid = np.stack(np.meshgrid(dom, dom, dom, indexing="ij"), -1).reshape(-1, 3)
    wide = rng.standard_normal((20000, 3)) * 10.0 ** rng.uniform(-300, 300, (20000, 3))
    V = np.concatenate([_exp_ray_points(rng, 100000), grid, wide])
    fast = cones._exp(V, True)
    plain = cones.RHO_PLAIN
    monkeypatch.setattr(cones, "RHO_PLAIN", -1.0)  # every cone: candidates compared
    full = cones._exp(V, True)
    for a, b in zip(fast, full, strict=True):
        np.testing.assert_array_equal(a, b)
    roots = fast[3]
    assert np.sum(np.isfinite(roots) & (np.abs(roots) <= plain)) > 50000  # (skipped there)


def test_exp_roots_at_a_point_start_the_projection():
    """`exp_roots_at` reads the roots of Π_{K*} at v = y − s off the parts y = Π_{K*}(v) and
    s = y − v: they are the cold projection's roots, and the projection started from them
    moved by a relative 1e-3 (a solver's point at its default tolerance) is the cold one."""
    from declarative.cones import exp_roots_at

    rng = np.random.default_rng(8)
    d = ConeDims(exp=30, exp_dual=20)
    B = 4
    v = np.stack([_exp_ray_points(rng, d.size // 3).ravel() for _ in range(B)])
    cold = dproject(v, d, dual=True)
    y = cold.point
    s = y - v  # Π_K(−v) (Moreau)
    roots = exp_roots_at(s, y, d)
    ok = np.isfinite(cold._exp_roots) & (np.abs(cold._exp_roots) < 30)
    assert ok.sum() > 100
    np.testing.assert_allclose(roots[ok], cold._exp_roots[ok], rtol=1e-9, atol=1e-12)
    moved = roots * (1 + 1e-3 * rng.standard_normal(roots.shape))
    warm = dproject(v, d, dual=True, start=moved)
    sc = np.abs(v).max(axis=1)[:, None]
    np.testing.assert_allclose(warm.point / sc, cold.point / sc, rtol=0, atol=1e-14)
    np.testing.assert_allclose(warm.dense(), cold.dense(), rtol=0, atol=1e-12)
    assert exp_roots_at(s, y, ConeDims(zero=d.size)) is None


def test_nonfinite_inputs_give_nan_locally():
    d = DIMS["mixed"]
    V = random_points(d, 3, seed=13)
    V[1, :] = np.nan
    V[2, 2] = np.inf  # a nonneg entry
    V[2, d.size - 2] = np.nan  # inside the last exponential cone
    for dual in (False, True):
        P, D = project(V, d, dual), dproject(V, d, dual)
        ref, Dref = project(V[[0]], d, dual), dproject(V[[0]], d, dual)
        np.testing.assert_array_equal(P[0], ref[0])
        np.testing.assert_array_equal(D.dense()[0], Dref.dense()[0])
        assert np.all(np.isnan(P[1, d.zero:]))
        assert np.all(np.isnan(D.matvec(np.ones((3, d.size)))[1, d.zero:]))
        assert np.all(np.isnan(P[2, -3:])) and np.all(np.isfinite(P[2, d.zero + 3:-3]))


def test_errors():
    with pytest.raises(ValueError, match="dims.size"):
        project(np.zeros(5), ConeDims(nonneg=4))
    with pytest.raises(ValueError):
        project(np.zeros((2, 3, 4)), ConeDims(nonneg=4))
    for bad in (0.0, 1.0, -1.0):
        with pytest.raises(ValueError, match="power exponents"):
            ConeDims(power=(0.5, bad))
    D = dproject(np.zeros((2, 4)), ConeDims(nonneg=4))
    with pytest.raises(ValueError):
        D.matvec(np.zeros((3, 4)))
    assert project(np.zeros((3, 0)), ConeDims()).shape == (3, 0)


@pytest.mark.parametrize("dual", [False, True])
def test_derivative_carries_the_projection_and_subsets(dual):
    """`DProjection.point` is `project` bitwise (refinement uses it instead of projecting
    again); `take` and `put` move batch rows of every cone kind's data."""
    V = random_points(ALL, 6, seed=11)
    Dop = dproject(V, ALL, dual)
    assert np.array_equal(Dop.point, project(V, ALL, dual), equal_nan=True)
    assert np.array_equal(dproject(V[2], ALL, dual).point, project(V[2], ALL, dual))
    rows = np.array([4, 1])
    sub = Dop.take(rows)
    np.testing.assert_array_equal(sub.dense(), Dop.dense()[rows])
    np.testing.assert_array_equal(sub.point, Dop.point[rows])
    other = dproject(V[[0, 3]], ALL, dual)
    Dop.put(rows, other)
    expected = dproject(V[[0, 1, 2, 3, 4, 5]][[0, 3, 2, 3, 0, 5]], ALL, dual)
    np.testing.assert_array_equal(Dop.dense(), expected.dense())
    np.testing.assert_array_equal(Dop.point, expected.point)


def test_psd_blocks_as_low_rank_updates_of_zero_or_identity():
    """Each PSD block of DΠ equals base·I + Q diag(h) Qᵀ (`low_rank_columns`), base 0 or 1
    with the fewer columns, ρ = r(r+1)/2 + r(k−r) for r eigenvalues on the short side, and
    `low_rank` counts them; checked against the dense blocks at points of every rank."""
    from declarative.cones import ConeDims, block_pattern, dproject, group_entries

    dims = ConeDims(zero=1, nonneg=2, soc=(3,), psd=(5, 4), exp=1)
    rng = np.random.default_rng(7)
    V = rng.standard_normal((6, dims.size))
    # block 1 (k = 5): rank 0 … 5 of positive eigenvalues across the batch
    for b in range(6):
        lam = np.concatenate([rng.uniform(0.5, 2, b), -rng.uniform(0.5, 2, 5 - b)])
        Qm, _ = np.linalg.qr(rng.standard_normal((5, 5)))
        M = (Qm * lam) @ Qm.T
        I, J = np.tril_indices(5)
        order = np.lexsort((I, J))  # svec: lower triangle by column
        I, J = I[order], J[order]
        V[b, 6:21] = M[I, J] * np.where(I == J, 1.0, np.sqrt(2))
    D = dproject(V, dims, dual=True)
    dense = D.dense()
    rows, cols = block_pattern(dims)
    groups = frozenset({("psd", 5), ("psd", 4)})
    mask = group_entries(dims, groups)
    assert set(zip(rows[mask].tolist(), cols[mask].tolist(), strict=True)) == {
        (i, j) for idx in (np.arange(6, 21), np.arange(21, 31)) for i in idx for j in idx}
    for b in range(6):
        total = 0
        for idx, base, Q, h in D.low_rank_columns(b, groups):
            block = base * np.eye(idx.size) + (Q * h) @ Q.T
            assert np.abs(block - dense[b][np.ix_(idx, idx)]).max() <= 1e-14
            total += h.size
        assert total == D.low_rank(groups)[b]
        r = min(b, 5 - b)  # eigenvalues on the short side of block 1
        (rho,) = [h.size for idx, _, _, h in D.low_rank_columns(b, groups) if idx[0] == 6]
        assert rho == r * (r + 1) // 2 + r * (5 - r)


def test_interior_depth_bounds_the_distance_to_the_boundary():
    """`interior_depth` at points inside every cone kind: the ball of that radius about the
    point lies in K where the bound is exact (second-order, PSD: random directions at 0.999
    of it stay in K), and it is never below the distance to the boundary, min ⟨u, s⟩ over
    unit u in K* (for the 3-d cones over K*'s boundary rays: a grid, then Brent's method).
    Zero and nonnegative rows get 0."""
    rng = np.random.default_rng(21)
    dims = ConeDims(zero=1, nonneg=2, soc=(4,), psd=(3,), exp=3, exp_dual=2, power=(0.3, -0.6))
    eye = project(np.array([1.0, 0, 0, 1, 0, 1]), ConeDims(psd=(3,)))
    inner = np.concatenate([[0.0, 0.0, 0.0], [1.0, 0, 0, 0], eye, np.tile([-1.0, 1.0, 1.0], 5),
                            [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]])
    soc, psd = slice(3, 7), slice(7, 13)
    three = [("exp", 13), ("exp", 16), ("exp", 19), ("exp_dual", 22), ("exp_dual", 25),
             (0.3, 28), (-0.6, 31)]
    for _ in range(40):
        scale = 10.0 ** rng.uniform(-6, 6)
        s = (project(rng.standard_normal(dims.size), dims) + rng.uniform(0, 2) * inner) * scale
        d = interior_depth(s, dims)
        assert np.all(d[:3] == 0) and np.all(d >= 0)
        for at, sub in ((soc, ConeDims(soc=(4,))), (psd, ConeDims(psd=(3,)))):
            blk, dk = s[at], d[at]
            assert np.ptp(dk) == 0
            for _ in range(20):
                u = rng.standard_normal(blk.size)
                p = blk + 0.999 * dk[0] * u / np.linalg.norm(u)
                assert np.linalg.norm(project(p, sub) - p) <= 1e-12 * scale
            # the witness u in K*: (1, −x/‖x‖)/√2, and the least eigenvector
            if at == soc:
                x = blk[1:] if np.any(blk[1:]) else np.eye(3)[0]
                u = np.concatenate([[1.0], -x / np.linalg.norm(x)]) / np.sqrt(2)
            else:
                lam, U = np.linalg.eigh(_unvec_sym(blk))
                u = _svec_sym(np.outer(U[:, 0], U[:, 0]))
            np.testing.assert_allclose(dk[0], max(u @ blk, 0.0), rtol=1e-9, atol=1e-13 * scale)
        for kind, at in three:
            blk, dk = s[at : at + 3], d[at : at + 3]
            assert np.ptp(dk) == 0
            assert dk[0] >= (1 - 1e-9) * _depth_3d(kind, blk) - 1e-14 * scale


def _depth_3d(kind, s):
    """min ⟨u, s⟩ over unit u in the dual of the cone ``kind`` ("exp", "exp_dual", or a
    power cone's signed exponent): over the dual's boundary rays, one parameter (a grid, then
    Brent's method about its least point), and its facets' rays."""
    if kind == "exp":  # K*_exp: (−1, v, e^{−v−1}); (0, 1, 0), (0, 0, 1)
        def ray(v):
            return [-1.0, v, np.exp(-v - 1)]
        lo, hi, facets = -40.0, 40.0, [[0, 1, 0], [0, 0, 1]]
    elif kind == "exp_dual":  # K_exp: (x, 1, e^x); (−1, 0, 0), (0, 0, 1)
        def ray(v):
            return [v, 1.0, np.exp(v)]
        lo, hi, facets = -40.0, 40.0, [[-1, 0, 0], [0, 0, 1]]
    else:  # the power cone's dual: (cos θ, sin θ, its bound with the sign against z's)
        a, sign = abs(kind), -np.sign(s[2]) or 1.0

        def ray(t):
            x, y = np.cos(t), np.sin(t)
            bound = (x / a) ** a * (y / (1 - a)) ** (1 - a) if kind > 0 else x**a * y ** (1 - a)
            return [x, y, sign * bound]
        lo, hi, facets = 0.0, np.pi / 2, []

    def along(v):
        u = np.stack(np.broadcast_arrays(*ray(np.asarray(v, dtype=float))), axis=-1)
        return u @ s / np.linalg.norm(u, axis=-1)
    grid = np.linspace(lo, hi, 8001)
    k = int(np.argmin(along(grid)))
    best = minimize_scalar(along, bounds=(grid[max(k - 1, 0)], grid[min(k + 1, 8000)]),
                           method="bounded", options={"xatol": 1e-12}).fun
    return min([best] + [np.asarray(f, float) @ s for f in facets])


def _unvec_sym(s):
    i, j = np.triu_indices(3)
    M = np.zeros((3, 3))
    M[i, j] = np.where(i == j, s, s / np.sqrt(2))
    return M + np.triu(M, 1).T


def _svec_sym(M):
    i, j = np.triu_indices(3)
    return np.where(i == j, M[i, j], np.sqrt(2) * M[i, j])


@pytest.mark.parametrize("k", [0, 1, 2])
def test_a_power_apex_is_released_onto_the_face_its_data_row_asks_for(k):
    """A power cone block (a = 0.3) with s = 0 and y inside K*, whose row k holds only data
    b_k: y's entry k moves where y lies on ∂K*, s to the complementary ray of ∂K with
    s_k = b_k (checked against the cones' defining equations, not the formula). Blocks
    without exactly one such row, or with s ≠ 0, stay as they are."""
    a = 0.3
    dims = ConeDims(power=(a, a, a))
    y = np.array([[2.0, 3.0, -0.5] * 3])
    s = np.zeros((1, 9))
    s[0, 6] = 1e-3  # the third block's slack is not 0
    b = np.zeros((1, 9))
    b[0, [k, 3 + k, 6 + k]] = 0.7 if k < 2 else -0.7
    empty = np.zeros((1, 9), dtype=bool)
    empty[0, [k, 6 + k]] = True  # the second block's row k is not data alone
    y2, s2, moved = power_apexes_released(y, s, b, empty, dims)
    assert moved.tolist() == [True]
    assert np.array_equal(y2[0, 3:], y[0, 3:]) and np.array_equal(s2[0, 3:], s[0, 3:])
    (u, v, w), (x1, x2, z) = y2[0, :3], s2[0, :3]
    assert np.isclose((u / a) ** a * (v / (1 - a)) ** (1 - a), abs(w), rtol=1e-13)
    assert np.isclose(x1**a * x2 ** (1 - a), abs(z), rtol=1e-13) and x1 > 0 and x2 > 0
    assert abs(u * x1 + v * x2 + w * z) <= 1e-13 * (abs(u * x1) + abs(v * x2) + abs(w * z))
    assert s2[0, k] == pytest.approx(b[0, k], rel=1e-14)
    assert np.array_equal(np.delete(y2[0, :3], k), np.delete(y[0, :3], k))


@pytest.mark.parametrize("dims", [ConeDims(exp=1), ConeDims(exp_dual=1), ConeDims(power=(0.3,)),
                                  ConeDims(power=(-0.6,))], ids=["exp", "exp_dual", "pow",
                                                                 "pow_dual"])
def test_curved_cone_kinks_are_found_and_their_sides_are_the_one_sided_limits(dims):
    """An exponential or power cone block of v = y − s at a kink of Π_{K*}: the slack 0 with
    the multiplier y on ∂K*, the multiplier 0 with the slack s on ∂K, or both 0 (the apex).
    `snap_kinks` finds each, at data scales 1e-9 … 1e9, at the kink and a relative 1e-9 off
    it on either side (found with a tolerance of 1e-7), and DΠ held (at its point, with
    `curved_limits`) and released (at `release_kinks`'s) are DΠ's one-sided limits, in
    closed form at a smooth point of the boundary: held I (inside K*), released I − ŝŝᵀ
    (the tangent plane of ∂K* at y, whose normal is s's ray); held ŷŷᵀ (the multiplier's
    ray), released 0; at the apex I and 0. A strictly complementary point (both nonzero)
    and a slack deep inside K with a multiplier of 0 are not kinks."""
    rng = np.random.default_rng(5)
    inside = np.array([-1.0, 1.0, 1.0]) if dims.exp or dims.exp_dual else np.array([1.0, 1.0, 0])
    inside /= np.linalg.norm(inside)

    def dpi(v: np.ndarray, mask: np.ndarray, released: bool) -> np.ndarray:
        D = dproject(v, dims, dual=True)
        curved_limits(D, v, mask, dims, released=released)
        return D.dense()[0]

    found = 0
    for scale in (1e-9, 1.0, 1e9):
        for _ in range(30):
            w = rng.standard_normal(3) * scale
            y = project(w, dims, dual=True)
            s = y - w
            ny, ns = np.linalg.norm(y), np.linalg.norm(s)
            if min(ny, ns) < 1e-2 * scale or min(np.abs(y).min() / ny,
                                                 np.abs(s).min() / ns) < 1e-9:
                continue  # not between K* and −K with room, or on a face (an edge of ∂K)
            found += 1
            yh, sh = y / ny, s / ns
            for v, held, released in ((y, np.eye(3), np.eye(3) - np.outer(sh, sh)),
                                      (-s, np.outer(yh, yh), np.zeros((3, 3))),
                                      (np.zeros(3), np.eye(3), np.zeros((3, 3)))):
                for off in ((0.0, 1e-9, -1e-9) if v.any() else (0.0,)):
                    at = (v + off * np.linalg.norm(v) * inside)[None]
                    snapped, mask = snap_kinks(at, dims, tol=1e-7 if off else 1e-12)
                    assert mask.all(), (scale, at)
                    D_held = dpi(snapped, mask, False)
                    D_rel = dpi(release_kinks(snapped, mask, dims), mask, True)
                    # (off the kink, the limits' rays move with the point: by up to 1e-6 of
                    # DΠ at the sharply curved points near the exponential cone's edge)
                    tol = 1e-5 if off else 1e-6
                    assert np.abs(D_held - held).max() <= tol, (scale, at, D_held, held)
                    assert np.abs(D_rel - released).max() <= tol, (scale, at, D_rel, released)
            assert not snap_kinks(w[None], dims)[1].any()
            deep = -(s + 0.5 * ns * inside)
            assert not snap_kinks(deep[None], dims)[1].any()
    assert found >= 20


def test_curved_cone_kinks_where_the_gradient_of_the_cones_function_overflows():
    """K_exp blocks (x, y, z) with x/y in 355 … 709: e^{x/y} is finite, its square is not.
    Far outside K (z ≪ y e^{x/y}) such a slack-side block is no kink, and its distance
    estimate is no distance (NaN), not g/∞ = −0 read as on the boundary; interior_depth
    gives 0 there, as an upper bound on a distance it cannot estimate."""
    dims = ConeDims(exp=3)
    s = np.array([[1.0, 1.0 / 400, 1e-3, 0.66, 1.8e-3, 3.5e-4, 1.0, 1.0 / 300, 1e-3]])
    y = np.zeros_like(s)
    y[0, 3:6] = [-1e-3, 1e-3, 1e-3]  # (another block, strictly inside K*)
    v = y - s
    snapped, mask = snap_kinks(v, dims)
    assert not mask.any() and np.array_equal(snapped, v)
    assert np.all(interior_depth(s, dims)[0, :3] == 0.0)
