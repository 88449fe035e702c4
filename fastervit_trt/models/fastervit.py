"""FasterViT (Hatamizadeh et al., 2023), written for deployment.

Stages 1-2 are dense Conv-BN residual blocks; stages 3-4 are transformer blocks over
windows with hierarchical attention (HAT): each window gets ``ct_size**2`` carrier tokens
that summarise it, the carrier tokens attend to each other globally, then join their
window's local attention.

Written for export: every shape is fixed when the model is built (only the batch axis is
free, always written as -1), window partition/reverse and carrier-token windowing are
plain reshapes and permutes, padding is a static concat, and nothing is mutated in
``forward``. Parameter names follow the official checkpoints so they load as they are.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ResolutionError
from .configs import ArchConfig, Variant


@dataclass(frozen=True)
class StageGeometry:
    """Static shapes of one transformer stage, derived from the architecture config."""

    size: tuple[int, int]  # feature map entering the stage
    padded: tuple[int, int]  # after zero padding right/bottom to whole windows
    window: int
    carriers: tuple[int, int] | None  # carrier-token grid when HAT runs, else None
    tokenizer: tuple[tuple[int, int], tuple[int, int]] | None  # avg-pool kernel, stride

    @property
    def grid(self) -> tuple[int, int]:
        """Windows along height and width."""
        return self.padded[0] // self.window, self.padded[1] // self.window


def _down(size: int) -> int:
    """Output size of a 3x3 stride-2 convolution with padding 1."""
    return (size + 1) // 2


def _round_up(size: int, multiple: int) -> int:
    return -(-size // multiple) * multiple


def stage_geometry(arch: ArchConfig, stage: int) -> StageGeometry:
    """Shapes of ``stage`` (2 or 3) for ``arch``; raises ResolutionError for a resolution the
    reference implementation cannot run (``nearest_resolutions`` suggests valid ones).

    The real feature map comes from the strided convolutions and is zero-padded to whole
    windows. The reference sizes its carrier tokens from a nominal map,
    ``int(resolution / 2**(stage + 2))``: where carriers join the windows, the nominal map
    must pad to the same window grid as the real one; where they do not, the any-res
    reference still pools carrier tokens (unused) and needs that pooling to fit.
    """
    window, ct = arch.window_size[stage], arch.ct_size
    res = "x".join(map(str, arch.resolution))
    if min(arch.resolution) < 1:
        raise ResolutionError(f"resolution {res}: height and width must be positive")
    size = tuple(_stage_input(side, stage) for side in arch.resolution)
    nominal = tuple(int(2 ** (-2 - stage) * side) for side in arch.resolution)
    padded = (_round_up(size[0], window), _round_up(size[1], window))
    if not arch.any_res:
        if any(a != n or a % window for a, n in zip(size, nominal)):
            raise ResolutionError(
                f"resolution {res}: stage {stage + 1} feature map {size[0]}x{size[1]} is not a "
                f"whole number of {window}-wide windows (or use the *_any_res variant)"
            )
        if arch.hat[stage] and size[0] != size[1]:
            raise ResolutionError(
                f"resolution {res}: the fixed-size variants take square inputs (or use the *_any_res variant)"
            )
    if not arch.hat[stage]:
        return StageGeometry(size, padded, window, None, None)
    if min(nominal) < 1:
        raise ResolutionError(
            f"resolution {res}: too small for stage {stage + 1}'s carrier "
            f"tokens; use at least {2 ** (stage + 2)} pixels a side"
        )
    reference = (_round_up(nominal[0], window), _round_up(nominal[1], window))
    grid = (reference[0] // window, reference[1] // window)
    hierarchical = grid[0] > 1 or grid[1] > 1
    if not (hierarchical or arch.any_res):
        return StageGeometry(size, padded, window, None, None)
    kernel, stride = [], []
    for extent, out in zip(reference, (ct * grid[0], ct * grid[1])):
        stride.append(extent // out)
        kernel.append(extent - (out - 1) * stride[-1])
    if hierarchical and padded != reference:
        raise ResolutionError(
            f"resolution {res}: stage {stage + 1} feature map {size[0]}x{size[1]} pads to "
            f"another window grid than its carrier tokens ({reference[0]}x{reference[1]})"
        )
    pooled = [(p - k) // s + 1 for p, k, s in zip(padded, kernel, stride)]
    if min(pooled) < 1 or pooled[0] % ct or pooled[1] % ct:
        raise ResolutionError(
            f"resolution {res}: stage {stage + 1} carrier-token pooling does not fit the {padded[0]}x{padded[1]} map"
        )
    carriers = (ct * grid[0], ct * grid[1]) if hierarchical else None
    return StageGeometry(size, padded, window, carriers, (tuple(kernel), tuple(stride)))


def _stage_input(side: int, stage: int) -> int:
    """Feature-map side entering ``stage``: stem and downsamplers are 3x3 stride-2 convs."""
    for _ in range(stage + 2):
        side = _down(side)
    return side


def nearest_resolutions(arch: ArchConfig) -> list[tuple[int, int]]:
    """Valid resolutions closest to ``arch.resolution``: for any-res variants the smallest and
    largest of the nearest ring (up to 64 pixels away), for fixed ones the nearest squares
    below and above."""
    height, width = arch.resolution
    if not arch.any_res:
        side = max(height, width, 1)
        below = [(s, s) for s in range(side, 0, -1) if _fits(arch, (s, s))][:1]
        above = [(s, s) for s in range(side + 1, 2 * side + 1024) if _fits(arch, (s, s))][:1]
        return below + above
    for reach in range(1, 65):
        ring = [
            (height + dh, width + dw)
            for dh in range(-reach, reach + 1)
            for dw in range(-reach, reach + 1)
            if max(abs(dh), abs(dw)) == reach
        ]
        valid = sorted(size for size in ring if min(size) >= 1 and _fits(arch, size))
        if valid:
            return sorted({valid[0], valid[-1]})
    return []


def check_resolution(arch: ArchConfig) -> None:
    """Raise ResolutionError, naming the nearest valid sizes, if ``arch.resolution`` does not fit."""
    try:
        for stage in (2, 3):
            stage_geometry(arch, stage)
    except ResolutionError as error:
        near = " or ".join(f"{h} {w}" for h, w in nearest_resolutions(arch))
        raise ResolutionError(f"{error}" + (f" (nearest valid --resolution: {near})" if near else "")) from None


def _fits(arch: ArchConfig, size: tuple[int, int]) -> bool:
    try:
        for stage in (2, 3):
            stage_geometry(replace(arch, resolution=size), stage)
    except ResolutionError:
        return False
    return True


def drop_path(x: Tensor, rate: float, training: bool) -> Tensor:
    """Stochastic depth: zero whole samples of a residual branch while training."""
    if rate == 0.0 or not training:
        return x
    keep = torch.empty((x.shape[0],) + (1,) * (x.ndim - 1), device=x.device).bernoulli_(1 - rate)
    return x * keep.div_(1 - rate)


def _scale(x: Tensor, gamma: Tensor | None) -> Tensor:
    return x if gamma is None else x * gamma


def _layer_scale(value: float | None, dim: int) -> nn.Parameter | None:
    return None if value is None else nn.Parameter(torch.full((dim,), value))


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW map."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.weight.shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class PatchEmbed(nn.Module):
    """Stem: two 3x3 stride-2 Conv-BN-ReLU layers (4x downsampling)."""

    def __init__(self, in_chans: int, in_dim: int, dim: int) -> None:
        super().__init__()
        self.conv_down = nn.Sequential(
            nn.Conv2d(in_chans, in_dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(in_dim, eps=1e-4),
            nn.ReLU(),
            nn.Conv2d(in_dim, dim, 3, 2, 1, bias=False),
            nn.BatchNorm2d(dim, eps=1e-4),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.conv_down(x)


class ConvBlock(nn.Module):
    """Residual block: conv3x3-BN-GELU-conv3x3-BN."""

    def __init__(self, dim: int, drop_path_rate: float) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm1: nn.Module = nn.BatchNorm2d(dim)
        self.act1 = nn.GELU()
        self.conv2 = nn.Conv2d(dim, dim, 3, 1, 1)
        self.norm2: nn.Module = nn.BatchNorm2d(dim)
        self.drop_path_rate = drop_path_rate

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return x + drop_path(y, self.drop_path_rate, self.training)


class Downsample(nn.Module):
    """Channel LayerNorm then a 3x3 stride-2 convolution doubling the channels."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(dim)
        self.reduction = nn.Sequential(nn.Conv2d(dim, 2 * dim, 3, 2, 1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.reduction(self.norm(x))


def _grid_coords(side: int) -> Tensor:
    """(side*side, 2) row/col coordinates of a square grid, normalised to [-1, 1)."""
    ticks = torch.arange(side, dtype=torch.float32)
    rows, cols = torch.meshgrid(ticks, ticks, indexing="ij")
    coords = torch.stack((rows, cols)).flatten(1).t()
    return (coords - side // 2) / (side // 2)


class TokenPositionMLP(nn.Module):
    """Absolute position embedding of a square token grid, produced by a small MLP."""

    def __init__(self, dim: int, tokens: int) -> None:
        super().__init__()
        self.side = math.isqrt(tokens)
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(), nn.Linear(512, dim, bias=False))
        self.register_buffer("coords", _grid_coords(self.side), persistent=False)

    def embedding(self) -> Tensor:
        """(1, tokens, dim) embedding; constant for fixed weights."""
        return self.cpb_mlp(self.coords).unsqueeze(0)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.embedding()


def _log_spaced_offsets(side: int) -> Tensor:
    """(2*side-1)**2 x 2 relative offsets, log-spaced as in Swin-V2's continuous bias."""
    ticks = torch.arange(-(side - 1), side, dtype=torch.float32) / (side - 1) * 8
    rows, cols = torch.meshgrid(ticks, ticks, indexing="ij")
    table = torch.stack((rows, cols), dim=-1).reshape(-1, 2)
    return torch.sign(table) * torch.log2(table.abs() + 1.0) / 3.0


def _relative_index(side: int) -> Tensor:
    """(side**2, side**2) index into the offset table for every token pair of a window."""
    ticks = torch.arange(side)
    rows, cols = torch.meshgrid(ticks, ticks, indexing="ij")
    points = torch.stack((rows.flatten(), cols.flatten()))
    delta = points[:, :, None] - points[:, None, :] + (side - 1)
    return delta[0] * (2 * side - 1) + delta[1]


class RelativePositionBias(nn.Module):
    """Attention bias from an MLP over log-spaced relative offsets of a square window.

    The bias covers the last ``side**2`` tokens of a ``tokens``-long sequence; the
    leading tokens (carrier tokens) get zero bias.
    """

    def __init__(self, side: int, tokens: int, num_heads: int) -> None:
        super().__init__()
        self.side, self.tokens = side, tokens
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 512), nn.ReLU(), nn.Linear(512, num_heads, bias=False))
        self.register_buffer("offsets", _log_spaced_offsets(side), persistent=False)
        self.register_buffer("index", _relative_index(side), persistent=False)

    def forward(self) -> Tensor:
        """(1, heads, tokens, tokens) additive bias; constant for fixed weights."""
        table = self.cpb_mlp(self.offsets)
        bias = 16 * torch.sigmoid(table[self.index].permute(2, 0, 1))
        lead = self.tokens - self.side**2
        return F.pad(bias, (lead, 0, lead, 0)).unsqueeze(0)


