"""Disaster recovery checked with third-party tools: a sandbox is stopped, a new one
recovers its ledger (`charter sandbox --recover`), and Microsoft's CCF receipt verifier
(`azure.confidentialledger.receipt.verify_receipt`) accepts receipts from both service
identities; `cryptography` checks that the previous identity endorsed the new one."""

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
from azure.confidentialledger.receipt import verify_receipt
from cryptography import x509

from conftest import DEFAULT_BIN, _free_port, _stop

TIMEOUT_S = 90


def _start(binary, workspace, port, *extra):
    log = open(workspace.parent / f"{workspace.name}.log", "wb")
    proc = subprocess.Popen(
        [str(binary), "sandbox", "--nodes", "1", "--workspace", str(workspace), "--port", str(port),
         "--signature-interval-ms", "50", *extra],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        ready = workspace / "sandbox.json"
        if ready.exists():
            try:
                json.loads(ready.read_text())
                return proc
            except json.JSONDecodeError:
                pass
        time.sleep(0.1)
    _stop(proc)
    log.close()
    pytest.fail("sandbox not ready: " + (workspace.parent / f"{workspace.name}.log").read_text(errors="replace"))


def _session(workspace):
    s = requests.Session()
    s.trust_env = False
    s.cert = (str(workspace / "user0_cert.pem"), str(workspace / "user0_privk.pem"))
    s.verify = str(workspace / "service_cert.pem")
    return s


def _receipt(session, url, txid):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = session.get(f"{url}/app/receipt", params={"transaction_id": txid}, timeout=10)
        if r.status_code == 200:
            return r.json()
        time.sleep(0.05)
    pytest.fail(f"no receipt for {txid}")


def test_receipts_from_both_identities_verify_after_recovery(tmp_path):
    binary = Path(os.environ.get("CHARTER_BIN", DEFAULT_BIN))
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    port = _free_port()
    proc = _start(binary, old, port)
    url = f"https://127.0.0.1:{port}"
    try:
        s = _session(old)
        r = s.put(f"{url}/app/kv/private-key", data=b"private value", timeout=10)
        assert r.status_code == 200, r.text
        txid = r.json()["transaction_id"]
        old_receipt = _receipt(s, url, txid)
    finally:
        _stop(proc)
    verify_receipt(old_receipt, (old / "service_cert.pem").read_text())

    new.mkdir()
    port = _free_port()
    proc = _start(binary, new, port, "--recover", str(old))
    url = f"https://127.0.0.1:{port}"
    try:
        s = _session(new)
        r = s.get(f"{url}/app/kv/private-key", timeout=10)
        assert (r.status_code, r.content) == (200, b"private value")
        # The old transaction's receipt, served by the recovered service, verifies against
        # the previous identity; a new one against the new identity.
        again = _receipt(s, url, txid)
        verify_receipt(again, (old / "service_cert.pem").read_text())
        r = s.put(f"{url}/app/kv/after", data=b"after", timeout=10)
        assert r.status_code == 200, r.text
        new_receipt = _receipt(s, url, r.json()["transaction_id"])
        verify_receipt(new_receipt, (new / "service_cert.pem").read_text())
        with pytest.raises(Exception):
            verify_receipt(new_receipt, (old / "service_cert.pem").read_text())
        # The previous identity endorsed the new one.
        record = s.get(f"{url}/gov/service/previous-identity", timeout=10).json()
        previous = x509.load_pem_x509_certificate((old / "service_cert.pem").read_bytes())
        current = x509.load_pem_x509_certificate((new / "service_cert.pem").read_bytes())
        endorsement = x509.load_pem_x509_certificate(record["endorsement"].encode())
        endorsement.verify_directly_issued_by(previous)
        assert endorsement.public_key() == current.public_key()
        assert previous != current
    finally:
        _stop(proc)
