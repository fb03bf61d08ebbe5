//! The access log: one line per request, written without ever blocking a ring.
//!
//! Each worker owns an [`AccessLog`]. [`AccessLog::record`] formats the line straight
//! into the worker's own buffer (no lock, no allocation once the buffers are warm). The
//! buffer goes to the [`LogSink`] when it passes [`FLUSH_AT`] bytes, and on every call
//! of [`AccessLog::flush`] (the worker's 100 ms tick), over a bounded channel with
//! `try_send`. One background thread per sink receives the buffers, writes each with
//! one `write(2)`, and hands the emptied buffer back to the worker it came from, so
//! buffers circulate instead of being allocated.
//!
//! When the writer falls behind (a slow disk, a blocked stdout pipe) the channel fills;
//! the worker then drops that buffer's lines and counts them
//! ([`LogSink::dropped_lines`]) rather than wait. Losing log lines under overload is the
//! price of never stalling traffic; the counter makes the loss visible.
//!
//! Formats ([`LogFormat`]):
//!
//! ```text
//! common: 192.0.2.7 - alice [10/Oct/2000:13:55:36 +0000] "GET http://example.com/ HTTP/1.1" 200 2326 118 12.345 "example.com:80"
//!         client    user  time (UTC)                      "method target protocol"      status bytes_out bytes_in duration_ms "upstream"
//! json:   {"time":"2000-10-10T13:55:36.123Z","client":"192.0.2.7:51234","method":"GET","target":"http://example.com/","status":200,"bytes_out":2326,"bytes_in":118,"duration_ms":12.345,"upstream":"example.com:80","protocol":"HTTP/1.1","user":"alice"}
//! ```
//!
//! The user is the one proxy authentication admitted the request as (`auth`). Absent
//! values are `-` (common) or `null` (JSON). Peer-supplied text (method, target,
//! upstream, protocol, user) is escaped: in the common format `"`, `\`, control bytes and
//! non-ASCII bytes become `\xHH` (as nginx does), so a line can never be split or forged;
//! in JSON it is escaped per RFC 8259.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::h1::push_u64;

/// A worker hands its buffer to the sink once it holds at least this many bytes.
pub const FLUSH_AT: usize = 32 * 1024;
/// Capacity a worker's buffer starts with: room for the threshold plus the last line.
const BUF_CAPACITY: usize = 64 * 1024;
/// Buffers waiting for the writer, per sink, by default. 64 × ~32 KiB ≈ 2 MiB at most.
pub const DEFAULT_QUEUE: usize = 64;
/// Emptied buffers a worker keeps for reuse.
const SPARES: usize = 4;
/// A buffer that grew past this (a huge line) is freed rather than recycled.
const MAX_RECYCLED: usize = 1024 * 1024;

/// The line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// nginx-style common log line (see the module docs).
    Common,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "common" => Ok(LogFormat::Common),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("expected \"common\" or \"json\", got {s:?}")),
        }
    }
}

/// Everything one line says about one request (or tunnel).
#[derive(Debug, Clone)]
pub struct AccessEntry<'a> {
    /// When the request arrived (or completed: the caller chooses, consistently).
    pub time: SystemTime,
    /// The client's address; `None` when unknown.
    pub client: Option<SocketAddr>,
    /// Request method (`GET`, `CONNECT`, ...).
    pub method: &'a str,
    /// Request target as received (absolute-form, origin-form or authority).
    pub target: &'a str,
    /// Status sent to the client.
    pub status: u16,
    /// Bytes sent to the client (head and body).
    pub bytes_out: u64,
    /// Bytes received from the client (head and body).
    pub bytes_in: u64,
    /// From the first byte of the request to the last byte of the response.
    pub duration: Duration,
    /// The origin the request went to (`host:port`); `None` if none was contacted.
    pub upstream: Option<&'a str>,
    /// `HTTP/1.1`, `HTTP/2`, `HTTP/3`, ...
    pub protocol: &'a str,
    /// The user proxy authentication admitted the request as; `None` when there was none.
    pub user: Option<&'a str>,
}

// ---------------------------------------------------------------------------------------
// The sink: a background writer thread
// ---------------------------------------------------------------------------------------

/// Where a sink writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// The process's standard output (the journal, under systemd).
    Stdout,
    /// A file, opened for appending (created 0640 if missing).
    File(PathBuf),
}

impl LogTarget {
    /// `-` or `stdout` is standard output; anything else a file path.
    pub fn parse(s: &str) -> LogTarget {
        match s {
            "-" | "stdout" => LogTarget::Stdout,
            path => LogTarget::File(PathBuf::from(path)),
        }
    }
}

enum Msg {
    /// Lines to write; `home` takes the emptied buffer back.
    Batch { buf: Vec<u8>, lines: u64, home: SyncSender<Vec<u8>> },
    /// Look at the reopen flag.
    Wake,
    /// Reply once everything sent before has been written.
    Sync(SyncSender<()>),
}

#[derive(Debug, Default)]
struct Stats {
    lines_written: AtomicU64,
    bytes_written: AtomicU64,
    dropped_lines: AtomicU64,
    write_errors: AtomicU64,
    reopen: AtomicBool,
}

