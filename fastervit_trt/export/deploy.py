"""Deploy transforms: turn a trained FasterViT into the smallest equivalent inference graph.

``prepare_for_export(model)`` returns a frozen copy in which
- every BatchNorm is folded into the convolution before it, and the final BatchNorm into
  the classifier (average pooling is linear, so it commutes with the affine BN);
- the position-embedding and attention-bias MLPs are evaluated once into constants; an
  attention bias stays a per-offset table spread over the window by a static Gather (its
  spread form grows with the window to the fourth power: 4.3 GB for FasterViT-4-21K-768,
  from tables of 0.5 MB);
- the attention scale is folded into the query projection;
- layer scales that multiply a linear output are folded into that linear layer;
- the linear layers that act on token sequences keep their weight transposed, as the
  MatMul operand ONNX wants, so the exporter folds no transposed copy of the weights;
- stochastic depth is gone (the copy is in eval mode with no drop-path rate).
The original model is not modified unless ``inplace=True`` (large variants: no second copy).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..models.configs import Variant
from ..models.fastervit import (
    AttentionStage,
    Backbone,
    FasterViT,
    HATBlock,
    RelativePositionBias,
    TokenPositionMLP,
    WindowAttention,
)


class GatheredBias(nn.Module):
    """A frozen ``RelativePositionBias``: its (1, heads, offsets + 1) table, evaluated once,
    read through a (tokens, tokens) ``index`` (one Gather, no reshape); the extra last entry is
    the carrier tokens' zero."""

    def __init__(self, table: Tensor, index: Tensor) -> None:
        super().__init__()
        self.register_buffer("table", table)
        self.register_buffer("index", index)

    @classmethod
    def freeze(cls, source: RelativePositionBias, indices: dict[tuple[int, int], Tensor]) -> GatheredBias:
        """``source`` as a table and an index (one index per window geometry, shared)."""
        table = 16 * torch.sigmoid(source.cpb_mlp(source.offsets)).t()
        table = F.pad(table, (0, 1)).unsqueeze(0)
        key = (source.side, source.tokens)
        if key not in indices:
            lead = source.tokens - source.side**2
            indices[key] = F.pad(source.index, (lead, 0, lead, 0), value=table.shape[-1] - 1).to(torch.int32)
        return cls(table.contiguous(), indices[key])

    def forward(self) -> Tensor:
        return self.table[:, :, self.index]


class ImageInput(nn.Module):
    """``model`` fed resized, cropped images as decoded: uint8 (N, H, W, C), or with
    ``channels_first`` float32 pixel values 0..255 (N, C, H, W). The graph normalises them
    with the float32 operations of ``Preprocess.normalize``, in its order (divide by 255,
    subtract the mean, divide by the std; then channels first)."""

    def __init__(
        self,
        model: FasterViT | Backbone | Probabilities,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        channels_first: bool = False,
    ) -> None:
        super().__init__()
        self.model, self.channels_first = model, channels_first
        shape = (-1, 1, 1) if channels_first else (-1,)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(shape))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(shape))

    @property
    def variant(self) -> Variant | None:
        return self.model.variant

    @property
    def output_names(self) -> list[str]:
        return self.model.output_names

    def forward(self, images: Tensor) -> Tensor:
        pixels = (images.float() / 255 - self.mean) / self.std
        return self.model(pixels if self.channels_first else pixels.permute(0, 3, 1, 2))


class Probabilities(nn.Module):
    """A classifier answering softmax probabilities (output ``probabilities``) instead of
    logits, for consumers that read probabilities (DeepStream nvinfer's classifier parser)."""

    def __init__(self, model: FasterViT) -> None:
        super().__init__()
        self.model = model

    @property
    def variant(self):
        return self.model.variant

    @property
    def output_names(self) -> list[str]:
        return ["probabilities"]

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(self.model(x), dim=-1)


# what ``trace_to_onnx`` traces: a classifier, a backbone, either with softmax or an image input
Exportable = FasterViT | Backbone | Probabilities | ImageInput


class AddConstant(nn.Module):
    """``x + value`` with a frozen ``value`` (a precomputed position embedding)."""

    def __init__(self, value: Tensor) -> None:
        super().__init__()
        self.register_buffer("value", value.detach().clone())

    def forward(self, x: Tensor) -> Tensor:
        return x + self.value


class ChannelAffine(nn.Module):
    """A frozen eval-mode BatchNorm2d with nothing to fold into: ``x * scale + shift`` per
    channel (a Mul and an Add, which TensorRT fuses into one scale layer)."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        scale, shift = batchnorm_affine(bn)
        self.register_buffer("scale", scale.view(-1, 1, 1).clone())
        self.register_buffer("shift", shift.view(-1, 1, 1).clone())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class TransposedLinear(nn.Module):
    """``x @ weight_t + bias``: a linear layer whose weight is stored as (in, out)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_t", linear.weight.detach().t().contiguous())
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach())

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight_t
        return y if self.bias is None else y + self.bias


