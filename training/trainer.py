"""The bi-level dynamic trainer (and the single-level baselines it is compared with).

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
* Determinism and exact resume: every step reseeds torch / numpy / random from (seed, step,
  rank) and draws its batch indices from per-epoch permutations seeded the same way, so step t
  is a pure function of the state after step t-1; checkpoints hold models, optimisers,
  aggregator state, RNG states and the step.
* Distributed (torchrun, gloo, CPU): the modules are NOT wrapped in DistributedDataParallel
  because DDP's reducer hooks fire on ``loss.backward()`` only, never on ``torch.autograd.grad``
  which the hypergradients need. Every gradient that reaches an optimiser is averaged over ranks
  with ``dist.all_reduce`` (what DDP does), parameters are broadcast from rank 0 at start, batch
  norm buffers are averaged before evaluation and checkpointing, and each rank draws different
  batches. Rank 0 alone logs, evaluates and writes checkpoints.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from training import losses
from training.bilevel import DynamicAggregator, aggregate, first_order_hypergradient, grad_norm
from training.colour import ycrcb_to_rgb
from training.models import (
    DETECTION_CLASSES,
    SEGMENTATION_CLASSES,
    build_detector,
    build_discriminator,
    build_fusion,
    build_segmenter,
)

MODES = ("bilevel", "joint", "fusion_only")
CRITIC_GP_WEIGHT = 10.0  # WGAN-GP's lambda (Gulrajani et al.), as losses.critic_loss uses
MODULES = ("discriminator", "detector", "segmenter")
REPO_ROOT = Path(__file__).resolve().parents[1]

# Defaults every config starts from; a YAML file (and `base:` files it names) overrides them.
DEFAULT_CONFIG: dict[str, Any] = {
    "name": "run",
    "seed": 0,
    "mode": "bilevel",
    "fusion": "realtime",
    "steps": 100,
    "warmup_steps": 0,
    "batch_size": 2,
    "crop": 128,
    "lower_steps": 1,
    "modules": {"discriminator": True, "detector": True, "segmenter": True},
    "lambdas": {"discriminator": 0.05, "detector": 0.1, "segmenter": 0.1},
    "lr": {"fusion": 1e-3, "discriminator": 1e-4, "detector": 1e-3, "segmenter": 1e-3},
    "grad_clip": 1.0,
    # Trust region of the hypergradient's implicit term (bilevel.first_order_hypergradient);
    # null = no cap. Without it the critic's term reached 1000x |grad_theta F| and the fused
    # image collapsed (runs/default phase 2, steps 800-1200).
    "max_correction_ratio": 1.0,
    # losses.FusionLossWeights fields; empty = that module's defaults.
    "fusion_loss": {},
    # Checkpoint whose network weights (fusion and every module it has that this run trains)
    # start this run; step, optimisers and aggregator start afresh. For a second stage, e.g.
    # semantic heads fine-tuned on a frozen bi-level fusion net (configs/default_semantic.yaml).
    # Unlike --resume, which continues the same run exactly.
    "init_from": None,
    "aggregation": {
        "kind": "loss_rate", "temperature": 0.05, "ema": 0.95, "fixed_weights": None,
        "reset_on_resume": False,
    },
    "data": {
        "root": "../shared/data",
        "fusion_sets": ["roadscene", "msrs"],
        "msrs_labels": "labels/fusion",
        # Held-out MSRS names, never trained on (fusion pool or labelled pool); null means
        # training.data.MSRS_HOLDOUT_NAMES (8 of 28, 4 of the 8 masked pairs, day and night).
        "msrs_eval_names": None,
        "synthetic_train": 64,
        "synthetic_eval": 16,
        "synthetic_seed_train": 1,
        "synthetic_seed_eval": 2,
        # Labelled pool mix and crop. MSRS-train is 20 pairs against hundreds of synthetic
        # scenes, so without repeats ~7 % of detector samples are real and the detector fits
        # the synthetic domain only (held-out MSRS mAP@0.5 ~0.02). msrs_repeat lists MSRS-train
        # that many times in the labelled pool (the per-epoch permutations then draw it that
        # much more often). labelled_crop (null = crop) is the labelled pool's crop: MSRS
        # persons are up to ~300 px tall at 640x480 and are evaluated at full size, so 128 px
        # crops only ever show fragments of them. labelled_scale_range (null = 0.75-1.25) is
        # the random rescale of the labelled MSRS pairs.
        "msrs_repeat": 1,
        "labelled_crop": None,
        "labelled_scale_range": None,
    },
    "eval": {
        "every": 50,
        "folder": "tno",
        "max_images": 25,
        "max_side": 0,  # 0 = full resolution
        "semantic": True,
        "score_metrics": ["EN", "SD", "SF", "MI", "SCD", "VIF", "Qabf", "SSIM"],
    },
    "log_every": 1,
    "image_every": 0,
    "checkpoint_every": 50,
    "out_dir": None,  # default runs/<name>
    "export": {"enabled": False, "out": None, "parity_sizes": [[256, 320]]},
    "threads": 0,  # torch intra-op threads (0 = leave torch's default)
}


# ------------------------------------------------------------------------------------------
# Config
# ------------------------------------------------------------------------------------------


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict[str, Any]:
    """YAML config merged over :data:`DEFAULT_CONFIG`; ``base: other.yaml`` chains files;
    overrides are ``dotted.key=yaml_value``."""
    path = Path(path)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a config is a mapping")
    base_name = data.pop("base", None)
    base = load_config(path.parent / base_name) if base_name else copy.deepcopy(DEFAULT_CONFIG)
    config = _merge(base, data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        node = config
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw)
    validate_config(config)
    return config


def validate_config(config: dict[str, Any]) -> None:
    if config["mode"] not in MODES:
        raise ValueError(f"mode {config['mode']!r} not in {MODES}")
    unknown = set(config["modules"]) - set(MODULES)
    if unknown:
        raise ValueError(f"unknown modules {sorted(unknown)}")
    if int(config["steps"]) < 0 or int(config["batch_size"]) < 1:
        raise ValueError("steps must be >= 0 and batch_size >= 1")
    if int(config["crop"]) % 32:
        raise ValueError("crop must be a multiple of 32 (the detector's largest stride)")


# ------------------------------------------------------------------------------------------
# Distributed helpers
# ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """gloo process group when launched by torchrun (WORLD_SIZE > 1), else single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size())


