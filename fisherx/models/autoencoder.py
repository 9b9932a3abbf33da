"""The papers' ε-network for pixel-to-pixel tasks: a small convolutional autoencoder.

Encoder: one convolution (in → 16 channels, kernel 5, padding 2, stride 4), ReLU, then two linear layers
(→ 512 → 128); the decoder mirrors it (128 → 512 → 16·h·w, a transposed convolution back to the input's side), so
the output has the target's shape C_out × H × W. It is sized to the input: h = ⌊(H − 1)/4⌋ + 1 is the strided
convolution's output side, and the transposed convolution's ``output_padding`` restores exactly H.
"""

from __future__ import annotations

import torch
from torch import nn


class Autoencoder(nn.Module):
    """conv 5×5/4 (16) – ReLU – linear 512 – ReLU – linear 128 – ReLU – linear 512 – ReLU – linear 16·h·w – ReLU –
    transposed conv 5×5/4 (``out_channels``); input N×``in_channels``×S×S, output N×``out_channels``×S×S."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_size: int,
        width: int = 16,
        hidden: tuple[int, int] = (512, 128),
    ) -> None:
        super().__init__()
        side = (image_size - 1) // 4 + 1  # conv(k=5, p=2, s=4): ⌊(S + 4 − 5)/4⌋ + 1
        pad = image_size - (4 * (side - 1) - 4 + 5)  # what the transposed conv must add to come back to S
        self.side, self.width, self.out_channels, self.image_size = side, width, out_channels, image_size
        flat = width * side * side
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, width, 5, stride=4, padding=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(flat, hidden[0]),
            nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]),
        )
        self.decoder_fc = nn.Sequential(
            nn.ReLU(), nn.Linear(hidden[1], hidden[0]), nn.ReLU(), nn.Linear(hidden[0], flat), nn.ReLU()
        )
        self.decoder_conv = nn.ConvTranspose2d(width, out_channels, 5, stride=4, padding=2, output_padding=pad)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.decoder_fc(self.encoder(x))
        return self.decoder_conv(z.view(z.shape[0], self.width, self.side, self.side))


def autoencoder(in_channels: int, out_channels: int, image_size: int) -> Autoencoder:
    """The papers' autoencoder ε-network for ``image_size``-sided images (``out_channels``: the target's channels;
    it stands where a classifier's number of classes stands in :func:`fisherx.models.build`)."""
    return Autoencoder(in_channels, out_channels, image_size)
