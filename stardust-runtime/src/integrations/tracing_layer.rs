//! The `tracing` bridge: a [`Layer`] that turns `tracing` spans (`#[instrument]`,
//! `info_span!`) into Stardust spans, counted, sampled, propagated and reported exactly like
//! `#[trace]` spans, and marks a span as an error when an `ERROR` event occurs inside it.
//!
//! A bridged span is built when the `tracing` span is created, as a child of the thread's
//! current Stardust span (or of its explicit `parent:`), and kept in the span's extensions.
//! Entering the `tracing` span puts it on the thread's Stardust stack, so spans opened inside
//! (by `#[trace]` or by `tracing`) are its children; exiting takes it back, with any spans
//! opened above it that are still open (guards held across an `.await`), as an instrumented
//! future does between polls. Closing the `tracing` span records it.

use std::fmt::{self, Write as _};

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::clock;
use crate::flags::FLAGS_PROPAGATED;
use crate::id::TraceId;
use crate::span::local::{self as span, Local, Origin};
use crate::span::record::{Extra, Name, OpenSpan, SpanKind};
use crate::state;

/// The field that overrides a span's operation name: `info_span!("query", stardust.name = "db/users")`.
pub(crate) const NAME_FIELD: &str = "stardust.name";

/// A [`tracing_subscriber::Layer`] that reports `tracing` spans to Stardust.
///
/// Each `tracing` span becomes a Stardust span named after the span (`metadata().name()`: the
/// function name for `#[instrument]`), or after its `stardust.name` field when it has one. It
/// takes its parent, trace and sampling flag from the thread's current Stardust span, so
/// `#[trace]` functions and `tracing` spans nest in either direction. An `ERROR`-level event
/// marks the innermost span it occurs in as an error, with the event's message (for
/// `#[instrument(err)]`: the error's text). A sampled span gets the span's fields as its tag.
///
/// Before [`init`](fn@crate::init) (and after its guard is dropped) the layer records nothing.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
///
/// let subscriber = tracing_subscriber::registry().with(stardust_runtime::StardustLayer::new());
/// let _default = tracing::subscriber::set_default(subscriber);
/// let guard = stardust_runtime::init_with(stardust_runtime::Config::new().console(false)).unwrap();
///
/// let span = tracing::info_span!("load-config", file = "app.toml");
/// span.in_scope(|| tracing::error!("file not found")); // the span is an error
/// drop(span); // the span closes and is recorded here
/// drop(guard);
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct StardustLayer {
    _private: (),
}

impl StardustLayer {
    /// A new layer.
    pub fn new() -> StardustLayer {
        StardustLayer { _private: () }
    }
}

/// What a bridged `tracing` span keeps in its extensions.
struct Bridged {
    /// The Stardust span id.
    id: u64,
    /// The span, while it is on no thread's stack.
    span: Option<OpenSpan>,
    /// Spans opened above ours that were still open when it was last exited, bottom first.
    stash: Vec<OpenSpan>,
    /// How many times the thread whose stack holds the span has entered it (0: none holds it).
    depth: u32,
    /// What a thread that enters the span while another thread holds it puts on its stack: a
    /// context frame, so that spans opened there are children of this span.
    trace: TraceId,
    flags: u8,
    inherited: Option<Box<Extra>>,
    /// An error seen while the span was on another thread's stack.
    pending_error: Option<String>,
}

impl Bridged {
    fn new(span: OpenSpan) -> Bridged {
        let inherited = span
            .extra
            .as_ref()
            .filter(|e| e.tracestate.is_some() || e.correlation.is_some())
            .map(|e| {
                Box::new(Extra {
                    tracestate: e.tracestate.clone(),
                    correlation: e.correlation.clone(),
                    ..Default::default()
                })
            });
        Bridged {
            id: span.span_id,
            trace: span.trace.clone(),
            flags: span.flags & FLAGS_PROPAGATED,
            inherited,
            span: Some(span),
            stash: Vec::new(),
            depth: 0,
            pending_error: None,
        }
    }

    /// A context frame standing for this span on a thread that does not hold it. It records
    /// nothing; spans opened under it get this span as their parent.
    fn frame(&self) -> OpenSpan {
        OpenSpan::context_frame(
            self.id,
            self.trace.clone(),
            self.id,
            self.flags,
            self.inherited.clone(),
        )
    }

