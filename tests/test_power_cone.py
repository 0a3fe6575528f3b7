"""Power cones: the projection, its derivative, and layers built on them.

Oracles: the projection computed in 60-digit mpmath arithmetic by plain bisection on Hien's
scalar equation (a different variable, a different method and no cancellation issues at that
precision), the Moreau decomposition (which characterizes the projection on its own: vp ∈ K,
v − vp ∈ K°, vp ⊥ v − vp), central finite differences (of the mpmath projection, at 60 digits,
so they are exact to float64), CVXPY + Clarabel at tight tolerances and closed forms.
"""

from __future__ import annotations

import math
import warnings

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import declarative as dl
from declarative.cones import ConeDims, block_pattern, dproject, project

mp = pytest.importorskip("mpmath")


# ----------------------------------------------------------------------------------------------
# Reference projection (mpmath)
# ----------------------------------------------------------------------------------------------
def _mp_proj(v, a, dps: int = 60):
    """Π_{K_a}(v) at ``dps`` digits: closed-form cases, else bisection on r ∈ (0, |z0|) for
    Φ(r) = x(r)^a y(r)^(1−a) − r (positive left of the root, negative right of it)."""
    with mp.workdps(dps):
        x0, y0, z0 = (mp.mpf(float(c)) if not isinstance(c, mp.mpf) else c for c in v)
        a = mp.mpf(a)
        b = 1 - a
        az = abs(z0)
        if x0 >= 0 and y0 >= 0 and x0**a * y0**b >= az:
            return [x0, y0, z0]
        if x0 <= 0 and y0 <= 0 and (-x0 / a) ** a * (-y0 / b) ** b >= az:
            return [mp.mpf(0)] * 3
        if az == 0:
            return [max(x0, 0), max(y0, 0), mp.mpf(0)]

        def xy(r):
            q = r * (az - r)
            return ((x0 + mp.sqrt(x0**2 + 4 * a * q)) / 2,
                    (y0 + mp.sqrt(y0**2 + 4 * b * q)) / 2)

        lo, hi = mp.mpf(0), az
        for _ in range(4 * dps):
            mid = (lo + hi) / 2
            x, y = xy(mid)
            if x**a * y**b - mid > 0:
                lo = mid
            else:
                hi = mid
        r = (lo + hi) / 2
        x, y = xy(r)
        return [x, y, mp.sign(z0) * r]


def _mp_proj_signed(v, alpha, dps: int = 60):
    """Onto K_alpha (alpha > 0) or onto the dual cone K*_{−alpha} (alpha < 0) = v + Π_K(−v)."""
    with mp.workdps(dps):
        v = [c if isinstance(c, mp.mpf) else mp.mpf(float(c)) for c in v]
        if alpha > 0:
            return _mp_proj(v, alpha, dps)
        p = _mp_proj([-c for c in v], -alpha, dps)
        return [c + q for c, q in zip(v, p, strict=True)]


def _mp_jacobian(v, alpha, h=None):
    """Central differences of the high-precision projection: exact to float64 at smooth
    points. The step (unless given) is 1e-15 of the smallest nonzero scale of the point and
    its two Moreau parts (a coordinate of 1e-30 makes the projection vary on that scale), with
    the precision to match."""
    if h is None:
        with mp.workdps(60):
            P = np.array([float(c) for c in _mp_proj_signed(v, alpha, 60)])
        parts = np.abs(np.concatenate([np.asarray(v, dtype=float), P, np.asarray(v) - P]))
        h = 1e-15 * min(1.0, parts[parts > 0].min(initial=1.0))
    dps = int(40 - 2 * math.log10(h))
    J = np.zeros((3, 3))
    with mp.workdps(dps):
        for j in range(3):
            vp = [mp.mpf(float(c)) for c in v]
            vm = [mp.mpf(float(c)) for c in v]
            vp[j] += h
            vm[j] -= h
            P, M = _mp_proj_signed(vp, alpha, dps), _mp_proj_signed(vm, alpha, dps)
            J[:, j] = [float((p - m) / (2 * h)) for p, m in zip(P, M, strict=True)]
    return J


