"""What the layer refuses, and how: complex problems and values, non-numeric values, and
every route to a second derivative; and what it must keep doing: exact first derivatives
under every transform, and JAX layers with sign- or definiteness-constrained parameters.

The problems are small ones a user would write, each with a closed-form solution:

* simplex projection (sparsemax), x* = max(θ − τ, 0) with Σx* = 1, and Jacobian
  diag(s) − ssᵀ/|S| on the support S (Martins & Astudillo 2016);
* scaled ridge problems, x* = c / (2λ) and the like;
* max log det X − tr(S X), X* = S⁻¹, ∂⟨W, X*⟩/∂S = −sym(X W X).
"""

from __future__ import annotations

import cvxpy as cp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as fwAD

import declarative as dl
from declarative.errors import ParameterError, ProblemError

# --- the user's problems and their closed forms -----------------------------------------------

N = 5
THETA = np.array([0.9, 0.1, 0.5, -0.6, 0.3])  # support {0, 2, 4}, strictly complementary


def sparsemax_layer() -> dl.Layer:
    x, theta = cp.Variable(N, name="x"), cp.Parameter(N, name="theta")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [cp.sum(x) == 1, x >= 0])
    return dl.compile(prob, [theta], [x])


def sparsemax(theta: np.ndarray) -> np.ndarray:
    """Projection onto the simplex by sorting (Martins & Astudillo 2016, Algorithm 1)."""
    z = np.sort(theta)[::-1]
    k = np.arange(1, theta.size + 1)
    support = 1 + k * z > np.cumsum(z)
    kz = k[support][-1]
    tau = (np.cumsum(z)[kz - 1] - 1) / kz
    return np.maximum(theta - tau, 0.0)


def sparsemax_jacobian(theta: np.ndarray) -> np.ndarray:
    s = (sparsemax(theta) > 0).astype(float)
    return np.diag(s) - np.outer(s, s) / s.sum()


@pytest.fixture(scope="module")
def layer() -> dl.Layer:
    return sparsemax_layer()


def test_closed_form_reference_is_what_the_layer_computes(layer):
    """The references below are only as good as this agreement."""
    (x,) = layer.forward([THETA]).outputs
    assert np.max(np.abs(x[0] - sparsemax(THETA))) <= 1e-8
    assert (sparsemax(THETA) > 1e-3).sum() == 3


# --- complex problems are refused at compile time ---------------------------------------------

@pytest.mark.parametrize("make", [
    lambda: cp.Variable(3, complex=True, name="z"),
    lambda: cp.Variable(3, imag=True, name="z"),
])
def test_complex_variable_is_refused_by_name(make):
    z, theta = make(), cp.Parameter(3, name="theta")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(z - theta)))
    with pytest.raises(ProblemError, match=r"(?s)variable 'z' is complex.*not supported.*"
                                           r"real and imaginary parts"):
        dl.compile(prob, [theta], [z])


def test_hermitian_variable_is_refused_by_name():
    H, a = cp.Variable((2, 2), hermitian=True, name="H"), cp.Parameter(name="a")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(cp.real(H)) - a * cp.real(cp.trace(H))),
                      [H >> 0])
    with pytest.raises(ProblemError, match=r"variable 'H' is complex"):
        dl.compile(prob, [a], [H])


def test_complex_parameter_is_refused_by_name():
    x, w = cp.Variable(3), cp.Parameter(3, complex=True, name="w")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - cp.real(w))))
    with pytest.raises(ProblemError, match=r"(?s)parameter 'w' is complex.*real and imaginary"):
        dl.compile(prob, [w], [x])


def test_complex_constant_in_a_real_problem_is_refused():
    """Real variables and parameters, but a complex expression: named by its text."""
    x, theta = cp.Variable(3, name="x"), cp.Parameter(3, name="theta")
    prob = cp.Problem(cp.Minimize(cp.sum_squares(1j * x - theta)))
    with pytest.raises(ProblemError, match=r"expression '.*x.*' is complex"):
        dl.compile(prob, [theta], [x])


