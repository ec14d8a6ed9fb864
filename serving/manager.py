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
* What to load or unload next is decided by ``serving.policy.next_action``
  (TF Serving's availability-preserving policy) from one snapshot per
  version; the manager only performs those actions, and asks again after
  every poll and every finished load or unload. Each version has one state
  record (``_Version``): its state, whether it is aspired, its error and its
  servable.
* A load runs in the background (state START -> LOADING -> AVAILABLE),
  warmed up from ``assets.extra/tf_serving_warmup_requests`` if enabled, and
  retried ``max_num_load_retries`` times ``load_retry_interval`` apart. A
  version that still fails goes to END with its error, and is not tried
  again while it stays aspired. A version whose directory was deleted while
  it loaded never serves: just before it would become AVAILABLE its
  ``saved_model.pb`` must still be on disk (for a remote base path: in the
  mirror, which drops versions the store no longer lists), else it goes to
  END with NOT_FOUND, like a failed load.
* Availability preserving: a loaded version that is no longer aspired is
  unloaded (UNLOADING -> END) only once an aspired version is AVAILABLE, or
  when no version is aspired at all. Removing the newest directory therefore
  rolls back: the previous version is loaded again before the newest goes.
  Unloading waits for in-flight requests on that version; a version aspired
  again while it unloads is loaded again once it has ended.
* Version labels come from the config and may only point at AVAILABLE
  versions (unless ``allow_version_labels_for_unavailable_models``).
* ``apply_config`` adds, removes and changes models without a restart and
  waits for the initial loads of what it added, like ServerCore::ReloadConfig;
  an added model whose aspired versions did not load is reported as UNKNOWN
  "N servable(s) did not become available" (at startup the server exits).
  A removed model's versions keep their END states for GetModelStatus.
"""

import contextlib
import dataclasses
import errno
import logging
import os
import threading
from collections.abc import Callable

import grpc
from tensorflow_serving.config import model_server_config_pb2

from serving.config import BatchingParameters, ConfigError, validate_model_server_config
from serving.errors import ServingError, failed_precondition, invalid_argument, not_found
from serving.policy import AVAILABLE, END, LOAD, LOADING, START, UNLOADING, VersionSnapshot, next_action
from serving.servable import Servable
from serving.store import parse_version

log = logging.getLogger("serving")


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
    # Batching parameters every loaded servable batches its model calls with (--enable_batching), or None.
    batching: BatchingParameters | None = None
    # Called with (model base path, "OK" or error code name) per load attempt.
    on_load_attempt: Callable[[str, str], None] | None = None
    # Turns a base path into the local directory its versions are listed and loaded from, given the model's
    # version policy (aspired versions from those found): remote base paths are mirrored (serving/store/mirror.py).
    local_base_path: Callable[[str, Callable[[set[int]], set[int]]], str] | None = None


@dataclasses.dataclass
class _Version:
    """Everything the manager knows about one version of one model."""

    version: int
    path: str
    state: str = START
    aspired: bool = True
    error: ServingError | None = None
    servable: Servable | None = None  # set while AVAILABLE


@dataclasses.dataclass
class _Model:
    config: model_server_config_pb2.ModelConfig
    versions: dict[int, _Version] = dataclasses.field(default_factory=dict)
    labels: dict[str, int] = dataclasses.field(default_factory=dict)
    removed: bool = False  # no longer in the config (or the manager stopped); its states stay for GetModelStatus


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
            log.warning(
                "Duplicate version directories detected. Version %d will be loaded from %s, %s will be ignored.",
                version,
                name,
                os.path.basename(by_version[version]),
            )
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


def still_on_disk(path: str) -> bool:
    """True while a loaded version's directory still holds its saved_model.pb (deleted versions never serve)."""
    return os.path.isfile(os.path.join(path, "saved_model.pb"))


def mark_aspired(model: _Model, aspired: dict[int, str]) -> None:
    """Records which versions (number -> path) the version policy aspires to now.

    A version seen for the first time, or aspired again after it ended, gets
    a fresh record in START (so a version that failed is tried again only
    after it stopped being aspired). A version aspired again while it
    unloads keeps its record and is loaded again once it has ended.
    """
    for version, path in aspired.items():
        record = model.versions.get(version)
        if record is None or (record.state == END and not record.aspired):
            model.versions[version] = _Version(version, path)
    for record in model.versions.values():
        record.aspired = record.version in aspired


class ModelManager:
    """Owns servables and their versions; answers which servable serves a request."""

    def __init__(self, options: ManagerOptions):
        self.options = options
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)  # notified whenever a version changes state
        self._reconcile_lock = threading.Lock()
        self._models: dict[str, _Model] = {}  # every model ever configured, by name
        self._stopping = threading.Event()
        self._poll_thread: threading.Thread | None = None
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
            with self._lock:
                added = self._update_models(wanted)
            self._poll_models(list(wanted))
            self._wait_for_loads(list(wanted))
            self._check_available(added)
            self._apply_labels(wanted)

    def _update_models(self, wanted: dict) -> list[str]:
        """Removes the models not wanted, adds or updates the others; returns the names added."""
        for name, model in self._models.items():
            if name not in wanted and not model.removed:
                log.info("Removing model %s", name)
                self._retire(model)
        added = []
        for name, model_config in wanted.items():
            model = self._models.get(name)
            if model is None or model.removed:
                log.info("Adding model %s", name)
                added.append(name)
            if model is None:
                self._models[name] = _Model(config=model_config)
            else:
                model.config, model.removed = model_config, False
        return added

    def _retire(self, model: _Model) -> None:
        """Stops serving a model: nothing aspired, so the policy unloads every version; call with ``_lock``."""
        model.removed = True
        model.labels = {}
        mark_aspired(model, {})
        self._act(model)

    def start_polling(self) -> None:
        if self.options.file_system_poll_wait_seconds <= 0 or self._poll_thread:
            return
        self._poll_thread = threading.Thread(target=self._poll_forever, name="fs-poller", daemon=True)
        self._poll_thread.start()

    def stop(self) -> None:
        """Stops polling and unloads every servable (waiting up to 30 s for the unloads)."""
        self._stopping.set()
        if self._poll_thread:
            self._poll_thread.join()
        with self._lock:
            for model in self._models.values():
                self._retire(model)
        self._wait_until(list(self._models), lambda record: record.state != UNLOADING, timeout=30)

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
    def _poll_models(self, names: list[str]) -> None:
        """Re-reads the version directories of the models still configured and acts on what changed."""
        for name in names:
            with self._lock:
                model = self._models.get(name)
                if model is None or model.removed:
                    continue
                config = model.config
            try:
                on_disk = version_directories(self._local_base_path(config))
            except OSError as error:
                # As in TF Serving, a base path that cannot be listed changes nothing: loaded versions keep serving.
                self._note_failure(
                    f"model {name}",
                    "FileSystemStoragePathSource encountered a filesystem access "
                    f"error: Could not find base path {config.base_path} for servable {name} with "
                    f"error {error.strerror or error}",
                )
                continue
            try:
                self._reconcile(model, config, on_disk)
            except Exception as error:  # one model's trouble must not stop the others
                self._note_failure(f"model {name}", f"Polling servable {name} failed: {type(error).__name__}: {error}")
                continue
            self._note_recovery(f"model {name}", f"Base path {config.base_path} of servable {name} can be read again")

    def _local_base_path(self, config: model_server_config_pb2.ModelConfig) -> str:
        if self.options.local_base_path is None:
            return config.base_path
        return self.options.local_base_path(config.base_path, lambda found: aspired_versions(config, found))

    def _reconcile(self, model: _Model, config: model_server_config_pb2.ModelConfig, on_disk: dict[int, str]) -> None:
        if not on_disk:
            log.warning(
                "No versions of servable %s found under base path %s. Did you forget to "
                "name your leaf directory as a number (eg. '/1/')?",
                config.name,
                config.base_path,
            )
        aspired = aspired_versions(config, set(on_disk))
        with self._changed:
            if model.removed:  # removed while its base path was listed
                return
            mark_aspired(model, {version: on_disk[version] for version in aspired})
            self._act(model)
            self._changed.notify_all()

    def _act(self, model: _Model) -> None:
        """Performs the policy's actions until it has none; call with ``_lock`` held.

        Every action moves its version out of the state that asked for it
        (START -> LOADING, AVAILABLE -> UNLOADING), so this ends.
        """
        while (
            action := next_action(
                [VersionSnapshot(record.version, record.state, record.aspired) for record in model.versions.values()]
            )
        ) is not None:
            record = model.versions[action.version]
            if action.kind == LOAD:
                self._start_load(model, record)
            else:
                self._start_unload(model, record)

    def _wait_for_loads(self, names: list[str]) -> None:
        """Waits until no version of these models is on its way to AVAILABLE (loads end after bounded retries).

        On its way: LOADING, or UNLOADING while aspired again (it loads once unloaded). START needs no
        wait: a version is loaded in the same locked step that puts it in START.
        """
        self._wait_until(
            names, lambda record: record.state != LOADING and not (record.state == UNLOADING and record.aspired)
        )

    def _wait_until(self, names: list[str], settled: Callable[[_Version], bool], timeout: float | None = None):
        """Waits until ``settled`` holds for every version of these models (or ``timeout`` passes)."""

        def all_settled() -> bool:
            return all(settled(record) for name in names for record in self._models[name].versions.values())

        with self._changed:
            self._changed.wait_for(all_settled, timeout)

    # ------------------------------------------------------------ actions
    def _start_load(self, model: _Model, record: _Version) -> None:
        record.state, record.error = LOADING, None
        log.info("Approving load for servable version %s", servable_id(model.config.name, record.version))
        threading.Thread(
            target=self._load,
            args=(model, record, model.config.name, model.config.base_path),
            name=f"load-{model.config.name}-{record.version}",
            daemon=True,
        ).start()

    def _load(self, model: _Model, record: _Version, name: str, base_path: str) -> None:
        """Loads one version (with retries); it becomes AVAILABLE only if its directory is still there."""
        outcome = self._load_with_retries(record, name, base_path)
        if not isinstance(outcome, ServingError) and not still_on_disk(record.path):
            outcome.close()  # never served, so nothing in flight to wait for
            outcome = not_found(f"Version {record.version} of model {name} was deleted while it loaded: {record.path}")
        with self._changed:
            if isinstance(outcome, ServingError):
                record.state, record.error = END, outcome
                log.error("Servable %s cannot be loaded: %s", servable_id(name, record.version), outcome.message)
            else:
                record.state, record.servable = AVAILABLE, outcome
                log.info("Successfully loaded servable version %s", servable_id(name, record.version))
            self._act(model)
            self._changed.notify_all()

    def _load_with_retries(self, record: _Version, name: str, base_path: str) -> Servable | ServingError:
        """The servable once an attempt succeeds, else the last attempt's error."""
        error = None
        for attempt in range(1 + max(self.options.max_num_load_retries, 0)):
            if attempt:
                if self.options.load_retry_interval_seconds > 0:
                    self._stopping.wait(self.options.load_retry_interval_seconds)
                with self._lock:
                    if not record.aspired or self._stopping.is_set():
                        break
                log.info("Retrying load on servable version %s retry: %d", servable_id(name, record.version), attempt)
            try:
                servable = self._load_servable(name, record.version, record.path)
            except ServingError as failure:
                error = failure
            except Exception as failure:  # a broken model must never take the server down
                error = ServingError(grpc.StatusCode.UNKNOWN, f"{type(failure).__name__}: {failure}")
            else:
                self._record_load_attempt(base_path, "OK")
                return servable
            self._record_load_attempt(base_path, error.code_name)
            log.error("Loading servable: %s failed: %s", servable_id(name, record.version), error.message)
        return error

    def _load_servable(self, name: str, version: int, path: str) -> Servable:
        servable = Servable(
            name,
            version,
            path,
            set(self.options.saved_model_tags),
            max_tensor_bytes=self.options.max_tensor_bytes,
            batching=self.options.batching,
        )
        if self.options.enable_model_warmup:
            try:
                replayed = servable.warm_up(self.options.num_request_iterations_for_warmup)
            except ServingError as error:
                servable.close()
                raise ServingError(
                    error.code, f"Failed to warm up model {name} version {version}: {error.message}"
                ) from error
            if replayed:
                log.info(
                    "Finished reading warmup data for model at %s. Number of warmup records read: %d.",
                    os.path.join(path, "assets.extra", "tf_serving_warmup_requests"),
                    replayed,
                )
        return servable

    def _start_unload(self, model: _Model, record: _Version) -> None:
        """AVAILABLE -> UNLOADING now, END once in-flight requests are done (in the background)."""
        name = model.config.name
        servable, record.servable, record.state = record.servable, None, UNLOADING
        log.info("Unloading servable version %s", servable_id(name, record.version))

        def close():
            servable.close()
            with self._changed:
                log.info("Done unloading servable version %s", servable_id(name, record.version))
                if record.aspired:  # aspired again while it unloaded: load it afresh
                    model.versions[record.version] = _Version(record.version, record.path)
                else:
                    record.state = END
                self._act(model)
                self._changed.notify_all()

        threading.Thread(target=close, name=f"unload-{name}-{record.version}", daemon=True).start()

    def _check_available(self, names: list[str]) -> None:
        """Like ServerCore: newly added models must have their aspired versions AVAILABLE."""
        failures = []
        with self._lock:
            for name in names:
                for version, record in sorted(self._models[name].versions.items()):
                    if record.aspired and record.state != AVAILABLE:
                        reason = (
                            f" due to error: {record.error.code_name}: {record.error.message}" if record.error else ""
                        )
                        failures.append(f"{{{servable_id(name, version)}{reason}}}, ")
        if failures:
            raise ServingError(
                grpc.StatusCode.UNKNOWN,
                f"{len(failures)} servable(s) did not become available: {{{''.join(failures)}}}",
            )

    def _apply_labels(self, wanted: dict) -> None:
        new_labels = {}
        with self._lock:
            for name, model_config in wanted.items():
                versions = self._models[name].versions
                for _label, version in model_config.version_labels.items():
                    if not self.options.allow_version_labels_for_unavailable_models and (
                        version not in versions or versions[version].state != AVAILABLE
                    ):
                        raise failed_precondition(
                            f"Request to assign label to version {version} of model {name}, "
                            "which is not currently available for inference"
                        )
                new_labels[name] = dict(model_config.version_labels)
            for name, labels in new_labels.items():
                self._models[name].labels = labels

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
        versions = model.versions if model and not model.removed else {}
        choice = model_spec.WhichOneof("version_choice")
        if choice == "version_label":
            version = self._version_for_label(name, model_spec.version_label)
            choice = "version"
        elif choice == "version":
            version = model_spec.version.value
        if choice == "version":
            record = versions.get(version)
            if record is None or record.state != AVAILABLE:
                raise not_found(f"Servable not found for request: Specific({name}, {version})")
            return record.servable
        serving = [record for record in versions.values() if record.state == AVAILABLE]
        if not serving:
            raise not_found(f"Servable not found for request: Latest({name})")
        return max(serving, key=lambda record: record.version).servable

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
            model = self._models.get(name)
            states = {
                version: VersionStatus(version, record.state, record.error)
                for version, record in (model.versions.items() if model else ())
            }
            if choice in ("version", "version_label"):
                version = (
                    self._version_for_label(name, model_spec.version_label)
                    if choice == "version_label"
                    else model_spec.version.value
                )
                if version not in states:
                    raise not_found(f"Could not find version {version} of model {name}")
                return [states[version]]
            if not states:
                raise not_found(f"Could not find any versions of model {name}")
            return [states[version] for version in sorted(states, reverse=True)]
