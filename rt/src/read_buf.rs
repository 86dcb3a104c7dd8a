//! Receive buffers that a reader can fill without their read window being zeroed before every
//! read, and without unsafe code.
//!
//! A reader (`AsyncRead::poll_read`, glommio's `recv`, rustls' `Reader::read`) takes `&mut [u8]`,
//! which must be initialised memory: a slice over a `BytesMut`'s uninitialised spare capacity is
//! undefined behaviour even if the reader only writes into it. Zeroing the window before each
//! read makes it sound but costs a memset of the window (up to 64 KiB) per read. [`ReadBuf`]
//! zeroes each byte of an allocation at most once: the room after the received bytes is a
//! `BytesMut` of its own whose length is the part of it already initialised, so a window is
//! handed out from memory zeroed (or read into) earlier, and only bytes never handed out before
//! are zeroed. What a read delivers joins the received bytes without a copy (the two are
//! neighbours in one allocation).

use bytes::BytesMut;

/// Received bytes followed, in the same allocation, by room to read more into.
///
/// Read with [`ReadBuf::reserve`], [`ReadBuf::window`] (hand it to the reader) and
/// [`ReadBuf::commit`] (the count read); take what was received from [`ReadBuf::filled_mut`]
/// (`split_to`, `advance`, ...: the received bytes are an ordinary `BytesMut`).
#[derive(Debug, Default)]
pub struct ReadBuf {
    /// Received bytes not yet taken.
    filled: BytesMut,
    /// The rest of the allocation after `filled`. Its length is how much of it is initialised
    /// (zeroed once, or written by an earlier read): never data.
    room: BytesMut,
    /// Length of the last window handed out and not yet committed.
    window: usize,
}

impl ReadBuf {
    /// An empty buffer; nothing is allocated until [`ReadBuf::reserve`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The received bytes not yet taken.
    pub fn filled(&self) -> &BytesMut {
        &self.filled
    }

    /// The received bytes not yet taken, to split off what is complete. Changing their
    /// allocation (e.g. `reserve` on them) is allowed but makes the next commit copy.
    pub fn filled_mut(&mut self) -> &mut BytesMut {
        &mut self.filled
    }

    /// Room left to read into without a new allocation.
    pub fn room(&self) -> usize {
        let contiguous = self.filled.is_empty()
            || self.filled.as_ptr().wrapping_add(self.filled.len()) == self.room.as_ptr();
        if contiguous {
            self.room.capacity()
        } else {
            0
        }
    }

    /// Makes room for at least `min` bytes after the received ones; when there is less, the
    /// buffer grows by `additional.max(min)` as `BytesMut::reserve` does it (in place when no
    /// one else references the allocation, else into a new one). Returns how many received
    /// bytes were moved into a new allocation (0 when they stayed where they were).
    pub fn reserve(&mut self, min: usize, additional: usize) -> usize {
        self.window = 0;
        if self.room() >= min {
            return 0;
        }
        // Room and received bytes back together (no copy: neighbours in one allocation), the
        // room emptied first, since its initialised bytes are not data.
        let mut whole = std::mem::take(&mut self.filled);
        let mut room = std::mem::take(&mut self.room);
        room.clear();
        whole.unsplit(room);
        let before = whole.as_ptr();
        let moved = whole.len();
        whole.reserve(additional.max(min));
        self.room = whole.split_off(moved);
        self.filled = whole;
        if self.filled.as_ptr() == before {
            0
        } else {
            moved
        }
    }

    /// Initialised room of up to `max` bytes to read into; bytes of it never handed out before
    /// are zeroed now (once per allocation). Empty when there is no room: [`ReadBuf::reserve`]
    /// first.
    pub fn window(&mut self, max: usize) -> &mut [u8] {
        let len = max.min(self.room());
        if self.room.len() < len {
            self.room.resize(len, 0);
        }
        self.window = len;
        &mut self.room[..len]
    }

    /// `count` bytes were read into the start of the last window: they join the received
    /// bytes (without a copy). A count over the window's length is cut to it. Returns the
    /// count taken.
    pub fn commit(&mut self, count: usize) -> usize {
        let count = count.min(std::mem::take(&mut self.window));
        if count > 0 {
            let read = self.room.split_to(count);
            self.filled.unsplit(read);
        }
        count
    }

    /// Appends a copy of `bytes` (read ahead elsewhere), growing by `additional` at least when
    /// there is no room. Returns how many received bytes moved to a new allocation first.
    pub fn extend_from_slice(&mut self, bytes: &[u8], additional: usize) -> usize {
        let moved = self.reserve(bytes.len(), additional);
        if self.room.len() < bytes.len() {
            // Every initialised byte is overwritten: nothing to zero first.
            self.room.clear();
            self.room.extend_from_slice(bytes);
        } else {
            self.room[..bytes.len()].copy_from_slice(bytes);
        }
        let read = self.room.split_to(bytes.len());
        self.filled.unsplit(read);
        moved
    }

