//! HTTP/2 on the client leg, behind a small facade of ours so that the `h2` crate (framing,
//! HPACK, flow control, stream states) could be replaced by our own framing later.
//!
//! - [`session`]: one client connection's `h2` server, driven by the worker with no
//!   runtime (feed bytes / drive / take frames).
//! - [`links`]: the in-memory pipes between a session and the exchanges of its streams.
//! - [`news`]: a waker per stream, so that a session pumps only the streams with news.
//! - [`request`] / [`response`]: the translation between HTTP/2 streams and the HTTP/1.1
//!   messages the exchanges speak.
//! - [`keepalive`]: PINGs to a silent peer, and the end of one that stays silent.
//! - [`pipe`]: the `h2` crate's transport over the session's byte queues, where
//!   [`tally`] counts the RST_STREAM frames passing each way.
//! - [`floods`]: our own per-connection rate limits on frames that cost work, in one pass
//!   with [`rules`] (stream-state and framing errors `h2` answers with another code) and
//!   [`field_block`] (the structure of HPACK blocks); [`frame_head`] reads frame headers
//!   for it and for [`tally`].

pub mod field_block;
pub mod floods;
pub mod frame_head;
pub mod keepalive;
pub mod links;
pub mod news;
pub mod origin;
mod origin_stream;
pub mod origins;
pub mod pipe;
pub mod request;
pub mod response;
pub mod rules;
pub mod session;
pub mod tally;

use crate::config::H2Config;
use std::time::Duration;

/// True for a field HTTP/2 does not carry (RFC 9113 §8.2.2): Connection, the fields it
/// may name and the other hop-by-hop ones (TE among them: callers that keep `te:
/// trailers` check it first), Transfer-Encoding, and `Host`, which `:authority` replaces.
/// The HTTP/1.1 codec's own classification (`h1::classify`), any case.
pub(crate) fn not_for_http2(name: &str) -> bool {
    use crate::h1::FieldKind;
    matches!(
        crate::h1::classify(name),
        FieldKind::Connection | FieldKind::TransferEncoding | FieldKind::HopByHop | FieldKind::Host
    )
}

/// One copy of an HTTP/1.1 head that the values of the fields parsed from it share: the
/// `HeaderMap` built for `h2` costs one allocation for the whole head instead of one per
/// field value.
pub(crate) struct SharedHead {
    bytes: bytes::Bytes,
    base: usize,
}

impl SharedHead {
    /// A copy of `head`, the bytes the fields to be converted were parsed from.
    pub(crate) fn new(head: &[u8]) -> SharedHead {
        SharedHead { bytes: bytes::Bytes::copy_from_slice(head), base: head.as_ptr() as usize }
    }

    /// `value` (a slice of the head given to `new`; anything else is copied) as a field
    /// value sharing the copy; `None` when it is not a valid one.
    pub(crate) fn value(&self, value: &[u8]) -> Option<http::HeaderValue> {
        let at = (value.as_ptr() as usize).wrapping_sub(self.base);
        let piece = match at.checked_add(value.len()) {
            Some(end) if end <= self.bytes.len() => self.bytes.slice(at..end),
            _ => bytes::Bytes::copy_from_slice(value),
        };
        http::HeaderValue::from_maybe_shared(piece).ok()
    }
}

/// The body bytes `range` of a link's `buf` (as `reader` found them) as one DATA frame on
/// `send`, as much as its flow-control window grants now (capacity is reserved first:
/// `send_data` without it buffers without bound). The bytes sent leave `buf`; the rest
/// go back to `reader`, to be found again next time. `Ok(0)`: no window yet (`h2` wakes
/// the stream when there is); `Err`: the stream is gone.
pub(crate) fn send_from_link(
    send: &mut h2::SendStream<bytes::Bytes>,
    cx: &mut std::task::Context<'_>,
    reader: &mut response::ResponseReader,
    buf: &mut Vec<u8>,
    range: std::ops::Range<usize>,
) -> Result<usize, ()> {
    let want = range.len();
    let granted = send_granted(send, cx, &buf[range])?;
    reader.unread(want - granted);
    buf.drain(..granted);
    Ok(granted)
}

