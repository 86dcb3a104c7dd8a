//! Finding the next frame boundary in a byte stream that lost bytes. A device's core packets
//! form one continuous stream across encryptTCP frames, and its media frames one continuous
//! stream across core packets; when a frame is dropped (bad HMAC, replayed sequence) or a header
//! is refused, the readers lose their framing. Rather than closing the connection, the ingest
//! scans for the next header that a validator accepts (a core header naming the stream, then a
//! video keyframe header) and restarts the readers there.
//!
//! The scan works over `Bytes` chunks as they arrive: a header that straddles two chunks is found
//! with the last `WINDOW - 1` bytes of the previous chunk kept aside (the only bytes copied).

use bytes::Bytes;

/// Bytes a validator looks at: a core header and a video frame header are both 24 bytes.
pub const WINDOW: usize = 24;

/// Where the scan found a header: `carried` (bytes of the previous chunk, may be empty) followed
/// by `rest` (the current chunk from the right offset) start with it.
#[derive(Debug)]
pub struct Found {
    pub carried: Bytes,
    pub rest: Bytes,
}

/// Scan state: the tail of the previous chunk.
#[derive(Debug, Default)]
pub struct Scanner {
    tail: [u8; WINDOW - 1],
    tail_len: usize,
    /// Bytes discarded so far.
    pub skipped: u64,
}

impl Scanner {
    /// Looks for a header in `chunk` (after the tail kept from earlier chunks). Returns where it
    /// starts, or `None` when `chunk` was consumed without finding one.
    pub fn scan(&mut self, chunk: &Bytes, valid: impl Fn(&[u8; WINDOW]) -> bool) -> Option<Found> {
        // Candidates that start in the tail.
        let mut joined = [0u8; 2 * WINDOW];
        let head = chunk.len().min(WINDOW - 1);
        joined[..self.tail_len].copy_from_slice(&self.tail[..self.tail_len]);
        joined[self.tail_len..self.tail_len + head].copy_from_slice(&chunk[..head]);
        let joined_len = self.tail_len + head;
        for start in 0..self.tail_len {
            if start + WINDOW > joined_len {
                break;
            }
            if valid(window(&joined[start..start + WINDOW])) {
                self.skipped += start as u64;
                let carried = Bytes::copy_from_slice(&self.tail[start..self.tail_len]);
                self.tail_len = 0;
                return Some(Found {
                    carried,
                    rest: chunk.clone(),
                });
            }
        }
        // Candidates inside the chunk.
        if chunk.len() >= WINDOW {
            for start in 0..=chunk.len() - WINDOW {
                if valid(window(&chunk[start..start + WINDOW])) {
                    self.skipped += (self.tail_len + start) as u64;
                    self.tail_len = 0;
                    return Some(Found {
                        carried: Bytes::new(),
                        rest: chunk.slice(start..),
                    });
                }
            }
        }
        // Nothing: keep the last WINDOW - 1 bytes of tail ++ chunk.
        let total = self.tail_len + chunk.len();
        let keep = total.min(WINDOW - 1);
        self.skipped += (total - keep) as u64;
        let mut next = [0u8; WINDOW - 1];
        if chunk.len() >= keep {
            next[..keep].copy_from_slice(&chunk[chunk.len() - keep..]);
        } else {
            let from_tail = keep - chunk.len();
            next[..from_tail].copy_from_slice(&self.tail[self.tail_len - from_tail..self.tail_len]);
            next[from_tail..keep].copy_from_slice(chunk);
        }
        self.tail = next;
        self.tail_len = keep;
        None
    }
}

fn window(bytes: &[u8]) -> &[u8; WINDOW] {
    match bytes.try_into() {
        Ok(window) => window,
        Err(_) => unreachable!("callers slice exactly WINDOW bytes"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker_at(data: &mut [u8], at: usize) {
        data[at..at + WINDOW].copy_from_slice(&[0xAB; WINDOW]);
    }

    fn valid(w: &[u8; WINDOW]) -> bool {
        w.iter().all(|&b| b == 0xAB)
    }

    #[test]
    fn finds_a_header_across_any_split() {
        let mut data = vec![0u8; 100];
        marker_at(&mut data, 40);
        let data = Bytes::from(data);
        for step in 1..=60 {
            let mut scanner = Scanner::default();
            let mut found = None;
            for start in (0..data.len()).step_by(step) {
                let chunk = data.slice(start..(start + step).min(data.len()));
                if let Some(f) = scanner.scan(&chunk, valid) {
                    found = Some(f);
                    break;
                }
            }
            let found = found.expect("marker found");
            let mut joined = found.carried.to_vec();
            joined.extend_from_slice(&found.rest);
            assert_eq!(&joined[..WINDOW], &[0xAB; WINDOW], "step {step}");
            assert_eq!(scanner.skipped, 40, "step {step}");
        }
    }

    #[test]
    fn no_header_keeps_only_a_window() {
        let mut scanner = Scanner::default();
        for _ in 0..10 {
            assert!(scanner.scan(&Bytes::from(vec![1u8; 7]), valid).is_none());
        }
        assert_eq!(scanner.tail_len, WINDOW - 1);
        assert_eq!(scanner.skipped, 70 - (WINDOW as u64 - 1));
    }
}
