//! `POST /node/join`: a node asks to join. Its attestation evidence must name a platform in
//! the TEE manifest and a measurement in the code manifest, and be bound to the key of the
//! certificate it presents on the TLS connection; it is then recorded as Pending until a
//! `transition_node_to_trusted` proposal passes.

use charter_attest::{Evidence, Platform, Policy};
use charter_crypto::Certificate;
use charter_gov::tables::{CODE_MANIFEST_MAP, HOST_DATA_MAP, NODES_MAP, TEE_MANIFEST_MAP};
use charter_kv::Tx;
use charter_ledger::{EntryKind, NodeInfo, NodeStatus};
use serde::Deserialize;
use serde_json::json;

use crate::api::{Request, Response};
use crate::node::{Action, Node};
use crate::CoreError;

/// Body of a join request.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JoinRequest {
    /// The joining node's certificate (PEM), the same one it presents as its TLS client
    /// certificate; the service endorses its key once the node is trusted.
    certificate: String,
    /// Its attestation evidence.
    evidence: Evidence,
    /// Address it serves clients on.
    rpc_address: String,
    /// Address of its node-to-node channel.
    #[serde(default)]
    node_address: Option<String>,
}

/// Days a node certificate endorsed at join is valid for.
pub const ENDORSED_CERT_DAYS: u32 = 3_650;

fn keys(tx: &mut Tx, map: &str) -> Vec<String> {
    tx.scan_prefix(map, b"", None, 10_000)
        .into_iter()
        .filter_map(|(key, _)| String::from_utf8(key).ok())
        .collect()
}

pub(crate) fn handle(
    node: &mut Node,
    request: &Request,
    out: &mut Vec<Action>,
) -> Result<Response, CoreError> {
    let join: JoinRequest = match serde_json::from_slice(&request.body) {
        Ok(join) => join,
        Err(error) => {
            return Ok(Response::error(
                400,
                "InvalidInput",
                format!("join request: {error}"),
            ))
        }
    };
    let cert = match Certificate::from_pem(&join.certificate) {
        Ok(cert) => cert,
        Err(error) => {
            return Ok(Response::error(
                400,
                "InvalidInput",
                format!("certificate: {error}"),
            ))
        }
    };
    if request.caller_cert_der.as_deref() != Some(cert.der()) {
        return Ok(Response::error(
            401,
            "InvalidAuthenticationInfo",
            "a joining node must present the certificate of its join request as its TLS client certificate",
        ));
    }
    let key = match cert.public_key() {
        Ok(key) => key,
        Err(error) => {
            return Ok(Response::error(
                400,
                "InvalidInput",
                format!("certificate key: {error}"),
            ))
        }
    };
    let node_id = key.id_hex();
    let mut tx = node.begin();
    if let Some(existing) = tx
        .get(NODES_MAP, node_id.as_bytes())
        .and_then(|bytes| serde_json::from_slice::<NodeInfo>(&bytes).ok())
    {
        return Ok(match existing.status {
            NodeStatus::Pending => {
                Response::json(200, &json!({"node_id": node_id, "node_status": "Pending"}))
            }
            NodeStatus::Retired => Response::error(
                403,
                "NodeRetired",
                format!("node {node_id} was retired from the service and cannot join again"),
            ),
            NodeStatus::Trusted => trusted_response(node, &node_id, &key, &existing, &join, out)?,
        });
    }
    let platforms: Vec<Platform> = keys(&mut tx, TEE_MANIFEST_MAP)
        .iter()
        .filter_map(|name| Platform::parse(name))
        .collect();
    let measurements = keys(&mut tx, CODE_MANIFEST_MAP);
    let host_data = keys(&mut tx, HOST_DATA_MAP);
    let policy = Policy {
        allowed_platforms: &platforms,
        allowed_measurements: &measurements,
        allowed_host_data: &host_data,
    };
    let report_data = charter_attest::node_report_data(&key.to_spki_der());
    if let Err(error) = charter_attest::verify(&join.evidence, &report_data, &policy) {
        return Ok(Response::error(
            403,
            "JoinRefused",
            format!("attestation refused: {error}"),
        ));
    }
    if !node.is_primary() {
        return Ok(Response::error(
            503,
            "NotPrimary",
            "this node is not the primary",
        ));
    }
    let info = NodeInfo {
        cert: join.certificate,
        status: NodeStatus::Pending,
        rpc_address: join.rpc_address,
        node_address: join.node_address,
        evidence: serde_json::to_value(&join.evidence).ok(),
    };
    let value = serde_json::to_vec(&info).expect("node info serializes");
    if let Err(error) = tx.try_put(NODES_MAP, node_id.as_bytes(), &value) {
        return Ok(Response::error(400, "InvalidInput", error.to_string()));
    }
    let tx_id =
        node.write_transaction(EntryKind::Transaction, tx.into_write_set(), [0; 32], out)?;
    Ok(
        Response::json(200, &json!({"node_id": node_id, "node_status": "Pending"}))
            .with_header("x-ms-ccf-transaction-id", tx_id.to_string()),
    )
}

