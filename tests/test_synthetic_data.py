import json
import os
import re

import numpy as np
import pytest

from keras_interbert.data import synthetic
from keras_interbert.data.synthetic import CLASS_NAMES
from keras_interbert.data.synthetic import COLOURS
from keras_interbert.data.synthetic import NUM_CLASSES
from keras_interbert.data.synthetic import PALETTE
from keras_interbert.data.synthetic import SHAPES

# tf.data, numpy and files only: the same under every KERAS_BACKEND
# (conftest.py).
pytestmark = pytest.mark.once

SIZE = synthetic.DEFAULT_IMAGE_SIZE

# ------------------------------------------------------------------
# An independent reading of the caption grammars: it sees only the caption
# text and recovers the mentioned objects, counts and relations.

_EN_COUNT = {"a": 1, "an": 1, "single": 1, "two": 2, "three": 3, "four": 4,
             "five": 5}
_EN_MENTION = re.compile(
    r"\b(an?|single|two|three|four|five)\s+(?:(small|large)\s+)?"
    rf"(?:({'|'.join(COLOURS)})\s+)?"
    r"(squares?|circles?|triangles?|cross(?:es)?|rings?|diamonds?)\b")
_EN_RELATION = {"to the left of": "left", "to the right of": "right",
                "above": "above", "below": "below"}
_ZH_COUNT = {"一": 1, "两": 2, "三": 3, "四": 4, "五": 5}
_ZH_COLOUR = {"红色": "red", "绿色": "green", "蓝色": "blue", "黄色": "yellow",
              "紫色": "purple", "橙色": "orange", "青色": "cyan",
              "白色": "white"}
_ZH_SHAPE = {"正方形": "square", "圆形": "circle", "三角形": "triangle",
             "十字形": "cross", "圆环": "ring", "菱形": "diamond"}
_ZH_MENTION = re.compile(
    r"(一|两|三|四|五)个(?:(大|小)的)?"
    rf"({'|'.join(_ZH_COLOUR)})?的?({'|'.join(_ZH_SHAPE)})")
_ZH_RELATION = {"左边": "left", "左侧": "left", "右边": "right",
                "右侧": "right", "上面": "above", "上方": "above",
                "下面": "below", "下方": "below"}


def _singular(word):
    if word.endswith("sses"):
        return word[:-2]
    return word if word.endswith("ss") else word.removesuffix("s")


def parse_en(text):
    mentions = []
    for m in _EN_MENTION.finditer(text):
        det, size, colour, shape = m.groups()
        count = _EN_COUNT[det]
        if det in ("a", "an"):
            first = size or colour or shape
            assert det == ("an" if first[0] in "aeiou" else "a"), text
        mentions.append({"count": count, "size": size, "colour": colour,
                         "shape": _singular(shape), "start": m.start()})
    relation = None
    for phrase, name in _EN_RELATION.items():
        if re.search(rf"\b{phrase}\b", text):
            relation = name
    total = None
    head = re.match(r"(two|three|four|five) (shapes|objects):", text)
    if head:
        total = _EN_COUNT[head.group(1)]
    if text.startswith("a single ") or text.startswith("only ") or text.endswith(
            " alone"):
        total = 1
    return {"mentions": mentions, "relation": relation, "total": total,
            "reference_first": False}


def parse_zh(text):
    mentions = []
    for m in _ZH_MENTION.finditer(text):
        number, size, colour, shape = m.groups()
        mentions.append({
            "count": _ZH_COUNT[number],
            "size": {"大": "large", "小": "small"}.get(size),
            "colour": _ZH_COLOUR.get(colour), "shape": _ZH_SHAPE[shape],
            "start": m.start()})
    relation, reference_first = None, False
    found = re.search(rf"的({'|'.join(_ZH_RELATION)})(有)?", text)
    if found:
        relation = _ZH_RELATION[found.group(1)]
        reference_first = found.group(2) is not None
    total = None
    head = re.search(r"共有(一|两|三|四|五)个图形", text)
    if head:
        total = _ZH_COUNT[head.group(1)]
    if "只有" in text:
        total = 1
    return {"mentions": mentions, "relation": relation, "total": total,
            "reference_first": reference_first}


def _matches(mention, objects):
    return [k for k, o in enumerate(objects)
            if o["shape"] == mention["shape"]
            and mention["colour"] in (None, o["colour"])
            and mention["size"] in (None, o["size"])]


