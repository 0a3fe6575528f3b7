"""The JAX layer: exact under jit, vmap, grad, jacrev, jvp, jacfwd and their compositions,
one batched solve per vmapped call, same results as the torch layer and the closed forms."""

from __future__ import annotations

import functools

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

import declarative as dl
from declarative import problems
from declarative.errors import ParameterError, ProblemError, SolverError
from declarative.layer import Layer
from tests.conftest import max_abs, zoo_layer


@pytest.fixture
def x64():
    """float64 JAX for one test (a global switch: restored afterwards)."""
    with jax.enable_x64(True):
        yield


def _vjp(c, J):
    """cᵀJ: contracts the output axes (J is shaped output.shape + param.shape)."""
    return np.tensordot(c, J, axes=np.ndim(c))


def _jvp(J, t):
    """J t: contracts the parameter axes."""
    return np.tensordot(J, t, axes=np.ndim(t))


@functools.cache
def _sparsemax():
    return zoo_layer("sparsemax")[0]


@functools.cache
def _box():
    """x* = clip(c, 0, u): infeasible (not solved) where u < 0."""
    x, c, u = cp.Variable(3), cp.Parameter(3, name="c"), cp.Parameter(name="u")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - c)), [x >= 0, x <= u])
    return dl.compile(prob, [c, u], [x])


class _Spy:
    """Counts `Layer.forward` / `Layer.restore` calls and the batch size of each."""

    def __init__(self, monkeypatch):
        self.forward, self.restore = [], []
        orig_forward, orig_restore = Layer.forward, Layer.restore

        def forward(layer, values, *args, **kwargs):
            fwd = orig_forward(layer, values, *args, **kwargs)
            self.forward.append(fwd.batch_size)
            return fwd

        def restore(layer, values, *args, **kwargs):
            fwd = orig_restore(layer, values, *args, **kwargs)
            self.restore.append(fwd.batch_size)
            return fwd

        monkeypatch.setattr(Layer, "forward", forward)
        monkeypatch.setattr(Layer, "restore", restore)


# -- parity: JAX = torch = closed form, every zoo problem ------------------------------------
def test_zoo_parity_with_torch_and_closed_form(zoo_name, x64):
    """Outputs, VJPs, JVPs and full Jacobians (float64, jitted) against the torch layer and the
    closed forms, to 1e-8."""
    layer, _, sizes = zoo_layer(zoo_name)
    inst = problems.instance(zoo_name, 5, **sizes)
    f = layer.jax()
    module = layer.torch()
    k = len(inst.params)
    rng = np.random.default_rng(0)
    cot = [rng.standard_normal(np.shape(s)) for s in inst.solution]
    tan = [rng.standard_normal(np.shape(p)) for p in inst.params]
    params = [jnp.asarray(p) for p in inst.params]

    # JAX, everything jitted.
    outs = jax.jit(f)(*params)
    vjp = jax.jit(lambda ps, c: jax.vjp(f, *ps)[1](c))(params, tuple(jnp.asarray(c) for c in cot))
    _, jvp = jax.jit(lambda ps, t: jax.jvp(f, ps, t))(tuple(params),
                                                      tuple(jnp.asarray(t) for t in tan))
    jac_rev = jax.jit(jax.jacrev(f, argnums=tuple(range(k))))(*params)
    jac_fwd = jax.jit(jax.jacfwd(f, argnums=tuple(range(k))))(*params)
    for o in (*outs, *vjp, *jvp):
        assert o.dtype == jnp.float64

    # torch.
    tp = [torch.tensor(p, requires_grad=True) for p in inst.params]
    touts = module(*tp)
    sum((o * torch.tensor(c)).sum() for o, c in zip(touts, cot, strict=True)).backward()
    _, tjvp = torch.func.jvp(lambda *ps: module(*ps), tuple(torch.tensor(p) for p in inst.params),
                             tuple(torch.tensor(t) for t in tan))

    # closed forms.
    J = inst.jacobian
    exp_vjp = [sum(_vjp(c, J[i][j]) for i, c in enumerate(cot)) for j in range(k)]
    exp_jvp = [sum(_jvp(J[i][j], t) for j, t in enumerate(tan)) for i in range(len(cot))]

    # Same NumPy core underneath: JAX and torch agree far below the closed-form tolerance.
    for o, to, s in zip(outs, touts, inst.solution, strict=True):
        assert max_abs(o, to.detach()) <= 1e-12 and max_abs(o, s) <= 1e-8
    for g, p, e in zip(vjp, tp, exp_vjp, strict=True):
        assert max_abs(g, p.grad) <= 1e-12 and max_abs(g, e) <= 1e-8
    for t, tt, e in zip(jvp, tjvp, exp_jvp, strict=True):
        assert max_abs(t, tt) <= 1e-12 and max_abs(t, e) <= 1e-8
    for i in range(len(cot)):
        for j in range(k):
            assert max_abs(jac_rev[i][j], J[i][j]) <= 1e-8
            assert max_abs(jac_fwd[i][j], J[i][j]) <= 1e-8


