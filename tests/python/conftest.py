"""Fixtures for the third-party (Python) tests of Charter.

The `sandbox` fixture starts `charter sandbox` on a free loopback port in a
temporary workspace, waits for it to write sandbox.json, yields a `Sandbox`
describing it, and stops it with SIGTERM at the end of the session.
"""

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BIN = REPO / "target" / "debug" / "charter"
STARTUP_TIMEOUT_S = 60
STOP_TIMEOUT_S = 15


@dataclass
class Sandbox:
    workspace: Path
    port: int
    info: dict

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def service_cert(self) -> Path:
        return self.workspace / "service_cert.pem"

    @property
    def service_cert_pem(self) -> str:
        return self.service_cert.read_text()

    @property
    def user_cert(self) -> tuple:
        return (str(self.workspace / "user0_cert.pem"), str(self.workspace / "user0_privk.pem"))

    def session(self, client_cert: bool = True, verify=None) -> requests.Session:
        """A requests session that verifies the server only against
        service_cert.pem (or `verify`) and, by default, authenticates as user0.

        trust_env is off: otherwise REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE in the
        environment silently replace a session-level `verify`, and proxy
        variables could route loopback traffic elsewhere."""
        s = requests.Session()
        s.trust_env = False
        s.cert = self.user_cert if client_cert else None
        s.verify = str(verify if verify is not None else self.service_cert)
        return s


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # Our child was started in its own session: kill its whole group
        # (the sandbox and the node process it spawned), and only that.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=STOP_TIMEOUT_S)


@pytest.fixture(scope="session")
def sandbox(tmp_path_factory):
    yield from _run_sandbox(tmp_path_factory, nodes=1)


@pytest.fixture(scope="session")
def sandbox3(tmp_path_factory):
    """A 3-node network: node i serves clients on `port + i`; the first is normally primary."""
    yield from _run_sandbox(tmp_path_factory, nodes=3)


def _run_sandbox(tmp_path_factory, nodes, extra_args=()):
    """Starts `charter sandbox` with `nodes` nodes (and `extra_args`), yields a `Sandbox`."""
    binary = Path(os.environ.get("CHARTER_BIN", DEFAULT_BIN))
    if not binary.exists():
        pytest.fail(f"charter binary not found at {binary}; run `cargo build -p charter-cli` or set CHARTER_BIN")

    workspace = tmp_path_factory.mktemp("sandbox")
    port = _free_port()
    log_path = workspace.parent / f"{workspace.name}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(
        [
            str(binary),
            "sandbox",
            "--nodes",
            str(nodes),
            "--workspace",
            str(workspace),
            "--port",
            str(port),
            "--signature-interval-ms",
            "50",
            *extra_args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        ready = workspace / "sandbox.json"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        info = None
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if ready.exists():
                try:
                    info = json.loads(ready.read_text())
                    break
                except json.JSONDecodeError:
                    pass  # still being written
            time.sleep(0.1)
        if info is None:
            log.flush()
            pytest.fail(
                f"sandbox not ready within {STARTUP_TIMEOUT_S}s (exit code {proc.poll()}); "
                f"log:\n{log_path.read_text(errors='replace')}"
            )
        yield Sandbox(workspace=workspace, port=port, info=info)
    finally:
        _stop(proc)
        log.close()


def combined_pem(workspace: Path, user: str) -> Path:
    """`<user>_cert.pem` and `<user>_privk.pem` concatenated, the single PEM file the
    azure-confidentialledger SDK's ConfidentialLedgerCertificateCredential takes."""
    path = workspace / f"{user}_combined.pem"
    if not path.exists():
        cert = (workspace / f"{user}_cert.pem").read_text()
        key = (workspace / f"{user}_privk.pem").read_text()
        path.write_text(cert.rstrip("\n") + "\n" + key)
    return path


@pytest.fixture(scope="session")
def user0_pem(sandbox) -> Path:
    return combined_pem(sandbox.workspace, "user0")


class OwnSandbox:
    """A sandbox of its own, for tests that stop and restart it (the shared `sandbox`
    fixture lives for the whole session). Restarting keeps the workspace, so the node
    recovers from its ledger files."""

    def __init__(self, binary: Path, workspace: Path):
        self.binary = binary
        self.workspace = workspace
        self.port = _free_port()
        self.proc = None
        self.info = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def service_cert(self) -> Path:
        return self.workspace / "service_cert.pem"

    def start(self) -> None:
        assert self.proc is None
        self.starts += 1
        log_path = self.workspace.parent / f"{self.workspace.name}.{self.starts}.log"
        log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(self.binary),
                "sandbox",
                "--nodes",
                "1",
                "--workspace",
                str(self.workspace),
                "--port",
                str(self.port),
                "--signature-interval-ms",
                "50",
                # Small chunks, so that entries read back after a restart span several files.
                "--chunk-bytes-max",
                "4096",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        ready = self.workspace / "sandbox.json"
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if ready.exists():
                try:
                    self.info = json.loads(ready.read_text())
                    return
                except json.JSONDecodeError:
                    pass  # still being written
            time.sleep(0.1)
        exit_code = self.proc.poll()
        self.stop()
        pytest.fail(
            f"own sandbox not ready within {STARTUP_TIMEOUT_S}s (exit code {exit_code}); "
            f"log:\n{log_path.read_text(errors='replace')}"
        )

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def own_sandbox(tmp_path_factory):
    binary = Path(os.environ.get("CHARTER_BIN", DEFAULT_BIN))
    if not binary.exists():
        pytest.fail(f"charter binary not found at {binary}; run `cargo build -p charter-cli` or set CHARTER_BIN")
    own = OwnSandbox(binary, tmp_path_factory.mktemp("own_sandbox"))
    own.start()
    try:
        yield own
    finally:
        own.stop()
