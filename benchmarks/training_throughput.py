"""Training and scoring throughput side by side with the authors' PyTorch code, in one run.

For each configuration this times, in fresh child processes run one after the
other on the same machine, the pretraining step of

- the authors' code (`--original DIR`: a checkout of their repository; its
  `bertmodel/` package is imported from there, nothing of it is copied):
  their `InterBertForMultiModalPreTraining` forward with the three losses,
  backward, and their `BertAdam` (per-parameter clipping to norm 1, weight
  decay 0.01), as their `train_concap.py` trains; `--original-optimizer
  torch_adamw` uses `torch.optim.AdamW` instead;
- ours, `InterBERTPretrainer.fit` with `pretraining_optimizer` (per-variable
  clipping, decay groups), under each backend variant (TensorFlow,
  TensorFlow + XLA, JAX, PyTorch; `KERAS_BACKEND` is fixed per process, so
  each variant is its own process), in two forms:
  `targets`: the step as `pretraining_dataset` feeds it, vocabulary and
  region-class logits only at the target positions (`msm_positions`,
  `mrm_positions`); `dense`: logits at every text position and every image
  slot, as the original computes them.

Both sides see the same shapes and the same targets: batch 8, 36 text
tokens, 37 image slots (slot 0 the global image token), 2048-d features,
1601 region classes, 9 masked tokens and 4 masked regions per pair, float32.
The original runs before the first of ours and again after every
`--original-every` of ours (and at the end), so each of our rows has an
original run on either side of it; its ratio divides by the mean of those
two. Every child also measures a float32 matrix-product peak (best of
several 2048 x 2048 products with its own framework) in the same process;
utilisation = model FLOPs per step / step time / that peak, with model FLOPs
= 3 x the forward matrix-product FLOPs of the step actually run
(`model_flops_per_pair`; the `targets` step does fewer). Memory: the child
process's peak resident set (`ru_maxrss`), imports included; a `targets`
row is the peak after its own steps, a `dense` row after both (it runs
second), so the dense one is an upper bound of its own. Each row also gives
the resident set right after the child's imports (its framework's runtime:
our children import TensorFlow and Keras whatever the backend, for
keras-hub and the data pipeline; the original's child imports PyTorch and
the authors' package only, its configuration comes from this process) and
the peak above it, the memory of the model and its step, and the share of
the machine's CPU time that its hypervisor gave to other guests while the
child ran (/proc/stat's steal): a row with a high share was timed on fewer
cores than it asked for.

`--variants ... torch_compile` adds PyTorch with Keras' `jit_compile=True`,
which is `torch.compile` (Inductor): its first step compiles for minutes
(about 2.5 for scoring the published configuration on two cores; the
training steps had not finished compiling after 14), so it runs only when
asked for.

    .venv/bin/python benchmarks/training_throughput.py --original ~/src/interbert-original \\
        --out reports/training_throughput
    # quick check on a smaller configuration (the original built to match):
    .venv/bin/python benchmarks/training_throughput.py --original DIR --configs small \\
        --variants tensorflow jax --steps 3
    # ours only, no original:
    .venv/bin/python benchmarks/training_throughput.py --configs tiny --variants jax

`--tasks retrieval scoring` times, the same way, the retrieval finetuning
step (four pairs per caption, 2-way cross-entropy on the matching head:
the authors' `InterBertForVLTasks` with `BertAdam` against our
`InterBERTRetriever.fit` with `finetuning_optimizer`) and the
cross-encoder's forward pass as full retrieval evaluation runs it (their
model in `eval()` under `torch.no_grad()` against our matching logits by
`predict_on_batch`), at the authors' Flickr30K shapes (text 30, 102 image
slots); `--batch-size` is then pairs per step (retrieval: 4 per caption).
Utilisation counts the FLOPs the task needs (encoder, poolers, matching
classifier; in scoring each stream's last layer at position 0 alone, which
is all the poolers read); the authors' forward also computes the vocabulary
and region-class logits at every position, which neither task uses, and in
scoring the last layers at every position (`unused_gflop_per_step` in the
report).
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

VARIANTS = {
    "tensorflow": {"KERAS_BACKEND": "tensorflow", "jit": "false"},
    "tensorflow_xla": {"KERAS_BACKEND": "tensorflow", "jit": "true"},
    "jax": {"KERAS_BACKEND": "jax", "jit": "true"},
    "torch": {"KERAS_BACKEND": "torch", "jit": "false"},
    # Keras' `jit_compile=True` under PyTorch: `torch.compile` (Inductor).
    "torch_compile": {"KERAS_BACKEND": "torch", "jit": "true"},
}
# What runs without `--variants`: `torch_compile` compiles for minutes
# before its first step, so it is asked for by name.
DEFAULT_VARIANTS = ("tensorflow", "tensorflow_xla", "jax", "torch")
LABELS = {"original": "authors' PyTorch code", "tensorflow": "TensorFlow",
          "tensorflow_xla": "TensorFlow + XLA", "jax": "JAX",
          "torch": "PyTorch", "torch_compile": "PyTorch + torch.compile"}
CONFIGS = {
    "tiny": "interbert_tiny_en",
    "small": "interbert_small_en",
    "published": "interbert_base_en",
}
TEXT_LEN, SLOTS, NUM_CLASSES = 36, 37, 1601
# What each task trains or runs. `pretraining`: the step above.
# `retrieval`: the finetuning step of docs/architecture.md §4.1, four pairs
# per caption (matched, random caption, random image, hard caption; labels
# 0, 1, 1, 1), 2-way cross-entropy on the matching head, text 30 and 102
# image slots as the authors finetune on Flickr30K. `scoring`: the
# cross-encoder's forward pass alone (match probability of each pair), as
# full retrieval evaluation runs it, at the same shapes.
TASKS = ("pretraining", "retrieval", "scoring")
TASK_SHAPES = {"pretraining": (TEXT_LEN, SLOTS), "retrieval": (30, 102),
               "scoring": (30, 102)}
PAIRS_PER_CAPTION = 4
# The targets of the benchmark batch: tokens 3..11 of every caption and
# regions 1..4 (slots 1..4), as many as span masking and group masking give
# a 36-token caption and 36 regions on average, rounded up.
MSM_TARGETS = list(range(3, 12))
MRM_TARGET_SLOTS = [1, 2, 3, 4]
# What `pretraining_dataset` feeds for these targets: positions padded to a
# multiple of 8 (tokens) and of 4 (regions).
MSM_WIDTH = 8 * ((len(MSM_TARGETS) + 7) // 8)
MRM_WIDTH = 4 * ((len(MRM_TARGET_SLOTS) + 3) // 4)


def model_flops_per_pair(config, text_len=TEXT_LEN, slots=SLOTS,
                         num_classes=NUM_CLASSES, msm_positions=None,
                         mrm_positions=None, pooled_only=False):
    """Forward matrix-product FLOPs of one pair (multiply-adds x 2).

    `config` is a backbone config (`preset_backbone_config`). The image
    embedding (features and boxes), every transformer layer (query, key,
    value, output, the two feed-forward products and the two attention
    products), both poolers, the matching classifier, and the two heads:
    the masked-segment head at `msm_positions` positions (every text
    position when `None`) and the masked-region head at `mrm_positions`
    slots (every slot when `None`). Embedding lookups, layer norms,
    softmax and activations are not counted. `pooled_only`: the last text
    and image layers as the backbone's pooled-only call runs them, keys and
    values at every position, the rest at position 0 alone (what the
    poolers read; the heads are then not computed).
    """
    H, V = config["hidden_dim"], config["vocabulary_size"]
    F, Fi = config["intermediate_dim"], config["image_intermediate_dim"]
    D, P = config["image_feature_dim"], config["pooled_dim"]
    L = text_len + slots
    msm = text_len if msm_positions is None else msm_positions
    mrm = slots if mrm_positions is None else mrm_positions

    def layer(tokens, ffn, keys, queries=None):
        queries = tokens if queries is None else queries
        keys_values = 2 * tokens * 2 * H * H
        rest = 2 * queries * (2 * H * H + 2 * H * ffn)
        attention = 2 * 2 * queries * keys * H
        return keys_values + rest + attention

    def stream(count, tokens, ffn):
        if not pooled_only or count == 0:
            return count * layer(tokens, ffn, tokens)
        return ((count - 1) * layer(tokens, ffn, tokens)
                + layer(tokens, ffn, tokens, queries=1))

    flops = 2 * slots * (D * H + 5 * H)
    flops += config["num_single_stream_layers"] * layer(L, F, L)
    flops += stream(config["num_text_layers"], text_len, F)
    flops += stream(config["num_image_layers"], slots, Fi)
    flops += 2 * 2 * H * P + 2 * P * 2
    flops += 2 * msm * (H * H + H * V)
    flops += 2 * mrm * (H * H + H * num_classes)
    return flops


def step_flops(config, batch_size, heads, task="pretraining", side=None):
    """Model FLOPs of one step: 3 x forward for training (backward = 2 x),
    1 x forward for `scoring`.

    `retrieval` and `scoring` need the encoder, the poolers and the matching
    classifier only (no masked-segment or masked-region logits); scoring
    needs each stream's last layer at position 0 alone, which is all the
    poolers read (our training step runs it at every position, so that its
    dropout masks are those of the full call). The
    `targets` pretraining step computes the masked-segment head at the
    `MSM_WIDTH` padded positions, except TensorFlow without XLA (`side`
    "tensorflow"), whose step drops the padding slots and computes it at
    the `MSM_TARGETS` alone (`tensorflow_steps._msm_targets_alone`).
    """
    if task != "pretraining":
        text_len, slots = TASK_SHAPES[task]
        per_pair = model_flops_per_pair(config, text_len, slots,
                                        msm_positions=0, mrm_positions=0,
                                        pooled_only=task == "scoring")
        return (1 if task == "scoring" else 3) * per_pair * batch_size
    if heads == "targets":
        msm = len(MSM_TARGETS) if side == "tensorflow" else MSM_WIDTH
        per_pair = model_flops_per_pair(config, msm_positions=msm,
                                        mrm_positions=MRM_WIDTH)
    else:
        per_pair = model_flops_per_pair(config)
    return 3 * per_pair * batch_size


def original_unused_flops(config, task, batch_size):
    """Forward FLOPs the authors' `InterBertForVLTasks` spends per step on
    outputs `retrieval` and `scoring` do not use: its forward always computes
    the vocabulary logits at every text position and the region-class logits
    at every slot (`BertPreTrainingHeads`), and in scoring each stream's
    last layer at every position where the poolers read position 0."""
    text_len, slots = TASK_SHAPES[task]
    dense = model_flops_per_pair(config, text_len, slots)
    needed = model_flops_per_pair(config, text_len, slots, msm_positions=0,
                                  mrm_positions=0,
                                  pooled_only=task == "scoring")
    return (dense - needed) * batch_size


def original_config(config, num_classes=NUM_CLASSES):
    """The authors' `BertConfig` fields for one of our backbone configs."""
    return {
        "vocab_size": config["vocabulary_size"],
        "hidden_size": config["hidden_dim"],
        "num_hidden_layers": config["num_single_stream_layers"],
        "t_num_hidden_layers": config["num_text_layers"],
        "num_attention_heads": config["num_heads"],
        "intermediate_size": config["intermediate_dim"],
        "hidden_act": "gelu",
        "hidden_dropout_prob": config["dropout"],
        "attention_probs_dropout_prob": config["attention_dropout"],
        "max_position_embeddings": config["max_sequence_length"],
        "type_vocab_size": config["num_segments"],
        "initializer_range": config.get("initializer_range", 0.02),
        "v_feature_size": config["image_feature_dim"],
        "v_target_size": num_classes,
        "v_hidden_size": config["hidden_dim"],
        "v_num_hidden_layers": config["num_image_layers"],
        "v_num_attention_heads": config["num_image_heads"],
        "v_intermediate_size": config["image_intermediate_dim"],
        "v_attention_probs_dropout_prob": config["image_attention_dropout"],
        "v_hidden_act": "gelu",
        "v_hidden_dropout_prob": config["image_dropout"],
        "bi_hidden_size": config["pooled_dim"],
        "predict_feature": False,
        "fast_mode": False,
        "in_batch_pairs": False,
        "fusion_method": "mul",
    }


