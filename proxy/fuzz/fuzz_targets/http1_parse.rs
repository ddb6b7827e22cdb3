//! Fuzzes the downstream HTTP/1 parsing path: arbitrary bytes into hyper's HTTP/1 server
//! connection configured as the connection manager configures it. Nothing may panic; every
//! input ends in responses or a connection error.
#![no_main]

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use libfuzzer_sys::fuzz_target;

struct Mock {
    input: Vec<u8>,
    pos: usize,
}

impl hyper::rt::Read for Mock {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (self.input.len() - self.pos).min(buf.remaining()).min(64);
        let start = self.pos;
        buf.put_slice(&self.input[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl hyper::rt::Write for Mock {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let io = Mock {
        input: data.to_vec(),
        pos: 0,
    };
    let svc = hyper::service::service_fn(|req: http::Request<hyper::body::Incoming>| async move {
        let _ = courier::http::router::sanitize_path(req.uri().path(), true, true);
        Ok::<_, Infallible>(http::Response::new(String::from("ok")))
    });
    let mut b = hyper::server::conn::http1::Builder::new();
    b.max_headers(100).max_buf_size(61 * 1024 + 1024);
    let _ = futures::executor::block_on(b.serve_connection(io, svc));
});
