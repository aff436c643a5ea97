//! Charter's node core: a deterministic state machine that composes the key-value store, the
//! ledger and consensus. It consumes [`Input`]s and emits [`Action`]s; it performs no I/O.

pub mod api;

pub use api::{Method, Request, RequestId, Response};
