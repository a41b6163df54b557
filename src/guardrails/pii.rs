//! The `pii` detector: personal data in a fixed set of written forms, each candidate checked
//! beyond its shape where a check exists. Decisions on ambiguous text, which tests pin:
//!
//! - **email**: `local@domain.tld`. An address after `mailto:` or in a URL's path or query is
//!   personal data; `user@host` in the authority of a URL (`https://user@host/`) is a login to
//!   that host, not an email address, and is left alone.
//! - **phone**: international form `+` and 8 to 15 digits, grouped with spaces, dots, dashes
//!   or parentheses (E.164); US form `(555) 123-4567`, `555-123-4567`, `555.123.4567`,
//!   `555 123 4567`; national form with a leading 0 and a separator after the area code
//!   (`020 7946 0958`, `07700 900123`, `030 12345678`, `089/1234567`, `(030) 1234567`), 9 to 12
//!   digits. A bare digit run without `+` is not a phone number (it is as likely an order or
//!   account number), nor is a group preceded by `-`, `/`, `.` or `#` (`ORD-0123-456789`);
//!   dates (`2024-01-15`, `01/02/2024`) have no phone form.
//! - **credit_card**: 13 to 19 digits starting with 2 to 6 (the card networks' ranges), plain or
//!   grouped by spaces or dashes, passing the Luhn check.
//! - **iban**: country code, check digits and 11 to 30 letters or digits, plain or in groups of
//!   four, upper case, passing the ISO 13616 mod-97 check.
//! - **us_ssn**: `123-45-6789` or `123 45 6789`, excluding numbers never issued: area 000, 666
//!   or 900–999, group 00, serial 0000. Nine digits without separators are not taken.
//! - **ipv4**: four dotted decimal octets, each at most 255 and without leading zeros. Part of a
//!   longer dotted run (`1.2.3.4.5`, a version) or glued to a letter (`v10.0.0.1`) is not an
//!   address.
//! - **ipv6**: the forms `std::net::Ipv6Addr` parses (full, `::`-compressed, IPv4-suffixed),
//!   with at least two groups and four hex digits (so `::`, `::1` and `a::b` are not taken), not
//!   glued to a word or a colon (`std::vec` is not an address).

use super::table::{Entry, Table};
use super::text::{char_after, char_before, is_word};
use super::PiiKind;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// In the order the automaton prefers them where two could match at the same place.
static TABLE: [Entry<PiiKind>; 9] = [
    Entry {
        kind: PiiKind::Email,
        pattern: r"(?-u:\b)[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,24}(?-u:\b)",
        validate: email,
    },
    Entry {
        kind: PiiKind::Iban,
        pattern: r"(?-u:\b)[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?(?-u:\b)",
        validate: iban,
    },
    Entry {
        kind: PiiKind::CreditCard,
        pattern: r"(?-u:\b)[2-6][0-9](?:[ -]?[0-9]){11,17}(?-u:\b)",
        validate: credit_card,
    },
    Entry {
        kind: PiiKind::UsSsn,
        pattern: r"(?-u:\b)(?:[0-9]{3}-[0-9]{2}-[0-9]{4}|[0-9]{3} [0-9]{2} [0-9]{4})(?-u:\b)",
        validate: us_ssn,
    },
    Entry {
        kind: PiiKind::Phone,
        pattern: r"\+[1-9][0-9]{0,2}(?:[ .-]?\(?[0-9]{1,4}\)?)(?:[ .-]?[0-9]{2,4}){1,5}(?-u:\b)",
        validate: phone_international,
    },
    Entry {
        kind: PiiKind::Phone,
        pattern: r"(?:\([2-9][0-9]{2}\) ?|(?-u:\b)[2-9][0-9]{2}[ .-])[0-9]{3}[ .-][0-9]{4}(?-u:\b)",
        validate: phone_national,
    },
    Entry {
        kind: PiiKind::Phone,
        pattern: r"(?:\(0[1-9][0-9]{1,4}\) ?|(?-u:\b)0[1-9][0-9]{1,4}[ /-])[0-9]{2,4}(?:[ -]?[0-9]{2,5})?(?-u:\b)",
        validate: phone_national,
    },
    Entry {
        kind: PiiKind::Ipv6,
        pattern: r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9]{1,3}(?:\.[0-9]{1,3}){3}|[0-9A-Fa-f]{1,4})?",
        validate: ipv6,
    },
    Entry {
        kind: PiiKind::Ipv4,
        pattern: r"(?-u:\b)(?:[0-9]{1,3}\.){3}[0-9]{1,3}(?-u:\b)",
        validate: ipv4,
    },
];

