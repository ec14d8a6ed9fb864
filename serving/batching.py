"""Server-side request batching, like TensorFlow Serving's BatchingSession.

With ``--enable_batching`` every loaded servable gets a ``Batcher`` for its
model calls. Concurrent calls to the same signature whose inputs agree in dtype
and in every dimension but the first are concatenated along dimension 0,
run as one model call by one of ``num_batch_threads`` workers, and the
outputs are split back per caller. A batch is closed when it reaches
``max_batch_size`` or its oldest task has waited ``batch_timeout_micros``
(0: run what is queued as soon as a worker is free). With
``allowed_batch_sizes`` a batch is padded up to the next allowed size.

When the queue already holds ``max_enqueued_batches`` batches a new task is
refused with UNAVAILABLE and TF Serving's message.
"""

import collections
import dataclasses
import math
import threading
import time
from concurrent.futures import Future

import grpc
import numpy as np

from serving.config import BatchingParameters
from serving.errors import ServingError, invalid_argument, unavailable

QUEUE_FULL_MESSAGE = "The batch scheduling queue to which this task was submitted is full"


@dataclasses.dataclass
class _Task:
    signature_name: str
    inputs: dict
    size: int
    key: object  # tasks with equal keys can be merged
    enqueued_at: float
    mergeable: bool
    future: Future = dataclasses.field(default_factory=Future)


def _task_size(inputs: dict) -> int | None:
    sizes = {value.shape[0] for value in inputs.values() if value.ndim > 0}
    if any(value.ndim == 0 for value in inputs.values()) or not sizes:
        return None  # scalars cannot be merged
    if len(sizes) != 1:
        raise invalid_argument("Batching session Run() input tensors must have equal 0th-dimension size")
    return sizes.pop()


class Batcher:
    """(signature_name, inputs) -> outputs, merged across callers.

    ``submit`` queues a call and returns a future (for an asynchronous server);
    calling the batcher waits for it.
    """

    def __init__(self, execute, parameters: BatchingParameters):
        self._execute = execute
        self._parameters = parameters
        self._queue: collections.deque[_Task] = collections.deque()
        self._queued_size = 0
        self._condition = threading.Condition()
        self._closed = False
        self._workers = [
            threading.Thread(target=self._work, name=f"batch-{index}", daemon=True)
            for index in range(parameters.num_batch_threads)
        ]
        for worker in self._workers:
            worker.start()

    def __call__(self, signature_name: str, inputs: dict) -> dict:
        return self.submit(signature_name, inputs).result()

    def submit(self, signature_name: str, inputs: dict) -> Future:
        """Queues one call; its future gets the caller's rows of the batch's outputs."""
        size = _task_size(inputs)
        mergeable = size is not None
        if mergeable:
            key = (signature_name,) + tuple(
                sorted((alias, value.dtype.str, value.shape[1:]) for alias, value in inputs.items())
            )
        else:
            size, key = 1, object()  # equal to no other key: runs alone
        if size > self._parameters.max_batch_size:
            raise invalid_argument(
                f"Task size {size} is larger than maximum input batch size {self._parameters.max_batch_size}"
            )
        task = _Task(signature_name, inputs, size, key, time.monotonic(), mergeable)
        with self._condition:
            if self._closed:
                raise unavailable("Batch scheduler is shutting down")
            batches_needed = math.ceil((self._queued_size + size) / self._parameters.max_batch_size)
            if batches_needed > self._parameters.max_enqueued_batches:
                raise unavailable(QUEUE_FULL_MESSAGE)
            self._queue.append(task)
            self._queued_size += size
            self._condition.notify()
        return task.future

    def close(self) -> None:
        with self._condition:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._condition.notify_all()
        for task in pending:
            task.future.set_exception(unavailable("Batch scheduler is shutting down"))
        for worker in self._workers:
            worker.join(timeout=10)

    def _next_batch(self) -> list[_Task] | None:
        timeout = self._parameters.batch_timeout_micros / 1e6
        with self._condition:
            while True:
                if self._closed:
                    return None
                if self._queue:
                    waited = time.monotonic() - self._queue[0].enqueued_at
                    if self._queued_size >= self._parameters.max_batch_size or waited >= timeout:
                        return self._take_batch()
                    self._condition.wait(timeout - waited)
                else:
                    self._condition.wait()

    def _take_batch(self) -> list[_Task]:
        """Pops the oldest task and every queued task compatible with it that fits."""
        first = self._queue.popleft()
        batch, total, remaining = [first], first.size, collections.deque()
        while self._queue:
            task = self._queue.popleft()
            if task.key == first.key and total + task.size <= self._parameters.max_batch_size:
                batch.append(task)
                total += task.size
            else:
                remaining.append(task)
        self._queue.extendleft(reversed(remaining))
        self._queued_size -= total
        return batch

    def _work(self) -> None:
        while (batch := self._next_batch()) is not None:
            try:
                results = self._run(batch)
            except ServingError as error:
                for task in batch:
                    task.future.set_exception(error)
            except Exception as error:  # report, never kill the worker
                for task in batch:
                    task.future.set_exception(
                        ServingError(grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}")
                    )
            else:
                for task, result in zip(batch, results):
                    task.future.set_result(result)

    def _run(self, batch: list[_Task]) -> list[dict]:
        if len(batch) == 1 and (not self._parameters.allowed_batch_sizes or not batch[0].mergeable):
            return [self._execute(batch[0].signature_name, batch[0].inputs)]
        total = sum(task.size for task in batch)
        padded = next((size for size in self._parameters.allowed_batch_sizes if size >= total), total)
        merged = {}
        for alias in batch[0].inputs:
            parts = [task.inputs[alias] for task in batch]
            if padded > total:
                parts.append(np.repeat(parts[0][:1], padded - total, axis=0))
            merged[alias] = np.concatenate(parts, axis=0)
        outputs = self._execute(batch[0].signature_name, merged)
        for alias, value in outputs.items():
            if np.ndim(value) == 0 or np.shape(value)[0] != padded:
                raise invalid_argument(
                    f"Batched output tensor {alias} has 0th dimension "
                    f"{np.shape(value)[0] if np.ndim(value) else 0}, expected {padded}"
                )
        results, offset = [], 0
        for task in batch:
            results.append({alias: value[offset : offset + task.size] for alias, value in outputs.items()})
            offset += task.size
        return results
