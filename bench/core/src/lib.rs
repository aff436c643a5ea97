//! The pure parts of `charter-bench`: arguments, latency statistics, the join of Charter writes
//! with commit observations, the report (table, ratios, JSON), the SVG chart and progress bars.
//! Nothing here does I/O, so CI tests it without building the benchmark's gRPC stack.
//!
//! ```
//! use charter_bench_core::stats::{percentile, LatencySummary};
//! let mut latencies_ms = vec![4.0, 1.0, 3.0, 2.0];
//! let summary = LatencySummary::from_ms(&mut latencies_ms);
//! assert_eq!(summary.p50_ms, 2.0);
//! assert_eq!(percentile(&latencies_ms, 0.99), 4.0);
//! ```

pub mod args;
pub mod chart;
pub mod metrics;
pub mod progress;
pub mod report;
pub mod stats;
