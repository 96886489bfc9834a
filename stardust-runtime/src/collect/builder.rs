//! One operation's spans in one period, aggregated by the rules of the .NET
//! `DefaultSpanBuilder` ([docs/sampling.md §1–§7](crate::docs::sampling)). Pure logic; the aggregator thread
//! owns the builders.
//!
//! Counts arrive already summed, per thread ([`merge`](Builder::merge)), so the builder never
//! sees every span one by one; the sampling rules need each span's place in the period
//! (`total`, `e` of §3). The builder places the spans in one order consistent with every
//! thread's own order: a sample candidate carries its index among its *stream*'s spans (its
//! thread's spans of its callsite in the period, see `span::tally`), and its place is that
//! index plus, for each other stream, the index of that stream's last candidate seen so far.
//! (The spans of a stream that travelled no record are placed just before its next record, or
//! at the end.) Places so given are distinct and increase with arrival, so the rules keep
//! their meaning exactly: the first `MaxSamples` places are sampled, slow or flagged spans up
//! to ten times that, and with one thread the order is the thread's own. A span the thread did
//! not send could only have had a later place, past the caps.

use std::collections::HashMap;

use crate::model::{SpanBuilderModel, SpanModel};
use crate::settings::Snapshot;
use crate::span::record::SpanRecord;
use crate::span::tally::Counts;
pub(crate) use crate::span::tally::MAX_COST_MS;
use crate::util::hash::FxBuild;

/// The stream of the spans the aggregator counts itself (records of spans without a slot).
const COUNTED_STREAM: u64 = u64::MAX;
/// Longest operation name the server stores.
pub(crate) const MAX_NAME_CHARS: usize = 200;

#[derive(Debug)]
pub(crate) struct Builder {
    pub name: String,
    pub start_time: i64,
    pub total: i32,
    pub errors: i32,
    pub cost: i64,
    pub max_cost: i32,
    pub min_cost: i32,
    pub value: i64,
    pub samples: Vec<SpanModel>,
    pub error_samples: Vec<SpanModel>,
    /// Per stream, the indices (spans, errors) of its last candidate seen …
    streams: HashMap<u64, (u64, u64), FxBuild>,
    /// … and their sums.
    placed: u64,
    placed_errors: u64,
    /// Spans and errors of [`COUNTED_STREAM`] so far.
    counted: u64,
    counted_errors: u64,
}

impl Builder {
    pub(crate) fn new(name: String, start_time: i64) -> Builder {
        Builder {
            name,
            start_time,
            total: 0,
            errors: 0,
            cost: 0,
            max_cost: 0,
            min_cost: -1,
            value: 0,
            samples: Vec::new(),
            error_samples: Vec::new(),
            streams: HashMap::default(),
            placed: 0,
            placed_errors: 0,
            counted: 0,
            counted_errors: 0,
        }
    }

    /// Adds a thread's counters of this operation for the period.
    pub(crate) fn merge(&mut self, c: &Counts) {
        if c.total == 0 {
            return;
        }
        if c.start_ms < self.start_time {
            self.start_time = c.start_ms;
        }
        let clamp = |v: u64| v.min(i32::MAX as u64) as i32;
        self.total = self.total.saturating_add(clamp(c.total));
        self.errors = self.errors.saturating_add(clamp(c.errors));
        self.cost = self.cost.saturating_add(c.cost.min(i64::MAX as u64) as i64);
        self.value = self.value.wrapping_add(c.value);
        if c.max as i32 > self.max_cost {
            self.max_cost = c.max as i32;
        }
        if self.min_cost < 0 || (c.min as i32) < self.min_cost {
            self.min_cost = c.min as i32;
        }
    }

