import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_interbert.vision import DetectorBoxes
from keras_interbert.vision import RegionFeatureExtractor
from keras_interbert.vision import RoIAlign
from keras_interbert.vision import extract_regions
from keras_interbert.vision import grid_boxes
from keras_interbert.vision import prepare_images
from keras_interbert.vision import resnet_backbone
from keras_interbert.vision import roi_align

TINY_RESNET = dict(block_type="basic_block", stackwise_num_filters=[64, 16],
                   stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2])


def tiny_extractor(image_size=64, num_classes=5):
    return RegionFeatureExtractor(resnet_backbone(**TINY_RESNET),
                                  image_size=image_size,
                                  num_classes=num_classes)


def reference_roi_align(feature_map, boxes, output_size, spatial_scale,
                        sampling_ratio):
    """RoIAlign from TensorFlow's crop_and_resize, which does the sampling.

    The `(output_size * sampling_ratio)^2` sample points of each box are
    placed as crop_and_resize's crop grid on the map padded by one replicated
    cell per side (reads outside the map are then clamped to the border, as
    RoIAlign does); each bin is the mean of its samples.
    """
    b, h, w, c = feature_map.shape
    n = output_size * sampling_ratio
    padded = tf.pad(feature_map, [[0, 0], [1, 1], [1, 1], [0, 0]],
                    mode="SYMMETRIC")
    f = boxes * spatial_scale - 0.5  # aligned: half-pixel offset
    step_x = (f[..., 2] - f[..., 0]) / n
    step_y = (f[..., 3] - f[..., 1]) / n
    first_x, last_x = f[..., 0] + 0.5 * step_x, f[..., 0] + (n - 0.5) * step_x
    first_y, last_y = f[..., 1] + 0.5 * step_y, f[..., 1] + (n - 0.5) * step_y
    normalised = np.stack([(first_y + 1) / (h + 1), (first_x + 1) / (w + 1),
                           (last_y + 1) / (h + 1), (last_x + 1) / (w + 1)],
                          -1).reshape(-1, 4)
    index = np.repeat(np.arange(b), boxes.shape[1])
    crops = tf.image.crop_and_resize(padded, normalised, index, [n, n]).numpy()
    crops = crops.reshape(b, boxes.shape[1], output_size, sampling_ratio,
                          output_size, sampling_ratio, c)
    return crops.mean(axis=(3, 5))


def random_boxes(rng, batch, count, image_h, image_w):
    x1 = rng.uniform(0, image_w - 1, (batch, count))
    y1 = rng.uniform(0, image_h - 1, (batch, count))
    x2 = rng.uniform(x1, image_w)
    y2 = rng.uniform(y1, image_h)
    return np.stack([x1, y1, x2, y2], -1).astype("float32")


@pytest.mark.parametrize("output_size,sampling_ratio,stride",
                         [(7, 2, 32), (3, 1, 8), (2, 3, 16)])
def test_roi_align_matches_tf_crop_and_resize(output_size, sampling_ratio,
                                              stride):
    rng = np.random.default_rng(output_size)
    fmap = rng.normal(size=(2, 9, 11, 6)).astype("float32")
    boxes = random_boxes(rng, 2, 12, 9 * stride, 11 * stride)
    boxes[0, 0] = [0, 0, 11 * stride, 9 * stride]  # the whole image
    boxes[1, 0] = [5, 5, 5, 5]  # a degenerate box reads one point
    got = keras.ops.convert_to_numpy(RoIAlign(
        output_size, 1.0 / stride, sampling_ratio)(fmap, boxes))
    want = reference_roi_align(fmap, boxes, output_size, 1.0 / stride,
                               sampling_ratio)
    assert got.shape == (2, 12, output_size, output_size, 6)
    np.testing.assert_allclose(got, want, atol=1e-5)
    pooled = keras.ops.convert_to_numpy(roi_align(
        fmap, boxes, output_size, 1.0 / stride, sampling_ratio,
        mean_pool=True))
    np.testing.assert_allclose(pooled, want.mean(axis=(2, 3)), atol=1e-5)


def test_grid_boxes_cover_the_image_level_by_level():
    boxes = keras.ops.convert_to_numpy(grid_boxes([480, 30], [640, 90],
                                                  levels=(1, 2)))
    assert boxes.shape == (2, 5, 4)
    np.testing.assert_allclose(boxes[0], [
        [0, 0, 640, 480],
        [0, 0, 320, 240], [320, 0, 640, 240],
        [0, 240, 320, 480], [320, 240, 640, 480]])
    np.testing.assert_allclose(boxes[1, 4], [45, 15, 90, 30])
    with pytest.raises(ValueError, match="levels"):
        grid_boxes([1], [1], levels=(0,))


def test_letterbox_keeps_aspect_ratio_and_pads_with_zeros():
    image = np.full((50, 80, 3), 200, np.uint8)
    batch, sizes = prepare_images([image], 64)
    assert batch.shape == (1, 64, 64, 3)
    np.testing.assert_array_equal(sizes, [[50, 80]])
    np.testing.assert_allclose(batch[0, :40], 200.0)  # 50 * 64/80 = 40 rows
    np.testing.assert_array_equal(batch[0, 40:], 0.0)


def test_extractor_pools_the_backbone_map_of_normalised_pixels():
    extractor = tiny_extractor()
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    boxes = random_boxes(rng, 2, 4, 64, 64)
    out = extractor.predict_on_batch({"images": images, "boxes": boxes})
    assert extractor.feature_dim == 16 and extractor.feature_stride == 8
    mean = np.array([0.485, 0.456, 0.406])
    std = np.array([0.229, 0.224, 0.225])
    fmap = keras.ops.convert_to_numpy(extractor.image_backbone(
        ((images / 255.0 - mean) / std).astype("float32")))
    want = reference_roi_align(fmap, boxes, 7, 1.0 / 8, 2).mean(axis=(2, 3))
    np.testing.assert_allclose(out["region_features"], want, atol=1e-4)
    np.testing.assert_allclose(out["class_probs"].sum(-1), 1.0, atol=1e-5)
    assert out["class_probs"].shape == (2, 4, 5)


