//! A single-threaded, runtime-free wake-up flag. The hub holds one per viewer and raises it when
//! the viewer has something new to do (packets after it drained everything, a keyframe it was
//! waiting for, its eviction, the end of the stream); the viewer's connection task awaits it.
//! It stores a `std::task::Waker`, so it works with any executor and costs no lock: the hub and
//! its viewers live on the same shard.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A cloneable handle on one wake-up flag; all clones share it. `!Send` by construction.
#[derive(Clone, Default)]
pub struct LocalNotify {
    state: Rc<NotifyState>,
}

#[derive(Default)]
struct NotifyState {
    notified: Cell<bool>,
    waker: Cell<Option<Waker>>,
}

impl LocalNotify {
    /// A new flag, not raised.
    pub fn new() -> Self {
        Self::default()
    }

    /// Raises the flag and wakes the task awaiting it, if any. Notifications do not queue:
    /// several before the task runs are seen as one.
    pub fn notify(&self) {
        self.state.notified.set(true);
        if let Some(waker) = self.state.waker.take() {
            waker.wake();
        }
    }

    /// Lowers the flag and says whether it was raised, without waiting.
    pub fn take_notification(&self) -> bool {
        self.state.notified.replace(false)
    }

    /// Completes once the flag is raised (at once if it already is), lowering it.
    /// Only the most recent task to poll is woken.
    pub fn notified(&self) -> Notified<'_> {
        Notified { notify: self }
    }
}

impl std::fmt::Debug for LocalNotify {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalNotify")
            .field("notified", &self.state.notified.get())
            .finish()
    }
}

/// Future returned by [`LocalNotify::notified`].
#[derive(Debug)]
#[must_use = "futures do nothing unless awaited"]
pub struct Notified<'a> {
    notify: &'a LocalNotify,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let state = &self.notify.state;
        if state.notified.replace(false) {
            return Poll::Ready(());
        }
        let waker = match state.waker.take() {
            Some(stored) if stored.will_wake(cx.waker()) => stored,
            _ => cx.waker().clone(),
        };
        state.waker.set(Some(waker));
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::Wake;

    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn pending_until_notified_then_woken_once() {
        let counter = Arc::new(CountingWaker(AtomicUsize::new(0)));
        let waker = Waker::from(counter.clone());
        let mut cx = Context::from_waker(&waker);
        let notify = LocalNotify::new();
        let hub_side = notify.clone();

        let mut fut = std::pin::pin!(notify.notified());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        hub_side.notify();
        hub_side.notify();
        assert_eq!(counter.0.load(Ordering::Relaxed), 1);
        assert!(fut.as_mut().poll(&mut cx).is_ready());
        assert!(!notify.take_notification());
    }

    #[test]
    fn notification_before_await_is_kept() {
        let notify = LocalNotify::new();
        notify.notify();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(std::pin::pin!(notify.notified()).poll(&mut cx).is_ready());
        assert!(std::pin::pin!(notify.notified()).poll(&mut cx).is_pending());
    }
}
