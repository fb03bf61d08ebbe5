//! A request's bytes off its slab while the exchange does not need them in one: the
//! request waits in its origin's queue, or it is out and the origin thinks.
//!
//! - **Queued** ([`park_queued`]): a request that waits for a connection to its origin
//!   (`pool.max_connections_per_host`, or another dial learning the origin's protocol)
//!   gives its 64 KiB slab back and its bytes (the rewritten head at `input.start`, body
//!   bytes read with it, anything pipelined behind them) wait on the heap. Thousands of
//!   clients queued for a busy origin then neither hold that memory nor spend the
//!   worker's buffer budget, which the exchanges in flight need to finish and free the
//!   connections the queue waits for.
//! - **Sent** ([`release_sent`]): an exchange whose request is all out, with nothing
//!   after it in the client's buffer (nothing pipelined), gives the slab back while the
//!   origin thinks. The head is kept on the heap only where `upstream_failed` may send
//!   the request again (a bodiless request to an HTTP/2 origin's stream, or a bodiless
//!   idempotent one on a reused connection). A cleartext exchange with nothing pipelined
//!   then holds one slab, the one its response is read into, instead of two: 1,024 busy
//!   origin connections no longer spend a worker's whole default budget, which refuses
//!   new clients. Reading the response still counts as a holder's read for the budget
//!   (`Connection::read`): it finishes work in flight, so exchanges finish before new
//!   requests are read.
//!
//! [`unpark`] puts the bytes back in a slab, after its headroom, when the queued
//! request is woken, before a 504 for its wait, and for a retry; bytes the client sent
//! meanwhile (a multishot receive's, appended to a slab of their own) follow them.
//! Queued requests larger than [`PARK_MAX`] keep their slab.

use super::http1::Body;
use super::{Connection, Ctx};
use crate::stats;

/// The most bytes a request parks on the heap: a usual request head is a few hundred.
pub(crate) const PARK_MAX: usize = 8 * 1024;

/// A queued request gives its slab back (see the module header). `again`: it was parked
/// before and woken (counted once).
pub(crate) fn park_queued(conn: &mut Connection, ctx: &mut Ctx<'_>, again: bool) {
    let Some(ex) = conn.ex.as_mut() else { return };
    let input = &mut conn.client.input;
    let parkable = ex.h1.parked.is_none()
        && input.has_slab()
        && !input.is_lent()
        && input.start == ex.h1.head_at
        && input.len() <= PARK_MAX;
    if !parkable {
        return;
    }
    ex.h1.parked = Some(Box::from(input.data(ctx.pool)));
    input.release(ctx.pool);
    if !again {
        stats::bump(&ctx.stats.requests_parked, 1);
    }
}

/// A request that is all out gives its slab back (see the module header).
pub(crate) fn release_sent(conn: &mut Connection, ctx: &mut Ctx<'_>) {
    let Some(ex) = conn.ex.as_mut().filter(|e| e.h1.req_body.finished() && e.h1.head_pending == 0) else {
        return;
    };
    let input = &mut conn.client.input;
    if !input.is_empty() || !input.has_slab() || input.is_lent() {
        return;
    }
    let reused = conn.upstream.as_ref().is_some_and(|u| u.reused);
    let may_retry = ex.origin_link.is_some() || (reused && ex.method.is_idempotent());
    if may_retry && matches!(ex.h1.req_body, Body::None) {
        let (at, len) = (ex.h1.head_at, ex.h1.head_len);
        // Any size: a head fits in a slab (`limits.max_header_bytes`), and the exchange
        // has nothing else to keep its slab for.
        let Some(head) = input.slab_bytes(ctx.pool).and_then(|b| b.get(at..at + len)) else { return };
        ex.h1.parked = Some(Box::from(head));
    }
    input.release(ctx.pool);
}

/// Gives a parked request its slab again, after its headroom; bytes the client sent
/// meanwhile follow them through the client's stash (`Connection::drain_stash`).
pub(crate) fn unpark(conn: &mut Connection, ctx: &mut Ctx<'_>) {
    let Some(parked) = conn.ex.as_mut().and_then(|ex| ex.h1.parked.take()) else { return };
    let input = &conn.client.input;
    debug_assert!(!input.is_lent(), "nothing lends the client's buffer while its request is parked");
    // They can only be a cleartext leg's (its multishot receive's last batch, in a slab of
    // their own): nothing decrypts into a TLS leg's buffer while its request waits.
    debug_assert!(input.is_empty() || conn.client.tls.is_none(), "plaintext arrived on a TLS leg");
    if !input.is_empty() {
        let mut arrived = Box::new(input.data(ctx.pool).to_vec());
        if let Some(stash) = conn.client_stash.take() {
            arrived.extend_from_slice(&stash);
        }
        conn.client_stash = Some(arrived);
    }
    // After the headroom, as a read leaves them: a request pipelined behind this one has
    // room for its own rewritten head when its turn comes.
    let at = conn.client.input.restore(ctx.pool, &parked);
    if let Some(ex) = conn.ex.as_mut() {
        ex.h1.head_at = at;
    }
    conn.drain_stash(ctx, false);
}
