//! The resolver's helper thread, one per worker: every lookup of that worker is in
//! flight at once on its own sockets, multiplexed with poll(2), so a name whose
//! nameserver never answers delays no other. The worker sends jobs (resolve, cancel,
//! reconfigure) over a channel and writes a byte to a pipe the thread polls; the thread
//! sends reports (answers, a changed hosts file) back the same way, on the pipe the
//! worker's ring polls. Both pipes are non-blocking: a full pipe already means "wake up".
//!
//! The thread also watches the stub resolver file and the hosts file (see `files`), so
//! the worker never reads a file after it started.

use super::files::{HostsTable, Watched};
use super::inflight::{InFlight, Outcome, SocketRef};
use super::settings::{Settings, Source};
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::pipe::PipeFlags;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What the worker asks of its helper.
#[derive(Debug)]
pub(super) enum Job {
    Resolve(String),
    /// Nobody waits for this name any more: drop its lookup.
    Cancel(String),
    /// The config was reloaded.
    Reconfigure(Source),
}

/// What the helper tells its worker.
#[derive(Debug)]
pub(super) enum Report {
    Answer {
        name: String,
        outcome: Outcome,
    },
    /// The hosts file changed: its new table.
    Hosts(HostsTable),
}

/// The longest the thread sleeps with nothing to do (it looks at its files then).
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// The worker's end of its helper thread.
pub(super) struct Helper {
    jobs: mpsc::Sender<Job>,
    /// Write end: a job is waiting.
    nudge: OwnedFd,
    pub reports: mpsc::Receiver<Report>,
    /// Read end, polled by the worker's ring: reports are waiting.
    woken: OwnedFd,
}

impl Helper {
    /// Starts the helper thread of worker `worker`; `hosts` was read by the caller.
    pub(super) fn spawn(source: Source, hosts: Watched, worker: usize) -> std::io::Result<Helper> {
        let (jobs, job_rx) = mpsc::channel();
        let (report_tx, reports) = mpsc::channel();
        let flags = PipeFlags::CLOEXEC | PipeFlags::NONBLOCK;
        let (nudged, nudge) = rustix::pipe::pipe_with(flags)?;
        let (woken, wake) = rustix::pipe::pipe_with(flags)?;
        std::thread::Builder::new().name(format!("sluice-dns-{worker}")).spawn(move || {
            let _span = tracing::error_span!("dns", worker).entered();
            let now = Instant::now();
            let mut resolv_conf = Watched::new(source.resolv_conf.clone());
            let settings = Settings::new(&source, &resolv_conf.read(now));
            let client = Client {
                jobs: job_rx,
                nudged,
                reports: report_tx,
                wake,
                resolv_conf,
                hosts,
                source,
                settings,
                lookups: Vec::new(),
                rotation: 0,
            };
            client.run();
        })?;
        Ok(Helper { jobs, nudge, reports, woken })
    }

    /// Hands a job to the thread; false when it is gone.
    pub(super) fn send(&self, job: Job) -> bool {
        if self.jobs.send(job).is_err() {
            return false;
        }
        let _ = rustix::io::write(&self.nudge, &[1]);
        true
    }

    pub(super) fn wake_fd(&self) -> RawFd {
        self.woken.as_raw_fd()
    }

    /// Empties the wake pipe; call before taking the reports, so that a report sent
    /// after this leaves the pipe readable.
    pub(super) fn drain_wakes(&self) {
        drain(&self.woken);
    }
}

/// Reads a non-blocking pipe until it is empty; false at end of file (the writer is gone).
fn drain(fd: &OwnedFd) -> bool {
    let mut sink = [0u8; 256];
    loop {
        match rustix::io::read(fd, &mut sink) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return true,
        }
    }
}

/// The thread's state.
struct Client {
    jobs: mpsc::Receiver<Job>,
    nudged: OwnedFd,
    reports: mpsc::Sender<Report>,
    wake: OwnedFd,
    resolv_conf: Watched,
    hosts: Watched,
    source: Source,
    settings: Settings,
    lookups: Vec<InFlight>,
    /// The next lookup's first nameserver (`options rotate`).
    rotation: usize,
}