def all_reduce_mean(tensors: list[torch.Tensor], info: DistInfo) -> None:
    if info.world <= 1 or not tensors:
        return
    flat = torch.cat([t.reshape(-1) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat /= info.world
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(flat[offset : offset + n].view_as(t))
        offset += n


def broadcast_module(module: nn.Module, info: DistInfo) -> None:
    if info.world <= 1:
        return
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


def average_buffers(module: nn.Module, info: DistInfo) -> None:
    floats = [b.data for b in module.buffers() if b.is_floating_point()]
    all_reduce_mean(floats, info)


# ------------------------------------------------------------------------------------------
# Deterministic batches
# ------------------------------------------------------------------------------------------


def _seed_for(*parts: int) -> int:
    value = 0x9E3779B1
    for part in parts:
        value = (value * 1_000_003 + int(part) + 0x7F4A7C15) % (2**61 - 1)
    return value % (2**31 - 1)


def batch_indices(
    length: int, batch: int, seed: int, stream: int, step: int, info: DistInfo
) -> list[int]:
    """Indices of this rank's batch at ``step`` for one data stream: a pure function of its
    arguments (per-epoch permutations), so a resumed run draws exactly the same batches."""
    if length <= 0:
        raise ValueError("empty data set")
    out = []
    cache: dict[int, torch.Tensor] = {}
    for j in range(batch):
        position = (step * info.world + info.rank) * batch + j
        epoch, offset = divmod(position, length)
        if epoch not in cache:
            generator = torch.Generator().manual_seed(_seed_for(seed, stream, epoch))
            cache[epoch] = torch.randperm(length, generator=generator)
        out.append(int(cache[epoch][offset]))
    return out


def seed_step(seed: int, step: int, rank: int) -> None:
    value = _seed_for(seed, step, rank, 17)
    torch.manual_seed(value)
    np.random.seed(value)
    random.seed(value)


def rng_state() -> dict[str, Any]:
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])


# ------------------------------------------------------------------------------------------
# Small tensor helpers
# ------------------------------------------------------------------------------------------


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


def _fill(tensors: Iterable[torch.Tensor | None], like: list[nn.Parameter]) -> list[torch.Tensor]:
    return [
        torch.zeros_like(p) if g is None else g.detach() for g, p in zip(tensors, like, strict=True)
    ]


