"""``landscape.train``'s augmented input off TensorFlow (``AugmentedBatches``), on every backend.

References: the examples themselves (each once per epoch, labels aligned with their images), and
NumPy's shifts of a one-hot image (a random translation moves its single bright pixel; a flip
mirrors it), not the Keras layers' own code.
"""

from __future__ import annotations

import numpy as np

from landscape.train import AugmentedBatches

N, SIZE = 10, 8


def _images(channels):
    """Image i has one bright pixel at row i % SIZE, column (3 i) % SIZE; its label is i."""
    x = np.zeros((N, SIZE, SIZE, channels), "float32")
    for i in range(N):
        x[i, i % SIZE, (3 * i) % SIZE, :] = 1.0
    return x, np.arange(N)


def test_every_example_once_per_epoch_in_a_new_order_with_its_label():
    x, y = _images(1)
    data = AugmentedBatches(x, y, batch_size=4, seed=0)
    assert len(data) == 3  # 4 + 4 + 2
    orders = []
    for _ in range(2):
        labels = []
        for i in range(len(data)):
            images, batch_labels = data[i]
            assert images.shape == (len(batch_labels), SIZE, SIZE, 1)
            assert images.max() <= 1.0 + 1e-6 and images.sum() > 0  # moved, not amplified
            labels.extend(batch_labels.tolist())
        assert sorted(labels) == list(range(N))
        orders.append(labels)
        data.on_epoch_end()
    assert orders[0] != orders[1]  # reshuffled each epoch
    again = AugmentedBatches(x, y, batch_size=4, seed=0)
    assert [int(v) for v in again[0][1]] == orders[0][:4]  # the seed fixes the order


def test_the_pixels_move_within_a_tenth_of_the_image():
    x, y = _images(3)
    data = AugmentedBatches(x, y, batch_size=N, seed=1)
    images, labels = data[0]
    moved = 0
    for image, label in zip(images, labels):
        if image.max() < 0.5:
            continue  # interpolated away from the pixel grid, or shifted out
        r, c = np.unravel_index(np.argmax(image[..., 0]), image.shape[:2])
        r0, c0 = label % SIZE, (3 * label) % SIZE
        assert abs(r - r0) <= 1  # RandomTranslation(0.1, 0.1): at most 0.8 pixel here
        assert min(abs(c - c0), abs(c - (SIZE - 1 - c0))) <= 1  # or the horizontal mirror
        moved += (r, c) != (r0, c0)
    assert moved > 0