impl Client {
    fn run(mut self) {
        let mut ready: Vec<(usize, SocketRef)> = Vec::new();
        loop {
            let now = Instant::now();
            self.watch_files(now);
            for l in &mut self.lookups {
                l.on_time(&self.settings, now);
            }
            if !self.report_finished() {
                return;
            }
            let next = self.lookups.iter().map(InFlight::due).fold(now + IDLE_WAKE, Instant::min);
            let next = next.min(self.resolv_conf.next_check()).min(self.hosts.next_check());
            let nudged = match self.poll(next.saturating_duration_since(now), &mut ready) {
                Ok(nudged) => nudged,
                Err(e) => {
                    tracing::error!(error = %e, "resolver: poll failed");
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            let now = Instant::now();
            for (i, socket) in ready.drain(..) {
                if let Some(l) = self.lookups.get_mut(i) {
                    l.on_ready(socket, &self.settings, now);
                }
            }
            if nudged && !self.take_jobs(now) {
                return;
            }
            if !self.report_finished() {
                return;
            }
        }
    }

    /// Waits for a socket, a job or the time `wait`; fills `ready` with the lookups'
    /// sockets that are ready and says whether jobs came.
    fn poll(&self, wait: Duration, ready: &mut Vec<(usize, SocketRef)>) -> rustix::io::Result<bool> {
        let mut fds = vec![PollFd::new(&self.nudged, PollFlags::IN)];
        let mut owners = Vec::new();
        for (i, l) in self.lookups.iter().enumerate() {
            l.sockets(|fd, write, socket| {
                fds.push(PollFd::from_borrowed_fd(fd, if write { PollFlags::OUT } else { PollFlags::IN }));
                owners.push((i, socket));
            });
        }
        // At least a millisecond: what was due has just been handled, and a lookup that
        // stays due cannot turn this loop into a busy one.
        let wait = Timespec::try_from(wait.max(Duration::from_millis(1))).unwrap_or(Timespec { tv_sec: 1, tv_nsec: 0 });
        match rustix::event::poll(&mut fds, Some(&wait)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => return Ok(false),
            Err(e) => return Err(e),
        }
        for (fd, owner) in fds[1..].iter().zip(owners) {
            if !fd.revents().is_empty() {
                ready.push(owner);
            }
        }
        Ok(!fds[0].revents().is_empty())
    }

    /// Takes every job waiting; false when the worker is gone.
    fn take_jobs(&mut self, now: Instant) -> bool {
        let open = drain(&self.nudged);
        loop {
            match self.jobs.try_recv() {
                Ok(Job::Resolve(name)) => {
                    if self.lookups.iter().any(|l| l.name == name) {
                        continue;
                    }
                    let first = self.rotation;
                    if self.settings.rotate {
                        self.rotation = self.rotation.wrapping_add(1);
                    }
                    self.lookups.push(InFlight::start(name, &self.settings, first, now));
                }
                Ok(Job::Cancel(name)) => {
                    if let Some(i) = self.lookups.iter().position(|l| l.name == name) {
                        // Dropping the lookup closes its sockets: no retry, no late answer.
                        self.lookups.swap_remove(i);
                    }
                }
                Ok(Job::Reconfigure(source)) => self.reconfigure(source, now),
                Err(mpsc::TryRecvError::Empty) => return open,
                Err(mpsc::TryRecvError::Disconnected) => return false,
            }
        }
    }

    fn reconfigure(&mut self, source: Source, now: Instant) {
        if source.hosts_file != self.hosts.path() {
            // Read at once by `watch_files` (a new watch has not read its file yet).
            self.hosts = Watched::new(source.hosts_file.clone());
        }
        if source.resolv_conf != self.resolv_conf.path() {
            self.resolv_conf = Watched::new(source.resolv_conf.clone());
        }
        self.source = source;
        let text = self.resolv_conf.read(now);
        self.settings = Settings::new(&self.source, &text);
    }

    /// Reads the stub resolver file and the hosts file again when they changed.
    fn watch_files(&mut self, now: Instant) {
        if let Some(text) = self.resolv_conf.changed(now) {
            tracing::info!(file = %self.resolv_conf.path().display(), "resolver: read again (it changed)");
            self.settings = Settings::new(&self.source, &text);
        }
        if let Some(text) = self.hosts.changed(now) {
            tracing::info!(file = %self.hosts.path().display(), "resolver: read again (it changed)");
            let _ = self.reports.send(Report::Hosts(HostsTable::parse(&text)));
            let _ = rustix::io::write(&self.wake, &[1]);
        }
    }

    /// Sends the answers of finished lookups and wakes the worker; false when the worker
    /// is gone.
    fn report_finished(&mut self) -> bool {
        let mut sent = false;
        let mut i = 0;
        while i < self.lookups.len() {
            if self.lookups[i].outcome.is_none() {
                i += 1;
                continue;
            }
            let l = self.lookups.swap_remove(i);
            let Some(outcome) = l.outcome else { continue };
            if self.reports.send(Report::Answer { name: l.name, outcome }).is_err() {
                return false;
            }
            sent = true;
        }
        if sent {
            let _ = rustix::io::write(&self.wake, &[1]);
        }
        true
    }
}
