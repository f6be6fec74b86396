"""training.losses: finite values, descent on tiny synthetic data, FCOS assignment, edge cases."""

from __future__ import annotations

import pytest
import torch

from training.datasets import collate_pairs
from training.losses import (
    FusionLossWeights,
    adversarial_loss,
    assign_fcos_targets,
    centerness_target,
    critic_loss,
    default_size_ranges,
    detection_loss,
    fusion_loss,
    fusion_target,
    gaussian_blur,
    gradient_penalty,
    segmentation_loss,
    sobel_magnitude,
    ssim,
)
from training.models import build_detector, build_discriminator, build_fusion, build_segmenter
from training.synthetic import SyntheticPairs

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def synthetic_batch() -> dict:
    dataset = SyntheticPairs(4, size=(64, 64), seed=3, night_fraction=0.5)
    return collate_pairs([dataset[i] for i in range(len(dataset))])


def test_ssim_identity_and_sobel_of_flat_image() -> None:
    image = torch.rand(1, 1, 32, 32)
    assert ssim(image, image).item() == pytest.approx(1.0, abs=1e-5)
    assert ssim(image, torch.rand(1, 1, 32, 32)).item() < 0.5
    assert sobel_magnitude(torch.full((1, 1, 16, 16), 0.4)).abs().max().item() < 1e-6
    step = torch.zeros(1, 1, 8, 8)
    step[..., 4:] = 1.0
    assert sobel_magnitude(step)[0, 0, 4, 3].item() == pytest.approx(4.0)


def test_fusion_loss_prefers_the_target_over_either_source(synthetic_batch: dict) -> None:
    ir = synthetic_batch["ir"]
    vis_y = synthetic_batch["visible_ycrcb"][:, :1]
    target = fusion_target(ir, vis_y)
    loss_target, parts = fusion_loss(target, ir, vis_y)
    loss_ir, _ = fusion_loss(ir, ir, vis_y)
    loss_vis, _ = fusion_loss(vis_y, ir, vis_y)
    assert parts["intensity"].item() == 0.0
    assert set(parts) == {"intensity", "gradient", "ssim"}
    assert loss_target < loss_ir and loss_target < loss_vis
    no_gradient = fusion_loss(ir, ir, vis_y, FusionLossWeights(gradient=0.0, ssim=0.0))[0]
    assert no_gradient.item() == pytest.approx(torch.nn.functional.l1_loss(ir, target).item())


def test_enhanced_target_is_sharper_and_higher_in_contrast_than_the_plain_max(
    synthetic_batch: dict,
) -> None:
    ir = synthetic_batch["ir"]
    vis_y = synthetic_batch["visible_ycrcb"][:, :1]
    plain = fusion_target(ir, vis_y)
    assert torch.equal(plain, torch.maximum(ir, vis_y))
    assert torch.equal(fusion_target(ir, vis_y, FusionLossWeights()), plain)
    sharper = fusion_target(ir, vis_y, FusionLossWeights(detail_gain=0.5))
    assert sobel_magnitude(sharper).mean() > 1.1 * sobel_magnitude(plain).mean()
    stretched = fusion_target(ir, vis_y, FusionLossWeights(contrast=1.2))
    assert (stretched.std(dim=(-2, -1)) > plain.std(dim=(-2, -1))).all()
    assert stretched.min() >= 0.0 and stretched.max() <= 1.0
    # The plain max is the zero-loss image only for the plain target.
    assert fusion_loss(plain, ir, vis_y)[1]["intensity"].item() == 0.0
    enhanced = FusionLossWeights(detail_gain=0.3, contrast=1.2)
    assert fusion_loss(plain, ir, vis_y, enhanced)[1]["intensity"].item() > 0.0


