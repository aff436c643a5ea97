"""COSE Sign1 governance messages interoperate between Charter and CCF.

CCF's own signer, `ccf_cose_sign1` from the `ccf` PyPI package, writes messages that
Charter parses and verifies (`crates/crypto/examples/cose_tool.rs`), and Charter's messages
verify with `ccf.cose.validate_cose_sign1` and are byte for byte what `ccf_cose_sign1` writes:
same tag, protected header bytes and empty unprotected header, and, since both sign
deterministically (RFC 6979; pycose through python-ecdsa), the same signature.

The tool is `CHARTER_COSE_TOOL` if set, else built with
`cargo build -p charter-crypto --example cose_tool`.
"""

import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest
from ccf.cose import cert_fingerprint, validate_cose_sign1
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

REPO = Path(__file__).resolve().parents[2]
BUILD_TIMEOUT_S = 600
RUN_TIMEOUT_S = 60
CREATED_AT_ISO = "2024-03-04T05:06:07+00:00"
CREATED_AT = int(datetime.datetime.fromisoformat(CREATED_AT_ISO).timestamp())
PAYLOAD = json.dumps({"actions": [{"name": "set_member_data", "args": {"x": "é"}}]}).encode()


@pytest.fixture(scope="session")
def cose_tool() -> Path:
    configured = os.environ.get("CHARTER_COSE_TOOL")
    if configured:
        return Path(configured)
    subprocess.run(
        ["cargo", "build", "-q", "-p", "charter-crypto", "--example", "cose_tool"],
        cwd=REPO,
        check=True,
        timeout=BUILD_TIMEOUT_S,
    )
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    return target / "debug" / "examples" / "cose_tool"


@pytest.fixture(scope="session")
def ccf_cose_sign1() -> str:
    beside_python = Path(sys.executable).parent / "ccf_cose_sign1"
    found = str(beside_python) if beside_python.exists() else shutil.which("ccf_cose_sign1")
    if found is None:
        pytest.fail("ccf_cose_sign1 not found; pip install -r tests/python/requirements.txt")
    return found