    /// Appends bytes received into a buffer of the caller's: no copy when nothing is pending
    /// or they directly follow the received bytes in the same allocation. The room becomes
    /// what is left of that buffer's allocation after them.
    pub fn append(&mut self, bytes: BytesMut) {
        self.window = 0;
        self.filled.unsplit(bytes);
        let len = self.filled.len();
        self.room = self.filled.split_off(len);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `data` as a reader would: into the window, then commit.
    fn read(buf: &mut ReadBuf, data: &[u8]) -> usize {
        let window = buf.window(data.len());
        let n = window.len().min(data.len());
        window[..n].copy_from_slice(&data[..n]);
        buf.commit(n)
    }

    #[test]
    fn reads_join_the_received_bytes_in_one_allocation() {
        let mut buf = ReadBuf::new();
        assert_eq!(buf.window(100).len(), 0, "no room before reserve");
        assert_eq!(buf.reserve(10, 1000), 0);
        assert!(buf.room() >= 1000);
        let start = buf.window(1).as_ptr();
        assert_eq!(read(&mut buf, b"hello "), 6);
        assert_eq!(read(&mut buf, b"world"), 5);
        assert_eq!(&buf.filled()[..], b"hello world");
        assert_eq!(buf.filled().as_ptr(), start, "no copy");
        // Split off what is complete; the next read follows in the same allocation.
        let hello = buf.filled_mut().split_to(6).freeze();
        assert_eq!(&hello[..], b"hello ");
        assert_eq!(buf.reserve(10, 1000), 0);
        assert_eq!(read(&mut buf, b"!"), 1);
        assert_eq!(&buf.filled()[..], b"world!");
        assert_eq!(buf.filled().as_ptr(), start.wrapping_add(6));
    }

    #[test]
    fn each_byte_is_zeroed_once_and_windows_are_initialised() {
        let mut buf = ReadBuf::new();
        buf.reserve(64, 64);
        // A reader that writes only 2 bytes of a 16-byte window: the window's other bytes are
        // zeroes the first time, and what an earlier read left (never data) afterwards.
        let window = buf.window(16);
        assert_eq!(window, &[0u8; 16][..]);
        window.fill(0xaa);
        buf.commit(2);
        let window = buf.window(16);
        assert_eq!(&window[..14], &[0xaa; 14][..], "not zeroed again");
        assert_eq!(&window[14..], &[0u8; 2][..], "new bytes zeroed");
        buf.commit(0);
        assert_eq!(&buf.filled()[..], &[0xaa, 0xaa][..]);
    }

    #[test]
    fn commit_is_cut_to_the_window() {
        let mut buf = ReadBuf::new();
        buf.reserve(8, 8);
        buf.window(4);
        assert_eq!(buf.commit(100), 4);
        assert_eq!(buf.commit(1), 0, "no window handed out");
        assert_eq!(buf.filled().len(), 4);
    }

    #[test]
    fn a_full_buffer_moves_its_partial_bytes_once() {
        let mut buf = ReadBuf::new();
        buf.reserve(8, 8);
        let room = buf.room();
        let data: Vec<u8> = (0..room as u8).collect();
        assert_eq!(read(&mut buf, &data), room);
        // Keep a reference to the old allocation, as a packet in a hub would.
        let held = buf.filled_mut().split_to(room - 3).freeze();
        assert_eq!(buf.room(), 0);
        assert_eq!(buf.reserve(8, 8), 3, "the partial bytes moved");
        assert!(buf.room() >= 8);
        assert_eq!(read(&mut buf, b"xy"), 2);
        let mut expected = data[room - 3..].to_vec();
        expected.extend_from_slice(b"xy");
        assert_eq!(&buf.filled()[..], &expected[..]);
        assert_eq!(&held[..], &data[..room - 3]);
    }

    #[test]
    fn copies_and_caller_buffers_are_appended() {
        let mut buf = ReadBuf::new();
        buf.extend_from_slice(b"read ahead ", 64);
        let mut mine = BytesMut::with_capacity(32);
        mine.extend_from_slice(b"then more");
        buf.append(mine);
        assert_eq!(&buf.filled()[..], b"read ahead then more");
        // The room is what the appended buffer had left, or a fresh reserve.
        buf.reserve(4, 64);
        assert_eq!(read(&mut buf, b"!"), 1);
        assert_eq!(&buf.filled()[..], b"read ahead then more!");
        // Received bytes whose allocation was changed by the caller still take reads.
        buf.filled_mut().reserve(4096);
        buf.reserve(4, 64);
        assert_eq!(read(&mut buf, b"?"), 1);
        assert_eq!(&buf.filled()[..], b"read ahead then more!?");
    }
}
