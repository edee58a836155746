//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the `traceparent` header.
//!
//! `traceparent` is `version-traceid-parentid-traceflags`, all lowercase hex: `00-` then 32 hex
//! digits of trace id, 16 of parent (span) id and 2 of flags, 55 characters in all for version
//! `00`. An all-zero trace id or parent id is invalid, and so is version `ff`. A header that
//! does not parse is ignored and the gateway starts a new trace (the spec's "restart the
//! trace"). For a version above `00` the spec's forward-compatibility rule applies: the header
//! is at least 55 characters, the first four fields are parsed as for `00`, and anything after
//! them must start with a dash; only the sampled bit of such a header's flags is kept, since
//! the meaning of the others may have changed.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// The `sampled` trace flag.
pub const FLAG_SAMPLED: u8 = 0x01;
/// The `random` trace flag of Trace Context Level 2: the trace id's right 7 bytes are random.
pub const FLAG_RANDOM: u8 = 0x02;
/// The flags this implementation knows; others are reserved and are not sent on.
const KNOWN_FLAGS: u8 = FLAG_SAMPLED | FLAG_RANDOM;

/// The length of a version-`00` `traceparent`.
const TRACEPARENT_LEN: usize = 55;

/// The trace a request belongs to: its trace id, the caller's span (absent when the gateway
/// started the trace) and the trace flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    /// The caller's span, from `traceparent`; `None` for a trace the gateway started.
    pub parent_span_id: Option<[u8; 8]>,
    pub flags: u8,
}

impl TraceContext {
    /// A new trace with a random trace id, no parent, sampled (the gateway records every
    /// decision; sampling is left to the collector).
    pub fn new_root() -> Self {
        Self {
            trace_id: random_trace_id(),
            parent_span_id: None,
            flags: FLAG_SAMPLED,
        }
    }

    /// The context of an incoming `traceparent` header, or a new root when there is none or
    /// it does not parse.
    pub fn from_header_or_root(traceparent: Option<&str>) -> Self {
        traceparent
            .and_then(parse_traceparent)
            .unwrap_or_else(Self::new_root)
    }

    pub fn is_sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        trace_id_hex(&self.trace_id)
    }
}

/// A span id: 8 bytes, never all zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl SpanId {
    /// A random, non-zero span id.
    pub fn random() -> Self {
        let mut id = [0u8; 8];
        fill_random_nonzero(&mut id);
        Self(id)
    }

    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }

    /// 16 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        span_id_hex(&self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

/// A random, non-zero trace id.
pub fn random_trace_id() -> [u8; 16] {
    let mut id = [0u8; 16];
    fill_random_nonzero(&mut id);
    id
}

/// A trace id as 32 lowercase hex digits.
pub fn trace_id_hex(id: &[u8; 16]) -> String {
    hex::encode(id)
}

/// A span id as 16 lowercase hex digits.
pub fn span_id_hex(id: &[u8; 8]) -> String {
    hex::encode(id)
}

/// The version-`00` `traceparent` naming `span_id` as the parent for whoever comes next (the
/// gateway sends it on its response, with its own decision span). Only the known flags
/// (sampled, random) are sent; the spec says reserved ones are sent as zero.
pub fn traceparent_header(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> String {
    format!(
        "00-{}-{}-{:02x}",
        hex::encode(trace_id),
        hex::encode(span_id),
        flags & KNOWN_FLAGS
    )
}

/// Parses a `traceparent` header value; `None` when it is not valid, in which case the caller
/// starts a new trace. Leading and trailing optional whitespace (spaces, tabs), which HTTP does
/// not count as part of a field value, is ignored.
pub fn parse_traceparent(header: &str) -> Option<TraceContext> {
    let value = header.trim_matches([' ', '\t']);
    let b = value.as_bytes();
    if b.len() < TRACEPARENT_LEN {
        return None;
    }
    let version = decode_lower_hex::<1>(b.get(0..2)?)?;
    let [version] = version;
    if version == 0xff {
        return None;
    }
    if b.get(2) != Some(&b'-') || b.get(35) != Some(&b'-') || b.get(52) != Some(&b'-') {
        return None;
    }
    let trace_id = decode_lower_hex::<16>(b.get(3..35)?)?;
    let parent = decode_lower_hex::<8>(b.get(36..52)?)?;
    let [flags] = decode_lower_hex::<1>(b.get(53..55)?)?;
    let flags = if version == 0 {
        // Version 00 is exactly 55 characters.
        if b.len() != TRACEPARENT_LEN {
            return None;
        }
        flags
    } else {
        // A later version may append fields, each after a dash.
        if b.len() > TRACEPARENT_LEN && b.get(TRACEPARENT_LEN) != Some(&b'-') {
            return None;
        }
        flags & FLAG_SAMPLED
    };
    if trace_id.iter().all(|x| *x == 0) || parent.iter().all(|x| *x == 0) {
        return None;
    }
    Some(TraceContext {
        trace_id,
        parent_span_id: Some(parent),
        flags,
    })
}

/// Decodes exactly `2 * N` lowercase hex digits (uppercase is invalid in `traceparent`).
fn decode_lower_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = match pair {
            [hi, lo] => (lower_hex_digit(*hi)?, lower_hex_digit(*lo)?),
            _ => return None,
        };
        *o = (hi << 4) | lo;
    }
    Some(out)
}