def test_gaussian_blur_keeps_flat_images_and_the_mean() -> None:
    flat = torch.full((1, 1, 20, 24), 0.3)
    assert torch.allclose(gaussian_blur(flat, 2.0), flat, atol=1e-6)
    impulse = torch.zeros(1, 1, 31, 31)
    impulse[..., 15, 15] = 1.0
    blurred = gaussian_blur(impulse, 1.5)
    assert blurred.sum().item() == pytest.approx(1.0, abs=1e-5)
    assert blurred[..., 15, 15].item() == pytest.approx(1 / (2 * torch.pi * 1.5**2), rel=0.05)


@pytest.mark.parametrize("name", ["realtime", "paper"])
def test_fusion_loss_decreases_on_synthetic_pairs(name: str, synthetic_batch: dict) -> None:
    torch.manual_seed(0)
    fusion = build_fusion(name)
    optimiser = torch.optim.Adam(fusion.parameters(), lr=3e-3)
    ir = synthetic_batch["ir"][:2, :, :32, :32]
    vis_y = synthetic_batch["visible_ycrcb"][:2, :1, :32, :32]
    losses = []
    for _ in range(6):
        loss, _ = fusion_loss(fusion(ir, vis_y), ir, vis_y)
        assert torch.isfinite(loss)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_critic_and_adversarial_losses() -> None:
    torch.manual_seed(0)
    critic = build_discriminator()
    real = torch.rand(3, 1, 32, 32)
    fake = torch.rand(3, 1, 32, 32, requires_grad=True)
    loss = critic_loss(critic, real, fake)
    assert torch.isfinite(loss)
    loss.backward()
    assert fake.grad is None  # the critic step must not push gradients into the generator
    assert all(p.grad is not None for p in critic.parameters())
    adversarial = adversarial_loss(critic, fake)
    adversarial.backward()
    assert fake.grad is not None and torch.isfinite(fake.grad).all()
    assert gradient_penalty(critic, real, fake.detach()).item() >= 0.0


def test_critic_learns_to_separate_real_from_fake() -> None:
    torch.manual_seed(0)
    critic = build_discriminator()
    optimiser = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.9))
    real = 0.8 + 0.1 * torch.rand(4, 1, 32, 32)
    fake = 0.2 * torch.rand(4, 1, 32, 32)
    losses = []
    for _ in range(8):
        loss = critic_loss(critic, real, fake)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert critic(real).mean() > critic(fake).mean()


def test_size_ranges_follow_fcos() -> None:
    assert default_size_ranges((8, 16, 32)) == [(0.0, 64.0), (64.0, 128.0), (128.0, float("inf"))]


def test_fcos_assignment_centre_sampling_and_smallest_box() -> None:
    # one level of stride 8 over 64x64: points at 4, 12, ..., 60
    points = torch.stack(torch.meshgrid(torch.arange(8) * 8 + 4.0, torch.arange(8) * 8 + 4.0,
                                        indexing="xy"), dim=-1).reshape(-1, 2)
    strides = torch.full((64,), 8.0)
    ranges = torch.tensor([[0.0, float("inf")]]).expand(64, 2)
    big = [0.0, 0.0, 64.0, 64.0]
    small = [30.0, 30.0, 46.0, 46.0]
    targets = assign_fcos_targets(points, strides, ranges, torch.tensor([big, small]),
                                  torch.tensor([2, 0]))
    by_xy = {(int(x), int(y)): int(label) for (x, y), label in zip(points, targets.labels,
                                                                   strict=True)}
    assert by_xy[(36, 36)] == 0  # inside both centre regions: the smallest box wins
    assert by_xy[(4, 4)] == -1  # inside the big box but outside its 1.5-stride centre region
    assert by_xy[(28, 28)] == 2  # centre region of the big box, outside the small box
    ltrb = targets.ltrb[targets.labels == 0]
    assert (ltrb > 0).all()
    assert centerness_target(torch.tensor([[4.0, 4.0, 4.0, 4.0]])).item() == pytest.approx(1.0)


def test_detection_loss_handles_images_without_boxes(synthetic_batch: dict) -> None:
    torch.manual_seed(0)
    detector = build_detector(3)
    outputs = detector(torch.rand(2, 3, 64, 64))
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}] * 2
    loss, parts = detection_loss(outputs, empty, detector.strides, (64, 64))
    assert torch.isfinite(loss) and parts["num_positive"].item() == 0
    assert parts["box"].item() == 0.0 and parts["ctr"].item() == 0.0
    loss.backward()
    assert all(p.grad is not None for p in detector.head.parameters())


