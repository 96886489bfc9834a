//! Properties of the public carrier implementations.

use std::collections::HashMap;

use proptest::prelude::*;
use stardust_runtime::propagation::{Extractor, Injector};

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "traceparent",
            "TraceParent",
            "TRACEPARENT",
            "tracestate",
            "x"
        ])
        .prop_map(str::to_string),
        "[ -~]{0,12}",
        any::<String>(),
    ]
}

fn pairs() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec((name(), any::<String>()), 0..10)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn pairs_return_exactly_the_matching_lines_in_order(h in pairs(), q in name()) {
        let want: Vec<&str> = h
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&q))
            .map(|(_, v)| v.as_str())
            .collect();
        prop_assert_eq!(h.get_all(&q), want.clone());
        prop_assert_eq!(h.as_slice().get_all(&q), want);
        prop_assert_eq!(h.contains(&q), h.iter().any(|(k, _)| k.eq_ignore_ascii_case(&q)));
    }

    #[test]
    fn maps_return_every_matching_key(h in pairs(), q in name()) {
        let m: HashMap<String, String> = h.into_iter().collect();
        let mut want: Vec<&str> = m
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(&q))
            .map(|(_, v)| v.as_str())
            .collect();
        let mut got = m.get_all(&q);
        prop_assert_eq!(got.len(), want.len());
        got.sort_unstable();
        want.sort_unstable();
        prop_assert_eq!(got, want);
        prop_assert_eq!(Injector::contains(&m, &q), m.keys().any(|k| k.eq_ignore_ascii_case(&q)));
    }

    #[test]
    fn set_makes_the_header_visible_in_any_case(h in pairs(), q in "[a-zA-Z-]{1,12}", v in any::<String>()) {
        let mut vec = h.clone();
        vec.set(&q, v.clone());
        prop_assert!(vec.contains(&q.to_uppercase()));
        prop_assert_eq!(vec.get_all(&q.to_lowercase()).last().copied(), Some(v.as_str()));
        let mut m: HashMap<String, String> = HashMap::new();
        m.set(&q, v.clone());
        prop_assert!(Injector::contains(&m, &q.to_lowercase()));
        prop_assert_eq!(m.get_all(&q.to_uppercase()), vec![v.as_str()]);
    }
}
