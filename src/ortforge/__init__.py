"""ortforge: the fastest ONNX Runtime deployment of an ONNX model that still gives the right answers.

The public API has the CLI's verbs: `tune(model, out)` (the main job), `doctor()`, `inspect(model)`,
`bench(models)`, `optimize(model, out)`, `quantize(model, out)`, `fp16(model, out)`, `quant_debug(float, quant)`,
`tune_session(model, out)`, `load(path)` (the guarded loader behind `ortforge run`, which also opens
tune artifacts), plus the pieces they are made of (`load_model`, `load_feeds`, `SessionConfig`).
"""

__version__ = "0.1.0"

# Modules that share a verb's name load first: importing one later would rebind `ortforge.<verb>` to the module.
from . import bench as _bench, doctor as _doctor, optimize as _optimize, quant_debug as _quant_debug, tune as _tune  # noqa: E402, F401
from .api import bench, doctor, fp16, inspect, open_model, optimize, quant_debug, quantize, tune, tune_session  # noqa: E402
from .data import FeedSet, ShapeOptions, load_feeds  # noqa: E402
from .errors import UserError  # noqa: E402
from .loader import load  # noqa: E402
from .model import Model, load_model, save_model  # noqa: E402
from .session import ProviderSpec, SessionConfig  # noqa: E402

__all__ = [
    "FeedSet",
    "Model",
    "ProviderSpec",
    "SessionConfig",
    "ShapeOptions",
    "UserError",
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
    "tune",
    "tune_session",
    "save_model",
]
