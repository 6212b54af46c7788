"""Checkers for the exercises: the student's answer goes in, a hint comes out when it is wrong,
never the answer (rules in :mod:`compresslab.grading.common`). One module per family of notebooks;
a notebook calls them as ``grading.<idea>(answer, ...)``."""
from .common import *  # noqa: F401,F403
from .basics import *  # noqa: F401,F403
from .pruning import *  # noqa: F401,F403
from .structured import *  # noqa: F401,F403
from .slimming import *  # noqa: F401,F403
from .iterative import *  # noqa: F401,F403
from .quantization import *  # noqa: F401,F403
from .distillation import *  # noqa: F401,F403
from .factorization import *  # noqa: F401,F403
from .coding import *  # noqa: F401,F403
from .transformer import *  # noqa: F401,F403
from .language import *  # noqa: F401,F403
