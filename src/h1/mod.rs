//! The sans-I/O HTTP/1.1 codec: parsing and validating request and response heads
//! (with the request-smuggling defences), deciding body framing, validating chunked bodies,
//! serialising the heads the proxy forwards and the error responses it generates, and
//! HTTP Upgrade (which protocols are forwarded, and whether a 101 switched to one).
//! No I/O: callers hand in bytes and get heads, byte counts and output buffers back.

#[cfg(test)]
mod alloc_guard;
mod authority;
mod chunked;
mod error;
mod fields;
mod head;
mod headers;
#[cfg(test)]
mod mutate;
mod request;
mod response;
mod upgrade;

pub use authority::*;
pub use chunked::*;
pub use error::*;
pub use fields::{Header, Headers, INLINE_FIELDS};
pub(crate) use headers::push_u64;
pub(crate) use headers::{classify, FieldKind};
pub use headers::{BodyFraming, HeadLimits};
pub use request::*;
pub use response::*;
pub use upgrade::*;
