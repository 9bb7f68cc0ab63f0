"""The 2-D tasks against an independent recomputation from the pixels they drew."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rnnzoo.tasks import IGNORE, get_task, list_tasks
from rnnzoo.tasks.grid import SHAPES, grid_shape


def images(batch):
    B, T = batch.inputs.shape
    side = math.isqrt(T)
    return batch.inputs.numpy().reshape(B, side, side), batch.targets.numpy()[:, -1]


def recognise(image) -> str:
    """The shape in a binary image, read from its pixels alone."""
    ii, jj = np.nonzero(image)
    box = image[ii.min():ii.max() + 1, jj.min():jj.max() + 1]
    h, w = box.shape
    if h == 1:
        return "hbar"
    if w == 1:
        return "vbar"
    assert h == w and h % 2 == 1, "a square box of odd side"
    n, idx = h, np.arange(h)
    ring = np.ones_like(box)
    ring[1:-1, 1:-1] = 0
    plus = np.zeros_like(box)
    plus[n // 2] = plus[:, n // 2] = 1
    cross = np.zeros_like(box)
    cross[idx, idx] = cross[idx, n - 1 - idx] = 1
    for name, want in (("square", np.ones_like(box)), ("outline", ring), ("plus", plus),
                       ("cross", cross)):
        if np.array_equal(box, want):
            return name
    raise AssertionError(f"no shape matches\n{box}")


def test_shapes_labels_match_the_drawn_shape():
    task = get_task("shapes")
    for length in (None, *task.test_lengths):
        batch = task.sample(np.random.default_rng(3), 60, length=length)
        imgs, labels = images(batch)
        assert set(np.unique(imgs)) <= {0, 1}
        for img, label in zip(imgs, labels):
            assert SHAPES[label] == recognise(img)
        assert np.bincount(labels, minlength=6).min() == 10      # balanced


def walk(image) -> bool:
    """From the pixels: the tip (token 2), the direction from the shaft pixel (1) next to
    it, then step along the ray until the image ends; True when a disk pixel (3) is met."""
    (ti, tj), = np.argwhere(image == 2)
    shaft = [tuple(p) for p in np.argwhere(image == 1)]
    assert len(shaft) == 2
    nxt = [(a, b) for a, b in shaft if max(abs(a - ti), abs(b - tj)) == 1]
    assert len(nxt) == 1
    di, dj = ti - nxt[0][0], tj - nxt[0][1]
    far = [p for p in shaft if p != nxt[0]][0]
    assert far == (ti - 2 * di, tj - 2 * dj), "three pixels in a line"
    i, j = ti + di, tj + dj
    while 0 <= i < image.shape[0] and 0 <= j < image.shape[1]:
        if image[i, j] == 3:
            return True
        i, j = i + di, j + dj
    return False


def test_arrow_labels_match_a_walk_along_the_ray():
    task = get_task("arrow")
    for length in (None, *task.test_lengths):
        batch = task.sample(np.random.default_rng(4), 64, length=length)
        imgs, labels = images(batch)
        for img, label in zip(imgs, labels):
            assert (img == 3).sum() == 5                         # a disk of radius 1
            assert walk(img) == bool(label)
        assert labels.sum() == 32


def test_layout_lengths_and_options():
    assert {"shapes", "arrow"} <= set(list_tasks())
    task = get_task("arrow", train_sides=(6, 7), test_sides=(9,))
    assert task.train_lengths == (36, 49) and task.test_lengths == (81,)
    b = task.sample(np.random.default_rng(0), 5)
    assert b.inputs.shape[1] in (36, 49) and grid_shape(b.inputs.shape[1])[0] in (6, 7)
    assert (b.targets[:, :-1] == IGNORE).all() and b.metric_mask[:, -1].all()
    assert b.metric_mask.sum() == 5
    with pytest.raises(ValueError, match="length must be a square number of pixels"):
        task.sample(np.random.default_rng(0), 2, length=50)
    with pytest.raises(ValueError, match="train_sides entry must be an int >= 5"):
        get_task("shapes", train_sides=(3, 8))
    with pytest.raises(ValueError, match="MIN <= MAX"):
        get_task("shapes", train_sides=(9, 8))


@pytest.mark.parametrize("name,option", [("shapes", "train_sides"), ("parity", "train_lengths"),
                                         ("even_pairs", "train_lengths")])
def test_train_range_is_min_max(name, option):
    """One value is a fixed length; three values or MIN > MAX is one line naming the option."""
    one = get_task(name, **{option: "9"})
    assert getattr(one, option) == (9, 9)
    for bad in ("9,10,11", (12, 9), "12,9"):
        with pytest.raises(ValueError, match=f"{option} must be MIN,MAX with MIN <= MAX"):
            get_task(name, **{option: bad})
