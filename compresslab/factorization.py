"""Low-rank factorization: replace a layer by a chain of thinner layers that computes nearly
the same function with fewer weights and FLOPs.

(One module on purpose: its four factorizations are 50-80 lines each and share the helpers at
the top (rank checks, float64 SVDs, layer replacement); a tenth of it is this docstring, which
reads as one comparison of the four.)

**Truncated SVD of a linear layer** (Denton et al. 2014, Xue et al. 2013). W (m x n) =
U S V^T with singular values s_1 >= s_2 >= ... Keeping the r largest,

    W ≈ W_r = U_r S_r V_r^T,     ||W - W_r||_F^2 = sum_{i > r} s_i^2   (Eckart-Young),

the best rank-r approximation. y = W x + b becomes two layers: x -> V_r^T x (r x n, no bias)
-> U_r S_r (.) + b (m x r): r (m + n) weights instead of m n. The rank is picked by the
fraction of the *energy* sum s_i^2 it keeps (``rank_for_energy``).

**Tucker-2 of a convolution** (Kim et al. 2016). A kernel W (C_out, C_in, k, k) is a 4-way
tensor; compress only its two channel modes:

    W ≈ G x_0 U_out x_1 U_in,    G (R_out, R_in, k, k),  U_out (C_out, R_out),  U_in (C_in, R_in)

which runs as three convolutions: 1x1 (C_in -> R_in, weights U_in^T), the k x k core G
(R_in -> R_out, the original stride and padding), 1x1 (R_out -> C_out, weights U_out, the
original bias). U_out and U_in are the leading left singular vectors of the mode-0 and
mode-1 unfoldings (HOSVD); a few rounds of HOOI (higher-order orthogonal iteration) refine
them, and G = W x_0 U_out^T x_1 U_in^T. ``tensorly.decomposition.partial_tucker`` computes
the same (the tests check it).

**Spatially separable** (Jaderberg et al. 2014, scheme 2, with Tai et al.'s 2016 closed form).
A k x k conv becomes a k x 1 conv (C_in -> K) then a 1 x k conv (K -> C_out). Rearranged as a
(C_in k) x (C_out k) matrix M[(i, y), (o, x)] = W[o, i, y, x] the pair is exactly a rank-K
factorization of M, so the truncated SVD of M is the best one, with error sum_{j > K} s_j^2.

**Depthwise separable** (MobileNet, Howard et al. 2017): a depthwise k x k conv (one filter
per input channel) then a pointwise 1x1. It equals W[o, i] = P[o, i] D[i] for all (o, i): a
rank-1 matrix per input channel, so the best fit of a trained conv is one SVD per channel
(``depthwise_separable``); usually it is trained as a new student instead
(``models.cifar_cnn_dws``, by distillation from the original).

The SVDs run in float64 on the CPU (exact enough for the tests, and available on every
device); the new layers go back to the original layer's device and dtype.
Production tools: tensorly (``pip install tensorly``) for the decompositions; ``torch.linalg.svd``
is all the SVD path needs.
"""
from __future__ import annotations

import copy
import functools
import numbers
from collections import OrderedDict

import torch
from torch import nn

from . import checks
from .checks import finite as check_finite

# ---------------------------------------------------------------- checks and shared helpers


