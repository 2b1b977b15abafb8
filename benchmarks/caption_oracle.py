"""What a perfect reader of the bundled data could reach: the retrieval ceiling.

The bundled captions are facts about a synthetic scene ("a picture with a
cyan square in it", "a large cross is below a large red triangle", a list of
every shape). Many facts are also true of other images: a caption that
holds for three test images can be ranked first for its own image only one
time in three by any model, however good. This program regenerates each
scene's objects and the structured fact behind each caption (the generator's
`generate_scene`), decides independently of the generator whether every
caption is true of every image of a split, and reports what a "truth
oracle" would score: a reader that knows which captions are true of which
images, and nothing else (`oracle_metrics`):

- text -> image R@k: a caption true of `n` images finds its own in the first
  `k` with probability `min(k, n) / n`;
- image -> text R@k: the image's true captions ranked most specific first
  (true of the fewest images), ties at random;
- image-text matching accuracy on random negatives (the pretraining pipeline's
  negatives: another image's caption, half the pairs): the oracle calls every
  true caption a match, so it errs on exactly the negatives whose caption
  happens to hold.

It is a reference point, not a strict ceiling: a model can also learn how
likely each scene is to produce a caption (a scene with fewer shapes states
any one of its facts more often), which the oracle ignores.

The truth rules (what a mention, a relation and a list mean) are written here
from the captions' wording, not taken from the generator's fact pool, and the
program checks that every caption is true of its own image and that the
regenerated captions are exactly those in the data folder.

    .venv/bin/python benchmarks/caption_oracle.py --data runs/quickstart/bundled-data-1000-d256
"""
import argparse
import json
import math
import os
import sys

import numpy as np



def _matches(obj, mention):
    return (obj["shape"] == mention["shape"]
            and mention["colour"] in (None, obj["colour"])
            and mention["size"] in (None, obj["size"]))


def _units(objects, mention):
    """The object sets a mention can refer to in a scene.

    One object ("a small red square"): each matching object. Several ("three
    red squares"): the scene's objects of that colour and shape, when there
    are exactly that many (and all of the size, if one is named).
    """
    if mention["count"] == 1:
        return [[k] for k, obj in enumerate(objects) if _matches(obj, mention)]
    group = [k for k, obj in enumerate(objects)
             if (obj["shape"], obj["colour"]) == (mention["shape"],
                                                  mention["colour"])]
    if len(group) != mention["count"]:
        return []
    if mention["size"] is not None and any(
            objects[k]["size"] != mention["size"] for k in group):
        return []
    return [group]


def is_true(fact, objects, image_size):
    """Whether a caption's structured fact holds for a scene's objects."""
    from keras_interbert.data.synthetic.geometry import spatial_relation

    kind = fact["type"]
    if kind == "exists":
        return bool(_units(objects, fact["mention"]))
    if kind == "relation":
        for subject in _units(objects, fact["subject"]):
            for reference in _units(objects, fact["reference"]):
                if set(subject) & set(reference):
                    continue
                if all(spatial_relation(objects[a]["centroid"],
                                        objects[b]["centroid"], image_size)
                       == fact["relation"]
                       for a in subject for b in reference):
                    return True
        return False
    if kind == "list":  # every object of the scene, each mentioned once
        if len(objects) != fact["total"]:
            return False
        used = set()
        for mention in fact["mentions"]:
            free = [u for u in _units(objects, mention) if not set(u) & used]
            if not free:
                return False
            used |= set(free[0])
        return len(used) == len(objects)
    raise ValueError(f"unknown fact type {kind!r}")


def truth_matrix(scenes, image_size):
    """`truth[c, i]`: caption `c` (in scene order) is true of image `i`;
    `owner[c]`: the index of caption `c`'s own image."""
    captions = [(i, c) for i, scene in enumerate(scenes)
                for c in scene["captions"]]
    truth = np.array([[is_true(c["fact"], scene["objects"], image_size)
                       for scene in scenes] for _, c in captions], bool)
    owner = np.array([i for i, _ in captions], np.int64)
    return truth, owner, [c for _, c in captions]


def _hit_probability(scores, own, k):
    """P(an own item is among the first `k`) when items are sorted by
    decreasing score and ties are broken at random (exact)."""
    taken = 0
    for value in sorted(set(scores.tolist()), reverse=True):
        group = scores == value
        g, o = int(group.sum()), int((group & own).sum())
        room = k - taken
        if room <= 0:
            return 0.0
        if room >= g:
            if o:
                return 1.0
            taken += g
            continue
        return 1 - math.comb(g - o, room) / math.comb(g, room)
    return 0.0


