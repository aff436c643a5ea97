//! Joining an existing network: the new node asks a node of the service (`POST /node/join`)
//! with its certificate and attestation evidence, waits while governance decides, and once
//! trusted receives its certificate endorsed by the service, the service identity and the ledger
//! secret over the mutually authenticated TLS connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use charter_crypto::{Certificate, SigningKey};
use charter_ledger::LedgerSecrets;
use serde::{Deserialize, Serialize};

use crate::client::Client;

/// How a node finds the network it joins.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinConfig {
    /// Client address of any node of the service (requests to a follower are forwarded).
    pub target: SocketAddr,
    /// The service certificate (PEM file): the joining node trusts the network only if it
    /// presents this identity.
    pub service_cert: PathBuf,
    /// Milliseconds between two join requests while governance decides (default 1,000).
    #[serde(default = "default_retry_ms")]
    pub retry_interval_ms: u64,
}

fn default_retry_ms() -> u64 {
    1_000
}

/// A node the joining node talks to until its own copy of the nodes table arrives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootstrapPeer {
    /// Node ID (hex SHA-256 of its public key).
    pub node_id: String,
    /// Its node-channel address.
    pub node_address: Option<String>,
}

/// What a trusted node receives.
pub struct Admission {
    /// This node's certificate, endorsed by the service identity.
    pub endorsed_cert: Certificate,
    /// The service identity.
    pub service_cert: Certificate,
    /// The service identity's private key.
    pub service_key: SigningKey,
    /// The ledger secrets, by first seqno.
    pub ledger_secrets: LedgerSecrets,
    /// The trusted nodes at the time of admission.
    pub peers: Vec<BootstrapPeer>,
}

/// Why a join ended without admission.
pub type JoinError = String;

#[derive(Deserialize)]
struct NetworkSecrets {
    endorsed_certificate: String,
    service_certificate: String,
    service_key: String,
    ledger_secrets: serde_json::Value,
    #[serde(default)]
    nodes: Vec<BootstrapPeer>,
}

/// Asks `config.target` to admit this node until governance trusts it (or refuses it).
/// `request` is the join request body; `identity` the node's (self-signed) certificate and
/// key PEMs, presented as the TLS client certificate.
///
/// # Errors
/// The node's refusal (attestation not allowed, node retired, malformed request) or a response
/// that does not match this node and the service it expected.
pub async fn request_admission(
    config: &JoinConfig,
    request: &serde_json::Value,
    identity: (&str, &str),
    node_key: &SigningKey,
) -> Result<Admission, JoinError> {
    let service_pem = std::fs::read_to_string(&config.service_cert)
        .map_err(|error| format!("{}: {error}", config.service_cert.display()))?;
    let expected_service =
        Certificate::from_pem(&service_pem).map_err(|error| format!("service cert: {error}"))?;
    let tls = crate::tls::client_config(&service_pem, Some(identity))
        .map_err(|error| format!("TLS configuration: {error}"))?;
    let body = serde_json::to_vec(request).map_err(|error| error.to_string())?;
    let retry = Duration::from_millis(config.retry_interval_ms.max(10));
    let mut client: Option<Client> = None;
    let mut last_note = Instant::now() - Duration::from_secs(60);
    loop {
        if client.is_none() {
            let server_name = config.target.ip().to_string();
            match Client::connect(config.target, &server_name, Arc::clone(&tls)).await {
                Ok(connected) => client = Some(connected),
                Err(error) => {
                    if last_note.elapsed() >= Duration::from_secs(10) {
                        tracing::warn!(target = %config.target, %error, "cannot reach the network yet; retrying");
                        last_note = Instant::now();
                    }
                    tokio::time::sleep(retry).await;
                    continue;
                }
            }
        }
        let Some(connection) = client.as_mut() else {
            continue;
        };
        let response = match connection
            .request(
                "POST",
                "/node/join",
                &[("content-type", "application/json")],
                body.clone(),
            )
            .await
        {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%error, "join request failed; retrying");
                client = None;
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        let json = response.json().unwrap_or(serde_json::Value::Null);
        match response.status {
            200 if json["node_status"] == "Trusted" => {
                let secrets: NetworkSecrets = serde_json::from_value(json["network"].clone())
                    .map_err(|error| format!("the join response is malformed: {error}"))?;
                return admission(secrets, &expected_service, node_key);
            }
            200 | 202 => {
                if last_note.elapsed() >= Duration::from_secs(10) {
                    tracing::info!(
                        node_id = %json["node_id"].as_str().unwrap_or("?"),
                        status = %json["node_status"],
                        "waiting for governance to trust this node (transition_node_to_trusted)"
                    );
                    last_note = Instant::now();
                }
            }
            // Busy, no primary right now, or the primary changed: ask again.
            503 | 504 | 429 => {}
            status => {
                let reason = json["error"]["message"]
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| String::from_utf8_lossy(&response.body).into_owned());
                return Err(format!(
                    "the network refused this node ({status}): {reason}"
                ));
            }
        }
        tokio::time::sleep(retry).await;
    }
}

fn admission(
    secrets: NetworkSecrets,
    expected_service: &Certificate,
    node_key: &SigningKey,
) -> Result<Admission, JoinError> {
    let service_cert = Certificate::from_pem(&secrets.service_certificate)
        .map_err(|error| format!("service certificate in the join response: {error}"))?;
    if &service_cert != expected_service {
        return Err("the join response names another service identity".to_owned());
    }
    let service_key = SigningKey::from_pem(&secrets.service_key)
        .map_err(|error| format!("service key in the join response: {error}"))?;
    let service_public = service_cert
        .public_key()
        .map_err(|error| format!("service certificate key: {error}"))?;
    if service_key.verifying_key() != service_public {
        return Err("the service key in the join response does not match its certificate".into());
    }
    let endorsed_cert = Certificate::from_pem(&secrets.endorsed_certificate)
        .map_err(|error| format!("endorsed certificate: {error}"))?;
    let endorsed_key = endorsed_cert
        .public_key()
        .map_err(|error| format!("endorsed certificate key: {error}"))?;
    if endorsed_key != node_key.verifying_key() {
        return Err("the endorsed certificate is not for this node's key".to_owned());
    }
    endorsed_cert
        .verify_signed_by(&service_public)
        .map_err(|_| "the endorsed certificate is not signed by the service".to_owned())?;
    let ledger_secrets = LedgerSecrets::from_json(&secrets.ledger_secrets)
        .map_err(|error| format!("the join response's {error}"))?;
    Ok(Admission {
        endorsed_cert,
        service_cert,
        service_key,
        ledger_secrets,
        peers: secrets.nodes,
    })
}
