//! Streaming `Content-Encoding` decoders used only to *count*: the client always receives the
//! upstream bytes untouched, so these decoders never feed anything back into the response.
//!
//! Each decoder inflates into one reusable fixed buffer and hands every piece to a callback as
//! soon as it is produced. Nothing decoded is kept here, so memory stays constant whatever the
//! body size, and a callback that returns `false` (it has seen enough, or a size bound was hit)
//! stops decoding at once, which also bounds the CPU a decompression bomb can cost.

use std::panic::{self, AssertUnwindSafe};

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use flate2::{Decompress, FlushDecompress, Status};

/// How a response body is encoded on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentEncoding {
    Identity,
    Gzip,
    Deflate,
    Br,
}

impl ContentEncoding {
    /// Reads a `Content-Encoding` header value. No header (or an empty one) means identity.
    /// Returns `None` for anything this module cannot decode: unknown codings (`zstd`, ...) and
    /// stacked codings (`gzip, br`), which real providers do not send.
    pub fn from_header(value: Option<&[u8]>) -> Option<ContentEncoding> {
        let Some(value) = value else {
            return Some(ContentEncoding::Identity);
        };
        let value = value.trim_ascii();
        if value.is_empty() || value.eq_ignore_ascii_case(b"identity") {
            Some(ContentEncoding::Identity)
        } else if value.eq_ignore_ascii_case(b"gzip") || value.eq_ignore_ascii_case(b"x-gzip") {
            Some(ContentEncoding::Gzip)
        } else if value.eq_ignore_ascii_case(b"deflate") {
            Some(ContentEncoding::Deflate)
        } else if value.eq_ignore_ascii_case(b"br") {
            Some(ContentEncoding::Br)
        } else {
            None
        }
    }
}

/// The codings keygate can ask a provider for, as bits of [`ContentEncoding::upstream_accept`].
const GZIP: u8 = 1;
const DEFLATE: u8 = 2;
const BR: u8 = 4;

impl ContentEncoding {
    /// The `Accept-Encoding` to send upstream for a client's: the codings the client accepts
    /// that keygate decodes, else `identity`. The client receives the provider's bytes as they
    /// are, so it must accept them; and a coding keygate cannot decode (`zstd`, say) would leave
    /// the response's usage unread. Preferences (`q` values) beyond refusal are the provider's
    /// to weigh.
    pub fn upstream_accept(client: Option<&[u8]>) -> http::HeaderValue {
        // By the bits above: all eight combinations, so that no value is built per request.
        const VALUES: [&str; 8] = [
            "identity",
            "gzip",
            "deflate",
            "gzip, deflate",
            "br",
            "gzip, br",
            "deflate, br",
            "gzip, deflate, br",
        ];
        let (mut accepted, mut named, mut wildcard) = (0u8, 0u8, false);
        for element in client.unwrap_or_default().split(|&b| b == b',') {
            let mut parts = element.split(|&b| b == b';');
            let coding = parts.next().unwrap_or_default().trim_ascii();
            let refused = parts.any(|param| {
                let param = param.trim_ascii();
                param.len() > 2
                    && param[..2].eq_ignore_ascii_case(b"q=")
                    && param[2..].iter().all(|&b| b == b'0' || b == b'.')
            });
            let bit =
                if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
                    GZIP
                } else if coding.eq_ignore_ascii_case(b"deflate") {
                    DEFLATE
                } else if coding.eq_ignore_ascii_case(b"br") {
                    BR
                } else {
                    if coding == b"*" {
                        wildcard = !refused;
                    }
                    continue;
                };
            named |= bit;
            if !refused {
                accepted |= bit;
            }
        }
        // `*` stands for every coding the client did not name.
        if wildcard {
            accepted |= (GZIP | DEFLATE | BR) & !named;
        }
        http::HeaderValue::from_static(VALUES[usize::from(accepted)])
    }
}

/// Size of the buffer decoded output goes through. Big enough that a typical SSE chunk inflates
/// in one round, small enough to stay in L1/L2.
const OUT_BUF: usize = 16 * 1024;

type Brotli = BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>;

