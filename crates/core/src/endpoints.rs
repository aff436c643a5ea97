//! HTTP endpoints of the node: `/node/*` (no client certificate needed) and the key-value
//! application under `/app/*` (users only).

use charter_ledger::tables::{SERVICE_KEY, SERVICE_MAP};
use charter_ledger::{ServiceInfo, TxId};
use serde_json::json;

use crate::api::{Method, Request, Response};
use crate::node::{Action, Node, TxStatus};
use crate::CoreError;
use charter_gov::tables::{MEMBERS_MAP, USERS_MAP};
use charter_ledger::tables::NODES_MAP;
use charter_ledger::{NodeInfo, ServiceStatus};

/// Largest number of entries one list request returns.
pub const LIST_LIMIT_MAX: usize = 1_000;
/// Entries a list request returns when it names no limit.
pub const LIST_LIMIT_DEFAULT: usize = 100;

/// Who is calling, as far as the store knows.
enum Caller {
    User(String),
    Member,
    Unknown,
    Anonymous,
}

fn identify(node: &Node, request: &Request) -> Caller {
    let Some(der) = &request.caller_cert_der else {
        return Caller::Anonymous;
    };
    let id = charter_crypto::sha256(der);
    let id = hex::encode(id);
    if node.store().get(USERS_MAP, id.as_bytes()).is_some() {
        Caller::User(id)
    } else if node.store().get(MEMBERS_MAP, id.as_bytes()).is_some() {
        Caller::Member
    } else {
        Caller::Unknown
    }
}

fn tx_id_param(request: &Request) -> Result<TxId, Response> {
    let text = request.query_param("transaction_id").ok_or_else(|| {
        Response::error(
            400,
            "InvalidQueryParameterValue",
            "missing query parameter transaction_id",
        )
    })?;
    text.parse::<TxId>()
        .map_err(|error| Response::error(400, "InvalidQueryParameterValue", error.to_string()))
}

pub(crate) fn with_tx_header(response: Response, tx_id: TxId) -> Response {
    response.with_header("x-ms-ccf-transaction-id", tx_id.to_string())
}

/// The answer to `GET /node/commit` when the commit point is `tx_id`. A host may give it
/// without queueing the request behind the core's work, from the commit point the core last
/// reported (see [`is_commit_query`]); it is the same answer the core gives.
pub fn commit_response(tx_id: TxId) -> Response {
    with_tx_header(
        Response::json(200, &json!({"transaction_id": tx_id.to_string()})),
        tx_id,
    )
}

/// The seqno a `GET /node/commit?after_seqno=N` waits to see the commit point pass: `None`
/// without the parameter. A host that publishes the commit point
/// ([`commit_response`]) holds such a request until the commit point's seqno is above N, or
/// for a bounded time, then answers it as usual; the core itself answers at once. One
/// watcher can so follow the commit point as it moves without polling.
///
/// # Errors
/// A 400 response if the parameter is not a decimal seqno.
pub fn commit_wait_after(request: &Request) -> Result<Option<u64>, Response> {
    match request.query_param("after_seqno") {
        None => Ok(None),
        Some(text) => text.parse::<u64>().map(Some).map_err(|_| {
            Response::error(
                400,
                "InvalidQueryParameterValue",
                format!("after_seqno must be a seqno (a decimal number), not {text:?}"),
            )
        }),
    }
}

/// Whether `request` asks only for the commit point (`GET /node/commit`, not a linearizable
/// read, which must wait for a signature): [`commit_response`] answers it.
pub fn is_commit_query(request: &Request) -> bool {
    request.method == Method::Get
        && request.path == "/node/commit"
        && !crate::node::wants_linearizable_read(request)
}

