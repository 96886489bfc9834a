//! Instrumented futures: the span starts at the first poll, is the thread's current span
//! while the future is polled, and ends when the future completes. A future dropped before it
//! completes records its span with the error `cancelled` (`panicked` when a poll panicked).
//! No async runtime is involved: this works under any executor, or a hand-written `block_on`.
//!
//! No `unsafe`: the inner future is structurally pinned through `pin-project-lite`, and dropped
//! in place inside its span by `Pin::set(None)`.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::clock;
use crate::span::callsite::Callsite;
use crate::span::local::{self, with_local};
use crate::span::record::OpenSpan;
use crate::state;

enum State {
    NotStarted,
    /// Not recording (runtime not initialised at the first poll).
    Disabled,
    /// Our span `id` (in `span` between polls, on the thread's stack during one), plus spans
    /// opened inside the future that were still open when it yielded (guards held across an
    /// `.await`), bottom first.
    Running {
        id: u64,
        span: Option<OpenSpan>,
        stash: Vec<OpenSpan>,
    },
    Done,
}

pin_project_lite::pin_project! {
    /// A future wrapped in a span. Made by `#[trace]` on `async fn` (through `instrument`).
    pub struct Instrumented<F> {
        #[pin]
        fut: Option<F>,
        callsite: &'static Callsite,
        state: State,
    }

    impl<F> PinnedDrop for Instrumented<F> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            // Drop the inner future inside its span, so its destructors belong to it. The
            // exit runs even when a destructor panics, so the thread's stack stays whole.
            let entered = enter(this.state);
            let exit = ExitOnDrop { state: this.state, id: entered };
            this.fut.set(None);
            drop(exit);
        }
    }
}

/// Wraps `fut` so that it runs inside a span of `callsite` (used by `#[trace]`).
pub fn instrument<F: Future>(callsite: &'static Callsite, fut: F) -> Instrumented<F> {
    Instrumented {
        fut: Some(fut),
        callsite,
        state: State::NotStarted,
    }
}

/// Puts our span and the stashed spans back on the thread's stack.
fn enter(state: &mut State) -> Option<u64> {
    let State::Running { id, span, stash } = state else {
        return None;
    };
    let own = span.take()?;
    let id = *id;
    with_local(|local| local.stack.resume(own, stash));
    Some(id)
}

/// Takes our span (and everything opened above it) back off the stack.
fn exit(state: &mut State, id: u64) {
    let State::Running { span, stash, .. } = state else {
        return;
    };
    with_local(|local| {
        if let Some(own) = local.suspend(id, stash) {
            *span = Some(own);
        }
    });
}

fn finish(state: &mut State, error: Option<&'static str>) {
    if let State::Running { span, stash, .. } = std::mem::replace(state, State::Done) {
        let end = clock::now();
        if let Some(mut own) = span {
            // Spans still open inside a finished future were leaked by the user; the
            // future's own span is what we report.
            drop(stash);
            if let Some(e) = error {
                if own.error().is_none() {
                    if e == "panicked" {
                        own = crate::span::exception::record_detached(own, "panic", e);
                    }
                    own.extra_mut().error = Some(e.to_owned());
                }
            }
            local::record(own, end, false);
        }
    }
}

/// Takes the span off the stack when dropped: after a poll, or after the inner future was
/// dropped (then the span ends `cancelled`, or `panicked` during a panic).
struct ExitOnDrop<'a> {
    state: &'a mut State,
    id: Option<u64>,
}

impl Drop for ExitOnDrop<'_> {
    fn drop(&mut self) {
        if let Some(id) = self.id {
            exit(self.state, id);
            let why = if std::thread::panicking() {
                "panicked"
            } else {
                "cancelled"
            };
            finish(self.state, Some(why));
        }
    }
}

/// Takes the span off the stack after a poll; a poll that panicked ends it `panicked`.
struct PollGuard<'a> {
    state: &'a mut State,
    id: u64,
    /// False once the span was closed straight from the stack (the future completed).
    armed: bool,
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        exit(self.state, self.id);
        if std::thread::panicking() {
            finish(self.state, Some("panicked"));
        }
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(fut) = this.fut.as_pin_mut() else {
            panic!("`Instrumented` polled after its future was dropped");
        };
        let id = match this.state {
            State::NotStarted => {
                // The span starts now, directly on the thread's stack.
                let callsite = *this.callsite;
                let pushed = if state::enabled() {
                    with_local(|local| local.enter(callsite)).filter(|&id| id != 0)
                } else {
                    None
                };
                match pushed {
                    Some(id) => {
                        *this.state = State::Running {
                            id,
                            span: None,
                            stash: Vec::new(),
                        };
                        id
                    }
                    None => {
                        *this.state = State::Disabled;
                        return fut.poll(cx);
                    }
                }
            }
            State::Running { .. } => match enter(this.state) {
                Some(id) => id,
                None => return fut.poll(cx),
            },
            State::Disabled | State::Done => return fut.poll(cx),
        };
        let mut guard = PollGuard {
            state: this.state,
            id,
            armed: true,
        };
        let out = fut.poll(cx);
        if out.is_ready() {
            // Completed: close the span straight from the stack (one thread-local access).
            guard.armed = false;
            local::close(id);
            *guard.state = State::Done;
        }
        out
    }
}
