"""ethers v6 (npm) against Charter's Ethereum adapter (`POST /app/ethereum`).

tests/ethereum/erc20_ethers.js compiles tests/ethereum/ERC20.sol with solcjs, deploys it with
ethers through the live `charter sandbox` (user0's client certificate), transfers tokens and
ether (legacy and EIP-1559), reads balances and Transfer events, gets receipts and blocks, and
checks that user1 sees none of it. Both packages are pinned in tests/ethereum/package-lock.json
(`npm ci --prefix tests/ethereum`, which .ci/run runs). The Ethereum transaction's Charter
transaction is then verified with Microsoft's receipt verifier.
"""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from azure.confidentialledger.receipt import verify_receipt

REPO = Path(__file__).resolve().parents[2]
ETHEREUM = REPO / "tests" / "ethereum"
# Hardhat/Anvil development accounts 2 and 3 (test_ethereum.py uses 0 and 1 in the same sandbox).
DEV_KEY_2 = "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"
DEV_KEY_3 = "0x7c852118294e51e653712a81e05800f419141751be58f605c371e15141b007a6"
SCRIPT_TIMEOUT_S = 180
COMMIT_TIMEOUT_S = 30


def test_ethers_erc20(sandbox):
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: install nodejs (bash .ci/run does)")
    for package in ("ethers", "solc"):
        if not (ETHEREUM / "node_modules" / package).exists():
            pytest.fail(f"{package} is missing: run `npm ci --prefix tests/ethereum` (bash .ci/run does)")
    ws = sandbox.workspace
    out = subprocess.run(
        [
            node,
            str(ETHEREUM / "erc20_ethers.js"),
            "--url", f"{sandbox.url}/app/ethereum",
            "--ca", str(sandbox.service_cert),
            "--cert", str(ws / "user0_cert.pem"),
            "--key", str(ws / "user0_privk.pem"),
            "--other-cert", str(ws / "user1_cert.pem"),
            "--other-key", str(ws / "user1_privk.pem"),
            "--owner-key", DEV_KEY_2,
            "--friend-key", DEV_KEY_3,
        ],
        capture_output=True,
        timeout=SCRIPT_TIMEOUT_S,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    summary = json.loads(out.stdout)
    assert summary["ethers"].startswith("6.")
    assert summary["events"] == 2
    assert summary["transfer"]["block"] > summary["deploy"]["block"]
    # Block timestamps come from the primary's clock: within a few minutes of ours.
    assert abs(summary["transfer"]["timestamp"] - time.time()) < 600

    # The transfer is a Charter transaction with a receipt Microsoft's verifier accepts.
    txid = summary["transfer"]["charterTransactionId"]
    s = sandbox.session()
    deadline = time.monotonic() + COMMIT_TIMEOUT_S
    while True:
        r = s.get(f"{sandbox.url}/app/receipt", params={"transaction_id": txid}, timeout=10)
        if r.status_code == 200:
            break
        if time.monotonic() > deadline:
            pytest.fail(f"no Charter receipt for {txid}: {r.status_code} {r.text}")
        time.sleep(0.05)
    verify_receipt(r.json(), sandbox.service_cert_pem)
