//! The sans-I/O HTTP/1.1 codec: parsing and validating request and response heads,
//! deciding body framing, validating chunked bodies, and serialising the heads the proxy
//! forwards. No I/O and no allocation beyond the owned heads it returns.

mod authority;
mod chunked;
mod error;
mod head;
mod headers;
mod request;
mod response;

pub use authority::*;
pub use chunked::*;
pub use error::*;
pub use headers::{BodyFraming, HeadLimits, Header};
pub use request::*;
pub use response::*;