# -- transformations -------------------------------------------------------------------------
def _polytope(seeds=(0, 1, 2)):
    layer, _, sizes = zoo_layer("polytope_projection")
    insts = [problems.instance("polytope_projection", s, **sizes) for s in seeds]
    return layer, insts


def test_jit_vmap_grad_and_compositions(x64):
    layer, insts = _polytope()
    f = layer.jax()
    G, h = (jnp.asarray(p) for p in insts[0].params[:2])
    ys = jnp.stack([jnp.asarray(i.params[2]) + 0.05 * n for n, i in enumerate(insts)])
    w = jnp.arange(1.0, 4.0)

    def loss(G, h, y):
        (x,) = f(G, h, y)
        return jnp.sum(w * x ** 2)

    # The layer's own batching (G, h broadcast over the batch of y) is the reference.
    (xb,) = f(G, h, ys)
    assert xb.shape == (3, 3)
    gb = jax.grad(lambda G, h, y: jnp.sum(w * f(G, h, y)[0] ** 2), argnums=(0, 1, 2))(G, h, ys)
    per = [jax.grad(loss, argnums=(0, 1, 2))(G, h, y) for y in ys]
    assert max_abs(gb[0], sum(p[0] for p in per)) <= 1e-10
    assert max_abs(gb[2], np.stack([p[2] for p in per])) <= 1e-10

    # vmap of the unbatched call; jit; jit∘vmap∘grad; grad of a vmapped function.
    (xv,) = jax.vmap(f, in_axes=(None, None, 0))(G, h, ys)
    assert max_abs(xv, xb) <= 1e-12
    (xj,) = jax.jit(f)(G, h, ys)
    assert max_abs(xj, xb) <= 1e-12
    gv = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2)), in_axes=(None, None, 0)))(G, h, ys)
    for a in range(3):
        assert max_abs(gv[a], np.stack([p[a] for p in per])) <= 1e-10
    gsum = jax.grad(lambda G: jax.vmap(loss, in_axes=(None, None, 0))(G, h, ys).sum())(G)
    assert max_abs(gsum, gb[0]) <= 1e-10

    # vmap over a batched call, and nested vmaps, equal the flat batch.
    ys2 = jnp.stack([ys, ys[::-1]])                                   # (2, 3, 3)
    (xvb,) = jax.vmap(f, in_axes=(None, None, 0))(G, h, ys2)
    assert xvb.shape == (2, 3, 3) and max_abs(xvb[1], xb[::-1]) <= 1e-12
    hs = jnp.stack([h, h + 0.1])
    (xnn,) = jax.jit(jax.vmap(jax.vmap(f, in_axes=(None, None, 0)), in_axes=(None, 0, None)))(
        G, hs, ys)
    assert xnn.shape == (2, 3, 3) and max_abs(xnn[0], xb) <= 1e-12
    assert max_abs(xnn[1], f(G, hs[1], ys)[0]) <= 1e-12
    # in_axes / out_axes other than 0
    (xo,) = jax.vmap(f, in_axes=(None, None, 1), out_axes=1)(G, h, ys.T)
    assert max_abs(xo, xb.T) <= 1e-12

    # jvp, jacfwd, jacrev (also jitted and vmapped) agree with each other.
    y0 = ys[0]
    Jr = jax.jacrev(lambda y: f(G, h, y)[0])(y0)
    Jf = jax.jit(jax.jacfwd(lambda y: f(G, h, y)[0]))(y0)
    assert max_abs(Jr, Jf) <= 1e-10
    _, t = jax.jvp(lambda y: f(G, h, y)[0], (y0,), (jnp.ones(3),))
    assert max_abs(t, Jr @ np.ones(3)) <= 1e-10
    Jv = jax.jit(jax.vmap(jax.jacrev(lambda y: f(G, h, y)[0])))(ys)
    Jvf = jax.vmap(jax.jacfwd(lambda y: f(G, h, y)[0]))(ys)
    assert Jv.shape == (3, 3, 3) and max_abs(Jv[0], Jr) <= 1e-10 and max_abs(Jvf, Jv) <= 1e-10
    # jacobian with respect to a broadcast parameter, through the batched call
    JG = jax.jacrev(lambda G: f(G, h, ys)[0])(G)
    JGf = jax.jacfwd(lambda G: f(G, h, ys)[0])(G)
    assert JG.shape == (3, 3, *G.shape) and max_abs(JG, JGf) <= 1e-10
    # jvp of a vmapped function and vmap of a jvp
    tang = jnp.ones_like(ys)
    _, t1 = jax.jvp(lambda y: jax.vmap(f, in_axes=(None, None, 0))(G, h, y)[0], (ys,), (tang,))
    _, t2 = jax.jit(jax.vmap(lambda y, ty: jax.jvp(lambda y: f(G, h, y)[0], (y,), (ty,))))(
        ys, tang)
    assert max_abs(t1, t2) <= 1e-10 and max_abs(t1[0], t) <= 1e-10


