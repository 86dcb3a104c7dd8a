//! NAL-unit plumbing shared by H.264 and H.265: the Annex-B start-code splitter (over one `Bytes`
//! or over a frame that spans several received buffers), zero-copy gathering of a byte range of
//! such a frame as at most two `Bytes` slices, and a bounded exp-Golomb bit reader over RBSP with
//! emulation-prevention bytes removed (for SPS parsing).

use std::ops::Range;

use bytes::{Bytes, BytesMut};

/// A frame held as consecutive buffers (e.g. the media payloads of several core packets), addressed
/// by logical offset from the start of the first one.
#[derive(Debug, Clone, Copy)]
pub struct Chunks<'a> {
    chunks: &'a [Bytes],
    len: usize,
}

impl<'a> Chunks<'a> {
    pub fn new(chunks: &'a [Bytes]) -> Self {
        Chunks {
            chunks,
            len: chunks.iter().map(Bytes::len).sum(),
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn byte_at(&self, mut pos: usize) -> Option<u8> {
        for chunk in self.chunks {
            if pos < chunk.len() {
                return chunk.get(pos).copied();
            }
            pos -= chunk.len();
        }
        None
    }

    /// The bytes of `range` as slices of the underlying buffers, without copying: one slice, or
    /// two when the range crosses a buffer boundary. A range over three or more buffers (buffers
    /// smaller than a packet) is the one case that copies, into a single new buffer. Out-of-range
    /// parts are cut off.
    pub fn gather(&self, range: Range<usize>) -> PayloadSlices {
        let mut pieces: [Bytes; 2] = [Bytes::new(), Bytes::new()];
        let mut count = 0;
        let mut start_of_chunk = 0;
        let mut copied: Option<BytesMut> = None;
        for chunk in self.chunks {
            let chunk_range = start_of_chunk..start_of_chunk + chunk.len();
            start_of_chunk = chunk_range.end;
            let lo = range.start.max(chunk_range.start);
            let hi = range.end.min(chunk_range.end);
            if lo >= hi {
                continue;
            }
            let piece = chunk.slice(lo - chunk_range.start..hi - chunk_range.start);
            if let Some(buf) = copied.as_mut() {
                buf.extend_from_slice(&piece);
            } else if count < 2 {
                pieces[count] = piece;
                count += 1;
            } else {
                let mut buf = BytesMut::with_capacity(range.len());
                buf.extend_from_slice(&pieces[0]);
                buf.extend_from_slice(&pieces[1]);
                buf.extend_from_slice(&piece);
                copied = Some(buf);
            }
        }
        match copied {
            Some(buf) => PayloadSlices::one(buf.freeze()),
            None => PayloadSlices { pieces },
        }
    }

    /// `range` as one contiguous `Bytes` (copies only if it crosses a buffer boundary).
    pub fn contiguous(&self, range: Range<usize>) -> Bytes {
        let slices = self.gather(range);
        if slices.pieces[1].is_empty() {
            return slices.pieces[0].clone();
        }
        let mut buf = BytesMut::with_capacity(slices.len());
        buf.extend_from_slice(&slices.pieces[0]);
        buf.extend_from_slice(&slices.pieces[1]);
        buf.freeze()
    }

    /// The Annex-B NAL units of the frame as logical ranges.
    pub fn nal_ranges(&self) -> NalRanges<'a> {
        NalRanges {
            chunks: *self,
            chunk_index: 0,
            offset_in_chunk: 0,
            pos: 0,
            zeros: 0,
            current_start: None,
        }
    }
}

/// Up to two payload slices of one RTP packet (the second is empty when unused).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PayloadSlices {
    pub pieces: [Bytes; 2],
}

impl PayloadSlices {
    pub fn one(bytes: Bytes) -> Self {
        PayloadSlices {
            pieces: [bytes, Bytes::new()],
        }
    }

    pub fn len(&self) -> usize {
        self.pieces[0].len() + self.pieces[1].len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The non-empty slices.
    pub fn iter(&self) -> impl Iterator<Item = &Bytes> {
        self.pieces.iter().filter(|p| !p.is_empty())
    }
}

/// Iterator over the NAL units of an Annex-B frame (3- or 4-byte start codes), as logical ranges
/// without start codes or trailing zero bytes. Bytes before the first start code are skipped
/// (Annex-B leading_zero_8bits; garbage otherwise), so a frame without any start code yields
/// nothing.
#[derive(Debug, Clone)]
pub struct NalRanges<'a> {
    chunks: Chunks<'a>,
    chunk_index: usize,
    offset_in_chunk: usize,
    pos: usize,
    zeros: usize,
    current_start: Option<usize>,
}

