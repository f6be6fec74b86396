"""The step engine: one :class:`Trainer` step per mode, checkpoints and the training loop.

Modes (``mode`` in the config):

* ``bilevel``: per step, lower level on training batches, then upper level on separate batches.
  Lower: for each active module k in {discriminator, detector, segmenter}, one optimiser step on
  w_k for f_k(theta, w_k) (critic loss with real = fusion target and fake = fused; detection /
  segmentation loss on the colour image rebuilt from fused Y + visible CrCb). Upper:
  F_k = L_fusion(theta) + lambda_k l_k(theta, w_k); hypergradient g_k per module
  (:func:`training.bilevel.first_order_hypergradient`, gradients by ``torch.autograd.grad``);
  theta's gradient is ``sum_k a_k g_k`` with weights from :class:`DynamicAggregator`.
  The first ``warmup_steps`` steps are fusion-only (warm start).
* ``joint``: single-level baseline as in TarDAL: one optimiser over fusion + detector + segmenter
  on L_fusion + sum_k lambda_k l_k (the critic still has its own optimiser, as any GAN).
* ``fusion_only``: theta on L_fusion only; the detector and segmenter are trained on the
  detached fused image (no feedback to fusion), so the semantic ablation numbers exist.

Implementation choices (said here because they change numbers):

* grad f_k for the hypergradient is taken at the lower-level step itself, i.e. at w_k just before
  its update (one forward/backward per module saved; it differs from the post-update point by
  one lower-level step).
* The lower-level step is Adam rather than plain SGD (faster on small budgets); the
  hypergradient does not depend on the optimiser.
* Determinism, exact resume and data parallel: :mod:`training.distributed`. Checkpoints hold
  models, optimisers, aggregator state, RNG states and the step. On ``device: cuda`` a step is
  seeded the same way, but GPU kernels are not all deterministic, so a resumed GPU run may
  differ in the last digits; data parallel stays a CPU (gloo) feature.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training import losses
from training.bilevel import DynamicAggregator, aggregate, first_order_hypergradient, grad_norm
from training.colour import colour_image
from training.config import MODULES, REPO_ROOT, TrainConfig, validate
from training.data import build_data
from training.distributed import (
    DistInfo,
    all_reduce_mean,
    average_buffers,
    barrier,
    batch_indices,
    broadcast_module,
    rng_state,
    seed_step,
    set_rng_state,
)
from training.evaluation import evaluate
from training.export import checkpoint_from_bundle
from training.models import (
    DETECTION_CLASSES,
    SEGMENTATION_CLASSES,
    Architecture,
    build_detector,
    build_discriminator,
    build_fusion,
    build_segmenter,
    copy_yolox_backbone,
    detector_head,
)
from training.yolox import provenance as yolox_provenance
from training.yolox_loss import yolox_loss

CRITIC_GP_WEIGHT = 10.0  # WGAN-GP's lambda (Gulrajani et al.), as losses.critic_loss uses


# ------------------------------------------------------------------------------------------
# Small tensor helpers
# ------------------------------------------------------------------------------------------


def resolve_device(name: str, info: DistInfo | None = None) -> torch.device:
    """The torch device of the config's ``device`` ("cpu", "cuda" or "auto"), with a clear
    error where CUDA was asked for and is not there."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("device: cuda, but torch sees no CUDA device (use cpu or auto)")
        if info is not None and info.world > 1:
            raise ValueError("data parallel (torchrun) trains on the CPU only: use device: cpu")
    return torch.device(name)


def to_device(value: Any, device: torch.device) -> Any:
    """A collated batch (tensors, and lists / dicts of them) on ``device``; names and other
    Python values are returned as they are."""
    if isinstance(value, torch.Tensor):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {key: to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(item, device) for item in value)
    return value


def _loss_value(result: Any) -> torch.Tensor:
    """Losses return a tensor or (tensor, parts); take the tensor."""
    if isinstance(result, tuple):
        return result[0]
    return result


