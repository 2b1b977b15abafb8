"""The pretraining optimizer of docs/architecture.md §3.5, built from Keras parts."""
from keras_interbert.optimizers.grouped_adamw import GroupedAdamW
from keras_interbert.optimizers.linear_warmup_linear_decay import (
    LinearWarmupLinearDecay,
)

# Variables `keras_interbert.convert.convert_bert` loads from BERT: the text
# embeddings (words, positions, segments, their LayerNorm) and every
# single-stream and text-stream layer. The masked-segment head is loaded from
# BERT's MLM head too, but trains at the full rate, as in the original.
BERT_INITIALISED_PATTERNS = (
    r"(^|/)token_embedding/",
    r"(^|/)position_embedding/",
    r"(^|/)segment_embedding/",
    r"(^|/)text_embeddings_layer_norm/",
    r"(^|/)single_stream_layer_\d+/",
    r"(^|/)text_stream_layer_\d+/",
)

# Biases (including the masked-segment head's `output_bias`) and every
# LayerNorm scale and offset, the embeddings' LayerNorms included. Embedding
# matrices are decayed, as in BERT.
NO_DECAY_PATTERNS = (
    r"bias$",
    r"layer_norm[^/]*/(gamma|beta)$",
)


def pretraining_optimizer(
    total_steps=None,
    learning_rate=1e-4,
    bert_learning_rate=1e-5,
    warmup_fraction=0.1,
    weight_decay=0.01,
    clipnorm=1.0,
    bert_variable_patterns=BERT_INITIALISED_PATTERNS,
    no_decay_patterns=NO_DECAY_PATTERNS,
    beta_1=0.9,
    beta_2=0.999,
    epsilon=1e-6,
    gradient_accumulation_steps=None,
    learning_rate_multipliers=(),
    name="pretraining_adamw",
):
    """The InterBERT pretraining optimizer (docs/architecture.md §3.5).

    A `GroupedAdamW`: `learning_rate` for new weights, `bert_learning_rate`
    for the variables matched by `bert_variable_patterns` (by default the ones
    `convert_bert` initialises from BERT; pass `()` when training from
    scratch), weight decay on every variable except biases and LayerNorm
    parameters, each variable's gradient clipped to norm `clipnorm` after the
    cross-replica sum, and, when `total_steps` is given, a linear warmup over
    `warmup_fraction` of the updates followed by a linear decay to 0
    (`LinearWarmupLinearDecay`). Without `total_steps` the rate is constant.

    Keras `AdamW` keeps Adam's bias correction, which `BertAdam` lacks
    (docs/architecture.md §7 #9), and uses the standard decay groups, not the
    original's inverted ones (docs/architecture.md §6 #1).

    Args:
        total_steps: int. Optimizer updates of the whole run (batches divided
            by `gradient_accumulation_steps`), or `None` for a constant rate.
        learning_rate: float. Peak rate of new weights.
        bert_learning_rate: float. Peak rate of BERT-initialised weights.
        warmup_fraction: float. Share of `total_steps` spent warming up.
        weight_decay: float. Decoupled weight decay.
        clipnorm: float or `None`. Per-variable gradient norm limit.
        bert_variable_patterns: regular expressions searched in variable
            paths that select the BERT-initialised variables.
        no_decay_patterns: regular expressions of variables without decay.
        beta_1, beta_2, epsilon: Adam constants (`BertAdam`'s by default).
        gradient_accumulation_steps: int >= 2 or `None`. Batches per update.
        learning_rate_multipliers: more `(pattern, multiplier)` pairs, checked
            before the BERT group (the first match wins), e.g.
            `[(r"(^|/)itm_head/", 20.0)]` for a faster matching head.
        name: the optimizer's name.

    Examples:
    ```python
    optimizer = keras_interbert.optimizers.pretraining_optimizer(
        total_steps=91_000)
    pretrainer.compile(optimizer=optimizer)
    ```
    """
    if total_steps is None:
        schedule = float(learning_rate)
    else:
        if not 0.0 <= warmup_fraction <= 1.0:
            raise ValueError(
                "pretraining_optimizer: `warmup_fraction` must be between 0 "
                f"and 1; received {warmup_fraction}."
            )
        schedule = LinearWarmupLinearDecay(
            peak_learning_rate=learning_rate,
            total_steps=total_steps,
            warmup_steps=int(warmup_fraction * total_steps),
        )
    multiplier = float(bert_learning_rate) / float(learning_rate)
    return GroupedAdamW(
        learning_rate=schedule,
        weight_decay=weight_decay,
        learning_rate_multipliers=[
            (str(pattern), float(factor))
            for pattern, factor in learning_rate_multipliers] + [
            (pattern, multiplier) for pattern in bert_variable_patterns],
        no_decay_patterns=list(no_decay_patterns),
        beta_1=beta_1,
        beta_2=beta_2,
        epsilon=epsilon,
        clipnorm=clipnorm,
        gradient_accumulation_steps=gradient_accumulation_steps,
        name=name,
    )
