"""training.yolox_loss: simplified SimOTA assignment and the YOLOX loss on SYNTHETIC boxes."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from training.yolox_loss import cell_grid, simota_assign, yolox_loss  # noqa: E402

STRIDES = (8, 16, 32)


def synthetic_outputs(hw=(128, 128), classes=3, obj=-4.0, cls=-4.0, log_wh=0.0):
    """SYNTHETIC raw head outputs: every cell predicts a box of one stride at its own corner."""
    outputs = []
    for s in STRIDES:
        h, w = hw[0] // s, hw[1] // s
        reg = torch.zeros(1, 4, h, w)
        reg[:, 2:] = log_wh
        outputs.append(
            (reg.requires_grad_(), torch.full((1, 1, h, w), obj).requires_grad_(),
             torch.full((1, classes, h, w), cls).requires_grad_())
        )
    return outputs


def set_exact_box(outputs, box, level, label=0, obj=4.0, cls=4.0):
    """Make every cell of ``level`` within the box predict exactly ``box`` (xyxy)."""
    s = STRIDES[level]
    reg, o, c = (t.detach().clone() for t in outputs[level])
    x1, y1, x2, y2 = box
    cx, cy, w, h = (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1
    for i in range(reg.shape[2]):
        for j in range(reg.shape[3]):
            reg[0, 0, i, j] = cx / s - j
            reg[0, 1, i, j] = cy / s - i
            reg[0, 2, i, j] = math.log(w / s)
            reg[0, 3, i, j] = math.log(h / s)
    o[:] = obj
    c[0, label] = cls
    outputs[level] = (reg.requires_grad_(), o.requires_grad_(), c.requires_grad_())
    return outputs


def test_an_exactly_predicted_box_has_near_zero_box_loss():
    box = [36.0, 20.0, 76.0, 100.0]
    outputs = set_exact_box(synthetic_outputs(), box, level=0)
    target = [{"boxes": torch.tensor([box]), "labels": torch.tensor([0])}]
    _, parts = yolox_loss(outputs, target, STRIDES)
    assert parts["num_positive"] >= 1
    assert float(parts["box"]) < 1e-4
    # a box one stride off costs clearly more
    shifted = [{"boxes": torch.tensor([[b + 8.0 for b in box]]), "labels": torch.tensor([0])}]
    _, parts_off = yolox_loss(outputs, shifted, STRIDES)
    assert float(parts_off["box"]) > 0.1


def test_assignment_picks_cells_near_the_gt_centre():
    outputs = synthetic_outputs()
    box = torch.tensor([[40.0, 40.0, 88.0, 88.0]])  # centre (64, 64)
    grid, centres, stride = cell_grid(outputs, STRIDES)
    reg = torch.cat([o[0].detach().flatten(2).transpose(1, 2) for o in outputs], 1)[0]
    pred = torch.cat([(reg[:, :2] + grid) * stride[:, None] - stride[:, None] / 2,
                      (reg[:, :2] + grid) * stride[:, None] + stride[:, None] / 2], 1)
    obj = torch.cat([o[1].detach().flatten() for o in outputs])
    cls = torch.cat([o[2].detach().flatten(2).transpose(1, 2)[0] for o in outputs])
    fg, matched, _ = simota_assign(box, torch.tensor([0]), pred, obj, cls, centres, stride)
    assert 1 <= int(fg.sum()) <= 10
    assert (matched[fg] == 0).all()
    distance = (centres[fg] - torch.tensor([64.0, 64.0])).abs().max(1).values
    assert bool((distance <= 2.5 * stride[fg]).all())
    assert bool((distance < 24.0).all())  # inside the box's own extent around the centre


def test_each_cell_goes_to_at_most_one_gt_and_two_gts_both_get_cells():
    outputs = synthetic_outputs()
    boxes = torch.tensor([[8.0, 8.0, 56.0, 56.0], [72.0, 72.0, 120.0, 120.0]])
    target = [{"boxes": boxes, "labels": torch.tensor([0, 2])}]
    grid, centres, stride = cell_grid(outputs, STRIDES)
    reg = torch.cat([o[0].detach().flatten(2).transpose(1, 2) for o in outputs], 1)[0]
    from training.yolox_loss import decode_boxes

    pred = decode_boxes(reg, grid, stride)
    obj = torch.cat([o[1].detach().flatten() for o in outputs])
    cls = torch.cat([o[2].detach().flatten(2).transpose(1, 2)[0] for o in outputs])
    fg, matched, _ = simota_assign(boxes, target[0]["labels"], pred, obj, cls, centres, stride)
    assert set(matched[fg].tolist()) == {0, 1}
    total, parts = yolox_loss(outputs, target, STRIDES)
    total.backward()
    assert all(t.grad is not None for level in outputs for t in level)


def test_an_empty_image_gives_only_objectness_loss():
    outputs = synthetic_outputs()
    target = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    total, parts = yolox_loss(outputs, target, STRIDES)
    assert float(parts["cls"]) == 0.0 and float(parts["box"]) == 0.0
    assert float(parts["obj"]) > 0.0
    assert float(total.detach()) == pytest.approx(float(parts["obj"]))
    total.backward()  # graph connected
    assert float(outputs[0][1].grad.abs().sum()) > 0
