"""Build the embedded default data set shipped in ``landscape/_data/mnist_small.npz``.

A stratified MNIST subset (600 train / 100 test images per class, chosen with a fixed seed)
made from the full ``mnist.npz`` in ``../shared/data``. Run from the repository root::

    python scripts/make_embedded_data.py [--source ../shared/data/mnist.npz]

The output is deterministic: the same source gives a byte-identical file.
"""

from __future__ import annotations

import argparse
import hashlib
import pathlib

import numpy as np

TRAIN_PER_CLASS = 600
TEST_PER_CLASS = 100
SEED = 20240101
OUT = pathlib.Path(__file__).resolve().parents[1] / "landscape" / "_data" / "mnist_small.npz"


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    """Return ``per_class`` indices of each label, sorted so the subset keeps the official order."""
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(picks))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="../shared/data/mnist.npz")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()

    src = np.load(args.source)
    rng = np.random.default_rng(SEED)
    train = stratified_indices(src["y_train"], TRAIN_PER_CLASS, rng)
    test = stratified_indices(src["y_test"], TEST_PER_CLASS, rng)
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    arrays = {
        "x_train": src["x_train"][train],
        "y_train": src["y_train"][train],
        "x_test": src["x_test"][test],
        "y_test": src["y_test"][test],
        "train_index": train.astype(np.int32),
        "test_index": test.astype(np.int32),
    }
    with open(out, "wb") as f:
        np.savez_compressed(f, **arrays)
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB, sha256 {digest})")


if __name__ == "__main__":
    main()
