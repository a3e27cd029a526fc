"""Dynamic batching: concurrent requests merged into one model call.

`BatchingParameters` is TensorFlow Serving's proto of the same name
(servables/tensorflow/session_bundle_config.proto), read from the same
text-proto file `--batching_parameters_file` takes, e.g.

    max_batch_size { value: 64 }
    batch_timeout_micros { value: 2000 }
    max_enqueued_batches { value: 100 }
    num_batch_threads { value: 2 }
    enable_large_batch_splitting { value: true }
    max_execution_batch_size { value: 32 }
    allowed_batch_sizes: 16
    allowed_batch_sizes: 64

The proto is not shipped by tensorflow-serving-api, so its text format is
parsed with a message built here with the same field names, numbers and
wrapper types (unknown fields are an error, as in TF Serving).

`BatchScheduler` follows TF Serving's shared batch scheduler queue
(tensorflow/core/kernels/batching_util/shared_batch_scheduler.h), one queue
per signature and input shape:

- a request of more than `max_batch_size` rows is refused with
  INVALID_ARGUMENT ("Task size N is larger than maximum input batch size M");
- without `enable_large_batch_splitting`, a request joins the open batch if
  it fits in `max_batch_size` rows, else starts a new one;
- with it, batches hold at most `max_execution_batch_size` rows (default:
  `max_batch_size`) and a request that does not fit in the open batch is
  split: its first part fills the open batch, the rest goes to new ones, and
  its answer is put back together;
- a batch is run when a batch thread is free and it is full, or its oldest
  request has waited `batch_timeout_micros` (0: at once, so batches grow
  with the load), padded to the next `allowed_batch_sizes` entry;
- a full queue answers UNAVAILABLE with TF Serving's message.

Beyond TF Serving: if a merged call fails, its requests run again one by
one, so that one bad request (say, a NaN the model rejects) fails alone.
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

from serving.errors import UNAVAILABLE, ServingError, invalid_argument

log = logging.getLogger("serving")


@dataclasses.dataclass
class BatchingOptions:
    """TF Serving's defaults (SharedBatchScheduler::QueueOptions) for what the file leaves unset."""

    max_batch_size: int = 1000
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 10
    num_batch_threads: int = 2
    allowed_batch_sizes: tuple = ()
    pad_variable_length_inputs: bool = False
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = 0  # 0: max_batch_size

    @property
    def execution_batch_size(self):
        """The most rows one model call gets."""
        if self.enable_large_batch_splitting and self.max_execution_batch_size:
            return self.max_execution_batch_size
        return self.max_batch_size


def _batching_parameters_class():
    file_proto = descriptor_pb2.FileDescriptorProto(
        name="robust_zoo_serving/batching_parameters.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    message = file_proto.message_type.add(name="BatchingParameters")
    field = descriptor_pb2.FieldDescriptorProto
    for name, number, type_name in [  # session_bundle_config.proto's numbers and wrapper types
        ("max_batch_size", 1, ".google.protobuf.Int64Value"),
        ("batch_timeout_micros", 2, ".google.protobuf.Int64Value"),
        ("max_enqueued_batches", 3, ".google.protobuf.Int64Value"),
        ("num_batch_threads", 4, ".google.protobuf.Int64Value"),
        ("thread_pool_name", 5, ".google.protobuf.StringValue"),
        ("enable_large_batch_splitting", 8, ".google.protobuf.BoolValue"),
        ("max_execution_batch_size", 9, ".google.protobuf.Int64Value"),
    ]:
        message.field.add(
            name=name, number=number, label=field.LABEL_OPTIONAL, type=field.TYPE_MESSAGE, type_name=type_name
        )
    message.field.add(name="allowed_batch_sizes", number=6, label=field.LABEL_REPEATED, type=field.TYPE_INT64)
    message.field.add(name="pad_variable_length_inputs", number=7, label=field.LABEL_OPTIONAL, type=field.TYPE_BOOL)
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(descriptor_pool.Default().FindFileByName("google/protobuf/wrappers.proto").serialized_pb)
    pool.Add(file_proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))


BatchingParameters = _batching_parameters_class()


