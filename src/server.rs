//! Process start-up: binds every listener (so a port in use is one clear error before
//! any thread starts), then starts one pinned worker per CPU of the affinity mask the
//! process was started with, each with its own `SO_REUSEPORT` sockets.

use crate::accesslog::{LogSink, LogTarget};
use crate::config::Config;
use crate::conn::Role;
use crate::control::Control;
use crate::notify::Notifier;
use crate::stats::WorkerStats;
use crate::worker::{self, WorkerSetup};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

/// A start-up failure an operator can act on (port in use, bad CPU set, ...).
#[derive(Debug)]
pub struct StartError(pub String);

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

fn listen_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Checks that nobody else listens on `addr`: `SO_REUSEPORT` alone would let a second
/// instance of the same user share the port silently.
fn probe(addr: SocketAddr, what: &str) -> Result<(), StartError> {
    // Bind without listening: a probe that listened would accept (and then reset) any
    // client that connected in the instant before it was dropped.
    let fail = |e: std::io::Error| StartError(format!("cannot listen on {addr} ({what}): {e}"));
    let s = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), Some(Protocol::TCP)).map_err(fail)?;
    s.set_reuse_address(true).map_err(fail)?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(fail)?;
    }
    s.bind(&addr.into()).map_err(fail)
}

/// A per-process pseudonym for the Via header, so a request that comes back to this
/// very proxy is recognised as a loop while chains of different proxies still work.
fn via_token() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("sluice-{:06x}", h.finish() & 0xff_ffff)
}

/// Which CPUs the workers go on, inside the mask the process was started with.
pub fn plan_cpus(allowed: &[usize], workers: Option<usize>) -> Vec<Option<usize>> {
    let n = workers.unwrap_or(allowed.len()).max(1);
    (0..n).map(|i| if allowed.is_empty() { None } else { Some(allowed[i % allowed.len()]) }).collect()
}

/// Re-reads the configuration (the same file and flags as at start-up), for SIGHUP.
pub type Reloader = Box<dyn Fn() -> Result<Config, String> + Send>;

fn open_access_log(config: &Config) -> Result<Option<Arc<LogSink>>, String> {
    match &config.access_log {
        None => Ok(None),
        Some(target) => LogSink::new(LogTarget::parse(target))
            .map(|s| Some(Arc::new(s)))
            .map_err(|e| format!("access_log {target}: {e}")),
    }
}

/// Runs the proxy until SIGTERM/SIGINT has drained it.
pub fn run(config: Config, reload: Reloader) -> Result<(), StartError> {
    let allowed =
        crate::sys::allowed_cpus().map_err(|e| StartError(format!("cannot read the CPU affinity mask: {e}")))?;
    let cpus = plan_cpus(&allowed, config.workers);
    let nofile = crate::sys::raise_nofile();
    let fd_clients = crate::sys::clients_per_worker(nofile, cpus.len());
    if let Some(cap) = config.limits.max_connections_per_worker.filter(|&c| c as u64 > fd_clients) {
        eprintln!(
            "sluice: warning: limits.max_connections_per_worker = {cap} cannot be met: RLIMIT_NOFILE {nofile} \
             for {} workers at 2 descriptors per client leaves room for {fd_clients} each; raise LimitNOFILE",
            cpus.len()
        );
    }
    let mut addrs: Vec<(SocketAddr, Role)> = config.listen.iter().map(|a| (*a, Role::Proxy)).collect();
    if let Some(a) = config.admin {
        addrs.push((a, Role::Admin));
    }
    for (a, role) in &addrs {
        probe(*a, if *role == Role::Admin { "admin" } else { "proxy" })?;
    }
    let mut per_worker = Vec::new();
    for _ in &cpus {
        let mut ls = Vec::new();
        for (a, role) in &addrs {
            let l = listen_reuseport(*a).map_err(|e| StartError(format!("cannot listen on {a}: {e}")))?;
            ls.push((l, *role));
        }
        per_worker.push(ls);
    }
    let (ca, created) = crate::tls::ca::load_or_create(&config.ca_dir).map_err(|e| StartError(format!("CA: {e}")))?;
    if created {
        eprintln!(
            "sluice: created a new interception CA in {}; clients must trust {}/ca.pem (see CA/README.md)",
            config.ca_dir.display(),
            config.ca_dir.display()
        );
    }
    let ca = Arc::new(ca);
    let upstream_tls = crate::tls::upstream::client_config(&config.upstream_ca).map_err(StartError)?;
    let access = open_access_log(&config).map_err(StartError)?;
    let signals = Signals::new([SIGTERM, SIGINT, SIGHUP])
        .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;
    let config = Arc::new(config);
    let control = Arc::new(Control::new(config.clone()));
    control.set_access_log(access);
    let stats: Arc<[WorkerStats]> = (0..cpus.len()).map(|_| WorkerStats::default()).collect();
    let via = via_token();
    control.expect_workers(cpus.len());
    let mut threads = Vec::new();
    for (index, (cpu, listeners)) in cpus.iter().zip(per_worker).enumerate() {
        let setup = WorkerSetup {
            index,
            cpu: *cpu,
            cfg: config.clone(),
            stats: stats.clone(),
            listeners,
            via: via.clone(),
            control: control.clone(),
            ca: ca.clone(),
            upstream_tls: upstream_tls.clone(),
            fd_clients,
        };
        let t = std::thread::Builder::new()
            .name(format!("sluice-w{index}"))
            .spawn(move || worker::run(setup))
            .map_err(|e| StartError(format!("cannot start worker {index}: {e}")))?;
        threads.push(t);
    }
    let listening: Vec<String> =
        addrs.iter().map(|(a, r)| format!("{a} ({})", if *r == Role::Admin { "admin" } else { "proxy" })).collect();
    let cpu_list: Vec<String> = cpus.iter().map(|c| c.map_or("-".into(), |c| c.to_string())).collect();
    let per_worker = config.limits.client_cap(fd_clients);
    eprintln!(
        "sluice: listening on {}; {} workers on CPUs [{}], up to {per_worker} clients each",
        listening.join(", "),
        cpus.len(),
        cpu_list.join(",")
    );
    let notifier = Notifier::from_env().unwrap_or_else(|e| {
        eprintln!("sluice: not notifying systemd: {e}");
        Notifier::disabled()
    });
    let _ = notifier.ready_with_status(&format!("serving on {}", listening.join(", ")));

    let handle = signals.handle();
    let watcher = {
        let control = control.clone();
        std::thread::Builder::new()
            .name("sluice-signals".into())
            .spawn(move || signal_loop(signals, control, reload, notifier))
            .map_err(|e| StartError(format!("cannot start the signal thread: {e}")))?
    };
    let mut first_error = None;
    for t in threads {
        match t.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(StartError(format!("worker stopped: {e}")));
            }
            Err(_) => {
                first_error.get_or_insert(StartError("a worker panicked".into()));
            }
        }
    }
    handle.close();
    let _ = watcher.join();
    if let Some(sink) = control.access_log() {
        sink.sync();
    }
    match first_error {
        Some(e) => Err(e),
        None => {
            eprintln!("sluice: drained, exiting");
            Ok(())
        }
    }
}

