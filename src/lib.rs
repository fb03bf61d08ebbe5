//! Sluice: an io_uring intercepting HTTP proxy appliance.
//!
//! The crate is the proxy itself: configuration, the per-core workers, the connection
//! state machine and the protocols. Every block the compiler cannot check lives in the
//! `uring` crate; this one forbids it.
#![forbid(unsafe_code)]

pub mod accesslog;
pub mod acl;
pub mod auth;
pub mod cli;
pub mod config;
pub mod conn;
pub mod control;
pub mod forwarding;
pub mod h1;
pub mod http2;
pub mod logging;
pub mod notify;
pub mod protocol;
pub mod server;
pub mod stats;
pub mod sys;
pub mod timers;
pub mod tls;
pub mod upstream;
pub mod worker;
