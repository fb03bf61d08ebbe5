//! Running out of slabs: a worker whose registered 64 KiB slabs are all lent falls back to
//! heap slabs, keeps every body byte-exact, and gives every slab back afterwards.
//!
//! One worker with the smallest pool the config allows (`slabs_per_worker = 16`), and 20
//! clients at once, each with a 2 MiB download and a 1 MiB upload echoed back. The
//! downloads are left unread until the proxy reports heap lends
//! (`sluice_slab_heap_lends_total`): each stalled download keeps a slab in a pending write,
//! so 20 of them need more than 16. Then every body is checked byte for byte, and once the
//! clients are gone `sluice_slabs_in_use` (heap and registered) returns to 0 and
//! [`Proxy::assert_released`] holds.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};
use support::*;

const CLIENTS: usize = 20;
const DOWNLOAD: usize = 2 << 20;
const UPLOAD: usize = 1 << 20;
/// The config's minimum (`MIN_SLABS` in src/config.rs).
const SLABS: usize = 16;

/// The value of the one `family{label}` sample in `text` (e.g. `kind="heap"`).
fn labeled(text: &str, family: &str, label: &str) -> Option<f64> {
    let prefix = format!("{family}{{{label}}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.trim().parse().ok())
}

/// `sluice_slabs_in_use` (registered, heap), from one scrape (one tick's values).
fn slabs_in_use(proxy: &Proxy) -> (f64, f64) {
    let text = proxy.metrics().unwrap_or_else(|e| panic!("{e}"));
    let kind = |k: &str| {
        labeled(&text, "sluice_slabs_in_use", &format!("kind=\"{k}\""))
            .unwrap_or_else(|| panic!("no sluice_slabs_in_use{{kind=\"{k}\"}} in /metrics:\n{text}"))
    };
    (kind("registered"), kind("heap"))
}

/// One client's part: its download is asked for and left unread, and half its upload is
/// sent, until `go`; then it finishes the upload, and checks both responses byte for byte.
fn client(proxy_addr: std::net::SocketAddr, host: String, index: usize, ready: Arc<AtomicBool>, go: Arc<AtomicBool>) {
    let mut download = Client::connect(proxy_addr);
    download.send_str(&format!("GET /bytes/{DOWNLOAD} HTTP/1.1\r\nHost: {host}\r\n\r\n"));
    let mut upload = Client::connect(proxy_addr);
    upload.send_str(&format!("POST /echo HTTP/1.1\r\nHost: {host}\r\nContent-Length: {UPLOAD}\r\n\r\n"));
    let body = pattern(UPLOAD);
    upload.send(&body[..UPLOAD / 2]).unwrap_or_else(|e| panic!("client {index}: first half of the upload: {e}"));
    ready.store(true, Ordering::SeqCst);
    assert!(wait_until(Duration::from_secs(30), || go.load(Ordering::SeqCst)), "client {index}: no go");

    upload.send(&body[UPLOAD / 2..]).unwrap_or_else(|e| panic!("client {index}: second half of the upload: {e}"));
    let r = upload.try_response(false).unwrap_or_else(|e| panic!("client {index}: the upload's response: {e}"));
    assert_eq!(r.status, 200, "client {index}: upload: {}", r.describe());
    assert_bytes_eq(&r.body, &body, &format!("client {index}: the upload echoed back"));

    let r = download.try_response(false).unwrap_or_else(|e| panic!("client {index}: the download: {e}"));
    assert_eq!(r.status, 200, "client {index}: download: {}", r.describe());
    assert_bytes_eq(&r.body, &pattern(DOWNLOAD), &format!("client {index}: the download"));
}

#[test]
fn out_of_registered_slabs_heap_slabs_keep_bodies_exact_and_all_come_back() {
    let origin = Origin::start();
    let proxy = Proxy::builder(&format!("slabs_per_worker = {SLABS}\n")).workers(1).start();
    let base = proxy.baseline();
    let lends0 = proxy.metric("sluice_slab_heap_lends_total").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(slabs_in_use(&proxy), (0.0, 0.0), "slabs (registered, heap) in use on a fresh proxy");

    let started = Instant::now();
    let go = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    let mut ready = Vec::new();
    for i in 0..CLIENTS {
        let (flag, go) = (Arc::new(AtomicBool::new(false)), go.clone());
        ready.push(flag.clone());
        let (addr, host) = (proxy.addr(), origin.host());
        clients.push(thread::Builder::new().name(format!("client-{i}")).spawn(move || client(addr, host, i, flag, go)));
    }
    let all_ready = wait_until(Duration::from_secs(30), || ready.iter().all(|r| r.load(Ordering::SeqCst)));
    // The stalled downloads hold more slabs than there are registered ones, so heap slabs
    // are in use (gauges published on the worker's 100 ms tick). Registered ones may be
    // free again by then: a heap slab stays with its buffer until that is done with it.
    let mut in_use = (0.0, 0.0);
    let ran_out = all_ready
        && wait_until(Duration::from_secs(10), || {
            in_use = slabs_in_use(&proxy);
            in_use.1 > 0.0
        });
    let stalled_at = started.elapsed();
    let lends = proxy.metric("sluice_slab_heap_lends_total").unwrap_or_else(|e| panic!("{e}"));
    go.store(true, Ordering::SeqCst);
    let mut failed = Vec::new();
    for (i, c) in clients.into_iter().enumerate() {
        if c.expect("spawn a client thread").join().is_err() {
            failed.push(i);
        }
    }
    assert!(all_ready, "not every client got its requests out within 30 s");
    assert!(
        ran_out,
        "{CLIENTS} stalled downloads never ran the pool out of registered slabs: {} registered (of {SLABS}) and no \
         heap slabs in use",
        in_use.0
    );
    assert!(lends > lends0, "heap slabs in use, yet sluice_slab_heap_lends_total went {lends0} -> {lends}");
    assert!(failed.is_empty(), "clients {failed:?} failed (see their panics above)");
    assert_eq!(origin.requests(), 2 * CLIENTS, "requests at the origin");
    let finished_at = started.elapsed();

    // Everything comes back: no heap slab outlives its use, nor does any registered one.
    let mut last = (0.0, 0.0);
    let returned = wait_until(Duration::from_secs(10), || {
        last = slabs_in_use(&proxy);
        last == (0.0, 0.0)
    });
    assert!(returned, "slabs still in use after every client finished: registered {}, heap {}", last.0, last.1);
    let returned_at = started.elapsed();
    proxy.assert_released(&base, "20 clients that ran the worker out of registered slabs");
    eprintln!(
        "slabs: {} registered and {} heap slabs in use at once, {} heap lends in all; stalled at {stalled_at:?}, \
         bodies done at {finished_at:?}, slabs back at {returned_at:?}, all released at {:?}",
        in_use.0,
        in_use.1,
        lends - lends0,
        started.elapsed()
    );
}