# ----------------------------------------------------------------------------------------------
# Points covering every case
# ----------------------------------------------------------------------------------------------
def _points(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(points (N, 3), exponents (N,) in (0, 1)): general position, inside K, inside the
    polar, just outside either boundary (relative 1e-7), the faces z0 = 0, x0 = 0 and y0 = 0,
    tiny |z0|, the origin; exponents spread over (0.02, 0.98) plus a = 1/2."""
    a = rng.uniform(0.02, 0.98, n)
    a[: n // 8] = 0.5
    x, y = rng.exponential(size=n) + 0.05, rng.exponential(size=n) + 0.05
    sz = rng.choice([-1.0, 1.0], n)
    kb = x**a * y ** (1 - a)  # |z| on the boundary of K over (x, y)
    pb = (x / a) ** a * (y / (1 - a)) ** (1 - a)  # |z| on the boundary of the polar
    c = rng.uniform(0.1, 0.9, n)
    blocks = [
        rng.standard_normal((n, 3)) * np.exp(rng.uniform(-2, 2, (n, 1))),
        np.stack([x, y, sz * c * kb], 1),  # inside K
        np.stack([x, y, sz * kb], 1),  # on its boundary
        np.stack([-x, -y, sz * c * pb], 1),  # inside the polar
        np.stack([x, y, sz * (1 + 1e-7) * kb], 1),  # just outside K
        np.stack([-x, -y, sz * (1 + 1e-7) * pb], 1),  # just outside the polar
        np.stack([-x, y, np.zeros(n)], 1),  # faces z0 = 0
        np.stack([x, -y, np.zeros(n)], 1),
        np.stack([np.zeros(n), y, sz * c], 1),  # x0 = 0, y0 = 0
        np.stack([x, np.zeros(n), sz * c], 1),
        np.stack([-x, y, sz * 1e-9], 1),  # tiny |z0|
        np.zeros((n, 3)),
    ]
    V = np.concatenate(blocks)
    return V, np.tile(a, len(blocks))


@pytest.fixture(scope="module")
def reference():
    """Points, exponents, and their 60-digit projections onto K_a and onto K*_a."""
    V, a = _points(np.random.default_rng(0), 16)
    Pk = np.array([[float(c) for c in _mp_proj(v, al)] for v, al in zip(V, a, strict=True)])
    Pd = np.array([[float(c) for c in _mp_proj_signed(v, -al)]
                   for v, al in zip(V, a, strict=True)])
    return V, a, Pk, Pd


@pytest.mark.parametrize("scale", [1e-8, 1e-4, 1.0, 1e4, 1e8])
def test_projection_matches_mpmath(reference, scale):
    """Primal and dual cones, every case, at data scales 1e-8..1e8: within 4e-15 of ‖v‖∞
    (observed: 1.5e-15)."""
    V, a, Pk, Pd = reference
    for signed, ref in ((a, Pk), (-a, Pd)):
        dims = ConeDims(power=tuple(signed))
        P = project((V * scale).ravel(), dims).reshape(-1, 3)
        err = np.abs(P - ref * scale).max(axis=1) / np.maximum(np.abs(V).max(axis=1), 1e-300)
        assert np.isfinite(P).all()
        assert err.max() <= 4e-15 * scale, (err.max(), V[np.argmax(err)], a[np.argmax(err)])


def test_projection_extreme_scales_and_homogeneity(reference):
    """Π(s v) = s Π(v) (homogeneity) at 1e-298 and 1e298: as computed at 1, up to the
    subnormal range's absolute rounding."""
    V, a, Pk, _ = reference
    nv = np.repeat(np.abs(V).max(axis=1), 3)
    for signed in (a, -a):
        dims = ConeDims(power=tuple(signed))
        base = project(V.ravel(), dims)
        for s in (2.0**-990, 2.0**990):  # powers of two: scaling is exact in float64
            err = np.abs(project(V.ravel() * s, dims) - base * s)
            assert (err <= 1e-16 * s * nv + 1e-322).all()


def test_moreau_decomposition():
    """v = Π_K(v) − Π_{K*}(−v), Π_K(v) ∈ K, Π_{K*}(−v) ∈ K*, and the two are orthogonal, for
    random points over twelve orders of magnitude and exponents near 0, 1/2 and 1 (down to
    1e-6 from either end).

    Membership is checked backward: raising x, y (u, w) by 1e-15·‖v‖∞ must put the point in
    the cone (so it lies within that distance of it). A forward check |z| <= x^a y^(1−a) is
    ill-posed for a near 0 or 1: y = 1e-300 gives y^0.003 = 0.13."""
    rng = np.random.default_rng(1)
    n = 3000
    a = np.concatenate([rng.uniform(0.01, 0.99, n - 500), np.full(100, 0.5),
                        np.full(100, 0.003), np.full(100, 0.997), np.full(100, 1e-6),
                        np.full(100, 1 - 1e-6)])
    V = rng.standard_normal((n, 3)) * np.exp(rng.uniform(-14, 14, (n, 1)))
    vp = project(V.ravel(), ConeDims(power=tuple(a))).reshape(-1, 3)
    vs = project(-V.ravel(), ConeDims(power=tuple(-a))).reshape(-1, 3)  # ∈ K*, vp − vs = v
    nv = np.abs(V).max(axis=1)
    assert (np.abs(vp - vs - V).max(axis=1) / nv).max() <= 1e-15
    d = 1e-15 * nv
    x, y, z = vp.T
    assert (x >= 0).all() and (y >= 0).all()
    assert (np.abs(z) <= (x + d) ** a * (y + d) ** (1 - a) + d).all()
    u, w, t = vs.T
    assert (u >= 0).all() and (w >= 0).all()
    assert (np.abs(t) <= ((u + d) / a) ** a * ((w + d) / (1 - a)) ** (1 - a) + d).all()
    assert (np.abs((vp * vs).sum(axis=1)) / nv**2).max() <= 1e-15


def test_dual_flag_and_dual_cone_agree():
    """project(v, K, dual=True) is the projection onto K*, i.e. onto the cone with −a; the
    dual of that is K again."""
    rng = np.random.default_rng(2)
    a = rng.uniform(0.05, 0.95, 40)
    V = rng.standard_normal((5, 120))
    np.testing.assert_array_equal(project(V, ConeDims(power=tuple(a)), dual=True),
                                  project(V, ConeDims(power=tuple(-a))))
    np.testing.assert_array_equal(project(V, ConeDims(power=tuple(-a)), dual=True),
                                  project(V, ConeDims(power=tuple(a))))
    D1 = dproject(V, ConeDims(power=tuple(a)), dual=True).dense()
    D2 = dproject(V, ConeDims(power=tuple(-a))).dense()
    np.testing.assert_array_equal(D1, D2)


def test_derivative_matches_exact_finite_differences(reference):
    """DΠ against 60-digit central differences at every smooth point of the reference set
    (faces z0 = 0, the boundaries and the origin excluded: kinks), primal and dual."""
    V, a, _, _ = reference
    n, k = len(V) // 12, 6  # the first k points of each block: high precision is slow
    smooth = np.concatenate([np.arange(b * n, b * n + k) for b in (0, 1, 3, 4, 5, 8, 9, 10)])
    for sign in (1.0, -1.0):
        dims = ConeDims(power=tuple(sign * a[smooth]))
        D = dproject(V[smooth].ravel(), dims).dense()
        for k, i in enumerate(smooth):
            blk = D[3 * k:3 * k + 3, 3 * k:3 * k + 3]
            ref = _mp_jacobian(V[i], sign * a[i])
            assert np.abs(blk - ref).max() <= 1e-9, (V[i], sign * a[i], blk, ref)


def test_derivative_on_the_faces_is_the_limit():
    """At z0 = 0 with x0 < 0 < y0 (or y0 < 0 < x0), DΠ is the limit of DΠ at z0 → 0 (the
    one-sided derivative in z0 and the two-sided ones in x0, y0)."""
    rng = np.random.default_rng(3)
    for a in (0.2, 0.5, 0.8):
        for x0, y0 in ((-0.7, 1.3), (1.1, -0.4)):
            x0, y0 = x0 * rng.uniform(0.5, 2), y0 * rng.uniform(0.5, 2)
            face = dproject(np.array([x0, y0, 0.0]), ConeDims(power=(a,))).dense()
            near = _mp_jacobian([x0, y0, 1e-13], a)
            assert np.abs(face - near).max() <= 1e-6, (a, x0, y0, face, near)


def test_derivative_is_symmetric_contraction_and_consistent():
    """DΠ symmetric with eigenvalues in [0, 1]; dense, matvec, sparse and values (on
    block_pattern) all the same operator; NaN stays in its own block."""
    rng = np.random.default_rng(4)
    dims = ConeDims(zero=1, nonneg=2, soc=(3,), exp=1, power=(0.3, -0.6, 0.5))
    V = rng.standard_normal((6, dims.size)) * 3
    D = dproject(V, dims)
    dense = D.dense()
    blocks = dense[:, -9:, -9:]
    np.testing.assert_allclose(blocks, np.swapaxes(blocks, 1, 2), atol=1e-15)
    lam = np.linalg.eigvalsh(blocks)
    assert lam.min() >= -1e-13 and lam.max() <= 1 + 1e-13
    X = rng.standard_normal((6, dims.size))
    np.testing.assert_allclose(D.matvec(X), np.einsum("bij,bj->bi", dense, X), atol=1e-14)
    rows, cols = block_pattern(dims)
    np.testing.assert_array_equal(D.values(), dense[:, rows, cols])
    np.testing.assert_allclose(D.sparse(2).toarray(), dense[2], atol=0)
    np.testing.assert_array_equal(D.point, project(V, dims))
    W = V.copy()
    W[1, -4] = np.nan  # second power cone's last entry
    P = project(W, dims)
    assert np.isnan(P[1, -6:-3]).all() and np.isfinite(np.delete(P[1], [-6, -5, -4])).all()


def test_polar_derivative_keeps_every_entry_where_the_polar_part_is_tiny():
    """The dual cone's DΠ_{K*}(v) = I − DΠ_K(−v) at −v = p + λ∇g(p), p on the boundary of K_a
    with its coordinates 1e-12 … 1 apart and λ over 1e-12 … 1: every entry within 1e-8 of
    itself, against 60-digit central differences. Formed as I − D in float64, its entries
    of 1e-21 … 1e-9 kept only the rounding of 1 (relative errors up to 1)."""
    worst = 0.0
    for a in (0.3, 0.5, 0.8):
        for x, y in ((1.0, 1e-6), (1e-6, 1.0), (1.0, 1e-12)):
            z = x**a * y ** (1 - a)
            grad = np.array([-a * z / x, -(1 - a) * z / y, 1.0])
            for lam in (1e-12, 1e-8, 1e-4, 1.0):
                v = -(np.array([x, y, z]) + lam * grad)
                D = dproject(v, ConeDims(power=(-a,))).dense()
                M = _mp_jacobian(v, -a)
                worst = max(worst, float((np.abs(D - M) / np.abs(M)).max()))
    assert worst <= 1e-8, worst  # observed 5e-15


# ----------------------------------------------------------------------------------------------
# End to end: CVXPY atoms that CVXPY writes with power cones
# ----------------------------------------------------------------------------------------------
N = 4


def _kkt_residual(name, x, t):
    """The optimality conditions (the problem's gradient at x, zero at the optimum) where
    the problem is smooth at its solution; for pnorm θ − x = ∇‖x‖₃ = sign(x) x²/‖x‖₃²."""
    if name == "pnorm":
        return t - x - np.sign(x) * x**2 / np.sum(np.abs(x) ** 3) ** (2 / 3)
    if name == "power":
        return 1.5 * np.sqrt(x) - t
    if name == "geo_mean":
        return np.prod(x) ** (1 / N) / (N * x) - 2 * (x - t)
    return None


def _clarabel(problem, param, value, var):
    param.value = value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-14, tol_gap_rel=1e-14, tol_feas=1e-14,
                      tol_ktratio=1e-10, max_iter=500)
    return np.array(var.value)


