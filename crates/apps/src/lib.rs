//! Charter's built-in applications, served under `/app` through
//! [`charter_core::Application`].

pub mod confidential_ledger;

/// Every built-in application, in the order the node tries them.
pub fn all() -> Vec<Box<dyn charter_core::Application>> {
    vec![Box::new(confidential_ledger::ConfidentialLedger::default())]
}
