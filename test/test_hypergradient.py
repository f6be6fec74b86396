"""The first-order hypergradient on toy bilevel problems whose exact hypergradient is known.

Synthetic problems only (random matrices). The exact hypergradient at the current (theta, w) is
the implicit-function formula ``grad_theta F - H_thetaw H_ww^-1 grad_w F`` with Hessians from
autograd; ``w`` comes from a few lower-level gradient steps, as in training.

Findings (printed with ``pytest -s``; 50 random problems each, numbers from one run):
* scalar lower level, f = 1/2 (w - a.theta - c)^2 (Gauss-Newton exact): ours cosine 1.000,
  norm ratio 1.000; the authors' sign (+) cosine ~0.1.
* zero-residual least squares, f = 1/2 |P (w - A theta - c)|^2, w in R^4: ours cosine ~0.75,
  (+) ~0.1, plain grad_theta F ~0.55.
* general least squares f = 1/2 |P w - Q theta - c|^2: ours ~0.6, (+) ~0.15.
* general quadratic f = 1/2 w'Hw - w'B theta (not a least-squares form; grad_theta f does not
  vanish with the lower-level residual): the rank-one Gauss-Newton term is poor with either
  sign (ours 0.357, (+) 0.430, plain 0.527, asserted to +-0.02). The exact hypergradient is
  known in closed form there (grad_theta F + B' H^-1 grad_w F at w*); the tests check the
  reference against it and against finite differences.
* least squares with w in R^4: the first-order error is exactly the part of grad_w F the
  rank-one term drops, -A' (I - r r'/|r|^2) grad_w F (closed form, asserted to 1e-10).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from functools import partial

import pytest
import torch

from training.bilevel import (
    DynamicAggregator,
    aggregate,
    first_order_hypergradient,
    grad_norm,
)

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(a @ b / (a.norm() * b.norm()))


def _toy_problem(
    kind: str, seed: int, n: int = 6, m: int = 4
) -> tuple[Loss, Loss, torch.Tensor, int]:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    theta = rand(n)
    theta0 = rand(n)
    if kind == "scalar":
        m = 1
        a, c = rand(1, n), rand(1)

        def f(th: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return 0.5 * ((w - a @ th - c) ** 2).sum()
    elif kind == "zero_residual_lsq":
        p, a, c = rand(m + 2, m), rand(m, n), rand(m)

        def f(th: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return 0.5 * ((p @ (w - a @ th - c)) ** 2).sum()
    elif kind == "lsq":
        p, q, c = rand(m + 2, m), rand(m + 2, n), rand(m + 2)

        def f(th: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return 0.5 * ((p @ w - q @ th - c) ** 2).sum()
    elif kind == "quadratic":
        mm = rand(m, m)
        h = mm @ mm.T + 0.5 * torch.eye(m, dtype=torch.float64)
        b_mat = rand(m, n)

        def f(th: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
            return 0.5 * w @ h @ w - w @ b_mat @ th
    else:
        raise ValueError(kind)
    b, d = rand(m), rand(n)

    def upper(th: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        # Couples theta and w in F too, so grad_theta F depends on w.
        return 0.5 * ((th - theta0) ** 2).sum() + 0.5 * ((w - b) ** 2).sum() + w.sum() * (d @ th)

    w = rand(m)
    for _ in range(5):  # a few lower-level steps, as in training: w is near, not at, w*
        w = w.detach().requires_grad_(True)
        (gw,) = torch.autograd.grad(f(theta, w), w)
        w = w - 0.05 * gw
    return f, upper, torch.cat([theta, w.detach()]), n


def _compare(kind: str, seed: int) -> dict[str, tuple[float, float]]:
    f, upper, z, n = _toy_problem(kind, seed)
    theta = z[:n].clone().requires_grad_(True)
    w = z[n:].clone().requires_grad_(True)
    g_theta_upper, g_w_upper = torch.autograd.grad(upper(theta, w), (theta, w))
    g_theta_lower, g_w_lower = torch.autograd.grad(f(theta, w), (theta, w))
    ours = first_order_hypergradient([g_theta_upper], [g_w_upper], [g_theta_lower], [g_w_lower])[0]
    # The released code's sign (its step-size factor only shrinks the term towards plain).
    opposite = g_theta_upper + (g_w_lower @ g_w_upper) / (g_w_lower @ g_w_lower) * g_theta_lower
    hess = torch.autograd.functional.hessian(lambda zz: f(zz[:n], zz[n:]), z)
    exact = g_theta_upper - hess[:n, n:] @ torch.linalg.solve(hess[n:, n:], g_w_upper)
    return {
        name: (_cos(v, exact), float(v.norm() / exact.norm()))
        for name, v in (("ours", ours), ("opposite", opposite), ("plain", g_theta_upper))
    }


def _summary(kind: str, seeds: int = 50) -> dict[str, dict[str, float]]:
    rows = [_compare(kind, s) for s in range(seeds)]
    out = {
        name: {
            "cos": statistics.mean(r[name][0] for r in rows),
            "norm_ratio_median": statistics.median(r[name][1] for r in rows),
        }
        for name in rows[0]
    }
    out["ours"]["wins_vs_opposite"] = sum(r["ours"][0] > r["opposite"][0] for r in rows)
    print(f"\n{kind}: {out}")
    return out


def test_scalar_lower_level_gauss_newton_is_exact() -> None:
    s = _summary("scalar")
    assert s["ours"]["cos"] > 0.9999
    assert s["ours"]["norm_ratio_median"] == pytest.approx(1.0, abs=1e-6)
    assert s["opposite"]["cos"] < 0.5
    assert s["ours"]["wins_vs_opposite"] == 50


def test_least_squares_lower_level_our_sign_is_closer() -> None:
    for kind in ("zero_residual_lsq", "lsq"):
        s = _summary(kind)
        assert s["ours"]["cos"] > s["opposite"]["cos"] + 0.3, kind
        assert s["ours"]["wins_vs_opposite"] >= 35, kind
    zr = _summary("zero_residual_lsq")
    assert zr["ours"]["cos"] > zr["plain"]["cos"]


def _quadratic_closed_form(seed: int, n: int = 6, m: int = 4) -> dict[str, torch.Tensor]:
    """f = 1/2 w'Hw - w'B theta (H SPD), F as in :func:`_toy_problem`: w*(theta) = H^-1 B theta,
    dw*/dtheta = H^-1 B, so the exact hypergradient of Phi(theta) = F(theta, w*(theta)) is
    grad_theta F + B' H^-1 grad_w F at w = w*."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    mm = rand(m, m)
    h = mm @ mm.T + 0.5 * torch.eye(m, dtype=torch.float64)
    b_mat, theta, theta0, b, d = rand(m, n), rand(n), rand(n), rand(m), rand(n)

    def grads_upper(th: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # F = 1/2|th - th0|^2 + 1/2|w - b|^2 + sum(w) d.th, differentiated by hand
        return (th - theta0) + w.sum() * d, (w - b) + (d @ th)

    w_star = torch.linalg.solve(h, b_mat @ theta)
    g_theta_upper, g_w_upper = grads_upper(theta, w_star)
    exact = g_theta_upper + b_mat.T @ torch.linalg.solve(h, g_w_upper)
    return {
        "theta": theta, "theta0": theta0, "b": b, "d": d, "h": h, "b_mat": b_mat,
        "w_star": w_star, "exact": exact,
    }


def _quadratic_lower(h: torch.Tensor, b_mat: torch.Tensor, n: int, z: torch.Tensor) -> torch.Tensor:
    """f(theta, w) = 1/2 w'Hw - w'B theta with z = [theta, w]."""
    return 0.5 * z[n:] @ h @ z[n:] - z[n:] @ b_mat @ z[:n]


def _phi(q: dict[str, torch.Tensor], th: torch.Tensor) -> torch.Tensor:
    """Phi(theta) = F(theta, w*(theta)) of a :func:`_quadratic_closed_form` problem."""
    w = torch.linalg.solve(q["h"], q["b_mat"] @ th)
    return (
        0.5 * ((th - q["theta0"]) ** 2).sum() + 0.5 * ((w - q["b"]) ** 2).sum()
        + w.sum() * (q["d"] @ th)
    )


def test_exact_hypergradient_of_a_quadratic_lower_level_in_closed_form() -> None:
    """The reference the other tests compare with (implicit formula, Hessians by autograd) is
    the closed-form hypergradient, and that is the derivative of Phi (finite differences)."""
    for seed in range(5):
        q = _quadratic_closed_form(seed)
        theta, h, b_mat, exact = q["theta"], q["h"], q["b_mat"], q["exact"]
        n = theta.numel()
        step = 1e-6
        numeric = torch.stack([
            (_phi(q, theta + step * e) - _phi(q, theta - step * e)) / (2 * step)
            for e in torch.eye(n, dtype=torch.float64)
        ])
        torch.testing.assert_close(numeric, exact, atol=1e-6, rtol=1e-6)
        # the autograd-Hessian reference of _compare, at w*, equals the closed form
        th = theta.clone().requires_grad_(True)
        w = q["w_star"].clone().requires_grad_(True)
        upper = (
            0.5 * ((th - q["theta0"]) ** 2).sum() + 0.5 * ((w - q["b"]) ** 2).sum()
            + w.sum() * (q["d"] @ th)
        )
        g_theta_upper, g_w_upper = torch.autograd.grad(upper, (th, w))
        z = torch.cat([theta, q["w_star"]])

        hess = torch.autograd.functional.hessian(partial(_quadratic_lower, h, b_mat, n), z)
        reference = g_theta_upper - hess[:n, n:] @ torch.linalg.solve(hess[n:, n:], g_w_upper)
        torch.testing.assert_close(reference, exact, atol=1e-10, rtol=1e-10)


def test_general_quadratic_cosines_against_the_exact_hypergradient() -> None:
    """Gauss-Newton's rank-one picture does not hold for a general quadratic lower level, so
    the first-order hypergradient is only loosely aligned with the exact one (whose reference is
    checked against the closed form above). The cosines are measured on the 50 seeded problems
    of ``_summary`` and pinned to +-0.02, so a change of sign, coefficient or reference fails."""
    s = _summary("quadratic")
    assert s["ours"]["cos"] == pytest.approx(0.357, abs=0.02)
    assert s["opposite"]["cos"] == pytest.approx(0.430, abs=0.02)
    assert s["plain"]["cos"] == pytest.approx(0.527, abs=0.02)
    assert s["ours"]["norm_ratio_median"] == pytest.approx(0.608, abs=0.02)


def test_least_squares_first_order_error_is_exactly_the_dropped_projection() -> None:
    """f = 1/2 |w - A theta - c|^2 with w in R^4: H_ww = I and H_theta,w = -A', so the exact
    hypergradient at w is grad_theta F + A' grad_w F. With r = w - A theta - c the first-order
    one is grad_theta F + A' r r' grad_w F / |r|^2: the error is -A' (I - r r'/|r|^2) grad_w F,
    in closed form, bounded by |A|_2 |(I - r r'/|r|^2) grad_w F| (tolerance 1e-10)."""
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        a_mat = torch.randn(4, 6, generator=g, dtype=torch.float64)
        c, theta, w = (torch.randn(k, generator=g, dtype=torch.float64) for k in (4, 6, 4))
        g_theta_upper, g_w_upper = torch.randn(6, generator=g, dtype=torch.float64), torch.randn(
            4, generator=g, dtype=torch.float64
        )
        r = w - a_mat @ theta - c
        approx = first_order_hypergradient(
            [g_theta_upper], [g_w_upper], [-a_mat.T @ r], [r]
        )[0]
        exact = g_theta_upper + a_mat.T @ g_w_upper
        projector = torch.eye(4, dtype=torch.float64) - torch.outer(r, r) / (r @ r)
        torch.testing.assert_close(
            approx - exact, -a_mat.T @ projector @ g_w_upper, atol=1e-10, rtol=1e-10
        )
        bound = torch.linalg.matrix_norm(a_mat, ord=2) * (projector @ g_w_upper).norm()
        assert (approx - exact).norm() <= bound + 1e-10
        # a scalar lower level (rank one is all there is): exact, whatever the residual
        approx_1 = first_order_hypergradient(
            [g_theta_upper], [g_w_upper[:1]], [-a_mat[:1].T @ r[:1]], [r[:1]]
        )[0]
        torch.testing.assert_close(
            approx_1, g_theta_upper + a_mat[:1].T @ g_w_upper[:1], atol=1e-10, rtol=1e-10
        )


def test_hypergradient_handles_stationary_lower_level_and_none() -> None:
    g_theta_upper = [torch.ones(3), torch.ones(2)]
    out = first_order_hypergradient(
        g_theta_upper, [torch.ones(4)], [torch.ones(3), None], [torch.zeros(4)]
    )
    assert torch.equal(out[0], torch.ones(3)) and torch.equal(out[1], torch.ones(2))
    out = first_order_hypergradient(
        [None, torch.ones(2)], [torch.ones(1)], [torch.ones(3), None], [torch.full((1,), 2.0)]
    )
    # coefficient <g_w f, g_w F> / |g_w f|^2 = 2 / 4
    assert torch.allclose(out[0], torch.full((3,), -0.5))
    with pytest.raises(ValueError):
        first_order_hypergradient([None], [torch.ones(1)], [None], [torch.ones(1)])


def test_aggregate_weights_sum() -> None:
    grads = {"a": [torch.ones(2)], "b": [torch.full((2,), 3.0)]}
    out = aggregate(grads, {"a": 0.25, "b": 0.75})
    assert torch.allclose(out[0], torch.full((2,), 2.5))
    assert grad_norm(out) == pytest.approx(2.5 * 2**0.5)
    with pytest.raises(KeyError):
        aggregate(grads, {"a": 1.0})


def test_loss_rate_weights_favour_the_task_that_stalls() -> None:
    agg = DynamicAggregator(kind="loss_rate", temperature=0.1, ema=0.0)
    first = agg.weights({"det": 1.0, "seg": 1.0})
    assert first == pytest.approx({"det": 0.5, "seg": 0.5})
    agg.weights({"det": 0.5, "seg": 1.0})  # det falls fast, seg stalls
    w = agg.weights({"det": 0.25, "seg": 1.0})
    assert w["seg"] > w["det"] and sum(w.values()) == pytest.approx(1.0)


def test_grad_norm_and_fixed_weights() -> None:
    agg = DynamicAggregator(kind="grad_norm", ema=0.0)
    w = agg.weights({"a": 1.0, "b": 3.0})
    assert w == pytest.approx({"a": 0.75, "b": 0.25})
    fixed = DynamicAggregator(kind="fixed", fixed_weights={"a": 1.0, "b": 3.0})
    assert fixed.weights({"a": 9.0, "b": 0.1}) == pytest.approx({"a": 0.25, "b": 0.75})
    with pytest.raises(ValueError):
        DynamicAggregator(kind="random")
    with pytest.raises(ValueError):
        agg.weights({"a": float("nan")})


def test_aggregator_state_round_trip_gives_identical_weights() -> None:
    signals = [{"d": 1.0, "s": 2.0}, {"d": 0.9, "s": 1.9}, {"d": 0.7, "s": 1.95}]
    a = DynamicAggregator(kind="loss_rate", temperature=0.5, ema=0.5)
    for s in signals:
        a.weights(s)
    b = DynamicAggregator(kind="loss_rate")
    b.load_state_dict(a.state_dict())
    nxt = {"d": 0.6, "s": 1.97}
    assert a.weights(nxt) == b.weights(nxt)


def test_correction_cap_bounds_the_implicit_term() -> None:
    g_theta_upper = [torch.tensor([1.0, 0.0])]
    g_theta_lower = [torch.tensor([0.0, 1.0])]
    # tiny lower-level gradient: coefficient <g_w f, g_w F> / |g_w f|^2 = 1e-3 / 1e-6 = 1000
    g_w_upper, g_w_lower = [torch.tensor([1.0])], [torch.tensor([1e-3])]
    free = first_order_hypergradient(g_theta_upper, g_w_upper, g_theta_lower, g_w_lower)[0]
    assert free[1] == pytest.approx(-1000.0, rel=1e-5)
    capped = first_order_hypergradient(
        g_theta_upper, g_w_upper, g_theta_lower, g_w_lower, max_correction_ratio=0.5
    )[0]
    assert capped[0] == pytest.approx(1.0) and capped[1] == pytest.approx(-0.5)
    # below the cap nothing changes
    small = first_order_hypergradient(
        g_theta_upper, [torch.tensor([1e-4])], g_theta_lower, [torch.tensor([1.0])],
        max_correction_ratio=0.5,
    )[0]
    assert small[1] == pytest.approx(-1e-4)
