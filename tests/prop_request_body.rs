//! Property tests of the request-body inspector (`proxy::body::inspect`) against serde_json.
//!
//! Bodies are generated as JSON objects rendered with random whitespace and random escapes, then
//! some are mutated byte by byte. The reference is serde_json reading the top level: the answer
//! must be the same `model` (value and byte span), `stream`, output-token bound, `n` and
//! `best_of`, or a refusal where serde refuses or the body is ambiguous (a governed field given
//! twice). A body serde cannot read may still pass when the damage lies inside a member keygate
//! does not act on (the inspector skips those by structure, leaving their validation to the
//! provider); it must then give exactly the facts of the undamaged body.

use keygate::proxy::body::{inspect, RequestFacts};
use proptest::prelude::*;
use proptest::sample::Index;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// The top-level fields keygate acts on.
const GOVERNED: [&str; 8] = [
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "n",
    "best_of",
    // Not a fact of the answer, but keygate rewrites it (`include_usage`), so a case variant
    // of it is refused like the others'.
    "stream_options",
];

// ---------------------------------------------------------------------------------------------
// The reference: serde_json's reading of the top level
// ---------------------------------------------------------------------------------------------

/// Every top-level member as serde reads it, duplicates kept, with the value's raw text.
struct TopLevel<'a>(Vec<(String, &'a RawValue)>);

impl<'de> Deserialize<'de> for TopLevel<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Members;
        impl<'de> Visitor<'de> for Members {
            type Value = TopLevel<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(entry) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(entry);
                }
                Ok(TopLevel(members))
            }
        }
        d.deserialize_map(Members)
    }
}

/// What keygate must answer for a body.
#[derive(Debug, Clone, PartialEq)]
enum Reference {
    /// serde_json cannot read the body as one JSON object.
    Unreadable,
    /// The body is read; the answer must be exactly this (`Err` for a refusal).
    Answer(Result<RequestFacts, ()>),
    /// A member's name folds to a governed field's without being it (`"MODEL"`, `"ſtream"`):
    /// Go's encoding/json would take it for that field. The answer keygate must give is a refusal
    /// (issue 24, item 5); `.0` is what the exact names alone say.
    CaseVariant(Result<RequestFacts, ()>),
}

