//! A fast reader for the flat key files keygate itself writes: `name: value` lines whose values
//! are plain or double-quoted strings, such as
//!
//! ```yaml
//! hash: "sha256:…"
//! workload: checkout
//! status: active
//! created_at: 2026-11-22T10:00:00Z
//! ```
//!
//! and lists of such strings, in flow form (`guardrails: [pii-basic, no-secrets]`) or in block
//! form (`guardrails:` then `- pii-basic` lines, as `keygate keys` renders them).
//!
//! Parsing such a file with the YAML parser costs about 11 µs, most of a cold load of 100,000
//! keys. This reader takes only a narrow form whose meaning as YAML is plain to see, and says
//! `None` for anything else (nesting, comments after a value, escapes, numbers, values YAML
//! reads as null or a boolean, any field that is not a string or a list of them), which then goes through the YAML
//! parser as before. So it never decides what a file means differently from YAML, and every error
//! message still comes from the YAML path. A property test holds it to that against
//! `serde_yaml_ng`.

use serde::de::{self, DeserializeOwned, IntoDeserializer, Visitor};
use smallvec::SmallVec;

/// `text` read as a flat mapping of strings (and lists of strings) into `T`, or `None` when it
/// is not in that form or `T` does not accept it.
pub fn parse<T: DeserializeOwned>(text: &str) -> Option<T> {
    let mut pairs: SmallVec<[(&str, Value<'_>); 16]> = SmallVec::new();
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_suffix(':') {
            // A block list: `- item` lines at the name's own indentation, as YAML renders them.
            if !is_name(name) {
                return None;
            }
            let mut items = SmallVec::new();
            while let Some(item) = lines.peek().and_then(|l| l.strip_prefix("- ")) {
                items.push(string_value(item)?);
                lines.next();
            }
            if items.is_empty() {
                return None;
            }
            pairs.push((name, Value::List(items)));
            continue;
        }
        let (name, value) = line.split_once(": ")?;
        if !is_name(name) {
            return None;
        }
        let value = match value.strip_prefix('[') {
            Some(flow) => Value::List(flow_list(flow)?),
            None => Value::Scalar(string_value(value)?),
        };
        pairs.push((name, value));
    }
    let map = de::value::MapDeserializer::<_, de::value::Error>::new(pairs.into_iter());
    T::deserialize(map).ok()
}

/// The items of a flow list (what follows its `[`): strings separated by commas, each a plain
/// scalar free of flow indicators or a double-quoted string, and nothing after the `]`.
fn flow_list(flow: &str) -> Option<SmallVec<[&str; 4]>> {
    let inner = flow.strip_suffix(']')?;
    let mut items = SmallVec::new();
    if inner.trim_matches(' ').is_empty() {
        return inner.is_empty().then_some(items);
    }
    for item in inner.split(',') {
        let item = item.trim_matches(' ');
        let plain = !item.starts_with('"');
        if plain && item.bytes().any(|b| b"[]{},".contains(&b)) {
            return None;
        }
        items.push(string_value(item)?);
    }
    Some(items)
}

fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The string a value denotes, when YAML certainly reads it as that string.
fn string_value(value: &str) -> Option<&str> {
    if let Some(quoted) = value.strip_prefix('"') {
        // One double-quoted string and nothing after it; no escapes, no control characters.
        let inner = quoted.strip_suffix('"')?;
        return inner
            .chars()
            .all(|c| c != '"' && c != '\\' && !c.is_control())
            .then_some(inner);
    }
    plain_string(value).then_some(value)
}

/// A plain scalar that YAML's core schema resolves to a string and that needs no folding,
/// trimming or comment stripping. Conservative: what it refuses is merely parsed slowly.
/// One pass over the characters: this runs on every value of every key file in a load.
fn plain_string(value: &str) -> bool {
    let Some(&first) = value.as_bytes().first() else {
        return false;
    };
    if in_set(INDICATORS, first) {
        return false;
    }
    let mut previous = 0u8;
    for c in value.chars() {
        if c.is_ascii() {
            let b = c as u8;
            let fine = b.is_ascii_alphanumeric() || in_set(SAFE_PUNCTUATION, b);
            // `: ` starts a mapping and ` #` a comment, anywhere in a plain scalar.
            if !fine || (previous == b':' && b == b' ') || (previous == b' ' && b == b'#') {
                return false;
            }
            previous = b;
        } else {
            // Beyond ASCII, any printable character: `keys create` writes hints like `kg_…Wsnf`.
            if c.is_control() || c.is_whitespace() || c == '\u{feff}' {
                return false;
            }
            previous = 0;
        }
    }
    !value.ends_with([' ', ':']) && !might_not_be_a_string(value)
}

/// Characters that give a plain scalar another meaning when they come first.
const INDICATORS: u128 = ascii_set(b"-?:,[]{}#&*!|>'\"%@` ");
/// ASCII punctuation a plain scalar may hold anywhere after its first character.
const SAFE_PUNCTUATION: u128 = ascii_set(b"_-.:/@+ ,()!?'*=;%~<>&");

/// A set of ASCII bytes as a bit mask.
const fn ascii_set(bytes: &[u8]) -> u128 {
    let mut set = 0;
    let mut i = 0;
    while i < bytes.len() {
        set |= 1 << bytes[i];
        i += 1;
    }
    set
}

fn in_set(set: u128, b: u8) -> bool {
    b < 128 && set & (1 << b) != 0
}

/// Plain scalars YAML may read as null, a boolean or a number (YAML 1.1's words too, as some
/// parsers still follow it): anything made only of digits and number punctuation, and the words.
fn might_not_be_a_string(value: &str) -> bool {
    const WORDS: [&str; 14] = [
        "null", "~", "true", "false", "yes", "no", "on", "off", "y", "n", "inf", "nan", "=", "<<",
    ];
    let word = value.trim_start_matches(['+', '-', '.']);
    WORDS.iter().any(|w| word.eq_ignore_ascii_case(w))
        || value
            .chars()
            .all(|c| c.is_ascii_hexdigit() || "+-._xXoO:".contains(c))
}

/// A value of the flat form: one string, or a list of them.
enum Value<'a> {
    Scalar(&'a str),
    List(SmallVec<[&'a str; 4]>),
}

impl<'de> IntoDeserializer<'de, de::value::Error> for Value<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Value<'de> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self {
            Value::Scalar(s) => Scalar(s).deserialize_any(visitor),
            Value::List(items) => visitor.visit_seq(de::value::SeqDeserializer::new(
                items.into_iter().map(Scalar),
            )),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self {
            Value::Scalar(s) => Scalar(s).deserialize_enum(name, variants, visitor),
            list => list.deserialize_any(visitor),
        }
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

/// One string value; also read as `Some(string)` and as a unit enum variant.
struct Scalar<'a>(&'a str);

impl<'de> IntoDeserializer<'de, de::value::Error> for Scalar<'de> {
    type Deserializer = Self;

    fn into_deserializer(self) -> Self {
        self
    }
}

impl<'de> de::Deserializer<'de> for Scalar<'de> {
    type Error = de::value::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        visitor.visit_some(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        self.0
            .into_deserializer()
            .deserialize_enum(name, variants, visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        unit unit_struct newtype_struct seq tuple tuple_struct map struct identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::schema::KeyFile;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;

    fn both(text: &str) -> (Option<serde_json::Value>, Option<serde_json::Value>) {
        let fast = parse::<KeyFile>(text).map(|k| serde_json::to_value(k).unwrap());
        let yaml = serde_yaml_ng::from_str::<KeyFile>(text)
            .ok()
            .map(|k| serde_json::to_value(k).unwrap());
        (fast, yaml)
    }

    #[test]
    fn reads_the_files_keygate_writes() {
        let text = "hash: \"sha256:8882532a00fa7660092b050b468d7014882e3189a3f049b614b9833912e6ed28\"\nhint: \"kg_…8882\"\nworkload: demo\nowner: team-0\ndescription: bench key 0\nstatus: paused\ncreated_at: 2026-11-22T10:00:00Z\n";
        let (fast, yaml) = both(text);
        assert!(fast.is_some());
        assert_eq!(fast, yaml);
    }

    #[test]
    fn reads_what_keys_create_renders() {
        let key: KeyFile = serde_json::from_value(serde_json::json!({
            "hash": "sha256:7b872ed630d26c277beed992d868e263d6a179ee94140e681a7df1fa33ec7047",
            "hint": "kg_…NbfU",
            "workload": "w",
            "owner": "alice",
            "description": "checkout service, EU",
            "status": "paused",
            "created_at": "2026-11-24T00:54:14Z",
            "expires_at": "2027-01-01T00:00:00Z",
        }))
        .unwrap();
        let text = crate::keys::store::render(&key).unwrap();
        let (fast, yaml) = both(&text);
        assert!(fast.is_some(), "{text}");
        assert_eq!(fast, yaml);
    }

    #[test]
    fn leaves_everything_else_to_yaml() {
        let base = "hash: \"sha256:ab\"\nworkload: w\n";
        for extra in [
            "owner: null\n",
            "owner: ~\n",
            "owner: yes\n",
            "owner: 0x1F\n",
            "owner: 12.5\n",
            "owner: \"a\\tb\"\n",
            "owner: 'single'\n",
            "owner: a # comment\n",
            "owner: \"a\" # comment\n",
            "owner:\n",
            "owner: trailing \n",
            "max_concurrent: 20\n",
            "models: [a, \"b\\tc\"]\n",
            "models: [a, [b]]\n",
            "models: [a, b] # comment\n",
            "models: [a,, b]\n",
            "models: [yes, b]\n",
            "models:\n  - a\n",
            "models:\n",
            "models: a\n",
            "budget:\n  daily_usd: 5\n",
            "owner: a\r\n",
            "---\nowner: a\n",
            "owner: &anchor a\n",
            "owner: *alias\n",
            "owner: !tag a\n",
            "colour: blue\n",
        ] {
            let text = format!("{base}{extra}");
            assert!(parse::<KeyFile>(&text).is_none(), "took {text:?}");
        }
    }

    #[test]
    fn reads_lists_in_flow_and_block_form() {
        let base = "hash: \"sha256:ab\"\nworkload: w\n";
        for extra in [
            "guardrails: [banned-words, \"internal only\"]\nguardrails_off: []\n",
            "guardrails:\n- banned-words\n- pii-basic\nguardrails_off: [injection]\n",
            "models: [gpt-4o,mini , big]\noperations: [chat]\n",
        ] {
            let text = format!("{base}{extra}");
            let (fast, yaml) = both(&text);
            assert!(fast.is_some(), "{text}");
            assert_eq!(fast, yaml, "{text}");
        }
    }

    fn plain_value() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9_./@+:# ,()!?'*=;%~<>&\\[\\]{}\u{e9}\u{2026}\u{feff}\u{2028}-]{1,12}",
            "(null|Null|~|true|False|yes|No|on|OFF|y|n|\\.inf|-\\.NaN)",
            "[-+]?[0-9]{1,4}(\\.[0-9]{0,3})?(e[-+]?[0-9])?",
            "0x[0-9a-f]{1,3}|0o[0-7]{1,3}",
            "20[0-9]{2}-[01][0-9]-[0-3][0-9](T[0-2][0-9]:[0-5][0-9]:[0-5][0-9]Z)?",
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            plain_value(),
            "[a-zA-Z0-9 _:#'\\\\\u{e9}\u{2026}-]{0,10}".prop_map(|s| format!("\"{s}\"")),
            Just(String::new()),
        ]
    }

    fn line() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("hash"),
            Just("hint"),
            Just("workload"),
            Just("owner"),
            Just("description"),
            Just("status"),
            Just("id"),
            Just("created_at"),
            Just("expires_at"),
            Just("max_concurrent"),
            Just("colour"),
        ];
        let list_name = prop_oneof![
            Just("models"),
            Just("guardrails"),
            Just("guardrails_off"),
            Just("owner"),
        ];
        let items = || proptest::collection::vec(value(), 0..4);
        prop_oneof![
            (name, value()).prop_map(|(n, v)| format!("{n}: {v}")),
            (list_name.clone(), items(), "[ ,]{0,3}")
                .prop_map(|(n, v, sep)| format!("{n}: [{}]", v.join(&sep))),
            (list_name, items()).prop_map(|(n, v)| {
                let lines: String = v.iter().map(|i| format!("\n- {i}")).collect();
                format!("{n}:{lines}")
            }),
            Just("# a comment".to_owned()),
            Just(String::new()),
            Just("status: active".to_owned()),
            Just("status: paused".to_owned()),
        ]
    }

    /// Whatever the fast reader takes, YAML reads the same way; and it takes a fair share of the
    /// generated files, so the comparison is not empty.
    #[test]
    fn never_reads_a_file_differently_from_yaml() {
        let file =
            (proptest::collection::vec(line(), 0..9), "[a-f0-9]{0,6}").prop_map(|(lines, hash)| {
                format!(
                    "hash: \"sha256:{hash}\"\nworkload: w\n{}\n",
                    lines.join("\n")
                )
            });
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let (mut taken, cases) = (0, 4000);
        for _ in 0..cases {
            let text = file.new_tree(&mut runner).unwrap().current();
            let (fast, yaml) = both(&text);
            if fast.is_some() {
                taken += 1;
                assert_eq!(fast, yaml, "{text}");
            }
        }
        assert!(taken > cases / 20, "only {taken} of {cases} taken");
    }
}
