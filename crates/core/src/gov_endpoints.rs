//! Governance endpoints, at CCF's paths: `/gov/members/...` takes COSE Sign1 requests signed by
//! members; `/gov/service/...` reads the governance tables.

use charter_gov::requests::{self, Freshness, GovError, MemberRequest, Outcome};
use charter_gov::tables::{
    MemberInfo, ServiceConfig, UserInfo, CODE_MANIFEST_MAP, CONSTITUTION_KEY, CONSTITUTION_MAP,
    HISTORY_MAP, HOST_DATA_MAP, MEMBERS_MAP, NODES_MAP, SERVICE_CONFIG_KEY, SERVICE_CONFIG_MAP,
    SERVICE_KEY, SERVICE_MAP, TEE_MANIFEST_MAP, USERS_MAP,
};
use charter_kv::Tx;
use charter_ledger::{EntryKind, NodeInfo, ServiceInfo, TxId};
use serde_json::json;

use crate::api::{Method, Request, Response};
use crate::node::{Action, Node};
use crate::CoreError;

fn gov_error(error: &GovError) -> Response {
    let (status, code) = error.status_and_code();
    Response::error(status, code, error.message())
}

fn entries(tx: &mut Tx, map: &str) -> Vec<(String, serde_json::Value)> {
    tx.scan_prefix(map, b"", None, 100_000)
        .into_iter()
        .filter_map(|(key, value)| {
            let key = String::from_utf8(key).ok()?;
            let value = serde_json::from_slice(&value).ok()?;
            Some((key, value))
        })
        .collect()
}

/// Handles `/gov/...`; `rest` is the path after `/gov`.
pub(crate) fn handle(
    node: &mut Node,
    rest: &str,
    request: &Request,
    out: &mut Vec<Action>,
) -> Result<Response, CoreError> {
    if let Some(service) = rest.strip_prefix("/service/") {
        if request.method != Method::Get {
            return Ok(Response::error(
                405,
                "MethodNotAllowed",
                "only GET is allowed here",
            ));
        }
        return Ok(service_read(node, service));
    }
    if let Some(recovery) = rest.strip_prefix("/recovery/") {
        return recovery_endpoint(node, recovery, request, out);
    }
    let Some(members) = rest.strip_prefix("/members/") else {
        return Ok(Response::error(
            404,
            "ResourceNotFound",
            format!("no endpoint at /gov{rest}"),
        ));
    };
    match request.method {
        Method::Get => Ok(members_read(node, members)),
        Method::Post => members_write(node, members, request, out),
        _ => Ok(Response::error(405, "MethodNotAllowed", "use GET or POST")),
    }
}

