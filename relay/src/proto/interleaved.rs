//! The byte stream of an RTSP connection over TCP: RTSP messages and `$`-framed binary data
//! (RFC 2326 section 10.12: `$`, channel, u16 big-endian length, payload) interleaved. One demuxer
//! yields either, so the connection never has to guess which parser to call. With a `BytesMut`
//! receive buffer, frame payloads come out as `Bytes` split off that buffer: no copy.

use std::ops::Range;

use bytes::{Bytes, BytesMut};

use super::rtsp::{Limits, Parsed, RtspError, RtspMessage};

/// Length of the `$` header.
pub const INTERLEAVED_HEADER_LEN: usize = 4;

/// One `$` frame: RTP on even channels, RTCP on odd ones by convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterleavedFrame {
    pub channel: u8,
    pub payload: Bytes,
}

impl InterleavedFrame {
    /// The 4-byte `$` header for a payload of `len` bytes; `None` if it does not fit in u16.
    pub fn header(channel: u8, len: usize) -> Option<[u8; INTERLEAVED_HEADER_LEN]> {
        let len = u16::try_from(len).ok()?;
        let [hi, lo] = len.to_be_bytes();
        Some([b'$', channel, hi, lo])
    }

    /// Appends header and payload (for tests and the loadgen; the relay writes the header beside
    /// the shared payload instead).
    pub fn encode(&self, out: &mut Vec<u8>) -> Option<()> {
        out.extend_from_slice(&Self::header(self.channel, self.payload.len())?);
        out.extend_from_slice(&self.payload);
        Some(())
    }
}

/// What the demuxer found at the front of the buffer. `P` is the payload: a range into the
/// caller's slice, or `Bytes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Demuxed<P> {
    Rtsp(RtspMessage),
    Interleaved { channel: u8, payload: P },
}

/// Limits for the interleaved stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemuxLimits {
    pub rtsp: Limits,
    /// Largest accepted `$` payload. The wire format caps it at 65535.
    pub max_frame_len: usize,
}

impl Default for DemuxLimits {
    fn default() -> Self {
        DemuxLimits {
            rtsp: Limits::default(),
            max_frame_len: u16::MAX as usize,
        }
    }
}

/// Splits an RTSP-over-TCP byte stream into messages and frames. Stateless apart from its limits
/// and the count of bytes consumed so far (which makes error offsets stream offsets).
#[derive(Debug, Clone, Default)]
pub struct Demuxer {
    limits: DemuxLimits,
    consumed: u64,
}

impl Demuxer {
    pub fn new(limits: DemuxLimits) -> Self {
        Demuxer {
            limits,
            consumed: 0,
        }
    }

    /// Bytes of the stream consumed so far.
    pub fn position(&self) -> u64 {
        self.consumed
    }

    /// Looks at the front of `buf`. On `Complete`, the caller drops `consumed` bytes; an
    /// interleaved payload is `buf[payload]`.
    pub fn feed(&mut self, buf: &[u8]) -> Result<Parsed<Demuxed<Range<usize>>>, RtspError> {
        let parsed = demux(buf, &self.limits).map_err(|e| self.at_stream_offset(e))?;
        if let Parsed::Complete { consumed, .. } = &parsed {
            self.consumed += *consumed as u64;
        }
        Ok(parsed)
    }

    /// Like [`Demuxer::feed`], but splits the consumed bytes off `buf`; a frame payload shares
    /// `buf`'s allocation.
    pub fn feed_bytes(&mut self, buf: &mut BytesMut) -> Result<Option<Demuxed<Bytes>>, RtspError> {
        match self.feed(buf)? {
            Parsed::Incomplete => Ok(None),
            Parsed::Complete { message, consumed } => {
                let taken = buf.split_to(consumed).freeze();
                Ok(Some(match message {
                    Demuxed::Rtsp(m) => Demuxed::Rtsp(m),
                    Demuxed::Interleaved { channel, payload } => Demuxed::Interleaved {
                        channel,
                        payload: taken.slice(payload),
                    },
                }))
            }
        }
    }

    fn at_stream_offset(&self, error: RtspError) -> RtspError {
        let base = usize::try_from(self.consumed).unwrap_or(usize::MAX);
        match error {
            RtspError::NotRtsp { offset, byte } => RtspError::NotRtsp {
                offset: offset.saturating_add(base),
                byte,
            },
            other => other,
        }
    }
}

