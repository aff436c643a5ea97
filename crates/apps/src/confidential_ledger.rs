//! A confidential ledger whose REST API matches Azure confidential ledger's data plane
//! (api-version 2022-05-13, as the `azure-confidentialledger` SDKs call it), so that those SDKs
//! work unchanged against a Charter service.
//!
//! Every ledger entry is one transaction that writes two private maps: [`ENTRIES_MAP`] (the
//! collection's latest entry, with the entry's claims secret) and [`INDEX_MAP`] (one key per
//! entry, `collection \0 seqno`, so that listing a collection never scans other collections).
//! Reading an entry by TxID, listing a range and returning receipt claims read the transaction
//! back from the ledger files ([`AppContext::historical`]). Each entry's transaction carries the
//! application claims digest of its `LedgerEntryV1` claim, so receipts prove contents.
//!
//! Roles (Administrator, Contributor, Reader) live in the public map [`ROLES_MAP`]; a user with no
//! entry there gets `user_data.role` from governance's users table.

use base64::Engine;
use charter_core::{AppContext, Application, CoreError, Method, Request, Response, TxStatus};
use charter_crypto::{hmac_sha256, sha256, sha256_parts, Digest};
use charter_gov::tables::{
    UserInfo, CONSTITUTION_KEY, CONSTITUTION_MAP, MEMBERS_MAP, NODES_MAP, USERS_MAP,
};
use charter_kv::Tx;
use charter_ledger::{NodeInfo, NodeStatus, TxId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use charter_core::Historical;

/// Largest entry contents, in bytes (Azure's limit).
pub const CONTENTS_BYTES_MAX: usize = 8 << 10;
/// Largest collection ID, in bytes (Azure's limit).
pub const COLLECTION_ID_BYTES_MAX: usize = 256;
/// Largest user ID, in bytes.
pub const USER_ID_BYTES_MAX: usize = 256;
/// The collection of entries written without a `collectionId`.
pub const DEFAULT_COLLECTION_ID: &str = "subledger:0";
/// Entries one page of `GET /transactions` holds.
pub const LIST_PAGE_ENTRIES_MAX: usize = 100;
/// Collections one page of `GET /collections` holds.
pub const COLLECTIONS_PAGE_MAX: usize = 1_000;
/// Uncommitted transactions past which writes answer 503 and a retry hint (the core's kv app
/// uses the same bound).
pub const UNCOMMITTED_ENTRIES_MAX: u64 = 200_000;
/// Nodes `GET /enclaveQuotes` reports at most.
pub const NODES_MAX: usize = 1_000;
/// Members `GET /governance/members` reports at most.
pub const MEMBERS_MAX: usize = 1_000;

/// Private: collection ID → its latest [`EntryRecord`] (JSON). Each entry's transaction writes
/// exactly one key here, which is how a historical read finds the entry.
pub const ENTRIES_MAP: &str = "charter.app.confidential_ledger.entries";
/// Private: `collection ID \0 seqno (20 decimal digits)` → view (decimal), one per entry.
pub const INDEX_MAP: &str = "charter.app.confidential_ledger.index";
/// Label of the application secret from which entries' claim keys are derived.
pub const CLAIMS_SECRET_LABEL: &str = "confidential_ledger.claims";
/// Public: user ID → assigned role name; an empty value records a deleted user.
pub const ROLES_MAP: &str = "public:charter.app.acl.roles";

/// The claim protocol of ledger entries (the SDK's `LEDGER_ENTRY_V1_CLAIM_PROTOCOL`).
pub const LEDGER_ENTRY_CLAIM_PROTOCOL: &str = "LedgerEntryV1";

const _: () = assert!(COLLECTION_ID_BYTES_MAX + 21 <= charter_kv::KEY_BYTES_MAX);
const _: () = assert!(CONTENTS_BYTES_MAX * 8 <= charter_kv::VALUE_BYTES_MAX);
const _: () = assert!(LIST_PAGE_ENTRIES_MAX <= 10_000);

/// An entry as kept in [`ENTRIES_MAP`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EntryRecord {
    /// The collection.
    pub collection_id: String,
    /// The contents, as written.
    pub contents: String,
    /// The entry's TxID.
    pub transaction_id: String,
    /// Base64 of the per-entry HMAC key of its `LedgerEntryV1` claim.
    pub secret_key: String,
}