/// Case folding as Go's `strings.EqualFold` does it for the letters of the governed names: ASCII
/// case, plus the two non-ASCII letters whose simple fold orbit holds an ASCII one.
fn go_fold(name: &str) -> String {
    name.chars()
        .map(|c| match c {
            '\u{17f}' => 's',  // LATIN SMALL LETTER LONG S
            '\u{212a}' => 'k', // KELVIN SIGN
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

fn reference(body: &[u8]) -> Reference {
    let Ok(TopLevel(members)) = serde_json::from_slice::<TopLevel>(body) else {
        return Reference::Unreadable;
    };
    let case_variant = members.iter().any(|(k, _)| {
        let folded = go_fold(k);
        GOVERNED.iter().any(|g| folded == *g && k != g)
    });
    let answer = facts_of(body, &members);
    if case_variant {
        Reference::CaseVariant(answer)
    } else {
        Reference::Answer(answer)
    }
}

fn facts_of(body: &[u8], members: &[(String, &RawValue)]) -> Result<RequestFacts, ()> {
    let field = |name: &str| -> Result<Option<&RawValue>, ()> {
        let mut found = members.iter().filter(|(k, _)| k == name).map(|(_, v)| *v);
        let first = found.next();
        // The same field twice: which one a provider reads is anyone's guess.
        match found.next() {
            Some(_) => Err(()),
            None => Ok(first),
        }
    };
    let raw_model = field("model")?.ok_or(())?;
    let model: String = serde_json::from_str(raw_model.get()).map_err(|_| ())?;
    let start = raw_model.get().as_ptr() as usize - body.as_ptr() as usize;
    let stream = match field("stream")? {
        None => false,
        Some(raw) => serde_json::from_str::<Option<bool>>(raw.get())
            .map_err(|_| ())?
            .unwrap_or(false),
    };
    // A value that is not a u64 counts nothing; the provider judges it.
    let count = |name: &str| -> Result<Option<u64>, ()> {
        Ok(field(name)?.and_then(|raw| serde_json::from_str::<u64>(raw.get()).ok()))
    };
    let mut bound = None;
    for name in &GOVERNED[2..5] {
        bound = bound.max(count(name)?);
    }
    Ok(RequestFacts {
        model,
        model_span: (start, start + raw_model.get().len()),
        stream,
        max_output_tokens: bound,
        n: count("n")?,
        best_of: count("best_of")?,
    })
}

/// `inspect`'s answer, with a refusal checked to be a 400 and reduced to `Err(())`.
fn answer(body: &[u8]) -> Result<RequestFacts, ()> {
    inspect(body).map_err(|refusal| {
        assert_eq!(
            (refusal.status(), refusal.code()),
            (400, "invalid_request"),
            "a body is refused as an invalid request: {:?}",
            String::from_utf8_lossy(body)
        );
    })
}

// ---------------------------------------------------------------------------------------------
// Generated bodies
// ---------------------------------------------------------------------------------------------

/// How a character of a JSON string is written.
#[derive(Debug, Clone, Copy)]
enum Esc {
    Plain,
    Short,
    Unicode,
}

/// A JSON string as written: each character with its escape.
#[derive(Debug, Clone)]
struct JStr(Vec<(char, Esc)>);

impl JStr {
    fn decoded(&self) -> String {
        self.0.iter().map(|(c, _)| c).collect()
    }

    fn render(&self, out: &mut String) {
        out.push('"');
        for &(c, esc) in &self.0 {
            let must = c == '"' || c == '\\' || c < ' ';
            let short = match c {
                '"' => Some("\\\""),
                '\\' => Some("\\\\"),
                '/' => Some("\\/"),
                '\n' => Some("\\n"),
                '\t' => Some("\\t"),
                '\r' => Some("\\r"),
                '\u{8}' => Some("\\b"),
                '\u{c}' => Some("\\f"),
                _ => None,
            };
            match (esc, short) {
                (Esc::Plain, _) if !must => out.push(c),
                (Esc::Short, Some(s)) | (Esc::Plain, Some(s)) => out.push_str(s),
                _ => {
                    let mut units = [0u16; 2];
                    for u in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{u:04x}"));
                    }
                }
            }
        }
        out.push('"');
    }
}

#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    /// A number as written: integers, big integers, fractions, exponents.
    Num(String),
    Str(JStr),
    Arr(Vec<J>),
    Obj(Vec<(JStr, J)>),
}

/// Whitespace between tokens, drawn from a cycle of seeds.
struct Ws<'a> {
    seeds: &'a [u8],
    at: usize,
}

impl Ws<'_> {
    fn put(&mut self, out: &mut String) {
        let seed = self.seeds.get(self.at % self.seeds.len().max(1)).copied();
        self.at += 1;
        out.push_str(match seed.unwrap_or(0) {
            1 => " ",
            2 => "\n  ",
            3 => "\t",
            4 => "\r\n",
            _ => "",
        });
    }
}

impl J {
    fn render(&self, out: &mut String, ws: &mut Ws) {
        match self {
            J::Null => out.push_str("null"),
            J::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            J::Num(n) => out.push_str(n),
            J::Str(s) => s.render(out),
            J::Arr(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    ws.put(out);
                    item.render(out, ws);
                    ws.put(out);
                }
                out.push(']');
            }
            J::Obj(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    ws.put(out);
                    k.render(out);
                    ws.put(out);
                    out.push(':');
                    ws.put(out);
                    v.render(out, ws);
                    ws.put(out);
                }
                out.push('}');
            }
        }
    }
}

fn render_body(members: &[(JStr, J)], seeds: &[u8]) -> String {
    let mut ws = Ws { seeds, at: 0 };
    let mut text = String::new();
    ws.put(&mut text);
    text.push('{');
    for (i, (k, v)) in members.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        ws.put(&mut text);
        k.render(&mut text);
        ws.put(&mut text);
        text.push(':');
        ws.put(&mut text);
        v.render(&mut text, &mut ws);
        ws.put(&mut text);
    }
    text.push('}');
    ws.put(&mut text);
    text
}

fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        4 => prop::sample::select(vec![
            'a', 'm', 'o', 'd', 'e', 'l', 's', ' ', '"', '\\', '/', '{', '}', '[', ']', ',', ':',
            '\n', '\t', '\u{0}', '\u{1f}', '\u{7f}', 'é', '😀', '模', '\u{2028}', '\u{feff}',
        ]),
        1 => any::<char>(),
    ]
}

