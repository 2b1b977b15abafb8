"""Image bytes to the extractor's square inputs (TensorFlow, data side).

The same functions run in the extraction recipe and inside the `score_image`
serving graph, so that a served image is resized exactly as the training
features were.
"""
import tensorflow as tf


def decode_image(image_bytes):
    """JPEG, PNG, GIF (first frame) or BMP bytes to uint8 `[H, W, 3]`.

    Grey images are repeated to three channels, alpha is dropped.
    """
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8,
                               expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def letterbox(image, image_size):
    """Resize keeping the aspect ratio, then pad to `image_size` squared.

    The longer side becomes `image_size` (bilinear, no antialiasing); the
    image sits in the top-left corner and the rest is 0 (black). Boxes map
    to the resized image by `letterbox_boxes`.

    Args:
        image: `[H, W, 3]` pixels (any real or integer dtype), 0..255.
        image_size: int, the side S of the output.

    Returns:
        `(padded float32 [S, S, 3], size int32 [2])`: `size` is the original
        `(height, width)`.
    """
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    resized_h, resized_w = resized_shape(h, w, image_size)
    resized = tf.image.resize(tf.cast(image, tf.float32),
                              tf.stack([resized_h, resized_w]),
                              method="bilinear", antialias=False)
    padded = tf.pad(resized, [[0, image_size - resized_h],
                              [0, image_size - resized_w], [0, 0]])
    padded = tf.ensure_shape(padded, [image_size, image_size, 3])
    return padded, tf.stack([h, w])


def resized_shape(h, w, image_size):
    """`(h', w')` of an `h x w` image whose longer side becomes `image_size`."""
    h = tf.cast(h, tf.float64)
    w = tf.cast(w, tf.float64)
    scale = tf.cast(image_size, tf.float64) / tf.maximum(h, w)
    new_h = tf.clip_by_value(tf.round(h * scale), 1, image_size)
    new_w = tf.clip_by_value(tf.round(w * scale), 1, image_size)
    return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def letterbox_boxes(boxes, size, image_size, inverse=False):
    """Map pixel boxes `[..., N, 4]` of images of `size` `[..., 2]` (h, w)
    to the letterboxed image's pixels, or back with `inverse=True`."""
    size = tf.cast(size, tf.int32)
    new_h, new_w = resized_shape(size[..., 0], size[..., 1], image_size)
    sy = tf.cast(new_h, tf.float32) / tf.cast(size[..., 0], tf.float32)
    sx = tf.cast(new_w, tf.float32) / tf.cast(size[..., 1], tf.float32)
    scale = tf.stack([sx, sy, sx, sy], axis=-1)[..., tf.newaxis, :]
    boxes = tf.cast(boxes, tf.float32)
    return boxes / scale if inverse else boxes * scale
