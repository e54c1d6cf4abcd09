"""landscape.weight_spectra against WeightWatcher (PyPI ``weightwatcher``) on the same matrices.

Runs where ``weightwatcher`` is importable; it is not a dependency of this project (it pulls
pandas, scikit-learn, powerlaw). Install it beside, not into, the project's environment:

    pip install --target /tmp/wwlib weightwatcher
    PYTHONPATH=/tmp/wwlib:. python benchmarks/weightwatcher_compare.py [MODEL.keras ...]

For each layer both analyse, it prints α (ours with min_tail=10 and with min_tail=2, WW's),
our MLE evaluated at WW's xmin (identical to WW's α where WW used its standard fit: the
only difference left
is then the choice of xmin), λ_max (WW's "spectral_norm" is σ_max², ours squared; WW's
conv2d_norm halves a Conv2D's eigenvalues) and the stable rank. It fails (exit 1) if λ_max or
the stable rank differ by more than 1e-6 relative, or if our MLE at WW's xmin differs from
WW's standard-fit α.
"""

from __future__ import annotations

import logging
import sys

import keras
import numpy as np

from landscape.weights import weight_spectra

logging.getLogger("weightwatcher").setLevel(logging.ERROR)
SMALL_N = 20  # WW fits a bias-corrected α with a penalised KS objective below this many


def built_model() -> keras.Model:
    """Dense, Conv2D, Embedding, Conv1D and attention layers, with seeded random weights."""
    keras.utils.set_random_seed(0)
    images = keras.Input((8, 8, 16))
    x = keras.layers.Conv2D(32, 3, name="conv2d")(images)
    x = keras.layers.Flatten()(x)
    x = keras.layers.Dense(64, name="dense_a")(x)
    tokens = keras.Input((10,), dtype="int32")
    t = keras.layers.Embedding(500, 32, name="embed")(tokens)
    t = keras.layers.Conv1D(32, 3, name="conv1d")(t)
    t = keras.layers.MultiHeadAttention(4, 16, name="mha")(t, t)
    t = keras.layers.Flatten()(t)
    x = keras.layers.Concatenate()([x, t])
    return keras.Model([images, tokens], keras.layers.Dense(40, name="dense_b")(x))


def ww_table(model):
    import weightwatcher

    df = weightwatcher.WeightWatcher(model=model).analyze(plot=False)
    return {row["name"]: row for _, row in df.iterrows()}


def mle_at(eigenvalues: np.ndarray, xmin: float) -> float:
    tail = eigenvalues[eigenvalues >= xmin * (1 - 1e-9)]  # WW's xmin is one of its (rounded) λ
    return 1.0 + tail.size / np.sum(np.log(tail / xmin))


def compare(model, title: str) -> int:
    ours, ours2, ww = weight_spectra(model), weight_spectra(model, min_tail=2), ww_table(model)
    print(f"\n== {title}")
    print(f"{'layer':<26}{'n_ev':>6}{'α ours':>8}{'α mt=2':>8}{'α WW':>8}{'MLE@WWxmin':>11}"
          f"{'xmin ours':>11}{'xmin WW':>10}{'λmax ours':>11}{'WW':>11}{'srank':>8}"
          f"{'WW':>8}")  # fmt: skip
    failures = 0
    for layer in ours.layers:
        short = layer.name.rpartition("/")[2]
        row = ww.get(short)
        if row is None:
            print(f"{layer.name:<26} not analysed by WeightWatcher ({layer.kind})")
            continue
        # WW's conv2d_norm multiplies every Conv2D slice by √(conv2d_count/2) = √½ here: its
        # eigenvalues (and "spectral_norm" λ_max) are half ours; α and stable rank unchanged
        scale = 0.5 if layer.kind.startswith("conv2d") else 1.0
        lam = layer.eigenvalues * scale
        n_ev, at_ww = int(row["num_evals"]), mle_at(lam[lam > 1e-5], float(row["xmin"]))
        print(f"{layer.name:<26}{n_ev:>6}{layer.fit.alpha:>8.3f}{ours2[layer.name].fit.alpha:>8.3f}"
              f"{row['alpha']:>8.3f}{at_ww:>11.3f}{layer.fit.xmin:>11.4g}{row['xmin']:>10.4g}"
              f"{layer.spectral_norm**2:>11.5g}{row['spectral_norm']:>11.5g}"
              f"{layer.stable_rank:>8.3f}{row['stable_rank']:>8.3f}")  # fmt: skip
        same_matrix = n_ev == lam.size
        checks = [np.isclose(scale * layer.spectral_norm**2, row["spectral_norm"], rtol=1e-6),
                  np.isclose(layer.stable_rank, row["stable_rank"], rtol=1e-6)]  # fmt: skip
        if (lam > 1e-5).sum() >= SMALL_N:
            checks.append(np.isclose(at_ww, row["alpha"], rtol=1e-6))
        if same_matrix and not all(checks):
            print(f"  MISMATCH in {layer.name}: {checks}")
            failures += 1
        elif not same_matrix:
            print(f"  WW analysed other matrices here ({n_ev} eigenvalues, ours {lam.size})")
    return failures


def main(paths) -> int:
    failures = compare(built_model(), "a Keras model built here")
    for path in paths:
        from landscape.executors import load_model

        failures += compare(load_model(path), path)
    print(f"\n{failures} mismatches")
    return failures


if __name__ == "__main__":
    failed = main(sys.argv[1:])
    if failed:
        raise SystemExit(1)