def _pixel_centroids(scene):
    ys, xs = np.mgrid[0:SIZE, 0:SIZE]
    label_map = scene["label_map"]
    return [(xs[label_map == k].mean() + 0.5, ys[label_map == k].mean() + 0.5)
            for k in range(len(scene["objects"]))]


def _holds(relation, a, b):
    dx, dy = a[0] - b[0], a[1] - b[1]
    offset = 0.05 * SIZE
    return {"left": dx < -offset and abs(dx) > abs(dy),
            "right": dx > offset and abs(dx) > abs(dy),
            "above": dy < -offset and abs(dy) > abs(dx),
            "below": dy > offset and abs(dy) > abs(dx)}[relation]


def _choices(mention, objects):
    matched = _matches(mention, objects)
    return [matched] if mention["count"] > 1 else [[k] for k in matched]


def check_caption(parsed, scene, text):
    """Asserts that a parsed caption is true of the scene; returns whether
    it stated a relation."""
    objects = scene["objects"]
    assert parsed["mentions"], f"no object mentioned in {text!r}"
    for mention in parsed["mentions"]:
        found = len(_matches(mention, objects))
        if mention["count"] == 1:
            assert found >= 1, f"{text!r}: {mention} is not in {objects}"
        else:
            assert found == mention["count"], f"{text!r}: {mention} vs {objects}"
    if parsed["total"] is not None:
        assert parsed["total"] == len(objects), text
        assert sum(m["count"] for m in parsed["mentions"]) == len(objects), text
    if parsed["relation"] is None:
        return False
    assert len(parsed["mentions"]) == 2, text
    subject, reference = parsed["mentions"]
    if parsed["reference_first"]:
        subject, reference = reference, subject
    centroids = _pixel_centroids(scene)
    assert any(
        all(_holds(parsed["relation"], centroids[a], centroids[b])
            for a in s for b in r)
        for s in _choices(subject, objects) for r in _choices(reference, objects)
    ), f"{text!r} is not what the image shows: {objects}"
    return True


# ------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def scenes():
    return synthetic.generate_scenes(60, seed=7, feature_dim=64)


@pytest.fixture(scope="module")
def retrieval_scenes():
    return synthetic.generate_scenes(400, seed=11, feature_dim=64)


def _object_regions(scenes):
    features, labels = [], []
    for scene in scenes:
        regions = scene["regions"]
        for row, k in enumerate(regions["object_index"]):
            if k >= 0:
                obj = scene["objects"][k]
                features.append(regions["features"][row])
                labels.append(synthetic.class_index(obj["colour"], obj["shape"]))
    return np.stack(features), np.array(labels)


def _prototypes(scenes):
    features, labels = _object_regions(scenes)
    classes = np.unique(labels)
    return classes, np.stack([features[labels == c].mean(0) for c in classes])


def _nearest_class(features, classes, prototypes):
    d = ((features[:, None, :] - prototypes[None]) ** 2).sum(-1)
    return classes[d.argmin(1)]


# --------------------------------------------------------------------- tests


def test_generation_is_deterministic_and_prefix_stable():
    a = synthetic.generate_scenes(10, seed=3, feature_dim=32)
    b = synthetic.generate_scenes(10, seed=3, feature_dim=32)
    prefix = synthetic.generate_scenes(4, seed=3, feature_dim=32)
    other = synthetic.generate_scenes(10, seed=4, feature_dim=32)
    for x, y in zip(a, b):
        assert x["image_id"] == y["image_id"]
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["regions"]["boxes"], y["regions"]["boxes"])
        np.testing.assert_array_equal(x["regions"]["features"],
                                      y["regions"]["features"])
        np.testing.assert_array_equal(x["regions"]["class_probs"],
                                      y["regions"]["class_probs"])
        assert x["captions"] == y["captions"]
        assert x["split"] == y["split"]
    for x, y in zip(prefix, a):
        np.testing.assert_array_equal(x["image"], y["image"])
        assert [c["en"] for c in x["captions"]] == [c["en"] for c in y["captions"]]
    assert sum(np.array_equal(x["image"], y["image"])
               for x, y in zip(a, other)) == 0
    assert {x["image_id"] for x in a}.isdisjoint({y["image_id"] for y in other})


