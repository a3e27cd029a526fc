"""The model directory: the one place that knows its file names.

A training run writes, and evaluation, export and the benchmarks read:

- `config.json`: what was trained (model, architecture, dataset, hyper-parameters). A second
  run in the same directory must train the same thing (`IDENTITY_KEYS`) with the same hyper-parameters and
  training settings (`check_identity`); it then resumes.
- `flags.json`: every setting of the run, for the model card.
- `checkpoints/`: model and optimizer every `checkpoint_every` steps.
- `logs/`: TensorBoard summaries; `timing.csv`: wall-clock seconds per step;
  `robustness_curve.csv`: robustness measured during training.
- `model.keras`: the final model.
- `summary.json`: the end-of-run summary the command line prints (test ELBO, quick robustness check).
- `robustness.json`, `robustness.md`: the evaluation, when it was written here.
"""

import contextlib
import json
import os
import shutil
import tempfile

# config.json keys that must match for a run to resume in an existing directory.
IDENTITY_KEYS = ("model", "arch", "dataset", "latent_dim", "image_shape")


class ModelDirError(ValueError):
    """The model directory cannot be used for this run."""


class ModelDir:
    """Paths and files of one model directory (which need not exist yet); built from any path-like."""

    CONFIG = "config.json"
    FLAGS = "flags.json"
    CHECKPOINTS = "checkpoints"
    LOGS = "logs"
    TIMING = "timing.csv"
    ROBUSTNESS_CURVE = "robustness_curve.csv"
    MODEL = "model.keras"
    ROBUSTNESS = "robustness.json"
    ROBUSTNESS_REPORT = "robustness.md"
    SUMMARY = "summary.json"
    EVALUATED = "evaluated.json"  # beside an evaluation's results: what it was made of (weights, settings)

    def __init__(self, path):
        self.path = os.fspath(path)

    def __repr__(self):
        return f"ModelDir({self.path!r})"

    def __fspath__(self):  # a ModelDir is a path: os.path functions and ModelDir(ModelDir(p)) take it
        return self.path

    def _join(self, name):
        return os.path.join(self.path, name)

    config_file = property(lambda self: self._join(self.CONFIG))
    flags_file = property(lambda self: self._join(self.FLAGS))
    checkpoint_dir = property(lambda self: self._join(self.CHECKPOINTS))
    log_dir = property(lambda self: self._join(self.LOGS))
    timing_file = property(lambda self: self._join(self.TIMING))
    robustness_curve_file = property(lambda self: self._join(self.ROBUSTNESS_CURVE))
    model_file = property(lambda self: self._join(self.MODEL))
    robustness_file = property(lambda self: self._join(self.ROBUSTNESS))
    robustness_report = property(lambda self: self._join(self.ROBUSTNESS_REPORT))
    summary_file = property(lambda self: self._join(self.SUMMARY))
    evaluated_file = property(lambda self: self._join(self.EVALUATED))

    def worker_dir(self, task_type, task_id):
        """Where a multi-worker run's non-chief worker writes (and deletes afterwards)."""
        return ModelDir(self._join(f"workertemp_{task_type}_{task_id}"))

    def has_model(self):
        return os.path.exists(self.model_file)

    def has_weights(self):
        """Whether a run left weights here to resume from: a checkpoint (even a damaged one) or the final model."""
        try:
            checkpoints = os.listdir(self.checkpoint_dir)
        except OSError:
            checkpoints = []
        return self.has_model() or any(name.endswith(".index") for name in checkpoints)

    def read_config(self):
        """config.json as a dict; {} when the directory has none."""
        return read_json(self.config_file)

    def read_flags(self):
        return read_json(self.flags_file)

    def read_robustness(self):
        return read_json(self.robustness_file)

    def read_robustness_made_of(self, identity):
        """robustness.json when `evaluated.json` says it was made of `identity` (the weights and the settings of an
        evaluation, as `stamp_evaluation` wrote them); {} otherwise, or when the stamp was cut short."""
        result = self.read_robustness()
        try:
            return result if result and read_json(self.evaluated_file) == identity else {}
        except ValueError:  # a stamp cut short: evaluate again
            return {}

    def stamp_evaluation(self, identity):
        """Records what the evaluation written here was made of (`read_robustness_made_of`)."""
        self.write_json(self.evaluated_file, identity)

    def write_json(self, path, value):
        write_json(path, value, sort_keys=True)

    def check_writable(self):
        """Creates the directory; raises ModelDirError now, not after hours of training, if it cannot be written."""
        try:
            os.makedirs(self.path, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".write_probe_", dir=self.path)  # unique: workers probe at once
            with os.fdopen(fd, "w") as f:
                f.write("ok")
            os.remove(probe)
        except OSError as error:
            raise ModelDirError(f"model directory {self.path!r} is not writable: {error.strerror or error}") from None

    def check_identity(self, config, flags=None, settings_may_change=False):
        """Refuses a directory written for another run, and a resume that would train it otherwise.

        config.json's `IDENTITY_KEYS` name the run: another value is another run. Its other entries (the model's
        hyper-parameters) and the entries of `flags` (the settings that fix the weights step by step, which
        flags.json recorded) must match too, or the run would end with weights that no single run makes, unless
        `settings_may_change` (a deliberate change, such as a lower learning rate after a non-finite loss).
        Entries that only one side has (a directory written before a setting existed) are not compared, nor are
        the settings of a run that left no weights (stopped before its first checkpoint): it starts afresh.
        """
        previous = self.read_config()
        if not previous:
            return
        config = _as_stored(config)
        clashes = [_clash(key, previous.get(key), config.get(key)) for key in IDENTITY_KEYS]
        clashes = [clash for clash in clashes if clash]
        if clashes:
            raise ModelDirError(
                f"model directory {self.path!r} holds a different run ({', '.join(clashes)}); "
                "use a new model directory or delete the old one"
            )
        changed = _changed(previous, config) + _changed(self.read_flags(), _as_stored(flags or {}))
        if changed and not settings_may_change and self.has_weights():
            raise ModelDirError(
                f"model directory {self.path!r} was trained with other settings ({', '.join(changed)}); resuming it "
                "under these would end with weights that no single run makes: resume it with its own settings, "
                "allow the change (--allow_new_settings), or start a new model directory (--init_from starts one from "
                "its weights)"
            )

    def prepare(self, config, flags=None, write=True):
        """Creates the directory, refuses one written for another run and records `config` (and `flags`).

        Workers other than the chief pass `write=False`: they check the chief's directory but leave its
        files to the chief.
        """
        self.check(config)
        if write:
            self.record(config, flags)

    def check(self, config, flags=None, settings_may_change=False):
        """Creates the directory and refuses one written for another run, or trained with other `flags`
        (`check_identity`); writes nothing in it."""
        self.check_writable()
        self.check_identity(config, flags, settings_may_change)

    def record(self, config, flags=None):
        """Writes config.json (and flags.json)."""
        self.write_json(self.config_file, config)
        if flags is not None:
            self.write_json(self.flags_file, flags)


