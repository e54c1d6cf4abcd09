"""The other backend's half of ``test_fit_backends.py``'s reload test, in its own process.

``python _fit_cross_script.py FOLDER`` (``KERAS_BACKEND`` in the environment) loads the
``SAMModel`` FOLDER/model.keras saved on another backend, trains it one ``fit`` step on the batch
of FOLDER/data.npz, and writes every variable of the model (``v0``, ``v1``, ...) and the
optimizer's iteration count to FOLDER/out.npz. On PyTorch the step runs eagerly (see main).
"""

from __future__ import annotations

import os
import sys

import keras
import numpy as np

import sam  # noqa: F401  (registers SAM and SAMModel for load_model)


def main(folder: str) -> None:
    model = keras.models.load_model(os.path.join(folder, "model.keras"))
    data = np.load(os.path.join(folder, "data.npz"))
    if keras.backend.backend() == "torch":
        # The compile config saved on JAX/TensorFlow asks for jit_compile, which on PyTorch means
        # torch.compile: the same step, but ~40 s of dynamo tracing for a 2-layer model.
        model.jit_compile = False
    model.fit(data["x"], data["y"], batch_size=len(data["x"]), shuffle=False, verbose=0)
    out = {f"v{i}": keras.ops.convert_to_numpy(v) for i, v in enumerate(model.variables)}
    out["iterations"] = keras.ops.convert_to_numpy(model.optimizer.iterations)
    np.savez(os.path.join(folder, "out.npz"), **out)


if __name__ == "__main__":
    main(sys.argv[1])
