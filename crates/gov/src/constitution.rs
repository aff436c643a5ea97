//! The constitution: a JavaScript module exporting `validate`, `resolve` and `apply`, run in
//! the sandbox of [`crate::js`], and the default constitution that ships with Charter.
//!
//! The calls follow CCF's constitution interface, so CCF-style constitutions port easily:
//! `validate(proposalJson)` returns `{valid, description}`, `resolve(proposalJson, proposerId,
//! votes)` returns `"Open"`, `"Accepted"` or `"Rejected"` (votes are `{member_id, vote}`), and
//! `apply(proposalJson, proposalId)` performs the actions through `ccf.kv`.

use charter_kv::{Snapshot, Tx};

use crate::js::{describe_json, run, Arg, Call, KvAccess};
pub use crate::js::{run_ballot, JsError, Validity};
use crate::tables::{JsRuntimeOptions, ProposalState};

/// The default constitution: strict majority of active members, and the standard actions
/// (see `default_constitution/*.js`).
pub const DEFAULT_CONSTITUTION: &str = concat!(
    include_str!("default_constitution/common.js"),
    include_str!("default_constitution/actions.js"),
    include_str!("default_constitution/validate.js"),
    include_str!("default_constitution/resolve.js"),
    include_str!("default_constitution/apply.js"),
);

/// The exports every constitution must have.
const EXPORTS: [&str; 3] = ["validate", "resolve", "apply"];
/// Module name of constitutions in stack traces.
const MODULE_NAME: &str = "constitution";

/// One constitution, compiled afresh for each call (QuickJS contexts are cheap).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Constitution {
    source: String,
    limits: JsRuntimeOptions,
}

impl Constitution {
    /// A constitution with this source, run under `limits`.
    pub fn new(source: &str, limits: JsRuntimeOptions) -> Constitution {
        Constitution {
            source: source.to_owned(),
            limits,
        }
    }

    /// The JavaScript source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The limits each call runs under.
    pub fn limits(&self) -> JsRuntimeOptions {
        self.limits
    }

    /// Checks that the module compiles, evaluates, and exports `validate`, `resolve` and
    /// `apply` as functions. Top-level code sees an empty store.
    ///
    /// # Errors
    ///
    /// [`JsError::Compile`] for a syntax error or a missing export; any other [`JsError`] if
    /// the top-level code fails.
    pub fn check(&self) -> Result<(), JsError> {
        let mut tx = Tx::new(Snapshot::default());
        let call = self.call(&EXPORTS, None, KvAccess::ReadOnly);
        run(&call, &mut tx, self.limits).map(|_| ())
    }

    /// Calls `validate(input)`, where input is the proposal body as a JSON string, as in CCF.
    /// The constitution may read the governance maps but not write them.
    ///
    /// # Errors
    ///
    /// Any [`JsError`]; [`JsError::BadResult`] unless the result is `{valid: boolean,
    /// description?: string}`.
    pub fn validate(&self, tx: &mut Tx, proposal_json: &str) -> Result<Validity, JsError> {
        let args = [Arg::Str(proposal_json)];
        let call = self.call(&["validate"], Some(("validate", &args)), KvAccess::ReadOnly);
        let result = run(&call, tx, self.limits)?;
        let bad = |result: &Option<serde_json::Value>| {
            JsError::BadResult(format!(
                "validate must return {{valid: boolean, description?: string}}, not {}",
                describe_json(result)
            ))
        };
        let Some(serde_json::Value::Object(fields)) = &result else {
            return Err(bad(&result));
        };
        let valid = match fields.get("valid") {
            Some(serde_json::Value::Bool(valid)) => *valid,
            _ => return Err(bad(&result)),
        };
        let description = match fields.get("description") {
            None | Some(serde_json::Value::Null) => String::new(),
            Some(serde_json::Value::String(description)) => description.clone(),
            Some(_) => return Err(bad(&result)),
        };
        Ok(Validity { valid, description })
    }

