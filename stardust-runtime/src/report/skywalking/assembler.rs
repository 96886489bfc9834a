//! The segment assembler: a [`Tap`] on the aggregator thread that groups finished spans by
//! segment and hands each segment to the reporter thread once all its spans have ended.
//!
//! **When a segment is whole.** A span's record exists only once the span has ended, and
//! guards may be dropped in any order, so the root's record does not mean that its segment is
//! complete. The core numbers the spans of each local root as they open (`Extra::position`: 0
//! for the root, then 1, 2, …) and counts them in a counter its spans share
//! (`Extra::opened`). A segment is complete when its root's record (or the marker of an
//! abandoned root) has arrived and as many records and markers have arrived as spans were
//! opened under it: then none of its spans is open, and none can open any more (a context
//! captured from it starts a new local root). This holds although spans of a segment may open
//! on several threads (a future moved between them): a span opens while its parent is open on
//! the opening thread, so its increment is ordered before its parent's record is handed over
//! (and read here with acquire); once every span counted has arrived, every span ever opened
//! under the root was counted. A root with no other span never touches the map.
//!
//! **Bounded waiting.** A span that never ends here (a leaked guard, a thread that died, a
//! full mailbox) would hold its segment forever. A segment whose root ended more than
//! [`OPEN_SPANS_TIMEOUT`] ago is sent at the next period cut with the spans it has, counted in
//! `Stats::incomplete` and logged at warn; spans of it that end later are dropped as orphans.
//! A segment whose root never ends here is evicted after [`STALE_AFTER`] without news, its
//! spans counted as orphans. At shutdown, segments whose root ended are sent as they are.
//!
//! **Span ids.** `spanId`s are 0..n−1 in start (position) order, the root 0, as SkyWalking
//! agents number them. A span's position is also what a context captured from it names (`sw8`
//! to a callee, a `CrossThread` reference) before its segment exists, so when every span of
//! the segment is sent the ids are the positions. When some are not sent (abandoned, left out
//! by the size limit, still open at the timeout) the others are renumbered to stay 0..n−1,
//! except a span whose context was captured (`FLAG_CAPTURED`): it keeps its position, which
//! then leaves a gap, rather than have another segment's reference name the wrong span.
//!
//! **Parents.** A span's `parentSpanId` is that of its nearest sent ancestor in the segment:
//! the children of an abandoned (or left-out) span are re-parented to its parent. A span
//! whose parent was still open at the timeout hangs under the root. When the root itself was
//! abandoned its children are re-parented to the root's parent, which is outside the segment:
//! each of them becomes the root of a segment, with the abandoned root's reference (the first
//! one in start order keeps the segment's id; spans are renumbered from 0 and captured
//! positions are not kept there).
//!
//! **Memory** is bounded: at most [`MAX_SPANS_PER_SEGMENT`] spans per segment (more mark it
//! `isSizeLimited`; the rest are kept as parent links only, to re-parent their children),
//! [`MAX_PENDING_SPANS`] spans and [`MAX_PENDING_SEGMENTS`] segments waiting overall. Nothing
//! here blocks: a full channel to the reporter drops the segment and counts it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};

use super::segment::{self, Identity, SwRef};
use crate::clock;
use crate::collect::aggregator::Tap;
use crate::span::record::{
    FLAG_ABANDONED, FLAG_CAPTURED, FLAG_EXCEPTION, FLAG_LOCAL_ROOT, SpanKind, SpanRecord,
};
use crate::util::hash::FxBuild;

use super::model::{KeyValue, Log, SegmentObject, SegmentReference, SpanObject};
use super::reporter::Ctl;
use super::{ATTR_COMPONENT, ATTR_LAYER, COMPONENT_RUST, Layer, Stats};

/// Most spans kept in one segment (SkyWalking agents default to 300; ours are smaller).
pub(crate) const MAX_SPANS_PER_SEGMENT: usize = 1000;
/// Most spans waiting for their segment to complete, over all segments.
pub(crate) const MAX_PENDING_SPANS: usize = 100_000;
/// Most segments waiting to complete.
pub(crate) const MAX_PENDING_SEGMENTS: usize = 10_000;
/// A segment whose root has ended waits this long for its spans still open; it is then sent
/// at the next period cut without them.
pub(crate) const OPEN_SPANS_TIMEOUT: Duration = Duration::from_secs(60);
/// A waiting segment whose root has not ended, with no new span for this long, is evicted at
/// the next period cut.
pub(crate) const STALE_AFTER: Duration = Duration::from_secs(300);