pub(crate) fn handle(
    node: &mut Node,
    request: &Request,
    out: &mut Vec<Action>,
) -> Result<Response, CoreError> {
    let path = request.path.as_str();
    if path == "/node/join" && request.method == Method::Post {
        return crate::join::handle(node, request, out);
    }
    if let Some(rest) = path.strip_prefix("/node/") {
        return Ok(handle_node(node, rest, request));
    }
    if let Some(rest) = path.strip_prefix("/gov") {
        if rest.starts_with('/') {
            return crate::gov_endpoints::handle(node, rest, request, out);
        }
    }
    if path == "/app" || path.starts_with("/app/") {
        let caller_id = match identify(node, request) {
            Caller::User(id) => id,
            Caller::Member => {
                return Ok(Response::error(
                    403,
                    "AuthorizationFailed",
                    "members may not call application endpoints",
                ))
            }
            Caller::Unknown => {
                return Ok(Response::error(
                    401,
                    "InvalidAuthenticationInfo",
                    "the client certificate is not that of a known user",
                ))
            }
            Caller::Anonymous => {
                return Ok(Response::error(
                    401,
                    "InvalidAuthenticationInfo",
                    "a user client certificate is required",
                ))
            }
        };
        if node.service_status() != Some(ServiceStatus::Open) {
            return Ok(Response::error(
                503,
                "ServiceNotOpen",
                "the service is not open yet: members must pass transition_service_to_open",
            ));
        }
        let rest = &path[4..];
        if rest == "/kv" || rest.starts_with("/kv/") || rest == "/receipt" {
            return handle_app(node, rest, request, &caller_id, out);
        }
        let apps = node.take_apps();
        let mut answer = None;
        {
            let mut ctx = crate::app::AppContext {
                node,
                out,
                caller_id,
            };
            for app in &apps {
                if let Some(result) = app.handle(&mut ctx, rest, request) {
                    answer = Some(result);
                    break;
                }
            }
        }
        node.restore_apps(apps);
        return answer.unwrap_or_else(|| {
            Ok(Response::error(
                404,
                "ResourceNotFound",
                format!("no endpoint at {path}"),
            ))
        });
    }
    Ok(Response::error(
        404,
        "ResourceNotFound",
        format!("no endpoint at {path}"),
    ))
}

fn quote_json(node_id: &str, evidence: &serde_json::Value) -> serde_json::Value {
    let platform = evidence["platform"].as_str().unwrap_or("");
    json!({
        "node_id": node_id,
        "format": if platform == "sev-snp" { "AMD_SEV_SNP_v1" } else { "Insecure_Virtual" },
        "platform": platform,
        "measurement": evidence["measurement"],
        "raw": evidence["report"],
        "endorsements": evidence["endorsements"],
        "hardware_protection": evidence["hardware_protection"],
    })
}

