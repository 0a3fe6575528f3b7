"""declarative.verify: any compiled layer against a user's closed form, finite differences
and diffcp; wrong references are caught; reports print and round-trip through JSON."""

from __future__ import annotations

import functools
import inspect
import json

import cvxpy as cp
import numpy as np
import pytest

import declarative as dl
from declarative import problems
from declarative.tools.zoo_runner import ZooResult, check_zoo
from declarative.verification import (
    CLOSED_FORM,
    DIFFCP,
    FINITE_DIFFERENCES,
    Report,
    jacobian_matrix,
    verify,
)
from tests.conftest import max_abs, zoo_layer

# -- a user problem, not from the zoo: projection of a matrix onto a box ------------------------
#   x = argmin ‖x − θ‖²  s.t.  x >= lo (elementwise), x <= hi (a scalar);   outputs x and the
#   dual λ of x <= hi.  KKT: 2(x − θ) + λ − μ = 0, so λ = 2 max(θ − hi, 0).

SHAPE = (2, 3)


@functools.cache
def box_layer():
    theta = cp.Parameter(SHAPE, name="theta")
    lo = cp.Parameter(SHAPE, name="lo")
    hi = cp.Parameter(name="hi")
    x = cp.Variable(SHAPE, name="x")
    upper = x <= hi
    prob = cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [x >= lo, upper])
    return dl.compile(prob, [theta, lo, hi], [x, upper.dual_variables[0]])


def box_values():
    theta = np.array([[0.3, -1.2, 2.0], [-0.4, 0.9, 1.7]])
    lo = np.array([[-0.5, -0.5, -1.0], [0.0, -2.0, -1.0]])
    return [theta, lo, np.array(1.0)]


def box_solution(theta, lo, hi):
    x = np.minimum(np.maximum(theta, lo), hi)
    return [x, 2.0 * np.maximum(theta - hi, 0.0)]


def box_jacobian(theta, lo, hi):
    eye = np.eye(theta.size).reshape(SHAPE + SHAPE)
    free = ((theta > lo) & (theta < hi)).astype(float)
    low = (theta <= lo).astype(float)
    up = (theta >= hi).astype(float)
    dx = [eye * free[..., None, None], eye * low[..., None, None], up]
    dlam = [2.0 * eye * up[..., None, None], np.zeros(SHAPE + SHAPE), -2.0 * up]
    return [dx, dlam]


def test_user_problem_against_its_closed_form():
    report = verify(box_layer(), box_values(), solution=box_solution, jacobian=box_jacobian)
    assert report.passed, str(report)
    assert report.status == "solved"
    # one solution check per output, one Jacobian check per (output, parameter), per reference
    assert len(report.select(CLOSED_FORM, "solution")) == 2
    assert len(report.select(CLOSED_FORM, "jacobian")) == 6
    assert len(report.select(FINITE_DIFFERENCES)) == 6
    assert len(report.select(DIFFCP)) == 2 + 6
    assert report.error(CLOSED_FORM, "solution") <= 1e-10
    assert report.error(CLOSED_FORM) <= 1e-10
    assert report.error(FINITE_DIFFERENCES) <= 1e-7
    assert report.error(DIFFCP) <= 1e-8
    shapes = {(c.output, c.parameter): c.shape for c in report.select(CLOSED_FORM, "jacobian")}
    assert shapes[("x", "theta")] == SHAPE + SHAPE
    assert shapes[("x", "hi")] == SHAPE
    # the references themselves agree with the closed form
    ref = box_jacobian(*box_values())
    for name in (FINITE_DIFFERENCES, DIFFCP):
        for row, row_ref in zip(report.jacobians[name], ref, strict=True):
            for a, b in zip(row, row_ref, strict=True):
                assert max_abs(a, b) <= 1e-7
    text = str(report)
    assert "PASSED" in text and "closed form" in text and "diffcp" in text


def test_arrays_accepted_as_reference_and_single_output_unwrapped():
    theta = cp.Parameter(4, name="theta")
    x = cp.Variable(4, name="x")
    layer = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - theta)), [x >= 0]),
                       [theta], [x])
    v = np.array([0.5, -1.0, 2.0, -0.2])
    J = np.diag((v > 0).astype(float))
    report = verify(layer, [v], solution=np.maximum(v, 0), jacobian=J, diffcp=False)
    assert report.passed, str(report)
    assert report.error(CLOSED_FORM) <= 1e-12


