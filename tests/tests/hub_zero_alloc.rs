//! The fan-out promise, measured: once viewers have joined, relaying a packet to them allocates
//! nothing, however many there are and however their writes are cut. A counting global allocator
//! (this test binary only) counts every allocation made on the test's thread.

use std::rc::Rc;

use bytes::Bytes;
use relay::hub::{
    ChannelMap, HubConfig, LocalNotify, PacketMeta, RtpPacket, StreamDescription, StreamHub,
    TrackKind, ViewerId,
};
use relay::stream_key::{StreamKey, StreamKind};
use tests::alloc_count::{allocations, assert_counting, CountingAllocator};
use tests::viewer::write_once;

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn packets(count: usize, gop: usize, buffer: &Bytes) -> Vec<Rc<RtpPacket>> {
    (0..count)
        .map(|i| {
            let meta = PacketMeta {
                track: if i % 5 == 4 { 1 } else { 0 },
                keyframe_start: i % gop == 0,
                end_of_access_unit: i % 3 == 2,
                is_rtcp: false,
            };
            let header = [0x80, 96, (i >> 8) as u8, i as u8, 0, 0, 0, 0, 1, 2, 3, 4];
            let start = (i * 7) % (buffer.len() - 1400);
            Rc::new(
                RtpPacket::new(
                    meta,
                    &header,
                    buffer.slice(start..start + 1400),
                    Bytes::new(),
                )
                .unwrap(),
            )
        })
        .collect()
}

#[test]
fn relaying_allocates_nothing_per_packet_per_viewer() {
    let key = StreamKey::new("95270000ABCDEFGH", 0, StreamKind::Main).unwrap();
    let mut hub = StreamHub::new(key, HubConfig::default());
    hub.set_description(StreamDescription {
        sdp: "v=0\r\n".into(),
        tracks: vec![TrackKind::Video, TrackKind::Audio],
    });
    let publisher = hub.attach_publisher().unwrap();
    let channels = ChannelMap::new()
        .with_track(0, 0, 1)
        .unwrap()
        .with_track(1, 2, 3)
        .unwrap();
    let viewers: Vec<ViewerId> = (0..200)
        .map(|_| hub.add_viewer(channels, LocalNotify::new()).unwrap())
        .collect();
    let buffer = Bytes::from(vec![0x5a; 64 * 1024]);
    let warm_up = packets(500, 50, &buffer);
    let measured = packets(3000, 50, &buffer);

    // Warm up: every list and buffer reaches its steady size.
    for packet in warm_up {
        hub.push(publisher, packet).unwrap();
        for id in &viewers {
            while write_once(&mut hub, *id, usize::MAX) > 0 {}
        }
    }

    assert_counting();

    let before = allocations();
    let mut written = 0;
    for (n, packet) in measured.into_iter().enumerate() {
        hub.push(publisher, packet).unwrap();
        for (v, id) in viewers.iter().enumerate() {
            // Some viewers write everything, others in short writes that split packets.
            let max_write = if v % 3 == 0 {
                1000 + (n * 31 + v) % 2000
            } else {
                usize::MAX
            };
            loop {
                let step = write_once(&mut hub, *id, max_write);
                written += step;
                if step == 0 || v % 3 == 0 {
                    break;
                }
            }
        }
    }
    let during = allocations() - before;
    assert!(written > 3000 * 1400 * 100);
    assert_eq!(
        during, 0,
        "{during} allocations while relaying 3000 packets to 200 viewers"
    );
    assert_eq!(hub.stats().skips, 0);
}