    /// Calls `resolve(proposal, proposerId, votes)`: proposal is the body as a JSON string,
    /// votes an array of `{member_id, vote}`. Read-only access to the governance maps.
    ///
    /// # Errors
    ///
    /// Any [`JsError`]; [`JsError::BadResult`] unless the result is `"Open"`, `"Accepted"` or
    /// `"Rejected"`.
    pub fn resolve(
        &self,
        tx: &mut Tx,
        proposal_json: &str,
        proposer_id: &str,
        votes: &[(String, bool)],
    ) -> Result<ProposalState, JsError> {
        let args = [
            Arg::Str(proposal_json),
            Arg::Str(proposer_id),
            Arg::Votes(votes),
        ];
        let call = self.call(&["resolve"], Some(("resolve", &args)), KvAccess::ReadOnly);
        let result = run(&call, tx, self.limits)?;
        match &result {
            Some(serde_json::Value::String(state)) => match state.as_str() {
                "Open" => Ok(ProposalState::Open),
                "Accepted" => Ok(ProposalState::Accepted),
                "Rejected" => Ok(ProposalState::Rejected),
                _ => Err(JsError::BadResult(format!(
                    "resolve must return \"Open\", \"Accepted\" or \"Rejected\", not {}",
                    describe_json(&result)
                ))),
            },
            _ => Err(JsError::BadResult(format!(
                "resolve must return a string, not {}",
                describe_json(&result)
            ))),
        }
    }

    /// Calls `apply(proposal, proposalId)`, which may write the governance maps through `tx`.
    ///
    /// # Errors
    ///
    /// Any [`JsError`]. The writes made before a failure stay in `tx`: discard it.
    pub fn apply(
        &self,
        tx: &mut Tx,
        proposal_json: &str,
        proposal_id: &str,
    ) -> Result<(), JsError> {
        let args = [Arg::Str(proposal_json), Arg::Str(proposal_id)];
        let call = self.call(&["apply"], Some(("apply", &args)), KvAccess::ReadWrite);
        run(&call, tx, self.limits).map(|_| ())
    }