def benchmark_batch(batch_size, vocabulary_size, feature_dim, seed=0,
                    task="pretraining"):
    """The batch both sides train on, as numpy: ids, features, targets.

    For `retrieval` and `scoring` the ITM labels are the four pairs per
    caption's `0, 1, 1, 1` (`batch_size` pairs, a multiple of 4).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    B = batch_size
    T, S = TASK_SHAPES[task]
    probs = rng.random((B, S - 1, NUM_CLASSES)).astype("float32")
    probs /= probs.sum(-1, keepdims=True)
    return {
        "token_ids": rng.integers(1000, vocabulary_size, (B, T)).astype("int32"),
        "region_features": rng.random((B, S, feature_dim)).astype("float32"),
        "region_locations": rng.random((B, S, 5)).astype("float32"),
        "class_probs": probs,  # slots 1..S-1
        "itm_labels": (np.arange(B) % 2 if task == "pretraining" else
                       np.minimum(np.arange(B) % PAIRS_PER_CAPTION, 1)
                       ).astype("int32"),
    }


def matmul_peak(matmul, to_numpy, n=2048, repeats=5):
    """Best float32 n x n matrix-product rate (FLOP/s) of a framework."""
    import numpy as np

    rng = np.random.default_rng(1)
    a = rng.random((n, n)).astype("float32")
    b = rng.random((n, n)).astype("float32")
    a, b = matmul.prepare(a), matmul.prepare(b)
    to_numpy(matmul(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        to_numpy(matmul(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


class _Matmul:
    def __init__(self, fn, prepare):
        self.fn, self.prepare = fn, prepare

    def __call__(self, a, b):
        return self.fn(a, b)


def _peak_rss_gib():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _rss_gib():
    """The resident set now (Linux), else the peak so far."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2 ** 20
    except OSError:
        pass
    return _peak_rss_gib()


