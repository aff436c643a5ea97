//! Member requests: COSE Sign1 authentication, freshness, replay protection and the
//! proposal lifecycle, each as a function over one KV transaction.
//!
//! Every accepted request is written verbatim to [`HISTORY_MAP`] in the same transaction as
//! its effects, so the ledger holds each signed request (non-repudiation).

use std::collections::BTreeMap;

use charter_crypto::{sha256, Certificate, CoseSign1};
use charter_kv::Tx;
use serde_json::json;

use crate::constitution::{run_ballot, Constitution};
use crate::tables::{
    JsRuntimeOptions, MemberInfo, MemberStatus, ProposalInfo, ProposalState, CONSTITUTION_KEY,
    CONSTITUTION_MAP, HISTORY_MAP, JS_RUNTIME_OPTIONS_KEY, JS_RUNTIME_OPTIONS_MAP, MEMBERS_MAP,
    PROPOSALS_INFO_MAP, PROPOSALS_MAP, REQUEST_DIGESTS_MAP,
};

/// Largest proposal body accepted.
pub const PROPOSAL_BYTES_MAX: usize = 1 << 20;
/// Largest number of ballots kept per proposal (one per member).
pub const MEMBERS_MAX: usize = 256;
/// Member state digests awaiting acknowledgement, by member ID: `{"state_digest": hex}`.
pub const MEMBER_ACKS_MAP: &str = "public:charter.gov.member_acks";

/// Why a governance request was refused; each maps to one HTTP status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GovError {
    /// Malformed request (400).
    #[error("{code}: {message}")]
    BadRequest {
        /// Error code for the JSON body.
        code: &'static str,
        /// Explanation.
        message: String,
    },
    /// Unknown signer or bad signature (401).
    #[error("{0}")]
    Unauthorized(String),
    /// Known signer that may not do this (403).
    #[error("{0}")]
    Forbidden(String),
    /// No such proposal (404).
    #[error("{0}")]
    NotFound(String),
    /// The proposal is not open, or the request was seen before (409 / 400).
    #[error("{code}: {message}")]
    Conflict {
        /// Error code for the JSON body.
        code: &'static str,
        /// Explanation.
        message: String,
    },
}

impl GovError {
    /// HTTP status and error code for this error.
    pub fn status_and_code(&self) -> (u16, &'static str) {
        match self {
            GovError::BadRequest { code, .. } => (400, code),
            GovError::Unauthorized(_) => (401, "InvalidAuthenticationInfo"),
            GovError::Forbidden(_) => (403, "AuthorizationFailed"),
            GovError::NotFound(_) => (404, "ProposalNotFound"),
            GovError::Conflict { code, .. } => (409, code),
        }
    }

    /// The message without the code.
    pub fn message(&self) -> String {
        match self {
            GovError::BadRequest { message, .. } | GovError::Conflict { message, .. } => {
                message.clone()
            }
            GovError::Unauthorized(message)
            | GovError::Forbidden(message)
            | GovError::NotFound(message) => message.clone(),
        }
    }
}

fn bad(code: &'static str, message: impl Into<String>) -> GovError {
    GovError::BadRequest {
        code,
        message: message.into(),
    }
}

/// An authenticated member request.
#[derive(Clone, Debug)]
pub struct MemberRequest {
    /// Signer's member ID.
    pub member_id: String,
    /// The signer's record.
    pub member: MemberInfo,
    /// The parsed message.
    pub message: CoseSign1,
}

/// Freshness rules for member requests.
#[derive(Clone, Copy, Debug)]
pub struct Freshness {
    /// Host's wall clock, seconds since the Unix epoch.
    pub now_unix_s: u64,
    /// Requests older or newer than this many seconds are refused.
    pub window_s: u64,
}