impl EntryRecord {
    /// The entry as Azure returns it.
    fn to_json(&self) -> serde_json::Value {
        json!({
            "contents": self.contents,
            "collectionId": self.collection_id,
            "transactionId": self.transaction_id,
        })
    }

    /// The application claims of the entry, as the SDK's `verify_receipt` takes them.
    fn claims_json(&self) -> serde_json::Value {
        json!([{
            "kind": "LedgerEntry",
            "ledgerEntry": {
                "collectionId": self.collection_id,
                "contents": self.contents,
                "protocol": LEDGER_ENTRY_CLAIM_PROTOCOL,
                "secretKey": self.secret_key,
            },
        }])
    }
}

/// The claims digest of one `LedgerEntryV1` claim, computed as the Azure SDK's
/// `receipt/_claims_digest_computation.py` does: the SHA-256 of the claim count (4 bytes, little
/// endian) followed by SHA-256("LedgerEntryV1" ‖ SHA-256(HMAC(key, collection) ‖ HMAC(key,
/// contents))).
pub fn ledger_entry_claims_digest(
    secret_key: &[u8],
    collection_id: &str,
    contents: &str,
) -> Digest {
    let collection_digest = hmac_sha256(secret_key, collection_id.as_bytes());
    let contents_digest = hmac_sha256(secret_key, contents.as_bytes());
    let entry_digest = sha256_parts(&[&collection_digest, &contents_digest]);
    let claim_digest = sha256_parts(&[LEDGER_ENTRY_CLAIM_PROTOCOL.as_bytes(), &entry_digest]);
    sha256_parts(&[&1u32.to_le_bytes(), &claim_digest])
}

/// A role in the ledger, in increasing order of power.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads entries, receipts and service information.
    Reader,
    /// Also writes entries.
    Contributor,
    /// Also manages users.
    Administrator,
}

impl Role {
    /// Parses Azure's role name.
    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "Reader" => Some(Role::Reader),
            "Contributor" => Some(Role::Contributor),
            "Administrator" => Some(Role::Administrator),
            _ => None,
        }
    }

    /// Azure's role name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Reader => "Reader",
            Role::Contributor => "Contributor",
            Role::Administrator => "Administrator",
        }
    }
}

/// The role of user `user_id`: the one assigned through `/app/users` if any (none if deleted
/// there), else `user_data.role` from governance.
pub fn role_of(tx: &mut Tx, user_id: &str) -> Option<Role> {
    if let Some(assigned) = tx.get(ROLES_MAP, user_id.as_bytes()) {
        return std::str::from_utf8(&assigned)
            .ok()
            .and_then(Role::from_name);
    }
    let info: UserInfo = serde_json::from_slice(&tx.get(USERS_MAP, user_id.as_bytes())?).ok()?;
    info.user_data?
        .get("role")?
        .as_str()
        .and_then(Role::from_name)
}

/// The endpoints, parsed from the path after `/app`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Route {
    Transactions,
    Current,
    Entry(String),
    Status(String),
    Receipt(String),
    Collections,
    User(String),
    EnclaveQuotes,
    Constitution,
    Members,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let route = match path {
            "/transactions" => Route::Transactions,
            "/transactions/current" => Route::Current,
            "/collections" => Route::Collections,
            "/enclaveQuotes" => Route::EnclaveQuotes,
            "/governance/constitution" => Route::Constitution,
            "/governance/members" => Route::Members,
            _ => {
                if let Some(rest) = path.strip_prefix("/transactions/") {
                    match rest.split_once('/') {
                        None => Route::Entry(rest.to_owned()),
                        Some((id, "status")) => Route::Status(id.to_owned()),
                        Some((id, "receipt")) => Route::Receipt(id.to_owned()),
                        Some(_) => return None,
                    }
                } else if let Some(id) = path.strip_prefix("/users/") {
                    Route::User(id.to_owned())
                } else {
                    return None;
                }
            }
        };
        Some(route)
    }

    /// The least role that may call this route with `method`.
    fn role_needed(&self, method: Method) -> Role {
        match (self, method) {
            (Route::User(_), _) => Role::Administrator,
            (Route::Transactions, Method::Post) => Role::Contributor,
            _ => Role::Reader,
        }
    }

    fn methods(&self) -> &'static [Method] {
        match self {
            Route::Transactions => &[Method::Get, Method::Post],
            Route::User(_) => &[Method::Get, Method::Patch, Method::Delete],
            _ => &[Method::Get],
        }
    }
}