impl Iterator for NalRanges<'_> {
    type Item = Range<usize>;

    fn next(&mut self) -> Option<Range<usize>> {
        while let Some(chunk) = self.chunks.chunks.get(self.chunk_index) {
            while let Some(&b) = chunk.get(self.offset_in_chunk) {
                self.offset_in_chunk += 1;
                self.pos += 1;
                if b == 0 {
                    self.zeros += 1;
                    continue;
                }
                let start_code = b == 1 && self.zeros >= 2;
                let zeros_before = self.zeros;
                self.zeros = 0;
                if !start_code {
                    continue;
                }
                // `self.pos` is just past the 0x01: the next NAL starts here.
                let end_of_previous = self.pos - 1 - zeros_before;
                if let Some(start) = self.current_start.replace(self.pos) {
                    if end_of_previous > start {
                        return Some(start..end_of_previous);
                    }
                }
            }
            self.chunk_index += 1;
            self.offset_in_chunk = 0;
        }
        let start = self.current_start.take()?;
        let end = self.pos - self.zeros;
        (end > start).then_some(start..end)
    }
}

/// The NAL units of one contiguous Annex-B buffer, as zero-copy `Bytes` slices of it.
#[derive(Debug, Clone)]
pub struct NalUnits {
    buffer: [Bytes; 1],
    pos: usize,
    zeros: usize,
    current_start: Option<usize>,
}

impl NalUnits {
    pub fn new(annex_b: Bytes) -> Self {
        NalUnits {
            buffer: [annex_b],
            pos: 0,
            zeros: 0,
            current_start: None,
        }
    }
}

impl Iterator for NalUnits {
    type Item = Bytes;

    fn next(&mut self) -> Option<Bytes> {
        let mut ranges = NalRanges {
            chunks: Chunks::new(&self.buffer),
            chunk_index: 0,
            offset_in_chunk: self.pos,
            pos: self.pos,
            zeros: self.zeros,
            current_start: self.current_start,
        };
        let range = ranges.next();
        self.pos = ranges.pos;
        self.zeros = ranges.zeros;
        self.current_start = ranges.current_start;
        range.map(|r| self.buffer[0].slice(r))
    }
}

/// Removes emulation-prevention bytes (`00 00 03` -> `00 00`), keeping at most `limit` output bytes.
pub fn nal_to_rbsp(nal: &[u8], limit: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len().min(limit));
    let mut zeros = 0;
    for &b in nal {
        if out.len() >= limit {
            break;
        }
        if zeros >= 2 && b == 3 {
            zeros = 0;
            continue;
        }
        zeros = if b == 0 { zeros + 1 } else { 0 };
        out.push(b);
    }
    out
}

/// Ran out of bits or met an exp-Golomb code longer than 32 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bitstream ends or is malformed at bit {bit}")]
pub struct BitstreamError {
    pub bit: usize,
}

