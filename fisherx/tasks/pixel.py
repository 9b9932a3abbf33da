"""Pixel-to-pixel tasks in the spirit of Taskonomy: one set of images, many targets made from them.

A :class:`PixelTask` turns the images of a source (scikit-learn digits, the MNIST subset) into (input, target)
pairs by one deterministic transform; every task of a family uses the same images and the same train / validation
/ test split, so they differ only in what is to be predicted. The transforms (all on images scaled to [0, 1]):

- ``autoencode``: target = input = the image;
- ``denoise``: input = image + 0.3·z (z standard normal, fixed by ``noise_seed`` and the image's index), target =
  the image;
- ``inpaint``: input = the image with its central square (half the side) set to 0, target = the image;
- ``edges``: target = Sobel gradient magnitude √(G_x² + G_y²)/4 (replicate padding);
- ``blur``: target = the image convolved with the 3×3 binomial kernel [1 2 1]ᵀ[1 2 1]/16;
- ``corners``: target = the Harris response max(det M − 0.05·(tr M)², 0) with M the binomial-smoothed structure
  tensor of the Sobel gradients, scaled by 1/max over the image (a corner heat map);
- ``rotate``: target = the image rotated by 90° (counter-clockwise).

``pairs`` reads (input, target) image pairs from the user's files instead: Taskonomy itself, one folder per task
(:mod:`fisherx.data.taskonomy`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .task import TaskData

TRANSFORMS = ("autoencode", "denoise", "inpaint", "edges", "blur", "corners", "rotate", "pairs")
FAMILY = ("autoencode", "denoise", "inpaint", "edges", "blur", "corners", "rotate")
PIXEL_PRESETS = ("pixel-digits", "pixel-mnist", "taskonomy")
NOISE_STD = 0.3
HARRIS_K = 0.05


@dataclass(frozen=True)
class PixelTaskData:
    """A pixel task's tensors: ``train``, ``val`` and ``test`` as ``(x, y)`` pairs of float32 N×C×H×W tensors
    (input, target)."""

    task: PixelTask
    train: tuple[torch.Tensor, torch.Tensor]
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    in_channels: int
    out_channels: int
    image_size: int
    origin: str = ""

    fingerprint = TaskData.fingerprint  # SHA-256 of every split's tensors (the same definition as TaskData's)


@dataclass(frozen=True)
class PixelTask:
    """One pixel-to-pixel task: ``transform`` (one of :data:`TRANSFORMS`) of the images of ``source``.

    ``seed`` drives the validation split (``val_fraction`` of the training images); ``max_train_per_label`` keeps
    at most that many training images of each source class (quick runs); ``image_size`` resizes the images
    first. ``noise_seed`` fixes the noise of ``denoise``. For ``transform="pairs"`` the images are read from
    ``data_dir/<name>/`` (see :func:`fisherx.data.taskonomy.read_pairs`), ``source`` is ignored.
    """

    name: str
    transform: str = "autoencode"
    source: str = "digits"
    seed: int = 0
    val_fraction: float = 0.1
    max_train_per_label: int | None = None
    image_size: int | None = None
    noise_seed: int = 1234

    def __post_init__(self) -> None:
        if self.transform not in TRANSFORMS:
            raise ValueError(
                f"pixel task {self.name!r}: unknown transform {self.transform!r}; choose one of {', '.join(TRANSFORMS)}"
            )
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"pixel task {self.name!r}: val_fraction must lie in [0, 1), got {self.val_fraction}")
        if self.max_train_per_label is not None and self.max_train_per_label < 1:
            raise ValueError(
                f"pixel task {self.name!r}: max_train_per_label must be >= 1, got {self.max_train_per_label}"
            )

    def config(self) -> dict:
        """The task as plain JSON-able data (for cache keys and results)."""
        return {"kind": "pixel", **asdict(self)}

    def load(self, data_dir=None) -> PixelTaskData:
        """Build the task's splits (files under ``data_dir`` where the source, or ``pairs``, needs them)."""
        if self.transform == "pairs":
            return self._load_pairs(data_dir)
        from ..data.sources import open_source

        src = open_source(self.source, data_dir, self.image_size)
        train, test = src.splits()
        keep = _cap_per_class(train.y, self.max_train_per_label, self.seed)
        tr_idx, va_idx = _val_split(keep, self.val_fraction, self.seed)
        images = [self._images(train.x[i], src.scale) for i in (tr_idx, va_idx)] + [self._images(test.x, src.scale)]
        # Noise is a function of (noise_seed, split, position), so every task sees the same noisy inputs.
        pairs = [self._pair(x, split) for split, x in enumerate(images)]
        x0 = pairs[0][0]
        return PixelTaskData(
            self,
            pairs[0],
            pairs[1],
            pairs[2],
            int(x0.shape[1]),
            int(pairs[0][1].shape[1]),
            int(x0.shape[-1]),
            src.origin,
        )

    def _images(self, x: np.ndarray, scale: float) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(scale)
        if self.image_size is not None and t.shape[-1] != self.image_size and t.shape[0] > 0:
            t = F.interpolate(
                t,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=self.image_size < t.shape[-1],
            ).clamp_(0.0, 1.0)
        return t.contiguous()

    def _pair(self, x: torch.Tensor, split: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.transform
        if t == "autoencode":
            return x, x.clone()
        if t == "denoise":
            g = torch.Generator().manual_seed(self.noise_seed * 3 + split)
            return x + NOISE_STD * torch.randn(x.shape, generator=g), x.clone()
        if t == "inpaint":
            return x * inpaint_mask(x.shape[-1]), x.clone()
        if t == "edges":
            gx, gy = sobel(x)
            return x, ((gx.square() + gy.square()).sqrt() / 4.0).contiguous()
        if t == "blur":
            return x, binomial_blur(x)
        if t == "corners":
            return x, harris(x)
        return x, torch.rot90(x, 1, dims=(2, 3)).contiguous()  # rotate

    def _load_pairs(self, data_dir) -> PixelTaskData:
        from ..data.taskonomy import read_pairs

        if data_dir is None:
            raise ValueError(
                f"pixel task {self.name!r} reads input/target pairs from files: give data_dir, the "
                "folder that holds one sub-folder per task"
            )
        pairs = read_pairs(data_dir, self.name, self.image_size)
        tr_idx, va_idx = _val_split(np.arange(pairs.train_input.shape[0]), self.val_fraction, self.seed)
        f = [
            torch.from_numpy(a).to(torch.float32).div_(255.0)
            for a in (pairs.train_input, pairs.train_target, pairs.test_input, pairs.test_target)
        ]
        tr = (f[0][tr_idx].contiguous(), f[1][tr_idx].contiguous())
        va = (f[0][va_idx].contiguous(), f[1][va_idx].contiguous())
        return PixelTaskData(
            self, tr, va, (f[2], f[3]), int(f[0].shape[1]), int(f[1].shape[1]), int(f[0].shape[-1]), pairs.origin
        )


def _cap_per_class(y: np.ndarray, cap: int | None, seed: int) -> np.ndarray:
    if cap is None:
        return np.arange(y.size)
    rng = np.random.default_rng([seed, 7])
    keep = [rng.permutation(np.flatnonzero(y == c))[:cap] for c in np.unique(y)]
    return np.sort(np.concatenate(keep))


def _val_split(idx: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    perm = idx[rng.permutation(idx.size)]
    k = min(int(round(idx.size * fraction)), max(idx.size - 1, 0))
    return np.sort(perm[k:]), np.sort(perm[:k])


def _filter(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Each channel of N×C×H×W ``x`` correlated with the 3×3 ``kernel``, replicate padding."""
    c = x.shape[1]
    w = kernel.to(x.dtype).expand(c, 1, 3, 3).contiguous()
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), w, groups=c)


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
_BINOMIAL = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16.0


def sobel(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The Sobel gradients (G_x, G_y) of every channel of an N×C×H×W image batch."""
    return _filter(x, _SOBEL_X), _filter(x, _SOBEL_X.t())


def binomial_blur(x: torch.Tensor) -> torch.Tensor:
    """Every channel convolved with the 3×3 binomial kernel [1 2 1]ᵀ[1 2 1]/16 (replicate padding)."""
    return _filter(x, _BINOMIAL)


def harris(x: torch.Tensor, k: float = HARRIS_K) -> torch.Tensor:
    """Harris corner heat map: R = max(det M − k·(tr M)², 0) per pixel, M = blur([G_x², G_x G_y; G_x G_y, G_y²]),
    divided by each image-channel's maximum (all-zero maps stay zero)."""
    gx, gy = sobel(x)
    a, b, c = binomial_blur(gx * gx), binomial_blur(gx * gy), binomial_blur(gy * gy)
    r = (a * c - b * b - k * (a + c).square()).clamp_min(0.0)
    peak = r.amax(dim=(2, 3), keepdim=True)
    return torch.where(peak > 0, r / peak.clamp_min(1e-12), r).contiguous()


def inpaint_mask(side: int) -> torch.Tensor:
    """The fixed in-painting mask: 1 everywhere but a central square of side ⌈side/2⌉, which is 0."""
    m = torch.ones(side, side)
    h = (side + 1) // 2
    lo = (side - h) // 2
    m[lo : lo + h, lo : lo + h] = 0.0
    return m


def pixel_tasks(source: str = "digits", transforms=FAMILY, **options) -> list[PixelTask]:
    """The pixel family on one source: a :class:`PixelTask` per transform, named by it (options are passed on)."""
    return [PixelTask(t, t, source, **options) for t in transforms]


def pixel_preset(
    name: str,
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    max_train_per_label: int | None = None,
    image_size: int | None = None,
    data_dir=None,
) -> list[PixelTask]:
    """The built-in pixel families: "pixel-digits" (scikit-learn digits), "pixel-mnist" (the MNIST subset) — the
    seven transforms of :data:`FAMILY` — and "taskonomy": one ``pairs`` task per sub-folder of ``data_dir``."""
    options = dict(seed=seed, val_fraction=val_fraction, max_train_per_label=max_train_per_label, image_size=image_size)
    if name == "taskonomy":
        from ..data.taskonomy import task_folders

        if data_dir is None:
            raise ValueError(
                "preset 'taskonomy' reads your files: give data_dir, the folder with one sub-folder per task"
            )
        return [PixelTask(n, "pairs", "taskonomy", **options) for n in task_folders(data_dir)]
    if name not in PIXEL_PRESETS:
        raise ValueError(f"unknown pixel preset {name!r}; choose one of {', '.join(PIXEL_PRESETS)}")
    return pixel_tasks(name.split("-", 1)[1], **options)
