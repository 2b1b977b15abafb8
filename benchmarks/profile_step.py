"""Where one pretraining step's time goes, by each backend's own profiler.

For each backend variant a fresh process builds `InterBERTPretrainer` (the
configuration and batch of `training_throughput.py`), runs `--warmup` steps
of `fit`, then `--steps` more under the backend's profiler:
`tf.profiler.experimental` (TensorFlow, TensorFlow + XLA), `jax.profiler`
(JAX) or `torch.profiler` (PyTorch). The trace's op events are put into
categories by op type and by the name scope of the layer that emitted them:

- `matmul (encoder)`: matrix products of the embeddings, transformer layers,
  poolers and matching head (forward and backward);
- `matmul (vocabulary / class logits)`: the products of the masked-segment
  decoder (tied word embeddings, 30,522 wide) and the masked-region decoder
  (1,601 wide);
- `layer norm`, `softmax`, `GELU`, `dropout`;
- `loss (log-softmax over vocabulary/classes)`;
- `optimizer`: the per-variable update (clipping, decay, Adam);
- `other ops`: everything else the profiler saw as an op (adds, reshapes,
  transposes, casts, gathers, copies);
The op times are self times summed over the threads that run ops (two
executor threads under TensorFlow), so they add up to more than the wall
time; shares are of the summed op time. Keras' own step overhead (Python,
callbacks, the data iterator) runs outside the ops: compare the wall time
with the op time per thread.

Under XLA (TensorFlow + XLA, JAX) the profiler sees the compiled program's
thunks: fusions and single HLO instructions, named `ynn_fusion.145`,
`dot.85` and the like. The child has XLA dump the optimised HLO of its
train step (`--xla_dump_to`), and each event is put into a category by what
its instruction computes: a fusion that contains a `dot` or `convolution`
is a matrix product; otherwise the instruction's `op_name` metadata (the
name scope of the Keras layer and op that emitted it, e.g.
`jit(train_step)/transpose(jvp(msm_head))/token_embedding/dot_general`)
decides as for TensorFlow, and `erf` inside a fusion means GELU. XLA's own
waiting and scheduling events (`BlockUntilReady`, `ThunkExecutor`, thread
pool awaits) are not op time.

    .venv/bin/python benchmarks/profile_step.py --out reports/profile_step
    .venv/bin/python benchmarks/profile_step.py --variants torch --configs tiny
"""
import argparse
import collections
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import training_throughput as tt  # noqa: E402

MATMUL_TYPES = ("matmul", "einsum", "aten::mm", "aten::bmm", "aten::addmm",
                "baddbmm", "dot", "gemm", "convolution")
# Framework events that enclose ops (counted through the ops inside them).
FRAMEWORK = ("parallelfor", "executorstate", "threadpoollistener",
             "iterator", "functionrun", "kernelanddevicefunc",
             # XLA's runtime: waits and the thunk scheduler.
             "blockuntilready", "thunkexecutor", "slinkythreadpool")
# XLA dumps the optimised HLO of the modules whose name matches (JAX's
# train step, TensorFlow's compiled `one_step_on_data`).
XLA_DUMP_MODULES = ".*(train_step|one_step_on).*"


def categorise(op_type, scope):
    """A category for one op event from its type and its name scope."""
    t, s = op_type.lower(), scope.lower()
    is_matmul = any(k in t for k in MATMUL_TYPES)
    # A product in the masked-segment or masked-region head that is not its
    # transform (dense + layer norm) is its decoder: the tied embedding's
    # `reverse` call, the TensorFlow step's in-place `msm_head/MatMul`, the
    # region-class `decoder`.
    head_logits = (("msm_head" in s or "mrm_head" in s)
                   and "transform" not in s)
    if is_matmul:
        return ("matmul (vocabulary / class logits)" if head_logits
                else "matmul (encoder)")
    if any(k in s for k in ("optimizer", "adam", "pretraining_adamw")):
        return "optimizer"
    if "layer_norm" in s or "layernorm" in t or "layer_norm" in t:
        return "layer norm"
    if "softmax" in t or "softmax" in s and "log" not in t:
        if "logsumexp" in s or "msm" in s or "mrm" in s:
            return "loss (log-softmax over vocabulary/classes)"
        return "softmax"
    if "gelu" in t or "erf" in t or "gelu" in s:
        return "GELU"
    if "dropout" in s or "dropout" in t or "bernoulli" in t or "random" in t:
        return "dropout"
    if "logsumexp" in t or "logsumexp" in s or "log_softmax" in t:
        return "loss (log-softmax over vocabulary/classes)"
    return "other ops"


