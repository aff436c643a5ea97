"""Microsoft's azure-confidentialledger SDK (1.1.1), unchanged, against a 3-node Charter
network: through every node (followers forward writes to the primary with the caller's
certificate), entries are created, committed, read back and their receipts verified by the
SDK's own verify_receipt."""

from azure.confidentialledger.receipt import verify_receipt

from conftest import combined_pem
from test_azure_sdk import POLL_S, make_client


def test_every_node_serves_the_sdk(sandbox3):
    assert len(sandbox3.info["nodes"]) == 3
    pem = combined_pem(sandbox3.workspace, "user0")
    service_cert = sandbox3.service_cert_pem
    for index, node in enumerate(sandbox3.info["nodes"]):
        client = make_client(f"https://{node['rpc_address']}", pem, sandbox3.service_cert)
        contents = f"written through node{index}"
        created = client.begin_create_ledger_entry(
            {"contents": contents}, polling_interval=POLL_S
        ).result()
        txid = created["transactionId"]
        status = client.begin_wait_for_commit(txid, polling_interval=POLL_S).result()
        assert status["state"] == "Committed"
        entry = client.begin_get_ledger_entry(txid, polling_interval=POLL_S).result()
        assert entry["entry"]["contents"] == contents
        receipt = client.begin_get_receipt(txid, polling_interval=POLL_S).result()
        verify_receipt(receipt["receipt"], service_cert)
        claims = receipt["applicationClaims"]
        assert claims[0]["ledgerEntry"]["contents"] == contents
        verify_receipt(receipt["receipt"], service_cert, application_claims=claims)
