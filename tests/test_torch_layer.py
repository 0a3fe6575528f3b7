"""The torch module behaves like any torch module and like a loop of single solves."""

from __future__ import annotations

import copy
import io
import threading

import cvxpy as cp
import numpy as np
import pytest
import torch

import declarative as dl
from declarative import problems
from tests.conftest import max_abs, zoo_layer


def _sparsemax(n=6):
    x, theta = cp.Variable(n), cp.Parameter(n)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [cp.sum(x) == 1, x >= 0])
    return dl.compile(prob, [theta], [x]).torch()


def test_gradcheck_small_qp():
    """Central differences of the layer itself agree with backward (float64)."""
    layer, mod, sizes = zoo_layer("qp")
    inst = problems.instance("qp", 7, **sizes)
    module = layer.torch()
    params = tuple(torch.tensor(p, requires_grad=True) for p in inst.params)
    assert torch.autograd.gradcheck(lambda *ps: module(*ps), params, eps=1e-6, atol=1e-5,
                                    rtol=1e-4)


def test_gradcheck_softmax_and_forward_mode():
    layer, _, sizes = zoo_layer("softmax")
    inst = problems.instance("softmax", 1, **sizes)
    module = layer.torch()
    theta = torch.tensor(inst.params[0], requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: module(t), (theta,), eps=1e-6, atol=1e-5)
    assert torch.autograd.gradcheck(lambda t: module(t), (theta,), eps=1e-6, atol=1e-5,
                                    check_forward_ad=True, check_backward_ad=False,
                                    check_undefined_grad=False)


