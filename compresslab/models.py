"""The networks of the workbook.

* ``lenet300``  LeNet-300-100: 784-300-100-10, 266,610 parameters (Han et al. 2015, Table 1).
* ``lenet5``    LeNet-5 in the Caffe variant Han et al. used: conv 20@5x5, max-pool,
                conv 50@5x5, max-pool, fc 500, ReLU, fc 10; 431,080 parameters. As in Caffe's
                ``lenet_train_test.prototxt`` there is no nonlinearity after the convolutions
                (the max-pools are the only nonlinearity there), so our numbers line up with
                the papers' tables.
* ``cifar_cnn`` a small VGG-style CNN with BatchNorm for CIFAR-10: three stages of
                conv-BN-ReLU pairs (64, 128, 256 channels), ~1.15 M parameters, small enough
                to train on a 2-core CPU. Each stage pools after its first convolution, as in
                Keller Jordan's fast CIFAR-10 "airbench" networks: the second convolution of
                a stage then runs at a quarter of the pixels, half the FLOPs of plain VGG.
* ``cifar_cnn_dws`` the same CNN with every 3x3 convolution but the first replaced by a
                depthwise 3x3 + pointwise 1x1 pair (MobileNet, Howard et al. 2017): about
                8x fewer parameters and FLOPs in those layers (notebook 08).
* ``mlp1200``   Hinton et al.'s (2015) MNIST teacher: 784-1200-1200-10, ReLU, dropout;
                2,395,210 parameters.
* ``mlp800``    their student: 784-800-800-10, ReLU, no dropout; 1,276,810 parameters.
* ``vit``       a small vision transformer for CIFAR-10 (Dosovitskiy et al. 2021): 4x4 patches
                (64 tokens), 6 pre-norm blocks of width 192 with 6 heads of 32 and a GELU MLP of 384,
                mean pooling; 1.80 M parameters (notebook 10).
* ``char_gpt``  a character-level GPT (decoder-only, pre-norm, causal ``Block``s): 128 characters
                of context, 6 blocks of width 192, 6 heads of 32, a GELU MLP of 768.

Every CNN and MLP is a flat ``nn.Sequential`` of named layers (``conv1``, ``bn1``, ``fc1`` ...):
easy to print, easy to index, and easy to prune structurally later on. The ViT is a stack of
``Block`` modules, each with its ``attn`` (``qkv``, ``proj``) and its MLP (``fc1``, ``fc2``).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


def lenet300() -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(784, 300)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(300, 100)), ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(100, 10)),
    ]))


def lenet5() -> nn.Sequential:
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 20, 5)), ("pool1", nn.MaxPool2d(2)),   # 28 -> 24 -> 12
        ("conv2", nn.Conv2d(20, 50, 5)), ("pool2", nn.MaxPool2d(2)),  # 12 -> 8 -> 4
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(50 * 4 * 4, 500)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(500, 10)),
    ]))


def conv_widths(widths, model: str) -> list[int]:
    """Six conv widths from 3 (one per stage, both convs alike) or 6 (one per conv)."""
    if len(widths) == 3:
        widths = [w for w in widths for _ in range(2)]
    if len(widths) != 6:
        raise ValueError(f"{model} takes 3 stage widths or 6 conv widths, got {len(widths)}.")
    return list(widths)


def cifar_cnn(widths=(64, 128, 256), num_classes: int = 10, depthwise: bool = False) -> nn.Sequential:
    """VGG-style: [conv-pool-BN-ReLU, conv-BN-ReLU] x 3 stages, global max-pool, linear.

    32x32 -> 16 -> 8 -> 4 pixels; the classifier sees one value per channel.
    ``widths``: 3 numbers (one per stage) or 6 (one per conv, as left by structured pruning).
    ``depthwise``: every conv but the first becomes dw{i} -> pw{i} (see ``cifar_cnn_dws``).
    """
    layers, c_in = OrderedDict(), 3
    for i, c_out in enumerate(conv_widths(widths, "cifar_cnn"), start=1):
        if depthwise and i > 1:
            layers[f"dw{i}"] = nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in, bias=False)
            layers[f"pw{i}"] = nn.Conv2d(c_in, c_out, 1, bias=False)
        else:
            layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        if i % 2:  # the first conv of a stage pools
            layers[f"pool{(i + 1) // 2}"] = nn.MaxPool2d(2)
        layers[f"bn{i}"] = nn.BatchNorm2d(c_out)
        layers[f"relu{i}"] = nn.ReLU()
        c_in = c_out
    layers["gpool"] = nn.AdaptiveMaxPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(c_in, num_classes)
    return nn.Sequential(layers)


def cifar_cnn_dws(widths=(64, 128, 256), num_classes: int = 10) -> nn.Sequential:
    """``cifar_cnn`` with depthwise-separable convolutions (the MobileNet idea).

    A 3x3 conv c_in -> c_out costs 9 c_in c_out weights; a depthwise 3x3 (one filter per input
    channel, ``groups=c_in``) then a pointwise 1x1 costs 9 c_in + c_in c_out. The first conv
    stays standard: with 3 input channels there is nothing to save. Layout per conv i > 1:
    dw{i} -> pw{i} -> (pool) -> bn{i} -> relu{i}; the bn / relu names match ``cifar_cnn``'s,
    so feature distillation can hook the same names in teacher and student.
    """
    return cifar_cnn(widths, num_classes, depthwise=True)


def mlp1200(dropout: float = 0.5) -> nn.Sequential:
    """Hinton, Vinyals & Dean's (2015) MNIST teacher: 784-1200-1200-10 with ReLU and dropout.

    Dropout 0.5 on both hidden layers, as in Hinton et al. (2012), where this net was trained
    with dropout and jittered inputs; we leave out their 20% input dropout, which needs far
    more epochs than our CPU budget to pay off (the +-2-pixel jitter regularizes the input).
    """
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(784, 1200)), ("relu1", nn.ReLU()), ("drop1", nn.Dropout(dropout)),
        ("fc2", nn.Linear(1200, 1200)), ("relu2", nn.ReLU()), ("drop2", nn.Dropout(dropout)),
        ("fc3", nn.Linear(1200, 10)),
    ]))


def mlp800() -> nn.Sequential:
    """Hinton et al.'s (2015) MNIST student: 784-800-800-10 with ReLU, no regularization."""
    return nn.Sequential(OrderedDict([
        ("flatten", nn.Flatten()),
        ("fc1", nn.Linear(784, 800)), ("relu1", nn.ReLU()),
        ("fc2", nn.Linear(800, 800)), ("relu2", nn.ReLU()),
        ("fc3", nn.Linear(800, 10)),
    ]))


