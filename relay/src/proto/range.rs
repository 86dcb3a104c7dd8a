//! The RTSP `Range` header (RFC 2326 §12.29) in normal play time (§3.6): where a PLAY asks a
//! presentation to start, and where a server says it started. Sans-IO: a header value in, a
//! typed [`Range`] or a precise [`RangeError`] out.
//!
//! ```text
//! Range        = ranges-specifier *( "," ranges-specifier ) [ ";" "time" "=" utc-time ]
//! npt-range    = "npt" "=" ( npt-time "-" [ npt-time ] | "-" npt-time )
//! npt-time     = "now" | npt-sec | npt-hhmmss
//! npt-sec      = 1*DIGIT [ "." *DIGIT ]                      ; 12.5
//! npt-hhmmss   = 1*DIGIT ":" 1*2DIGIT ":" 1*2DIGIT [ "." *DIGIT ] ; 0:01:02.5 (mm, ss 0-59)
//! ```
//!
//! Only `npt` is interpreted. Other units (`clock=`, `smpte=`, ...) parse as [`Range::Other`],
//! so the caller decides: a server that seeks refuses them (456 with `Accept-Ranges: npt`, the
//! rule RTSP 2.0's Range header (RFC 7826) made explicit), one that does not (a live stream)
//! ignores them. Of a list
//! of specifiers the first is used; the `time=` parameter (a scheduled start) is ignored.
//!
//! Limits: a value of at most [`MAX_RANGE_LEN`] bytes, times of at most [`MAX_NPT_SECONDS`];
//! fraction digits beyond nanoseconds are read and dropped. Every error is the client's and is
//! answered with 457 Invalid Range ([`RangeError::status`]), as RFC 2326 §11.4.5 says.
#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

use super::rtsp::StatusCode;

/// Longest `Range` value accepted, in bytes.
pub const MAX_RANGE_LEN: usize = 256;
/// Largest normal play time accepted, in seconds (about 31 years: longer than any recording,
/// and within the `u32` seconds of a device's clock arithmetic).
pub const MAX_NPT_SECONDS: u64 = 1_000_000_000;

/// A normal play time: a position in the presentation, or "now" (where it is).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NptTime {
    /// `now`: the current position (a live point, or where a paused presentation stopped).
    Now,
    /// Time from the start of the presentation.
    At(Duration),
}

impl NptTime {
    /// The position, unless this is `now`.
    pub fn position(self) -> Option<Duration> {
        match self {
            NptTime::Now => None,
            NptTime::At(at) => Some(at),
        }
    }
}

impl fmt::Display for NptTime {
    /// `now`, or seconds with at least three fraction digits and as many as needed to be exact
    /// (`5.000`, `62.500`, `1.000000001`), so that a printed time parses back to itself.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NptTime::Now => f.write_str("now"),
            NptTime::At(at) => {
                let nanos = format!("{:09}", at.subsec_nanos());
                let digits = nanos.trim_end_matches('0').len().max(3);
                write!(f, "{}.{}", at.as_secs(), &nanos[..digits])
            }
        }
    }
}

/// An `npt` range: at least one of its ends is given; when both are positions, the start is
/// not after the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NptRange {
    /// Where to start; `None` (`npt=-E`) means the current position.
    pub start: Option<NptTime>,
    /// Where to stop; `None` (`npt=S-`) means the end of the presentation.
    pub end: Option<NptTime>,
}

impl NptRange {
    /// `npt=S-`: from `start` to the end.
    pub fn from(start: Duration) -> Self {
        NptRange {
            start: Some(NptTime::At(start)),
            end: None,
        }
    }

    /// The position to start from, when the range names one (not `now`, not omitted).
    pub fn start_position(&self) -> Option<Duration> {
        self.start.and_then(NptTime::position)
    }
}

impl fmt::Display for NptRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("npt=")?;
        if let Some(start) = self.start {
            write!(f, "{start}")?;
        }
        f.write_str("-")?;
        if let Some(end) = self.end {
            write!(f, "{end}")?;
        }
        Ok(())
    }
}

/// A `Range` header value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Range {
    /// Normal play time.
    Npt(NptRange),
    /// A unit other than `npt` (`clock`, `smpte`, `smpte-25`, ...), with its value as sent;
    /// not interpreted.
    Other {
        /// The unit, as sent.
        unit: String,
        /// What followed `=`, trimmed.
        value: String,
    },
}

