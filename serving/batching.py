"""Dynamic batching: concurrent requests merged into one model call.

`BatchingParameters` is TensorFlow Serving's proto of the same name
(servables/tensorflow/session_bundle_config.proto), read from the same
text-proto file `--batching_parameters_file` takes, e.g.

    max_batch_size { value: 64 }
    batch_timeout_micros { value: 2000 }
    max_enqueued_batches { value: 100 }
    num_batch_threads { value: 2 }
    allowed_batch_sizes: 16
    allowed_batch_sizes: 64

The proto is not shipped by tensorflow-serving-api, so its text format is
parsed with a message built here from the same field names (unknown fields
are logged and ignored).

`BatchScheduler` follows TF Serving's shared batch scheduler: a batch closes
when it is full (`max_batch_size` rows), when its oldest task has waited
`batch_timeout_micros`, or - with a timeout of 0 - as soon as a batch thread
is free, so batches grow with the load. Requests whose non-batch shapes or
signatures differ never share a batch; a request larger than
`max_batch_size` runs on its own. If a merged call fails, its tasks run again
one by one so that one bad request (say, a NaN the model rejects) fails
alone.
"""

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time

import numpy as np
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2  # noqa: F401  (registers the wrapper types in the default pool)

from serving.errors import UNAVAILABLE, ServingError

log = logging.getLogger("serving")


@dataclasses.dataclass
class BatchingOptions:
    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple = ()
    pad_variable_length_inputs: bool = False


def _batching_parameters_class():
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="robust_zoo_serving/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file_proto.message_type.add(name="BatchingParameters")
    label_optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    label_repeated = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
    type_message = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
    fields = [  # (name, number, wrapper type or scalar type, repeated)
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 3, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
        ("max_execution_batch_size", 10, ".google.protobuf.Int64Value"),
    ]
    for name, number, type_name in fields:
        message.field.add(name=name, number=number, label=label_optional, type=type_message, type_name=type_name)
    message.field.add(
        name="allowed_batch_sizes", number=6, label=label_repeated, type=descriptor_pb2.FieldDescriptorProto.TYPE_INT64
    )
    for name, number in (("pad_variable_length_inputs", 7), ("enable_large_batch_splitting", 9)):
        message.field.add(
            name=name, number=number, label=label_optional, type=descriptor_pb2.FieldDescriptorProto.TYPE_BOOL
        )
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pool.Default().FindFileByName("google/protobuf/wrappers.proto").serialized_pb)
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()


def parse_batching_parameters(text, num_cpus=None):
    """BatchingParameters text proto -> BatchingOptions (TF Serving's defaults for unset fields)."""
    proto = BatchingParameters()
    text_format.Parse(text, proto, allow_unknown_field=True)
    options = BatchingOptions(num_batch_threads=num_cpus or BatchingOptions.num_batch_threads)
    for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches"):
        if proto.HasField(name):
            setattr(options, name, int(getattr(proto, name).value))
    if proto.HasField("max_execution_batch_size"):
        options.max_batch_size = min(options.max_batch_size, int(proto.max_execution_batch_size.value))
    options.allowed_batch_sizes = tuple(int(size) for size in proto.allowed_batch_sizes)
    options.pad_variable_length_inputs = bool(proto.pad_variable_length_inputs)
    check_options(options)
    return options


def read_batching_parameters(path, num_cpus=None):
    with open(path) as f:
        return parse_batching_parameters(f.read(), num_cpus=num_cpus)


def check_options(options):
    if options.max_batch_size < 1:
        raise ValueError(f"max_batch_size must be positive, got {options.max_batch_size}")
    if options.batch_timeout_micros < 0:
        raise ValueError(f"batch_timeout_micros must be >= 0, got {options.batch_timeout_micros}")
    if options.num_batch_threads < 1:
        raise ValueError(f"num_batch_threads must be positive, got {options.num_batch_threads}")
    if options.max_enqueued_batches < 1:
        raise ValueError(f"max_enqueued_batches must be positive, got {options.max_enqueued_batches}")
    sizes = options.allowed_batch_sizes
    if sizes:
        if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError(f"allowed_batch_sizes must be increasing positive sizes, got {list(sizes)}")
        if sizes[-1] != options.max_batch_size:
            raise ValueError(
                f"the last allowed_batch_sizes entry ({sizes[-1]}) must equal max_batch_size ({options.max_batch_size})"
            )


@dataclasses.dataclass
class _Task:
    key: tuple
    inputs: dict
    rows: int
    future: concurrent.futures.Future
    enqueued: float