enum State {
    Gzip(Decompress),
    /// HTTP `deflate` is specified as zlib-wrapped, but some servers send raw deflate; the first
    /// two bytes tell which. They are held here until both have arrived.
    DeflateSniff(Vec<u8>),
    Zlib(Decompress),
    RawDeflate(Decompress),
    Br(Box<Brotli>),
    /// Stream ended, failed, or the consumer asked to stop: later input is ignored.
    Stopped,
}

/// An incremental decoder for one compressed body.
pub(crate) struct Decoder {
    state: State,
    out: Box<[u8]>,
}

impl Decoder {
    /// `None` for identity: there is nothing to decode.
    pub(crate) fn new(encoding: ContentEncoding) -> Option<Decoder> {
        let state = match encoding {
            ContentEncoding::Identity => return None,
            ContentEncoding::Gzip => State::Gzip(Decompress::new_gzip(15)),
            ContentEncoding::Deflate => State::DeflateSniff(Vec::with_capacity(2)),
            ContentEncoding::Br => State::Br(Box::new(Brotli::new(
                StandardAlloc::default(),
                StandardAlloc::default(),
                StandardAlloc::default(),
            ))),
        };
        Some(Decoder {
            state,
            out: vec![0; OUT_BUF].into_boxed_slice(),
        })
    }

    /// Decodes `input`, passing each decoded piece to `sink` in order. `sink` returns `false` to
    /// stop decoding for good. Corrupt input also stops decoding; there is no error to report
    /// because the only consequence is that no (further) usage is found.
    pub(crate) fn decode(&mut self, input: &[u8], sink: &mut dyn FnMut(&[u8]) -> bool) {
        if matches!(self.state, State::Stopped) || input.is_empty() {
            return;
        }
        // The decoders are third-party code fed untrusted bytes on the proxy's hot path. They are
        // well fuzzed, but a panic here must never take a response down with it: treat one as
        // corrupt input. The cost when nothing panics is nil.
        let result = panic::catch_unwind(AssertUnwindSafe(|| self.decode_inner(input, sink)));
        if result.is_err() {
            self.state = State::Stopped;
        }
    }

    fn decode_inner(&mut self, input: &[u8], sink: &mut dyn FnMut(&[u8]) -> bool) {
        let mut input = input;
        if let State::DeflateSniff(held) = &mut self.state {
            let take = (2 - held.len()).min(input.len());
            held.extend_from_slice(&input[..take]);
            input = &input[take..];
            if held.len() < 2 {
                return;
            }
            let head = [held[0], held[1]];
            let zlib = is_zlib_header(head);
            self.state = if zlib {
                State::Zlib(Decompress::new(true))
            } else {
                State::RawDeflate(Decompress::new(false))
            };
            // Replay the two sniffed bytes through the real decoder before the rest.
            if !self.run(&head, sink) {
                return;
            }
        }
        self.run(input, sink);
    }

    /// Feeds `input` to the current decoder; returns `false` once stopped.
    fn run(&mut self, mut input: &[u8], sink: &mut dyn FnMut(&[u8]) -> bool) -> bool {
        let out = &mut self.out[..];
        let stop = match &mut self.state {
            State::Gzip(d) => loop {
                match inflate_step(d, &mut input, out, sink) {
                    Step::More => continue,
                    Step::Idle => break false,
                    Step::Stop => break true,
                    Step::End => {
                        // A gzip body may hold several members back to back (RFC 1952 §2.2).
                        if input.is_empty() {
                            break true;
                        }
                        *d = Decompress::new_gzip(15);
                    }
                }
            },
            State::Zlib(d) | State::RawDeflate(d) => loop {
                match inflate_step(d, &mut input, out, sink) {
                    Step::More => continue,
                    Step::Idle => break false,
                    Step::Stop | Step::End => break true,
                }
            },
            State::Br(state) => loop {
                let mut avail_in = input.len();
                let mut in_off = 0;
                let mut avail_out = out.len();
                let mut out_off = 0;
                let mut total_out = 0;
                let result = BrotliDecompressStream(
                    &mut avail_in,
                    &mut in_off,
                    input,
                    &mut avail_out,
                    &mut out_off,
                    out,
                    &mut total_out,
                    state,
                );
                input = &input[in_off.min(input.len())..];
                if out_off > 0 && !sink(&out[..out_off.min(out.len())]) {
                    break true;
                }
                match result {
                    BrotliResult::NeedsMoreOutput => continue,
                    BrotliResult::NeedsMoreInput => break false,
                    BrotliResult::ResultSuccess | BrotliResult::ResultFailure => break true,
                }
            },
            State::DeflateSniff(_) | State::Stopped => false,
        };
        if stop {
            self.state = State::Stopped;
        }
        !stop
    }
}

