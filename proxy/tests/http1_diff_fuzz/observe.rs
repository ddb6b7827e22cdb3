//! The fuzzer's two ends around one proxy: a recording upstream that keeps every request
//! the proxy forwards and answers as the case says, and a client that sends a case's bytes
//! and reads what comes back. A case's observation is complete when the client has its
//! responses (or the connection ended) and no request is half-way through the upstream:
//! facts, with a deadline only as the verdict for a proxy that stalls.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::message::{parse, Kind, Message, Parsed};

/// How long a proxy may take over one case before it is said to stall.
const CASE_DEADLINE: Duration = Duration::from_secs(2);

/// The upstream's answer to every request: `None` for a plain `200 ok` on a kept-alive
/// connection, else these bytes followed by the connection's close.
type Reply = Option<Vec<u8>>;

/// A recording upstream.
pub struct Recorder {
    pub addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    seen: Arc<Mutex<Vec<Message>>>,
    /// Connections holding part of a request.
    partial: Arc<AtomicUsize>,
    /// Connections the upstream closed after a scripted response that the proxy has not
    /// closed yet: until it has, it might still pick one for the next request.
    closing: Arc<AtomicUsize>,
    /// Whether [`Recorder::settle`] waits for those closes (see [`Recorder::start`]).
    await_closes: bool,
}

impl Recorder {
    /// `await_closes`: each case waits until the proxy has closed the connections the
    /// upstream closed. Envoy needs it: its pool drops a connection when it reads the close,
    /// and a request that comes first is written to the dead connection and answered `503`
    /// (it sends a request once). Courier checks an idle connection for a close as it takes
    /// it from the pool, and closes it only then, so waiting would never end.
    pub fn start(await_closes: bool) -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the recording upstream");
        let addr = listener.local_addr().expect("recording upstream address");
        let reply = Arc::new(Mutex::new(None));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let partial = Arc::new(AtomicUsize::new(0));
        let closing = Arc::new(AtomicUsize::new(0));
        let (r, s, p, c) = (
            reply.clone(),
            seen.clone(),
            partial.clone(),
            closing.clone(),
        );
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (r, s, p, c) = (r.clone(), s.clone(), p.clone(), c.clone());
                std::thread::spawn(move || serve(stream, &r, &s, &p, &c));
            }
        });
        Recorder {
            addr,
            reply,
            seen,
            partial,
            closing,
            await_closes,
        }
    }

    /// Sets how the next requests are answered and forgets what was seen.
    pub fn reset(&self, reply: Reply) {
        *self.reply.lock().expect("reply lock") = reply;
        self.seen.lock().expect("seen lock").clear();
    }

    /// Waits until no connection holds part of a request (the proxy finished or gave up
    /// forwarding) and the proxy has closed every connection the upstream closed, then
    /// returns what was forwarded whole. `None`: still partial at the deadline.
    pub fn settle(&self) -> Option<Vec<Message>> {
        let deadline = Instant::now() + CASE_DEADLINE;
        let busy = || {
            self.partial.load(Ordering::SeqCst) > 0
                || (self.await_closes && self.closing.load(Ordering::SeqCst) > 0)
        };
        while busy() {
            if Instant::now() > deadline {
                return None;
            }
            std::thread::yield_now();
            std::thread::sleep(Duration::from_millis(1));
        }
        Some(self.seen.lock().expect("seen lock").clone())
    }
}

fn serve(
    mut stream: TcpStream,
    reply: &Mutex<Reply>,
    seen: &Mutex<Vec<Message>>,
    partial: &AtomicUsize,
    closing: &AtomicUsize,
) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut counted = false;
    let set_partial = |on: bool, counted: &mut bool| {
        if on != *counted {
            if on {
                partial.fetch_add(1, Ordering::SeqCst);
            } else {
                partial.fetch_sub(1, Ordering::SeqCst);
            }
            *counted = on;
        }
    };
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        loop {
            match parse(&buf, Kind::Request, false) {
                Parsed::Complete(msg, used) => {
                    buf.drain(..used);
                    seen.lock().expect("seen lock").push(msg);
                    let answer = reply.lock().expect("reply lock").clone();
                    let written = match &answer {
                        None => stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"),
                        Some(bytes) => stream.write_all(bytes),
                    };
                    if answer.is_some() || written.is_err() {
                        closing.fetch_add(1, Ordering::SeqCst);
                        let _ = stream.shutdown(Shutdown::Write);
                        // Reads on until the proxy closes, so that its close is not a reset.
                        buf.clear();
                        while matches!(stream.read(&mut chunk), Ok(n) if n > 0) {}
                        closing.fetch_sub(1, Ordering::SeqCst);
                        set_partial(false, &mut counted);
                        return;
                    }
                }
                Parsed::Incomplete => break,
                Parsed::Invalid(_) => {
                    // Not a request the upstream can read: the proxy wrote garbage, which
                    // is recorded as a forwarded message with the raw bytes as its body.
                    seen.lock().expect("seen lock").push(Message {
                        start: "<unreadable>".into(),
                        headers: Vec::new(),
                        framing: crate::message::Framing::None,
                        body: std::mem::take(&mut buf),
                        trailers: Vec::new(),
                    });
                    break;
                }
            }
        }
        set_partial(!buf.is_empty(), &mut counted);
    }
    set_partial(false, &mut counted);
}

/// What the client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSaw {
    /// The responses read, in order (1xx included).
    pub responses: Vec<Message>,
    /// The bytes after the last response that were not a response.
    pub unreadable: Option<String>,
    /// The proxy neither answered every request nor closed within the deadline.
    pub stalled: bool,
}

/// Sends `raw` on a new connection to `proxy` and reads responses until `expected` final
/// ones have arrived, one says `connection: close`, the connection ends, or the deadline.
/// `heads`: which requests, in order, are HEADs.
pub fn exchange(proxy: SocketAddr, raw: &[u8], heads: &[bool]) -> ClientSaw {
    let mut saw = ClientSaw {
        responses: Vec::new(),
        unreadable: None,
        stalled: false,
    };
    let Ok(mut stream) = TcpStream::connect(proxy) else {
        saw.unreadable = Some("connect refused".into());
        return saw;
    };
    let _ = stream.set_nodelay(true);
    let _ = stream.write_all(raw);
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let deadline = Instant::now() + CASE_DEADLINE;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let mut eof = false;
    let mut finals = 0;
    loop {
        // Takes every whole response off the buffer.
        loop {
            let head = heads.get(finals).copied().unwrap_or(false);
            match parse(&buf, Kind::Response { head }, eof) {
                Parsed::Complete(msg, used) => {
                    buf.drain(..used);
                    let status = msg.status();
                    let close = msg
                        .values("connection")
                        .iter()
                        .any(|v| v.eq_ignore_ascii_case("close"));
                    if !(100..200).contains(&status) || status == 101 {
                        finals += 1;
                    }
                    saw.responses.push(msg);
                    if close || status == 101 || finals >= heads.len() {
                        return saw;
                    }
                }
                Parsed::Incomplete if eof => {
                    if !buf.is_empty() {
                        saw.unreadable = Some(String::from_utf8_lossy(&buf).into_owned());
                    }
                    return saw;
                }
                Parsed::Incomplete => break,
                Parsed::Invalid(e) => {
                    saw.unreadable = Some(e);
                    return saw;
                }
            }
        }
        if Instant::now() > deadline {
            saw.stalled = true;
            return saw;
        }
        match stream.read(&mut chunk) {
            Ok(0) => eof = true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => eof = true,
        }
    }
}