/// The writing end shared by every worker's [`AccessLog`]: a bounded queue and the one
/// thread that drains it.
///
/// Dropping the last `Arc<LogSink>` never waits (it may happen on a worker thread, when a
/// reload replaces the sink): the writer thread finishes what is queued and ends on its
/// own. On the way out of the process, call [`LogSink::sync_within`] (or
/// [`LogSink::sync`]) after the workers have stopped, so the last lines are written
/// before exit.
pub struct LogSink {
    /// `Some` until drop, which closes the channel so the writer thread ends.
    tx: Option<SyncSender<Msg>>,
    stats: Arc<Stats>,
    target: Option<LogTarget>,
}

impl std::fmt::Debug for LogSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogSink").field("target", &self.target).field("stats", &self.stats).finish()
    }
}

/// What the writer thread writes to.
enum Out {
    Stdout,
    File { path: PathBuf, file: File },
    Custom(Box<dyn Write + Send>),
}

impl Out {
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Out::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
            Out::File { file, .. } => file.write_all(buf),
            Out::Custom(w) => {
                w.write_all(buf)?;
                w.flush()
            }
        }
    }

    /// Reopens a file target (after logrotate moved it away).
    fn reopen(&mut self) -> io::Result<()> {
        if let Out::File { path, file } = self {
            *file = open_append(path)?;
        }
        Ok(())
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new().append(true).create(true).mode(0o640).open(path)
}

impl LogSink {
    /// A sink writing to `target` with the default queue of [`DEFAULT_QUEUE`] buffers.
    /// A file is opened here, so a bad path is an error at start-up, not a lost log.
    pub fn new(target: LogTarget) -> io::Result<LogSink> {
        LogSink::with_queue(target, DEFAULT_QUEUE)
    }

    /// A sink writing to `target` with room for `queue` buffers in flight.
    pub fn with_queue(target: LogTarget, queue: usize) -> io::Result<LogSink> {
        let out = match &target {
            LogTarget::Stdout => Out::Stdout,
            LogTarget::File(path) => Out::File {
                file: open_append(path)
                    .map_err(|e| io::Error::new(e.kind(), format!("access log {}: {e}", path.display())))?,
                path: path.clone(),
            },
        };
        LogSink::start(out, queue, Some(target))
    }

    /// A sink writing to any writer (tests, or a pipe to a log shipper).
    pub fn with_writer(writer: Box<dyn Write + Send>, queue: usize) -> io::Result<LogSink> {
        LogSink::start(Out::Custom(writer), queue, None)
    }

    fn start(out: Out, queue: usize, target: Option<LogTarget>) -> io::Result<LogSink> {
        let (tx, rx) = mpsc::sync_channel(queue.max(1));
        let stats = Arc::new(Stats::default());
        let thread_stats = Arc::clone(&stats);
        // Detached: it ends by itself once the channel closes and the queue is written.
        std::thread::Builder::new()
            .name("sluice-accesslog".to_string())
            .spawn(move || writer_loop(rx, out, &thread_stats))?;
        Ok(LogSink { tx: Some(tx), stats, target })
    }

    /// Where this sink writes (`None` for [`LogSink::with_writer`]).
    pub fn target(&self) -> Option<&LogTarget> {
        self.target.as_ref()
    }

    /// Lines dropped because the queue was full (or the writer gone).
    pub fn dropped_lines(&self) -> u64 {
        self.stats.dropped_lines.load(Ordering::Relaxed)
    }

    /// Lines written out.
    pub fn lines_written(&self) -> u64 {
        self.stats.lines_written.load(Ordering::Relaxed)
    }

    /// Bytes written out.
    pub fn bytes_written(&self) -> u64 {
        self.stats.bytes_written.load(Ordering::Relaxed)
    }

    /// Failed writes (each loses one buffer of lines, counted in neither figure above).
    pub fn write_errors(&self) -> u64 {
        self.stats.write_errors.load(Ordering::Relaxed)
    }

    /// Asks the writer to reopen its file before the next write (after logrotate; call
    /// it on SIGHUP). Never blocks.
    pub fn reopen(&self) {
        self.stats.reopen.store(true, Ordering::Relaxed);
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(Msg::Wake);
        }
    }

    /// Waits until every buffer handed over before this call has been written. Blocks
    /// for as long as the writer needs: for shutdown and tests, never on a ring.
    pub fn sync(&self) {
        let Some(tx) = &self.tx else { return };
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        if tx.send(Msg::Sync(reply_tx)).is_ok() {
            let _ = reply_rx.recv();
        }
    }

    /// Like [`LogSink::sync`], but gives up after `within` (a writer stuck on a blocked
    /// pipe must not hold up the process's exit). True if everything was written.
    pub fn sync_within(&self, within: Duration) -> bool {
        let Some(tx) = &self.tx else { return true };
        let deadline = std::time::Instant::now() + within;
        let (reply_tx, reply_rx) = mpsc::sync_channel(1);
        let mut msg = Msg::Sync(reply_tx);
        loop {
            match tx.try_send(msg) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    msg = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(TrySendError::Disconnected(_)) => return false,
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        reply_rx.recv_timeout(left).is_ok()
    }

    /// Hands a buffer over without blocking; gives it back if the queue is full.
    fn offer(&self, buf: Vec<u8>, lines: u64, home: &SyncSender<Vec<u8>>) -> Result<(), Vec<u8>> {
        let Some(tx) = &self.tx else { return Err(buf) };
        let msg = Msg::Batch { buf, lines, home: home.clone() };
        match tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m)) | Err(TrySendError::Disconnected(m)) => {
                self.stats.dropped_lines.fetch_add(lines, Ordering::Relaxed);
                match m {
                    Msg::Batch { buf, .. } => Err(buf),
                    _ => Err(Vec::new()),
                }
            }
        }
    }
}