def test_several_outputs_some_unused(x64):
    """Primal and dual outputs; a loss using one output (the others get zero cotangents)."""
    n = 5
    x, theta = cp.Variable(n), cp.Parameter(n, name="theta")
    eq, nonneg, soc = cp.sum(x) == 1, x >= 0, cp.norm(x, 2) <= 0.9
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [eq, nonneg, soc])
    layer = dl.compile(prob, [theta], [x, eq.dual_variables[0], nonneg.dual_variables[0],
                                       soc.dual_variables[0]])
    f, module = layer.jax(), layer.torch()
    th = np.array([1.5, 0.6, -0.2, 0.1, 0.4])
    outs = jax.jit(f)(jnp.asarray(th))
    assert [o.shape for o in outs] == [(5,), (), (5,), ()]

    def loss(t):
        _, nu, lam, _ = f(t)
        return nu * 1.3 + jnp.sum(lam * jnp.arange(n))

    g = jax.jit(jax.grad(loss))(jnp.asarray(th))
    tt = torch.tensor(th, requires_grad=True)
    _, nu, lam, _ = module(tt)
    (nu * 1.3 + (lam * torch.arange(n)).sum()).backward()
    assert max_abs(g, tt.grad) <= 1e-12
    Jr, Jf = jax.jacrev(f)(jnp.asarray(th)), jax.jit(jax.jacfwd(f))(jnp.asarray(th))
    for a, b in zip(Jr, Jf, strict=True):
        assert max_abs(a, b) <= 1e-10
    # linearize / linear_transpose go through the same rules
    y, f_lin = jax.linearize(lambda t: f(t)[2], jnp.asarray(th))
    e0 = jnp.zeros(n).at[0].set(1.0)
    assert max_abs(f_lin(e0), Jf[2][:, 0]) <= 1e-10
    (ct,) = jax.linear_transpose(f_lin, jnp.asarray(th))(e0)
    assert max_abs(ct, Jf[2][0]) <= 1e-10
    ths = jnp.stack([jnp.asarray(th), jnp.asarray(th[::-1])])
    gv = jax.vmap(jax.grad(loss))(ths)
    assert max_abs(gv[0], g) <= 1e-12


