//! The SkyWalking cross-process headers ([docs/propagation.md §4](crate::docs::propagation)): `sw8` and `sw8-correlation`.
//!
//! Decoding is total (any input gives a value or `None`, never a panic) and lenient about
//! missing Base64 padding; encoding never emits an empty field, since the Java and Python
//! receivers reject the whole header when one is empty.

use base64::Engine;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// The header carrying the parent segment.
pub(crate) const SW8: &str = "sw8";
/// The header carrying correlation entries.
pub(crate) const SW8_CORRELATION: &str = "sw8-correlation";
/// Longest `sw8` value accepted.
pub(crate) const MAX_SW8_LEN: usize = 2048;
/// Most correlation entries kept (SkyWalking's `correlation.element_max_number`).
pub(crate) const MAX_CORRELATION_KEYS: usize = 3;
/// Longest correlation value, in characters (SkyWalking's `correlation.value_max_length`).
pub(crate) const MAX_CORRELATION_VALUE_CHARS: usize = 128;
/// Longest `sw8-correlation` value read (3 entries of generous size, Base64-encoded).
const MAX_CORRELATION_HEADER_LEN: usize = 4096;

/// Standard alphabet; padding optional when decoding.
const LENIENT: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// The eight fields of an `sw8` header, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Sw8 {
    pub sampled: bool,
    pub trace_id: String,
    pub segment_id: String,
    pub span_index: i32,
    pub service: String,
    pub instance: String,
    pub endpoint: String,
    /// The address the caller used to reach this process (`networkAddressUsedAtPeer`).
    pub address: String,
}

fn b64(text: &str) -> String {
    STANDARD.encode(text.as_bytes())
}

/// Base64 → non-empty UTF-8 text.
fn unb64(field: &str) -> Option<String> {
    let bytes = LENIENT.decode(field).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    (!text.is_empty()).then_some(text)
}

impl Sw8 {
    /// Parses an `sw8` value (surrounding spaces and tabs tolerated). `None` unless it has
    /// exactly 8 fields, sample `0`/`1`, a span index in `0..=i32::MAX`, every Base64 field
    /// decoding to non-empty UTF-8, and at most [`MAX_SW8_LEN`] characters.
    pub(crate) fn parse(value: &str) -> Option<Sw8> {
        let value = value.trim_matches([' ', '\t']);
        if value.len() > MAX_SW8_LEN {
            return None;
        }
        let mut fields = value.split('-');
        let mut next = || fields.next();
        let sampled = match next()? {
            "1" => true,
            "0" => false,
            _ => return None,
        };
        let trace_id = unb64(next()?)?;
        let segment_id = unb64(next()?)?;
        let index = next()?;
        if index.is_empty() || index.len() > 10 || !index.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let span_index = index.parse::<i32>().ok()?;
        let service = unb64(next()?)?;
        let instance = unb64(next()?)?;
        let endpoint = unb64(next()?)?;
        let address = unb64(next()?)?;
        if next().is_some() {
            return None;
        }
        Some(Sw8 {
            sampled,
            trace_id,
            segment_id,
            span_index,
            service,
            instance,
            endpoint,
            address,
        })
    }

    /// The header value, or `None` when a field is empty or the index negative: such a header
    /// would be rejected whole by the receivers, so it is better not sent.
    pub(crate) fn encode(&self) -> Option<String> {
        let texts = [
            &self.trace_id,
            &self.segment_id,
            &self.service,
            &self.instance,
            &self.endpoint,
            &self.address,
        ];
        if self.span_index < 0 || texts.iter().any(|t| t.is_empty()) {
            return None;
        }
        let value = format!(
            "{}-{}-{}-{}-{}-{}-{}-{}",
            if self.sampled { '1' } else { '0' },
            b64(&self.trace_id),
            b64(&self.segment_id),
            self.span_index,
            b64(&self.service),
            b64(&self.instance),
            b64(&self.endpoint),
            b64(&self.address),
        );
        (value.len() <= MAX_SW8_LEN).then_some(value)
    }
}

/// Parses `sw8-correlation`: `b64(key):b64(value)` pairs joined by `,`. Malformed pairs,
/// empty keys and values longer than 128 characters are skipped; at most 3 entries are kept
/// (a repeated key keeps its last value).
pub(crate) fn parse_correlation(value: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    let value = value.trim_matches([' ', '\t']);
    if value.len() > MAX_CORRELATION_HEADER_LEN {
        return out;
    }
    for pair in value.split(',') {
        let Some((k, v)) = pair.trim_matches([' ', '\t']).split_once(':') else {
            continue;
        };
        let (Some(k), Some(v)) = (unb64(k), unb64(v)) else {
            continue;
        };
        if v.chars().count() > MAX_CORRELATION_VALUE_CHARS {
            continue;
        }
        if let Some(e) = out.iter_mut().find(|(key, _)| *key == k) {
            e.1 = v;
        } else if out.len() < MAX_CORRELATION_KEYS {
            out.push((k, v));
        }
    }
    out
}