def _problems():
    x, th = cp.Variable(N), cp.Parameter(N)
    return x, th, {
        "pnorm": cp.Problem(cp.Minimize(cp.sum_squares(x - th) / 2 + cp.pnorm(x, 3, approx=False))),
        "power": cp.Problem(cp.Minimize(cp.sum(cp.power(x, 1.5, approx=False)) - th @ x)),
        "geo_mean": cp.Problem(cp.Maximize(cp.geo_mean(x, approx=False) - cp.sum_squares(x - th))),
        "powcone3d": cp.Problem(cp.Minimize(cp.sum_squares(x - th)),
                                [cp.PowCone3D(x[0], x[1], x[2], 0.3)]),
    }


@pytest.fixture(scope="module")
def layers():
    x, th, probs = _problems()
    return {k: (dl.compile(p, [th], [x]), p, th, x) for k, p in probs.items()}


def _fd(f, t, h=1e-6):
    J = np.zeros((N, N))
    for j in range(N):
        e = np.zeros(N)
        e[j] = h
        J[:, j] = (f(t + e) - f(t - e)) / (2 * h)
    return J


def test_atoms_compile_to_power_cones(layers):
    for layer, *_ in layers.values():
        assert "power" in layer.template.dims.kinds()


@pytest.mark.parametrize("name", ["pnorm", "power", "geo_mean", "powcone3d"])
def test_torch_values_and_jacobian(layers, name):
    """Values: the optimality conditions hold to 1e-12, and Clarabel (an independent
    interior-point solve, itself accurate to ~1e-7 on these) agrees to 1e-6. Jacobians
    against central differences of our own forward (each solve refined to rounding, so FD
    are accurate to ~1e-9)."""
    layer, prob, th, x = layers[name]
    f = layer.torch()
    rng = np.random.default_rng(5)
    for _ in range(2):
        t0 = rng.uniform(0.5, 2.0, N)
        tt = torch.tensor(t0, requires_grad=True)
        (xs,) = f(tt)
        xv = xs.detach().numpy()
        assert np.abs(xv - _clarabel(prob, th, t0, x)).max() <= 1e-6
        res = _kkt_residual(name, xv, t0)
        if res is not None:
            assert np.abs(res).max() <= 1e-12
        J = torch.autograd.functional.jacobian(lambda t: f(t)[0], tt).numpy()
        Jfd = _fd(lambda t: f(torch.tensor(t))[0].numpy(), t0)
        assert np.abs(J - Jfd).max() <= 1e-7


