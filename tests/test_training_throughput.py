"""The model-FLOP count of benchmarks/training_throughput.py.

The benchmark's utilisation figures divide `model_flops_per_pair` by the step
time; here the formula is checked against an independent count: PyTorch's
`FlopCounterMode` counting every matrix product the pretrainer's forward pass
dispatches (the PyTorch backend only; no timing is asserted).
"""
import importlib.util
import os

import keras
import numpy as np
import pytest

from conftest import BACKEND
from conftest import REPO_ROOT
from conftest import TINY_BACKBONE
from conftest import random_backbone_inputs


def _benchmark_module(name="training_throughput"):
    path = os.path.join(REPO_ROOT, "benchmarks", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(BACKEND != "torch",
                    reason="counts the products PyTorch dispatches")
@pytest.mark.parametrize("positions", [False, True])
def test_flop_formula_matches_counted_matrix_products(positions):
    from torch.utils.flop_counter import FlopCounterMode

    from keras_interbert import InterBERTBackbone
    from keras_interbert import InterBERTPretrainer

    tt = _benchmark_module()
    # With attention dropout (the published model's; inactive here, in
    # inference) Keras computes attention with two einsums, which the
    # counter sees; without, with a fused kernel it does not count.
    config = dict(TINY_BACKBONE)
    classes, B, T, R = 11, 3, 7, 5
    model = InterBERTPretrainer(InterBERTBackbone(**config),
                                num_region_classes=classes)
    x = random_backbone_inputs(batch=B, text_len=T, regions=R,
                               feature_dim=config["image_feature_dim"],
                               vocabulary_size=config["vocabulary_size"])
    msm, mrm = None, None
    if positions:
        msm, mrm = 4, 2
        x["msm_positions"] = np.tile(np.arange(msm, dtype="int32"), (B, 1))
        x["mrm_positions"] = np.tile(np.arange(1, mrm + 1, dtype="int32"),
                                     (B, 1))
    model(x)  # build outside the count
    counter = FlopCounterMode(display=False)
    with counter:
        outputs = model(x, training=False)
    assert tuple(outputs["msm_logits"].shape) == (
        B, msm or T, config["vocabulary_size"])
    expected = B * tt.model_flops_per_pair(
        config, text_len=T, slots=R, num_classes=classes,
        msm_positions=msm, mrm_positions=mrm)
    assert counter.get_total_flops() == expected


def test_original_config_fields_match_the_published_file():
    """Our published preset in the authors' field names, and the benchmark
    batch's targets in both forms (positions and dense)."""
    from keras_interbert.presets import preset_backbone_config

    tt = _benchmark_module()
    fields = tt.original_config(preset_backbone_config("interbert_base_en"))
    assert fields["hidden_size"] == 768
    assert fields["num_hidden_layers"] == 6
    assert fields["t_num_hidden_layers"] == 6
    assert fields["v_num_hidden_layers"] == 6
    assert fields["v_num_attention_heads"] == 8
    assert fields["bi_hidden_size"] == 1024
    assert fields["vocab_size"] == 30522
    assert fields["v_target_size"] == 1601
    # The benchmark's target positions are what the pipeline would feed.
    assert tt.MSM_WIDTH % 8 == 0 and tt.MSM_WIDTH >= len(tt.MSM_TARGETS)
    assert tt.MRM_WIDTH % 4 == 0 and tt.MRM_WIDTH >= len(tt.MRM_TARGET_SLOTS)
    batches = tt.our_batches(2, preset_backbone_config("interbert_tiny_en"))
    (tx, ty), (dx, dy) = batches["targets"], batches["dense"]
    assert ty["msm_weights"].sum() == dy["msm_weights"].sum() == 2 * 9
    assert ty["mrm_weights"].sum() == dy["mrm_weights"].sum() == 2 * 4
    np.testing.assert_array_equal(
        np.take_along_axis(dy["msm_labels"], tx["msm_positions"], 1),
        ty["msm_labels"])
    assert keras.config.backend() == BACKEND


def test_grouped_adamw_steps_as_keras_adamw_with_clipped_gradients():
    """The speed paths of `GroupedAdamW` (TensorFlow's fused Adam kernel,
    the one-pass clipping) take Keras AdamW's steps on the clipped
    gradients."""
    from keras_interbert.optimizers import GroupedAdamW

    rng = np.random.default_rng(0)
    shapes = [(5, 3), (7,), (2, 2, 2)]
    start = [rng.normal(size=s).astype("float32") for s in shapes]
    grads = [[rng.normal(size=s).astype("float32") * scale
              for s, scale in zip(shapes, (10.0, 0.1, 1.0))]
             for _ in range(3)]

    def clip(g):
        return g * (1.0 / max(np.sqrt(np.sum(g.astype("float64") ** 2)), 1.0))

    ours = [keras.Variable(v, name=f"w{i}") for i, v in enumerate(start)]
    theirs = [keras.Variable(v, name=f"w{i}") for i, v in enumerate(start)]
    grouped = GroupedAdamW(learning_rate=1e-2, weight_decay=0.01,
                           clipnorm=1.0, epsilon=1e-6)
    reference = keras.optimizers.AdamW(learning_rate=1e-2, weight_decay=0.01,
                                       epsilon=1e-6)
    for step in grads:
        grouped.apply([keras.ops.convert_to_tensor(g) for g in step], ours)
        reference.apply([keras.ops.convert_to_tensor(clip(g).astype("float32"))
                         for g in step], theirs)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a),
                                   keras.ops.convert_to_numpy(b),
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.skipif(BACKEND != "torch",
                    reason="counts the products PyTorch dispatches")
