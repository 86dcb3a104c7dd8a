//! The client API routes that reach into a device, end to end over real sockets: a device is
//! provisioned, connects its signalling link (mutual TLS) and is driven by the simulated
//! device of `signal::session::sim` on its own thread, answering each command with the XML a
//! camera sends. Request and response JSON follow the examples of interfaces-v1.0.txt.
//! Also: unknown and offline devices, 405 with Allow, malformed bodies naming the field, and
//! `/openapi.json` matching the served routes method by method.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::pki_types::ServerName;
use rustls::{ClientConnection, StreamOwned};
use serde_json::{json, Value};
use signal::proto::body::{
    BatteryState, BodyMessage, Capabilities, ChannelCapabilities, Handshake, Heartbeat, LocalTime,
    PacketExtension, UpgradeStart, XmlBody,
};
use signal::proto::core_packet::{cmd, CorePacket, CODE_LAST_CHUNK, CODE_OK, MAGIC_RESPONSE};
use signal::session::sim::SimDevice;
use tests::TestServer;

const UID: &str = "952700000A5S348E";
const OFFLINE_UID: &str = "95270000ZZZZZZZZ";

// ----- HTTP -----

struct Answer {
    status: u16,
    head: String,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<String> {
        self.head.lines().find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    }
}

fn exchange(stream: &mut (impl Read + Write), method: &str, path: &str, body: &[u8]) -> Answer {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    stream.flush().unwrap();
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("HTTP response head");
    let head = String::from_utf8_lossy(&response[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    Answer {
        status,
        head,
        body: response[split + 4..].to_vec(),
    }
}

fn raw(server: &TestServer, method: &str, path: &str, body: &[u8]) -> Answer {
    let mut stream = TcpStream::connect(server.server.addrs.api).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    exchange(&mut stream, method, path, body)
}

fn api(server: &TestServer, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let answer = raw(server, method, path, body.as_bytes());
    let json = if answer.body.is_empty() {
        Value::Null
    } else {
        answer.json()
    };
    (answer.status, json)
}

fn tls_connect(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> StreamOwned<ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    StreamOwned::new(conn, tcp)
}

// ----- the device -----

/// Provisions `UID` and returns its signalling connection after the 458 handshake.
fn connect_device(server: &TestServer) -> (StreamOwned<ClientConnection, TcpStream>, SimDevice) {
    let credentials = provision_device(server);
    connect_signalling(server, &credentials, "Argus_2_200104_751")
}

/// Provisions `UID` (initialization session, credentials); returns its TLS client config.
fn provision_device(server: &TestServer) -> Arc<rustls::ClientConfig> {
    let (status, session) = api(
        server,
        "POST",
        "/v1.0/devices/initialization-session",
        Some(json!({ "uid": UID })),
    );
    assert_eq!(status, 200, "{session}");
    let ca = server.server.pki.ca_pem().to_owned();
    let mut stream = tls_connect(
        server.server.addrs.credentials,
        pki::client_config_trusting(&ca).unwrap(),
    );
    let body = json!({ "uid": UID, "code": session["code"] }).to_string();
    let credentials = exchange(
        &mut stream,
        "POST",
        "/v1.0/devices/credetials",
        body.as_bytes(),
    )
    .json();
    let cert = credentials["cert"].as_str().unwrap().to_owned();
    let key = credentials["key"].as_str().unwrap().to_owned();
    pki::client_config_for_device(&ca, &cert, &key).unwrap()
}

/// Connects `UID`'s signalling link and sends its 458 handshake (saying `firmware`) and a
/// heartbeat.
fn connect_signalling(
    server: &TestServer,
    credentials: &Arc<rustls::ClientConfig>,
    firmware: &str,
) -> (StreamOwned<ClientConnection, TcpStream>, SimDevice) {
    let mut stream = tls_connect(server.server.addrs.signaling, credentials.clone());
    let mut sim = SimDevice::signalling();
    let handshake = Handshake {
        uid: UID.to_owned(),
        family: Some("battery".into()),
        model: Some("Argus 2".into()),
        firmware: Some(firmware.into()),
        network_type: Some("wifi".into()),
        carrier: None,
    };
    let hello = sim.handshake(&handshake, 1);
    stream.write_all(&hello).unwrap();
    let beat = Heartbeat {
        no_reply: true,
        battery: Some(BatteryState {
            percent: Some(77),
            charging: Some("1".into()),
        }),
    };
    let beat = sim.heartbeat(&beat, 2);
    stream.write_all(&beat).unwrap();
    stream.flush().unwrap();
    stream
        .sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    (stream, sim)
}

/// What the device received: command and XML body.
type Received = Arc<Mutex<Vec<(u32, Option<XmlBody>)>>>;

const JPEG: &[u8] =
    b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00picture\xff\xd9";

/// The camera's XML answer to `command` (the body it received decides scans and current
/// Wi-Fi configuration).
fn answer_of(command: u32, body: Option<&XmlBody>) -> String {
    let xml =
        |inner: &str| format!("<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<body>{inner}</body>");
    match command {
        cmd::GENERAL_CONFIG_GET => xml(
            "<Param007><attr001>0</attr001><attr012>front yard</attr012><attr013>1</attr013></Param007>",
        ),
        cmd::PIR_CONFIG_GET => {
            xml("<Param016><attr001>1</attr001><attr002>1</attr002><attr003>21</attr003></Param016>")
        }
        cmd::WIFI_GET if body.and_then(|b| b.text_at(&["Param019", "attr008"])) == Some("0") => xml(
            "<Param019><attr003>\
             <attr001><attr001>NETGEAR36</attr001><attr002>-35</attr002><attr003>1</attr003></attr001>\
             <attr001><attr001></attr001><attr002>-90</attr002><attr003>1</attr003></attr001>\
             <attr001><attr001>Open Cafe</attr001><attr002>-70</attr002><attr003>0</attr003></attr001>\
             </attr003></Param019>",
        ),
        cmd::WIFI_GET => xml(
            "<Param019><attr002>station</attr002><attr004>NETGEAR36</attr004><attr006>1</attr006><attr007>US</attr007></Param019>",
        ),
        cmd::RECORD_CALENDAR => xml(
            "<Param009><attr003><attr001><attr001>0</attr001><attr002>\
             <attr001><attr001>18</attr001></attr001><attr001><attr001>19</attr001></attr001>\
             </attr002></attr001></attr003></Param009>",
        ),
        cmd::RECORD_SEARCH => {
            let file = |n: u32, from: u32| {
                format!(
                    "<attr001><attr001>0</attr001><attr002>mainStream</attr002>\
                     <attr007>/mnt/sda/Mp4Record/2022-01-01/RecS02_DST2022010{n}_000107_000310_2B14808_3F6F88.mp4</attr007>\
                     <attr012><attr001>2022</attr001><attr002>1</attr002><attr003>1</attr003><attr004>{from}</attr004><attr005>0</attr005><attr006>10</attr006></attr012>\
                     <attr013><attr001>2022</attr001><attr002>1</attr002><attr003>1</attr003><attr004>{}</attr004><attr005>0</attr005><attr006>10</attr006></attr013></attr001>",
                    from + 1
                )
            };
            xml(&format!(
                "<attr002>2</attr002><Param006>{}{}</Param006>",
                file(2, 1),
                file(3, 2)
            ))
        }
        _ => String::new(),
    }
}

/// How the camera answers a command with an XML body (by its request's body).
type Answers = fn(u32, Option<&XmlBody>) -> String;

/// What the device does with a firmware upgrade 67, and what it got.
#[derive(Debug, Default)]
struct FirmwareSink {
    /// The start request's body (`Param012`).
    start: Option<UpgradeStart>,
    /// The slices' bytes, in the order they came.
    bytes: Vec<u8>,
    /// Slices received.
    slices: usize,
    /// Answer slice number `.0` (from 0) with error code `.1` instead of 200.
    refuse_slice: Option<(usize, u32)>,
    /// Sleep 233 received (answered 200; then the device "reboots": it closes its link).
    slept: bool,
}

type Firmware = Arc<Mutex<FirmwareSink>>;

/// Runs the device: answers every request (with `answers`) until the link closes or `stop` is
/// set.
fn run_device(
    stream: StreamOwned<ClientConnection, TcpStream>,
    sim: SimDevice,
    received: Received,
    stop: Arc<std::sync::atomic::AtomicBool>,
    answers: Answers,
) {
    run_device_with_firmware(stream, sim, received, stop, answers, Firmware::default())
}

/// [`run_device`] that also takes firmware upgrades into `firmware`; returns when the link
/// closes, `stop` is set, or after the sleep that ends an upgrade.
fn run_device_with_firmware(
    mut stream: StreamOwned<ClientConnection, TcpStream>,
    mut sim: SimDevice,
    received: Received,
    stop: Arc<std::sync::atomic::AtomicBool>,
    answers: Answers,
    firmware: Firmware,
) {
    let mut buf = [0u8; 16 * 1024];
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let packets: Vec<CorePacket> = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => sim.receive(&buf[..n]).unwrap(),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => return,
        };
        for packet in packets {
            if packet.header.magic == MAGIC_RESPONSE {
                continue;
            }
            let command = packet.header.command;
            let id = packet.header.request_id;
            let body = packet.body.to_contiguous();
            let xml = XmlBody::parse(&body).ok();
            let mut out = Vec::new();
            let mut reboot = false;
            match command {
                cmd::HANDSHAKE => continue,
                cmd::UPGRADE if !packet.extension.is_empty() => {
                    assert_eq!(
                        PacketExtension::parse(&packet.extension),
                        Ok(PacketExtension::BINARY_DATA),
                        "a firmware slice says its body is binary"
                    );
                    assert!(body.len() <= 36 * 1024, "slices are 36 KiB at most");
                    let mut sink = firmware.lock().unwrap();
                    let number = sink.slices;
                    sink.slices += 1;
                    sink.bytes.extend_from_slice(&body);
                    let code = match sink.refuse_slice {
                        Some((n, code)) if n == number => code,
                        _ => CODE_OK,
                    };
                    drop(sink);
                    out.extend_from_slice(&sim.reply(command, id, code, b""));
                    stream.write_all(&out).unwrap();
                    stream.flush().unwrap();
                    continue;
                }
                cmd::UPGRADE => {
                    let start = UpgradeStart::parse(&body).expect("an upgrade start body");
                    let mut sink = firmware.lock().unwrap();
                    sink.start = Some(start);
                    sink.bytes.clear();
                    sink.slices = 0;
                    drop(sink);
                    out.extend_from_slice(&sim.reply(command, id, CODE_OK, b""));
                }
                cmd::SLEEP => {
                    firmware.lock().unwrap().slept = true;
                    out.extend_from_slice(&sim.reply(command, id, CODE_OK, b""));
                    reboot = true;
                }
                cmd::CAPABILITIES => {
                    let capabilities = Capabilities {
                        channels: vec![ChannelCapabilities {
                            channel: 0,
                            stream_mask: 3,
                            ptz_type: 5,
                            ptz_control: 2,
                            wifi_mode: 1,
                        }],
                    };
                    out.extend_from_slice(&sim.reply_ok(command, id, &capabilities));
                }
                cmd::SNAPSHOT => {
                    // Acknowledgement, then the JPEG in two chunks, the last with 201.
                    out.extend_from_slice(&sim.reply(command, id, CODE_OK, b""));
                    out.extend_from_slice(&sim.reply(command, id, CODE_OK, &JPEG[..10]));
                    out.extend_from_slice(&sim.reply(command, id, CODE_LAST_CHUNK, &JPEG[10..]));
                }
                _ => {
                    let answer = answers(command, xml.as_ref());
                    out.extend_from_slice(&sim.reply(command, id, CODE_OK, answer.as_bytes()));
                }
            }
            received.lock().unwrap().push((command, xml));
            stream.write_all(&out).unwrap();
            stream.flush().unwrap();
            if reboot {
                return;
            }
        }
    }
}