def test_extractor_config_and_keras_file_round_trip(tmp_path):
    extractor = tiny_extractor(num_classes=3)
    inputs = {"images": np.random.default_rng(2).uniform(
        0, 255, (1, 64, 64, 3)).astype("float32"),
        "boxes": np.array([[[0, 0, 64, 64], [8, 8, 30, 20]]], "float32")}
    path = os.path.join(tmp_path, "extractor.keras")
    extractor.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, RegionFeatureExtractor)
    assert loaded.get_config()["num_classes"] == 3
    a = extractor.predict_on_batch(inputs)
    b = loaded.predict_on_batch(inputs)
    for key in ("region_features", "class_probs"):
        np.testing.assert_allclose(a[key], b[key], atol=1e-6)


def test_class_head_from_an_image_classifier_is_its_head_per_region():
    import keras_hub

    classifier = keras_hub.models.ResNetImageClassifier(
        backbone=resnet_backbone(**TINY_RESNET), num_classes=4)
    extractor = RegionFeatureExtractor.from_image_classifier(
        classifier, image_size=64)
    images = np.random.default_rng(3).uniform(
        0, 255, (1, 64, 64, 3)).astype("float32")
    out = extractor.predict_on_batch(
        {"images": images, "boxes": np.array([[[0, 0, 40, 50]]], "float32")})
    kernel, bias = (keras.ops.convert_to_numpy(w)
                    for w in classifier.output_dense.weights)
    logits = out["region_features"][0] @ kernel + bias
    want = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    np.testing.assert_allclose(out["class_probs"][0], want, atol=1e-5)


def test_extract_regions_returns_boxes_in_original_pixels():
    extractor = tiny_extractor()
    rng = np.random.default_rng(4)
    images = [rng.integers(0, 255, (50, 80, 3), np.uint8),
              rng.integers(0, 255, (90, 40, 3), np.uint8)]
    grid = extract_regions(extractor, images, grid_levels=(2,))
    np.testing.assert_allclose(grid[1]["boxes"], [
        [0, 0, 20, 45], [20, 0, 40, 45], [0, 45, 20, 90], [20, 45, 40, 90]],
        atol=1e-4)
    assert (grid[0]["image_h"], grid[0]["image_w"]) == (50, 80)
    assert grid[0]["features"].shape == (4, 16)
    user = extract_regions(extractor, images, boxes=[
        np.array([[0, 0, 80, 50]]), np.array([[1, 2, 30, 60], [0, 0, 40, 90]])])
    assert [len(r["boxes"]) for r in user] == [1, 2]
    np.testing.assert_allclose(user[1]["boxes"][0], [1, 2, 30, 60], atol=1e-4)
    # The whole-image user box and the one-cell grid give the same feature.
    whole = extract_regions(extractor, images, grid_levels=(1,))
    np.testing.assert_allclose(user[0]["features"][0],
                               whole[0]["features"][0], atol=1e-5)


def test_detector_boxes_from_a_tiny_retinanet():
    import keras_hub

    encoder = resnet_backbone(block_type="basic_block",
                              stackwise_num_filters=[64, 16, 16],
                              stackwise_num_blocks=[1, 1, 1],
                              stackwise_num_strides=[1, 2, 2])
    detector = keras_hub.models.RetinaNetObjectDetector(
        backbone=keras_hub.models.RetinaNetBackbone(
            image_encoder=encoder, min_level=3, max_level=4, use_p5=False),
        num_classes=6, pre_logits_num_conv_layers=1)
    source = DetectorBoxes(detector, max_regions=5, min_regions=2,
                           score_threshold=0.9)
    extractor = tiny_extractor()
    images = [np.random.default_rng(5).integers(0, 255, (48, 64, 3), np.uint8)]
    (result,) = extract_regions(extractor, images, detector=source)
    n = len(result["boxes"])
    assert 2 <= n <= 5
    assert result["class_probs"].shape == (n, 6)
    np.testing.assert_allclose(result["class_probs"].sum(-1), 1.0, atol=1e-5)
    boxes = result["boxes"]
    assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
    assert boxes.min() >= 0 and (boxes[:, [0, 2]] <= 64).all()
    assert (boxes[:, [1, 3]] <= 48).all()


def test_image_backbone_from_a_local_preset_a_keras_file_and_a_weights_file(
        tmp_path):
    from keras_interbert.vision.image_backbones import load_image_backbone

    keras.utils.set_random_seed(1)
    source = resnet_backbone(**TINY_RESNET)
    images = np.random.default_rng(0).random((1, 32, 32, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(source(images))
    preset = str(tmp_path / "preset")
    source.save_to_preset(preset)
    source.save(str(tmp_path / "backbone.keras"))
    source.save_weights(str(tmp_path / "backbone.weights.h5"))
    keras.utils.set_random_seed(2)
    other = str(tmp_path / "other_preset")
    resnet_backbone(**TINY_RESNET).save_to_preset(other)
    reweighted = load_image_backbone(
        other, weights=str(tmp_path / "backbone.weights.h5"))
    for model in (load_image_backbone(preset),
                  load_image_backbone(str(tmp_path / "backbone.keras")),
                  reweighted):
        np.testing.assert_allclose(
            keras.ops.convert_to_numpy(model(images)), expected, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_backbone(str(tmp_path / "missing.keras"))
