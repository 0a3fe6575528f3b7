"""declarative.implicit on JAX arrays: closed forms, finite differences and every transformation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from declarative.problems.implicit_nodes import NODES

import declarative as dl
from declarative import implicit
from tests.test_implicit import CASES


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def max_abs(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.max(np.abs(a - b)))


@pytest.mark.parametrize(("name", "scale"), CASES)
def test_zoo_against_closed_form_and_finite_differences(name, scale):
    """As in torch (see tests/test_implicit.py for the scales); Jacobian by jax.jacrev."""
    p = NODES[name]
    z0, params = p.sample(np.random.default_rng(3), scale)
    report = dl.verify(p.node("jax"), [jnp.asarray(z0), *map(jnp.asarray, params)],
                       solution=p.solution, jacobian=p.jacobian,
                       finite_differences=not (name == "kepler" and scale > 1))
    assert report.passed, report
    assert report.error("closed_form", "solution") <= 1e-8
    assert report.error("closed_form", "jacobian") <= 1e-8


M = np.array([0.3, 1.0, 2.5, 4.0])
E_REF = NODES["kepler"].solution(M, 0.7)
D = 1 - 0.7 * np.cos(E_REF)


def kepler(m, e):
    return NODES["kepler"].node("jax")(m, m, e)


def test_kepler_under_every_transformation():
    m, e = jnp.asarray(M), jnp.asarray(0.7)
    assert max_abs(jax.jit(kepler)(m, e), E_REF) <= 1e-14
    J_ref = np.diag(1 / D)
    assert max_abs(jax.jacrev(kepler)(m, e), J_ref) <= 1e-13
    assert max_abs(jax.jacfwd(kepler)(m, e), J_ref) <= 1e-13
    assert max_abs(jax.jit(jax.jacrev(kepler, argnums=1))(m, e), np.sin(E_REF) / D) <= 1e-13
    w = jnp.asarray([1.0, -2.0, 0.5, 3.0])
    g = jax.grad(lambda m: jnp.dot(w, kepler(m, e)))(m)
    assert max_abs(g, np.asarray(w) / D) <= 1e-13
    _, tangent = jax.jvp(lambda e: kepler(m, e), (e,), (jnp.asarray(1.0),))
    assert max_abs(tangent, np.sin(E_REF) / D) <= 1e-13


def test_vmap_equals_the_loop():
    ms = jnp.asarray(np.random.default_rng(0).uniform(0, 6, size=(5, 4)))
    es = jnp.asarray([0.1, 0.3, 0.5, 0.7, 0.9])
    batched = jax.jit(jax.vmap(kepler))(ms, es)
    looped = np.stack([np.asarray(kepler(ms[i], es[i])) for i in range(5)])
    assert max_abs(batched, looped) <= 1e-14
    grads = jax.vmap(jax.grad(lambda m, e: kepler(m, e).sum()))(ms, es)
    assert max_abs(grads, 1 / (1 - np.asarray(es)[:, None] * np.cos(looped))) <= 1e-13


def test_sphere_projection_jacobians():
    node = NODES["sphere_projection"].node("jax")
    x = jnp.asarray([1.0, 2.0, -0.5, 0.3])
    y = np.asarray(x) / np.linalg.norm(x)
    J_ref = (np.eye(4) - np.outer(y, y)) / np.linalg.norm(x)
    y0 = jnp.asarray([0.5, 0.5, 0.0, 0.1])
    assert max_abs(jax.jit(jax.jacfwd(lambda x: node(y0, x)))(x), J_ref) <= 1e-13
    assert max_abs(jax.jacrev(lambda x: node(y0, x))(x), J_ref) <= 1e-13


def test_matrix_free_path_matches_the_closed_form():
    p = NODES["linear_fixed_point"]
    z0, (W, X) = p.sample(np.random.default_rng(2), 1.0)
    A = np.linalg.inv(np.eye(len(W)) - W)
    G = np.random.default_rng(1).standard_normal(X.shape)

    def loss(x):
        Z = p.node("jax")(jnp.asarray(z0), jnp.asarray(W), x, dense_max=0, method="anderson")
        return jnp.sum(Z * G)

    assert max_abs(jax.jit(jax.grad(loss))(jnp.asarray(X)), G @ A) <= 1e-10


def test_info_and_failures():
    node = NODES["kepler"].node("jax")
    m = jnp.asarray([0.1, 2.0, 5.0])
    E, info = jax.jit(lambda m: node(m, m, 0.5, return_info=True))(m)
    assert int(info.status_code) == 0 and info.converged and float(info.step) <= 1e-10
    # not converged: our error eagerly, JAX's runtime error (with our message) under jit
    with pytest.raises(implicit.NodeError, match="max_iters"):
        node(m + 3, m, 0.95, max_iters=1)
    with pytest.raises(Exception, match="max_iters"):
        jax.jit(lambda m: node(m + 3, m, 0.95, max_iters=1))(m)
    # nan: NaN output, zero gradients, status in info
    E, info = jax.jit(lambda m: node(m + 3, m, 0.95, max_iters=1, on_failure="nan",
                                     return_info=True))(m)
    assert np.all(np.isnan(E)) and info.status == "max_iters"
    g = jax.grad(lambda m: node(m + 3, m, 0.95, max_iters=1, on_failure="nan").sum())(m)
    assert np.array_equal(np.asarray(g), np.zeros(3))
    # singular: Kepler with e = 1 at M = 0
    zero = jnp.zeros(1)
    with pytest.raises(implicit.NodeError, match="singular"):
        node(zero, zero, 1.0)
    E, info = node(zero, zero, 1.0, on_failure="nan", return_info=True)
    assert info.status == "singular" and np.isnan(np.asarray(E)).all()


def test_bad_input_is_named():
    node = NODES["kepler"].node("jax")
    with pytest.raises(dl.ParameterError, match=r"params\[0\] has NaN"):
        node(jnp.ones(1), jnp.asarray([np.nan]), 0.5)
    with pytest.raises(dl.ParameterError, match=r"returned \(2,\); expected"):
        implicit.root(lambda z: z[:2])(jnp.ones(3))
    with pytest.raises(dl.ParameterError, match="z0 must be a floating"):
        node(jnp.ones(1, dtype=jnp.int32), jnp.ones(1), 0.5)
