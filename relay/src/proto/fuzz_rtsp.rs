//! Entry points of the fuzz targets `rtsp_message`, `rtsp_range`, `sdp` and `rtp_depacketize`
//! (fuzz/fuzz_targets/); not an API. Each checks a property beyond "no panic": chunking does not
//! change what the demuxer yields, encoding a parsed value is stable (a printed `Range` parses
//! back to itself), and packetizing then reassembling gives back the NAL units. The unit tests below run them on recorded traffic and
//! mutations of it, since cargo-fuzz needs a nightly toolchain.

use bytes::{Bytes, BytesMut};

use super::aac::AacPacketizer;
use super::h264::{self, H264Packetizer};
use super::h265::{self, H265Packetizer};
use super::interleaved::{Demuxed, Demuxer};
use super::nal::{Chunks, NalUnits};
use super::range::{Range, RangeError, MAX_RANGE_LEN};
use super::rtp::{PacketizerConfig, RtpHeader};
use super::rtsp::{Parsed, RtspMessage};
use super::sdp::SessionDescription;

/// Demuxes `data` whole and in chunks whose sizes come from the first byte; both must agree.
/// Parsed messages are re-encoded and must re-parse to a fixed point.
pub fn rtsp_message(data: &[u8]) {
    let Some((&step, stream)) = data.split_first() else {
        return;
    };
    let whole = demux(stream, stream.len().max(1));
    let chunked = demux(stream, usize::from(step % 31) + 1);
    assert_eq!(whole, chunked, "chunking changed the result");
    for item in &whole.0 {
        let Demuxed::Rtsp(message) = item else {
            continue;
        };
        let headers = message.headers();
        let _ = headers.cseq();
        let _ = headers.session();
        let _ = headers.transports().map(|ts| {
            for t in ts {
                let again = super::rtsp::Transport::parse(&t.to_string());
                assert_eq!(again.as_ref(), Ok(&t), "transport does not round-trip");
            }
        });
        let _ = headers.range();
        let _ = headers.authorization();
        let _ = headers.public();
        let _ = headers.content_length();
        if let RtspMessage::Request(request) = message {
            if let Ok(Some(url)) = request.url() {
                let _ = url.presentation_and_track();
                let _ = url.query_without_track();
            }
        }
        let once = reencode(message);
        let twice = reencode(&once);
        assert_eq!(once, twice, "encoding is not stable");
    }
}

/// A `Range` header value: parsing never panics, refusals are 457 and name a byte inside the
/// value, a parsed range prints to a value that parses back to the same range, and an `npt`
/// start is never after its end.
pub fn rtsp_range(data: &[u8]) {
    let Ok(value) = std::str::from_utf8(data) else {
        return;
    };
    match Range::parse(value) {
        Ok(range) => {
            assert!(value.len() <= MAX_RANGE_LEN);
            let printed = range.to_string();
            assert_eq!(
                Range::parse(&printed).as_ref(),
                Ok(&range),
                "{value:?} printed as {printed:?} does not parse back"
            );
            if let Range::Npt(npt) = range {
                assert!(npt.start.is_some() || npt.end.is_some());
                if let (Some(start), Some(end)) = (
                    npt.start_position(),
                    npt.end.and_then(super::range::NptTime::position),
                ) {
                    assert!(start <= end);
                }
            }
        }
        Err(error) => {
            assert_eq!(error.status().0, 457);
            if let RangeError::Malformed { offset, .. }
            | RangeError::FieldOutOfBounds { offset, .. }
            | RangeError::TooLarge { offset, .. } = error
            {
                assert!(offset <= value.len(), "{error} outside {value:?}");
            }
        }
    }
}

type DemuxResult = (Vec<Demuxed<Bytes>>, Option<super::rtsp::RtspError>);

fn demux(stream: &[u8], chunk: usize) -> DemuxResult {
    let mut demuxer = Demuxer::default();
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match demuxer.feed_bytes(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => return (items, Some(e)),
            }
        }
    }
    (items, None)
}