def test_wrong_reference_is_detected():
    values = box_values()

    def wrong_solution(theta, lo, hi):  # forgets the lower bound
        return [np.minimum(theta, hi), 2.0 * np.maximum(theta - hi, 0.0)]

    def wrong_jacobian(theta, lo, hi):  # forgets the factor 2 of the dual
        J = box_jacobian(theta, lo, hi)
        J[1] = [0.5 * b for b in J[1]]
        return J

    report = verify(box_layer(), values, solution=wrong_solution, jacobian=wrong_jacobian)
    assert not report.passed
    assert "FAILED" in str(report)
    dual = box_layer().outputs[1].name
    failed = {(c.reference, c.quantity, c.output, c.parameter) for c in report.failures}
    assert failed == {
        (CLOSED_FORM, "solution", "x", None),
        (CLOSED_FORM, "jacobian", dual, "theta"),
        (CLOSED_FORM, "jacobian", dual, "hi"),
    }
    assert report.error(CLOSED_FORM, "solution") >= 0.1
    assert report.error(CLOSED_FORM) >= 0.5
    # the independent references still agree with the layer
    assert all(c.passed for c in report.select(FINITE_DIFFERENCES) + report.select(DIFFCP))


def test_reference_of_wrong_shape_fails_without_crashing():
    values = box_values()

    def transposed(theta, lo, hi):
        x, lam = box_solution(theta, lo, hi)
        return [x.T, lam]

    report = verify(box_layer(), values, solution=transposed, finite_differences=False,
                    diffcp=False)
    assert not report.passed
    (bad,) = report.failures
    assert bad.shape == SHAPE and bad.reference_shape == SHAPE[::-1]
    assert bad.abs_error == np.inf
    assert "ref 3x2" in str(report)
    with pytest.raises(ValueError, match="2 output"):
        verify(box_layer(), values, solution=lambda *p: [p[0]], finite_differences=False,
               diffcp=False)


def test_batched_values_are_rejected():
    theta, lo, hi = box_values()
    with pytest.raises(dl.ParameterError, match="one instance"):
        verify(box_layer(), [np.stack([theta, theta]), lo, hi])


def test_unsolved_instance_is_reported_not_raised():
    theta, lo, _ = box_values()
    report = verify(box_layer(), [theta, lo, np.array(-5.0)], solution=box_solution)
    assert report.status == "infeasible"
    assert not report.passed
    assert any("did not solve" in n for n in report.notes)
    assert all(c.abs_error == np.inf for c in report.select(CLOSED_FORM))
    json.loads(report.to_json())  # strict JSON even with inf errors


# -- a user PSD problem: projection of a (non-symmetric) matrix onto the PSD cone ---------------
#   X = argmin ‖X − A‖_F²  s.t.  X ⪰ 0  =  Π(S),  S = (A + Aᵀ)/2,  Π(S) = U max(Λ, 0) Uᵀ;
#   dΠ[dS] = U (Γ ∘ (Uᵀ dS U)) Uᵀ,  Γ_ij = (max(λ_i,0) − max(λ_j,0)) / (λ_i − λ_j)
#   (Daleckii–Krein; 1 or 0 when λ_i, λ_j have the same sign).

K = 3


def psd_solution(A):
    lam, U = np.linalg.eigh((A + A.T) / 2)
    return [U @ np.diag(np.maximum(lam, 0)) @ U.T]


def psd_jacobian(A):
    lam, U = np.linalg.eigh((A + A.T) / 2)
    pos = np.maximum(lam, 0)
    diff = lam[:, None] - lam[None, :]
    same = np.abs(diff) < 1e-12
    gamma = np.where(same, (lam[:, None] > 0).astype(float),
                     (pos[:, None] - pos[None, :]) / np.where(same, 1.0, diff))
    J = np.zeros((K, K, K, K))
    for k in range(K):
        for m in range(K):
            E = np.zeros((K, K))
            E[k, m] = 1.0
            dS = (E + E.T) / 2
            J[:, :, k, m] = U @ (gamma * (U.T @ dS @ U)) @ U.T
    return [[J]]


