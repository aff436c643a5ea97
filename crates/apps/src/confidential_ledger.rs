//! A confidential ledger whose REST API matches Azure confidential ledger's data plane.

use charter_core::{AppContext, Application, CoreError, Request, Response};

/// The Azure-compatible confidential ledger application.
#[derive(Debug, Default)]
pub struct ConfidentialLedger {}

impl Application for ConfidentialLedger {
    fn handle(
        &self,
        _ctx: &mut AppContext<'_>,
        _path: &str,
        _request: &Request,
    ) -> Option<Result<Response, CoreError>> {
        None
    }
}