impl fmt::Display for Range {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Range::Npt(npt) => write!(f, "{npt}"),
            Range::Other { unit, value } => write!(f, "{unit}={value}"),
        }
    }
}

/// A `Range` value a server cannot use. Every variant is the client's fault; the offsets count
/// bytes from the start of the header value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RangeError {
    /// The value is longer than [`MAX_RANGE_LEN`].
    #[error("Range value of {len} bytes exceeds the {limit}-byte limit")]
    TooLong { len: usize, limit: usize },
    /// The value breaks the grammar at `offset`.
    #[error("malformed Range at byte {offset}: expected {expected}")]
    Malformed {
        offset: usize,
        expected: &'static str,
    },
    /// Minutes or seconds of an `hh:mm:ss` time above 59.
    #[error("Range {field} {value} at byte {offset} is above 59")]
    FieldOutOfBounds {
        offset: usize,
        field: &'static str,
        value: u64,
    },
    /// A time above [`MAX_NPT_SECONDS`].
    #[error("Range time at byte {offset} exceeds {limit} seconds")]
    TooLarge { offset: usize, limit: u64 },
    /// Both ends are positions and the end comes first.
    #[error("Range ends at {end} before it starts at {start}")]
    EndBeforeStart { start: NptTime, end: NptTime },
}

impl RangeError {
    /// The status a server answers with: 457 Invalid Range.
    pub fn status(&self) -> StatusCode {
        StatusCode::INVALID_RANGE
    }
}

impl Range {
    /// Parses a `Range` header value. See the module documentation for the grammar.
    pub fn parse(value: &str) -> Result<Range, RangeError> {
        if value.len() > MAX_RANGE_LEN {
            return Err(RangeError::TooLong {
                len: value.len(),
                limit: MAX_RANGE_LEN,
            });
        }
        // The first specifier: up to the first parameter or list separator.
        let end = value.find([';', ',']).unwrap_or(value.len());
        let (spec, spec_at) = trimmed(value, 0, end);
        let Some(eq) = spec.find('=') else {
            return Err(RangeError::Malformed {
                offset: spec_at + spec.len(),
                expected: "a unit and `=` (npt=, clock=, smpte=)",
            });
        };
        let (unit, unit_at) = trimmed(spec, 0, eq);
        if unit.is_empty() || !unit.bytes().all(is_unit_char) {
            return Err(RangeError::Malformed {
                offset: spec_at + unit_at,
                expected: "a unit token (npt, clock, smpte)",
            });
        }
        let (rest, rest_at) = trimmed(spec, eq + 1, spec.len());
        let rest_at = spec_at + rest_at;
        if !unit.eq_ignore_ascii_case("npt") {
            return Ok(Range::Other {
                unit: unit.to_owned(),
                value: rest.to_owned(),
            });
        }
        let Some(dash) = rest.find('-') else {
            return Err(RangeError::Malformed {
                offset: rest_at + rest.len(),
                expected: "`-` between the start and the end",
            });
        };
        let (start_text, start_at) = trimmed(rest, 0, dash);
        let (end_text, end_at) = trimmed(rest, dash + 1, rest.len());
        let start = parse_optional(start_text, rest_at + start_at)?;
        let end = parse_optional(end_text, rest_at + end_at)?;
        if start.is_none() && end.is_none() {
            return Err(RangeError::Malformed {
                offset: rest_at,
                expected: "a start or an end time",
            });
        }
        if let (Some(s @ NptTime::At(a)), Some(e @ NptTime::At(b))) = (start, end) {
            if b < a {
                return Err(RangeError::EndBeforeStart { start: s, end: e });
            }
        }
        Ok(Range::Npt(NptRange { start, end }))
    }
}

/// `text[from..to]` without surrounding spaces and tabs, and the offset of what is left.
fn trimmed(text: &str, from: usize, to: usize) -> (&str, usize) {
    let piece = &text[from..to];
    let start = piece.len() - piece.trim_start_matches([' ', '\t']).len();
    (piece.trim_matches([' ', '\t']), from + start)
}

fn is_unit_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')
}

fn parse_optional(text: &str, offset: usize) -> Result<Option<NptTime>, RangeError> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse_time(text, offset).map(Some)
    }
}