def _cpu_seconds():
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _stats(times, batch_size, cpu_seconds=None):
    import numpy as np

    step = float(np.median(times))
    stats = {"step_seconds": step, "step_times": [round(t, 4) for t in times],
             "pairs_per_second": batch_size / step}
    if cpu_seconds is not None:
        # Process CPU time (all threads) per timed step: less disturbed by
        # other jobs than wall time, though spinning threads inflate it.
        stats["cpu_seconds_per_step"] = cpu_seconds / len(times)
    return stats


# === The authors' code (child process) ===

def _import_original(directory):
    """The authors' `bertmodel` package from `directory`.

    Their `bertmodel/utils.py` imports boto3, botocore, requests and
    tensorboardX at module level for downloads and logging that a training
    step never uses; where those are not installed, empty stand-ins are
    registered so that the import succeeds.
    """
    import importlib.util
    import types

    def stand_in(name, **attributes):
        if importlib.util.find_spec(name.split(".")[0]) is not None:
            return
        module = types.ModuleType(name)
        for key, value in attributes.items():
            setattr(module, key, value)
        sys.modules[name] = module

    stand_in("boto3")
    stand_in("botocore")
    if "botocore" in sys.modules and not hasattr(sys.modules["botocore"],
                                                 "__path__"):
        sys.modules["botocore.exceptions"] = types.ModuleType(
            "botocore.exceptions")
        sys.modules["botocore.exceptions"].ClientError = Exception
    stand_in("requests")
    stand_in("tensorboardX", SummaryWriter=object)
    stand_in("tqdm", tqdm=lambda iterable=None, **kwargs: iterable)
    sys.path.insert(0, os.path.abspath(directory))
    from bertmodel import modules
    from bertmodel import optimization

    return modules, optimization


