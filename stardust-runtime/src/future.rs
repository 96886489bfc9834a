//! Instrumented futures: the span starts at the first poll, is the thread's current span
//! while the future is polled, and ends when the future completes. A future dropped before it
//! completes records its span with the error `cancelled` (`panicked` when a poll panicked).
//! No async runtime is involved: this works under any executor, or a hand-written `block_on`.

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::callsite::Callsite;
use crate::clock;
use crate::collector;
use crate::span::{self, Name, OpenSpan, Origin, SpanKind};

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

/// A future wrapped in a span. Made by `#[trace]` on `async fn` (through `instrument`).
pub struct Instrumented<F> {
    fut: ManuallyDrop<F>,
    callsite: &'static Callsite,
    state: State,
}

/// Wraps `fut` so that it runs inside a span of `callsite` (used by `#[trace]`).
pub fn instrument<F: Future>(callsite: &'static Callsite, fut: F) -> Instrumented<F> {
    Instrumented {
        fut: ManuallyDrop::new(fut),
        callsite,
        state: State::NotStarted,
    }
}

impl<F> Instrumented<F> {
    /// Puts our span and the stashed spans back on the thread's stack.
    fn enter(state: &mut State) -> Option<u64> {
        let State::Running { id, span, stash } = state else {
            return None;
        };
        let own = span.take()?;
        let id = *id;
        span::with_local(|local| {
            local.stack.push(own);
            local.stack.append(stash);
        });
        Some(id)
    }

    /// Takes our span (and everything opened above it) back off the stack.
    fn exit(state: &mut State, id: u64) {
        let State::Running { span, stash, .. } = state else {
            return;
        };
        span::with_local(|local| {
            if let Some(idx) = local.stack.iter().rposition(|s| s.span_id == id) {
                stash.extend(local.stack.drain(idx + 1..));
                *span = local.stack.pop();
            }
            // The executor thread may now go idle: hand over what finished inside this poll.
            if local.stack.is_empty() {
                local.flush();
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
                        own.extra_mut().error = Some(e.to_owned());
                    }
                }
                span::record(own, end, false);
            }
        }
    }
}

struct PollGuard<'a> {
    state: &'a mut State,
    id: u64,
}

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        Instrumented::<()>::exit(self.state, self.id);
        if std::thread::panicking() {
            Instrumented::<()>::finish(self.state, Some("panicked"));
        }
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: `fut` is never moved out of the pinned struct (it is structurally pinned and
        // dropped in place in `Drop`); the other fields are not pinned.
        let this = unsafe { self.get_unchecked_mut() };
        let fut = unsafe { Pin::new_unchecked(&mut *this.fut) };
        let id = match &this.state {
            State::NotStarted => {
                // The span starts now, directly on the thread's stack.
                let callsite = this.callsite;
                let pushed = if collector::enabled() {
                    span::with_local(|local| {
                        if local.suppressed {
                            return None;
                        }
                        let own = span::new_span(
                            local,
                            Name::Static(callsite.name),
                            Origin::Current,
                            Some(callsite),
                            SpanKind::Local,
                        );
                        let id = own.span_id;
                        local.stack.push(own);
                        Some(id)
                    })
                    .flatten()
                } else {
                    None
                };
                match pushed {
                    Some(id) => {
                        this.state = State::Running {
                            id,
                            span: None,
                            stash: Vec::new(),
                        };
                        id
                    }
                    None => {
                        this.state = State::Disabled;
                        return fut.poll(cx);
                    }
                }
            }
            State::Running { .. } => match Self::enter(&mut this.state) {
                Some(id) => id,
                None => return fut.poll(cx),
            },
            State::Disabled | State::Done => return fut.poll(cx),
        };
        let guard = PollGuard {
            state: &mut this.state,
            id,
        };
        let out = fut.poll(cx);
        if out.is_ready() {
            // Completed: close the span straight from the stack (one thread-local access).
            std::mem::forget(guard);
            span::close(id);
            this.state = State::Done;
        } else {
            drop(guard);
        }
        out
    }
}

impl<F> Drop for Instrumented<F> {
    fn drop(&mut self) {
        // Drop the inner future inside its span, so its destructors belong to it.
        let entered = Self::enter(&mut self.state);
        // SAFETY: dropped exactly once, here; never used afterwards.
        unsafe { ManuallyDrop::drop(&mut self.fut) };
        if let Some(id) = entered {
            Self::exit(&mut self.state, id);
            let why = if std::thread::panicking() {
                "panicked"
            } else {
                "cancelled"
            };
            Self::finish(&mut self.state, Some(why));
        }
    }
}
