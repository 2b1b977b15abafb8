import keras
from keras import ops


def _axis_weights(start, length, size, output_size, sampling_ratio, dtype):
    """Bilinear sampling weights along one axis, averaged within each bin.

    `start` and `length` are `[B, N]` in feature-map cells (already shifted
    by the half-pixel offset). Returns `[B, N, output_size, size]`: row `p`
    holds the weight of every feature-map row (or column) in bin `p`.
    """
    samples = output_size * sampling_ratio
    steps = (ops.arange(samples, dtype=dtype) + 0.5) / samples
    # [B, N, samples]: sample centres, clamped to the map like RoIAlign's
    # reference kernels do for points within one cell of the border.
    coords = start[..., None] + length[..., None] * steps
    coords = ops.clip(coords, 0.0, float(size - 1))
    low = ops.floor(coords)
    frac = coords - low
    low = ops.cast(low, "int32")
    high = ops.minimum(low + 1, size - 1)
    weights = (ops.one_hot(low, size, dtype=dtype) * (1.0 - frac)[..., None]
               + ops.one_hot(high, size, dtype=dtype) * frac[..., None])
    shape = ops.shape(weights)
    weights = ops.reshape(
        weights, (shape[0], shape[1], output_size, sampling_ratio, size))
    return ops.mean(weights, axis=3)


def roi_align(feature_map, boxes, output_size=7, spatial_scale=1.0 / 32,
              sampling_ratio=2, aligned=True, mean_pool=False):
    """RoIAlign of `boxes` over `feature_map`, written with `keras.ops`.

    See `RoIAlign` for the definition. `feature_map` is `[B, H, W, C]`,
    `boxes` `[B, N, 4]` pixel `x1, y1, x2, y2`; returns
    `[B, N, output_size, output_size, C]`, or `[B, N, C]` (the mean over
    the bins) with `mean_pool=True`.
    """
    dtype = feature_map.dtype
    boxes = ops.cast(boxes, dtype)
    height, width = feature_map.shape[1], feature_map.shape[2]
    if height is None or width is None:
        raise ValueError(
            "roi_align needs a feature map with a static height and width; "
            f"received shape {feature_map.shape}.")
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (boxes[..., i] * spatial_scale for i in range(4))
    box_w, box_h = x2 - x1, y2 - y1
    if not aligned:
        # The original (Mask R-CNN) convention: boxes at least one cell wide.
        box_w, box_h = ops.maximum(box_w, 1.0), ops.maximum(box_h, 1.0)
    wy = _axis_weights(y1 - offset, box_h, height, output_size,
                       sampling_ratio, dtype)
    wx = _axis_weights(x1 - offset, box_w, width, output_size,
                       sampling_ratio, dtype)
    if mean_pool:
        # The mean over bins is linear too: average the weights first.
        return ops.einsum("bnh,bhwc,bnw->bnc", ops.mean(wy, axis=2),
                          feature_map, ops.mean(wx, axis=2))
    # Bilinear interpolation on a grid of sample points is separable: sum over
    # rows, then over columns, never materialising per-point gathers.
    rows = ops.einsum("bnph,bhwc->bnpwc", wy, feature_map)
    return ops.einsum("bnqw,bnpwc->bnpqc", wx, rows)


@keras.saving.register_keras_serializable(package="keras_interbert")
class RoIAlign(keras.layers.Layer):
    """RoIAlign (He et al., Mask R-CNN) over a batch of feature maps.

    Each box is cut into `output_size x output_size` bins; each bin is the
    average of `sampling_ratio x sampling_ratio` regularly spaced points,
    each read from the feature map by bilinear interpolation. With
    `aligned=True` (Detectron2's and torchvision's `aligned=True`), a pixel
    coordinate `X` maps to the feature coordinate `X * spatial_scale - 0.5`,
    so that sample positions refer to cell centres. Sample points that fall
    outside the map are clamped to its border cells. The sampling ratio is
    fixed (not adaptive to the box size as in torchvision's default), so
    every box costs the same and the op traces to fixed shapes.

    Written with `keras.ops` only (one-hot interpolation weights and two
    einsums), so it runs on TensorFlow, JAX and PyTorch and exports into a
    SavedModel as core ops.

    Args:
        output_size: int. Bins per side.
        spatial_scale: float. Feature-map cells per image pixel (1/stride).
        sampling_ratio: int. Sample points per bin and axis.
        aligned: bool. Use the half-pixel offset (see above).
        mean_pool: bool. Return the mean over the bins, `[B, N, C]`,
            instead of the bins (computed without materialising them).

    Examples:
    ```python
    layer = RoIAlign(output_size=2, spatial_scale=1.0 / 8)
    features = np.random.rand(1, 4, 4, 3).astype("float32")
    boxes = np.array([[[0.0, 0.0, 32.0, 32.0]]], "float32")
    layer(features, boxes).shape  # (1, 1, 2, 2, 3)
    ```
    """

    def __init__(self, output_size=7, spatial_scale=1.0 / 32,
                 sampling_ratio=2, aligned=True, mean_pool=False, **kwargs):
        super().__init__(**kwargs)
        if int(output_size) < 1 or int(sampling_ratio) < 1:
            raise ValueError(
                "output_size and sampling_ratio must be >= 1; received "
                f"{output_size} and {sampling_ratio}.")
        self.output_size = int(output_size)
        self.spatial_scale = float(spatial_scale)
        self.sampling_ratio = int(sampling_ratio)
        self.aligned = bool(aligned)
        self.mean_pool = bool(mean_pool)

    def call(self, feature_map, boxes):
        return roi_align(feature_map, boxes, self.output_size,
                         self.spatial_scale, self.sampling_ratio, self.aligned,
                         self.mean_pool)

    def compute_output_shape(self, feature_map_shape, boxes_shape):
        if self.mean_pool:
            return (feature_map_shape[0], boxes_shape[1], feature_map_shape[-1])
        return (feature_map_shape[0], boxes_shape[1], self.output_size,
                self.output_size, feature_map_shape[-1])

    def get_config(self):
        config = super().get_config()
        config.update({
            "output_size": self.output_size,
            "spatial_scale": self.spatial_scale,
            "sampling_ratio": self.sampling_ratio,
            "aligned": self.aligned,
            "mean_pool": self.mean_pool,
        })
        return config
