"""Bi-level dynamic learning: the first-order hypergradient and dynamic weighted aggregation.

Pure functions on tensors and lists of gradient tensors; no models, no data, no ROS.

Problem (DESIGN.md, "Bi-level dynamic learning"). Fusion parameters ``theta`` (upper level),
one lower-level module ``k`` (discriminator, detector, segmenter) with parameters ``w``::

    min_theta  F(theta, w*(theta))      s.t.  w*(theta) = argmin_w f(theta, w)

Derivation of the hypergradient (implicit function theorem). At the lower-level optimum
``grad_w f(theta, w*(theta)) = 0`` for every theta; differentiating in theta gives
``H_wtheta + H_ww dw*/dtheta = 0`` so ``dw*/dtheta = -H_ww^-1 H_wtheta``, and the chain rule::

    dF/dtheta = grad_theta F + (dw*/dtheta)^T grad_w F
              = grad_theta F - H_thetaw H_ww^-1 grad_w F                    (exact, implicit)

with ``H_ww = d2f/dw2`` and ``H_thetaw = d2f/(dtheta dw)``. The Gauss-Newton (outer product)
approximation uses only first derivatives of f: ``H_ww ~ g_w g_w^T`` and
``H_thetaw ~ g_theta g_w^T`` with ``g_w = grad_w f``, ``g_theta = grad_theta f``. The rank-one
``H_ww`` is inverted on its range (Moore-Penrose: ``(g_w g_w^T)^+ = g_w g_w^T / |g_w|^4``), so::

    H_thetaw H_ww^-1 grad_w F ~ g_theta g_w^T g_w g_w^T grad_w F / |g_w|^4
                              = (<g_w, grad_w F> / |g_w|^2) g_theta

and therefore::

    g = grad_theta F - (<grad_w f, grad_w F> / |grad_w f|^2) grad_theta f          (MINUS)

The authors' released code adds the term (``+``) and scales it by the lower-level step size.
Both contradict the derivation above: the implicit term enters with a minus sign, and no step
size appears in it (the step size only sets how close ``w`` is to ``w*``).
test/test_hypergradient.py checks this on toy bilevel problems (exact hypergradient from the
implicit formula with autograd Hessians, w after a few lower-level steps):
* scalar lower level with least-squares f (Gauss-Newton exact): ours has cosine 1.000 and norm
  ratio 1.000 to the exact hypergradient; the ``+`` sign has mean cosine about -0.2.
* least-squares f with a vector w (the form Gauss-Newton assumes; task losses are of this
  kind): ours mean cosine 0.67-0.79, the ``+`` sign 0.01-0.17.
* general quadratic f = 1/2 w'Hw - w'B theta (not least-squares: grad_theta f stays large at
  the lower optimum): the rank-one approximation is poor with either sign (ours 0.36, ``+``
  0.43, plain grad_theta F 0.53). Gauss-Newton is an approximation; it is not always better.

Dynamic weighted aggregation: theta's update direction is ``sum_k a_k g_k`` with weights
computed every step from measured training signals (:class:`DynamicAggregator`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

Grads = list[torch.Tensor]


def _flat_dot(a: Sequence[torch.Tensor | None], b: Sequence[torch.Tensor | None]) -> torch.Tensor:
    # Summed in order, as before the device option (same float64 bits on the CPU), on the
    # gradients' own device; 0 when nothing pairs up.
    total: torch.Tensor | None = None
    for x, y in zip(a, b, strict=True):
        if x is None or y is None:
            continue
        term = (x.detach().double() * y.detach().double()).sum()
        total = term if total is None else total + term
    return total if total is not None else torch.zeros((), dtype=torch.float64)


def grad_norm(grads: Sequence[torch.Tensor | None]) -> float:
    """Euclidean norm of a list of gradient tensors (None entries count as zero)."""
    return float(torch.sqrt(_flat_dot(grads, grads)))


def first_order_hypergradient(
    grad_theta_F: Sequence[torch.Tensor | None],  # noqa: N803 (names follow the maths)
    grad_w_F: Sequence[torch.Tensor | None],  # noqa: N803
    grad_theta_f: Sequence[torch.Tensor | None],
    grad_w_f: Sequence[torch.Tensor | None],
    eps: float = 1e-12,
    max_correction_ratio: float | None = None,
) -> Grads:
    """``g = grad_theta F - (<grad_w f, grad_w F> / |grad_w f|^2) grad_theta f``.

    Gauss-Newton approximation of the implicit hypergradient (see the module docstring for the
    derivation and the sign). Lists are per parameter tensor; ``None`` (a parameter the loss does
    not reach) counts as zero. ``eps`` guards the division when the lower level is at a
    stationary point (``grad_w f = 0``): the implicit term then vanishes, which is the limit of
    the rank-one inverse as its range shrinks.

    ``max_correction_ratio`` (trust region): near lower-level stationarity |grad_w f| is small
    while grad_theta f is not, and the coefficient <grad_w f, grad_w F> / |grad_w f|^2 grows
    without bound (measured in training: implicit terms 100-1000x |grad_theta F| for the WGAN
    critic, which drove the fusion net to collapse). If given, the implicit term is scaled down
    so that its norm is at most ``max_correction_ratio * |grad_theta F|``.
    """
    inner = _flat_dot(grad_w_f, grad_w_F)
    denom = _flat_dot(grad_w_f, grad_w_f)
    coeff = float(inner / (denom + eps)) if float(denom) > 0.0 else 0.0
    if not math.isfinite(coeff):
        coeff = 0.0
    if max_correction_ratio is not None and coeff != 0.0:
        correction_norm = abs(coeff) * grad_norm(grad_theta_f)
        limit = max_correction_ratio * grad_norm(grad_theta_F)
        if correction_norm > limit:
            coeff *= limit / correction_norm
    out: Grads = []
    for upper_grad, lower_grad in zip(grad_theta_F, grad_theta_f, strict=True):
        if upper_grad is None and lower_grad is None:
            raise ValueError("a theta parameter has no gradient from either F or f")
        ref = upper_grad if upper_grad is not None else lower_grad
        value = torch.zeros_like(ref) if upper_grad is None else upper_grad.detach().clone()
        if lower_grad is not None and coeff != 0.0:
            value = value - coeff * lower_grad.detach()
        out.append(value)
    return out


def aggregate(
    hypergrads: Mapping[str, Sequence[torch.Tensor]], weights: Mapping[str, float]
) -> Grads:
    """``sum_k a_k g_k`` parameter by parameter."""
    if not hypergrads:
        raise ValueError("no hypergradients to aggregate")
    missing = set(hypergrads) - set(weights)
    if missing:
        raise KeyError(f"no weight for {sorted(missing)}")
    keys = list(hypergrads)
    length = len(hypergrads[keys[0]])
    if any(len(hypergrads[k]) != length for k in keys):
        raise ValueError("hypergradients differ in parameter count")
    out: Grads = []
    for i in range(length):
        acc = torch.zeros_like(hypergrads[keys[0]][i])
        for k in keys:
            acc = acc + float(weights[k]) * hypergrads[k][i]
        out.append(acc)
    return out


AGGREGATION_KINDS = ("loss_rate", "grad_norm", "fixed")


def _descent_rate(current: float, previous: float) -> float:
    """L(t-1) / L(t-2); a ratio of losses that are not both positive (a WGAN term can be
    negative) says nothing about descent, so it counts as 1 (no change)."""
    if current <= 0.0 or previous <= 0.0:
        return 1.0
    return current / previous


@dataclass
class DynamicAggregator:
    """Weights ``a_k`` (summing to 1) for the per-module hypergradients, from measured signals.

    * ``loss_rate`` (DWA, Liu et al. 2019): the signal is each module's upper-level objective
      F_k (positive; a ratio of non-positive values counts as rate 1).
      Losses are smoothed by an EMA (batches differ step to step); the descent rate
      ``r_k = L_k(t-1) / L_k(t-2)`` of the smoothed loss goes through ``softmax(r_k / T)``:
      a task whose loss has stopped falling (r near 1 or above) gets more weight. Equal weights
      until two smoothed values exist.
    * ``grad_norm``: the signal is ``|g_k|``; weights proportional to ``1 / EMA(|g_k|)`` so that
      no module's hypergradient dominates by scale alone.
    * ``fixed``: ``fixed_weights`` normalised (equal if not given); signals are ignored.

    Weights sum to 1: every g_k carries the full fusion-loss gradient, so the fusion term keeps
    the scale it has in fusion-only training.
    """

    kind: str = "loss_rate"
    temperature: float = 2.0
    ema: float = 0.9
    fixed_weights: dict[str, float] | None = None
    # State (restored exactly on resume).
    smoothed: dict[str, float] = field(default_factory=dict)
    previous: dict[str, float] = field(default_factory=dict)
    last_weights: dict[str, float] = field(default_factory=dict)
    updates: int = 0

    def __post_init__(self) -> None:
        if self.kind not in AGGREGATION_KINDS:
            raise ValueError(f"aggregation kind {self.kind!r} not in {AGGREGATION_KINDS}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if not 0.0 <= self.ema < 1.0:
            raise ValueError("ema must be in [0, 1)")

    def weights(self, signals: Mapping[str, float]) -> dict[str, float]:
        """Weights for this step from this step's signals (losses or gradient norms by kind)."""
        keys = sorted(signals)
        if not keys:
            raise ValueError("no signals")
        for k in keys:
            if not math.isfinite(float(signals[k])):
                raise ValueError(f"signal for {k!r} is not finite: {signals[k]}")
        if self.kind == "fixed":
            raw = {k: float((self.fixed_weights or {}).get(k, 1.0)) for k in keys}
        else:
            new_smoothed = {}
            for k in keys:
                value = float(signals[k])
                old = self.smoothed.get(k)
                new_smoothed[k] = value if old is None else self.ema * old + (1 - self.ema) * value
            if self.kind == "loss_rate":
                if all(k in self.previous and k in self.smoothed for k in keys):
                    rates = {k: _descent_rate(self.smoothed[k], self.previous[k]) for k in keys}
                    top = max(rates.values())
                    raw = {k: math.exp((rates[k] - top) / self.temperature) for k in keys}
                else:
                    raw = {k: 1.0 for k in keys}
                self.previous = {k: v for k, v in self.smoothed.items() if k in keys}
            else:  # grad_norm
                raw = {k: 1.0 / max(new_smoothed[k], 1e-12) for k in keys}
            self.smoothed = new_smoothed
        total = sum(raw.values())
        if total <= 0:
            raise ValueError(f"weights sum to {total}")
        self.last_weights = {k: raw[k] / total for k in keys}
        self.updates += 1
        return dict(self.last_weights)

    def state_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "temperature": self.temperature,
            "ema": self.ema,
            "fixed_weights": dict(self.fixed_weights) if self.fixed_weights else None,
            "smoothed": dict(self.smoothed),
            "previous": dict(self.previous),
            "last_weights": dict(self.last_weights),
            "updates": self.updates,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("kind", self.kind) != self.kind:
            raise ValueError(
                f"aggregator state is for kind {state.get('kind')!r}, not {self.kind!r}"
            )
        self.temperature = float(state.get("temperature", self.temperature))
        self.ema = float(state.get("ema", self.ema))
        self.fixed_weights = state.get("fixed_weights", self.fixed_weights)
        self.smoothed = dict(state.get("smoothed", {}))
        self.previous = dict(state.get("previous", {}))
        self.last_weights = dict(state.get("last_weights", {}))
        self.updates = int(state.get("updates", 0))
