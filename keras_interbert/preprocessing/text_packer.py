import keras
import tensorflow as tf


def _as_ragged_batch(ids, name):
    """`[None]` or `[B, None]` ids (dense or ragged) as an int32 ragged batch."""
    if not isinstance(ids, tf.RaggedTensor):
        ids = tf.convert_to_tensor(ids)
    rank = ids.shape.rank
    if rank not in (1, 2):
        raise ValueError(
            f"`{name}` must be token ids of shape [None] (one sequence) or "
            f"[batch, None] (dense or ragged). Received shape {ids.shape}."
        )
    if rank == 1:
        ids = ids[tf.newaxis]
    if not isinstance(ids, tf.RaggedTensor):
        ids = tf.RaggedTensor.from_tensor(ids)
    if not ids.dtype.is_integer:
        raise ValueError(
            f"`{name}` must hold integer token ids. Received dtype {ids.dtype}."
        )
    return tf.cast(ids, tf.int32).with_row_splits_dtype(tf.int64), rank == 1


def _keep_first(ids, lengths):
    """Keeps the first `lengths[i]` ids of row i of a ragged batch.

    On the flat values (`tf.ragged.boolean_mask` gives the same result, but
    the packer traced with it takes 2.5 times as long, once per pipeline;
    `benchmarks/trace_costs.py`).
    """
    kept = tf.minimum(ids.row_lengths(), tf.cast(lengths, tf.int64))
    rows = ids.value_rowids()
    position = tf.range(tf.size(rows, out_type=tf.int64)) - tf.gather(
        ids.row_splits, rows)
    keep = position < tf.gather(kept, rows)
    return tf.RaggedTensor.from_row_lengths(
        tf.boolean_mask(ids.values, keep), kept, validate=False)


def _concat_rows(parts, batch):
    """Row `i` of every part, one after the other: `tf.concat(parts, axis=1)`
    of `[B, None]` int32 ragged and `[B, k]` dense parts, without the
    validation asserts of the ragged concatenation (each adds conditional
    ops that a `tf.data` pipeline instantiates again for every iterator;
    see `interbert_tokenizer._ragged`)."""
    lengths, rows, values = [], [], []
    for part in parts:
        if isinstance(part, tf.RaggedTensor):
            lengths.append(part.row_lengths())
            rows.append(part.value_rowids())
            values.append(part.values)
        else:
            width = tf.shape(part, out_type=tf.int64)[1]
            lengths.append(tf.fill([batch], width))
            rows.append(tf.repeat(tf.range(batch), width))
            values.append(tf.reshape(part, [-1]))
    splits = tf.concat([tf.zeros([1], tf.int64),
                        tf.cumsum(tf.add_n(lengths))], axis=0)
    start = splits[:-1]  # where each row's next part begins
    indices = []
    for length, row in zip(lengths, rows):
        first_of_row = tf.cumsum(length, exclusive=True)
        position = tf.range(tf.size(row, out_type=tf.int64)) - tf.gather(
            first_of_row, row)
        indices.append(tf.cast(tf.gather(start, row) + position, tf.int32))
        start = start + length
    return tf.RaggedTensor.from_row_splits(
        tf.dynamic_stitch(indices, values), splits, validate=False)


def longest_first_lengths(length_a, length_b, budget):
    """Lengths after BERT's `_truncate_seq_pair` (pop from the longer).

    Popping one id at a time from the longer segment (from the second on a
    tie) until `length_a + length_b <= budget` ends in closed form: the first
    segment keeps at most `ceil(budget / 2)` unless the second is shorter than
    its half, and the other way round.
    """
    length_a = tf.cast(length_a, tf.int64)
    length_b = tf.cast(length_b, tf.int64)
    budget = tf.cast(budget, tf.int64)
    half_b = budget // 2
    half_a = budget - half_b
    new_a = tf.where(
        length_a <= half_a,
        length_a,
        tf.where(length_b <= half_b, budget - length_b, half_a),
    )
    new_b = tf.where(
        length_b <= half_b,
        length_b,
        tf.where(length_a <= half_a, budget - length_a, half_b),
    )
    fits = length_a + length_b <= budget
    return tf.where(fits, length_a, new_a), tf.where(fits, length_b, new_b)


