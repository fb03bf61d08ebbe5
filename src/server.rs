//! Process start-up: binds every listener (so a port in use is one clear error before
//! any thread starts), then starts one pinned worker per CPU of the affinity mask the
//! process was started with, each with its own `SO_REUSEPORT` sockets.

use crate::config::Config;
use crate::conn::Role;
use crate::stats::WorkerStats;
use crate::worker::{self, WorkerSetup};
use socket2::{Domain, Protocol, Socket, Type};
use std::fmt;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicBool;
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
    TcpListener::bind(addr).map(drop).map_err(|e| StartError(format!("cannot listen on {addr} ({what}): {e}")))
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

/// Runs the proxy until every worker stops.
pub fn run(config: Config) -> Result<(), StartError> {
    let allowed =
        uring::sys::allowed_cpus().map_err(|e| StartError(format!("cannot read the CPU affinity mask: {e}")))?;
    let cpus = plan_cpus(&allowed, config.workers);
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
    let config = Arc::new(config);
    let stats: Arc<[WorkerStats]> = (0..cpus.len()).map(|_| WorkerStats::default()).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let via = via_token();
    let mut threads = Vec::new();
    for (index, (cpu, listeners)) in cpus.iter().zip(per_worker).enumerate() {
        let setup = WorkerSetup {
            index,
            cpu: *cpu,
            cfg: config.clone(),
            stats: stats.clone(),
            listeners,
            via: via.clone(),
            stop: stop.clone(),
            ca: ca.clone(),
            upstream_tls: upstream_tls.clone(),
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
    eprintln!("sluice: listening on {}; {} workers on CPUs [{}]", listening.join(", "), cpus.len(), cpu_list.join(","));
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
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
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
