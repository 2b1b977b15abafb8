"""Cross-encoder scoring of a whole caption x image grid, resumable.

`score_grid` scores every pair of a `RetrievalEvaluationSet` in its
caption-major order and, given a `path`, keeps its progress on disk so that
an interrupted run (a crash, Ctrl-C, a job time limit, `max_batches`) goes on
where it stopped and ends with exactly the matrix of an uninterrupted run
(the same batches reach the same model).

Files, for `path = "out/scores_full.npz"`:

- `out/scores_full.partial.npy`: the scores so far, a float32 `[num_pairs]`
  array (NaN where not scored yet), written in place;
- `out/scores_full.partial.json`: `{"status": "partial", "next_pair": ...,
  "fingerprint": {...}}`, replaced atomically after the scores it counts
  are flushed, so it never claims a pair that is not on disk;
- `out/scores_full.npz`: the finished matrix, with `status = "complete"`,
  written under a temporary name and renamed when complete; the partial
  files are then deleted.

A finished file is the only thing `load_scores` reads; a partial file is
refused with a message that says how to finish it. The fingerprint (grid
size, batch size, digests of the packed captions, the images and the
scorer's weights) must match to resume or reuse a file, so a score file is
never continued with another model, data set or batching.
"""
import hashlib
import json
import os
import time
import zipfile

import numpy as np

from keras_interbert.utils.atomic import atomic_path
from keras_interbert.utils.atomic import read_json

STATUS_COMPLETE = "complete"
STATUS_PARTIAL = "partial"


class ScoreFileError(ValueError):
    """A score file that is partial, damaged or made for another evaluation."""


def partial_paths(path):
    """The `(scores, state)` paths of the partial files of `path`."""
    base = path[:-len(".npz")] if path.endswith(".npz") else path
    return base + ".partial.npy", base + ".partial.json"


def grid_fingerprint(evaluation_set, scorer, batch_size):
    """What a score file must have been made from to be resumed or reused."""
    digest = hashlib.sha1()
    for key in sorted(evaluation_set.text):
        digest.update(key.encode("utf-8"))
        digest.update(np.ascontiguousarray(evaluation_set.text[key]).tobytes())
    digest.update(evaluation_set.caption_image_index.tobytes())
    captions = digest.hexdigest()
    table = evaluation_set.table
    digest = hashlib.sha1("\n".join(evaluation_set.image_ids).encode("utf-8"))
    digest.update(np.ascontiguousarray(table.global_features()).tobytes())
    digest.update(np.asarray(table.num_kept, np.int64).tobytes())
    digest.update(str(table.max_regions).encode("utf-8"))
    return {
        "num_captions": int(evaluation_set.num_captions),
        "num_images": int(evaluation_set.num_images),
        "batch_size": int(batch_size),
        "captions_sha1": captions,
        "images_sha1": digest.hexdigest(),
        "scorer": scorer.name,
        "scorer_sha1": scorer.fingerprint(),
    }


def _check_fingerprint(found, expected, path):
    differ = sorted(k for k in expected if found.get(k) != expected[k])
    if differ:
        details = "; ".join(f"{k}: file {found.get(k)!r}, now {expected[k]!r}"
                            for k in differ)
        raise ScoreFileError(
            f"{path} was written for another evaluation ({details}). Delete "
            "it or choose another scores path.")


def _write_atomically(path, write):
    with atomic_path(path, suffix=".tmp") as tmp:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())


def _delete_hint(*paths):
    return (f"Delete {' and '.join(paths)} to score again from the start "
            "(or choose another scores path).")


def _read_state(state_path, data_path, fingerprint, num_pairs):
    """The progress of a partial score file, checked before it is trusted."""
    hint = _delete_hint(state_path, data_path)
    try:
        state = read_json(state_path, "score progress file")
    except ValueError as e:
        raise ScoreFileError(f"{e} {hint}") from None
    if not isinstance(state, dict) or not isinstance(
            state.get("fingerprint"), dict):
        raise ScoreFileError(f"{state_path}: not a score progress file (no "
                             f"fingerprint). {hint}")
    _check_fingerprint(state["fingerprint"], fingerprint, state_path)
    next_pair, seconds = state.get("next_pair"), state.get("seconds", 0.0)
    if isinstance(next_pair, bool) or not isinstance(next_pair, int) or not (
            0 <= next_pair <= num_pairs):
        raise ScoreFileError(
            f"{state_path}: next_pair {next_pair!r} is not a pair count "
            f"between 0 and {num_pairs}. {hint}")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
            or not np.isfinite(seconds) or seconds < 0:
        raise ScoreFileError(f"{state_path}: seconds {seconds!r} is not a "
                             f"duration. {hint}")
    return next_pair, float(seconds)


