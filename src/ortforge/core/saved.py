"""A model ortforge wrote, opened the way its user opens it: the file itself, the session settings its
stamp or artifact record asks for, and a refusal when the stamp does not fit this machine."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ortforge.core.errors import UserError
from ortforge.core.model import Model, load_model
from ortforge.core.session import SessionConfig
from ortforge.core.stamp import Stamp, config_for, mismatches, read_stamp


@dataclass
class Opened:
    model: Model
    config: SessionConfig
    stamp: Stamp | None
    problems: list[str]  # why its stamp does not fit this machine (empty when it does, or it has none)

    def require_fit(self) -> None:
        """Refuse a model whose stamp does not fit this machine."""
        if self.problems:
            raise UserError(f"{self.model.name}: not valid on this machine: {'; '.join(self.problems)}",
                            hint="give the original model (original, --original) and allow reoptimize (--reoptimize) to optimize it for this machine")  # fmt: skip

    def session(self) -> Any:
        """A session on the file, refusing a model whose stamp does not fit this machine."""
        self.require_fit()
        return self.config.build(self.model)


def open_saved(path: str | os.PathLike[str], base: SessionConfig | None = None) -> Opened:
    """The model at `path` with the session config it needs: `base` (an artifact's record) or ORT's defaults,
    and for a stamped model its EPs and the level that follows from how it was saved."""
    model = load_model(Path(path))
    stamp = read_stamp(model.proto)
    if stamp is None:
        return Opened(model, base or SessionConfig(), None, [])
    return Opened(model, config_for(stamp, base), stamp, mismatches(stamp))
