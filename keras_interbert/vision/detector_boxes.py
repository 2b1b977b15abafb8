import keras
from keras import ops


class DetectorBoxes:
    """Regions and class distributions from a keras-hub object detector.

    Runs a keras-hub `RetinaNetObjectDetector` (any preset, or a saved
    `.keras` detector) on the extractor's letterboxed images, decodes its
    anchors' box regressions, and keeps the non-max-suppressed boxes in
    score order, the most confident first, as bottom-up-attention does: all
    boxes scoring at least `score_threshold`, at least `min_regions` and at
    most `max_regions` of them. Each kept box's class distribution is its
    anchor's per-class sigmoid scores divided by their sum (RetinaNet scores
    classes independently; the canonical format and masked region modelling
    want a distribution over the detector's classes).

    Boxes come back in the pixels of the images given, `x1, y1, x2, y2`,
    clipped to the image. The detector's own preprocessing is reproduced
    with `pixel_scale`/`pixel_offset` (`x * scale + offset` on 0..255
    pixels; 1/255 and 0 when the detector has no image converter).

    Args:
        detector: a keras-hub `RetinaNetObjectDetector`.
        max_regions, min_regions: bounds on the boxes kept per image.
        score_threshold: minimum confidence beyond the first `min_regions`.
        iou_threshold: non-max-suppression overlap threshold.

    Examples:
    ```python
    boxes = DetectorBoxes(keras_hub.models.RetinaNetObjectDetector
                          .from_preset("retinanet_resnet50_fpn_coco"))
    out = boxes(images)  # images [B, S, S, 3] in 0..255
    out["boxes"], out["class_probs"], out["num_regions"]
    ```
    """

    def __init__(self, detector, max_regions=36, min_regions=10,
                 score_threshold=0.2, iou_threshold=0.5):
        if not 1 <= int(min_regions) <= int(max_regions):
            raise ValueError(
                "need 1 <= min_regions <= max_regions; received "
                f"min_regions={min_regions}, max_regions={max_regions}.")
        self.detector = detector
        self.max_regions = int(max_regions)
        self.min_regions = int(min_regions)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)
        self.num_classes = int(detector.num_classes)
        scale, offset = 1.0 / 255, 0.0
        converter = getattr(getattr(detector, "preprocessor", None),
                            "image_converter", None)
        if converter is not None and converter.scale is not None:
            scale = converter.scale
            offset = 0.0 if converter.offset is None else converter.offset
        self.pixel_scale = scale
        self.pixel_offset = offset

    def __call__(self, images):
        from keras_hub.src.layers.modeling.non_max_supression import (
            non_max_suppression,
        )

        detector = self.detector
        images = ops.convert_to_tensor(images, "float32")
        scale = ops.convert_to_tensor(self.pixel_scale, "float32")
        offset = ops.convert_to_tensor(self.pixel_offset, "float32")
        inputs = images * scale + offset
        raw = detector(inputs, training=False)
        height, width = images.shape[1], images.shape[2]
        anchors = detector.anchor_generator(inputs)
        anchors = ops.concatenate(list(anchors.values()), axis=0)
        boxes = keras.utils.bounding_boxes.decode_deltas_to_boxes(
            anchors=anchors, boxes_delta=raw["bbox_regression"],
            encoded_format="center_xywh",
            anchor_format=detector.anchor_generator.bounding_box_format,
            box_format="yxyx", image_shape=(height, width, 3))
        scores = ops.sigmoid(ops.cast(raw["cls_logits"], "float32"))
        confidence = ops.max(scores, axis=-1)
        # Every box that survives suppression, by score; thresholds after.
        idx, _ = non_max_suppression(
            boxes, confidence, max_output_size=self.max_regions,
            iou_threshold=self.iou_threshold, score_threshold=0.0)
        boxes = ops.take_along_axis(boxes, idx[..., None], axis=1)
        scores = ops.take_along_axis(scores, idx[..., None], axis=1)
        confidence = ops.take_along_axis(confidence, idx, axis=1)
        y1, x1, y2, x2 = (boxes[..., i] for i in range(4))
        x1 = ops.clip(x1, 0.0, float(width))
        x2 = ops.clip(x2, 0.0, float(width))
        y1 = ops.clip(y1, 0.0, float(height))
        y2 = ops.clip(y2, 0.0, float(height))
        boxes = ops.stack([ops.minimum(x1, x2), ops.minimum(y1, y2),
                           ops.maximum(x1, x2), ops.maximum(y1, y2)], axis=-1)
        confident = ops.sum(
            ops.cast(confidence >= self.score_threshold, "int32"), axis=1)
        num = ops.clip(confident, self.min_regions, self.max_regions)
        probs = scores / ops.maximum(ops.sum(scores, axis=-1, keepdims=True),
                                     1e-12)
        return {"boxes": ops.stop_gradient(boxes),
                "class_probs": ops.stop_gradient(probs),
                "num_regions": num}