def _worker(args):
    import keras
    import tensorflow as tf

    from keras_interbert import InterBERTBackbone
    from keras_interbert import InterBERTPretrainer
    from keras_interbert.optimizers import pretraining_optimizer
    from keras_interbert.presets import preset_backbone_config

    keras.utils.set_random_seed(0)
    config = preset_backbone_config(tt.CONFIGS[args.config])
    model = InterBERTPretrainer(InterBERTBackbone(**config),
                                num_region_classes=tt.NUM_CLASSES)
    model.compile(optimizer=pretraining_optimizer(bert_variable_patterns=()),
                  jit_compile=args.jit == "true")
    x, y = tt.our_batches(args.batch_size, config)[args.heads]
    ds = tf.data.Dataset.from_tensors((x, y)).repeat()
    model.fit(ds, steps_per_epoch=args.warmup, epochs=1, verbose=0,
              shuffle=False)
    backend = keras.config.backend()
    events = []
    if backend == "torch":
        import torch

        with torch.profiler.profile(
                activities=[torch.profiler.ProfilerActivity.CPU],
                record_shapes=False, with_stack=False) as prof:
            start = time.perf_counter()
            model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0,
                      shuffle=False)
            wall = time.perf_counter() - start
        # Self time of each op: nested ops are not counted twice. Scopes
        # come from the enclosing Keras layer record_function names when
        # present; otherwise from the op name alone.
        for e in prof.events():
            if e.device_type != torch.autograd.DeviceType.CPU:
                continue
            events.append((e.name, _torch_scope(e), e.self_cpu_time_total / 1e6,
                           e.thread))
        covered = None
    else:
        logdir = tempfile.mkdtemp(prefix="profile_step_")
        if backend == "tensorflow":
            tf.profiler.experimental.start(logdir)
        else:
            import jax

            jax.profiler.start_trace(logdir)
        start = time.perf_counter()
        model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0,
                  shuffle=False)
        wall = time.perf_counter() - start
        if backend == "tensorflow":
            tf.profiler.experimental.stop()
        else:
            jax.profiler.stop_trace()
        print("LOGDIR " + logdir, flush=True)
        events, covered = _xplane_events(logdir)
        if args.xla_dump:
            events = attribute_hlo(events, hlo_instructions(args.xla_dump))
    print("RESULT " + json.dumps({"events": events, "wall": wall,
                                  "covered": covered, "steps": args.steps}))


def _torch_scope(event):
    scopes = []
    parent = event.cpu_parent
    while parent is not None:
        scopes.append(parent.name)
        parent = parent.cpu_parent
    return "/".join(reversed(scopes))


