"""Where a profiled training step spends its time, from TensorFlow's profiler: the framework op statistics without
XLA; with XLA, the program's thunks by kind (HLO instructions told apart by what they fuse and where they came from).
"""

import json
import os
import re
import tempfile

import numpy as np
import tensorflow as tf


def profile(runners, steps):
    """Where `steps` steps of each runner's configuration spend their time, from TensorFlow's profiler.

    Without XLA: the framework op statistics (each op's self time). With XLA the step is one program, which
    those statistics do not break down: its thunks (each a dot, a fusion, ...) are, by `xla_breakdown`.
    """
    profiles = []
    for runner in runners:
        runner.run(2 * runner.steps_per_execution)  # traced (and compiled) outside the profile
        unprofiled = runner.run(steps)  # the profiler's own cost, by comparison
        log_dir = tempfile.mkdtemp(prefix="train-speed-profile-")
        tf.profiler.experimental.start(log_dir)
        seconds = runner.run(steps)
        tf.profiler.experimental.stop()
        paths = [
            os.path.join(root, f) for root, _, files in os.walk(log_dir) for f in files if f.endswith(".xplane.pb")
        ]
        profiled = runner.executions(steps) * runner.steps_per_execution
        entry = {
            "model": runner.label,
            "arch": runner.arch,
            "precision": runner.precision,
            "xla": runner.xla,
            "steps_per_execution": runner.steps_per_execution,
            "profiled_steps": profiled,
            "seconds_per_step": float(np.mean(seconds)),
            "unprofiled_seconds_per_step": float(np.mean(unprofiled)),
        }
        if runner.xla == "on":
            entry["xla_breakdown"] = xla_breakdown(
                _xspaces(paths), runner.model.optimizer.name, profiled, entry["seconds_per_step"]
            )
        else:
            entry.update(_framework_op_stats(paths, profiled))
        profiles.append(entry)
        print(f"profiled {runner.label} {runner.key}", flush=True)
    return profiles


def _framework_op_stats(paths, profiled_steps):
    """Busy time per step, and each op type's and the costliest ops' share of it (their self time)."""
    from tensorflow.python.profiler.internal import _pywrap_profiler_plugin as profiler_plugin

    table = json.loads(profiler_plugin.xspace_to_tools_data(paths, "framework_op_stats")[0])[0]
    columns = [column["id"] for column in table["cols"]]
    ops = [dict(zip(columns, [cell.get("v") if cell else None for cell in row["c"]])) for row in table["rows"]]
    ops = [op for op in ops if op["type"] != "IDLE"]
    total = sum(op["total_self_time"] for op in ops)
    by_type = {}
    for op in ops:
        by_type[op["type"]] = by_type.get(op["type"], 0.0) + op["total_self_time"]
    return {
        "busy_ms_per_step": total / 1e3 / profiled_steps,
        "by_type": sorted(((t, us / total) for t, us in by_type.items()), key=lambda item: -item[1]),
        "top_ops": [
            (op["operation"], op["type"], op["total_self_time"] / total)
            for op in sorted(ops, key=lambda op: -op["total_self_time"])[:8]
        ],
    }


def _planes(spaces, name):
    """The planes called `name` ("/host:CPU": the host trace; "/host:metadata": the captured HloProtos)."""
    return [plane for space in spaces for plane in space.planes if plane.name == name]


def _xspaces(paths):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    spaces = []
    for path in paths:
        with open(path, "rb") as f:
            spaces.append(xplane_pb2.XSpace.FromString(f.read()))
    return spaces


def union_length(intervals):
    """Length covered by (start, end) intervals, overlaps counted once (threads run thunks side by side)."""
    covered, end = 0.0, -np.inf
    for start, stop in sorted(intervals):
        if stop > end:
            covered += stop - max(start, end)
            end = stop
    return covered


# Kinds of XLA thunks, in the order they are told apart: by the opcodes of the instruction and of the
# computations it calls (a fusion around a dot is a matmul), by the TensorFlow ops they came from (a fusion
# that draws random numbers is a draw), then by the TensorFlow op of the thunk (the optimizer's scope).
XLA_KINDS = ("matmuls", "convolutions", "random draws", "optimizer update", "other element-wise and reductions")
# Thunks that run other thunks (a loop's body, a branch): their events span their children's, not counted.
_XLA_CONTROL_FLOW = ("while", "conditional", "call")


