"""Multiple-choice input pipeline: VCR-style Q->A and QA->R (docs/architecture.md §1.1, §4.2).

Records are JSON Lines, one question a line:

```
{"image_id": "img1", "question": "what colour is the circle?",
 "answers": ["red", "blue", "green", "white"], "answer_label": 0,
 "rationales": ["...", "...", "...", "..."], "rationale_label": 2}
```

`question`, each answer and each rationale is a string, or a VCR token list
whose items are words or lists of detection indices (`[1, "is", "holding",
[2, 3]]`), which need the record's `objects` (the detection class names).
VCR's own key names (`img_id`, `answer_choices`, `rationale_choices`) are
accepted for `image_id`, `answers` and `rationales`.
A detection becomes its class name, except a `person`, which becomes a
gender-neutral first name; the names are drawn once per record (seeded by
`(names_seed, line number)`) and are the same across the question, the
answers and the rationales. Other keys (`split`, ids) are kept.

Packing (`[CLS] first [SEP] second [SEP]`, segment 0 for `[CLS]`, `first`
and the first `[SEP]`, 1 for `second` and the last `[SEP]`; the two
segments truncated longest first, BERT's `_truncate_seq_pair`, to
`sequence_length - 3` word pieces):

- `task="q_a"`: `first` = question, `second` = each answer; length 60.
- `task="qa_r"`: `first` = question `[SEP]` gold answer (the original
  loader's `Q [SEP] A*`, docs/architecture.md §1.1; `answer_separator=False` gives `Q A*`),
  `second` = each rationale; length 80. The gold answer is used in training
  and in evaluation (QA->R accuracy is conditioned on the gold answer).

The image is repeated for the options. Batches `(x, labels)` keep a leading
options axis: `x["token_ids"]` `[B, 4, T]`, `x["region_features"]`
`[B, 4, R+1, D]` ...; `labels` `[B]` int32, the index of the right option. A
multiple-choice task flattens `x` to `[B * 4, ...]` for the backbone and
reshapes the 4 scores back to `[B, 4]`. Keeping the options axis keeps `x`
and `labels` the same batch size, so the batches split over replicas and
devices along one axis.
"""
import dataclasses
import os

import numpy as np
import tensorflow as tf

from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features import read_json_lines
from keras_interbert.data.region_table import as_region_table
from keras_interbert.data.sampling import batched_epochs
from keras_interbert.preprocessing import InterBERTTextPacker

TASKS = {"q_a": 60, "qa_r": 80}
# The VCR annotation files' names for the same fields.
_VCR_KEYS = {"image_id": "img_id", "answers": "answer_choices",
             "rationales": "rationale_choices"}
NAMES = (
    "Alex", "Avery", "Bailey", "Blair", "Cameron", "Casey", "Charlie",
    "Dakota", "Drew", "Eden", "Emerson", "Finley", "Frankie", "Hayden",
    "Jamie", "Jesse", "Jordan", "Kai", "Kendall", "Lee", "Logan", "Morgan",
    "Parker", "Peyton", "Quinn", "Reese", "Riley", "River", "Robin", "Rowan",
    "Sage", "Sam", "Skyler", "Taylor",
)


def _text(value, objects, names, field, path, record):
    """A string field, or a VCR token list turned into words."""
    if isinstance(value, str):
        if not value.strip():
            raise RegionDataError(f"{field} is empty.", path, record,
                                  kind="bad_multiple_choice")
        return value
    if not isinstance(value, list) or not value:
        raise RegionDataError(
            f"{field} must be a non-empty string or token list; received "
            f"{value!r}.", path, record, kind="bad_multiple_choice")
    words = []
    for token in value:
        if isinstance(token, str):
            words.append(token)
            continue
        if not (isinstance(token, list) and token and all(
                isinstance(i, int) and not isinstance(i, bool) for i in token)):
            raise RegionDataError(
                f"{field}: a token must be a word or a list of detection "
                f"indices; received {token!r}.", path, record,
                kind="bad_multiple_choice")
        mentioned = []
        for i in token:
            if objects is None or not 0 <= i < len(objects):
                raise RegionDataError(
                    f"{field} refers to detection {i}, but the record has "
                    f"{0 if objects is None else len(objects)} objects.",
                    path, record, kind="bad_multiple_choice")
            mentioned.append(names[i % len(names)] if objects[i] == "person"
                             else str(objects[i]))
        words.append(" and ".join(mentioned))
    return " ".join(words)


def _label(obj, key, num_options, path, record):
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RegionDataError(f"{key} must be an integer; received {value!r}.",
                              path, record, kind="bad_multiple_choice")
    if not 0 <= value < num_options:
        raise RegionDataError(
            f"{key} {value} is out of range; it must index one of the "
            f"{num_options} options (0..{num_options - 1}).", path, record,
            kind="label_out_of_range")
    return value


