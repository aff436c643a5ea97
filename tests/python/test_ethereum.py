"""Real Ethereum tooling against Charter's Ethereum adapter (`POST /app/ethereum`).

The ERC-20 in tests/ethereum/ERC20.sol is compiled by solcjs (the npm `solc` package pinned in
tests/ethereum/package.json; `npm ci --prefix tests/ethereum` installs it), then web3.py (PyPI)
deploys it through a live `charter sandbox`, transfers tokens and ether, reads balances and
Transfer events, gets receipts, and checks that another Charter user sees none of it. The
Ethereum transaction's Charter transaction is then verified with Microsoft's receipt verifier.
"""

import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from azure.confidentialledger.receipt import verify_receipt
from eth_account import Account
from web3 import Web3
from web3.exceptions import ContractLogicError, TransactionNotFound, Web3RPCError

REPO = Path(__file__).resolve().parents[2]
ETHEREUM = REPO / "tests" / "ethereum"
CHAIN_ID = 0x4348
# Hardhat/Anvil development accounts 0 and 1 (mnemonic "test test ... junk"): funded at genesis.
DEV_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_KEY_1 = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
SUPPLY = 10**24
COMMIT_TIMEOUT_S = 30


@pytest.fixture(scope="module")
def token_artifact():
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is missing: install nodejs (bash .ci/run does)")
    if not (ETHEREUM / "node_modules" / "solc").exists():
        pytest.fail("solcjs is missing: run `npm ci --prefix tests/ethereum` (bash .ci/run does)")
    out = subprocess.run(
        [node, str(ETHEREUM / "compile.js"), str(ETHEREUM / "ERC20.sol")],
        check=True,
        capture_output=True,
        timeout=120,
    )
    compiled = json.loads(out.stdout)
    assert compiled["version"].startswith("0.8.37")
    return compiled["contracts"]["CharterToken"]


def _web3(sandbox, user: str) -> Web3:
    session = sandbox.session()
    session.cert = (
        str(sandbox.workspace / f"{user}_cert.pem"),
        str(sandbox.workspace / f"{user}_privk.pem"),
    )
    w3 = Web3(Web3.HTTPProvider(f"{sandbox.url}/app/ethereum", session=session))
    return w3


def _send(w3: Web3, account, tx: dict):
    signed = account.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.05)


def _charter_receipt(sandbox, txid: str) -> dict:
    s = sandbox.session()
    deadline = time.monotonic() + COMMIT_TIMEOUT_S
    while True:
        r = s.get(f"{sandbox.url}/app/receipt", params={"transaction_id": txid}, timeout=10)
        if r.status_code == 200:
            return r.json()
        if time.monotonic() > deadline:
            pytest.fail(f"no Charter receipt for {txid}: {r.status_code} {r.text}")
        time.sleep(0.05)


