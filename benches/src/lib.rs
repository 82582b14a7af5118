//! Side-by-side benchmark of three paths to one mock provider: direct, through a bare Pingora
//! proxy, and through Tollgate. The binaries are `bare-proxy` and `proxy-bench`.

pub mod load;
pub mod procs;
pub mod report;
pub mod scenario;