fn get_json<T: serde::de::DeserializeOwned>(tx: &mut Tx, map: &str, key: &str) -> Option<T> {
    tx.get(map, key.as_bytes())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

fn put_json<T: serde::Serialize>(
    tx: &mut Tx,
    map: &str,
    key: &str,
    value: &T,
) -> Result<(), GovError> {
    let bytes =
        serde_json::to_vec(value).map_err(|error| bad("InternalError", error.to_string()))?;
    tx.try_put(map, key.as_bytes(), &bytes)
        .map_err(|error| bad("InvalidInput", error.to_string()))
}

/// Checks a COSE Sign1 member request: known member, valid signature, expected message type,
/// fresh `created_at`, not seen before. Records it (history and replay digest) in `tx`.
///
/// # Errors
/// [`GovError`] naming what is wrong; nothing is recorded then.
pub fn authenticate(
    tx: &mut Tx,
    body: &[u8],
    expected_type: &str,
    freshness: Freshness,
) -> Result<MemberRequest, GovError> {
    let message =
        CoseSign1::parse(body).map_err(|error| bad("InvalidCoseSign1", error.to_string()))?;
    let member_id = message.headers.kid.to_ascii_lowercase();
    let member: MemberInfo = get_json(tx, MEMBERS_MAP, &member_id)
        .ok_or_else(|| GovError::Unauthorized(format!("{member_id} is not a member")))?;
    let cert = Certificate::from_pem(&member.cert)
        .map_err(|error| bad("InternalError", error.to_string()))?;
    let key = cert
        .public_key()
        .map_err(|error| bad("InternalError", error.to_string()))?;
    message.verify(&key).map_err(|_| {
        GovError::Unauthorized(format!(
            "signature does not verify with the key of member {member_id}"
        ))
    })?;
    if message.headers.msg_type != expected_type {
        return Err(bad(
            "InvalidMessageType",
            format!(
                "expected ccf.gov.msg.type {expected_type:?}, got {:?}",
                message.headers.msg_type
            ),
        ));
    }
    let created_at = message.headers.created_at;
    let age = freshness.now_unix_s.abs_diff(created_at);
    if age > freshness.window_s {
        return Err(bad(
            "StaleRequest",
            format!(
                "ccf.gov.msg.created_at {created_at} is {age} s away from the node's time {}; the window is {} s",
                freshness.now_unix_s, freshness.window_s
            ),
        ));
    }
    let digest = hex::encode(sha256(body));
    if tx.get(REQUEST_DIGESTS_MAP, digest.as_bytes()).is_some() {
        return Err(GovError::Conflict {
            code: "ReplayedRequest",
            message: "this signed request was already submitted".to_owned(),
        });
    }
    // Forget digests that left the freshness window; older requests are refused as stale anyway.
    let horizon = freshness.now_unix_s.saturating_sub(2 * freshness.window_s);
    let old: Vec<Vec<u8>> = tx
        .scan_prefix(REQUEST_DIGESTS_MAP, b"", None, 10_000)
        .into_iter()
        .filter(|(_, value)| {
            std::str::from_utf8(value)
                .ok()
                .and_then(|text| text.parse::<u64>().ok())
                .is_some_and(|at| at < horizon)
        })
        .map(|(key, _)| key)
        .collect();
    for key in old {
        tx.remove(REQUEST_DIGESTS_MAP, &key);
    }
    tx.try_put(
        REQUEST_DIGESTS_MAP,
        digest.as_bytes(),
        created_at.to_string().as_bytes(),
    )
    .map_err(|error| bad("InvalidInput", error.to_string()))?;
    tx.try_put(HISTORY_MAP, member_id.as_bytes(), body)
        .map_err(|error| bad("InvalidInput", error.to_string()))?;
    Ok(MemberRequest {
        member_id,
        member,
        message,
    })
}

/// The constitution and limits in force.
fn constitution(tx: &mut Tx) -> Result<(Constitution, JsRuntimeOptions), GovError> {
    let source = tx
        .get(CONSTITUTION_MAP, CONSTITUTION_KEY.as_bytes())
        .ok_or_else(|| bad("ServiceNotReady", "no constitution is set"))?;
    let source =
        String::from_utf8(source).map_err(|_| bad("InternalError", "constitution is not UTF-8"))?;
    let limits: JsRuntimeOptions =
        get_json(tx, JS_RUNTIME_OPTIONS_MAP, JS_RUNTIME_OPTIONS_KEY).unwrap_or_default();
    Ok((Constitution::new(&source, limits), limits))
}

/// JSON summary of a proposal, in CCF's camelCase shape.
pub fn proposal_json(proposal_id: &str, info: &ProposalInfo) -> serde_json::Value {
    let mut value = json!({
        "proposalId": proposal_id,
        "proposerId": info.proposer_id,
        "proposalState": info.state,
        "ballotCount": info.ballots.len(),
        "finalVotes": info.final_votes,
    });
    if let Some(failure) = &info.failure {
        value["failure"] = json!({"reason": failure});
    }
    value
}

fn require_active(request: &MemberRequest) -> Result<(), GovError> {
    if request.member.status != MemberStatus::Active {
        return Err(GovError::Forbidden(format!(
            "member {} has not acknowledged the state digest yet and may not take part",
            request.member_id
        )));
    }
    Ok(())
}

/// What changed besides the proposal itself, so that the caller can drop open proposals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The proposal's summary JSON.
    pub summary: serde_json::Value,
    /// IDs of other proposals that were dropped.
    pub dropped: Vec<String>,
}

