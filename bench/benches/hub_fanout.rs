//! Stream hub fan-out cost, without sockets: one publisher pushes 1400-byte packets (GOPs of 100,
//! one audio packet in five) in bursts of 8, and after each burst every viewer builds its iovecs
//! for one `sendmsg` and consumes them as if the kernel took everything. Reports the hub's
//! userspace cost per packet per viewer, the publisher's cost per packet, and allocations
//! (counted by this binary's global allocator: the fan-out must make none).
//!
//! `cargo bench -p bench --bench hub_fanout` runs the full sizes; `cargo test -p bench --benches`
//! runs a quick smoke pass (no `--bench` argument).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::IoSlice;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use relay::hub::{
    ChannelMap, HubConfig, LocalNotify, PacketMeta, RtpPacket, StreamDescription, StreamHub,
    TrackKind, ViewerId,
};
use relay::stream_key::{StreamKey, StreamKind};

struct CountingAllocator;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; counting is one relaxed
// atomic increment.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const PAYLOAD_LEN: usize = 1400;
const BURST: usize = 8;
const GOP: usize = 100;

struct Outcome {
    viewers: usize,
    packets: usize,
    fanout: Duration,
    publish: Duration,
    fanout_allocations: u64,
    publish_allocations: u64,
    wire_bytes: u64,
}

fn run(viewers: usize, packets: usize) -> Outcome {
    let key = StreamKey::new("95270000ABCDEFGH", 0, StreamKind::Main).expect("valid key");
    let config = HubConfig {
        max_viewers: viewers,
        ..HubConfig::default()
    };
    let mut hub = StreamHub::new(key, config);
    hub.set_description(StreamDescription {
        sdp: "v=0\r\n".into(),
        tracks: vec![TrackKind::Video, TrackKind::Audio],
    });
    let publisher = hub.attach_publisher().expect("first publisher");
    let channels = ChannelMap::new()
        .with_track(0, 0, 1)
        .and_then(|map| map.with_track(1, 2, 3))
        .expect("tracks in range");
    let ids: Vec<ViewerId> = (0..viewers)
        .map(|_| {
            hub.add_viewer(channels, LocalNotify::new())
                .expect("below max_viewers")
        })
        .collect();
    // One receive buffer that payloads slice into, as the ingest does.
    let buffer = Bytes::from(vec![0x5a_u8; 1 << 20]);
    let _ = buffer.slice(0..1);

    let mut outcome = Outcome {
        viewers,
        packets,
        fanout: Duration::ZERO,
        publish: Duration::ZERO,
        fanout_allocations: 0,
        publish_allocations: 0,
        wire_bytes: 0,
    };
    let mut sequence = 0usize;
    while sequence < packets {
        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        let started = Instant::now();
        for _ in 0..BURST {
            let meta = PacketMeta {
                track: u8::from(sequence % 5 == 4),
                keyframe_start: sequence.is_multiple_of(GOP),
                end_of_access_unit: sequence % 3 == 2,
                is_rtcp: false,
            };
            let header = [
                0x80,
                96,
                (sequence >> 8) as u8,
                sequence as u8,
                0,
                0,
                0,
                0,
                1,
                2,
                3,
                4,
            ];
            let offset = (sequence * PAYLOAD_LEN) % (buffer.len() - PAYLOAD_LEN);
            let packet = RtpPacket::new(
                meta,
                &header,
                buffer.slice(offset..offset + PAYLOAD_LEN),
                Bytes::new(),
            )
            .expect("valid packet");
            hub.push(publisher, packet).expect("current publisher");
            sequence += 1;
        }
        let pushed = Instant::now();
        outcome.publish += pushed - started;
        outcome.publish_allocations += ALLOCATIONS.load(Ordering::Relaxed) - allocations;

        let allocations = ALLOCATIONS.load(Ordering::Relaxed);
        for id in &ids {
            // Until the viewer is parked (empty batch); an error would mean it was evicted.
            while let Ok(batch) = hub.next_batch(*id, 64, 256 * 1024) {
                if batch.is_empty() {
                    break;
                }
                let mut iov = [IoSlice::new(&[]); 3 * 65];
                let count = batch.fill_io_slices(&mut iov);
                let written: usize = black_box(&iov[..count]).iter().map(|s| s.len()).sum();
                outcome.wire_bytes += written as u64;
                batch.consume(written);
            }
        }
        outcome.fanout += pushed.elapsed();
        outcome.fanout_allocations += ALLOCATIONS.load(Ordering::Relaxed) - allocations;
    }
    assert_eq!(hub.stats().skips, 0, "no viewer fell behind");
    outcome
}

fn main() {
    let full = std::env::args().any(|arg| arg == "--bench");
    // About the same total work per row: packets x viewers.
    let budget = if full { 20_000_000 } else { 200_000 };
    println!(
        "hub fan-out, {PAYLOAD_LEN}-byte payloads, bursts of {BURST}{}",
        if full {
            ""
        } else {
            " (smoke run; `cargo bench` for figures)"
        }
    );
    println!(
        "{:>8} {:>9} {:>22} {:>18} {:>16} {:>18} {:>14}",
        "viewers",
        "packets",
        "ns/packet/viewer",
        "publish ns/packet",
        "allocs/packet",
        "fan-out allocs",
        "Gbit/s (user)"
    );
    for viewers in [1, 10, 100, 1000] {
        let packets = (budget / viewers).clamp(2_000, 2_000_000);
        let outcome = run(viewers, packets);
        let per_viewer_packet =
            outcome.fanout.as_nanos() as f64 / (outcome.packets * outcome.viewers) as f64;
        let publish = outcome.publish.as_nanos() as f64 / outcome.packets as f64;
        let allocs = outcome.publish_allocations as f64 / outcome.packets as f64;
        let gbits = outcome.wire_bytes as f64 * 8.0 / outcome.fanout.as_secs_f64() / 1e9;
        println!(
            "{:>8} {:>9} {:>22.1} {:>18.1} {:>16.2} {:>18} {:>14.1}",
            outcome.viewers,
            outcome.packets,
            per_viewer_packet,
            publish,
            allocs,
            outcome.fanout_allocations,
            gbits
        );
        assert_eq!(
            outcome.fanout_allocations, 0,
            "fan-out must not allocate per packet per viewer"
        );
    }
}
