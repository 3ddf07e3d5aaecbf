"""ortforge: the fastest ONNX Runtime deployment of an ONNX model that still gives the right answers.

The public API has the CLI's verbs: `tune(model, out)` (the main job), `apply(artifact, model, out)` (its recipe
redone on a retrained model), `doctor()`, `inspect(model)`,
`bench(models)`, `optimize(model, out)`, `quantize(model, out)`, `fp16(model, out)`, `quant_debug(float, quant)`,
`tune_session(model, out)`, `load(path)` (the guarded loader behind `ortforge run`, which also opens
tune artifacts), plus the pieces they are made of (`load_model`, `load_feeds`, `SessionConfig`).

Each verb lives in `ortforge.commands.<verb>`; this face only binds them, and nothing in the package
imports it.
"""

from ortforge.commands.apply import apply
from ortforge.commands.bench import bench
from ortforge.commands.common import open_model
from ortforge.commands.doctor import doctor
from ortforge.commands.fp16 import fp16
from ortforge.commands.inspect import inspect
from ortforge.commands.optimize import optimize
from ortforge.commands.quant_debug import quant_debug
from ortforge.commands.quantize import quantize
from ortforge.commands.run import load
from ortforge.commands.tune import tune
from ortforge.commands.tune_session import tune_session
from ortforge.core.errors import UserError
from ortforge.core.model import Model, load_model, save_model
from ortforge.core.session import ProviderSpec, SessionConfig
from ortforge.data import FeedSet, ShapeOptions, load_feeds
from ortforge.version import __version__

__all__ = [
    "FeedSet",
    "Model",
    "ProviderSpec",
    "SessionConfig",
    "ShapeOptions",
    "UserError",
    "__version__",
    "apply",
    "bench",
    "doctor",
    "fp16",
    "inspect",
    "load",
    "load_feeds",
    "load_model",
    "open_model",
    "optimize",
    "quant_debug",
    "quantize",
    "save_model",
    "tune",
    "tune_session",
]
