"""How close a reconstruction is to its patient's image: re-identification, PSNR and SSIM.

Every image is standardised per image first (zero mean, unit variance), as privmed's readers
prepare them, so a reconstruction is judged by its content, not by its brightness scale.
Re-identification is the verdict: on homogeneous chest X-rays the population's mean image
already scores a high PSNR, while a much noisier reconstruction can still single out its patient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# SSIM constants of Wang et al. (2004), relative to the data range.
_K1, _K2 = 0.01, 0.03
_WINDOW, _WINDOW_SIGMA = 11, 1.5


def standardise(images: torch.Tensor) -> torch.Tensor:
    """Each image ``[N, C, H, W]`` to zero mean and unit standard deviation."""
    flat = images.flatten(1)
    mean, std = flat.mean(1, keepdim=True), flat.std(1, keepdim=True).clamp_min(1e-8)
    return ((flat - mean) / std).view_as(images)


def reidentified(reconstructions: torch.Tensor, pool: torch.Tensor, target_index: torch.Tensor) -> torch.Tensor:
    """Whether each reconstruction is strictly closer (MSE) to its own target than to every other pool image.

    Parameters
    ----------
    reconstructions : torch.Tensor
        ``[T, C, H, W]``.
    pool : torch.Tensor
        ``[P, C, H, W]`` the site's images, the targets among them.
    target_index : torch.Tensor
        ``[T]`` position of each reconstruction's target in ``pool``.
    """
    rec, ref = standardise(reconstructions).flatten(1), standardise(pool).flatten(1)
    mse = torch.cdist(rec, ref).pow(2) / rec.shape[1]  # [T, P]
    own = mse.gather(1, target_index.view(-1, 1))
    others = mse.scatter(1, target_index.view(-1, 1), float("inf"))
    return (own < others.min(1, keepdim=True).values).view(-1)


def psnr(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image after standardisation, with the target's value range as peak."""
    x, y = standardise(images), standardise(targets)
    mse = (x - y).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    peak = y.flatten(1).amax(1) - y.flatten(1).amin(1)
    return 10 * torch.log10(peak.pow(2) / mse)


def ssim(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """SSIM per image (Wang et al. 2004: 11×11 Gaussian window, σ = 1.5), after standardisation."""
    x, y = standardise(images).double(), standardise(targets).double()
    channels = x.shape[1]
    axis = torch.arange(_WINDOW, dtype=torch.float64) - (_WINDOW - 1) / 2
    g = torch.exp(-(axis**2) / (2 * _WINDOW_SIGMA**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :]).expand(channels, 1, _WINDOW, _WINDOW).contiguous()
    peak = (y.flatten(1).amax(1) - y.flatten(1).amin(1)).view(-1, 1, 1, 1)
    c1, c2 = (_K1 * peak) ** 2, (_K2 * peak) ** 2

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)

    mu_x, mu_y = blur(x), blur(y)
    var_x, var_y = blur(x * x) - mu_x**2, blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    score = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return score.flatten(1).mean(1).float()