def test_vmap_reaches_the_solver_as_one_batch(monkeypatch, x64):
    """vmapped primal and derivative calls are one `forward` / one `restore` each, with the
    whole batch; Jacobians factorize once, not once per row."""
    layer, insts = _polytope()
    f = layer.jax()
    G, h = (jnp.asarray(p) for p in insts[0].params[:2])
    ys = jnp.stack([jnp.asarray(i.params[2]) for i in insts])
    ys4 = jnp.concatenate([ys, ys[:1] + 0.1])
    spy = _Spy(monkeypatch)

    jax.vmap(f, in_axes=(None, None, 0))(G, h, ys4)
    assert spy.forward == [4] and spy.restore == []

    def loss(y):
        return jnp.sum(f(G, h, y)[0] ** 2)

    spy.forward.clear()
    jax.jit(jax.vmap(jax.grad(loss)))(ys4)
    assert spy.forward == [4] and spy.restore == [4]

    spy.forward.clear(), spy.restore.clear()
    jax.vmap(jax.vmap(f, in_axes=(None, None, 0)), in_axes=(None, 0, None))(
        G, jnp.stack([h, h + 0.1]), ys4)
    assert spy.forward == [8]

    spy.forward.clear(), spy.restore.clear()
    jax.jit(jax.jacrev(lambda y: f(G, h, y)[0]))(ys4)     # 12 rows, 4 instances
    assert spy.forward == [4] and spy.restore == [4]
    spy.forward.clear(), spy.restore.clear()
    jax.jit(jax.jacfwd(lambda G: f(G, h, ys4)[0]))(G)    # 18 directions, 4 instances
    assert spy.forward == [4] and spy.restore == [4]


# -- dtypes ----------------------------------------------------------------------------------
def test_float32_in_float32_out():
    f = _sparsemax().jax()
    inst = problems.instance("sparsemax", 0, **zoo_layer("sparsemax")[2])
    th = jnp.asarray(inst.params[0], dtype=jnp.float32)
    for fn in (f, jax.jit(f)):
        (x,) = fn(th)
        assert x.dtype == jnp.float32
        assert max_abs(x, inst.solution[0]) <= 1e-6
    w = jnp.arange(th.shape[0], dtype=jnp.float32)
    g = jax.jit(jax.grad(lambda t: jnp.sum(w * f(t)[0])))(th)
    assert g.dtype == jnp.float32
    assert max_abs(g, _vjp(np.asarray(w), inst.jacobian[0][0])) <= 1e-5
    J = jax.jacfwd(lambda t: f(t)[0])(th)
    assert J.dtype == jnp.float32 and max_abs(J, inst.jacobian[0][0]) <= 1e-5
    (xi,) = f(jnp.arange(4 * 8).reshape(4, 8) % 3)   # integers: the default float
    assert xi.dtype == jnp.float32 and xi.shape == (4, 8)


def test_float64_in_float64_out(x64):
    f = _sparsemax().jax()
    inst = problems.instance("sparsemax", 0, **zoo_layer("sparsemax")[2])
    th64 = jnp.asarray(inst.params[0], dtype=jnp.float64)
    (x64_,) = jax.jit(f)(th64)
    assert x64_.dtype == jnp.float64 and max_abs(x64_, inst.solution[0]) <= 1e-8
    g = jax.grad(lambda t: f(t)[0][0])(th64)
    assert g.dtype == jnp.float64
    (x32,) = jax.jit(f)(th64.astype(jnp.float32))       # float32 stays float32 under x64
    assert x32.dtype == jnp.float32 and max_abs(x32, x64_) <= 1e-6
    g32 = jax.grad(lambda t: f(t)[0][0])(th64.astype(jnp.float32))
    assert g32.dtype == jnp.float32 and max_abs(g32, g) <= 1e-6
    # mixed precision promotes, like torch
    layer, insts = _polytope()
    G, h, y = insts[0].params
    (xm,) = layer.jax()(jnp.asarray(G, jnp.float32), jnp.asarray(h), jnp.asarray(y))
    assert xm.dtype == jnp.float64 and max_abs(xm, insts[0].solution[0]) <= 1e-6


# -- calling convention, options and errors --------------------------------------------------
def test_shapes_and_eager_equals_jit(x64):
    layer, insts = _polytope()
    f = layer.jax()
    G, h, y = (jnp.asarray(p) for p in insts[0].params)
    (x,) = f(G, h, y)
    assert x.shape == (3,)
    (x1,) = f(G, h, y[None])                      # a batch of one stays batched
    assert x1.shape == (1, 3)
    (xj,) = jax.jit(f)(G, h, y)
    assert max_abs(x, xj) == 0.0                  # eager (no callback) and jit: same solve
    (xl,) = f(np.asarray(G), insts[0].params[1].tolist(), y)   # NumPy and lists accepted
    assert max_abs(x, xl) == 0.0