impl Drop for LogSink {
    fn drop(&mut self) {
        // Closing the channel lets the writer finish what is queued and return. No join:
        // see the type's docs.
        drop(self.tx.take());
    }
}

fn writer_loop(rx: Receiver<Msg>, mut out: Out, stats: &Stats) {
    let mut reported = false;
    while let Ok(msg) = rx.recv() {
        if stats.reopen.swap(false, Ordering::Relaxed) {
            if let Err(e) = out.reopen() {
                stats.write_errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("sluice: access log: cannot reopen: {e}");
            }
        }
        match msg {
            Msg::Batch { mut buf, lines, home } => {
                match out.write_all(&buf) {
                    Ok(()) => {
                        stats.lines_written.fetch_add(lines, Ordering::Relaxed);
                        stats.bytes_written.fetch_add(buf.len() as u64, Ordering::Relaxed);
                        reported = false;
                    }
                    Err(e) => {
                        stats.write_errors.fetch_add(1, Ordering::Relaxed);
                        if !reported {
                            // Once per run of failures: the log must not flood stderr.
                            eprintln!("sluice: access log: write failed ({lines} lines lost): {e}");
                            reported = true;
                        }
                    }
                }
                if buf.capacity() <= MAX_RECYCLED {
                    buf.clear();
                    let _ = home.try_send(buf);
                }
            }
            Msg::Wake => {}
            Msg::Sync(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The per-worker log
// ---------------------------------------------------------------------------------------

/// One worker's access log: formats lines into its own buffer and hands full buffers to
/// the shared [`LogSink`] without blocking.
pub struct AccessLog {
    format: LogFormat,
    sink: Arc<LogSink>,
    buf: Vec<u8>,
    lines: u64,
    /// Emptied buffers coming back from the writer thread.
    spare_rx: Receiver<Vec<u8>>,
    spare_tx: SyncSender<Vec<u8>>,
    /// Lines this worker dropped (also counted in the sink).
    dropped: u64,
    /// The last second formatted, and its text, so most lines copy the time.
    time_cache: TimeCache,
}

impl std::fmt::Debug for AccessLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccessLog")
            .field("format", &self.format)
            .field("buffered_bytes", &self.buf.len())
            .field("buffered_lines", &self.lines)
            .field("dropped", &self.dropped)
            .finish()
    }
}

impl AccessLog {
    /// A worker's log writing through `sink`.
    pub fn new(format: LogFormat, sink: Arc<LogSink>) -> Self {
        let (spare_tx, spare_rx) = mpsc::sync_channel(SPARES);
        AccessLog {
            format,
            sink,
            buf: Vec::with_capacity(BUF_CAPACITY),
            lines: 0,
            spare_rx,
            spare_tx,
            dropped: 0,
            time_cache: TimeCache::default(),
        }
    }

    /// The format lines are written in.
    pub fn format(&self) -> LogFormat {
        self.format
    }

    /// Switches the format (on reload); lines already buffered keep theirs.
    pub fn set_format(&mut self, format: LogFormat) {
        self.format = format;
    }

    /// The sink this log writes through.
    pub fn sink(&self) -> &Arc<LogSink> {
        &self.sink
    }

    /// Lines this worker has dropped because the writer was behind.
    pub fn dropped_lines(&self) -> u64 {
        self.dropped
    }

    /// Bytes formatted but not yet handed to the sink.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Appends one line; hands the buffer over if it has reached [`FLUSH_AT`].
    pub fn record(&mut self, e: &AccessEntry<'_>) {
        match self.format {
            LogFormat::Common => format_common(&mut self.buf, &mut self.time_cache, e),
            LogFormat::Json => format_json(&mut self.buf, &mut self.time_cache, e),
        }
        self.lines += 1;
        if self.buf.len() >= FLUSH_AT {
            self.hand_over();
        }
    }

    /// Hands whatever is buffered to the sink (call it from the worker's 100 ms tick, and
    /// before the worker exits). Never blocks: if the sink's queue is full the lines are
    /// dropped and counted.
    pub fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.hand_over();
        }
    }

    fn hand_over(&mut self) {
        let next = match self.spare_rx.try_recv() {
            Ok(b) => b,
            Err(_) => Vec::with_capacity(BUF_CAPACITY),
        };
        let full = std::mem::replace(&mut self.buf, next);
        let lines = std::mem::take(&mut self.lines);
        if let Err(mut back) = self.sink.offer(full, lines, &self.spare_tx) {
            // Dropped: keep the (bigger, warm) buffer, emptied, and park the other.
            self.dropped += lines;
            back.clear();
            if back.capacity() >= self.buf.capacity() {
                let other = std::mem::replace(&mut self.buf, back);
                let _ = self.spare_tx.try_send(other);
            } else {
                let _ = self.spare_tx.try_send(back);
            }
        }
    }

    #[cfg(test)]
    fn buffer_ptr(&self) -> *const u8 {
        self.buf.as_ptr()
    }
}