def _open_partial_scores(data_path, state_path, next_pair, num_pairs):
    """The partial scores, checked: shape, dtype, finite where scored."""
    hint = _delete_hint(state_path, data_path)
    try:
        values = np.lib.format.open_memmap(data_path, mode="r+")
    except (OSError, ValueError) as e:
        raise ScoreFileError(f"{data_path}: not a readable score array "
                             f"({e}). {hint}") from None
    if values.shape != (num_pairs,) or values.dtype != np.float32:
        raise ScoreFileError(
            f"{data_path}: holds {values.dtype} scores of shape "
            f"{values.shape}; expected float32 ({num_pairs},). {hint}")
    bad = np.flatnonzero(~np.isfinite(values[:next_pair]))
    if bad.size:
        raise ScoreFileError(
            f"{data_path}: {bad.size} of the {next_pair} scored pairs are NaN "
            f"or infinite (first: pair {bad[0]}); the file is damaged. {hint}")
    return values


def _check_scores(path, result, fingerprint):
    """A finished file's arrays agree with each other and are finite."""
    scores = result["scores"]
    expected = (fingerprint.get("num_captions"), fingerprint.get("num_images"))
    problem = None
    if scores.ndim != 2 or tuple(scores.shape) != expected:
        problem = (f"scores have shape {scores.shape}; its fingerprint says "
                   f"{expected}")
    elif not np.issubdtype(scores.dtype, np.floating):
        problem = f"scores are {scores.dtype}, not floating point"
    elif not np.isfinite(scores).all():
        problem = (f"{int((~np.isfinite(scores)).sum())} scores are NaN or "
                   "infinite")
    elif len(result["caption_image_index"]) != scores.shape[0] or len(
            result["image_ids"]) != scores.shape[1]:
        problem = ("caption_image_index or image_ids do not match the score "
                   "matrix")
    elif not np.isfinite(result["seconds"]):
        problem = "seconds is not finite"
    if problem:
        raise ScoreFileError(f"{path}: {problem}; the file is damaged. "
                             f"{_delete_hint(path)}")


def _write_state(path, state):
    _write_atomically(path, lambda f: f.write(
        json.dumps(state, indent=1).encode("utf-8")))


def padded_call(scorer, x, batch_size):
    """`scorer(x)` with `x` padded to `batch_size` rows (the last one
    repeated), so a smaller last batch reuses the compiled full-size
    function; the padding rows' scores are dropped."""
    rows = len(x["token_ids"])
    if rows < batch_size:
        x = {k: np.concatenate([v, np.repeat(v[-1:], batch_size - rows, 0)])
             for k, v in x.items()}
    return np.asarray(scorer(x))[:rows]