def _xplane_events(logdir):
    """`(events, covered)`: op events of the host plane of an xplane trace.

    Each event: (op type or HLO name, name scope, self seconds, thread).
    Only the innermost events of each thread count (self time), so nested
    framework events are not counted twice. `covered`: per thread, the
    seconds covered by any event.
    """
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"),
                      recursive=True)
    space = xplane_pb2.XSpace()
    with open(paths[0], "rb") as f:
        space.ParseFromString(f.read())
    events, covered = [], {}
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        metadata = plane.event_metadata
        stat_names = {k: v.name for k, v in plane.stat_metadata.items()}
        for line in plane.lines:
            spans = []
            for ev in line.events:
                meta = metadata[ev.metadata_id]
                name = meta.display_name or meta.name
                scope = meta.name
                for stat in list(meta.stats) + list(ev.stats):
                    key = stat_names.get(stat.metadata_id, "")
                    if key in ("tf_op", "long_name", "hlo_op", "hlo_module",
                               "name"):
                        value = stat.str_value or (
                            plane.stat_metadata[stat.ref_value].name
                            if stat.ref_value else "")
                        if value:
                            scope = scope + "|" + value
                start = ev.offset_ps / 1e12
                spans.append([start, start + ev.duration_ps / 1e12, name,
                              scope])
            spans.sort(key=lambda s: (s[0], -s[1]))
            # Self time: subtract children (events inside an event).
            stack = []
            selfs = []
            for span in spans:
                while stack and stack[-1][0] <= span[0]:
                    stack.pop()
                entry = [span, span[1] - span[0]]
                if stack:
                    stack[-1][1][1] -= span[1] - span[0]
                stack.append((span[1], entry))
                selfs.append(entry)
            for span, self_time in selfs:
                events.append((span[2], span[3], max(self_time, 0.0),
                               line.name))
            total, end = 0.0, -1.0
            for s, e, _, _ in spans:
                if e <= end:
                    continue
                total += e - max(s, end)
                end = e
            covered[line.name] = total
    return events, covered


