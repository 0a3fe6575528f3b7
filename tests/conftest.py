"""Shared fixtures: compiled zoo layers (compiling once per session keeps the suite fast)."""

from __future__ import annotations

import functools

import numpy as np
import pytest

import declarative as dl
from declarative import problems


@functools.cache
def zoo_layer(name: str, **sizes):
    """(layer, module, sizes) for a zoo problem, compiled once per test session."""
    mod = problems.get(name)
    sizes = {**mod.SIZES, **sizes}
    prob, params, variables = mod.build(**sizes)
    return dl.compile(prob, params, variables, **problems.compile_options(mod)), mod, sizes


@functools.cache
def every_cone_layer(k: int = 3):
    """A layer whose program holds zero, nonnegative, second-order, PSD (k × k, with a trace
    constraint), exponential and power cones; parameters Y (k × k) and a (3,), outputs X, u,
    w. Compiled once per test session."""
    import cvxpy as cp

    X, u, w = cp.Variable((k, k), PSD=True), cp.Variable(3), cp.Variable(2)
    Y, a = cp.Parameter((k, k)), cp.Parameter(3)
    cons = [cp.trace(X) == 1, cp.PowCone3D(u[0], u[1], u[2], 0.3), u[0] + u[1] <= 2,
            cp.sum(cp.exp(u)) <= 50, cp.norm(w) <= u[0] + 2]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - Y) - u[2] + cp.sum_squares(u - a)
                                  + cp.sum_squares(w - 1)), cons)
    return dl.compile(prob, [Y, a], [X, u, w])


@functools.cache
def tiny_box_layer(n: int = 6):
    """min ‖x − a‖² + ‖x‖₁ s.t. θ <= x <= −θ (parameters a, θ; output x), compiled once per
    test session: x = clip(soft(a, ½), θ, −θ), with Jacobians 1 in a inside the box (|a| >
    ½) and ±1 in θ where clipped."""
    import cvxpy as cp

    x, a, th = cp.Variable(n), cp.Parameter(n), cp.Parameter(n)
    return dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - a) + cp.norm1(x)),
                                 [th <= x, x <= -th]), parameters=[a, th], variables=[x])


def tiny_box_data(a_scale: float, box: float, B: int = 16, n: int = 6, seed: int = 0):
    """(a, θ, the closed-form x, soft(a, ½)) for `tiny_box_layer`: a ~ a_scale·N(0, 1),
    θ = −box·|N(0, 1)| with one entry (instance 3, entry 2) × 0.03."""
    rng = np.random.default_rng(seed)
    A = a_scale * rng.standard_normal((B, n))
    T = -box * np.abs(rng.standard_normal((B, n)))
    T[3, 2] *= 0.03
    soft = np.sign(A) * np.maximum(np.abs(A) - 0.5, 0.0)
    return A, T, np.clip(soft, T, -T), soft


def max_abs(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b))) if a.size else 0.0


@pytest.fixture(params=list(problems.ZOO))
def zoo_name(request) -> str:
    return request.param


def assert_scaling_adjoints(t, eq, data, rng):
    """An `Equilibration`'s maps against their adjoints, to rounding: `data` and
    `data_adjoint`, `solution` and `solution_adjoint`, on random (co)tangents. Returns the
    tangents (x̂, ŷ), the cotangents (x, y) and x = `solution`'s of (x̂, ŷ)."""
    c, a, b, h = data
    B = c.shape[0]
    gc, ga, gb = (rng.standard_normal(v.shape) for v in (c, a, b))
    dc, da, db, _ = eq.data(t, c, a, b, h)
    ac, aa, ab, _ = eq.data_adjoint(t, gc, ga, gb, h)
    lhs = (dc * gc).sum(1) + (da * ga).sum(1) + (db * gb).sum(1)
    rhs = (c * ac).sum(1) + (a * aa).sum(1) + (b * ab).sum(1)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)
    xh, yh = rng.standard_normal((B, t.n)), rng.standard_normal((B, t.m))
    gx, gy = rng.standard_normal((B, t.n)), rng.standard_normal((B, t.m))
    x, y = eq.solution(xh, yh)
    ax, ay = eq.solution_adjoint(gx, gy)
    np.testing.assert_allclose((x * gx).sum(1) + (y * gy).sum(1),
                               (xh * ax).sum(1) + (yh * ay).sum(1), rtol=1e-12)
    return xh, yh, gx, gy, x


def assert_scaled_points_kept(t, eq, other, data, x, y, s, rows, composed_tol=1e-12,
                              composed_atol=None, dot_atol=None):
    """A scaling (`Equilibration`) applied to cone points: (x, y, s) with y and s on the
    boundaries of K* and K in the blocks ``rows``; ŝ = ρ D N s and ŷ = σ D⁻¹ N⁻ᵀ y keep sᵀy up
    to ρσ (to 1e-12 relative, or within ``dot_atol`` times max|ŷ|·max|ŝ|) and stay on their
    cones (the projection leaves them where they are), `solution` inverts `scaled`, and
    composing ``eq`` with ``other`` is applying one after the other (to ``composed_tol``,
    and within ``composed_atol``, else ``composed_tol`` times the largest entry)."""
    from declarative.cones import project

    dims = t.dims
    xs, ys, ss = eq.scaled(x, y, s)
    dot = dict(rtol=1e-12) if dot_atol is None else \
        dict(atol=dot_atol * np.abs(ys).max() * np.abs(ss).max())
    np.testing.assert_allclose((ys * ss).sum(1), eq.rho * eq.sigma * (y * s).sum(1), **dot)
    assert np.abs(ss[:, rows] - project(ss, dims)[:, rows]).max() <= 1e-12 * np.abs(ss).max()
    assert np.abs(ys[:, rows] - project(ys, dims, dual=True)[:, rows]).max() \
        <= 1e-12 * np.abs(ys).max()
    x2, y2, s2 = eq.solution(xs, ys, ss)
    np.testing.assert_allclose(x2, x, rtol=1e-13)
    np.testing.assert_allclose(y2, y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(s2, s, rtol=1e-12, atol=1e-12)
    c, a, b, h = data
    both = eq.composed(other)
    once = other.data(t, *eq.data(t, c, a, b, h))
    for u, w in zip(both.data(t, c, a, b, h)[:3], once[:3], strict=True):
        np.testing.assert_allclose(u, w, rtol=composed_tol,
                                   atol=composed_tol * np.abs(w).max() if composed_atol is None
                                   else composed_atol)
