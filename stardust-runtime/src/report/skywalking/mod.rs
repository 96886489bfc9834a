//! The Apache SkyWalking backend (cargo feature `skywalking`): `sw8` propagation and segments
//! reported to the OAP's REST port over plain blocking HTTP (no gRPC, no async runtime).
//!
//! Enable it with [`Config::skywalking`](crate::Config::skywalking) or the SkyWalking agents'
//! environment variables (`SW_AGENT_COLLECTOR_BACKEND_SERVICES=http://oap:12800`,
//! `SW_AGENT_NAME`, `SW_AGENT_INSTANCE_NAME`). It runs beside the Stardust reporter or alone:
//! the same `#[trace]` spans are aggregated for Stardust and assembled into segments for
//! SkyWalking.
//!
//! ```no_run
//! let _guard = stardust_runtime::init_with(
//!     stardust_runtime::Config::new()
//!         .skywalking("http://127.0.0.1:12800")
//!         .skywalking_service("orders"),
//! )
//! .unwrap();
//! ```
//!
//! What is sent, and when:
//! - A segment is the spans of one trace under one root span in this process (a span that
//!   starts a trace, continues one from headers, or continues a captured context on another
//!   thread). It is posted once all its spans have ended (guards may be dropped in any order;
//!   see [docs/skywalking.md §3](crate::docs::skywalking)), batched with others
//!   (`POST /v3/segments`). Span ids are 0, 1, 2, … in start order; the children of an
//!   [abandoned](crate::SpanGuard::abandon) span hang under its parent.
//! - Spans keep their [`SpanKind`](crate::SpanKind): entry, exit (needs a peer: an exit span
//!   with an empty peer is sent as a local span) or local. The layer is `Http` for the spans of
//!   [`incoming`](crate::incoming) and [`ureq_tracing`](crate::ureq_tracing), else `Unknown` unless set with [`SpanGuard::set_layer`]; the
//!   component is 11000 (Rust) unless set with [`SpanGuard::set_component`].
//! - Outgoing calls carry `sw8` (when the span has a peer: SkyWalking links a call to the
//!   exit span that made it) and `sw8-correlation` (when there are [`correlation`] entries),
//!   next to `traceparent`. Incoming `sw8` is the last source of a trace context and, whichever
//!   header gave the context, the parent of this process's segment (`CrossProcess` reference).
//!   A context continued on another thread gives a `CrossThread` reference.
//! - Instance properties at start and every 10 heartbeats, keep-alive every heartbeat (30 s).

mod assembler;
pub mod correlation;
mod model;
mod reporter;
pub(crate) mod segment;
pub(crate) mod sw8;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};

use crate::collect::aggregator::Tap;
use crate::error::{ConfigError, InitError};
use crate::flags::FLAG_SAMPLED;
use crate::id::{ParentId, TraceId, TraceRepr, is_lower_hex, is_verbatim_id};
use crate::propagation::seam::{CaptureView, Extracted, InjectView, LinkRef, Propagator};
use crate::propagation::{self, Extractor, Injector, RemoteContext, Source};
use crate::span::guard::SpanGuard;
use crate::util::host::hostname;

use self::segment::{Identity, SwRef};

use self::model::KeyValue;
use self::reporter::{Ctl, Options, Reporter};
use self::sw8::{SW8, SW8_CORRELATION, Sw8};

/// SkyWalking's component id for Rust (`component-libraries.yml`).
pub const COMPONENT_RUST: i32 = 11000;
/// Attribute keys that carry SkyWalking-only span settings (never sent as tags).
pub(crate) const ATTR_LAYER: &str = "sw.layer";
pub(crate) const ATTR_COMPONENT: &str = "sw.component";
/// Longest service and instance names (the OAP cuts longer ones).
const MAX_NAME_CHARS: usize = 70;
/// Segments waiting for the reporter thread before new ones are dropped.
const SEGMENT_CHANNEL: usize = 4096;
/// Default heartbeat (keepAlive) period.
pub(crate) const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(30);

