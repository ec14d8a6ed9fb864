"""The model manager: which versions of which models are loaded and served.

It follows TensorFlow Serving's ServerCore / AspiredVersionsManager:

* The config (a ``ModelServerConfig``) lists models. For each, the children
  of ``base_path`` whose names parse as int64 the way TF Serving parses them
  are its versions (``00000123`` is 123, `` 7`` is 7; ``²``, ``1e3`` or a
  number beyond int64 are ignored); ``version_directories`` is the one place
  that lists them. The file system is polled every
  ``file_system_poll_wait_seconds`` (0: once at start). A base path that
  cannot be listed changes nothing (loaded versions keep serving), and no
  failure ends the polling: it is logged once per streak of failing polls,
  and once more when polls succeed again. A remote base path (``s3://``,
  ``gs://``) is listed and loaded through a local mirror of its complete
  versions (the ``local_base_path`` hook, serving/store/mirror.py).
* The version policy picks the aspired versions: ``latest { num_versions }``
  (default 1), ``all`` or ``specific { versions }``.
* Aspired versions that are not loaded are loaded in the background (state
  START -> LOADING -> AVAILABLE), warmed up from
  ``assets.extra/tf_serving_warmup_requests`` if enabled, and retried
  ``max_num_load_retries`` times ``load_retry_interval`` apart. A version
  that still fails goes to END with its error, and is not tried again while
  it stays aspired.
* Availability preserving: a loaded version that is no longer aspired is
  unloaded (UNLOADING -> END) only once an aspired version is AVAILABLE, or
  when no version is aspired at all. Removing the newest directory therefore
  rolls back: the previous version is loaded again before the newest goes.
  Unloading waits for in-flight requests on that version.
* Version labels come from the config and may only point at AVAILABLE
  versions (unless ``allow_version_labels_for_unavailable_models``).
* ``apply_config`` adds, removes and changes models without a restart and
  waits for the initial loads of what it added, like ServerCore::ReloadConfig;
  an added model whose aspired versions did not load is reported as UNKNOWN
  "N servable(s) did not become available" (at startup the server exits).
"""

import contextlib
import dataclasses
import errno
import logging
import os
import threading
from typing import Callable

import grpc
from tensorflow_serving.config import model_server_config_pb2

from serving.config import ConfigError, validate_model_server_config
from serving.errors import ServingError, failed_precondition, invalid_argument, not_found
from serving.servable import Servable
from serving.store import parse_version

log = logging.getLogger("serving")

START, LOADING, AVAILABLE, UNLOADING, END = "START", "LOADING", "AVAILABLE", "UNLOADING", "END"


@dataclasses.dataclass
class VersionStatus:
    """What GetModelStatus reports for one version."""

    version: int
    state: str
    error: ServingError | None = None


@dataclasses.dataclass
class ManagerOptions:
    file_system_poll_wait_seconds: float = 1.0
    max_num_load_retries: int = 5
    load_retry_interval_seconds: float = 60.0
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 1
    saved_model_tags: frozenset = frozenset({"serve"})
    allow_version_labels_for_unavailable_models: bool = False
    # Input and output tensors above this many bytes are refused with RESOURCE_EXHAUSTED (0: no limit).
    max_tensor_bytes: int = 0
    # Called with each freshly loaded servable before it serves (batching).
    prepare_servable: Callable[[Servable], None] | None = None
    # Called with (model base path, "OK" or error code name) per load attempt.
    on_load_attempt: Callable[[str, str], None] | None = None
    # Turns a base path into the local directory its versions are listed and loaded from, given the model's
    # version policy (aspired versions from those found): remote base paths are mirrored (serving/store/mirror.py).
    local_base_path: Callable[[str, Callable[[set[int]], set[int]]], str] | None = None


@dataclasses.dataclass
class _Model:
    config: model_server_config_pb2.ModelConfig
    aspired: set = dataclasses.field(default_factory=set)
    servables: dict = dataclasses.field(default_factory=dict)  # version -> Servable
    loading: dict = dataclasses.field(default_factory=dict)  # version -> Thread
    given_up: set = dataclasses.field(default_factory=set)
    labels: dict = dataclasses.field(default_factory=dict)
    removed: bool = False


def servable_id(name: str, version: int) -> str:
    return f"{{name: {name} version: {version}}}"


