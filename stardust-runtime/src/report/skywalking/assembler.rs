//! The segment assembler: a [`Tap`] on the aggregator thread that groups finished spans by
//! segment and hands each segment to the reporter thread when its root span ends.
//!
//! Children end before their root, so a segment's spans wait in `pending` (keyed by the
//! root's span id) until the root's record arrives; a root with no children never touches
//! the map. Memory is bounded: at most [`MAX_SPANS_PER_SEGMENT`] spans per segment (more
//! mark it `isSizeLimited`), [`MAX_PENDING_SPANS`] spans and [`MAX_PENDING_SEGMENTS`]
//! segments waiting overall, and segments whose root never arrives (abandoned, lost with its
//! thread) are evicted at a period cut after [`STALE_AFTER`] without news. Nothing here blocks:
//! a full channel to the reporter drops the segment and counts it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use super::segment::{self, Identity, SwRef};
use crate::clock;
use crate::collect::aggregator::Tap;
use crate::span::record::{FLAG_LOCAL_ROOT, FLAG_PARENT_LOCAL_ROOT, SpanKind, SpanRecord};

use super::model::{KeyValue, Log, SegmentObject, SegmentReference, SpanObject};
use super::reporter::Ctl;
use super::{ATTR_COMPONENT, ATTR_LAYER, COMPONENT_RUST, Layer, Stats};

/// Most spans kept in one segment (SkyWalking agents default to 300; ours are smaller).
pub(crate) const MAX_SPANS_PER_SEGMENT: usize = 1000;
/// Most spans waiting for their root, over all segments.
pub(crate) const MAX_PENDING_SPANS: usize = 100_000;
/// Most segments waiting for their root.
pub(crate) const MAX_PENDING_SEGMENTS: usize = 10_000;
/// A waiting segment with no new span for this long is evicted at the next period cut.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(300);

struct Pending {
    spans: Vec<SpanObject>,
    size_limited: bool,
    last_seen: Instant,
}

pub(crate) struct Assembler {
    identity: Arc<Identity>,
    pending: HashMap<u64, Pending>,
    pending_spans: usize,
    tx: Sender<SegmentObject>,
    ctl: Sender<Ctl>,
    stats: Arc<Stats>,
}

impl Assembler {
    pub(crate) fn new(
        identity: Arc<Identity>,
        tx: Sender<SegmentObject>,
        ctl: Sender<Ctl>,
        stats: Arc<Stats>,
    ) -> Assembler {
        Assembler {
            identity,
            pending: HashMap::new(),
            pending_spans: 0,
            tx,
            ctl,
            stats,
        }
    }