def _options(obj, key, num_options, objects, names, path, record):
    values = obj.get(key)
    if not isinstance(values, list):
        raise RegionDataError(f"{key} must be a list of {num_options} options; "
                              f"received {values!r}.", path, record,
                              kind="bad_multiple_choice")
    if len(values) != num_options:
        raise RegionDataError(
            f"{key} has {len(values)} options; expected {num_options}.", path,
            record, kind="wrong_option_count")
    return [_text(v, objects, names, f"{key}[{i}]", path, record)
            for i, v in enumerate(values)]


def validate_multiple_choice_record(obj, num_options=4, names_seed=0,
                                    path=None, record=None, line=0):
    """Check one record and return it with plain-text fields.

    Raises a `RegionDataError` naming `path` and `record` for: not a JSON
    object, a missing or empty `image_id`/`question`, answers or rationales
    that are not a list of `num_options` texts (`kind="wrong_option_count"`
    for a wrong count), a label that is not an integer or is out of range
    (`"label_out_of_range"`), rationales without `rationale_label`, and
    detection indices outside `objects`.
    """
    if not isinstance(obj, dict):
        raise RegionDataError(
            f"a multiple-choice record must be a JSON object; received "
            f"{type(obj).__name__}.", path, record, kind="bad_multiple_choice")
    obj = dict(obj)
    for name, vcr_name in _VCR_KEYS.items():
        if name not in obj and vcr_name in obj:
            obj[name] = obj.pop(vcr_name)
    missing = [k for k in ("image_id", "question", "answers", "answer_label")
               if k not in obj]
    if missing:
        raise RegionDataError(f"the record lacks {missing} (has {sorted(obj)}).",
                              path, record, kind="bad_multiple_choice")
    image_id = obj["image_id"]
    if isinstance(image_id, bool) or not isinstance(image_id, (str, int)) or (
            not str(image_id).strip()):
        raise RegionDataError(f"image_id must be a non-empty string; received "
                              f"{image_id!r}.", path, record,
                              kind="bad_image_id")
    objects = obj.get("objects")
    names = list(NAMES)
    if objects is not None:
        np.random.default_rng([int(names_seed), int(line)]).shuffle(names)
    out = obj
    out["image_id"] = str(image_id)
    out["question"] = _text(obj["question"], objects, names, "question", path,
                            record)
    out["answers"] = _options(obj, "answers", num_options, objects, names,
                              path, record)
    out["answer_label"] = _label(obj, "answer_label", num_options, path, record)
    if obj.get("rationales") is not None:
        out["rationales"] = _options(obj, "rationales", num_options, objects,
                                     names, path, record)
        if "rationale_label" not in obj:
            raise RegionDataError("the record has rationales but no "
                                  "rationale_label.", path, record,
                                  kind="bad_multiple_choice")
        out["rationale_label"] = _label(obj, "rationale_label", num_options,
                                        path, record)
    out["source"] = ", ".join(str(p) for p in (path, record) if p is not None)
    return out


def read_multiple_choice(path, num_options=4, policy="raise", report=None,
                         names_seed=0):
    """Read and validate a multiple-choice JSON Lines file.

    Blank lines are ignored; a bad line raises a `RegionDataError` naming the
    file and the line (or is dropped and reported under `policy="skip"`).
    Returns the records in file order, each with a `source` key naming its
    file and line.
    """
    return read_json_lines(
        path,
        lambda obj, path, record, line_no: validate_multiple_choice_record(
            obj, num_options, names_seed, path, record, line_no),
        what="multiple-choice records", kind="bad_multiple_choice",
        policy=policy, report=report)


@dataclasses.dataclass
class MultipleChoiceDataConfig:
    """Settings of the multiple-choice pipeline (defaults: docs/architecture.md §4.2).

    Attributes:
        task: `"q_a"` (question -> answer) or `"qa_r"` (question and gold
            answer -> rationale).
        sequence_length: packed length; `None` takes the task's (60 / 80).
        max_regions: region slots after the global one (99: 100 slots).
        batch_size: questions per batch (each with `num_options` rows).
        num_options: options per question (4).
        answer_separator: QA->R packs `Q [SEP] A*` as the first segment
            (the original loader); `False` packs `Q A*`.
        shuffle: a new seeded order of the questions each epoch.
        seed: the order's seed.
        repeat: repeat indefinitely.
        drop_remainder: drop a final partial batch.
        num_workers, worker_index: multi-worker sharding of the questions.
    """

    task: str = "q_a"
    sequence_length: int = None
    max_regions: int = 99
    batch_size: int = 32
    num_options: int = 4
    answer_separator: bool = True
    shuffle: bool = True
    seed: int = 42
    repeat: bool = False
    drop_remainder: bool = False
    num_workers: int = 1
    worker_index: int = 0

    def validate(self):
        if self.task not in TASKS:
            raise ValueError(f"MultipleChoiceDataConfig.task: expected one of "
                             f"{list(TASKS)}, received {self.task!r}.")
        if self.sequence_length is not None and self.sequence_length < 4:
            raise ValueError("sequence_length must be >= 4 (two segments); "
                             f"received {self.sequence_length}.")
        if self.num_options < 2:
            raise ValueError(f"num_options must be >= 2; received "
                             f"{self.num_options}.")
        if not 0 <= self.worker_index < self.num_workers:
            raise ValueError(
                f"worker_index must be in [0, num_workers={self.num_workers}); "
                f"received {self.worker_index}.")

    @property
    def length(self):
        return self.sequence_length or TASKS[self.task]