def version_directories(base_path: str) -> dict[int, str]:
    """Version number -> child path under a model's base path, as TF Serving lists them.

    Every child whose name parses as a version counts, directory or not (a
    plain file named ``5`` is version 5 and fails to load). Of two names for
    one number the last in sorted order wins, with TF Serving's warning.
    Raises ``OSError`` if the base path cannot be listed.
    """
    if not os.path.exists(base_path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), base_path)
    by_version = {}
    for name in sorted(os.listdir(base_path)):
        version = parse_version(name)
        if version is None:
            continue
        if version in by_version:
            log.warning("Duplicate version directories detected. Version %d will be loaded from %s, %s will be "
                        "ignored.", version, name, os.path.basename(by_version[version]))
        by_version[version] = os.path.join(base_path, name)
    return by_version


def aspired_versions(config: model_server_config_pb2.ModelConfig, on_disk: set[int]) -> set[int]:
    """Applies the model's version policy to the versions found on disk."""
    policy = config.model_version_policy
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return set(on_disk)
    if choice == "specific":
        return {version for version in policy.specific.versions if version in on_disk}
    count = policy.latest.num_versions if choice == "latest" and policy.latest.num_versions > 0 else 1
    return set(sorted(on_disk)[-count:])


class ModelManager:
    """Owns servables and their versions; answers which servable serves a request."""

    def __init__(self, options: ManagerOptions):
        self.options = options
        self._lock = threading.RLock()
        self._reconcile_lock = threading.Lock()
        self._models: dict[str, _Model] = {}
        self._states: dict[str, dict[int, VersionStatus]] = {}
        self._stopping = threading.Event()
        self._poll_thread: threading.Thread | None = None
        self._unload_threads: list[threading.Thread] = []
        self._failing: set[str] = set()  # what failed in the last poll, logged once per streak

    # ------------------------------------------------------------ lifecycle
    def apply_config(self, config: model_server_config_pb2.ModelServerConfig) -> None:
        """Serves exactly the models in ``config``; raises ServingError if rejected."""
        try:
            validate_model_server_config(config)
        except ConfigError as error:
            raise invalid_argument(str(error)) from error
        with self._reconcile_lock:
            wanted = {model.name: model for model in config.model_config_list.config}
            added = []
            with self._lock:
                for name, model in list(self._models.items()):
                    if name not in wanted:
                        log.info("Removing model %s", name)
                        model.removed = True
                        model.aspired = set()
                        del self._models[name]
                        for version in list(model.servables):
                            self._start_unload(model, version)
                for name, model_config in wanted.items():
                    model = self._models.get(name)
                    if model is None:
                        log.info("Adding model %s", name)
                        self._models[name] = _Model(config=model_config)
                        added.append(name)
                        self._states.setdefault(name, {})
                    else:
                        model.config = model_config
            loads = self._poll_models(list(wanted))
            for thread in loads:
                thread.join()
            self._check_available(added)
            self._apply_labels(wanted)

    def start_polling(self) -> None:
        if self.options.file_system_poll_wait_seconds <= 0 or self._poll_thread:
            return
        self._poll_thread = threading.Thread(target=self._poll_forever, name="fs-poller", daemon=True)
        self._poll_thread.start()

    def stop(self) -> None:
        """Stops polling and unloads every servable."""
        self._stopping.set()
        if self._poll_thread:
            self._poll_thread.join()
        with self._lock:
            models = list(self._models.values())
            for model in models:
                model.removed = True
            for model in models:
                for version in list(model.servables):
                    self._start_unload(model, version)
            threads = list(self._unload_threads)
        for thread in threads:
            thread.join(timeout=30)

    def _poll_forever(self) -> None:
        """Polls until stopped; a failing poll is logged (once per streak) and the next one runs."""
        while not self._stopping.wait(self.options.file_system_poll_wait_seconds):
            try:
                with self._reconcile_lock:
                    self._poll_models(list(self._models))
            except Exception as error:  # nothing may end the polling thread
                self._note_failure("poll", f"File system poll failed: {type(error).__name__}: {error}")
            else:
                self._note_recovery("poll", "File system polls succeed again")

    def _note_failure(self, key: str, message: str) -> None:
        """Logs the first failure of a streak; the same failure on later polls stays quiet."""
        if key not in self._failing:
            self._failing.add(key)
            log.error("%s", message)

    def _note_recovery(self, key: str, message: str) -> None:
        if key in self._failing:
            self._failing.discard(key)
            log.info("%s", message)

    # ------------------------------------------------------------ reconcile
    def _poll_models(self, names: list[str]) -> list[threading.Thread]:
        """Re-reads the version directories; starts loads and unloads."""
        started = []
        for name in names:
            with self._lock:
                model = self._models.get(name)
            if model is None:
                continue
            base_path = model.config.base_path
            try:
                on_disk = version_directories(self._local_base_path(model.config))
            except OSError as error:
                # As in TF Serving, a base path that cannot be listed changes nothing: loaded versions keep serving.
                self._note_failure(f"model {name}", "FileSystemStoragePathSource encountered a filesystem access "
                                   f"error: Could not find base path {base_path} for servable {name} with error "
                                   f"{error.strerror or error}")
                continue
            try:
                started += self._reconcile(model, on_disk)
            except Exception as error:  # one model's trouble must not stop the others
                self._note_failure(f"model {name}", f"Polling servable {name} failed: {type(error).__name__}: {error}")
                continue
            self._note_recovery(f"model {name}", f"Base path {base_path} of servable {name} can be read again")
        return started

    def _local_base_path(self, config: model_server_config_pb2.ModelConfig) -> str:
        if self.options.local_base_path is None:
            return config.base_path
        return self.options.local_base_path(config.base_path, lambda found: aspired_versions(config, found))

    def _reconcile(self, model: _Model, on_disk: dict[int, str]) -> list[threading.Thread]:
        name = model.config.name
        if not on_disk:
            log.warning("No versions of servable %s found under base path %s. Did you forget to "
                        "name your leaf directory as a number (eg. '/1/')?", name, model.config.base_path)
        aspired = aspired_versions(model.config, set(on_disk))
        started = []
        with self._lock:
            model.aspired = aspired
            model.given_up &= aspired
            for version in sorted(aspired, reverse=True):
                if version in model.servables or version in model.loading or version in model.given_up:
                    continue
                started.append(self._start_load(model, version, on_disk[version]))
            self._unload_unaspired(model)
        return started

    def _start_load(self, model: _Model, version: int, path: str) -> threading.Thread:
        self._set_state(model.config.name, version, START)
        thread = threading.Thread(target=self._load, args=(model, version, path),
                                  name=f"load-{model.config.name}-{version}", daemon=True)
        model.loading[version] = thread
        thread.start()
        return thread

    def _load(self, model: _Model, version: int, path: str) -> None:
        name = model.config.name
        log.info("Approving load for servable version %s", servable_id(name, version))
        self._set_state(name, version, LOADING)
        attempts = 1 + max(self.options.max_num_load_retries, 0)
        error = None
        for attempt in range(attempts):
            if attempt:
                if self.options.load_retry_interval_seconds > 0:
                    self._stopping.wait(self.options.load_retry_interval_seconds)
                with self._lock:
                    if model.removed or version not in model.aspired or self._stopping.is_set():
                        break
                log.info("Retrying load on servable version %s retry: %d", servable_id(name, version), attempt)
            try:
                servable = self._load_servable(name, version, path)
            except ServingError as failure:
                error = failure
            except Exception as failure:  # a broken model must never take the server down
                error = ServingError(grpc.StatusCode.UNKNOWN, f"{type(failure).__name__}: {failure}")
            else:
                error = None
                break
            self._record_load_attempt(model.config.base_path, error.code_name)
            log.error("Loading servable: %s failed: %s", servable_id(name, version), error.message)
        with self._lock:
            del model.loading[version]
            if error is not None:
                model.given_up.add(version)
                self._set_state(name, version, END, error)
                log.error("Servable %s cannot be loaded: %s", servable_id(name, version), error.message)
                self._unload_unaspired(model)
                return
            self._record_load_attempt(model.config.base_path, "OK")
            if model.removed or self._stopping.is_set():
                self._set_state(name, version, UNLOADING)
                self._close_in_background(name, version, servable)
                return
            model.servables[version] = servable
            self._set_state(name, version, AVAILABLE)
            log.info("Successfully loaded servable version %s", servable_id(name, version))
            self._unload_unaspired(model)

    def _load_servable(self, name: str, version: int, path: str) -> Servable:
        servable = Servable(name, version, path, set(self.options.saved_model_tags), self.options.max_tensor_bytes)
        if self.options.prepare_servable:
            self.options.prepare_servable(servable)
        if self.options.enable_model_warmup:
            try:
                replayed = servable.warm_up(self.options.num_request_iterations_for_warmup)
            except ServingError as error:
                servable.close()
                raise ServingError(error.code, f"Failed to warm up model {name} version {version}: "
                                               f"{error.message}") from error
            if replayed:
                log.info("Finished reading warmup data for model at %s. Number of warmup records read: %d.",
                         os.path.join(path, "assets.extra", "tf_serving_warmup_requests"), replayed)
        return servable

    def _unload_unaspired(self, model: _Model) -> None:
        """Availability-preserving unloads; call with ``_lock`` held."""
        unaspired = sorted(version for version in model.servables if version not in model.aspired)
        if not unaspired:
            return
        aspired_serving = any(version in model.servables for version in model.aspired)
        if model.removed or not model.aspired or aspired_serving:
            to_unload = unaspired
        else:
            to_unload = unaspired[:-1]  # keep the newest until an aspired one serves
        for version in to_unload:
            self._start_unload(model, version)

    def _start_unload(self, model: _Model, version: int) -> None:
        name = model.config.name
        servable = model.servables.pop(version)
        self._set_state(name, version, UNLOADING)
        log.info("Unloading servable version %s", servable_id(name, version))
        self._close_in_background(name, version, servable)

    def _close_in_background(self, name: str, version: int, servable: Servable) -> None:
        def close():
            servable.close()
            self._set_state(name, version, END)
            log.info("Done unloading servable version %s", servable_id(name, version))

        thread = threading.Thread(target=close, name=f"unload-{name}-{version}", daemon=True)
        self._unload_threads = [alive for alive in self._unload_threads if alive.is_alive()] + [thread]
        thread.start()

    def _check_available(self, names: list[str]) -> None:
        """Like ServerCore: newly added models must have their aspired versions AVAILABLE."""
        failures = []
        with self._lock:
            for name in names:
                model = self._models[name]
                for version in sorted(model.aspired - set(model.servables)):
                    status = self._states[name].get(version)
                    reason = f" due to error: {status.error.code_name}: {status.error.message}" \
                        if status and status.error else ""
                    failures.append(f"{{{servable_id(name, version)}{reason}}}, ")
        if failures:
            raise ServingError(grpc.StatusCode.UNKNOWN,
                               f"{len(failures)} servable(s) did not become available: {{{''.join(failures)}}}")

    def _apply_labels(self, wanted: dict) -> None:
        new_labels = {}
        with self._lock:
            for name, model_config in wanted.items():
                model = self._models[name]
                for label, version in model_config.version_labels.items():
                    if (not self.options.allow_version_labels_for_unavailable_models
                            and version not in model.servables):
                        raise failed_precondition(
                            f"Request to assign label to version {version} of model {name}, "
                            "which is not currently available for inference"
                        )
                new_labels[name] = dict(model_config.version_labels)
            for name, labels in new_labels.items():
                self._models[name].labels = labels

    def _set_state(self, name: str, version: int, state: str, error: ServingError | None = None) -> None:
        with self._lock:
            self._states.setdefault(name, {})[version] = VersionStatus(version, state, error)

    def _record_load_attempt(self, base_path: str, status: str) -> None:
        if self.options.on_load_attempt:
            self.options.on_load_attempt(base_path, status)

    # -------------------------------------------------------------- queries
    @contextlib.contextmanager
    def serving(self, model_spec):
        """Yields the servable for a ModelSpec, kept loaded while in use."""
        with self._lock:
            servable = self._resolve(model_spec)
            servable.begin_request()
        try:
            yield servable
        finally:
            servable.end_request()

    def _resolve(self, model_spec) -> Servable:
        name = model_spec.name
        if not name:
            raise invalid_argument("ModelSpec has no name specified.")
        model = self._models.get(name)
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            version = self._version_for_label(name, model_spec.version_label)
            choice = "version"
        elif choice == "version":
            version = model_spec.version.value
        if choice == "version":
            servable = model.servables.get(version) if model else None
            if servable is None:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return servable
        if not model or not model.servables:
            raise not_found(f"Servable not found for request: Latest({name})")
        return model.servables[max(model.servables)]

    def _version_for_label(self, name: str, label: str) -> int:
        model = self._models.get(name)
        if model is None or label not in model.labels:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return model.labels[label]

    def model_status(self, model_spec) -> list[VersionStatus]:
        """GetModelStatus: all versions of a model (newest first) or one."""
        name = model_spec.name
        if not name:
            raise invalid_argument("Missing model name in request.")
        with self._lock:
            choice = model_spec.WhichOneof("version_choice")
            states = self._states.get(name, {})
            if choice in ("version", "version_label"):
                version = (self._version_for_label(name, model_spec.version_label)
                           if choice == "version_label" else model_spec.version.value)
                if version not in states:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [states[version]]
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            return [states[version] for version in sorted(states, reverse=True)]
