"""Caption-based image retrieval evaluation (docs/architecture.md §4.1), both directions.

`evaluate_retrieval` scores a `RetrievalEvaluationSet` with a cross-encoder
in one or both modes and returns a report: the protocol, the metrics of each
mode with its wall time, and the exact random-ranking baseline.
`format_table` prints it, `plot_recall_curves` draws Recall@K against K.

- `"full"`: every caption against every image (`C x N` model calls,
  batched, resumable through a score file; see `grid_scoring`).
- `"two_stage"`: a cheap first-stage score for every pair from `C + N`
  single-modality passes, then the cross-encoder on the top `k` candidates
  of each query (see `two_stage`).

Zero-shot evaluation is the same call with the pretrained model: its own
matching head, no finetuning.
"""
import time

import numpy as np

from keras_interbert.evaluation.grid_scoring import score_grid
from keras_interbert.evaluation.pair_scorer import PairScorer
from keras_interbert.evaluation.retrieval_metrics import DEFAULT_KS
from keras_interbert.evaluation.retrieval_metrics import image_to_text_ranks
from keras_interbert.evaluation.retrieval_metrics import random_ranking_baseline
from keras_interbert.evaluation.retrieval_metrics import rank_summary
from keras_interbert.evaluation.retrieval_metrics import retrieval_metrics
from keras_interbert.evaluation.retrieval_metrics import text_to_image_ranks
from keras_interbert.evaluation.two_stage import first_stage_scores
from keras_interbert.evaluation.two_stage import resolve_first_stage
from keras_interbert.evaluation.two_stage import two_stage_scores

MODES = ("full", "two_stage")
TIE_RULE = ("pessimistic: a wrong candidate scoring equal to the ground truth "
            "ranks before it (rank = 1 + #wrong candidates with score >= the "
            "best ground-truth score)")


def retrieval_protocol(evaluation_set, split=None):
    """What the numbers mean: queries, candidates, captions per image."""
    per_image = np.bincount(evaluation_set.caption_image_index,
                            minlength=evaluation_set.num_images)
    captioned = per_image[per_image > 0]
    return {
        "split": split,
        "num_images": int(evaluation_set.num_images),
        "num_captions": int(evaluation_set.num_captions),
        "captions_per_image": {
            "min": int(captioned.min()), "max": int(captioned.max()),
            "mean": float(captioned.mean()),
            "images_without_captions": int((per_image == 0).sum())},
        "text_to_image": (
            f"each of the {evaluation_set.num_captions} captions queries all "
            f"{evaluation_set.num_images} images of the split; one right image"),
        "image_to_text": (
            f"each of the {len(captioned)} images with captions queries all "
            f"{evaluation_set.num_captions} captions of the split; a hit is "
            "any of its own captions"),
        "score": "ITM log-odds itm_logits[0] - itm_logits[1] (orders pairs "
                 "as softmax(itm_logits)[0], the match probability)",
        "ties": TIE_RULE,
        "recall": "percent of queries whose ground truth has rank <= K",
    }


def _directions(t2i_ranks, i2t_ranks, evaluation_set, ks):
    return {
        "text_to_image": rank_summary(t2i_ranks, ks, evaluation_set.num_images),
        "image_to_text": rank_summary(i2t_ranks, ks,
                                      evaluation_set.num_captions),
    }


