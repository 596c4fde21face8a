"""GFPGAN v1.4 ("clean" architecture), written for dubline and state-dict compatible with the
official ``GFPGANv1.4.pth``.

The network is a U-Net whose encoder turns a 512×512 face into per-layer StyleGAN2 style codes
and whose decoder produces, at every resolution from 8 to 512, a spatial scale and shift (SFT,
spatial feature transform). A StyleGAN2 generator (the "clean" variant: plain bilinear resampling,
no compiled CUDA ops) renders the restored face from those codes while the SFT conditions pin it to
the input. v1.4 uses ``channel_multiplier=2``, ``different_w=True`` (16 style codes of 512),
``input_is_latent=True`` (the style MLP exists in the weights but is bypassed) and
``sft_half=True`` (SFT acts on the second half of the generator's channels).

Module and parameter names follow the official checkpoint exactly, so ``load_state_dict(strict=True)``
accepts its ``params_ema``; ``tests/test_enhance.py`` checks keys, shapes and outputs against the
reference implementation from the gfpgan package source. Compared with the reference:

- the modulated convolution modulates the activations instead of building one weight per sample
  (StyleGAN2's non-fused form): the same function, but one ordinary convolution for the whole
  batch, which is what cuDNN and half precision want;
- ``forward`` returns only the restored image (the U-Net's intermediate RGB heads, used by the
  training losses, are kept as parameters but not run);
- noise injection uses the stored noise maps by default, so a face looks the same from one video
  frame to the next (the official inference draws fresh noise per call).

Images are RGB, N×3×512×512, in [-1, 1] (``x / 127.5 - 1``), both in and out.
"""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from dubline.schemas import storage

#: Side of the square face the v1.4 weights were trained on.
OUT_SIZE = 512
#: Width of one style code.
STYLE_DIM = 512
_SLOPE = 0.2  # leaky ReLU slope everywhere in the network


def _leaky(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, _SLOPE)


def _resample(x: torch.Tensor, factor: float) -> torch.Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


def decoder_channels(channel_multiplier: int = 2, narrow: float = 1.0) -> dict[int, int]:
    """Feature channels of the StyleGAN2 generator per resolution (4 ... 1024)."""
    wide = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
            256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {res: int(c * narrow) for res, c in wide.items()}


# ---------------------------------------------------------------------------------------------
# StyleGAN2 generator ("clean") with SFT conditions


class PixelNorm(nn.Module):
    """Style code normalisation (first entry of the style MLP; it has no parameters)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×C -> N×C with unit mean square per row."""
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """Convolution whose input channels are scaled per sample by a style, then (optionally)
    demodulated so each output channel has unit expected variance. No bias.

    Parameters: ``modulation`` (Linear style -> per-input-channel scale) and ``weight``
    (1×C_out×C_in×k×k, stored with the leading 1 as in the official checkpoint).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False, eps: float = 1e-8):
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.demodulate = demodulate
        self.upsample = upsample
        self.eps = eps
        self.modulation = nn.Linear(style_dim, in_channels)
        nn.init.kaiming_normal_(self.modulation.weight, a=0, mode="fan_in", nonlinearity="linear")
        nn.init.ones_(self.modulation.bias)  # styles start as the identity scale
        self.weight = nn.Parameter(
            torch.randn(1, out_channels, in_channels, kernel_size, kernel_size) / math.sqrt(in_channels * kernel_size**2)
        )

    def forward(self, x: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """x: N×C_in×H×W, style: N×style_dim -> N×C_out×H'×W' (H' = 2H when upsampling)."""
        scale = self.modulation(style)  # N×C_in
        if self.demodulate and x.dtype == torch.float16:
            # Demodulation is invariant to the style's magnitude: normalise it so the
            # un-demodulated activations cannot overflow half precision.
            scale = scale / scale.abs().amax(dim=1, keepdim=True).clamp_min(1e-4)
        weight = self.weight[0]  # C_out×C_in×k×k
        if self.upsample:
            x = _resample(x, 2.0)
        out = F.conv2d(x * scale[:, :, None, None].to(x.dtype), weight.to(x.dtype), padding=self.kernel_size // 2)
        if self.demodulate:
            # |w ⊙ s|² summed over (C_in, k, k) for every sample and output channel, in fp32.
            energy = weight.float().pow(2).sum(dim=(2, 3))  # C_out×C_in
            demod = torch.rsqrt(scale.float().pow(2) @ energy.t() + self.eps)  # N×C_out
            out = out * demod[:, :, None, None].to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"demodulate={self.demodulate}, upsample={self.upsample}")


class StyleConv(nn.Module):
    """Modulated 3×3 convolution, scaled noise, bias and leaky ReLU.

    Parameters: ``modulated_conv``, ``weight`` (shape 1: noise strength), ``bias`` (1×C_out×1×1).
    """

    def __init__(self, in_channels: int, out_channels: int, style_dim: int, upsample: bool = False):
        super().__init__()
        self.modulated_conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, demodulate=True, upsample=upsample)
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """x: N×C_in×H×W, style: N×style_dim, noise: N|1×1×H'×W' or None (fresh) -> N×C_out×H'×W'."""
        out = self.modulated_conv(x, style) * math.sqrt(2.0)  # gain of the leaky ReLU that follows
        if noise is None:
            noise = torch.randn(out.shape[0], 1, *out.shape[2:], device=out.device, dtype=out.dtype)
        out = out + self.weight.to(out.dtype) * noise.to(out.dtype) + self.bias.to(out.dtype)
        return _leaky(out)


