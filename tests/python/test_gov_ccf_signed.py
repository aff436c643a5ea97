"""Governance of a live `charter sandbox` driven with CCF's own tooling.

Proposals and ballots are signed by `ccf_cose_sign1` from the `ccf` PyPI package, exactly as a
CCF operator would, and POSTed with `requests` to CCF's `/gov/members/...` paths. The sandbox is
the session fixture shared with the other tests: this test only adds a user.
"""

import datetime
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

RUN_TIMEOUT_S = 60
COSE = {"content-type": "application/cose"}
ACCEPT = "export function vote (proposal, proposerId) { return true; }"


@pytest.fixture(scope="module")
def cose_sign1_tool() -> str:
    beside_python = Path(sys.executable).parent / "ccf_cose_sign1"
    found = str(beside_python) if beside_python.exists() else shutil.which("ccf_cose_sign1")
    if found is None:
        pytest.fail("ccf_cose_sign1 not found; pip install -r tests/python/requirements.txt")
    return found


def _session(sandbox, cert=None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    s.verify = str(sandbox.service_cert)
    s.cert = cert
    return s


def _new_identity(directory: Path, name: str):
    """A fresh P-384 key and self-signed certificate; returns (cert_path, key_path, cert_pem)."""
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    key_path = directory / f"{name}_privk.pem"
    cert_path = directory / f"{name}_cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    cert_path.write_text(cert_pem)
    return cert_path, key_path, cert_pem


def _now_iso() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _sign(tool, sandbox, member: str, content: Path, msg_type: str, proposal_id=None) -> bytes:
    ws = sandbox.workspace
    args = [
        tool,
        "--content", str(content),
        "--signing-cert", str(ws / f"{member}_cert.pem"),
        "--signing-key", str(ws / f"{member}_privk.pem"),
        "--ccf-gov-msg-type", msg_type,
        "--ccf-gov-msg-created_at", _now_iso(),
    ]  # fmt: skip
    if proposal_id is not None:
        args += ["--ccf-gov-msg-proposal_id", proposal_id]
    return subprocess.run(args, check=True, capture_output=True, timeout=RUN_TIMEOUT_S).stdout


def _member_id(sandbox, name: str) -> str:
    (entry,) = [m for m in sandbox.info["members"] if m["name"] == name]
    return entry["id"]


def test_ccf_signed_proposal_and_ballots_add_a_user(sandbox, cose_sign1_tool, tmp_path):
    ws = sandbox.workspace
    user_cert, user_key, user_pem = _new_identity(tmp_path, "pyuser")
    user = _session(sandbox, cert=(str(user_cert), str(user_key)))
    r = user.get(f"{sandbox.url}/app/kv/py-gov")
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "InvalidAuthenticationInfo"

    proposal = {"actions": [{"name": "set_user", "args": {"cert": user_pem}}]}
    proposal_path = tmp_path / "proposal.json"
    proposal_path.write_text(json.dumps(proposal))
    signed = _sign(cose_sign1_tool, sandbox, "member0", proposal_path, "proposal")

    # The client certificate is optional: the COSE signature authenticates the member.
    member0 = _session(sandbox, cert=(str(ws / "member0_cert.pem"), str(ws / "member0_privk.pem")))
    r = member0.post(f"{sandbox.url}/gov/members/proposals:create", data=signed, headers=COSE)
    assert r.status_code == 200, r.text
    created = r.json()
    assert created["proposalState"] == "Open", created
    assert created["proposerId"] == _member_id(sandbox, "member0")
    proposal_id = created["proposalId"]

    # The same bytes again are a replay.
    r = member0.post(f"{sandbox.url}/gov/members/proposals:create", data=signed, headers=COSE)
    assert r.status_code == 409, r.text
    assert r.json()["error"]["code"] == "ReplayedRequest"

    r = member0.get(f"{sandbox.url}/gov/members/proposals/{proposal_id}/actions")
    assert r.status_code == 200, r.text
    assert r.json() == proposal

    ballot_path = tmp_path / "ballot.json"
    ballot_path.write_text(json.dumps({"ballot": ACCEPT}))
    anonymous = _session(sandbox)
    for member, expected in [("member1", "Open"), ("member2", "Accepted")]:
        member_id = _member_id(sandbox, member)
        ballot = _sign(cose_sign1_tool, sandbox, member, ballot_path, "ballot", proposal_id)
        r = anonymous.post(
            f"{sandbox.url}/gov/members/proposals/{proposal_id}/ballots/{member_id}:submit",
            data=ballot,
            headers=COSE,
        )
        assert r.status_code == 200, r.text
        voted = r.json()
        assert voted["proposalState"] == expected, voted
        assert voted["finalVotes"][member_id] is True, voted

    r = anonymous.get(f"{sandbox.url}/gov/members/proposals/{proposal_id}")
    assert r.status_code == 200, r.text
    assert r.json()["proposalState"] == "Accepted"
    assert r.json()["ballotCount"] == 2

    r = user.put(f"{sandbox.url}/app/kv/py-gov", data=b"added by CCF-signed governance")
    assert r.status_code == 200, r.text
    r = user.get(f"{sandbox.url}/app/kv/py-gov")
    assert r.status_code == 200, r.text
    assert r.content == b"added by CCF-signed governance"

    # user0 is still there for the other tests.
    r = sandbox.session().get(f"{sandbox.url}/app/kv/py-gov")
    assert r.status_code == 200, r.text