impl Drop for AccessLog {
    fn drop(&mut self) {
        self.flush();
    }
}

// ---------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------

const MONTHS: [&[u8; 3]; 12] =
    [b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec"];

/// A UTC calendar time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Civil {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
}

/// Year, month, day from days since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32; // [1, 12]
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn civil(secs: u64) -> Civil {
    let days = (secs / 86_400) as i64;
    let rem = (secs % 86_400) as u32;
    let (year, month, day) = civil_from_days(days);
    Civil { year, month, day, hour: rem / 3600, minute: rem / 60 % 60, second: rem % 60 }
}

/// Seconds and milliseconds since the epoch (times before it are clamped to it).
fn epoch(t: SystemTime) -> (u64, u32) {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => (d.as_secs(), d.subsec_millis()),
        Err(_) => (0, 0),
    }
}

/// The formatted text of the last second seen, per format (the vectors keep their
/// capacity, so refreshing them once a second allocates nothing after the first).
#[derive(Default)]
struct TimeCache {
    common_secs: Option<u64>,
    /// `10/Oct/2000:13:55:36 +0000`
    common: Vec<u8>,
    json_secs: Option<u64>,
    /// `2000-10-10T13:55:36` (milliseconds and `Z` appended per line)
    json: Vec<u8>,
}

fn push_2(buf: &mut Vec<u8>, v: u32) {
    buf.push(b'0' + (v / 10 % 10) as u8);
    buf.push(b'0' + (v % 10) as u8);
}

fn push_year(buf: &mut Vec<u8>, y: i64) {
    let y = y.clamp(0, 9999) as u32;
    push_2(buf, y / 100);
    push_2(buf, y % 100);
}

/// `12.345`: milliseconds with three decimals.
fn push_millis(buf: &mut Vec<u8>, d: Duration) {
    let micros = d.as_micros().min(u128::from(u64::MAX)) as u64;
    push_u64(buf, micros / 1000);
    buf.push(b'.');
    let frac = (micros % 1000) as u32;
    buf.push(b'0' + (frac / 100) as u8);
    push_2(buf, frac % 100);
}

/// `[10/Oct/2000:13:55:36 +0000]` without the brackets.
fn push_common_time(buf: &mut Vec<u8>, cache: &mut TimeCache, t: SystemTime) {
    let (secs, _) = epoch(t);
    if cache.common_secs != Some(secs) {
        let c = civil(secs);
        let tmp = &mut cache.common;
        tmp.clear();
        push_2(tmp, c.day);
        tmp.push(b'/');
        tmp.extend_from_slice(MONTHS[(c.month - 1) as usize]);
        tmp.push(b'/');
        push_year(tmp, c.year);
        tmp.push(b':');
        push_2(tmp, c.hour);
        tmp.push(b':');
        push_2(tmp, c.minute);
        tmp.push(b':');
        push_2(tmp, c.second);
        tmp.extend_from_slice(b" +0000");
        cache.common_secs = Some(secs);
    }
    buf.extend_from_slice(&cache.common);
}