/// One span of a waiting segment.
struct Node {
    span_id: u64,
    /// The parent's span id (for the root: whatever it continued, never looked up).
    parent: u64,
    /// Position within the local root: the start order, and the id a captured context names.
    position: u32,
    /// A context was captured from it: its position may be named by another segment.
    captured: bool,
    /// The span as sent; `None` for one not sent (abandoned, or left out by the size limit),
    /// kept only to re-parent its children.
    object: Option<SpanObject>,
}

/// What the root's record (or abandoned root's marker) tells about its segment.
struct Head {
    trace_id: String,
    refs: Vec<SegmentReference>,
    ended: Instant,
}

struct Pending {
    /// In arrival (end) order.
    nodes: Vec<Node>,
    /// Nodes with a span to send.
    kept: usize,
    /// Records and markers received, kept or not.
    arrived: u32,
    /// The local root's count of opened spans (`None`: not counted, complete with the root).
    opened: Option<Arc<AtomicU32>>,
    head: Option<Head>,
    size_limited: bool,
    last_seen: Instant,
}

impl Pending {
    fn new(now: Instant) -> Pending {
        Pending {
            nodes: Vec::new(),
            kept: 0,
            arrived: 0,
            opened: None,
            head: None,
            size_limited: false,
            last_seen: now,
        }
    }

    /// Spans opened under the root that have not ended (0 when not counted).
    fn still_open(&self) -> u32 {
        self.opened.as_ref().map_or(0, |c| {
            c.load(Ordering::Acquire).saturating_sub(self.arrived)
        })
    }

    fn is_complete(&self) -> bool {
        self.head.is_some() && self.still_open() == 0
    }
}

pub(crate) struct Assembler {
    identity: Arc<Identity>,
    /// Waiting segments, by their root's span id.
    pending: HashMap<u64, Pending, FxBuild>,
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
            pending: HashMap::default(),
            pending_spans: 0,
            tx,
            ctl,
            stats,
        }
    }

    fn send(&self, segment: SegmentObject) {
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

    /// Assembles and sends a segment taken out of `pending` (or never put there).
    fn emit(&self, root: u64, nodes: Vec<Node>, head: &Head, size_limited: bool) {
        for segment in assemble(root, nodes, head, size_limited, &self.identity) {
            self.send(segment);
        }
    }

    fn take(&mut self, root: u64) -> Option<Pending> {
        let p = self.pending.remove(&root)?;
        self.pending_spans -= p.nodes.len();
        Some(p)
    }

    /// Sends the segment of `root`, which has ended, with the spans it has: some of its
    /// spans are still open (the timeout, or shutdown).
    fn send_incomplete(&mut self, root: u64) {
        let Some(p) = self.take(root) else { return };
        let Some(head) = &p.head else { return };
        let open = p.still_open();
        if self.stats.incomplete.fetch_add(1, Ordering::Relaxed) == 0 {
            log::warn!(
                "stardust: a SkyWalking segment was sent with {open} of its spans still open, {}s after its root ended; spans of it that end later are dropped (the total is logged at shutdown)",
                OPEN_SPANS_TIMEOUT.as_secs()
            );
        }
        self.emit(root, p.nodes, head, p.size_limited);
    }

    /// Sends the segments whose root ended at least [`OPEN_SPANS_TIMEOUT`] before `now` (all
    /// of them when `now` is `None`), and evicts those whose root has not ended that had no
    /// news since `stale` (all of them when `None`).
    fn expire(&mut self, now: Option<Instant>, stale: Option<Instant>) {
        let due: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                p.head.as_ref().is_some_and(|h| {
                    now.is_none_or(|now| {
                        now.saturating_duration_since(h.ended) >= OPEN_SPANS_TIMEOUT
                    })
                })
            })
            .map(|(root, _)| *root)
            .collect();
        for root in due {
            self.send_incomplete(root);
        }
        let before = self.pending.len();
        let mut spans = 0;
        self.pending.retain(|_, p| {
            let keep = p.head.is_some() || stale.is_some_and(|t| p.last_seen >= t);
            if !keep {
                spans += p.nodes.iter().filter(|n| n.object.is_some()).count();
            }
            keep
        });
        let evicted = before - self.pending.len();
        if evicted > 0 {
            self.pending_spans = self.pending.values().map(|p| p.nodes.len()).sum();
            if self
                .stats
                .orphans
                .fetch_add(spans as u64, Ordering::Relaxed)
                == 0
            {
                log::warn!(
                    "stardust: dropped {evicted} SkyWalking segments ({spans} spans) whose root span never ended here, or that were sent before these spans ended (the total is logged at shutdown)"
                );
            }
        }
    }
}