/// Creates a proposal from an authenticated `proposal` request.
///
/// # Errors
/// [`GovError`] if the proposer is not active, or the constitution finds the proposal invalid.
pub fn create_proposal(tx: &mut Tx, request: &MemberRequest) -> Result<Outcome, GovError> {
    require_active(request)?;
    let body = &request.message.payload;
    if body.len() > PROPOSAL_BYTES_MAX {
        return Err(bad(
            "ProposalTooLarge",
            format!("proposals are limited to {PROPOSAL_BYTES_MAX} bytes"),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| bad("InvalidProposal", "the proposal is not UTF-8"))?;
    serde_json::from_str::<serde_json::Value>(text).map_err(|error| {
        bad(
            "InvalidProposal",
            format!("the proposal is not JSON: {error}"),
        )
    })?;
    let (constitution, _) = constitution(tx)?;
    let validity = constitution
        .validate(tx, text)
        .map_err(|error| bad("ProposalFailedToValidate", error.to_string()))?;
    if !validity.valid {
        return Err(bad("ProposalFailedToValidate", validity.description));
    }
    let proposal_id = hex::encode(sha256(&request_bytes_digest_input(request)));
    if tx.get(PROPOSALS_INFO_MAP, proposal_id.as_bytes()).is_some() {
        return Err(GovError::Conflict {
            code: "ProposalReplay",
            message: format!("proposal {proposal_id} exists already"),
        });
    }
    tx.try_put(PROPOSALS_MAP, proposal_id.as_bytes(), body)
        .map_err(|error| bad("InvalidInput", error.to_string()))?;
    let info = ProposalInfo {
        proposer_id: request.member_id.clone(),
        state: ProposalState::Open,
        ballots: BTreeMap::new(),
        final_votes: BTreeMap::new(),
        failure: None,
    };
    put_json(tx, PROPOSALS_INFO_MAP, &proposal_id, &info)?;
    resolve_and_apply(tx, &proposal_id)
}

/// A proposal ID: digest of the signed request (unique: requests are never replayed).
fn request_bytes_digest_input(request: &MemberRequest) -> Vec<u8> {
    let mut input = request.member_id.as_bytes().to_vec();
    input.extend_from_slice(&request.message.headers.created_at.to_le_bytes());
    input.extend_from_slice(&request.message.payload);
    input
}

fn load(tx: &mut Tx, proposal_id: &str) -> Result<(ProposalInfo, String), GovError> {
    let info: ProposalInfo = get_json(tx, PROPOSALS_INFO_MAP, proposal_id)
        .ok_or_else(|| GovError::NotFound(format!("no proposal {proposal_id}")))?;
    let body = tx
        .get(PROPOSALS_MAP, proposal_id.as_bytes())
        .ok_or_else(|| GovError::NotFound(format!("no proposal body for {proposal_id}")))?;
    let body = String::from_utf8(body)
        .map_err(|_| bad("InternalError", "stored proposal is not UTF-8"))?;
    Ok((info, body))
}

fn require_proposal_header(request: &MemberRequest, proposal_id: &str) -> Result<(), GovError> {
    match &request.message.headers.proposal_id {
        Some(id) if id == proposal_id => Ok(()),
        Some(id) => Err(bad(
            "InvalidProposalId",
            format!("ccf.gov.msg.proposal_id {id} does not match the URL's {proposal_id}"),
        )),
        None => Err(bad(
            "InvalidProposalId",
            "ccf.gov.msg.proposal_id header is missing",
        )),
    }
}

/// Records a ballot and resolves the proposal.
///
/// # Errors
/// [`GovError`] if the signer is not `member_id_in_path`, not active, or the proposal not open.
pub fn submit_ballot(
    tx: &mut Tx,
    request: &MemberRequest,
    proposal_id: &str,
    member_id_in_path: &str,
) -> Result<Outcome, GovError> {
    if request.member_id != member_id_in_path.to_ascii_lowercase() {
        return Err(GovError::Forbidden(format!(
            "ballot signed by {} submitted for member {member_id_in_path}",
            request.member_id
        )));
    }
    require_active(request)?;
    require_proposal_header(request, proposal_id)?;
    let (mut info, _) = load(tx, proposal_id)?;
    if info.state != ProposalState::Open {
        return Err(GovError::Conflict {
            code: "ProposalNotOpen",
            message: format!("proposal {proposal_id} is {:?}", info.state),
        });
    }
    let ballot: serde_json::Value = serde_json::from_slice(&request.message.payload)
        .map_err(|error| bad("InvalidBallot", format!("the ballot is not JSON: {error}")))?;
    let source = ballot["ballot"].as_str().ok_or_else(|| {
        bad(
            "InvalidBallot",
            "the ballot must be {\"ballot\": \"export function vote(proposal, proposerId) {...}\"}",
        )
    })?;
    if info.ballots.contains_key(&request.member_id) {
        return Err(GovError::Conflict {
            code: "VoteAlreadyExists",
            message: format!(
                "member {} already voted on {proposal_id}",
                request.member_id
            ),
        });
    }
    if info.ballots.len() >= MEMBERS_MAX {
        return Err(bad("TooManyBallots", "ballot limit reached"));
    }
    info.ballots
        .insert(request.member_id.clone(), source.to_owned());
    put_json(tx, PROPOSALS_INFO_MAP, proposal_id, &info)?;
    resolve_and_apply(tx, proposal_id)
}

/// Withdraws an open proposal (proposer only).
///
/// # Errors
/// [`GovError`] if the signer did not propose it or it is not open.
pub fn withdraw(
    tx: &mut Tx,
    request: &MemberRequest,
    proposal_id: &str,
) -> Result<Outcome, GovError> {
    require_proposal_header(request, proposal_id)?;
    let (mut info, _) = load(tx, proposal_id)?;
    if info.proposer_id != request.member_id {
        return Err(GovError::Forbidden(format!(
            "only the proposer {} may withdraw {proposal_id}",
            info.proposer_id
        )));
    }
    if info.state != ProposalState::Open {
        return Err(GovError::Conflict {
            code: "ProposalNotOpen",
            message: format!("proposal {proposal_id} is {:?}", info.state),
        });
    }
    info.state = ProposalState::Withdrawn;
    put_json(tx, PROPOSALS_INFO_MAP, proposal_id, &info)?;
    Ok(Outcome {
        summary: proposal_json(proposal_id, &info),
        dropped: Vec::new(),
    })
}

/// Evaluates the ballots, resolves, and applies an accepted proposal; drops the other open
/// proposals if the constitution or the member set changed.
fn resolve_and_apply(tx: &mut Tx, proposal_id: &str) -> Result<Outcome, GovError> {
    let (mut info, body) = load(tx, proposal_id)?;
    let (constitution, limits) = constitution(tx)?;
    let mut votes = Vec::new();
    info.final_votes.clear();
    for (member_id, source) in &info.ballots {
        match run_ballot(source, tx, &body, &info.proposer_id, limits) {
            Ok(vote) => {
                info.final_votes.insert(member_id.clone(), vote);
                votes.push((member_id.clone(), vote));
            }
            Err(error) => {
                info.state = ProposalState::Failed;
                info.failure = Some(format!("ballot of {member_id} failed: {error}"));
                put_json(tx, PROPOSALS_INFO_MAP, proposal_id, &info)?;
                return Ok(Outcome {
                    summary: proposal_json(proposal_id, &info),
                    dropped: Vec::new(),
                });
            }
        }
    }
    let state = match constitution.resolve(tx, &body, &info.proposer_id, &votes) {
        Ok(state) => state,
        Err(error) => {
            info.state = ProposalState::Failed;
            info.failure = Some(format!("resolve failed: {error}"));
            put_json(tx, PROPOSALS_INFO_MAP, proposal_id, &info)?;
            return Ok(Outcome {
                summary: proposal_json(proposal_id, &info),
                dropped: Vec::new(),
            });
        }
    };
    let mut dropped = Vec::new();
    match state {
        ProposalState::Accepted => {
            let constitution_before = tx.get(CONSTITUTION_MAP, CONSTITUTION_KEY.as_bytes());
            let members_before = tx.scan_prefix(MEMBERS_MAP, b"", None, MEMBERS_MAX + 1);
            // Apply on a copy, so that a throwing action leaves no partial writes behind.
            let mut attempt = tx.clone();
            match constitution.apply(&mut attempt, &body, proposal_id) {
                Ok(()) => {
                    *tx = attempt;
                    info.state = ProposalState::Accepted;
                    let constitution_after = tx.get(CONSTITUTION_MAP, CONSTITUTION_KEY.as_bytes());
                    let members_after = tx.scan_prefix(MEMBERS_MAP, b"", None, MEMBERS_MAX + 1);
                    if constitution_before != constitution_after || members_before != members_after
                    {
                        dropped = drop_open_proposals(tx, proposal_id)?;
                    }
                }
                Err(error) => {
                    info.state = ProposalState::Failed;
                    info.failure = Some(format!("apply failed: {error}"));
                }
            }
        }
        ProposalState::Rejected => info.state = ProposalState::Rejected,
        _ => info.state = ProposalState::Open,
    }
    put_json(tx, PROPOSALS_INFO_MAP, proposal_id, &info)?;
    Ok(Outcome {
        summary: proposal_json(proposal_id, &info),
        dropped,
    })
}

fn drop_open_proposals(tx: &mut Tx, except: &str) -> Result<Vec<String>, GovError> {
    let mut dropped = Vec::new();
    let all = tx.scan_prefix(PROPOSALS_INFO_MAP, b"", None, 100_000);
    for (key, value) in all {
        let Ok(id) = String::from_utf8(key) else {
            continue;
        };
        if id == except {
            continue;
        }
        let Ok(mut info) = serde_json::from_slice::<ProposalInfo>(&value) else {
            continue;
        };
        if info.state == ProposalState::Open {
            info.state = ProposalState::Dropped;
            put_json(tx, PROPOSALS_INFO_MAP, &id, &info)?;
            dropped.push(id);
        }
    }
    Ok(dropped)
}

/// `state-digests/{memberId}:update`: records and returns the digest the member must ack.
///
/// # Errors
/// [`GovError::Forbidden`] if the signer is not `member_id_in_path`.
pub fn update_state_digest(
    tx: &mut Tx,
    request: &MemberRequest,
    member_id_in_path: &str,
    state_digest: &str,
) -> Result<serde_json::Value, GovError> {
    if request.member_id != member_id_in_path.to_ascii_lowercase() {
        return Err(GovError::Forbidden(
            "members may only update their own state digest".to_owned(),
        ));
    }
    put_json(
        tx,
        MEMBER_ACKS_MAP,
        &request.member_id,
        &json!({"state_digest": state_digest}),
    )?;
    Ok(json!({"memberId": request.member_id, "stateDigest": state_digest}))
}

/// `state-digests/{memberId}:ack`: the member acknowledges the digest it was given and
/// becomes Active; the open proposals are dropped (the member set changed).
///
/// # Errors
/// [`GovError`] if there is no digest to ack or it differs.
pub fn ack_state_digest(
    tx: &mut Tx,
    request: &MemberRequest,
    member_id_in_path: &str,
) -> Result<Outcome, GovError> {
    if request.member_id != member_id_in_path.to_ascii_lowercase() {
        return Err(GovError::Forbidden(
            "members may only acknowledge for themselves".to_owned(),
        ));
    }
    let expected: serde_json::Value = get_json(tx, MEMBER_ACKS_MAP, &request.member_id)
        .ok_or_else(|| {
            bad(
                "NoStateDigest",
                "call state-digests/{memberId}:update first",
            )
        })?;
    let body: serde_json::Value = serde_json::from_slice(&request.message.payload)
        .map_err(|error| bad("InvalidInput", format!("the ack is not JSON: {error}")))?;
    let given = body["stateDigest"]
        .as_str()
        .or_else(|| body["state_digest"].as_str());
    if given != expected["state_digest"].as_str() {
        return Err(bad(
            "StateDigestMismatch",
            "the acknowledged state digest is not the one issued",
        ));
    }
    let mut member = request.member.clone();
    let was_active = member.status == MemberStatus::Active;
    member.status = MemberStatus::Active;
    put_json(tx, MEMBERS_MAP, &request.member_id, &member)?;
    tx.remove(MEMBER_ACKS_MAP, request.member_id.as_bytes());
    let dropped = if was_active {
        Vec::new()
    } else {
        drop_open_proposals(tx, "")?
    };
    Ok(Outcome {
        summary: json!({"memberId": request.member_id, "status": "Active"}),
        dropped,
    })
}

/// A proposal's summary.
///
/// # Errors
/// [`GovError::NotFound`].
pub fn get_proposal(tx: &mut Tx, proposal_id: &str) -> Result<serde_json::Value, GovError> {
    let (info, _) = load(tx, proposal_id)?;
    Ok(proposal_json(proposal_id, &info))
}

/// A proposal's body (its actions).
///
/// # Errors
/// [`GovError::NotFound`].
pub fn get_actions(tx: &mut Tx, proposal_id: &str) -> Result<serde_json::Value, GovError> {
    let (_, body) = load(tx, proposal_id)?;
    serde_json::from_str(&body).map_err(|error| bad("InternalError", error.to_string()))
}

/// Every proposal's summary.
pub fn list_proposals(tx: &mut Tx) -> serde_json::Value {
    let all = tx.scan_prefix(PROPOSALS_INFO_MAP, b"", None, 100_000);
    let value: Vec<serde_json::Value> = all
        .into_iter()
        .filter_map(|(key, value)| {
            let id = String::from_utf8(key).ok()?;
            let info: ProposalInfo = serde_json::from_slice(&value).ok()?;
            Some(proposal_json(&id, &info))
        })
        .collect();
    json!({"value": value})
}