    /// Counts one finished span that was not counted where it closed, and considers it as a
    /// sample ([docs/sampling.md §3](crate::docs::sampling)); times are local Unix ms (see
    /// `into_model`). Returns false when the span was discarded (longer than 1 h).
    pub(crate) fn add_timed(
        &mut self,
        record: &SpanRecord,
        start_ms: i64,
        end_ms: i64,
        settings: &Snapshot,
    ) -> bool {
        let cost = (end_ms - start_ms).max(0);
        if cost > MAX_COST_MS {
            return false;
        }
        let cost = cost as i32;
        if start_ms < self.start_time {
            self.start_time = start_ms;
        }
        self.cost += cost as i64;
        self.total = self.total.saturating_add(1);
        self.value = self.value.wrapping_add(record.span.value);
        if cost > self.max_cost {
            self.max_cost = cost;
        }
        if self.min_cost < 0 || cost < self.min_cost {
            self.min_cost = cost;
        }
        self.counted += 1;
        if record.span.error().is_some() {
            self.errors = self.errors.saturating_add(1);
            self.counted_errors += 1;
        }
        let (n, e) = (self.counted, self.counted_errors);
        self.offer(record, start_ms, end_ms, COUNTED_STREAM, n, e, settings);
        true
    }

    /// Considers a sample candidate, counted already: the `total`-th span (and, with it, the
    /// `errors`-th error) of its `stream` in the period. Places it (see the module docs) and
    /// keeps it when its place passes the rules of [docs/sampling.md §3](crate::docs::sampling).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn offer(
        &mut self,
        record: &SpanRecord,
        start_ms: i64,
        end_ms: i64,
        stream: u64,
        total: u64,
        errors: u64,
        settings: &Snapshot,
    ) {
        let last = self.streams.entry(stream).or_insert((0, 0));
        let (before, before_errors) = *last;
        *last = (total.max(before), errors.max(before_errors));
        // This stream's spans up to this one, plus every other stream's up to its last record.
        let others = self.placed - before;
        let other_errors = self.placed_errors - before_errors;
        self.placed += total.saturating_sub(before);
        self.placed_errors += errors.saturating_sub(before_errors);
        let total = total.saturating_add(others);
        let e = errors.saturating_add(other_errors);

        let cost = (end_ms - start_ms).max(0);
        let force = record.span.is_sampled();
        if record.span.error().is_some() {
            let max = settings.max_errors.max(0) as u64;
            if e <= max || (force && e <= 10 * max) {
                self.error_samples
                    .push(sample(record, start_ms, end_ms, settings));
            }
        } else {
            let max = settings.max_samples.max(0) as u64;
            let slow = settings.timeout_ms > 0 && cost > settings.timeout_ms as i64;
            if total <= max || ((slow || force) && total <= 10 * max) {
                self.samples
                    .push(sample(record, start_ms, end_ms, settings));
            }
        }
    }

    /// The builder as reported (the wire form). Times were kept in local ms; `offset` (server
    /// minus local clock) is added to each, and `end_time` is already server time. Its
    /// `StartTime` is never before `period_start` (local Unix ms).
    pub(crate) fn into_model(
        mut self,
        period_start: i64,
        end_time: i64,
        offset: i64,
    ) -> SpanBuilderModel {
        for s in self.samples.iter_mut().chain(self.error_samples.iter_mut()) {
            s.start_time = s.start_time.saturating_add(offset);
            s.end_time = s.end_time.saturating_add(offset);
        }
        SpanBuilderModel {
            name: self.name,
            start_time: self.start_time.max(period_start).saturating_add(offset),
            end_time,
            total: self.total,
            errors: self.errors,
            cost: self.cost,
            max_cost: self.max_cost,
            min_cost: self.min_cost,
            value: self.value,
            samples: (!self.samples.is_empty()).then_some(self.samples),
            error_samples: (!self.error_samples.is_empty()).then_some(self.error_samples),
        }
    }
}