def original_worker(args):
    import torch

    # The configuration comes from the parent (`--backbone-config`): importing
    # keras_interbert here would load TensorFlow and Keras into the authors'
    # process and add their memory to its figures.
    config = json.loads(args.backbone_config)
    fields = original_config(config)
    if args.config == "published":
        # The authors' own published file, checked against ours.
        path = os.path.join(args.original, "config",
                            "bert_base_6layer_interbert.json")
        with open(path) as f:
            published = json.load(f)
        differ = {k: (published[k], v) for k, v in fields.items()
                  if k in published and published[k] != v}
        if differ:
            raise SystemExit(f"{path} differs from interbert_base_en: {differ}")
        fields = {**fields, **published}
    modules, optimization = _import_original(args.original)
    args.import_rss_gib = _rss_gib()
    bert_config = modules.BertConfig.from_dict(fields)
    for key, value in fields.items():  # from_dict skips absent defaults
        setattr(bert_config, key, value)
    torch.manual_seed(0)
    if args.task != "pretraining":
        return _original_matching(args, modules, optimization, bert_config,
                                  fields)
    model = modules.InterBertForMultiModalPreTraining(bert_config).train()
    if args.original_optimizer == "bertadam":
        optimizer = optimization.BertAdam(
            model.parameters(), lr=1e-4, warmup=0.1, t_total=100000,
            weight_decay=0.01, max_grad_norm=1.0)
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4,
                                      weight_decay=0.01)
    B, T, S = args.batch_size, TEXT_LEN, SLOTS
    batch = benchmark_batch(B, fields["vocab_size"], fields["v_feature_size"])
    ids = torch.from_numpy(batch["token_ids"]).long()
    features = torch.from_numpy(batch["region_features"])
    locations = torch.from_numpy(batch["region_locations"])
    text_mask = torch.ones(B, T, dtype=torch.long)
    image_mask = torch.ones(B, S, dtype=torch.long)
    joint_mask = torch.cat([image_mask, text_mask], 1)
    lm_labels = torch.full((B, T), -1, dtype=torch.long)
    lm_labels[:, MSM_TARGETS] = ids[:, MSM_TARGETS]
    image_label = torch.zeros(B, S - 1, dtype=torch.long)
    image_label[:, [s - 1 for s in MRM_TARGET_SLOTS]] = 1
    image_target = torch.from_numpy(batch["class_probs"])
    itm_labels = torch.from_numpy(batch["itm_labels"]).long()
    segments = torch.zeros_like(ids)

    def step():
        optimizer.zero_grad()
        msm, mrm, itm = model(ids, features, locations, segments, text_mask,
                              image_mask, joint_mask, lm_labels, image_label,
                              image_target, itm_labels)
        (msm + mrm + itm).sum().backward()
        optimizer.step()

    return [_time_original(args, model, step, heads="dense")]


def _time_original(args, model, step, heads):
    """Times `step()` of the authors' model between two matmul peaks."""
    import torch

    peaks = [matmul_peak(_Matmul(torch.matmul, torch.from_numpy),
                         lambda t: t.numpy())]
    times = []
    for i in range(args.warmup + args.steps):
        if i == args.warmup:
            cpu = _cpu_seconds()
        start = time.perf_counter()
        step()
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    cpu = _cpu_seconds() - cpu
    peaks.append(matmul_peak(_Matmul(torch.matmul, torch.from_numpy),
                             lambda t: t.numpy()))
    return {"side": "original", "task": args.task, "heads": heads,
            "optimizer": (args.original_optimizer if args.task != "scoring"
                          else None),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "peak_gflops": max(peaks) / 1e9,
            "peak_rss_gib": _peak_rss_gib(),
            "import_rss_gib": args.import_rss_gib,
            "tensorflow_imported": "tensorflow" in sys.modules,
            "parameters": sum(p.numel() for p in model.parameters()),
            **_stats(times, args.batch_size, cpu)}


