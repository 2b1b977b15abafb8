import keras
from keras import ops

from keras_interbert.vision.roi_align import RoIAlign

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@keras.saving.register_keras_serializable(package="keras_interbert")
class RegionFeatureExtractor(keras.Model):
    """Region features (and class distributions) from pixels and boxes.

    The Keras 3 replacement for the bottom-up-attention Faster R-CNN feature
    extractor: an image backbone from keras-hub (a ResNet-50 by default,
    2048 channels at stride 32, the width the published model expects) runs
    on the whole image, and every box is pooled from its last feature map:
    `RoIAlign` with `output_size x output_size` bins of `sampling_ratio^2`
    bilinear samples, then the mean over the bins. For the defaults that is
    the mean of a 14 x 14 grid of bilinear samples spread evenly over the box,
    a `[C]` vector per box, the way Faster R-CNN's box head pools an RoI
    before its classifier (here without the detector's fc layers, which a
    classification backbone does not have).

    With `num_classes`, a dense layer followed by a softmax turns each
    region's feature into a class distribution (`class_probs`), the targets
    of masked region modelling. Loaded from an image classifier
    (`from_image_classifier`) this is the classifier's own head applied to
    each region's pooled feature instead of the whole image's: the region's
    ImageNet class distribution.

    Inputs are images already resized and padded to `image_size` (see
    `keras_interbert.vision.image_decoding.letterbox`), pixel values in
    [0, 255], and boxes in the pixels of those resized images. The pixels are
    scaled to [0, 1] and normalised with `pixel_mean`/`pixel_std` inside the
    model.

    Args:
        image_backbone: a keras-hub image backbone (or any Keras model) that
            maps `[B, S, S, 3]` to one `[B, S/stride, S/stride, C]` map.
        image_size: int. S, the side of the square input images.
        output_size: int. RoIAlign bins per side.
        sampling_ratio: int. RoIAlign samples per bin and axis.
        num_classes: int or None. Width of the class head; `None` for none.
        pixel_mean, pixel_std: per-channel normalisation of [0, 1] pixels
            (ImageNet's by default, as keras-hub's ResNet presets use).

    Examples:
    ```python
    from keras_interbert.vision import resnet_backbone
    extractor = RegionFeatureExtractor(
        resnet_backbone(block_type="basic_block",
                        stackwise_num_filters=[64, 16],
                        stackwise_num_blocks=[1, 1],
                        stackwise_num_strides=[1, 2]),
        image_size=64, num_classes=5)
    out = extractor({"images": np.zeros((1, 64, 64, 3), "float32"),
                     "boxes": np.array([[[0, 0, 32, 32]]], "float32")})
    out["region_features"].shape, out["class_probs"].shape  # (1,1,16) (1,1,5)
    ```
    """

    def __init__(self, image_backbone, image_size=448, output_size=7,
                 sampling_ratio=2, num_classes=None,
                 pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD, **kwargs):
        # === Layers ===
        image_size = int(image_size)
        feature_shape = image_backbone.compute_output_shape(
            (None, image_size, image_size, 3))
        if len(feature_shape) != 4 or feature_shape[1] is None:
            raise ValueError(
                "image_backbone must map [B, S, S, 3] images to one "
                "[B, h, w, C] feature map; for S = "
                f"{image_size} it gives {feature_shape}.")
        stride = image_size / feature_shape[1]
        rescale = keras.layers.Rescaling(1.0 / 255, name="pixel_rescaling")
        normalize = keras.layers.Normalization(
            mean=list(pixel_mean), variance=[s * s for s in pixel_std],
            name="pixel_normalization")
        pooler = RoIAlign(output_size=output_size,
                          spatial_scale=1.0 / stride,
                          sampling_ratio=sampling_ratio, mean_pool=True,
                          name="roi_align")
        class_head = None
        if num_classes is not None:
            class_head = keras.layers.Dense(int(num_classes),
                                            name="region_class_head")

        # === Functional model ===
        images = keras.Input((image_size, image_size, 3), name="images")
        boxes = keras.Input((None, 4), name="boxes")
        feature_map = image_backbone(normalize(rescale(images)))
        features = pooler(feature_map, boxes)
        outputs = {"region_features": features}
        if class_head is not None:
            outputs["class_probs"] = keras.layers.Softmax(
                name="class_softmax")(class_head(features))
        super().__init__(inputs={"images": images, "boxes": boxes},
                         outputs=outputs, **kwargs)

        # === Config ===
        self.image_backbone = image_backbone
        self.image_size = image_size
        self.output_size = int(output_size)
        self.sampling_ratio = int(sampling_ratio)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.pixel_mean = tuple(float(m) for m in pixel_mean)
        self.pixel_std = tuple(float(s) for s in pixel_std)
        self.feature_stride = stride
        self.feature_dim = int(feature_shape[-1])

    @classmethod
    def from_image_classifier(cls, classifier, **kwargs):
        """An extractor whose class head is `classifier`'s, per region.

        `classifier` is a keras-hub `ImageClassifier` (e.g.
        `keras_hub.models.ImageClassifier.from_preset("resnet_50_imagenet")`)
        with average pooling; its backbone and `output_dense` weights are
        reused.
        """
        dense = classifier.output_dense
        kernel = dense.kernel.numpy() if hasattr(dense.kernel, "numpy") else (
            ops.convert_to_numpy(dense.kernel))
        extractor = cls(classifier.backbone, num_classes=kernel.shape[-1],
                        **kwargs)
        head = extractor.get_layer("region_class_head")
        head.set_weights([ops.convert_to_numpy(w) for w in dense.weights])
        return extractor

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "image_backbone": keras.saving.serialize_keras_object(
                self.image_backbone),
            "image_size": self.image_size,
            "output_size": self.output_size,
            "sampling_ratio": self.sampling_ratio,
            "num_classes": self.num_classes,
            "pixel_mean": list(self.pixel_mean),
            "pixel_std": list(self.pixel_std),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["image_backbone"] = keras.saving.deserialize_keras_object(
            config["image_backbone"])
        return cls(**config)


def feature_fingerprint(extractor):
    """A digest of everything that decides a `RegionFeatureExtractor`'s
    region features: the image backbone's weights (values, shapes and
    dtypes, in the backbone's own order), the input size, the pixel
    normalisation and the RoIAlign settings.

    Two extractors with the same fingerprint give the same features for the
    same image and boxes; the class head (which only makes `class_probs`) is
    left out. The same on every backend and after a `.keras` save and load.
    Returns `"sha256:<hex>"`.
    """
    import hashlib
    import json

    import numpy as np

    digest = hashlib.sha256()
    settings = {"image_size": int(extractor.image_size),
                "output_size": int(extractor.output_size),
                "sampling_ratio": int(extractor.sampling_ratio),
                "pixel_mean": [float(m) for m in extractor.pixel_mean],
                "pixel_std": [float(s) for s in extractor.pixel_std],
                "feature_dim": int(extractor.feature_dim)}
    digest.update(json.dumps(settings, sort_keys=True).encode())
    for variable in extractor.image_backbone.weights:
        value = np.ascontiguousarray(ops.convert_to_numpy(variable))
        digest.update(f"{value.dtype.str}{value.shape}".encode())
        digest.update(value.tobytes())
    return "sha256:" + digest.hexdigest()
