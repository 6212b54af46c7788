"""compresslab: the helper package of a workbook on neural-network compression.

One module per idea. The package root holds the everyday workflow, and the notebooks call it
from there (``cl.load_dataset``, ``cl.build_model``, ``cl.load_pretrained``, ``cl.fit``,
``cl.evaluate``, ...); every technique is called through its own module (``pruning.``,
``structured.``, ``Q.`` for quantization, ...), which ``import compresslab`` does not load.

Workflow (exported at the root):

* :mod:`compresslab.data`     MNIST / CIFAR-10 as in-memory tensors, offline-ready caches
* :mod:`compresslab.models`   LeNet-300-100, LeNet-5 (Caffe), a small VGG-style CIFAR CNN (and its
                              depthwise-separable twin), Hinton et al.'s MNIST teacher and student, a small vision transformer,
                              a character-level GPT
* :mod:`compresslab.text`     a character corpus (committed under data/text/), windows, perplexity, sampling
* :mod:`compresslab.train`    fit / fine_tune / evaluate / predict, seeded and device-agnostic
* :mod:`compresslab.zoo`      loading the pretrained checkpoints, with verified checksums
* :mod:`compresslab.recipes`  how each checkpoint was made: one plain function per checkpoint

Techniques:

* :mod:`compresslab.pruning`  unstructured pruning: scores, masks, schedules
* :mod:`compresslab.structured`  filter / channel pruning, surgery, network slimming
* :mod:`compresslab.quantization`  affine quantization, PTQ / QAT, k-means, binary / ternary, mixed precision
* :mod:`compresslab.distillation`   the KD loss, feature (hint) losses, a teacher computed once
* :mod:`compresslab.hinton`   Hinton et al.'s MNIST experiments: class similarity, the missing 3s and their bias fix
* :mod:`compresslab.factorization`  truncated SVD, Tucker-2, separable and depthwise-separable convs
* :mod:`compresslab.coding`   Huffman coding and relative indices for sparse positions
* :mod:`compresslab.deep_compression`  Deep Compression's pipeline and the bytes of each stage
* :mod:`compresslab.transformer`  a ViT's heads and MLP neurons: importance, masks, surgery
* :mod:`compresslab.tome`     token merging (ToMe): bipartite soft matching, proportional attention
* :mod:`compresslab.llm_pruning`  one-shot pruning of a language model: magnitude, Wanda, SparseGPT, N:M
* :mod:`compresslab.costs`    a transformer's FLOPs and CPU time per family of operations
* :mod:`compresslab.deploy`   ONNX export and real int8 with ONNX Runtime
* :mod:`compresslab.llm_deploy`  the language model in ONNX Runtime: export, tokens per second, the roofline
* :mod:`compresslab.integer`  integer-only inference: BN folding, fixed-point requantization, int8 conv / linear bit-exact with ONNX Runtime
* :mod:`compresslab.integer_model`  a whole CNN in integers: calibrate once, then codes in, codes out

Yardsticks, plots and tools:

* :mod:`compresslab.metrics`  parameters, sparsity, bytes, FLOPs, latency, speed tables
* :mod:`compresslab.viz`      one plotting style for the whole workbook, slider explorers
* :mod:`compresslab.checks`   the argument checks every module shares (one exception rule)
* :mod:`compresslab.hardware`  the CPU's model and the features that decide its int8 and bf16 kernels
* :mod:`compresslab.experiments`  runs too long for a notebook, written to ``data/results/``
* :mod:`compresslab.report`   the README's results table, recomputed
* :mod:`compresslab.bench`    speed benchmarks that print their figures
* :mod:`compresslab.doctor`   will the workbook run on this machine?
* :mod:`compresslab.exercises`  the student copies of the notebooks
* :mod:`compresslab.grading`  the exercise checkers: a hint for a wrong answer, never the answer
"""
import logging as _logging


class _NoCudaRuntimeNote(_logging.Filter):
    """Drop one note torch logs on CUDA builds without a GPU ("No CUDA runtime is found, using
    CUDA_HOME=...") when ``torch.utils.benchmark`` loads its C++-extension helper. It is harmless
    here (the workbook compiles nothing), but students read it as an error. Every other message
    of that logger still shows."""

    def filter(self, record: _logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No CUDA runtime is found")


_logging.getLogger("torch.utils.cpp_extension").addFilter(_NoCudaRuntimeNote())

from .data import Dataset, DatasetNotFoundError, load_dataset  # noqa: E402
from .models import build_model, cifar_cnn, lenet5, lenet300  # noqa: E402
from .train import bf16_is_fast, evaluate, fine_tune, fit, get_device, predict, seed_everything  # noqa: E402
from .zoo import ChecksumError, load_pretrained  # noqa: E402

__all__ = ["Dataset", "DatasetNotFoundError", "load_dataset", "build_model", "cifar_cnn", "lenet5",
           "lenet300", "bf16_is_fast", "evaluate", "fine_tune", "fit", "get_device", "predict",
           "seed_everything", "ChecksumError", "load_pretrained"]
__version__ = "0.1.0"