def init_from_chain(source, after=None):
    """The model directories a run's weights came from, newest first: `source` (a run's `init_from`), then the
    `init_from` its flags.json names, and so on. Stops at the first path seen before (`after`, the run itself,
    counts as seen), so a cycle of directories ends. A directory that is gone is still yielded; the caller decides.
    """
    seen = {os.path.abspath(after)} if after else set()
    while source and os.path.abspath(source) not in seen:
        seen.add(os.path.abspath(source))
        directory = ModelDir(source)
        yield directory
        source = directory.read_flags().get("init_from")


@contextlib.contextmanager
def atomic_path(path):
    """Yields a temporary path beside `path` (same suffix, for writers that check it) that becomes `path` by a
    rename once the block succeeds.

    A reader (another worker checking the chief's config.json, an evaluation reading a running job's files)
    sees the old file or the new one, never a half-written one; a writer killed or failing midway leaves the
    old file whole and no debris but, after a kill, a hidden temporary file.
    """
    directory, name = os.path.split(os.fspath(path))
    stem, suffix = os.path.splitext(name)
    temporary = os.path.join(directory, f".{stem}.tmp-{os.getpid()}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):  # the write failed
            os.remove(temporary)


@contextlib.contextmanager
def atomic_open(path, mode="w"):
    """`open(path, mode)` for writing, atomically (`atomic_path`); mode "a" starts from the old content."""
    with atomic_path(path) as temporary:
        if "a" in mode and os.path.exists(path):
            shutil.copyfile(path, temporary)
        with open(temporary, mode, newline="" if "b" not in mode else None) as f:
            yield f


def write_json(path, value, **dump_options):
    """Writes `value` as JSON atomically (`atomic_open`)."""
    with atomic_open(path) as f:
        json.dump(value, f, indent=2, **dump_options)


def read_json(path):
    """A JSON file as a dict; {} when there is none."""
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def _clash(key, previous, current):
    return f"{key}={previous!r} (this run: {current!r})" if previous != current else None


def _as_stored(entries):
    """`entries` as a JSON file holds them (tuples are lists), to compare with what one was read back from."""
    return json.loads(json.dumps(entries))


def _changed(previous, current):
    """The clashes of the entries both dicts have."""
    return [
        clash for key in sorted(previous.keys() & current.keys()) if (clash := _clash(key, previous[key], current[key]))
    ]
