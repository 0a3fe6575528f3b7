"""CUDA tensors and arrays: the torch layer with CUDA inputs (float32 and float64) under
autograd, torch.func and torch.compile, and the JAX layer with a GPU as its default device
under jit, vmap, grad and jacrev, each against the same call on the CPU (which the rest of the
suite checks against closed forms). Skipped where there is no GPU: run on a machine with one."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import declarative as dl

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device")


def _layers():
    n = 20
    z, x = cp.Parameter(n), cp.Variable(n)
    sparsemax = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - z)),
                                      [cp.sum(x) == 1, x >= 0]), [z], [x])
    G, h, y, u = cp.Parameter((8, 4)), cp.Parameter(8), cp.Parameter(4), cp.Variable(4)
    poly = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(u - y)), [G @ u <= h]),
                      [G, h, y], [u])
    rng = np.random.default_rng(0)
    data = {"Z": rng.standard_normal((16, n)), "W": rng.standard_normal((16, n)),
            "G": rng.standard_normal((8, 4)), "h": rng.uniform(0.5, 1.5, 8),
            "Y": 3 * rng.standard_normal((16, 4))}
    return sparsemax, poly, data


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_tensors_in_cuda_tensors_out(dtype):
    sparsemax, _, d = _layers()
    layer = sparsemax.torch()
    res = {}
    for dev in ("cpu", "cuda"):
        z = torch.tensor(d["Z"], dtype=dtype, device=dev, requires_grad=True)
        (x,) = layer(z)
        (x * torch.tensor(d["W"], dtype=dtype, device=dev)).sum().backward()
        res[dev] = (x.detach(), z.grad)
    for got, cpu in zip(res["cuda"], res["cpu"], strict=True):
        assert got.device.type == "cuda" and got.dtype == dtype
        assert float((got.cpu() - cpu).abs().max()) == 0.0


@needs_cuda
def test_torch_func_transforms_on_cuda():
    _, poly, d = _layers()
    layer = poly.torch()
    res = {}
    for dev in ("cpu", "cuda"):
        G, h = torch.tensor(d["G"], device=dev), torch.tensor(d["h"], device=dev)
        Y = torch.tensor(d["Y"], device=dev)

        def f(y, G=G, h=h):
            return layer(G, h, y)[0]

        res[dev] = (torch.func.vmap(f)(Y),
                    torch.func.vmap(torch.func.grad(lambda t, f=f: (f(t) ** 2).sum()))(Y),
                    torch.func.vmap(torch.func.jacrev(f))(Y),
                    torch.func.vmap(torch.func.jacfwd(f))(Y))
    for got, cpu in zip(res["cuda"], res["cpu"], strict=True):
        assert got.device.type == "cuda"
        assert float((got.cpu() - cpu).abs().max()) <= 1e-12


@needs_cuda
def test_a_compiled_cuda_model_around_the_layer():
    _, poly, d = _layers()
    layer = poly.torch()

    class Model(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(4, 4, dtype=torch.float64)

        def forward(self, G, h, Y):
            return layer(G, h, self.lin(Y))[0].sum(-1)

    res = {}
    for dev in ("cpu", "cuda"):
        torch.manual_seed(0)
        model = Model().to(dev)
        out = torch.compile(model)(torch.tensor(d["G"], device=dev),
                                   torch.tensor(d["h"], device=dev),
                                   torch.tensor(d["Y"], device=dev))
        out.sum().backward()
        res[dev] = (out.detach(), model.lin.weight.grad)
    for got, cpu in zip(res["cuda"], res["cpu"], strict=True):
        assert got.device.type == "cuda"
        assert float((got.cpu() - cpu).abs().max()) <= 1e-12


def test_jax_with_a_gpu_as_default_device():
    jax = pytest.importorskip("jax")
    if not any(dev.platform == "gpu" for dev in jax.devices()):
        pytest.skip("no GPU for JAX")
    import jax.numpy as jnp

    _, poly, d = _layers()
    f = poly.jax()
    res = {}
    with jax.enable_x64(True):
        for platform in ("cpu", "gpu"):
            with jax.default_device(jax.devices(platform)[0]):
                G, h, Y = jnp.asarray(d["G"]), jnp.asarray(d["h"]), jnp.asarray(d["Y"])
                grads = jax.jit(jax.grad(lambda G, h, y: jnp.sum(f(G, h, y)[0] ** 2),
                                         argnums=(0, 1, 2)))(G, h, Y)
                res[platform] = [jax.jit(f)(G, h, Y)[0],
                                 jax.vmap(f, in_axes=(None, None, 0))(G, h, Y)[0], *grads,
                                 jax.jacrev(lambda y, G=G, h=h: f(G, h, y)[0])(Y[0])]
    for got, cpu in zip(res["gpu"], res["cpu"], strict=True):
        assert next(iter(got.devices())).platform == "gpu"
        assert float(np.abs(np.asarray(got) - np.asarray(cpu)).max()) <= 1e-12