def batch_key(signature_name, inputs):
    """Tasks can share a batch only when this key is equal."""
    return (signature_name,) + tuple((name, a.dtype.str, a.shape[1:]) for name, a in sorted(inputs.items()))


class BatchScheduler:
    """Merges concurrent `submit` calls into batched calls of `run(signature, inputs)`.

    `run(signature_name, {name: array}) -> {name: array}` is the unbatched
    model call; every output must have the batch as its first dimension.
    """

    def __init__(self, run, options, name="model"):
        check_options(options)
        self._run = run
        self.options = options
        self.name = name
        self._queue = collections.deque()
        self._queued_rows = 0
        self._cond = threading.Condition()
        self._stopping = False
        self.batch_sizes = collections.Counter()  # rows per executed batch, for tests and stats
        self._threads = [
            threading.Thread(target=self._worker, name=f"batch-{name}-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, signature_name, inputs):
        """Queues one request; returns a concurrent.futures.Future of its outputs."""
        rows = _batch_size(inputs)
        future = concurrent.futures.Future()
        task = _Task(batch_key(signature_name, inputs), inputs, rows, future, time.monotonic())
        capacity = self.options.max_enqueued_batches * self.options.max_batch_size
        with self._cond:
            if self._stopping:
                raise ServingError(UNAVAILABLE, f"Batch scheduler of {self.name} is shutting down")
            if self._queue and self._queued_rows + rows > capacity:
                raise ServingError(
                    UNAVAILABLE, "The batch scheduling queue to which this task was submitted is full"
                )
            self._queue.append(task)
            self._queued_rows += rows
            self._cond.notify()
        return future

    def stop(self, timeout=None):
        """Runs what is queued, then ends the batch threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)

    # -- batch threads ---------------------------------------------------------

    def _take_batch(self):
        """Waits for a batch to close and removes its tasks from the queue (lock held)."""
        options = self.options
        timeout = options.batch_timeout_micros / 1e6
        while True:
            while not self._queue:
                if self._stopping:
                    return None
                self._cond.wait()
            head = self._queue[0]
            if timeout > 0 and not self._stopping:
                ready_rows = sum(t.rows for t in self._queue if t.key == head.key)
                remaining = head.enqueued + timeout - time.monotonic()
                if ready_rows < options.max_batch_size and remaining > 0:
                    self._cond.wait(remaining)
                    continue  # re-examine: the head may have been taken by another thread
            batch, rows, keep = [], 0, collections.deque()
            for task in self._queue:
                if task.key == head.key and (not batch or rows + task.rows <= options.max_batch_size):
                    batch.append(task)
                    rows += task.rows
                else:
                    keep.append(task)
            self._queue = keep
            self._queued_rows -= rows
            return batch

    def _worker(self):
        while True:
            with self._cond:
                batch = self._take_batch()
            if batch is None:
                return
            self._execute(batch)

    def _execute(self, batch):
        batch = [task for task in batch if task.future.set_running_or_notify_cancel()]
        if not batch:
            return
        if len(batch) == 1:
            self._run_alone(batch[0])
            return
        try:
            names = list(batch[0].inputs)
            merged = {name: np.concatenate([task.inputs[name] for task in batch]) for name in names}
            total = sum(task.rows for task in batch)
            padded = self._padded_size(total)
            if padded > total:
                merged = {name: _pad(array, padded) for name, array in merged.items()}
            outputs = self._run(batch[0].key[0], merged)
            for name, array in outputs.items():
                if np.ndim(array) == 0 or array.shape[0] != padded:
                    raise ValueError(
                        f"Batched output tensor {name}'s 0th dimension does not equal the sum of the 0th dimension "
                        "sizes of the input tensors"
                    )
        except Exception:  # one task may be to blame: run each on its own
            for task in batch:
                self._run_alone(task)
            return
        self.batch_sizes[total] += 1
        offset = 0
        for task in batch:
            task.future.set_result({name: array[offset : offset + task.rows] for name, array in outputs.items()})
            offset += task.rows

    def _run_alone(self, task):
        try:
            outputs = self._run(task.key[0], task.inputs)
        except Exception as error:
            task.future.set_exception(error)
        else:
            self.batch_sizes[task.rows] += 1
            task.future.set_result(outputs)

    def _padded_size(self, rows):
        for size in self.options.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


def _batch_size(inputs):
    sizes = {a.shape[0] if np.ndim(a) else None for a in inputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise ValueError("batching needs every input to have the same 0th (batch) dimension")
    return sizes.pop()


def _pad(array, size):
    """Pads the batch with copies of its first row (outputs of the padding are dropped)."""
    extra = np.repeat(array[:1], size - array.shape[0], axis=0)
    return np.concatenate([array, extra])
