//! What the property tests share: how many cases each property runs, and generators of the
//! hostile input they feed the parsers (any JSON value, any text, text made of a syntax's own
//! punctuation). The properties themselves live beside the code they hold to account
//! (`workflow::properties`, `store::properties`, and the manifest's below).
//!
//! `PROPTEST_CASES` sets the cases per property: 64 unless set, which keeps the whole suite
//! within seconds for `make test`; `make fuzz` runs 20000.

use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::{Map, Number, Value};

pub use crate::domain::json_text::MAX_DEPTH;

/// Cases per property when `PROPTEST_CASES` is not set.
const DEFAULT_CASES: u32 = 64;

/// The runner configuration of every property.
pub fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|raw| raw.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        ..Config::default()
    }
}

/// Any text: arbitrary Unicode, weighted towards the characters parsers treat specially.
pub fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "[ -~]{0,40}",
        // Escapes, line breaks of other scripts, byte-order marks and non-characters.
        prop::collection::vec(
            prop::sample::select(vec![
                "\\",
                "\"",
                "'",
                "\n",
                "\r",
                "\t",
                "\0",
                "\u{85}",
                "\u{2028}",
                "\u{feff}",
                "\u{fffe}",
                "\u{1f600}",
                "{{",
                "}}",
                ": ",
                "- ",
                "#",
                "&a",
                "*a",
                "!!",
                "~",
                "null",
                "true",
                "1e3",
                "0x1f",
                ".inf",
                "-",
                "a",
            ]),
            0..12,
        )
        .prop_map(|pieces| pieces.concat()),
    ]
}

/// Any JSON number `serde_json` can hold: every `i64`, every `u64`, every finite `f64`.
pub fn number() -> impl Strategy<Value = Number> {
    prop_oneof![
        any::<i64>().prop_map(Number::from),
        any::<u64>().prop_map(Number::from),
        any::<f64>().prop_filter_map("JSON has no NaN or infinity", Number::from_f64),
        prop::sample::select(vec![0.0, -0.0, 0.1, 1e-308, 5e-324, 1.7976931348623157e308])
            .prop_filter_map("finite", Number::from_f64),
    ]
}

/// A JSON leaf.
pub fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number().prop_map(Value::Number),
        text().prop_map(Value::String),
    ]
}

/// Any JSON value, nested a few levels; see [`nested`] for nesting at the parser's limit.
pub fn json() -> impl Strategy<Value = Value> {
    scalar().prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(text(), inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Any JSON object.
pub fn object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(text(), json(), 0..8).prop_map(|map| map.into_iter().collect())
}

/// A value nested `levels` deep in arrays and objects; `serde_json` reads at most
/// [`MAX_DEPTH`] levels, so no request or tool reply is deeper.
pub fn nested(levels: std::ops::RangeInclusive<usize>) -> impl Strategy<Value = Value> {
    (scalar(), prop::collection::vec(any::<bool>(), levels)).prop_map(|(leaf, levels)| {
        levels.into_iter().fold(leaf, |inner, in_array| {
            if in_array {
                Value::Array(vec![inner])
            } else {
                Value::Object(Map::from_iter([("k".to_owned(), inner)]))
            }
        })
    })
}

mod manifest {
    //! Manifests: any text parses or is refused without a panic, and a manifest written as
    //! YAML or as JSON reads back as the same content with the same checksum.

    use proptest::prelude::*;
    use serde_json::Value;

    use super::{config, object, text};
    use crate::manifest::{checksum, parse, to_yaml};

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn any_text_parses_or_is_refused(source in text()) {
            let _ = parse(&source);
        }

        #[test]
        fn any_nesting_of_yaml_punctuation_parses_or_is_refused(
            pieces in prop::collection::vec(
                prop::sample::select(vec![
                    "[", "]", "{", "}", "- ", ": ", "\n", "  ", "&a ", "*a", "<<: ", "? ",
                    "a", "1", "'", "\"", "!!str ", "!!binary ", "|\n", ">\n", "---\n",
                ]),
                0..200,
            )
        ) {
            let _ = parse(&pieces.concat());
        }

        #[test]
        fn a_manifest_written_as_yaml_reads_back_the_same(manifest in object()) {
            let yaml = to_yaml(&manifest).expect("any JSON object can be written as YAML");
            let back = parse(&yaml).expect("the YAML written can be read");
            prop_assert_eq!(&back, &manifest, "YAML:\n{}", yaml);
            prop_assert_eq!(checksum(&back), checksum(&manifest));
        }

        #[test]
        fn a_manifest_written_as_json_reads_back_the_same(manifest in object()) {
            let json = Value::Object(manifest.clone()).to_string();
            let back = parse(&json).expect("JSON is YAML");
            prop_assert_eq!(&back, &manifest, "JSON: {}", json);
            prop_assert_eq!(checksum(&back), checksum(&manifest));
        }
    }
}