@keras.saving.register_keras_serializable(package="keras_interbert")
class InterBERTTextPacker(keras.layers.Layer):
    """Packs word-piece ids into BERT's `[CLS] a [SEP] (b [SEP])` layout.

    One segment gives `[CLS] a [SEP]`; two give `[CLS] a [SEP] b [SEP]`.
    Segment ids are 0 for `[CLS]`, `a` and the first `[SEP]`, 1 for `b` and
    the last `[SEP]`. Segments are truncated before packing so that the whole
    sequence fits in `sequence_length`: one segment to `sequence_length - 2`
    ids, a pair longest-first to `sequence_length - 3` ids in total (BERT's
    `_truncate_seq_pair`: drop the last id of the longer segment, of the
    second on a tie, until it fits). The rest is padded with `pad_id`.

    With `truncate_after_packing=True` nothing is truncated before packing:
    the packed sequence is cut to `sequence_length`, so an over-long caption
    loses its final `[SEP]` (the Flickr30K retrieval loader of the original
    code, docs/architecture.md §1.1).

    Runs as TensorFlow ops (`tf.data.Dataset.map`, SavedModel export) under
    any Keras backend. Inputs are int ids of shape `[None]` (one example) or
    `[B, None]` (dense or `tf.RaggedTensor`); the output is a dict of int32
    tensors of shape `[sequence_length]` or `[B, sequence_length]`:
    `token_ids`, `segment_ids` and `text_mask` (1 on real tokens, 0 on
    padding).

    Args:
        sequence_length: int. Length of the packed, padded sequence.
        cls_id: int. Id of `[CLS]` (101 in bert-base-uncased and -chinese).
        sep_id: int. Id of `[SEP]`.
        pad_id: int. Id used for padding.
        truncate_after_packing: bool. Cut after packing instead of
            truncating the segments (the retrieval quirk).

    Examples:
    ```python
    packer = InterBERTTextPacker(sequence_length=8)
    packer(tf.ragged.constant([[7, 8, 9]]))["token_ids"]
    # [[101, 7, 8, 9, 102, 0, 0, 0]]
    packer(tf.constant([1, 2]), tf.constant([4, 5, 6]))["segment_ids"]
    # [0, 0, 0, 0, 1, 1, 1, 1]: [CLS] 1 2 [SEP] 4 5 6 [SEP]
    ```
    """

    def __init__(
        self,
        sequence_length,
        cls_id=101,
        sep_id=102,
        pad_id=0,
        truncate_after_packing=False,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "int32")
        super().__init__(**kwargs)
        self._convert_input_args = False
        self._allow_non_tensor_positional_args = True
        if int(sequence_length) < 3:
            raise ValueError(
                "`sequence_length` must be at least 3 ([CLS] x [SEP] for one "
                f"segment, more for two). Received: {sequence_length}"
            )
        self.sequence_length = int(sequence_length)
        self.cls_id = int(cls_id)
        self.sep_id = int(sep_id)
        self.pad_id = int(pad_id)
        self.truncate_after_packing = bool(truncate_after_packing)
        self.built = True

    def call(self, first, second=None):
        first, unbatched = _as_ragged_batch(first, "first")
        batch = first.nrows()
        if second is not None:
            second, second_unbatched = _as_ragged_batch(second, "second")
            if second_unbatched != unbatched:
                raise ValueError(
                    "`first` and `second` must both be one sequence or both "
                    "a batch of sequences. Received shapes "
                    f"{first.shape} and {second.shape}."
                )
            if self.sequence_length < 4 and not self.truncate_after_packing:
                raise ValueError(
                    "Packing two segments needs `sequence_length >= 4`. "
                    f"Received: {self.sequence_length}"
                )
        if not self.truncate_after_packing:
            length_a = first.row_lengths()
            if second is None:
                first = _keep_first(
                    first,
                    tf.minimum(length_a, tf.constant(self.sequence_length - 2,
                                                     tf.int64)),
                )
            else:
                new_a, new_b = longest_first_lengths(
                    length_a,
                    second.row_lengths(),
                    self.sequence_length - 3,
                )
                first = _keep_first(first, new_a)
                second = _keep_first(second, new_b)

        def column(value):
            return tf.fill([batch, 1], tf.constant(value, tf.int32))

        pieces = [column(self.cls_id), first, column(self.sep_id)]
        segments = [tf.zeros_like(p) for p in pieces]
        if second is not None:
            pieces += [second, column(self.sep_id)]
            segments += [tf.ones_like(second), column(1)]
        token_ids = _concat_rows(pieces, batch)
        segment_ids = _concat_rows(segments, batch)
        # Cutting here is the whole of `truncate_after_packing`; otherwise the
        # sequence already fits and this changes nothing.
        token_ids = token_ids[:, : self.sequence_length]
        segment_ids = segment_ids[:, : self.sequence_length]
        shape = [None, self.sequence_length]
        outputs = {
            "token_ids": token_ids.to_tensor(
                default_value=self.pad_id, shape=shape
            ),
            "segment_ids": segment_ids.to_tensor(default_value=0, shape=shape),
            "text_mask": tf.ones_like(token_ids).to_tensor(
                default_value=0, shape=shape
            ),
        }
        if unbatched:
            outputs = {k: v[0] for k, v in outputs.items()}
        return outputs

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "cls_id": self.cls_id,
                "sep_id": self.sep_id,
                "pad_id": self.pad_id,
                "truncate_after_packing": self.truncate_after_packing,
            }
        )
        return config