class WindowAttention(nn.Module):
    """Multi-head self-attention over a fixed-length token sequence with a learned bias."""

    def __init__(self, dim: int, num_heads: int, side: int, tokens: int) -> None:
        super().__init__()
        self.num_heads, self.tokens = num_heads, tokens
        self.scale: float | None = (dim // num_heads) ** -0.5  # None once folded into qkv
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.pos_emb_funct: nn.Module = RelativePositionBias(side, tokens, num_heads)

    def forward(self, x: Tensor) -> Tensor:
        dim = self.proj.in_features
        # (B, L, 3*C) -> (B, 3*heads, L, head_dim): one 4-D transpose and one split
        qkv = self.qkv(x).reshape(-1, self.tokens, 3 * self.num_heads, dim // self.num_heads)
        q, k, v = qkv.transpose(1, 2).split(self.num_heads, dim=1)
        attn = q @ k.transpose(-2, -1)
        if self.scale is not None:
            attn = attn * self.scale
        attn = (attn + self.pos_emb_funct()).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(-1, self.tokens, dim)
        return self.proj(x)


class Mlp(nn.Module):
    """Linear-GELU-Linear."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class CarrierLayout:
    """Static reorderings of a stage's carrier tokens.

    Carrier tokens travel between blocks grouped by window: ``(B, windows * c*c, C)`` with
    windows in raster order and each window's ``c x c`` tokens in raster order. Their
    global attention reads them as one raster grid ``(B, Hc*Wc, C)``.
    """

    def __init__(self, ct_size: int, grid: tuple[int, int], dim: int) -> None:
        self.c, self.grid, self.dim = ct_size, grid, dim

    def to_raster(self, ct: Tensor) -> Tensor:
        """Window-grouped -> raster order over the whole carrier grid."""
        (gh, gw), c = self.grid, self.c
        ct = ct.reshape(-1, gh, gw, c, c, self.dim).permute(0, 1, 3, 2, 4, 5)
        return ct.reshape(-1, gh * gw * c * c, self.dim)

    def to_windows(self, ct: Tensor) -> Tensor:
        """Raster order -> one row of ``c*c`` tokens per window, ``(B*windows, c*c, C)``.

        The reference implementation reads the raster grid with its two window counts
        swapped (``gw`` rows of ``gh``); for square grids this is the exact inverse of
        ``to_raster``, and for non-square grids it is reproduced so that official
        checkpoints compute the same function.
        """
        (gh, gw), c = self.grid, self.c
        ct = ct.reshape(-1, gw, c, gh, c, self.dim).permute(0, 1, 3, 2, 4, 5)
        return ct.reshape(-1, c * c, self.dim)


class HATBlock(nn.Module):
    """Transformer block with hierarchical attention over one stage's windows."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        geometry: StageGeometry,
        ct_size: int,
        drop_path_rate: float,
        layer_scale: float | None,
        propagate: bool,
        any_res: bool,
    ) -> None:
        super().__init__()
        window = geometry.window
        hidden = int(dim * mlp_ratio)
        self.window_tokens = window * window
        self.carrier_tokens = ct_size * ct_size if geometry.carriers else 0
        self.drop_path_rate = drop_path_rate
        self.pos_embed = TokenPositionMLP(dim, self.window_tokens)
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, num_heads, window, self.window_tokens + self.carrier_tokens)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, hidden)
        self.gamma3 = _layer_scale(layer_scale, dim)
        self.gamma4 = _layer_scale(layer_scale, dim)
        self.layout: CarrierLayout | None = None
        self.propagate = False
        if geometry.carriers:
            hc, wc = geometry.carriers
            self.layout = CarrierLayout(ct_size, geometry.grid, dim)
            self.hat_norm1 = nn.LayerNorm(dim)
            self.hat_norm2 = nn.LayerNorm(dim)
            self.hat_attn = WindowAttention(dim, num_heads, math.isqrt(hc * wc), hc * wc)
            self.hat_mlp = Mlp(dim, hidden)
            self.hat_pos_embed: nn.Module | None = TokenPositionMLP(dim, hc * wc) if hc == wc or not any_res else None
            self.gamma1 = _layer_scale(layer_scale, dim)
            self.gamma2 = _layer_scale(layer_scale, dim)
            self.propagate = propagate
            # nearest-neighbour upsampling of a window's c x c carriers to its w x w tokens
            src = torch.arange(window) * ct_size // window
            self.register_buffer("upsample_index", (src[:, None] * ct_size + src[None, :]).flatten(), persistent=False)

    def _residual(self, x: Tensor, branch: Tensor, gamma: Tensor | None) -> Tensor:
        return x + drop_path(_scale(branch, gamma), self.drop_path_rate, self.training)

    def forward(self, x: Tensor, ct: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """x: (B*windows, w*w, C) window tokens; ct: (B, windows*c*c, C) carrier tokens."""
        x = self.pos_embed(x)
        if self.layout is not None:
            ct = self.layout.to_raster(ct)
            if self.hat_pos_embed is not None:
                ct = self.hat_pos_embed(ct)
            ct = self._residual(ct, self.hat_attn(self.hat_norm1(ct)), self.gamma1)
            ct = self._residual(ct, self.hat_mlp(self.hat_norm2(ct)), self.gamma2)
            x = torch.cat((self.layout.to_windows(ct), x), dim=1)
        x = self._residual(x, self.attn(self.norm1(x)), self.gamma3)
        x = self._residual(x, self.mlp(self.norm2(x)), self.gamma4)
        if self.layout is not None:
            carriers, x = x.split((self.carrier_tokens, self.window_tokens), dim=1)
            (gh, gw), dim = self.layout.grid, self.layout.dim
            ct = carriers.reshape(-1, gh * gw * self.carrier_tokens, dim)
            if self.propagate:
                x = x + _scale(carriers[:, self.upsample_index], self.gamma1)
        return x, ct


def _zero_extend(x: Tensor, dim: int, extra: int) -> Tensor:
    """``x`` with ``extra`` zeros appended along ``dim``, built from static slices of ``x``
    (a padding wider than the map itself, as at tiny resolutions, takes several)."""
    pieces = [x]
    while extra > 0:
        take = min(extra, x.shape[dim])
        pieces.append(x.narrow(dim, 0, take) * 0.0)
        extra -= take
    return torch.cat(pieces, dim=dim) if len(pieces) > 1 else x


class TokenInitializer(nn.Module):
    """Initial carrier tokens: depth-wise 3x3 conv then average pooling to the carrier grid."""

    def __init__(self, dim: int, geometry: StageGeometry, ct_size: int) -> None:
        super().__init__()
        kernel, stride = geometry.tokenizer
        self.to_global_feature = nn.Sequential(
            OrderedDict(
                pos=nn.Conv2d(dim, dim, 3, padding=1, groups=dim), pool=nn.AvgPool2d(kernel_size=kernel, stride=stride)
            )
        )
        self.dim, self.carriers, self.c = dim, geometry.carriers, ct_size

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, H, W) -> (B, windows*c*c, C), grouped by window."""
        (hc, wc), c = self.carriers, self.c
        x = self.to_global_feature(x)
        x = x.reshape(-1, self.dim, hc // c, c, wc // c, c).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(-1, hc * wc, self.dim)


class ConvStage(nn.Module):
    """Stages 1-2: ConvBlocks then downsampling."""

    def __init__(self, dim: int, drop_path_rates: list[float]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(ConvBlock(dim, rate) for rate in drop_path_rates)
        self.downsample = Downsample(dim)

    def body(self, x: Tensor) -> Tensor:
        """The stage's own output, before downsampling (what detection heads read)."""
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.downsample(self.body(x))