def test_matching_flop_formula_matches_counted_matrix_products():
    """The retrieval/scoring FLOPs (encoder, poolers, matching classifier;
    no masked-segment or masked-region logits; the last text and image
    layers at position 0 alone) against the products the retriever's
    forward pass dispatches."""
    from torch.utils.flop_counter import FlopCounterMode

    from keras_interbert import InterBERTBackbone
    from keras_interbert import InterBERTRetriever

    tt = _benchmark_module()
    config = dict(TINY_BACKBONE)
    B, T, R = 4, 6, 9
    model = InterBERTRetriever(InterBERTBackbone(**config))
    x = random_backbone_inputs(batch=B, text_len=T, regions=R,
                               feature_dim=config["image_feature_dim"],
                               vocabulary_size=config["vocabulary_size"])
    model(x)
    counter = FlopCounterMode(display=False)
    with counter:
        outputs = model(x, training=False)
    assert tuple(outputs["itm_logits"].shape) == (B, 2)
    expected = B * tt.model_flops_per_pair(config, text_len=T, slots=R,
                                           msm_positions=0, mrm_positions=0,
                                           pooled_only=True)
    assert counter.get_total_flops() == expected
    # The backbone's full call (every row of the last layers) counts as the
    # formula without `pooled_only`, less the matching classifier.
    counter = FlopCounterMode(display=False)
    with counter:
        model.backbone(x, training=False)
    full = B * tt.model_flops_per_pair(config, text_len=T, slots=R,
                                       msm_positions=0, mrm_positions=0)
    classifier = B * 2 * model.backbone.pooled_dim * 2
    assert counter.get_total_flops() == full - classifier > expected


