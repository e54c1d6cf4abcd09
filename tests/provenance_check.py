"""What every provenance block must hold, checked against values read another way: the
packages' own ``__version__``, Keras's backend, the clock, and fingerprints recomputed here."""

from __future__ import annotations

import datetime
import json
import platform

import keras
import numpy as np
import scipy

from landscape import __version__
from landscape.directions import fingerprint_arrays


def weights_fingerprint(model) -> str:
    """Every floating-point weight of ``model``, in order, hashed here."""
    arrays = [keras.ops.convert_to_numpy(w.value) for w in model.weights]
    return fingerprint_arrays(a for a in arrays if np.issubdtype(a.dtype, np.floating))


def check(block, *, command: str | None = None, options: dict | None = None, model=None,
          keys=("settings",)) -> dict:  # fmt: skip
    """Assert the block's common part; return it (a JSON string is parsed first)."""
    if isinstance(block, bytes | str):
        block = json.loads(block)
    assert block["provenance_version"] == 1
    created = datetime.datetime.fromisoformat(block["created"])
    age = datetime.datetime.now(datetime.timezone.utc) - created
    assert datetime.timedelta(0) <= age < datetime.timedelta(hours=1), block["created"]
    v = block["versions"]
    assert v["sam-landscape"] == __version__ and v["keras"] == keras.__version__
    assert v["numpy"] == np.__version__ and v["scipy"] == scipy.__version__
    assert v["python"] == platform.python_version()
    backend = keras.backend.backend()
    assert block["backend"] == backend
    if backend == "tensorflow":
        import tensorflow as tf

        assert tf.__version__ in (v.get("tensorflow"), v.get("tensorflow-cpu"))
    for key in keys:
        assert key in block, (key, sorted(block))
    if command is not None:
        assert block["invocation"]["command"] == f"landscape {command}"
        for name, value in (options or {}).items():
            assert block["invocation"]["options"][name] == value, name
    else:
        assert "invocation" not in block
    if model is not None:
        assert block["model_fingerprint"] == weights_fingerprint(model)
    return block