    /// Runs `f` on the span, when it is held here or on this thread's stack.
    fn with_open<R>(&mut self, f: impl FnOnce(&mut OpenSpan) -> R) -> Option<R> {
        if let Some(s) = self.span.as_mut() {
            return Some(f(s));
        }
        let id = self.id;
        span::with_local(|local| local.stack.find_span_mut(id).map(f)).flatten()
    }

    fn set_error(&mut self, text: String) {
        let mut text = Some(text);
        if self
            .with_open(|s| s.extra_mut().error = text.take())
            .is_none()
        {
            self.pending_error = text;
        }
    }
}

/// Builds a span as a child of the thread's current span (or the root of a new trace).
fn new_child(local: &mut Local, name: Name) -> OpenSpan {
    local.new_span(name, Origin::Current, None, SpanKind::Local)
}

/// Builds a span that starts a new trace (`parent: None`).
fn new_root(local: &mut Local, name: Name) -> OpenSpan {
    local.new_span(name, Origin::NewTrace, None, SpanKind::Local)
}

/// Builds a span as a child of the bridged span `parent`, wherever that one is.
fn new_child_of(local: &mut Local, parent: &mut Bridged, name: Name) -> OpenSpan {
    if let Some(own) = parent.span.take() {
        // Held here, on no stack: a child of its frame, with the span's own flags and data.
        local.stack.push(own);
        let child = new_child(local, name);
        parent.span = local.stack.remove(parent.id);
        return child;
    }
    // On this thread's stack (itself or its frame), under other spans: on top for a moment.
    match local.child_of_open(parent.id, name) {
        Ok(child) => child,
        // Held by another thread.
        Err(name) => local.child_of_frame(parent.frame(), name),
    }
}

