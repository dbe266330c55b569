//! An attacker's connection: plain TCP, or TLS over it when the run is TLS. The refusal at
//! accept is read on the plain socket in both cases (the server refuses before any
//! cryptography), so only an admitted connection is wrapped.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::sim::net::{NetRead, NetStream, NetWrite};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_rustls::client::TlsStream;

/// An admitted attacker connection.
pub(crate) enum Conn {
    /// Plain TCP.
    Plain(NetStream),
    /// TLS over TCP (the server's certificate is not checked: see
    /// [`crate::tls::attacker_client_config`]).
    Tls(Box<TlsStream<NetStream>>),
}

/// The reading half of a [`Conn`].
pub(crate) enum ConnRead {
    Plain(NetRead),
    Tls(tokio::io::ReadHalf<TlsStream<NetStream>>),
}

/// The writing half of a [`Conn`].
pub(crate) enum ConnWrite {
    Plain(NetWrite),
    Tls(tokio::io::WriteHalf<TlsStream<NetStream>>),
}

impl Conn {
    /// Splits the connection so a task can read while another writes. Plain TCP keeps its
    /// lock-free owned halves.
    pub(crate) fn into_split(self) -> (ConnRead, ConnWrite) {
        match self {
            Conn::Plain(s) => {
                let (r, w) = s.into_split();
                (ConnRead::Plain(r), ConnWrite::Plain(w))
            }
            Conn::Tls(s) => {
                let (r, w) = tokio::io::split(*s);
                (ConnRead::Tls(r), ConnWrite::Tls(w))
            }
        }
    }

    /// Closes with a reset instead of a FIN (and, under TLS, without a close_notify), so the
    /// attacker keeps no TIME_WAIT state ([`super::net::abort`]).
    pub(crate) fn abort(self) {
        match self {
            Conn::Plain(s) => super::net::abort(s),
            Conn::Tls(s) => super::net::abort(s.into_inner().0),
        }
    }
}

/// Forwards an `AsyncRead`/`AsyncWrite` call to whichever variant is present.
macro_rules! either {
    ($self:ident, $inner:ident => $call:expr) => {
        match $self.get_mut() {
            Self::Plain($inner) => $call,
            Self::Tls($inner) => $call,
        }
    };
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

impl AsyncRead for ConnRead {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        either!(self, s => Pin::new(s).poll_read(cx, buf))
    }
}

/// `AsyncWrite` by forwarding, for [`Conn`] and [`ConnWrite`].
macro_rules! forward_write {
    ($ty:ty) => {
        impl AsyncWrite for $ty {
            fn poll_write(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                buf: &[u8],
            ) -> Poll<io::Result<usize>> {
                either!(self, s => Pin::new(s).poll_write(cx, buf))
            }

            fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                either!(self, s => Pin::new(s).poll_flush(cx))
            }

            fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
                either!(self, s => Pin::new(s).poll_shutdown(cx))
            }
        }
    };
}

forward_write!(Conn);
forward_write!(ConnWrite);
