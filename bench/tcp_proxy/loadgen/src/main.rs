//! Load generator and upstream servers for the TCP proxy benchmark.
//!
//! ```text
//! tcp-loadgen serve --echo ADDR --source ADDR
//!     upstreams on one mio thread: `echo` writes back what it reads; `source` writes an
//!     endless stream (and discards what it reads). Prints `ready` once bound.
//! tcp-loadgen bulk --target ADDR --conns N --secs S [--warmup W]
//!     N connections reading from a source through the proxy; prints received MB/s.
//! tcp-loadgen rate --target ADDR --conns N --secs S [--size B]
//!     N loops of connect, write B bytes, read the echo, close; prints connections/s.
//! tcp-loadgen hold --target ADDR --conns N
//!     opens N connections, checks each with an echo, prints `ready`, keeps them until
//!     stdin closes.
//! ```
//!
//! Results are one JSON object per run on stdout.

use std::collections::HashMap;
use std::io::{self, BufRead, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream as MioStream};
use mio::{Events, Interest, Poll, Token};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((mode, rest)) = args.split_first() else {
        usage();
    };
    let opts = parse_opts(rest);
    let result = match mode.as_str() {
        "serve" => serve(addr(&opts, "echo"), addr(&opts, "source")),
        "bulk" => bulk(
            addr(&opts, "target"),
            num(&opts, "conns", 4),
            num(&opts, "secs", 5),
            num(&opts, "warmup", 1),
        ),
        "rate" => rate(
            addr(&opts, "target"),
            num(&opts, "conns", 16),
            num(&opts, "secs", 5),
            num(&opts, "size", 64),
        ),
        "hold" => hold(addr(&opts, "target"), num(&opts, "conns", 1000)),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("tcp-loadgen {mode}: {e}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!("usage: tcp-loadgen serve|bulk|rate|hold --option value ... (see the source)");
    std::process::exit(2);
}

fn parse_opts(args: &[String]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let Some(k) = k.strip_prefix("--") else {
            usage();
        };
        let Some(v) = it.next() else { usage() };
        out.insert(k.to_string(), v.clone());
    }
    out
}

fn addr(opts: &HashMap<String, String>, key: &str) -> SocketAddr {
    opts.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            eprintln!("--{key} ADDR is required");
            std::process::exit(2)
        })
}

fn num(opts: &HashMap<String, String>, key: &str, default: u64) -> u64 {
    opts.get(key).map_or(default, |v| {
        v.parse().unwrap_or_else(|_| {
            eprintln!("--{key} must be a number");
            std::process::exit(2)
        })
    })
}

// ---------------------------------------------------------------------------------------
// Upstreams.

const ECHO: Token = Token(usize::MAX - 1);
const SOURCE: Token = Token(usize::MAX - 2);

struct Conn {
    stream: MioStream,
    source: bool,
    /// Echo: bytes read but not yet written back.
    pending: Vec<u8>,
}

extern "C" {
    fn listen(fd: i32, backlog: i32) -> i32;
}

