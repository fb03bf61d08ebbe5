//! A nameserver for the resolver's tests: a real UDP socket and a TCP listener on one
//! port of 127.0.0.1, real DNS messages, and what to send back chosen by the test for
//! each query. It records every question it was asked.

use super::wire::{self, Family};
use hickory_proto::op::Message;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How a query came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// One thing the server sends back.
pub enum Out {
    /// A message from the server's own address.
    Reply(Vec<u8>),
    /// A message from another port of the same host (a spoofed answer).
    FromElsewhere(Vec<u8>),
}

/// One question the server was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    pub name: String,
    pub family: Family,
    pub transport: Transport,
}

type Behaviour = dyn Fn(&Message, Transport) -> Vec<Out> + Send + Sync;

pub struct FakeDns {
    pub addr: SocketAddr,
    asked: Arc<Mutex<Vec<Asked>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl FakeDns {
    /// A server that answers each query with what `behave` returns (nothing: silence).
    pub fn start(behave: impl Fn(&Message, Transport) -> Vec<Out> + Send + Sync + 'static) -> FakeDns {
        // A UDP port the kernel picked, and the TCP listener on the same port (a retry of a
        // truncated answer goes there). That port may be in use for TCP (another test's
        // client connection has it as its source port): then pick another.
        let (udp, tcp, addr) = (0..100)
            .find_map(|_| {
                let udp = UdpSocket::bind("127.0.0.1:0").ok()?;
                let addr = udp.local_addr().ok()?;
                let tcp = TcpListener::bind(addr).ok()?;
                Some((udp, tcp, addr))
            })
            .expect("a port free for both UDP and TCP");
        udp.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
        tcp.set_nonblocking(true).unwrap();
        let behave: Arc<Behaviour> = Arc::new(behave);
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let udp_thread = {
            let (behave, asked, stop) = (behave.clone(), asked.clone(), stop.clone());
            std::thread::spawn(move || serve_udp(udp, &*behave, &asked, &stop))
        };
        let tcp_thread = {
            let (behave, asked, stop) = (behave, asked.clone(), stop.clone());
            std::thread::spawn(move || serve_tcp(tcp, &*behave, &asked, &stop))
        };
        FakeDns { addr, asked, stop, threads: vec![udp_thread, tcp_thread] }
    }

    /// Every question asked so far.
    pub fn asked(&self) -> Vec<Asked> {
        self.asked.lock().unwrap().clone()
    }

    /// How many queries for `name` (any family, any transport) came.
    pub fn count(&self, name: &str) -> usize {
        self.asked().iter().filter(|a| a.name == name).count()
    }
}

impl Drop for FakeDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn record(asked: &Mutex<Vec<Asked>>, query: &Message, transport: Transport) {
    let (name, family) = wire::build::question(query);
    asked.lock().unwrap().push(Asked { name, family, transport });
}

fn serve_udp(sock: UdpSocket, behave: &Behaviour, asked: &Mutex<Vec<Asked>>, stop: &AtomicBool) {
    let elsewhere = UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut buf = [0u8; 4096];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, from)) = sock.recv_from(&mut buf) else { continue };
        let Some(query) = wire::decode(&buf[..n]) else { continue };
        record(asked, &query, Transport::Udp);
        for send in behave(&query, Transport::Udp) {
            let _ = match send {
                Out::Reply(bytes) => sock.send_to(&bytes, from),
                Out::FromElsewhere(bytes) => elsewhere.send_to(&bytes, from),
            };
        }
    }
}

fn serve_tcp(listener: TcpListener, behave: &Behaviour, asked: &Mutex<Vec<Asked>>, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let mut conn = match listener.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            Err(_) => continue,
        };
        let _ = answer_tcp(&mut conn, behave, asked);
    }
}

fn answer_tcp(conn: &mut TcpStream, behave: &Behaviour, asked: &Mutex<Vec<Asked>>) -> std::io::Result<()> {
    conn.set_nonblocking(false)?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    let mut len = [0u8; 2];
    conn.read_exact(&mut len)?;
    let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
    conn.read_exact(&mut msg)?;
    let Some(query) = wire::decode(&msg) else { return Ok(()) };
    record(asked, &query, Transport::Tcp);
    for send in behave(&query, Transport::Tcp) {
        if let Out::Reply(bytes) = send {
            conn.write_all(&(bytes.len() as u16).to_be_bytes())?;
            conn.write_all(&bytes)?;
        }
    }
    Ok(())
}
