import pytest
import torch

from compresslab.metrics import count_parameters
from compresslab.models import build_model


@pytest.mark.parametrize("name,shape,params", [
    ("lenet300", (1, 28, 28), 266_610),
    ("lenet5", (1, 28, 28), 431_080),
])
def test_lenet_parameter_counts_match_han_et_al(name, shape, params):
    model = build_model(name)
    assert count_parameters(model) == params
    assert model(torch.zeros(2, *shape)).shape == (2, 10)


def test_cifar_cnn_size_and_shape():
    model = build_model("cifar_cnn")
    assert 500_000 <= count_parameters(model) <= 1_500_000
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_lenet5_is_the_caffe_variant():
    """No nonlinearity right after the convolutions: conv -> max-pool -> conv -> max-pool."""
    names = [n for n, _ in build_model("lenet5").named_children()]
    assert names[:4] == ["conv1", "pool1", "conv2", "pool2"]


def test_seeded_initialization_is_repeatable():
    a, b = build_model("lenet5", seed=1), build_model("lenet5", seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unknown_model_name():
    with pytest.raises(ValueError, match="Unknown model 'resnet50'.*choose one of"):
        build_model("resnet50")


def test_cifar_cnn_per_conv_widths_rebuild_a_pruned_model():
    """Six widths (one per conv) describe what structured pruning leaves; three are per stage."""
    model = build_model("cifar_cnn", widths=(45, 45, 90, 90, 179, 179))
    assert [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)] == [45, 45, 90, 90, 179, 179]
    assert model.fc.in_features == 179 and model(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert [n for n, _ in model.named_children()] == [n for n, _ in build_model("cifar_cnn").named_children()]
    with pytest.raises(ValueError, match="3 stage widths or 6 conv widths"):
        build_model("cifar_cnn", widths=(8, 8))