static CACHE: LazyLock<Mutex<HashMap<Vec<PiiKind>, Table<PiiKind>>>> =
    LazyLock::new(Default::default);

/// Which engine finds each kind. An automaton over every kind at once has no literal to skip
/// ahead to and runs byte by byte; split up, each part skips most of a text cheaply:
/// - email by its `@` (the regex engine's inner-literal search), over the whole text;
/// - the numbers (phone, card, IBAN, SSN, IPv4) inside digit clusters: runs of digits, upper
///   case letters and separators holding enough digits for the shortest selected form;
/// - IPv6 around colons close enough together to separate address groups.
#[derive(Debug)]
pub(crate) struct Pii {
    email: Option<Table<PiiKind>>,
    numbers: Option<(Table<PiiKind>, usize)>,
    ipv6: Option<Table<PiiKind>>,
}

const NUMBERS: [PiiKind; 5] = [
    PiiKind::Phone,
    PiiKind::CreditCard,
    PiiKind::Iban,
    PiiKind::UsSsn,
    PiiKind::Ipv4,
];

impl Pii {
    pub(crate) fn compile(kinds: &[PiiKind]) -> Pii {
        let pick = |group: &[PiiKind]| {
            let selected: Vec<PiiKind> = kinds
                .iter()
                .copied()
                .filter(|k| group.contains(k))
                .collect();
            (!selected.is_empty()).then(|| Table::select(&CACHE, &TABLE, &selected))
        };
        // The shortest forms: an IPv4 address has 4 digits; an international phone number 8,
        // and every other form more (IBANs included: every country's account number is
        // mostly digits).
        let min_digits = if kinds.contains(&PiiKind::Ipv4) { 4 } else { 8 };
        Pii {
            email: pick(&[PiiKind::Email]),
            numbers: pick(&NUMBERS).map(|t| (t, min_digits)),
            ipv6: pick(&[PiiKind::Ipv6]),
        }
    }

    pub(crate) fn find(&self, text: &str, mut found: impl FnMut(PiiKind, usize, usize)) {
        if let Some(table) = &self.email {
            table.find(text, &mut found);
        }
        if let Some((table, min_digits)) = &self.numbers {
            number_clusters(text, *min_digits, |start, end| {
                table.find_in(text, start..end, &mut found)
            });
        }
        if let Some(table) = &self.ipv6 {
            colon_runs(text, |start, end| {
                table.find_in(text, start..end, &mut found)
            });
        }
    }
}

/// Bytes a number can be written with in the forms above: digits, an IBAN's letters, and the
/// separators.
fn in_number(b: u8) -> bool {
    b.is_ascii_digit()
        || b.is_ascii_uppercase()
        || matches!(b, b' ' | b'-' | b'.' | b'/' | b'(' | b')' | b'+')
}

/// The offset of the first ASCII digit. Prose has few digits, so whole 32-byte chunks are
/// tested at once (a loop without an early exit, which the compiler turns into vector
/// compares) before the chunk holding one is searched byte by byte.
fn first_digit(bytes: &[u8]) -> Option<usize> {
    const CHUNK: usize = 32;
    let mut chunks = bytes.chunks_exact(CHUNK);
    let mut offset = 0;
    for chunk in &mut chunks {
        let any = chunk
            .iter()
            .fold(false, |any, &b| any | (b.wrapping_sub(b'0') < 10));
        if any {
            return chunk
                .iter()
                .position(u8::is_ascii_digit)
                .map(|i| offset + i);
        }
        offset += CHUNK;
    }
    let rest = chunks.remainder();
    rest.iter().position(u8::is_ascii_digit).map(|i| offset + i)
}

/// How many bytes before its first digit a number's written form may start: an IBAN's country
/// code, `+`, `(`.
const NUMBER_LEAD: usize = 4;