fn sample(record: &SpanRecord, start_ms: i64, end_ms: i64, settings: &Snapshot) -> SpanModel {
    let span = &record.span;
    let extra = span.extra.as_deref();
    let parent_id = if span.parent != 0 {
        Some(format!("{:016x}", span.parent))
    } else {
        extra.and_then(|e| e.remote_parent.as_deref().map(str::to_owned))
    };
    let tag = if settings.max_tag_length > 0 {
        extra
            .and_then(|e| e.tag.as_deref())
            .map(|t| crate::util::text::cut_utf16(t, settings.max_tag_length as usize).to_owned())
    } else {
        None
    };
    SpanModel {
        id: format!("{:016x}", span.span_id),
        parent_id,
        trace_id: span.trace.to_string(),
        start_time: start_ms,
        end_time: end_ms,
        value: span.value,
        tag,
        trace_flag: span.flags & 1,
        error: extra.and_then(|e| e.error.clone()),
    }
}

/// The name a builder is kept under: cut at the first `?`, `#` or `&` past position 0, then
/// to 200 characters. `None` for names that are never recorded (empty).
pub(crate) fn normalize_name(name: &str) -> Option<&str> {
    let cut = match name.find(['?', '#', '&']) {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    };
    // The server drops (does not cut) a name over 200 UTF-16 units: cut it here, on a
    // character boundary, counting as .NET does (docs/sampling.md §6.2).
    let cut = crate::util::text::cut_utf16(cut, MAX_NAME_CHARS);
    (!cut.is_empty()).then_some(cut)
}

/// Whole-name wildcard match ignoring case: `*` any run, `?` one character.
#[cfg(test)]
pub(crate) fn wildcard_match(pattern: &str, text: &str) -> bool {
    Excludes::new(&[pattern.to_owned()]).matches(text)
}

/// Lowercased characters of a name or pattern.
fn folded(s: &str) -> Vec<char> {
    s.chars().flat_map(char::to_lowercase).collect()
}

