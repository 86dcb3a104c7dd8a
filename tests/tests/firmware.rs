//! Firmware upload (`POST /v1.0/firmware/{fileName}`) with curl: the body is streamed to
//! `DATA/firmware/`, the stored file is byte for byte the upload, over-limit, badly named and
//! truncated uploads leave nothing behind.

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use tests::{curl, TestServer};

const NAME: &str = "Reolink-Duo-2.2143_23042822.BIPC_529MIX32M35B17B6MP.paks";

fn firmware_bytes(len: usize) -> Vec<u8> {
    tests::pseudo_random_bytes(len)
}

fn upload(server: &TestServer, name: &str, file: &Path) -> tests::CurlResponse {
    tests::upload_firmware(server, name, file)
}

fn stored(server: &TestServer) -> Vec<String> {
    match std::fs::read_dir(server.data_dir().join("firmware")) {
        Ok(entries) => {
            let mut names: Vec<String> = entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }
        Err(_) => Vec::new(),
    }
}

#[test]
fn a_firmware_upload_is_stored_byte_for_byte_and_replaced_by_a_new_one() {
    let server = TestServer::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fw.paks");
    // 24 MiB: far above the 64 KiB buffered-body limit of the other routes.
    let content = firmware_bytes(24 * 1024 * 1024);
    std::fs::write(&file, &content).unwrap();
    let response = upload(&server, NAME, &file);
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.json(), serde_json::json!({ "message": "ok" }));
    assert_eq!(stored(&server), [NAME]);
    let on_disk = std::fs::read(server.data_dir().join("firmware").join(NAME)).unwrap();
    assert!(
        on_disk == content,
        "the stored firmware differs from the upload"
    );

    // The same name again replaces it.
    let smaller = firmware_bytes(100_000);
    std::fs::write(&file, &smaller).unwrap();
    assert_eq!(upload(&server, NAME, &file).status, 200);
    let on_disk = std::fs::read(server.data_dir().join("firmware").join(NAME)).unwrap();
    assert!(on_disk == smaller);
    assert_eq!(stored(&server), [NAME]);

    // The longest name a file can have (found by schemathesis: the temporary name was longer).
    let longest = format!("{}.pak", "L".repeat(251));
    assert_eq!(upload(&server, &longest, &file).status, 200);
    assert_eq!(stored(&server), [longest.clone(), NAME.to_owned()]);
}

#[test]
fn over_limit_badly_named_and_truncated_uploads_leave_nothing() {
    let server = TestServer::start_with(|c| c.api.firmware_max_bytes = 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("fw.pak");
    std::fs::write(&file, firmware_bytes(2 * 1024 * 1024)).unwrap();
    let response = upload(&server, "big.pak", &file);
    assert_eq!(response.status, 413);
    assert_eq!(
        response.json()["error"]["symbol"],
        "payload_too_large",
        "{}",
        response.json()
    );

    std::fs::write(&file, firmware_bytes(1000)).unwrap();
    for name in [".hidden.pak", "a%20b.pak", "..%2Fescape.pak"] {
        let response = upload(&server, name, &file);
        assert_eq!(response.status, 400, "{name}");
        assert_eq!(response.json()["error"]["symbol"], "invalid_parameter");
    }
    let response = curl(&[&format!("{}/v1.0/firmware/{NAME}", server.api_url())]);
    assert_eq!(response.status, 405);

    // A client that announces 512 KiB, sends 100 KiB and hangs up.
    let mut raw = TcpStream::connect(server.server.addrs.api).unwrap();
    write!(
        raw,
        "POST /v1.0/firmware/cut.pak HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        512 * 1024
    )
    .unwrap();
    raw.write_all(&firmware_bytes(100 * 1024)).unwrap();
    drop(raw);
    // The server notices the end at once; the partial file goes with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let names = stored(&server);
        if names.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {names:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The server still answers.
    assert_eq!(
        curl(&[&format!("{}/healthz", server.api_url())]).status,
        200
    );
}
