//! Cross-process context propagation: reading a remote span context from incoming headers and
//! writing `traceparent`/`tracestate` into outgoing ones ([docs/propagation.md §1–§3](crate::docs::propagation)).
//!
//! The public part is the carrier traits, [`Extractor`] and [`Injector`]: implement them for a
//! request type to let the runtime read and write its headers. Parsing is total: any input gives
//! a context or `None`, never a panic, and no more than a bounded amount of memory is allocated
//! beyond the carrier's own list of header lines.
//!
//! Other protocols (SkyWalking `sw8`, feature `skywalking`) plug in through the
//! propagator seam (`propagation::seam`): a propagator installed at `init` is tried as the
//! last source.

mod carrier;
pub(crate) mod newlife;
pub(crate) mod seam;
pub(crate) mod w3c;

pub use carrier::{Extractor, Injector};
pub(crate) use seam::LinkRef;

use crate::id::{ParentId, SpanId, TraceId, TraceRepr};

use self::newlife::TraceIdHeader;
use self::w3c::FLAGS_MASK;
use crate::flags::FLAG_RANDOM;

/// The W3C header carrying trace id, parent span id and flags.
pub(crate) const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor data; only valid alongside a valid `traceparent`.
pub(crate) const TRACESTATE: &str = "tracestate";
/// .NET hierarchical request id (`|abc.1.2.`).
pub(crate) const REQUEST_ID: &str = "Request-Id";
/// Alibaba EagleEye header as NewLife writes it (`traceid-parent`).
pub(crate) const EAGLEEYE_TRACEID: &str = "Eagleeye-Traceid";
/// NewLife's bare `TraceId` header: a trace id or a full traceparent.
pub(crate) const TRACE_ID: &str = "TraceId";

/// Which header a remote context was taken from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Source {
    /// `traceparent` (W3C, or NewLife's 30-hex form of it).
    TraceParent,
    /// `Request-Id` (.NET hierarchical id).
    RequestId,
    /// `Eagleeye-Traceid`.
    EagleEye,
    /// `TraceId`, bare or holding a traceparent.
    TraceId,
    /// SkyWalking `sw8` ([docs/propagation.md §4](crate::docs::propagation)), tried last through the installed propagator (feature
    /// `skywalking`).
    #[cfg_attr(not(feature = "skywalking"), allow(dead_code))]
    Sw8,
}

/// A span context received from another process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RemoteContext {
    /// 32 hex (W3C), 30 hex (NewLife) or verbatim (≤ 50 characters, from the NewLife headers).
    pub trace_id: TraceId,
    /// The caller's span: a 16-hex span id, a verbatim id (NewLife headers only), or none.
    pub parent: ParentId,
    /// Bit 0 (sampled / forced) and bit 1 (random trace id) as received; other bits are 0.
    /// Always 0 from the NewLife headers, which carry no flags (except a traceparent inside
    /// `TraceId`).
    pub flags: u8,
    /// Validated and normalized `tracestate`; only ever set with [`Source::TraceParent`].
    pub tracestate: Option<String>,
    pub source: Source,
}

/// Spaces and tabs (HTTP OWS) removed from both ends.
pub(crate) fn trim_ows(s: &str) -> &str {
    s.trim_matches([' ', '\t'])
}

/// Reads the remote context from `carrier`, trying in order `traceparent`, `Request-Id`,
/// `Eagleeye-Traceid` and `TraceId` ([docs/propagation.md §2](crate::docs::propagation)). The first valid one wins; an invalid
/// header is ignored and the next source is tried. `None` when no source is valid.
#[cfg(test)]
pub(crate) fn extract(carrier: &(impl Extractor + ?Sized)) -> Option<RemoteContext> {
    extract_with(carrier, |_| None)
}

/// [`extract`] with one more source tried last. This is the hook for SkyWalking `sw8` ([docs/propagation.md §2.1](crate::docs::propagation) item 5):
/// the SkyWalking layer passes a closure that reads `sw8` from the carrier and returns a context
/// with [`Source::Sw8`] (and keeps its own segment data on the side).
pub(crate) fn extract_with<E: Extractor + ?Sized>(
    carrier: &E,
    fallback: impl FnOnce(&E) -> Option<RemoteContext>,
) -> Option<RemoteContext> {
    from_traceparent(carrier)
        .or_else(|| from_request_id(carrier))
        .or_else(|| from_eagleeye(carrier))
        .or_else(|| from_trace_id(carrier))
        .or_else(|| fallback(carrier))
}

/// The one line of a header, or `None` when it is absent or repeated. Two or more
/// `traceparent` lines are invalid ([docs/propagation.md §3](crate::docs::propagation)); the NewLife headers are treated the same way, since
/// which line is meant cannot be told.
pub(crate) fn single<'a>(carrier: &'a (impl Extractor + ?Sized), name: &str) -> Option<&'a str> {
    match carrier.get_all(name).as_slice() {
        [one] => Some(*one),
        _ => None,
    }
}

fn from_traceparent(carrier: &(impl Extractor + ?Sized)) -> Option<RemoteContext> {
    let p = w3c::parse_traceparent(single(carrier, TRACEPARENT)?)?;
    let tracestate = w3c::parse_tracestate(&carrier.get_all(TRACESTATE));
    Some(RemoteContext {
        trace_id: p.trace_id,
        parent: ParentId::Span(p.parent.to_u64()),
        flags: p.flags,
        tracestate,
        source: Source::TraceParent,
    })
}

