import pytest
import torch
from torch import nn

from compresslab import factorization as fz
from compresslab.distillation import feature_hooks
from compresslab.metrics import count_parameters
from compresslab.models import DATASET_OF, build_model


def seeded(module, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_()
    return module

# ---------------------------------------------------------------- SVD of linear layers


def test_rank_for_energy_is_the_smallest_rank_that_reaches_the_fraction():
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9, 4, 1 of 14
    assert [fz.rank_for_energy(s, k) for k in (0.1, 9 / 14, 0.65, 13 / 14, 0.99, 1.0)] == [1, 1, 2, 2, 3, 3]
    torch.manual_seed(0)
    s = torch.linalg.svdvals(torch.randn(40, 30))
    for keep in (0.3, 0.5, 0.8, 0.95):
        r = fz.rank_for_energy(s, keep)
        frac = fz.cumulative_energy(s)
        assert frac[r - 1] >= keep and (r == 1 or frac[r - 2] < keep)


@pytest.mark.parametrize("rank", [1, 5, 17, 30])
def test_svd_error_is_the_discarded_energy(rank):
    """||W - W_r||_F^2 = sum_{i > r} s_i^2 (Eckart-Young), read off the two new layers."""
    layer = seeded(nn.Linear(30, 50))
    block = fz.svd_linear(layer, rank)
    assert block.v.weight.shape == (rank, 30) and block.us.weight.shape == (50, rank)
    assert block.v.bias is None and torch.equal(block.us.bias, layer.bias)
    w_r = block.us.weight.double() @ block.v.weight.double()
    err = (layer.weight.double() - w_r).pow(2).sum()
    s = fz.singular_values(layer)
    assert abs(err - s[rank:].pow(2).sum()) <= 1e-6 * s.pow(2).sum()


def test_svd_keeps_the_singular_values_in_the_second_layer():
    """V_r^T has orthonormal rows; U_r S_r carries the scale (so the split is the one asked for)."""
    block = fz.svd_linear(seeded(nn.Linear(20, 12)), 6)
    v = block.v.weight.double()
    torch.testing.assert_close(v @ v.T, torch.eye(6, dtype=torch.float64), atol=1e-5, rtol=0)
    s = fz.singular_values(block.us.weight)
    torch.testing.assert_close(s, fz.singular_values(seeded(nn.Linear(20, 12)))[:6], rtol=1e-5, atol=1e-6)


def test_full_rank_factorized_model_reproduces_the_original():
    model = build_model("lenet300", seed=0).eval()
    full = fz.svd_factorize(model, ranks={"fc1": 300, "fc2": 100, "fc3": 10})
    x = torch.randn(16, 1, 28, 28)
    torch.testing.assert_close(full(x), model(x), rtol=1e-4, atol=1e-4)
    assert isinstance(model.fc1, nn.Linear), "a new model unless inplace=True"
    assert isinstance(full.fc1, nn.Sequential) and full.fc1.v.out_features == 300


def test_svd_factorize_by_energy_and_in_place():
    model = build_model("lenet300", seed=0)
    small = fz.svd_factorize(model, energy=0.5, layers=["fc1", "fc2"])
    for name in ("fc1", "fc2"):
        assert getattr(small, name).v.out_features == fz.rank_for_energy(fz.singular_values(getattr(model, name)), 0.5)
    assert count_parameters(small) < count_parameters(model)
    assert isinstance(small.fc3, nn.Linear)
    same = fz.svd_factorize(model, ranks=8, layers=["fc2"], inplace=True)
    assert same is model and model.fc2.v.out_features == 8
    assert set(fz.spectrum(build_model("lenet300"))) == {"fc1", "fc2", "fc3"}


@pytest.mark.parametrize("rank,match,error", [(0, "between 1 and 100", ValueError),
                                              (101, "between 1 and 100", ValueError),
                                              (2.5, "must be an integer", TypeError)])
def test_svd_rank_out_of_range(rank, match, error):
    with pytest.raises(error, match=f"'fc2'.*{match}|{match}"):
        fz.svd_factorize(build_model("lenet300"), ranks={"fc2": rank})


def test_svd_bad_layers_and_settings():
    with pytest.raises(ValueError, match="'conv1' is a Conv2d.*nn.Linear.*tucker2_factorize"):
        fz.svd_factorize(build_model("lenet5"), ranks={"conv1": 3})
    with pytest.raises(ValueError, match="no layer 'fc9'"):
        fz.svd_factorize(build_model("lenet300"), ranks={"fc9": 3})
    with pytest.raises(ValueError, match="either energy= .*or ranks="):
        fz.svd_factorize(build_model("lenet300"), energy=0.9, ranks=3)
    with pytest.raises(ValueError, match=r"fraction in \(0, 1\]"):
        fz.svd_factorize(build_model("lenet300"), energy=1.5)
    model = build_model("lenet300")
    with pytest.raises(ValueError):
        fz.svd_factorize(model, ranks={"fc1": 10, "fc2": 0}, inplace=True)
    assert isinstance(model.fc1, nn.Linear), "nothing is replaced when one layer's rank is wrong"

# ---------------------------------------------------------------- Tucker-2


def relative_error(w, w_hat):
    return ((w - w_hat).norm() / w.norm()).item()


@pytest.mark.parametrize("ranks,n_iter", [((6, 4), 0), ((6, 4), 3), ((12, 3), 2), ((16, 8), 0)])
def test_tucker2_matches_tensorly(ranks, n_iter):
    """Same ranks, HOSVD init and the same number of HOOI rounds: the same reconstruction."""
    tl = pytest.importorskip("tensorly")
    from tensorly.decomposition import partial_tucker

    torch.manual_seed(0)
    w = torch.randn(16, 8, 3, 3, dtype=torch.float64)
    core, factors = fz.tucker2(w, ranks, n_iter)
    (tl_core, tl_factors), _ = partial_tucker(w.numpy(), list(ranks), modes=[0, 1], init="svd",
                                              n_iter_max=n_iter, tol=0)
    ours = fz.tucker2_reconstruct(core, factors)
    theirs = torch.from_numpy(tl.tenalg.multi_mode_dot(tl_core, tl_factors, modes=[0, 1]))
    assert core.shape == (*ranks, 3, 3) and factors[0].shape == (16, ranks[0])
    torch.testing.assert_close(ours, theirs, rtol=1e-8, atol=1e-8)
    if ranks == (16, 8):  # full ranks reconstruct exactly
        torch.testing.assert_close(ours, w)


def test_hooi_never_does_worse_than_hosvd():
    torch.manual_seed(1)
    w = torch.randn(32, 24, 3, 3)
    errors = [relative_error(w.double(), fz.tucker2_reconstruct(*fz.tucker2(w, (8, 6), n))) for n in (0, 1, 5)]
    assert errors[0] >= errors[1] >= errors[2] > 0


@pytest.mark.parametrize("conv", [
    nn.Conv2d(8, 12, 3, padding=1), nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False),
    nn.Conv2d(6, 10, (3, 5), padding=(1, 2), dilation=(2, 1)), nn.Conv2d(6, 10, 3, padding=1, padding_mode="reflect")])
