"""The three baseline networks of the workbook.

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

Every model is a flat ``nn.Sequential`` of named layers (``conv1``, ``bn1``, ``fc1`` ...):
easy to print, easy to index, and easy to prune structurally later on.
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


def cifar_cnn(widths: tuple[int, int, int] = (64, 128, 256), num_classes: int = 10) -> nn.Sequential:
    """VGG-style: [conv-pool-BN-ReLU, conv-BN-ReLU] x 3 stages, global max-pool, linear.

    32x32 -> 16 -> 8 -> 4 pixels; the classifier sees one value per channel.
    """
    layers, c_in, i = OrderedDict(), 3, 1
    for stage, c_out in enumerate(widths, start=1):
        layers[f"conv{i}"] = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        layers[f"pool{stage}"] = nn.MaxPool2d(2)
        layers[f"bn{i}"] = nn.BatchNorm2d(c_out)
        layers[f"relu{i}"] = nn.ReLU()
        layers[f"conv{i + 1}"] = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        layers[f"bn{i + 1}"] = nn.BatchNorm2d(c_out)
        layers[f"relu{i + 1}"] = nn.ReLU()
        c_in, i = c_out, i + 2
    layers["gpool"] = nn.AdaptiveMaxPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(c_in, num_classes)
    return nn.Sequential(layers)


MODELS = {"lenet300": lenet300, "lenet5": lenet5, "cifar_cnn": cifar_cnn}
DATASET_OF = {"lenet300": "mnist", "lenet5": "mnist", "cifar_cnn": "cifar10"}


def check_model_name(name: str) -> str:
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}: choose one of {sorted(MODELS)}.")
    return name


def build_model(name: str, seed: int | None = None) -> nn.Sequential:
    """A freshly initialized model by name; ``seed`` makes the initialization repeatable."""
    check_model_name(name)
    if seed is not None:
        torch.manual_seed(seed)
    return MODELS[name]()