fn last_request(received: &Received, command: u32) -> XmlBody {
    received
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(c, _)| *c == command)
        .and_then(|(_, body)| body.clone())
        .unwrap_or_else(|| panic!("the device received no {command} with a body"))
}

fn wait_online(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = api(server, "GET", &format!("/v1.0/devices/{UID}"), None);
        if status == 200
            && body["online"] == true
            && !body["presence"]["capabilities"].is_null()
            && !body["presence"]["batteryPercent"].is_null()
        {
            return;
        }
        assert!(Instant::now() < deadline, "device online: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn ok_message(answer: (u16, Value)) {
    assert_eq!(answer, (200, json!({ "message": "ok" })));
}

/// Files a camera recording all day keeps: 80 of 9 min 50 s, every 10 minutes, the last one
/// ending at 23:59:59 of 2022-01-01.
const DAY_FILES: u32 = 80;

/// The (start, end) seconds of the day of file `i` of [`DAY_FILES`].
fn day_file(i: u32) -> (u32, u32) {
    let end = 86_399 - (DAY_FILES - 1 - i) * 600;
    (end - 590, end)
}

fn day_file_name(i: u32) -> String {
    let (start, end) = day_file(i);
    let hms = |t: u32| format!("{:02}{:02}{:02}", t / 3600, t / 60 % 60, t % 60);
    format!(
        "/mnt/sda/Mp4Record/2022-01-01/RecM01_20220101_{}_{}_6732828_{i:06X}.mp4",
        hms(start),
        hms(end)
    )
}

/// A camera with [`DAY_FILES`] recordings: record search 459 answers the files overlapping the
/// asked span, at most 40 of them (the platform's page), with the number of all of them in
/// `attr002`, as the platform's view of the answer reads it.
fn all_day_answers(command: u32, body: Option<&XmlBody>) -> String {
    if command != cmd::RECORD_SEARCH {
        return answer_of(command, body);
    }
    let asked = |name| {
        let element = body.and_then(|b| b.root.at(&["Param006", "attr001", name]));
        LocalTime::from_element(element.expect("search times")).expect("valid search times")
    };
    let (from, to) = (asked("attr012"), asked("attr013"));
    let day = LocalTime::parse("2022-01-01", "00:00:00").unwrap();
    let at = |secs: u32| day.plus_seconds(secs);
    let time = |name: &str, t: LocalTime| {
        let s = t.seconds;
        format!(
            "<{name}><attr001>{}</attr001><attr002>{}</attr002><attr003>{}</attr003>\
             <attr004>{}</attr004><attr005>{}</attr005><attr006>{}</attr006></{name}>",
            t.date.year(),
            u8::from(t.date.month()),
            t.date.day(),
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    };
    let matching: Vec<u32> = (0..DAY_FILES)
        .filter(|&i| {
            let (start, end) = day_file(i);
            at(end) >= from && at(start) <= to
        })
        .collect();
    let files: String = matching
        .iter()
        .take(40)
        .map(|&i| {
            let (start, end) = day_file(i);
            format!(
                "<attr001><attr001>0</attr001><attr002>mainStream</attr002>\
                 <attr007>{}</attr007>{}{}</attr001>",
                day_file_name(i),
                time("attr012", at(start)),
                time("attr013", at(end))
            )
        })
        .collect();
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<body><attr002>{}</attr002><Param006>{files}</Param006></body>",
        matching.len()
    )
}

/// Follows `nextToken` from the first page of the records of 2022-01-01 from `start_at` to
/// `end_at`; returns each page's item count, every file name in order, and the totals.
fn page_through(
    server: &TestServer,
    start_at: &str,
    end_at: &str,
) -> (Vec<usize>, Vec<String>, Vec<u64>) {
    let query = format!(
        "/v1.0/devices/{UID}/records?channel=0&stream_type=mainStream&record_date=2022-01-01\
         &start_at={start_at}&end_at={end_at}"
    );
    let (mut pages, mut names, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    let mut token: Option<String> = None;
    loop {
        let path = match &token {
            Some(token) => format!("{query}&next_token={token}"),
            None => query.clone(),
        };
        let (status, body) = api(server, "GET", &path, None);
        assert_eq!(status, 200, "{path}: {body}");
        let items = body["items"].as_array().expect("items");
        pages.push(items.len());
        names.extend(
            items
                .iter()
                .map(|i| i["fileName"].as_str().unwrap().to_owned()),
        );
        totals.push(body["totalRows"].as_u64().expect("totalRows"));
        match body.get("nextToken").and_then(Value::as_str) {
            Some(next) => {
                assert!(
                    (1..=64).contains(&next.len()),
                    "nextToken of 1-64 bytes: {next}"
                );
                token = Some(next.to_owned());
            }
            None => return (pages, names, totals),
        }
        assert!(pages.len() < 10, "paging does not end: {pages:?}");
    }
}

#[test]
fn records_page_through_next_token_to_the_end() {
    let server = TestServer::start_with(|c| c.shards = Some(2));
    let (stream, sim) = connect_device(&server);
    let received: Received = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let device = {
        let received = received.clone();
        let stop = stop.clone();
        std::thread::spawn(move || run_device(stream, sim, received, stop, all_day_answers))
    };
    wait_online(&server);
    let all: Vec<String> = (0..DAY_FILES).map(day_file_name).collect();

    // The whole day: two full pages, then the token points past the day's end (the last file
    // ends at 23:59:59): an empty last page, no token.
    let (pages, names, totals) = page_through(&server, "00%3A00%3A00", "23%3A59%3A59");
    assert_eq!(pages, vec![40, 40, 0]);
    assert_eq!(names, all, "every file once, in order");
    assert_eq!(totals, vec![80, 80, 80]);
    // The second page asked the device from one second after the first page's last file.
    let searches: Vec<XmlBody> = received
        .lock()
        .unwrap()
        .iter()
        .filter(|(c, _)| *c == cmd::RECORD_SEARCH)
        .filter_map(|(_, b)| b.clone())
        .collect();
    assert_eq!(
        searches.len(),
        2,
        "the page past the day's end needs no device request"
    );
    let second_from = searches[1]
        .root
        .at(&["Param006", "attr001", "attr012"])
        .and_then(LocalTime::from_element)
        .unwrap();
    assert_eq!(second_from.seconds, day_file(39).1 + 1);

    // Until 20:00: a full page and the 16 files left, no token after the partial page.
    let (pages, names, totals) = page_through(&server, "00%3A00%3A00", "20%3A00%3A00");
    assert_eq!(pages, vec![40, 16]);
    assert_eq!(names, all[..56].to_vec());
    assert_eq!(totals, vec![56, 56]);
    // A token that is not one of ours is refused, naming the field.
    let (status, body) = api(
        &server,
        "GET",
        &format!(
            "/v1.0/devices/{UID}/records?channel=0&stream_type=mainStream&record_date=2022-01-01\
             &start_at=00%3A00%3A00&end_at=23%3A59%3A59&next_token=bm90IGEgdG9rZW4"
        ),
        None,
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("next_token"));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    device.join().unwrap();
}

#[test]
fn device_routes_against_a_simulated_camera() {
    let server = TestServer::start_with(|c| c.shards = Some(2));
    let (stream, sim) = connect_device(&server);
    let received: Received = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let device = {
        let received = received.clone();
        let stop = stop.clone();
        std::thread::spawn(move || run_device(stream, sim, received, stop, answer_of))
    };
    wait_online(&server);
    let base = format!("/v1.0/devices/{UID}");

    // Live play session.
    let (status, body) = api(
        &server,
        "POST",
        &format!("{base}/live/play-session"),
        Some(json!({ "channel": 0, "streamType": "mainStream" })),
    );
    assert_eq!(status, 200, "{body}");
    let url = body["playURL"].as_str().unwrap();
    let prefix = format!(
        "rtsp://localhost:{}/v1.0/live/",
        server.server.addrs.rtsp.port()
    );
    assert!(url.starts_with(&prefix), "{url}");
    assert_eq!(body["expiredIn"], 30);
    // The extension field asks for RTSPS; "tls": false keeps rtsp://, a non-boolean is refused.
    let (status, body) = api(
        &server,
        "POST",
        &format!("{base}/live/play-session"),
        Some(json!({ "channel": 0, "streamType": "mainStream", "tls": true })),
    );
    assert_eq!(status, 200, "{body}");
    let url = body["playURL"].as_str().unwrap();
    let prefix = format!(
        "rtsps://localhost:{}/v1.0/live/",
        server.server.addrs.rtsps.port()
    );
    assert!(url.starts_with(&prefix), "{url}");
    let (status, body) = api(
        &server,
        "POST",
        &format!("{base}/live/play-session"),
        Some(json!({ "channel": 0, "streamType": "mainStream", "tls": false })),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body["playURL"].as_str().unwrap().starts_with("rtsp://"));
    let (status, body) = api(
        &server,
        "POST",
        &format!("{base}/live/play-session"),
        Some(json!({ "channel": 0, "streamType": "mainStream", "tls": "yes" })),
    );
    assert_eq!(
        (status, &body["error"]["symbol"]),
        (400, &json!("invalid_parameter"))
    );
    let (status, body) = api(
        &server,
        "POST",
        &format!("{base}/live/play-session"),
        Some(json!({ "channel": 0, "streamType": "externStream" })),
    );
    assert_eq!(
        (status, &body["error"]["symbol"]),
        (400, &json!("stream_type_not_support"))
    );
    let (status, body) = api(
        &server,
        "POST",
        &format!("{base}/live/play-session"),
        Some(json!({ "channel": 3, "streamType": "subStream" })),
    );
    assert_eq!(
        (status, &body["error"]["symbol"]),
        (404, &json!("device_channel_not_found"))
    );
    let (status, body) = api(
        &server,
        "POST",
        &format!("{base}/live/play-session"),
        Some(json!({ "channel": 0, "streamType": "bestStream" })),
    );
    assert_eq!(status, 400);
    assert_eq!(body["error"]["symbol"], "invalid_parameter");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("streamType"));

    // Display name 104/105.
    let path = format!("{base}/settings/general-config");
    assert_eq!(
        api(&server, "GET", &path, None),
        (200, json!({ "deviceName": "front yard" }))
    );
    ok_message(api(
        &server,
        "PUT",
        &path,
        Some(json!({ "deviceName": "back door" })),
    ));
    let sent = last_request(&received, cmd::GENERAL_CONFIG_SET);
    assert_eq!(sent.text_at(&["Param007", "attr012"]), Some("back door"));
    let (status, body) = api(&server, "PUT", &path, Some(json!({ "deviceName": " x" })));
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("deviceName"));

    // PIR 212/213: the API's sensitivity is 101 - the device's.
    let path = format!("{base}/settings/pir-config");
    assert_eq!(
        api(&server, "GET", &path, None),
        (
            200,
            json!({ "enabled": true, "sensitivity": 80, "reduceMistakes": true })
        )
    );
    ok_message(api(
        &server,
        "PUT",
        &path,
        Some(json!({ "enabled": true, "sensitivity": 20, "reduceMistakes": false })),
    ));
    let sent = last_request(&received, cmd::PIR_CONFIG_SET);
    assert_eq!(sent.text_at(&["Param016", "attr002"]), Some("1"));
    assert_eq!(sent.text_at(&["Param016", "attr003"]), Some("81"));
    assert_eq!(sent.text_at(&["Param016", "attr001"]), Some("0"));
    let (status, body) = api(
        &server,
        "PUT",
        &path,
        Some(json!({ "enabled": "yes", "sensitivity": 20, "reduceMistakes": true })),
    );
    assert_eq!(status, 400);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("enabled"));
    let answer = raw(&server, "PUT", &path, b"{\"enabled\": tru");
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"]["symbol"], "invalid_parameter");

    // PTZ 18.
    ok_message(api(
        &server,
        "PATCH",
        &format!("{base}/ptz/zoom"),
        Some(json!({ "channel": 0, "action": "inc" })),
    ));
    let sent = last_request(&received, cmd::PTZ);
    assert_eq!(sent.text_at(&["Param017", "attr002"]), Some("zoomInc"));
    ok_message(api(
        &server,
        "PATCH",
        &format!("{base}/ptz/focus"),
        Some(json!({ "channel": 0, "action": "dec" })),
    ));
    assert_eq!(
        last_request(&received, cmd::PTZ).text_at(&["Param017", "attr002"]),
        Some("focusDec")
    );
    ok_message(api(
        &server,
        "POST",
        &format!("{base}/ptz/rotate"),
        Some(json!({ "channel": 0, "direction": "left", "speed": 10 })),
    ));
    let sent = last_request(&received, cmd::PTZ);
    assert_eq!(sent.text_at(&["Param017", "attr002"]), Some("left"));
    assert_eq!(sent.text_at(&["Param017", "speed"]), Some("10"));
    // Four directions only (control bit 2).
    let (status, body) = api(
        &server,
        "POST",
        &format!("{base}/ptz/rotate"),
        Some(json!({ "channel": 0, "direction": "leftUp", "speed": 10 })),
    );
    assert_eq!(
        (status, &body["error"]["symbol"]),
        (400, &json!("direction_not_support"))
    );

    // Battery from the heartbeat.
    assert_eq!(
        api(&server, "GET", &format!("{base}/states/battery"), None),
        (200, json!({ "percent": 77, "chargeStatus": "charging" }))
    );

    // Wi-Fi 116/117/200 and the scan session.
    let path = format!("{base}/settings/wifi-config");
    assert_eq!(
        api(&server, "GET", &path, None),
        (
            200,
            json!({ "ssid": "NETGEAR36", "channel": 1, "countryCode": "US" })
        )
    );
    let network = json!({ "ssid": "TP-LINK_JIN", "key": "88888888", "countryCode": "US" });
    ok_message(api(&server, "PUT", &path, Some(network.clone())));
    let sent = last_request(&received, cmd::WIFI_SET);
    assert_eq!(sent.text_at(&["Param019", "attr004"]), Some("TP-LINK_JIN"));
    assert_eq!(sent.text_at(&["Param019", "attr005"]), Some("88888888"));
    assert_eq!(sent.text_at(&["Param019", "attr002"]), Some("station"));
    assert_eq!(
        api(&server, "POST", &format!("{base}/wifi/test"), Some(network)),
        (200, json!({ "status": "success" }))
    );
    let (status, task) = api(&server, "POST", &format!("{base}/wifi/scan-task"), None);
    assert_eq!(status, 200, "{task}");
    let session = task["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(session.len(), 32);
    assert!(task["expiringAt"].as_u64().unwrap() > 1_600_000_000_000);
    let deadline = Instant::now() + Duration::from_secs(10);
    let scan = loop {
        let (status, scan) = api(&server, "GET", &format!("{base}/wifi/scan/{session}"), None);
        assert_eq!(status, 200, "{scan}");
        if scan["status"] != "scanning" {
            break scan;
        }
        assert!(Instant::now() < deadline, "scan finished");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        scan,
        json!({ "status": "success", "wifiList": [
            { "ssid": "NETGEAR36", "signal": -35, "encryptMode": "auto" },
            { "ssid": "Open Cafe", "signal": -70, "encryptMode": "none" },
        ]})
    );
    let (status, body) = api(
        &server,
        "GET",
        &format!("{base}/wifi/scan/{}", "x".repeat(32)),
        None,
    );
    assert_eq!(
        (status, &body["error"]["symbol"]),
        (404, &json!("session_not_found"))
    );

    // Records calendar 142 (the device counts days from 0) and search 459.
    assert_eq!(
        api(
            &server,
            "GET",
            &format!("{base}/records/calendar/?channel=0&year=2022&month=12"),
            None
        ),
        (
            200,
            json!({"totalRows":2,"items":[{"channel":0,"date":19},{"channel":0,"date":20}]})
        )
    );
    let sent = last_request(&received, cmd::RECORD_CALENDAR);
    assert_eq!(
        sent.text_at(&["Param009", "attr002", "attr003"]),
        Some("31")
    );
    let (status, body) = api(
        &server,
        "GET",
        &format!("{base}/records?channel=0&stream_type=mainStream&record_date=2022-01-01&start_at=00%3A00%3A00&end_at=23%3A59%3A59"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["totalRows"], 2);
    assert!(body.get("nextToken").is_none());
    assert_eq!(
        body["items"][0],
        json!({
            "channel": 0,
            "streamType": "mainStream",
            "startTime": "2022-01-01 01:00:10",
            "endTime": "2022-01-01 02:00:10",
            "fileName": "/mnt/sda/Mp4Record/2022-01-01/RecS02_DST20220102_000107_000310_2B14808_3F6F88.mp4"
        })
    );
    let sent = last_request(&received, cmd::RECORD_SEARCH);
    assert_eq!(
        sent.text_at(&["Param006", "attr001", "attr013", "attr004"]),
        Some("23")
    );
    let (status, body) = api(
        &server,
        "GET",
        &format!("{base}/records?channel=0&stream_type=mainStream&record_date=2022-01-01&start_at=10%3A00%3A00&end_at=09%3A00%3A00"),
        None,
    );
    assert_eq!(status, 400, "{body}");

    // Snapshot 109 in chunks.
    let answer = raw(
        &server,
        "GET",
        &format!("{base}/snap/snapshot.jpg?channel=0&stream_type=mainStream"),
        b"",
    );
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("content-type").as_deref(), Some("image/jpeg"));
    assert_eq!(answer.body, JPEG);

    // 405 with Allow.
    let answer = raw(
        &server,
        "DELETE",
        &format!("{base}/settings/pir-config"),
        b"",
    );
    assert_eq!(answer.status, 405);
    assert_eq!(answer.header("allow").as_deref(), Some("GET, HEAD, PUT"));
    assert_eq!(answer.json()["error"]["symbol"], "method_not_allowed");

    // Unknown and offline devices, malformed UIDs.
    let (status, body) = api(
        &server,
        "GET",
        &format!("/v1.0/devices/{OFFLINE_UID}/settings/general-config"),
        None,
    );
    assert_eq!(
        (status, &body["error"]["symbol"]),
        (404, &json!("device_offline"))
    );
    let (status, body) = api(
        &server,
        "POST",
        &format!("/v1.0/devices/{OFFLINE_UID}/live/play-session"),
        Some(json!({ "channel": 0, "streamType": "mainStream" })),
    );
    assert_eq!(
        (status, &body["error"]["symbol"]),
        (404, &json!("device_offline"))
    );
    let (status, body) = api(
        &server,
        "GET",
        &format!("/v1.0/devices/{OFFLINE_UID}/states/battery"),
        None,
    );
    assert_eq!(
        (status, &body["error"]["symbol"]),
        (404, &json!("device_offline"))
    );
    let (status, body) = api(&server, "GET", "/v1.0/devices/bad-uid/states/battery", None);
    assert_eq!(
        (status, &body["error"]["symbol"]),
        (400, &json!("invalid_parameter"))
    );
    let (status, body) = api(&server, "GET", &format!("{base}/nothing/here"), None);
    assert_eq!(
        (status, &body["error"]["symbol"]),
        (404, &json!("url_not_found"))
    );

    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    device.join().unwrap();
}