def colour_image(fused_y: torch.Tensor, visible_ycrcb: torch.Tensor) -> torch.Tensor:
    """RGB the semantic networks see: fused Y + visible CrCb, as the exported graph builds it."""
    return ycrcb_to_rgb(torch.cat((fused_y, visible_ycrcb[:, 1:]), dim=1))


# ------------------------------------------------------------------------------------------
# The trainer
# ------------------------------------------------------------------------------------------


class Trainer:
    """Builds data, models and optimisers from a config dict; ``train()`` runs to ``steps``."""

    def __init__(
        self,
        config: dict[str, Any],
        *,
        resume: str | Path | None = None,
        info: DistInfo | None = None,
        quiet: bool = False,
    ) -> None:
        validate_config(config)
        self.config = config
        self.info = info or DistInfo()
        self.quiet = quiet
        if int(config.get("threads") or 0) > 0:
            torch.set_num_threads(int(config["threads"]))
        self.out_dir = Path(config.get("out_dir") or REPO_ROOT / "runs" / config["name"])
        self.seed = int(config["seed"])
        torch.manual_seed(self.seed)
        self.mode = config["mode"]
        modules_on = config["modules"]
        self.active = [k for k in MODULES if modules_on.get(k, False)]
        if self.mode == "fusion_only":
            # No adversarial term in the fusion-only baseline; semantic nets still train
            # on the detached fused image so the semantic ablation numbers exist.
            self.active = [k for k in self.active if k != "discriminator"]

        self.fusion = build_fusion(config["fusion"])
        self.nets: dict[str, nn.Module] = {}
        if "discriminator" in self.active:
            self.nets["discriminator"] = build_discriminator()
        if "detector" in self.active:
            self.nets["detector"] = build_detector(len(DETECTION_CLASSES))
        if "segmenter" in self.active:
            self.nets["segmenter"] = build_segmenter(len(SEGMENTATION_CLASSES))
        broadcast_module(self.fusion, self.info)
        for net in self.nets.values():
            broadcast_module(net, self.info)

        lr = config["lr"]
        self.optimizers: dict[str, torch.optim.Optimizer] = {
            "fusion": torch.optim.Adam(self.fusion.parameters(), lr=float(lr["fusion"]))
        }
        for k, net in self.nets.items():
            betas = (0.5, 0.9) if k == "discriminator" else (0.9, 0.999)
            self.optimizers[k] = torch.optim.Adam(net.parameters(), lr=float(lr[k]), betas=betas)
        agg = config["aggregation"]
        self.aggregator = DynamicAggregator(
            kind=agg["kind"],
            temperature=float(agg["temperature"]),
            ema=float(agg["ema"]),
            fixed_weights=agg.get("fixed_weights"),
        )
        ratio = config.get("max_correction_ratio")
        self.max_correction_ratio = None if ratio is None else float(ratio)
        self.fusion_loss_weights = losses.FusionLossWeights(**(config.get("fusion_loss") or {}))
        self.data = build_data(config, REPO_ROOT)
        self.step = 0
        self.best_metric = -math.inf
        self.history: list[dict[str, float]] = []
        self.writer = None
        if config.get("init_from") and resume is None:
            self.load_weights(REPO_ROOT / str(config["init_from"]))
        if resume is not None:
            self.load_checkpoint(resume)

    @property
    def fusion_frozen(self) -> bool:
        """fusion_only with lr.fusion 0: the fusion net is a fixed input stage."""
        return self.mode == "fusion_only" and float(self.config["lr"]["fusion"]) == 0.0

    # -------------------------------------------------------------- batches
    def _batch(self, pool: str, stream: int) -> dict[str, Any]:
        dataset = self.data.pools[pool]
        indices = batch_indices(
            len(dataset), int(self.config["batch_size"]), self.seed, stream, self.step, self.info
        )
        return self.data.collate([dataset[i] for i in indices])

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
            return _loss_value(
                losses.detection_loss(detector(rgb), targets, detector.strides, rgb.shape[-2:])
            )
        if k == "segmenter":
            logits = self.nets[k](rgb)
            mask = batch["mask"]
            if not bool((mask != 255).any()):
                return logits.sum() * 0.0  # no labelled pixel in this batch
            return _loss_value(losses.segmentation_loss(logits, mask, ignore_index=255))
        raise KeyError(k)

    def _pool_of(self, k: str) -> str:
        return "fusion" if k == "discriminator" else "labelled"

    # -------------------------------------------------------------- one step
    def train_step(self) -> dict[str, float]:
        seed_step(self.seed, self.step, self.info.rank)
        start = time.perf_counter()
        self.fusion.train(not self.fusion_frozen)
        for net in self.nets.values():
            net.train()
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
        warm = self.step < int(self.config["warmup_steps"])
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
            w = _params(self.nets[k])
            pool = self._pool_of(k)
            for inner in range(int(self.config["lower_steps"])):
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
        lambdas = self.config["lambdas"]
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
            upper = fusion_loss + float(lambdas[k]) * l_k
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
        clip = float(self.config.get("grad_clip") or 0.0)
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
        lambdas = self.config["lambdas"]
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
            total = total + float(lambdas[k]) * l_k
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
        return {
            "architecture": {
                "fusion": self.config["fusion"],
                "detector": {"num_classes": det.num_classes} if det is not None else None,
                "segmenter": {"num_classes": seg.num_classes} if seg is not None else None,
            },
            "fusion": self.fusion.state_dict(),
            "detector": det.state_dict() if det is not None else None,
            "segmenter": seg.state_dict() if seg is not None else None,
            "discriminator": disc.state_dict() if disc is not None else None,
            "optimizers": {k: opt.state_dict() for k, opt in self.optimizers.items()},
            "aggregator": self.aggregator.state_dict(),
            "rng": rng_state(),
            "config": self.config,
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
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["architecture"]["fusion"] != self.config["fusion"]:
            raise ValueError(
                f"checkpoint fusion {state['architecture']['fusion']!r} differs from config"
            )
        self.fusion.load_state_dict(state["fusion"])
        for k, net in self.nets.items():
            if state.get(k) is not None:
                net.load_state_dict(state[k])
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
        if not self.config["aggregation"].get("reset_on_resume"):
            self.aggregator.load_state_dict(state["aggregator"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        self.best_metric = float(state["best_metric"])

    # -------------------------------------------------------------- evaluation
    def evaluate(self) -> dict[str, float]:
        from training.evaluation import evaluate_trainer

        return evaluate_trainer(self)

    # -------------------------------------------------------------- loop
    def _log(self, scalars: dict[str, float]) -> None:
        if self.writer is None:
            return
        for key, value in scalars.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key, value, self.step)

    def _steps(self) -> Iterator[int]:
        total = int(self.config["steps"])
        progress = None
        if self.info.main and not self.quiet:
            try:
                from tqdm import tqdm

                progress = tqdm(total=total, initial=self.step, desc=self.config["name"])
            except ImportError:  # tqdm is a dev requirement; keep training without it
                progress = None
        while self.step < total:
            yield self.step
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.close()

    def train(self) -> list[dict[str, float]]:
        if self.info.main and self.writer is None and not self.config.get("no_tensorboard"):
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.out_dir / "tb"))
        eval_every = int(self.config["eval"]["every"] or 0)
        ckpt_every = int(self.config["checkpoint_every"] or 0)
        for _ in self._steps():
            scalars = self.train_step()
            for key, value in scalars.items():
                if not math.isfinite(value):
                    raise FloatingPointError(f"step {self.step}: {key} = {value}")
            scalars["step"] = float(self.step)
            self.history.append(scalars)
            log_every = int(self.config["log_every"] or 0)
            if log_every and self.step % log_every == 0:
                self._log(scalars)
            last = self.step == int(self.config["steps"])
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
        if self.info.world > 1:
            dist.barrier()
        return self.history


