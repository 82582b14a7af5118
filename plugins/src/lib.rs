//! Tollgate request/response plugins.