/// Calls `f(start, end)` for each run of number bytes holding at least `min_digits` digits.
fn number_clusters(text: &str, min_digits: usize, mut f: impl FnMut(usize, usize)) {
    let bytes = text.as_bytes();
    let mut at = 0;
    while let Some(skip) = first_digit(&bytes[at..]) {
        let first = at + skip;
        let floor = at.max(first.saturating_sub(NUMBER_LEAD));
        let mut start = first;
        while start > floor && in_number(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = first;
        let mut digits = 0;
        while end < bytes.len() && in_number(bytes[end]) {
            digits += usize::from(bytes[end].is_ascii_digit());
            end += 1;
        }
        if digits >= min_digits {
            f(start, end);
        }
        at = end;
    }
}

/// The longest written IPv6 address (IPv4-suffixed, uncompressed).
const IPV6_MAX: usize = 45;

/// Calls `f(start, end)` around each colon with another within five bytes after it (an address
/// group is at most four hex digits), spanning the hex digits, colons and dots around them.
fn colon_runs(text: &str, mut f: impl FnMut(usize, usize)) {
    let bytes = text.as_bytes();
    let in_address = |b: u8| b.is_ascii_hexdigit() || b == b':' || b == b'.';
    let mut done = 0;
    for colon in memchr::memchr_iter(b':', bytes) {
        if colon < done {
            continue;
        }
        let near = &bytes[colon + 1..(colon + 6).min(bytes.len())];
        if !near.contains(&b':') {
            continue;
        }
        let mut start = colon;
        while start > done && colon - start < 4 && in_address(bytes[start - 1]) {
            start -= 1;
        }
        let mut end = colon;
        while end < bytes.len() && end - start < IPV6_MAX && in_address(bytes[end]) {
            end += 1;
        }
        f(start, end);
        done = end;
    }
}

/// How far back an email's token is searched for a URL scheme: further than any real URL's
/// authority, and a bound on the work per candidate.
const URL_LOOK_BACK: usize = 512;

fn email(text: &str, start: usize, end: usize) -> Option<usize> {
    let from = floor_boundary(text, start.saturating_sub(URL_LOOK_BACK));
    let before = &text[from..start];
    let token_start = before
        .rfind(|c: char| c.is_whitespace() || "\"'<>()[]{}".contains(c))
        .map_or(0, |i| i + 1);
    let token = &before[token_start..];
    if let Some(scheme_end) = token.find("://") {
        let authority = &token[scheme_end + 3..];
        if !authority.contains(['/', '?', '#']) {
            return None;
        }
    }
    Some(end)
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

fn digits(s: &str) -> impl DoubleEndedIterator<Item = u32> + '_ {
    s.bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
}

pub(crate) fn luhn_valid(number: &str) -> bool {
    let mut sum = 0;
    for (i, d) in digits(number).rev().enumerate() {
        sum += if i % 2 == 1 {
            let doubled = d * 2;
            if doubled > 9 {
                doubled - 9
            } else {
                doubled
            }
        } else {
            d
        };
    }
    sum % 10 == 0
}

fn credit_card(text: &str, start: usize, end: usize) -> Option<usize> {
    let number = &text[start..end];
    let count = digits(number).count();
    // One kind of separator, if any: `4111 1111-1111 1111` is more likely two numbers.
    let spaces = number.contains(' ');
    let dashes = number.contains('-');
    ((13..=19).contains(&count) && !(spaces && dashes) && luhn_valid(number)).then_some(end)
}

/// ISO 13616: the first four characters moved to the end, letters as 10..=35, mod 97 is 1.
pub(crate) fn iban_valid(iban: &str) -> bool {
    let compact = || iban.bytes().filter(|b| *b != b' ');
    let len = compact().count();
    if !(15..=34).contains(&len) {
        return false;
    }
    let rearranged = compact().skip(4).chain(compact().take(4));
    let mut rem: u32 = 0;
    for b in rearranged {
        match b {
            b'0'..=b'9' => rem = (rem * 10 + u32::from(b - b'0')) % 97,
            b'A'..=b'Z' => rem = (rem * 100 + u32::from(b - b'A' + 10)) % 97,
            _ => return false,
        }
    }
    rem == 1
}

fn iban(text: &str, start: usize, end: usize) -> Option<usize> {
    iban_valid(&text[start..end]).then_some(end)
}

fn us_ssn(text: &str, start: usize, end: usize) -> Option<usize> {
    if glued_before(text, start) || glued_after(text, end) {
        return None;
    }
    let s = &text.as_bytes()[start..end];
    let area = &s[0..3];
    let group = &s[4..6];
    let serial = &s[7..11];
    let invalid = area == b"000" || area == b"666" || area[0] == b'9' || group == b"00";
    (!invalid && serial != b"0000").then_some(end)
}

/// A digit group glued to an identifier (`ORD-0123-456789`, `a/555-123-4567`, `#555 123 4567`).
fn glued_before(text: &str, start: usize) -> bool {
    char_before(text, start).is_some_and(|c| is_word(c) || "-/.#+".contains(c))
}

/// More of the same number follows (`555-123-4567-8`, `555.123.4567.9`).
fn glued_after(text: &str, end: usize) -> bool {
    let rest = &text.as_bytes()[end..];
    rest.len() >= 2 && b"-/.".contains(&rest[0]) && rest[1].is_ascii_digit()
}

fn phone_international(text: &str, start: usize, end: usize) -> Option<usize> {
    let count = digits(&text[start..end]).count();
    let glued = char_before(text, start).is_some_and(is_word) || glued_after(text, end);
    ((8..=15).contains(&count) && !glued).then_some(end)
}

fn phone_national(text: &str, start: usize, end: usize) -> Option<usize> {
    let count = digits(&text[start..end]).count();
    ((9..=12).contains(&count) && !glued_before(text, start) && !glued_after(text, end))
        .then_some(end)
}

fn ipv4(text: &str, start: usize, end: usize) -> Option<usize> {
    if char_before(text, start) == Some('.') || glued_after(text, end) {
        return None;
    }
    let octets_ok = text[start..end]
        .split('.')
        .all(|o| (o.len() == 1 || !o.starts_with('0')) && o.parse::<u8>().is_ok());
    octets_ok.then_some(end)
}

fn ipv6(text: &str, start: usize, end: usize) -> Option<usize> {
    let candidate = &text[start..end];
    let glued_start = char_before(text, start).is_some_and(|c| is_word(c) || c == ':' || c == '.');
    let glued_end = char_after(text, end).is_some_and(|c| is_word(c) || c == ':');
    if glued_start || glued_end || candidate.parse::<std::net::Ipv6Addr>().is_err() {
        return None;
    }
    let groups = candidate.split(':').filter(|g| !g.is_empty()).count();
    let hex = candidate.bytes().filter(u8::is_ascii_hexdigit).count();
    (groups >= 2 && hex >= 4).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_digit_is_found_in_any_chunk_and_in_the_remainder() {
        for length in [0, 1, 31, 32, 33, 64, 100] {
            let letters = "x".repeat(length);
            assert_eq!(first_digit(letters.as_bytes()), None);
            for at in 0..length {
                let mut text = letters.clone().into_bytes();
                text[at] = b'7';
                if at + 1 < length {
                    text[at + 1] = b'0';
                }
                assert_eq!(first_digit(&text), Some(at), "length {length}, at {at}");
            }
        }
        // The bytes just outside '0'..='9' are not digits.
        assert_eq!(first_digit(b"/:\xff 9"), Some(4));
    }

    fn found(kinds: &[PiiKind], text: &str) -> Vec<(PiiKind, String)> {
        let mut out = Vec::new();
        Pii::compile(kinds).find(text, |k, s, e| out.push((k, text[s..e].to_string())));
        out
    }

    fn only(kind: PiiKind, text: &str) -> Vec<String> {
        found(&PiiKind::ALL, text)
            .into_iter()
            .filter(|(k, _)| *k == kind)
            .map(|(_, s)| s)
            .collect()
    }

    #[test]
    fn emails_plain_and_in_mailto_and_url_queries_but_not_url_logins() {
        assert_eq!(
            only(
                PiiKind::Email,
                "write to Jane.Doe+tag@mail.example.co.uk, or mailto:ops@example.org."
            ),
            vec!["Jane.Doe+tag@mail.example.co.uk", "ops@example.org"]
        );
        assert_eq!(
            only(
                PiiKind::Email,
                "see https://example.com/contact?to=bob@example.com"
            ),
            vec!["bob@example.com"]
        );
        assert!(only(
            PiiKind::Email,
            "clone https://deploy@git.example.com/repo.git"
        )
        .is_empty());
        assert!(only(PiiKind::Email, "user@localhost and @handle and a@b.c").is_empty());
    }

    #[test]
    fn phones_in_international_us_and_national_forms() {
        let text = "Call +1 415 555 2671, +442079460958, (555) 123-4567, 555.123.4567, \
                    020 7946 0958, 07700 900123, 030 12345678, 089/1234567 or (030) 1234567.";
        assert_eq!(
            only(PiiKind::Phone, text),
            vec![
                "+1 415 555 2671",
                "+442079460958",
                "(555) 123-4567",
                "555.123.4567",
                "020 7946 0958",
                "07700 900123",
                "030 12345678",
                "089/1234567",
                "(030) 1234567"
            ]
        );
    }

    #[test]
    fn order_numbers_dates_and_bare_digit_runs_are_not_phones() {
        let text = "Order ORD-0123-456789 shipped 2024-01-15 (01/02/2024), ref 5551234567, \
                    total 1234.56, build 555-123-4567-8, code +12.";
        assert!(
            only(PiiKind::Phone, text).is_empty(),
            "{:?}",
            only(PiiKind::Phone, text)
        );
    }

    #[test]
    fn cards_need_the_luhn_check() {
        let text = "Visa 4111 1111 1111 1111, Amex 3782-822463-10005, MC 5555555555554444; \
                    not 4111 1111 1111 1112 nor 5555555555554445 nor 1234567812345670.";
        assert_eq!(
            only(PiiKind::CreditCard, text),
            vec![
                "4111 1111 1111 1111",
                "3782-822463-10005",
                "5555555555554444"
            ]
        );
    }

    #[test]
    fn ibans_need_mod_97() {
        assert_eq!(
            only(
                PiiKind::Iban,
                "pay DE89 3704 0044 0532 0130 00 or GB82WEST12345698765432 AND MORE"
            ),
            vec!["DE89 3704 0044 0532 0130 00", "GB82WEST12345698765432"]
        );
        assert!(only(
            PiiKind::Iban,
            "pay DE89 3704 0044 0532 0130 01 or GB82WEST12345698765433"
        )
        .is_empty());
    }

    #[test]
    fn ssns_exclude_the_never_issued_ranges() {
        assert_eq!(
            only(PiiKind::UsSsn, "SSN 123-45-6789 or 078 05 1120"),
            vec!["123-45-6789", "078 05 1120"]
        );
        let invalid = "000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000 123456789";
        assert!(
            only(PiiKind::UsSsn, invalid).is_empty(),
            "{:?}",
            only(PiiKind::UsSsn, invalid)
        );
    }

    #[test]
    fn ipv4_but_not_versions_or_bad_octets() {
        assert_eq!(
            only(PiiKind::Ipv4, "hosts 10.0.0.1, 192.168.1.254 and 8.8.8.8."),
            vec!["10.0.0.1", "192.168.1.254", "8.8.8.8"]
        );
        let near = "version 1.2.3.4.5, v10.0.0.1, 256.1.1.1, 10.0.0.01, 1.2.3";
        assert!(
            only(PiiKind::Ipv4, near).is_empty(),
            "{:?}",
            only(PiiKind::Ipv4, near)
        );
    }

    #[test]
    fn ipv6_but_not_paths_times_or_macs() {
        assert_eq!(
            only(
                PiiKind::Ipv6,
                "addr 2001:db8:85a3::8a2e:370:7334, fe80::1ff:fe23:4567:890a and ::ffff:192.0.2.1."
            ),
            vec![
                "2001:db8:85a3::8a2e:370:7334",
                "fe80::1ff:fe23:4567:890a",
                "::ffff:192.0.2.1"
            ]
        );
        let near = "std::vec::Vec, at 12:30:45, mac 00:1a:2b:3c:4d:5e, ::1, a::b";
        assert!(
            only(PiiKind::Ipv6, near).is_empty(),
            "{:?}",
            only(PiiKind::Ipv6, near)
        );
    }

    #[test]
    fn only_the_selected_kinds_are_reported_and_a_rejected_kind_hides_nothing() {
        // The card pattern takes this run first; it fails Luhn, and the SSN starting at the
        // same place must still be found.
        assert_eq!(
            found(&PiiKind::ALL, "ref 223 45 6789 0123"),
            vec![(PiiKind::UsSsn, "223 45 6789".to_string())]
        );
        assert_eq!(
            found(
                &[PiiKind::Phone],
                "4111 1111 1111 1111 or mail a@example.com, +44 20 7946 0958"
            ),
            vec![(PiiKind::Phone, "+44 20 7946 0958".to_string())]
        );
    }

    #[test]
    fn every_table_entry_compiles() {
        for kind in PiiKind::ALL {
            Pii::compile(&[kind]);
        }
        Pii::compile(&PiiKind::ALL);
    }
}