def test_power_closed_form_torch_and_jax_batched():
    """min Σ x^1.5 − (θ − σ)ᵀx has x = (2(θ − σ)/3)², ∂x/∂θ = diag(8(θ − σ)/9) = −∂x/∂σ:
    torch (backward and jvp) and JAX (jit, vmap, grad), θ batched and σ (a scalar)
    broadcast. (Data scales are tested on the projection below: here x scales with the
    square of the data, a badly scaled program for SCS whatever the cone.)"""
    x, th, sig = cp.Variable(N), cp.Parameter(N), cp.Parameter()
    prob = cp.Problem(cp.Minimize(cp.sum(cp.power(x, 1.5, approx=False)) - (th - sig) @ x))
    layer = dl.compile(prob, [th, sig], [x])
    rng = np.random.default_rng(6)
    for s in (1.0,):
        T = rng.uniform(0.5, 2.0, (3, N)) * s
        S = np.array(0.2 * s)  # broadcast over the batch
        G = 8 * (T - S) / 9
        X = (2 * (T - S) / 3) ** 2
        tt, st = torch.tensor(T, requires_grad=True), torch.tensor(S, requires_grad=True)
        (xs,) = layer.torch()(tt, st)
        assert np.abs(xs.detach().numpy() - X).max() <= 1e-9 * s * s
        c = rng.standard_normal((3, N))
        (xs * torch.tensor(c)).sum().backward()
        assert np.abs(tt.grad.numpy() - c * G).max() <= 1e-9 * s
        assert abs(float(st.grad) + (c * G).sum()) <= 1e-9 * s
        dT = rng.standard_normal((3, N))
        _, (dx,) = torch.func.jvp(lambda t, sv=S: layer.torch()(t, torch.tensor(sv)),
                                  (torch.tensor(T),), (torch.tensor(dT),))
        assert np.abs(dx.numpy() - dT * G).max() <= 1e-9 * s
    with jax.enable_x64(True):
        g = layer.jax()
        T = rng.uniform(0.5, 2.0, (3, N))
        S = jnp.asarray(0.2)

        def loss(t):
            return jnp.sum(jax.vmap(lambda ti: g(ti, S)[0])(t) ** 2)

        val = jax.jit(loss)(jnp.asarray(T))
        grad = jax.grad(loss)(jnp.asarray(T))
        X = (2 * (T - 0.2) / 3) ** 2
        assert abs(float(val) - (X**2).sum()) <= 1e-9
        assert np.abs(np.asarray(grad) - 2 * X * 8 * (T - 0.2) / 9).max() <= 1e-9