def _original_matching(args, modules, optimization, bert_config, fields):
    """The authors' retrieval finetuning step or their scoring forward.

    Their `InterBertForVLTasks` as their `train_tasks.py` drives it for
    retrieval (`task_utils.ForwardModelsTrain`, task type of Flickr30K):
    the four pairs of each caption flattened into the batch, 2-way
    cross-entropy on the matching head's `vil_binary_prediction`, backward,
    `BertAdam` (4e-5, `warmup_constant`, per-parameter clipping to 1, decay
    0.01). The EMA of weights their finetuning keeps is left out, here as on
    our side. `scoring`: the same forward in `eval()` mode under
    `torch.no_grad()`, the match probability of every pair.
    """
    import torch

    model = modules.InterBertForVLTasks(bert_config, num_labels=1)
    B = args.batch_size
    T, S = TASK_SHAPES[args.task]
    batch = benchmark_batch(B, fields["vocab_size"], fields["v_feature_size"],
                            task=args.task)
    ids = torch.from_numpy(batch["token_ids"]).long()
    features = torch.from_numpy(batch["region_features"])
    locations = torch.from_numpy(batch["region_locations"])
    segments = torch.zeros_like(ids)
    text_mask = torch.ones(B, T, dtype=torch.long)
    image_mask = torch.ones(B, S, dtype=torch.long)
    co_attention_mask = torch.zeros(B, S, T)
    joint_mask = torch.cat([image_mask, text_mask], 1)
    labels = torch.from_numpy(batch["itm_labels"]).long()
    inputs = (ids, features, locations, segments, text_mask, image_mask,
              co_attention_mask, joint_mask)

    if args.task == "scoring":
        model.eval()

        def step():
            with torch.no_grad():
                binary = model(*inputs)[2]
                torch.softmax(binary, -1)[:, 0].numpy()
    else:
        model.train()
        if args.original_optimizer == "bertadam":
            optimizer = optimization.BertAdam(
                model.parameters(), lr=4e-5, warmup=0.1, t_total=100000,
                schedule="warmup_constant", weight_decay=0.01,
                max_grad_norm=1.0)
        else:
            optimizer = torch.optim.AdamW(model.parameters(), lr=4e-5,
                                          weight_decay=0.01)
        loss_fn = torch.nn.CrossEntropyLoss(ignore_index=-1)

        def step():
            optimizer.zero_grad()
            binary = model(*inputs)[2]
            loss_fn(binary.view(-1, 2), labels.view(-1)).backward()
            optimizer.step()

    return [_time_original(args, model, step, heads="itm")]


# === Ours (child process) ===

def _backbone_inputs(batch):
    """Our backbone's six inputs for a `benchmark_batch` (no padding)."""
    import numpy as np

    B, T = batch["token_ids"].shape
    S = batch["region_features"].shape[1]
    return {
        "token_ids": batch["token_ids"],
        "segment_ids": np.zeros((B, T), "int32"),
        "text_mask": np.ones((B, T), "int32"),
        "region_features": batch["region_features"],
        "region_locations": batch["region_locations"],
        "region_mask": np.ones((B, S), "int32"),
    }


def our_batches(batch_size, config):
    """`{heads: (x, y)}` for the `targets` and `dense` steps, numpy."""
    import numpy as np

    B, T, S = batch_size, TEXT_LEN, SLOTS
    batch = benchmark_batch(B, config["vocabulary_size"],
                            config["image_feature_dim"])
    x = _backbone_inputs(batch)
    msm_weights = np.zeros((B, T), "float32")
    msm_weights[:, MSM_TARGETS] = 1
    mrm_weights = np.zeros((B, S), "float32")
    mrm_weights[:, MRM_TARGET_SLOTS] = 1
    targets = np.concatenate(
        [np.zeros((B, 1, NUM_CLASSES), "float32"), batch["class_probs"]], 1)
    dense_y = {
        "msm_labels": (x["token_ids"] * msm_weights).astype("int32"),
        "msm_weights": msm_weights,
        "mrm_targets": targets * mrm_weights[..., None],
        "mrm_weights": mrm_weights,
        "itm_labels": batch["itm_labels"],
    }
    # As `pretraining_dataset` gives them: positions first, padded with
    # weight-0 entries to MSM_WIDTH / MRM_WIDTH.
    msm_positions = np.zeros((B, MSM_WIDTH), "int32")
    msm_positions[:, :len(MSM_TARGETS)] = MSM_TARGETS
    pad = [p for p in range(T) if p not in MSM_TARGETS]
    msm_positions[:, len(MSM_TARGETS):] = pad[:MSM_WIDTH - len(MSM_TARGETS)]
    mrm_positions = np.zeros((B, MRM_WIDTH), "int32")
    mrm_positions[:, :len(MRM_TARGET_SLOTS)] = MRM_TARGET_SLOTS
    take = np.take_along_axis
    targets_y = {
        "msm_labels": take(dense_y["msm_labels"], msm_positions, 1),
        "msm_weights": take(msm_weights, msm_positions, 1),
        "mrm_targets": take(dense_y["mrm_targets"], mrm_positions[..., None], 1),
        "mrm_weights": take(mrm_weights, mrm_positions, 1)
        * (np.arange(MRM_WIDTH) < len(MRM_TARGET_SLOTS)),
        "itm_labels": batch["itm_labels"],
    }
    targets_x = dict(x, msm_positions=msm_positions,
                     mrm_positions=mrm_positions)
    return {"targets": (targets_x, targets_y), "dense": (x, dense_y)}