def test_the_advised_real_split_solves_the_complex_problem():
    """min |z − w|² s.t. |z_k| ≤ 1, written in real and imaginary parts as the error advises:
    z* = w / max(1, |w|) entrywise (projection onto the unit disc)."""
    x, y = cp.Variable(3, name="re_z"), cp.Variable(3, name="im_z")
    a, b = cp.Parameter(3, name="re_w"), cp.Parameter(3, name="im_w")
    cons = [cp.norm(cp.vstack([x[k], y[k]]), 2) <= 1 for k in range(3)]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - a) + cp.sum_squares(y - b)), cons)
    layer = dl.compile(prob, [a, b], [x, y])
    w = np.array([0.3 + 0.4j, 2.0 - 1.0j, -1.5j])
    xs, ys = layer.forward([w.real, w.imag]).outputs
    expected = w / np.maximum(1.0, np.abs(w))
    assert np.max(np.abs(xs[0] + 1j * ys[0] - expected)) <= 1e-7


# --- values that are not real numbers ----------------------------------------------------------

SHAPES = r"of shape \(5,\) or \(batch, 5\)"
NOT_REAL = [
    (None, "None"),
    ("theta", "str 'theta'"),
    (["a", "b", "c", "d", "e"], r"list \['a', 'b', 'c', 'd', 'e'\]"),
    (object(), "object <object"),
    ([[1.0, 2.0], [3.0]], r"list \[\[1.0, 2.0\], \[3.0\]\]"),
]


@pytest.mark.parametrize(("value", "got"), NOT_REAL)
def test_numpy_forward_refuses_non_numeric_values(layer, value, got):
    with pytest.raises(ParameterError, match=rf"parameter 'theta': expected a real array "
                                             rf".*{SHAPES}, got {got}"):
        layer.forward([value])


@pytest.mark.parametrize(("value", "got"), NOT_REAL)
def test_torch_refuses_non_numeric_values(layer, value, got):
    with pytest.raises(ParameterError, match=rf"parameter 'theta': expected a real tensor "
                                             rf".*{SHAPES}, got {got}"):
        layer.torch()(value)


@pytest.mark.parametrize(("value", "got"), NOT_REAL)
def test_jax_refuses_non_numeric_values(layer, value, got):
    with pytest.raises(ParameterError, match=rf"parameter 'theta': expected a real array "
                                             rf".*{SHAPES}, got {got}"):
        layer.jax()(value)


COMPLEX = r"(?s)Complex values are not supported.*real and\s+imaginary parts"


def test_complex_values_are_refused_not_cast_to_real(layer):
    """A complex value whose imaginary part is zero is refused too: the dtype is the error."""
    z = THETA + 0.5j
    with pytest.raises(ParameterError, match=r"'theta'.*expected a real array.*complex128"):
        layer.forward([z])
    with pytest.raises(ParameterError, match=COMPLEX):
        layer.forward([np.stack([z, z])])
    with pytest.raises(ParameterError, match=COMPLEX):
        layer.forward([list(THETA + 0j)])
    module = layer.torch()
    for value in (torch.tensor(z), torch.tensor(THETA, dtype=torch.complex64), z):
        with pytest.raises(ParameterError, match=r"'theta'.*expected a real tensor.*complex"):
            module(value)
    f = layer.jax()
    for fn in (f, jax.jit(f), jax.vmap(f)):
        with pytest.raises(ParameterError, match=r"'theta'.*expected a real array.*complex"):
            fn(jnp.asarray(np.stack([z, z])))


def test_integer_and_bool_values_are_real(layer):
    """Real dtypes other than float are accepted and mean their numeric values."""
    ints = np.array([1, 1, 0, -1, 0])
    expected = sparsemax(ints.astype(float))
    (x,) = layer.torch()(torch.tensor(ints))
    assert np.max(np.abs(x.numpy() - expected)) <= 1e-8
    (xj,) = layer.jax()(jnp.asarray(ints))
    assert np.max(np.abs(np.asarray(xj) - expected)) <= 1e-6
    (xb,) = layer.forward([np.array([True, True, False, False, False])]).outputs
    assert np.max(np.abs(xb[0] - [0.5, 0.5, 0, 0, 0])) <= 1e-8