def test_batched_equals_loop(zoo_name):
    layer, _, sizes = zoo_layer(zoo_name)
    insts = [problems.instance(zoo_name, s, **sizes) for s in range(3)]
    module = layer.torch()
    batch = [torch.tensor(np.stack([i.params[j] for i in insts]), requires_grad=True)
             for j in range(len(insts[0].params))]
    outs = module(*batch)
    w = [torch.randn(o.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
         for o in outs]
    sum((o * wi).sum() for o, wi in zip(outs, w, strict=True)).backward()
    for b, inst in enumerate(insts):
        single = [torch.tensor(p, requires_grad=True) for p in inst.params]
        souts = module(*single)
        sum((o * wi[b]).sum() for o, wi in zip(souts, w, strict=True)).backward()
        for o, so in zip(outs, souts, strict=True):
            assert max_abs(o[b].detach(), so.detach()) <= 1e-10
        for p, sp in zip(batch, single, strict=True):
            assert max_abs(p.grad[b], sp.grad) <= 1e-9


def test_broadcasting_unbatched_parameter():
    """An unbatched parameter is shared by the batch; its gradient sums over the batch."""
    layer, _, sizes = zoo_layer("polytope_projection")
    insts = [problems.instance("polytope_projection", s, **sizes) for s in range(3)]
    G, h = insts[0].params[0], insts[0].params[1]
    ys = np.stack([insts[0].params[2] + 0.1 * k for k in range(3)])
    module = layer.torch()
    Gt, ht = torch.tensor(G, requires_grad=True), torch.tensor(h, requires_grad=True)
    yt = torch.tensor(ys, requires_grad=True)
    (x,) = module(Gt, ht, yt)
    assert x.shape == (3, G.shape[1])
    x.sum().backward()
    gG = torch.zeros_like(Gt)
    for k in range(3):
        G1 = torch.tensor(G, requires_grad=True)
        (x1,) = module(G1, torch.tensor(h), torch.tensor(ys[k]))
        assert max_abs(x1.detach(), x[k].detach()) <= 1e-10
        x1.sum().backward()
        gG += G1.grad
    assert max_abs(Gt.grad, gG) <= 1e-9


def test_float32_in_float32_out_and_grad():
    module = _sparsemax()
    theta = torch.randn(4, 6, dtype=torch.float32, requires_grad=True)
    (x,) = module(theta)
    assert x.dtype == torch.float32 and x.device == theta.device
    (x * torch.arange(6.0)).sum().backward()
    assert theta.grad.dtype == torch.float32
    theta64 = theta.detach().double().requires_grad_()
    (x64,) = module(theta64)
    assert x64.dtype == torch.float64
    assert max_abs(x.detach().double(), x64.detach()) <= 1e-6


def test_unbatched_output_shape_and_scalar_parameter():
    x = cp.Variable(3)
    a = cp.Parameter(nonneg=True)
    c = cp.Parameter(3)
    prob = cp.Problem(cp.Minimize(a * cp.sum_squares(x) + c @ x))
    module = dl.compile(prob, [a, c], [x]).torch()
    cv = np.array([1.0, -2.0, 0.5])
    (xs,) = module(torch.tensor(2.0), torch.tensor(cv))
    assert xs.shape == (3,)
    assert max_abs(xs, -cv / 4) <= 1e-8           # x = −c / (2a)
    (xb,) = module(torch.tensor([1.0, 2.0]), torch.tensor(cv))
    assert xb.shape == (2, 3)
    assert max_abs(xb[0], -cv / 2) <= 1e-8


def test_deepcopy_save_load_to_and_threads():
    module = _sparsemax()
    model = torch.nn.Sequential(torch.nn.Linear(4, 6).double(), module)
    inp = torch.randn(5, 4, dtype=torch.float64)
    (ref,) = model(inp)
    (cp_out,) = copy.deepcopy(model)(inp)
    assert max_abs(ref.detach(), cp_out.detach()) == 0.0
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    (ld,) = loaded(inp)
    assert max_abs(ref.detach(), ld.detach()) == 0.0
    state = io.BytesIO()
    torch.save(model.state_dict(), state)
    state.seek(0)
    model.load_state_dict(torch.load(state))
    assert model.to("cpu") is model
    (moved,) = model.to(torch.device("cpu"))(inp)
    assert max_abs(ref.detach(), moved.detach()) == 0.0

    results, errors = {}, []

    def work(k):
        try:
            x_in = inp + k
            (out,) = model(x_in)
            out.sum().backward()
            results[k] = out.detach()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for k in range(4):
        (expected,) = model(inp + k)
        assert max_abs(results[k], expected.detach()) <= 1e-12


def test_dual_variables_match_cvxpy_and_finite_differences():
    """Duals as outputs: values as CVXPY reports them, gradients by central differences."""
    n = 5
    x, theta = cp.Variable(n), cp.Parameter(n)
    eq = cp.sum(x) == 1
    nonneg = x >= 0
    soc = cp.norm(x, 2) <= 0.9
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [eq, nonneg, soc])
    layer = dl.compile(prob, [theta], [x, eq.dual_variables[0], nonneg.dual_variables[0],
                                       soc.dual_variables[0]])
    th = np.array([1.5, 0.6, -0.2, 0.1, 0.4])
    theta.value = th
    prob.solve(solver=cp.CLARABEL)  # an independent interior-point solve (accurate to ~1e-6)
    outs = [o[0] for o in layer.forward([th]).outputs]
    xs, nu, lam, mu = outs
    for ours, theirs in zip(outs, [x.value, eq.dual_value, nonneg.dual_value, soc.dual_value],
                            strict=True):
        assert max_abs(ours, theirs) <= 1e-5
    # The KKT conditions hold to machine precision (CVXPY's sign conventions):
    # 2(x − θ) + ν·1 − λ + μ x/‖x‖ = 0,  λ ⊙ x = 0,  μ (‖x‖ − 0.9) = 0.
    stationarity = 2 * (xs - th) + nu - lam + mu * xs / np.linalg.norm(xs)
    assert np.abs(stationarity).max() <= 1e-9
    assert np.abs(lam * xs).max() <= 1e-9 and abs(mu * (np.linalg.norm(xs) - 0.9)) <= 1e-9
    assert mu > 0.1 and lam.max() > 0.1  # both constraints are active: non-trivial duals

    module = layer.torch()
    t = torch.tensor(th, requires_grad=True)
    _, nu, lam, _ = module(t)
    (nu * 1.3 + (lam * torch.arange(n)).sum()).backward()
    h, fd = 1e-6, np.zeros(n)
    for k in range(n):
        e = np.zeros(n)
        e[k] = h
        up, dn = layer.forward([th + e]).outputs, layer.forward([th - e]).outputs
        f = [1.3 * o[1][0] + (o[2][0] * np.arange(n)).sum() for o in (up, dn)]
        fd[k] = (f[0] - f[1]) / (2 * h)
    assert max_abs(t.grad, fd) <= 1e-6


@pytest.mark.parametrize("shape", [(2, 3), (3, 2)])
def test_matrix_parameter_and_matrix_variable(shape):
    """Column-major flattening of matrix parameters/variables: X* = P exactly."""
    X, P = cp.Variable(shape), cp.Parameter(shape)
    prob = cp.Problem(cp.Minimize(cp.sum_squares(X - P)), [X <= 0.5])
    module = dl.compile(prob, [P], [X]).torch()
    Pv = torch.tensor(np.arange(6.0).reshape(shape) / 5, requires_grad=True)  # no ties at 0.5
    (Xv,) = module(Pv)
    assert max_abs(Xv.detach(), np.minimum(Pv.detach().numpy(), 0.5)) <= 1e-8
    (Xv * torch.arange(6.0, dtype=torch.float64).reshape(shape)).sum().backward()
    expected = (Pv.detach().numpy() < 0.5) * np.arange(6.0).reshape(shape)
    assert max_abs(Pv.grad, expected) <= 1e-8