class AttentionStage(nn.Module):
    """Stages 3-4: pad to whole windows, partition, HAT blocks, reverse, crop, downsample."""

    def __init__(
        self,
        dim: int,
        depth: int,
        num_heads: int,
        arch: ArchConfig,
        geometry: StageGeometry,
        drop_path_rates: list[float],
        downsample: bool,
    ) -> None:
        super().__init__()
        self.geometry, self.dim = geometry, dim
        self.blocks = nn.ModuleList(
            HATBlock(
                dim,
                num_heads,
                arch.mlp_ratio,
                geometry,
                arch.ct_size,
                drop_path_rates[i],
                arch.layer_scale,
                arch.propagate_carriers and i == depth - 1,
                arch.any_res,
            )
            for i in range(depth)
        )
        self.downsample = Downsample(dim) if downsample else None
        if geometry.tokenizer is not None:
            self.global_tokenizer = TokenInitializer(dim, geometry, arch.ct_size)

    def _pad(self, x: Tensor) -> Tensor:
        """Zero-pad right/bottom to whole windows with static slices and concats."""
        (h, w), (hp, wp) = self.geometry.size, self.geometry.padded
        x = _zero_extend(x, 3, wp - w)
        return _zero_extend(x, 2, hp - h)

    def _partition(self, x: Tensor) -> Tensor:
        """(B, C, Hp, Wp) -> (B*windows, w*w, C), windows and their tokens in raster order."""
        (gh, gw), w, c = self.geometry.grid, self.geometry.window, self.dim
        x = x.reshape(-1, c, gh, w, gw, w).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(-1, w * w, c)

    def _reverse(self, x: Tensor) -> Tensor:
        """Inverse of ``_partition``."""
        (gh, gw), w, c = self.geometry.grid, self.geometry.window, self.dim
        x = x.reshape(-1, gh, gw, w, w, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(-1, c, gh * w, gw * w)

    def body(self, x: Tensor) -> Tensor:
        """The stage's own output, before downsampling (what detection heads read)."""
        x = self._pad(x)
        ct = self.global_tokenizer(x) if self.geometry.carriers else None
        x = self._partition(x)
        for block in self.blocks:
            x, ct = block(x, ct)
        x = self._reverse(x)
        (h, w), (hp, wp) = self.geometry.size, self.geometry.padded
        if (hp, wp) != (h, w):
            x = x[:, :, :h, :w]
        return x

    def forward(self, x: Tensor) -> Tensor:
        x = self.body(x)
        return x if self.downsample is None else self.downsample(x)


class FasterViT(nn.Module):
    """FasterViT image classifier for one architecture config (fixed input resolution)."""

    variant: Variant  # set by ``create_model``: the registered variant this model is
    checkpoint: dict | None  # and what was loaded into it (None: random weights)

    def __init__(self, arch: ArchConfig) -> None:
        super().__init__()
        self.arch = arch
        geometry = {stage: stage_geometry(arch, stage) for stage in (2, 3)}
        blocks = sum(arch.depths)
        rates = [arch.drop_path_rate * i / max(blocks - 1, 1) for i in range(blocks)]
        self.patch_embed = PatchEmbed(arch.in_chans, arch.in_dim, arch.dim)
        self.levels = nn.ModuleList()
        for stage, depth in enumerate(arch.depths):
            dim = arch.dim * 2**stage
            stage_rates = rates[sum(arch.depths[:stage]) : sum(arch.depths[: stage + 1])]
            if stage < 2:
                self.levels.append(ConvStage(dim, stage_rates))
            else:
                self.levels.append(
                    AttentionStage(dim, depth, arch.num_heads[stage], arch, geometry[stage], stage_rates, stage < 3)
                )
        features = arch.dim * 2 ** (len(arch.depths) - 1)
        self.num_features = features
        self.norm: nn.Module = nn.BatchNorm2d(features)
        self.head: nn.Module = nn.Linear(features, arch.num_classes) if arch.num_classes else nn.Identity()
        self.apply(_init_weights)

    def forward_features(self, x: Tensor) -> Tensor:
        """(B, 3, H, W) image -> (B, C, H/32, W/32) normalised feature map."""
        x = self.patch_embed(x)
        for level in self.levels:
            x = level(x)
        return self.norm(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.forward_features(x).mean(dim=(2, 3)))

    @property
    def output_names(self) -> list[str]:
        """``logits``; ``embedding`` (the pooled features) for a headless model."""
        return ["logits"] if self.arch.num_classes else ["embedding"]

    def stage_outputs(self, x: Tensor, stages: tuple[int, ...]) -> list[Tensor]:
        """(B, 3, H, W) image -> the outputs of ``stages`` (1-4, ascending), each taken before
        its stage's downsampling (strides 4, 8, 16, 32), as the official detection backbones
        take them; stages after the last one asked for are not computed."""
        x, outputs = self.patch_embed(x), []
        for stage, level in enumerate(self.levels[: max(stages)], start=1):
            x = level.body(x)
            if stage in stages:
                outputs.append(x)
            if level.downsample is not None and stage < max(stages):
                x = level.downsample(x)
        return outputs


class Backbone(nn.Module):
    """FasterViT without its head, for detection: the outputs of the selected ``stages``
    (NCHW), optionally each through its level's BatchNorm as the official detection backbones
    add it (``norm0``..``norm2`` for stages 1-3, the classifier's own ``norm`` for stage 4)."""

    def __init__(self, model: FasterViT, stages: tuple[int, ...], norm: bool = False) -> None:
        super().__init__()
        self.model, self.stages = model, tuple(sorted(stages))
        self.variant: Variant | None = getattr(model, "variant", None)
        dims = [model.arch.dim * 2**i for i in range(len(model.levels))]
        self.norms = nn.ModuleList(
            (model.norm if stage == len(dims) else nn.BatchNorm2d(dims[stage - 1])) if norm else nn.Identity()
            for stage in self.stages
        )
        self.train(model.training)  # the new norms follow the model (eval: running statistics)

    @property
    def output_names(self) -> list[str]:
        return [f"stage{stage}" for stage in self.stages]

    def forward(self, x: Tensor) -> tuple[Tensor, ...]:
        return tuple(norm(y) for norm, y in zip(self.norms, self.model.stage_outputs(x, self.stages)))


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
