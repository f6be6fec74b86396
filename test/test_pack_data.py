"""training.pack_data: a packed data root selects the same split names as ../shared/data and
holds the pairs (re-encoded or copied) and their labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ros2_bilevel_fusion.evaluation.splits import split_names


def test_packed_splits_keep_names_labels_and_pixels(shared_data: Path, tmp_path: Path) -> None:
    cv2 = pytest.importorskip("cv2")
    from training.pack_data import pack_splits

    out = tmp_path / "data"
    counts = pack_splits(["msrs_det:val", "roadscene:val"], shared_data, out, jpeg_quality=95)
    for split in ("msrs_det:val", "roadscene:val"):
        names = split_names(split, out)
        assert names == split_names(split, shared_data) and counts[split] == len(names) > 0
    # other splits of the same data sets are not in the pack
    assert split_names("msrs_det:train", out) == []
    name = split_names("msrs_det:val", shared_data)[0]
    unchanged = cv2.IMREAD_UNCHANGED
    original = cv2.imread(str(shared_data / "msrs_det" / "ir" / f"{name}.png"), unchanged)
    packed = cv2.imread(str(out / "msrs_det" / "ir" / f"{name}.jpg"), unchanged)
    assert packed.shape == original.shape
    assert float(np.abs(packed.astype(int) - original.astype(int)).mean()) < 1.0
    for annotation in ("fusion", "infrared", "visible"):
        source = shared_data / "msrs_det" / "labels" / annotation / f"{name}.txt"
        if source.is_file():
            packed_label = out / "msrs_det" / "labels" / annotation / f"{name}.txt"
            assert packed_label.read_bytes() == source.read_bytes()
    # RoadScene is JPEG already: copied byte for byte, not re-encoded
    road = split_names("roadscene:val", shared_data)[0]
    original_bytes = (shared_data / "roadscene" / "vi" / f"{road}.jpg").read_bytes()
    assert (out / "roadscene" / "vi" / f"{road}.jpg").read_bytes() == original_bytes