def _with_called(instruction, computations):
    """The instruction and every instruction of the computations it calls (a fusion's body)."""
    found = [instruction]
    for called in instruction.called_computation_ids:
        for inner in computations[called].instructions:
            found += _with_called(inner, computations)
    return found


def _thunk_kind(instruction, computations, optimizer_scope):
    """The kind (XLA_KINDS) of an HLO instruction's thunk; None for control flow, whose children are traced."""
    if instruction.opcode in _XLA_CONTROL_FLOW:
        return None
    found = _with_called(instruction, computations)
    opcodes = {i.opcode for i in found}
    if "dot" in opcodes:
        return "matmuls"
    if "convolution" in opcodes:
        return "convolutions"
    if "rng-bit-generator" in opcodes or any("Random" in i.metadata.op_type for i in found):
        return "random draws"  # drawing the bits costs far more than what is fused with them
    if optimizer_scope.match(instruction.metadata.op_name):
        return "optimizer update"
    return XLA_KINDS[-1]


def _thunk_kinds(spaces, optimizer_name):
    """{(HLO module, instruction): kind} for the XLA programs the profile captured (their HloProtos)."""
    from tensorflow.compiler.xla.service import hlo_pb2

    optimizer_scope = re.compile(rf"^{re.escape(optimizer_name)}(_\d+)?/")
    modules = [
        hlo_pb2.HloProto.FromString(stat.bytes_value).hlo_module
        for plane in _planes(spaces, "/host:metadata")
        for metadata in plane.event_metadata.values()
        for stat in metadata.stats
    ]
    kinds = {}
    for module in modules:
        computations = {c.id: c for c in module.computations}
        for computation in module.computations:
            for instruction in computation.instructions:
                kinds[module.name, instruction.name] = _thunk_kind(instruction, computations, optimizer_scope)
    return kinds


def xla_breakdown(spaces, optimizer_name, profiled_steps, seconds_per_step):
    """Milliseconds per step in each kind of XLA thunk, in the programs, and outside them.

    A thunk is one event of the profiler's host trace carrying an `hlo_op` and `hlo_module` stat; a program
    is a `CpuExecutable::ExecuteAsyncOnStream` event. Intervals of one kind are merged across threads, so
    thunks running side by side count once. `seconds_per_step` is the step as the timer saw it (its whole
    execution): what is not in a program is the execution's loop, the input pipeline, the callbacks.
    """
    kinds = _thunk_kinds(spaces, optimizer_name)
    intervals = {kind: [] for kind in XLA_KINDS}
    programs, unknown = [], set()
    for plane in _planes(spaces, "/host:CPU"):
        stat_names = {key: value.name for key, value in plane.stat_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                start = line.timestamp_ns * 1000 + event.offset_ps  # exact integer picoseconds
                interval = (start, start + event.duration_ps)
                if name == "CpuExecutable::ExecuteAsyncOnStream":
                    programs.append(interval)
                    continue
                stats = {stat_names.get(stat.metadata_id): stat for stat in event.stats}
                if "hlo_op" not in stats or "hlo_module" not in stats:
                    continue
                module = stat_names.get(stats["hlo_module"].ref_value, stats["hlo_module"].str_value)
                kind = kinds.get((module, name), "unknown")
                if kind == "unknown":
                    unknown.add(name)
                elif kind is not None:
                    intervals[kind].append(interval)
    if unknown:
        print(f"XLA thunks of no captured module, left out: {', '.join(sorted(unknown)[:5])}", flush=True)
    per_step = 1e-9 / profiled_steps  # milliseconds per step from picoseconds
    in_programs = union_length(programs)
    in_thunks = union_length([i for kind in XLA_KINDS for i in intervals[kind]])
    return {
        "step_ms": 1e3 * seconds_per_step,
        "in_programs_ms": in_programs * per_step,
        "kinds_ms": {kind: union_length(intervals[kind]) * per_step for kind in XLA_KINDS},
        "between_thunks_ms": (in_programs - in_thunks) * per_step,
    }
