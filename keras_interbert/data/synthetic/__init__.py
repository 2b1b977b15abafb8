"""The bundled synthetic image-caption data set ("shapes").

A deterministic generator of small rendered scenes with English and Chinese
captions, ground-truth boxes, pixel-derived region features and soft
per-region class distributions, written in the canonical region-feature
format (`keras_interbert.data.region_features`). It is the default data of
the quickstart and the tests: nothing has to be downloaded.

Scenes
------
Every image is `image_size x image_size` (default 128) RGB `uint8`, rendered
with numpy. The background is a flat dark grey (level 30-70), lightly noisy in
half of the images (Gaussian noise, sigma 3-8, on the whole image). Each image
holds 1-5 objects drawn in order (later ones on top), each one of

- 6 shapes: square, circle, triangle, cross, ring, diamond;
- 8 colours: red, green, blue, yellow, purple, orange, cyan, white (each
  object's colour jittered by up to +-12 per channel); every object after
  the first repeats the colour and shape of an earlier one with
  probability 0.2, so that groups ("two green triangles") occur;
- 2 sizes: small (side 13-19% of the image) and large (27-34%).

Objects may partly overlap: a placement is rejected when two boxes have an
IoU above 0.2, when the overlap covers more than 35% of the smaller box, or
when an object would lose more than 35% of its pixels to the new one, so
every object stays recognisable. Boxes are the tight pixel boxes
`(x1, y1, x2, y2)` of the whole drawn shape, `x2`/`y2` exclusive (the box
covers columns `x1 .. x2-1`), so the area is `(x2 - x1) * (y2 - y1)`.

Randomness is per image: image `i` of seed `s` is drawn from
`numpy.random.default_rng([s, i])`, so the first `n` images of a larger set
are the same images, and nothing in an image depends on its index.

Captions
--------
Captions are rendered from structured facts about the rendered scene:

- existence: "a large red circle", "there are two green triangles";
- relations: "a large red circle to the left of a small blue square",
  "two green triangles are above a yellow ring";
- inventories: "three shapes: a red circle, a blue square and a green cross",
  "a single small white ring".

A mention with a number word ("two green triangles") means exactly that many
objects of that colour and shape; "a"/"an" means at least one. A relation
with a plural side holds for every member. Relations come from the rendered
geometry: with `(dx, dy)` the offset between the centroids of the *visible*
pixels of two objects, `a` is left of `b` when `dx <= -0.1 * image_size` and
`|dx| >= 1.25 * |dy|` (likewise right/above/below); otherwise no relation is
stated (nor between two objects of the same colour and shape). Every
caption is rendered from the same fact in English and Chinese
(for example "一个大的红色圆形在一个小的蓝色正方形的左边"), with templates
chosen independently, so `captions_en` and `captions_zh` are parallel. Each
image gets 2-5 distinct captions. Captions never contain digits, ids or
anything but the scene's content.

Region features (the featuriser)
--------------------------------
Regions are the object boxes plus 0-3 "proposal" distractors per image
(jittered copies of an object box with IoU 0.35-0.85, or boxes placed
mostly on background), in a shuffled order. A region's feature is computed from the
PIXELS inside its box only, never from the labels:

1. The background colour of the image is the per-channel median of its
   one-pixel border.
2. The box is sampled on a 16 x 16 grid (nearest pixel to each cell centre).
   A sample is foreground when one of its channels differs from the
   background colour by more than 48.
3. A 177-d descriptor is concatenated from
   - the 8 x 8 foreground occupancy (2 x 2 mean pooled mask), x 0.25 (64);
   - the 4 x 4 cell-mean RGB colours in [0, 1], x 0.25 (48);
   - the joint RGB histogram of foreground samples, 3 levels per channel
     (thresholds 85 and 170), normalised to sum 1 (27);
   - the mean foreground RGB in [0, 1] (3);
   - edge orientations: central-difference gradients of the foreground mask,
     unsigned orientation in 8 bins of 22.5 degrees, magnitude weighted, in
     2 x 2 spatial cells, normalised to sum 1 (32);
   - geometry: foreground fraction, `sqrt(box area / image area)`,
     `log(width / height)` (3).
4. The descriptor is multiplied by a fixed Gaussian random projection
   `P[177, feature_dim]` with entries `N(0, 1/177)`, drawn by
   `numpy.random.default_rng(PROJECTION_SEED)` (`PROJECTION_SEED = 2003_13198`),
   the same for every data seed, so features of two data sets are
   comparable. `feature_dim` defaults to 2048, the published width; any
   positive width works.

Class distributions (masked-region targets)
-------------------------------------------
`NUM_CLASSES = 49`: class 0 is background, class `1 + 8 * shape + colour` is
"colour shape" (`CLASS_NAMES`). An object's distribution puts 0.75 on its
class and 0.25 on the other object classes in proportion to a fixed
confusion `shape_similarity^4 * colour_similarity`, where the shape
similarity is the IoU of the canonical shape masks and the colour similarity
is `exp(-|rgb - rgb'|^2 / (2 * 60^2))`; then a background mass of
`0.05 + 0.4 * (1 - visible fraction)` is mixed in. A region's distribution is
the mixture of the distributions of the objects it overlaps, weighted by
`IoU(region, object box)^2` (normalised when they sum above 1), the rest
going to background; finally 0.1% is spread uniformly. Everything is a
deterministic function of the scene.

Files written by `write_dataset`
--------------------------------
```
out_dir/
  regions/                  {split}-NNNNN.tfrecord + manifest.json, written by
                            RegionFeatureWriter (features and class_probs
                            stored as float16); read with region_dataset
  captions_en.jsonl         {"image_id", "caption", "split"} per line
  captions_zh.jsonl
  scenes.jsonl              per image: id, split, size, objects with box
  images/<image_id>.png     the rendered images (8-bit RGB PNG)
  metadata.json             parameters, class names, split sizes
```
Image ids are `shapes-s{seed}-{index:06d}`. The split (80/10/10 by image)
is a seeded permutation of the images, independent of their content.

Command line:
`python -m keras_interbert.data.synthetic --out DIR [--num-images N]
[--seed S] [--feature-dim D] [--language en|zh|both] [--image-size PX]
[--examples-per-shard K] [--no-images] [--overwrite]`; 2,000 images at
feature_dim 2048 take about 10 s on two CPU cores.
"""
# The package's modules, bottom up: vocabulary (names and constants),
# geometry (masks, boxes, relations), features (class distributions, the
# featuriser), captions, scenes, writer (files and the command line).
from keras_interbert.data.synthetic.vocabulary import SHAPES  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import COLOURS  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import SIZES  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import PALETTE  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import RELATIONS  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import INVERSE_RELATION  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import CLASS_NAMES  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import NUM_CLASSES  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import BACKGROUND_CLASS  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import SPLITS  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import PROJECTION_SEED  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import RAW_DESCRIPTOR_DIM  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import DEFAULT_FEATURE_DIM  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import DEFAULT_IMAGE_SIZE  # noqa: F401
from keras_interbert.data.synthetic.vocabulary import class_index  # noqa: F401
from keras_interbert.data.synthetic.geometry import shape_mask  # noqa: F401
from keras_interbert.data.synthetic.geometry import box_iou  # noqa: F401
from keras_interbert.data.synthetic.geometry import spatial_relation  # noqa: F401
from keras_interbert.data.synthetic.features import object_class_distribution  # noqa: F401
from keras_interbert.data.synthetic.features import region_class_distributions  # noqa: F401
from keras_interbert.data.synthetic.features import projection_matrix  # noqa: F401
from keras_interbert.data.synthetic.features import region_descriptors  # noqa: F401
from keras_interbert.data.synthetic.features import featurise_batch  # noqa: F401
from keras_interbert.data.synthetic.features import featurise  # noqa: F401
from keras_interbert.data.synthetic.scenes import generate_scene  # noqa: F401
from keras_interbert.data.synthetic.scenes import assign_splits  # noqa: F401
from keras_interbert.data.synthetic.scenes import generate_scenes  # noqa: F401
from keras_interbert.data.synthetic.writer import encode_png  # noqa: F401
from keras_interbert.data.synthetic.writer import save_png  # noqa: F401
from keras_interbert.data.synthetic.writer import write_dataset  # noqa: F401
from keras_interbert.data.synthetic.writer import main  # noqa: F401
