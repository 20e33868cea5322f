"""The architectures of `edgeadapt.zoo` in plain torch.nn (imported only when one is built).

Layer structure, channels, strides and activations follow torchvision's ResNet-18,
MobileNet-V3-small and EfficientNet-B0, timm's ViT and Hugging Face's BERT, so that the
exported graphs have the same operators and cost; module names follow those libraries
too (``layer1``, ``features.3``, ``blocks.5``, ``encoder.layer.1``), which is what the
cut points refer to. Weights are random (torch's default initialisation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to a multiple of `divisor` as torchvision does (never more
    than 10 % below `v`)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_act(
    c_in: int,
    c_out: int,
    kernel: int,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
    eps: float = 1e-5,
) -> nn.Sequential:
    """torchvision's Conv2dNormActivation: conv (no bias), BatchNorm, activation."""
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out, eps=eps),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --- ResNet (torchvision.models.resnet18) -------------------------------------------


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample: nn.Module | None = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with basic blocks: 7x7 stem, max pool, four layers, average pool, fc."""

    def __init__(
        self, layers: Sequence[int] = (2, 2, 2, 2), width: int = 64, num_classes: int = 1000
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = width
        stages = []
        for i, n in enumerate(layers):
            c_out = width * 2**i
            blocks = [BasicBlock(c, c_out, 1 if i == 0 else 2)]
            blocks += [BasicBlock(c_out, c_out, 1) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c = c_out
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# --- MobileNet-V3 and EfficientNet blocks -------------------------------------------


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: pool, 1x1 conv, act, 1x1 conv, gate, scale."""

    def __init__(
        self,
        channels: int,
        squeeze: int,
        act: type[nn.Module] = nn.ReLU,
        gate: type[nn.Module] = nn.Sigmoid,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = act()
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return x * self.scale_activation(s)


@dataclass(frozen=True)
class BneckConfig:
    """One MobileNet-V3 inverted residual: torchvision's InvertedResidualConfig."""

    c_in: int
    kernel: int
    expanded: int
    c_out: int
    se: bool
    hardswish: bool
    stride: int


#: torchvision's `mobilenet_v3_small` table (in, kernel, expanded, out, SE, HS, stride).
MOBILENET_V3_SMALL = (
    BneckConfig(16, 3, 16, 16, True, False, 2),
    BneckConfig(16, 3, 72, 24, False, False, 2),
    BneckConfig(24, 3, 88, 24, False, False, 1),
    BneckConfig(24, 5, 96, 40, True, True, 2),
    BneckConfig(40, 5, 240, 40, True, True, 1),
    BneckConfig(40, 5, 240, 40, True, True, 1),
    BneckConfig(40, 5, 120, 48, True, True, 1),
    BneckConfig(48, 5, 144, 48, True, True, 1),
    BneckConfig(48, 5, 288, 96, True, True, 2),
    BneckConfig(96, 5, 576, 96, True, True, 1),
    BneckConfig(96, 5, 576, 96, True, True, 1),
)


class InvertedResidual(nn.Module):
    """MobileNet-V3 block: expand 1x1, depthwise kxk, optional SE, project 1x1."""

    def __init__(self, cfg: BneckConfig) -> None:
        super().__init__()
        act: type[nn.Module] = nn.Hardswish if cfg.hardswish else nn.ReLU
        eps = 1e-3
        layers: list[nn.Module] = []
        if cfg.expanded != cfg.c_in:
            layers.append(conv_bn_act(cfg.c_in, cfg.expanded, 1, act=act, eps=eps))
        layers.append(
            conv_bn_act(cfg.expanded, cfg.expanded, cfg.kernel, cfg.stride, cfg.expanded, act, eps)
        )
        if cfg.se:
            squeeze = make_divisible(cfg.expanded // 4, 8)
            layers.append(SqueezeExcitation(cfg.expanded, squeeze, nn.ReLU, nn.Hardsigmoid))
        layers.append(conv_bn_act(cfg.expanded, cfg.c_out, 1, act=None, eps=eps))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = cfg.stride == 1 and cfg.c_in == cfg.c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        return x + y if self.use_res_connect else y


class MobileNetV3(nn.Module):
    """torchvision's MobileNetV3 (`features`, `avgpool`, `classifier`)."""

    def __init__(
        self,
        config: Sequence[BneckConfig] = MOBILENET_V3_SMALL,
        last_channel: int = 1024,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        eps = 1e-3
        layers: list[nn.Module] = [conv_bn_act(3, config[0].c_in, 3, 2, act=nn.Hardswish, eps=eps)]
        layers += [InvertedResidual(c) for c in config]
        last_conv = 6 * config[-1].c_out
        layers.append(conv_bn_act(config[-1].c_out, last_conv, 1, act=nn.Hardswish, eps=eps))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_conv, last_channel),
            nn.Hardswish(),
            nn.Dropout(0.2),
            nn.Linear(last_channel, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


@dataclass(frozen=True)
class MBConvConfig:
    """One EfficientNet stage: torchvision's MBConvConfig before width/depth scaling."""

    expand: int
    kernel: int
    stride: int
    c_in: int
    c_out: int
    layers: int


#: torchvision's EfficientNet-B0 stages (width and depth multipliers 1.0).
EFFICIENTNET_B0 = (
    MBConvConfig(1, 3, 1, 32, 16, 1),
    MBConvConfig(6, 3, 2, 16, 24, 2),
    MBConvConfig(6, 5, 2, 24, 40, 2),
    MBConvConfig(6, 3, 2, 40, 80, 3),
    MBConvConfig(6, 5, 1, 80, 112, 3),
    MBConvConfig(6, 5, 2, 112, 192, 4),
    MBConvConfig(6, 3, 1, 192, 320, 1),
)


class MBConv(nn.Module):
    """EfficientNet block: expand 1x1, depthwise, SE (SiLU/sigmoid), project 1x1."""

    def __init__(self, expand: int, kernel: int, stride: int, c_in: int, c_out: int) -> None:
        super().__init__()
        expanded = make_divisible(c_in * expand, 8)
        layers: list[nn.Module] = []
        if expanded != c_in:
            layers.append(conv_bn_act(c_in, expanded, 1, act=nn.SiLU))
        layers.append(conv_bn_act(expanded, expanded, kernel, stride, expanded, nn.SiLU))
        layers.append(SqueezeExcitation(expanded, max(1, c_in // 4), nn.SiLU, nn.Sigmoid))
        layers.append(conv_bn_act(expanded, c_out, 1, act=None))
        self.block = nn.Sequential(*layers)
        self.use_res_connect = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)  # stochastic depth is the identity at inference
        return x + y if self.use_res_connect else y


class EfficientNet(nn.Module):
    """torchvision's EfficientNet (`features`: stem, 7 stages, head conv)."""

    def __init__(
        self,
        config: Sequence[MBConvConfig] = EFFICIENTNET_B0,
        last_channel: int = 1280,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [conv_bn_act(3, config[0].c_in, 3, 2, act=nn.SiLU)]
        for cfg in config:
            blocks = [
                MBConv(cfg.expand, cfg.kernel, cfg.stride if k == 0 else 1, c, cfg.c_out)
                for k, c in enumerate([cfg.c_in] + [cfg.c_out] * (cfg.layers - 1))
            ]
            layers.append(nn.Sequential(*blocks))
        layers.append(conv_bn_act(config[-1].c_out, last_channel, 1, act=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last_channel, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


# --- Transformers --------------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head self-attention written out: a fused q/k/v projection (timm) or three
    (BERT's query/key/value), scaled dot product, softmax, output projection."""

    def __init__(self, dim: int, heads: int, fused: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.fused = fused
        if fused:
            self.qkv = nn.Linear(dim, 3 * dim)
        else:
            self.query = nn.Linear(dim, dim)
            self.key = nn.Linear(dim, dim)
            self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _split(self, x: torch.Tensor, t: int) -> torch.Tensor:
        return x.reshape(-1, t, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        t = x.shape[1]
        if self.fused:
            qkv = self.qkv(x).reshape(-1, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
        else:
            q, k, v = (self._split(f(x), t) for f in (self.query, self.key, self.value))
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))
        if bias is not None:
            scores = scores + bias
        out = scores.softmax(dim=-1) @ v
        return self.proj(out.transpose(1, 2).reshape(-1, t, self.heads * self.head_dim))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class ViTBlock(nn.Module):
    """Pre-norm transformer block (timm's `Block`)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    """timm's VisionTransformer: conv patch embedding, [CLS] token, learned positions,
    pre-norm blocks, final norm, linear head on the [CLS] token."""

    def __init__(
        self,
        image_size: int = 224,
        patch: int = 16,
        dim: int = 192,
        depth: int = 12,
        heads: int = 3,
        mlp_ratio: float = 4.0,
        num_classes: int = 1000,
    ) -> None:
        super().__init__()
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not a multiple of patch {patch}")
        self.patch_embed = nn.Conv2d(3, dim, patch, patch)
        tokens = (image_size // patch) ** 2 + 1
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens, dim) * 0.02)
        self.blocks = nn.Sequential(*[ViTBlock(dim, heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


@dataclass(frozen=True)
class BertConfig:
    """The fields of Hugging Face's `BertConfig` this encoder uses."""

    vocab_size: int = 30522
    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    num_labels: int = 2


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        positions = torch.arange(t, device=input_ids.device)
        x = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        x = x + self.token_type_embeddings.weight[0]  # token_type_ids all 0
        return self.LayerNorm(x)


class BertLayer(nn.Module):
    """Post-norm encoder layer (BertAttention + BertIntermediate + BertOutput)."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        h = cfg.hidden_size
        self.attention = Attention(h, cfg.num_attention_heads, fused=False)
        self.attention_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)
        self.intermediate = nn.Linear(h, cfg.intermediate_size)
        self.act = nn.GELU()
        self.output = nn.Linear(cfg.intermediate_size, h)
        self.output_norm = nn.LayerNorm(h, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention(x, bias))
        return self.output_norm(x + self.output(self.act(self.intermediate(x))))


class BertEncoder(nn.Module):
    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.num_hidden_layers))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, bias)
        return x


class BertClassifier(nn.Module):
    """BertForSequenceClassification: embeddings, encoder, pooler (dense + tanh on the
    [CLS] token), linear classifier. Inputs `input_ids` and `attention_mask` (1 = token,
    0 = padding), both int64 [B, T]."""

    def __init__(self, cfg: BertConfig) -> None:
        super().__init__()
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.pooler = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.classifier = nn.Linear(cfg.hidden_size, cfg.num_labels)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # The additive mask of HF's get_extended_attention_mask: 0 on tokens, a large
        # negative number on padding, broadcast over heads and query positions.
        bias = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * -10000.0
        x = self.embeddings(input_ids)
        x = self.encoder(x, bias)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


def recalibrate_batchnorm(
    model: nn.Module, batches: Sequence[tuple[torch.Tensor, ...]]
) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on `batches` (train-mode
    forward passes, cumulative average), then return the model in eval mode.

    With random weights and the default statistics (mean 0, variance 1) activations grow
    or vanish layer by layer, so the logits are ~0 or huge and parity checks mean little;
    estimated statistics keep every layer normalised as in a trained network."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches
    if norms:
        model.train()
        with torch.no_grad():
            for batch in batches:
                model(*batch)
    return model.eval()