/// A span's SkyWalking layer (`spanLayer`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Layer {
    /// No particular technology.
    Unknown,
    /// A database call.
    Database,
    /// An RPC framework.
    RpcFramework,
    /// HTTP.
    Http,
    /// A message queue.
    Mq,
    /// A cache.
    Cache,
    /// Function as a service.
    Faas,
}

impl Layer {
    /// The name the OAP reads.
    pub fn name(self) -> &'static str {
        match self {
            Layer::Unknown => "Unknown",
            Layer::Database => "Database",
            Layer::RpcFramework => "RPCFramework",
            Layer::Http => "Http",
            Layer::Mq => "MQ",
            Layer::Cache => "Cache",
            Layer::Faas => "FAAS",
        }
    }

    pub(crate) fn from_name(name: &str) -> Option<Layer> {
        [
            Layer::Unknown,
            Layer::Database,
            Layer::RpcFramework,
            Layer::Http,
            Layer::Mq,
            Layer::Cache,
            Layer::Faas,
        ]
        .into_iter()
        .find(|l| l.name() == name)
    }
}

impl SpanGuard {
    /// Sets the span's SkyWalking layer (kept only while SkyWalking is enabled).
    pub fn set_layer(&mut self, layer: Layer) {
        self.add_attr(ATTR_LAYER, || layer.name().to_owned());
    }

    /// Sets the span's SkyWalking component id (default [`COMPONENT_RUST`]). Use only ids
    /// registered in SkyWalking's `component-libraries.yml`.
    pub fn set_component(&mut self, id: i32) {
        self.add_attr(ATTR_COMPONENT, || id.to_string());
    }
}

/// SkyWalking settings gathered by [`Config`](crate::Config).
#[derive(Clone, Debug, Default)]
pub(crate) struct SwConfig {
    /// OAP REST base URLs (fail-over order); SkyWalking is enabled when non-empty.
    pub backends: Vec<String>,
    /// Where `backends` came from, for error messages.
    pub backends_from: &'static str,
    pub service: Option<String>,
    pub instance: Option<String>,
    pub heartbeat: Option<Duration>,
}

impl SwConfig {
    /// `http://host:12800`, several separated by commas; a bare `host:port` means `http://`.
    pub(crate) fn set_backends(&mut self, list: &str) {
        self.backends = list
            .split(',')
            .map(|s| s.trim().trim_end_matches('/'))
            .filter(|s| !s.is_empty())
            .map(|s| {
                if s.contains("://") {
                    s.to_owned()
                } else {
                    format!("http://{s}")
                }
            })
            .collect();
    }
}

/// Drop and delivery counters shared by the assembler and the reporter.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    /// Segments dropped because the channel to the reporter was full.
    pub queue_full: AtomicU64,
    /// Spans left out of size-limited segments.
    pub size_limited: AtomicU64,
    /// Spans whose root never ended in this process, or that ended after their segment was
    /// sent without them.
    pub orphans: AtomicU64,
    /// Segments sent with spans still open (their root ended [`OPEN_SPANS_TIMEOUT`] before, or
    /// at shutdown).
    ///
    /// [`OPEN_SPANS_TIMEOUT`]: assembler::OPEN_SPANS_TIMEOUT
    pub incomplete: AtomicU64,
    /// Segments the OAP never accepted (retry queue overflow, rejected, shutdown).
    pub oap_dropped: AtomicU64,
    /// Segments accepted by the OAP.
    pub sent: AtomicU64,
}

impl Stats {
    fn log_totals(&self) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (full, limited, lost) = (
            get(&self.queue_full),
            get(&self.size_limited),
            get(&self.oap_dropped),
        );
        let (orphans, incomplete) = (get(&self.orphans), get(&self.incomplete));
        if full + limited + lost + orphans + incomplete > 0 {
            log::warn!(
                "stardust: SkyWalking: {} segments sent, {incomplete} of them with spans still open; dropped {full} segments (queue full), {lost} segments (not accepted by the OAP), {limited} spans (segment limits), {orphans} spans (their segment's root never ended, or was sent before them)",
                get(&self.sent)
            );
        } else {
            log::debug!(
                "stardust: SkyWalking: {} segments sent, none dropped",
                get(&self.sent)
            );
        }
    }
}