def _transpose_linears(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.Linear):
            setattr(module, name, TransposedLinear(child))
        else:
            _transpose_linears(child)


def batchnorm_affine(bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(scale, shift) per channel with ``bn(x) == x * scale + shift`` in eval mode."""
    scale = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach()
    return scale, (bn.bias - bn.running_mean * scale).detach()


def fold_batchnorm(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A convolution computing ``bn(conv(x))`` in eval mode."""
    scale, _ = batchnorm_affine(bn)
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        bias=True,
    )
    fused.weight.copy_(conv.weight * scale.view(-1, 1, 1, 1))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
    fused.bias.copy_((bias - bn.running_mean) * scale + bn.bias)
    return fused


def _fold_batchnorm_into_head(head: nn.Linear, bn: nn.BatchNorm2d) -> None:
    """Make ``head(mean(x))`` compute ``head(mean(bn(x)))``."""
    scale, shift = batchnorm_affine(bn)
    head.bias.add_(head.weight @ shift)
    head.weight.mul_(scale)


def _scale_output(linear: nn.Linear, gamma: Tensor) -> None:
    """Make ``linear(x)`` compute ``gamma * linear(x)``."""
    linear.weight.mul_(gamma.view(-1, 1))
    linear.bias.mul_(gamma)


def _freeze_attention(attn: WindowAttention, indices: dict[tuple[int, int], Tensor]) -> None:
    assert isinstance(attn.pos_emb_funct, RelativePositionBias)
    attn.pos_emb_funct = GatheredBias.freeze(attn.pos_emb_funct, indices)
    dim = attn.proj.in_features
    attn.qkv.weight[:dim].mul_(attn.scale)
    attn.qkv.bias[:dim].mul_(attn.scale)
    attn.scale = None


def _freeze_block(block: HATBlock, indices: dict[tuple[int, int], Tensor]) -> None:
    block.drop_path_rate = 0.0
    for name in ("pos_embed", "hat_pos_embed"):
        module = getattr(block, name, None)
        if isinstance(module, TokenPositionMLP):
            setattr(block, name, AddConstant(module.embedding()))
    _freeze_attention(block.attn, indices)
    for linear, gamma in ((block.attn.proj, "gamma3"), (block.mlp.fc2, "gamma4")):
        if getattr(block, gamma) is not None:
            _scale_output(linear, getattr(block, gamma))
            setattr(block, gamma, None)
    if block.layout is not None:
        _freeze_attention(block.hat_attn, indices)
        if block.gamma2 is not None:
            _scale_output(block.hat_mlp.fc2, block.gamma2)
            block.gamma2 = None
        # gamma1 also scales carrier propagation into the windows, so it stays a multiply


@torch.no_grad()
def prepare_for_export(model: FasterViT, inplace: bool = False) -> FasterViT:
    """A frozen, BatchNorm-free, constant-folded copy of ``model`` computing the same logits
    (``model`` itself, transformed, when ``inplace``)."""
    deployed = (model if inplace else copy.deepcopy(model)).eval()
    stem = deployed.patch_embed.conv_down
    stem[0] = fold_batchnorm(stem[0], stem[1])
    stem[3] = fold_batchnorm(stem[3], stem[4])
    stem[1], stem[4] = nn.Identity(), nn.Identity()
    indices: dict[tuple[int, int], Tensor] = {}
    for level in deployed.levels:
        for block in level.blocks:
            if isinstance(block, HATBlock):
                _freeze_block(block, indices)
            else:
                block.drop_path_rate = 0.0
                block.conv1 = fold_batchnorm(block.conv1, block.norm1)
                block.conv2 = fold_batchnorm(block.conv2, block.norm2)
                block.norm1, block.norm2 = nn.Identity(), nn.Identity()
        if isinstance(level, AttentionStage) and not level.geometry.carriers and hasattr(level, "global_tokenizer"):
            del level.global_tokenizer  # built (as in the reference) but never run
    if isinstance(deployed.head, nn.Linear):
        _fold_batchnorm_into_head(deployed.head, deployed.norm)
        deployed.norm = nn.Identity()
    _transpose_linears(deployed.levels)  # the head (on pooled vectors) stays a Gemm
    for param in deployed.parameters():
        param.requires_grad_(False)
    return deployed


@torch.no_grad()
def prepare_backbone(backbone: Backbone) -> Backbone:
    """``backbone`` in deploy form, in place: its model as ``prepare_for_export`` leaves it,
    each output BatchNorm a per-channel affine."""
    prepare_for_export(backbone.model, inplace=True)  # its norm leaves the model; ours keeps it
    backbone.norms = nn.ModuleList(
        ChannelAffine(norm) if isinstance(norm, nn.BatchNorm2d) else norm for norm in backbone.norms
    )
    return backbone
