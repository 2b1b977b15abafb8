import dataclasses

# The defaults of each kind of task (the lengths and slot counts its
# finetuning pipeline uses) are in its module under export/tasks/.


@dataclasses.dataclass
class ExportOptions:
    """What the serving graph does before the model (recorded in the export).

    Attributes:
        vocabulary: the tokenizer's vocabulary: a preset name, a vocabulary
            file or a list of word pieces. `None` picks the bundled
            vocabulary whose size matches the model (bert-base-uncased for
            30,522, bert-base-chinese for 21,128).
        sequence_length: packed text length; `None` takes the task's
            default (30 for matching, 128 for text classification, 60 for
            multiple choice).
        max_regions: region slots after the global one (101 for matching,
            99 for multiple choice; unused by text classifiers).
        truncate_after_packing: cut the packed `[CLS] text [SEP]` sequence
            to `sequence_length` (an over-long caption loses its `[SEP]`, as
            in retrieval finetuning, the matching default) instead of
            truncating the text first.
        text_pairs: a text classifier's signature takes `text` and
            `text_pair` (`[CLS] a [SEP] b [SEP]`), for sentence-pair tasks.
        lowercase: lower-case the text (both bundled vocabularies are
            uncased).
        warmup: write `assets.extra/tf_serving_warmup_requests`.
    """

    vocabulary: object = None
    sequence_length: int = None
    max_regions: int = None
    truncate_after_packing: bool = None
    text_pairs: bool = False
    lowercase: bool = True
    warmup: bool = True

    def resolved(self, task, preprocessor=None):
        """A copy with the task's defaults filled in, after checks.

        With the model's `preprocessor` (the task's `.preprocessor`), its
        sequence length, region count and truncation rule come first: an
        option left unset takes the preprocessor's value, and one set to
        another value is refused with both values named.
        """
        from keras_interbert.export.tasks import task_named

        kind = task_named(task)
        defaults = kind.defaults
        out = dataclasses.replace(self)
        if preprocessor is not None:
            for key in defaults:
                value = getattr(preprocessor, key, None)
                if value is None:
                    continue
                given = getattr(out, key)
                if given is not None and given != value:
                    raise ValueError(
                        f"{key}={given!r} contradicts the model's "
                        f"preprocessor, which has {key}={value!r}; leave the "
                        "option unset to export what the model was trained "
                        "with.")
                setattr(out, key, value)
        for key, value in defaults.items():
            if getattr(out, key) is None:
                setattr(out, key, value)
        out.sequence_length = int(out.sequence_length)
        out.max_regions = int(out.max_regions)
        minimum = kind.min_sequence_length
        if out.sequence_length < minimum:
            raise ValueError(
                f"sequence_length must be >= {minimum} for a {task} export; "
                f"received {out.sequence_length}.")
        if kind.uses_regions and out.max_regions < 1:
            raise ValueError(
                f"max_regions must be >= 1; received {out.max_regions}.")
        if out.text_pairs and not kind.accepts_text_pairs:
            raise ValueError(f"text_pairs does not apply to a {task} export "
                             "(text classifiers only).")
        return out