def test_powcone3d_projection_layer_matches_mpmath():
    """min ‖x − θ‖² s.t. (x0, x1, x2) ∈ K_0.3: x = Π_K(θ) and ∂x/∂θ = DΠ_K(θ) from the
    60-digit reference, batched, through torch and JAX, at data scales 1e-8..1e8 (x scales
    with θ, the Jacobian not at all)."""
    x, th = cp.Variable(3), cp.Parameter(3)
    rng = np.random.default_rng(7)
    T = np.concatenate([rng.standard_normal((4, 3)) * 2, [[-1.0, 2.0, 0.5], [1.0, -1.0, 3.0]]])
    alpha = 0.3
    layer = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - th)),
                                  [cp.PowCone3D(x[0], x[1], x[2], alpha)]), [th], [x])
    ref = np.array([[float(c) for c in _mp_proj(t, alpha)] for t in T])
    Jref = np.stack([_mp_jacobian(t, alpha) for t in T])
    for s in (1e-8, 1.0, 1e8):
        (xs,) = layer.torch()(torch.tensor(T * s))
        assert np.abs(xs.numpy() - ref * s).max() <= 1e-9 * s
        out = layer.forward([T * s])
        for i in range(len(T)):
            J = out.jacobian(i)[0][0]
            assert np.abs(J - Jref[i]).max() <= 1e-8
    with jax.enable_x64(True):
        (xj,) = layer.jax()(jnp.asarray(T))
        assert np.abs(np.asarray(xj) - ref).max() <= 1e-9
        J = jax.jacrev(lambda t: layer.jax()(t)[0])(jnp.asarray(T[0]))
        assert np.abs(np.asarray(J) - Jref[0]).max() <= 1e-8


def test_batched_equals_looped(layers):
    layer, *_ = layers["geo_mean"]
    T = np.random.default_rng(8).uniform(0.5, 2.0, (5, N))
    (batched,) = layer.torch()(torch.tensor(T))
    for i in range(5):
        (one,) = layer.torch()(torch.tensor(T[i]))
        assert np.abs(batched[i].numpy() - one.numpy()).max() <= 1e-12


def test_pnorm_ball_projection_at_data_scales():
    """The zoo's 3-norm-ball projection with y and r scaled together by 1e-12 … 1e12: x
    scales with them and the Jacobian not at all; every instance solved and within 1e-10
    (relative to the scale) of the closed form."""
    from declarative import problems

    mod = problems.get("pnorm_ball_projection")
    prob, params, variables = mod.build()
    layer = dl.compile(prob, params, variables)
    rng = np.random.default_rng(9)
    inst = [mod.sample(rng) for _ in range(4)]
    Y = np.stack([y for y, _ in inst])
    R = np.array([float(r) for _, r in inst])
    for s in (1e-12, 1e-6, 1.0, 1e6, 1e12):
        out = layer.forward([Y * s, R * s])
        assert all(str(st) == "solved" for st in out.info.status)
        for i, (y, r) in enumerate(inst):
            ref = mod.solution(y * s, r * s)[0]
            assert np.abs(out.outputs[0][i] - ref).max() <= 1e-10 * s
            Jy, Jr = mod.jacobian(y * s, r * s)[0]
            J = out.jacobian(i)[0]
            assert np.abs(J[0] - Jy).max() <= 1e-10
            assert np.abs(J[1] - Jr).max() <= 1e-10


@pytest.mark.parametrize(("power", "scale"), [(1.5, 1e-3), (1.5, 1e3), (3.0, 1e-6),
                                              (3.0, 1e6)])
