"""Third-party noise silenced at its source, in the driver and in every Ray worker.

A user reads lmforge's progress and figures on stderr; torchao failing to load CUDA
kernels on a CPU machine, torch's deprecation notes on its own pytree registry, DeepSpeed
saying it picked the CPU, or MLflow's download bars say nothing about their run. Logger
levels, warning filters and environment switches turn them off; ``--verbose`` (or
``LMFORGE_VERBOSE=1``) leaves everything on. Ray workers get the same treatment through
the job's runtime env (``worker_process_setup_hook``), since each one imports these
libraries itself.
"""

from __future__ import annotations

import logging
import os
import warnings

VERBOSE_ENV = "LMFORGE_VERBOSE"

# logger -> the lowest level still shown (what each one says at a lower level is listed beside it)
NOISY_LOGGERS = {
    "torchao": logging.ERROR,  # "Failed to load .../_C_mxfp8...so", CUDA-only kernels on a CPU build
    "torch.utils._pytree": logging.ERROR,  # "register_constant() on Enum subclasses is deprecated"
    "torch.distributed.elastic": logging.ERROR,
    "DeepSpeed": logging.ERROR,  # "Setting accelerator to CPU"; op-build chatter
    "mlflow": logging.WARNING, "alembic": logging.WARNING, "urllib3": logging.WARNING, "httpx": logging.WARNING,
    "httpx2": logging.WARNING,  # the openai client's HTTP layer: one INFO line per request otherwise
    "filelock": logging.WARNING, "trafilatura": logging.WARNING, "htmldate": logging.WARNING,
    "charset_normalizer": logging.WARNING, "matplotlib": logging.WARNING,
    "transformers": logging.ERROR,  # generation-config and loading notes a pipeline cannot act on
    "ray.serve": logging.WARNING,  # "Started Serve in namespace", one access-log line per request
    "ray._private.authentication": logging.ERROR,  # "Token authentication is enabled for this Ray cluster"
    "ray.train": logging.WARNING, "ray.tune": logging.WARNING, "ray.data": logging.WARNING,
    "prefect.events": logging.ERROR,
    "gguf": logging.WARNING,  # "This GGUF file is for Little Endian only", the files it writes
}

# (message regex, category) of warnings.warn calls that carry no information about the run
NOISY_WARNINGS = [
    (r".*triton.*", UserWarning),
    (r".*torch\.utils\._pytree.*", FutureWarning),
    (r".*TypedStorage is deprecated.*", UserWarning),
    (r".*`torch_dtype` is deprecated.*", UserWarning),
    (r".*pkg_resources is deprecated.*", UserWarning),
    (r".*(is|are) deprecated.*", DeprecationWarning),
    (r".*", FutureWarning),
]

QUIET_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",  # tqdm bars on every artifact download
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # transformers' "Loading weights" / "Writing model shards" bars
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "3",
    "RAY_DEDUP_LOGS": "1",
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
}


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


def quiet_third_party(loud: bool | None = None) -> None:
    """Silence what NOISY_LOGGERS / NOISY_WARNINGS list, in this process and in processes it starts."""
    loud = verbose() if loud is None else loud
    os.environ[VERBOSE_ENV] = "1" if loud else "0"
    if loud:
        return
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)
    if "DS_ACCELERATOR" not in os.environ and not _cuda():
        os.environ["DS_ACCELERATOR"] = "cpu"  # DeepSpeed then does not probe and announce it
    for name, level in NOISY_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    for message, category in NOISY_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)


def quiet_worker() -> None:
    """Ray's ``worker_process_setup_hook``: each worker process silences the same noise as its driver."""
    quiet_third_party()


def ray_runtime_env() -> dict:
    """What every Ray job lmforge starts carries: the setup hook and the switches, as the driver has them."""
    env = {VERBOSE_ENV: "1" if verbose() else "0"}
    if not verbose():
        env.update({k: os.environ.get(k, v) for k, v in QUIET_ENV.items()})
        if "DS_ACCELERATOR" in os.environ:
            env["DS_ACCELERATOR"] = os.environ["DS_ACCELERATOR"]
    return {"worker_process_setup_hook": "stages.core.quiet.quiet_worker", "env_vars": env}


def _cuda() -> bool:
    """Whether an NVIDIA device may be present (without importing torch: most commands never need it)."""
    import glob

    return bool(glob.glob("/dev/nvidia*") or os.path.exists("/proc/driver/nvidia/version")
                or glob.glob("/dev/dxg"))
