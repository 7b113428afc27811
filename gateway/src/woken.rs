//! A stream polled only after it has woken its task, not every time its task runs.
//!
//! A socket's task wakes for each frame it sends itself (queued ones, replays, pings), and
//! `select!` then polls every branch again. Polling the socket's read half goes five layers
//! down to a readiness check and re-registers wakers on the way: when every event went
//! through the tasks, a measured tenth of the gateway's time at 10,000 sockets went to asking
//! sockets with nothing to read. Wrapped here, the inner stream gets a waker of
//! its own, and the wrapper answers `Pending` at once until that waker has fired.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use futures::Stream;
use futures::task::AtomicWaker;

/// What the inner stream wakes: a flag, then the task.
struct Signal {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pub struct WhenWoken<S> {
    inner: S,
    signal: Arc<Signal>,
    waker: Waker,
}

impl<S> WhenWoken<S> {
    pub fn new(inner: S) -> WhenWoken<S> {
        // Woken to begin with: the first poll must reach the stream to register its waker.
        let signal = Arc::new(Signal { woken: AtomicBool::new(true), task: AtomicWaker::new() });
        let waker = Waker::from(signal.clone());
        WhenWoken { inner, signal, waker }
    }
}

impl<S: Stream + Unpin> Stream for WhenWoken<S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        let this = self.get_mut();
        // Registered before the flag is read, so a wake that lands after the read still
        // reaches the task.
        this.signal.task.register(cx.waker());
        if !this.signal.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut this.inner).poll_next(&mut Context::from_waker(&this.waker));
        if polled.is_ready() {
            // More may be ready without another wake: look again next time.
            this.signal.woken.store(true, Ordering::Release);
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    /// A channel's receiving end that counts how often it is polled.
    struct Counted {
        rx: tokio::sync::mpsc::UnboundedReceiver<u32>,
        polls: Arc<AtomicUsize>,
    }

    impl Stream for Counted {
        type Item = u32;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<u32>> {
            self.polls.fetch_add(1, Ordering::Relaxed);
            self.rx.poll_recv(cx)
        }
    }

    #[tokio::test]
    async fn polls_the_inner_stream_only_after_it_woke() {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let polls = Arc::new(AtomicUsize::new(0));
        let mut stream = WhenWoken::new(Counted { rx, polls: polls.clone() });
        let (other_tx, mut other_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let worker = tokio::spawn(async move {
            let mut got = Vec::new();
            let mut other = 0;
            loop {
                tokio::select! {
                    item = stream.next() => match item {
                        Some(v) => got.push(v),
                        None => break,
                    },
                    Some(()) = other_rx.recv() => other += 1,
                }
            }
            (got, other)
        });
        // Many wakes for the other branch: none of them may poll the wrapped stream.
        for _ in 0..100 {
            other_tx.send(()).unwrap_or_default();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let idle_polls = polls.load(Ordering::Relaxed);
        assert!(idle_polls <= 2, "the stream was polled {idle_polls} times without waking");
        for v in 0..5 {
            tx.send(v).unwrap_or_default();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tx.send(5).unwrap_or_default();
        tx.send(6).unwrap_or_default();
        drop(tx);
        let (got, other) = worker.await.unwrap_or_default();
        assert_eq!(got, vec![0, 1, 2, 3, 4, 5, 6], "every item, in order, the burst included");
        assert_eq!(other, 100);
    }
}
