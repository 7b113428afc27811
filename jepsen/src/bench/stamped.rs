//! A TCP stream that remembers when the kernel received the bytes it last read
//! (`SO_TIMESTAMPNS`): when an event reached a client's socket, whether or not the client
//! process was on a CPU to read it then. On loopback that is the moment the sender's
//! `send` handed the bytes over.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg, setsockopt, sockopt};
use nix::sys::time::TimeSpec;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

pub struct Stamped {
    inner: TcpStream,
    last: Option<SystemTime>,
    /// Room for the control message, kept across reads.
    control: Vec<u8>,
}

impl Stamped {
    pub fn new(inner: TcpStream) -> io::Result<Stamped> {
        setsockopt(&inner, sockopt::ReceiveTimestampns, &true)?;
        Ok(Stamped { inner, last: None, control: nix::cmsg_space!(TimeSpec) })
    }

    /// When the kernel received the last bytes read: None before the first read, or if the
    /// kernel attached no stamp.
    pub fn last_arrival(&self) -> Option<SystemTime> {
        self.last
    }
}

/// One `recvmsg`: the bytes read and the stamp of the newest segment they came from.
fn receive(fd: i32, into: &mut [u8], control: &mut [u8]) -> io::Result<(usize, Option<SystemTime>)> {
    let mut iov = [io::IoSliceMut::new(into)];
    let msg = recvmsg::<()>(fd, &mut iov, Some(control), MsgFlags::empty())?;
    let stamp = msg.cmsgs().ok().and_then(|mut all| {
        all.find_map(|m| match m {
            ControlMessageOwned::ScmTimestampns(ts) => {
                let secs = u64::try_from(ts.tv_sec()).ok()?;
                let nanos = u32::try_from(ts.tv_nsec()).ok()?;
                Some(UNIX_EPOCH + Duration::new(secs, nanos))
            }
            _ => None,
        })
    });
    Ok((msg.bytes, stamp))
}

impl AsyncRead for Stamped {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.inner.poll_read_ready(cx))?;
            let fd = this.inner.as_raw_fd();
            let unfilled = buf.initialize_unfilled();
            let room = unfilled.len();
            let mut got = None;
            // `try_io` clears the readiness on WouldBlock, so the next poll waits for more. A
            // read that did not fill the buffer drained the socket: it reports WouldBlock too
            // (its bytes kept in `got`), sparing a second `recvmsg` that would only find
            // nothing, as tokio's own `TcpStream` does.
            let read = this.inner.try_io(Interest::READABLE, || {
                let (n, stamp) = receive(fd, unfilled, &mut this.control)?;
                got = Some((n, stamp));
                if n > 0 && n < room { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(()) }
            });
            match (read, got) {
                // Bytes read: whatever `try_io` made of it, they are the answer.
                (_, Some((n, stamp))) => {
                    buf.advance(n);
                    if stamp.is_some() {
                        this.last = stamp;
                    }
                    return Poll::Ready(Ok(()));
                }
                (Err(e), None) if e.kind() == io::ErrorKind::WouldBlock => continue,
                (Err(e), None) => return Poll::Ready(Err(e)),
                (Ok(()), None) => continue,
            }
        }
    }
}

impl AsyncWrite for Stamped {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_carry_the_kernels_receive_time() -> Result<(), Box<dyn std::error::Error>> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mut client = Stamped::new(TcpStream::connect(addr).await?)?;
        let (mut server, _) = listener.accept().await?;
        assert!(client.last_arrival().is_none());
        // The kernel switches stamping on for the first such socket a moment later.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let before = SystemTime::now();
        server.write_all(b"hello").await?;
        // Read well after the bytes arrived: the stamp is their arrival, not this read.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut got = [0u8; 16];
        let n = client.read(&mut got).await?;
        let read_at = SystemTime::now();
        assert_eq!(&got[..n], b"hello");
        let arrived = client.last_arrival().ok_or("no receive timestamp")?;
        assert!(arrived >= before - Duration::from_millis(1), "stamp {arrived:?} before the send {before:?}");
        assert!(read_at.duration_since(arrived)? >= Duration::from_millis(150), "stamp is the read time");
        client.write_all(b"back").await?;
        let n = server.read(&mut got).await?;
        assert_eq!(&got[..n], b"back");
        Ok(())
    }
}
