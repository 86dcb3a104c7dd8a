//! Replays every input kept in `fuzz/regressions/<target>/` through the same entry point its
//! cargo-fuzz target calls, so a crash found once by a fuzzer stays fixed in the plain test run
//! (cargo-fuzz itself needs nightly features; this needs nothing).

use std::path::Path;

use relay::stream_key::StreamKey;

/// The entry point of each fuzz target (fuzz/fuzz_targets/<name>.rs), by target name.
fn entry_point(target: &str) -> Option<fn(&[u8])> {
    Some(match target {
        "core_packet" => signal::proto::core_packet::fuzzing::read_chunked,
        "core_packet_roundtrip" => signal::proto::core_packet::fuzzing::round_trip,
        "device_ingest" => relay::ingest::fuzzing::ingest,
        "device_session" => signal::session::fuzzing::session,
        "encrypt_tcp_frames" => signal::proto::encrypt_tcp::fuzzing::frames,
        "http_request" => signal::proto::http::fuzzing::parse_requests,
        "http_response" => signal::proto::http::fuzzing::parse_responses,
        "media_frames" => relay::proto::media::fuzzing::frames,
        "pki_csr" => |data| {
            if let Ok(csr) = pki::parse_device_csr(data) {
                let _ = csr.require_uid("95270000ABCDEFGH");
            }
        },
        "rop_body" => signal::proto::body::fuzzing::parse_body,
        "rtp_depacketize" => relay::proto::fuzz_rtsp::rtp_depacketize,
        "rtsp_message" => relay::proto::fuzz_rtsp::rtsp_message,
        "rtsp_range" => relay::proto::fuzz_rtsp::rtsp_range,
        "pull_client" => relay::pull::fuzzing::pull_client,
        "rtsp_session" => relay::rtsp::fuzzing::rtsp_session,
        "sdp" => relay::proto::fuzz_rtsp::sdp,
        "stream_key" => |data| {
            let Ok(text) = std::str::from_utf8(data) else {
                return;
            };
            if let Ok(key) = text.parse::<StreamKey>() {
                assert_eq!(key.to_string().parse::<StreamKey>(), Ok(key));
            }
        },
        _ => return None,
    })
}

#[test]
fn every_kept_fuzz_input_passes_its_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/regressions");
    let mut replayed = 0;
    for target in std::fs::read_dir(&root).expect("fuzz/regressions exists") {
        let target = target.unwrap().path();
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        let run = entry_point(&name).unwrap_or_else(|| {
            panic!("fuzz/regressions/{name}: no such fuzz target known to this test; add it")
        });
        for input in std::fs::read_dir(&target).unwrap() {
            let input = input.unwrap().path();
            let data = std::fs::read(&input).unwrap();
            eprintln!("replaying {}", input.display());
            run(&data);
            replayed += 1;
        }
    }
    assert!(
        replayed >= 2,
        "expected the kept regressions, found {replayed}"
    );
}
