"""Third-party verification of Charter receipts and TLS identity.

Charter's receipts are checked with Microsoft's own verifier for CCF receipts,
`azure.confidentialledger.receipt.verify_receipt`, which knows nothing about
Charter: if it accepts them, Charter's receipts are CCF-compatible.
"""

import base64
import copy
import datetime
import ssl
import time

import pytest
import requests
from azure.confidentialledger.receipt import verify_receipt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

N_WRITES = 5
COMMIT_TIMEOUT_S = 30


def _wait_committed(session, url, txid):
    deadline = time.monotonic() + COMMIT_TIMEOUT_S
    status = None
    while time.monotonic() < deadline:
        r = session.get(f"{url}/node/tx", params={"transaction_id": txid}, timeout=10)
        r.raise_for_status()
        status = r.json()["status"]
        if status == "Committed":
            return
        assert status in ("Pending", "Unknown"), f"{txid} became {status}"
        time.sleep(0.05)
    pytest.fail(f"{txid} not committed within {COMMIT_TIMEOUT_S}s (last status {status})")


def _get_receipt(session, url, txid):
    deadline = time.monotonic() + COMMIT_TIMEOUT_S
    while True:
        r = session.get(f"{url}/app/receipt", params={"transaction_id": txid}, timeout=10)
        if r.status_code == 200:
            return r.json()
        if time.monotonic() > deadline:
            pytest.fail(f"no receipt for {txid}: {r.status_code} {r.text}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def receipts(sandbox):
    """Receipts (as returned by the server, snake_case) for N_WRITES committed writes."""
    s = sandbox.session()
    txids = []
    for i in range(N_WRITES):
        r = s.put(f"{sandbox.url}/app/kv/receipt-key-{i}", data=f"value-{i}".encode(), timeout=10)
        assert r.status_code == 200, r.text
        txid = r.json()["transaction_id"]
        view, seqno = txid.split(".")
        assert int(view) >= 1 and int(seqno) >= 1
        txids.append(txid)
    for txid in txids:
        _wait_committed(s, sandbox.url, txid)
    return [(txid, _get_receipt(s, sandbox.url, txid)) for txid in txids]


def _camel(key):
    head, *rest = key.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _to_camel_case(obj):
    if isinstance(obj, dict):
        return {_camel(k): _to_camel_case(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_camel_case(v) for v in obj]
    return obj


def _flip_hex(h):
    """Change the first hex digit of h, keeping it valid hex of the same length."""
    return ("1" if h[0] == "0" else "0") + h[1:]


def _self_signed_cert_pem():
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Charter service")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA384())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


# --- genuine receipts -------------------------------------------------------


def test_receipt_shape(receipts):
    for txid, r in receipts:
        assert set(r) >= {"cert", "node_id", "signature", "proof", "leaf_components"}
        lc = r["leaf_components"]
        assert set(lc) == {"write_set_digest", "commit_evidence", "claims_digest"}
        # CCF's commit evidence format: "ce:<view>.<seqno>:<hex>"
        assert lc["commit_evidence"].startswith(f"ce:{txid}:"), lc["commit_evidence"]
        for elem in r["proof"]:
            assert len(elem) == 1 and set(elem) <= {"left", "right"}
    # With several transactions in the tree, at least one receipt has a non-empty proof.
    assert any(r["proof"] for _, r in receipts)


def test_verify_receipts_snake_case(receipts, sandbox):
    service_cert = sandbox.service_cert_pem
    for txid, r in receipts:
        original = copy.deepcopy(r)
        verify_receipt(r, service_cert)
        assert r == original, f"verify_receipt mutated the receipt for {txid}"


def test_verify_receipts_camel_case(receipts, sandbox):
    service_cert = sandbox.service_cert_pem
    for _, r in receipts:
        camel = _to_camel_case(r)
        assert "leafComponents" in camel and "writeSetDigest" in camel["leafComponents"]
        assert "nodeId" in camel
        verify_receipt(camel, service_cert)


# --- tampered receipts ------------------------------------------------------


def _tamper_write_set_digest(r):
    r["leafComponents"]["writeSetDigest"] = _flip_hex(r["leafComponents"]["writeSetDigest"])


def _tamper_commit_evidence(r):
    ce = r["leafComponents"]["commitEvidence"]
    r["leafComponents"]["commitEvidence"] = ce[:-1] + ("0" if ce[-1] != "0" else "1")


def _tamper_claims_digest(r):
    r["leafComponents"]["claimsDigest"] = _flip_hex(r["leafComponents"]["claimsDigest"])


def _tamper_proof(r):
    elem = r["proof"][0]
    side = "left" if "left" in elem else "right"
    elem[side] = _flip_hex(elem[side])


def _tamper_proof_side(r):
    elem = r["proof"][0]
    (side, value), = elem.items()
    r["proof"][0] = {("right" if side == "left" else "left"): value}


def _tamper_signature(r):
    sig = bytearray(base64.b64decode(r["signature"]))
    sig[-1] ^= 0x01
    r["signature"] = base64.b64encode(bytes(sig)).decode()


def _tamper_node_id(r):
    r["nodeId"] = _flip_hex(r["nodeId"])


TAMPERINGS = {
    "write_set_digest": _tamper_write_set_digest,
    "commit_evidence": _tamper_commit_evidence,
    "claims_digest": _tamper_claims_digest,
    "proof_element": _tamper_proof,
    "proof_side": _tamper_proof_side,
    "signature": _tamper_signature,
    "node_id": _tamper_node_id,
}


@pytest.mark.parametrize("what", list(TAMPERINGS))
def test_tampered_receipt_rejected(receipts, sandbox, what):
    service_cert = sandbox.service_cert_pem
    checked = 0
    for _, r in receipts:
        if what.startswith("proof") and not r["proof"]:
            continue
        bad = _to_camel_case(copy.deepcopy(r))
        TAMPERINGS[what](bad)
        with pytest.raises(ValueError):
            verify_receipt(bad, service_cert)
        checked += 1
    assert checked > 0


def test_other_service_cert_rejected(receipts):
    other = _self_signed_cert_pem()
    for _, r in receipts:
        with pytest.raises(ValueError):
            verify_receipt(copy.deepcopy(r), other)


# --- TLS identity and authentication ------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_server_cert_verified_with_service_cert_only(sandbox, host):
    # The trust anchor is service_cert.pem alone: the handshake succeeds only
    # if the node certificate chains to the service CA and its SAN names `host`.
    r = sandbox.session().get(
        f"https://{host}:{sandbox.port}/node/tx", params={"transaction_id": "1.1"}, timeout=10
    )
    assert r.status_code == 200, r.text


def test_server_cert_rejected_against_unrelated_ca(sandbox, tmp_path):
    # Control for the test above: the same request fails with another CA as anchor.
    other = tmp_path / "other_ca.pem"
    other.write_text(_self_signed_cert_pem())
    with pytest.raises(requests.exceptions.SSLError):
        sandbox.session(verify=other).get(
            f"{sandbox.url}/node/tx", params={"transaction_id": "1.1"}, timeout=10
        )


def test_node_cert_signed_by_service_cert(sandbox):
    pem = ssl.get_server_certificate(("127.0.0.1", sandbox.port))
    node = x509.load_pem_x509_certificate(pem.encode())
    service = x509.load_pem_x509_certificate(sandbox.service_cert.read_bytes())
    # Checks issuer name and the signature only; extensions are not parsed.
    node.verify_directly_issued_by(service)


def assert_not_a_ca(cert):
    """End-entity certificates either omit basicConstraints or say cA=FALSE."""
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return
    assert bc.ca is False


def test_node_cert_extensions_parse_strictly(sandbox):
    pem = ssl.get_server_certificate(("127.0.0.1", sandbox.port))
    node = x509.load_pem_x509_certificate(pem.encode())
    assert_not_a_ca(node)
    san = node.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert any(str(ip) == "127.0.0.1" for ip in san.get_values_for_type(x509.IPAddress))


@pytest.mark.parametrize("name", ["user0_cert.pem", "member0_cert.pem"])
def test_identity_cert_extensions_parse_strictly(sandbox, name):
    cert = x509.load_pem_x509_certificate((sandbox.workspace / name).read_bytes())
    assert_not_a_ca(cert)


def test_service_cert_extensions_parse_strictly(sandbox):
    cert = x509.load_pem_x509_certificate(sandbox.service_cert.read_bytes())
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True


def test_no_client_cert_is_401(sandbox):
    r = sandbox.session(client_cert=False).put(f"{sandbox.url}/app/kv/x", data=b"y", timeout=10)
    assert r.status_code == 401, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
