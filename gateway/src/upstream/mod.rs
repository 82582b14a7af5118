//! Upstream addressing: endpoints, pools, and the background DNS refresh.

pub mod endpoint;
pub mod ewma;
pub mod load;
pub mod pool;
pub mod state;

pub use endpoint::Endpoint;
pub use pool::Pool;