fn count_limited(stats: &Stats) {
    if stats.size_limited.fetch_add(1, Ordering::Relaxed) == 0 {
        log::warn!(
            "stardust: SkyWalking segment limits reached ({MAX_SPANS_PER_SEGMENT} spans per segment, {MAX_PENDING_SPANS} waiting); dropping spans (segments are marked isSizeLimited)"
        );
    }
}

/// The segment's trace id and the root's reference, from the root's record.
fn head_of(record: &SpanRecord, now: Instant) -> Head {
    let s = &record.span;
    let link = s.extra.as_ref().and_then(|e| SwRef::of(e.link.as_ref()));
    Head {
        trace_id: link
            .map(|r| r.trace_id.to_string())
            .unwrap_or_else(|| s.trace.to_string()),
        refs: link.map(|r| vec![reference(r)]).unwrap_or_default(),
        ended: now,
    }
}

impl Tap for Assembler {
    fn on_record(&mut self, record: &SpanRecord) {
        let s = &record.span;
        let root = s.local_root;
        let is_root = s.flags & FLAG_LOCAL_ROOT != 0;
        // An `ex:` span is Stardust's exception statistics, not part of the trace: it takes
        // its place among the segment's spans like an abandoned one (counted, not sent).
        let abandoned = s.flags & (FLAG_ABANDONED | FLAG_EXCEPTION) != 0;
        let extra = s.extra.as_deref();
        let opened = extra.and_then(|e| e.opened.as_ref());
        let now = Instant::now();
        let known = self.pending.contains_key(&root);
        // A root whose segment has no other span.
        if is_root && !known && opened.is_none_or(|c| c.load(Ordering::Acquire) <= 1) {
            if !abandoned {
                let node = node(record, true);
                self.emit(root, vec![node], &head_of(record, now), false);
            }
            return;
        }
        if !known && self.pending.len() >= MAX_PENDING_SEGMENTS {
            count_limited(&self.stats);
            if is_root && !abandoned {
                self.stats.incomplete.fetch_add(1, Ordering::Relaxed);
                let node = node(record, true);
                self.emit(root, vec![node], &head_of(record, now), true);
            }
            return;
        }
        let room = self.pending_spans < MAX_PENDING_SPANS;
        let p = self
            .pending
            .entry(root)
            .or_insert_with(|| Pending::new(now));
        p.last_seen = now;
        p.arrived = p.arrived.saturating_add(1);
        if p.opened.is_none() {
            p.opened = opened.cloned();
        }
        if is_root {
            p.head = Some(head_of(record, now));
        }
        // The root is always kept; other spans while there is room, else only their parent
        // link (to re-parent their children) while the overall limit allows.
        let keep = !abandoned && (is_root || (room && p.kept < MAX_SPANS_PER_SEGMENT));
        if !abandoned && !keep {
            p.size_limited = true;
            count_limited(&self.stats);
        }
        if is_root || room {
            p.nodes.push(node(record, keep));
            p.kept += usize::from(keep);
            self.pending_spans += 1;
        }
        if p.is_complete() {
            if let Some(p) = self.take(root) {
                if let Some(head) = &p.head {
                    self.emit(root, p.nodes, head, p.size_limited);
                }
            }
        }
    }

    fn on_cut(&mut self) {
        let now = Instant::now();
        self.expire(Some(now), now.checked_sub(STALE_AFTER));
    }

    fn on_shutdown(&mut self, deadline: Instant) {
        // Spans still open now will never arrive: send what has ended, drop the rest.
        self.expire(None, None);
        let _ = self.ctl.try_send(Ctl::Shutdown(deadline));
    }
}

/// A record as a node of its segment; `keep`: with the span to send.
fn node(record: &SpanRecord, keep: bool) -> Node {
    let s = &record.span;
    Node {
        span_id: s.span_id,
        parent: s.parent,
        position: s.extra.as_ref().map_or(0, |e| e.position),
        captured: s.flags & FLAG_CAPTURED != 0,
        object: keep.then(|| span_object(record)),
    }
}