def multiple_choice_dataset(regions, records, tokenizer, config=None,
                            split=None, names_seed=0):
    """Batches `(x, labels)` of multiple-choice questions.

    Args:
        regions: a `RegionTable` (with `max_regions` equal to the
            config's) or region files to load the split from.
        records: a JSON Lines path (see `read_multiple_choice`) or a list of
            validated records.
        tokenizer: an `InterBERTTokenizer`.
        config: a `MultipleChoiceDataConfig`.
        split: the region split to read, and the records to keep (records
            without `split` are kept).
        names_seed: seed of the person names when reading a path.

    Returns:
        A `tf.data.Dataset` of `(x, labels)`: for `B` questions and
        `O = num_options`, `token_ids`, `segment_ids`, `text_mask`
        `[B, O, T]` int32, `region_features` `[B, O, R+1, D]` float32,
        `region_locations` `[B, O, R+1, 5]` float32, `region_mask`
        `[B, O, R+1]` int32 (the image repeated for each option); `labels`
        `[B]` int32.

    A record whose image has no region features raises a `RegionDataError`
    naming its file and line; so does a QA->R record without rationales.
    """
    config = config or MultipleChoiceDataConfig()
    config.validate()
    if isinstance(records, (str, os.PathLike)):
        records = read_multiple_choice(records, config.num_options,
                                       names_seed=names_seed)
    if split is not None:
        records = [r for r in records if r.get("split", split) == split]
    if not records:
        raise RegionDataError(f"no multiple-choice records of split {split!r}.",
                              kind="no_records")
    table = as_region_table(regions, split, config.max_regions)
    O = config.num_options
    for r in records:
        where = r.get("source") or None
        if r["image_id"] not in table:
            raise RegionDataError(
                f"image {r['image_id']!r} has no region features.", where,
                kind="missing_image")
        if len(r["answers"]) != O:
            raise RegionDataError(f"answers has {len(r['answers'])} options; "
                                  f"expected {O}.", where,
                                  kind="wrong_option_count")
        if config.task == "qa_r" and r.get("rationales") is None:
            raise RegionDataError("QA->R needs rationales and a "
                                  "rationale_label.", where,
                                  kind="bad_multiple_choice")
    qa_r = config.task == "qa_r"
    questions = tf.constant([r["question"] for r in records])
    gold = tf.constant([r["answers"][r["answer_label"]] for r in records])
    options = tf.constant([r["rationales" if qa_r else "answers"]
                           for r in records])
    labels = tf.constant([r["rationale_label" if qa_r else "answer_label"]
                          for r in records], tf.int32)
    images = tf.constant([table.index(r["image_id"]) for r in records],
                         tf.int64)
    packer = InterBERTTextPacker(config.length, cls_id=tokenizer.cls_id,
                                 sep_id=tokenizer.sep_id,
                                 pad_id=tokenizer.pad_id)

    def to_inputs(index):
        size = tf.shape(index)[0]
        # One tokenizer call per batch: each call is a separate WordPiece
        # model in the graph, which is slow to build.
        texts = [tf.gather(questions, index)]
        if qa_r:
            texts.append(tf.gather(gold, index))
        texts.append(tf.reshape(tf.gather(options, index), [-1]))
        pieces = tokenizer(tf.concat(texts, axis=0))
        first = pieces[:size]
        if qa_r:
            parts = [first, pieces[size:2 * size]]
            if config.answer_separator:
                parts.insert(1, tf.RaggedTensor.from_tensor(
                    tf.fill([size, 1], tf.constant(tokenizer.sep_id, tf.int32)),
                    row_splits_dtype=first.row_splits.dtype))
            first = tf.concat(parts, axis=1)
        second = pieces[(2 if qa_r else 1) * size:]
        first = tf.gather(first, tf.repeat(tf.range(size), O))
        text = packer(first, second)
        x = {k: tf.reshape(v, [size, O, config.length])
             for k, v in text.items()}
        for k, v in table.gather(tf.gather(images, index)).items():
            x[k] = tf.repeat(v[:, tf.newaxis], O, axis=1)
        return x, tf.gather(labels, index)

    return batched_epochs(len(records), config, to_inputs)