def test_input_errors_at_trace_time():
    f = _sparsemax().jax()
    layer, _ = _polytope()
    g = layer.jax()
    G, h, y = (jnp.ones(s) for s in ((6, 3), (6,), (3,)))
    for fn in (f, jax.jit(f)):
        with pytest.raises(ParameterError, match=r"expected 1 parameter value\(s\) \(theta"):
            fn(jnp.ones(8), jnp.ones(8))
    for fn in (f, jax.jit(f), jax.grad(lambda t: f(t)[0].sum())):
        with pytest.raises(ParameterError, match=r"expected shape \(8,\) or \(batch, 8\), "
                                                 r"got \(2, 2, 8\)"):
            fn(jnp.ones((2, 2, 8)))
    with pytest.raises(ParameterError, match=r"one batch size; got .*: 2, .*: 4"):
        jax.jit(g)(G, jnp.ones((2, 6)), jnp.ones((4, 3)))
    with pytest.raises(ProblemError, match="unsupported solver option"):
        jax.jit(functools.partial(f, solver_args={"no_such_option": 1}))(jnp.ones(8))
    with pytest.raises(ProblemError, match="on_failure must be one of"):
        f(jnp.ones(8), on_failure="ignore")


def test_nan_parameters_name_the_parameter():
    """NaN/inf can only be seen at run time: eagerly the library's ParameterError, inside a
    transformation a JaxRuntimeError carrying the same message."""
    f = _sparsemax().jax()
    th = jnp.ones((3, 8)).at[1, 2].set(jnp.nan)
    with pytest.raises(ParameterError, match=r"parameter 'theta' has NaN or inf entries at "
                                             r"batch index \[1\]"):
        f(th)
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"ParameterError: parameter 'theta' has NaN or inf entries at "
                             r"batch index \[1\]"):
        np.asarray(jax.jit(f)(th)[0])
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"parameter 'theta' has NaN or inf entries at vmap axis 0 "
                             r"index \[1\]"):
        np.asarray(jax.vmap(f)(th)[0])
    with pytest.raises(jax.errors.JaxRuntimeError, match=r"'theta' has NaN or inf entries "
                                                         r"\(unbatched value\)"):
        np.asarray(jax.jit(f)(th[1])[0])


def test_on_failure_raise_and_nan():
    """Infeasible instances (u < 0): 'raise' reports them; 'nan' gives NaN outputs and zero
    gradients there, exact results elsewhere, under jit∘vmap∘grad."""
    f = _box().jax()
    c = jnp.array([[0.5, -1.0, 2.0], [0.3, 0.2, 0.1], [1.0, 1.0, 1.0]])
    u = jnp.array([1.0, -1.0, 0.5])
    with pytest.raises(SolverError, match=r"1 of 3 problem instance\(s\) not solved"):
        f(c, u)
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"SolverError: 1 of 3 problem instance\(s\) not solved .*\{1: "):
        np.asarray(jax.jit(f)(c, u)[0])
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"1 of 3 problem instance\(s\) not solved.*under jax.vmap"):
        np.asarray(jax.vmap(f)(c, u)[0])

    (x,) = jax.jit(functools.partial(f, on_failure="nan"))(c, u)
    assert np.isnan(np.asarray(x[1])).all()
    cn, un = np.asarray(c), np.asarray(u)
    assert max_abs(x[::2], np.clip(cn[::2], 0, un[::2, None])) <= 1e-6

    def loss(c, u):
        return jnp.sum(f(c, u, on_failure="nan")[0] * jnp.arange(3.0))

    gc, gu = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1))))(c, u)
    assert np.isfinite(np.asarray(gc)).all() and np.all(np.asarray(gc[1]) == 0)
    assert float(gu[1]) == 0.0
    inside = (c[0] > 0) & (c[0] < u[0])
    assert max_abs(gc[0], np.where(inside, np.arange(3.0), 0.0)) <= 1e-5
    # per-call solver_args reach the solver under jit: one SCS iteration, no refinement
    (xs,) = jax.jit(functools.partial(f, solver_args={"max_iters": 1, "refine": False},
                                      on_failure="nan"))(c[0], u[0])
    assert np.isnan(np.asarray(xs)).all()


def test_second_order_is_refused():
    f = _sparsemax().jax()
    with pytest.raises(NotImplementedError, match="second-order"):
        jax.hessian(lambda t: f(t)[0].sum())(jnp.linspace(0.0, 1.0, 8))