/// What a trusted node receives when it asks again: its certificate endorsed by the service,
/// the service identity and the ledger secret, and the nodes to talk to. The TLS channel is
/// authenticated both ways (the service certificate on this side, the node's own key on the
/// other), so only the node governance trusted learns the secrets.
///
/// The endorsed certificate is first recorded in the nodes table (receipts and ledger
/// verification name it), and handed over only once that record is committed; until then the
/// answer is 202 and the node asks again.
fn trusted_response(
    node: &mut Node,
    node_id: &str,
    key: &charter_crypto::VerifyingKey,
    existing: &NodeInfo,
    join: &JoinRequest,
    out: &mut Vec<Action>,
) -> Result<Response, CoreError> {
    let Some(service_key) = node.service_key().cloned() else {
        return Ok(Response::error(
            503,
            "ServiceKeyUnavailable",
            "this node does not hold the service key; ask another node",
        ));
    };
    let service_public = node.service_cert().public_key().ok();
    let recorded = Certificate::from_pem(&existing.cert)
        .ok()
        .filter(|cert| service_public.is_some_and(|public| cert.verify_signed_by(&public).is_ok()));
    let wait = || {
        Response::json(
            202,
            &json!({"node_id": node_id, "node_status": "Trusted", "endorsement": "Pending"}),
        )
        .with_header("retry-after", "1")
    };
    let Some(endorsed) = recorded else {
        if !node.is_primary() {
            return Ok(
                Response::error(503, "NotPrimary", "this node is not the primary")
                    .with_header("retry-after", "1"),
            );
        }
        let endorsed = match endorse(node, key, join, &service_key) {
            Ok(cert) => cert,
            Err(response) => return Ok(response),
        };
        let info = NodeInfo {
            cert: endorsed.to_pem(),
            ..existing.clone()
        };
        let value = serde_json::to_vec(&info).expect("node info serializes");
        let mut tx = node.begin();
        if let Err(error) = tx.try_put(NODES_MAP, node_id.as_bytes(), &value) {
            return Ok(Response::error(400, "InvalidInput", error.to_string()));
        }
        node.write_transaction(EntryKind::Transaction, tx.into_write_set(), [0; 32], out)?;
        return Ok(wait());
    };
    let written_at = node
        .store()
        .snapshot()
        .key_version(NODES_MAP, node_id.as_bytes());
    if written_at > node.commit_tx_id().seqno {
        return Ok(wait());
    }
    Ok(network_response(node, node_id, &endorsed, &service_key))
}

/// The node's certificate for `key`, issued by the service identity.
fn endorse(
    node: &Node,
    key: &charter_crypto::VerifyingKey,
    join: &JoinRequest,
    service_key: &charter_crypto::SigningKey,
) -> Result<Certificate, Response> {
    let mut names = Vec::new();
    // The host part of `host:port` (IPv6 in brackets), for the certificate's names.
    if let Some((host, _port)) = join.rpc_address.rsplit_once(':') {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if !host.is_empty() {
            names.push(host.to_owned());
        }
    }
    names.push("localhost".to_owned());
    let spec = charter_crypto::CertificateSpec {
        common_name: "Charter node",
        is_ca: false,
        subject_alt_names: &names,
        validity: charter_crypto::Validity {
            not_before_unix: i64::try_from(node.unix_time_s()).unwrap_or(i64::MAX) - 86_400,
            days: ENDORSED_CERT_DAYS,
        },
    };
    Certificate::issue(key, &spec, service_key, node.service_cert()).map_err(|error| {
        Response::error(
            500,
            "InternalError",
            format!("cannot endorse the node certificate: {error}"),
        )
    })
}

/// The secrets and peers a trusted node with a committed endorsement receives.
fn network_response(
    node: &Node,
    node_id: &str,
    endorsed: &Certificate,
    service_key: &charter_crypto::SigningKey,
) -> Response {
    let nodes: Vec<serde_json::Value> = node
        .nodes()
        .into_iter()
        .filter(|(id, info)| info.status == NodeStatus::Trusted && id != node_id)
        .map(|(id, info)| {
            json!({
                "node_id": id,
                "rpc_address": info.rpc_address,
                "node_address": info.node_address,
            })
        })
        .collect();
    Response::json(
        200,
        &json!({
            "node_id": node_id,
            "node_status": "Trusted",
            "network": {
                "endorsed_certificate": endorsed.to_pem(),
                "service_certificate": node.service_cert().to_pem(),
                "service_key": service_key.to_pem(),
                "ledger_secrets": node.ledger_secrets_for_joiner(),
                "nodes": nodes,
            }
        }),
    )
}
