//! Charter's built-in applications, served under `/app` through
//! [`charter_core::Application`]. The host registers each one with
//! [`charter_core::Node::register_app`]; the first that claims a path answers it.
//!
//! ```
//! use charter_apps::confidential_ledger::{ledger_entry_claims_digest, role_of, Role};
//! // Every built-in application, ready to register.
//! assert_eq!(charter_apps::all().len(), 1);
//! // The claims digest a receipt carries for an entry, as Azure's SDK recomputes it.
//! let digest = ledger_entry_claims_digest(&[7; 32], "subledger:0", "hello");
//! assert_eq!(digest.len(), 32);
//! // Roles come from the roles map, else from governance's `user_data.role`.
//! let mut tx = charter_kv::Tx::new(charter_kv::Store::new().snapshot());
//! assert_eq!(role_of(&mut tx, "unknown"), None);
//! assert!(Role::Reader < Role::Administrator);
//! ```

pub mod confidential_ledger;

/// Every built-in application, in the order the node tries them.
pub fn all() -> Vec<Box<dyn charter_core::Application>> {
    vec![Box::new(confidential_ledger::ConfidentialLedger::default())]
}