class Attention(nn.Module):
    """Multi-head self-attention: softmax(Q K^T / sqrt(d_head)) V for each head, then a projection.

    ``qkv``'s output rows are ordered (q|k|v, head, d_head), so head h is a block of rows in
    ``qkv`` and of columns in ``proj`` (``compresslab.transformer.remove_heads`` cuts them out).
    ``size`` (token merging): how many patches each token stands for; adding log(size) to the
    scores makes a merged token weigh as much as the patches it replaced ("proportional attention").
    ``causal`` (a language model): token i attends to tokens 0..i only, so that it cannot read
    the character it has to predict.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, causal: bool = False):
        super().__init__()
        self.heads, self.head_dim, self.causal = heads, head_dim, causal
        self.qkv = nn.Linear(dim, 3 * heads * head_dim)
        self.proj = nn.Linear(heads * head_dim, dim)
        self.softmax = nn.Softmax(dim=-1)  # a module, so that a hook can watch or quantize it

    def forward(self, x, size=None, return_keys: bool = False):           # x: (B, N, dim)
        B, N, _ = x.shape
        qkv = self.qkv(x).view(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]                                  # each (B, H, N, d_head)
        scores = q @ k.transpose(-2, -1) * self.head_dim ** -0.5          # (B, H, N, N)
        if size is not None:                                             # size: (B, N)
            scores = scores + size.log()[:, None, None, :]
        if self.causal:                                                  # -inf above the diagonal
            future = torch.ones(N, N, dtype=torch.bool, device=x.device).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        out = (self.softmax(scores) @ v).transpose(1, 2).reshape(B, N, -1)  # (B, N, H * d_head)
        out = self.proj(out)                                             # (B, N, dim)
        return (out, k) if return_keys else out  # token merging matches tokens by their keys


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + fc2(GELU(fc1(LN(x))))."""

    def __init__(self, dim: int, heads: int, head_dim: int, mlp_dim: int, causal: bool = False):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads, head_dim, causal)
        self.norm2, self.fc1, self.act, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim)

    def mlp(self, x):
        return self.fc2(self.act(self.fc1(self.norm2(x))))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(x)


