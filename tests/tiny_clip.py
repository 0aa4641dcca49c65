"""A tiny CLIP-style image encoder in plain torch.nn, shaped like open_clip's and the task-vectors code's.

ImageEncoder wraps a model with encode_image (task-vectors' src.modeling.ImageEncoder); the model's
`visual` is a vision transformer with open_clip's parameter names (conv1, class_embedding,
positional_embedding, ln_pre, transformer.resblocks.*, ln_post, proj). ClassificationHead is a
Linear layer over (L2-normalised) image features, as task-vectors' heads are. The tests pickle these
as whole modules (torch.save(module)), so this file must be importable as `tiny_clip`.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualAttentionBlock(nn.Module):
    """Pre-norm self-attention and MLP, as open_clip's transformer block."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential()
        self.mlp.add_module("c_fc", nn.Linear(width, 2 * width))
        self.mlp.add_module("gelu", nn.GELU())
        self.mlp.add_module("c_proj", nn.Linear(2 * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads) for _ in range(layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTransformer(nn.Module):
    """Patch embedding, class token, transformer, projection of the class token to `output_dim` features."""

    def __init__(
        self,
        image_size: int = 8,
        patch_size: int = 4,
        width: int = 16,
        layers: int = 1,
        heads: int = 2,
        output_dim: int = 8,
    ) -> None:
        super().__init__()
        scale = width**-0.5
        self.conv1 = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.positional_embedding = nn.Parameter(scale * torch.randn((image_size // patch_size) ** 2 + 1, width))
        self.ln_pre = nn.LayerNorm(width)
        self.transformer = Transformer(width, layers, heads)
        self.ln_post = nn.LayerNorm(width)
        self.proj = nn.Parameter(scale * torch.randn(width, output_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.conv1(images).flatten(2).transpose(1, 2)  # (N, patches, width)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)
        x = self.ln_post(self.transformer(x)[:, 0])
        return x @ self.proj


class TinyCLIP(nn.Module):
    """The image side of a CLIP model (the text tower is dropped, as task-vectors' ImageEncoder does)."""

    def __init__(self, **visual: int) -> None:
        super().__init__()
        self.visual = VisionTransformer(**visual)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.visual(images)


class ImageEncoder(nn.Module):
    """images -> features, through model.encode_image (task-vectors' src.modeling.ImageEncoder)."""

    def __init__(self, **visual: int) -> None:
        super().__init__()
        self.model = TinyCLIP(**visual)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(images)


class ClassificationHead(nn.Linear):
    """features -> class logits; L2-normalises its input first when `normalize` (task-vectors' head)."""

    def __init__(self, normalize: bool, weights: torch.Tensor, biases: torch.Tensor | None = None) -> None:
        out_features, in_features = weights.shape
        super().__init__(in_features, out_features)
        self.normalize = normalize
        self.weight = nn.Parameter(weights.clone())
        self.bias = nn.Parameter(biases.clone() if biases is not None else torch.zeros(out_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            features = features / features.norm(dim=-1, keepdim=True)
        return super().forward(features)