def ours_worker(args):
    import keras

    from keras_interbert import InterBERTBackbone
    from keras_interbert import InterBERTPretrainer
    from keras_interbert.optimizers import pretraining_optimizer
    from keras_interbert.presets import preset_backbone_config

    args.import_rss_gib = _rss_gib()
    keras.config.set_dtype_policy(args.dtype)
    keras.utils.set_random_seed(0)
    config = preset_backbone_config(CONFIGS[args.config])
    if args.task != "pretraining":
        return _ours_matching(args, config)
    model = InterBERTPretrainer(InterBERTBackbone(**config),
                                num_region_classes=NUM_CLASSES)
    model.compile(optimizer=pretraining_optimizer(bert_variable_patterns=()),
                  jit_compile=args.jit == "true")
    B = args.batch_size

    ops = keras.ops
    matmul = _Matmul(ops.matmul, ops.convert_to_tensor)
    peaks = [matmul_peak(matmul, ops.convert_to_numpy)]
    results = []
    for heads in args.heads:
        x, y = our_batches(B, config)[heads]
        first, times, cpu = _time_fit(model, x, y, args)
        results.append({
            "side": args.variant, "task": "pretraining", "heads": heads,
            "dtype": args.dtype,
            "first_step_seconds": first,
            "peak_rss_gib": _peak_rss_gib(),
            "import_rss_gib": args.import_rss_gib,
            "parameters": model.count_params(),
            **_stats(times, B, cpu)})
    peaks.append(matmul_peak(matmul, ops.convert_to_numpy))
    for r in results:
        r["peak_gflops"] = max(peaks) / 1e9
    return results


def _time_fit(model, x, y, args):
    """`(first step s, timed step times, their CPU s)` of `model.fit` on
    the batch `(x, y)` repeated, `args.warmup` steps then `args.steps`."""
    import keras
    import numpy as np
    import tensorflow as tf

    marks = []

    class Timer(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            marks.append((time.perf_counter(), _cpu_seconds()))

    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    start = time.perf_counter()
    model.fit(ds, steps_per_epoch=args.warmup + args.steps, epochs=1,
              verbose=0, shuffle=False, callbacks=[Timer()])
    times = list(np.diff([t for t, _ in marks[args.warmup - 1:]]))
    cpu = marks[-1][1] - marks[args.warmup - 1][1]
    return marks[0][0] - start, times, cpu


def _matching_inputs(batch_size, config, task):
    """`(x, labels)` of `retrieval`/`scoring` for our models, numpy."""
    batch = benchmark_batch(batch_size, config["vocabulary_size"],
                            config["image_feature_dim"], task=task)
    return _backbone_inputs(batch), batch["itm_labels"]


def _ours_matching(args, config):
    """Our retrieval finetuning step (`InterBERTRetriever.fit`) or scoring.

    `retrieval`: `InterBERTRetriever` compiled with `finetuning_optimizer()`
    (4e-5, per-variable clipping to 1, decay 0.01; no EMA, as on the
    authors' side), the four pairs per caption flattened as
    `retrieval_training_dataset` lays them out. `scoring`: the matching
    logits alone (`PairScorer`'s cut-down model) by `predict_on_batch`, and
    the match probability of every pair, as `score_grid` runs it.
    """
    import keras

    from keras_interbert import InterBERTBackbone
    from keras_interbert import InterBERTRetriever
    from keras_interbert.training import finetuning_optimizer

    B = args.batch_size
    model = InterBERTRetriever(InterBERTBackbone(**config))
    x, labels = _matching_inputs(B, config, args.task)
    ops = keras.ops
    matmul = _Matmul(ops.matmul, ops.convert_to_tensor)
    peaks = [matmul_peak(matmul, ops.convert_to_numpy)]
    if args.task == "retrieval":
        model.compile(optimizer=finetuning_optimizer(),
                      jit_compile=args.jit == "true")
        first, times, cpu = _time_fit(model, x, labels, args)
    else:
        scorer = keras.Model(model.input, model.output["itm_logits"])
        scorer.jit_compile = args.jit == "true"
        times, start = [], time.perf_counter()
        for i in range(args.warmup + args.steps):
            if i == args.warmup:
                cpu = _cpu_seconds()
            begin = time.perf_counter()
            logits = scorer.predict_on_batch(x)
            ops.convert_to_numpy(ops.softmax(logits, axis=-1)[:, 0])
            if i == 0:
                first = time.perf_counter() - start
            if i >= args.warmup:
                times.append(time.perf_counter() - begin)
        cpu = _cpu_seconds() - cpu
    peaks.append(matmul_peak(matmul, ops.convert_to_numpy))
    return [{"side": args.variant, "task": args.task, "heads": "itm",
             "dtype": args.dtype, "first_step_seconds": first,
             "peak_rss_gib": _peak_rss_gib(),
             "import_rss_gib": args.import_rss_gib,
             "parameters": model.count_params(),
             "peak_gflops": max(peaks) / 1e9,
             **_stats(times, B, cpu)}]


# === Orchestration ===

def machine_state():
    info = {"platform": platform.platform(), "cpus": os.cpu_count(),
            "load_average": [round(v, 2) for v in os.getloadavg()]}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        fields = dict(line.split(":", 1) for line in out.splitlines()
                      if ":" in line)
        info["model"] = fields.get("Model name", "").strip()
        flags = fields.get("Flags", "").split()
        info["vector_flags"] = [f for f in ("avx", "avx2", "fma", "avx512f",
                                            "avx512_bf16", "amx_bf16")
                                if f in flags]
    except OSError:
        pass
    return info


def schedule(variants, rounds, every, with_original):
    """The order of children: the original around every `every` of ours."""
    order = []
    for _ in range(rounds):
        for i, variant in enumerate(variants):
            if with_original and i % every == 0:
                order.append("original")
            order.append(variant)
    if with_original:
        order.append("original")
    return order


def run_child(side, config, args):
    if side == "original":
        from keras_interbert.presets import preset_backbone_config

        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="torch")
        extra = ["--original", args.original,
                 "--original-optimizer", args.original_optimizer,
                 "--backbone-config",
                 json.dumps(preset_backbone_config(CONFIGS[config]))]
    else:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                   KERAS_BACKEND=VARIANTS[side]["KERAS_BACKEND"])
        extra = ["--jit", VARIANTS[side]["jit"], "--heads", *args.heads]
    cmd = [sys.executable, os.path.abspath(__file__), "--worker",
           "--variant", side, "--config", config, "--dtype", args.dtype,
           "--task", args.task,
           "--batch-size", str(args.batch_size), "--steps", str(args.steps),
           "--warmup", str(args.warmup), *extra]
    load_before = os.getloadavg()[0]
    cpu_before = host_cpu_times()
    started = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    stolen = stolen_share(cpu_before, host_cpu_times())
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if out.returncode or not lines:
        tail = (out.stderr.strip().splitlines() or ["(no output)"])[-3:]
        print(f"{config:9} {args.task:11} {side:15} FAILED: "
              f"{' | '.join(tail)}", flush=True)
        return []
    results = json.loads(lines[0][len("RESULT "):])
    for r in results:
        r.update(config=config, load_average_before=round(load_before, 2),
                 load_average_after=round(os.getloadavg()[0], 2),
                 child_seconds=round(time.perf_counter() - started, 1),
                 stolen_cpu_share=stolen)
    return results