def _parts(result: Any) -> dict[str, float]:
    if isinstance(result, tuple) and len(result) > 1 and isinstance(result[1], dict):
        return {k: float(torch.as_tensor(v).detach()) for k, v in result[1].items()}
    return {}


def _params(module: nn.Module | None) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad] if module is not None else []


def as_segmenter_provenance(detector_provenance: dict[str, Any]) -> dict[str, Any]:
    """The ``pretrained_detector*`` provenance of a YOLOX file, renamed for a segmenter built
    from the same file (its class selection does not apply to a segmenter)."""
    return {
        k.replace("pretrained_detector", "pretrained_segmenter"): v
        for k, v in detector_provenance.items()
        if k != "pretrained_detector_keep_classes"
    }


def _fill(tensors: Iterable[torch.Tensor | None], like: list[nn.Parameter]) -> list[torch.Tensor]:
    return [
        torch.zeros_like(p) if g is None else g.detach() for g, p in zip(tensors, like, strict=True)
    ]


# ------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------


class Trainer:
    """Builds data, models and optimisers from a :class:`TrainConfig`; ``train()`` runs to
    ``steps``."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: str | Path | None = None,
        info: DistInfo | None = None,
        quiet: bool = False,
    ) -> None:
        validate(config)
        self.config = config
        self.info = info or DistInfo()
        self.device = resolve_device(str(config.device), self.info)
        self.quiet = quiet
        if int(config.threads or 0) > 0:
            torch.set_num_threads(int(config.threads))
        self.out_dir = config.run_dir
        self.seed = int(config.seed)
        torch.manual_seed(self.seed)
        self.mode = config.mode
        self.active = [k for k in MODULES if getattr(config.modules, k)]
        if self.mode == "fusion_only":
            # No adversarial term in the fusion-only baseline; semantic nets still train
            # on the detached fused image so the semantic ablation numbers exist.
            self.active = [k for k in self.active if k != "discriminator"]

        self.fusion = build_fusion(config.fusion)
        self.nets: dict[str, nn.Module] = {}
        if "discriminator" in self.active:
            self.nets["discriminator"] = build_discriminator()
        self.detector_provenance: dict[str, str] = {}
        if "detector" in self.active:
            dcfg = config.detector
            pretrained = REPO_ROOT / str(dcfg.pretrained) if dcfg.pretrained else None
            self.nets["detector"] = build_detector(
                len(DETECTION_CLASSES), dcfg.arch, pretrained, list(dcfg.keep_classes)
            )
            if pretrained is not None:
                self.detector_provenance = {
                    **yolox_provenance(pretrained),
                    "pretrained_detector_keep_classes": [int(c) for c in dcfg.keep_classes],
                }
        self.segmenter_provenance: dict[str, str] = {}
        # cross-entropy class weights of the segmenter, built once (None: all classes weigh 1)
        self.segmentation_class_weights: torch.Tensor | None = None
        if float(config.segmentation_background_weight) != 1.0:
            self.segmentation_class_weights = torch.ones(len(SEGMENTATION_CLASSES))
            self.segmentation_class_weights[0] = float(config.segmentation_background_weight)
            self.segmentation_class_weights = self.segmentation_class_weights.to(self.device)
        if "segmenter" in self.active:
            scfg = config.segmenter
            seg_pretrained = REPO_ROOT / str(scfg.pretrained) if scfg.pretrained else None
            self.nets["segmenter"] = build_segmenter(
                len(SEGMENTATION_CLASSES), scfg.arch, seg_pretrained, scfg.train_backbone
            )
            if seg_pretrained is not None:
                self.segmenter_provenance = as_segmenter_provenance(
                    yolox_provenance(seg_pretrained)
                )
        # On the device before the optimisers exist, so their state lives there too.
        self.fusion.to(self.device)
        for net in self.nets.values():
            net.to(self.device)
        broadcast_module(self.fusion, self.info)
        for net in self.nets.values():
            broadcast_module(net, self.info)

        lr = config.lr
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        if any(True for _ in self.fusion.parameters()):
            self.optimizers["fusion"] = torch.optim.Adam(
                self.fusion.parameters(), lr=float(lr.fusion)
            )
        elif not self.fusion_frozen:
            # a parameter-free fusion (visible / infrared / mean) has nothing to learn
            raise ValueError(
                f"fusion {config.fusion!r} has no parameters: use mode fusion_only with lr.fusion 0"
            )
        for k, net in self.nets.items():
            betas = (0.5, 0.9) if k == "discriminator" else (0.9, 0.999)
            self.optimizers[k] = torch.optim.Adam(
                _params(net), lr=float(getattr(lr, k)), betas=betas
            )
        agg = config.aggregation
        self.aggregator = DynamicAggregator(
            kind=agg.kind,
            temperature=float(agg.temperature),
            ema=float(agg.ema),
            fixed_weights=agg.fixed_weights,
        )
        ratio = config.max_correction_ratio
        self.max_correction_ratio = None if ratio is None else float(ratio)
        self.fusion_loss_weights = config.fusion_loss
        self.data = build_data(config, REPO_ROOT)
        self.step = 0
        self.best_metric = -math.inf
        self.history: list[dict[str, float]] = []
        self.writer = None
        if config.init_from and resume is None:
            self.load_weights(REPO_ROOT / str(config.init_from))
        if config.segmenter.backbone_from_detector and resume is None and "segmenter" in self.nets:
            # after init_from, so it is the loaded detector's backbone (a resume restores the
            # segmenter's own copy instead)
            copy_yolox_backbone(self.nets["detector"].net, self.nets["segmenter"].net)
            self.segmenter_provenance = as_segmenter_provenance(self.detector_provenance)
            self.segmenter_provenance["segmenter_backbone"] = "copied from the detector"
        if resume is not None:
            self.load_checkpoint(resume)

    @property
    def fusion_frozen(self) -> bool:
        """fusion_only with lr.fusion 0: the fusion net is a fixed input stage."""
        return self.mode == "fusion_only" and float(self.config.lr.fusion) == 0.0

    def _set_train_modes(self) -> None:
        """Train mode for what learns; eval mode for the frozen fusion net and for every module
        whose learning rate is 0, so that nothing of theirs changes, BatchNorm running
        statistics included (a stage that fine-tunes only the detector ships the segmenter it
        started from, bit for bit)."""
        self.fusion.train(not self.fusion_frozen)
        for k, net in self.nets.items():
            net.train(float(getattr(self.config.lr, k)) != 0.0)

    # -------------------------------------------------------------- batches
    def _batch(self, pool: str, stream: int) -> dict[str, Any]:
        dataset = self.data.pools[pool]
        indices = batch_indices(
            len(dataset), int(self.config.batch_size), self.seed, stream, self.step, self.info
        )
        return to_device(self.data.collate([dataset[i] for i in indices]), self.device)

    # -------------------------------------------------------------- losses
    def _fusion_loss(self, fused: torch.Tensor, batch: dict[str, Any]) -> tuple[torch.Tensor, dict]:
        result = losses.fusion_loss(
            fused, batch["ir"], batch["visible_ycrcb"][:, :1], self.fusion_loss_weights
        )
        return _loss_value(result), _parts(result)

    def _task_loss(self, k: str, fused: torch.Tensor, batch: dict[str, Any], *, lower: bool):
        """f_k (lower=True) or l_k (lower=False) of module k on this fused batch."""
        if k == "discriminator":
            critic = self.nets[k]
            if lower:
                real = losses.fusion_target(
                    batch["ir"], batch["visible_ycrcb"][:, :1], self.fusion_loss_weights
                ).detach()
                # losses.critic_loss detaches the fake image (right for a plain critic update,
                # but then grad_theta f_D = 0 and the implicit term vanishes). The bi-level
                # f_D(theta, w) keeps the fake attached: same value, gradient to theta too.
                return (
                    critic(fused).mean()
                    - critic(real).mean()
                    + CRITIC_GP_WEIGHT * losses.gradient_penalty(critic, real, fused)
                )
            return _loss_value(losses.adversarial_loss(critic, fused))
        rgb = colour_image(fused, batch["visible_ycrcb"])
        if k == "detector":
            detector = self.nets[k]
            targets = [
                {"boxes": b, "labels": lab}
                for b, lab in zip(batch["boxes"], batch["labels"], strict=True)
            ]
            if detector_head(detector) == "yolox":
                return _loss_value(
                    yolox_loss(detector(rgb), targets, detector.strides, rgb.shape[-2:])
                )
            return _loss_value(
                losses.detection_loss(detector(rgb), targets, detector.strides, rgb.shape[-2:])
            )
        if k == "segmenter":
            logits = self.nets[k](rgb)
            mask = batch["mask"]
            if not bool((mask != 255).any()):
                return logits.sum() * 0.0  # no labelled pixel in this batch
            return _loss_value(losses.segmentation_loss(
                logits, mask, ignore_index=255, class_weights=self.segmentation_class_weights,
                dice_weight=float(self.config.segmentation_dice),
            ))
        raise KeyError(k)

    def _pool_of(self, k: str) -> str:
        return "fusion" if k == "discriminator" else "labelled"

    # -------------------------------------------------------------- one step
    def train_step(self) -> dict[str, float]:
        seed_step(self.seed, self.step, self.info.rank)
        start = time.perf_counter()
        self._set_train_modes()
        if self.fusion_frozen:
            # Only the modules learn: no fusion loss and no upper-level or fusion-pool batches,
            # which at a 256 px labelled crop were most of a step's time.
            batches = {("labelled", "lower"): self._batch("labelled", 1)}
            _, _, scalars = self._lower_level(batches, detach_fused=True)
            scalars["time/step_s"] = time.perf_counter() - start
            scalars["mode/bilevel"] = 0.0
            self.step += 1
            return scalars
        batches = {
            ("fusion", "lower"): self._batch("fusion", 0),
            ("labelled", "lower"): self._batch("labelled", 1),
            ("fusion", "upper"): self._batch("fusion", 2),
            ("labelled", "upper"): self._batch("labelled", 3),
        }
        warm = self.step < int(self.config.warmup_steps)
        mode = "fusion_only" if (self.mode == "bilevel" and warm) else self.mode
        if mode == "bilevel" and self.active:
            scalars = self._bilevel_step(batches)
        elif mode == "joint":
            scalars = self._joint_step(batches)
        else:
            scalars = self._fusion_only_step(batches)
        scalars["time/step_s"] = time.perf_counter() - start
        scalars["mode/bilevel"] = float(mode == "bilevel")
        self.step += 1
        return scalars

    def _lower_level(
        self, batches: dict, detach_fused: bool
    ) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]], dict[str, float]]:
        """One (or lower_steps) optimiser steps on each w_k; returns grad_theta f_k and
        grad_w f_k at the last lower iterate (for the hypergradient)."""
        theta = _params(self.fusion)
        grads_theta: dict[str, list[torch.Tensor]] = {}
        grads_w: dict[str, list[torch.Tensor]] = {}
        scalars: dict[str, float] = {}
        fused_by_pool: dict[str, torch.Tensor] = {}
        for pool in {self._pool_of(k) for k in self.active}:
            batch = batches[(pool, "lower")]
            fused = self.fusion(batch["ir"], batch["visible_ycrcb"][:, :1])
            fused_by_pool[pool] = fused.detach() if detach_fused else fused
        for k in self.active:
            if detach_fused and float(getattr(self.config.lr, k)) == 0.0:
                # nothing reaches theta (fused image detached) and w does not move: a module
                # kept only to ship (e.g. the frozen detector of a segmenter-only stage)
                continue
            w = _params(self.nets[k])
            pool = self._pool_of(k)
            for inner in range(int(self.config.lower_steps)):
                fused = fused_by_pool[pool]
                batch = batches[(pool, "lower")]
                if inner > 0:  # later inner steps: the same batch, fused image reused
                    fused = fused.detach()
                f_k = self._task_loss(k, fused, batch, lower=True)
                wrt = w if (detach_fused or inner > 0) else theta + w
                grads = torch.autograd.grad(f_k, wrt, retain_graph=True, allow_unused=True)
                if wrt is w:
                    g_w = _fill(grads, w)
                else:
                    grads_theta[k] = _fill(grads[: len(theta)], theta)
                    g_w = _fill(grads[len(theta) :], w)
                grads_w[k] = [g.clone() for g in g_w]
                all_reduce_mean(g_w, self.info)
                for p, g in zip(w, g_w, strict=True):
                    p.grad = g
                self.optimizers[k].step()
                self.optimizers[k].zero_grad(set_to_none=True)
                scalars[f"lower/{k}"] = float(f_k.detach())
        return grads_theta, grads_w, scalars

    def _bilevel_step(self, batches: dict) -> dict[str, float]:
        theta = _params(self.fusion)
        grads_theta_f, grads_w_f, scalars = self._lower_level(batches, detach_fused=False)
        lambdas = self.config.lambdas
        hypergrads: dict[str, list[torch.Tensor]] = {}
        task_losses: dict[str, float] = {}
        fusion_losses: dict[str, tuple[torch.Tensor, torch.Tensor, dict]] = {}
        for pool in {self._pool_of(k) for k in self.active}:
            batch = batches[(pool, "upper")]
            fused = self.fusion(batch["ir"], batch["visible_ycrcb"][:, :1])
            loss, parts = self._fusion_loss(fused, batch)
            fusion_losses[pool] = (fused, loss, parts)
        for k in self.active:
            pool = self._pool_of(k)
            fused, fusion_loss, _ = fusion_losses[pool]
            w = _params(self.nets[k])
            l_k = self._task_loss(k, fused, batches[(pool, "upper")], lower=False)
            upper = fusion_loss + float(getattr(lambdas, k)) * l_k
            grads = torch.autograd.grad(upper, theta + w, retain_graph=True, allow_unused=True)
            g_theta_upper = _fill(grads[: len(theta)], theta)
            g_w_upper = _fill(grads[len(theta) :], w)
            hypergrads[k] = first_order_hypergradient(
                g_theta_upper, g_w_upper, grads_theta_f[k], grads_w_f[k],
                max_correction_ratio=self.max_correction_ratio,
            )
            # DWA signal: the task loss l_k (detector, segmenter); for the discriminator F_D,
            # because the WGAN term l_D alone is sign-indefinite. (F_k for all modules was
            # tried first: the fusion loss dominates every F_k and the weights stayed uniform.)
            task_losses[k] = float((upper if k == "discriminator" else l_k).detach())
            scalars[f"upper/{k}"] = float(l_k.detach())
            scalars[f"upper/F_{k}"] = float(upper.detach())
            scalars[f"hypergrad_norm/{k}"] = grad_norm(hypergrads[k])
            scalars[f"grad_norm/theta_F_{k}"] = grad_norm(g_theta_upper)
        for pool, (_, loss, parts) in fusion_losses.items():
            scalars[f"fusion/{pool}"] = float(loss.detach())
            for name, value in parts.items():
                scalars[f"fusion_parts/{pool}/{name}"] = value
        signals = (
            {k: scalars[f"hypergrad_norm/{k}"] for k in self.active}
            if self.aggregator.kind == "grad_norm"
            else task_losses
        )
        weights = self.aggregator.weights(signals)
        for k, a in weights.items():
            scalars[f"weight/{k}"] = a
        theta_grad = aggregate(hypergrads, weights)
        all_reduce_mean(theta_grad, self.info)
        scalars["grad_norm/theta"] = grad_norm(theta_grad)
        self._apply("fusion", theta, theta_grad)
        return scalars

    def _apply(self, name: str, params: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        clip = float(self.config.grad_clip or 0.0)
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(params, clip)
        self.optimizers[name].step()
        self.optimizers[name].zero_grad(set_to_none=True)

    def _mean_fusion_loss(self, batches: dict) -> tuple[torch.Tensor, dict[str, tuple], dict]:
        out: dict[str, tuple] = {}
        scalars: dict[str, float] = {}
        total = None
        for pool in ("fusion", "labelled"):
            batch = batches[(pool, "upper")]
            fused = self.fusion(batch["ir"], batch["visible_ycrcb"][:, :1])
            loss, parts = self._fusion_loss(fused, batch)
            out[pool] = (fused, batch)
            scalars[f"fusion/{pool}"] = float(loss.detach())
            for name, value in parts.items():
                scalars[f"fusion_parts/{pool}/{name}"] = value
            total = loss if total is None else total + loss
        return total / 2.0, out, scalars

    def _fusion_only_step(self, batches: dict) -> dict[str, float]:
        scalars: dict[str, float] = {}
        if self.active:
            _, _, scalars = self._lower_level(batches, detach_fused=True)
        theta = _params(self.fusion)
        loss, _, fusion_scalars = self._mean_fusion_loss(batches)
        scalars.update(fusion_scalars)
        grads = _fill(torch.autograd.grad(loss, theta, allow_unused=True), theta)
        all_reduce_mean(grads, self.info)
        scalars["grad_norm/theta"] = grad_norm(grads)
        self._apply("fusion", theta, grads)
        return scalars

    def _joint_step(self, batches: dict) -> dict[str, float]:
        scalars: dict[str, float] = {}
        lambdas = self.config.lambdas
        if "discriminator" in self.nets:  # the critic's own step (GAN), on the lower batch
            batch = batches[("fusion", "lower")]
            with torch.no_grad():
                fake = self.fusion(batch["ir"], batch["visible_ycrcb"][:, :1])
            critic = self.nets["discriminator"]
            w = _params(critic)
            f_d = self._task_loss("discriminator", fake, batch, lower=True)
            g_w = _fill(torch.autograd.grad(f_d, w, allow_unused=True), w)
            all_reduce_mean(g_w, self.info)
            for p, g in zip(w, g_w, strict=True):
                p.grad = g
            self.optimizers["discriminator"].step()
            self.optimizers["discriminator"].zero_grad(set_to_none=True)
            scalars["lower/discriminator"] = float(f_d.detach())
        total, fused_by_pool, fusion_scalars = self._mean_fusion_loss(batches)
        scalars.update(fusion_scalars)
        for k in self.active:
            fused, batch = fused_by_pool[self._pool_of(k)]
            l_k = self._task_loss(k, fused, batch, lower=False)
            total = total + float(getattr(lambdas, k)) * l_k
            scalars[f"upper/{k}"] = float(l_k.detach())
        theta = _params(self.fusion)
        semantic = [k for k in self.active if k != "discriminator"]
        params = theta + [p for k in semantic for p in _params(self.nets[k])]
        grads = _fill(torch.autograd.grad(total, params, allow_unused=True), params)
        all_reduce_mean(grads, self.info)
        scalars["grad_norm/theta"] = grad_norm(grads[: len(theta)])
        scalars["joint/total"] = float(total.detach())
        self._apply("fusion", theta, grads[: len(theta)])
        offset = len(theta)
        for k in semantic:
            w = _params(self.nets[k])
            self._apply(k, w, grads[offset : offset + len(w)])
            offset += len(w)
        return scalars

    # -------------------------------------------------------------- checkpoints
    def checkpoint(self) -> dict[str, Any]:
        average_buffers(self.fusion, self.info)
        for net in self.nets.values():
            average_buffers(net, self.info)
        det = self.nets.get("detector")
        seg = self.nets.get("segmenter")
        disc = self.nets.get("discriminator")
        det_arch = None
        if det is not None:
            det_arch = {"num_classes": det.num_classes}
            if self.config.detector.arch != "fcos":  # FCOS dicts stay as they always were
                det_arch["arch"] = self.config.detector.arch
        return {
            "architecture": {
                "fusion": self.config.fusion,
                "detector": det_arch,
                "segmenter": (
                    None if seg is None
                    else {"num_classes": seg.num_classes}
                    if self.config.segmenter.arch == "compact"  # compact dicts stay as they were
                    else {"num_classes": seg.num_classes, "arch": self.config.segmenter.arch}
                ),
            },
            "detector_provenance": dict(self.detector_provenance),
            "segmenter_provenance": dict(self.segmenter_provenance),
            "fusion": self.fusion.state_dict(),
            "detector": det.state_dict() if det is not None else None,
            "segmenter": seg.state_dict() if seg is not None else None,
            "discriminator": disc.state_dict() if disc is not None else None,
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "aggregator": self.aggregator.state_dict(),
            "rng": rng_state(),
            "config": self.config.to_dict(),
            "step": self.step,
            "best_metric": self.best_metric,
            "data": self.data.provenance,
        }

    def save_checkpoint(self, path: Path, state: dict[str, Any] | None = None) -> None:
        state = state if state is not None else self.checkpoint()
        if not self.info.main:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(path)  # atomic: a crash never leaves a half-written last.pt

    def _load_networks(self, path: str | Path, *, require_all: bool) -> dict[str, Any]:
        """Load the fusion net and this run's modules from a checkpoint; returns its state.

        ``require_all``: every module of this run must be in the checkpoint (exact resume);
        otherwise a module the checkpoint lacks keeps its fresh initialisation.
        """
        path = Path(path)
        if path.suffix == ".pt" and (path.parent / "model.yaml").is_file():
            # a bundle's TorchScript file (e.g. init_from: models/default/model.pt)
            state = checkpoint_from_bundle(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=False)
        wanted = None  # every module (an exact resume, or init_from without init_modules)
        if not require_all and self.config.init_modules is not None:
            wanted = set(self.config.init_modules)
        if wanted is None or "fusion" in wanted:
            # only a loaded fusion net must match (init_modules [segmenter] may take the
            # segmenter of a realtime bundle into a run with another fusion)
            saved_fusion = state["architecture"]["fusion"]
            if (saved_fusion, self.config.fusion) == ("realtime", "realtime_global"):
                # the same network plus the whole-frame branch, which starts at zero (exactly
                # the loaded network's function): every key but the branch's must load
                missing, unexpected = self.fusion.load_state_dict(state["fusion"], strict=False)
                if unexpected or any(not k.startswith("global_film.") for k in missing):
                    raise ValueError(f"realtime -> realtime_global: missing {missing}, "
                                     f"unexpected {unexpected}")
            elif saved_fusion != self.config.fusion:
                raise ValueError(f"checkpoint fusion {saved_fusion!r} differs from config")
            else:
                self.fusion.load_state_dict(state["fusion"])
        saved_detector = state["architecture"].get("detector")
        saved_arch = Architecture.from_dict(
            {"fusion": self.config.fusion, "detector": saved_detector}
        ).detector_arch
        saved_segmenter = state["architecture"].get("segmenter")
        saved_seg_arch = Architecture.from_dict(
            {"fusion": self.config.fusion, "segmenter": saved_segmenter}
        ).segmenter_arch
        for k, net in self.nets.items():
            if wanted is not None and k not in wanted:
                continue  # init_modules leaves this module as built (pretrained or fresh)
            seg_arch = self.config.segmenter.arch
            if k == "segmenter" and saved_segmenter and saved_seg_arch != seg_arch:
                # another segmenter architecture: keep this run's (pretrained or fresh)
                if require_all:
                    raise ValueError(
                        f"checkpoint segmenter {saved_seg_arch!r} is not "
                        f"{self.config.segmenter.arch!r}"
                    )
                continue
            if k == "detector" and saved_detector and saved_arch != self.config.detector.arch:
                # another detector architecture (stage 2 YOLOX from a FCOS bundle): keep this
                # run's detector (pretrained or fresh); resuming needs the same one
                if require_all:
                    raise ValueError(
                        f"checkpoint detector {saved_arch!r} is not {self.config.detector.arch!r}"
                    )
                continue
            if state.get(k) is not None:
                net.load_state_dict(state[k])
                if k == "detector" and state.get("detector_provenance"):
                    # the loaded weights descend from that pretrained file
                    self.detector_provenance = dict(state["detector_provenance"])
                if k == "segmenter" and state.get("segmenter_provenance"):
                    self.segmenter_provenance = dict(state["segmenter_provenance"])
            elif require_all:
                raise ValueError(f"checkpoint has no weights for {k}")
        return state

    def load_weights(self, path: str | Path) -> None:
        """Network weights of a checkpoint (see config ``init_from``); nothing else."""
        self._load_networks(path, require_all=False)

    def load_checkpoint(self, path: str | Path) -> None:
        state = self._load_networks(path, require_all=True)
        for k, opt in self.optimizers.items():
            if k in state["optimizers"]:
                opt.load_state_dict(state["optimizers"][k])
        # reset_on_resume: continuing with a changed aggregation signal or temperature starts
        # its history afresh instead of mixing two definitions (breaks exactness on purpose).
        if not self.config.aggregation.reset_on_resume:
            self.aggregator.load_state_dict(state["aggregator"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best_metric = float(state["best_metric"])

    # -------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        """Every evaluation the config asks for (:func:`training.evaluation.evaluate`)."""
        metrics, image = evaluate(
            self.fusion, self.nets.get("detector"), self.nets.get("segmenter"),
            self.data, self.config.eval,
        )
        if self.writer is not None and image is not None:
            self.writer.add_image("eval/fused_0", image, self.step, dataformats="HW")
        self._set_train_modes()
        return metrics

    # -------------------------------------------------------------- loop
    def _log(self, scalars: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in scalars.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, self.step)

    def _steps(self) -> Iterator[int]:
        total = int(self.config.steps)
        progress = None
        if self.info.main and not self.quiet:
            try:
                from tqdm import tqdm

                progress = tqdm(total=total, initial=self.step, desc=self.config.name)
            except ImportError:  # tqdm is a dev requirement; keep training without it
                progress = None
        while self.step < total:
            yield self.step
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.close()

    def train(self) -> list[dict[str, float]]:
        if self.info.main and self.writer is None and self.config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"))
        eval_every = int(self.config.eval.every or 0)
        ckpt_every = int(self.config.checkpoint_every or 0)
        for _ in self._steps():
            scalars = self.train_step()
            for key, value in scalars.items():
                if not math.isfinite(value):
                    raise FloatingPointError(f"step {self.step}: {key} = {value}")
            scalars["step"] = float(self.step)
            self.history.append(scalars)
            log_every = int(self.config.log_every or 0)
            if log_every and self.step % log_every == 0:
                self._log(scalars)
            last = self.step == int(self.config.steps)
            if eval_every and (self.step % eval_every == 0 or last):
                state = self.checkpoint()  # averages buffers on every rank (collective)
                if self.info.main:
                    metrics = self.evaluate()
                    self._log(metrics)
                    score = metrics.get("score", -math.inf)
                    self.history[-1].update(metrics)
                    if score > self.best_metric:
                        self.best_metric = score
                        state["best_metric"] = score
                        state["metrics"] = metrics
                        self.save_checkpoint(self.out_dir / "best.pt", state)
                    state["best_metric"] = self.best_metric
                    self.save_checkpoint(self.out_dir / "last.pt", state)
            elif (ckpt_every and self.step % ckpt_every == 0) or last:
                self.save_checkpoint(self.out_dir / "last.pt")
        if self.writer is not None:
            self.writer.flush()
        barrier(self.info)
        return self.history