/// Where a span hangs in its segment.
#[derive(Clone, Copy)]
enum Up {
    /// Under the node at this index (a span that is sent).
    Node(usize),
    /// At the top: the segment's root.
    Top,
}

/// The segments of one local root `root` from its nodes (see the module doc): usually one;
/// several when the root was abandoned and had several children; none when nothing is left.
fn assemble(
    root: u64,
    mut nodes: Vec<Node>,
    head: &Head,
    size_limited: bool,
    identity: &Identity,
) -> Vec<SegmentObject> {
    let segment = |spans: Vec<SpanObject>, id: u64| SegmentObject {
        trace_id: head.trace_id.clone(),
        trace_segment_id: segment::segment_id(id),
        spans,
        service: identity.service.clone(),
        service_instance: identity.instance.clone(),
        is_size_limited: size_limited,
    };
    let n = nodes.len();
    if n == 1 && nodes[0].span_id == root {
        // The common case: a root alone.
        return match nodes.pop().and_then(|node| node.object) {
            Some(mut object) => {
                (object.span_id, object.parent_span_id) = (0, -1);
                object.refs = head.refs.clone();
                vec![segment(vec![object], root)]
            }
            None => Vec::new(),
        };
    }
    let index: HashMap<u64, usize, FxBuild> = nodes
        .iter()
        .enumerate()
        .map(|(i, node)| (node.span_id, i))
        .collect();
    let root_index = index
        .get(&root)
        .copied()
        .filter(|&i| nodes[i].object.is_some());
    // Above each span: its nearest sent ancestor, through spans not sent. A parent that is not
    // here (still open, or lost) counts as the root when the root is sent. Memoised along each
    // walk, so the whole pass is linear; a cycle (which real parent ids cannot form) ends as a
    // missing parent.
    let missing = root_index.map_or(Up::Top, Up::Node);
    let mut up: Vec<Option<Up>> = vec![None; n];
    let mut path = Vec::new();
    for i in 0..n {
        let mut at = i;
        let found = loop {
            if let Some(u) = up[at] {
                break u;
            }
            path.push(at);
            if path.len() > n || nodes[at].span_id == root {
                break if nodes[at].span_id == root {
                    Up::Top
                } else {
                    missing
                };
            }
            match index.get(&nodes[at].parent) {
                None => break missing,
                Some(&j) if nodes[j].object.is_some() => break Up::Node(j),
                Some(&j) if nodes[j].span_id == root => break Up::Top,
                Some(&j) => at = j,
            }
        };
        for k in path.drain(..) {
            up[k] = Some(found);
        }
    }
    let up: Vec<Up> = up.into_iter().map(|u| u.unwrap_or(Up::Top)).collect();
    // The top of each span's segment, memoised likewise.
    let mut top: Vec<Option<usize>> = vec![None; n];
    for i in 0..n {
        let mut at = i;
        let found = loop {
            if let Some(t) = top[at] {
                break t;
            }
            path.push(at);
            match up[at] {
                Up::Node(j) if path.len() <= n => at = j,
                _ => break at,
            }
        };
        for k in path.drain(..) {
            top[k] = Some(found);
        }
    }
    let top: Vec<usize> = top.into_iter().map(|t| t.unwrap_or(0)).collect();
    let mut tops: Vec<usize> = (0..n)
        .filter(|&i| nodes[i].object.is_some() && top[i] == i)
        .collect();
    tops.sort_by_key(|&i| (root_index != Some(i), nodes[i].position, nodes[i].span_id));
    let group_of: HashMap<usize, usize> = tops.iter().enumerate().map(|(g, &t)| (t, g)).collect();
    // Each segment's spans, in arrival (end) order.
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); tops.len()];
    for i in (0..n).filter(|&i| nodes[i].object.is_some()) {
        if let Some(&g) = group_of.get(&top[i]) {
            groups[g].push(i);
        }
    }
    let mut out = Vec::with_capacity(tops.len());
    let mut ids = vec![0i32; n];
    for (g, members) in groups.into_iter().enumerate() {
        let t = tops[g];
        let mut by_start = members.clone();
        by_start.sort_by_key(|&i| (i != t, nodes[i].position, nodes[i].span_id));
        // Positions are the ids only under the real root.
        let keep_captured = root_index == Some(t);
        let mut next = 0i32;
        for &i in &by_start {
            let position = i32::try_from(nodes[i].position).unwrap_or(i32::MAX);
            let id = if i != t && keep_captured && nodes[i].captured {
                next.max(position)
            } else {
                next
            };
            ids[i] = id;
            next = id.saturating_add(1);
        }
        let mut spans = Vec::with_capacity(members.len());
        for i in members {
            let parent = match up[i] {
                Up::Node(j) if i != t => ids[j],
                _ => -1,
            };
            let mut object = nodes[i].object.take().expect("members are sent");
            object.span_id = ids[i];
            object.parent_span_id = parent;
            if i == t {
                object.refs = head.refs.clone();
            }
            spans.push(object);
        }
        out.push(segment(spans, if g == 0 { root } else { nodes[t].span_id }));
    }
    out
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