def test_a_power_at_scale_is_solved_with_its_jacobian(power, scale):
    """min Σ x^p / p − cᵀx (power(x, p, approx=False), a 3-d power cone per entry): x =
    c^(1/(p−1)), ∂x/∂c = diag(c^(1/(p−1) − 1) / (p − 1)). With c ~ 1e3 and p = 1.5, CVXPY's
    cone (t, 1, x) ∈ K_(2/3) holds t ~ 1e9 and x ~ 1e6 beside the 1: one factor per cone
    block, all the equilibration gave it, left these reported iteration_limit or
    inaccurate (SCS ran 300,000 iterations on 4 entries). A retry in the program scaled at
    the best point found, with each power cone's rows scaled apart in the way that keeps
    the cone, solves them."""
    n = 4
    x, c = cp.Variable(n), cp.Parameter(n, pos=True)
    layer = dl.compile(cp.Problem(cp.Minimize(
        cp.sum(cp.power(x, power, approx=False)) / power - c @ x)), [c], [x])
    cv = np.random.default_rng(0).uniform(0.5, 2.0, n) * scale
    fwd = layer.forward([cv], on_failure="nan")
    assert fwd.ok.all(), fwd.info.status
    exact = cv ** (1 / (power - 1))
    assert np.abs(fwd.outputs[0][0] - exact).max() <= 1e-10 * exact.max()
    J, Jt = fwd.jacobian(0)[0][0], np.diag(cv ** (1 / (power - 1) - 1) / (power - 1))
    assert np.abs(J - Jt).max() <= 1e-9 * np.abs(Jt).max()


def test_a_power_with_one_coefficient_1e13_below_the_others_has_its_jacobian():
    """min Σ x³/3 − cᵀx with c = (1.5e-4, 1.6e3, 2.0e-10, 1.5e3): x = √c, ∂x/∂c = diag(1/(2√c))
    against the closed form. x₃ = 1.4e-5 beside x ~ 40, its cone (t, 1, x₃) holding t ~ 3e-15
    beside the 1, came back 1.9e-4 of itself off (within the value's normwise promise) and
    ∂x₃/∂c₃, the largest entry, with it: refinement stopped at its tolerance, which judges
    that row at SCALE_FLOOR of the largest. The two polishing Newton steps take x₃ to 3e-12
    of itself on one machine and to 1.8e-8 on another (AVX-512: refinement in float64 and
    in long double alike end there, v = y − s holding that block's small entries to the
    rounding of its largest), the README's limit for such outputs: held here to 1e-7."""
    x, c = cp.Variable(4), cp.Parameter(4, pos=True)
    layer = dl.compile(cp.Problem(cp.Minimize(
        cp.sum(cp.power(x, 3, approx=False)) / 3 - c @ x)), [c], [x])
    cv = np.array([0.00015457739894532166, 1612.2008330172605, 2.0256005371984392e-10,
                   1507.964626938767])
    fwd = layer.forward([cv], on_failure="nan")
    assert fwd.ok[0], fwd.info.status
    assert np.all(np.abs(fwd.outputs[0][0] - np.sqrt(cv)) <= 1e-7 * np.sqrt(cv))  # each entry
    assert np.abs(fwd.outputs[0][0] - np.sqrt(cv)).max() <= 1e-9 * np.sqrt(cv).max()
    Jt = np.diag(0.5 / np.sqrt(cv))
    assert np.abs(fwd.jacobian(0)[0][0] - Jt).max() <= 1e-7 * np.abs(Jt).max()


@pytest.mark.parametrize(("p", "lo", "hi", "seed"), [(3.0, 1e-12, 1e4, 1), (1.5, 1e-6, 1e6, 2)])
def test_powers_with_coefficients_over_many_decades_have_their_jacobians(p, lo, hi, seed):
    """min Σ x^p/p − cᵀx (x = c^q, q = 1/(p − 1)) with c spread over [lo, hi] in a batch of
    16: every solved instance's ∂x/∂c within 1e-8 of its largest entry. At p = 3, c over
    1e-12 … 1e4, 3 of the 10 solved were 1e-7 … 1.9e-4 off (the power cones' polish). At
    p = 1.5, c over 1e-6 … 1e6, where x_i ~ 1e-15 of the largest, the solver can end with
    x_i's cone (t, 1, x_i) at its apex, the 1 (equilibrated to 1e-13) unmet in a row that
    nothing else reads: x within its normwise promise, ∂x_i/∂c_i = 2c_i 0 (3.7e-6 of the
    Jacobian's largest entry off, `solved`). An instance whose x spans more than 1e6 (an
    output entry far below the others, held to the value's normwise promise: the README's
    limit) is held to 1e-7, the rest to 1e-8: at p = 3, c = (1.5e-4, 1.6e3, 2.0e-10, 1.5e3)
    (instance 0 of seed 1) is 3e-12 off on one machine and 1.8e-8 on another."""
    x, c = cp.Variable(4), cp.Parameter(4, pos=True)
    layer = dl.compile(cp.Problem(cp.Minimize(
        cp.sum(cp.power(x, p, approx=False)) / p - c @ x)), [c], [x])
    cv = np.exp(np.random.default_rng(seed).uniform(np.log(lo), np.log(hi), (16, 4)))
    fwd = layer.forward([cv], on_failure="nan")
    assert fwd.ok.sum() >= 8, fwd.info.status
    q = 1 / (p - 1)
    for i in np.flatnonzero(fwd.ok):
        Jt = np.diag(q * cv[i] ** (q - 1))
        xs = cv[i] ** q
        tol = 1e-7 if xs.min() < 1e-6 * xs.max() else 1e-8
        assert np.abs(fwd.jacobian(i)[0][0] - Jt).max() <= tol * np.abs(Jt).max(), i