def test_detection_loss_decreases_on_synthetic_pairs(synthetic_batch: dict) -> None:
    torch.manual_seed(0)
    detector = build_detector(3)
    optimiser = torch.optim.Adam(detector.parameters(), lr=2e-3)
    from training.colour import ycrcb_to_rgb

    rgb = ycrcb_to_rgb(synthetic_batch["visible_ycrcb"])
    targets = [{"boxes": b, "labels": lab}
               for b, lab in zip(synthetic_batch["boxes"], synthetic_batch["labels"], strict=True)]
    assert sum(len(t["boxes"]) for t in targets) > 0
    losses = []
    for _ in range(6):
        loss, parts = detection_loss(detector(rgb), targets, detector.strides, (64, 64))
        assert torch.isfinite(loss)
        assert parts["num_positive"].item() > 0
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_segmentation_loss_ignores_unlabelled_pixels(synthetic_batch: dict) -> None:
    logits = torch.randn(2, 4, 8, 8, requires_grad=True)
    unlabelled = torch.full((2, 8, 8), 255)
    loss = segmentation_loss(logits, unlabelled)
    assert loss.item() == 0.0
    loss.backward()  # connected to the graph, no NaN
    masks = torch.randint(0, 4, (2, 8, 8))
    partly = masks.clone()
    partly[:, :4] = 255
    full = torch.nn.functional.cross_entropy(logits[..., 4:, :], masks[:, 4:])
    assert segmentation_loss(logits, partly).item() == pytest.approx(full.item(), rel=1e-5)
    weighted = segmentation_loss(logits, masks, class_weights=torch.tensor([0.1, 1.0, 1.0, 1.0]))
    assert torch.isfinite(weighted)


def test_dice_term_penalises_an_all_background_answer_to_a_rare_class() -> None:
    """SYNTHETIC 64x64 mask with a 4x4 person (0.4 % of the pixels), as MSRS persons are: cross-
    entropy barely notices a segmenter that answers background everywhere; the Dice term does,
    ignores unlabelled pixels and vanishes for a perfect answer."""
    masks = torch.zeros(1, 64, 64, dtype=torch.long)
    masks[0, 10:14, 20:24] = 1
    background = torch.zeros(1, 4, 64, 64)
    background[:, 0] = 6.0  # confident background everywhere
    ce_only = segmentation_loss(background, masks)
    with_dice = segmentation_loss(background, masks, dice_weight=1.0)
    assert ce_only.item() < 0.05
    assert with_dice.item() - ce_only.item() > 0.95  # Dice of the missed person ~1
    perfect = torch.full((1, 4, 64, 64), -6.0)
    perfect.scatter_(1, masks[:, None], 6.0)
    assert segmentation_loss(perfect, masks, dice_weight=1.0).item() < 0.02
    unlabelled_person = masks.clone()
    unlabelled_person[masks == 1] = 255  # the person unknown: no foreground class, no Dice
    assert segmentation_loss(background, unlabelled_person, dice_weight=1.0).item() == (
        pytest.approx(segmentation_loss(background, unlabelled_person).item())
    )
    logits = background.clone().requires_grad_(True)
    segmentation_loss(logits, masks, dice_weight=1.0).backward()
    assert logits.grad[0, 1, 10:14, 20:24].max() < 0  # raises the person logit on the person


def test_segmentation_loss_decreases_on_synthetic_pairs(synthetic_batch: dict) -> None:
    torch.manual_seed(0)
    segmenter = build_segmenter(4)
    optimiser = torch.optim.Adam(segmenter.parameters(), lr=3e-3)
    rgb = synthetic_batch["visible_ycrcb"]
    losses = []
    for _ in range(5):
        loss = segmentation_loss(segmenter(rgb), synthetic_batch["mask"])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