/// A wrong method is 405 with Allow and a JSON body before anything else about the request is
/// looked at: on a device route with a malformed UID too (as nginx or any HTTP router answers:
/// route, then method, then parameters). With an allowed method the UID is refused with 400;
/// an unknown route below a device is 404 whatever the UID.
#[test]
fn wrong_methods_are_405_before_a_bad_uid_is_400() {
    let server = TestServer::start();
    for (method, path, allow) in [
        (
            "TRACE",
            "/v1.0/devices/bad-uid/settings/pir-config",
            "GET, HEAD, PUT",
        ),
        (
            "TRACE",
            "/v1.0/devices/bad-uid/settings/alarm",
            "GET, HEAD, PUT",
        ),
        (
            "DELETE",
            "/v1.0/devices/bad-uid/states/battery",
            "GET, HEAD",
        ),
        ("GET", "/v1.0/devices/bad-uid/live/play-session", "POST"),
        ("PUT", "/v1.0/devices/bad-uid/ptz/rotate", "PATCH, POST"),
        ("TRACE", "/v1.0/devices/bad-uid/records", "GET, HEAD"),
        ("TRACE", "/v1.0/devices/bad-uid", "GET, HEAD, DELETE"),
        (
            "TRACE",
            &format!("/v1.0/devices/{OFFLINE_UID}/snap/snapshot.jpg"),
            "GET, HEAD",
        ),
    ] {
        let answer = raw(&server, method, path, b"");
        assert_eq!(answer.status, 405, "{method} {path}");
        assert_eq!(
            answer.header("allow").as_deref(),
            Some(allow),
            "{method} {path}"
        );
        assert_eq!(
            answer.json()["error"]["symbol"],
            "method_not_allowed",
            "{method} {path}"
        );
    }
    for (method, path) in [
        ("GET", "/v1.0/devices/bad-uid/settings/pir-config"),
        ("PUT", "/v1.0/devices/bad-uid/settings/alarm"),
        ("POST", "/v1.0/devices/bad-uid/live/play-session"),
        ("GET", "/v1.0/devices/bad-uid"),
    ] {
        let answer = raw(&server, method, path, b"{}");
        assert_eq!(answer.status, 400, "{method} {path}");
        assert_eq!(answer.json()["error"]["symbol"], "invalid_parameter");
    }
    let answer = raw(&server, "TRACE", "/v1.0/devices/bad-uid/nothing/here", b"");
    assert_eq!(answer.status, 404);
    assert_eq!(answer.json()["error"]["symbol"], "url_not_found");
}

