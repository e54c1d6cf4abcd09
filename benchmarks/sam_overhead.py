"""SAM train step ÷ base-optimizer train step on a small CIFAR-style ResNet with BatchNorm.

Both steps are Keras train steps compiled as tf.functions (graph mode), batch 128; calls of the two
are interleaved and the median ratio of several repetitions is printed. The limit is 2.0 (SAM does
two forward/backward passes), the target ≤ 2.05.

    .venv/bin/python benchmarks/sam_overhead.py [--repeats 7] [--depth 8]
"""

from __future__ import annotations

import argparse

from _common import cifar_subset, interleaved_ratio

import keras
import tensorflow as tf

from landscape.models import resnet
from sam import SAM


def compiled_step(optimizer, *, depth, width, data):
    keras.utils.set_random_seed(0)
    model = resnet((32, 32, 3), 10, depth=depth, width=width)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", jit_compile=False)
    if not isinstance(optimizer, SAM):  # a plain Keras step for the base optimizer
        model.train_step = lambda batch, m=model: keras.Model.train_step(m, batch)
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
    data = (tf.constant(x), tf.constant(y))
    common = {"depth": args.depth, "width": args.width, "data": data}
    sam_step = compiled_step(SAM(keras.optimizers.SGD(0.05, momentum=0.9)), **common)
    base_step = compiled_step(keras.optimizers.SGD(0.05, momentum=0.9), **common)
    ratio, t_sam, t_base = interleaved_ratio(
        sam_step, base_step, repeats=args.repeats, calls=args.calls
    )
    print(f"data: {source}; ResNet-{args.depth} width {args.width}; batch {args.batch}; graph mode")
    print(f"base step: {t_base * 1e3:.1f} ms   SAM step: {t_sam * 1e3:.1f} ms (medians)")
    print(
        f"SAM step / base step: {ratio:.3f}  (limit 2.0, target <= 2.05; median of {args.repeats})"
    )


if __name__ == "__main__":
    main()