/// The running SkyWalking reporter, as the runtime holds it.
pub(crate) struct Handle {
    ctl: Sender<Ctl>,
    done: Receiver<()>,
    thread: JoinHandle<()>,
}

impl Handle {
    pub(crate) fn control(&self) -> Sender<Ctl> {
        self.ctl.clone()
    }

    /// Waits (until `deadline`) for the reporter to post the segments handed to it so far.
    pub(crate) fn flush(ctl: &Sender<Ctl>, deadline: Instant) -> bool {
        let (tx, rx) = crossbeam_channel::bounded(1);
        ctl.send_deadline(Ctl::Flush(tx, deadline), deadline)
            .is_ok()
            && rx.recv_deadline(deadline).is_ok()
    }

    /// Stops the reporter: what is queued is posted until `deadline`, then the thread ends.
    pub(crate) fn shutdown(self, deadline: Instant) {
        let _ = self.ctl.try_send(Ctl::Shutdown(deadline));
        if self
            .done
            .recv_deadline(deadline + Duration::from_millis(100))
            .is_ok()
        {
            let _ = self.thread.join();
        } else {
            log::warn!(
                "stardust: SkyWalking reporter did not finish by the shutdown deadline; left to end on its own"
            );
        }
    }
}

fn cut(name: &str) -> String {
    name.chars().take(MAX_NAME_CHARS).collect()
}

/// What a started SkyWalking backend gives the runtime to install: the assembler (an
/// aggregator tap), the propagator (`sw8` headers, segment references) and the handle.
pub(crate) struct Started {
    pub tap: Box<dyn Tap>,
    pub propagator: Arc<dyn Propagator>,
    pub handle: Handle,
}

/// Starts the reporter thread; returns what the runtime installs (see [`Started`]).
pub(crate) fn start(
    config: &SwConfig,
    default_service: &str,
    request_timeout: Duration,
) -> Result<Started, InitError> {
    let service = cut(config.service.as_deref().unwrap_or(default_service));
    let instance = cut(&config
        .instance
        .clone()
        .unwrap_or_else(|| format!("{}@{}", std::process::id(), hostname())));
    if service.trim().is_empty() || instance.trim().is_empty() {
        return Err(InitError::InvalidConfig(ConfigError::new(
            if service.trim().is_empty() {
                "SW_AGENT_NAME / Config::skywalking_service"
            } else {
                "SW_AGENT_INSTANCE_NAME / Config::skywalking_instance"
            },
            "SkyWalking service and instance names must not be empty",
        )));
    }
    let stats = Arc::new(Stats::default());
    let (tx, data) = crossbeam_channel::bounded(SEGMENT_CHANNEL);
    let (ctl, ctl_rx) = crossbeam_channel::bounded(8);
    let (done_tx, done) = crossbeam_channel::bounded(1);
    let reporter = Reporter::new(
        Options {
            backends: config.backends.clone(),
            service: service.clone(),
            instance: instance.clone(),
            properties: properties(),
            heartbeat: config.heartbeat.unwrap_or(DEFAULT_HEARTBEAT),
            request_timeout,
        },
        data,
        ctl_rx,
        stats.clone(),
    );
    let thread = std::thread::Builder::new()
        .name("stardust-skywalking".into())
        .spawn(move || {
            crate::span::local::suppress_this_thread();
            reporter.run();
            let _ = done_tx.send(());
        })
        .map_err(InitError::Spawn)?;
    let identity = Arc::new(Identity { service, instance });
    let tap = assembler::Assembler::new(identity.clone(), tx, ctl.clone(), stats);
    let propagator = Arc::new(Sw8Propagator { identity });
    Ok(Started {
        tap: Box::new(tap),
        propagator,
        handle: Handle { ctl, done, thread },
    })
}