fn service_read(node: &Node, what: &str) -> Response {
    let mut tx = node.begin();
    match what {
        "info" => {
            let service: Option<ServiceInfo> = tx
                .get(SERVICE_MAP, SERVICE_KEY)
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            let config: Option<ServiceConfig> = tx
                .get(SERVICE_CONFIG_MAP, SERVICE_CONFIG_KEY.as_bytes())
                .and_then(|bytes| serde_json::from_slice(&bytes).ok());
            match service {
                Some(service) => Response::json(
                    200,
                    &json!({
                        "status": service.status,
                        "certificate": service.cert,
                        "recoveryThreshold": config.map(|config| config.recovery_threshold),
                        "currentView": node.view(),
                    }),
                ),
                None => Response::error(503, "ServiceNotReady", "the service is not created yet"),
            }
        }
        "members" => {
            let value: Vec<serde_json::Value> = entries(&mut tx, MEMBERS_MAP)
                .into_iter()
                .filter_map(|(id, value)| {
                    let member: MemberInfo = serde_json::from_value(value).ok()?;
                    Some(json!({
                        "memberId": id,
                        "certificate": member.cert,
                        "status": member.status,
                        "memberData": member.member_data,
                        "publicEncryptionKey": member.public_encryption_key,
                    }))
                })
                .collect();
            Response::json(200, &json!({"value": value}))
        }
        "users" => {
            let value: Vec<serde_json::Value> = entries(&mut tx, USERS_MAP)
                .into_iter()
                .filter_map(|(id, value)| {
                    let user: UserInfo = serde_json::from_value(value).ok()?;
                    Some(
                        json!({"userId": id, "certificate": user.cert, "userData": user.user_data}),
                    )
                })
                .collect();
            Response::json(200, &json!({"value": value}))
        }
        "nodes" => {
            let value: Vec<serde_json::Value> = entries(&mut tx, NODES_MAP)
                .into_iter()
                .filter_map(|(id, value)| {
                    let info: NodeInfo = serde_json::from_value(value).ok()?;
                    Some(json!({
                        "nodeId": id,
                        "status": info.status,
                        "certificate": info.cert,
                        "rpcAddress": info.rpc_address,
                        "primary": node.is_primary() && id == node.node_id(),
                    }))
                })
                .collect();
            Response::json(200, &json!({"value": value}))
        }
        "constitution" => match tx.get(CONSTITUTION_MAP, CONSTITUTION_KEY.as_bytes()) {
            Some(source) => Response {
                status: 200,
                headers: vec![("content-type".to_owned(), "text/javascript".to_owned())],
                body: source,
            },
            None => Response::error(404, "ResourceNotFound", "no constitution is set"),
        },
        "previous-identity" => {
            match tx.get(crate::PREVIOUS_SERVICE_MAP, crate::PREVIOUS_SERVICE_KEY) {
                Some(bytes) => match serde_json::from_slice::<serde_json::Value>(&bytes) {
                    Ok(record) => Response::json(200, &record),
                    Err(error) => Response::error(500, "InternalError", error.to_string()),
                },
                None => Response::error(
                    404,
                    "ResourceNotFound",
                    "this service was not recovered from another",
                ),
            }
        }
        "join-policy" => {
            let keys = |tx: &mut Tx, map: &str| -> Vec<String> {
                entries(tx, map).into_iter().map(|(key, _)| key).collect()
            };
            Response::json(
                200,
                &json!({
                    "measurements": keys(&mut tx, CODE_MANIFEST_MAP),
                    "hostData": keys(&mut tx, HOST_DATA_MAP),
                    "platforms": keys(&mut tx, TEE_MANIFEST_MAP),
                }),
            )
        }
        _ => Response::error(
            404,
            "ResourceNotFound",
            format!("no endpoint at /gov/service/{what}"),
        ),
    }
}

fn members_read(node: &Node, path: &str) -> Response {
    let mut tx = node.begin();
    let Some(rest) = path.strip_prefix("proposals") else {
        return Response::error(
            404,
            "ResourceNotFound",
            format!("no endpoint at /gov/members/{path}"),
        );
    };
    if rest.is_empty() {
        return Response::json(200, &requests::list_proposals(&mut tx));
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return Response::error(
            404,
            "ResourceNotFound",
            format!("no endpoint at /gov/members/{path}"),
        );
    };
    let result = match rest.split_once('/') {
        None => requests::get_proposal(&mut tx, rest),
        Some((id, "actions")) => requests::get_actions(&mut tx, id),
        Some(_) => {
            return Response::error(
                404,
                "ResourceNotFound",
                format!("no endpoint at /gov/members/{path}"),
            )
        }
    };
    match result {
        Ok(value) => Response::json(200, &value),
        Err(error) => gov_error(&error),
    }
}

enum Operation<'a> {
    Create,
    Ballot {
        proposal_id: &'a str,
        member_id: &'a str,
    },
    Withdraw {
        proposal_id: &'a str,
    },
    UpdateDigest {
        member_id: &'a str,
    },
    Ack {
        member_id: &'a str,
    },
}

