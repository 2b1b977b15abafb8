from keras import ops


def grid_boxes(image_h, image_w, levels=(6,)):
    """A fixed grid of regions over each image, for extraction without a detector.

    Level `k` cuts the image into `k x k` equal cells; the levels' cells are
    concatenated in order, row by row (`levels=(6,)`: 36 regions, the region
    count of the published pretraining data; `levels=(1, 2, 4)`: the whole
    image, then quarters, then sixteenths). Written with `keras.ops`, so it
    also traces into a serving graph.

    Args:
        image_h, image_w: `[B]` image heights and widths in pixels (numbers
            or tensors).
        levels: grid sizes.

    Returns:
        `[B, sum(k * k), 4]` float32 pixel boxes `x1, y1, x2, y2`.

    Examples:
    ```python
    grid_boxes([480], [640], levels=(2,))
    # [[[0, 0, 320, 240], [320, 0, 640, 240], [0, 240, 320, 480], ...]]
    ```
    """
    if not levels or any(int(k) < 1 for k in levels):
        raise ValueError(f"levels must be positive grid sizes; received "
                         f"{levels!r}.")
    h = ops.cast(ops.reshape(ops.convert_to_tensor(image_h), (-1, 1)),
                 "float32")
    w = ops.cast(ops.reshape(ops.convert_to_tensor(image_w), (-1, 1)),
                 "float32")
    cells = []
    for k in levels:
        k = int(k)
        rows = [r for r in range(k) for _ in range(k)]
        cols = [c for _ in range(k) for c in range(k)]
        r0 = ops.convert_to_tensor([r / k for r in rows], "float32")[None]
        r1 = ops.convert_to_tensor([(r + 1) / k for r in rows], "float32")[None]
        c0 = ops.convert_to_tensor([c / k for c in cols], "float32")[None]
        c1 = ops.convert_to_tensor([(c + 1) / k for c in cols], "float32")[None]
        cells.append(ops.stack([c0 * w, r0 * h, c1 * w, r1 * h], axis=-1))
    return ops.concatenate(cells, axis=1)


def num_grid_boxes(levels):
    """The number of regions `grid_boxes` gives for `levels`."""
    return sum(int(k) * int(k) for k in levels)