def test_scenes_have_varied_content(scenes):
    counts = [len(s["objects"]) for s in scenes]
    assert min(counts) == 1 and max(counts) == 5
    objects = [o for s in scenes for o in s["objects"]]
    assert {o["shape"] for o in objects} == set(SHAPES)
    assert {o["colour"] for o in objects} == set(COLOURS)
    assert {o["size"] for o in objects} == {"small", "large"}
    assert any(o["visible_fraction"] < 1.0 for o in objects)  # overlaps occur
    assert all(o["visible_fraction"] >= 0.65 for o in objects)
    assert all(2 <= len(s["captions"]) <= 5 for s in scenes)
    for scene in scenes:
        image = scene["image"]
        assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 3)
        background = image[scene["label_map"] == -1].astype(np.float32)
        # A dark, plain or lightly noisy background.
        assert background.mean() < 80 and background.std() < 12


def test_boxes_lie_in_the_image_and_enclose_the_object_pixels(scenes):
    for scene in scenes:
        image, label_map = scene["image"].astype(np.int32), scene["label_map"]
        for k, obj in enumerate(scene["objects"]):
            x1, y1, x2, y2 = [int(v) for v in obj["box"]]
            assert 0 <= x1 < x2 <= SIZE and 0 <= y1 < y2 <= SIZE
            visible = label_map == k
            inside = np.zeros_like(visible)
            inside[y1:y2, x1:x2] = True
            assert visible.any() and not (visible & ~inside).any()
            if obj["visible_fraction"] == 1.0:
                rows = np.flatnonzero(visible.any(1))
                cols = np.flatnonzero(visible.any(0))
                assert (x1, y1, x2, y2) == (cols[0], rows[0], cols[-1] + 1,
                                            rows[-1] + 1)
            crop = image[y1:y2, x1:x2]
            coloured = (np.abs(crop - np.array(obj["rgb"])).max(-1) <= 30)
            assert coloured.mean() >= 0.3, (obj, coloured.mean())
            # The colour is the named one, not another palette entry.
            rgb = np.array([PALETTE[c] for c in COLOURS])
            nearest = np.abs(rgb - np.array(obj["rgb"])).sum(1).argmin()
            assert COLOURS[nearest] == obj["colour"]


def test_captions_mention_only_objects_in_the_image(scenes):
    relations = 0
    lists = 0
    plurals = 0
    for scene in scenes:
        for caption in scene["captions"]:
            for language, parse in (("en", parse_en), ("zh", parse_zh)):
                parsed = parse(caption[language])
                relations += check_caption(parsed, scene, caption[language])
                lists += parsed["total"] is not None
                plurals += any(m["count"] > 1 for m in parsed["mentions"])
    # The checks above must have covered every kind of caption.
    assert relations >= 60 and lists >= 20 and plurals >= 5


def test_a_wrong_caption_is_caught_by_the_checks(scenes):
    scene = next(s for s in scenes if len(s["objects"]) >= 2
                 and any(c["fact"]["type"] == "relation" for c in s["captions"]))
    caption = next(c["en"] for c in scene["captions"]
                   if c["fact"]["type"] == "relation")
    swapped = caption
    for a, b in (("left", "right"), ("above", "below")):
        swapped = swapped.replace(a, "#").replace(b, a).replace("#", b)
    with pytest.raises(AssertionError):
        check_caption(parse_en(swapped), scene, swapped)
    absent = next(c for c in COLOURS
                  if c not in {o["colour"] for o in scene["objects"]})
    with pytest.raises(AssertionError):
        check_caption(parse_en(f"a {absent} circle"), scene, absent)


def test_chinese_captions_describe_the_same_scenes(scenes):
    for scene in scenes:
        assert len(scene["captions"]) >= 2
        zh = [c["zh"] for c in scene["captions"]]
        assert all(re.search(r"[\u4e00-\u9fff]", t) for t in zh)
        assert all(not re.search(r"[A-Za-z0-9]", t) for t in zh)
        for caption in scene["captions"]:
            en, zh = parse_en(caption["en"]), parse_zh(caption["zh"])
            key = lambda p: sorted(
                (m["count"], m["size"] or "", m["colour"] or "", m["shape"])
                for m in p["mentions"])
            assert key(en) == key(zh), caption
            if None not in (en["total"], zh["total"]):
                assert en["total"] == zh["total"], caption
            if en["relation"] is not None:
                en_subject = en["mentions"][0]
                zh_subject = zh["mentions"][1 if zh["reference_first"] else 0]
                assert zh["relation"] == en["relation"], caption
                assert (zh_subject["shape"], zh_subject["colour"]) == (
                    en_subject["shape"], en_subject["colour"]), caption