/// `2000-10-10T13:55:36.123Z` (RFC 3339, UTC, milliseconds).
fn push_rfc3339(buf: &mut Vec<u8>, cache: &mut TimeCache, t: SystemTime) {
    let (secs, millis) = epoch(t);
    if cache.json_secs != Some(secs) {
        let c = civil(secs);
        let tmp = &mut cache.json;
        tmp.clear();
        push_year(tmp, c.year);
        tmp.push(b'-');
        push_2(tmp, c.month);
        tmp.push(b'-');
        push_2(tmp, c.day);
        tmp.push(b'T');
        push_2(tmp, c.hour);
        tmp.push(b':');
        push_2(tmp, c.minute);
        tmp.push(b':');
        push_2(tmp, c.second);
        cache.json_secs = Some(secs);
    }
    buf.extend_from_slice(&cache.json);
    buf.push(b'.');
    buf.push(b'0' + (millis / 100) as u8);
    push_2(buf, millis % 100);
    buf.push(b'Z');
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Common-format escaping (as nginx's): `"`, `\`, control bytes and bytes ≥ 0x7f become
/// `\xHH`, so a field can neither end its quotes nor split the line.
fn push_escaped_common(buf: &mut Vec<u8>, s: &str) {
    push_escaped_common_but(buf, s, b'"');
}

/// Like [`push_escaped_common`], escaping `also` too (a space, in an unquoted field).
fn push_escaped_common_but(buf: &mut Vec<u8>, s: &str, also: u8) {
    for &b in s.as_bytes() {
        if b == b'"' || b == b'\\' || b == also || !(0x20..0x7f).contains(&b) {
            buf.extend_from_slice(&[b'\\', b'x', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        } else {
            buf.push(b);
        }
    }
}

/// A common-format field: `-` when empty, escaped otherwise.
fn push_common_field(buf: &mut Vec<u8>, s: &str) {
    if s.is_empty() {
        buf.push(b'-');
    } else {
        push_escaped_common(buf, s);
    }
}

/// A JSON string, quotes included (RFC 8259 escaping; DEL also escaped).
fn push_json_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f | 0x7f => b"",
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            buf.extend_from_slice(&[b'\\', b'u', b'0', b'0', HEX[(b >> 4) as usize], HEX[(b & 15) as usize]]);
        } else {
            buf.extend_from_slice(esc);
        }
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

fn format_common(buf: &mut Vec<u8>, cache: &mut TimeCache, e: &AccessEntry<'_>) {
    match e.client {
        Some(a) => {
            let _ = write!(buf, "{}", a.ip());
        }
        None => buf.push(b'-'),
    }
    // `host ident authuser [date]`: the user name is the third field.
    buf.extend_from_slice(b" - ");
    match e.user {
        // Unquoted: a space would split the field.
        Some(u) if !u.is_empty() => push_escaped_common_but(buf, u, b' '),
        _ => buf.push(b'-'),
    }
    buf.extend_from_slice(b" [");
    push_common_time(buf, cache, e.time);
    buf.extend_from_slice(b"] \"");
    push_common_field(buf, e.method);
    buf.push(b' ');
    push_common_field(buf, e.target);
    buf.push(b' ');
    push_common_field(buf, e.protocol);
    buf.extend_from_slice(b"\" ");
    push_u64(buf, u64::from(e.status));
    buf.push(b' ');
    push_u64(buf, e.bytes_out);
    buf.push(b' ');
    push_u64(buf, e.bytes_in);
    buf.push(b' ');
    push_millis(buf, e.duration);
    buf.push(b' ');
    match e.upstream {
        Some(u) => {
            buf.push(b'"');
            push_escaped_common(buf, u);
            buf.push(b'"');
        }
        None => buf.push(b'-'),
    }
    buf.push(b'\n');
}

fn format_json(buf: &mut Vec<u8>, cache: &mut TimeCache, e: &AccessEntry<'_>) {
    buf.extend_from_slice(b"{\"time\":\"");
    push_rfc3339(buf, cache, e.time);
    buf.extend_from_slice(b"\",\"client\":");
    match e.client {
        Some(a) => {
            buf.push(b'"');
            let _ = write!(buf, "{a}");
            buf.push(b'"');
        }
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"method\":");
    push_json_str(buf, e.method);
    buf.extend_from_slice(b",\"target\":");
    push_json_str(buf, e.target);
    buf.extend_from_slice(b",\"status\":");
    push_u64(buf, u64::from(e.status));
    buf.extend_from_slice(b",\"bytes_out\":");
    push_u64(buf, e.bytes_out);
    buf.extend_from_slice(b",\"bytes_in\":");
    push_u64(buf, e.bytes_in);
    buf.extend_from_slice(b",\"duration_ms\":");
    push_millis(buf, e.duration);
    buf.extend_from_slice(b",\"upstream\":");
    match e.upstream {
        Some(u) => push_json_str(buf, u),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b",\"protocol\":");
    push_json_str(buf, e.protocol);
    buf.extend_from_slice(b",\"user\":");
    match e.user {
        Some(u) => push_json_str(buf, u),
        None => buf.extend_from_slice(b"null"),
    }
    buf.extend_from_slice(b"}\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Condvar, Mutex};

    fn at(secs: u64, millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_millis(millis)
    }

    fn entry() -> AccessEntry<'static> {
        AccessEntry {
            // 2000-10-10T13:55:36.123Z
            time: at(971_186_136, 123),
            client: Some("192.0.2.7:51234".parse().unwrap()),
            method: "GET",
            target: "http://example.com/index.html?q=1",
            status: 200,
            bytes_out: 2326,
            bytes_in: 118,
            duration: Duration::from_micros(12_345),
            upstream: Some("example.com:80"),
            protocol: "HTTP/1.1",
            user: None,
        }
    }

    fn line(format: LogFormat, e: &AccessEntry<'_>) -> String {
        let mut buf = Vec::new();
        let mut cache = TimeCache::default();
        match format {
            LogFormat::Common => format_common(&mut buf, &mut cache, e),
            LogFormat::Json => format_json(&mut buf, &mut cache, e),
        }
        String::from_utf8(buf).unwrap()
    }

    /// A writer that stores what it gets; optionally blocks until released.
    #[derive(Clone, Default)]
    struct Capture {
        out: Arc<Mutex<Vec<u8>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
        writes: Arc<AtomicUsize>,
    }

    impl Capture {
        fn blocked() -> Capture {
            let c = Capture::default();
            *c.gate.0.lock().unwrap() = true;
            c
        }
        fn release(&self) {
            *self.gate.0.lock().unwrap() = false;
            self.gate.1.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.out.lock().unwrap().clone()).unwrap()
        }
    }

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let mut closed = self.gate.0.lock().unwrap();
            while *closed {
                closed = self.gate.1.wait(closed).unwrap();
            }
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.out.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn common_format_exactly() {
        assert_eq!(
            line(LogFormat::Common, &entry()),
            "192.0.2.7 - - [10/Oct/2000:13:55:36 +0000] \
             \"GET http://example.com/index.html?q=1 HTTP/1.1\" 200 2326 118 12.345 \
             \"example.com:80\"\n"
        );
    }

    #[test]
    fn json_format_exactly() {
        assert_eq!(
            line(LogFormat::Json, &entry()),
            "{\"time\":\"2000-10-10T13:55:36.123Z\",\"client\":\"192.0.2.7:51234\",\
             \"method\":\"GET\",\"target\":\"http://example.com/index.html?q=1\",\
             \"status\":200,\"bytes_out\":2326,\"bytes_in\":118,\"duration_ms\":12.345,\
             \"upstream\":\"example.com:80\",\"protocol\":\"HTTP/1.1\",\"user\":null}\n"
        );
    }

    #[test]
    fn the_user_is_the_third_common_field_and_a_json_key() {
        let mut e = entry();
        e.user = Some("j\u{f6}rg \"x\"");
        let c = line(LogFormat::Common, &e);
        assert!(c.starts_with("192.0.2.7 - j\\xc3\\xb6rg\\x20\\x22x\\x22 [10/Oct/2000"), "{c}");
        let j = line(LogFormat::Json, &e);
        assert!(j.ends_with(",\"protocol\":\"HTTP/1.1\",\"user\":\"j\u{f6}rg \\\"x\\\"\"}\n"), "{j}");
    }

    #[test]
    fn absent_values_and_ipv6() {
        let mut e = entry();
        e.client = None;
        e.upstream = None;
        e.method = "CONNECT";
        e.target = "example.com:443";
        e.status = 403;
        e.bytes_out = 0;
        e.bytes_in = 0;
        e.duration = Duration::ZERO;
        e.time = at(0, 0);
        assert_eq!(
            line(LogFormat::Common, &e),
            "- - - [01/Jan/1970:00:00:00 +0000] \"CONNECT example.com:443 HTTP/1.1\" 403 0 0 0.000 -\n"
        );
        assert_eq!(
            line(LogFormat::Json, &e),
            "{\"time\":\"1970-01-01T00:00:00.000Z\",\"client\":null,\"method\":\"CONNECT\",\
             \"target\":\"example.com:443\",\"status\":403,\"bytes_out\":0,\"bytes_in\":0,\
             \"duration_ms\":0.000,\"upstream\":null,\"protocol\":\"HTTP/1.1\",\"user\":null}\n"
        );
        e.client = Some("[2001:db8::1]:443".parse().unwrap());
        e.protocol = "HTTP/2";
        e.duration = Duration::from_secs(3) + Duration::from_micros(7);
        let c = line(LogFormat::Common, &e);
        assert!(c.starts_with("2001:db8::1 - - ["), "{c}");
        assert!(c.contains("\" 403 0 0 3000.007 -\n"), "{c}");
        let j = line(LogFormat::Json, &e);
        assert!(j.contains("\"client\":\"[2001:db8::1]:443\""), "{j}");
        assert!(j.contains("\"duration_ms\":3000.007,"), "{j}");
    }

    #[test]
    fn json_escapes_quotes_backslashes_and_controls() {
        let mut e = entry();
        e.target = "/a\"b\\c\nd\re\tf\u{8}g\u{c}h\u{1}i\u{1f}j\u{7f}k é €";
        e.method = "G\"ET";
        e.upstream = Some("x\"y");
        let j = line(LogFormat::Json, &e);
        assert!(j.contains("\"target\":\"/a\\\"b\\\\c\\nd\\re\\tf\\bg\\fh\\u0001i\\u001fj\\u007fk é €\""), "{j}");
        assert!(j.contains("\"method\":\"G\\\"ET\""), "{j}");
        assert!(j.contains("\"upstream\":\"x\\\"y\""), "{j}");
        assert_eq!(j.matches('\n').count(), 1);
        assert!(j.ends_with("}\n"));
        // Balanced: every quote that is not escaped opens or closes a string.
        let mut unescaped = 0;
        let mut prev_backslashes = 0;
        for c in j.chars() {
            if c == '"' && prev_backslashes % 2 == 0 {
                unescaped += 1;
            }
            prev_backslashes = if c == '\\' { prev_backslashes + 1 } else { 0 };
        }
        assert_eq!(unescaped % 2, 0, "{j}");
    }

    #[test]
    fn json_lines_parse_as_json() {
        // python3 is in .ci/setup; a real parser checks escaping of every control byte.
        let mut text = String::new();
        let weird: String = (0u8..0x80).map(char::from).collect::<String>() + "é€😀";
        let mut e = entry();
        e.target = &weird;
        text.push_str(&line(LogFormat::Json, &e));
        let Ok(mut child) = std::process::Command::new("python3")
            .args(["-c", "import sys,json\nfor l in sys.stdin: d=json.loads(l); print(repr(d['target']))"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("python3 not found: skipping the JSON parser cross-check");
            return;
        };
        child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let want = {
            // Python's repr of the same string, built by asking Python about the original.
            let o = std::process::Command::new("python3")
                .args(["-c", "import sys; print(repr(sys.argv[1]))", &weird[1..]])
                .output()
                .unwrap();
            String::from_utf8(o.stdout).unwrap()
        };
        // argv cannot carry NUL, so compare without the first character.
        let got = String::from_utf8(out.stdout).unwrap();
        assert!(got.starts_with("'\\x00"), "{got}");
        assert_eq!(got.replacen("\\x00", "", 1), want);
    }

    #[test]
    fn common_escapes_peer_text() {
        let mut e = entry();
        e.target = "/a\"b\\c\nd é";
        e.method = "GET";
        e.upstream = Some("ev\"il");
        let c = line(LogFormat::Common, &e);
        assert!(c.contains("\"GET /a\\x22b\\x5cc\\x0ad \\xc3\\xa9 HTTP/1.1\""), "{c}");
        assert!(c.ends_with(" \"ev\\x22il\"\n"), "{c}");
        assert_eq!(c.matches('\n').count(), 1);
        e.method = "";
        assert!(line(LogFormat::Common, &e).contains("] \"- /a"));
    }

    #[test]
    fn civil_dates_match_known_days() {
        let fmt = |secs: u64| {
            let mut b = Vec::new();
            push_rfc3339(&mut b, &mut TimeCache::default(), at(secs, 0));
            String::from_utf8(b).unwrap()
        };
        assert_eq!(fmt(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(fmt(951_782_400), "2000-02-29T00:00:00.000Z"); // leap day, 400-year rule
        assert_eq!(fmt(1_709_164_800), "2024-02-29T00:00:00.000Z");
        assert_eq!(fmt(1_735_689_599), "2024-12-31T23:59:59.000Z");
        assert_eq!(fmt(4_107_542_400), "2100-03-01T00:00:00.000Z"); // 2100 is not leap
        assert_eq!(fmt(253_402_300_799), "9999-12-31T23:59:59.000Z");
        // Every day boundary for 5 years round-trips through a day count.
        let mut prev = civil_from_days(-1);
        for d in 0..(5 * 366) {
            let cur = civil_from_days(d);
            assert!(cur > prev, "{d}: {prev:?} then {cur:?}");
            prev = cur;
        }
        let mut b = Vec::new();
        let mut cache = TimeCache::default();
        push_common_time(&mut b, &mut cache, at(1_709_164_800, 999));
        push_common_time(&mut b, &mut cache, at(1_709_164_801, 0)); // cache refreshes
        assert_eq!(String::from_utf8(b).unwrap(), "29/Feb/2024:00:00:00 +000029/Feb/2024:00:00:01 +0000");
        // Before the epoch: clamped, never a panic.
        let mut b = Vec::new();
        push_rfc3339(&mut b, &mut cache, UNIX_EPOCH - Duration::from_secs(5));
        assert_eq!(b, b"1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn lines_reach_the_writer_on_flush_and_at_the_threshold() {
        let cap = Capture::default();
        let sink = Arc::new(LogSink::with_writer(Box::new(cap.clone()), 8).unwrap());
        let mut log = AccessLog::new(LogFormat::Common, Arc::clone(&sink));
        log.record(&entry());
        sink.sync();
        assert_eq!(cap.text(), "", "held until flush or threshold");
        log.flush();
        sink.sync();
        assert_eq!(cap.text(), line(LogFormat::Common, &entry()));
        assert_eq!(sink.lines_written(), 1);

        // Past FLUSH_AT the buffer goes without a flush call.
        let one = line(LogFormat::Json, &entry()).len();
        log.set_format(LogFormat::Json);
        let n = FLUSH_AT / one + 1;
        for _ in 0..n {
            log.record(&entry());
        }
        assert_eq!(log.buffered(), 0);
        sink.sync();
        assert_eq!(sink.lines_written(), 1 + n as u64);
        assert_eq!(cap.writes.load(Ordering::SeqCst), 2, "one write per buffer");
        assert_eq!(sink.dropped_lines(), 0);
        assert_eq!(sink.bytes_written(), cap.text().len() as u64);
    }

    #[test]
    fn buffers_are_recycled_not_reallocated() {
        let cap = Capture::default();
        let sink = Arc::new(LogSink::with_writer(Box::new(cap.clone()), 8).unwrap());
        let mut log = AccessLog::new(LogFormat::Json, Arc::clone(&sink));
        let mut warm = std::collections::HashSet::new();
        for round in 0..60 {
            log.record(&entry());
            let ptr = log.buffer_ptr() as usize;
            if round < 10 {
                warm.insert(ptr);
            } else {
                assert!(warm.contains(&ptr), "round {round}: a new buffer was allocated");
            }
            log.flush();
            sink.sync();
        }
        assert!(warm.len() <= 3, "{} distinct buffers", warm.len());
        assert_eq!(sink.lines_written(), 60);
    }

    #[test]
    fn a_full_queue_drops_lines_and_never_blocks() {
        let cap = Capture::blocked();
        let sink = Arc::new(LogSink::with_writer(Box::new(cap.clone()), 1).unwrap());
        let mut log = AccessLog::new(LogFormat::Common, Arc::clone(&sink));
        let start = std::time::Instant::now();
        // Batch 1 is taken by the (blocked) writer, batch 2 fills the queue of 1, the
        // other 8 batches (16 lines) are dropped; 18 if the writer had not yet taken
        // batch 1 when batch 2 came. None of it may wait for the writer.
        for _ in 0..10 {
            log.record(&entry());
            log.record(&entry());
            log.flush();
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(start.elapsed() < Duration::from_secs(2));
        let dropped = sink.dropped_lines();
        assert!((16..=18).contains(&dropped), "dropped {dropped}");
        assert_eq!(log.dropped_lines(), dropped);
        cap.release();
        sink.sync();
        assert_eq!(sink.lines_written(), 20 - dropped);
        assert_eq!(
            cap.text().lines().count() as u64,
            20 - dropped,
            "whole buffers are written or dropped, never part of one"
        );
        // After the backlog clears, lines flow again.
        log.record(&entry());
        log.flush();
        sink.sync();
        assert_eq!(sink.lines_written(), 21 - dropped);
    }

    #[test]
    fn file_output_appends_and_survives_drop() {
        let dir = std::env::temp_dir().join(format!(
            "sluice-accesslog-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("access.log");
        std::fs::write(&path, "earlier line\n").unwrap();
        let sink = Arc::new(LogSink::new(LogTarget::File(path.clone())).unwrap());
        assert_eq!(sink.target(), Some(&LogTarget::File(path.clone())));
        let mut a = AccessLog::new(LogFormat::Common, Arc::clone(&sink));
        let mut b = AccessLog::new(LogFormat::Json, Arc::clone(&sink));
        a.record(&entry());
        b.record(&entry());
        // No flush: dropping the logs hands their buffers over (a worker exiting).
        drop(a);
        drop(b);
        assert!(sink.sync_within(Duration::from_secs(10)));
        drop(sink);
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0], "earlier line");
        assert!(lines.contains(&line(LogFormat::Common, &entry()).trim_end()));
        assert!(lines.contains(&line(LogFormat::Json, &entry()).trim_end()));
        use std::os::unix::fs::PermissionsExt;
        let fresh = dir.join("fresh.log");
        drop(LogSink::new(LogTarget::File(fresh.clone())).unwrap());
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o007, 0, "not world-readable: {mode:o}");

        // reopen() follows a rename (logrotate).
        let sink = Arc::new(LogSink::new(LogTarget::File(path.clone())).unwrap());
        let mut log = AccessLog::new(LogFormat::Common, Arc::clone(&sink));
        std::fs::rename(&path, dir.join("access.log.1")).unwrap();
        sink.reopen();
        log.record(&entry());
        log.flush();
        sink.sync();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), line(LogFormat::Common, &entry()));
        drop(log);
        drop(sink);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn dropping_a_sink_never_waits_for_a_stuck_writer() {
        let cap = Capture::blocked();
        let sink = Arc::new(LogSink::with_writer(Box::new(cap.clone()), 4).unwrap());
        let mut log = AccessLog::new(LogFormat::Common, Arc::clone(&sink));
        log.record(&entry());
        log.flush(); // the writer takes it and blocks
        log.record(&entry());
        log.flush(); // queued behind it
        assert!(!sink.sync_within(Duration::from_millis(200)), "the writer is stuck");
        let start = std::time::Instant::now();
        drop(log);
        drop(sink); // the last reference, as on a worker after a reload
        assert!(start.elapsed() < Duration::from_millis(100), "{:?}", start.elapsed());
        // The detached writer still finishes the queue once unblocked.
        cap.release();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while cap.text().lines().count() < 2 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(cap.text().lines().count(), 2);
    }

    #[test]
    fn a_bad_path_fails_at_start() {
        let e = LogSink::new(LogTarget::File("/nonexistent-dir/x/access.log".into())).unwrap_err();
        assert!(e.to_string().contains("/nonexistent-dir/x/access.log"), "{e}");
    }

    #[test]
    fn targets_and_formats_parse() {
        assert_eq!(LogTarget::parse("-"), LogTarget::Stdout);
        assert_eq!(LogTarget::parse("stdout"), LogTarget::Stdout);
        assert_eq!(
            LogTarget::parse("/var/log/sluice/access.log"),
            LogTarget::File("/var/log/sluice/access.log".into())
        );
        assert_eq!("common".parse::<LogFormat>(), Ok(LogFormat::Common));
        assert_eq!("json".parse::<LogFormat>(), Ok(LogFormat::Json));
        assert!("xml".parse::<LogFormat>().is_err());
    }
}