def test_tucker2_conv_is_exact_at_full_rank_and_wired_right_below(conv):
    conv = seeded(conv)
    x = torch.randn(2, conv.in_channels, 11, 11)
    full = fz.tucker2_conv(conv, (conv.out_channels, conv.in_channels))
    torch.testing.assert_close(full(x), conv(x), rtol=1e-4, atol=1e-4)
    low = fz.tucker2_conv(conv, (5, 3))
    assert [m.kernel_size for m in low] == [(1, 1), conv.kernel_size, (1, 1)]
    assert low.core.stride == conv.stride and low.first.bias is None and low.core.bias is None
    # the chain computes the conv with the reconstructed kernel
    core, factors = fz.tucker2(conv.weight, (5, 3))
    w_hat = fz.tucker2_reconstruct(core, factors).float()
    expected = conv._conv_forward(x, w_hat, conv.bias)
    torch.testing.assert_close(low(x), expected, rtol=1e-4, atol=1e-4)


def test_tucker2_factorize_the_cifar_cnn():
    model = build_model("cifar_cnn", seed=0).eval()
    small = fz.tucker2_factorize(model, ranks=(16, 16))
    assert isinstance(small.conv1, nn.Conv2d), "the first conv (3 input channels) stays"
    assert all(isinstance(getattr(small, f"conv{i}"), nn.Sequential) for i in range(2, 7))
    assert small.conv6.core.weight.shape == (16, 16, 3, 3)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert count_parameters(small) < count_parameters(model) / 3
    by_energy = fz.tucker2_factorize(model, energy=0.8, layers=["conv4"])
    assert (by_energy.conv4.core.out_channels, by_energy.conv4.core.in_channels) == fz.tucker2_ranks(model.conv4, 0.8)
    exact = fz.tucker2_factorize(model, energy=1.0)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(exact(x), model(x), rtol=1e-3, atol=1e-3)


def test_tucker2_bad_input():
    with pytest.raises(ValueError, match="'conv'.*grouped convolution.*groups=4"):
        fz.tucker2_conv(nn.Conv2d(8, 8, 3, groups=4), 2, name="conv")
    with pytest.raises(ValueError, match="'fc1' is a Linear.*svd_factorize"):
        fz.tucker2_factorize(build_model("lenet5"), ranks={"fc1": 4})
    with pytest.raises(ValueError, match="'conv2'.*between 1 and 64.*C_out"):
        fz.tucker2_factorize(build_model("cifar_cnn"), ranks={"conv2": (65, 8)})
    with pytest.raises(ValueError, match="'conv2'.*between 1 and 64.*C_in"):
        fz.tucker2_factorize(build_model("cifar_cnn"), ranks={"conv2": (8, 0)})
    with pytest.raises(TypeError, match="is a Conv1d"):
        fz.tucker2_conv(nn.Conv1d(4, 4, 3), 2)