def test_a_power_left_on_its_cones_apex_is_moved_to_the_face_its_data_asks_for():
    """The instance of the batch at p = 1.5 above whose solver's point left x₃'s cone
    (t, 1, x₃) at the apex (c = (6.6e-3, 1.2e5, 0.45, 211)): the multiplier's entry of the
    1's row enters no other row, so Newton's method cannot leave the apex; set where the
    multiplier lies on the dual cone's boundary, with the slack on the complementary ray, it
    converges. Solved, x = c² and ∂x/∂c = diag(2c) within 1e-8 of their largest entries."""
    x, c = cp.Variable(4), cp.Parameter(4, pos=True)
    layer = dl.compile(cp.Problem(cp.Minimize(
        cp.sum(cp.power(x, 1.5, approx=False)) / 1.5 - c @ x)), [c], [x])
    cv = np.exp(np.random.default_rng(2).uniform(np.log(1e-6), np.log(1e6), (16, 4)))[6]
    fwd = layer.forward([cv])
    assert np.abs(fwd.outputs[0][0] - cv**2).max() <= 1e-8 * (cv**2).max()
    Jt = np.diag(2 * cv)
    assert np.abs(fwd.jacobian(0)[0][0] - Jt).max() <= 1e-8 * np.abs(Jt).max()


@pytest.mark.parametrize(("approx", "power", "scale"), [
    (False, 3.0, 1e-6), (False, 3.0, 1e9), (False, 1.5, 1e-9), (False, 1.5, 1e12),
    (False, 2.5, 1e6), (False, 4.0, 1e-3),
    (True, 3.0, 1e4), (True, 3.0, 1e9), (True, 1.5, 1e9), (True, 4.0, 1e3)])
def test_a_power_far_from_one_is_solved_with_its_jacobian(approx, power, scale):
    """The program above with x ~ ``scale`` (c = x^(p − 1)). With power cones, x³ <= t as
    (t, 1, x) ∈ K_(1/3) holds t ~ 1e27 beside the constant 1 at x ~ 1e9, and t ~ 1e-18 at
    x ~ 1e-6, which the first equilibration's unit loses to rounding: the scaling at the
    point takes each cone's missing entries from its complementarity. With CVXPY's default
    (a chain of second-order cones, x² <= w·1 and w² <= t·x at p = 3, 1e12 beside 1e4 and 1
    at x ~ 1e4), the chain's links are boosted. Solved, with x and ∂x/∂c within 1e-10 of the
    closed form (relative to their largest entries)."""
    n = 4
    x, c = cp.Variable(n), cp.Parameter(n, pos=True)
    layer = dl.compile(cp.Problem(cp.Minimize(
        cp.sum(cp.power(x, power, approx=approx)) / power - c @ x)), [c], [x])
    exact = np.random.default_rng(1).uniform(0.5, 2.0, (3, n)) * scale
    cv = exact ** (power - 1)
    fwd = layer.forward([cv], on_failure="nan")
    assert fwd.ok.all(), fwd.info.status
    for i in range(3):
        assert np.abs(fwd.outputs[0][i] - exact[i]).max() <= 1e-10 * exact[i].max()
        J = fwd.jacobian(i)[0][0]
        Jt = np.diag(cv[i] ** (1 / (power - 1) - 1) / (power - 1))
        assert np.abs(J - Jt).max() <= 1e-10 * np.abs(Jt).max()


@pytest.mark.parametrize("p", [3 / 4, 2 / 3, 1 / 2])
def test_a_concave_power_whose_base_is_tiny_beside_its_multiplier_is_solved_right(p):
    """max Σ x_i^p − cᵀx (p < 1, CVXPY's power cones (x, 1, t)) has x = (c/p)^(1/(p−1)),
    ∂x/∂c = x/(c(p − 1)); c = (1, 2, 3, 0.5) × 1e-2 … 1e4 in one batch. At c ~ 1e3 … 1e4,
    x ~ 1e-13 … 1e-16 sits in the rows of multipliers y_x = c, and the residual's slack
    Π(v) − v keeps it only to the rounding of c: x came back 2% (p = 3/4) and 20%
    (p = 2/3) off, certified as a zero of its unit. Every instance solved, its value within
    1e-8 and its Jacobian within 1e-6 of the closed forms' largest entries."""
    x, c = cp.Variable(4), cp.Parameter(4, pos=True)
    layer = dl.compile(cp.Problem(cp.Maximize(cp.sum(cp.power(x, p, approx=False)) - c @ x)),
                       [c], [x], on_failure="nan")
    C = np.array([1.0, 2.0, 3.0, 0.5]) * np.logspace(-2, 4, 7)[:, None]
    fwd = layer.forward([C])
    assert fwd.ok.all(), fwd.info.status
    for i, ci in enumerate(C):
        xt = (ci / p) ** (1 / (p - 1))
        jt = xt / (ci * (p - 1))
        assert np.abs(fwd.outputs[0][i] - xt).max() <= 1e-8 * xt.max(), (i, fwd.outputs[0][i])
        J = np.diag(fwd.jacobian(i)[0][0])
        assert np.abs(J - jt).max() <= 1e-6 * np.abs(jt).max(), i


