"""Pixel-to-pixel tasks: the built-in family is deterministic and its transforms are what they say; the
Taskonomy loader reads input/target pairs from PNG files; the autoencoder ε-network fits any input size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fisherx.models import build, seeded
from fisherx.tasks import PixelTask, preset
from fisherx.tasks.pixel import FAMILY, harris, inpaint_mask, sobel


@pytest.mark.parametrize("size", [5, 8, 9, 16, 28])
def test_autoencoder_output_has_the_target_shape_for_any_size(size):
    with seeded(0):
        m = build("autoencoder", 3, 2, size)
    out = m(torch.randn(4, 3, size, size))
    assert out.shape == (4, 2, size, size) and torch.isfinite(out).all()
    conv = m.encoder[0]
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
        3,
        16,
        (5, 5),
        (4, 4),
        (2, 2),
    )
    assert [m.encoder[3].out_features, m.encoder[5].out_features] == [512, 128]


def test_pixel_preset_is_deterministic_and_shares_its_images():
    tasks = preset("pixel-digits", max_train_per_label=12)
    assert [t.name for t in tasks] == list(FAMILY) and len(tasks) >= 6
    first = [t.load() for t in tasks]
    again = [t.load() for t in preset("pixel-digits", max_train_per_label=12)]
    assert [d.fingerprint() for d in first] == [d.fingerprint() for d in again]
    assert len({d.fingerprint() for d in first}) == len(tasks)  # seven different tasks
    by = {d.task.name: d for d in first}
    clean = by["autoencode"].train[0]
    assert clean.shape[0] == 108  # 12 images of each of the 10 digits, 10% held out for validation
    for name in ("denoise", "inpaint", "autoencode"):  # the clean image is the target
        assert torch.equal(by[name].train[1], clean)
    for name in ("edges", "blur", "corners", "rotate"):  # the clean image is the input
        assert torch.equal(by[name].train[0], clean)
    assert torch.equal(by["rotate"].test[1], torch.rot90(by["autoencode"].test[0], 1, dims=(2, 3)))
    mask = inpaint_mask(8)
    assert int((mask == 0).sum()) == 16 and torch.equal(by["inpaint"].val[0], by["autoencode"].val[0] * mask)
    noise = by["denoise"].train[0] - clean
    assert 0.25 < float(noise.std()) < 0.35  # the documented σ = 0.3
    corners = by["corners"].test[1]
    assert float(corners.min()) >= 0.0 and float(corners.max()) <= 1.0 + 1e-6
    # Another split seed moves the validation images; another size resizes them.
    other = PixelTask("autoencode", "autoencode", seed=1, max_train_per_label=12).load()
    assert not torch.equal(other.val[0], by["autoencode"].val[0])
    assert PixelTask("x", "blur", image_size=16, max_train_per_label=2).load().train[1].shape[-1] == 16


def test_filters_on_known_images():
    flat = torch.ones(1, 1, 6, 6)
    gx, gy = sobel(flat)
    assert float(gx.abs().max()) == 0 and float(gy.abs().max()) == 0
    assert float(harris(flat).abs().max()) == 0
    ramp = torch.arange(6.0).repeat(6, 1)[None, None]  # grows by 1 per column
    gx, gy = sobel(ramp)
    assert torch.allclose(gx[..., 1:-1], torch.full_like(gx[..., 1:-1], 8.0)) and float(gy.abs().max()) == 0
    square = torch.zeros(1, 1, 12, 12)
    square[..., 3:9, 3:9] = 1.0
    r = harris(square)[0, 0]
    corner, edge_mid, centre = float(r[3, 3]), float(r[3, 6]), float(r[6, 6])
    assert corner > 0.5 and corner > 5 * edge_mid and centre == 0.0


def test_bad_pixel_task_errors():
    with pytest.raises(ValueError, match="unknown transform 'sharpen'"):
        PixelTask("x", "sharpen")
    with pytest.raises(ValueError, match="unknown pixel preset"):
        from fisherx.tasks.pixel import pixel_preset

        pixel_preset("pixel-cifar")
    with pytest.raises(ValueError, match="give data_dir"):
        PixelTask("depth", "pairs").load()


def _write_png(path, array):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_taskonomy_folders_of_input_target_pairs(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(5):  # depth: RGB inputs, grey targets, one folder per side, split 80/20 by the loader
        rgb = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
        _write_png(tmp_path / "depth" / "input" / f"img{i}.png", rgb)
        _write_png(tmp_path / "depth" / "target" / f"img{i}.png", rgb[..., 0].copy())
    for split, n in (("train", 3), ("test", 2)):  # edges: explicit train/test folders
        for i in range(n):
            rgb = rng.integers(0, 256, (10, 10, 3), dtype=np.uint8)
            _write_png(tmp_path / "edges" / split / "input" / f"{split}{i}.png", rgb)
            _write_png(tmp_path / "edges" / split / "target" / f"{split}{i}.png", rgb)
    from fisherx.tasks.pixel import pixel_preset

    tasks = pixel_preset("taskonomy", data_dir=tmp_path, image_size=10, val_fraction=0.0)
    assert [t.name for t in tasks] == ["depth", "edges"]
    depth, edges = (t.load(tmp_path) for t in tasks)
    assert depth.train[0].shape == (4, 3, 10, 10) and depth.test[0].shape == (1, 3, 10, 10)
    assert depth.out_channels == 1 and depth.train[1].shape == (4, 1, 10, 10)
    # The target is the red channel of the input: pairs stay paired through the split.
    assert torch.allclose(depth.train[1][:, 0], depth.train[0][:, 0], atol=1 / 255)
    assert edges.train[0].shape[0] == 3 and edges.test[0].shape[0] == 2 and edges.out_channels == 3
    assert float(edges.train[0].max()) <= 1.0
    (tmp_path / "depth" / "target" / "img4.png").unlink()
    with pytest.raises(FileNotFoundError, match="no partner in input/ or target/ .*'img4'"):
        tasks[0].load(tmp_path)
    with pytest.raises(FileNotFoundError, match="holds no task folders"):
        pixel_preset("taskonomy", data_dir=tmp_path / "depth")