# ---------------------------------------------------------------- spatially separable and depthwise separable


@pytest.mark.parametrize("conv", [nn.Conv2d(6, 10, 3, padding=1), nn.Conv2d(6, 10, (3, 5), stride=2, padding=(1, 2))])
def test_separable_conv_exact_at_full_rank_error_is_discarded_energy(conv):
    conv = seeded(conv)
    c_out, c_in, kh, kw = conv.weight.shape
    x = torch.randn(2, c_in, 12, 12)
    full = fz.separable_conv(conv, min(c_in * kh, c_out * kw))
    torch.testing.assert_close(full(x), conv(x), rtol=1e-4, atol=1e-4)
    rank = 4
    pair = fz.separable_conv(conv, rank)
    assert pair.vertical.kernel_size == (kh, 1) and pair.horizontal.kernel_size == (1, kw)
    w_hat = torch.einsum("kiy,okx->oiyx", pair.vertical.weight[..., 0], pair.horizontal.weight[:, :, 0])
    s = torch.linalg.svdvals(fz.separable_matrix(conv.weight))
    err = (conv.weight.double() - w_hat.double()).pow(2).sum()
    assert abs(err - s[rank:].pow(2).sum()) <= 1e-6 * s.pow(2).sum()
    torch.testing.assert_close(pair(x), conv._conv_forward(x, w_hat, conv.bias), rtol=1e-4, atol=1e-4)


def test_separable_bad_input():
    with pytest.raises(ValueError, match="'c'.*between 1 and 18"):
        fz.separable_conv(nn.Conv2d(6, 10, 3), 19, name="c")
    with pytest.raises(ValueError, match="numeric zero padding"):
        fz.separable_conv(nn.Conv2d(6, 10, 3, padding=1, padding_mode="reflect"), 2)
    small = fz.separable_factorize(build_model("cifar_cnn"), energy=0.5)
    assert small(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_depthwise_separable_fit_is_exact_for_a_separable_kernel():
    torch.manual_seed(0)
    p, d = torch.randn(12, 5), torch.randn(5, 3, 3)
    conv = nn.Conv2d(5, 12, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(p[:, :, None, None] * d[None])
    pair = fz.depthwise_separable(conv)
    assert pair.depthwise.groups == 5 and pair.pointwise.kernel_size == (1, 1)
    x = torch.randn(2, 5, 9, 9)
    torch.testing.assert_close(pair(x), conv(x), rtol=1e-4, atol=1e-4)
    # a general kernel: the error is what lies beyond each channel's first singular value
    conv = seeded(nn.Conv2d(5, 12, 3, padding=1))
    pair = fz.depthwise_separable(conv)
    w_hat = pair.pointwise.weight[:, :, 0, 0, None, None] * pair.depthwise.weight[:, 0][None]
    s = torch.linalg.svdvals(conv.weight.double().transpose(0, 1).reshape(5, 12, 9))
    err = (conv.weight.double() - w_hat.double()).pow(2).sum()
    torch.testing.assert_close(err, s[:, 1:].pow(2).sum(), rtol=1e-5, atol=1e-6)


def test_depthwise_separable_cifar_cnn():
    model, base = build_model("cifar_cnn_dws", seed=0), build_model("cifar_cnn")
    assert DATASET_OF["cifar_cnn_dws"] == "cifar10"
    names = [n for n, _ in model.named_children()]
    assert names[:6] == ["conv1", "pool1", "bn1", "relu1", "dw2", "pw2"]
    for i, (c_in, c_out) in enumerate([(64, 64), (64, 128), (128, 128), (128, 256), (256, 256)], start=2):
        dw, pw = getattr(model, f"dw{i}"), getattr(model, f"pw{i}")
        assert dw.weight.shape == (c_in, 1, 3, 3) and dw.groups == c_in
        assert pw.weight.shape == (c_out, c_in, 1, 1)
    convs = 3 * 64 * 9 + sum(c_in * 9 + c_in * c_out for c_in, c_out in
                             [(64, 64), (64, 128), (128, 128), (128, 256), (256, 256)])
    bns = 2 * (64 * 2 + 128 * 2 + 256 * 2)
    assert count_parameters(model) == convs + bns + 256 * 10 + 10
    assert count_parameters(model) < count_parameters(base) / 7
    # the same feature shapes under the same names: feature distillation can pair them
    x = torch.randn(2, 3, 32, 32)
    layers = [f"relu{i}" for i in range(1, 7)]
    with feature_hooks(model.eval(), layers) as f_student, feature_hooks(base.eval(), layers) as f_teacher:
        assert model(x).shape == base(x).shape == (2, 10)
    assert all(f_student[n].shape == f_teacher[n].shape for n in layers)
    thin = build_model("cifar_cnn_dws", widths=(16, 32, 64))
    assert thin(x).shape == (2, 10) and thin.pw6.out_channels == 64