fn reencode(message: &RtspMessage) -> RtspMessage {
    let mut bytes = Vec::new();
    message.encode(&mut bytes);
    match RtspMessage::parse(&bytes) {
        Ok(Parsed::Complete { message, consumed }) => {
            assert_eq!(consumed, bytes.len(), "re-encoded message parsed short");
            message
        }
        other => panic!("re-encoded message does not parse: {other:?}"),
    }
}

/// Parses an SDP, reads every typed view, and checks encode is a fixed point after one round.
pub fn sdp(data: &[u8]) {
    let Ok(mut sdp) = SessionDescription::parse(data) else {
        return;
    };
    for media in &sdp.media {
        let _ = media.codec();
        let _ = media.rtpmap();
        let fmtp = media.fmtp();
        let _ = fmtp.aac_config();
        for name in [
            "sprop-parameter-sets",
            "sprop-vps",
            "sprop-sps",
            "sprop-pps",
        ] {
            for set in fmtp.base64_list(name) {
                let _ = h264::Sps::parse(&set);
            }
        }
        if let Some(control) = media.control() {
            assert!(sdp.media_by_control(control, None).is_some());
        }
    }
    let text = sdp.encode();
    let reparsed = SessionDescription::parse(text.as_bytes()).expect("encoded SDP parses");
    assert_eq!(reparsed.encode(), text, "SDP encoding is not stable");
    sdp.rewrite_controls();
    let _ = SessionDescription::parse(sdp.encode().as_bytes()).expect("rewritten SDP parses");
}