def _p_norm_ball_lp(c: np.ndarray, r: float, q: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """min cᵀx s.t. ‖x‖_p <= r (q = p/(p−1)), by Hölder: x = −r·g/N with g = sign(c)|c|^(q−1),
    N = ‖c‖_q^(q−1); returns x, ∂x/∂c = −r (diag((q−1)|c|^(q−2))/N − (q−1) g gᵀ/(N Σ|c|^q))
    and ∂x/∂r = x/r."""
    g = np.sign(c) * np.abs(c) ** (q - 1)
    total = np.sum(np.abs(c) ** q)
    norm = total ** ((q - 1) / q)
    dc = -r * ((q - 1) * np.diag(np.abs(c) ** (q - 2)) / norm
               - (q - 1) * np.outer(g, g) / (norm * total))
    return -r * g / norm, dc, -g / norm


@pytest.mark.parametrize("p", [3.0, 4.0, 2.5])
def test_an_lp_over_a_p_norm_ball_with_one_cost_far_above_the_others_has_its_jacobian(p):
    """min cᵀx s.t. pnorm(x, p, approx=False) <= r: x = −r·sign(c)|c|^(q−1)/‖c‖_q^(q−1)
    (Hölder, q = p/(p−1)). With c₀ ~ 1e4 … 1e5 beside O(1) entries, the outputs x₁, x₂ lie
    1e-3 … 1e-2 below x₀ and their cones' multipliers hold entries 1e-10 of their blocks:
    the point scaled at its solution for the derivative (its x̂ and ŷ 1e4 apart) magnified
    those entries' rounding, and ∂x/∂c came back up to 35% off, `solved`. Here against the
    closed form's derivative, to 1e-8 of the Jacobian's largest entry."""
    n = 3
    c, r, x = cp.Parameter(n), cp.Parameter(pos=True), cp.Variable(n)
    layer = dl.compile(cp.Problem(cp.Minimize(c @ x), [cp.pnorm(x, p, approx=False) <= r]),
                       [c, r], [x], on_failure="nan")
    q = p / (p - 1)
    c0s = 10.0 ** np.arange(4.0, 5.01, 1 / 6)
    C = np.column_stack([c0s, np.full(c0s.size, 3.5442873292466714),
                         np.full(c0s.size, -0.045066778182660805)])
    R = np.full(c0s.size, 0.8629815355327065)
    fwd = layer.forward([C, R])
    assert sum(s is dl.Status.SOLVED for s in fwd.info.status) >= c0s.size // 2
    for i, status in enumerate(fwd.info.status):
        if status is not dl.Status.SOLVED:
            continue
        xt, J, _ = _p_norm_ball_lp(C[i], R[i], q)
        assert np.abs(fwd.outputs[0][i] - xt).max() <= 1e-8 * R[i]
        got = np.asarray(fwd.jacobian(i)[0][0])
        assert np.abs(got - J).max() <= 1e-8 * np.abs(J).max(), (C[i], got, J)


def test_a_p_norm_ball_whose_s_is_singular_without_its_solution_scaling_keeps_it():
    """The same LP with c₀ = 7e5 … 5e7: S in the equilibrated program is singular to 1e-12
    and its Jacobian 3e-5 … 2e-4 off; scaled at the solution S's rcond is 1e-9 … 1e-6 and
    the Jacobian right to 2e-7, though the scaled pair round-trips through v only to 1e-6 …
    1e-2. The scaling is kept there (it is dropped only where S was well conditioned
    without it)."""
    c, r, x = cp.Parameter(3), cp.Parameter(pos=True), cp.Variable(3)
    layer = dl.compile(cp.Problem(cp.Minimize(c @ x), [cp.pnorm(x, 3, approx=False) <= r]),
                       [c, r], [x], on_failure="nan")
    C = np.array([[703111.1312320825, -0.0048773329938042245, 3.113943568749988],
                  [-8855361.791540083, -2.20682030594893, -0.09343596460331363]])
    R = np.array([0.00016551858294918775, 0.0029959842742479288])
    fwd = layer.forward([C, R])
    q = 1.5
    for i in range(2):
        assert fwd.info.status[i] is dl.Status.SOLVED
        _, J, Jr = _p_norm_ball_lp(C[i], R[i], q)
        got = fwd.jacobian(i)[0]
        scale = max(np.abs(J).max(), np.abs(Jr).max())
        assert np.abs(np.asarray(got[0]) - J).max() <= 1e-6 * scale
        assert np.abs(np.asarray(got[1]) - Jr).max() <= 1e-6 * scale