def _psd_value():
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.standard_normal((K, K)))
    return Q @ np.diag([1.5, 0.7, -1.0]) @ Q.T


def test_user_psd_problem():
    A = cp.Parameter((K, K), name="A")
    X = cp.Variable((K, K), symmetric=True, name="X")
    layer = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(X - A)), [X >> 0]), [A], [X])
    assert "psd" in layer.template.dims.kinds()
    skew = np.random.default_rng(1).standard_normal((K, K))
    value = _psd_value() + (skew - skew.T) / 2
    report = verify(layer, [value], solution=psd_solution, jacobian=psd_jacobian)
    assert report.passed, str(report)
    assert report.error(CLOSED_FORM, "solution") <= 1e-10
    assert report.error(CLOSED_FORM) <= 1e-9
    for name in (FINITE_DIFFERENCES, DIFFCP):
        assert max_abs(report.jacobians[name][0][0], psd_jacobian(value)[0][0]) <= 1e-7


def test_symmetric_parameter_compared_on_symmetric_directions():
    """A declared symmetric parameter: the layer's Jacobian follows CVXPY's reduced
    representation (one triangle), the closed form spreads it over both; they agree on
    symmetric directions, which is what verify compares (and what FD perturbs along)."""
    A = cp.Parameter((K, K), symmetric=True, name="A")
    X = cp.Variable((K, K), symmetric=True, name="X")
    layer = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(X - A)), [X >> 0]), [A], [X])
    value = _psd_value()
    report = verify(layer, [value], solution=psd_solution, jacobian=psd_jacobian)
    assert report.passed, str(report)
    assert report.error(CLOSED_FORM) <= 1e-9
    assert report.error(FINITE_DIFFERENCES, measure="rel") <= 1e-7
    assert any("symmetric directions" in n for n in report.notes)


def test_sign_constrained_parameter_at_its_boundary():
    """x = argmin ‖x − θ‖² + r‖x‖² = θ / (1 + r), r >= 0, checked at r = 0 where central
    differences would leave the parameter's domain: one-sided there."""
    theta = cp.Parameter(3, name="theta")
    r = cp.Parameter(nonneg=True, name="r")
    x = cp.Variable(3, name="x")
    layer = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - theta)
                                              + r * cp.sum_squares(x))), [theta, r], [x])

    def solution(th, rv):
        return [th / (1 + rv)]

    def jacobian(th, rv):
        return [[np.eye(3) / (1 + rv), -th / (1 + rv) ** 2]]

    report = verify(layer, [np.array([0.5, -1.0, 2.0]), np.array(0.0)], solution=solution,
                    jacobian=jacobian)
    assert report.passed, str(report)
    assert report.error(FINITE_DIFFERENCES, measure="rel") <= 1e-7
    # the objective's quadratic part depends on r: diffcp sees it through a rewritten cone
    assert report.error(DIFFCP, measure="rel") <= 1e-8
    assert any("one-sided" in n for n in report.notes)


# -- the zoo -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["softmax", "sparsemax", "qp", "polytope_projection"])
def test_references_agree_with_closed_form_on_zoo(name):
    layer, _, sizes = zoo_layer(name)
    inst = problems.instance(name, 7, **sizes)
    report = verify(layer, inst.params, solution=inst.solution, jacobian=inst.jacobian)
    assert report.passed, str(report)
    assert report.error(CLOSED_FORM) <= 1e-8
    for ref in (FINITE_DIFFERENCES, DIFFCP):
        assert report.error(ref, measure="rel") <= 1e-6
        for row, row_ref in zip(report.jacobians[ref], inst.jacobian, strict=True):
            for a, b in zip(row, row_ref, strict=True):
                assert max_abs(a, b) <= 1e-6


