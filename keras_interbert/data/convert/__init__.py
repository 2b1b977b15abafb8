"""Convert region features and captions from common layouts.

Usage:

    python -m keras_interbert.data.convert tsv    FILE.tsv ... --output-dir OUT
    python -m keras_interbert.data.convert npz    DIR_OR_FILES ... --output-dir OUT
    python -m keras_interbert.data.convert lmdb   FEATURES.lmdb --output-dir OUT
    python -m keras_interbert.data.convert uniter DIR_OR_FILES ... --output-dir OUT --image-sizes SIZES.json
    python -m keras_interbert.data.convert npy    DIR_OR_FILES ... --output-dir OUT
    python -m keras_interbert.data.convert karpathy dataset_flickr30k.json --output-dir DATA
    python -m keras_interbert.data.convert cc     Train_GCC-training.tsv --output-dir DATA --image-id '{index}'

Supported inputs (see `docs/data.md`):

* `tsv`: bottom-up-attention TSV, one image per line, tab-separated, no
  quoting, base64 for the arrays. Default column order (LXMERT/Oscar):
  `img_id, img_h, img_w, objects_id, objects_conf, attrs_id, attrs_conf,
  num_boxes, boxes, features`; `--fields butd` is the older
  `image_id, image_w, image_h, num_boxes, boxes, features` (note W before
  H); `--fields a,b,c` names the columns of any other file.
* `npz`: one `.npz` per image (BUTD-caffe style, pixel boxes).
* `lmdb`: the ViLBERT/InterBERT downstream LMDB (pickled dicts keyed by
  image id plus a pickled `keys` list); needs the `lmdb` package.
* `uniter`: UNITER's `.npz` per image (`norm_bb`, normalised boxes, and no
  image size: sizes from a JSON side file or one stated size).
* `npy`: vilbert-multi-task's per-image `.npy` dictionaries.
* `karpathy`, `cc`: captions (see `caption_converters`), written as
  `<output-dir>/captions_<language>.jsonl`.

Feature converters take `--splits-from CAPTIONS` to put each image into the
split its captions name. Bad records raise a `RegionDataError` naming the
file, the record and the problem, or with `--on-error skip` are left out and
listed in the report.

One module per format (`tsv`, `npz`, `uniter`, `npy`, `vilbert_lmdb`), what
they share in `common`, the command line in `cli`; every public name is
importable from here.
"""
from keras_interbert.data.convert.cli import CAPTION_FORMATS
from keras_interbert.data.convert.cli import FEATURE_FORMATS
from keras_interbert.data.convert.cli import main
from keras_interbert.data.convert.common import CaptionSplits
from keras_interbert.data.convert.common import image_id_from_name
from keras_interbert.data.convert.common import safe_unpickle
from keras_interbert.data.convert.npy import NPY_KEYS
from keras_interbert.data.convert.npy import convert_npy
from keras_interbert.data.convert.npy import read_npy_record
from keras_interbert.data.convert.npz import NPZ_KEYS
from keras_interbert.data.convert.npz import convert_npz
from keras_interbert.data.convert.npz import read_npz_record
from keras_interbert.data.convert.tsv import BUTD_FIELDS
from keras_interbert.data.convert.tsv import LXMERT_FIELDS
from keras_interbert.data.convert.tsv import TSV_LAYOUTS
from keras_interbert.data.convert.tsv import convert_tsv
from keras_interbert.data.convert.tsv import parse_tsv_row
from keras_interbert.data.convert.tsv import tsv_fields
from keras_interbert.data.convert.uniter import convert_uniter
from keras_interbert.data.convert.uniter import read_image_sizes
from keras_interbert.data.convert.uniter import read_uniter_record
from keras_interbert.data.convert.vilbert_lmdb import LMDB_INSTALL_HINT
from keras_interbert.data.convert.vilbert_lmdb import convert_lmdb
from keras_interbert.data.convert.vilbert_lmdb import parse_lmdb_item
