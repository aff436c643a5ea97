//! The key-value application: `/app/kv/{key}` and `/app/kv` (list), over a private map (the
//! default) and a public one (`?public=true`).
//!
//! Per-entry confidentiality: `PUT /app/kv/{key}?readers=ID1,ID2` stores a private entry that
//! only its writer, the named users and the auditors governance names (users whose
//! `user_data` has `"auditor": true`) can read. For everyone else the entry does not exist:
//! reads and deletes answer 404 and lists skip it; a write by an outsider is refused (403).
//! Parties may write the entry again; a write without `readers` keeps its parties, one with
//! `readers` replaces them (the writer is always a party). The parties are kept in a private
//! map too, so the ledger files hold neither the entry nor who may read it in clear. Entries
//! written without `readers` stay readable by every user, as before.

use charter_gov::tables::{UserInfo, USERS_MAP};
use charter_kv::{Tx, KEY_BYTES_MAX};
use charter_ledger::EntryKind;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::api::{Method, Request, Response};
use crate::endpoints::{with_tx_header, LIST_LIMIT_DEFAULT, LIST_LIMIT_MAX};
use crate::node::{Action, Node};
use crate::tables::{KV_ACCESS_MAP, KV_PRIVATE_MAP, KV_PUBLIC_MAP};
use crate::CoreError;

/// Most readers one entry may name.
pub const READERS_MAX: usize = 64;

/// Who may read a restricted entry, kept in [`KV_ACCESS_MAP`] under the entry's key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Access {
    /// The user who last set the parties.
    writer: String,
    /// The other users who may read (and write) the entry.
    readers: Vec<String>,
}

impl Access {
    fn is_party(&self, user: &str) -> bool {
        self.writer == user || self.readers.iter().any(|reader| reader == user)
    }
}

/// What one caller may see.
struct Viewer<'a> {
    id: &'a str,
    auditor: bool,
}

impl Viewer<'_> {
    fn of<'a>(tx: &mut Tx, id: &'a str) -> Viewer<'a> {
        let auditor = tx
            .get(USERS_MAP, id.as_bytes())
            .and_then(|bytes| serde_json::from_slice::<UserInfo>(&bytes).ok())
            .and_then(|info| info.user_data)
            .is_some_and(|data| data.get("auditor") == Some(&serde_json::Value::Bool(true)));
        Viewer { id, auditor }
    }

    fn can_read(&self, access: Option<&Access>) -> bool {
        match access {
            None => true,
            Some(access) => self.auditor || access.is_party(self.id),
        }
    }
}

fn access_of(tx: &mut Tx, key: &[u8]) -> Option<Access> {
    tx.get(KV_ACCESS_MAP, key)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

fn kv_map(request: &Request) -> Result<&'static str, Response> {
    match request.query_param("public") {
        None | Some("false") => Ok(KV_PRIVATE_MAP),
        Some("true") => Ok(KV_PUBLIC_MAP),
        Some(other) => Err(Response::error(
            400,
            "InvalidQueryParameterValue",
            format!("public must be true or false, not {other:?}"),
        )),
    }
}

/// The `readers` query parameter: `None` if absent, else the user IDs (checked to be users).
fn readers_param(tx: &mut Tx, request: &Request) -> Result<Option<Vec<String>>, Response> {
    let Some(text) = request.query_param("readers") else {
        return Ok(None);
    };
    let mut readers: Vec<String> = Vec::new();
    for id in text.split(',').map(str::trim).filter(|id| !id.is_empty()) {
        let id = id.to_ascii_lowercase();
        if tx.get(USERS_MAP, id.as_bytes()).is_none() {
            return Err(Response::error(
                400,
                "UnknownReader",
                format!("readers: {id:?} is not the ID of a user"),
            ));
        }
        if !readers.contains(&id) {
            readers.push(id);
        }
    }
    if readers.len() > READERS_MAX {
        return Err(Response::error(
            400,
            "InvalidQueryParameterValue",
            format!("readers: at most {READERS_MAX} users"),
        ));
    }
    Ok(Some(readers))
}

fn not_found() -> Response {
    Response::error(404, "KeyNotFound", "no such key")
}

