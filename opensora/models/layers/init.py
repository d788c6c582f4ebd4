"""Weight initialisation as upstream writes it: a model builds its cells with PyTorch's default initialisers,
then its ``initialize_weights`` states the model's own rules in one place (xavier for every linear layer,
zeros here, a normal there), as upstream's ``initialize_weights`` does.

Each rule replaces a parameter's *initialiser* (``Parameter.set_data`` with a lazy ``initializer``), so
when a model is built under :func:`lazily` nothing is drawn twice and nothing is drawn at all for
parameters that a checkpoint then fills (:meth:`Cell.init_parameters_data` draws what is left).
"""
from __future__ import annotations

import contextlib
import math

from mindspore import Parameter, nn
from mindspore.common.initializer import Constant, Normal, Uniform, XavierUniform, initializer

from .nn import Linear


def init_param(param: Parameter, init) -> None:
    """Give ``param`` a new initialiser: an ``initializer`` name or object (``"zeros"``, ``Normal(0.02)``...)."""
    param.set_data(initializer(init, param.shape, param.dtype))


def zeros_(*params: Parameter) -> None:
    for param in params:
        if param is not None:
            init_param(param, Constant(0.0))


def normal_(param: Parameter, std: float) -> None:
    init_param(param, Normal(std))


def xavier_uniform_(param: Parameter) -> None:
    """torch's ``xavier_uniform_`` of a 2-D weight: U(±sqrt(6 / (fan_in + fan_out)))."""
    init_param(param, XavierUniform())


def xavier_uniform_flat_(param: Parameter) -> None:
    """torch's ``xavier_uniform_(w.view(w.shape[0], -1))``: an N-D weight initialised as the linear layer it is
    equivalent to (upstream's patch embedding: fan_in = C·k, fan_out = E, without torch's receptive field)."""
    fan_out = param.shape[0]
    fan_in = 1
    for size in param.shape[1:]:
        fan_in *= size
    init_param(param, Uniform(math.sqrt(6.0 / (fan_in + fan_out))))


def init_linears_(cell: nn.Cell) -> None:
    """Upstream's ``_basic_init`` applied to every module: each ``Linear`` xavier-uniform, bias zero."""
    for _, sub in cell.cells_and_names():
        if isinstance(sub, Linear):
            xavier_uniform_(sub.weight)
            zeros_(sub.bias)


@contextlib.contextmanager
def lazily():
    """Create parameters without drawing their initial values (``mindspore.nn.utils.no_init_parameters``),
    unless an outer build is already lazy (then that build decides when to draw). Yields True when this
    context is the one that made the build lazy: the caller then draws what the checkpoint left
    (``net.init_parameters_data()``)."""
    if not getattr(Parameter, "init_param", True):  # an outer lazy build (e.g. a shape-only check)
        yield False
        return
    Parameter.init_param = False
    try:
        yield True
    finally:
        Parameter.init_param = True
