//! Side-by-side benchmark of three paths to one mock provider: direct, through a bare Pingora
//! proxy, and through Tollgate (`bare-proxy`, `proxy-bench`); and routing strategies over
//! simulated GPU servers under open-loop load (`gpu-bench`).

pub mod cpus;
pub mod launch;
pub mod load;
pub mod memory;
pub mod openloop;
pub mod peers;
pub mod procs;
pub mod report;
pub mod scenario;
