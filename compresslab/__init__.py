"""compresslab: the helper package of a workbook on neural-network compression.

One module per idea; the notebooks in ``notebooks/`` import from here:

* :mod:`compresslab.data`     MNIST / CIFAR-10 as in-memory tensors, offline-ready caches
* :mod:`compresslab.models`   LeNet-300-100, LeNet-5 (Caffe), a small VGG-style CIFAR CNN (and its
                              depthwise-separable twin), Hinton et al.'s MNIST teacher and student
* :mod:`compresslab.train`    fit / fine_tune / evaluate, seeded and device-agnostic
* :mod:`compresslab.zoo`      pretrained checkpoints with verified checksums
* :mod:`compresslab.metrics`  parameters, sparsity, bytes, FLOPs, latency, speed tables
* :mod:`compresslab.pruning`  unstructured pruning: scores, masks, schedules
* :mod:`compresslab.structured`  filter / channel pruning, surgery, network slimming
* :mod:`compresslab.quantization`  affine quantization, PTQ / QAT, k-means, binary / ternary, mixed precision
* :mod:`compresslab.deploy`   ONNX export and real int8 with ONNX Runtime
* :mod:`compresslab.distillation`   the KD loss, feature (hint) losses, a cached teacher, Hinton et al.'s experiments
* :mod:`compresslab.factorization`  truncated SVD, Tucker-2, separable and depthwise-separable convs
* :mod:`compresslab.coding`   Deep Compression's storage: relative indices, Huffman coding, bytes per stage
* :mod:`compresslab.experiments`  runs too long for a notebook, written to ``data/results/``
* :mod:`compresslab.viz`      one plotting style for the whole workbook
"""
from .data import Dataset, DatasetNotFoundError, load_dataset
from .models import build_model, cifar_cnn, lenet5, lenet300
from .train import evaluate, fine_tune, fit, get_device, predict, seed_everything
from .zoo import ChecksumError, load_pretrained

__version__ = "0.1.0"