fn wildcard(p: &[char], t: &[char]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// The exclude patterns of one cut, folded to lower case once.
pub(crate) struct Excludes(Vec<Vec<char>>);

impl Excludes {
    pub(crate) fn new(patterns: &[String]) -> Excludes {
        Excludes(patterns.iter().map(|p| folded(p)).collect())
    }

    /// True for builders the report drops: excluded by pattern, or the client's own uploads.
    pub(crate) fn matches(&self, name: &str) -> bool {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with("/trace/report") || lower.ends_with("/trace/reportraw") {
            return true;
        }
        if self.0.is_empty() {
            return false;
        }
        let text = folded(name);
        self.0.iter().any(|p| wildcard(p, &text))
    }
}

#[cfg(test)]
pub(crate) fn is_excluded(name: &str, excludes: &[String]) -> bool {
    Excludes::new(excludes).matches(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::TraceId;
    use crate::span::record::{Extra, Name, OpenSpan, RecordTally, SpanKind};

    fn rec(error: bool, flag: u8) -> SpanRecord {
        SpanRecord {
            span: OpenSpan {
                name: Name::Static("op"),
                trace: TraceId::random(),
                span_id: 7,
                parent: 0,
                local_root: 7,
                start: 0,
                value: 2,
                flags: flag,
                kind: SpanKind::Local,
                slot: 0,
                extra: error.then(|| {
                    Box::new(Extra {
                        error: Some("boom".into()),
                        tag: Some("t".repeat(20)),
                        ..Default::default()
                    })
                }),
            },
            end: 0,
            tally: RecordTally::count(1, 0, 0),
        }
    }

    #[test]
    fn merged_counts_add_up() {
        let mut b = Builder::new("op".into(), 1000);
        b.merge(&Counts {
            total: 3,
            errors: 1,
            cost: 12,
            min: 2,
            max: 7,
            value: -4,
            start_ms: 990,
        });
        b.merge(&Counts {
            total: 2,
            errors: 0,
            cost: 2,
            min: 0,
            max: 2,
            value: 10,
            start_ms: 1500,
        });
        assert_eq!(
            (
                b.total,
                b.errors,
                b.cost,
                b.min_cost,
                b.max_cost,
                b.value,
                b.start_time
            ),
            (5, 1, 14, 0, 7, 6, 990)
        );
    }

    #[test]
    fn counts_costs_and_the_min_cost_sentinel() {
        let s = Snapshot::for_tests(1, 10, 5000);
        let mut b = Builder::new("op".into(), 1000);
        assert_eq!(b.min_cost, -1);
        assert!(b.add_timed(&rec(false, 0), 1000, 1000, &s));
        assert_eq!(b.min_cost, 0, "a 0 ms span sets MinCost to 0");
        assert!(b.add_timed(&rec(false, 0), 1000, 1030, &s));
        assert!(
            b.add_timed(&rec(false, 0), 1000, 990, &s),
            "negative cost counts as 0"
        );
        assert_eq!(
            (b.total, b.cost, b.max_cost, b.min_cost, b.value),
            (3, 30, 30, 0, 6)
        );
        assert!(
            !b.add_timed(&rec(false, 0), 0, MAX_COST_MS + 1, &s),
            "over 1 h is discarded"
        );
        assert_eq!(b.total, 3);
    }

    #[test]
    fn sampling_caps() {
        let s = Snapshot::for_tests(2, 3, 100);
        let mut b = Builder::new("op".into(), 0);
        for _ in 0..5 {
            b.add_timed(&rec(false, 0), 0, 1, &s);
        }
        assert_eq!(b.samples.len(), 2, "first MaxSamples normal spans");
        for _ in 0..30 {
            b.add_timed(&rec(false, 0), 0, 500, &s);
        }
        // slow spans sampled while total <= 10 * MaxSamples = 20
        assert_eq!(b.samples.len(), 2 + (20 - 5));
        for _ in 0..5 {
            b.add_timed(&rec(true, 0), 0, 1, &s);
        }
        assert_eq!(b.error_samples.len(), 3, "first MaxErrors error spans");
        for _ in 0..40 {
            b.add_timed(&rec(true, 1), 0, 1, &s);
        }
        // forced error spans while errors <= 10 * MaxErrors = 30
        assert_eq!(b.error_samples.len(), 3 + (30 - 5));
        assert_eq!(b.errors, 45);
        let m = b.into_model(0, 99, 1000);
        assert_eq!(m.start_time, 1000);
        assert_eq!(m.error_samples.as_ref().unwrap()[0].start_time, 1000);
        assert_eq!(m.end_time, 99);
        assert_eq!(m.error_samples.unwrap()[0].error.as_deref(), Some("boom"));
    }

    #[test]
    fn start_time_lies_within_the_period() {
        let s = Snapshot::for_tests(1, 10, 0);
        let mut b = Builder::new("op".into(), 500);
        b.add_timed(&rec(false, 0), 500, 5_000, &s);
        // The span started before the period began at 2_000: the builder starts with it.
        assert_eq!(b.start_time, 500);
        assert_eq!(b.into_model(2_000, 6_000, 0).start_time, 2_000);
    }

    /// Offers the `n`-th span of `stream` (errors counted as given).
    fn offer(b: &mut Builder, s: &Snapshot, stream: u64, n: u64, e: u64, error: bool, cost: i64) {
        b.offer(&rec(error, 0), 0, cost, stream, n, e, s);
    }

    #[test]
    fn candidates_of_several_threads_are_placed_in_one_order() {
        // MaxSamples 1: of the first spans of three threads, one is the period's first.
        let s = Snapshot::for_tests(1, 3, 100);
        let mut b = Builder::new("op".into(), 0);
        for stream in 1..=3 {
            offer(&mut b, &s, stream, 1, 0, false, 1);
        }
        assert_eq!(b.samples.len(), 1);
        // Slow ones up to 10 × MaxSamples places: thread 1's 2nd..10th are places 4..12, of
        // which 4..10 are kept.
        for n in 2..=10 {
            offer(&mut b, &s, 1, n, 0, false, 500);
        }
        assert_eq!(b.samples.len(), 1 + 7);
        // Errors: the first MaxErrors places, whatever the thread.
        let mut b = Builder::new("op".into(), 0);
        offer(&mut b, &s, 1, 1, 1, true, 1);
        offer(&mut b, &s, 2, 1, 1, true, 1);
        offer(&mut b, &s, 2, 2, 2, true, 1);
        offer(&mut b, &s, 1, 2, 2, true, 1);
        offer(&mut b, &s, 3, 1, 1, true, 1);
        assert_eq!(b.error_samples.len(), 3);
    }

    #[test]
    fn one_stream_is_placed_by_its_own_indices() {
        // A thread's candidates, with the spans it did not send in between, are sampled as
        // if the builder had seen every span (what `add_timed` does).
        let s = Snapshot::for_tests(2, 10, 100);
        let mut offered = Builder::new("op".into(), 0);
        let mut counted = Builder::new("op".into(), 0);
        for n in 1..=30u64 {
            let cost = if n % 4 == 0 { 500 } else { 1 };
            counted.add_timed(&rec(false, 0), 0, cost, &s);
            let slow = cost > 100;
            if n <= 2 || (slow && n <= 20) {
                offer(&mut offered, &s, 9, n, 0, false, cost);
            }
        }
        assert_eq!(offered.samples.len(), counted.samples.len());
        assert_eq!(offered.samples.len(), 2 + 5);
    }

    #[test]
    fn forced_normal_spans_sampled_up_to_ten_times() {
        let s = Snapshot::for_tests(1, 10, 0);
        let mut b = Builder::new("op".into(), 0);
        for _ in 0..15 {
            b.add_timed(&rec(false, 1), 0, 1, &s);
        }
        assert_eq!(b.samples.len(), 10);
        assert!(b.samples.iter().all(|x| x.trace_flag == 1));
    }

    #[test]
    fn tags_cut_and_disabled() {
        let mut s = Snapshot::for_tests(1, 10, 0);
        s.max_tag_length = 5;
        let mut b = Builder::new("op".into(), 0);
        b.add_timed(&rec(true, 0), 0, 1, &s);
        assert_eq!(b.error_samples[0].tag.as_deref(), Some("ttttt"));
        s.max_tag_length = 0;
        b.add_timed(&rec(true, 0), 0, 1, &s);
        assert_eq!(b.error_samples[1].tag, None);
        // Counted in UTF-16 units, as the server's column is: 😀 is two.
        s.max_tag_length = 3;
        let mut r = rec(true, 0);
        r.span.extra_mut().tag = Some("a😀b😀".into());
        b.add_timed(&r, 0, 1, &s);
        assert_eq!(b.error_samples[2].tag.as_deref(), Some("a😀"));
    }

    #[test]
    fn names() {
        assert_eq!(normalize_name("/api/x?id=1"), Some("/api/x"));
        assert_eq!(normalize_name("/a#frag"), Some("/a"));
        assert_eq!(normalize_name("/a&b"), Some("/a"));
        assert_eq!(normalize_name("?only"), Some("?only"));
        assert_eq!(normalize_name(""), None);
        let long = "é".repeat(300);
        assert_eq!(normalize_name(&long).unwrap().chars().count(), 200);
        // Counted in UTF-16 units, as the server counts: 150 emoji are 300 units.
        let emoji = "😀".repeat(150);
        assert_eq!(normalize_name(&emoji).unwrap().chars().count(), 100);
    }

    #[test]
    fn wildcards_match_whole_names_ignoring_case() {
        assert!(wildcard_match("/health*", "/Health/check"));
        assert!(wildcard_match("/health", "/HEALTH"));
        assert!(!wildcard_match("/health", "/health/x"));
        assert!(wildcard_match("*", "anything"));
        assert!(wildcard_match("a?c", "abc"));
        assert!(!wildcard_match("a?c", "ac"));
        assert!(wildcard_match("*b*d", "abcbd"));
        assert!(!wildcard_match("*b*d", "abcbe"));
        assert!(is_excluded("http://h:6600/Trace/ReportRaw", &[]));
        assert!(is_excluded("/x", &["/X".into()]));
        assert!(!is_excluded("/x/y", &["/x".into()]));
    }
}