@pytest.mark.parametrize("task", ["retrieval", "scoring"])
def test_matching_worker_times_our_step(task):
    """One benchmark child of the retrieval step and of scoring, in this
    process at the tiny configuration: it trains (or scores) the batch of
    the authors' shapes and reports what the table needs. With the `--jit`
    the benchmark gives this backend's child (compiled under JAX: run op
    by op, JAX compiles each operation on its own, about 600 compilations
    and 30 CPU seconds for this test against 17)."""
    from keras_interbert.presets import preset_backbone_config

    tt = _benchmark_module()
    rows = tt.main(["--worker", "--variant", BACKEND, "--config", "tiny",
                    "--task", task, "--batch-size", "8", "--steps", "2",
                    "--warmup", "1", "--jit", tt.VARIANTS[BACKEND]["jit"]])
    assert len(rows) == 1
    row = rows[0]
    assert row["task"] == task and row["heads"] == "itm"
    assert len(row["step_times"]) == 2 and row["step_seconds"] > 0
    assert row["pairs_per_second"] == pytest.approx(8 / row["step_seconds"])
    config = preset_backbone_config("interbert_tiny_en")
    x, labels = tt._matching_inputs(8, config, task)
    assert x["token_ids"].shape == (8, 30)
    assert x["region_features"].shape == (8, 102, config["image_feature_dim"])
    # The four pairs of each caption: matched, then three mismatches.
    np.testing.assert_array_equal(labels, [0, 1, 1, 1, 0, 1, 1, 1])
    # Training counts backward as twice the forward (every position of the
    # last layers: the step runs them); scoring the pooled-only forward.
    forward = {pooled: 8 * tt.model_flops_per_pair(
        config, 30, 102, msm_positions=0, mrm_positions=0,
        pooled_only=pooled) for pooled in (False, True)}
    assert forward[True] < forward[False]
    assert tt.step_flops(config, 8, "itm", "retrieval") == 3 * forward[False]
    assert tt.step_flops(config, 8, "itm", "scoring") == forward[True]
    assert tt.original_unused_flops(config, task, 8) > 0


def test_retrieval_batch_must_hold_whole_captions(capsys):
    tt = _benchmark_module()
    with pytest.raises(SystemExit):
        tt.main(["--tasks", "retrieval", "--batch-size", "6",
                 "--configs", "tiny", "--variants", BACKEND])
    assert "multiple of 4" in capsys.readouterr().err


@pytest.mark.once
def test_stolen_cpu_share_of_a_row(tmp_path):
    """Each row's share of CPU time the hypervisor gave to other guests,
    from /proc/stat's steal column (the eighth number of its `cpu` line)."""
    tt = _benchmark_module()
    stat = tmp_path / "stat"
    stat.write_text("cpu  600 0 100 250 10 0 0 40 0 0\ncpu0 1 2 3\n")
    before = tt.host_cpu_times(stat)
    assert before == (40, 1000)
    stat.write_text("cpu  1400 0 200 260 10 0 0 130 0 0\n")
    after = tt.host_cpu_times(stat)
    assert after == (130, 2000)
    assert tt.stolen_share(before, after) == 0.09
    assert tt.stolen_share(before, None) is None
    assert tt.stolen_share(after, before) is None
    stat.unlink()
    assert tt.host_cpu_times(stat) is None
    assert tt._stolen({"stolen_cpu_share": 0.09}) == "9%"
    assert tt._stolen({}) == "—"


@pytest.mark.one_session
def test_pretraining_step_benchmark_times_the_recipes_step(tmp_path):
    """benchmarks/pretraining_step.py stops the pretraining recipe at `fit`,
    times the step it built on its own first batch, and gives `fit` back."""
    from keras_interbert.data.synthetic import write_dataset

    data = str(tmp_path / "data")
    write_dataset(data, num_images=24, seed=0, feature_dim=16,
                  languages=("en",), save_images=False, progress=False)
    fit = keras.Model.fit
    bench = _benchmark_module("pretraining_step")
    result = bench.main(["--data", data, "--steps", "2", "--warmup", "1",
                         "--", "--preset", "interbert_tiny_en",
                         "--batch-size", "4", "--max-regions", "4"])
    assert keras.Model.fit is fit
    assert result["steps"] == 2 and result["step_ms"] > 0
    assert result["pipeline_ms_per_batch"] > 0

    # The finetuning recipe's step, from a pretrained file of the data's
    # feature width (without one, a clear error).
    with pytest.raises(SystemExit):
        bench.main(["--recipe", "finetune_retrieval", "--data", data])
    from keras_interbert import InterBERTBackbone
    from keras_interbert import InterBERTPretrainer
    from keras_interbert.presets import preset_backbone_config

    init = str(tmp_path / "pretrained.keras")
    InterBERTPretrainer(InterBERTBackbone(**dict(
        preset_backbone_config("interbert_tiny_en"), image_feature_dim=16)),
        num_region_classes=49).save(init)
    result = bench.main(["--recipe", "finetune_retrieval", "--data", data,
                         "--init", init, "--steps", "2", "--warmup", "1",
                         "--", "--batch-size", "2", "--max-regions", "4",
                         "--itc-weight", "0"])
    assert keras.Model.fit is fit
    assert result["steps"] == 2 and result["step_ms"] > 0
    if BACKEND != "tensorflow":
        with pytest.raises(SystemExit):
            bench.main(["--data", data, "--profile"])


