"""training.soup on SYNTHETIC checkpoints (random weights of the real fusion network)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training import soup
from training.models import build_fusion


def _checkpoint(path: Path, seed: int, fusion: str = "realtime_global") -> dict:
    torch.manual_seed(seed)
    net = build_fusion(fusion)
    checkpoint = {"architecture": {"fusion": fusion}, "fusion": net.state_dict(),
                  "detector": {"w": torch.full((2,), float(seed))}, "step": 10 * seed,
                  "optimizers": {"x": 1}, "metrics": {"score": 0.5}}
    torch.save(checkpoint, path)
    return checkpoint


def test_the_soup_is_the_mean_of_the_fusion_weights_and_the_rest_of_the_first(
    tmp_path: Path,
) -> None:
    members = [_checkpoint(tmp_path / f"{i}.pt", i) for i in range(3)]
    out = tmp_path / "soup" / "best.pt"
    assert soup.main([str(tmp_path / f"{i}.pt") for i in range(3)] + ["--out", str(out)]) == 0
    result = torch.load(out, weights_only=False)
    for key, tensor in result["fusion"].items():
        if tensor.is_floating_point():
            expected = sum(m["fusion"][key].double() for m in members) / 3
            torch.testing.assert_close(tensor, expected.to(tensor.dtype))
        else:
            assert torch.equal(tensor, members[0]["fusion"][key])
    assert torch.equal(result["detector"]["w"], members[0]["detector"]["w"])
    assert "optimizers" not in result and "metrics" not in result
    assert result["soup"]["steps"] == [0, 10, 20] and len(result["soup"]["members"]) == 3
    # the averaged weights load into the network they came from
    build_fusion("realtime_global").load_state_dict(result["fusion"])


def test_members_of_other_architectures_are_refused(tmp_path: Path, capsys) -> None:
    _checkpoint(tmp_path / "a.pt", 0, "realtime_global")
    _checkpoint(tmp_path / "b.pt", 1, "realtime")
    assert soup.main([str(tmp_path / "a.pt"), str(tmp_path / "b.pt"),
                      "--out", str(tmp_path / "s.pt")]) == 2
    assert "architectures differ" in capsys.readouterr().err
    with pytest.raises(ValueError, match="at least one"):
        soup.soup_state([])