/// One `npt-time`; `offset` is where `text` starts in the header value.
fn parse_time(text: &str, offset: usize) -> Result<NptTime, RangeError> {
    if text.eq_ignore_ascii_case("now") {
        return Ok(NptTime::Now);
    }
    let malformed = |at: usize, expected| RangeError::Malformed {
        offset: offset + at,
        expected,
    };
    let (whole, fraction) = match text.find('.') {
        Some(dot) => (&text[..dot], Some((&text[dot + 1..], dot + 1))),
        None => (text, None),
    };
    let fields: Vec<&str> = whole.split(':').collect();
    if fields.len() != 1 && fields.len() != 3 {
        return Err(malformed(0, "seconds (12.5) or hh:mm:ss (0:01:02.5)"));
    }
    let mut seconds: u64 = 0;
    let mut at = 0;
    for (index, field) in fields.iter().enumerate() {
        let hours_or_seconds = index == 0;
        if field.is_empty()
            || !field.bytes().all(|b| b.is_ascii_digit())
            || (!hours_or_seconds && field.len() > 2)
        {
            let expected = if hours_or_seconds {
                "digits"
            } else {
                "one or two digits"
            };
            return Err(malformed(at, expected));
        }
        let too_large = RangeError::TooLarge {
            offset: offset + at,
            limit: MAX_NPT_SECONDS,
        };
        // At most 2 digits after the first field; a long first field overflows here.
        let value: u64 = field.parse().map_err(|_| too_large.clone())?;
        if !hours_or_seconds && value > 59 {
            return Err(RangeError::FieldOutOfBounds {
                offset: offset + at,
                field: if index == 1 { "minutes" } else { "seconds" },
                value,
            });
        }
        let scale = if fields.len() == 3 && index == 0 {
            3600
        } else if fields.len() == 3 && index == 1 {
            60
        } else {
            1
        };
        seconds = value
            .checked_mul(scale)
            .and_then(|v| seconds.checked_add(v))
            .filter(|&s| s <= MAX_NPT_SECONDS)
            .ok_or(too_large)?;
        at += field.len() + 1;
    }
    let mut nanos: u32 = 0;
    if let Some((digits, digits_at)) = fraction {
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(malformed(digits_at, "fraction digits"));
        }
        for (i, digit) in digits.bytes().take(9).enumerate() {
            nanos += u32::from(digit - b'0') * 10u32.pow(8 - i as u32);
        }
        if seconds == MAX_NPT_SECONDS && nanos > 0 {
            return Err(RangeError::TooLarge {
                offset,
                limit: MAX_NPT_SECONDS,
            });
        }
    }
    Ok(NptTime::At(Duration::new(seconds, nanos)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn npt(value: &str) -> NptRange {
        match Range::parse(value) {
            Ok(Range::Npt(range)) => range,
            other => panic!("{value}: {other:?}"),
        }
    }

    fn at(secs: f64) -> Option<NptTime> {
        Some(NptTime::At(Duration::from_secs_f64(secs)))
    }

    #[test]
    fn the_forms_players_send() {
        // ffmpeg (`-ss 5`), VLC/live555 and GStreamer.
        assert_eq!(npt("npt=5.000-"), NptRange::from(Duration::from_secs(5)));
        assert_eq!(npt("npt=0.000-").start, at(0.0));
        assert_eq!(npt("npt=12.5-").start, at(12.5));
        assert_eq!(npt("npt=0:01:02.5-").start, at(62.5));
        assert_eq!(npt("npt=1:02:03-").start, at(3723.0));
        let both = npt("npt=10-20");
        assert_eq!((both.start, both.end), (at(10.0), at(20.0)));
        assert_eq!(npt("npt=now-").start, Some(NptTime::Now));
        assert_eq!(
            npt("npt=-20"),
            NptRange {
                start: None,
                end: at(20.0)
            }
        );
        assert_eq!(npt("npt=5.-"), npt("npt=5.0-"), "fraction with no digits");
        // Spaces around the pieces, upper-case unit, a time parameter, a list.
        assert_eq!(npt(" NPT = 7 - ").start, at(7.0));
        assert_eq!(npt("npt=7-;time=19970123T143720Z").start, at(7.0));
        assert_eq!(npt("npt=7-, clock=19961108T142300Z-").start, at(7.0));
    }

    #[test]
    fn printing_is_exact_and_parses_back() {
        for (value, printed) in [
            ("npt=5-", "npt=5.000-"),
            ("npt=0:01:02.5-", "npt=62.500-"),
            ("npt=10-20", "npt=10.000-20.000"),
            ("npt=now-", "npt=now-"),
            ("npt=-20", "npt=-20.000"),
            ("npt=1.0000000019-", "npt=1.000000001-"),
            ("clock=19961108T142300Z-", "clock=19961108T142300Z-"),
        ] {
            let range = Range::parse(value).unwrap();
            assert_eq!(range.to_string(), printed);
            assert_eq!(Range::parse(printed).unwrap(), range, "{value}");
        }
    }

    #[test]
    fn other_units_are_kept_for_the_caller() {
        assert_eq!(
            Range::parse("clock=19961108T142300Z-19961108T143520Z").unwrap(),
            Range::Other {
                unit: "clock".into(),
                value: "19961108T142300Z-19961108T143520Z".into()
            }
        );
        assert!(matches!(
            Range::parse("smpte-25=10:07:00-").unwrap(),
            Range::Other { unit, .. } if unit == "smpte-25"
        ));
    }

    #[test]
    fn bad_values_say_where_and_are_invalid_range() {
        let cases: [(&str, RangeError); 12] = [
            (
                "npt",
                RangeError::Malformed {
                    offset: 3,
                    expected: "a unit and `=` (npt=, clock=, smpte=)",
                },
            ),
            (
                "=5-",
                RangeError::Malformed {
                    offset: 0,
                    expected: "a unit token (npt, clock, smpte)",
                },
            ),
            (
                "npt=5",
                RangeError::Malformed {
                    offset: 5,
                    expected: "`-` between the start and the end",
                },
            ),
            (
                "npt=-",
                RangeError::Malformed {
                    offset: 4,
                    expected: "a start or an end time",
                },
            ),
            (
                "npt=abc-",
                RangeError::Malformed {
                    offset: 4,
                    expected: "digits",
                },
            ),
            (
                "npt=.5-",
                RangeError::Malformed {
                    offset: 4,
                    expected: "digits",
                },
            ),
            (
                "npt=1:02-",
                RangeError::Malformed {
                    offset: 4,
                    expected: "seconds (12.5) or hh:mm:ss (0:01:02.5)",
                },
            ),
            (
                "npt=0:123:00-",
                RangeError::Malformed {
                    offset: 6,
                    expected: "one or two digits",
                },
            ),
            (
                "npt=0:60:00-",
                RangeError::FieldOutOfBounds {
                    offset: 6,
                    field: "minutes",
                    value: 60,
                },
            ),
            (
                "npt=5.x-",
                RangeError::Malformed {
                    offset: 6,
                    expected: "fraction digits",
                },
            ),
            (
                "npt=99999999999999999999999-",
                RangeError::TooLarge {
                    offset: 4,
                    limit: MAX_NPT_SECONDS,
                },
            ),
            (
                "npt=20-10",
                RangeError::EndBeforeStart {
                    start: NptTime::At(Duration::from_secs(20)),
                    end: NptTime::At(Duration::from_secs(10)),
                },
            ),
        ];
        for (value, error) in cases {
            let got = Range::parse(value).unwrap_err();
            assert_eq!(got, error, "{value}");
            assert_eq!(got.status(), StatusCode::INVALID_RANGE);
        }
        assert!(matches!(
            Range::parse("npt=0:00:61-"),
            Err(RangeError::FieldOutOfBounds {
                field: "seconds",
                value: 61,
                ..
            })
        ));
        assert!(matches!(
            Range::parse("npt=1000000000.5-"),
            Err(RangeError::TooLarge { .. })
        ));
        assert!(Range::parse("npt=1000000000-").is_ok());
        assert!(matches!(
            Range::parse("npt=277778:00:00-"),
            Err(RangeError::TooLarge { .. })
        ));
        let long = format!("npt=5-{}", " ".repeat(MAX_RANGE_LEN));
        assert_eq!(
            Range::parse(&long),
            Err(RangeError::TooLong {
                len: long.len(),
                limit: MAX_RANGE_LEN
            })
        );
    }
}