# ------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------


@dataclass
class TrainingData:
    """Training pools (``fusion``: unlabelled pairs; ``labelled``: boxes / masks), held-out
    evaluation sets and a provenance record for checkpoints and bundles."""

    pools: dict[str, torch.utils.data.Dataset]
    collate: Any
    msrs_eval: torch.utils.data.Dataset | None
    synthetic_eval: torch.utils.data.Dataset | None
    fusion_eval_folder: Path | None
    provenance: dict[str, Any]


def build_data(config: dict[str, Any], repo_root: Path = REPO_ROOT) -> TrainingData:
    """RoadScene + MSRS-train pairs for fusion; labelled MSRS-train + synthetic for the semantic
    modules; MSRS eval names, a synthetic eval set and the TNO folder held out."""
    from torch.utils.data import ConcatDataset

    from training import data as pair_data
    from training.synthetic import SyntheticPairs

    dcfg = config["data"]
    root = (repo_root / dcfg["root"]).resolve()
    crop = int(config["crop"])
    eval_names = sorted(dcfg.get("msrs_eval_names") or pair_data.MSRS_HOLDOUT_NAMES)
    msrs = root / "msrs"
    fusion_parts: list[torch.utils.data.Dataset] = []
    counts: dict[str, int] = {}
    msrs_train: list[str] = []
    if msrs.is_dir():
        msrs_train = [n for n in pair_data.list_pair_names(msrs) if n not in set(eval_names)]
        leaked = set(msrs_train) & set(eval_names)
        if leaked:  # guard, cannot happen by construction
            raise RuntimeError(f"MSRS eval names in the training split: {sorted(leaked)}")
    for name in dcfg["fusion_sets"]:
        folder = root / name
        if not folder.is_dir():
            raise FileNotFoundError(f"fusion data set {folder} is missing")
        if name == "msrs":
            part = pair_data.PairFolder(folder, names=msrs_train, crop=crop, train=True)
        elif name == "tno":
            raise ValueError("tno is the evaluation set; it must not be a training set")
        else:
            part = pair_data.PairFolder(folder, crop=crop, train=True)
        counts[f"fusion/{name}"] = len(part)
        fusion_parts.append(part)

    labelled_crop = int(dcfg.get("labelled_crop") or crop)
    scale_cfg = dcfg.get("labelled_scale_range")
    labelled_scale_range = (
        (float(scale_cfg[0]), float(scale_cfg[1])) if scale_cfg else pair_data.DEFAULT_SCALE_RANGE
    )
    if labelled_crop % 32:
        raise ValueError("data.labelled_crop must be a multiple of 32 (the detector's stride)")
    msrs_repeat = int(dcfg.get("msrs_repeat") or 1)
    if msrs_repeat < 1:
        raise ValueError("data.msrs_repeat must be >= 1")

    def labelled_msrs(names: list[str], *, train: bool) -> pair_data.PairFolder:
        return pair_data.PairFolder(
            msrs,
            names=names,
            labels_dir=dcfg["msrs_labels"],
            masks_dir="masks",
            mask_map=pair_data.MSRS_MASK_MAP,
            # Person-only masks: pixels of unlabelled classes (bicycle, car) are unknown.
            mask_unlabelled_box_classes=(1, 2),
            crop=labelled_crop,
            train=train,
            scale_range=labelled_scale_range,
        )

    labelled_parts: list[torch.utils.data.Dataset] = []
    if msrs.is_dir() and msrs_train:
        part = labelled_msrs(msrs_train, train=True)
        # The same PairFolder repeated: each listing draws its own random crop per access.
        labelled_parts.extend([part] * msrs_repeat)
        counts["labelled/msrs"] = len(part) * msrs_repeat
    n_synthetic = int(dcfg.get("synthetic_train") or 0)
    if n_synthetic:
        labelled_parts.append(
            SyntheticPairs(
                n_synthetic, (labelled_crop, labelled_crop),
                seed=int(dcfg["synthetic_seed_train"]),
            )
        )
        counts["labelled/synthetic"] = n_synthetic
    if not fusion_parts or not labelled_parts:
        raise ValueError("need at least one fusion set and one labelled set")
    msrs_eval = None
    if msrs.is_dir() and eval_names:
        msrs_eval = labelled_msrs(eval_names, train=False)
    n_synthetic_eval = int(dcfg.get("synthetic_eval") or 0)
    synthetic_eval = (
        SyntheticPairs(n_synthetic_eval, (crop, crop), seed=int(dcfg["synthetic_seed_eval"]))
        if n_synthetic_eval
        else None
    )
    folder = config["eval"].get("folder")
    fusion_eval_folder = (root / folder) if folder else None
    return TrainingData(
        pools={"fusion": ConcatDataset(fusion_parts), "labelled": ConcatDataset(labelled_parts)},
        collate=pair_data.collate_pairs,
        msrs_eval=msrs_eval,
        synthetic_eval=synthetic_eval,
        fusion_eval_folder=fusion_eval_folder,
        provenance={
            "root": str(dcfg["root"]),
            "counts": counts,
            "msrs_train_names": msrs_train,
            "msrs_eval_names": eval_names,
            "synthetic": {
                "train": n_synthetic,
                "eval": n_synthetic_eval,
                "seeds": [dcfg["synthetic_seed_train"], dcfg["synthetic_seed_eval"]],
            },
            "fusion_eval_folder": folder,
        },
    )