enum Step {
    /// Output may be pending: call again.
    More,
    /// All input consumed and all output delivered: wait for the next chunk.
    Idle,
    /// Corrupt data, or the sink asked to stop.
    Stop,
    /// End of the compressed stream; `input` holds whatever followed it.
    End,
}

fn inflate_step(
    d: &mut Decompress,
    input: &mut &[u8],
    out: &mut [u8],
    sink: &mut dyn FnMut(&[u8]) -> bool,
) -> Step {
    let (in_before, out_before) = (d.total_in(), d.total_out());
    let status = d.decompress(input, out, FlushDecompress::None);
    let consumed = usize::try_from(d.total_in() - in_before).unwrap_or(usize::MAX);
    let produced = usize::try_from(d.total_out() - out_before).unwrap_or(usize::MAX);
    *input = &input[consumed.min(input.len())..];
    if produced > 0 && !sink(&out[..produced.min(out.len())]) {
        return Step::Stop;
    }
    match status {
        Err(_) => Step::Stop,
        Ok(Status::StreamEnd) => Step::End,
        // A full output buffer may mean more output is waiting even with no input left.
        Ok(_) if produced == out.len() => Step::More,
        Ok(_) if input.is_empty() || (consumed == 0 && produced == 0) => Step::Idle,
        Ok(_) => Step::More,
    }
}