def test_symmetric_parameter_gradient_is_symmetric():
    """A symmetric=True parameter: its gradient is symmetric (so gradient steps keep it
    symmetric) and equals central differences along symmetric directions."""
    k = 3
    X, Y = cp.Variable((k, k), symmetric=True), cp.Parameter((k, k), symmetric=True)
    layer = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(X - Y)), [X >> 0]), [Y], [X])
    rng = np.random.default_rng(0)
    M = rng.standard_normal((k, k))
    Yv = M + M.T
    W = rng.standard_normal((k, k))
    Yt = torch.tensor(Yv, requires_grad=True)
    (Xt,) = layer.torch()(Yt)
    (Xt * torch.tensor(W)).sum().backward()
    g = Yt.grad.numpy()
    assert max_abs(g, g.T) <= 1e-12
    h = 1e-6
    for i in range(k):
        for j in range(i, k):
            E = np.zeros((k, k))
            E[i, j] = E[j, i] = h
            up, dn = (layer.forward([Yv + s * E]).outputs[0][0] for s in (1, -1))
            fd = ((up - dn) * W).sum() / (2 * h)
            assert abs(fd - (g * E / h).sum()) <= 1e-6


def test_torch_func_transforms_match_closed_form_and_loops(monkeypatch):
    """jacrev, jacfwd, vmap and their compositions with grad/jvp; vmap solves as one batch."""
    layer, _, sizes = zoo_layer("softmax")
    insts = [problems.instance("softmax", s, **sizes) for s in range(3)]
    module = layer.torch()
    th = torch.tensor(insts[0].params[0])
    J = insts[0].jacobian[0][0]
    f = lambda t: module(t)[0]  # noqa: E731
    assert max_abs(torch.func.jacrev(f)(th), J) <= 1e-8
    assert max_abs(torch.func.jacfwd(f)(th), J) <= 1e-8
    TB = torch.tensor(np.stack([i.params[0] for i in insts]))
    calls = []
    real_forward = dl.Layer.forward
    monkeypatch.setattr(dl.Layer, "forward",
                        lambda self, values, **kw: calls.append(np.shape(values[0]))
                        or real_forward(self, values, **kw))
    xv = torch.func.vmap(f)(TB)
    assert calls == [(3, th.shape[0])]  # one batched solve, not a loop
    for b, inst in enumerate(insts):
        assert max_abs(xv[b], inst.solution[0]) <= 1e-8
    w = torch.arange(th.shape[0], dtype=torch.float64)
    g = torch.func.vmap(torch.func.grad(lambda t: (f(t) * w).sum()))(TB)
    Jv = torch.func.vmap(torch.func.jacrev(f))(TB)
    Jf = torch.func.vmap(torch.func.jacfwd(f))(TB)
    for b, inst in enumerate(insts):
        assert max_abs(g[b], inst.jacobian[0][0].T @ w.numpy()) <= 1e-8
        assert max_abs(Jv[b], inst.jacobian[0][0]) <= 1e-8
        assert max_abs(Jf[b], inst.jacobian[0][0]) <= 1e-8


def test_vmap_per_example_gradient_of_a_shared_parameter():
    """vmap(grad) w.r.t. an unbatched parameter: per-example gradients, over batched calls."""
    layer, _, sizes = zoo_layer("polytope_projection")
    inst = problems.instance("polytope_projection", 0, **sizes)
    module = layer.torch()
    G, h, y = (torch.tensor(p) for p in inst.params)
    Y = torch.stack([y + 0.01 * k for k in range(4)]).reshape(2, 2, -1)  # 2 examples × batch 2
    loss = lambda GG, yy: module(GG, h, yy)[0].sum()  # noqa: E731
    per_example = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(G, Y)
    for e in range(2):
        G1 = G.clone().requires_grad_()
        loss(G1, Y[e]).backward()
        assert max_abs(per_example[e], G1.grad) <= 1e-10


