//! What a forced cut (`flush()`, shutdown) delivered, passed from the reporters back through
//! the uploader and the aggregator to the caller. Plain data, below every layer that uses it.

use std::fmt;

use crate::model::TraceModel;

/// What was not delivered by a deadline: reports (one per period and reporter) and the spans
/// they count.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Undelivered {
    /// Reports not delivered.
    pub reports: u64,
    /// Spans they count.
    pub spans: u64,
}

impl Undelivered {
    /// The counts of `models`, one period each.
    pub(crate) fn of<'a>(models: impl IntoIterator<Item = &'a TraceModel>) -> Undelivered {
        let mut u = Undelivered::default();
        for m in models {
            u.reports += 1;
            u.spans += m
                .builders
                .iter()
                .map(|b| b.total.max(0) as u64)
                .sum::<u64>();
        }
        u
    }
}

impl fmt::Display for Undelivered {
    /// `2 reports (1,234,567 spans)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let plural = |n: u64, one: &str, many: &str| {
            format!("{} {}", thousands(n), if n == 1 { one } else { many })
        };
        write!(
            f,
            "{} ({})",
            plural(self.reports, "report", "reports"),
            plural(self.spans, "span", "spans")
        )
    }
}

/// `1234567` → `1,234,567`.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The outcome of a forced cut (`flush()` or shutdown) at one reporter, or at all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FlushOutcome {
    /// The cut and every report queued before it were delivered.
    Delivered,
    /// The deadline passed first. At a flush what is counted here stays queued and is retried;
    /// at shutdown it is lost.
    TimedOut(Undelivered),
}

impl FlushOutcome {
    /// Both outcomes together: delivered only when both were, the losses summed.
    pub(crate) fn and(self, other: FlushOutcome) -> FlushOutcome {
        match (self, other) {
            (FlushOutcome::Delivered, o) | (o, FlushOutcome::Delivered) => o,
            (FlushOutcome::TimedOut(a), FlushOutcome::TimedOut(b)) => {
                FlushOutcome::TimedOut(Undelivered {
                    reports: a.reports + b.reports,
                    spans: a.spans + b.spans,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn undelivered_reads_as_counts() {
        let u = Undelivered {
            reports: 2,
            spans: 1_234_567,
        };
        assert_eq!(u.to_string(), "2 reports (1,234,567 spans)");
        let one = Undelivered {
            reports: 1,
            spans: 1,
        };
        assert_eq!(one.to_string(), "1 report (1 span)");
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(123_456), "123,456");
        let d = FlushOutcome::Delivered;
        assert_eq!(d.and(d), d);
        assert_eq!(
            d.and(FlushOutcome::TimedOut(one)),
            FlushOutcome::TimedOut(one)
        );
        assert_eq!(
            FlushOutcome::TimedOut(one).and(FlushOutcome::TimedOut(u)),
            FlushOutcome::TimedOut(Undelivered {
                reports: 3,
                spans: 1_234_568
            })
        );
    }
}