/// The trace id kept for a trace continued from `sw8` alone: a 32-hex id as is, other ids
/// verbatim (up to 50 characters; `traceparent` then gets a W3C id derived from it), longer
/// ones through that derived W3C id. The segment keeps the `sw8` text either way.
fn trace_id_from_sw8(text: &str) -> TraceId {
    if text.len() == 32 && is_lower_hex(text) {
        if let Some(id) = u128::from_str_radix(text, 16)
            .ok()
            .and_then(TraceId::from_u128)
        {
            return id;
        }
    }
    if is_verbatim_id(text) && !text.bytes().all(|b| b == b'0') {
        return TraceId(TraceRepr::Verbatim(Arc::from(text)));
    }
    propagation::w3c_trace_id_for(text)
}

impl Sw8 {
    /// The context `sw8` gives when it is the source that wins ([docs/propagation.md §2.1](crate::docs::propagation) item 5).
    /// The parent is `{segment}.{index}` when that fits a verbatim id, else none.
    pub(crate) fn to_remote(&self) -> RemoteContext {
        let parent = format!("{}.{}", self.segment_id, self.span_index);
        RemoteContext {
            trace_id: trace_id_from_sw8(&self.trace_id),
            parent: if is_verbatim_id(&parent) {
                ParentId::Verbatim(Arc::from(parent))
            } else {
                ParentId::None
            },
            // The sample field is SkyWalking's sampling decision: kept as the sampled flag.
            flags: if self.sampled { FLAG_SAMPLED } else { 0 },
            tracestate: None,
            source: Source::Sw8,
        }
    }
}

/// `sw8` and `sw8-correlation`, installed in the core's propagation seam while SkyWalking runs.
struct Sw8Propagator {
    identity: Arc<Identity>,
}

impl Propagator for Sw8Propagator {
    /// `sw8` as the last source of a context, the `CrossProcess` reference from `sw8` whichever
    /// source won, correlation from `sw8-correlation`. A repeated `sw8` is invalid, as
    /// `traceparent`.
    fn extract(&self, headers: &dyn Extractor) -> Extracted {
        let sw8 = propagation::single(headers, SW8).and_then(Sw8::parse);
        let correlation = headers
            .get_all(SW8_CORRELATION)
            .iter()
            .flat_map(|v| sw8::parse_correlation(v))
            .fold(Vec::<(String, String)>::new(), |mut acc, (k, v)| {
                if let Some(e) = acc.iter_mut().find(|(key, _)| *key == k) {
                    e.1 = v;
                } else if acc.len() < sw8::MAX_CORRELATION_KEYS {
                    acc.push((k, v));
                }
                acc
            });
        let context = sw8.as_ref().map(Sw8::to_remote);
        let sampled = sw8.as_ref().is_some_and(|h| h.sampled);
        let link = sw8.map(|h| {
            Arc::new(SwRef {
                cross_process: true,
                trace_id: Arc::from(h.trace_id),
                parent_segment: h.segment_id,
                parent_span: h.span_index,
                parent_service: h.service,
                parent_instance: h.instance,
                parent_endpoint: h.endpoint,
                address: h.address,
            }) as LinkRef
        });
        Extracted {
            context,
            link,
            correlation: (!correlation.is_empty()).then(|| correlation.into()),
            sampled,
        }
    }

    /// Writes `sw8` (when the context names a segment and a peer address) and
    /// `sw8-correlation` (when there are entries), never overwriting a header already set.
    fn inject(&self, view: &InjectView<'_>, headers: &mut dyn Injector) {
        let r = SwRef::of(view.link);
        if let Some(r) = r {
            if !headers.contains(SW8) {
                let value = Sw8 {
                    sampled: true,
                    trace_id: r.trace_id.to_string(),
                    segment_id: r.parent_segment.clone(),
                    span_index: r.parent_span,
                    service: r.parent_service.clone(),
                    instance: r.parent_instance.clone(),
                    endpoint: r.parent_endpoint.clone(),
                    address: r.address.clone(),
                }
                .encode();
                match value {
                    Some(v) => headers.set(SW8, v),
                    None => log::debug!(
                        "stardust: no sw8 written: the span has no peer address (use exit_span)"
                    ),
                }
            }
        }
        if let Some(entries) = view.correlation {
            if !headers.contains(SW8_CORRELATION) {
                if let Some(v) = sw8::encode_correlation(entries) {
                    headers.set(SW8_CORRELATION, v);
                }
            }
        }
    }

