"""Two-dimensional tasks: small generated images read as pixel sequences.

Each image is side x side pixels, one token a pixel, flattened row-major into a sequence of
side^2 tokens (a 1-D model reads it as it is; a 2-D model reshapes it with
`grid_shape(length)`). One label per image, supervised and scored at the last pixel.
A length (a key of `test_lengths`, or `sample`'s `length`) is side^2; the sides are the
options.

- shapes: a binary image of one of six shapes at a random place and size, to classify:
  0 horizontal bar, 1 vertical bar, 2 filled square, 3 square outline, 4 plus, 5 cross (x).
- arrow: pLSTM's arrow-pointing task (Pöppel et al. 2025, arXiv:2506.11997), at small
  sizes and on a pixel grid: an arrow (three pixels in one of the eight compass
  directions, token 1 for its shaft and 2 for its tip) and a disk (token 3); does the ray
  from the tip, in the arrow's direction, meet the disk? Half the images point at it. The
  paper trains at one size and tests at larger ones (extrapolation): here train sides 8-10,
  test 10, 16 and 24.
"""

from __future__ import annotations

import math

import numpy as np

from rnnzoo.checks import int_in
from rnnzoo.tasks.base import (
    Task,
    check_lengths,
    check_range,
    last_position_mask,
    task,
    tokens_batch,
)

SHAPES = ("hbar", "vbar", "square", "outline", "plus", "cross")
COMPASS = np.array([(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)])


def grid_shape(length: int) -> tuple[int, int]:
    """(height, width) of the square image behind a sequence of `length` pixels."""
    side = math.isqrt(int(length))
    if side * side != length:
        raise ValueError(f"length must be a square number of pixels (side^2), got {length}")
    return side, side


class _GridTask(Task):
    option_help = {"train_sides": "image sides drawn in training, min,max (a length is side^2)",
                   "test_sides": "image sides of the test splits"}
    min_side = 5

    def __init__(self, train_sides=(8, 10), test_sides=(10, 16, 24)):
        lo, hi = check_range("train_sides", train_sides, lo=self.min_side)
        self.train_sides = (lo, hi)
        self.test_sides = check_lengths("test_sides", test_sides, lo=self.min_side)
        self.train_lengths = (lo * lo, hi * hi)
        self.test_lengths = tuple(s * s for s in self.test_sides)

    def options(self):
        return dict(train_sides=self.train_sides, test_sides=self.test_sides)

    def side(self, rng, length):
        if length is None:
            return int(rng.integers(self.train_sides[0], self.train_sides[1] + 1))
        side = grid_shape(int_in("length", length))[0]
        if side < self.min_side:
            raise ValueError(f"length must be side^2 with side >= {self.min_side}, got {length}")
        return side

    def sample(self, rng, batch_size, length=None, split="train"):
        side = self.side(rng, length)
        images = np.zeros((batch_size, side, side), dtype=np.int64)
        labels = rng.permutation(np.arange(batch_size) % self.output_dim)   # balanced
        for b in range(batch_size):
            self.draw(rng, images[b], int(labels[b]))
        T = side * side
        targets = np.full((batch_size, T), -100, dtype=np.int64)
        targets[:, -1] = labels
        return tokens_batch(images.reshape(batch_size, T), targets,
                            last_position_mask(batch_size, T))

    def draw(self, rng, image, label: int) -> None:
        """Draw an example of class `label` into `image` (side, side), in place."""
        raise NotImplementedError


@task("shapes", family="grid")
class Shapes(_GridTask):
    """Which of six shapes is drawn (pixel-sequence classification)."""

    vocab_size, output_dim, chance = 2, len(SHAPES), 1 / len(SHAPES)

    def draw(self, rng, image, label):
        side = image.shape[0]
        n = int(rng.integers(3, side // 2 + 2)) | 1          # odd: plus and cross have a centre
        n = min(n, side - (1 - side % 2))
        i, j = (int(v) for v in rng.integers(0, side - n + 1, size=2))
        box = image[i:i + n, j:j + n]
        name = SHAPES[label]
        if name == "hbar":
            box[n // 2] = 1
        elif name == "vbar":
            box[:, n // 2] = 1
        elif name == "square":
            box[:] = 1
        elif name == "outline":
            box[[0, -1]] = 1
            box[:, [0, -1]] = 1
        elif name == "plus":
            box[n // 2] = 1
            box[:, n // 2] = 1
        else:
            idx = np.arange(n)
            box[idx, idx] = 1
            box[idx, n - 1 - idx] = 1


@task("arrow", family="grid")
class ArrowPointing(_GridTask):
    """Does the arrow point at the disk? (pLSTM's arrow-pointing extrapolation task)"""

    vocab_size, output_dim, chance = 4, 2, 0.5
    radius = 1

    def draw(self, rng, image, label):
        side = image.shape[0]
        r = self.radius
        while True:
            d = COMPASS[rng.integers(0, 8)]
            tip = rng.integers(2, side - 2, size=2)
            shaft = [tip - d, tip - 2 * d]
            centre = rng.integers(r, side - r, size=2)
            disk = [centre + (a, b) for a in range(-r, r + 1) for b in range(-r, r + 1)
                    if a * a + b * b <= r * r]
            cells = {tuple(p) for p in disk}
            if cells & {tuple(tip), *(tuple(p) for p in shaft)}:
                continue
            if pointed_at(tip, d, centre, r, side) != bool(label):
                continue
            for p in disk:
                image[p[0], p[1]] = 3
            for p in shaft:
                image[p[0], p[1]] = 1
            image[tip[0], tip[1]] = 2
            return


def pointed_at(tip, d, centre, r, side) -> bool:
    """Whether a point tip + t d (t = 1, 2, ... inside the image) lies within r of centre."""
    t = np.arange(1, 2 * side)[:, None]
    ray = np.asarray(tip) + t * np.asarray(d)
    inside = ((ray >= 0) & (ray < side)).all(1)
    near = ((ray - np.asarray(centre)) ** 2).sum(1) <= r * r
    return bool((inside & near).any())