def test_diffcp_at_its_own_solution():
    """diffcp end to end (its own SCS solve and derivative there): a fully independent
    pipeline, as accurate as SCS."""
    layer, _, sizes = zoo_layer("qp")
    inst = problems.instance("qp", 8, **sizes)
    report = verify(layer, inst.params, jacobian=inst.jacobian, finite_differences=False,
                    diffcp_at_ours=False)
    assert report.passed, str(report)
    assert report.settings["diffcp_derivative_at"] == "diffcp's solution"
    assert report.error(DIFFCP, measure="rel") <= 1e-6


def test_check_zoo_fields():
    r = check_zoo("sparsemax", seeds=range(2), finite_differences=True, diffcp=True)
    assert isinstance(r, ZooResult)
    assert r.passed and r.instances == 2 and r.statuses == ["solved", "solved"]
    assert r.solution_error <= 1e-8 and r.jacobian_error <= 1e-8
    assert r.fd_ok and r.diffcp_ok
    d = r.as_dict()
    assert d["passed"] is True and d["problem"] == "sparsemax" and d["cones"] == list(r.cones)
    json.dumps(d, allow_nan=False)
    # the references are off by default (what the tests of others call)
    plain = check_zoo("sparsemax", seeds=range(1))
    assert plain.fd_error is None and plain.diffcp_error is None and plain.passed


# -- serialization -----------------------------------------------------------------------------
def test_json_round_trip():
    report = verify(box_layer(), box_values(), solution=box_solution, jacobian=box_jacobian,
                    name="box")
    text = report.to_json()
    back = Report.from_json(text)
    assert back.as_dict() == report.as_dict()
    assert back.passed == report.passed and back.name == "box"
    assert back.checks == report.checks
    assert str(back) == str(report)
    assert json.loads(text)["checks"][0]["reference"] == CLOSED_FORM

    full = Report.from_json(report.to_json(arrays=True))
    for key in ("ours", CLOSED_FORM, FINITE_DIFFERENCES, DIFFCP):
        for row, row_back in zip(report.jacobians[key], full.jacobians[key], strict=True):
            for a, b in zip(row, row_back, strict=True):
                np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(full.solutions["ours"][1], report.solutions["ours"][1])

    # a failed report with infinite errors stays strict JSON and comes back as inf
    bad = verify(box_layer(), box_values(), solution=lambda *p: [p[0].T, p[0]],
                 finite_differences=False, diffcp=False)
    back = Report.from_json(bad.to_json())
    assert back.checks[0].abs_error == np.inf and not back.passed


def test_jacobian_matrix_layout():
    J = box_jacobian(*box_values())
    M = jacobian_matrix(J, [SHAPE, SHAPE])
    assert M.shape == (12, 6 + 6 + 1)
    np.testing.assert_array_equal(M[:6, :6], J[0][0].reshape(6, 6))
    np.testing.assert_array_equal(M[6:, 12], J[1][2].reshape(6))


@pytest.mark.parametrize("name", list(problems.ZOO))
def test_every_zoo_problem_passes_verify(name):
    """The whole zoo through verify: closed form (1e-8), finite differences and diffcp
    (which has no power cones: skipped there)."""
    r = check_zoo(name, seeds=range(2), finite_differences=True, diffcp=True)
    assert r.passed, (r.solution_error, r.jacobian_error)
    assert r.fd_ok, r.fd_error
    if "power" in problems.get(name).CONES:
        assert r.diffcp_ok is None
    else:
        assert r.diffcp_ok, r.diffcp_error


def test_declarative_verify_is_the_verification_function():
    """`dl.verify` is `declarative.verification.verify`, an ordinary function, whichever of
    the two is imported first."""
    import cvxpy as cp

    import declarative as dl

    x, th = cp.Variable(3), cp.Parameter(3)
    layer = dl.compile(cp.Problem(cp.Minimize(cp.sum_squares(x - th)), [x <= 0.5]), [th], [x])
    v = np.array([0.1, 0.7, -0.2])
    ref = {"solution": lambda t: [np.minimum(t, 0.5)],
           "jacobian": lambda t: [[np.diag((t < 0.5).astype(float))]]}
    assert dl.verify(layer, [v], **ref).passed
    assert dl.verify is verify and inspect.isfunction(dl.verify)
    wrong = {"jacobian": lambda t: [[np.eye(3)]]}  # ignores the active bound: must fail
    assert not dl.verify(layer, [v], **wrong).passed