    /// The reference a segment continued from this span points at (`CrossThread`; with the
    /// exit span's peer, what `sw8` sends to a callee).
    fn capture(&self, v: &CaptureView<'_>) -> Option<LinkRef> {
        // The segment's SkyWalking trace id: the one received in `sw8`, if any.
        let trace_id = SwRef::of(v.local_root_link)
            .map(|r| r.trace_id.clone())
            .unwrap_or_else(|| Arc::from(v.trace.to_string()));
        Some(Arc::new(SwRef {
            cross_process: false,
            trace_id,
            parent_segment: segment::segment_id(v.local_root),
            // The span's position is its `spanId` in the segment (assembler.rs keeps it).
            parent_span: i32::try_from(v.position).unwrap_or(i32::MAX),
            parent_service: self.identity.service.clone(),
            parent_instance: self.identity.instance.clone(),
            parent_endpoint: if v.local_root_name.is_empty() {
                "/".to_owned()
            } else {
                v.local_root_name.to_owned()
            },
            // The peer of an exit span: what `sw8` names as the address used to call it.
            address: v.exit_peer.unwrap_or_default().to_owned(),
        }))
    }
}

fn os_name() -> &'static str {
    match std::env::consts::OS {
        "linux" => "Linux",
        "macos" => "Mac OS X",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        other => other,
    }
}

