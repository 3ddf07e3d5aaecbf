"""One module per CLI verb (`tune`, `optimize`, `quantize`, ...): each a short walk over the shared steps
that returns a result object with `to_dict()`. Nothing below this package imports it."""