class ToRGB(nn.Module):
    """1×1 modulated convolution to RGB (no demodulation) plus bias, added to the upsampled
    RGB of the previous resolution. Parameters: ``modulated_conv``, ``bias`` (1×3×1×1)."""

    def __init__(self, in_channels: int, style_dim: int, upsample: bool = True):
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        """x: N×C×H×W, style: N×style_dim, skip: N×3×H/2×W/2 (or N×3×H×W without upsampling) -> N×3×H×W."""
        out = self.modulated_conv(x, style) + self.bias.to(x.dtype)
        if skip is not None:
            out = out + (_resample(skip, 2.0) if self.upsample else skip)
        return out


class ConstantInput(nn.Module):
    """The generator's learned 4×4 starting tensor. Parameter: ``weight`` (1×C×4×4)."""

    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        """-> batch×C×4×4."""
        return self.weight.expand(batch, -1, -1, -1)


class StyleGAN2Decoder(nn.Module):
    """StyleGAN2 generator with spatial feature transforms from the U-Net (``stylegan_decoder``).

    ``num_latent = 2·log2(size) − 2`` style codes drive, in order: ``style_conv1``, ``to_rgb1``,
    then per resolution 8 ... size the upsampling conv, the second conv and the ToRGB (each
    ToRGB shares its code index with the next resolution's first conv). ``num_layers =
    2·(log2(size) − 2) + 1`` noise maps are stored as buffers ``noises.noise{i}``.
    """

    def __init__(self, out_size: int = OUT_SIZE, style_dim: int = STYLE_DIM, num_mlp: int = 8,
                 channel_multiplier: int = 2, narrow: float = 1.0, sft_half: bool = True):
        super().__init__()
        self.style_dim = style_dim
        self.sft_half = sft_half
        self.log_size = int(math.log2(out_size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.num_latent = self.log_size * 2 - 2
        channels = decoder_channels(channel_multiplier, narrow)

        # Mapping network: PixelNorm, then (Linear, LeakyReLU) × num_mlp -> indices 1, 3, 5, ...
        layers: list[nn.Module] = [PixelNorm()]
        for _ in range(num_mlp):
            linear = nn.Linear(style_dim, style_dim)
            nn.init.kaiming_normal_(linear.weight, a=_SLOPE, mode="fan_in", nonlinearity="leaky_relu")
            nn.init.zeros_(linear.bias)
            layers += [linear, nn.LeakyReLU(_SLOPE)]
        self.style_mlp = nn.Sequential(*layers)

        self.constant_input = ConstantInput(channels[4])
        self.style_conv1 = StyleConv(channels[4], channels[4], style_dim)
        self.to_rgb1 = ToRGB(channels[4], style_dim, upsample=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channels = channels[4]
        for level in range(3, self.log_size + 1):
            out_channels = channels[2**level]
            self.style_convs.append(StyleConv(in_channels, out_channels, style_dim, upsample=True))
            self.style_convs.append(StyleConv(out_channels, out_channels, style_dim))
            self.to_rgbs.append(ToRGB(out_channels, style_dim, upsample=True))
            in_channels = out_channels

        self.noises = nn.Module()
        for i in range(self.num_layers):
            side = 2 ** ((i + 5) // 2)  # 4, 8, 8, 16, 16, ...
            self.noises.register_buffer(f"noise{i}", torch.randn(1, 1, side, side))

    def stored_noise(self) -> list[torch.Tensor]:
        return [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]

    def forward(self, styles: torch.Tensor, conditions: list[torch.Tensor], input_is_latent: bool = True,
                randomize_noise: bool = False) -> torch.Tensor:
        """styles: N×num_latent×style_dim (one code per layer) or N×style_dim (shared);
        conditions: [scale, shift] per resolution 8 ... size (N×C_sft×r×r) -> N×3×size×size."""
        if not input_is_latent:
            styles = self.style_mlp(styles) if styles.ndim == 2 else self.style_mlp(styles.flatten(0, 1)).view_as(styles)
        latent = styles if styles.ndim == 3 else styles[:, None, :].expand(-1, self.num_latent, -1)
        noise: list[torch.Tensor | None] = [None] * self.num_layers if randomize_noise else self.stored_noise()

        out = self.style_conv1(self.constant_input(latent.shape[0]), latent[:, 0], noise[0])
        rgb = self.to_rgb1(out, latent[:, 1])
        for level, to_rgb in enumerate(self.to_rgbs):
            k = 2 * level + 1  # style / noise index of this resolution's first conv
            out = self.style_convs[2 * level](out, latent[:, k], noise[k])
            if 2 * level + 1 < len(conditions):
                scale, shift = conditions[2 * level], conditions[2 * level + 1]
                if self.sft_half:
                    kept, modulated = out.chunk(2, dim=1)
                    out = torch.cat([kept, modulated * scale + shift], dim=1)
                else:
                    out = out * scale + shift
            out = self.style_convs[2 * level + 1](out, latent[:, k + 1], noise[k + 1])
            rgb = to_rgb(out, latent[:, k + 2], rgb)
        return rgb


# ---------------------------------------------------------------------------------------------
# U-Net encoder / decoder


class ResBlock(nn.Module):
    """Residual block that halves (``down``) or doubles (``up``) the resolution bilinearly.

    Parameters: ``conv1`` (3×3, C_in -> C_in), ``conv2`` (3×3, C_in -> C_out), ``skip`` (1×1, no bias).
    """

    def __init__(self, in_channels: int, out_channels: int, mode: str):
        super().__init__()
        if mode not in ("down", "up"):
            raise ValueError(f"ResBlock mode must be 'down' or 'up', not {mode!r}")
        self.factor = 0.5 if mode == "down" else 2.0
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """N×C_in×H×W -> N×C_out×(H·f)×(W·f)."""
        out = _leaky(self.conv2(_resample(_leaky(self.conv1(x)), self.factor)))
        return out + self.skip(_resample(x, self.factor))


def _sft_branch(channels: int, out_channels: int) -> nn.Sequential:
    """conv 3×3 -> leaky ReLU -> conv 3×3 (indices 0 and 2 carry the weights)."""
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.LeakyReLU(_SLOPE),
                         nn.Conv2d(channels, out_channels, 3, padding=1))


class GFPGANv1Clean(nn.Module):
    """GFPGAN v1 "clean": U-Net + StyleGAN2 decoder with SFT. Defaults are the v1.4 configuration.

    ``forward``: N×3×S×S in [-1, 1] (S = ``out_size``) -> N×3×S×S restored, about [-1, 1]
    (not clamped).
    """

    def __init__(self, out_size: int = OUT_SIZE, num_style_feat: int = STYLE_DIM, channel_multiplier: int = 2,
                 num_mlp: int = 8, input_is_latent: bool = True, different_w: bool = True, narrow: float = 1.0,
                 sft_half: bool = True):
        super().__init__()
        self.out_size = out_size
        self.input_is_latent = input_is_latent
        self.different_w = different_w
        self.num_style_feat = num_style_feat
        self.log_size = int(math.log2(out_size))
        if 2**self.log_size != out_size:
            raise ValueError(f"out_size must be a power of two, not {out_size}")
        unet = decoder_channels(channel_multiplier, narrow * 0.5)  # the U-Net has half the generator's width
        levels = range(3, self.log_size + 1)  # resolutions 8 ... out_size as powers of two

        self.conv_body_first = nn.Conv2d(3, unet[out_size], 1)
        self.conv_body_down = nn.ModuleList()
        channels = unet[out_size]
        for level in range(self.log_size, 2, -1):
            self.conv_body_down.append(ResBlock(channels, unet[2 ** (level - 1)], "down"))
            channels = unet[2 ** (level - 1)]
        self.final_conv = nn.Conv2d(channels, unet[4], 3, padding=1)

        self.conv_body_up = nn.ModuleList()
        channels = unet[4]
        for level in levels:
            self.conv_body_up.append(ResBlock(channels, unet[2**level], "up"))
            channels = unet[2**level]
        # Intermediate RGB heads: trained with the pyramid loss, not needed to restore a face.
        self.toRGB = nn.ModuleList(nn.Conv2d(unet[2**level], 3, 1) for level in levels)

        codes = (self.log_size * 2 - 2) if different_w else 1
        self.final_linear = nn.Linear(unet[4] * 4 * 4, codes * num_style_feat)
        self.stylegan_decoder = StyleGAN2Decoder(out_size, num_style_feat, num_mlp, channel_multiplier, narrow, sft_half)

        sft_channels = (lambda c: c) if sft_half else (lambda c: 2 * c)
        self.condition_scale = nn.ModuleList(_sft_branch(unet[2**lv], sft_channels(unet[2**lv])) for lv in levels)
        self.condition_shift = nn.ModuleList(_sft_branch(unet[2**lv], sft_channels(unet[2**lv])) for lv in levels)

    def forward(self, x: torch.Tensor, randomize_noise: bool = False) -> torch.Tensor:
        """x: N×3×S×S in [-1, 1] -> N×3×S×S. ``randomize_noise=False`` uses the stored noise maps."""
        if x.shape[-2:] != (self.out_size, self.out_size):
            raise ValueError(f"GFPGAN expects N×3×{self.out_size}×{self.out_size} input, got {tuple(x.shape)}")
        feat = _leaky(self.conv_body_first(x))
        skips: list[torch.Tensor] = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = _leaky(self.final_conv(feat))  # N×C×4×4

        styles = self.final_linear(feat.flatten(1))
        styles = styles.view(x.shape[0], -1, self.num_style_feat) if self.different_w else styles

        conditions: list[torch.Tensor] = []
        for up, scale, shift, skip in zip(self.conv_body_up, self.condition_scale, self.condition_shift, reversed(skips)):
            feat = up(feat + skip)
            conditions += [scale(feat), shift(feat)]
        return self.stylegan_decoder(styles, conditions, input_is_latent=self.input_is_latent,
                                     randomize_noise=randomize_noise)

    @torch.inference_mode()
    def restore(self, images: torch.Tensor) -> torch.Tensor:
        """Inference entry point: N×3×S×S in [-1, 1] (any float dtype) -> N×3×S×S clamped to [-1, 1],
        in the network's dtype, with the stored (deterministic) noise."""
        dtype = next(self.parameters()).dtype
        return self(images.to(dtype)).clamp_(-1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Weights


def _read_state_dict(url: str) -> dict[str, torch.Tensor]:
    """Tensors from a ``.pth``/``.pt`` (torch.load, weights_only) or ``.safetensors`` file at ``url``.

    Local files are memory-mapped; other URLs are read through fsspec into memory.
    """
    try:
        with storage.open_url(url, "rb") as f:
            head = f.read(9)
    except OSError as error:
        raise ValueError(f"GFPGAN weights not readable: {url} ({type(error).__name__}: {error})") from None
    # safetensors: 8-byte little-endian header length, then the JSON header
    is_safetensors = url.lower().endswith(".safetensors") or head[8:9] == b"{"
    path = storage.local_path(url)
    try:
        if is_safetensors:
            from safetensors.torch import load as load_safetensors, load_file

            loaded: object = load_file(path) if path else load_safetensors(storage.read_bytes(url))
        else:
            source = path if path else io.BytesIO(storage.read_bytes(url))
            mmap = bool(path) and head[:2] == b"PK"  # only zip-format checkpoints can be memory-mapped
            loaded = torch.load(source, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch and safetensors raise many kinds for a damaged file
        kind = "safetensors" if is_safetensors else "torch (.pth)"
        if isinstance(error, pickle.UnpicklingError):
            # torch's own text suggests weights_only=False, which would run code from the file: never.
            detail = ("not a plain tensor checkpoint: the file is damaged, is no checkpoint at all, or holds "
                      "Python objects, which are never unpickled")
        else:
            detail = f"{type(error).__name__}: {str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        raise ValueError(f"{url}: not a readable {kind} GFPGAN weights file ({detail})") from error
    if isinstance(loaded, Mapping):
        for key in ("params_ema", "params"):  # basicsr checkpoints: EMA weights are the ones to use
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ValueError(f"{url}: holds no GFPGAN state dict (expected tensors, optionally under 'params_ema')")
    state = dict(loaded)
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ValueError naming ``source`` and the first offending keys unless ``state`` fits ``model``."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
              if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        def first(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")

        problems = [f"{len(missing)} missing keys: {first(missing)}" if missing else "",
                    f"{len(unexpected)} unexpected keys: {first(unexpected)}" if unexpected else "",
                    f"{len(shapes)} shape mismatches: {first(shapes)}" if shapes else ""]
        raise ValueError(f"{source}: not GFPGAN v1.4 (clean) weights; " + "; ".join(p for p in problems if p))


def load_gfpgan(url_or_path: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> GFPGANv1Clean:
    """Build the v1.4 network and load weights from a local path or fsspec URL, in eval mode.

    Accepts the official ``GFPGANv1.4.pth`` (tensors under ``params_ema``; ``params`` is used when
    there is no EMA copy; a bare state dict works too) or a ``.safetensors`` file of the same keys.
    Raises ValueError naming the file for an unreadable file or mismatched keys/shapes.
    """
    state = _read_state_dict(str(url_or_path))
    with torch.device("meta"):  # no random initialisation: every tensor comes from the file
        model = GFPGANv1Clean()
    check_state_dict(model, state, str(url_or_path))
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False)
