"""Scale-out: one 2D surface on 1 worker process vs 2, and the cost of the distributed path.

A CIFAR-style ResNet-8 (width 16, BatchNorm) saved to a ``.keras`` file, the first ``--n``
CIFAR-10 training images as an ``.npz`` (generated images of the same shape if the file is
absent), two filter-normalized directions, a ``--grid`` × ``--grid`` surface written to an HDF5
file. Every worker and this process run TensorFlow on one thread. Pools are started and warmed up
(model and directions loaded) before timing; the start-up is reported separately.

In every repetition, in alternating order:
- in-process: ``compute_surface(objective, ...)`` (no executor, this process, one thread);
- pool-1 / pool-2: ``compute_surface(recipe, ..., executor=ProcessPool(1 or 2 workers))``;
- dask-2 (when Dask is installed): a 2-worker ``LocalCluster`` on loopback.

Printed: speed-up = t(pool-1) / t(pool-2) (limit 2.0 on this 2-core machine), and the per-point
overhead of the distributed path = (t(pool-1) − t(in-process)) / points; medians over repetitions.

Usage: ``.venv/bin/python benchmarks/scale_out.py [--reps 5] [--grid 8] [--n 1000]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import _common  # noqa: F401  (environment first)

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(1)

import keras  # noqa: E402

import landscape  # noqa: E402
from landscape.models import build_model  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--grid", type=int, default=8)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()

    tmp = tempfile.mkdtemp(prefix="scale_out_")
    x, y, source = _common.cifar_subset(args.n)
    data = os.path.join(tmp, "data.npz")
    np.savez(data, x_train=x, y_train=y, x_test=x[:0], y_test=y[:0])
    keras.utils.set_random_seed(0)
    model = build_model("resnet", x.shape[1:], 10, depth=8, width=16)
    model.compile("sgd", "sparse_categorical_crossentropy")  # the zoo's ResNet ends in softmax
    model_path = os.path.join(tmp, "model.keras")
    model.save(model_path)
    recipe = landscape.ObjectiveRecipe(model_path, data=data, test_samples=0, batch_size=250)
    objective = recipe()
    dirs = [landscape.random_direction(objective.model, seed=s) for s in (0, 1)]
    grid = f"-1:1:{args.grid}"
    points = args.grid**2
    print(f"ResNet-8 width 16, {args.n} images of {source}, {args.grid}x{args.grid} grid")

    def surface(target, executor=None, name="s", grid=grid):
        path = os.path.join(tmp, f"{name}.h5")
        if os.path.exists(path):
            os.remove(path)
        return landscape.compute_surface(
            target, dirs, x=grid, y=grid, path=path, executor=executor, verbose=0
        )

    def warm_up(executor):  # one point per worker: spawn, import TensorFlow, load model + dirs
        surface(recipe, executor, grid=f"0:0:{getattr(executor, 'workers', 2)}")

    runs: dict[str, list[float]] = {"in-process": [], "pool-1": [], "pool-2": []}
    executors = {}
    start = time.perf_counter()
    executors["pool-1"] = landscape.ProcessPool(1, threads_per_worker=1)
    warm_up(executors["pool-1"])
    startup = time.perf_counter() - start
    executors["pool-2"] = landscape.ProcessPool(2, threads_per_worker=1)
    warm_up(executors["pool-2"])
    dask_cm = None
    try:
        dask_cm = landscape.dask_executor(workers=2)
        executors["dask-2"] = dask_cm.__enter__()
        warm_up(executors["dask-2"])
        runs["dask-2"] = []
    except ValueError as err:  # Dask not installed
        print(f"dask: skipped ({err})")
    reference = surface(objective)  # and warm up the in-process path

    try:
        for r in range(args.reps):
            names = list(runs) if r % 2 == 0 else list(reversed(runs))
            for name in names:
                target = objective if name == "in-process" else recipe
                t0 = time.perf_counter()
                surf = surface(target, executors.get(name), name)
                runs[name].append(time.perf_counter() - t0)
                np.testing.assert_array_equal(surf["train_loss"], reference["train_loss"])
    finally:
        for name, ex in executors.items():
            if name.startswith("pool"):
                ex.shutdown()
        if dask_cm is not None:
            dask_cm.__exit__(None, None, None)

    med = {name: statistics.median(times) for name, times in runs.items()}
    speedups = [a / b for a, b in zip(runs["pool-1"], runs["pool-2"])]
    overheads = [(a - b) / points for a, b in zip(runs["pool-1"], runs["in-process"])]
    for name, t in med.items():
        print(f"{name}: {t:.2f} s per surface, {1000 * t / points:.1f} ms per point")
    print(f"pool start-up (spawn, TensorFlow import, model load, one point): {startup:.1f} s")
    print(
        f"speed-up 2 workers vs 1 (process pool): {statistics.median(speedups):.2f} "
        "(limit 2.0, target >= 1.7)"
    )
    if "dask-2" in runs:
        print(f"speed-up dask-2 vs pool-1: {med['pool-1'] / med['dask-2']:.2f}")
    print(
        f"per-point overhead of the distributed path: "
        f"{1000 * statistics.median(overheads):+.1f} ms "
        f"({100 * statistics.median(overheads) * points / med['in-process']:+.1f} % of in-process)"
    )
    print("every surface equal to the in-process one: yes")


if __name__ == "__main__":
    main()