/// RFC 1950: CM = 8 (deflate), CINFO <= 7 (window <= 32 KiB), and the 16-bit header is a
/// multiple of 31. A raw deflate stream virtually never satisfies all three.
fn is_zlib_header(head: [u8; 2]) -> bool {
    head[0] & 0x0f == 8
        && head[0] >> 4 <= 7
        && (u16::from(head[0]) << 8 | u16::from(head[1])) % 31 == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn decode_all(encoding: ContentEncoding, data: &[u8], chunk: usize) -> Vec<u8> {
        let mut d = Decoder::new(encoding).unwrap();
        let mut out = Vec::new();
        for piece in data.chunks(chunk.max(1)) {
            d.decode(piece, &mut |b| {
                out.extend_from_slice(b);
                true
            });
        }
        out
    }

    fn sample() -> Vec<u8> {
        (0..5000u32)
            .flat_map(|i| format!("line {i} é😀\n").into_bytes())
            .collect()
    }

    #[test]
    fn header_values() {
        use ContentEncoding::*;
        assert_eq!(ContentEncoding::from_header(None), Some(Identity));
        assert_eq!(ContentEncoding::from_header(Some(b"")), Some(Identity));
        assert_eq!(ContentEncoding::from_header(Some(b" GZip ")), Some(Gzip));
        assert_eq!(ContentEncoding::from_header(Some(b"x-gzip")), Some(Gzip));
        assert_eq!(
            ContentEncoding::from_header(Some(b"deflate")),
            Some(Deflate)
        );
        assert_eq!(ContentEncoding::from_header(Some(b"br")), Some(Br));
        assert_eq!(
            ContentEncoding::from_header(Some(b"identity")),
            Some(Identity)
        );
        assert_eq!(ContentEncoding::from_header(Some(b"zstd")), None);
        assert_eq!(ContentEncoding::from_header(Some(b"gzip, br")), None);
    }

    #[test]
    fn the_provider_is_asked_for_what_the_client_accepts_and_keygate_decodes() {
        for (client, upstream) in [
            (None, "identity"),
            (Some(&b""[..]), "identity"),
            (Some(b"zstd"), "identity"),
            (Some(b"gzip, deflate, br, zstd"), "gzip, deflate, br"),
            (Some(b"zstd;q=1.0, BR;q=0.9, x-gzip ;q=0.1"), "gzip, br"),
            (Some(b"br;q=0, gzip;q=0.000"), "identity"),
            (Some(b"deflate;q=0.01"), "deflate"),
            (Some(b"*"), "gzip, deflate, br"),
            (Some(b"br;q=0, *;q=0.5"), "gzip, deflate"),
            (Some(b"gzip, *;q=0"), "gzip"),
            (Some(b";;,, ,q=0"), "identity"),
        ] {
            let got = ContentEncoding::upstream_accept(client);
            assert_eq!(got, upstream, "{:?}", client.map(String::from_utf8_lossy));
            // whatever the provider picks from it, keygate decodes
            for coding in got.to_str().unwrap().split(", ") {
                assert!(ContentEncoding::from_header(Some(coding.as_bytes())).is_some());
            }
        }
    }

    #[test]
    fn gzip_zlib_raw_and_brotli_round_trip_in_small_chunks() {
        let data = sample();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        zl.write_all(&data).unwrap();
        let zl = zl.finish().unwrap();
        let mut raw = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
        raw.write_all(&data).unwrap();
        let raw = raw.finish().unwrap();
        let mut br = Vec::new();
        {
            let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
            w.write_all(&data).unwrap();
        }
        for chunk in [1, 2, 7, 100, 70_000] {
            assert_eq!(decode_all(ContentEncoding::Gzip, &gz, chunk), data);
            assert_eq!(decode_all(ContentEncoding::Deflate, &zl, chunk), data);
            assert_eq!(decode_all(ContentEncoding::Deflate, &raw, chunk), data);
            assert_eq!(decode_all(ContentEncoding::Br, &br, chunk), data);
        }
    }

    #[test]
    fn multi_member_gzip() {
        let mut body = Vec::new();
        for part in [&b"hello "[..], b"world"] {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(part).unwrap();
            body.extend(gz.finish().unwrap());
        }
        assert_eq!(decode_all(ContentEncoding::Gzip, &body, 3), b"hello world");
    }

    #[test]
    fn sink_can_stop_decoding() {
        let data = sample();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let mut d = Decoder::new(ContentEncoding::Gzip).unwrap();
        let mut calls = 0;
        d.decode(&gz, &mut |_| {
            calls += 1;
            false
        });
        d.decode(&gz, &mut |_| {
            calls += 1;
            true
        });
        assert_eq!(calls, 1);
    }

    #[test]
    fn garbage_stops_quietly() {
        for enc in [
            ContentEncoding::Gzip,
            ContentEncoding::Deflate,
            ContentEncoding::Br,
        ] {
            let out = decode_all(enc, b"definitely not compressed data \x00\xff\x13", 3);
            assert!(out.len() < 1024);
        }
    }

    /// Truncated and corrupt bodies in any chunking: never a panic, never a byte that is not
    /// the body's (a truncated stream decodes to a prefix of it), and never more output than the
    /// sink accepts plus one buffer, however much the input could inflate to.
    mod damaged {
        use super::*;
        use proptest::prelude::*;
        use proptest::sample::Index;

        /// A part of [`sample`], compressed every way, made once for all cases.
        fn data() -> &'static [u8] {
            static DATA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            DATA.get_or_init(|| sample()[..20_000].to_vec())
        }

        fn compressed() -> &'static [(ContentEncoding, Vec<u8>)] {
            static BODIES: std::sync::OnceLock<Vec<(ContentEncoding, Vec<u8>)>> =
                std::sync::OnceLock::new();
            BODIES.get_or_init(compress)
        }

        fn compress() -> Vec<(ContentEncoding, Vec<u8>)> {
            let data = data();
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(data).unwrap();
            let mut zl = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
            zl.write_all(data).unwrap();
            let mut raw =
                flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            raw.write_all(data).unwrap();
            let mut br = Vec::new();
            {
                let mut w = brotli::CompressorWriter::new(&mut br, 4096, 5, 22);
                w.write_all(data).unwrap();
            }
            vec![
                (ContentEncoding::Gzip, gz.finish().unwrap()),
                (ContentEncoding::Deflate, zl.finish().unwrap()),
                (ContentEncoding::Deflate, raw.finish().unwrap()),
                (ContentEncoding::Br, br),
            ]
        }

        /// Decodes `pieces`, stopping once `limit` bytes were taken; returns what was taken.
        fn decode_limited(encoding: ContentEncoding, pieces: &[&[u8]], limit: usize) -> Vec<u8> {
            let mut d = Decoder::new(encoding).unwrap();
            let mut out = Vec::new();
            for piece in pieces {
                d.decode(piece, &mut |b| {
                    out.extend_from_slice(b);
                    out.len() < limit
                });
            }
            out
        }

        fn pieces<'a>(data: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
            let mut at: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            at.push(data.len());
            at.sort_unstable();
            let mut from = 0;
            at.into_iter()
                .map(|to| {
                    let p = &data[from..to];
                    from = to;
                    p
                })
                .collect()
        }

        /// A gzip body of `members` copies of one member holding `each` zero bytes: a small body
        /// that inflates to `members * each` bytes.
        fn gzip_bomb(each: usize, members: usize) -> Vec<u8> {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
            gz.write_all(&vec![0; each]).unwrap();
            gz.finish().unwrap().repeat(members)
        }

        #[test]
        fn a_bomb_stops_at_the_sinks_limit() {
            let bomb = gzip_bomb(16 << 20, 64);
            assert!(
                bomb.len() < 2 << 20,
                "{} bytes inflate to 1 GiB",
                bomb.len()
            );
            for chunk in [bomb.len(), 4096] {
                let pieces: Vec<&[u8]> = bomb.chunks(chunk).collect();
                let out = decode_limited(ContentEncoding::Gzip, &pieces, 1 << 20);
                assert!(
                    out.len() <= (1 << 20) + OUT_BUF,
                    "{} bytes decoded",
                    out.len()
                );
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn truncated_decodes_to_a_prefix(
                which in 0usize..4,
                keep in any::<Index>(),
                cuts in prop::collection::vec(any::<Index>(), 0..12),
            ) {
                let (encoding, body) = &compressed()[which];
                let body = &body[..keep.index(body.len() + 1)];
                let out = decode_limited(*encoding, &pieces(body, &cuts), usize::MAX);
                prop_assert!(data().starts_with(&out), "{} bytes, not a prefix", out.len());
            }

            #[test]
            fn corrupt_input_is_bounded(
                which in 0usize..4,
                edits in prop::collection::vec((any::<Index>(), any::<u8>()), 1..16),
                cuts in prop::collection::vec(any::<Index>(), 0..12),
                limit in 1usize..200_000,
            ) {
                let (encoding, body) = &compressed()[which];
                let (encoding, mut body) = (*encoding, body.clone());
                for (at, b) in &edits {
                    let i = at.index(body.len());
                    body[i] = *b;
                }
                let pieces = pieces(&body, &cuts);
                let out = decode_limited(encoding, &pieces, limit);
                prop_assert!(out.len() < limit + OUT_BUF, "{} bytes past a limit of {}", out.len(), limit);
                if encoding != ContentEncoding::Br {
                    // Deflate cannot expand past 1032:1, damaged or not.
                    let all = decode_limited(encoding, &pieces, usize::MAX);
                    prop_assert!(all.len() <= body.len() * 1032, "{} from {}", all.len(), body.len());
                }
            }

            #[test]
            fn random_bytes_are_bounded(
                encoding in prop::sample::select(vec![ContentEncoding::Gzip, ContentEncoding::Deflate, ContentEncoding::Br]),
                body in prop::collection::vec(any::<u8>(), 0..4096),
                cuts in prop::collection::vec(any::<Index>(), 0..12),
            ) {
                let out = decode_limited(encoding, &pieces(&body, &cuts), 64 * 1024);
                prop_assert!(out.len() < 64 * 1024 + OUT_BUF);
            }
        }
    }
}