# A stand-in for the authors' `bertmodel` package: the two classes and the
# optimizer the benchmark's child builds, a few parameters each.
_STAND_IN_MODULES = '''
import torch


class BertConfig:
    @classmethod
    def from_dict(cls, fields):
        config = cls()
        config.__dict__.update(fields)
        return config


class InterBertForMultiModalPreTraining(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(config.hidden_size))

    def forward(self, ids, features, *rest):
        loss = (self.weight.sum() * features.mean()) ** 2
        return loss, loss, loss
'''


@pytest.mark.skipif(BACKEND != "torch", reason="the original's child runs "
                    "PyTorch")
def test_original_child_imports_neither_tensorflow_nor_keras(tmp_path):
    """The authors' child process gets its configuration from the parent:
    importing keras_interbert there would load TensorFlow and Keras and add
    their memory (about a gigabyte resident) to the original's figures."""
    import json
    import subprocess
    import sys

    from keras_interbert.presets import preset_backbone_config

    package = tmp_path / "bertmodel"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "modules.py").write_text(_STAND_IN_MODULES)
    (package / "optimization.py").write_text(
        "from torch.optim import SGD\n\n\n"
        "def BertAdam(parameters, lr, **options):\n"
        "    return SGD(parameters, lr=lr)\n")
    config = preset_backbone_config("interbert_tiny_en")
    script = os.path.join(REPO_ROOT, "benchmarks", "training_throughput.py")
    out = subprocess.run(
        [sys.executable, script, "--worker", "--variant", "original",
         "--config", "tiny", "--original", str(tmp_path),
         "--backbone-config", json.dumps(config), "--batch-size", "2",
         "--steps", "1", "--warmup", "1"],
        capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONPATH=""))
    assert out.returncode == 0, out.stderr[-2000:]
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][0]
    (row,) = json.loads(line[len("RESULT "):])
    assert row["side"] == "original"
    assert row["tensorflow_imported"] is False
    hidden = _benchmark_module().original_config(config)["hidden_size"]
    assert row["parameters"] == hidden
    assert 0 < row["import_rss_gib"] <= row["peak_rss_gib"]