impl<S> Layer<S> for StardustLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if !state::enabled() {
            return;
        }
        let meta = attrs.metadata();
        let name = match meta.fields().field(NAME_FIELD) {
            Some(field) => {
                let mut visitor = NameVisitor(&field, None);
                attrs.record(&mut visitor);
                visitor.1.map_or(Name::Static(meta.name()), Name::Owned)
            }
            None => Name::Static(meta.name()),
        };
        let open = if attrs.is_root() {
            span::with_local(|local| new_root(local, name))
        } else if let Some(parent) = attrs.parent() {
            // Explicit parent: the nearest ancestor that has a Stardust span.
            let bridged_parent = ctx
                .span(parent)
                .into_iter()
                .flat_map(|p| p.scope())
                .find(|a| a.extensions().get::<Bridged>().is_some());
            match bridged_parent {
                Some(p) => {
                    let mut ext = p.extensions_mut();
                    let parent = ext.get_mut::<Bridged>().expect("found above");
                    span::with_local(|local| new_child_of(local, parent, name))
                }
                None => span::with_local(|local| new_root(local, name)),
            }
        } else {
            span::with_local(|local| new_child(local, name))
        };
        let (Some(mut open), Some(this)) = (open, ctx.span(id)) else {
            return;
        };
        if open.is_sampled() {
            let mut tag = Tag(String::new());
            attrs.record(&mut tag);
            if !tag.0.is_empty() {
                open.extra_mut().tag = Some(tag.0);
            }
        }
        this.extensions_mut().insert(Bridged::new(open));
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(this) = ctx.span(id) else {
            return;
        };
        let mut ext = this.extensions_mut();
        let Some(b) = ext.get_mut::<Bridged>() else {
            return;
        };
        b.with_open(|s| {
            if s.is_sampled() {
                let extra = s.extra_mut();
                let mut tag = Tag(extra.tag.take().unwrap_or_default());
                values.record(&mut tag);
                extra.tag = (!tag.0.is_empty()).then_some(tag.0);
            }
        });
    }

    fn on_enter(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(this) = ctx.span(id) else {
            return;
        };
        let mut ext = this.extensions_mut();
        let Some(b) = ext.get_mut::<Bridged>() else {
            return;
        };
        span::with_local(|local| {
            if let Some(own) = b.span.take() {
                local.stack.resume(own, &mut b.stash);
                b.depth = 1;
            } else if b.depth > 0 && local.stack.find_span_mut(b.id).is_some() {
                // Entered again on the thread that holds it.
                b.depth += 1;
            } else {
                // Entered while another thread holds it (or while a future keeps it).
                local.stack.push(b.frame());
            }
        });
    }

    fn on_exit(&self, id: &Id, ctx: Context<'_, S>) {
        let Some(this) = ctx.span(id) else {
            return;
        };
        let mut ext = this.extensions_mut();
        let Some(b) = ext.get_mut::<Bridged>() else {
            return;
        };
        let panicking = std::thread::panicking();
        span::with_local(|local| {
            let Some(is_frame) = local.stack.find(b.id).map(OpenSpan::is_context_frame) else {
                return;
            };
            if is_frame {
                local.stack.remove(b.id);
            } else if b.depth > 1 {
                b.depth -= 1;
            } else if let Some(mut own) = local.suspend(b.id, &mut b.stash) {
                // Like the close of an outermost span, `suspend` hands over what finished
                // inside when the stack is left empty (this may be an idle executor worker).
                if panicking && own.error().is_none() {
                    own.extra_mut().error = Some("panicked".to_owned());
                }
                b.span = Some(own);
                b.depth = 0;
            }
        });
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(this) = ctx.span(&id) else {
            return;
        };
        let Some(mut b) = this.extensions_mut().remove::<Bridged>() else {
            return;
        };
        let end = clock::now();
        let own = match b.span.take() {
            Some(own) => Some(own),
            // Closed while still entered (its last handle dropped inside it): off the stack.
            None => span::with_local(|local| local.stack.remove_span(b.id)).flatten(),
        };
        // Spans still open above ours were leaked by the user; ours is what we report.
        drop(b.stash);
        if let Some(mut own) = own {
            if own.error().is_none() {
                if let Some(e) = b.pending_error.take() {
                    own.extra_mut().error = Some(e);
                }
            }
            span::record(own, end, std::thread::panicking());
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if *event.metadata().level() != Level::ERROR {
            return;
        }
        let mut text = Some(error_text(event));
        if event.is_contextual() {
            // The innermost span open here: a `#[trace]` span, a manual one or a bridged one.
            let done = span::with_local(|local| match local.stack.top_mut() {
                Some(top) if !top.is_context_frame() => {
                    top.extra_mut().error = text.take();
                    true
                }
                _ => false,
            })
            .unwrap_or(false);
            if done {
                return;
            }
        }
        // An explicit parent, or a span entered here while another thread holds it.
        let Some(span) = ctx.event_span(event) else {
            return;
        };
        let target = span
            .scope()
            .find(|a| a.extensions().get::<Bridged>().is_some());
        if let (Some(target), Some(text)) = (target, text) {
            if let Some(b) = target.extensions_mut().get_mut::<Bridged>() {
                b.set_error(text);
            }
        }
    }
}

/// Reads the `stardust.name` field.
struct NameVisitor<'a>(&'a Field, Option<Box<str>>);

impl Visit for NameVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field == self.0 {
            self.1 = Some(value.into());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field == self.0 {
            self.1 = Some(format!("{value:?}").into_boxed_str());
        }
    }
}

/// Formats fields as `name=value` pairs separated by spaces (a sampled span's tag).
struct Tag(String);

impl Visit for Tag {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &format_args!("{value}"));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == NAME_FIELD {
            return;
        }
        if !self.0.is_empty() {
            self.0.push(' ');
        }
        let _ = write!(self.0, "{}={value:?}", field.name());
    }
}

/// The text an error event gives its span: the message; else the `error` field (what
/// `#[instrument(err)]` records); else all fields, `name=value`.
fn error_text(event: &Event<'_>) -> String {
    struct Message {
        message: Option<String>,
        error: Option<String>,
        fields: Tag,
    }
    impl Visit for Message {
        fn record_str(&mut self, field: &Field, value: &str) {
            self.record_debug(field, &format_args!("{value}"));
        }

        fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
            match field.name() {
                "message" => self.message = Some(format!("{value:?}")),
                "error" => self.error = Some(format!("{value:?}")),
                _ => {}
            }
            self.fields.record_debug(field, value);
        }
    }
    let mut visitor = Message {
        message: None,
        error: None,
        fields: Tag(String::new()),
    };
    event.record(&mut visitor);
    visitor
        .message
        .or(visitor.error)
        .unwrap_or(visitor.fields.0)
}