fn esc() -> impl Strategy<Value = Esc> {
    prop_oneof![6 => Just(Esc::Plain), 1 => Just(Esc::Short), 1 => Just(Esc::Unicode)]
}

fn jstr() -> impl Strategy<Value = JStr> {
    prop::collection::vec((any_char(), esc()), 0..10).prop_map(JStr)
}

/// A name written with random escapes (`"mod\u0065l"` is `model`).
fn name(names: &'static [&'static str]) -> impl Strategy<Value = JStr> {
    (
        prop::sample::select(names),
        prop::collection::vec(
            prop_oneof![12 => Just(Esc::Plain), 1 => Just(Esc::Unicode)],
            24,
        ),
    )
        .prop_map(|(n, escs)| JStr(n.chars().zip(escs).collect()))
}

/// Member names: the governed ones, names near them, and the rest of a chat request.
const NAMES: &[&str] = &[
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "max_output_tokens",
    "messages",
    "temperature",
    "metadata",
    "stream_options",
    "n",
    "best_of",
    "tools",
    "user",
    "models",
    "model ",
    "Model",
    "MODEL",
    "Stream",
    "Max_Tokens",
    "Stream_Options",
    "\u{17f}tream",
    "max_to\u{212a}ens",
];

fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (0u64..5000).prop_map(|n| n.to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        Just("18446744073709551615".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("100000000000000000000000".to_owned()),
        Just("-0".to_owned()),
        Just("12.0".to_owned()),
        Just("1e3".to_owned()),
        Just("1E+2".to_owned()),
        Just("0.5e-1".to_owned()),
    ]
}

fn value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        number().prop_map(J::Num),
        jstr().prop_map(J::Str),
    ];
    leaf.prop_recursive(4, 24, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(J::Arr),
            prop::collection::vec((name(NAMES), inner), 0..5).prop_map(J::Obj),
        ]
    })
}

/// A value of the type the member usually has, sometimes anything at all.
fn value_for(key: &JStr) -> BoxedStrategy<J> {
    let decoded = go_fold(&key.decoded());
    let usual = match decoded.as_str() {
        "model" => jstr().prop_map(J::Str).boxed(),
        "stream" => prop_oneof![any::<bool>().prop_map(J::Bool), Just(J::Null)].boxed(),
        "max_tokens" | "max_completion_tokens" | "max_output_tokens" | "n" | "best_of" => {
            number().prop_map(J::Num).boxed()
        }
        _ => value().boxed(),
    };
    prop_oneof![5 => usual, 1 => value()].boxed()
}

fn member() -> impl Strategy<Value = (JStr, J)> {
    name(NAMES).prop_flat_map(|k| (Just(k.clone()), value_for(&k)))
}

/// A chat-like body: usually one `model` member among others, each in random order.
fn body() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(member(), 0..6),
        prop::option::weighted(0.9, (any::<Index>(), jstr())),
        prop::collection::vec(0u8..8, 1..16),
    )
        .prop_map(|(mut members, model, seeds)| {
            if let Some((at, m)) = model {
                let at = at.index(members.len() + 1);
                members.insert(at, (plain("model"), J::Str(m)));
            }
            render_body(&members, &seeds)
        })
}

fn plain(name: &str) -> JStr {
    JStr(name.chars().map(|c| (c, Esc::Plain)).collect())
}

// ---------------------------------------------------------------------------------------------
// Mutations
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy)]
enum Edit {
    FlipBit(u8),
    Set(u8),
    Delete,
    Insert(u8),
    Truncate,
}

/// Bytes that change JSON's structure, and a few that are simply not allowed.
const STRUCTURAL: &[u8] = b"\"\\{}[],: \n\x00\xff\xc3M0-e";

fn edit() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![prop::sample::select(STRUCTURAL), any::<u8>()];
    prop_oneof![
        3 => any::<u8>().prop_map(|b| Edit::FlipBit(b % 8)),
        3 => byte.clone().prop_map(Edit::Set),
        2 => Just(Edit::Delete),
        2 => byte.prop_map(Edit::Insert),
        1 => Just(Edit::Truncate),
    ]
}