def host_cpu_times(path="/proc/stat"):
    """The machine's CPU time so far, `(stolen, total)` in clock ticks, from
    the first line of /proc/stat; `None` where there is none (not Linux)."""
    try:
        with open(path) as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal (guest time is already
    # counted in user and nice).
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def stolen_share(before, after):
    """The share of the machine's CPU time that its hypervisor gave to other
    guests between two `host_cpu_times()` readings (a virtual machine's
    "steal"): rows timed while it is high were measured on fewer cores than
    they asked for. `None` where it cannot be read."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def add_ratios(results, configs, tasks=("pretraining",)):
    """Utilisation of every row; ours: ratio to the originals either side.

    Utilisation counts the model FLOPs the task needs, the same on both
    sides; where the authors' forward computes more (unused head logits in
    `retrieval` and `scoring`, last-layer rows in `scoring`), the extra is
    reported in
    `unused_gflop_per_step` and not counted.
    """
    from keras_interbert.presets import preset_backbone_config

    for r in results:
        config = preset_backbone_config(CONFIGS[r["config"]])
        task = r.get("task", "pretraining")
        flops = step_flops(config, r["batch_size"], r["heads"], task,
                           side=r["side"])
        r["model_gflop_per_step"] = flops / 1e9
        r["achieved_gflops"] = flops / r["step_seconds"] / 1e9
        r["utilisation"] = r["achieved_gflops"] / r["peak_gflops"]
        if r["side"] == "original" and task != "pretraining":
            r["unused_gflop_per_step"] = original_unused_flops(
                config, task, r["batch_size"]) / 1e9
    for config, task in [(c, t) for c in configs for t in tasks]:
        rows = [r for r in results if r["config"] == config
                and r.get("task", "pretraining") == task]
        for i, r in enumerate(rows):
            if r["side"] == "original":
                continue
            before = [o for o in rows[:i] if o["side"] == "original"][-1:]
            after = [o for o in rows[i + 1:] if o["side"] == "original"][:1]
            around = before + after
            if around:
                reference = sum(o["pairs_per_second"] for o in around) / len(
                    around)
                r["original_pairs_per_second"] = reference
                r["ratio"] = r["pairs_per_second"] / reference
                r["memory_ratio"] = r["peak_rss_gib"] / (
                    sum(o["peak_rss_gib"] for o in around) / len(around))


def _figure(value):
    """A GFLOP count as the table shows it: whole numbers from 10 up."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def _memory(r):
    """'after imports | peak above them' of a row (— for older reports)."""
    if "import_rss_gib" not in r:
        return "— | —"
    return (f"{r['import_rss_gib']:.2f} | "
            f"{r['peak_rss_gib'] - r['import_rss_gib']:.2f}")


def _stolen(row):
    share = row.get("stolen_cpu_share")
    return "—" if share is None else f"{100 * share:.0f}%"