    fn emit(&mut self, record: &SpanRecord, root: SpanObject) {
        let s = &record.span;
        let (mut spans, size_limited) = match self.pending.remove(&s.span_id) {
            Some(p) => {
                self.pending_spans -= p.spans.len();
                (p.spans, p.size_limited)
            }
            None => (Vec::with_capacity(1), false),
        };
        spans.push(root);
        let trace_id = s
            .extra
            .as_ref()
            .and_then(|e| SwRef::of(e.link.as_ref()))
            .map(|r| r.trace_id.to_string())
            .unwrap_or_else(|| s.trace.to_string());
        let segment = SegmentObject {
            trace_id,
            trace_segment_id: segment::segment_id(s.span_id),
            spans,
            service: self.identity.service.clone(),
            service_instance: self.identity.instance.clone(),
            is_size_limited: size_limited,
        };
        match self.tx.try_send(segment) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                if self.stats.queue_full.fetch_add(1, Ordering::Relaxed) == 0 {
                    log::warn!(
                        "stardust: SkyWalking reporter queue full; dropping segments (the total is logged at shutdown)"
                    );
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.stats.queue_full.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    fn hold(&mut self, record: &SpanRecord, span: SpanObject) {
        let now = Instant::now();
        let local_root = record.span.local_root;
        let room = self.pending_spans < MAX_PENDING_SPANS;
        if !self.pending.contains_key(&local_root) && self.pending.len() >= MAX_PENDING_SEGMENTS {
            self.count_limited();
            return;
        }
        let p = self.pending.entry(local_root).or_insert_with(|| Pending {
            spans: Vec::new(),
            size_limited: false,
            last_seen: now,
        });
        p.last_seen = now;
        if room && p.spans.len() < MAX_SPANS_PER_SEGMENT {
            p.spans.push(span);
            self.pending_spans += 1;
        } else {
            p.size_limited = true;
            self.count_limited();
        }
    }

    fn count_limited(&self) {
        if self.stats.size_limited.fetch_add(1, Ordering::Relaxed) == 0 {
            log::warn!(
                "stardust: SkyWalking segment limits reached ({MAX_SPANS_PER_SEGMENT} spans per segment, {MAX_PENDING_SPANS} waiting); dropping spans (segments are marked isSizeLimited)"
            );
        }
    }

    fn evict(&mut self, older_than: Option<Instant>) {
        let before = self.pending.len();
        let mut spans = 0;
        self.pending.retain(|_, p| {
            let keep = older_than.is_some_and(|t| p.last_seen >= t);
            if !keep {
                spans += p.spans.len();
            }
            keep
        });
        self.pending_spans -= spans;
        let evicted = before - self.pending.len();
        if evicted > 0 {
            self.stats
                .orphans
                .fetch_add(spans as u64, Ordering::Relaxed);
            log::debug!(
                "stardust: dropped {evicted} SkyWalking segments ({spans} spans) whose root span never ended here"
            );
        }
    }
}

impl Tap for Assembler {
    fn on_record(&mut self, record: &SpanRecord) {
        let span = span_object(record);
        if record.span.flags & FLAG_LOCAL_ROOT != 0 {
            self.emit(record, span);
        } else {
            self.hold(record, span);
        }
    }

    fn on_cut(&mut self) {
        if let Some(t) = Instant::now().checked_sub(STALE_AFTER) {
            self.evict(Some(t));
        }
    }

    fn on_shutdown(&mut self, deadline: Instant) {
        // Segments whose root is still open will never be complete.
        self.evict(None);
        let _ = self.ctl.try_send(Ctl::Shutdown(deadline));
    }
}

/// The `spanType` sent for a span: an exit span without a peer would break the OAP's
/// topology, so it is sent as a local span.
fn span_type(kind: SpanKind, has_peer: bool) -> &'static str {
    match kind {
        SpanKind::Entry => "Entry",
        SpanKind::Exit if has_peer => "Exit",
        SpanKind::Exit | SpanKind::Local => "Local",
    }
}

fn reference(r: &SwRef) -> SegmentReference {
    SegmentReference {
        ref_type: if r.cross_process {
            "CrossProcess"
        } else {
            "CrossThread"
        },
        trace_id: r.trace_id.to_string(),
        parent_trace_segment_id: r.parent_segment.clone(),
        parent_span_id: r.parent_span,
        parent_service: r.parent_service.clone(),
        parent_service_instance: r.parent_instance.clone(),
        parent_endpoint: r.parent_endpoint.clone(),
        network_address_used_at_peer: r.cross_process.then(|| r.address.clone()),
    }
}

/// One finished span as the OAP reads it.
pub(crate) fn span_object(record: &SpanRecord) -> SpanObject {
    let s = &record.span;
    let is_root = s.flags & FLAG_LOCAL_ROOT != 0;
    let parent_span_id = if is_root {
        -1
    } else if s.flags & FLAG_PARENT_LOCAL_ROOT != 0 {
        0
    } else {
        segment::span_index(s.parent, false)
    };
    let extra = s.extra.as_deref();
    let mut layer = None;
    let mut component_id = COMPONENT_RUST;
    let mut tags = Vec::new();
    let mut is_http = false;
    for (key, value) in extra.map(|e| e.attrs.as_slice()).unwrap_or_default() {
        match *key {
            ATTR_LAYER => layer = Layer::from_name(value),
            ATTR_COMPONENT => {
                if let Some(c) = value.parse().ok().filter(|c| *c > 0) {
                    component_id = c;
                }
            }
            _ => {
                is_http |= *key == "http.method";
                tags.push(KeyValue::new(*key, value.as_str()));
            }
        }
    }
    let peer = extra
        .and_then(|e| e.peer.as_deref())
        .filter(|p| !p.is_empty())
        .filter(|_| s.kind == SpanKind::Exit)
        .map(str::to_owned);
    let layer = layer.unwrap_or(if is_http && s.kind != SpanKind::Local {
        Layer::Http
    } else {
        Layer::Unknown
    });
    let end_time = clock::local_unix_ms(record.end);
    let error = extra.and_then(|e| e.error.as_deref());
    let logs = error
        .map(|message| {
            vec![Log {
                time: end_time,
                data: vec![
                    KeyValue::new("event", "error"),
                    KeyValue::new(
                        "error.kind",
                        if message == "panicked" {
                            "panic"
                        } else {
                            "error"
                        },
                    ),
                    KeyValue::new("message", message),
                ],
            }]
        })
        .unwrap_or_default();
    let refs = if is_root {
        extra
            .and_then(|e| SwRef::of(e.link.as_ref()))
            .map(|r| vec![reference(r)])
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    SpanObject {
        span_id: segment::span_index(s.span_id, is_root),
        parent_span_id,
        start_time: clock::local_unix_ms(s.start),
        end_time,
        refs,
        operation_name: s.name.as_str().to_owned(),
        span_type: span_type(s.kind, peer.is_some()),
        peer,
        span_layer: layer.name(),
        component_id,
        is_error: error.is_some(),
        tags,
        logs,
        skip_analysis: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TraceId;
    use crate::span::record::{Extra, Name, OpenSpan};

    fn record(span_id: u64, parent: u64, local_root: u64, flags: u8, kind: SpanKind) -> SpanRecord {
        SpanRecord {
            span: OpenSpan {
                name: Name::Static("op"),
                trace: TraceId::from_u128(7).unwrap(),
                span_id,
                parent,
                local_root,
                start: 1_000_000,
                value: 0,
                flags,
                kind,
                slot: 0,
                extra: None,
            },
            end: 3_000_000,
            tally: crate::span::record::RecordTally::count(1, 0, 0),
        }
    }

    fn assembler(cap: usize) -> (Assembler, crossbeam_channel::Receiver<SegmentObject>) {
        let (tx, rx) = crossbeam_channel::bounded(cap);
        let (ctl, _) = crossbeam_channel::bounded(1);
        let identity = Arc::new(Identity {
            service: "svc".into(),
            instance: "inst".into(),
        });
        (
            Assembler::new(identity, tx, ctl, Arc::new(Stats::default())),
            rx,
        )
    }

    #[test]
    fn children_wait_for_their_root() {
        let (mut a, rx) = assembler(8);
        a.on_record(&record(
            0x22,
            0x11,
            0x11,
            FLAG_PARENT_LOCAL_ROOT,
            SpanKind::Local,
        ));
        a.on_record(&record(0x33, 0x22, 0x11, 0, SpanKind::Local));
        assert!(rx.try_recv().is_err());
        a.on_record(&record(0x11, 0, 0x11, FLAG_LOCAL_ROOT, SpanKind::Entry));
        let seg = rx.try_recv().unwrap();
        assert_eq!(seg.spans.len(), 3);
        assert_eq!(seg.trace_segment_id, segment::segment_id(0x11));
        assert_eq!(seg.trace_id, TraceId::from_u128(7).unwrap().to_string());
        let root = &seg.spans[2];
        assert_eq!((root.span_id, root.parent_span_id), (0, -1));
        assert_eq!(root.span_type, "Entry");
        assert_eq!(
            (seg.spans[0].span_id, seg.spans[0].parent_span_id),
            (0x22, 0)
        );
        assert_eq!(
            (seg.spans[1].span_id, seg.spans[1].parent_span_id),
            (0x33, 0x22)
        );
        assert!(a.pending.is_empty());
        assert_eq!(a.pending_spans, 0);
    }

    #[test]
    fn exit_spans_need_a_peer_and_errors_get_a_log() {
        let mut r = record(0x22, 0x11, 0x11, FLAG_PARENT_LOCAL_ROOT, SpanKind::Exit);
        let s = span_object(&r);
        assert_eq!((s.span_type, s.peer.as_deref()), ("Local", None));
        r.span.extra = Some(Box::new(Extra {
            peer: Some(Arc::from("db:5432")),
            error: Some("boom".into()),
            attrs: vec![
                (ATTR_LAYER, "Database".into()),
                ("http.method", "GET".into()),
            ],
            ..Default::default()
        }));
        let s = span_object(&r);
        assert_eq!((s.span_type, s.peer.as_deref()), ("Exit", Some("db:5432")));
        assert_eq!(s.span_layer, "Database");
        assert_eq!(s.component_id, COMPONENT_RUST);
        assert_eq!(s.tags, vec![KeyValue::new("http.method", "GET")]);
        assert!(s.is_error);
        assert_eq!(s.logs[0].data[0], KeyValue::new("event", "error"));
        assert_eq!(s.logs[0].data[2], KeyValue::new("message", "boom"));
        assert_eq!(s.start_time, clock::local_unix_ms(r.span.start));
        assert_eq!(s.end_time, clock::local_unix_ms(r.end));
        assert!(s.end_time >= s.start_time);
    }

    #[test]
    fn limits_and_eviction_keep_memory_bounded() {
        let (mut a, rx) = assembler(1);
        for i in 0..(MAX_SPANS_PER_SEGMENT as u64 + 5) {
            a.on_record(&record(
                0x1000 + i,
                0x11,
                0x11,
                FLAG_PARENT_LOCAL_ROOT,
                SpanKind::Local,
            ));
        }
        a.on_record(&record(0x99, 0x98, 0x98, 0, SpanKind::Local));
        assert_eq!(a.pending_spans, MAX_SPANS_PER_SEGMENT + 1);
        a.on_record(&record(0x11, 0, 0x11, FLAG_LOCAL_ROOT, SpanKind::Local));
        let seg = rx.try_recv().unwrap();
        assert!(seg.is_size_limited);
        assert_eq!(seg.spans.len(), MAX_SPANS_PER_SEGMENT + 1);
        // The channel holds one segment: the next is dropped and counted.
        a.on_record(&record(0x55, 0, 0x55, FLAG_LOCAL_ROOT, SpanKind::Local));
        a.on_record(&record(0x56, 0, 0x56, FLAG_LOCAL_ROOT, SpanKind::Local));
        assert_eq!(a.stats.queue_full.load(Ordering::Relaxed), 1);
        a.on_cut();
        assert_eq!(a.pending.len(), 1, "not stale yet");
        a.evict(None);
        assert!(a.pending.is_empty());
        assert_eq!(a.pending_spans, 0);
        assert_eq!(a.stats.orphans.load(Ordering::Relaxed), 1);
    }
}