def test_python_numbers_and_odd_arrays_keep_their_values():
    """A Python number or list reaches the float64 solve as it is (torch.as_tensor made
    λ = 0.1 float32's 0.100000001, the soft threshold 1.5e-9 off) and does not set the
    outputs' dtype: the tensors' and arrays' beside it do (torch's default where there are
    none). A NumPy array with negative strides, read-only memory or a dtype torch lacks
    (long double) is taken as it is."""
    x, q, lam = cp.Variable(3), cp.Parameter(3), cp.Parameter(nonneg=True)
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + q @ x + lam * cp.norm1(x)))
    module = dl.compile(prob, [q, lam], [x]).torch()
    qv = np.array([-1.0, 0.3, 2.0])
    exact = -np.sign(qv) * np.maximum(np.abs(qv) - 0.1, 0.0)  # soft thresholding
    for args in ((torch.tensor(qv), 0.1), (qv, 0.1), (qv, [0.1])):
        (out,) = module(*args)
        assert out.dtype == torch.float64
        assert np.abs(out.numpy() - exact).max() <= 1e-15
    (out32,) = module(list(qv), 0.1)  # all weak: torch's default dtype, the exact solve
    assert out32.dtype == torch.get_default_dtype() == torch.float32
    assert np.abs(out32.numpy() - exact.astype(np.float32)).max() == 0
    flipped = np.array([2.0, 0.3, -1.0])[::-1]
    frozen = qv.copy()
    frozen.flags.writeable = False
    for value in (flipped, frozen, qv.astype(np.longdouble)):
        (out,) = module(value, np.float64(0.1))
        assert np.abs(out.numpy() - exact).max() <= 1e-15

def test_wrong_count_is_reported_before_conversion(layer):
    with pytest.raises(ParameterError, match=r"expected 1 parameter value\(s\) \(theta\)"):
        layer.torch()(None, None)
    with pytest.raises(ParameterError, match=r"expected 1 parameter value\(s\) \(theta\)"):
        layer.jax()("a", "b")


# --- torch: first derivatives under every transform, against the closed-form Jacobian ---------

J = sparsemax_jacobian(THETA)
W = np.array([1.0, -2.0, 0.5, 3.0, 1.5])   # an output cotangent
V = np.array([0.2, 1.0, -0.7, 0.4, -1.1])  # a parameter tangent


def _t(a: np.ndarray, grad: bool = False) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


def _close(a, b, tol: float = 1e-7) -> bool:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return float(np.max(np.abs(a - np.asarray(b)))) <= tol


def test_torch_first_derivatives_under_every_transform(layer):
    m = layer.torch()
    g = lambda t: m(t)[0]  # noqa: E731
    loss = lambda t: (m(t)[0] * _t(W)).sum()  # noqa: E731
    th = _t(THETA, grad=True)
    loss(th).backward()
    assert _close(th.grad, W @ J)
    # create_graph=True: the gradient itself is right (and differentiable w.r.t. W below)
    th2 = _t(THETA, grad=True)
    (gr,) = torch.autograd.grad(loss(th2), th2, create_graph=True)
    assert _close(gr, W @ J)
    assert _close(torch.func.grad(loss)(_t(THETA)), W @ J)
    assert _close(torch.func.jacrev(g)(_t(THETA)), J)
    assert _close(torch.func.jacfwd(g)(_t(THETA)), J)
    assert _close(torch.func.jvp(g, (_t(THETA),), (_t(V),))[1], J @ V)
    assert _close(torch.func.vjp(g, _t(THETA))[1](_t(W))[0], W @ J)
    assert _close(torch.autograd.functional.jacobian(g, _t(THETA)), J)
    # the double-backward trick (differentiates the VJP w.r.t. its cotangent), with and
    # without a graph of the result
    assert _close(torch.autograd.functional.jvp(g, _t(THETA), _t(V))[1], J @ V)
    assert _close(torch.autograd.functional.jvp(g, _t(THETA), _t(V), create_graph=True)[1],
                  J @ V)
    assert _close(torch.autograd.functional.vjp(g, _t(THETA), _t(W))[1], W @ J)
    batch = np.stack([THETA, THETA[::-1]])
    vg = torch.func.vmap(torch.func.grad(loss))(_t(batch))
    assert _close(vg[0], W @ J)
    assert _close(vg[1], W @ sparsemax_jacobian(THETA[::-1]))


def test_torch_mixed_derivative_through_the_cotangent_is_first_order(layer):
    """L = ⟨w, x*(θ)⟩ with w a leaf: ∂/∂w ⟨u, ∇_θ L⟩ = J u — a derivative of the VJP with
    respect to its cotangent, linear in the layer, hence exact and not refused."""
    m = layer.torch()
    th, w = _t(THETA, grad=True), _t(W, grad=True)
    (gr,) = torch.autograd.grad((m(th)[0] * w).sum(), th, create_graph=True)
    (dw,) = torch.autograd.grad((gr * _t(V)).sum(), w)
    assert _close(dw, J @ V)