/// The instance properties ([docs/skywalking.md §7](crate::docs::skywalking)): `language=rust`, `OS Name`, `hostname`,
/// one `ipv4` per address, `Process No.`.
fn properties() -> Vec<KeyValue> {
    let mut p = vec![
        KeyValue::new("language", "rust"),
        KeyValue::new("OS Name", os_name()),
        KeyValue::new("hostname", hostname()),
    ];
    p.extend(
        crate::util::host::local_ipv4s()
            .into_iter()
            .map(|ip| KeyValue::new("ipv4", ip.to_string())),
    );
    p.push(KeyValue::new("Process No.", std::process::id().to_string()));
    p
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::span::context::SpanContext;

    fn propagator() -> Sw8Propagator {
        Sw8Propagator {
            identity: Arc::new(Identity {
                service: "svc".into(),
                instance: "inst".into(),
            }),
        }
    }

    /// `SpanContext::extract` with this propagator installed.
    fn extract(headers: &(impl Extractor + ?Sized)) -> Option<SpanContext> {
        SpanContext::extract_using(Some(&propagator()), headers)
    }

    fn inject(ctx: &SpanContext, headers: &mut HashMap<String, String>) {
        let view = InjectView {
            link: ctx.link.as_ref(),
            correlation: ctx.correlation.as_deref(),
        };
        propagator().inject(&view, headers);
    }

    fn sw(ctx: &SpanContext) -> Option<&SwRef> {
        SwRef::of(ctx.link.as_ref())
    }

    #[test]
    fn backends_take_the_agents_forms() {
        let mut c = SwConfig::default();
        c.set_backends(" http://oap:12800/ , oap2:12800,,https://x");
        assert_eq!(
            c.backends,
            ["http://oap:12800", "http://oap2:12800", "https://x"]
        );
    }

    #[test]
    fn sw8_trace_ids_are_kept_or_derived() {
        let hex = "4bf92f3577b34da6a3ce929d0e0e4736";
        assert_eq!(trace_id_from_sw8(hex).to_string(), hex);
        assert!(trace_id_from_sw8(hex).is_w3c());
        let java = "a1b2.1.16500000000001";
        assert_eq!(trace_id_from_sw8(java).to_string(), java);
        let long = format!("{}.12.{}", "f".repeat(32), "1".repeat(17));
        let id = trace_id_from_sw8(&long);
        assert!(id.is_w3c());
        assert_eq!(id, propagation::w3c_trace_id_for(&long));
        assert!(!trace_id_from_sw8(&"0".repeat(32)).to_string().is_empty());
    }

    #[test]
    fn sw8_is_the_fifth_source_and_always_the_segment_parent() {
        const SW8_EXAMPLE: &str =
            "1-MQ==-NQ==-3-bWVzaA==-aW5zdGFuY2U=-L2FwaS92MS9oZWFsdGg=-ZXhhbXBsZS5jb206ODA4MA==";
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        // traceparent wins the context; the reference still comes from sw8.
        let both = [("traceparent", tp), ("sw8", SW8_EXAMPLE)];
        let ctx = extract(&both[..]).unwrap();
        assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let r = sw(&ctx).unwrap();
        assert!(r.cross_process);
        assert_eq!(
            (&*r.trace_id, r.parent_segment.as_str(), r.parent_span),
            ("1", "5", 3)
        );
        assert_eq!(r.address, "example.com:8080");
        // sw8 alone (or after an invalid traceparent) gives the context.
        let alone = [("traceparent", "00-zz-00-01"), ("sw8", SW8_EXAMPLE)];
        let ctx = extract(&alone[..]).unwrap();
        assert_eq!(ctx.trace_id.to_string(), "1");
        assert_eq!(ctx.parent_id().as_deref(), Some("5.3"));
        assert_eq!(ctx.flags, FLAG_SAMPLED, "sw8 sample 1 is the sampled flag");
        let unsampled = SW8_EXAMPLE.replacen('1', "0", 1);
        assert_eq!(
            extract(&[("sw8", unsampled.as_str())][..]).unwrap().flags,
            0
        );
        // Whichever source wins, sw8's decision is kept.
        let tp00 = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let ctx = extract(&[("traceparent", tp00), ("sw8", SW8_EXAMPLE)][..]).unwrap();
        assert_eq!(ctx.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(ctx.flags, FLAG_SAMPLED);
        let ctx = extract(&[("traceparent", tp00), ("sw8", unsampled.as_str())][..]).unwrap();
        assert_eq!(ctx.flags, 0);
        // A repeated or invalid sw8 is ignored.
        assert!(extract(&[("sw8", SW8_EXAMPLE), ("sw8", SW8_EXAMPLE)][..]).is_none());
        assert!(extract(&[("sw8", "1-MQ==-NQ==-3")][..]).is_none());
        let ctx = extract(&[("traceparent", tp), ("sw8", "junk")][..]).unwrap();
        assert!(sw(&ctx).is_none());
    }

    #[test]
    fn inject_never_writes_an_empty_field_nor_overwrites() {
        let mut ctx = extract(
            &[(
                "sw8",
                "1-MQ==-NQ==-3-bWVzaA==-aW5zdGFuY2U=-L2FwaS92MS9oZWFsdGg=-ZXhhbXBsZS5jb206ODA4MA==",
            )][..],
        )
        .unwrap();
        let mut h: HashMap<String, String> = HashMap::new();
        inject(&ctx, &mut h);
        assert!(h["sw8"].ends_with("-ZXhhbXBsZS5jb206ODA4MA=="));
        assert!(!h.contains_key("sw8-correlation"));
        let mut mine = sw(&ctx).unwrap().clone();
        mine.address.clear();
        ctx.link = Some(Arc::new(mine));
        ctx.correlation = Some(vec![("k".to_owned(), "v".to_owned())].into());
        let mut h: HashMap<String, String> = HashMap::new();
        inject(&ctx, &mut h);
        assert!(!h.contains_key("sw8"), "no address, no sw8");
        assert_eq!(h["sw8-correlation"], "aw==:dg==");
        let mut h: HashMap<String, String> = HashMap::new();
        h.insert("SW8-Correlation".into(), "mine".into());
        inject(&ctx, &mut h);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn properties_name_the_language_and_process() {
        let p = properties();
        assert_eq!(p[0], KeyValue::new("language", "rust"));
        assert!(p.iter().any(|kv| kv.key == "Process No."));
        assert!(
            p.iter()
                .any(|kv| kv.key == "hostname" && !kv.value.is_empty())
        );
    }

    #[test]
    fn layers_round_trip_by_name() {
        for l in [Layer::RpcFramework, Layer::Mq, Layer::Faas, Layer::Http] {
            assert_eq!(Layer::from_name(l.name()), Some(l));
        }
        assert_eq!(Layer::from_name("nope"), None);
    }
}