const FIRMWARE: &str = "IPC_523B188MP.1569_230106789.RLC-812A.IMX415.8MP.REOLINK.pak";

/// Polls upgrade session `id` until `done` says its answer is the one waited for.
fn wait_upgrade(server: &TestServer, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let path = format!("/v1.0/devices/{UID}/upgrade-session/{id}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = api(server, "GET", &path, None);
        assert_eq!(status, 200, "{body}");
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "upgrade session stuck at {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn start_upgrade(server: &TestServer, factory_reset: bool) -> String {
    let (status, body) = api(
        server,
        "POST",
        &format!("/v1.0/devices/{UID}/upgrade-session"),
        Some(json!({ "upgradeFile": FIRMWARE, "factoryReset": factory_reset })),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expiredIn"], 3600);
    let id = body["sessionId"].as_str().unwrap().to_owned();
    assert_eq!(id.len(), 32);
    assert!(id.bytes().all(|b| b.is_ascii_alphanumeric()));
    id
}

/// A device that went online with `firmware`, served on its own thread until it reboots or
/// its stop flag is set.
fn spawn_device(
    server: &TestServer,
    credentials: &Arc<rustls::ClientConfig>,
    firmware: &str,
    sink: &Firmware,
) -> (
    std::thread::JoinHandle<()>,
    Arc<std::sync::atomic::AtomicBool>,
) {
    let (stream, sim) = connect_signalling(server, credentials, firmware);
    let sink = sink.clone();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let device = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            run_device_with_firmware(stream, sim, Received::default(), stop, answer_of, sink)
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, body) = api(server, "GET", &format!("/v1.0/devices/{UID}"), None);
        if body["presence"]["firmware"] == firmware && body["presence"]["signalling"] == true {
            return (device, stop);
        }
        assert!(
            Instant::now() < deadline,
            "device online with {firmware}: {body}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Firmware upgrade end to end: curl uploads a firmware; the client API's upgrade session
/// makes the server send start 67, the file in 36 KiB slices and sleep 233 to the simulated
/// camera, which checks the slices are the uploaded file byte for byte. A device error code
/// ends the session with the platform's status; a device that comes back with another
/// firmware makes it `upgrade_success`, one that does not within the (shortened) reboot limit
/// `unknown_error`. The sessions survive a restart.
#[test]
fn firmware_upgrade_sessions_against_a_simulated_camera() {
    let server = TestServer::start_with(|c| {
        c.shards = Some(2);
        c.upgrade.reboot_timeout_secs = 2;
    });
    let credentials = provision_device(&server);
    let sink = Firmware::default();
    // 40 whole slices and a short one: two windows of 30.
    let content = tests::pseudo_random_bytes(40 * 36 * 1024 + 1234);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("firmware.pak");
    std::fs::write(&file, &content).unwrap();
    let uploaded = tests::upload_firmware(&server, FIRMWARE, &file);
    assert_eq!(uploaded.status, 200);
    let base = format!("/v1.0/devices/{UID}/upgrade-session");

    // Refusals before anything reaches the device (the device is not even online yet).
    let refused = |body: Value| {
        let (status, body) = api(&server, "POST", &base, Some(body));
        (
            status,
            body["error"]["symbol"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )
    };
    assert_eq!(
        refused(json!({ "upgradeFile": "firmware.bin", "factoryReset": false })),
        (400, "invalid_filename".into())
    );
    assert_eq!(
        refused(json!({ "upgradeFile": "never-uploaded.paks", "factoryReset": false })),
        (404, "file_not_found".into())
    );
    assert_eq!(
        refused(json!({ "upgradeFile": FIRMWARE, "factoryReset": "no" })),
        (400, "invalid_parameter".into())
    );
    assert_eq!(
        refused(json!({ "factoryReset": false })),
        (400, "invalid_parameter".into())
    );
    assert_eq!(
        refused(json!({ "upgradeFile": FIRMWARE, "factoryReset": false })),
        (404, "device_offline".into())
    );
    let (status, body) = api(&server, "GET", &format!("{base}/{}", "x".repeat(32)), None);
    assert_eq!(
        (status, &body["error"]["symbol"]),
        (404, &json!("session_not_found"))
    );

    // 1. The device refuses the sixth slice: file_check_failed.
    let (device, _) = spawn_device(&server, &credentials, "v1.0.0", &sink);
    sink.lock().unwrap().refuse_slice = Some((5, 402));
    let failed = start_upgrade(&server, true);
    let body = wait_upgrade(&server, &failed, |b| b["status"] != "upgrading");
    assert_eq!(body["status"], "file_check_failed", "{body}");
    assert_eq!(body["phase"], "done");
    assert!(body["error"].as_str().unwrap().contains("402"), "{body}");
    {
        let sink = sink.lock().unwrap();
        let start = sink.start.as_ref().unwrap();
        assert_eq!(start.file_name, FIRMWARE);
        assert_eq!(start.file_size, content.len() as u64);
        assert!(start.factory_reset);
        assert!(
            sink.slices >= 6 && sink.slices <= 30,
            "{} slices",
            sink.slices
        );
        assert!(!sink.slept);
    }

    // 2. Everything taken, sleep, reboot, back with another firmware: upgrade_success.
    sink.lock().unwrap().refuse_slice = None;
    let succeeded = start_upgrade(&server, false);
    device.join().unwrap();
    {
        let sink = sink.lock().unwrap();
        assert!(sink.slept);
        assert_eq!(sink.slices, 41);
        assert!(
            sink.bytes == content,
            "the device got the uploaded file byte for byte"
        );
        assert!(!sink.start.as_ref().unwrap().factory_reset);
    }
    let body = wait_upgrade(&server, &succeeded, |b| b["phase"] == "installing");
    assert_eq!(body["status"], "upgrading");
    assert_eq!(body["bytesSent"], content.len());
    assert_eq!(body["fileSize"], content.len());
    // The device detail shows it while the device reboots; a second upgrade is refused.
    let (_, detail) = api(&server, "GET", &format!("/v1.0/devices/{UID}"), None);
    assert_eq!(
        detail["upgrade"]["sessionId"],
        succeeded.as_str(),
        "{detail}"
    );
    assert_eq!(detail["upgrade"]["phase"], "installing");
    assert_eq!(
        refused(json!({ "upgradeFile": FIRMWARE, "factoryReset": false })),
        (400, "duplicate_upgrade".into())
    );
    let (device, _) = spawn_device(&server, &credentials, "v2.0.0", &sink);
    let body = wait_upgrade(&server, &succeeded, |b| b["status"] != "upgrading");
    assert_eq!(body["status"], "upgrade_success", "{body}");
    assert_eq!(body["firmwareBefore"], "v1.0.0");
    assert_eq!(body["firmwareAfter"], "v2.0.0");
    let (_, detail) = api(&server, "GET", &format!("/v1.0/devices/{UID}"), None);
    assert!(detail.get("upgrade").is_none(), "{detail}");
    // Another device's UID does not see the session.
    let (status, _) = api(
        &server,
        "GET",
        &format!("/v1.0/devices/{OFFLINE_UID}/upgrade-session/{succeeded}"),
        None,
    );
    assert_eq!(status, 404);

    // 3. Back with the same firmware: still upgrading until the reboot limit, then
    // unknown_error.
    let same = start_upgrade(&server, false);
    device.join().unwrap();
    let (device, stop) = spawn_device(&server, &credentials, "v2.0.0", &sink);
    let body = wait_upgrade(&server, &same, |b| b["status"] != "upgrading");
    assert_eq!(body["status"], "unknown_error", "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("come back"),
        "{body}"
    );

    // The sessions are in the store: a restarted server answers them.
    let TestServer {
        server: running,
        dir: data,
    } = server;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    device.join().unwrap();
    running.stop();
    let server = TestServer::start_in(data);
    for (id, status) in [
        (&failed, "file_check_failed"),
        (&succeeded, "upgrade_success"),
        (&same, "unknown_error"),
    ] {
        let (code, body) = api(&server, "GET", &format!("{base}/{id}"), None);
        assert_eq!(
            (code, body["status"].as_str()),
            (200, Some(status)),
            "{body}"
        );
    }
}

/// Every documented path answers every documented method (no 405, no `url_not_found`), and
/// every other method with 405 whose Allow lists exactly the documented ones.
#[test]
fn openapi_document_matches_the_served_routes() {
    let server = TestServer::start();
    let answer = raw(&server, "GET", "/openapi.json", b"");
    assert_eq!(answer.status, 200);
    let doc = answer.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 20);
    let methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"];
    for (template, operations) in paths {
        let path = template
            .replace("{uid}", OFFLINE_UID)
            .replace("{sessionId}", &"a".repeat(32))
            .replace("{fileName}", "fw.pak");
        let documented: BTreeSet<String> = operations
            .as_object()
            .unwrap()
            .keys()
            // Path-level `parameters` (and `summary`, …) are not operations.
            .filter(|key| !matches!(key.as_str(), "parameters" | "summary" | "description"))
            .map(|m| m.to_uppercase())
            .collect();
        for method in methods {
            let answer = raw(&server, method, &path, b"");
            if documented.contains(method) {
                assert_ne!(answer.status, 405, "{method} {template}");
                if method != "HEAD" && !answer.body.is_empty() && answer.status == 404 {
                    let body = answer.json();
                    assert_ne!(
                        body["error"]["symbol"], "url_not_found",
                        "{method} {template}"
                    );
                }
            } else {
                assert_eq!(
                    answer.status, 405,
                    "{method} {template} is served but not documented"
                );
                let allow: BTreeSet<String> = answer
                    .header("allow")
                    .unwrap_or_default()
                    .split(',')
                    .map(|m| m.trim().to_owned())
                    .collect();
                assert_eq!(allow, documented, "Allow of {template}");
            }
        }
        // One more segment is no route (below /v1.0/devices it names a device).
        if template == "/v1.0/devices" {
            continue;
        }
        let answer = raw(&server, "GET", &format!("{path}/extra"), b"");
        assert_eq!(answer.status, 404, "{template}/extra");
    }
}