_COMPUTATION = re.compile(r"^(?:ENTRY )?%([\w.\-]+) \(")
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+) = .*? ([a-z][\w\-]*)\(")
_CALLS = re.compile(r"(?:calls|to_apply|body|condition)=%([\w.\-]+)")
_OP_NAME = re.compile(r'op_name="([^"]*)"')


def hlo_instructions(dump_dir):
    """`{module: {instruction: (kind, op_name)}}` from XLA's text dumps.

    `kind` says what the instruction computes, looking inside the
    computations it calls (a fusion's body): `dot` when a `dot` or
    `convolution` is there, else `erf` (GELU), else `` (its `op_name`
    scope decides, dropout's random bits included). `op_name` is its
    metadata: the framework's name scope.
    """
    modules = {}
    for path in glob.glob(os.path.join(dump_dir, "*after_optimizations.txt")):
        with open(path) as f:
            text = f.read()
        header = text.split("\n", 1)[0].split()
        if len(header) < 2 or header[0] != "HloModule":
            continue
        name = header[1].rstrip(",")
        # Per computation: its opcodes and the computations it calls; per
        # instruction: its opcode, op_name and callees.
        opcodes = collections.defaultdict(set)
        callees = collections.defaultdict(set)
        meta, calls = {}, {}
        computation = None
        for line in text.splitlines():
            m = _COMPUTATION.match(line)
            if m:
                computation = m.group(1)
                continue
            m = _INSTRUCTION.match(line)
            if not m or computation is None:
                continue
            instruction, opcode = m.groups()
            op_name = _OP_NAME.search(line)
            meta[instruction] = (opcode, op_name.group(1) if op_name else "")
            calls[instruction] = _CALLS.findall(line)
            opcodes[computation].add(opcode)
            callees[computation].update(calls[instruction])

        def inside(computations):
            """Opcodes of `computations` and of all they call."""
            found, seen, todo = set(), set(), list(computations)
            while todo:
                c = todo.pop()
                if c not in seen:
                    seen.add(c)
                    found |= opcodes.get(c, set())
                    todo.extend(callees.get(c, ()))
            return found

        table = {}
        for instruction, (opcode, op_name) in meta.items():
            ops = {opcode} | inside(calls[instruction])
            kind = ("dot" if ops & {"dot", "convolution"} else
                    "erf" if "erf" in ops else "")
            table[instruction] = (kind, op_name)
        # A module compiled more than once keeps its largest dump.
        if len(table) >= len(modules.get(name, {})):
            modules[name] = table
    return modules


def attribute_hlo(events, modules):
    """Events of XLA thunks, named after what they compute: `(name [kind],
    op_name|scope, seconds, thread)`; other events unchanged."""
    merged = {}
    for table in sorted(modules.values(), key=len):
        merged.update(table)
    out = []
    for name, scope, seconds, thread in events:
        parts = scope.split("|")
        table = next((modules[p] for p in parts[1:] if p in modules), merged)
        if name in table:
            kind, op_name = table[name]
            name = f"{name} [{kind}]" if kind else name
            scope = f"{op_name}|{scope}"
        out.append((name, scope, seconds, thread))
    return out


def summarise(result):
    """Seconds per step in each category, and the step's wall time."""
    steps = result["steps"]
    totals = collections.Counter()
    by_op = collections.Counter()
    for name, scope, seconds, thread in result["events"]:
        n = name.lower()
        if thread == "python" or any(n.startswith(k) for k in FRAMEWORK):
            continue
        category = categorise(name, scope)
        totals[category] += seconds / steps
        by_op[name if name.startswith("aten::") else name.split(":")[0]] += (
            seconds / steps)
    wall = result["wall"] / steps
    return {"wall_per_step": wall, "categories": dict(totals),
            "top_ops": by_op.most_common(12)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variants", nargs="+", default=list(tt.DEFAULT_VARIANTS),
                   choices=list(tt.VARIANTS))
    p.add_argument("--configs", nargs="+", default=["published"],
                   choices=list(tt.CONFIGS))
    p.add_argument("--heads", default="targets", choices=["targets", "dense"])
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    p.add_argument("--jit", default="false", help=argparse.SUPPRESS)
    p.add_argument("--xla-dump", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.out:
        # Made now, not after the profiles: a missing folder used to fail
        # the run at its very end.
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    report = {"machine": tt.machine_state(), "heads": args.heads,
              "profiles": []}
    for config in args.configs:
        for variant in args.variants:
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3",
                       KERAS_BACKEND=tt.VARIANTS[variant]["KERAS_BACKEND"])
            cmd = [sys.executable, os.path.abspath(__file__), "--worker",
                   "--config", config, "--jit", tt.VARIANTS[variant]["jit"],
                   "--heads", args.heads, "--batch-size", str(args.batch_size),
                   "--warmup", str(args.warmup), "--steps", str(args.steps)]
            dump = None
            if (tt.VARIANTS[variant]["jit"] == "true"
                    and tt.VARIANTS[variant]["KERAS_BACKEND"] != "torch"):
                dump = tempfile.mkdtemp(prefix="profile_step_hlo_")
                env["XLA_FLAGS"] = " ".join(filter(None, [
                    env.get("XLA_FLAGS"), f"--xla_dump_to={dump}",
                    "--xla_dump_hlo_as_text",
                    f"--xla_dump_hlo_module_re={XLA_DUMP_MODULES}"]))
                cmd += ["--xla-dump", dump]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if dump:
                shutil.rmtree(dump, ignore_errors=True)
            line = [l for l in out.stdout.splitlines()
                    if l.startswith("RESULT ")]
            if out.returncode or not line:
                print(variant, "FAILED", out.stderr[-2000:])
                continue
            summary = summarise(json.loads(line[0][len("RESULT "):]))
            summary.update(variant=variant, config=config,
                           load_average=os.getloadavg()[0])
            report["profiles"].append(summary)
            print(format_summary(summary), flush=True)
    if args.out:
        sys.path.insert(0, os.path.dirname(os.path.dirname(
            os.path.abspath(__file__))))
        from keras_interbert.utils.atomic import write_json_atomically
        from keras_interbert.utils.atomic import write_text_atomically

        write_json_atomically(args.out + ".json", report)
        write_text_atomically(args.out + ".md", "\n\n".join(
            format_summary(s) for s in report["profiles"]) + "\n")
    return report


def format_summary(s):
    wall = s["wall_per_step"]
    traced = sum(s["categories"].values())
    lines = [f"### {s['config']} {tt.LABELS[s['variant']]}: "
             f"{wall:.2f} s per step wall, {traced:.2f} s of op time "
             f"(summed over threads; load {s['load_average']:.1f})", "",
             "| category | op s per step | share of op time |", "|---|---|---|"]
    for name, seconds in sorted(s["categories"].items(),
                                key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {seconds:.3f} | "
                     f"{100 * seconds / max(traced, 1e-9):.0f}% |")
    lines += ["", "Top ops: " + ", ".join(
        f"{n} {t * 1e3:.0f} ms" for n, t in s["top_ops"])]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