def markdown(report):
    lines = [
        "| config | task | run | heads | dtype | pairs/s | "
        "× original (either side) | "
        "GFLOP/step | GFLOP/s | matmul peak GFLOP/s | utilisation | "
        "peak RSS GiB | RSS after imports | peak above imports | "
        "CPU s/step | load avg | CPU stolen |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        ratio = f"**{r['ratio']:.2f}**" if "ratio" in r else "—"
        lines.append(
            f"| {r['config']} | {r.get('task', 'pretraining')} | "
            f"{LABELS[r['side']]} | {r['heads']} | "
            f"{r.get('dtype') or 'float32'} | "
            f"{r['pairs_per_second']:.2f} | {ratio} | "
            f"{_figure(r['model_gflop_per_step'])} | "
            f"{r['achieved_gflops']:.1f} | "
            f"{r['peak_gflops']:.0f} | {100 * r['utilisation']:.0f}% | "
            f"{r['peak_rss_gib']:.2f} | {_memory(r)} | "
            f"{r['cpu_seconds_per_step']:.2f} | "
            f"{r['load_average_before']:.1f}–"
            f"{r['load_average_after']:.1f} | {_stolen(r)} |")
    m = report["machine"]
    lines += ["", f"Machine: {m.get('model', '?')}, {m['cpus']} CPUs, "
              f"flags {' '.join(m.get('vector_flags', []))}; load average "
              f"{m['load_average']} at the start, "
              f"{report['load_average_end']} at the end. "
              f"Command: `{report['command']}`."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--original", default=None, metavar="DIR",
                   help="a checkout of the authors' repository (bertmodel/, "
                        "config/); timed in the same run")
    p.add_argument("--original-optimizer", default="bertadam",
                   choices=["bertadam", "torch_adamw"])
    p.add_argument("--original-every", type=int, default=2,
                   help="run the original again after this many of ours")
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                   choices=list(VARIANTS),
                   help="backend variants (default: %(default)s; "
                        "torch_compile: PyTorch with jit_compile=True, "
                        "torch.compile, which compiles for minutes first)")
    p.add_argument("--configs", nargs="+", default=["published"],
                   choices=list(CONFIGS))
    p.add_argument("--tasks", nargs="+", default=["pretraining"],
                   choices=list(TASKS),
                   help="pretraining (MSM+MRM+ITM step), retrieval (the "
                        "finetuning step, four pairs per caption), scoring "
                        "(the cross-encoder's forward pass)")
    p.add_argument("--heads", nargs="+", default=["targets", "dense"],
                   choices=["targets", "dense"],
                   help="forms of the pretraining step")
    p.add_argument("--dtypes", nargs="+", default=["float32"])
    p.add_argument("--batch-size", type=int, default=8,
                   help="pairs per step (retrieval: a multiple of 4, the "
                        "four pairs of each caption)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", default=None,
                   help="write OUT.json and OUT.md (atomically)")
    p.add_argument("--json", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    p.add_argument("--jit", default="false", help=argparse.SUPPRESS)
    p.add_argument("--task", default="pretraining", help=argparse.SUPPRESS)
    p.add_argument("--backbone-config", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        if args.variant == "original":
            results = original_worker(args)
        else:
            results = ours_worker(args)
        for r in results:
            r.setdefault("batch_size", args.batch_size)
        print("RESULT " + json.dumps(results), flush=True)
        return results
    if args.warmup < 1:
        p.error("--warmup must be at least 1 (the first step compiles)")
    if "retrieval" in args.tasks and args.batch_size % PAIRS_PER_CAPTION:
        p.error(f"--batch-size {args.batch_size}: retrieval needs a multiple "
                f"of {PAIRS_PER_CAPTION} (the four pairs of each caption)")
    if args.original and not os.path.isdir(
            os.path.join(args.original, "bertmodel")):
        p.error(f"--original {args.original}: no bertmodel/ folder there")
    machine = machine_state()
    print(f"machine: {machine}", flush=True)
    results = []
    for config, task, dtype in [(c, t, d) for c in args.configs
                                for t in args.tasks for d in args.dtypes]:
        args.dtype, args.task = dtype, task
        for side in schedule(args.variants, args.rounds,
                             args.original_every, bool(args.original)):
            for r in run_child(side, config, args):
                results.append(r)
                print(f"{config:9} {task:11} {side:15} {r['heads']:8} "
                      f"{r['pairs_per_second']:7.2f} pairs/s  "
                      f"step {r['step_seconds']:.3f} s  "
                      f"peak {r['peak_gflops']:.0f} GFLOP/s  "
                      f"RSS {r['peak_rss_gib']:.2f} GiB  "
                      f"load {r['load_average_before']:.1f}", flush=True)
    add_ratios(results, args.configs, args.tasks)
    report = {"command": " ".join(["benchmarks/training_throughput.py"]
                                  + list(sys.argv[1:] if argv is None else argv)),
              "machine": machine,
              "load_average_end": [round(v, 2) for v in os.getloadavg()],
              "results": results}
    table = markdown(report)
    print(table)
    from keras_interbert.utils.atomic import write_json_atomically
    from keras_interbert.utils.atomic import write_text_atomically

    if args.json:
        write_json_atomically(args.json, report)
    if args.out:
        folder = os.path.dirname(os.path.abspath(args.out))
        os.makedirs(folder, exist_ok=True)
        write_json_atomically(args.out + ".json", report)
        write_text_atomically(args.out + ".md", table)
    return report


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main()