def evaluate_retrieval(model, evaluation_set, modes=("full",), ks=DEFAULT_KS,
                       batch_size=1000, scores_path=None, rerank_k=10,
                       rerank_k_captions=None, first_stage="auto",
                       first_stage_batch_size=256, progress=True, split=None):
    """Recall@K, median and mean rank of a cross-encoder, per mode.

    Args:
        model: a Keras model whose output dict holds `itm_logits`, a
            callable (see `PairScorer`), or a `PairScorer`. The
            two-stage mode also needs the model's backbone (and, for the
            `"itm_head"` first stage, its matching head).
        evaluation_set: a `RetrievalEvaluationSet`.
        modes: any of `"full"`, `"two_stage"`.
        ks: the K of Recall@K.
        batch_size: pairs per cross-encoder call.
        scores_path: the full mode's score file (`.npz`), which makes it
            resumable; `None` scores in memory.
        rerank_k: images reranked per caption in the two-stage mode.
        rerank_k_captions: captions reranked per image (default `rerank_k`
            times the largest number of captions of an image).
        first_stage: `"auto"`, `"itm_head"`, `"cosine"`, `"contrastive"` or
            a callable (see `first_stage_scores`).
        first_stage_batch_size: captions or images per first-stage call.
        progress: show progress bars.
        split: the split's name, for the protocol.

    Returns:
        A dict, or `None` if the full mode's scoring did not finish (see
        `score_grid`): `protocol`, `random_baseline` (expected metrics),
        and per mode the `text_to_image` and `image_to_text` summaries of
        `rank_summary`, `seconds` (wall time) and `num_pairs_scored`; the
        two-stage mode also reports its `first_stage` metrics alone and the
        time of each stage.
    """
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"modes must be among {MODES}; received {mode!r}.")
    scorer = model if isinstance(model, PairScorer) else PairScorer(model)
    per_image = np.bincount(evaluation_set.caption_image_index,
                            minlength=evaluation_set.num_images)
    report = {
        "protocol": retrieval_protocol(evaluation_set, split),
        "random_baseline": random_ranking_baseline(per_image, ks),
        "modes": {},
    }
    owner = evaluation_set.caption_image_index
    if "full" in modes:
        grid = score_grid(scorer, evaluation_set, batch_size, scores_path,
                          progress=progress)
        if not grid["complete"]:
            return None
        metrics = retrieval_metrics(grid["scores"], owner, ks,
                                    posterior_kind="match")
        report["modes"]["full"] = dict(
            metrics, seconds=grid["seconds"],
            num_pairs_scored=evaluation_set.num_pairs,
            settings={"batch_size": batch_size})
    if "two_stage" in modes:
        if isinstance(model, PairScorer):
            model = model.model
        began = time.perf_counter()
        cheap = first_stage_scores(model, evaluation_set, first_stage,
                                   first_stage_batch_size, progress)
        first_seconds = time.perf_counter() - began
        reranked = two_stage_scores(scorer, evaluation_set, cheap, rerank_k,
                                    rerank_k_captions, batch_size, progress)
        t2i = text_to_image_ranks(reranked["text_to_image"], owner)
        i2t, _ = image_to_text_ranks(reranked["image_to_text"], owner)
        report["modes"]["two_stage"] = dict(
            _directions(t2i, i2t, evaluation_set, ks),
            seconds=first_seconds + reranked["seconds"],
            first_stage_seconds=first_seconds,
            rerank_seconds=reranked["seconds"],
            num_pairs_scored=reranked["num_pairs_scored"],
            settings={
                "first_stage": resolve_first_stage(model, first_stage)
                if isinstance(first_stage, str)
                else getattr(first_stage, "__name__", "callable"),
                "k": reranked["k"], "k_captions": reranked["k_captions"],
                "batch_size": batch_size},
            first_stage=retrieval_metrics(cheap, owner, ks))
    return report


def format_table(report):
    """The report as a text table: each mode next to the random baseline."""
    ks = list(report["random_baseline"]["text_to_image"]["recall"])
    columns = [("random", report["random_baseline"])]
    for mode, result in report["modes"].items():
        if "first_stage" in result:
            columns.append(("1st stage", result["first_stage"]))
        columns.append((mode.replace("_", "-"), result))
    width = max(12, *(len(name) + 2 for name, _ in columns))
    lines = []
    protocol = report["protocol"]
    per = protocol["captions_per_image"]
    lines.append(
        f"split {protocol['split']}: {protocol['num_images']} images, "
        f"{protocol['num_captions']} captions ({per['min']}-{per['max']} per "
        f"image, mean {per['mean']:.2f}); candidates: all images (t2i), all "
        f"captions (i2t); ties: pessimistic")
    for direction, title in (("text_to_image", "text -> image"),
                             ("image_to_text", "image -> text"),
                             ("image_to_text_posterior", "i -> t posterior")):
        if not any(direction in c for _, c in columns):
            continue
        lines.append("")
        lines.append(f"{title:<16}" + "".join(f"{n:>{width}}" for n, _ in columns))
        for k in ks:
            lines.append(f"{'R@' + str(k) + ' (%)':<16}" + "".join(
                f"{c[direction]['recall'][k]:>{width}.2f}" if direction in c
                else f"{'-':>{width}}" for _, c in columns))
        for key, label in (("median_rank", "median rank"),
                           ("mean_rank", "mean rank")):
            lines.append(f"{label:<16}" + "".join(
                f"{c[direction][key]:>{width}.1f}" if direction in c
                else f"{'-':>{width}}" for _, c in columns))
    lines.append("")
    for mode, result in report["modes"].items():
        detail = f"{mode}: {result['num_pairs_scored']} pairs through the " \
                 f"cross-encoder in {result['seconds']:.2f} s"
        if mode == "two_stage":
            s = result["settings"]
            detail += (f" (first stage {s['first_stage']!r} "
                       f"{result['first_stage_seconds']:.2f} s, rerank top "
                       f"{s['k']} images / {s['k_captions']} captions "
                       f"{result['rerank_seconds']:.2f} s)")
        lines.append(detail)
    return "\n".join(lines)


def plot_recall_curves(report, path, title="retrieval"):
    """Recall@K against K, text->image and image->text, as a PNG at `path`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (direction, name) in zip(axes, (("text_to_image", "text → image"),
                                            ("image_to_text", "image → text"))):
        curves = [("random", report["random_baseline"], ":")]
        for mode, result in report["modes"].items():
            if "first_stage" in result:
                curves.append(("first stage", result["first_stage"], "-."))
            curves.append((mode.replace("_", "-"), result, "-"))
        for label, result, style in curves:
            curve = result[direction]["recall_curve"]
            ax.plot(range(1, len(curve) + 1), curve, style, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K (%)")
        ax.set_ylim(0, 100)
        count = report["random_baseline"][direction]["num_candidates"]
        ax.set_title(f"{name} ({count} candidates)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    from keras_interbert.utils.atomic import save_figure_atomically

    save_figure_atomically(fig, path, dpi=110)
    plt.close(fig)
    return path