fn lower_hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Fills `buf` from the OS's random source, never leaving it all zero (invalid as an id).
fn fill_random_nonzero(buf: &mut [u8]) {
    if let Err(e) = getrandom::fill(buf) {
        // The OS source does not fail on the platforms the gateway runs on; should it, ids
        // must still be produced (a decision is not refused for want of a trace id), so they
        // come from the clock, the process id and a counter. Unique, not unpredictable.
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, "OS random source failed; trace ids fall back to a clock-based generator");
        }
        fill_fallback(buf);
    }
    if buf.iter().all(|b| *b == 0)
        && let Some(last) = buf.last_mut()
    {
        *last = 1;
    }
}

fn fill_fallback(buf: &mut [u8]) {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let mut state = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for chunk in buf.chunks_mut(8) {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        for (b, r) in chunk.iter_mut().zip(z.to_le_bytes()) {
            *b = r;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    const TRACE: [u8; 16] = [
        0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47,
        0x36,
    ];
    const PARENT: [u8; 8] = [0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7];

    #[test]
    fn spec_examples_parse() {
        // The two examples of the spec's traceparent section.
        let sampled =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(sampled.trace_id, TRACE);
        assert_eq!(sampled.parent_span_id, Some(PARENT));
        assert_eq!(sampled.flags, 0x01);
        assert!(sampled.is_sampled());

        let unsampled =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00").unwrap();
        assert_eq!(unsampled.flags, 0x00);
        assert!(!unsampled.is_sampled());
        assert_eq!(unsampled.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
    }

    #[test]
    fn optional_whitespace_around_the_value_is_ignored() {
        let ctx =
            parse_traceparent(" \t00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\t ")
                .unwrap();
        assert_eq!(ctx.trace_id, TRACE);
    }

    #[test]
    fn version_00_keeps_all_flag_bits() {
        let ctx =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03").unwrap();
        assert_eq!(ctx.flags, 0x03);
        let ctx =
            parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09").unwrap();
        assert_eq!(ctx.flags, 0x09);
    }

    #[test]
    fn future_versions_parse_the_first_four_fields() {
        // A higher version: same four fields, possibly more after a dash.
        let ctx =
            parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").unwrap();
        assert_eq!(ctx.trace_id, TRACE);
        assert_eq!(ctx.parent_span_id, Some(PARENT));
        assert_eq!(ctx.flags, 0x01);
        let ctx = parse_traceparent(
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-will-be-like",
        )
        .unwrap();
        assert_eq!(ctx.trace_id, TRACE);
        // Only the sampled bit is understood in a future version.
        let ctx =
            parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-fe").unwrap();
        assert_eq!(ctx.flags, 0x00);
        // ...and what follows the flags must start with a dash.
        assert!(
            parse_traceparent(
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01.what-the-future-will-be-like"
            )
            .is_none()
        );
        assert!(
            parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-011").is_none()
        );
    }

    #[test]
    fn invalid_headers_are_rejected() {
        let invalid = [
            // empty, too short, garbage
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "not a traceparent at all, but quite long enough to be one",
            // version ff is forbidden; the version must be two lowercase hex digits
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // all-zero ids
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0A",
            // non-hex characters
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902bz-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-zz",
            // wrong delimiters or field lengths
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-0f067aa0ba902b7-01",
            // version 00 admits nothing after the flags
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // whitespace inside the value
            "00-4bf92f3577b34da6a3ce929d0e0e4736- 0f067aa0ba902b7-01",
            // a multi-byte character where a hex digit belongs
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ];
        for h in invalid {
            assert_eq!(parse_traceparent(h), None, "{h:?} should be rejected");
        }
    }

    #[test]
    fn header_round_trips() {
        let h = traceparent_header(TRACE, PARENT, 0x01);
        assert_eq!(h, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        let ctx = parse_traceparent(&h).unwrap();
        assert_eq!((ctx.trace_id, ctx.parent_span_id), (TRACE, Some(PARENT)));
        // Reserved flags are not sent on.
        assert!(traceparent_header(TRACE, PARENT, 0xff).ends_with("-03"));
    }

    #[test]
    fn roots_and_span_ids_are_random_and_valid() {
        let a = TraceContext::new_root();
        let b = TraceContext::new_root();
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(a.parent_span_id, None);
        assert!(a.is_sampled());
        assert_ne!(SpanId::random(), SpanId::random());
        let s = SpanId::random();
        assert_eq!(s.to_hex().len(), 16);
        assert_eq!(s.to_string(), s.to_hex());
        // A header the gateway produces parses back.
        let h = traceparent_header(a.trace_id, s.to_bytes(), a.flags);
        let back = parse_traceparent(&h).unwrap();
        assert_eq!(back.trace_id, a.trace_id);
        assert_eq!(back.parent_span_id, Some(s.0));
        assert_eq!(a.trace_id_hex().len(), 32);
    }

    #[test]
    fn a_missing_or_bad_header_starts_a_new_trace() {
        let ctx = TraceContext::from_header_or_root(Some("garbage"));
        assert_eq!(ctx.parent_span_id, None);
        let ctx = TraceContext::from_header_or_root(None);
        assert_eq!(ctx.parent_span_id, None);
        let ctx = TraceContext::from_header_or_root(Some(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ));
        assert_eq!(ctx.trace_id, TRACE);
    }

    #[test]
    fn fallback_ids_differ_and_are_not_zero() {
        let mut a = [0u8; 16];
        let mut b = [0u8; 16];
        fill_fallback(&mut a);
        fill_fallback(&mut b);
        assert_ne!(a, b);
        assert!(a.iter().any(|x| *x != 0));
    }
}
