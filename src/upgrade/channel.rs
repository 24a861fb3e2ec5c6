//! The private line between a running process and the one it starts to
//! take over: a `SOCK_SEQPACKET` socket pair, one JSON message per packet,
//! listening sockets attached to a packet as `SCM_RIGHTS`.
//!
//! The new process gets its end as its standard input, so nothing else can
//! speak on it, and either side sees the other exit as the end of the line.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use rustix::net::{
    recvmsg, sendmsg, AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags,
    ReturnFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketFlags, SocketType,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::Interest;
use tokio::net::UnixDatagram;

/// The largest message either side sends (the handover's health records
/// are the bulk of it).
const MAX_MESSAGE: usize = 128 * 1024;
/// The most sockets one message carries: the public and preview
/// listeners, the admin socket and the admin TCP listener.
pub const MAX_SOCKETS: usize = 4;

/// One end of the line.
#[derive(Debug)]
pub struct Channel {
    /// Tokio's datagram socket serves a connected `SOCK_SEQPACKET` one as
    /// well: each packet is sent and received whole, by `sendmsg` and
    /// `recvmsg` when the reactor says it can be.
    socket: UnixDatagram,
}

impl Channel {
    /// A new line: this process's end, and the one to give the new process
    /// as its standard input.
    pub fn pair() -> io::Result<(Channel, OwnedFd)> {
        let (ours, theirs) = rustix::net::socketpair(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC,
            None,
        )?;
        Ok((Channel::over(ours)?, theirs))
    }

    /// The end this process was given as its standard input; an error if
    /// standard input is not such a line (run by hand, not by an upgrade).
    pub fn from_stdin() -> io::Result<Channel> {
        let stdin = io::stdin().as_fd().try_clone_to_owned()?;
        match rustix::net::sockopt::socket_type(&stdin) {
            Ok(SocketType::SEQPACKET) => Channel::over(stdin),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "standard input is not an upgrade's channel: --take-over is only for the process `switchyard ctl upgrade` starts",
            )),
        }
    }

    fn over(socket: OwnedFd) -> io::Result<Channel> {
        let socket = std::os::unix::net::UnixDatagram::from(socket);
        socket.set_nonblocking(true)?;
        Ok(Channel {
            socket: UnixDatagram::from_std(socket)?,
        })
    }

    /// Sends `message`, with `sockets` attached.
    pub async fn send<T: Serialize>(
        &self,
        message: &T,
        sockets: &[BorrowedFd<'_>],
    ) -> io::Result<()> {
        let bytes = serde_json::to_vec(message).map_err(io::Error::other)?;
        if bytes.len() > MAX_MESSAGE || sockets.len() > MAX_SOCKETS {
            return Err(io::Error::other("upgrade message too large"));
        }
        self.socket
            .async_io(Interest::WRITABLE, || {
                let socket = &self.socket;
                let mut space =
                    [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
                let mut control = SendAncillaryBuffer::new(&mut space);
                if !sockets.is_empty() && !control.push(SendAncillaryMessage::ScmRights(sockets)) {
                    return Err(io::Error::other("cannot attach the sockets"));
                }
                let flags = SendFlags::DONTWAIT | SendFlags::NOSIGNAL;
                Ok(sendmsg(
                    socket,
                    &[IoSlice::new(&bytes)],
                    &mut control,
                    flags,
                )?)
            })
            .await
            .map(drop)
    }

    /// The next message and the sockets attached to it; `None` once the
    /// other side has closed its end (exited).
    pub async fn recv<T: DeserializeOwned>(&self) -> io::Result<Option<(T, Vec<OwnedFd>)>> {
        let mut bytes = vec![0; MAX_MESSAGE];
        let (length, sockets) = self
            .socket
            .async_io(Interest::READABLE, || {
                let socket = &self.socket;
                let mut space =
                    [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_SOCKETS))];
                let mut control = RecvAncillaryBuffer::new(&mut space);
                // Close-on-exec at once: no process started later gets them.
                let flags = RecvFlags::DONTWAIT | RecvFlags::CMSG_CLOEXEC;
                let received = recvmsg(
                    socket,
                    &mut [IoSliceMut::new(&mut bytes)],
                    &mut control,
                    flags,
                )?;
                let mut sockets = Vec::new();
                for message in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(fds) = message {
                        sockets.extend(fds);
                    }
                }
                if received
                    .flags
                    .intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
                {
                    return Err(io::Error::other("upgrade message truncated"));
                }
                Ok((received.bytes, sockets))
            })
            .await?;
        if length == 0 {
            return Ok(None);
        }
        let message = serde_json::from_slice(&bytes[..length])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        Ok(Some((message, sockets)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[tokio::test]
    async fn a_message_carries_its_sockets_and_the_end_of_the_line_is_seen() {
        let (ours, theirs) = Channel::pair().unwrap();
        let theirs = Channel::over(theirs).unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        ours.send(&"public", &[listener.as_fd()]).await.unwrap();
        let (message, sockets): (String, _) = theirs.recv().await.unwrap().unwrap();
        assert_eq!(message, "public");
        let received = std::net::TcpListener::from(sockets.into_iter().next().unwrap());
        // The same listening socket: a connection to it is accepted there.
        drop(listener);
        let _client = std::net::TcpStream::connect(addr).unwrap();
        assert!(received.accept().is_ok());
        drop(ours);
        assert!(theirs.recv::<String>().await.unwrap().is_none());
    }
}