fn handle_node(node: &Node, rest: &str, request: &Request) -> Response {
    if request.method != Method::Get {
        return Response::error(405, "MethodNotAllowed", "only GET is allowed here");
    }
    match rest {
        "commit" => match commit_wait_after(request) {
            Ok(_) => commit_response(node.commit_tx_id()),
            Err(refusal) => refusal,
        },
        "tx" => match tx_id_param(request) {
            Ok(tx_id) => {
                let status = node.tx_status(tx_id);
                Response::json(
                    200,
                    &json!({"transaction_id": tx_id.to_string(), "status": status.as_str()}),
                )
            }
            Err(response) => response,
        },
        "state" => Response::json(
            200,
            &json!({
                "node_id": node.node_id(),
                "state": "PartOfNetwork",
                "last_committed_seqno": node.commit_tx_id().seqno,
                "last_seqno": node.last_tx_id().seqno,
            }),
        ),
        "network" => {
            let status = node
                .store()
                .get(SERVICE_MAP, SERVICE_KEY)
                .and_then(|bytes| serde_json::from_slice::<ServiceInfo>(bytes).ok())
                .map_or("Unknown".to_owned(), |info| format!("{:?}", info.status));
            Response::json(
                200,
                &json!({
                    "service_status": status,
                    "service_certificate": node.service_cert().to_pem(),
                    "current_view": node.view(),
                    "primary_id": if node.is_primary() { Some(node.node_id()) } else { None },
                }),
            )
        }
        "quotes/self" => {
            let evidence = serde_json::to_value(node.evidence()).unwrap_or_default();
            Response::json(200, &quote_json(node.node_id(), &evidence))
        }
        "quotes" => {
            let quotes: Vec<serde_json::Value> = node
                .begin()
                .scan_prefix(NODES_MAP, b"", None, 10_000)
                .into_iter()
                .filter_map(|(key, value)| {
                    let info: NodeInfo = serde_json::from_slice(&value).ok()?;
                    let id = String::from_utf8(key).ok()?;
                    info.evidence.map(|evidence| quote_json(&id, &evidence))
                })
                .collect();
            Response::json(200, &json!({"quotes": quotes}))
        }
        "network/nodes" => {
            let primary = node.primary_raft_id();
            let nodes: Vec<serde_json::Value> = node
                .store()
                .entries(NODES_MAP)
                .filter_map(|(key, value)| {
                    let id = std::str::from_utf8(key).ok()?;
                    let info: NodeInfo = serde_json::from_slice(value).ok()?;
                    Some(json!({
                        "node_id": id,
                        "status": info.status,
                        "rpc_address": info.rpc_address,
                        "node_address": info.node_address,
                        "primary": primary == Some(crate::raft_id(id)),
                    }))
                })
                .collect();
            Response::json(200, &json!({"nodes": nodes}))
        }
        "consensus" => {
            let last = node.last_tx_id().seqno;
            let peers: Vec<serde_json::Value> = node
                .replication_progress()
                .into_iter()
                .map(|(id, matched)| json!({"raft_id": id, "match_seqno": matched, "lag": last.saturating_sub(matched)}))
                .collect();
            Response::json(
                200,
                &json!({
                    "raft_id": node.own_raft_id(),
                    "primary_raft_id": node.primary_raft_id(),
                    "view": node.view(),
                    "last_seqno": last,
                    "commit_seqno": node.commit_tx_id().seqno,
                    "voters": node.voters(),
                    "peers": peers,
                    "peers_needing_snapshot": node.peers_needing_snapshot(),
                    "snapshot_base_seqno": node.base_seqno(),
                    "log_first_seqno": node.log_first_seqno(),
                }),
            )
        }
        "metrics" => {
            let last = node.last_tx_id().seqno;
            let mut text = String::new();
            let mut metric = |name: &str, help: &str, value: String| {
                text.push_str(&format!(
                    "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
                ));
            };
            metric(
                "charter_commit_seqno",
                "Seqno of the last committed transaction.",
                node.commit_tx_id().seqno.to_string(),
            );
            metric(
                "charter_last_seqno",
                "Seqno of the last transaction in the ledger.",
                last.to_string(),
            );
            metric(
                "charter_view",
                "Current view (Raft term).",
                node.view().to_string(),
            );
            metric(
                "charter_is_primary",
                "1 if this node is the primary.",
                u8::from(node.is_primary()).to_string(),
            );
            metric(
                "charter_role_changes",
                "Leadership or term changes seen since start.",
                node.role_changes().to_string(),
            );
            metric(
                "charter_peers_needing_snapshot",
                "Peers that need entries before the snapshot this primary started from.",
                node.peers_needing_snapshot().len().to_string(),
            );
            text.push_str("# HELP charter_replication_lag Entries a voter is behind the primary's log.\n# TYPE charter_replication_lag gauge\n");
            for (id, matched) in node.replication_progress() {
                text.push_str(&format!(
                    "charter_replication_lag{{raft_id=\"{id}\"}} {}\n",
                    last.saturating_sub(matched)
                ));
            }
            Response {
                status: 200,
                headers: vec![(
                    "content-type".to_owned(),
                    "text/plain; version=0.0.4".to_owned(),
                )],
                body: text.into_bytes(),
            }
        }
        "version" => Response::json(
            200,
            &json!({"ccf_version": concat!("charter-", env!("CARGO_PKG_VERSION")), "quickjs_version": null, "unsafe": false}),
        ),
        _ => Response::error(
            404,
            "ResourceNotFound",
            format!("no endpoint at /node/{rest}"),
        ),
    }
}

fn handle_app(
    node: &mut Node,
    rest: &str,
    request: &Request,
    caller_id: &str,
    out: &mut Vec<Action>,
) -> Result<Response, CoreError> {
    if rest == "/receipt" {
        if request.method != Method::Get {
            return Ok(Response::error(
                405,
                "MethodNotAllowed",
                "only GET is allowed here",
            ));
        }
        let tx_id = match tx_id_param(request) {
            Ok(tx_id) => tx_id,
            Err(response) => return Ok(response),
        };
        return Ok(match node.receipt(tx_id) {
            Ok(receipt) => Response::json(200, &receipt.to_json()),
            Err(TxStatus::Pending) => Response::error(
                202,
                "TransactionPendingOrUnknown",
                format!("{tx_id} is not committed yet"),
            )
            .with_header("retry-after", "1"),
            Err(status) => Response::error(
                404,
                "TransactionNotFound",
                format!("{tx_id} is {}", status.as_str()),
            ),
        });
    }
    crate::kv_app::handle(node, rest, request, caller_id, out)
}
