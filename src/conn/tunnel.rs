//! CONNECT tunnels: `200 Connection Established`, then bytes both ways through the ring.
//!
//! Each direction is a read-then-write pump on its own slab (`cin` client→origin, `uin`
//! origin→client). One side's EOF shuts down the other side's write half once every
//! byte read before it has been written; the tunnel ends when both directions are done,
//! or at once on an error.

use super::buf::BufId;
use super::{tag, Connection, Ctx, NextStep};
use crate::h1;
use crate::stats;
use uring::{Io, Op};

pub(crate) fn step(conn: &mut Connection, io: &mut Io, ctx: &mut Ctx<'_>) -> NextStep {
    let Some(ex) = conn.ex.as_mut() else {
        return NextStep::Close;
    };
    if conn.io.client_error.is_some() || conn.io.up_error.is_some() {
        return NextStep::Close;
    }
    if !ex.tunnel.established_sent {
        if conn.io.client_write.is_some() {
            return NextStep::Wait;
        }
        ex.tunnel.established_sent = true;
        ex.status = 200;
        stats::bump(&ctx.stats.tunnels, 1);
        ctx.stats.response(Some(crate::h1::Method::Connect), 200);
        let n = conn.out.fill(ctx.pool, h1::CONNECT_ESTABLISHED);
        conn.write_client(io, ctx, BufId::Out, 0, n);
    }
    let Some(ex) = conn.ex.as_mut() else {
        return NextStep::Close;
    };
    let mut c2u_done = ex.tunnel.client_to_upstream_done;
    let mut u2c_done = ex.tunnel.upstream_to_client_done;
    let mut again = false;

    // client -> origin
    if !c2u_done && conn.io.up_write.is_none() && !conn.cin.is_lent() {
        if !conn.cin.is_empty() {
            let (start, len) = (conn.cin.start, conn.cin.len());
            conn.cin.start += len;
            conn.write_upstream(io, ctx, BufId::Cin, start, len);
        } else if conn.io.client_eof {
            if let Some(fd) = conn.up_fd() {
                ctx.ring.submit(io, tag::UP_SHUTDOWN, Op::ShutdownWrite { fd }, ctx.pool);
            }
            c2u_done = true;
            conn.cin.release_if_empty(ctx.pool);
        } else if !conn.io.client_read && conn.read_client(io, ctx) == NextStep::Continue {
            again = true;
        }
    }
    // origin -> client (the 200 goes first: it holds the client write lane until sent)
    if !u2c_done && conn.io.client_write.is_none() && !conn.uin.is_lent() {
        if !conn.uin.is_empty() {
            let (start, len) = (conn.uin.start, conn.uin.len());
            conn.uin.start += len;
            conn.write_client(io, ctx, BufId::Uin, start, len);
        } else if conn.io.up_eof {
            let fd = conn.client_fd();
            ctx.ring.submit(io, tag::CLIENT_SHUTDOWN, Op::ShutdownWrite { fd }, ctx.pool);
            u2c_done = true;
            conn.uin.release_if_empty(ctx.pool);
        } else if !conn.io.up_read && conn.read_upstream(io, ctx) == NextStep::Continue {
            again = true;
        }
    }
    if let Some(ex) = conn.ex.as_mut() {
        ex.tunnel.client_to_upstream_done = c2u_done;
        ex.tunnel.upstream_to_client_done = u2c_done;
    }
    if c2u_done && u2c_done && conn.io.client_write.is_none() && conn.io.up_write.is_none() {
        return NextStep::Close;
    }
    let t = ctx.cfg.timeouts.io_idle;
    conn.refresh_deadline(io, ctx, t);
    if again {
        NextStep::Continue
    } else {
        NextStep::Wait
    }
}