def parse_batching_parameters(text, num_cpus=None):
    """BatchingParameters text proto -> BatchingOptions (TF Serving's defaults for unset fields)."""
    proto = BatchingParameters()
    text_format.Parse(text, proto)
    options = BatchingOptions(num_batch_threads=num_cpus or BatchingOptions.num_batch_threads)
    for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches"):
        if proto.HasField(name):
            setattr(options, name, int(getattr(proto, name).value))
    # As TF Serving's GetQueueOptions: max_execution_batch_size matters only with splitting.
    if proto.HasField("enable_large_batch_splitting") and proto.enable_large_batch_splitting.value:
        options.enable_large_batch_splitting = True
        if proto.HasField("max_execution_batch_size"):
            options.max_execution_batch_size = int(proto.max_execution_batch_size.value)
    options.allowed_batch_sizes = tuple(int(size) for size in proto.allowed_batch_sizes)
    options.pad_variable_length_inputs = bool(proto.pad_variable_length_inputs)
    check_options(options)
    return options


def read_batching_parameters(path, num_cpus=None):
    with open(path) as f:
        return parse_batching_parameters(f.read(), num_cpus=num_cpus)


def check_options(options):
    """TF Serving's checks (shared_batch_scheduler.h AddQueue, bundle_factory_util.cc), with its messages."""
    if options.max_batch_size < 1:
        raise ValueError(f"input_batch_size_limit must be positive; was {options.max_batch_size}")
    if options.batch_timeout_micros < 0:
        raise ValueError(f"batch_timeout_micros must be non-negative; was {options.batch_timeout_micros}")
    if options.num_batch_threads < 1:
        raise ValueError(f"num_batch_threads must be positive; was {options.num_batch_threads}")
    if options.max_enqueued_batches < 1:
        raise ValueError(f"max_enqueued_batches must be positive; was {options.max_enqueued_batches}")
    if options.enable_large_batch_splitting and not 0 < options.execution_batch_size <= options.max_batch_size:
        raise ValueError(
            "When enable_large_batch_splitting is true, input_batch_size_limit must be greater than or equal to "
            f"max_execution_batch_size (max_batch_size {options.max_batch_size}, max_execution_batch_size "
            f"{options.execution_batch_size})"
        )
    sizes = options.allowed_batch_sizes
    if sizes:
        if list(sizes) != sorted(set(sizes)) or sizes[0] < 1:
            raise ValueError(f"allowed_batch_sizes entries must be monotonically increasing, got {list(sizes)}")
        if sizes[-1] != options.max_batch_size:
            raise ValueError(
                f"Last entry in allowed_batch_sizes must match max_batch_size; last entry was {sizes[-1]}; "
                f"expected {options.max_batch_size}"
            )


class _Request:
    """One submitted request: its inputs, its future and, with splitting, the outputs of its parts."""

    __slots__ = ("inputs", "rows", "loop", "future", "parts", "pending", "lock", "settled")

    def __init__(self, inputs, rows, loop):
        self.inputs = inputs
        self.rows = rows
        self.loop = loop
        # Submitted from an event loop: an asyncio future of that loop, completed
        # with one wake-up of the loop per batch (not per request).
        self.future = loop.create_future() if loop is not None else concurrent.futures.Future()
        self.parts = None  # with splitting: {offset: outputs} of the parts done so far
        self.pending = 1
        self.lock = None
        self.settled = False  # its outcome is decided (later parts are skipped)


class _Task:
    """A request or, with splitting, rows [offset, offset + rows) of one."""

    __slots__ = ("request", "offset", "rows")

    def __init__(self, request, offset, rows):
        self.request = request
        self.offset = offset
        self.rows = rows

    def inputs(self):
        if self.rows == self.request.rows:
            return self.request.inputs
        return {name: array[self.offset : self.offset + self.rows] for name, array in self.request.inputs.items()}


class _Batch:
    __slots__ = ("tasks", "rows", "opened")

    def __init__(self):
        self.tasks = []
        self.rows = 0
        self.opened = 0.0


class _Queue:
    """The batches of one signature and input shape; the last one is open (still filling)."""

    __slots__ = ("signature_name", "batches")

    def __init__(self, signature_name):
        self.signature_name = signature_name
        self.batches = collections.deque([_Batch()])