/// Encodes correlation entries for `sw8-correlation`; `None` when there are none (the header
/// is then omitted).
pub(crate) fn encode_correlation(entries: &[(String, String)]) -> Option<String> {
    let pairs: Vec<String> = entries
        .iter()
        .filter(|(k, v)| !k.is_empty() && !v.is_empty())
        .take(MAX_CORRELATION_KEYS)
        .map(|(k, v)| format!("{}:{}", b64(k), b64(v)))
        .collect();
    (!pairs.is_empty()).then(|| pairs.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str =
        "1-MQ==-NQ==-3-bWVzaA==-aW5zdGFuY2U=-L2FwaS92MS9oZWFsdGg=-ZXhhbXBsZS5jb206ODA4MA==";

    fn example() -> Sw8 {
        Sw8 {
            sampled: true,
            trace_id: "1".into(),
            segment_id: "5".into(),
            span_index: 3,
            service: "mesh".into(),
            instance: "instance".into(),
            endpoint: "/api/v1/health".into(),
            address: "example.com:8080".into(),
        }
    }

    #[test]
    fn the_protocol_example_round_trips() {
        assert_eq!(Sw8::parse(EXAMPLE), Some(example()));
        assert_eq!(example().encode().as_deref(), Some(EXAMPLE));
        assert_eq!(Sw8::parse(&format!(" \t{EXAMPLE} ")), Some(example()));
    }

    #[test]
    fn missing_padding_is_accepted() {
        let unpadded = EXAMPLE.replace('=', "");
        assert_eq!(Sw8::parse(&unpadded), Some(example()));
    }

    #[test]
    fn invalid_headers_are_rejected() {
        let f: Vec<&str> = EXAMPLE.split('-').collect();
        let with = |i: usize, v: &str| {
            let mut g = f.clone();
            g[i] = v;
            g.join("-")
        };
        for bad in [
            String::new(),
            f[..7].join("-"),
            format!("{EXAMPLE}-ZQ=="),
            with(0, "2"),
            with(0, ""),
            with(3, "-1"),
            with(3, "+1"),
            with(3, "2147483648"),
            with(3, "x"),
            with(3, ""),
            with(1, ""),
            with(2, "!!!"),
            with(4, "/w=="), // 0xff: not UTF-8
            with(7, ""),
        ] {
            assert_eq!(Sw8::parse(&bad), None, "{bad:?}");
        }
        assert_eq!(
            Sw8::parse(&with(3, "2147483647")).unwrap().span_index,
            i32::MAX
        );
        let long = Sw8 {
            endpoint: "e".repeat(2000),
            ..example()
        };
        assert_eq!(long.encode(), None);
        let long = with(6, &"QUFB".repeat(600));
        assert!(long.len() > MAX_SW8_LEN);
        assert_eq!(Sw8::parse(&long), None);
    }

    #[test]
    fn empty_fields_are_never_encoded() {
        for e in [
            Sw8 {
                address: String::new(),
                ..example()
            },
            Sw8 {
                endpoint: String::new(),
                ..example()
            },
            Sw8 {
                span_index: -1,
                ..example()
            },
        ] {
            assert_eq!(e.encode(), None);
        }
    }

    #[test]
    fn utf8_fields_round_trip() {
        let e = Sw8 {
            service: "订单服务".into(),
            endpoint: "/über/ñ".into(),
            sampled: false,
            ..example()
        };
        let text = e.encode().unwrap();
        assert!(text.starts_with("0-"));
        assert_eq!(Sw8::parse(&text), Some(e));
    }

    #[test]
    fn correlation_round_trips_within_limits() {
        let entries = vec![("a".to_owned(), "1".to_owned()), ("b".into(), "xyz".into())];
        let text = encode_correlation(&entries).unwrap();
        assert_eq!(text, "YQ==:MQ==,Yg==:eHl6");
        assert_eq!(parse_correlation(&text), entries);
        assert_eq!(encode_correlation(&[]), None);
        let many = format!(
            "{text},Yw==:Mw==,ZA==:NA==,junk,:,{}:{}",
            b64("e"),
            b64(&"v".repeat(129))
        );
        let got = parse_correlation(&many);
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], ("c".to_owned(), "3".to_owned()));
        let long = format!("{}:{}", b64("k"), b64(&"v".repeat(129)));
        assert!(parse_correlation(&long).is_empty());
        assert_eq!(parse_correlation("YQ:MQ").len(), 1, "lenient padding");
    }
}