/// MSB-first bit reader with bounded exp-Golomb decoding.
#[derive(Debug, Clone)]
pub struct BitReader<'a> {
    data: &'a [u8],
    bit: usize,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        BitReader { data, bit: 0 }
    }

    pub fn position(&self) -> usize {
        self.bit
    }

    pub fn read_bit(&mut self) -> Result<bool, BitstreamError> {
        let byte = self
            .data
            .get(self.bit / 8)
            .ok_or(BitstreamError { bit: self.bit })?;
        let value = byte >> (7 - self.bit % 8) & 1 == 1;
        self.bit += 1;
        Ok(value)
    }

    /// Up to 32 bits.
    pub fn read_bits(&mut self, count: u32) -> Result<u32, BitstreamError> {
        if count > 32 {
            return Err(BitstreamError { bit: self.bit });
        }
        let mut value = 0u32;
        for _ in 0..count {
            value = (value << 1) | u32::from(self.read_bit()?);
        }
        Ok(value)
    }

    pub fn skip_bits(&mut self, count: usize) -> Result<(), BitstreamError> {
        let end = self.bit.saturating_add(count);
        if end > self.data.len() * 8 {
            return Err(BitstreamError { bit: self.bit });
        }
        self.bit = end;
        Ok(())
    }

    /// ue(v).
    pub fn read_ue(&mut self) -> Result<u32, BitstreamError> {
        let start = self.bit;
        let mut leading_zeros = 0;
        while !self.read_bit()? {
            leading_zeros += 1;
            if leading_zeros > 31 {
                return Err(BitstreamError { bit: start });
            }
        }
        let suffix = self.read_bits(leading_zeros)?;
        // (1 << 31) - 1 + suffix fits in u32 for leading_zeros <= 31 only with u64 math.
        let value = (1u64 << leading_zeros) - 1 + u64::from(suffix);
        u32::try_from(value).map_err(|_| BitstreamError { bit: start })
    }

    /// se(v).
    pub fn read_se(&mut self) -> Result<i32, BitstreamError> {
        let k = i64::from(self.read_ue()?);
        let value = if k % 2 == 1 { (k + 1) / 2 } else { -(k / 2) };
        i32::try_from(value).map_err(|_| BitstreamError { bit: self.bit })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_three_and_four_byte_start_codes() {
        let data = Bytes::from_static(&[
            0, 0, 0, 1, 0x67, 0xAA, 0, 0, 1, 0x68, 0xBB, 0, 0, 0, 0, 1, 0x65, 1, 2, 0, 0,
        ]);
        let nals: Vec<Bytes> = NalUnits::new(data).collect();
        assert_eq!(
            nals,
            vec![
                Bytes::from_static(&[0x67, 0xAA]),
                Bytes::from_static(&[0x68, 0xBB]),
                Bytes::from_static(&[0x65, 1, 2]),
            ]
        );
    }

    #[test]
    fn no_start_code_yields_nothing_and_garbage_before_is_skipped() {
        assert_eq!(NalUnits::new(Bytes::from_static(&[1, 2, 3])).count(), 0);
        let nals: Vec<Bytes> =
            NalUnits::new(Bytes::from_static(&[9, 9, 0, 0, 1, 0x41, 7])).collect();
        assert_eq!(nals, vec![Bytes::from_static(&[0x41, 7])]);
        assert_eq!(NalUnits::new(Bytes::from_static(&[0, 0, 1])).count(), 0);
    }

    #[test]
    fn chunked_split_matches_contiguous_at_every_cut() {
        let data = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/testdata/clip_h264.264"
        ))
        .unwrap();
        let whole = Bytes::from(data);
        let expected: Vec<Bytes> = NalUnits::new(whole.clone()).collect();
        assert!(expected.len() > 25);
        for cut in (0..whole.len()).step_by(97).chain(0..64) {
            for cut2 in [
                cut,
                (cut + 5).min(whole.len()),
                (cut + 3000).min(whole.len()),
            ] {
                let chunks = [
                    whole.slice(..cut),
                    whole.slice(cut..cut2),
                    whole.slice(cut2..),
                ];
                let chunks = Chunks::new(&chunks);
                let got: Vec<Bytes> = chunks.nal_ranges().map(|r| chunks.contiguous(r)).collect();
                assert_eq!(got, expected, "cuts at {cut}, {cut2}");
            }
        }
    }

    #[test]
    fn gather_is_zero_copy_for_two_chunks_and_copies_beyond() {
        let a = Bytes::from_static(b"hello ");
        let b = Bytes::from_static(b"world");
        let chunks = [a.clone(), b.clone()];
        let chunks = Chunks::new(&chunks);
        let slices = chunks.gather(3..8);
        assert_eq!(&slices.pieces[0][..], b"lo ");
        assert_eq!(&slices.pieces[1][..], b"wo");
        assert_eq!(slices.pieces[0].as_ptr(), a[3..].as_ptr());
        let three = [a, Bytes::from_static(b"-"), b];
        let three = Chunks::new(&three);
        let slices = three.gather(0..12);
        assert_eq!(&slices.pieces[0][..], b"hello -world");
        assert!(slices.pieces[1].is_empty());
        assert_eq!(three.gather(10..100).len(), 2);
    }

    #[test]
    fn exp_golomb() {
        // 1 | 010 | 011 | 00100 | 00101 -> 0, 1, 2, 3, -2 (se of 4)
        let data = [0b1010_0110, 0b0100_0010, 0b1000_0000];
        let mut r = BitReader::new(&data);
        assert_eq!(r.read_ue().unwrap(), 0);
        assert_eq!(r.read_ue().unwrap(), 1);
        assert_eq!(r.read_ue().unwrap(), 2);
        assert_eq!(r.read_ue().unwrap(), 3);
        assert_eq!(r.read_se().unwrap(), -2);
        assert!(BitReader::new(&[0, 0, 0, 0, 0]).read_ue().is_err());
        assert!(BitReader::new(&[]).read_bit().is_err());
    }

    #[test]
    fn emulation_prevention_removed() {
        assert_eq!(
            nal_to_rbsp(&[0x67, 0, 0, 3, 1, 0, 0, 3], 100),
            vec![0x67, 0, 0, 1, 0, 0]
        );
        assert_eq!(nal_to_rbsp(&[1, 2, 3, 4], 2), vec![1, 2]);
    }
}
