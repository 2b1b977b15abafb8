"""A small multiple-choice task built from the bundled synthetic scenes.

VCR-style records (a question, 4 answers, 4 rationales, two labels) whose
answers need the image, so the quickstart and the tests have multiple-choice
data without downloads. Questions come from `scenes.jsonl` (written by
`keras_interbert.data.synthetic.write_dataset`):

- colour: "what colour is the circle?" for a shape that occurs once in the
  scene; the answers are its colour and three other colours;
- shape: "what shape is the red object?" for a colour that occurs once; the
  answers are its shape and three other shapes.

The rationales of a question all name the gold object ("the red circle is
...") and differ in where they put it: the right one gives the cell of a
3 x 3 grid holding the object's visible-pixel centroid ("in the top left of
the picture"), the others three different cells. So Q->A tests colour or
shape recognition and QA->R localisation.

Randomness: the questions of the `n`-th scene of the file come from
`numpy.random.default_rng([seed, n])`.

Command line: `python -m keras_interbert.data.multiple_choice_synthetic
--scenes DIR/scenes.jsonl --out DIR/multiple_choice.jsonl [--seed S]
[--questions-per-image N]`.
"""
import argparse
import json
import sys

import numpy as np

from keras_interbert.data.synthetic import COLOURS
from keras_interbert.data.synthetic import SHAPES

NUM_OPTIONS = 4
_ROWS = ("top", "middle", "bottom")
_COLUMNS = ("left", "centre", "right")


def _cell_phrase(row, column):
    if row == 1 and column == 1:
        return "in the centre of the picture"
    if row == 1:
        return f"in the middle on the {_COLUMNS[column]} of the picture"
    if column == 1:
        return f"at the {_ROWS[row]} in the centre of the picture"
    return f"in the {_ROWS[row]} {_COLUMNS[column]} of the picture"


def _cell(obj, height, width):
    x, y = obj["centroid"]
    return (min(2, int(3 * y / height)), min(2, int(3 * x / width)))


def _options(rng, gold, pool):
    """`NUM_OPTIONS` shuffled options holding `gold`, and its position."""
    others = [p for p in pool if p != gold]
    picked = [others[i] for i in rng.choice(len(others), NUM_OPTIONS - 1,
                                            replace=False)]
    options = picked + [gold]
    order = rng.permutation(NUM_OPTIONS)
    options = [options[i] for i in order]
    return options, options.index(gold)


def scene_questions(scene, rng, max_questions=2):
    """Multiple-choice records for one scene record of `scenes.jsonl`."""
    objects = scene["objects"]
    shapes = [o["shape"] for o in objects]
    colours = [o["colour"] for o in objects]
    candidates = [("colour", o) for o in objects if shapes.count(o["shape"]) == 1]
    candidates += [("shape", o) for o in objects
                   if colours.count(o["colour"]) == 1]
    if not candidates:
        return []
    chosen = rng.choice(len(candidates), min(max_questions, len(candidates)),
                        replace=False)
    cells = [(r, c) for r in range(3) for c in range(3)]
    records = []
    for i in sorted(int(v) for v in chosen):
        kind, obj = candidates[i]
        if kind == "colour":
            question = f"what colour is the {obj['shape']}?"
            answers, answer_label = _options(rng, obj["colour"], COLOURS)
        else:
            question = f"what shape is the {obj['colour']} object?"
            answers, answer_label = _options(rng, obj["shape"], SHAPES)
        gold_cell = _cell(obj, scene["height"], scene["width"])
        places, rationale_label = _options(rng, gold_cell, cells)
        name = f"the {obj['colour']} {obj['shape']}"
        records.append({
            "image_id": scene["image_id"],
            "split": scene["split"],
            "question_type": kind,
            "question": question,
            "answers": list(answers),
            "answer_label": int(answer_label),
            "rationales": [f"{name} is {_cell_phrase(*p)}" for p in places],
            "rationale_label": int(rationale_label),
        })
    return records


def write_multiple_choice(scenes_path, out_path, seed=0, questions_per_image=2):
    """Write the task as JSON Lines; returns the number of records."""
    from keras_interbert.utils.atomic import atomic_path

    count = 0
    with atomic_path(out_path, suffix=".tmp") as tmp, open(
            scenes_path, encoding="utf-8") as scenes, open(
            tmp, "w", encoding="utf-8") as out:
        for n, line in enumerate(scenes):
            if not line.strip():
                continue
            rng = np.random.default_rng([int(seed), n])
            for record in scene_questions(json.loads(line), rng,
                                          questions_per_image):
                out.write(json.dumps(record) + "\n")
                count += 1
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m keras_interbert.data.multiple_choice_synthetic",
        description="Write the synthetic multiple-choice task.")
    parser.add_argument("--scenes", required=True, help="scenes.jsonl")
    parser.add_argument("--out", required=True, help="output JSON Lines file")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--questions-per-image", type=int, default=2)
    args = parser.parse_args(argv)
    count = write_multiple_choice(args.scenes, args.out, args.seed,
                                  args.questions_per_image)
    print(json.dumps({"out": args.out, "num_records": count}))
    return 0


if __name__ == "__main__":
    from keras_interbert.utils.cli import run_main

    sys.exit(run_main(main))