def test_torch_forward_mode_ad(layer):
    m = layer.torch()
    with fwAD.dual_level():
        (x,) = m(fwAD.make_dual(_t(THETA), _t(V)))
        assert _close(fwAD.unpack_dual(x).tangent, J @ V)


# --- torch: every route to a second derivative raises our message -----------------------------

SECOND = r"no second derivatives"


def _torch_second_order_routes():
    def loss(m, t):
        return (m(t)[0] * _t(W)).sum()

    def gradient_penalty(m):
        th = _t(THETA, grad=True)
        (gr,) = torch.autograd.grad(loss(m, th), th, create_graph=True)
        (gr ** 2).sum().backward()

    def grad_of_grad(m):
        th = _t(THETA, grad=True)
        (gr,) = torch.autograd.grad(loss(m, th), th, create_graph=True)
        torch.autograd.grad((gr * _t(V)).sum(), th)

    def backward_create_graph_then_backward(m):
        th = _t(THETA, grad=True)
        loss(m, th).backward(create_graph=True)
        th.grad.sum().backward()

    def layer_plus_smooth_term(m):
        th = _t(THETA, grad=True)
        (gr,) = torch.autograd.grad(loss(m, th) + (th ** 3).sum(), th, create_graph=True)
        gr.sum().backward()

    def jvp_with_graph_then_grad(m):
        th = _t(THETA, grad=True)
        _, jv = torch.autograd.functional.jvp(lambda t: m(t)[0], th, _t(V), create_graph=True)
        torch.autograd.grad(jv.sum(), th)

    def forward_over_reverse(m):
        with fwAD.dual_level():
            th = fwAD.make_dual(_t(THETA, grad=True), _t(V))
            (gr,) = torch.autograd.grad(loss(m, th), th, create_graph=True)
            fwAD.unpack_dual(gr).tangent  # noqa: B018

    f = lambda m: (lambda t: loss(m, t))  # noqa: E731
    tf = torch.func
    return {
        "gradient penalty (double backward)": gradient_penalty,
        "autograd.grad of a create_graph gradient": grad_of_grad,
        "backward(create_graph=True), then backward": backward_create_graph_then_backward,
        "gradient penalty with a smooth term beside the layer": layer_plus_smooth_term,
        "autograd.functional.jvp(create_graph=True), then grad": jvp_with_graph_then_grad,
        "forward-mode AD over a create_graph gradient": forward_over_reverse,
        "autograd.functional.hessian": lambda m: torch.autograd.functional.hessian(
            f(m), _t(THETA)),
        "autograd.functional.hvp": lambda m: torch.autograd.functional.hvp(
            f(m), _t(THETA), _t(V)),
        "autograd.functional.vhp": lambda m: torch.autograd.functional.vhp(
            f(m), _t(THETA), _t(V)),
        "torch.func.hessian": lambda m: tf.hessian(f(m))(_t(THETA)),
        "jacrev(jacrev)": lambda m: tf.jacrev(tf.jacrev(f(m)))(_t(THETA)),
        "jacfwd(jacrev)": lambda m: tf.jacfwd(tf.jacrev(f(m)))(_t(THETA)),
        "jacrev(jacfwd)": lambda m: tf.jacrev(tf.jacfwd(f(m)))(_t(THETA)),
        "jacfwd(jacfwd)": lambda m: tf.jacfwd(tf.jacfwd(f(m)))(_t(THETA)),
        "grad(grad)": lambda m: tf.grad(lambda t: tf.grad(f(m))(t).pow(2).sum())(_t(THETA)),
        "jvp(grad)": lambda m: tf.jvp(tf.grad(f(m)), (_t(THETA),), (_t(V),)),
        "vjp(grad)": lambda m: tf.vjp(tf.grad(f(m)), _t(THETA))[1](_t(V)),
        "jvp(jvp)": lambda m: tf.jvp(lambda t: tf.jvp(f(m), (t,), (_t(V),))[1],
                                     (_t(THETA),), (_t(V),)),
        "vmap(hessian)": lambda m: tf.vmap(tf.hessian(f(m)))(_t(np.stack([THETA, THETA]))),
    }


@pytest.mark.parametrize("route", list(_torch_second_order_routes()))
def test_torch_second_derivatives_raise(layer, route):
    with pytest.raises(NotImplementedError, match=SECOND):
        _torch_second_order_routes()[route](layer.torch())