/// SIGHUP reloads; SIGTERM/SIGINT start the drain (a second one does not hurry it: the
/// drain deadline bounds it).
fn signal_loop(mut signals: Signals, control: Arc<Control>, reload: Reloader, notifier: Notifier) {
    for sig in signals.forever() {
        match sig {
            SIGHUP => {
                let _ = notifier.reloading();
                let old = control.current();
                match reload() {
                    Ok(mut new) => {
                        let fixed = old.reloadable_diff(&new);
                        if !fixed.is_empty() {
                            eprintln!(
                                "sluice: reload: {} need a restart; keeping the running values",
                                fixed.join(", ")
                            );
                            keep_fixed(&old, &mut new);
                        }
                        match open_access_log(&new) {
                            Ok(sink) => {
                                if let Err(e) = crate::logging::reload(&new) {
                                    eprintln!("sluice: reload: keeping the log level: {e}");
                                }
                                control.set_access_log(sink);
                                control.publish(Arc::new(new));
                                eprintln!("sluice: reloaded the configuration");
                            }
                            Err(e) => eprintln!("sluice: reload refused, keeping the old configuration: {e}"),
                        }
                    }
                    Err(e) => eprintln!("sluice: reload refused, keeping the old configuration: {e}"),
                }
                let _ = notifier.ready();
            }
            SIGTERM | SIGINT if !control.draining() => {
                eprintln!("sluice: draining (up to {:?})", control.current().timeouts.drain);
                let _ = notifier.stopping();
                control.start_drain();
            }
            _ => {}
        }
    }
}

/// Copies the settings fixed at start-up from the running config.
fn keep_fixed(old: &Config, new: &mut Config) {
    new.listen = old.listen.clone();
    new.quic_listen = old.quic_listen.clone();
    new.admin = old.admin;
    new.workers = old.workers;
    new.slabs_per_worker = old.slabs_per_worker;
    new.ca_dir = old.ca_dir.clone();
    new.upstream_ca = old.upstream_ca.clone();
    new.cert_cache_size = old.cert_cache_size;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_stay_inside_the_affinity_mask() {
        assert_eq!(plan_cpus(&[1], None), vec![Some(1)]);
        assert_eq!(plan_cpus(&[2, 5], None), vec![Some(2), Some(5)]);
        assert_eq!(plan_cpus(&[3], Some(2)), vec![Some(3), Some(3)]);
        assert_eq!(plan_cpus(&[0, 1, 2, 3], Some(2)), vec![Some(0), Some(1)]);
    }

    #[test]
    fn a_port_in_use_is_one_clear_error() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let err = probe(addr, "proxy").unwrap_err().to_string();
        assert!(err.contains(&addr.to_string()) && err.contains("in use"), "{err}");
    }
}
