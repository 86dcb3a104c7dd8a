//! A stream hub viewer drained as its connection would drain it, without a socket.

use std::io::IoSlice;

use relay::hub::{StreamHub, ViewerId};

/// Takes one batch of `id`'s queue and consumes it as a `sendmsg` of at most `max_write` bytes
/// would (whole packets or part of one), without copying; returns the bytes "written".
pub fn write_once(hub: &mut StreamHub, id: ViewerId, max_write: usize) -> usize {
    let batch = hub.next_batch(id, 32, 256 * 1024).unwrap();
    if batch.is_empty() {
        return 0;
    }
    let mut iov = [IoSlice::new(&[]); 3 * 33];
    let count = batch.fill_io_slices(&mut iov);
    let total: usize = iov[..count].iter().map(|slice| slice.len()).sum();
    let written = total.min(max_write);
    batch.consume(written);
    written
}
