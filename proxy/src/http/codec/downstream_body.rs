//! A request body read straight off a downstream HTTP/1.1 connection, sharing the
//! connection's socket and read buffer with the server codec ([`super::h1_server`]).

use std::cell::RefCell;
use std::rc::Rc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use hyper::body::Frame;

use super::downstream_h1::CodecError;
use super::upstream_h1::{recv_into, BodyDecoder, Decoded, H1Error};
use crate::transport_socket::Transport;

/// The transport and what was read from it, shared with the request body.
pub(crate) struct ConnReader {
    pub(crate) io: Transport,
    pub(crate) rbuf: BytesMut,
    /// The current request's body while it is read.
    pub(crate) body: Option<BodyDecoder>,
    /// The request body broke its framing: the response becomes Envoy's `400`.
    pub(crate) body_error: Option<CodecError>,
}

impl ConnReader {
    pub(crate) fn body_done(&self) -> bool {
        self.body.as_ref().is_none_or(BodyDecoder::is_done)
    }
}

/// A request body read straight off the downstream connection.
pub struct DownstreamBody {
    pub(crate) t: Rc<RefCell<ConnReader>>,
}

impl DownstreamBody {
    /// Whether the body is complete.
    pub fn is_end_stream(&self) -> bool {
        self.t.borrow().body_done()
    }

    /// The bytes left, when known.
    pub fn exact_len(&self) -> Option<u64> {
        self.t
            .borrow()
            .body
            .as_ref()
            .and_then(BodyDecoder::exact_len)
    }

    /// The next data or trailers frame.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let mut t = self.t.borrow_mut();
        let t = &mut *t;
        let Some(decoder) = t.body.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            let decoded = match decoder.decode(&mut t.rbuf) {
                Ok(d) => d,
                Err(e) => {
                    t.body_error = Some(CodecError {
                        status: StatusCode::BAD_REQUEST,
                        reason: "malformed request body",
                        bare: false,
                    });
                    return Poll::Ready(Some(Err(e)));
                }
            };
            match decoded {
                Decoded::Data(data) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Decoded::Trailers(trailers) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Decoded::End => return Poll::Ready(None),
                Decoded::NeedMore => {}
            }
            match ready!(recv_into(&mut t.io, &mut t.rbuf, cx)) {
                // A request body is never delimited by the close.
                Ok(0) => return Poll::Ready(Some(Err(H1Error::Closed))),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }
}