fn newlife_context(trace_id: TraceId, parent: ParentId, source: Source) -> RemoteContext {
    RemoteContext {
        trace_id,
        parent,
        flags: 0,
        tracestate: None,
        source,
    }
}

fn from_request_id(carrier: &(impl Extractor + ?Sized)) -> Option<RemoteContext> {
    let (trace, parent) = newlife::request_id(single(carrier, REQUEST_ID)?)?;
    Some(newlife_context(trace, parent, Source::RequestId))
}

fn from_eagleeye(carrier: &(impl Extractor + ?Sized)) -> Option<RemoteContext> {
    let (trace, parent) = newlife::eagleeye(single(carrier, EAGLEEYE_TRACEID)?)?;
    Some(newlife_context(trace, parent, Source::EagleEye))
}

fn from_trace_id(carrier: &(impl Extractor + ?Sized)) -> Option<RemoteContext> {
    Some(match newlife::trace_id(single(carrier, TRACE_ID)?)? {
        TraceIdHeader::TraceParent(p) => RemoteContext {
            trace_id: p.trace_id,
            parent: ParentId::Span(p.parent.to_u64()),
            flags: p.flags,
            tracestate: None,
            source: Source::TraceId,
        },
        TraceIdHeader::Bare(trace) => newlife_context(trace, ParentId::None, Source::TraceId),
    })
}

/// The outgoing `traceparent` for a span: `00-{trace}-{span}-{flags:02x}` with only bits 0 and 1
/// of `flags`.
///
/// A 32-hex trace id is written as is, and so is a 30-hex NewLife id: that is what NewLife .NET
/// itself sends (`00-{30hex}-{16hex}-01`), so NewLife peers continue their own trace. A verbatim
/// trace id cannot be written in a traceparent: `None` (see [`inject`], which then uses
/// [`w3c_trace_id_for`]).
pub(crate) fn traceparent(trace: &TraceId, span: SpanId, flags: u8) -> Option<String> {
    match trace.0 {
        TraceRepr::Hex32(_) | TraceRepr::Hex30(_) => {
            Some(w3c::format_traceparent(trace, span, flags))
        }
        TraceRepr::Verbatim(_) => None,
    }
}

/// The W3C trace id sent downstream for a verbatim trace id (one that came from `Request-Id`,
/// `Eagleeye-Traceid`, `TraceId` or `sw8` and is neither 32 nor 30 hex): a new 32-hex id, as
/// [docs/propagation.md §4](crate::docs::propagation) asks, derived from the text (FNV-1a, 128 bits) so that every outgoing call
/// of the same trace carries the same id and the downstream spans stay together. It is not
/// random, so bit 1 of the flags is not sent with it.
pub(crate) fn w3c_trace_id_for(verbatim: &str) -> TraceId {
    const OFFSET: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    const PRIME: u128 = 0x0000_0000_0100_0000_0000_0000_0000_013b;
    let mut h = OFFSET;
    for b in verbatim.bytes() {
        h ^= u128::from(b);
        h = h.wrapping_mul(PRIME);
    }
    TraceId(TraceRepr::Hex32(h.max(1)))
}

/// Writes `traceparent` (and `tracestate`, when given and non-empty) into `carrier` for an
/// outgoing call made by span `span`.
///
/// - A header the caller already set (any case) is never overwritten. `tracestate` is written only
///   together with our `traceparent`: if the caller set their own `traceparent`, ours and our
///   `tracestate` are both left out, so the two never describe different contexts.
/// - A verbatim trace id is replaced by [`w3c_trace_id_for`] with bit 1 cleared, and its
///   `tracestate` (if any) is not sent, since it does not belong to that id.
/// - Flags: only bits 0 and 1 are sent.
/// - A `tracestate` longer than [`w3c::MAX_TRACESTATE_INPUT`] (8 KiB, more than [`extract`]
///   ever returns) is truncated the W3C way first, so peers using these rules accept it.
pub(crate) fn inject(
    carrier: &mut (impl Injector + ?Sized),
    trace: &TraceId,
    span: SpanId,
    flags: u8,
    tracestate: Option<&str>,
) {
    if carrier.contains(TRACEPARENT) {
        return;
    }
    let (value, tracestate) = match traceparent(trace, span, flags) {
        Some(value) => (value, tracestate),
        None => {
            let id = w3c_trace_id_for(&trace.to_string());
            let flags = flags & FLAGS_MASK & !FLAG_RANDOM;
            (w3c::format_traceparent(&id, span, flags), None)
        }
    };
    carrier.set(TRACEPARENT, value);
    if let Some(ts) = tracestate.filter(|ts| !ts.is_empty() && !carrier.contains(TRACESTATE)) {
        // Never send more than a peer of ours would look at.
        let ts = if ts.len() > w3c::MAX_TRACESTATE_INPUT {
            w3c::truncate_tracestate(ts, w3c::MAX_TRACESTATE_INPUT)
        } else {
            Some(ts.to_owned())
        };
        if let Some(ts) = ts {
            carrier.set(TRACESTATE, ts);
        }
    }
}

#[cfg(test)]
mod tests;