/// Binds with a deep accept queue: mio's (and std's) 128 overflows when a proxy opens
/// hundreds of upstream connections at once, and a dropped SYN costs a 1 s retransmit.
fn bind_deep(addr: SocketAddr) -> io::Result<TcpListener> {
    use std::os::fd::AsRawFd;
    let l = TcpListener::bind(addr)?;
    // SAFETY: listen(2) on a socket we own; calling it again only raises the backlog.
    if unsafe { listen(l.as_raw_fd(), 4096) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(l)
}

fn serve(echo: SocketAddr, source: SocketAddr) -> io::Result<()> {
    let mut poll = Poll::new()?;
    let mut echo_l = bind_deep(echo)?;
    let mut source_l = bind_deep(source)?;
    poll.registry()
        .register(&mut echo_l, ECHO, Interest::READABLE)?;
    poll.registry()
        .register(&mut source_l, SOURCE, Interest::READABLE)?;
    println!("ready");
    io::stdout().flush()?;
    let payload = vec![0x5au8; 256 * 1024];
    let mut buf = vec![0u8; 256 * 1024];
    let mut conns: HashMap<usize, Conn> = HashMap::new();
    let mut next = 0usize;
    let mut events = Events::with_capacity(1024);
    loop {
        poll.poll(&mut events, None)?;
        for ev in events.iter() {
            match ev.token() {
                t @ (ECHO | SOURCE) => {
                    let listener = if t == ECHO {
                        &mut echo_l
                    } else {
                        &mut source_l
                    };
                    loop {
                        match listener.accept() {
                            Ok((mut stream, _)) => {
                                let _ = stream.set_nodelay(true);
                                next += 1;
                                poll.registry().register(
                                    &mut stream,
                                    Token(next),
                                    Interest::READABLE | Interest::WRITABLE,
                                )?;
                                conns.insert(
                                    next,
                                    Conn {
                                        stream,
                                        source: t == SOURCE,
                                        pending: Vec::new(),
                                    },
                                );
                            }
                            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                            Err(_) => break,
                        }
                    }
                }
                Token(id) => {
                    let Some(c) = conns.get_mut(&id) else {
                        continue;
                    };
                    if !drive(c, &payload, &mut buf) {
                        if let Some(mut c) = conns.remove(&id) {
                            let _ = poll.registry().deregister(&mut c.stream);
                        }
                    }
                }
            }
        }
    }
}

/// Moves what can move on one upstream connection; false when it is finished.
fn drive(c: &mut Conn, payload: &[u8], buf: &mut [u8]) -> bool {
    if c.source {
        loop {
            match c.stream.read(buf) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        loop {
            match c.stream.write(payload) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }
    loop {
        if !c.pending.is_empty() {
            match c.stream.write(&c.pending) {
                Ok(n) => {
                    c.pending.drain(..n);
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
        }
        match c.stream.read(buf) {
            Ok(0) => {
                let _ = c.stream.shutdown(Shutdown::Write);
                return false;
            }
            Ok(n) => match c.stream.write(&buf[..n]) {
                Ok(w) => c.pending.extend_from_slice(&buf[w..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    c.pending.extend_from_slice(&buf[..n])
                }
                Err(_) => return false,
            },
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Clients.

fn bulk(target: SocketAddr, conns: u64, secs: u64, warmup: u64) -> io::Result<()> {
    let received = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut streams = Vec::new();
    let mut threads = Vec::new();
    for _ in 0..conns {
        let mut s = TcpStream::connect(target)?;
        // A byte to wake proxies that wait for the client to speak first (none do here).
        s.write_all(b"g")?;
        streams.push(s.try_clone()?);
        let received = received.clone();
        let stop = stop.clone();
        threads.push(thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            while !stop.load(Ordering::Relaxed) {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    thread::sleep(Duration::from_secs(warmup));
    let start_bytes = received.load(Ordering::Relaxed);
    let start = Instant::now();
    thread::sleep(Duration::from_secs(secs));
    let bytes = received.load(Ordering::Relaxed) - start_bytes;
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let total = received.load(Ordering::Relaxed);
    for s in &streams {
        let _ = s.shutdown(Shutdown::Both);
    }
    for t in threads {
        let _ = t.join();
    }
    if bytes == 0 {
        return Err(io::Error::other("no data received through the proxy"));
    }
    println!(
        "{{\"bytes\":{bytes},\"total_bytes\":{total},\"secs\":{elapsed:.3},\"mb_per_s\":{:.1}}}",
        bytes as f64 / elapsed / 1e6
    );
    Ok(())
}

fn rate(target: SocketAddr, conns: u64, secs: u64, size: u64) -> io::Result<()> {
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let msg = vec![b'x'; size as usize];
    let mut threads = Vec::new();
    for _ in 0..conns {
        let done = done.clone();
        let errors = errors.clone();
        let stop = stop.clone();
        let msg = msg.clone();
        threads.push(thread::spawn(move || {
            let mut back = vec![0u8; msg.len()];
            while !stop.load(Ordering::Relaxed) {
                let ok = (|| -> io::Result<()> {
                    let mut s = TcpStream::connect(target)?;
                    s.set_nodelay(true)?;
                    s.set_read_timeout(Some(Duration::from_secs(10)))?;
                    s.write_all(&msg)?;
                    s.read_exact(&mut back)?;
                    Ok(())
                })();
                match ok {
                    Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    let start = Instant::now();
    thread::sleep(Duration::from_secs(secs));
    let n = done.load(Ordering::Relaxed);
    let elapsed = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        let _ = t.join();
    }
    println!(
        "{{\"connections\":{n},\"errors\":{},\"secs\":{elapsed:.3},\"per_s\":{:.1}}}",
        errors.load(Ordering::Relaxed),
        n as f64 / elapsed
    );
    Ok(())
}

fn hold(target: SocketAddr, conns: u64) -> io::Result<()> {
    let mut held = Vec::with_capacity(conns as usize);
    for _ in 0..conns {
        let mut s = TcpStream::connect(target)?;
        s.write_all(b"hi")?;
        held.push(s);
    }
    let mut back = [0u8; 2];
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        s.read_exact(&mut back)?;
    }
    println!("ready");
    io::stdout().flush()?;
    // Keep them until the caller is done measuring.
    let mut line = String::new();
    let _ = io::stdin().lock().read_line(&mut line);
    Ok(())
}