fn send_granted(
    send: &mut h2::SendStream<bytes::Bytes>,
    cx: &mut std::task::Context<'_>,
    bytes: &[u8],
) -> Result<usize, ()> {
    use std::task::Poll;
    let want = bytes.len();
    if send.capacity() < want {
        send.reserve_capacity(want);
    }
    let granted = match send.poll_capacity(cx) {
        Poll::Ready(Some(Ok(n))) => n.min(want),
        Poll::Ready(Some(Err(_))) | Poll::Ready(None) => return Err(()),
        Poll::Pending => send.capacity().min(want),
    };
    if granted > 0 {
        send.send_data(bytes::Bytes::copy_from_slice(&bytes[..granted]), false).map_err(|_| ())?;
    }
    Ok(granted)
}

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// How `h2` is set up for a client connection.
#[derive(Debug, Clone)]
pub struct Settings {
    pub config: H2Config,
}

impl Settings {
    /// The server builder with our windows and limits, and `h2`'s own defences switched
    /// on explicitly (not left to its defaults, which change between versions).
    pub fn builder(&self) -> h2::server::Builder {
        let c = &self.config;
        let mut b = h2::server::Builder::new();
        b.max_concurrent_streams(c.max_concurrent_streams)
            .initial_window_size(c.initial_stream_window)
            .initial_connection_window_size(c.initial_connection_window)
            .max_header_list_size(c.max_header_list_size)
            .max_frame_size(c.max_frame_size)
            // Rapid reset (CVE-2023-44487): streams the client resets before we accept
            // them, and resets we had to send for its errors, are capped.
            .max_pending_accept_reset_streams(20)
            .max_local_error_reset_streams(Some(256))
            .max_concurrent_reset_streams(64)
            .reset_stream_duration(Duration::from_secs(1))
            // What one stream may queue for sending beyond its granted window.
            .max_send_buffer_size(64 * 1024)
            .enable_connect_protocol();
        b
    }
}

/// True when `data` starts like the preface (so far as it goes): `Some(true)` once all
/// 24 bytes match, `None` while it matches but is shorter, `Some(false)` otherwise.
pub fn preface_state(data: &[u8]) -> Option<bool> {
    let n = data.len().min(PREFACE.len());
    if data[..n] != PREFACE[..n] {
        return Some(false);
    }
    (n == PREFACE.len()).then_some(true)
}

/// True when `data` starts with the preface's request line (`PRI * HTTP/2.0`): no
/// HTTP/1.1 request does, so the client speaks HTTP/2 even if the rest is wrong.
pub fn claims_http2(data: &[u8]) -> bool {
    data.starts_with(&PREFACE[..16])
}

#[cfg(test)]
mod tests {
    #[test]
    fn field_values_share_the_copy_of_their_head_and_others_are_copied() {
        let head = b"HTTP/1.1 200 OK\r\nServer: x\r\nBad: a\x01b\r\n\r\n".to_vec();
        let shared = super::SharedHead::new(&head);
        let v = shared.value(&head[25..26]).expect("a valid value");
        assert_eq!(v.as_bytes(), b"x");
        assert!(shared.value(&head[33..36]).is_none(), "a control byte is refused");
        assert_eq!(shared.value(b"elsewhere").map(|v| v.as_bytes().to_vec()), Some(b"elsewhere".to_vec()));
    }

    #[test]
    fn a_broken_preface_still_claims_http2() {
        assert!(super::claims_http2(b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n"));
        assert!(!super::claims_http2(b"PRI /x HTTP/1.1\r\n"));
    }

    #[test]
    fn the_preface_is_recognised_from_its_first_bytes() {
        assert_eq!(super::preface_state(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0"), Some(true));
        assert_eq!(super::preface_state(b"PRI * HT"), None);
        assert_eq!(super::preface_state(b"PRI / HTTP/1.1\r\n"), Some(false));
        assert_eq!(super::preface_state(b"GET / HTTP/1.1\r\n"), Some(false));
    }
}