def batch_key(signature_name, inputs):
    """Requests can share a batch only when this key is equal."""
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
        self._limit = options.execution_batch_size
        self._queues = {}  # batch key -> _Queue
        self._staged = {}  # event loop -> [(key, signature name, _Request)] submitted during its current turn
        self._cond = threading.Condition()
        self._stopping = False
        self.batch_sizes = collections.Counter()  # rows per executed model call, for tests and stats
        self._threads = [
            threading.Thread(target=self._worker, name=f"batch-{name}-{i}", daemon=True)
            for i in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, signature_name, inputs, loop=None):
        """Queues one request; returns a future of its outputs.

        From an event loop (`loop`: the running loop, in its own thread) the
        future is an asyncio future of that loop, and the request reaches the
        batch threads once the loop has run what is ready (the requests that
        arrived with it): under load, requests parsed together are batched
        together, and no request waits longer than one turn of the loop.
        Otherwise it is a concurrent.futures.Future and the request is queued
        at once. Cancelling the future before its batch runs drops the request.

        Raises ValueError when the inputs have no common batch dimension (the
        caller runs those unbatched) and ServingError for a request that is
        too large or that the queue refuses.
        """
        rows = _batch_size(inputs)
        if rows > self.options.max_batch_size:
            raise invalid_argument(
                f"Task size {rows} is larger than maximum input batch size {self.options.max_batch_size}"
            )
        request = _Request(inputs, rows, loop)
        key = batch_key(signature_name, inputs)
        if loop is None:
            with self._cond:
                self._enqueue(key, signature_name, request)
                self._cond.notify()
            return request.future
        if self._stopping:
            raise ServingError(UNAVAILABLE, f"Batch scheduler of {self.name} is shutting down")
        staged = self._staged.get(loop)
        if staged is None:
            staged = self._staged[loop] = []
            loop.call_soon(self._flush, loop)
        staged.append((key, signature_name, request))
        return request.future

    def _flush(self, loop):
        """Queues the requests an event loop staged during its last turn (runs in that loop)."""
        staged = self._staged.pop(loop)
        with self._cond:
            for key, signature_name, request in staged:
                try:
                    self._enqueue(key, signature_name, request)
                except ServingError as error:
                    if not request.future.done():
                        request.future.set_exception(error)
            self._cond.notify()

    def _enqueue(self, key, signature_name, request):
        """Adds a request to its queue, split across batches if need be (lock held); ServingError when full."""
        options, rows = self.options, request.rows
        if self._stopping:
            raise ServingError(UNAVAILABLE, f"Batch scheduler of {self.name} is shutting down")
        queue = self._queues.get(key)
        if queue is None:
            queue = self._queues[key] = _Queue(signature_name)
        batches = queue.batches
        room = self._limit - batches[-1].rows
        if options.enable_large_batch_splitting:
            capacity = (options.max_enqueued_batches - len(batches)) * self._limit + room
            if rows > capacity:
                raise ServingError(
                    UNAVAILABLE,
                    f"The batch scheduling queue to which this task was submitted is full; task size is {rows} "
                    f"but scheduling capacity is only {capacity} (num_enqueued_batches={len(batches)}, "
                    f"max_enqueued_batches={options.max_enqueued_batches}, open_batch_size={batches[-1].rows}, "
                    f"max_execution_batch_size={self._limit})",
                )
            sizes = [rows] if rows <= room else [room] * (room > 0) + _chunks(rows - room, self._limit)
        else:
            if rows > room and len(batches) >= options.max_enqueued_batches:
                raise ServingError(
                    UNAVAILABLE,
                    f"The batch scheduling queue to which this task was submitted is full; currently "
                    f"{len(batches)} batches enqueued and max_enqueued_batches is {options.max_enqueued_batches}",
                )
            sizes = [rows]
        if len(sizes) > 1:
            request.parts, request.pending, request.lock = {}, len(sizes), threading.Lock()
        offset, now = 0, time.monotonic()
        for size in sizes:
            if batches[-1].rows + size > self._limit:
                batches.append(_Batch())
            batch = batches[-1]
            if not batch.tasks:
                batch.opened = now
            batch.tasks.append(_Task(request, offset, size))
            batch.rows += size
            offset += size

    def stop(self, timeout=None):
        """Runs what is queued, then ends the batch threads."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout)
        calls = sum(self.batch_sizes.values())
        if calls:
            rows = sum(size * count for size, count in self.batch_sizes.items())
            log.info("batching of %s: %d model calls, %.1f rows per call", self.name, calls, rows / calls)

    # -- batch threads ---------------------------------------------------------

    def _take_batch(self):
        """Waits for a batch that may run and removes it from its queue (lock held); None when stopped and empty."""
        timeout = self.options.batch_timeout_micros / 1e6
        while True:
            wait, now = None, time.monotonic()
            for key, queue in self._queues.items():
                batches = queue.batches
                if len(batches) > 1:  # the front batch is closed: full
                    return queue.signature_name, batches.popleft()
                open_batch = batches[0]
                if not open_batch.tasks:
                    continue
                due = open_batch.opened + timeout
                if now >= due or self._stopping or open_batch.rows >= self._limit:
                    del self._queues[key]  # empty now: a queue per input shape must not outlive its requests
                    return queue.signature_name, open_batch
                wait = due - now if wait is None else min(wait, due - now)
            if self._stopping:
                return None
            self._cond.wait(wait)

    def _worker(self):
        while True:
            with self._cond:
                taken = self._take_batch()
                self._cond.notify()  # more may be ready: another idle thread takes it
            if taken is None:
                return
            self._execute(*taken)

    def _execute(self, signature_name, batch):
        tasks = [task for task in batch.tasks if _start(task.request)]
        done = []  # (request, outputs, error) of the requests this batch completes
        try:
            if len(tasks) == 1:
                self._run_alone(signature_name, tasks[0], done)
            elif tasks:
                self._run_merged(signature_name, tasks, done)
        finally:
            _deliver(done)

    def _run_merged(self, signature_name, tasks, done):
        try:
            parts = [task.inputs() for task in tasks]
            merged = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
            total = sum(task.rows for task in tasks)
            padded = self._padded_size(total)
            if padded > total:
                merged = {name: _pad(array, padded) for name, array in merged.items()}
            outputs = self._run(signature_name, merged)
            for name, array in outputs.items():
                if np.ndim(array) == 0 or array.shape[0] != padded:
                    raise ValueError(
                        f"Batched output tensor {name}'s 0th dimension does not equal the sum of the 0th dimension "
                        "sizes of the input tensors"
                    )
        except Exception:  # one request may be to blame: run each on its own
            for task in tasks:
                self._run_alone(signature_name, task, done)
            return
        self.batch_sizes[total] += 1
        offset = 0
        for task in tasks:
            _complete(task, {name: array[offset : offset + task.rows] for name, array in outputs.items()}, None, done)
            offset += task.rows

    def _run_alone(self, signature_name, task, done):
        try:
            outputs = self._run(signature_name, task.inputs())
        except Exception as error:
            _complete(task, None, error, done)
        else:
            self.batch_sizes[task.rows] += 1
            _complete(task, outputs, None, done)

    def _padded_size(self, rows):
        for size in self.options.allowed_batch_sizes:
            if size >= rows:
                return size
        return rows


def _chunks(rows, limit):
    return [limit] * (rows // limit) + [rows % limit] * (rows % limit > 0)


def _start(request):
    """Whether a part of `request` should run: False once it is cancelled or has failed."""
    if request.settled:
        return False
    future = request.future
    if request.loop is not None:  # read from this thread; a cancel after this only drops the result
        return not future.cancelled()
    if request.parts is None:
        return future.set_running_or_notify_cancel()
    with request.lock:
        if request.settled:
            return False
        return future.running() or future.set_running_or_notify_cancel()


def _complete(task, outputs, error, done):
    """Records one task's outcome; appends (request, outputs, error) to `done` once its request is decided."""
    request = task.request
    if request.parts is None:
        request.settled = True
        done.append((request, outputs, error))
        return
    with request.lock:
        if request.settled:
            return
        if error is None:
            request.parts[task.offset] = outputs
            request.pending -= 1
            if request.pending:
                return
            parts = [request.parts[offset] for offset in sorted(request.parts)]
            outputs = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        request.settled = True
    done.append((request, outputs, error))


def _deliver(done):
    """Completes futures: concurrent ones here, asyncio ones with one call into each event loop."""
    by_loop = {}
    for request, outputs, error in done:
        if request.loop is not None:
            by_loop.setdefault(request.loop, []).append((request.future, outputs, error))
        elif error is None:
            request.future.set_result(outputs)
        else:
            request.future.set_exception(error)
    for loop, results in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle, results)
        except RuntimeError:  # the loop is closed: nobody waits for these
            pass


def _settle(results):
    for future, outputs, error in results:
        if future.done():  # cancelled (timed out) meanwhile
            continue
        if error is None:
            future.set_result(outputs)
        else:
            future.set_exception(error)


def _batch_size(inputs):
    sizes = {a.shape[0] if np.ndim(a) else None for a in inputs.values()}
    if len(sizes) != 1 or None in sizes:
        raise ValueError("batching needs every input to have the same 0th (batch) dimension")
    return sizes.pop()


def _pad(array, size):
    """Pads the batch with copies of its first row (outputs of the padding are dropped)."""
    extra = np.repeat(array[:1], size - array.shape[0], axis=0)
    return np.concatenate([array, extra])