/// One finished span as the OAP reads it; `spanId` and `parentSpanId` are set when its
/// segment is assembled (and the root's `refs` then, from the segment's head).
pub(crate) fn span_object(record: &SpanRecord) -> SpanObject {
    let s = &record.span;
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
    SpanObject {
        span_id: 0,
        parent_span_id: -1,
        start_time: clock::local_unix_ms(s.start),
        end_time,
        refs: Vec::new(),
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

    /// The spans of one local root as the core would record them: positions in open order,
    /// one shared counter.
    struct Tree {
        root: u64,
        opened: Arc<AtomicU32>,
    }

    impl Tree {
        fn new(root: u64) -> Tree {
            Tree {
                root,
                opened: Arc::new(AtomicU32::new(1)),
            }
        }

        /// Opens a span (the root must be opened first, as `open(root, 0)`): its position.
        fn open(&self, span_id: u64) -> u32 {
            if span_id == self.root {
                0
            } else {
                self.opened.fetch_add(1, Ordering::Relaxed)
            }
        }

        fn record(&self, span_id: u64, parent: u64, position: u32, flags: u8) -> SpanRecord {
            let root = span_id == self.root;
            SpanRecord {
                span: OpenSpan {
                    name: Name::Static(if root { "root" } else { "op" }),
                    trace: TraceId::from_u128(7).unwrap(),
                    span_id,
                    parent,
                    local_root: self.root,
                    start: 1_000_000 + u64::from(position),
                    value: 0,
                    flags: flags | if root { FLAG_LOCAL_ROOT } else { 0 },
                    kind: SpanKind::Local,
                    slot: 0,
                    extra: Some(Box::new(Extra {
                        position,
                        opened: Some(self.opened.clone()),
                        ..Default::default()
                    })),
                },
                end: 3_000_000,
                tally: crate::span::record::RecordTally::count(1, 0, 0),
            }
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

    /// `(spanId, parentSpanId)` of the span whose start time encodes `position`.
    fn ids(seg: &SegmentObject) -> Vec<(i32, i32)> {
        let mut v: Vec<_> = seg
            .spans
            .iter()
            .map(|s| (s.span_id, s.parent_span_id))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn children_wait_for_their_root() {
        let (mut a, rx) = assembler(8);
        let t = Tree::new(0x11);
        let (r, c, g) = (t.open(0x11), t.open(0x22), t.open(0x33));
        a.on_record(&t.record(0x33, 0x22, g, 0));
        a.on_record(&t.record(0x22, 0x11, c, 0));
        assert!(rx.try_recv().is_err());
        a.on_record(&t.record(0x11, 0, r, 0));
        let seg = rx.try_recv().unwrap();
        assert_eq!(seg.trace_segment_id, segment::segment_id(0x11));
        assert_eq!(seg.trace_id, TraceId::from_u128(7).unwrap().to_string());
        assert_eq!(ids(&seg), [(0, -1), (1, 0), (2, 1)]);
        // In end order, root last; ids in start order.
        assert_eq!(seg.spans[2].operation_name, "root");
        assert_eq!((seg.spans[0].span_id, seg.spans[1].span_id), (2, 1));
        assert!(a.pending.is_empty());
        assert_eq!(a.pending_spans, 0);
    }

    #[test]
    fn a_root_alone_is_sent_at_once() {
        let (mut a, rx) = assembler(8);
        let t = Tree::new(0x11);
        a.on_record(&t.record(0x11, 0, t.open(0x11), 0));
        assert_eq!(ids(&rx.try_recv().unwrap()), [(0, -1)]);
        assert!(a.pending.is_empty());
    }

    #[test]
    fn a_root_that_ends_first_waits_for_its_children() {
        let (mut a, rx) = assembler(8);
        let t = Tree::new(0x11);
        let (r, c, g) = (t.open(0x11), t.open(0x22), t.open(0x33));
        a.on_record(&t.record(0x11, 0, r, 0));
        assert!(rx.try_recv().is_err(), "two spans still open");
        a.on_record(&t.record(0x22, 0x11, c, 0));
        assert!(rx.try_recv().is_err(), "one span still open");
        // A span opened under the open child after the root ended joins the segment.
        let late = t.open(0x44);
        a.on_record(&t.record(0x33, 0x22, g, 0));
        assert!(rx.try_recv().is_err());
        a.on_record(&t.record(0x44, 0x22, late, 0));
        let seg = rx.try_recv().unwrap();
        assert_eq!(ids(&seg), [(0, -1), (1, 0), (2, 1), (3, 1)]);
        assert!(a.pending.is_empty());
    }

    #[test]
    fn children_of_an_abandoned_span_take_its_parent() {
        let (mut a, rx) = assembler(8);
        let t = Tree::new(0x11);
        let (r, m, c, d) = (t.open(0x11), t.open(0x22), t.open(0x33), t.open(0x44));
        a.on_record(&t.record(0x44, 0x33, d, 0));
        a.on_record(&t.record(0x33, 0x22, c, 0));
        a.on_record(&t.record(0x22, 0x11, m, FLAG_ABANDONED));
        a.on_record(&t.record(0x11, 0, r, 0));
        let seg = rx.try_recv().unwrap();
        // 0x33 (position 2) is now 1, under the root; 0x44 is 2, under 0x33.
        assert_eq!(ids(&seg), [(0, -1), (1, 0), (2, 1)]);
        assert_eq!(seg.spans.len(), 3);
    }

    #[test]
    fn a_captured_span_keeps_its_position() {
        let (mut a, rx) = assembler(8);
        let t = Tree::new(0x11);
        let (r, m, c, d) = (t.open(0x11), t.open(0x22), t.open(0x33), t.open(0x44));
        a.on_record(&t.record(0x22, 0x11, m, FLAG_ABANDONED));
        a.on_record(&t.record(0x33, 0x11, c, FLAG_CAPTURED));
        a.on_record(&t.record(0x44, 0x11, d, 0));
        a.on_record(&t.record(0x11, 0, r, 0));
        let seg = rx.try_recv().unwrap();
        // 0x33 was named elsewhere as span 2: it stays 2 (a gap at 1), and 0x44 follows.
        assert_eq!(ids(&seg), [(0, -1), (2, 0), (3, 0)]);
    }

    #[test]
    fn children_of_an_abandoned_root_become_roots() {
        let (mut a, rx) = assembler(8);
        let t = Tree::new(0x11);
        let (r, x, y, x1) = (t.open(0x11), t.open(0x22), t.open(0x33), t.open(0x44));
        let mut root = t.record(0x11, 0x99, r, FLAG_ABANDONED);
        root.span.extra_mut().link = Some(Arc::new(SwRef {
            cross_process: false,
            trace_id: Arc::from("t-1"),
            parent_segment: "parent-seg".into(),
            parent_span: 4,
            parent_service: "svc".into(),
            parent_instance: "inst".into(),
            parent_endpoint: "/up".into(),
            address: String::new(),
        }));
        a.on_record(&t.record(0x44, 0x22, x1, 0));
        a.on_record(&t.record(0x22, 0x11, x, 0));
        a.on_record(&t.record(0x33, 0x11, y, 0));
        a.on_record(&root);
        let first = rx.try_recv().unwrap();
        let second = rx.try_recv().unwrap();
        assert!(rx.try_recv().is_err());
        assert_eq!(first.trace_segment_id, segment::segment_id(0x11));
        assert_eq!(ids(&first), [(0, -1), (1, 0)]);
        assert_eq!(second.trace_segment_id, segment::segment_id(0x33));
        assert_eq!(ids(&second), [(0, -1)]);
        for seg in [&first, &second] {
            assert_eq!(seg.trace_id, "t-1");
            let top = seg.spans.iter().find(|s| s.span_id == 0).unwrap();
            assert_eq!(top.refs.len(), 1);
            assert_eq!(top.refs[0].parent_span_id, 4);
            assert_eq!(top.refs[0].parent_trace_segment_id, "parent-seg");
        }
        // An abandoned root alone sends nothing.
        let t = Tree::new(0x55);
        a.on_record(&t.record(0x55, 0, t.open(0x55), FLAG_ABANDONED));
        assert!(rx.try_recv().is_err());
        assert!(a.pending.is_empty());
    }

    #[test]
    fn open_spans_are_waited_for_a_bounded_time() {
        let (mut a, rx) = assembler(8);
        let t = Tree::new(0x11);
        let (r, c, g) = (t.open(0x11), t.open(0x22), t.open(0x33));
        a.on_record(&t.record(0x33, 0x22, g, 0));
        a.on_record(&t.record(0x11, 0, r, 0));
        a.on_cut();
        assert!(rx.try_recv().is_err(), "still within the timeout");
        a.expire(Some(Instant::now() + OPEN_SPANS_TIMEOUT), None);
        let seg = rx.try_recv().unwrap();
        // 0x22 is still open: its child hangs under the root.
        assert_eq!(ids(&seg), [(0, -1), (1, 0)]);
        assert_eq!(a.stats.incomplete.load(Ordering::Relaxed), 1);
        // When it ends, it is an orphan, evicted once stale.
        a.on_record(&t.record(0x22, 0x11, c, 0));
        assert_eq!(a.pending.len(), 1);
        a.expire(
            Some(Instant::now()),
            Some(Instant::now() + Duration::from_secs(1)),
        );
        assert!(a.pending.is_empty());
        assert_eq!(a.stats.orphans.load(Ordering::Relaxed), 1);
        assert_eq!(a.pending_spans, 0);
    }

    #[test]
    fn shutdown_sends_what_ended_and_drops_the_rest() {
        let (mut a, rx) = assembler(8);
        let t = Tree::new(0x11);
        let (r, _c) = (t.open(0x11), t.open(0x22));
        a.on_record(&t.record(0x11, 0, r, 0));
        let u = Tree::new(0x55);
        let (_r, c) = (u.open(0x55), u.open(0x66));
        a.on_record(&u.record(0x66, 0x55, c, 0));
        a.on_shutdown(Instant::now());
        assert_eq!(ids(&rx.try_recv().unwrap()), [(0, -1)]);
        assert!(rx.try_recv().is_err());
        assert!(a.pending.is_empty());
        assert_eq!(a.stats.incomplete.load(Ordering::Relaxed), 1);
        assert_eq!(a.stats.orphans.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn exit_spans_need_a_peer_and_errors_get_a_log() {
        let mut r = Tree::new(0x11).record(0x22, 0x11, 1, 0);
        r.span.kind = SpanKind::Exit;
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
    fn limits_keep_memory_bounded_and_parents_valid() {
        let (mut a, rx) = assembler(1);
        let t = Tree::new(0x11);
        let r = t.open(0x11);
        // A chain: each span the parent of the next; they end innermost first.
        let chain: Vec<(u64, u32)> = (0..(MAX_SPANS_PER_SEGMENT as u64 + 5))
            .map(|i| (0x1000 + i, t.open(0x1000 + i)))
            .collect();
        for (k, &(id, pos)) in chain.iter().enumerate().rev() {
            let parent = if k == 0 { 0x11 } else { chain[k - 1].0 };
            a.on_record(&t.record(id, parent, pos, 0));
        }
        assert_eq!(a.pending_spans, MAX_SPANS_PER_SEGMENT + 5);
        a.on_record(&t.record(0x11, 0, r, 0));
        let seg = rx.try_recv().unwrap();
        assert!(seg.is_size_limited);
        assert_eq!(seg.spans.len(), MAX_SPANS_PER_SEGMENT + 1);
        let known: std::collections::HashSet<i32> = seg.spans.iter().map(|s| s.span_id).collect();
        assert_eq!(known.len(), seg.spans.len());
        assert!(
            seg.spans
                .iter()
                .all(|s| s.parent_span_id == -1 || known.contains(&s.parent_span_id))
        );
        assert_eq!(*known.iter().max().unwrap() as usize, seg.spans.len() - 1);
        assert!(a.pending.is_empty());
        assert_eq!(a.pending_spans, 0);
        // The channel holds one segment: the next is dropped and counted.
        for root in [0x55, 0x56] {
            let u = Tree::new(root);
            a.on_record(&u.record(root, 0, u.open(root), 0));
        }
        assert_eq!(a.stats.queue_full.load(Ordering::Relaxed), 1);
    }
}
