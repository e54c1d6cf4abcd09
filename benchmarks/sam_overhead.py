"""SAM train step ÷ base-optimizer train step on a small CIFAR-style ResNet with BatchNorm.

Both steps are Keras train steps on the Keras backend of the process (``KERAS_BACKEND``):
compiled as tf.functions (graph mode) on TensorFlow; Keras's own compiled step,
``train_on_batch`` (``jax.jit`` on JAX, eager on PyTorch), elsewhere. Batch 128; calls of the two
are interleaved and the median ratio of several repetitions is printed. The limit is 2.0 (SAM does
two forward/backward passes), the target ≤ 2.05.

    [KERAS_BACKEND=jax] .venv/bin/python benchmarks/sam_overhead.py [--repeats 7] [--depth 8]
"""

from __future__ import annotations

import argparse

from _common import cifar_subset, interleaved_ratio

import keras

from landscape.models import resnet
from sam import SAM


def compiled_step(optimizer, *, depth, width, data):
    keras.utils.set_random_seed(0)
    model = resnet((32, 32, 3), 10, depth=depth, width=width, sam_model=isinstance(optimizer, SAM))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", jit_compile=False)
    if keras.backend.backend() != "tensorflow":  # Keras's own compiled step of the backend
        model.train_on_batch(*data)  # compile and build
        return lambda: model.train_on_batch(*data)
    import tensorflow as tf

    data = (tf.constant(data[0]), tf.constant(data[1]))
    step = tf.function(model.train_step)
    step(data)  # trace and build
    return lambda: step(data)["loss"].numpy()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3)
    parser.add_argument("--depth", type=int, default=8)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()

    x, y, source = cifar_subset(args.batch)
    data = (x, y)
    common = {"depth": args.depth, "width": args.width, "data": data}
    sam_step = compiled_step(SAM(keras.optimizers.SGD(0.05, momentum=0.9)), **common)
    base_step = compiled_step(keras.optimizers.SGD(0.05, momentum=0.9), **common)
    ratio, t_sam, t_base = interleaved_ratio(
        sam_step, base_step, repeats=args.repeats, calls=args.calls
    )
    backend = keras.backend.backend()
    print(f"{backend}; data: {source}; ResNet-{args.depth} width {args.width}; batch {args.batch}")
    print(f"base step: {t_base * 1e3:.1f} ms   SAM step: {t_sam * 1e3:.1f} ms (medians)")
    print(
        f"SAM step / base step: {ratio:.3f}  (limit 2.0, target <= 2.05; median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
