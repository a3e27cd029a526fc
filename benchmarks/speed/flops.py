"""FLOP counting for the speed benchmark: the matmul and convolution FLOPs of one traced `train_step`."""

import numpy as np
import tensorflow as tf

_MATMULS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")
_CONVOLUTIONS = ("Conv2D", "Conv2DBackpropInput", "Conv2DBackpropFilter")


def _live_ops(graph):
    """The ops a call of the function runs: those its outputs and its control outputs (the updates) need.

    The gradient graph holds ops nobody uses (e.g. the gradient with respect to the input images), which
    the runtime prunes; they are not counted.
    """
    seen, stack = set(), [t.op for t in graph.outputs] + list(graph.control_outputs)
    while stack:
        op = stack.pop()
        if op not in seen:
            seen.add(op)
            stack.extend(t.op for t in op.inputs)
            stack.extend(op.control_inputs)
    return seen


def _source(tensor):
    while tensor.op.type == "Identity":
        tensor = tensor.op.inputs[0]
    return tensor


def _constant(tensor):
    tensor = _source(tensor)
    return int(tf.make_ndarray(tensor.op.get_attr("value"))) if tensor.op.type == "Const" else None


def _trip_count(op):
    """Iterations of a `tf.while_loop` whose counter starts at a constant and steps by one below a constant."""
    cond, body = op._cond_graph, op._body_graph
    tests = [o for o in cond.get_operations() if o.type == "Less"]
    if len(tests) == 1:
        counter, bound = _source(tests[0].inputs[0]), _constant(tests[0].inputs[1])
        index = next((i for i, t in enumerate(cond.inputs) if t is counter), None)
        if index is not None and bound is not None:
            start, step = _constant(op.inputs[index]), _source(body.outputs[index]).op
            increments = (
                step.type in ("Add", "AddV2")
                and _source(step.inputs[0]) is body.inputs[index]
                and _constant(step.inputs[1]) == 1
            )
            if start is not None and increments:
                return max(0, bound - start)
    raise ValueError(f"cannot tell how many times the loop {op.name} runs")


def _op_flops(op):
    """FLOPs (2 per multiply-add) of one matmul or convolution, from its static shapes."""
    if op.type in _MATMULS:
        a, out = op.inputs[0].shape, op.outputs[0].shape
        transposed = op.get_attr("transpose_a") if op.type == "MatMul" else op.get_attr("adj_x")
        factors = [out.num_elements(), a[-2] if transposed else a[-1]]
    else:
        # Conv2D(input, filter) -> y; Conv2DBackpropInput(sizes, filter, dy); Conv2DBackpropFilter(input, sizes,
        # dy) -> filter gradient: each is one multiply-add per element of y (dy), kernel tap and input channel.
        y = op.outputs[0] if op.type == "Conv2D" else op.inputs[2]
        kernel = op.outputs[0].shape if op.type == "Conv2DBackpropFilter" else op.inputs[1].shape
        factors = [y.shape.num_elements(), *kernel[:3]]
    if any(f is None for f in factors):
        raise ValueError(f"{op.name} ({op.type}) has no static shape")
    return 2 * int(np.prod(factors))


def _graph_flops(graph):
    total = 0
    for op in _live_ops(graph):
        if op.type in _MATMULS or op.type in _CONVOLUTIONS:
            total += _op_flops(op)
        elif op.type in ("While", "StatelessWhile"):
            total += _trip_count(op) * _graph_flops(op._body_graph)
        elif op.type in ("If", "StatelessIf", "PartitionedCall", "StatefulPartitionedCall"):
            raise ValueError(f"{op.name}: FLOPs of {op.type} are not counted")
    return total


def step_flops(model, batch_spec):
    """Matmul and convolution FLOPs of one `train_step` on a batch of `batch_spec`, or None if not countable.

    Counted on the traced TensorFlow step before any optimisation, loops by their trip count (the SE's
    PGD selection); element-wise work (activations, BatchNorm, Adam) is left out, as in the usual
    model-FLOPs utilisation. XLA or oneDNN may fuse but do not remove these multiply-adds.
    """
    try:
        return _graph_flops(tf.function(model.train_step).get_concrete_function(batch_spec).graph)
    except ValueError as error:
        print(f"FLOPs not counted: {error}", flush=True)
        return None