/// The Azure-compatible confidential ledger application.
#[derive(Debug, Default)]
pub struct ConfidentialLedger {}

impl Application for ConfidentialLedger {
    fn handle(
        &self,
        ctx: &mut AppContext<'_>,
        path: &str,
        request: &Request,
    ) -> Option<Result<Response, CoreError>> {
        let route = Route::parse(path)?;
        if !route.methods().contains(&request.method) {
            return Some(Ok(Response::error(
                405,
                "MethodNotAllowed",
                format!("{:?} is not allowed on /app{path}", request.method),
            )));
        }
        let role = role_of(&mut ctx.begin(), ctx.caller_id());
        let needed = route.role_needed(request.method);
        match role {
            None => {
                return Some(Ok(Response::error(
                    403,
                    "Forbidden",
                    "the caller has no role in this ledger",
                )))
            }
            Some(role) if role < needed => {
                return Some(Ok(Response::error(
                    403,
                    "Forbidden",
                    format!(
                        "{} is needed; the caller is a {}",
                        needed.name(),
                        role.name()
                    ),
                )))
            }
            Some(_) => {}
        }
        Some(serve(ctx, &route, request))
    }
}

fn serve(
    ctx: &mut AppContext<'_>,
    route: &Route,
    request: &Request,
) -> Result<Response, CoreError> {
    let response = match route {
        Route::Transactions if request.method == Method::Post => return create_entry(ctx, request),
        Route::Transactions => list_entries(ctx, request),
        Route::Current => current_entry(ctx, request),
        Route::Entry(id) => get_entry(ctx, id, request),
        Route::Status(id) => status(ctx, id),
        Route::Receipt(id) => receipt(ctx, id),
        Route::Collections => collections(ctx, request),
        Route::User(id) => return user(ctx, id, request),
        Route::EnclaveQuotes => enclave_quotes(ctx),
        Route::Constitution => constitution(ctx),
        Route::Members => members(ctx),
    };
    Ok(response.unwrap_or_else(|error| error))
}

type Answer = Result<Response, Response>;

fn bad_request(code: &str, message: impl Into<String>) -> Response {
    Response::error(400, code, message)
}

fn with_tx_header(response: Response, tx_id: TxId) -> Response {
    response.with_header("x-ms-ccf-transaction-id", tx_id.to_string())
}

fn collection_param(request: &Request) -> Result<String, Response> {
    let collection = request
        .query_param("collectionId")
        .unwrap_or(DEFAULT_COLLECTION_ID);
    check_collection_id(collection)?;
    Ok(collection.to_owned())
}

fn check_collection_id(collection: &str) -> Result<(), Response> {
    if collection.is_empty() || collection.len() > COLLECTION_ID_BYTES_MAX {
        return Err(bad_request(
            "InvalidCollectionId",
            format!("collection IDs have 1 to {COLLECTION_ID_BYTES_MAX} bytes"),
        ));
    }
    // NUL separates the collection from the seqno in index keys.
    if collection.chars().any(char::is_control) {
        return Err(bad_request(
            "InvalidCollectionId",
            "collection IDs may not hold control characters",
        ));
    }
    Ok(())
}

fn parse_tx_id(text: &str) -> Result<TxId, Response> {
    let tx_id: TxId = text
        .parse()
        .map_err(|error: charter_ledger::TxIdParseError| {
            bad_request("InvalidTransactionId", error.to_string())
        })?;
    if tx_id.seqno == 0 {
        return Err(bad_request("InvalidTransactionId", "seqnos start at 1"));
    }
    Ok(tx_id)
}

