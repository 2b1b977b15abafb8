"""The masking rules of pretraining; defined in `keras_interbert.preprocessing.masking`.

Kept importable from here (`from keras_interbert.data import masking`): the
rules moved under the preprocessing layers, which the data pipelines build on.
"""
from keras_interbert.preprocessing.masking import apply_region_masking  # noqa: F401
from keras_interbert.preprocessing.masking import example_seeds  # noqa: F401
from keras_interbert.preprocessing.masking import expand_region_groups  # noqa: F401
from keras_interbert.preprocessing.masking import mask_region_groups  # noqa: F401
from keras_interbert.preprocessing.masking import mask_regions_random  # noqa: F401
from keras_interbert.preprocessing.masking import mask_segment_span  # noqa: F401
from keras_interbert.preprocessing.masking import mask_tokens_bert  # noqa: F401
from keras_interbert.preprocessing.masking import region_iou  # noqa: F401
from keras_interbert.preprocessing.masking import row_keys  # noqa: F401
from keras_interbert.preprocessing.masking import row_uniform  # noqa: F401