# An optimised HLO module as XLA's CPU compiler dumps it (abridged): a
# fusion holding a dot, one holding erf, a plain instruction, and a fusion
# of element-wise ops under the optimizer's name scope.
_HLO_DUMP = '''HloModule jit_train_step, is_scheduled=true

%fused_computation.145 (param_0.181: f32[30522,128], param_1.184: f32[128,64]) -> f32[30522,64] {
  %param_0.181 = f32[30522,128]{1,0} parameter(0)
  %param_1.184 = f32[128,64]{1,0} parameter(1)
  ROOT %dot.155 = f32[30522,64]{1,0} dot(%param_0.181, %param_1.184), lhs_contracting_dims={1}, rhs_contracting_dims={0}, metadata={op_name="jit(train_step)/transpose(jvp(msm_head))/token_embedding/dot_general"}
}

%fused_gelu (p.1: f32[8,64]) -> f32[8,64] {
  %p.1 = f32[8,64]{1,0} parameter(0)
  %erf.3 = f32[8,64]{1,0} erf(%p.1)
  ROOT %multiply.9 = f32[8,64]{1,0} multiply(%p.1, %erf.3)
}

%fused_adam (p.2: f32[64], p.3: f32[64]) -> f32[64] {
  %p.2 = f32[64]{0} parameter(0)
  %p.3 = f32[64]{0} parameter(1)
  ROOT %subtract.4 = f32[64]{0} subtract(%p.2, %p.3)
}

ENTRY %main.332 (a: f32[30522,128], b: f32[128,64], c: f32[8,64], d: f32[64]) -> (f32[30522,64], f32[8,64], f32[64]) {
  %a = f32[30522,128]{1,0} parameter(0)
  %b = f32[128,64]{1,0} parameter(1)
  %c = f32[8,64]{1,0} parameter(2)
  %d = f32[64]{0} parameter(3)
  %ynn_fusion.145 = f32[30522,64]{1,0} fusion(%a, %b), kind=kCustom, calls=%fused_computation.145, metadata={op_name="jit(train_step)/transpose(jvp(msm_head))/token_embedding/dot_general" stack_frame_id=565}, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}
  %multiply_fusion.2 = f32[8,64]{1,0} fusion(%c), kind=kLoop, calls=%fused_gelu, metadata={op_name="jit(train_step)/jvp(inter_bert_backbone)/text_stream_layer_0/feedforward_intermediate_dense/mul"}
  %subtract_fusion = f32[64]{0} fusion(%d, %d), kind=kLoop, calls=%fused_adam, metadata={op_name="jit(train_step)/pretraining_adamw/sub"}
  %copy.7 = f32[64]{0} copy(%d), metadata={op_name="jit(train_step)/jvp(inter_bert_backbone)/text_stream_layer_0/output_layer_norm/add"}
  ROOT %tuple.1 = (f32[30522,64]{1,0}, f32[8,64]{1,0}, f32[64]{0}) tuple(%ynn_fusion.145, %multiply_fusion.2, %subtract_fusion)
}
'''


@pytest.mark.once
def test_xla_profile_events_are_named_by_what_their_hlo_computes(tmp_path):
    """benchmarks/profile_step.py reads the train step's optimised HLO and
    puts each profiled XLA thunk into a category by its contents and its
    op_name scope."""
    ps = _benchmark_module("profile_step")
    (tmp_path / "module_0124.jit_train_step.cpu_after_optimizations.txt"
     ).write_text(_HLO_DUMP)
    # XLA's other dumps of the same module are not HLO text to read.
    (tmp_path / "module_0124.jit_train_step.cpu_after_optimizations"
     "-memory-usage-report.txt").write_text("Total bytes used: 1\n")
    modules = ps.hlo_instructions(str(tmp_path))
    assert set(modules) == {"jit_train_step"}
    table = modules["jit_train_step"]
    assert table["ynn_fusion.145"][0] == "dot"
    assert table["multiply_fusion.2"][0] == "erf"
    assert table["subtract_fusion"] == ("", "jit(train_step)/pretraining_adamw/sub")
    assert table["copy.7"][0] == ""

    events = [(name, f"{name}|{name}|jit_train_step", 0.5, "tf_XLAEigen/1")
              for name in ("ynn_fusion.145", "multiply_fusion.2",
                           "subtract_fusion", "copy.7")]
    events += [("ThunkExecutor::Execute (wait for completion)",
                "ThunkExecutor::Execute (wait for completion)", 4.0,
                "tf_XLAPjRtCpuClient/1"),
               ("BlockUntilReady", "BlockUntilReady", 3.0, "python")]
    summary = ps.summarise({"events": ps.attribute_hlo(events, modules),
                            "wall": 2.0, "covered": None, "steps": 1})
    assert summary["categories"] == {
        "matmul (vocabulary / class logits)": 0.5, "GELU": 0.5,
        "optimizer": 0.5, "layer norm": 0.5}
