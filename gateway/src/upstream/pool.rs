//! A provider's endpoints. Which one serves a request is the router's choice.

use super::endpoint::Endpoint;
use std::sync::Arc;

pub struct Pool {
    pub endpoints: Vec<Arc<Endpoint>>,
}

impl Pool {
    pub fn new(endpoints: Vec<Arc<Endpoint>>) -> Pool {
        Pool { endpoints }
    }
}