fn index_key(collection: &str, seqno: u64) -> Vec<u8> {
    let mut key = index_prefix(collection);
    key.extend_from_slice(format!("{seqno:020}").as_bytes());
    key
}

fn index_prefix(collection: &str) -> Vec<u8> {
    let mut key = collection.as_bytes().to_vec();
    key.push(0);
    key
}

/// The key of the `LedgerEntryV1` claim of the entry `tx_id` writes: an HMAC of the TxID
/// under the application's secret, which the core derives from the ledger secret. Outsiders
/// cannot predict it, so a receipt's claims digest reveals nothing about the contents; the key
/// is stored with the entry (privately) so receipts can disclose it with the claims.
fn entry_claim_key(ctx: &AppContext<'_>, tx_id: TxId) -> Digest {
    hmac_sha256(
        &ctx.app_secret(CLAIMS_SECRET_LABEL),
        format!("entry:{tx_id}").as_bytes(),
    )
}

/// Why this node cannot write now, if it cannot.
fn refuse_write(ctx: &AppContext<'_>) -> Option<Response> {
    if !ctx.is_primary() {
        return Some(Response::error(
            503,
            "NotPrimary",
            "this node is not the primary",
        ));
    }
    let uncommitted = ctx.last_tx_id().seqno - ctx.commit_tx_id().seqno;
    if uncommitted >= UNCOMMITTED_ENTRIES_MAX {
        return Some(
            Response::error(
                503,
                "Backpressure",
                "too many uncommitted transactions; retry later",
            )
            .with_header("retry-after", "1"),
        );
    }
    None
}

fn create_entry(ctx: &mut AppContext<'_>, request: &Request) -> Result<Response, CoreError> {
    let collection = match collection_param(request) {
        Ok(collection) => collection,
        Err(response) => return Ok(response),
    };
    let body: serde_json::Value = match serde_json::from_slice(&request.body) {
        Ok(body) => body,
        Err(error) => return Ok(bad_request("InvalidJson", error.to_string())),
    };
    let Some(contents) = body.get("contents").and_then(serde_json::Value::as_str) else {
        return Ok(bad_request(
            "InvalidInput",
            "the body must be {\"contents\": \"...\"}",
        ));
    };
    if contents.len() > CONTENTS_BYTES_MAX {
        return Ok(Response::error(
            413,
            "PayloadTooLarge",
            format!("entry contents have at most {CONTENTS_BYTES_MAX} bytes"),
        ));
    }
    if let Some(busy) = refuse_write(ctx) {
        return Ok(busy);
    }
    // The TxID `commit` will assign, named in the entry's claims.
    let tx_id = ctx.next_tx_id();
    let mut tx = ctx.begin();
    let entry_key = entry_claim_key(ctx, tx_id);
    let record = EntryRecord {
        collection_id: collection.clone(),
        contents: contents.to_owned(),
        transaction_id: tx_id.to_string(),
        secret_key: base64::engine::general_purpose::STANDARD.encode(entry_key),
    };
    let record_bytes = match serde_json::to_vec(&record) {
        Ok(bytes) => bytes,
        Err(error) => return Ok(Response::error(500, "InternalError", error.to_string())),
    };
    tx.put(ENTRIES_MAP, collection.as_bytes(), &record_bytes);
    tx.put(
        INDEX_MAP,
        &index_key(&collection, tx_id.seqno),
        tx_id.view.to_string().as_bytes(),
    );
    let claims_digest = ledger_entry_claims_digest(&entry_key, &collection, contents);
    let written = ctx.commit(tx, claims_digest)?;
    assert_eq!(written, tx_id, "the entry got the TxID it was written for");
    Ok(with_tx_header(
        Response::json(
            200,
            &json!({"collectionId": collection, "transactionId": tx_id.to_string()}),
        ),
        tx_id,
    ))
}