def test_erc20_deploy_transfer_events_and_confidentiality(sandbox, token_artifact):
    w3 = _web3(sandbox, "user0")
    assert w3.is_connected()
    assert w3.eth.chain_id == CHAIN_ID
    assert w3.client_version.startswith("Charter/")
    owner = Account.from_key(DEV_KEY_0)
    friend = Account.from_key(DEV_KEY_1)

    # Deploy (EIP-1559 transaction; web3 fills gas and fees from eth_estimateGas,
    # eth_maxPriorityFeePerGas and the latest block's base fee).
    token_factory = w3.eth.contract(abi=token_artifact["abi"], bytecode=token_artifact["bytecode"])
    deploy = token_factory.constructor("Charter Token", "CHT", SUPPLY).build_transaction(
        {"from": owner.address, "nonce": w3.eth.get_transaction_count(owner.address)}
    )
    assert deploy["chainId"] == CHAIN_ID
    receipt = _send(w3, owner, deploy)
    assert receipt.status == 1
    assert receipt.contractAddress is not None
    token = w3.eth.contract(address=receipt.contractAddress, abi=token_artifact["abi"])
    assert token.functions.name().call() == "Charter Token"
    assert token.functions.balanceOf(owner.address).call() == SUPPLY
    assert len(w3.eth.get_code(receipt.contractAddress)) > 100

    # Transfer tokens.
    amount = 12345 * 10**18
    transfer = token.functions.transfer(friend.address, amount).build_transaction(
        {"from": owner.address, "nonce": w3.eth.get_transaction_count(owner.address)}
    )
    receipt = _send(w3, owner, transfer)
    assert receipt.status == 1
    events = token.events.Transfer().process_receipt(receipt)
    assert len(events) == 1
    assert events[0].args["from"] == owner.address
    assert events[0].args["to"] == friend.address
    assert events[0].args["value"] == amount
    assert token.functions.balanceOf(friend.address).call() == amount
    assert token.functions.balanceOf(owner.address).call() == SUPPLY - amount

    # Transfer events through eth_getLogs: the mint and the transfer.
    logs = token.events.Transfer().get_logs(from_block=0)
    assert [(log.args["to"], log.args["value"]) for log in logs] == [
        (owner.address, SUPPLY),
        (friend.address, amount),
    ]

    # A reverting call reports its reason: an address without tokens cannot transfer one.
    penniless = Web3.to_checksum_address("0x" + "11" * 20)
    with pytest.raises(ContractLogicError, match="balance too low"):
        token.functions.transfer(owner.address, 1).call({"from": penniless})

    # A legacy (EIP-155) ether transfer with a gas price, paid from the balance.
    before = w3.eth.get_balance(owner.address)
    receipt = _send(
        w3,
        owner,
        {
            "to": friend.address,
            "value": 10**18,
            "gas": 21000,
            "gasPrice": 7,
            "nonce": w3.eth.get_transaction_count(owner.address),
            "chainId": CHAIN_ID,
        },
    )
    assert receipt.status == 1 and receipt.gasUsed == 21000
    assert w3.eth.get_balance(owner.address) == before - 10**18 - 21000 * 7
    block = w3.eth.get_block(receipt.blockNumber, full_transactions=True)
    assert block.transactions[0]["hash"] == receipt.transactionHash
    assert w3.eth.block_number == receipt.blockNumber
    tx_hash = receipt.transactionHash

    # The Ethereum transaction is a Charter transaction with a receipt Microsoft's verifier accepts.
    raw = w3.provider.make_request("eth_getTransactionReceipt", [tx_hash.to_0x_hex()])
    txid = raw["result"]["charterTransactionId"]
    charter_receipt = _charter_receipt(sandbox, txid)
    verify_receipt(charter_receipt, sandbox.service_cert_pem)

    # Another Charter user sees none of user0's account, transactions or receipts ...
    other = _web3(sandbox, "user1")
    assert other.eth.get_balance(owner.address) == 0
    assert other.eth.get_transaction_count(owner.address) == 0
    with pytest.raises(TransactionNotFound):
        other.eth.get_transaction_receipt(tx_hash)
    with pytest.raises(TransactionNotFound):
        other.eth.get_transaction(tx_hash)
    assert other.eth.get_block(receipt.blockNumber).transactions == []
    # ... but contracts are public, so the token answers its own queries.
    assert other.eth.contract(address=token.address, abi=token_artifact["abi"]).functions.balanceOf(
        friend.address
    ).call() == amount
    # And user1 cannot send from user0's account even with its key.
    stolen = owner.sign_transaction(
        {
            "to": friend.address,
            "value": 1,
            "gas": 21000,
            "gasPrice": 0,
            "nonce": w3.eth.get_transaction_count(owner.address),
            "chainId": CHAIN_ID,
        }
    )
    with pytest.raises(Web3RPCError, match="bound to another user"):
        other.eth.send_raw_transaction(stolen.raw_transaction)


def test_transfers_sent_to_followers_are_forwarded_and_committed(sandbox3):
    # Followers forward eth_sendRawTransaction to the primary (which recovers the senders off
    # its core thread); the receipts and the sender's state then read back on every node.
    sender = Account.from_key(DEV_KEY_0)
    recipient = Account.create()
    nodes = []
    for index in range(3):
        session = sandbox3.session()
        session.cert = (
            str(sandbox3.workspace / "user0_cert.pem"),
            str(sandbox3.workspace / "user0_privk.pem"),
        )
        url = f"https://127.0.0.1:{sandbox3.port + index}/app/ethereum"
        nodes.append(Web3(Web3.HTTPProvider(url, session=session)))

    def transfer(index: int, nonce: int, value: int):
        signed = sender.sign_transaction(
            {
                "to": recipient.address,
                "value": value,
                "gas": 21000,
                "gasPrice": 0,
                "nonce": nonce,
                "chainId": CHAIN_ID,
            }
        )
        return nodes[index].eth.send_raw_transaction(signed.raw_transaction)

    # The account binds to user0 with its first transaction; its state is user0's from then on.
    nonce = nodes[0].eth.get_transaction_count(sender.address)
    first = transfer(1, nonce, 1000)
    nodes[0].eth.wait_for_transaction_receipt(first, timeout=30, poll_latency=0.05)
    before = nodes[0].eth.get_balance(sender.address)
    assert before > 0
    hashes = [first] + [transfer(index, nonce + n, 1000 + n) for n, index in [(1, 2), (2, 1), (3, 2)]]
    for w3 in nodes:
        for tx_hash in hashes:
            receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.05)
            assert receipt.status == 1
        assert w3.eth.get_transaction_count(sender.address) == nonce + 4
        assert w3.eth.get_balance(sender.address) == before - (1001 + 1002 + 1003)


def test_batch_and_malformed_requests(sandbox):
    s = sandbox.session()
    url = f"{sandbox.url}/app/ethereum"
    batch = [
        {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []},
        {"jsonrpc": "2.0", "id": 2, "method": "eth_nope", "params": []},
    ]
    r = s.post(url, json=batch, timeout=10)
    assert r.status_code == 200
    assert [x.get("result") for x in r.json()] == [hex(CHAIN_ID), None]
    assert r.json()[1]["error"]["code"] == -32601
    r = s.post(url, data=b"{", headers={"content-type": "application/json"}, timeout=10)
    assert r.status_code == 200 and r.json()["error"]["code"] == -32700
    assert s.get(url, timeout=10).status_code == 405