# --- JAX: every route to a second derivative raises our message; first order is exact ---------

@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


def _jax_second_order_routes():
    def f(F):
        return lambda t: jnp.sum(F(t)[0] * jnp.asarray(W))

    th, v = jnp.asarray(THETA), jnp.asarray(V)
    return {
        "jax.hessian": lambda F: jax.hessian(f(F))(th),
        "jit(hessian)": lambda F: jax.jit(jax.hessian(f(F)))(th),
        "grad(grad)": lambda F: jax.grad(lambda t: jnp.sum(jax.grad(f(F))(t) ** 2))(th),
        "jacfwd(jacrev)": lambda F: jax.jacfwd(jax.jacrev(f(F)))(th),
        "jacrev(jacrev)": lambda F: jax.jacrev(jax.jacrev(f(F)))(th),
        "jacrev(jacfwd)": lambda F: jax.jacrev(jax.jacfwd(f(F)))(th),
        "jvp(grad)": lambda F: jax.jvp(jax.grad(f(F)), (th,), (v,)),
        "vmap(hessian)": lambda F: jax.vmap(jax.hessian(f(F)))(jnp.stack([th, th])),
    }


@pytest.mark.parametrize("route", list(_jax_second_order_routes()))
def test_jax_second_derivatives_raise(layer, route, x64):
    with pytest.raises(NotImplementedError, match=SECOND):
        _jax_second_order_routes()[route](layer.jax())


def test_jax_first_derivatives_are_exact(layer, x64):
    F = layer.jax()
    th = jnp.asarray(THETA)
    loss = lambda t: jnp.sum(F(t)[0] * jnp.asarray(W))  # noqa: E731
    assert _close(jax.jit(jax.grad(loss))(th), W @ J)
    assert _close(jax.jacrev(lambda t: F(t)[0])(th), J)
    assert _close(jax.jacfwd(lambda t: F(t)[0])(th), J)
    assert _close(jax.jvp(lambda t: F(t)[0], (th,), (jnp.asarray(V),))[1], J @ V)
    # derivative of the VJP w.r.t. its cotangent: first order in the layer
    dvjp = jax.grad(lambda c: jnp.sum(jax.vjp(lambda t: F(t)[0], th)[1](c)[0] * jnp.asarray(V)))
    assert _close(dvjp(jnp.asarray(W)), J @ V)


# --- JAX with parameters declared pos, neg, nonneg, nonpos, PSD or NSD -------------------------

C = np.array([1.0, -2.0, 3.0])
WX = np.array([0.5, 1.0, -1.5])  # L = ⟨WX, x*⟩


def _ridge(attr: str):
    """(layer, value of the attributed parameter, x*(value), dL/d value) for a scaled ridge
    problem whose parameter is declared ``attr``; L = ⟨WX, x*⟩."""
    x, c = cp.Variable(3, name="x"), cp.Parameter(3, name="c")
    p = cp.Parameter(name="p", **{attr: True})
    objective = {
        "pos": p * cp.sum_squares(x) - c @ x,                      # x* = c / (2p)
        "neg": -p * cp.sum_squares(x) - c @ x,                     # x* = −c / (2p)
        "nonneg": cp.sum_squares(x - c) + p * cp.sum_squares(x),   # x* = c / (1 + p)
        "nonpos": cp.sum_squares(x - c) - p * cp.sum_squares(x),   # x* = c / (1 − p)
    }[attr]
    layer = dl.compile(cp.Problem(cp.Minimize(objective)), [c, p], [x])
    value = {"pos": 2.0, "neg": -2.0, "nonneg": 0.0, "nonpos": -0.5}[attr]
    scale = {"pos": lambda p: 1 / (2 * p), "neg": lambda p: -1 / (2 * p),
             "nonneg": lambda p: 1 / (1 + p), "nonpos": lambda p: 1 / (1 - p)}[attr]
    dscale = {"pos": lambda p: -1 / (2 * p * p), "neg": lambda p: 1 / (2 * p * p),
              "nonneg": lambda p: -1 / (1 + p) ** 2, "nonpos": lambda p: 1 / (1 - p) ** 2}[attr]
    return layer, value, scale, dscale