fn mutate(body: &str, edits: &[(Index, Edit)]) -> Vec<u8> {
    let mut bytes = body.as_bytes().to_vec();
    for (i, e) in edits {
        if bytes.is_empty() {
            break;
        }
        let p = i.index(bytes.len());
        match *e {
            Edit::FlipBit(bit) => bytes[p] ^= 1 << bit,
            Edit::Set(b) => bytes[p] = b,
            Edit::Delete => {
                bytes.remove(p);
            }
            Edit::Insert(b) => bytes.insert(p, b),
            Edit::Truncate => bytes.truncate(p),
        }
    }
    bytes
}

// ---------------------------------------------------------------------------------------------
// What the inspector may answer on a body serde cannot read
// ---------------------------------------------------------------------------------------------

/// The end of the value starting at `s[i]`, delimited by structure alone, as the inspector is
/// documented to skip the members it does not act on: a string to its closing quote, a
/// container to its matching bracket (strings inside skipped), anything else to a delimiter.
fn value_end(s: &[u8], i: usize) -> Option<usize> {
    let string_end = |mut j: usize| -> Option<usize> {
        j += 1;
        loop {
            match *s.get(j)? {
                b'"' => return Some(j + 1),
                b'\\' => j += 2,
                _ => j += 1,
            }
        }
    };
    match *s.get(i)? {
        b'"' => string_end(i),
        b'{' | b'[' => {
            let (mut depth, mut j) = (0usize, i);
            loop {
                match *s.get(j)? {
                    b'"' => {
                        j = string_end(j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let n = s[i..]
                .iter()
                .position(|c| b",}] \t\r\n".contains(c))
                .unwrap_or(s.len() - i);
            (n > 0).then_some(i + n)
        }
    }
}

/// The body's top level with every value but `model`'s and `stream`'s replaced by `null` and
/// every other name by a placeholder, as `(text, offset of each kept value in the body)`; `None`
/// when the top level itself is broken. Serde's reading of it is what the inspector may answer
/// for a body whose damage lies only inside values it does not read.
fn top_level_only(s: &[u8]) -> Option<(String, Vec<(String, usize)>)> {
    let ws = |mut i: usize| {
        while s.get(i).is_some_and(|c| b" \t\r\n".contains(c)) {
            i += 1;
        }
        i
    };
    let mut i = ws(0);
    (s.get(i) == Some(&b'{')).then_some(())?;
    i = ws(i + 1);
    let mut out = String::from("{");
    let mut kept = Vec::new();
    if s.get(i) == Some(&b'}') {
        i += 1;
    } else {
        loop {
            (s.get(i) == Some(&b'"')).then_some(())?;
            let key_end = value_end(s, i)?;
            let key = String::from_utf8_lossy(&s[i..key_end]);
            let name: Option<String> = serde_json::from_str(&key).ok();
            i = ws(key_end);
            (s.get(i) == Some(&b':')).then_some(())?;
            i = ws(i + 1);
            let end = value_end(s, i)?;
            if out.len() > 1 {
                out.push(',');
            }
            match name.as_deref() {
                Some(n @ ("model" | "stream")) => {
                    out.push_str(&format!("{n:?}:"));
                    out.push_str(std::str::from_utf8(&s[i..end]).ok()?);
                    kept.push((n.to_owned(), i));
                }
                _ => out.push_str(&format!("\"_{}\":null", kept.len() + out.len())),
            }
            i = ws(end);
            match s.get(i)? {
                b',' => i = ws(i + 1),
                b'}' => {
                    i += 1;
                    break;
                }
                _ => return None,
            }
        }
    }
    out.push('}');
    (ws(i) == s.len()).then_some((out, kept))
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

/// The answer the reference requires, or that a case variant may get today (the exact names'
/// answer, or a refusal).
fn check_against_reference(body: &[u8], reference: &Reference) -> Result<(), TestCaseError> {
    let got = answer(body);
    let text = String::from_utf8_lossy(body);
    match reference {
        Reference::Unreadable => {}
        Reference::Answer(want) => prop_assert_eq!(&got, want, "body: {}", text),
        Reference::CaseVariant(exact) => {
            prop_assert!(got.is_err() || &got == exact, "body: {text}: got {got:?}")
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Well-formed bodies: exactly serde's answer.
    #[test]
    fn generated_bodies_get_serdes_answer(body in body()) {
        let reference = reference(body.as_bytes());
        prop_assert_ne!(&reference, &Reference::Unreadable, "generated bodies are JSON: {}", body);
        check_against_reference(body.as_bytes(), &reference)?;
    }

    /// Damaged bodies: serde's answer where serde reads them; otherwise a refusal, or, when the
    /// damage lies only inside values the inspector skips, serde's answer for the top level.
    #[test]
    fn mutated_bodies_get_serdes_answer_or_a_refusal(
        body in body(),
        edits in prop::collection::vec((any::<Index>(), edit()), 1..4),
    ) {
        let bytes = &mutate(&body, &edits);
        let text = String::from_utf8_lossy(bytes);
        match reference(bytes) {
            Reference::Unreadable => {
                if let Ok(facts) = answer(bytes) {
                    let Some((top, kept)) = top_level_only(bytes) else {
                        return Err(TestCaseError::fail(format!(
                            "accepted a body whose top level is broken: {text}: {facts:?}"
                        )));
                    };
                    let Reference::Answer(Ok(want)) = reference(top.as_bytes()) else {
                        return Err(TestCaseError::fail(format!(
                            "accepted a body whose top level alone is refused: {text}: {facts:?}"
                        )));
                    };
                    let model_at = kept.iter().find(|(n, _)| n == "model").map(|(_, at)| *at);
                    let len = |f: &RequestFacts| f.model_span.1 - f.model_span.0;
                    prop_assert_eq!(
                        (&facts.model, facts.stream, Some(facts.model_span.0), len(&facts)),
                        (&want.model, want.stream, model_at, len(&want)),
                        "{}", text
                    );
                }
            }
            reference => check_against_reference(bytes, &reference)?,
        }
    }
}

/// Deeply nested values are skipped by structure, without recursion: no stack overflow, and
/// where serde has to decide (a duplicate field sends the body to the full parse) its recursion
/// limit refuses the body instead of overflowing.
#[test]
fn deep_nesting_neither_overflows_nor_misleads() {
    let depth = 200_000;
    let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let body = format!(r#"{{"messages":{nested},"model":"m"}}"#);
    let facts = inspect(body.as_bytes()).expect("the scan skips what it does not act on");
    assert_eq!(facts.model, "m");
    let ambiguous = format!(r#"{{"model":"a","messages":{nested},"model":"b"}}"#);
    assert!(inspect(ambiguous.as_bytes()).is_err());
    let unclosed = format!(r#"{{"model":"m","messages":{}}}"#, "[".repeat(depth));
    assert!(inspect(unclosed.as_bytes()).is_err());
}

/// Go's encoding/json, used by Ollama-style upstreams, matches member names case-insensitively
/// (with Unicode simple folding: `ſ` is an `s`, the Kelvin sign a `k`), so
/// `{"model":"cheap","MODEL":"pricey"}` would be authorised as one model and run as another. A
/// member whose name folds to a governed field's is refused (issue 24, item 5).
#[test]
fn names_that_fold_to_a_governed_field_are_refused() {
    for body in [
        r#"{"model":"cheap","MODEL":"pricey"}"#,
        r#"{"Model":"pricey","model":"cheap"}"#,
        r#"{"model":"m","Stream":true}"#,
        r#"{"model":"m","stream":false,"STREAM":true}"#,
        r#"{"model":"m","max_tokens":1,"Max_Tokens":100000}"#,
        r#"{"model":"m","max_completion_tokens":1,"MAX_COMPLETION_TOKENS":100000}"#,
        r#"{"model":"m","Max_Output_Tokens":100000}"#,
        r#"{"model":"cheap","MOD\u0045L":"pricey"}"#,
        "{\"model\":\"m\",\"\u{17f}tream\":true}",
        "{\"model\":\"m\",\"max_to\u{212a}ens\":100000}",
        r#"{"model":"m","stream":true,"Stream_options":{"include_usage":false}}"#,
    ] {
        let refusal = inspect(body.as_bytes()).err();
        assert!(
            refusal.is_some_and(|r| r.status() == 400),
            "accepted: {body}"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_global_rejects: 100_000, failure_persistence: None, ..ProptestConfig::default() })]

    /// Any body serde reads with a member name that folds to a governed field's is refused.
    #[test]
    fn case_variants_are_refused(body in body()) {
        let reference = reference(body.as_bytes());
        prop_assume!(matches!(reference, Reference::CaseVariant(_)));
        prop_assert!(inspect(body.as_bytes()).is_err(), "accepted: {}", body);
    }
}