/// The entry a historical transaction holds, if it is an entry.
fn entry_of(write_set: &charter_kv::WriteSet) -> Option<EntryRecord> {
    let map = write_set.maps.get(ENTRIES_MAP)?;
    let value = map.values().next()?.as_ref()?;
    serde_json::from_slice(value).ok()
}

/// A historical entry: `Ok(None)` while loading.
fn read_entry(
    ctx: &mut AppContext<'_>,
    tx_id: TxId,
) -> Result<Option<Option<EntryRecord>>, Response> {
    match ctx.tx_status(tx_id) {
        TxStatus::Committed => {}
        TxStatus::Pending => return Ok(None),
        TxStatus::Unknown => {
            return Err(Response::error(
                404,
                "TransactionNotFound",
                format!("{tx_id} is not in the ledger"),
            ))
        }
        TxStatus::Invalid => {
            return Err(Response::error(
                404,
                "InvalidTransactionId",
                format!("{tx_id} will never be committed"),
            ))
        }
    }
    match ctx.historical(tx_id) {
        Historical::Loading => Ok(None),
        Historical::Ready(found) => Ok(Some(entry_of(&found.write_set))),
        Historical::Unknown => Err(Response::error(
            404,
            "TransactionNotFound",
            format!("{tx_id} is not in the ledger"),
        )),
        Historical::Corrupt(reason) => Err(Response::error(500, "LedgerCorrupt", reason)),
    }
}

fn get_entry(ctx: &mut AppContext<'_>, id: &str, request: &Request) -> Answer {
    let tx_id = parse_tx_id(id)?;
    let collection = collection_param(request)?;
    let Some(entry) = read_entry(ctx, tx_id)? else {
        return Ok(Response::json(200, &json!({"state": "Loading"})));
    };
    match entry {
        Some(entry) if entry.collection_id == collection => Ok(Response::json(
            200,
            &json!({"state": "Ready", "entry": entry.to_json()}),
        )),
        _ => Err(Response::error(
            404,
            "EntryNotFound",
            format!("{tx_id} holds no entry of collection {collection:?}"),
        )),
    }
}

fn current_entry(ctx: &mut AppContext<'_>, request: &Request) -> Answer {
    let collection = collection_param(request)?;
    let mut tx = ctx.begin();
    let bytes = tx.get(ENTRIES_MAP, collection.as_bytes()).ok_or_else(|| {
        Response::error(
            404,
            "EntryNotFound",
            format!("collection {collection:?} has no entries"),
        )
    })?;
    let record: EntryRecord = serde_json::from_slice(&bytes)
        .map_err(|error| Response::error(500, "InternalError", error.to_string()))?;
    Ok(Response::json(200, &record.to_json()))
}

fn status(ctx: &mut AppContext<'_>, id: &str) -> Answer {
    let tx_id = parse_tx_id(id)?;
    let state = match ctx.tx_status(tx_id) {
        TxStatus::Committed => "Committed",
        TxStatus::Pending => "Pending",
        TxStatus::Unknown => {
            return Err(Response::error(
                404,
                "TransactionNotFound",
                format!("{tx_id} is not in the ledger"),
            ))
        }
        TxStatus::Invalid => {
            return Err(Response::error(
                404,
                "InvalidTransactionId",
                format!("{tx_id} will never be committed"),
            ))
        }
    };
    Ok(Response::json(
        200,
        &json!({"state": state, "transactionId": tx_id.to_string()}),
    ))
}

fn receipt(ctx: &mut AppContext<'_>, id: &str) -> Answer {
    let tx_id = parse_tx_id(id)?;
    let loading = Response::json(
        200,
        &json!({"state": "Loading", "transactionId": tx_id.to_string()}),
    );
    let receipt = match ctx.receipt(tx_id) {
        Ok(receipt) => receipt,
        // Committed but the signature is not yet in the tree, or not committed yet.
        Err(TxStatus::Pending | TxStatus::Committed) => return Ok(loading),
        Err(TxStatus::Invalid) => {
            return Err(Response::error(
                404,
                "InvalidTransactionId",
                format!("{tx_id} will never be committed"),
            ))
        }
        Err(TxStatus::Unknown) => {
            return Err(Response::error(
                404,
                "TransactionNotFound",
                format!("{tx_id} is not in the ledger"),
            ))
        }
    };
    let Some(entry) = read_entry(ctx, tx_id)? else {
        return Ok(loading);
    };
    let mut body = json!({
        "receipt": receipt.to_azure_json(),
        "state": "Ready",
        "transactionId": tx_id.to_string(),
    });
    if let Some(entry) = entry {
        body["applicationClaims"] = entry.claims_json();
    }
    Ok(Response::json(200, &body))
}