def test_relations_follow_the_rendered_geometry():
    scene = synthetic.generate_scene(0, seed=0)
    assert synthetic.spatial_relation((10, 50), (60, 55), 128) == "left"
    assert synthetic.spatial_relation((60, 55), (10, 50), 128) == "right"
    assert synthetic.spatial_relation((50, 10), (55, 60), 128) == "above"
    assert synthetic.spatial_relation((55, 60), (50, 10), 128) == "below"
    assert synthetic.spatial_relation((50, 50), (60, 60), 128) is None
    centroids = _pixel_centroids(scene)
    for obj, centroid in zip(scene["objects"], centroids):
        np.testing.assert_allclose(obj["centroid"], centroid, atol=1e-6)


def test_region_features_reflect_the_pixels(scenes):
    features, labels = _object_regions(scenes)
    d = np.sqrt(((features[:, None] - features[None]) ** 2).sum(-1))
    same = labels[:, None] == labels[None]
    off_diagonal = ~np.eye(len(labels), dtype=bool)
    assert d[same & off_diagonal].mean() < 0.5 * d[~same].mean()
    # Leave-one-out nearest neighbour recovers colour and shape.
    np.fill_diagonal(d, np.inf)
    nearest = labels[d.argmin(1)]
    has_twin = (same & off_diagonal).any(1)
    assert (nearest == labels)[has_twin].mean() > 0.9

    # Repainting an object's pixels changes what its feature says.
    classes, prototypes = _prototypes(scenes)
    hits = trials = 0
    for scene in synthetic.generate_scenes(10, seed=99):
        for k, obj in enumerate(scene["objects"]):
            colour = COLOURS[(COLOURS.index(obj["colour"]) + 3) % len(COLOURS)]
            target = synthetic.class_index(colour, obj["shape"])
            if target not in classes:
                continue
            image = scene["image"].copy()
            image[scene["label_map"] == k] = PALETTE[colour]
            feature = synthetic.featurise(image, [obj["box"]], 64)
            hits += _nearest_class(feature, classes, prototypes)[0] == target
            trials += 1
    assert trials >= 10 and hits / trials > 0.8


def test_featuriser_shapes_widths_and_batching(scenes):
    scene = scenes[0]
    boxes = scene["regions"]["boxes"]
    for dim in (1, 64, 2048):
        features = synthetic.featurise(scene["image"], boxes, dim)
        assert features.shape == (len(boxes), dim) and features.dtype == np.float32
        assert np.isfinite(features).all()
    np.testing.assert_allclose(synthetic.featurise(scene["image"], boxes, 64),
                               scene["regions"]["features"], rtol=1e-5,
                               atol=1e-6)
    raw = synthetic.region_descriptors(scene["image"][None],
                                       np.zeros(len(boxes), int), boxes)
    assert raw.shape == (len(boxes), synthetic.RAW_DESCRIPTOR_DIM)
    np.testing.assert_allclose(raw @ synthetic.projection_matrix(64),
                               scene["regions"]["features"], rtol=1e-5,
                               atol=1e-6)
    # A box of plain background has no foreground and no edges.
    empty = np.full((SIZE, SIZE, 3), 50, np.uint8)
    raw = synthetic.region_descriptors(empty[None], [0], [[10, 10, 40, 40]])
    assert raw[0, :64].sum() == 0 and raw[0, -3] == 0
    with pytest.raises(ValueError, match="feature_dim"):
        synthetic.featurise(scene["image"], boxes, 0)


def test_class_distributions_are_soft_and_peak_on_the_true_class(scenes):
    assert NUM_CLASSES == len(CLASS_NAMES) == 1 + len(SHAPES) * len(COLOURS)
    assert CLASS_NAMES[synthetic.class_index("red", "circle")] == "red circle"
    background_regions = 0
    for scene in scenes:
        probs = scene["regions"]["class_probs"]
        assert probs.shape == (len(scene["regions"]["boxes"]), NUM_CLASSES)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        assert (probs > 0).all()
        object_boxes = np.array([o["box"] for o in scene["objects"]])
        for row, k in enumerate(scene["regions"]["object_index"]):
            if k >= 0:
                obj = scene["objects"][k]
                assert probs[row].argmax() == synthetic.class_index(
                    obj["colour"], obj["shape"])
                assert 0.5 < probs[row].max() < 0.95
            elif synthetic.box_iou(scene["regions"]["boxes"][row],
                                   object_boxes).max() == 0:
                assert probs[row].argmax() == synthetic.BACKGROUND_CLASS
                background_regions += 1
    assert background_regions >= 5