class Member:
    """A P-384 key and self-signed certificate, as a CCF member has."""

    def __init__(self, directory: Path, name: str):
        self.key = ec.generate_private_key(ec.SECP384R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(datetime.datetime(2020, 1, 1))
            .not_valid_after(datetime.datetime(2040, 1, 1))
            .sign(self.key, hashes.SHA384())
        )
        self.key_path = directory / f"{name}_privk.pem"
        self.cert_path = directory / f"{name}_cert.pem"
        self.key_path.write_bytes(
            self.key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.cert_pem = self.cert.public_bytes(serialization.Encoding.PEM).decode()
        self.cert_path.write_text(self.cert_pem)

    @property
    def member_id(self) -> str:
        return self.cert.fingerprint(hashes.SHA256()).hex()


@pytest.fixture
def member(tmp_path) -> Member:
    return Member(tmp_path, "member0")


@pytest.fixture
def payload_path(tmp_path) -> Path:
    path = tmp_path / "payload.json"
    path.write_bytes(PAYLOAD)
    return path


MESSAGES = [
    ("proposal", None),
    ("ballot", "5a1c0ffee"),
    ("withdrawal", "0123abcd"),
    ("ack", None),
]


def sign_with_ccf(tool, member, payload_path, msg_type, proposal_id) -> bytes:
    args = [
        tool,
        "--content", str(payload_path),
        "--signing-cert", str(member.cert_path),
        "--signing-key", str(member.key_path),
        "--ccf-gov-msg-type", msg_type,
        "--ccf-gov-msg-created-at", CREATED_AT_ISO,
    ]  # fmt: skip
    if proposal_id is not None:
        args += ["--ccf-gov-msg-proposal-id", proposal_id]
    return subprocess.run(args, check=True, capture_output=True, timeout=RUN_TIMEOUT_S).stdout


def sign_with_charter(tool, member, payload_path, msg_type, proposal_id, out: Path) -> bytes:
    args = [
        str(tool), "sign",
        "--key", str(member.key_path),
        "--cert", str(member.cert_path),
        "--msg-type", msg_type,
        "--created-at", str(CREATED_AT),
        "--content", str(payload_path),
        "--out", str(out),
    ]  # fmt: skip
    if proposal_id is not None:
        args += ["--proposal-id", proposal_id]
    subprocess.run(args, check=True, timeout=RUN_TIMEOUT_S)
    return out.read_bytes()


def charter_verify(tool, cert_path: Path, message: bytes, tmp_path: Path):
    path = tmp_path / "to_verify.cose"
    path.write_bytes(message)
    return subprocess.run(
        [str(tool), "verify", "--cert", str(cert_path), "--in", str(path)],
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


@pytest.mark.parametrize("msg_type,proposal_id", MESSAGES)
def test_charter_verifies_ccf_messages(
    cose_tool, ccf_cose_sign1, member, payload_path, tmp_path, msg_type, proposal_id
):
    message = sign_with_ccf(ccf_cose_sign1, member, payload_path, msg_type, proposal_id)
    result = charter_verify(cose_tool, member.cert_path, message, tmp_path)
    assert result.returncode == 0, result.stderr
    headers = json.loads(result.stdout)
    assert headers == {
        "alg": -35,
        "kid": member.member_id,
        "msg_type": msg_type,
        "proposal_id": proposal_id,
        "created_at": CREATED_AT,
        "payload_hex": PAYLOAD.hex(),
        "kid_is_cert_fingerprint": True,
    }


@pytest.mark.parametrize("msg_type,proposal_id", MESSAGES)
def test_ccf_verifies_charter_messages(
    cose_tool, member, payload_path, tmp_path, msg_type, proposal_id
):
    message = sign_with_charter(
        cose_tool, member, payload_path, msg_type, proposal_id, tmp_path / "charter.cose"
    )
    validate_cose_sign1(member.cert.public_key(), message)

    decoded = cbor2.loads(message)
    assert isinstance(decoded, cbor2.CBORTag) and decoded.tag == 18
    protected, unprotected, payload, signature = decoded.value
    expected = {
        1: -35,
        4: cert_fingerprint(member.cert_pem),
        "ccf.gov.msg.type": msg_type,
        "ccf.gov.msg.created_at": CREATED_AT,
    }
    if proposal_id is not None:
        expected["ccf.gov.msg.proposal_id"] = proposal_id
    assert cbor2.loads(protected) == expected
    assert expected[4] == member.member_id.encode()  # kid: bstr of the hex text
    assert unprotected == {}
    assert payload == PAYLOAD
    assert len(signature) == 96  # raw r || s


@pytest.mark.parametrize("msg_type,proposal_id", MESSAGES)
def test_charter_writes_the_same_bytes_as_ccf(
    cose_tool, ccf_cose_sign1, member, payload_path, tmp_path, msg_type, proposal_id
):
    ccf = sign_with_ccf(ccf_cose_sign1, member, payload_path, msg_type, proposal_id)
    ours = sign_with_charter(
        cose_tool, member, payload_path, msg_type, proposal_id, tmp_path / "charter.cose"
    )
    assert ours[:-96] == ccf[:-96], "layout differs"
    assert ours == ccf, "both sign deterministically, so signatures match too"


def test_tampering_and_wrong_keys_are_rejected(
    cose_tool, ccf_cose_sign1, member, payload_path, tmp_path
):
    other = Member(tmp_path, "member1")
    ccf = sign_with_ccf(ccf_cose_sign1, member, payload_path, "ballot", "aa")
    ours = sign_with_charter(cose_tool, member, payload_path, "ballot", "aa", tmp_path / "c.cose")

    # Charter rejects a CCF message signed by someone else or altered anywhere we try.
    result = charter_verify(cose_tool, other.cert_path, ccf, tmp_path)
    assert result.returncode == 1 and "bad signature" in result.stderr
    for index in (0, 10, len(ccf) // 2, len(ccf) - len(PAYLOAD) - 98, len(ccf) - 1):
        altered = bytearray(ccf)
        altered[index] ^= 0x01
        result = charter_verify(cose_tool, member.cert_path, bytes(altered), tmp_path)
        assert result.returncode == 1, f"byte {index} altered yet accepted"

    # CCF rejects a Charter message under another key or with an altered payload.
    with pytest.raises(Exception):
        validate_cose_sign1(other.cert.public_key(), ours)
    altered = bytearray(ours)
    altered[-97 - len(PAYLOAD) // 2] ^= 0x01
    with pytest.raises(Exception):
        validate_cose_sign1(member.cert.public_key(), bytes(altered))
