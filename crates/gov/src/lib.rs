//! Charter's governance: the governance tables, member requests (COSE Sign1), proposals and
//! ballots, and the sandboxed JavaScript runtime that runs the constitution.

pub mod constitution;
pub mod js;
pub mod requests;
pub mod tables;
