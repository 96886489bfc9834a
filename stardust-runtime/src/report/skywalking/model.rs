//! The JSON the OAP reads ([docs/skywalking.md §5](crate::docs::skywalking)), field names as sent.

use serde::Serialize;

/// One segment: the spans of one trace under one root span in this process.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SegmentObject {
    pub trace_id: String,
    pub trace_segment_id: String,
    pub spans: Vec<SpanObject>,
    pub service: String,
    pub service_instance: String,
    pub is_size_limited: bool,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SpanObject {
    pub span_id: i32,
    pub parent_span_id: i32,
    /// Epoch milliseconds.
    pub start_time: i64,
    pub end_time: i64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refs: Vec<SegmentReference>,
    pub operation_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// `Entry`, `Exit` or `Local`: always sent (an absent one reads as `Entry`).
    pub span_type: &'static str,
    pub span_layer: &'static str,
    pub component_id: i32,
    pub is_error: bool,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<KeyValue>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logs: Vec<Log>,
    pub skip_analysis: bool,
}

#[derive(Debug, Serialize, Clone)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SegmentReference {
    /// `CrossProcess` or `CrossThread`.
    pub ref_type: &'static str,
    pub trace_id: String,
    pub parent_trace_segment_id: String,
    pub parent_span_id: i32,
    pub parent_service: String,
    pub parent_service_instance: String,
    pub parent_endpoint: String,
    /// Field 8 of the incoming `sw8`; left out for `CrossThread`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_address_used_at_peer: Option<String>,
}

#[derive(Debug, Serialize, Clone, PartialEq, Eq)]
pub(crate) struct KeyValue {
    pub key: String,
    pub value: String,
}

impl KeyValue {
    pub(crate) fn new(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value.into(),
        }
    }
}

#[derive(Debug, Serialize)]
pub(crate) struct Log {
    /// Epoch milliseconds.
    pub time: i64,
    pub data: Vec<KeyValue>,
}

/// `POST /v3/management/reportProperties`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstanceProperties<'a> {
    pub service: &'a str,
    pub service_instance: &'a str,
    pub properties: &'a [KeyValue],
}

/// `POST /v3/management/keepAlive`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct InstancePingPkg<'a> {
    pub service: &'a str,
    pub service_instance: &'a str,
}
