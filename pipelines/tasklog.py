"""Task logs a person reads. Airflow shows whatever a task writes to stderr as ERROR lines, so the
libraries' own stderr handlers (MLflow's "Successfully registered model", TensorFlow's start-up
chatter, progress bars) would read as failures: `quiet_libraries()` routes them through logging at
WARNING instead. `phase()` logs one line when a step starts and one when it ends, with its counts and
timing; `every()` paces progress lines on long loops. The DAGs call `quiet_libraries` before each
task (`on_execute_callback`); the CLI leaves the libraries alone."""
from __future__ import annotations

import logging
import os
import time
from contextlib import contextmanager

log = logging.getLogger("campaignops")

# Loggers that chatter at INFO (or attach their own stderr handler) during a normal task.
NOISY = ("mlflow", "tensorflow", "absl", "keras", "h5py", "great_expectations", "dvc", "botocore", "boto3",
         "s3transfer", "urllib3", "alembic", "numexpr", "py4j", "pyspark", "matplotlib")


def quiet_libraries(level: int = logging.WARNING) -> None:
    """Library loggers at `level`, through the root logger (Airflow's handler) rather than their own
    stderr handlers; TensorFlow's C++ logging off; no progress bars (they go to stderr). Call it before
    TensorFlow and MLflow are imported (both read their settings from the environment then)."""
    # TensorFlow's C++ side writes straight to fd 2 (oneDNN notices, "NodeDef mentions attribute ..."):
    # only FATAL; real failures still surface as Python exceptions.
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"           # read when mlflow is first imported
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    os.environ.setdefault("TQDM_DISABLE", "1")
    for name in NOISY:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True
    log.setLevel(logging.INFO)
    quiet_tensorflow_import()


class _CapturedImport:
    """Imports `tensorflow` with fd 2 captured: its C++ side prints start-up notices straight to
    stderr before any log setting applies (absl's "before InitializeLog" line, the oneDNN notice),
    and Airflow would show each as an ERROR line. The captured lines are logged at DEBUG (``E``
    lines at WARNING). A meta-path finder wrapping the real loader, so the import stays lazy."""

    MODULES = ("tensorflow",)

    def find_spec(self, name, path=None, target=None):
        if name not in self.MODULES:
            return None
        import importlib.util
        import sys

        sys.meta_path.remove(self)           # find the real spec once, then step aside for good
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _FdCapturingLoader(spec.loader)
        return spec


class _FdCapturingLoader:
    def __init__(self, real):
        self.real = real

    def create_module(self, spec):
        return self.real.create_module(spec)

    def exec_module(self, module):
        import sys
        import tempfile

        sys.stderr.flush()
        saved = os.dup(2)
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                self.real.exec_module(module)
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                tmp.seek(0)
                for line in tmp.read().decode(errors="replace").splitlines():
                    if line.strip():
                        level = logging.WARNING if line.startswith(("E0", "F0", "Traceback")) else logging.DEBUG
                        logging.getLogger(module.__name__).log(level, "%s", line)


def quiet_tensorflow_import() -> None:
    """Capture TensorFlow's import-time stderr (see _CapturedImport); no-op once it is imported."""
    import sys

    if "tensorflow" not in sys.modules and not any(isinstance(f, _CapturedImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _CapturedImport())


def on_task_start(context=None) -> None:
    """An Airflow `on_execute_callback`: quiet the libraries before the task body runs."""
    quiet_libraries()


def _fmt(facts: dict) -> str:
    parts = []
    for key, value in facts.items():
        if isinstance(value, bool) or value is None:
            parts.append(f"{key} {value}")
        elif isinstance(value, int):
            parts.append(f"{key} {value:,}")
        elif isinstance(value, float):
            parts.append(f"{key} {value:,.4g}")
        else:
            parts.append(f"{key} {value}")
    return ", ".join(parts)


@contextmanager
def phase(name: str, logger: logging.Logger | None = None, **facts):
    """Log `name …` then `name done in X s: <facts>`; the caller adds facts to the yielded dict.
    A failure logs `name failed after X s: <error>` and re-raises."""
    logger = logger or log
    t0 = time.perf_counter()
    logger.info("%s%s", name, f" ({_fmt(facts)})" if facts else "")
    out: dict = {}
    try:
        yield out
    except BaseException as exc:
        logger.info("%s failed after %.1f s: %s", name, time.perf_counter() - t0, str(exc).splitlines()[0][:300]
                    if str(exc) else type(exc).__name__)
        raise
    logger.info("%s done in %.1f s%s", name, time.perf_counter() - t0, f": {_fmt(out)}" if out else "")


class every:
    """Progress pacing for a long loop: `tick(done, total)` logs at most once per `seconds`."""

    def __init__(self, what: str, seconds: float = 15.0, logger: logging.Logger | None = None):
        self.what, self.seconds, self.logger = what, seconds, logger or log
        self.t0 = self.last = time.perf_counter()

    def tick(self, done: int, total: int | None = None) -> None:
        now = time.perf_counter()
        if now - self.last < self.seconds and not (total and done >= total):
            return
        self.last = now
        rate = done / max(now - self.t0, 1e-9)
        if total:
            eta = (total - done) / rate if rate > 0 else float("inf")
            self.logger.info("%s: %s/%s (%.0f%%, %.0f/s, ~%.0f s left)", self.what, f"{done:,}", f"{total:,}",
                             100 * done / total, rate, eta)
        else:
            self.logger.info("%s: %s (%.0f/s)", self.what, f"{done:,}", rate)