@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_sparse_path_every_batch_size(batch, monkeypatch):
    """Regression: the sparse linear-algebra path at small batch sizes (a dense @ sparse
    product came back column-major for batch 2, which CSC construction rejects). The cost
    model picks dense LU for this size, so the sparse path is forced."""
    import declarative.derivative as derivative

    monkeypatch.setattr(derivative, "use_dense", lambda t: False)
    layer, _, sizes = zoo_layer("entropic_ot")
    inst = problems.instance("entropic_ot", 0, **sizes)
    fwd = layer.forward([np.stack([inst.params[0]] * batch)])
    g = fwd.vjp([np.ones_like(fwd.outputs[0])])[0]
    expected = np.tensordot(np.ones(inst.solution[0].shape), inst.jacobian[0][0], axes=2)
    for b in range(batch):
        assert max_abs(fwd.outputs[0][b], inst.solution[0]) <= 1e-8
        assert max_abs(g[b], expected) <= 1e-8


def test_second_derivatives_are_refused_never_silently_wrong():
    """The derivative is exact but not differentiable again w.r.t. the parameters: forward
    over reverse and reverse over reverse raise; differentiating the VJP w.r.t. the
    cotangent (the double-backward trick behind autograd.functional.jvp) stays exact."""
    layer, _, sizes = zoo_layer("softmax")
    inst = problems.instance("softmax", 0, **sizes)
    module = layer.torch()
    th = torch.tensor(inst.params[0])
    w = torch.arange(th.shape[0], dtype=torch.float64)
    loss = lambda t: (module(t)[0] * w).sum()  # noqa: E731
    with pytest.raises(NotImplementedError, match="second derivatives"):
        torch.func.hessian(loss)(th)
    with pytest.raises(NotImplementedError, match="second derivatives"):
        torch.autograd.functional.hessian(loss, th)
    v = torch.ones_like(th)
    _, jv = torch.autograd.functional.jvp(lambda t: module(t)[0], th, v)
    assert max_abs(jv, inst.jacobian[0][0] @ v.numpy()) <= 1e-8


def test_log_det_closed_form_and_gradcheck_with_a_psd_parameter():
    """maximize log det X − tr(S X) (exponential and PSD cones, a PSD variable): X* = S⁻¹,
    and ∂⟨W, X*⟩/∂S = −sym(X W X) through (S + Sᵀ)/2. gradcheck perturbs single entries of
    the PSD parameter, which must be accepted (the layer is defined on (S + Sᵀ)/2)."""
    k = 3
    X, S = cp.Variable((k, k), PSD=True), cp.Parameter((k, k), PSD=True)
    layer = dl.compile(cp.Problem(cp.Maximize(cp.log_det(X) - cp.trace(S @ X))), [S], [X])
    rng = np.random.default_rng(5)
    M = rng.standard_normal((k, k))
    Sv = M @ M.T + np.eye(k)
    W = rng.standard_normal((k, k))
    St = torch.tensor(Sv, requires_grad=True)
    (Xt,) = layer.torch()(St)
    Xinv = np.linalg.inv(Sv)
    assert max_abs(Xt.detach(), Xinv) <= 1e-8
    (Xt * torch.tensor(W)).sum().backward()
    G = Xinv @ W @ Xinv
    assert max_abs(St.grad, -(G + G.T) / 2) <= 1e-8
    assert torch.autograd.gradcheck(lambda s: layer.torch()(s)[0], (St,), eps=1e-6, atol=1e-5)


def test_a_compiled_model_around_the_layer_matches_eager():
    """torch.compile of a model with the layer inside (Dynamo, AOTAutograd): the solve is a
    graph break, the layers around it compiled; outputs and parameter gradients equal the
    eager model's. Dynamo traced into the layer's Python and failed before."""
    G, h, y, u = cp.Parameter((8, 4)), cp.Parameter(8), cp.Parameter(4), cp.Variable(4)
    layer = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(u - y)), [G @ u <= h]),
                       [G, h, y], [u]).torch()

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4, dtype=torch.float64)

        def forward(self, G, h, Y):
            return (layer(G, h, torch.tanh(self.lin(Y)) * 3)[0] ** 2).sum(-1)

    rng = np.random.default_rng(0)
    Gv = torch.tensor(rng.standard_normal((8, 4)))
    hv = torch.tensor(rng.uniform(0.5, 1.5, 8))
    Y = torch.tensor(rng.standard_normal((16, 4)))
    runs = []
    for compiled in (False, True):
        torch.manual_seed(0)
        model = Model()
        call = torch.compile(model, backend="aot_eager") if compiled else model
        out = call(Gv, hv, Y)
        out.sum().backward()
        runs.append((out.detach(), model.lin.weight.grad, model.lin.bias.grad))
    for eager, comp in zip(*runs, strict=True):
        assert max_abs(comp, eager) <= 1e-12
    assert max_abs(runs[0][1], torch.zeros(4, 4)) > 1e-3  # the gradient reaches the model