def oracle_metrics(truth, owner, ks=(1, 5, 10)):
    """The truth oracle's recall (in %) and ITM accuracy.

    The oracle knows which captions are true of which images and nothing
    else. It scores a (caption, image) pair by the chance that the image is
    the caption's own given only that: `1 / n` when the caption is true of
    `n` images, 0 when false. Text -> image, every true image ties; image ->
    text, the most specific true captions come first. Ties are broken at
    random (the recall is the exact expectation).
    """
    num_captions, num_images = truth.shape
    if not truth[np.arange(num_captions), owner].all():
        bad = np.flatnonzero(~truth[np.arange(num_captions), owner])
        raise AssertionError(f"captions {bad[:5].tolist()} are not true of "
                             "their own image: the truth rules are wrong")
    n_true = truth.sum(1)
    scores = truth / n_true[:, None]
    t2i = {k: 100 * float(np.mean([
        _hit_probability(scores[c], np.arange(num_images) == owner[c], k)
        for c in range(num_captions)])) for k in ks}
    i2t = {k: 100 * float(np.mean([
        _hit_probability(scores[:, i], owner == i, k)
        for i in range(num_images)])) for k in ks}
    other = truth.copy()
    other[np.arange(num_captions), owner] = False
    negative_true = float(np.mean(other.sum(1) / (num_images - 1)))
    return {
        "num_captions": int(num_captions), "num_images": int(num_images),
        "text_to_image_recall": {str(k): v for k, v in t2i.items()},
        "image_to_text_recall": {str(k): v for k, v in i2t.items()},
        "images_per_caption_mean": float(n_true.mean()),
        "captions_true_of_one_image": float(np.mean(n_true == 1)),
        "random_negatives_true": negative_true,
        # Half the pipeline's pairs are negatives; the oracle errs on those
        # whose caption holds.
        "itm_accuracy": 1 - 0.5 * negative_true,
    }


def split_scenes(data, split, language):
    """The split's scenes regenerated from the data folder's metadata, checked
    against its captions file."""
    from keras_interbert.data.region_features import read_captions
    from keras_interbert.data.synthetic.scenes import assign_splits
    from keras_interbert.data.synthetic.scenes import generate_scene
    from keras_interbert.utils.atomic import read_json

    meta = read_json(os.path.join(data, "metadata.json"))
    if "projection_seed" not in meta:
        raise SystemExit(f"{data}: not a bundled (synthetic) data set; the "
                         "oracle needs the scenes behind the captions.")
    splits = assign_splits(meta["num_images"], meta["seed"])
    scenes = [generate_scene(i, seed=meta["seed"],
                             image_size=meta["image_size"])
              for i in range(meta["num_images"]) if splits[i] == split]
    stored = {}
    for c in read_captions(os.path.join(data, f"captions_{language}.jsonl")):
        if c.get("split") == split:
            stored.setdefault(c["image_id"], []).append(c["caption"])
    regenerated = {s["image_id"]: [c[language] for c in s["captions"]]
                   for s in scenes}
    if regenerated != stored:
        raise SystemExit(f"{data}: its {split} captions differ from the "
                         "regenerated scenes (made by another version of the "
                         "generator?); the oracle would not describe them.")
    return scenes, meta["image_size"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True,
                   help="A bundled data folder (recipes/pretrain.py makes one).")
    p.add_argument("--split", default="test")
    p.add_argument("--language", choices=("en", "zh"), default="en",
                   help="Whose captions file to check against (both "
                        "languages render the same facts).")
    p.add_argument("--output", default=None, help="Write the metrics as JSON.")
    args = p.parse_args(argv)
    scenes, image_size = split_scenes(args.data, args.split, args.language)
    truth, owner, _ = truth_matrix(scenes, image_size)
    metrics = oracle_metrics(truth, owner)
    t, i = metrics["text_to_image_recall"], metrics["image_to_text_recall"]
    print(f"{args.data}, split {args.split}: {metrics['num_captions']} "
          f"captions, {metrics['num_images']} images")
    print(f"a caption is true of {metrics['images_per_caption_mean']:.2f} "
          f"images on average; of its own image only for "
          f"{100 * metrics['captions_true_of_one_image']:.1f}% of captions")
    print(f"oracle text -> image R@1/5/10: {t['1']:.1f} / {t['5']:.1f} / "
          f"{t['10']:.1f}")
    print(f"oracle image -> text R@1/5/10: {i['1']:.1f} / {i['5']:.1f} / "
          f"{i['10']:.1f}")
    print(f"oracle matching accuracy on random negatives: "
          f"{metrics['itm_accuracy']:.3f} ({100 * metrics['random_negatives_true']:.1f}% "
          f"of another image's captions are true)")
    if args.output:
        from keras_interbert.utils.atomic import write_json_atomically

        write_json_atomically(args.output, metrics)
    return metrics


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(
        __file__))))
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