    fn call<'a>(
        &'a self,
        exports: &'a [&'a str],
        invoke: Option<(&'a str, &'a [Arg<'a>])>,
        access: KvAccess,
    ) -> Call<'a> {
        Call {
            module_name: MODULE_NAME,
            source: &self.source,
            exports,
            invoke,
            access,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::*;
    use charter_crypto::{Certificate, CertificateSpec, SigningKey};
    use charter_kv::{Store, WriteSet};
    use charter_ledger::{NodeInfo, NodeStatus, ServiceInfo, ServiceStatus};
    use serde_json::json;

    fn limits() -> JsRuntimeOptions {
        JsRuntimeOptions {
            max_heap_bytes: 32 << 20,
            max_stack_bytes: 512 << 10,
            max_execution_fuel: 1000,
        }
    }

    fn default() -> Constitution {
        Constitution::new(DEFAULT_CONSTITUTION, limits())
    }

    fn cert(seed: u8) -> Certificate {
        let key = SigningKey::from_seed(&[seed; 32]).unwrap();
        let spec = CertificateSpec {
            common_name: "party",
            is_ca: false,
            subject_alt_names: &[],
            validity: charter_crypto::Validity {
                not_before_unix: 1_700_000_000,
                days: 365,
            },
        };
        Certificate::self_signed(&key, &spec).unwrap()
    }

    fn member(seed: u8, status: MemberStatus) -> (String, MemberInfo) {
        let cert = cert(seed);
        let info = MemberInfo {
            cert: cert.to_pem(),
            status,
            member_data: None,
            public_encryption_key: None,
        };
        (cert.fingerprint_hex(), info)
    }

    const NODE_ID: &str = "aa00000000000000000000000000000000000000000000000000000000000000";

    /// A store with members 1..=3 active, member 4 accepted, one pending node, an opening
    /// service and a recovery threshold of 1.
    fn store() -> Store {
        let mut ws = WriteSet::new();
        for (seed, status) in [
            (1, MemberStatus::Active),
            (2, MemberStatus::Active),
            (3, MemberStatus::Active),
            (4, MemberStatus::Accepted),
        ] {
            let (id, info) = member(seed, status);
            ws.put(
                MEMBERS_MAP,
                id.as_bytes(),
                &serde_json::to_vec(&info).unwrap(),
            );
        }
        // As JSON, so that fields the test does not know about are kept too.
        let node = json!({
            "cert": cert(9).to_pem(),
            "status": "Pending",
            "rpc_address": "127.0.0.1:8000",
            "evidence": {"platform": "virtual"},
        });
        ws.put(
            NODES_MAP,
            NODE_ID.as_bytes(),
            &serde_json::to_vec(&node).unwrap(),
        );
        let service = ServiceInfo {
            cert: cert(10).to_pem(),
            status: ServiceStatus::Opening,
        };
        ws.put(
            SERVICE_MAP,
            SERVICE_KEY,
            &serde_json::to_vec(&service).unwrap(),
        );
        let config = ServiceConfig {
            recovery_threshold: 1,
        };
        ws.put(
            SERVICE_CONFIG_MAP,
            SERVICE_CONFIG_KEY.as_bytes(),
            &serde_json::to_vec(&config).unwrap(),
        );
        let mut store = Store::new();
        store.apply(&ws, 1);
        store
    }

    fn proposal(actions: serde_json::Value) -> String {
        json!({ "actions": actions }).to_string()
    }

    /// Validates, then applies one action on a fresh transaction, returning it.
    fn apply_action(name: &str, args: serde_json::Value) -> Result<Tx, JsError> {
        let store = store();
        let mut tx = Tx::new(store.snapshot());
        let body = proposal(json!([{ "name": name, "args": args }]));
        let validity = default().validate(&mut tx, &body)?;
        assert!(validity.valid, "{name}: {}", validity.description);
        default().apply(&mut tx, &body, "p1")?;
        Ok(tx)
    }

    fn read<T: serde::de::DeserializeOwned>(tx: &mut Tx, map: &str, key: &str) -> Option<T> {
        tx.get(map, key.as_bytes())
            .map(|bytes| serde_json::from_slice(&bytes).expect("record parses"))
    }

    fn member_id(seed: u8) -> String {
        cert(seed).fingerprint_hex()
    }

    #[test]
    fn default_constitution_checks() {
        default().check().unwrap();
        assert!(DEFAULT_CONSTITUTION.contains("export function validate"));
    }

    #[test]
    fn check_requires_all_exports() {
        let missing_apply = "export function validate() {} export function resolve() {}";
        assert!(matches!(
            Constitution::new(missing_apply, limits()).check(),
            Err(JsError::Compile(_))
        ));
        let not_function = format!("{missing_apply} export const apply = 1;");
        assert!(matches!(
            Constitution::new(&not_function, limits()).check(),
            Err(JsError::Compile(_))
        ));
        assert!(matches!(
            Constitution::new("export function (", limits()).check(),
            Err(JsError::Compile(_))
        ));
        let throws = format!("{missing_apply} export function apply() {{}} throw new Error('x');");
        assert!(matches!(
            Constitution::new(&throws, limits()).check(),
            Err(JsError::Exception(_))
        ));
        let looping = format!("{missing_apply} export function apply() {{}} for (;;) {{}}");
        assert!(matches!(
            Constitution::new(&looping, limits()).check(),
            Err(JsError::OutOfTime)
        ));
        let ok = format!("{missing_apply} export function apply() {{}}");
        Constitution::new(&ok, limits()).check().unwrap();
    }

    #[test]
    fn set_member() {
        let new = cert(5);
        let mut tx = apply_action(
            "set_member",
            json!({"cert": new.to_pem(), "member_data": {"role": "auditor"}, "encryption_pub_key": "PEM KEY"}),
        )
        .unwrap();
        let info: MemberInfo = read(&mut tx, MEMBERS_MAP, &new.fingerprint_hex()).unwrap();
        assert_eq!(
            info,
            MemberInfo {
                cert: new.to_pem(),
                status: MemberStatus::Accepted,
                member_data: Some(json!({"role": "auditor"})),
                public_encryption_key: Some("PEM KEY".to_owned()),
            }
        );
        // Setting an existing member keeps its status.
        let (id, existing) = member(1, MemberStatus::Active);
        let mut tx = apply_action("set_member", json!({"cert": existing.cert})).unwrap();
        let info: MemberInfo = read(&mut tx, MEMBERS_MAP, &id).unwrap();
        assert_eq!(info.status, MemberStatus::Active);
        assert_eq!(info.member_data, None);
    }

    #[test]
    fn remove_member() {
        let mut tx = apply_action("remove_member", json!({"member_id": member_id(2)})).unwrap();
        assert_eq!(tx.get(MEMBERS_MAP, member_id(2).as_bytes()), None);
        assert!(tx.get(MEMBERS_MAP, member_id(1).as_bytes()).is_some());
        // Removing an unknown member does nothing.
        let tx = apply_action("remove_member", json!({"member_id": "ab".repeat(32)})).unwrap();
        assert!(tx.is_read_only());
    }

    #[test]
    fn set_member_data() {
        let mut tx = apply_action(
            "set_member_data",
            json!({"member_id": member_id(3), "member_data": [1, 2]}),
        )
        .unwrap();
        let info: MemberInfo = read(&mut tx, MEMBERS_MAP, &member_id(3)).unwrap();
        assert_eq!(info.member_data, Some(json!([1, 2])));
        assert_eq!(info.status, MemberStatus::Active);
        let result = apply_action(
            "set_member_data",
            json!({"member_id": "ab".repeat(32), "member_data": 1}),
        );
        assert!(matches!(result, Err(JsError::Exception(_))), "{result:?}");
    }

    #[test]
    fn users() {
        let user = cert(6);
        let id = user.fingerprint_hex();
        let mut tx =
            apply_action("set_user", json!({"cert": user.to_pem(), "user_data": "x"})).unwrap();
        let info: UserInfo = read(&mut tx, USERS_MAP, &id).unwrap();
        assert_eq!(
            info,
            UserInfo {
                cert: user.to_pem(),
                user_data: Some(json!("x")),
            }
        );

        let store = store();
        let mut tx = Tx::new(store.snapshot());
        let constitution = default();
        let steps = [
            json!([{"name": "set_user", "args": {"cert": user.to_pem()}}]),
            json!([{"name": "set_user_data", "args": {"user_id": id, "user_data": {"k": true}}}]),
        ];
        for actions in steps {
            constitution
                .apply(&mut tx, &proposal(actions), "p")
                .unwrap();
        }
        let info: UserInfo = read(&mut tx, USERS_MAP, &id).unwrap();
        assert_eq!(info.user_data, Some(json!({"k": true})));
        let remove = proposal(json!([{"name": "remove_user", "args": {"user_id": id}}]));
        constitution.apply(&mut tx, &remove, "p").unwrap();
        assert_eq!(tx.get(USERS_MAP, id.as_bytes()), None);
        let missing =
            proposal(json!([{"name": "set_user_data", "args": {"user_id": id, "user_data": 1}}]));
        assert!(constitution.apply(&mut tx, &missing, "p").is_err());
    }

    #[test]
    fn nodes() {
        let mut tx =
            apply_action("transition_node_to_trusted", json!({"node_id": NODE_ID})).unwrap();
        let node: NodeInfo = read(&mut tx, NODES_MAP, NODE_ID).unwrap();
        assert_eq!(node.status, NodeStatus::Trusted);
        assert_eq!(node.rpc_address, "127.0.0.1:8000");
        assert_eq!(node.cert, cert(9).to_pem());
        let raw: serde_json::Value = read(&mut tx, NODES_MAP, NODE_ID).unwrap();
        assert_eq!(raw["evidence"], json!({"platform": "virtual"}));

        let mut tx = apply_action("remove_node", json!({"node_id": NODE_ID})).unwrap();
        let node: NodeInfo = read(&mut tx, NODES_MAP, NODE_ID).unwrap();
        assert_eq!(node.status, NodeStatus::Retired);
        assert_eq!(node.rpc_address, "127.0.0.1:8000");

        let unknown = "bb".repeat(32);
        assert!(apply_action("transition_node_to_trusted", json!({"node_id": unknown})).is_err());
        // A retired node cannot come back.
        let constitution = default();
        let trust =
            proposal(json!([{"name": "transition_node_to_trusted", "args": {"node_id": NODE_ID}}]));
        assert!(constitution.apply(&mut tx, &trust, "p").is_err());
    }

    #[test]
    fn measurements_host_data_and_platforms() {
        let measurement = "0123456789abcdef".repeat(6);
        let mut tx =
            apply_action("add_snp_measurement", json!({"measurement": measurement})).unwrap();
        assert_eq!(
            read::<serde_json::Value>(&mut tx, CODE_MANIFEST_MAP, &measurement),
            Some(json!({"status": "AllowedToJoin"}))
        );
        let tx = apply_action(
            "remove_snp_measurement",
            json!({"measurement": measurement}),
        )
        .unwrap();
        assert_eq!(
            tx.write_set()
                .get(CODE_MANIFEST_MAP, measurement.as_bytes()),
            Some(None)
        );

        let host_data = "ab".repeat(32);
        let mut tx = apply_action(
            "add_snp_host_data",
            json!({"host_data": host_data, "metadata": "policy"}),
        )
        .unwrap();
        assert_eq!(
            read::<serde_json::Value>(&mut tx, HOST_DATA_MAP, &host_data),
            Some(json!({"metadata": "policy"}))
        );
        let mut tx = apply_action("add_snp_host_data", json!({"host_data": host_data})).unwrap();
        assert_eq!(
            read::<serde_json::Value>(&mut tx, HOST_DATA_MAP, &host_data),
            Some(json!({"metadata": ""}))
        );
        let tx = apply_action("remove_snp_host_data", json!({"host_data": host_data})).unwrap();
        assert_eq!(
            tx.write_set().get(HOST_DATA_MAP, host_data.as_bytes()),
            Some(None)
        );

        for platform in ["virtual", "sev-snp"] {
            let mut tx = apply_action("add_platform", json!({"platform": platform})).unwrap();
            assert_eq!(
                read::<serde_json::Value>(&mut tx, TEE_MANIFEST_MAP, platform),
                Some(json!({"status": "Allowed"}))
            );
            let tx = apply_action("remove_platform", json!({"platform": platform})).unwrap();
            assert_eq!(
                tx.write_set().get(TEE_MANIFEST_MAP, platform.as_bytes()),
                Some(None)
            );
        }
    }

    #[test]
    fn set_constitution() {
        let source = "export function validate() {} // new";
        let mut tx = apply_action("set_constitution", json!({"constitution": source})).unwrap();
        assert_eq!(
            tx.get(CONSTITUTION_MAP, CONSTITUTION_KEY.as_bytes()),
            Some(source.as_bytes().to_vec())
        );
    }

    #[test]
    fn set_recovery_threshold() {
        let mut tx =
            apply_action("set_recovery_threshold", json!({"recovery_threshold": 4})).unwrap();
        let config: ServiceConfig = read(&mut tx, SERVICE_CONFIG_MAP, SERVICE_CONFIG_KEY).unwrap();
        assert_eq!(config.recovery_threshold, 4);
        // Above the number of members (4).
        let result = apply_action("set_recovery_threshold", json!({"recovery_threshold": 5}));
        assert!(matches!(result, Err(JsError::Exception(_))), "{result:?}");
        // Removing members below the threshold is refused.
        let store = store();
        let mut tx = Tx::new(store.snapshot());
        let body = proposal(json!([
            {"name": "set_recovery_threshold", "args": {"recovery_threshold": 4}},
            {"name": "remove_member", "args": {"member_id": member_id(1)}},
        ]));
        assert!(default().apply(&mut tx, &body, "p").is_err());
    }

    #[test]
    fn trigger_ledger_rekey_requests_a_rekey_from_the_core() {
        let mut tx = apply_action("trigger_ledger_rekey", json!({})).unwrap();
        let request: serde_json::Value = read(
            &mut tx,
            crate::tables::LEDGER_REKEY_MAP,
            crate::tables::LEDGER_REKEY_KEY,
        )
        .unwrap();
        assert_eq!(request, json!({"requested": true}));
    }

    #[test]
    fn transition_service_to_open() {
        let mut tx = apply_action("transition_service_to_open", json!({})).unwrap();
        let service: ServiceInfo = read(&mut tx, SERVICE_MAP, "service").unwrap();
        assert_eq!(service.status, ServiceStatus::Open);
        assert_eq!(service.cert, cert(10).to_pem());
        // Only from Opening.
        let again = proposal(json!([{"name": "transition_service_to_open"}]));
        assert!(default().apply(&mut tx, &again, "p").is_err());
    }

    #[test]
    fn set_js_runtime_options() {
        let options = JsRuntimeOptions {
            max_heap_bytes: 64 << 20,
            max_stack_bytes: 2 << 20,
            max_execution_fuel: 5000,
        };
        let mut tx = apply_action(
            "set_js_runtime_options",
            serde_json::to_value(options).unwrap(),
        )
        .unwrap();
        let stored: JsRuntimeOptions =
            read(&mut tx, JS_RUNTIME_OPTIONS_MAP, JS_RUNTIME_OPTIONS_KEY).unwrap();
        assert_eq!(stored, options);
    }

    #[test]
    fn actions_apply_in_order_and_failures_stop() {
        let store = store();
        let mut tx = Tx::new(store.snapshot());
        let body = proposal(json!([
            {"name": "add_platform", "args": {"platform": "virtual"}},
            {"name": "remove_platform", "args": {"platform": "virtual"}},
            {"name": "add_platform", "args": {"platform": "sev-snp"}},
        ]));
        default().apply(&mut tx, &body, "p").unwrap();
        assert_eq!(tx.get(TEE_MANIFEST_MAP, b"virtual"), None);
        assert!(tx.get(TEE_MANIFEST_MAP, b"sev-snp").is_some());
    }

    #[test]
    fn validate_rejects_bad_proposals() {
        let store = store();
        let mut tx = Tx::new(store.snapshot());
        let constitution = default();
        let pem = cert(5).to_pem();
        let cases = [
            ("not json".to_owned(), "JSON"),
            ("[]".to_owned(), "object"),
            (json!({}).to_string(), "actions"),
            (json!({"actions": []}).to_string(), "at least one"),
            (json!({"actions": [], "extra": 1}).to_string(), "extra"),
            (
                proposal(json!([{"name": "make_coffee", "args": {}}])),
                "unknown action",
            ),
            (
                proposal(json!([{"name": "__proto__", "args": {}}])),
                "unknown action",
            ),
            (proposal(json!([{"args": {}}])), "name"),
            (
                proposal(json!([{"name": "set_member", "args": {}}])),
                "cert",
            ),
            (
                proposal(json!([{"name": "set_member", "args": {"cert": "nope"}}])),
                "cert",
            ),
            (
                proposal(json!([{"name": "set_member", "args": {"cert": pem, "color": 1}}])),
                "color",
            ),
            (
                proposal(
                    json!([{"name": "set_member", "args": {"cert": pem, "encryption_pub_key": 1}}]),
                ),
                "encryption_pub_key",
            ),
            (
                proposal(json!([{"name": "remove_member", "args": {"member_id": "XYZ"}}])),
                "member_id",
            ),
            (proposal(json!([{"name": "remove_member"}])), "args"),
            (
                proposal(
                    json!([{"name": "set_member_data", "args": {"member_id": "ab".repeat(32)}}]),
                ),
                "member_data",
            ),
            (
                proposal(json!([{"name": "transition_node_to_trusted", "args": {"node_id": 5}}])),
                "node_id",
            ),
            (
                proposal(json!([{"name": "add_snp_measurement", "args": {"measurement": "xyz"}}])),
                "measurement",
            ),
            (
                proposal(json!([{"name": "add_platform", "args": {"platform": "sgx"}}])),
                "platform",
            ),
            (
                proposal(json!([{"name": "set_constitution", "args": {"constitution": 1}}])),
                "constitution",
            ),
            (
                proposal(
                    json!([{"name": "set_recovery_threshold", "args": {"recovery_threshold": 0}}]),
                ),
                "recovery_threshold",
            ),
            (
                proposal(
                    json!([{"name": "set_recovery_threshold", "args": {"recovery_threshold": 1.5}}]),
                ),
                "recovery_threshold",
            ),
            (
                proposal(
                    json!([{"name": "set_js_runtime_options", "args": {"max_heap_bytes": 1, "max_stack_bytes": 1 << 20, "max_execution_fuel": 1000}}]),
                ),
                "max_heap_bytes",
            ),
            (
                proposal(
                    json!([{"name": "set_js_runtime_options", "args": {"max_heap_bytes": 1 << 30}}]),
                ),
                "max_stack_bytes",
            ),
            (
                proposal(json!([{"name": "transition_service_to_open", "args": {"x": 1}}])),
                "x",
            ),
        ];
        for (body, expected) in cases {
            let validity = constitution.validate(&mut tx, &body).unwrap();
            assert!(!validity.valid, "{body} should be invalid");
            assert!(
                validity.description.contains(expected),
                "{body}: {:?} should mention {expected:?}",
                validity.description
            );
        }
        let good = proposal(json!([
            {"name": "set_member", "args": {"cert": pem}},
            {"name": "trigger_ledger_rekey"},
            {"name": "transition_service_to_open", "args": {}},
        ]));
        let validity = constitution.validate(&mut tx, &good).unwrap();
        assert!(validity.valid, "{}", validity.description);
        assert!(tx.is_read_only());
    }

    fn votes(list: &[(u8, bool)]) -> Vec<(String, bool)> {
        list.iter()
            .map(|(seed, vote)| (member_id(*seed), *vote))
            .collect()
    }

    #[test]
    fn resolve_is_a_majority_of_active_members() {
        let store = store();
        let mut tx = Tx::new(store.snapshot());
        let constitution = default();
        let body = proposal(json!([{"name": "add_platform", "args": {"platform": "virtual"}}]));
        let proposer = member_id(1);
        let resolve = |tx: &mut Tx, list: &[(u8, bool)]| {
            constitution
                .resolve(tx, &body, &proposer, &votes(list))
                .unwrap()
        };
        assert_eq!(resolve(&mut tx, &[]), ProposalState::Open);
        assert_eq!(resolve(&mut tx, &[(1, true)]), ProposalState::Open);
        assert_eq!(
            resolve(&mut tx, &[(1, true), (2, true)]),
            ProposalState::Accepted
        );
        assert_eq!(
            resolve(&mut tx, &[(1, false), (2, false)]),
            ProposalState::Rejected
        );
        assert_eq!(
            resolve(&mut tx, &[(1, true), (2, false)]),
            ProposalState::Open
        );
        assert_eq!(
            resolve(&mut tx, &[(1, true), (2, false), (3, true)]),
            ProposalState::Accepted
        );
        // Member 4 is not active and member 7 is unknown: their votes do not count.
        assert_eq!(
            resolve(&mut tx, &[(1, true), (4, true)]),
            ProposalState::Open
        );
        assert_eq!(
            resolve(&mut tx, &[(1, true), (7, true)]),
            ProposalState::Open
        );
        assert_eq!(
            resolve(&mut tx, &[(1, false), (4, false)]),
            ProposalState::Open
        );
        // A member counts once.
        assert_eq!(
            resolve(&mut tx, &[(1, true), (1, true)]),
            ProposalState::Open
        );
        assert!(tx.is_read_only());
    }

    #[test]
    fn writes_during_validate_and_resolve_are_forbidden() {
        let store = store();
        let mut tx = Tx::new(store.snapshot());
        let writer = r#"
            function write() { ccf.kv["public:charter.gov.members"].set(ccf.strToBuf("x"), ccf.strToBuf("{}")); }
            export function validate() { write(); return {valid: true, description: ""}; }
            export function resolve() { write(); return "Accepted"; }
            export function apply() { write(); }
        "#;
        let constitution = Constitution::new(writer, limits());
        assert!(matches!(
            constitution.validate(&mut tx, "{}"),
            Err(JsError::Forbidden(_))
        ));
        assert!(matches!(
            constitution.resolve(&mut tx, "{}", "m", &[]),
            Err(JsError::Forbidden(_))
        ));
        assert!(tx.is_read_only());
        constitution.apply(&mut tx, "{}", "p").unwrap();
        assert!(!tx.is_read_only());
    }

    #[test]
    fn bad_results() {
        let store = store();
        let mut tx = Tx::new(store.snapshot());
        let source = r#"
            export function validate(p) { return p === "a" ? {valid: "yes"} : true; }
            export function resolve(p) { return p === "a" ? "Maybe" : 3; }
            export function apply() {}
        "#;
        let constitution = Constitution::new(source, limits());
        for input in ["a", "b"] {
            assert!(matches!(
                constitution.validate(&mut tx, input),
                Err(JsError::BadResult(_))
            ));
            assert!(matches!(
                constitution.resolve(&mut tx, input, "m", &[]),
                Err(JsError::BadResult(_))
            ));
        }
    }

    #[test]
    fn constitution_runs_under_its_limits() {
        let store = store();
        let mut tx = Tx::new(store.snapshot());
        let looping = r#"
            export function validate() { while (true) {} }
            export function resolve() { let a = []; while (true) a.push(new Array(1e6)); }
            export function apply() { const f = (n) => f(n + 1) + 1; f(0); }
        "#;
        let constitution = Constitution::new(looping, limits());
        assert!(matches!(
            constitution.validate(&mut tx, "{}"),
            Err(JsError::OutOfTime)
        ));
        let result = constitution.resolve(&mut tx, "{}", "m", &[]);
        assert!(
            matches!(result, Err(JsError::OutOfMemory | JsError::OutOfTime)),
            "{result:?}"
        );
        assert!(matches!(
            constitution.apply(&mut tx, "{}", "p"),
            Err(JsError::Exception(_))
        ));
        // And the default constitution still works afterwards.
        let body = proposal(json!([{"name": "add_platform", "args": {"platform": "virtual"}}]));
        assert!(default().validate(&mut tx, &body).unwrap().valid);
    }

    #[test]
    fn default_constitution_fits_a_small_fuel_budget() {
        let store = store();
        let mut tx = Tx::new(store.snapshot());
        let tight = Constitution::new(
            DEFAULT_CONSTITUTION,
            JsRuntimeOptions {
                max_execution_fuel: 100,
                ..limits()
            },
        );
        let body = proposal(json!([{"name": "set_member", "args": {"cert": cert(5).to_pem()}}]));
        assert!(tight.validate(&mut tx, &body).unwrap().valid);
        assert_eq!(
            tight
                .resolve(
                    &mut tx,
                    &body,
                    &member_id(1),
                    &votes(&[(1, true), (2, true)])
                )
                .unwrap(),
            ProposalState::Accepted
        );
        tight.apply(&mut tx, &body, "p").unwrap();
    }
}