def load_scores(path, fingerprint=None):
    """A finished score file: `scores` `[C, N]`, `caption_image_index`,
    `image_ids`, `fingerprint`, `seconds`.

    Raises a `ScoreFileError` for a partial file (or a path whose partial
    files exist but whose finished file does not), a file without
    `status = "complete"`, or one whose fingerprint differs from
    `fingerprint`.
    """
    path = os.fspath(path)
    if path.endswith((".partial.npy", ".partial.json")):
        raise ScoreFileError(
            f"{path} is a partial, resumable score file, not a result: run "
            "the scoring again with the same settings to finish it.")
    if not os.path.exists(path):
        if any(os.path.exists(p) for p in partial_paths(path)):
            raise ScoreFileError(
                f"{path} is not finished: only its partial, resumable files "
                f"exist ({partial_paths(path)[1]}). Run the scoring again "
                "with the same settings to finish it.")
        raise FileNotFoundError(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            status = str(data["status"]) if "status" in data.files else None
            if status != STATUS_COMPLETE:
                raise ScoreFileError(
                    f"{path}: status {status!r}; only a {STATUS_COMPLETE!r} "
                    "score file is a result.")
            found = json.loads(str(data["fingerprint"]))
            result = {
                "scores": data["scores"],
                "caption_image_index": data["caption_image_index"],
                "image_ids": [str(i) for i in data["image_ids"]],
                "fingerprint": found,
                "seconds": float(data["seconds"]),
            }
    except ScoreFileError:
        raise
    except (OSError, ValueError, KeyError, TypeError, EOFError,
            zipfile.BadZipFile) as e:
        raise ScoreFileError(
            f"{path}: not a readable score file ({type(e).__name__}: {e}). "
            f"{_delete_hint(path)}") from None
    if not isinstance(found, dict):
        raise ScoreFileError(f"{path}: no fingerprint. {_delete_hint(path)}")
    if fingerprint is not None:
        _check_fingerprint(found, fingerprint, path)
    _check_scores(path, result, found)
    return result


def score_grid(scorer, evaluation_set, batch_size=1000, path=None,
               checkpoint_every=20, max_batches=None, progress=True):
    """Scores every caption against every image; resumable with `path`.

    Args:
        scorer: a `PairScorer` (or anything with its `__call__`, `name` and
            `fingerprint()`).
        evaluation_set: a `RetrievalEvaluationSet`.
        batch_size: pairs per model call. Resuming needs the same value.
        path: the finished score file (`.npz`); its partial files sit next
            to it (see the module docstring). `None` keeps everything in
            memory. An existing finished file with a matching fingerprint
            is returned without scoring anything.
        checkpoint_every: batches between progress saves (the progress is
            also saved when the loop stops, even by an exception).
        max_batches: stop after this many batches of this call (the rest
            is left for a later call).
        progress: show a tqdm bar.

    Returns:
        A dict: `scores` (float32 `[C, N]` when complete, else `None`),
        `complete`, `next_pair` (pairs done), `num_pairs`, `resumed_from`
        (the pair this call started at) and `seconds` (scoring time of all
        calls that built the matrix).
    """
    num_pairs = evaluation_set.num_pairs
    shape = (evaluation_set.num_captions, evaluation_set.num_images)
    fingerprint = grid_fingerprint(evaluation_set, scorer, batch_size)
    start, seconds, state_path = 0, 0.0, None
    if path is None:
        values = np.full(num_pairs, np.nan, np.float32)
    else:
        path = os.fspath(path)
        if os.path.exists(path):
            done = load_scores(path, fingerprint)
            return {"scores": done["scores"], "complete": True,
                    "next_pair": num_pairs, "num_pairs": num_pairs,
                    "resumed_from": num_pairs, "seconds": done["seconds"]}
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        data_path, state_path = partial_paths(path)
        if os.path.exists(state_path) and os.path.exists(data_path):
            start, seconds = _read_state(state_path, data_path, fingerprint,
                                         num_pairs)
            values = _open_partial_scores(data_path, state_path, start,
                                          num_pairs)
        else:
            values = np.lib.format.open_memmap(
                data_path, mode="w+", dtype=np.float32, shape=(num_pairs,))
            values[:] = np.nan
    next_pair, batches = start, 0

    def save_progress():
        if state_path is None:
            return
        values.flush()
        _write_state(state_path, {
            "status": STATUS_PARTIAL, "next_pair": next_pair,
            "num_pairs": num_pairs, "seconds": seconds + elapsed(),
            "fingerprint": fingerprint,
            "note": "partial, resumable scores: not a result"})

    began = time.perf_counter()

    def elapsed():
        return time.perf_counter() - began

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=-(-num_pairs // batch_size),
                   initial=start // batch_size, desc="scoring all pairs",
                   unit="batch")
    try:
        if next_pair < num_pairs:
            for x, pairs in evaluation_set.grid_dataset(
                    batch_size, start).as_numpy_iterator():
                if max_batches is not None and batches >= max_batches:
                    break
                first = (int(pairs["caption_index"][0]) * shape[1]
                         + int(pairs["image_index"][0]))
                if first != next_pair:
                    raise RuntimeError(f"grid batch starts at pair {first}; "
                                       f"expected {next_pair}.")
                scores = padded_call(scorer, x, min(batch_size, num_pairs))
                if not np.isfinite(scores).all():
                    raise FloatingPointError(
                        f"the model gave NaN or infinite scores for pairs "
                        f"{next_pair} to {next_pair + len(scores) - 1}; "
                        "nothing of this batch was kept (check the model's "
                        "weights and the inputs).")
                values[next_pair:next_pair + len(scores)] = scores
                next_pair += len(scores)
                batches += 1
                if bar is not None:
                    bar.update(1)
                if batches % checkpoint_every == 0 and next_pair < num_pairs:
                    save_progress()
    finally:
        if bar is not None:
            bar.close()
        if next_pair < num_pairs:
            save_progress()
    seconds += elapsed()
    result = {"scores": None, "complete": next_pair == num_pairs,
              "next_pair": next_pair, "num_pairs": num_pairs,
              "resumed_from": start, "seconds": seconds}
    if not result["complete"]:
        return result
    matrix = np.array(values, np.float32).reshape(shape)
    result["scores"] = matrix
    if path is not None:
        _write_atomically(path, lambda f: np.savez(
            f, scores=matrix, status=np.array(STATUS_COMPLETE),
            caption_image_index=evaluation_set.caption_image_index,
            image_ids=np.array(evaluation_set.image_ids),
            fingerprint=np.array(json.dumps(fingerprint)),
            seconds=np.array(seconds)))
        del values
        for partial in partial_paths(path):
            if os.path.exists(partial):
                os.remove(partial)
    return result


def score_pairs(scorer, evaluation_set, caption_index, image_index,
                batch_size=1000, progress=True, desc="scoring pairs"):
    """Scores of the given pairs, in the given order, float32 `[P]`."""
    caption_index = np.asarray(caption_index, np.int64).reshape(-1)
    scores = np.empty(len(caption_index), np.float32)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=-(-len(scores) // batch_size), desc=desc,
                   unit="batch")
    done = 0
    for x, _ in evaluation_set.pairs_dataset(
            caption_index, image_index, batch_size).as_numpy_iterator():
        batch = padded_call(scorer, x, min(batch_size, len(scores)))
        scores[done:done + len(batch)] = batch
        done += len(batch)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    if done != len(scores):
        raise RuntimeError(f"scored {done} pairs; expected {len(scores)}.")
    return scores
