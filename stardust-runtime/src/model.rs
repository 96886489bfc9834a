//! The wire model of a Stardust trace report (`TraceModel`), with the field names the
//! Stardust server expects (PascalCase, as the .NET client writes them).

use serde::{Deserialize, Serialize};

/// One period's report: every operation that finished a span in the period.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct TraceModel {
    /// Application id (required by the server).
    pub app_id: String,
    /// Display name of the application.
    pub app_name: Option<String>,
    /// Instance id, `<ip>@<pid>`.
    pub client_id: Option<String>,
    /// Application version; must be non-empty for the server to send `excludes`.
    pub version: Option<String>,
    /// One builder per operation name.
    pub builders: Vec<SpanBuilderModel>,
}

/// Aggregated spans of one operation name in one period (`ISpanBuilder` on the wire).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct SpanBuilderModel {
    /// Operation name (≤ 200 characters).
    pub name: String,
    /// Unix ms of the first span started in this period (server-corrected).
    pub start_time: i64,
    /// Unix ms of the period cut (server-corrected).
    pub end_time: i64,
    /// Spans counted.
    pub total: i32,
    /// Spans that carried an error.
    pub errors: i32,
    /// Sum of the spans' durations, ms.
    pub cost: i64,
    /// Largest duration, ms.
    pub max_cost: i32,
    /// Smallest duration, ms (−1 while no span was counted).
    pub min_cost: i32,
    /// Sum of the spans' user values.
    pub value: i64,
    /// Sampled normal spans (`null` when there are none, as the .NET client sends).
    pub samples: Option<Vec<SpanModel>>,
    /// Sampled error spans.
    pub error_samples: Option<Vec<SpanModel>>,
}

/// One sampled span (`ISpan` on the wire). Its name is the enclosing builder's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[non_exhaustive]
pub struct SpanModel {
    /// Span id, 16 lowercase hex.
    pub id: String,
    /// Parent span id; `None` at a root.
    pub parent_id: Option<String>,
    /// Trace id.
    pub trace_id: String,
    /// Unix ms, server-corrected.
    pub start_time: i64,
    /// Unix ms, server-corrected.
    pub end_time: i64,
    /// User number.
    pub value: i64,
    /// Data tag, cut to `MaxTagLength`.
    pub tag: Option<String>,
    /// 1 when the trace is force-sampled, else 0.
    pub trace_flag: u8,
    /// Error text, `None` for a normal span.
    pub error: Option<String>,
}

impl TraceModel {
    /// A copy without samples: what the retry queue keeps.
    pub fn without_samples(&self) -> TraceModel {
        TraceModel {
            app_id: self.app_id.clone(),
            app_name: self.app_name.clone(),
            client_id: self.client_id.clone(),
            version: self.version.clone(),
            builders: self
                .builders
                .iter()
                .map(|b| SpanBuilderModel {
                    name: b.name.clone(),
                    samples: None,
                    error_samples: None,
                    ..*b
                })
                .collect(),
        }
    }
}