@pytest.mark.parametrize("attr", ["pos", "neg", "nonneg", "nonpos"])
def test_jax_sign_constrained_parameter_under_jit_grad_vmap(attr, x64):
    layer, p0, scale, dscale = _ridge(attr)
    f = layer.jax()
    c = jnp.asarray(C)

    def loss(c, p):
        return jnp.sum(f(c, p)[0] * jnp.asarray(WX))

    (x,) = jax.jit(f)(c, p0)
    assert _close(x, C * scale(p0))
    dc, dp = jax.jit(jax.grad(loss, argnums=(0, 1)))(c, p0)
    assert _close(dc, WX * scale(p0))
    assert _close(dp, WX @ C * dscale(p0))
    # central differences of the layer itself (inside the parameter's domain)
    h = 1e-5
    p1 = p0 + (h if attr in ("pos", "nonneg") else -h)
    fd = (loss(c, p1 + h) - loss(c, p1 - h)) / (2 * h)
    assert abs(float(jax.grad(loss, argnums=1)(c, p1)) - float(fd)) <= 1e-6
    ps = p0 + (1.0 if attr in ("pos", "nonneg") else -1.0) * np.array([0.5, 1.0, 2.0])
    (xs,) = jax.vmap(f, in_axes=(None, 0))(c, jnp.asarray(ps))
    assert _close(xs, np.outer([scale(p) for p in ps], C))
    dps = jax.vmap(jax.grad(loss, argnums=1), in_axes=(None, 0))(c, jnp.asarray(ps))
    assert _close(dps, [WX @ C * dscale(p) for p in ps])


@pytest.mark.parametrize("attr", ["pos", "neg", "nonneg", "nonpos"])
def test_jax_out_of_domain_value_is_named_under_jit_and_vmap(attr):
    layer, p0, _, _ = _ridge(attr)
    f = layer.jax()
    bad = {"pos": 0.0, "neg": 0.0, "nonneg": -1.0, "nonpos": 1.0}[attr]
    what = rf"'p' has values that are not {attr} \(it was declared {attr}=True\)"
    with pytest.raises(ParameterError, match=rf"{what} \(unbatched value\)"):
        f(jnp.asarray(C), bad)
    with pytest.raises(jax.errors.JaxRuntimeError, match=rf"{what} \(unbatched value\)"):
        np.asarray(jax.jit(f)(jnp.asarray(C), bad)[0])
    with pytest.raises(jax.errors.JaxRuntimeError, match=rf"{what} at vmap axis 0 index \[1\]"):
        np.asarray(jax.vmap(f, in_axes=(None, 0))(jnp.asarray(C), jnp.asarray([p0, bad]))[0])


@pytest.mark.parametrize("attr", ["PSD", "NSD"])
def test_jax_definite_parameter_under_jit_grad_vmap(attr, x64):
    """max log det X − tr(S X), S PSD: X* = S⁻¹; max log det X + tr(N X), N NSD: X* = −N⁻¹.
    Both: ∂⟨W, X*⟩ = ⟨∓sym(X W X), dS⟩ (the layer reads the parameter as (S + Sᵀ)/2)."""
    k = 3
    X, S = cp.Variable((k, k), PSD=True, name="X"), cp.Parameter((k, k), name="S",
                                                                **{attr: True})
    sign = 1.0 if attr == "PSD" else -1.0
    prob = cp.Problem(cp.Maximize(cp.log_det(X) - sign * cp.trace(S @ X)))
    f = dl.compile(prob, [S], [X]).jax()
    rng = np.random.default_rng(0)
    Ms = rng.standard_normal((2, k, k))
    Ss = sign * (Ms @ np.swapaxes(Ms, 1, 2) + np.eye(k))
    Wm = rng.standard_normal((k, k))
    Xs = sign * np.linalg.inv(Ss)
    (X0,) = jax.jit(f)(jnp.asarray(Ss[0]))
    assert _close(X0, Xs[0], 1e-6)
    loss = lambda s: jnp.sum(f(s)[0] * jnp.asarray(Wm))  # noqa: E731
    G = Xs[0] @ Wm @ Xs[0]
    assert _close(jax.jit(jax.grad(loss))(jnp.asarray(Ss[0])), -sign * (G + G.T) / 2, 1e-6)
    (Xv,) = jax.vmap(f)(jnp.asarray(Ss))
    assert _close(Xv, Xs, 1e-6)
    Gs = Xs @ Wm @ Xs
    assert _close(jax.vmap(jax.grad(loss))(jnp.asarray(Ss)),
                  -sign * (Gs + np.swapaxes(Gs, 1, 2)) / 2, 1e-6)