def test_splits_are_seeded_and_sized():
    splits = synthetic.assign_splits(200, seed=5)
    assert splits == synthetic.assign_splits(200, seed=5)
    assert splits != synthetic.assign_splits(200, seed=6)
    assert [splits.count(s) for s in ("train", "val", "test")] == [160, 20, 20]
    assert synthetic.assign_splits(5, seed=0).count("test") == 1
    assert synthetic.assign_splits(5, seed=0).count("val") == 1


def test_retrieval_is_impossible_without_the_image(retrieval_scenes):
    scenes = retrieval_scenes
    for scene in scenes:
        for caption in scene["captions"]:
            assert not re.search(r"\d", caption["en"] + caption["zh"])
            assert scene["image_id"] not in caption["en"]
    texts = [c["en"] for s in scenes for c in s["captions"]]
    # Different images share captions only through what they show.
    images_of = {}
    for scene in scenes:
        for caption in scene["captions"]:
            images_of.setdefault(caption["en"], set()).add(scene["image_id"])
    assert sum(len(ids) > 1 for ids in images_of.values()) >= 30

    train = [s for s in scenes if s["split"] == "train"]
    held_out = [s for s in scenes if s["split"] != "train"]
    rng = np.random.default_rng(0)
    queries = [(i, c["en"]) for i, s in enumerate(held_out) for c in s["captions"]]
    candidates = []
    for i, _ in queries:
        others = rng.choice([j for j in range(len(held_out)) if j != i], 9,
                            replace=False)
        candidates.append(np.concatenate([[i], others]))
    chance = 1 / 10

    def accuracy(scores):
        # Ties count as a uniform guess among the tied best candidates.
        total = 0.0
        for s in scores:
            best = np.flatnonzero(s == s.max())
            total += (0 in best) / len(best)
        return total / len(scores)

    # Text only: a bag-of-words ridge regression from the caption to the
    # image's index and split, trained on the training captions.
    vocab = sorted({w for t in texts for w in t.split()})
    column = {w: j for j, w in enumerate(vocab)}

    def bag(text):
        v = np.zeros(len(vocab) + 1)
        for w in text.split():
            v[column[w]] += 1
        v[-1] = 1
        return v

    def code(scene):
        return np.array([scene["index"] / len(scenes)]
                        + [scene["split"] == s for s in ("train", "val", "test")],
                        dtype=float)

    x = np.stack([bag(c["en"]) for s in train for c in s["captions"]])
    y = np.stack([code(s) for s in train for _ in s["captions"]])
    weights = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ y)
    held_codes = np.stack([code(s) for s in held_out])
    text_scores = [-((held_codes[cand] - bag(t) @ weights) ** 2).sum(1)
                   for (i, t), cand in zip(queries, candidates)]
    text_accuracy = accuracy(text_scores)

    # Image features: classify every region by its nearest colour-shape
    # prototype (from training regions), then count the caption's mentions
    # that the predicted regions contain.
    classes, prototypes = _prototypes(train)
    predicted = []
    for scene in held_out:
        labels = _nearest_class(scene["regions"]["features"], classes, prototypes)
        names = {CLASS_NAMES[c] for c in labels}
        predicted.append(names)

    def satisfied(text, names):
        hits = 0
        for m in parse_en(text)["mentions"]:
            colours = [m["colour"]] if m["colour"] else COLOURS
            hits += any(f"{c} {m['shape']}" in names for c in colours)
        return hits

    feature_scores = [np.array([satisfied(t, predicted[j]) for j in cand])
                      for (i, t), cand in zip(queries, candidates)]
    feature_accuracy = accuracy(feature_scores)

    assert len(queries) > 200
    # 4.5 standard errors of a chance guesser.
    tolerance = 4.5 * np.sqrt(chance * (1 - chance) / len(queries))
    assert text_accuracy < chance + tolerance, text_accuracy
    assert feature_accuracy > 0.5, feature_accuracy