class ViT(nn.Module):
    """A vision transformer: patches -> tokens (+ learned positions) -> blocks -> mean -> linear.

    32x32 images in 4x4 patches: 64 tokens of ``dim`` numbers each. No class token: the
    classifier reads the mean of the final tokens (as in Beyer et al.'s 2022 "simple ViT"), which
    also makes the model easy to run on fewer tokens (token merging: a weighted mean).
    ``heads`` / ``mlp_dims``: one number for every block, or a list (as left by pruning).
    """

    def __init__(self, image_size=32, patch=4, dim=192, depth=6, heads=6, head_dim=32, mlp_dims=384,
                 num_classes=10, channels=3):
        super().__init__()
        heads = [heads] * depth if isinstance(heads, int) else list(heads)
        mlp_dims = [mlp_dims] * depth if isinstance(mlp_dims, int) else list(mlp_dims)
        self.patch_embed = nn.Conv2d(channels, dim, patch, stride=patch)  # one linear map per patch
        self.pos = nn.Parameter(torch.randn(1, (image_size // patch) ** 2, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, h, head_dim, m) for h, m in zip(heads, mlp_dims)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def embed(self, images):                                     # (B, 3, 32, 32) -> (B, 64, dim)
        return self.patch_embed(images).flatten(2).transpose(1, 2) + self.pos

    def classify(self, x, size=None):                            # (B, N, dim) -> (B, classes)
        x = self.norm(x)
        pooled = x.mean(1) if size is None else (x * size[..., None]).sum(1) / size.sum(1, keepdim=True)
        return self.head(pooled)

    def forward(self, images):
        x = self.embed(images)
        for block in self.blocks:
            x = block(x)
        return self.classify(x)


def vit(**options) -> ViT:
    """The workbook's ViT for CIFAR-10 (see ``ViT`` for the options)."""
    return ViT(**options)


class GPT(nn.Module):
    """A decoder-only language model over characters (Radford et al. 2018; nanoGPT's layout).

    Character ids -> embeddings (+ learned positions) -> causal pre-norm blocks (the ViT's
    ``Block``) -> LayerNorm -> logits over the next character. The output layer is not tied to
    the embedding, so every linear layer can be quantized or pruned on its own.
    """

    def __init__(self, vocab_size: int = 65, context: int = 128, dim: int = 192, depth: int = 6,
                 heads: int = 6, head_dim: int = 32, mlp_dim: int = 768):
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(1, context, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, heads, head_dim, mlp_dim, causal=True) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab_size)

    def forward(self, ids):                                      # ids: (B, T) int64, T <= context
        T = ids.shape[1]
        if T > self.context:
            raise ValueError(f"At most {self.context} characters of context, got {T}: crop the input.")
        x = self.tok(ids) + self.pos[:, :T]                      # (B, T, dim)
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))                           # (B, T, vocab): logits for ids[:, 1:]


def char_gpt(**options) -> GPT:
    """The workbook's character-level GPT (see ``GPT`` for the options)."""
    return GPT(**options)


MODELS = {"lenet300": lenet300, "lenet5": lenet5, "cifar_cnn": cifar_cnn, "cifar_cnn_dws": cifar_cnn_dws,
          "mlp1200": mlp1200, "mlp800": mlp800, "vit": vit, "char_gpt": char_gpt}
DATASET_OF = {"lenet300": "mnist", "lenet5": "mnist", "cifar_cnn": "cifar10", "cifar_cnn_dws": "cifar10",
              "mlp1200": "mnist", "mlp800": "mnist", "vit": "cifar10", "char_gpt": "shakespeare"}


def check_model_name(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}: choose one of {sorted(MODELS)}.")
    return name


def build_model(name: str, seed: int | None = None, **options) -> nn.Module:
    """A freshly initialized model by name; ``seed`` makes the initialization repeatable.

    ``options`` go to the constructor, e.g. ``build_model("cifar_cnn", widths=(32, 64, 128))``.
    """
    check_model_name(name)
    if seed is not None:
        torch.manual_seed(seed)
    return MODELS[name](**options)
