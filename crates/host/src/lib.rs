//! Charter's node host: TLS listeners, HTTP, ledger files and timers around the core.

pub mod client;
pub mod files;
pub mod http;
pub mod join;
pub mod metrics;
pub mod node;
pub mod peers;
pub mod tls;
pub mod wire;