def test_write_dataset_reads_back(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from keras_interbert.data.region_features import read_captions
    from keras_interbert.data.region_features import region_dataset

    out = str(tmp_path / "shapes")
    metadata = synthetic.write_dataset(out, num_images=20, seed=2,
                                       feature_dim=32, progress=False)
    scenes = {s["image_id"]: s for s in
              synthetic.generate_scenes(20, seed=2, feature_dim=32)}
    assert metadata["num_classes"] == NUM_CLASSES
    assert metadata["split_sizes"] == {"train": 16, "val": 2, "test": 2}
    seen = set()
    for split in ("train", "val", "test"):
        examples = list(region_dataset(os.path.join(out, "regions"),
                                       split=split).as_numpy_iterator())
        assert len(examples) == metadata["split_sizes"][split]
        for ex in examples:
            scene = scenes[ex["image_id"].decode()]
            assert scene["split"] == split
            seen.add(scene["image_id"])
            regions = scene["regions"]
            assert ex["image_h"] == ex["image_w"] == SIZE
            np.testing.assert_array_equal(ex["boxes"], regions["boxes"])
            np.testing.assert_allclose(ex["features"], regions["features"],
                                       rtol=2e-3, atol=1e-3)
            np.testing.assert_allclose(ex["class_probs"], regions["class_probs"],
                                       rtol=2e-3, atol=1e-4)
    assert seen == set(scenes)

    for language in ("en", "zh"):
        records = read_captions(os.path.join(out, f"captions_{language}.jsonl"))
        expected = [(sid, c[language], s["split"]) for sid, s in scenes.items()
                    for c in s["captions"]]
        assert sorted((r["image_id"], r["caption"], r["split"])
                      for r in records) == sorted(expected)

    with open(os.path.join(out, "scenes.jsonl"), encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert [r["image_id"] for r in records] == list(scenes)
    assert records[0]["objects"][0]["box"] == scenes[records[0]["image_id"]][
        "objects"][0]["box"]

    for image_id, scene in list(scenes.items())[:3]:
        png = tf.io.read_file(os.path.join(out, "images", image_id + ".png"))
        np.testing.assert_array_equal(tf.io.decode_png(png).numpy(),
                                      scene["image"])

    with pytest.raises(FileExistsError):
        synthetic.write_dataset(out, num_images=5, seed=2, feature_dim=32,
                                progress=False)


def test_command_line(tmp_path):
    from keras_interbert.data.region_features import region_dataset

    out = str(tmp_path / "cli")
    synthetic.main(["--out", out, "--num-images", "6", "--seed", "1",
                    "--feature-dim", "16", "--language", "zh", "--no-images"])
    assert os.path.exists(os.path.join(out, "captions_zh.jsonl"))
    assert not os.path.exists(os.path.join(out, "captions_en.jsonl"))
    assert not os.path.exists(os.path.join(out, "images"))
    features = next(iter(region_dataset(os.path.join(out, "regions"),
                                        split="train")))["features"]
    assert features.shape[-1] == 16
    synthetic.main(["--out", out, "--num-images", "6", "--feature-dim", "16",
                    "--overwrite"])
    assert os.path.exists(os.path.join(out, "captions_en.jsonl"))


def test_png_encoder_round_trips():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 5, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (4, 9), dtype=np.uint8)
    np.testing.assert_array_equal(
        tf.io.decode_png(synthetic.encode_png(rgb)).numpy(), rgb)
    np.testing.assert_array_equal(
        tf.io.decode_png(synthetic.encode_png(grey)).numpy()[..., 0], grey)
    with pytest.raises(ValueError, match="uint8"):
        synthetic.encode_png(rgb.astype(np.float32))


def test_other_image_sizes_and_argument_errors():
    for scene in synthetic.generate_scenes(8, seed=0, feature_dim=8,
                                           image_size=96):
        assert scene["image"].shape == (96, 96, 3)
        boxes = scene["regions"]["boxes"]
        assert (boxes >= 0).all() and (boxes[:, 2:] <= 96).all()
        assert scene["regions"]["features"].shape == (len(boxes), 8)
    with pytest.raises(ValueError, match="image_size"):
        synthetic.generate_scene(0, image_size=16)
    with pytest.raises(ValueError, match="max_objects"):
        synthetic.generate_scene(0, max_objects=9)
    with pytest.raises(ValueError, match="languages"):
        synthetic.write_dataset("/nonexistent", num_images=2, languages=("fr",))
