from pathlib import Path

import numpy as np
import pytest
import torch
from spandrel.architectures.ESRGAN import ESRGAN

from lisegagr_core.errors import InputError
from lisegagr_core.superres import load_upscaler


def test_a_real_esrgan_architecture_from_disk_upscales_by_its_scale(tmp_path: Path) -> None:
    torch.manual_seed(0)
    weights = tmp_path / "esrgan_x4.pth"
    torch.save(ESRGAN(num_filters=8, num_blocks=1, scale=4).state_dict(), weights)
    upscale, scale, description = load_upscaler(weights, device="cpu")
    assert scale == 4 and "ESRGAN" in description
    out = upscale(np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    assert out.shape == (80, 120, 3) and out.dtype == np.uint8


def test_a_file_that_is_no_model_is_refused(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.pth"
    torch.save({"weight": torch.zeros(3)}, bogus)
    with pytest.raises(InputError, match=r"bogus\.pth"):
        load_upscaler(bogus)
    with pytest.raises(InputError, match="no such"):
        load_upscaler(tmp_path / "missing.pth")