/// Treats `data` as an RTP packet for the depacketizer helpers, and as an Annex-B access unit
/// and ADTS stream for the packetizers, checking that packetizing loses no NAL unit.
pub fn rtp_depacketize(data: &[u8]) {
    if let Ok((header, range)) = RtpHeader::parse(data) {
        assert!(range.start <= range.end && range.end <= data.len());
        let payload = &data[range];
        let _ = header.write();
        let _ = h264::payload_starts_keyframe(payload);
        let _ = h265::payload_starts_keyframe(payload);
        let mut sets264 = h264::H264ParameterSets::default();
        sets264.observe_rtp_payload(payload);
        if let Some(sps) = &sets264.sps {
            let _ = h264::Sps::parse(sps);
        }
        h265::H265ParameterSets::default().observe_rtp_payload(payload);
    }

    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let bytes = Bytes::copy_from_slice(rest);
    let cut = usize::from(cut).min(bytes.len());
    let chunks = [bytes.slice(..cut), bytes.slice(cut..)];
    let expected: Vec<Bytes> = NalUnits::new(bytes.clone()).collect();
    let chunked = Chunks::new(&chunks);
    let got: Vec<Bytes> = chunked
        .nal_ranges()
        .map(|r| chunked.contiguous(r))
        .collect();
    assert_eq!(got, expected, "chunked NAL split differs");

    let mut config = PacketizerConfig::new(96, 1, 0);
    config.max_payload_len = 64;
    let mut packets = Vec::new();
    let summary = H264Packetizer::new(config)
        .expect("valid config")
        .packetize(&chunks, 0, &mut packets);
    assert_eq!(summary.nal_units, expected.len());
    // Walk the expected NAL units: each is one packet when it fits, else FU-A fragments.
    let mut wire = packets.iter().map(|p| p.to_bytes());
    for nal in &expected {
        if nal.len() <= 64 {
            assert_eq!(&wire.next().expect("packet")[12..], &nal[..]);
            continue;
        }
        let mut rebuilt = Vec::with_capacity(nal.len());
        loop {
            let packet = wire.next().expect("fragment");
            let p = &packet[12..];
            assert_eq!(h264::nal_type(p[0]), h264::FU_A);
            if rebuilt.is_empty() {
                assert!(p[1] & 0x80 != 0, "first fragment lacks S");
                rebuilt.push((p[0] & 0xe0) | (p[1] & 0x1f));
            }
            rebuilt.extend_from_slice(&p[2..]);
            if p[1] & 0x40 != 0 {
                break;
            }
        }
        assert_eq!(&rebuilt[..], &nal[..], "FU-A reassembly differs");
    }
    assert_eq!(wire.next(), None, "extra packets");
    packets.clear();
    let _ = H265Packetizer::new(config)
        .expect("valid config")
        .packetize(&chunks, 0, &mut packets);
    assert!(packets.iter().all(|p| p.len() <= 12 + 64));
    packets.clear();
    let _ = AacPacketizer::new(config)
        .expect("valid config")
        .packetize(&chunks, 0, &mut packets);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic noise (xorshift), so the tests need no extra crates.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn mutations(input: &[u8], seed: u64) -> Vec<Vec<u8>> {
        let mut out = vec![input.to_vec()];
        let n = noise(seed, 64);
        for i in 0..16 {
            let mut m = input.to_vec();
            if m.is_empty() {
                break;
            }
            let at = (usize::from(n[i * 2]) * 131 + usize::from(n[i * 2 + 1])) % m.len();
            m[at] = n[i * 3 % 64];
            out.push(m.clone());
            m.truncate(at);
            out.push(m);
        }
        out.push(noise(seed, 300));
        out
    }

    #[test]
    fn rtsp_message_entry_point() {
        let mut stream = vec![7u8];
        stream.extend_from_slice(include_bytes!(
            "../../testdata/ffmpeg_announce_h264_aac.txt"
        ));
        stream.extend_from_slice(include_bytes!(
            "../../testdata/ffmpeg_record_h264_aac_interleaved.bin"
        ));
        for (seed, input) in mutations(&stream, 1).into_iter().enumerate() {
            rtsp_message(&input);
            rtsp_message(&noise(seed as u64 + 100, 500));
        }
        let mut gst = vec![3u8];
        gst.extend_from_slice(include_bytes!("../../testdata/gstreamer_setup_tcp.txt"));
        rtsp_message(&gst);
    }

    #[test]
    fn rtsp_range_entry_point() {
        for (seed, value) in [
            "npt=5.000-",
            "npt=0:01:02.5-",
            "npt=10-20",
            "npt=now-",
            "npt=-20",
            "clock=19961108T142300Z-19961108T143520Z;time=19970123T143720Z",
        ]
        .into_iter()
        .enumerate()
        {
            for input in mutations(value.as_bytes(), seed as u64 + 11) {
                rtsp_range(&input);
            }
        }
        rtsp_range(&[b'9'; 300]);
        rtsp_range(b"npt=99999999999999999999.99999999999999999999-");
    }

    #[test]
    fn sdp_entry_point() {
        let body = b"v=0\r\no=- 0 0 IN IP4 127.0.0.1\r\ns=\r\nt=0 0\r\nm=video 0 RTP/AVP 96\r\n\
            a=rtpmap:96 H264/90000\r\na=fmtp:96 packetization-mode=1; sprop-parameter-sets=Z2QADayyAoP2AiAAAAMAIAAABkHihUk=,aOvDyyLA\r\n\
            a=control:streamid=0\r\nm=audio 0 RTP/AVP 97\r\na=rtpmap:97 MPEG4-GENERIC/16000/1\r\n\
            a=fmtp:97 config=1408\r\na=control:streamid=1\r\n";
        for (seed, input) in mutations(body, 2).into_iter().enumerate() {
            sdp(&input);
            sdp(&noise(seed as u64, 200));
        }
    }

    #[test]
    fn rtp_depacketize_entry_point() {
        let recorded = include_bytes!("../../testdata/gstreamer_record_h264_interleaved.bin");
        let mut pos = 0;
        while pos + 4 <= recorded.len() {
            let len = usize::from(u16::from_be_bytes([recorded[pos + 2], recorded[pos + 3]]));
            rtp_depacketize(&recorded[pos + 4..pos + 4 + len]);
            pos += 4 + len;
        }
        let clip = include_bytes!("../../testdata/clip_h264.264");
        let mut input = vec![100u8];
        input.extend_from_slice(&clip[..3000]);
        for (seed, m) in mutations(&input, 3).into_iter().enumerate() {
            rtp_depacketize(&m);
            rtp_depacketize(&noise(seed as u64 + 7, 400));
        }
        let adts = include_bytes!("../../testdata/clip_aac_16k_mono.aac");
        let mut input = vec![9u8];
        input.extend_from_slice(&adts[..1000]);
        rtp_depacketize(&input);
    }
}
