//! The ring's registered file table seen from outside (`uring/src/files.rs`): a keep-alive
//! client's socket and its pooled origin connection are named by table slot
//! (`sluice_ring_fixed_files`), the origin connection keeps its slot through the pool, and
//! a socket the proxy lets go of really closes: the table holds a reference to each socket
//! it has, so a socket closed without leaving the table would never send its FIN.

mod support;

use std::time::Duration;
use support::*;

const FIXED: &str = "sluice_ring_fixed_files";

/// Linux 6.13 or later (`uring` registers no table before: see `uring/src/files.rs`).
fn kernel_has_prompt_table_release() -> bool {
    uring::kernel::at_least(6, 13)
}

fn wait_fixed(proxy: &Proxy, want: f64, what: &str) {
    proxy
        .wait_metric(FIXED, Duration::from_secs(5), |v| v == want)
        .unwrap_or_else(|e| panic!("{what}: want {want} sockets in the file table: {e}"));
}

#[test]
fn keep_alive_legs_use_table_slots_and_close_for_real_when_let_go() {
    if !kernel_has_prompt_table_release() {
        support::skips::skip("the registered file table needs Linux 6.13 or later");
        return;
    }
    let origin = Origin::start();
    let proxy = Proxy::builder("[pool]\nidle_timeout = 1\n").workers(1).start();
    let host = origin.host();

    // One request: the origin leg has its slot from the connect; the client leg gets one
    // once it shows it keeps its connection.
    let mut a = proxy.client();
    assert_eq!(a.get(&host, "/bytes/100").status, 200);
    wait_fixed(&proxy, 2.0, "a keep-alive client and its pooled origin connection");
    assert_eq!(a.get(&host, "/bytes/100").status, 200);
    // Its last request closes the connection: the client sees the close, so the socket
    // left the table when the proxy let go of it.
    a.send_str(&format!("GET /bytes/10 HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"));
    assert_eq!(a.response().status, 200);
    a.wait_closed(Duration::from_secs(5)).expect("the proxy closed the client connection");
    wait_fixed(&proxy, 1.0, "the pooled origin connection alone");

    // The next client reuses the pooled origin connection with its slot.
    let mut b = proxy.client();
    assert_eq!(b.get(&host, "/bytes/100").status, 200);
    assert_eq!(b.get(&host, "/bytes/100").status, 200);
    assert_eq!(origin.accepts(), 1, "the origin connection was reused from the pool");
    wait_fixed(&proxy, 2.0, "the second client and the reused origin connection");
    drop(b);
    wait_fixed(&proxy, 1.0, "the second client is gone");

    // The pool closes its idle connection after idle_timeout: the origin sees it close.
    assert!(
        wait_until(Duration::from_secs(5), || origin.open() == 0),
        "the pooled origin connection stayed open after the pool dropped it ({} open)",
        origin.open()
    );
    wait_fixed(&proxy, 0.0, "nothing left");
}