/// Percent-encodes a query value (everything but RFC 3986's unreserved characters).
fn encode_query(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn list_link(collection: &str, from: TxId, to: Option<TxId>) -> String {
    let mut link = format!(
        "/app/transactions?collectionId={}&fromTransactionId={from}",
        encode_query(collection)
    );
    if let Some(to) = to {
        link.push_str(&format!("&toTransactionId={to}"));
    }
    link
}

fn optional_tx_id(request: &Request, name: &str) -> Result<Option<TxId>, Response> {
    request.query_param(name).map(parse_tx_id).transpose()
}

/// Entries of a collection in a seqno range, from the ledger files, one page at a time. While
/// some are still being read the page is empty, with state `Loading` and a `nextLink` that asks
/// for the same page again (the SDK's pager follows it).
fn list_entries(ctx: &mut AppContext<'_>, request: &Request) -> Answer {
    let collection = collection_param(request)?;
    let from = optional_tx_id(request, "fromTransactionId")?;
    let to = optional_tx_id(request, "toTransactionId")?;
    let from_seqno = from.map_or(1, |from| from.seqno);
    let commit_seqno = ctx.commit_tx_id().seqno;
    if let (Some(from), Some(to)) = (from, to) {
        if from.seqno > to.seqno {
            return Err(bad_request(
                "InvalidRange",
                format!("fromTransactionId {from} is after toTransactionId {to}"),
            ));
        }
    }
    let link_from = from.unwrap_or(TxId::new(0, 1));
    let loading = |next: String| {
        Response::json(
            200,
            &json!({"state": "Loading", "entries": [], "nextLink": next, "@nextLink": next}),
        )
        .with_header("retry-after", "1")
    };
    // Only committed entries are read back; a range that ends later waits for the commit.
    if let Some(to) = to {
        if to.seqno > commit_seqno {
            return Ok(loading(list_link(&collection, link_from, Some(to))));
        }
    }
    let to_seqno = to.map_or(commit_seqno, |to| to.seqno);
    let prefix = index_prefix(&collection);
    let start_after = index_key(&collection, from_seqno - 1);
    let mut tx = ctx.begin();
    let keys = tx.scan_prefix(
        INDEX_MAP,
        &prefix,
        Some(&start_after),
        LIST_PAGE_ENTRIES_MAX + 1,
    );
    let mut tx_ids = Vec::with_capacity(keys.len());
    for (key, value) in &keys {
        let seqno = std::str::from_utf8(&key[prefix.len()..])
            .ok()
            .and_then(|text| text.parse::<u64>().ok());
        let view = std::str::from_utf8(value)
            .ok()
            .and_then(|text| text.parse::<u64>().ok());
        let (Some(seqno), Some(view)) = (seqno, view) else {
            return Err(Response::error(500, "InternalError", "malformed index key"));
        };
        if seqno > to_seqno {
            break;
        }
        tx_ids.push(TxId::new(view, seqno));
    }
    let next = if tx_ids.len() > LIST_PAGE_ENTRIES_MAX {
        tx_ids.pop()
    } else {
        None
    };
    assert!(tx_ids.len() <= LIST_PAGE_ENTRIES_MAX);
    let found = ctx.historical_many(&tx_ids);
    if found
        .iter()
        .any(|found| matches!(found, Historical::Loading))
    {
        return Ok(loading(list_link(&collection, link_from, to)));
    }
    let mut entries = Vec::with_capacity(found.len());
    for found in found {
        match found {
            Historical::Ready(found) => {
                if let Some(entry) = entry_of(&found.write_set) {
                    entries.push(entry.to_json());
                }
            }
            // The index names a TxID the ledger does not hold: not an entry after all.
            Historical::Unknown => {}
            Historical::Corrupt(reason) => {
                return Err(Response::error(500, "LedgerCorrupt", reason))
            }
            Historical::Loading => unreachable!("checked above"),
        }
    }
    let mut body = json!({"state": "Ready", "entries": entries});
    if let Some(next) = next {
        let link = list_link(&collection, next, to);
        body["nextLink"] = json!(link);
        body["@nextLink"] = json!(link);
    }
    Ok(Response::json(200, &body))
}

fn collections(ctx: &mut AppContext<'_>, request: &Request) -> Answer {
    let after = request.query_param("after");
    let mut tx = ctx.begin();
    let mut keys = tx.scan_prefix(
        ENTRIES_MAP,
        b"",
        after.map(str::as_bytes),
        COLLECTIONS_PAGE_MAX + 1,
    );
    let more = keys.len() > COLLECTIONS_PAGE_MAX;
    keys.truncate(COLLECTIONS_PAGE_MAX);
    let names: Vec<String> = keys
        .iter()
        .map(|(key, _)| String::from_utf8_lossy(key).into_owned())
        .collect();
    let list: Vec<serde_json::Value> = names
        .iter()
        .map(|name| json!({"collectionId": name}))
        .collect();
    let mut body = json!({"collections": list});
    if let (true, Some(last)) = (more, names.last()) {
        body["nextLink"] = json!(format!("/app/collections?after={}", encode_query(last)));
    }
    Ok(Response::json(200, &body))
}

fn user(ctx: &mut AppContext<'_>, user_id: &str, request: &Request) -> Result<Response, CoreError> {
    if user_id.is_empty() || user_id.len() > USER_ID_BYTES_MAX {
        return Ok(bad_request(
            "InvalidUserId",
            format!("user IDs have 1 to {USER_ID_BYTES_MAX} bytes"),
        ));
    }
    let mut tx = ctx.begin();
    match request.method {
        Method::Get => Ok(match role_of(&mut tx, user_id) {
            Some(role) => Response::json(
                200,
                &json!({"assignedRole": role.name(), "userId": user_id}),
            ),
            None => Response::error(404, "UserNotFound", format!("user {user_id} has no role")),
        }),
        Method::Patch | Method::Delete => {
            let role = if request.method == Method::Patch {
                let body: serde_json::Value = match serde_json::from_slice(&request.body) {
                    Ok(body) => body,
                    Err(error) => return Ok(bad_request("InvalidJson", error.to_string())),
                };
                let name = body.get("assignedRole").and_then(serde_json::Value::as_str);
                match name.and_then(Role::from_name) {
                    Some(role) => Some(role),
                    None => {
                        return Ok(bad_request(
                            "InvalidRole",
                            "assignedRole must be Administrator, Contributor or Reader",
                        ))
                    }
                }
            } else {
                None
            };
            if let Some(busy) = refuse_write(ctx) {
                return Ok(busy);
            }
            tx.put(
                ROLES_MAP,
                user_id.as_bytes(),
                role.map_or("", Role::name).as_bytes(),
            );
            let tx_id = ctx.commit(tx, [0; 32])?;
            Ok(with_tx_header(
                match role {
                    Some(role) => Response::json(
                        200,
                        &json!({"assignedRole": role.name(), "userId": user_id}),
                    ),
                    None => Response {
                        status: 204,
                        headers: Vec::new(),
                        body: Vec::new(),
                    },
                },
                tx_id,
            ))
        }
        _ => Ok(Response::error(
            405,
            "MethodNotAllowed",
            "use GET, PATCH or DELETE",
        )),
    }
}

/// Quotes of the trusted nodes, from the attestation evidence the nodes map keeps. The app
/// cannot name the node answering, so `currentNodeId` is the first trusted node (the only one
/// in a single-node service).
fn enclave_quotes(ctx: &mut AppContext<'_>) -> Answer {
    let mut tx = ctx.begin();
    let nodes = tx.scan_prefix(NODES_MAP, b"", None, NODES_MAX);
    let mut quotes = serde_json::Map::new();
    let mut current = None;
    for (key, value) in nodes {
        let Ok(info) = serde_json::from_slice::<NodeInfo>(&value) else {
            continue;
        };
        if info.status != NodeStatus::Trusted {
            continue;
        }
        let id = String::from_utf8_lossy(&key).into_owned();
        current.get_or_insert_with(|| id.clone());
        let evidence = info.evidence.unwrap_or_default();
        let platform = evidence["platform"].as_str().unwrap_or("");
        quotes.insert(
            id.clone(),
            json!({
                "nodeId": id,
                "quoteVersion": if platform == "sev-snp" { "AMD_SEV_SNP_v1" } else { "Insecure_Virtual" },
                "raw": evidence["report"],
                "mrenclave": evidence["measurement"],
            }),
        );
    }
    Ok(Response::json(
        200,
        &json!({"currentNodeId": current.unwrap_or_default(), "enclaveQuotes": quotes}),
    ))
}

fn constitution(ctx: &mut AppContext<'_>) -> Answer {
    let mut tx = ctx.begin();
    let script = tx
        .get(CONSTITUTION_MAP, CONSTITUTION_KEY.as_bytes())
        .ok_or_else(|| Response::error(404, "ConstitutionNotFound", "no constitution"))?;
    Ok(Response::json(
        200,
        &json!({
            "digest": hex::encode(sha256(&script)),
            "script": String::from_utf8_lossy(&script),
        }),
    ))
}

fn members(ctx: &mut AppContext<'_>) -> Answer {
    let mut tx = ctx.begin();
    let members: Vec<serde_json::Value> = tx
        .scan_prefix(MEMBERS_MAP, b"", None, MEMBERS_MAX)
        .into_iter()
        .filter_map(|(key, value)| {
            let info: charter_gov::tables::MemberInfo = serde_json::from_slice(&value).ok()?;
            Some(json!({"certificate": info.cert, "id": String::from_utf8_lossy(&key)}))
        })
        .collect();
    Ok(Response::json(200, &json!({"members": members})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert_eq!(Route::parse("/transactions"), Some(Route::Transactions));
        assert_eq!(Route::parse("/transactions/current"), Some(Route::Current));
        assert_eq!(
            Route::parse("/transactions/2.5/receipt"),
            Some(Route::Receipt("2.5".into()))
        );
        assert_eq!(
            Route::parse("/transactions/2.5/status"),
            Some(Route::Status("2.5".into()))
        );
        assert_eq!(Route::parse("/transactions/2.5/x"), None);
        assert_eq!(Route::parse("/kv/a"), None);
        assert_eq!(Route::parse("/users/ab"), Some(Route::User("ab".into())));
    }

    #[test]
    fn claims_digest_matches_the_sdk() {
        // Computed with azure-confidentialledger 1.1.1's compute_claims_digest for
        // [{"kind": "LedgerEntry", "ledgerEntry": {"collectionId": "subledger:0",
        //   "contents": "hello", "protocol": "LedgerEntryV1", "secretKey": base64([7; 32])}}].
        let digest = ledger_entry_claims_digest(&[7; 32], "subledger:0", "hello");
        assert_eq!(hex::encode(digest), EXPECTED_DIGEST);
    }

    const EXPECTED_DIGEST: &str =
        "478b75d52a2baa5501d2f2060a0bbd2266baebe4a9b6981b09e79a0044e2ef34";

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Reader < Role::Contributor);
        assert!(Role::Contributor < Role::Administrator);
        for role in [Role::Reader, Role::Contributor, Role::Administrator] {
            assert_eq!(Role::from_name(role.name()), Some(role));
        }
        assert_eq!(Role::from_name("reader"), None);
    }

    #[test]
    fn query_encoding() {
        assert_eq!(encode_query("subledger:0"), "subledger%3A0");
        assert_eq!(encode_query("a b&c"), "a%20b%26c");
    }
}
