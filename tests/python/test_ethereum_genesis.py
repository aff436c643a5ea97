"""The Ethereum adapter's genesis from a file: `charter sandbox --evm-genesis FILE` writes
`evm_genesis` into every node's configuration, and the chain starts with that chain ID and
those accounts (a funded account, a contract with code and storage) instead of the
development chain."""

import json

import pytest
from eth_account import Account
from web3 import Web3
from web3.exceptions import Web3RPCError

from conftest import _run_sandbox

CHAIN_ID = 1337
# Returns storage slot 0: PUSH1 0 SLOAD PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN.
CODE = "0x60005460005260206000f3"
CONTRACT = "0x00000000000000000000000000000000000C0dE0"
FUNDED_KEY = "0x" + "42" * 32
DEV_KEY_0 = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"


@pytest.fixture(scope="module")
def genesis_sandbox(tmp_path_factory):
    funded = Account.from_key(FUNDED_KEY)
    genesis = {
        "config": {"chainId": CHAIN_ID},
        "timestamp": "0x0",
        "alloc": {
            funded.address: {"balance": str(3 * 10**18)},
            CONTRACT: {"code": CODE, "nonce": "0x1", "storage": {"0x0": "0x2a"}},
        },
    }
    path = tmp_path_factory.mktemp("genesis") / "genesis.json"
    path.write_text(json.dumps(genesis))
    yield from _run_sandbox(tmp_path_factory, nodes=1, extra_args=("--evm-genesis", str(path)))


def test_genesis_file(genesis_sandbox):
    config = json.loads((genesis_sandbox.workspace / "node0" / "config.json").read_text())
    assert config["evm_genesis"].endswith("genesis.json")
    w3 = Web3(Web3.HTTPProvider(f"{genesis_sandbox.url}/app/ethereum", session=genesis_sandbox.session()))
    assert w3.eth.chain_id == CHAIN_ID
    contract = Web3.to_checksum_address(CONTRACT)
    assert w3.eth.get_code(contract).to_0x_hex() == CODE
    assert int.from_bytes(w3.eth.get_storage_at(contract, 0), "big") == 42
    assert int.from_bytes(w3.eth.call({"to": contract}), "big") == 42
    assert w3.eth.get_transaction_count(contract) == 1
    # The file's account is funded and sends.
    funded = Account.from_key(FUNDED_KEY)
    dev = Account.create()
    signed = funded.sign_transaction(
        {"to": dev.address, "value": 10**18, "gas": 21000, "gasPrice": 0, "nonce": 0, "chainId": CHAIN_ID}
    )
    receipt = w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(signed.raw_transaction), timeout=30, poll_latency=0.05
    )
    assert receipt.status == 1
    assert w3.eth.get_balance(funded.address) == 2 * 10**18
    # A development account (funded only on the development chain) has nothing to send here.
    poor = Account.from_key(DEV_KEY_0).sign_transaction(
        {"to": dev.address, "value": 1, "gas": 21000, "gasPrice": 0, "nonce": 0, "chainId": CHAIN_ID}
    )
    with pytest.raises(Web3RPCError, match="insufficient funds"):
        w3.eth.send_raw_transaction(poor.raw_transaction)