fn parse_operation(path: &str) -> Option<(Operation<'_>, &'static str)> {
    if path == "proposals:create" {
        return Some((Operation::Create, "proposal"));
    }
    if let Some(rest) = path.strip_prefix("proposals/") {
        if let Some(id) = rest.strip_suffix(":withdraw") {
            return (!id.contains('/'))
                .then_some((Operation::Withdraw { proposal_id: id }, "withdrawal"));
        }
        let (id, ballot) = rest.split_once("/ballots/")?;
        let member_id = ballot.strip_suffix(":submit")?;
        return Some((
            Operation::Ballot {
                proposal_id: id,
                member_id,
            },
            "ballot",
        ));
    }
    if let Some(rest) = path.strip_prefix("state-digests/") {
        if let Some(member_id) = rest.strip_suffix(":update") {
            return Some((Operation::UpdateDigest { member_id }, "state_digest"));
        }
        if let Some(member_id) = rest.strip_suffix(":ack") {
            return Some((Operation::Ack { member_id }, "ack"));
        }
    }
    None
}

fn members_write(
    node: &mut Node,
    path: &str,
    request: &Request,
    out: &mut Vec<Action>,
) -> Result<Response, CoreError> {
    let Some((operation, msg_type)) = parse_operation(path) else {
        return Ok(Response::error(
            404,
            "ResourceNotFound",
            format!("no endpoint at /gov/members/{path}"),
        ));
    };
    let (mut tx, member_request) = match authenticated_request(node, request, msg_type) {
        Ok(authenticated) => authenticated,
        Err(response) => return Ok(response),
    };
    let result = match operation {
        Operation::Create => requests::create_proposal(&mut tx, &member_request),
        Operation::Ballot {
            proposal_id,
            member_id,
        } => requests::submit_ballot(&mut tx, &member_request, proposal_id, member_id),
        Operation::Withdraw { proposal_id } => {
            requests::withdraw(&mut tx, &member_request, proposal_id)
        }
        Operation::UpdateDigest { member_id } => {
            let digest = node.state_digest_hex();
            requests::update_state_digest(&mut tx, &member_request, member_id, &digest).map(
                |summary| Outcome {
                    summary,
                    dropped: Vec::new(),
                },
            )
        }
        Operation::Ack { member_id } => {
            requests::ack_state_digest(&mut tx, &member_request, member_id)
        }
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        Err(error) => return Ok(gov_error(&error)),
    };
    node.finish_governance(&mut tx)?;
    let tx_id: TxId =
        node.write_transaction(EntryKind::Transaction, tx.into_write_set(), [0; 32], out)?;
    Ok(Response::json(200, &outcome.summary)
        .with_header("x-ms-ccf-transaction-id", tx_id.to_string()))
}

/// Message type of a signed recovery share (the payload is JSON
/// `{"partial_decryption": HEX}`).
pub const RECOVERY_SHARE_MSG_TYPE: &str = "recovery_share";

/// `/gov/recovery/status`, `/gov/recovery/shares/{member_id}` and
/// `POST /gov/recovery/members/{member_id}:recover`.
fn recovery_endpoint(
    node: &mut Node,
    path: &str,
    request: &Request,
    out: &mut Vec<Action>,
) -> Result<Response, CoreError> {
    match (request.method, path) {
        (Method::Get, "status") => return Ok(Response::json(200, &node.recovery_status())),
        (Method::Get, _) => {
            if let Some(member_id) = path.strip_prefix("shares/") {
                return Ok(
                    match node.recovery_share_of(&member_id.to_ascii_lowercase()) {
                        Some(share) => Response::json(200, &share),
                        None => Response::error(
                            404,
                            "ResourceNotFound",
                            format!("member {member_id} holds no recovery share"),
                        ),
                    },
                );
            }
        }
        (Method::Post, _) => {
            if let Some(member_id) = path
                .strip_prefix("members/")
                .and_then(|rest| rest.strip_suffix(":recover"))
            {
                return submit_share(node, &member_id.to_ascii_lowercase(), request, out);
            }
        }
        _ => {}
    }
    Ok(Response::error(
        404,
        "ResourceNotFound",
        format!("no endpoint at /gov/recovery/{path}"),
    ))
}

