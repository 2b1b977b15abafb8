"""Text-only classification input pipeline (GLUE-style TSV, docs/architecture.md §4.3).

`read_tsv` reads a tab-separated file with a header line in Python, picking
one or two text columns and a label column by name; the texts are then
tokenized and packed inside the graph (`[CLS] a [SEP]` or
`[CLS] a [SEP] b [SEP]`, longest-first truncation, segment ids 0/1).

There are no images: every batch carries the minimal region inputs the
backbone accepts, `num_region_slots` (1) all-masked slots of zeros
(`region_mask` all 0), so the text path is exactly a BERT encoder
(docs/architecture.md §4.3: "feed text only").

Labels are strings mapped to ids by a label vocabulary (position = id). The
vocabulary is given, or built from the file: its labels sorted (numerically
when every label is an integer, "0" < "1" < "10"). Build it from the training
file and pass `train.label_vocabulary` when reading dev and test, so ids
agree; an unknown label is an error. `regression=True` reads float labels
(STS-B).

TSV rules (GLUE's): tab-separated, no quoting, the first line is the
header; blank lines are skipped; a row with another number of fields than
the header is an error naming the file and line.

`write_caption_tasks` makes two small tasks from the bundled captions, for
tests and the quickstart (see its docstring).
"""
import dataclasses
import os
import re

import numpy as np
import tensorflow as tf

from keras_interbert.data.errors import PolicyHandler
from keras_interbert.data.errors import RegionDataError
from keras_interbert.data.region_features import read_captions
from keras_interbert.data.sampling import batched_epochs
from keras_interbert.preprocessing import InterBERTTextPacker
from keras_interbert.preprocessing.preprocessor_base import tokenize_together
from keras_interbert.preprocessing.region_packer import empty_image_slots
from keras_interbert.utils.atomic import write_text_atomically


@dataclasses.dataclass
class TextClassificationData:
    """The texts and labels read from a TSV file.

    Attributes:
        path: the file.
        text_columns: the names of the one or two text columns.
        texts: one list of strings per text column.
        labels: int32 `[N]` class ids, float32 `[N]` for regression, or
            `None` when the file has no label column (GLUE test files).
        label_vocabulary: the label strings (id = position), `None` for
            regression.
        line_numbers: the file line of each example.
    """

    path: str
    text_columns: tuple
    texts: list
    labels: np.ndarray = None
    label_vocabulary: list = None
    line_numbers: list = None

    @property
    def num_examples(self):
        return len(self.texts[0])

    @property
    def num_classes(self):
        return None if self.label_vocabulary is None else len(
            self.label_vocabulary)


def _sorted_labels(labels):
    unique = set(labels)
    try:
        return sorted(unique, key=int)
    except ValueError:
        return sorted(unique)


def read_tsv(path, text_columns, label_column="label", label_vocabulary=None,
             regression=False, policy="raise", report=None):
    """Read a GLUE-style TSV file.

    Args:
        path: the file.
        text_columns: one column name, or a list of one or two names.
        label_column: the label column's name; `None` for files without
            labels.
        label_vocabulary: list of label strings (id = position); `None`
            builds it from this file.
        regression: read labels as floats (no vocabulary).
        policy: `"raise"` or `"skip"` for bad rows (wrong number of fields,
            unknown or non-numeric labels), see `keras_interbert.data.errors`.
        report: an `ErrorReport` collecting skipped rows.

    Returns:
        A `TextClassificationData`.
    """
    path = os.fspath(path)
    if isinstance(text_columns, str):
        text_columns = (text_columns,)
    text_columns = tuple(text_columns)
    if len(text_columns) not in (1, 2):
        raise ValueError("text_columns must name one or two columns; received "
                         f"{list(text_columns)}.")
    handler = PolicyHandler(policy, report, what="TSV rows")
    known = None if label_vocabulary is None else {
        str(label): i for i, label in enumerate(label_vocabulary)}
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    header = lines[0].rstrip("\r").split("\t") if lines else []
    wanted = list(text_columns) + ([label_column] if label_column else [])
    missing = [c for c in wanted if c not in header]
    if missing:
        raise RegionDataError(
            f"the header has no column {missing}; its columns are {header}.",
            path, "line 1 (header)", kind="missing_column")
    positions = [header.index(c) for c in text_columns]
    label_position = header.index(label_column) if label_column else None
    texts = [[] for _ in text_columns]
    raw_labels, line_numbers = [], []
    for line_no, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        fields = line.split("\t")
        record = f"line {line_no}"
        try:
            if len(fields) != len(header):
                raise RegionDataError(
                    f"the row has {len(fields)} fields; the header has "
                    f"{len(header)} ({header}).", path, record,
                    kind="malformed_row")
            label = None
            if label_position is not None:
                label = fields[label_position].strip()
                if regression:
                    try:
                        label = float(label)
                    except ValueError:
                        raise RegionDataError(
                            f"label {label!r} is not a number.", path, record,
                            kind="bad_label") from None
                elif known is not None and label not in known:
                    raise RegionDataError(
                        f"unknown label {label!r}; the label vocabulary is "
                        f"{list(known)}.", path, record, kind="unknown_label")
        except RegionDataError as e:
            handler.handle(e)
            continue
        for column, position in zip(texts, positions):
            column.append(fields[position])
        raw_labels.append(label)
        line_numbers.append(line_no)
    handler.finish()
    if not line_numbers:
        raise RegionDataError("the file has no examples.", path,
                              kind="no_examples")
    labels = vocabulary = None
    if label_position is not None:
        if regression:
            labels = np.asarray(raw_labels, np.float32)
        else:
            vocabulary = (list(label_vocabulary) if label_vocabulary is not None
                          else _sorted_labels(raw_labels))
            index = {label: i for i, label in enumerate(vocabulary)}
            labels = np.asarray([index[label] for label in raw_labels], np.int32)
    return TextClassificationData(path, text_columns, texts, labels, vocabulary,
                                  line_numbers)


