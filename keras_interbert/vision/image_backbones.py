"""Image backbones for region features: keras-hub models by name or file."""
import os

import keras

# ResNet-50 (v1, "bottleneck" blocks) as keras-hub's `resnet_50_imagenet`
# preset builds it: 2048 channels at stride 32.
RESNET50_CONFIG = dict(
    input_conv_filters=[64],
    input_conv_kernel_sizes=[7],
    stackwise_num_filters=[64, 128, 256, 512],
    stackwise_num_blocks=[3, 4, 6, 3],
    stackwise_num_strides=[1, 2, 2, 2],
    block_type="bottleneck_block",
    use_pre_activation=False,
)
DEFAULT_PRESET = "resnet_50_imagenet"


def resnet_backbone(**overrides):
    """A keras-hub `ResNetBackbone`, ResNet-50 shaped unless overridden.

    Random weights; for tests and benchmarks pass a tiny configuration, e.g.
    `block_type="basic_block", stackwise_num_filters=[64, 16],
    stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2]` (16 channels
    at stride 8; keras-hub requires 64 filters in the first stack).
    """
    import keras_hub

    config = dict(RESNET50_CONFIG, **overrides)
    config.setdefault("image_shape", (None, None, 3))
    return keras_hub.models.ResNetBackbone(**config)


def load_image_backbone(source=DEFAULT_PRESET, weights=None):
    """An image backbone from a keras-hub preset, a `.keras` file or config.

    Args:
        source: a keras-hub preset name or handle (`"resnet_50_imagenet"`,
            needs the network or a local preset folder), a saved `.keras`
            model (a backbone, or a keras-hub image classifier whose
            backbone is taken), or `"resnet50"` for a ResNet-50 with random
            weights.
        weights: optional `.weights.h5` file loaded into the backbone
            (typically with `source="resnet50"`).
    """
    import keras_hub

    if source == "resnet50":
        model = resnet_backbone()
    elif str(source).endswith(".keras"):
        if not os.path.exists(source):
            raise FileNotFoundError(f"image backbone file {source!r} does "
                                    "not exist.")
        model = keras.saving.load_model(source, compile=False)
    else:
        try:
            model = keras_hub.models.Backbone.from_preset(source)
        except Exception as e:
            raise RuntimeError(
                f"cannot load the keras-hub preset {source!r} ({e}). Offline, "
                "pass a saved .keras backbone, or source='resnet50' with a "
                ".weights.h5 file.") from e
    if hasattr(model, "backbone") and not hasattr(model, "pyramid_outputs"):
        model = model.backbone
    if weights is not None:
        model.load_weights(weights)
    return model
