from keras_interbert.optimizers.grouped_adamw import GroupedAdamW
from keras_interbert.optimizers.linear_warmup_linear_decay import (
    LinearWarmupLinearDecay,
)
from keras_interbert.optimizers.pretraining_optimizer import (
    BERT_INITIALISED_PATTERNS,
)
from keras_interbert.optimizers.pretraining_optimizer import NO_DECAY_PATTERNS
from keras_interbert.optimizers.pretraining_optimizer import (
    pretraining_optimizer,
)