@dataclasses.dataclass
class TextClassificationDataConfig:
    """Settings of the text classification pipeline (the choice of docs/architecture.md §4.3).

    Attributes:
        sequence_length: packed length (128).
        batch_size: examples per batch (32).
        shuffle: a new seeded order each epoch.
        seed: the order's seed.
        repeat: repeat indefinitely.
        drop_remainder: drop a final partial batch.
        image_feature_dim: D of the zero region features (the backbone's
            `image_feature_dim`).
        num_region_slots: how many (masked) image slots to emit (1).
        num_workers, worker_index: multi-worker sharding.
    """

    sequence_length: int = 128
    batch_size: int = 32
    shuffle: bool = True
    seed: int = 42
    repeat: bool = False
    drop_remainder: bool = False
    image_feature_dim: int = 2048
    num_region_slots: int = 1
    num_workers: int = 1
    worker_index: int = 0

    def validate(self):
        if self.sequence_length < 4:
            raise ValueError("sequence_length must be >= 4; received "
                             f"{self.sequence_length}.")
        if self.num_region_slots < 1 or self.image_feature_dim < 1:
            raise ValueError("num_region_slots and image_feature_dim must be "
                             ">= 1.")
        if not 0 <= self.worker_index < self.num_workers:
            raise ValueError(
                f"worker_index must be in [0, num_workers={self.num_workers}); "
                f"received {self.worker_index}.")


def text_classification_dataset(data, tokenizer, config=None):
    """Batches of a `TextClassificationData` for the backbone.

    Returns:
        A `tf.data.Dataset` of `(x, labels)` (or `x` alone when `data` has no
        labels): `token_ids`, `segment_ids`, `text_mask` `[B, T]` int32,
        `region_features` `[B, S, D]` float32 zeros, `region_locations`
        `[B, S, 5]` float32 zeros, `region_mask` `[B, S]` int32 zeros
        (`S = num_region_slots`); `labels` `[B]` int32 (float32 for
        regression).
    """
    config = config or TextClassificationDataConfig()
    config.validate()
    columns = [tf.constant(c, tf.string) for c in data.texts]
    labels = None if data.labels is None else tf.constant(data.labels)
    packer = InterBERTTextPacker(config.sequence_length,
                                 cls_id=tokenizer.cls_id,
                                 sep_id=tokenizer.sep_id,
                                 pad_id=tokenizer.pad_id)
    S, D = config.num_region_slots, config.image_feature_dim

    def to_inputs(index):
        size = tf.shape(index)[0]
        segments = tokenize_together(
            tokenizer, [tf.gather(c, index) for c in columns])
        x = dict(packer(*segments))
        x.update(empty_image_slots(size, S, D))
        if labels is None:
            return x
        return x, tf.gather(labels, index)

    return batched_epochs(data.num_examples, config, to_inputs)


_CIRCLE = re.compile(r"\bcircles?\b")
_SPLIT_FILES = {"train": "train.tsv", "val": "dev.tsv", "test": "test.tsv"}


def _clean(text):
    return re.sub(r"[\t\r\n]+", " ", text)


def write_caption_tasks(captions_path, out_dir, seed=0):
    """Write two small text tasks from a captions JSON Lines file.

    - `same_image/{train,dev,test}.tsv` (`sentence1`, `sentence2`,
      `label`): for every image with two or more captions, one pair of two of
      its captions (`same`) and one pair of one of its captions with a
      caption of another image of the split whose text differs (`different`).
    - `mentions_circle/{train,dev,test}.tsv` (`sentence`, `label`): every
      caption, `yes` when it contains the word "circle" or "circles".

    Splits come from the captions' `split` (`val` is written as `dev.tsv`).
    Randomness from `numpy.random.default_rng(seed)`. Returns the paths.
    """
    captions = read_captions(captions_path)
    rng = np.random.default_rng(int(seed))
    by_split = {}
    for c in captions:
        split = c.get("split", "train")
        by_split.setdefault(split, {}).setdefault(c["image_id"], []).append(
            _clean(c["caption"]))
    written = []
    for task in ("same_image", "mentions_circle"):
        os.makedirs(os.path.join(out_dir, task), exist_ok=True)
    for split, images in sorted(by_split.items()):
        name = _SPLIT_FILES.get(split, f"{split}.tsv")
        ids = sorted(images)
        pairs = []
        for image_id in ids:
            own = images[image_id]
            if len(own) < 2 or len(ids) < 2:
                continue
            a, b = rng.choice(len(own), 2, replace=False)
            pairs.append((own[a], own[b], "same"))
            for _ in range(10):
                other = ids[rng.integers(len(ids))]
                if other == image_id:
                    continue
                text = images[other][rng.integers(len(images[other]))]
                if text not in own:
                    pairs.append((own[a], text, "different"))
                    break
        path = os.path.join(out_dir, "same_image", name)
        write_text_atomically(path, "sentence1\tsentence2\tlabel\n" + "".join(
            f"{s1}\t{s2}\t{label}\n" for s1, s2, label in pairs))
        written.append(path)
        path = os.path.join(out_dir, "mentions_circle", name)
        write_text_atomically(path, "sentence\tlabel\n" + "".join(
            f"{text}\t{'yes' if _CIRCLE.search(text) else 'no'}\n"
            for image_id in ids for text in images[image_id]))
        written.append(path)
    return written
