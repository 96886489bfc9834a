//! The embedded default reporter: prints each period's per-operation table to stderr.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write};
use std::time::Instant;

use crate::delivery::FlushOutcome;
use crate::model::TraceModel;
use crate::report::sink::Sink;
use crate::span::mailbox;

pub(crate) struct ConsoleReporter {
    color: bool,
    printed_dropped: u64,
    periods: u64,
}

impl ConsoleReporter {
    pub(crate) fn new() -> ConsoleReporter {
        ConsoleReporter {
            color: std::io::stderr().is_terminal(),
            printed_dropped: 0,
            periods: 0,
        }
    }
}

/// Milliseconds with a unit, at a precision that suits the size.
fn ms(v: f64) -> String {
    if v >= 10_000.0 {
        format!("{:.1} s", v / 1000.0)
    } else if v >= 100.0 || v == v.trunc() {
        format!("{v:.0} ms")
    } else {
        format!("{v:.1} ms")
    }
}

/// `1 span`, `2 spans`.
fn count(n: i64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// Most operations shown per period; the rest are summed in one line.
pub(crate) const MAX_ROWS: usize = 40;

/// The average cost as the web UI computes it: for 50 calls or more the slowest one is left
/// out, `(cost − max) / (total − 1)`. (The UI then rounds to whole ms; the table keeps a
/// decimal, which matters for fast operations.)
fn ui_average(total: i64, cost: i64, max: i64) -> f64 {
    if total >= 50 {
        (cost - max) as f64 / (total - 1) as f64
    } else if total > 0 {
        cost as f64 / total as f64
    } else {
        0.0
    }
}

/// Calls per second over the builder's window (the .NET console's `Speed`).
fn tps(total: i64, window_ms: i64) -> String {
    if window_ms <= 0 {
        return "-".to_owned();
    }
    let v = total as f64 * 1000.0 / window_ms as f64;
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Errors as a percentage of calls.
fn error_rate(errors: i64, total: i64) -> String {
    if errors == 0 || total == 0 {
        "0%".to_owned()
    } else {
        let p = errors as f64 * 100.0 / total as f64;
        if p >= 10.0 {
            format!("{p:.0}%")
        } else {
            format!("{p:.1}%")
        }
    }
}

/// Renders a model as an aligned table (no colour codes when `color` is false): the busiest
/// [`MAX_ROWS`] operations, with calls, errors, error rate, calls per second, the average as
/// the web UI computes it, min, max, the summed `Value` and a sample's trace id.
pub(crate) fn render(model: &TraceModel, dropped: u64, color: bool) -> String {
    let mut out = String::new();
    let spans: i64 = model.builders.iter().map(|b| b.total as i64).sum();
    let errors: i64 = model.builders.iter().map(|b| b.errors as i64).sum();
    let window = model
        .builders
        .iter()
        .map(|b| (b.end_time - b.start_time).max(0))
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        out,
        "stardust: {} — {}, {}, {} over {} ({} calls/s)",
        model.app_id,
        count(model.builders.len() as i64, "operation"),
        count(spans, "span"),
        count(errors, "error"),
        ms(window as f64),
        tps(spans, window)
    );
    const COLS: usize = 10;
    let headers: [&str; COLS] = [
        "operation",
        "total",
        "errors",
        "err%",
        "tps",
        "avg",
        "min",
        "max",
        "value",
        "sample trace",
    ];
    let mut busiest: Vec<_> = model.builders.iter().collect();
    busiest.sort_by(|a, b| b.total.cmp(&a.total).then_with(|| a.name.cmp(&b.name)));
    let rest = busiest.split_off(busiest.len().min(MAX_ROWS));
    let rows: Vec<[String; COLS]> = busiest
        .iter()
        .map(|b| {
            let sample = b
                .error_samples
                .iter()
                .chain(b.samples.iter())
                .flatten()
                .next()
                .map(|s| s.trace_id.clone())
                .unwrap_or_else(|| "-".to_owned());
            let total = b.total as i64;
            [
                b.name.clone(),
                b.total.to_string(),
                b.errors.to_string(),
                error_rate(b.errors as i64, total),
                tps(total, b.end_time - b.start_time),
                ms(ui_average(total, b.cost, b.max_cost as i64)),
                ms(b.min_cost.max(0) as f64),
                ms(b.max_cost as f64),
                b.value.to_string(),
                sample,
            ]
        })
        .collect();
    let mut widths = headers.map(|h| h.chars().count());
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: [&str; COLS], highlight: bool| {
        let mut l = String::from("  ");
        for (i, c) in cells.iter().enumerate() {
            let pad = widths[i] - c.chars().count();
            if i == 0 || i == COLS - 1 {
                l.push_str(c);
                l.extend(std::iter::repeat_n(' ', pad));
            } else {
                l.extend(std::iter::repeat_n(' ', pad));
                if (i == 2 || i == 3) && highlight {
                    let _ = write!(l, "\x1b[31;1m{c}\x1b[0m");
                } else {
                    l.push_str(c);
                }
            }
            if i < COLS - 1 {
                l.push_str("  ");
            }
        }
        l.trim_end().to_owned()
    };
    out.push_str(&line(headers, false));
    out.push('\n');
    for r in &rows {
        let highlight = color && r[2] != "0";
        let cells: [&str; COLS] = std::array::from_fn(|i| r[i].as_str());
        out.push_str(&line(cells, highlight));
        out.push('\n');
    }
    if !rest.is_empty() {
        let calls: i64 = rest.iter().map(|b| b.total as i64).sum();
        let errs: i64 = rest.iter().map(|b| b.errors as i64).sum();
        let _ = writeln!(
            out,
            "  … and {} more operation{} ({}, {})",
            rest.len(),
            if rest.len() == 1 { "" } else { "s" },
            count(calls, "span"),
            count(errs, "error")
        );
    }
    if dropped > 0 {
        let _ = writeln!(out, "  dropped spans (aggregator behind): {dropped}");
    }
    out
}

impl Sink for ConsoleReporter {
    fn report(&mut self, model: &TraceModel) {
        self.periods += 1;
        let dropped = mailbox::dropped();
        let text = render(
            model,
            dropped - self.printed_dropped.min(dropped),
            self.color,
        );
        self.printed_dropped = dropped;
        let _ = std::io::stderr().lock().write_all(text.as_bytes());
    }

    fn shutdown(&mut self, model: Option<&TraceModel>, _deadline: Instant) -> FlushOutcome {
        if let Some(m) = model {
            self.report(m);
        }
        let dropped = mailbox::dropped();
        let mut err = std::io::stderr().lock();
        if self.periods == 0 {
            let _ = writeln!(err, "stardust: no spans were recorded");
        }
        if dropped > 0 {
            let _ = writeln!(
                err,
                "stardust: {dropped} spans dropped in total (aggregator behind)"
            );
        }
        FlushOutcome::Delivered
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{SpanBuilderModel, SpanModel};

    #[test]
    fn table_is_aligned_and_plain_without_terminal() {
        let model = TraceModel {
            app_id: "app".into(),
            builders: vec![
                SpanBuilderModel {
                    name: "a::long_operation_name".into(),
                    total: 12,
                    errors: 2,
                    cost: 30,
                    max_cost: 9,
                    min_cost: 0,
                    error_samples: Some(vec![SpanModel {
                        trace_id: "abc".into(),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                SpanBuilderModel {
                    name: "b".into(),
                    total: 1,
                    cost: 12000,
                    max_cost: 12000,
                    min_cost: 12000,
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let t = render(&model, 3, false);
        assert!(!t.contains('\x1b'));
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].contains("2 operations, 13 spans, 2 errors"));
        assert!(lines[1].starts_with("  operation"));
        assert!(lines[2].contains("a::long_operation_name") && lines[2].contains("2.5 ms"));
        assert!(lines[2].contains(" 17% "), "{t}");
        assert!(lines[2].ends_with("abc"));
        assert!(lines[3].contains("12.0 s"));
        // columns line up: "total" header ends where the totals end
        let col = lines[1].find("total").unwrap() + "total".len();
        assert_eq!(&lines[2][col - 2..col], "12");
        assert_eq!(&lines[3][col - 1..col], "1");
        assert!(lines[4].contains("dropped spans (aggregator behind): 3"));
        let colored = render(&model, 0, true);
        assert!(colored.contains("\x1b[31;1m2\x1b[0m"));
    }

    #[test]
    fn busy_tables_are_capped_and_averages_match_the_web_ui() {
        // The web UI leaves the slowest call out from 50 calls on.
        assert_eq!(ui_average(50, 49 + 1000, 1000), 1.0);
        assert_eq!(ui_average(10, 25, 10), 2.5);
        assert_eq!(tps(500, 1000), "500");
        assert_eq!(tps(5, 2000), "2.50");
        let model = TraceModel {
            app_id: "app".into(),
            builders: (0..MAX_ROWS as i32 + 5)
                .map(|i| SpanBuilderModel {
                    name: format!("op{i}"),
                    total: i + 1,
                    errors: i % 2,
                    start_time: 0,
                    end_time: 1000,
                    value: 7,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let t = render(&model, 0, false);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2 + MAX_ROWS + 1, "{t}");
        assert!(lines[2].starts_with("  op44"), "busiest first: {t}");
        assert!(lines[2].contains(" 45 ") && lines[2].contains(" 7 "), "{t}");
        assert_eq!(
            *lines.last().unwrap(),
            "  … and 5 more operations (15 spans, 2 errors)"
        );
    }
}