def check_rank(rank, limit: int, name: str, what: str) -> int:
    """A rank is an integer in [1, limit]; ``what`` says where the limit comes from."""
    return checks.integer(rank, f"The rank of layer {name!r}", 1, limit, example=max(1, limit // 4),
                          must=f"be an integer between 1 and {limit} ({what})")


def check_ranks_pair(ranks, name: str = "kernel") -> tuple:
    """Tucker-2 ranks come as a pair (R_out, R_in)."""
    must = "be a pair (R_out, R_in) or one integer for both"
    if not isinstance(ranks, (tuple, list)):
        raise TypeError(checks.message(f"The Tucker-2 ranks of layer {name!r}", must, ranks, "(16, 8)"))
    if len(ranks) != 2:
        raise ValueError(checks.message(f"The Tucker-2 ranks of layer {name!r}", must, ranks, "(16, 8)"))
    return tuple(ranks)


def check_keep(keep) -> float:
    return checks.fraction(keep, "The kept energy", low_open=True, example="0.9 (90% of sum s_i^2)")


def as_float64(t: torch.Tensor) -> torch.Tensor:
    """A detached float64 CPU copy: SVDs in double precision, on any device (MPS has no float64)."""
    check_finite(t, "weight")
    return t.detach().to("cpu", torch.float64)


def like(t: torch.Tensor, ref: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.to(ref.device, ref.dtype).contiguous())


def replace_layer(model: nn.Module, name: str, new: nn.Module) -> None:
    """Swap the submodule ``name`` (dotted names reach inside blocks) for ``new``, in place."""
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def get_layer(model: nn.Module, name: str, kind: type, method: str, hint: str) -> nn.Module:
    modules = dict(model.named_modules())
    if name not in modules or not name:
        raise ValueError(f"The model has no layer {name!r}; its layers are {[n for n in modules if n]}.")
    layer = modules[name]
    if type(layer) is not kind:
        raise ValueError(f"Layer {name!r} is a {type(layer).__name__}: {method} handles "
                         f"nn.{kind.__name__} layers only ({hint}).")
    return layer


def per_layer(value, layers, what: str) -> dict:
    """One setting for every layer, or a dict that must name each of them."""
    if isinstance(value, dict):
        missing = [n for n in layers if n not in value]
        if missing:
            raise ValueError(f"No {what} given for layer(s) {missing}.")
        return {n: value[n] for n in layers}
    return dict.fromkeys(layers, value)


def one_of(energy, ranks) -> None:
    if (energy is None) == (ranks is None):
        raise ValueError("Give either energy= (the fraction of sum s_i^2 to keep) or ranks=, not both "
                         "and not neither.")

# ---------------------------------------------------------------- 1. truncated SVD of linear layers


def singular_values(weight: torch.Tensor | nn.Module) -> torch.Tensor:
    """s_1 >= s_2 >= ... of a weight matrix (float64, CPU); a conv kernel is read as the
    (C_out, C_in k k) matrix of its filters, a layer as its weight."""
    w = weight.weight if isinstance(weight, nn.Module) else checks.tensor(weight, "weight")
    if w.dim() < 2:
        raise ValueError(f"Singular values need a matrix (out, in) or a conv kernel, got shape {tuple(w.shape)}.")
    return torch.linalg.svdvals(as_float64(w).reshape(w.shape[0], -1))


def cumulative_energy(s: torch.Tensor) -> torch.Tensor:
    """Fraction of the energy kept by ranks 1, 2, ...: sum_{i <= r} s_i^2 / sum_i s_i^2
    (all 1 for an all-zero matrix, as in ``rank_for_energy``: any rank keeps all of nothing)."""
    e = s.double().pow(2)
    return e.cumsum(0) / e.sum() if e.sum() > 0 else torch.ones_like(e)


def rank_for_energy(s: torch.Tensor, keep: float) -> int:
    """The smallest r whose sum_{i <= r} s_i^2 reaches ``keep`` of the total."""
    keep = check_keep(keep)
    if not s.abs().sum() > 0:
        return 1  # an all-zero matrix: any rank keeps "all" of nothing
    frac = cumulative_energy(s)
    # a tolerance for keep = 1.0, whose cumulative sum may stop a rounding error short of 1
    return int(torch.searchsorted(frac, torch.tensor([keep - 1e-12], dtype=frac.dtype)).item()) + 1


def spectrum(model: nn.Module, layers=None) -> dict[str, torch.Tensor]:
    """Singular values of every nn.Linear (or of the named Linear / Conv2d layers), by name."""
    if layers is None:
        layers = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    return {n: singular_values(model.get_submodule(n)) for n in layers}


def svd_linear(layer: nn.Linear, rank: int, name: str = "layer") -> nn.Sequential:
    """y = W x + b  ->  y = (U_r S_r) (V_r^T x) + b: two nn.Linear layers named ``v`` and ``us``."""
    checks.module(layer, f"Layer {name!r}", nn.Linear)
    m, n = layer.weight.shape
    rank = check_rank(rank, min(m, n), name, f"min(out, in) of its {m}x{n} weight")
    u, s, vh = torch.linalg.svd(as_float64(layer.weight), full_matrices=False)
    v = nn.Linear(n, rank, bias=False)
    us = nn.Linear(rank, m, bias=layer.bias is not None)
    v.weight = like(vh[:rank], layer.weight)                 # V_r^T: r x n
    us.weight = like(u[:, :rank] * s[:rank], layer.weight)   # U_r S_r: m x r
    if layer.bias is not None:
        us.bias = like(as_float64(layer.bias), layer.bias)
    return nn.Sequential(OrderedDict([("v", v), ("us", us)]))


def svd_factorize(model: nn.Module, energy=None, ranks=None, layers=None,
                  inplace: bool = False) -> nn.Module:
    """Replace linear layers by their truncated SVD (``svd_linear``).

    ``energy``: the fraction of sum s_i^2 to keep (one for all layers, or a dict by name);
    ``ranks``: the rank per layer (an int, or a dict by name). ``layers``: the names to
    factorize (default: every nn.Linear, or the keys of a ``ranks`` dict). Returns a new model
    unless ``inplace``; ``model.fc1.v.out_features`` is then the rank chosen for ``fc1``.
    """
    one_of(energy, ranks)
    if layers is None:
        layers = list(ranks) if isinstance(ranks, dict) else \
            [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    hint = "use tucker2_factorize or separable_factorize for convolutions"
    found = {n: get_layer(model, n, nn.Linear, "svd_factorize", hint) for n in layers}
    ranks = choose_ranks(found, energy, ranks, lambda layer, k: rank_for_energy(singular_values(layer), k))
    return replace_layers(model, found, ranks, svd_linear, inplace)


def choose_ranks(found: dict, energy, ranks, rank_of, what: str = "rank") -> dict:
    """Per-layer ranks: given (an int / tuple for all, or a dict), or ``rank_of(layer, keep)``
    for the energy to keep (one fraction for all, or a dict)."""
    if ranks is None:
        ranks = {n: rank_of(found[n], k) for n, k in per_layer(energy, list(found), "energy").items()}
    return per_layer(ranks, list(found), what)


def replace_layers(model: nn.Module, found: dict, ranks: dict, build, inplace: bool) -> nn.Module:
    """Build every replacement first (a bad rank then changes nothing), then swap them in."""
    new = {n: build(layer, ranks[n], name=n) for n, layer in found.items()}
    model = model if inplace else copy.deepcopy(model)
    for n, block in new.items():
        replace_layer(model, n, block)
    return model

# ---------------------------------------------------------------- 2. Tucker-2 of convolutions


def unfold(t: torch.Tensor, mode: int) -> torch.Tensor:
    """The mode-``mode`` unfolding: that axis becomes the rows, all others the columns."""
    return t.movedim(mode, 0).reshape(t.shape[mode], -1)


def leading_left_singular_vectors(m: torch.Tensor, r: int) -> torch.Tensor:
    """The r leading left singular vectors of m, completed to an orthonormal basis when r
    exceeds the rank m can have (a full SVD then supplies the extra columns)."""
    u = torch.linalg.svd(m, full_matrices=r > min(m.shape))[0]
    return u[:, :r]


def tucker2(weight: torch.Tensor, ranks: tuple[int, int], n_iter: int = 0):
    """Tucker-2 of a kernel (C_out, C_in, kh, kw) on its channel modes: (core, [U_out, U_in]).

    W ≈ core x_0 U_out x_1 U_in, i.e. W[o, i] ≈ sum_{r, s} U_out[o, r] U_in[i, s] core[r, s].
    HOSVD (``n_iter=0``): U_out, U_in from the SVDs of the two unfoldings of W. HOOI
    (``n_iter`` > 0): each round recomputes U_out from W x_1 U_in^T, then U_in from
    W x_0 U_out^T, which never increases the error. float64, on the CPU.
    """
    if checks.tensor(weight, "weight").dim() != 4:
        raise ValueError(f"Tucker-2 needs a conv kernel (C_out, C_in, kh, kw), got shape {tuple(weight.shape)}; "
                         "use svd_linear for a matrix.")
    w = as_float64(weight)
    r_out, r_in = check_ranks_pair(ranks)
    r_out = check_rank(r_out, w.shape[0], "kernel", "its output channels, C_out")
    r_in = check_rank(r_in, w.shape[1], "kernel", "its input channels, C_in")
    u_out = leading_left_singular_vectors(unfold(w, 0), r_out)
    u_in = leading_left_singular_vectors(unfold(w, 1), r_in)
    for _ in range(n_iter):
        u_out = leading_left_singular_vectors(unfold(torch.einsum("oikl,is->oskl", w, u_in), 0), r_out)
        u_in = leading_left_singular_vectors(unfold(torch.einsum("oikl,or->rikl", w, u_out), 1), r_in)
    core = torch.einsum("oikl,or,is->rskl", w, u_out, u_in)
    return core, [u_out, u_in]


def tucker2_reconstruct(core: torch.Tensor, factors) -> torch.Tensor:
    """core x_0 U_out x_1 U_in: the kernel the three convolutions compute together."""
    u_out, u_in = factors
    return torch.einsum("rskl,or,is->oikl", core, u_out, u_in)


def check_conv(conv: nn.Module, name: str, method: str) -> nn.Conv2d:
    if type(conv) is not nn.Conv2d:
        raise TypeError(f"Layer {name!r} is a {type(conv).__name__}: {method} handles nn.Conv2d "
                        "layers only, e.g. nn.Conv2d(16, 32, 3) (use svd_factorize for nn.Linear).")
    if conv.groups != 1:
        raise ValueError(f"Layer {name!r} is a grouped convolution (groups={conv.groups}): {method} "
                         "needs an ordinary one (groups=1); a depthwise conv is already tiny.")
    return conv


def tucker2_ranks(conv: nn.Conv2d, keep: float) -> tuple[int, int]:
    """(R_out, R_in): the smallest ranks keeping ``keep`` of each unfolding's energy."""
    w = as_float64(conv.weight)
    return (rank_for_energy(torch.linalg.svdvals(unfold(w, 0)), keep),
            rank_for_energy(torch.linalg.svdvals(unfold(w, 1)), keep))


def tucker2_conv(conv: nn.Conv2d, ranks, n_iter: int = 0, name: str = "layer") -> nn.Sequential:
    """A conv as 1x1 (C_in -> R_in) -> k x k core (R_in -> R_out) -> 1x1 (R_out -> C_out).

    ``ranks``: (R_out, R_in), or one int for both. The first 1x1 has no bias, so padding it
    first or the core later is the same: the core keeps the original stride, padding and
    dilation, and the last 1x1 carries the original bias. At full ranks it is exact.
    """
    check_conv(conv, name, "Tucker-2")
    r_out, r_in = (ranks, ranks) if isinstance(ranks, numbers.Integral) else check_ranks_pair(ranks, name)
    r_out = check_rank(r_out, conv.out_channels, name, "its output channels, C_out")
    r_in = check_rank(r_in, conv.in_channels, name, "its input channels, C_in")
    core, (u_out, u_in) = tucker2(conv.weight, (r_out, r_in), n_iter)
    first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
    middle = nn.Conv2d(r_in, r_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                       bias=False, padding_mode=conv.padding_mode)
    last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
    first.weight = like(u_in.T[:, :, None, None], conv.weight)
    middle.weight = like(core, conv.weight)
    last.weight = like(u_out[:, :, None, None], conv.weight)
    if conv.bias is not None:
        last.bias = like(as_float64(conv.bias), conv.bias)
    return nn.Sequential(OrderedDict([("first", first), ("core", middle), ("last", last)]))


def default_convs(model: nn.Module) -> list[str]:
    """Every k x k (k > 1) ordinary conv but the first: with 3 input channels the first has
    nothing to compress, and Kim et al. leave it alone too."""
    convs = [n for n, m in model.named_modules() if type(m) is nn.Conv2d and m.groups == 1
             and m.kernel_size != (1, 1)]
    return convs[1:]


def tucker2_factorize(model: nn.Module, energy=None, ranks=None, layers=None, n_iter: int = 0,
                      inplace: bool = False) -> nn.Module:
    """Replace convolutions by their Tucker-2 chains (``tucker2_conv``).

    ``energy``: the fraction of each unfolding's sum s_i^2 to keep (one for all, or a dict);
    ``ranks``: (R_out, R_in) or an int, for all layers or in a dict by name. ``layers``:
    default ``default_convs(model)``, or the keys of a ``ranks`` dict. Returns a new model
    unless ``inplace``.
    """
    one_of(energy, ranks)
    if layers is None:
        layers = list(ranks) if isinstance(ranks, dict) else default_convs(model)
    found = {n: check_conv(get_layer(model, n, nn.Conv2d, "tucker2_factorize", "use svd_factorize for "
                                     "nn.Linear"), n, "Tucker-2") for n in layers}
    ranks = choose_ranks(found, energy, ranks, tucker2_ranks, "ranks")
    return replace_layers(model, found, ranks, functools.partial(tucker2_conv, n_iter=n_iter), inplace)

# ---------------------------------------------------------------- 3. spatially separable (k x 1, 1 x k)


def separable_matrix(weight: torch.Tensor) -> torch.Tensor:
    """M[(i, y), (o, x)] = W[o, i, y, x]: a (C_in kh) x (C_out kw) matrix."""
    c_out, c_in, kh, kw = weight.shape
    return as_float64(weight).permute(1, 2, 0, 3).reshape(c_in * kh, c_out * kw)


def separable_conv(conv: nn.Conv2d, rank: int, name: str = "layer") -> nn.Sequential:
    """A k x k conv as a k x 1 conv (C_in -> K) then a 1 x k conv (K -> C_out), K = ``rank``.

    From the SVD M = U S V^T of ``separable_matrix``: vertical filters sqrt(s_j) u_j, horizontal
    ones sqrt(s_j) v_j. The kernel they compose has error ||W - W_K||_F^2 = sum_{j > K} s_j^2.
    Zero padding only: the vertical conv pads rows, the horizontal one columns.
    """
    check_conv(conv, name, "the spatially separable factorization")
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
        raise ValueError(f"Layer {name!r} uses padding {conv.padding!r} / padding_mode "
                         f"{conv.padding_mode!r}: the separable pair needs numeric zero padding.")
    c_out, c_in, kh, kw = conv.weight.shape
    rank = check_rank(rank, min(c_in * kh, c_out * kw), name, "min(C_in kh, C_out kw)")
    u, s, vh = torch.linalg.svd(separable_matrix(conv.weight), full_matrices=False)
    root = s[:rank].sqrt()
    vert = nn.Conv2d(c_in, rank, (kh, 1), (conv.stride[0], 1), (conv.padding[0], 0),
                     (conv.dilation[0], 1), bias=False)
    horiz = nn.Conv2d(rank, c_out, (1, kw), (1, conv.stride[1]), (0, conv.padding[1]),
                      (1, conv.dilation[1]), bias=conv.bias is not None)
    vert.weight = like((u[:, :rank] * root).T.reshape(rank, c_in, kh, 1), conv.weight)
    horiz.weight = like((root[:, None] * vh[:rank]).reshape(rank, c_out, kw).permute(1, 0, 2)
                        .reshape(c_out, rank, 1, kw), conv.weight)
    if conv.bias is not None:
        horiz.bias = like(as_float64(conv.bias), conv.bias)
    return nn.Sequential(OrderedDict([("vertical", vert), ("horizontal", horiz)]))


def separable_factorize(model: nn.Module, energy=None, ranks=None, layers=None,
                        inplace: bool = False) -> nn.Module:
    """Replace convolutions by k x 1 + 1 x k pairs (``separable_conv``); arguments as in
    ``svd_factorize`` (the energy is that of ``separable_matrix``); default layers as in
    ``tucker2_factorize``."""
    one_of(energy, ranks)
    if layers is None:
        layers = list(ranks) if isinstance(ranks, dict) else default_convs(model)
    found = {n: check_conv(get_layer(model, n, nn.Conv2d, "separable_factorize", "use svd_factorize for "
                                     "nn.Linear"), n, "the spatially separable factorization") for n in layers}
    ranks = choose_ranks(found, energy, ranks, lambda conv, k: rank_for_energy(
        torch.linalg.svdvals(separable_matrix(conv.weight)), k))
    return replace_layers(model, found, ranks, separable_conv, inplace)

# ---------------------------------------------------------------- 4. depthwise separable (MobileNet)


def depthwise_separable(conv: nn.Conv2d, name: str = "layer") -> nn.Sequential:
    """The closest depthwise k x k + pointwise 1x1 pair to a trained conv (least squares).

    W[o, i, :, :] ≈ P[o, i] D[i, :, :]: for each input channel i the (C_out, k k) matrix
    W[:, i] is replaced by its best rank-1 approximation s_1 u_1 v_1^T (P[:, i] = s_1 u_1,
    D[i] = v_1); the error is the energy beyond the first singular value of every channel.
    Usually far from exact: a depthwise-separable net is trained, not converted (notebook 08).
    """
    check_conv(conv, name, "the depthwise-separable fit")
    c_out, c_in, kh, kw = conv.weight.shape
    per_channel = as_float64(conv.weight).permute(1, 0, 2, 3).reshape(c_in, c_out, kh * kw)
    u, s, vh = torch.linalg.svd(per_channel, full_matrices=False)   # batched over channels
    dw = nn.Conv2d(c_in, c_in, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                   groups=c_in, bias=False, padding_mode=conv.padding_mode)
    pw = nn.Conv2d(c_in, c_out, 1, bias=conv.bias is not None)
    dw.weight = like(vh[:, 0].reshape(c_in, 1, kh, kw), conv.weight)
    pw.weight = like((u[:, :, 0] * s[:, :1]).T[:, :, None, None], conv.weight)
    if conv.bias is not None:
        pw.bias = like(as_float64(conv.bias), conv.bias)
    return nn.Sequential(OrderedDict([("depthwise", dw), ("pointwise", pw)]))