fn submit_share(
    node: &mut Node,
    member_id: &str,
    request: &Request,
    out: &mut Vec<Action>,
) -> Result<Response, CoreError> {
    let (mut tx, member_request) =
        match authenticated_request(node, request, RECOVERY_SHARE_MSG_TYPE) {
            Ok(authenticated) => authenticated,
            Err(response) => return Ok(response),
        };
    if member_request.member_id != member_id {
        return Ok(Response::error(
            403,
            "AuthorizationFailed",
            format!(
                "member {} may not submit the share of member {member_id}",
                member_request.member_id
            ),
        ));
    }
    // The signed request carries a partial decryption: enough of them open the old ledger
    // secret, so the ledger keeps the request in a private map and only its digest in clear.
    let digest = hex::encode(charter_crypto::sha256(&request.body));
    tx.put(
        HISTORY_MAP,
        member_id.as_bytes(),
        json!({"type": RECOVERY_SHARE_MSG_TYPE, "sha256": digest})
            .to_string()
            .as_bytes(),
    );
    tx.put(
        crate::RECOVERY_REQUESTS_MAP,
        member_id.as_bytes(),
        &request.body,
    );
    tx.put(
        crate::RECOVERY_SUBMISSIONS_MAP,
        member_id.as_bytes(),
        json!({"created_at": member_request.message.headers.created_at, "sha256": digest})
            .to_string()
            .as_bytes(),
    );
    let partial = serde_json::from_slice::<serde_json::Value>(&member_request.message.payload)
        .ok()
        .and_then(|payload| payload["partial_decryption"].as_str().map(str::to_owned))
        .and_then(|text| hex::decode(text).ok());
    let Some(partial) = partial else {
        return Ok(Response::error(
            400,
            "InvalidRecoveryShare",
            "the payload must be JSON {\"partial_decryption\": HEX}",
        ));
    };
    let message = match node.submit_recovery_share(&mut tx, member_id, &partial) {
        Ok(message) => message,
        Err((status, code, message)) => return Ok(Response::error(status, code, message)),
    };
    let tx_id: TxId =
        node.write_transaction(EntryKind::Transaction, tx.into_write_set(), [0; 32], out)?;
    if let Some(action) = node.take_seal_action() {
        out.push(action);
    }
    Ok(Response::json(200, &json!({"message": message}))
        .with_header("x-ms-ccf-transaction-id", tx_id.to_string()))
}

/// Checks a member's signed request on the primary: COSE content type, then signature,
/// message type, freshness and replay (recorded in the returned transaction).
fn authenticated_request(
    node: &Node,
    request: &Request,
    msg_type: &str,
) -> Result<(Tx, MemberRequest), Response> {
    match request.header("content-type") {
        Some(kind) if kind.split(';').next().map(str::trim) == Some("application/cose") => {}
        other => {
            return Err(Response::error(
                415,
                "UnsupportedContentType",
                format!(
                    "signed member requests are COSE Sign1 with content-type application/cose, \
                     not {other:?}"
                ),
            ))
        }
    }
    if !node.is_primary() {
        return Err(Response::error(
            503,
            "NotPrimary",
            "this node is not the primary",
        ));
    }
    let mut tx = node.begin();
    let freshness = Freshness {
        now_unix_s: node.unix_time_s(),
        window_s: node.gov_request_window_s(),
    };
    match requests::authenticate(&mut tx, &request.body, msg_type, freshness) {
        Ok(member_request) => Ok((tx, member_request)),
        Err(error) => Err(gov_error(&error)),
    }
}