fn demux(buf: &[u8], limits: &DemuxLimits) -> Result<Parsed<Demuxed<Range<usize>>>, RtspError> {
    match buf {
        [] => Ok(Parsed::Incomplete),
        [b'$', rest @ ..] => {
            let [channel, hi, lo, ..] = *rest else {
                return Ok(Parsed::Incomplete);
            };
            let length = usize::from(u16::from_be_bytes([hi, lo]));
            if length > limits.max_frame_len {
                return Err(RtspError::FrameTooLarge {
                    channel,
                    length,
                    limit: limits.max_frame_len,
                });
            }
            let end = INTERLEAVED_HEADER_LEN + length;
            if buf.len() < end {
                return Ok(Parsed::Incomplete);
            }
            Ok(Parsed::Complete {
                message: Demuxed::Interleaved {
                    channel,
                    payload: INTERLEAVED_HEADER_LEN..end,
                },
                consumed: end,
            })
        }
        _ => Ok(match RtspMessage::parse_with_limits(buf, &limits.rtsp)? {
            Parsed::Incomplete => Parsed::Incomplete,
            Parsed::Complete { message, consumed } => Parsed::Complete {
                message: Demuxed::Rtsp(message),
                consumed,
            },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::rtsp::Method;

    const FFMPEG_RECORD: &[u8] =
        include_bytes!("../../testdata/ffmpeg_record_h264_aac_interleaved.bin");
    const FFMPEG_ANNOUNCE: &[u8] = include_bytes!("../../testdata/ffmpeg_announce_h264_aac.txt");

    /// The recorded publish: requests, then the recorded frames, then a TEARDOWN.
    fn publish_stream() -> Vec<u8> {
        let mut stream = FFMPEG_ANNOUNCE.to_vec();
        stream.extend_from_slice(FFMPEG_RECORD);
        stream.extend_from_slice(
            b"TEARDOWN rtsp://127.0.0.1:8554/live/x RTSP/1.0\r\nCSeq: 6\r\n\r\n",
        );
        stream
    }

    fn demux_all(chunks: &[&[u8]]) -> Vec<Demuxed<Bytes>> {
        let mut demuxer = Demuxer::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some(item) = demuxer.feed_bytes(&mut buf).unwrap() {
                out.push(item);
            }
        }
        assert!(buf.is_empty());
        out
    }

    #[test]
    fn recorded_publish_demuxes() {
        let stream = publish_stream();
        let items = demux_all(&[&stream]);
        let methods: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Demuxed::Rtsp(m) => match m {
                    RtspMessage::Request(r) => Some(r.method.clone()),
                    RtspMessage::Response(_) => None,
                },
                Demuxed::Interleaved { .. } => None,
            })
            .collect();
        assert_eq!(methods.first(), Some(&Method::Options));
        assert_eq!(methods.last(), Some(&Method::Teardown));
        let frames: Vec<_> = items
            .iter()
            .filter_map(|i| match i {
                Demuxed::Interleaved { channel, payload } => Some((*channel, payload.clone())),
                Demuxed::Rtsp(_) => None,
            })
            .collect();
        assert_eq!(frames.len(), 10);
        // ffmpeg sends RTCP sender reports on the odd channels and RTP (version 2) on even.
        assert!(frames.iter().all(|(_, p)| p[0] >> 6 == 2));
        assert!(frames
            .iter()
            .filter(|(c, _)| c % 2 == 1)
            .all(|(_, p)| p[1] == 200));
        assert!(frames.iter().any(|(c, _)| *c == 0));
        assert!(frames.iter().any(|(c, _)| *c == 2));
    }

    #[test]
    fn every_split_point() {
        let stream = publish_stream();
        let whole = demux_all(&[&stream]);
        for cut in 0..stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(demux_all(&[a, b]), whole, "split at {cut}");
        }
    }

    #[test]
    fn byte_at_a_time() {
        let stream = publish_stream();
        let chunks: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(demux_all(&chunks), demux_all(&[&stream]));
    }

    #[test]
    fn garbage_and_limits() {
        let mut demuxer = Demuxer::default();
        let mut buf = BytesMut::from(&b"$\x00\x00\x02ab"[..]);
        assert!(demuxer.feed_bytes(&mut buf).unwrap().is_some());
        buf.extend_from_slice(b"\x00\x01");
        assert_eq!(
            demuxer.feed_bytes(&mut buf),
            Err(RtspError::NotRtsp { offset: 6, byte: 0 })
        );

        let mut small = Demuxer::new(DemuxLimits {
            max_frame_len: 1500,
            ..DemuxLimits::default()
        });
        assert_eq!(
            small.feed(b"$\x01\x05\xdd"),
            Err(RtspError::FrameTooLarge {
                channel: 1,
                length: 1501,
                limit: 1500
            })
        );
        assert_eq!(small.feed(b"$\x01\x05").unwrap(), Parsed::Incomplete);
    }

    #[test]
    fn header_round_trip() {
        let frame = InterleavedFrame {
            channel: 2,
            payload: Bytes::from_static(b"\x80\x60payload"),
        };
        let mut out = Vec::new();
        frame.encode(&mut out).unwrap();
        assert_eq!(&out[..4], b"$\x02\x00\x09");
        let mut buf = BytesMut::from(&out[..]);
        assert_eq!(
            Demuxer::default().feed_bytes(&mut buf).unwrap(),
            Some(Demuxed::Interleaved {
                channel: 2,
                payload: frame.payload.clone()
            })
        );
        assert_eq!(InterleavedFrame::header(0, 70_000), None);
    }
}