/// Handles `/kv` and `/kv/{key}` under `/app` for the user `caller_id`.
pub(crate) fn handle(
    node: &mut Node,
    rest: &str,
    request: &Request,
    caller_id: &str,
    out: &mut Vec<Action>,
) -> Result<Response, CoreError> {
    let map = match kv_map(request) {
        Ok(map) => map,
        Err(response) => return Ok(response),
    };
    let restricted = map == KV_PRIVATE_MAP;
    if rest == "/kv" {
        if request.method != Method::Get {
            return Ok(Response::error(
                405,
                "MethodNotAllowed",
                "only GET is allowed here",
            ));
        }
        return Ok(list(node, map, request, caller_id));
    }
    let Some(key) = rest.strip_prefix("/kv/") else {
        return Ok(Response::error(
            404,
            "ResourceNotFound",
            format!("no endpoint at /app{rest}"),
        ));
    };
    if key.is_empty() || key.len() > KEY_BYTES_MAX {
        return Ok(Response::error(
            400,
            "InvalidKey",
            format!("keys must have 1 to {KEY_BYTES_MAX} bytes"),
        ));
    }
    let key = key.as_bytes();
    let mut tx = node.begin();
    let viewer = Viewer::of(&mut tx, caller_id);
    let access = if restricted {
        access_of(&mut tx, key)
    } else {
        None
    };
    match request.method {
        Method::Get => {
            if !viewer.can_read(access.as_ref()) {
                return Ok(not_found());
            }
            Ok(match tx.get(map, key) {
                Some(value) => with_tx_header(
                    Response {
                        status: 200,
                        headers: vec![("content-type".into(), "application/octet-stream".into())],
                        body: value,
                    },
                    node.commit_tx_id(),
                ),
                None => not_found(),
            })
        }
        Method::Put | Method::Delete => {
            if !node.is_primary() {
                return Ok(Response::error(
                    503,
                    "NotPrimary",
                    "this node is not the primary",
                ));
            }
            if node.last_tx_id().seqno - node.commit_tx_id().seqno
                >= crate::node::UNCOMMITTED_ENTRIES_MAX
            {
                return Ok(Response::error(
                    503,
                    "Backpressure",
                    "too many uncommitted transactions; retry later",
                )
                .with_header("retry-after", "1"));
            }
            let readers = match readers_param(&mut tx, request) {
                Ok(readers) => readers,
                Err(response) => return Ok(response),
            };
            if readers.is_some() && !restricted {
                return Ok(Response::error(
                    400,
                    "InvalidQueryParameterValue",
                    "readers applies to private entries; public entries are readable by every user",
                ));
            }
            if access
                .as_ref()
                .is_some_and(|access| !access.is_party(caller_id))
            {
                return Ok(if viewer.auditor {
                    Response::error(
                        403,
                        "KeyNotWritable",
                        "auditors read restricted entries but do not write them",
                    )
                } else if request.method == Method::Delete {
                    // Outsiders cannot tell a restricted entry from a missing one...
                    not_found()
                } else {
                    // ...except that they cannot create it.
                    Response::error(
                        403,
                        "KeyNotWritable",
                        "this key is taken by another party's private entry",
                    )
                });
            }
            let written = if request.method == Method::Put {
                tx.try_put(map, key, &request.body)
            } else {
                tx.try_remove(map, key)
            };
            if let Err(error) = written {
                return Ok(Response::error(400, "InvalidInput", error.to_string()));
            }
            if request.method == Method::Delete {
                if access.is_some() {
                    tx.remove(KV_ACCESS_MAP, key);
                }
            } else if let Some(readers) = readers {
                let readers = readers.into_iter().filter(|id| id != caller_id).collect();
                let access = Access {
                    writer: caller_id.to_owned(),
                    readers,
                };
                let value = serde_json::to_vec(&access).expect("access serializes");
                tx.put(KV_ACCESS_MAP, key, &value);
            }
            let tx_id =
                node.write_transaction(EntryKind::Transaction, tx.into_write_set(), [0; 32], out)?;
            Ok(with_tx_header(
                Response::json(200, &json!({"transaction_id": tx_id.to_string()})),
                tx_id,
            ))
        }
        _ => Ok(Response::error(
            405,
            "MethodNotAllowed",
            "use GET, PUT or DELETE",
        )),
    }
}

/// `GET /app/kv?prefix=&start_after=&limit=`: the entries the caller may read, in key order.
fn list(node: &Node, map: &str, request: &Request, caller_id: &str) -> Response {
    let prefix = request.query_param("prefix").unwrap_or("");
    let limit = match request.query_param("limit").map(str::parse::<usize>) {
        None => LIST_LIMIT_DEFAULT,
        Some(Ok(limit)) if (1..=LIST_LIMIT_MAX).contains(&limit) => limit,
        Some(_) => {
            return Response::error(
                400,
                "InvalidQueryParameterValue",
                format!("limit must be 1 to {LIST_LIMIT_MAX}"),
            )
        }
    };
    let mut tx = node.begin();
    let viewer = Viewer::of(&mut tx, caller_id);
    let restricted = map == KV_PRIVATE_MAP;
    let mut after: Option<Vec<u8>> = request
        .query_param("start_after")
        .map(|s| s.as_bytes().to_vec());
    let mut visible: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    // Scans in batches until one more visible entry than the page holds is found (so that the
    // page knows whether more follow) or the prefix is exhausted.
    loop {
        let batch = tx.scan_prefix(map, prefix.as_bytes(), after.as_deref(), limit + 1);
        let exhausted = batch.len() <= limit;
        after = batch.last().map(|(key, _)| key.clone());
        for (key, value) in batch {
            if !restricted || viewer.can_read(access_of(&mut tx, &key).as_ref()) {
                visible.push((key, value));
            }
        }
        if exhausted || visible.len() > limit {
            break;
        }
    }
    let more = visible.len() > limit;
    visible.truncate(limit);
    let items: Vec<serde_json::Value> = visible
        .iter()
        .map(|(key, value)| {
            json!({
                "key": String::from_utf8_lossy(key),
                "value": String::from_utf8_lossy(value),
            })
        })
        .collect();
    let next = if more {
        visible
            .last()
            .map(|(key, _)| String::from_utf8_lossy(key).into_owned())
    } else {
        None
    };
    with_tx_header(
        Response::json(200, &json!({"entries": items, "next_start_after": next})),
        node.commit_tx_id(),
    )
}
