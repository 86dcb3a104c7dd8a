//! The whole provisioning flow over real HTTPS, as a camera does it, with curl and openssl as
//! the clients: initialization session, CA download with the caHash check, credentials
//! (server-made key and CSR), registration over mutual TLS, revocation; and every refusal.

use std::path::Path;
use std::time::{Duration, SystemTime};

use tests::{curl, curl_exit_code, run, TestServer};

const UID: &str = "952700000A5S348E";
const OTHER_UID: &str = "ABCDEF0123456789";

fn init_session(server: &TestServer, uid: &str) -> serde_json::Value {
    let url = format!("{}/v1.0/devices/initialization-session", server.api_url());
    let body = format!("{{\"uid\":\"{uid}\"}}");
    let response = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &url,
    ]);
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    response.json()
}

fn https(port: u16, path: &str) -> String {
    format!("https://localhost:{port}{path}")
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

fn openssl_ok(args: &[&str]) -> String {
    let out = run("openssl", args);
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Registration with the given client certificate; returns curl's response.
fn register(
    server: &TestServer,
    ca: &str,
    cert: &str,
    key: &str,
    uid: &str,
) -> tests::CurlResponse {
    let url = https(
        server.server.addrs.registration.port(),
        "/v1.0/devices/registration",
    );
    let body = format!("{{\"uid\":\"{uid}\"}}");
    curl(&[
        "--cacert", ca, "--cert", cert, "--key", key, "-X", "POST", "-d", &body, &url,
    ])
}

fn register_exit_code(server: &TestServer, ca: &str, cert: Option<(&str, &str)>) -> i32 {
    let url = https(
        server.server.addrs.registration.port(),
        "/v1.0/devices/registration",
    );
    let body = format!("{{\"uid\":\"{UID}\"}}");
    let mut args = vec!["--cacert", ca, "-X", "POST", "-d", &body, &url];
    if let Some((cert, key)) = cert {
        args.extend_from_slice(&["--cert", cert, "--key", key]);
    }
    curl_exit_code(&args)
}

#[test]
fn camera_provisions_with_csr_and_registers_over_mutual_tls() {
    let server = TestServer::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let addrs = &server.server.addrs;

    let session = init_session(&server, UID);
    assert_eq!(session["uid"], UID);
    assert_eq!(session["host"], "localhost");
    assert_eq!(session["getCAPort"], addrs.ca.port());
    assert_eq!(session["getCertPort"], addrs.credentials.port());
    assert_eq!(session["registerPort"], addrs.registration.port());
    let code = session["code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 8);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(session["time"].as_u64().unwrap().abs_diff(now) < 5);

    // The CA download: JSON as the platform answers, PEM with our Accept extension; the
    // device checks caHash = base64(SHA-256 of the file).
    let ca_json = curl(&["-k", &https(addrs.ca.port(), "/v1.0/ca")]).json();
    assert!(ca_json["now"].as_u64().unwrap() > 0);
    let ca = write(dir, "ca.pem", ca_json["ca"].as_str().unwrap());
    let pem = curl(&[
        "-k",
        "-H",
        "Accept: application/x-pem-file",
        &https(addrs.ca.port(), "/v1.0/ca"),
    ]);
    assert_eq!(pem.body, std::fs::read(&ca).unwrap());
    let digest = run(
        "sh",
        &[
            "-c",
            &format!("openssl dgst -sha256 -binary {ca} | openssl base64 -A"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&digest.stdout).trim(),
        session["caHash"].as_str().unwrap()
    );

    // The device makes its own key; the credentials port certifies it.
    let key = dir.join("device.key").to_str().unwrap().to_owned();
    let csr = dir.join("device.csr").to_str().unwrap().to_owned();
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-subj",
        &format!("/CN={UID}"),
        "-out",
        &csr,
    ]);
    let url = https(
        addrs.credentials.port(),
        &format!("/v1.0/devices/credetials?uid={UID}&code={code}"),
    );
    let headers = dir.join("headers.txt").to_str().unwrap().to_owned();
    let creds = curl(&[
        "--cacert",
        &ca,
        "-H",
        "Content-Type: application/pkcs10",
        "-H",
        "Accept: application/x-pem-file",
        "--data-binary",
        &format!("@{csr}"),
        "-D",
        &headers,
        &url,
    ]);
    assert_eq!(
        creds.status,
        200,
        "{}",
        String::from_utf8_lossy(&creds.body)
    );
    let cert = write(dir, "device.pem", std::str::from_utf8(&creds.body).unwrap());
    let headers = std::fs::read_to_string(&headers).unwrap().to_lowercase();
    assert!(headers.contains("rop-long-term-code: "), "{headers}");
    assert_eq!(
        openssl_ok(&["verify", "-CAfile", &ca, "-untrusted", &cert, &cert]).trim(),
        format!("{cert}: OK")
    );
    let subject = openssl_ok(&[
        "x509",
        "-in",
        &cert,
        "-noout",
        "-subject",
        "-ext",
        "extendedKeyUsage",
    ]);
    assert!(
        subject.contains(&format!("CN = {UID}"))
            && subject.contains("TLS Web Client Authentication"),
        "{subject}"
    );

    // The code was single use.
    let again = curl(&[
        "--cacert",
        &ca,
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        &format!("@{csr}"),
        &url,
    ]);
    assert_eq!(again.status, 400);
    assert_eq!(again.json()["error"]["symbol"], "code_invalid");

    // Registration over mutual TLS gives the access key pair and the ports.
    let registration = register(&server, &ca, &cert, &key, UID);
    assert_eq!(
        registration.status,
        200,
        "{}",
        String::from_utf8_lossy(&registration.body)
    );
    let registration = registration.json();
    assert_eq!(registration["accesskey"].as_str().unwrap().len(), 32);
    assert_eq!(registration["secretAccesskey"].as_str().unwrap().len(), 32);
    assert_eq!(registration["heartBeatInterval"], 20);
    // The test server listens on port 0: devices are told the ports it bound, not 0.
    assert_eq!(
        registration["keepAliveTCPPort"],
        server.server.addrs.keepalive.port()
    );
    assert_eq!(
        registration["signalingTLSPort"],
        server.server.addrs.signaling.port()
    );
    assert_ne!(server.server.addrs.keepalive.port(), 0);

    // The body's UID must be the certificate's.
    let mismatch = register(&server, &ca, &cert, &key, OTHER_UID);
    assert_eq!(mismatch.status, 400);
    assert_eq!(mismatch.json()["error"]["symbol"], "device_not_matched");

    // Revocation through the client API puts the serial on the CRL and the handshake fails at once.
    let serial = openssl_ok(&["x509", "-in", &cert, "-noout", "-serial"])
        .trim()
        .trim_start_matches("serial=")
        .to_owned();
    let revoked = curl(&[
        "-X",
        "DELETE",
        &format!("{}/v1.0/devices/{UID}", server.api_url()),
    ]);
    assert_eq!(revoked.status, 200);
    let crl = server.server.pki.paths().crl.to_str().unwrap().to_owned();
    let crl_text = openssl_ok(&["crl", "-in", &crl, "-noout", "-text"]);
    assert!(
        crl_text.contains(&serial),
        "serial {serial} not in\n{crl_text}"
    );
    assert_ne!(register_exit_code(&server, &ca, Some((&cert, &key))), 0);
}

#[test]
fn server_made_key_as_the_platform_does() {
    let server = TestServer::start();
    let work = tempfile::tempdir().unwrap();
    let ca = server.ca_file();
    let ca = ca.to_str().unwrap();
    let session = init_session(&server, UID);
    let body = format!(
        "{{\"uid\":\"{UID}\",\"code\":\"{}\"}}",
        session["code"].as_str().unwrap()
    );
    let url = https(
        server.server.addrs.credentials.port(),
        "/v1.0/devices/credetials",
    );
    let creds = curl(&[
        "--cacert",
        ca,
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &url,
    ]);
    assert_eq!(
        creds.status,
        200,
        "{}",
        String::from_utf8_lossy(&creds.body)
    );
    let creds = creds.json();
    let cert = write(work.path(), "device.pem", creds["cert"].as_str().unwrap());
    let key = write(work.path(), "device.key", creds["key"].as_str().unwrap());
    let long_term = creds["code"].as_str().unwrap().to_owned();
    assert!(long_term.contains('.'));
    assert_eq!(register(&server, ca, &cert, &key, UID).status, 200);

    // The long-term code fetches a new certificate; the old one is revoked with it.
    let body = format!("{{\"uid\":\"{UID}\",\"code\":\"{long_term}\"}}");
    let renewed = curl(&["--cacert", ca, "-X", "POST", "-d", &body, &url]);
    assert_eq!(
        renewed.status,
        200,
        "{}",
        String::from_utf8_lossy(&renewed.body)
    );
    let renewed = renewed.json();
    let new_cert = write(work.path(), "new.pem", renewed["cert"].as_str().unwrap());
    let new_key = write(work.path(), "new.key", renewed["key"].as_str().unwrap());
    assert_eq!(register(&server, ca, &new_cert, &new_key, UID).status, 200);
    assert_ne!(
        register_exit_code(&server, ca, Some((&cert, &key))),
        0,
        "the older certificate must be revoked"
    );
}

#[test]
fn mutual_tls_refuses_missing_foreign_expired_and_revoked_certificates() {
    let server = TestServer::start();
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    let ca = server.ca_file();
    let ca = ca.to_str().unwrap();

    // No certificate at all.
    assert_ne!(register_exit_code(&server, ca, None), 0);

    // A certificate from another installation's CA.
    let other_dir = tempfile::tempdir().unwrap();
    let (other_pki, _) = pki::Pki::open_or_init(other_dir.path(), &pki::default_hosts()).unwrap();
    let foreign = other_pki
        .issue_device(UID, pki::DeviceKey::Generate, Duration::from_secs(86_400))
        .unwrap();
    let foreign_cert = write(dir, "foreign.pem", &foreign.cert_chain_pem);
    let foreign_key = write(dir, "foreign.key", foreign.key_pem.as_deref().unwrap());
    assert_ne!(
        register_exit_code(&server, ca, Some((&foreign_cert, &foreign_key))),
        0
    );

    // An expired certificate from our own CA.
    let day = Duration::from_secs(86_400);
    let past = SystemTime::now() - 10 * day;
    let expired = server
        .server
        .pki
        .issue_device_with_validity(UID, pki::DeviceKey::Generate, past - day, past)
        .unwrap();
    let expired_cert = write(dir, "expired.pem", &expired.cert_chain_pem);
    let expired_key = write(dir, "expired.key", expired.key_pem.as_deref().unwrap());
    assert_ne!(
        register_exit_code(&server, ca, Some((&expired_cert, &expired_key))),
        0
    );

    // A valid one works, and stops working once `relay pki revoke`-style revocation lands.
    let session = init_session(&server, UID);
    let body = format!(
        "{{\"uid\":\"{UID}\",\"code\":\"{}\"}}",
        session["code"].as_str().unwrap()
    );
    let url = https(
        server.server.addrs.credentials.port(),
        "/v1.0/devices/credetials",
    );
    let creds = curl(&["--cacert", ca, "-X", "POST", "-d", &body, &url]).json();
    let cert = write(dir, "device.pem", creds["cert"].as_str().unwrap());
    let key = write(dir, "device.key", creds["key"].as_str().unwrap());
    assert_eq!(register_exit_code(&server, ca, Some((&cert, &key))), 0);
    let revoked = curl(&[
        "-X",
        "DELETE",
        &format!("{}/v1.0/devices/{UID}", server.api_url()),
    ]);
    assert_eq!(revoked.status, 200);
    assert_ne!(register_exit_code(&server, ca, Some((&cert, &key))), 0);
}

#[test]
fn bad_input_gets_json_errors_and_changes_nothing() {
    let server = TestServer::start();
    let ca = server.ca_file();
    let ca = ca.to_str().unwrap();
    let api = server.api_url();
    let init = format!("{api}/v1.0/devices/initialization-session");

    let lower = curl(&["-X", "POST", "-d", "{\"uid\":\"952700000a5s348e\"}", &init]);
    assert_eq!(lower.status, 400);
    assert_eq!(lower.json()["error"]["symbol"], "invalid_parameter");
    let short = curl(&["-X", "POST", "-d", "{\"uid\":\"ABC\"}", &init]);
    assert_eq!(short.status, 400);
    let malformed = curl(&["-X", "POST", "-d", "{\"uid\":", &init]);
    assert_eq!(malformed.status, 400);
    let missing = curl(&["-X", "POST", "-d", "{\"id\":\"952700000A5S348E\"}", &init]);
    assert_eq!(missing.status, 400);
    assert!(missing.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("uid"));
    let oversized = "x".repeat(100 * 1024);
    let big = curl(&["-X", "POST", "-d", &oversized, &init]);
    assert_eq!(big.status, 413);
    assert!(big.json()["error"]["symbol"].is_string());
    let unknown = curl(&[&format!("{api}/v1.0/nothing-here")]);
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.json()["error"]["symbol"], "url_not_found");
    let wrong_method = curl(&["-X", "GET", &init]);
    assert_eq!(wrong_method.status, 405);

    let credentials = https(
        server.server.addrs.credentials.port(),
        "/v1.0/devices/credetials",
    );
    let wrong_code = format!("{{\"uid\":\"{UID}\",\"code\":\"ABCDEFGH\"}}");
    let refused = curl(&[
        "--cacert",
        ca,
        "-X",
        "POST",
        "-d",
        &wrong_code,
        &credentials,
    ]);
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["symbol"], "code_invalid");

    // A code issued for one UID does not serve another; a CSR whose CN is not the UID is refused;
    // after both refusals the code still works.
    let session = init_session(&server, UID);
    let code = session["code"].as_str().unwrap();
    let other = format!("{{\"uid\":\"{OTHER_UID}\",\"code\":\"{code}\"}}");
    let refused = curl(&["--cacert", ca, "-X", "POST", "-d", &other, &credentials]);
    assert_eq!(refused.status, 400);
    assert_eq!(refused.json()["error"]["symbol"], "device_not_matched");
    let work = tempfile::tempdir().unwrap();
    let csr = work.path().join("wrong.csr").to_str().unwrap().to_owned();
    let key = work.path().join("wrong.key").to_str().unwrap().to_owned();
    openssl_ok(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &key,
        "-subj",
        &format!("/CN={OTHER_UID}"),
        "-out",
        &csr,
    ]);
    let url = format!("{credentials}?uid={UID}&code={code}");
    let refused = curl(&[
        "--cacert",
        ca,
        "-H",
        "Content-Type: application/pkcs10",
        "--data-binary",
        &format!("@{csr}"),
        &url,
    ]);
    assert_eq!(refused.status, 400);
    let message = refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains(OTHER_UID) && message.contains(UID),
        "{message}"
    );
    let good = format!("{{\"uid\":\"{UID}\",\"code\":\"{code}\"}}");
    assert_eq!(
        curl(&["--cacert", ca, "-X", "POST", "-d", &good, &credentials]).status,
        200
    );
    assert!(server.server.pki.paths().crl.exists());
}

/// The certificates the store lists for `uid` (GET /v1.0/devices/{uid}), and the CRL file:
/// what a refusal must leave as it was.
fn issued_state(server: &TestServer, uid: &str) -> (serde_json::Value, Vec<u8>) {
    let device = curl(&[&format!("{}/v1.0/devices/{uid}", server.api_url())]);
    let certs = if device.status == 200 {
        device.json()["certificates"].clone()
    } else {
        serde_json::Value::Null
    };
    let crl = std::fs::read(&server.server.pki.paths().crl).unwrap();
    (certs, crl)
}

/// An EC P-256 CSR with CN=`cn` (or an RSA one), written to `dir`; returns its PEM.
fn make_csr(dir: &Path, name: &str, cn: &str, rsa: bool) -> String {
    let key = dir.join(format!("{name}.key"));
    let csr = dir.join(format!("{name}.csr"));
    let mut args = vec!["req", "-new", "-newkey"];
    if rsa {
        args.push("rsa:2048");
    } else {
        args.extend_from_slice(&["ec", "-pkeyopt", "ec_paramgen_curve:P-256"]);
    }
    let subject = format!("/CN={cn}");
    args.extend_from_slice(&[
        "-nodes",
        "-keyout",
        key.to_str().unwrap(),
        "-subj",
        &subject,
        "-out",
        csr.to_str().unwrap(),
    ]);
    openssl_ok(&args);
    std::fs::read_to_string(csr).unwrap()
}

/// Every refusal on 61001 (expired code, malformed CSR, RSA CSR, CSR for another UID; in the
/// JSON `csr` field, as a device keeping its own key sends it) answers a 4xx JSON error naming
/// the problem, issues no certificate, leaves the CRL alone and, where the code was good, lets
/// it be used afterwards.
#[test]
fn refusals_over_https_issue_nothing_and_keep_the_code() {
    let server = TestServer::start_with(|c| c.provisioning.code_ttl_secs = 5);
    let ca = server.ca_file();
    let ca = ca.to_str().unwrap();
    let credentials = https(
        server.server.addrs.credentials.port(),
        "/v1.0/devices/credetials",
    );
    let post = |body: &serde_json::Value| {
        curl(&[
            "--cacert",
            ca,
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "-d",
            &body.to_string(),
            &credentials,
        ])
    };
    let work = tempfile::tempdir().unwrap();

    // A code past its lifetime.
    let expired = init_session(&server, OTHER_UID)["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = issued_state(&server, OTHER_UID);
    std::thread::sleep(Duration::from_secs(6));
    let refused = post(&serde_json::json!({"uid": OTHER_UID, "code": expired}));
    assert_eq!(refused.status, 400);
    let error = refused.json();
    assert_eq!(error["error"]["symbol"], "code_invalid", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{error}"
    );
    assert_eq!(issued_state(&server, OTHER_UID), before);

    // A good code, refused CSRs, then the code still works.
    let code = init_session(&server, UID)["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = issued_state(&server, UID);
    assert_eq!(before.0, serde_json::json!([]), "no certificate yet");
    let malformed =
        "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n";
    let rsa = make_csr(work.path(), "rsa", UID, true);
    let wrong_cn = make_csr(work.path(), "other", OTHER_UID, false);
    for (what, csr, needle) in [
        (
            "malformed",
            malformed.to_owned(),
            "certificate signing request",
        ),
        ("RSA", rsa, "P-256"),
        ("CN mismatch", wrong_cn, OTHER_UID),
    ] {
        let refused = post(&serde_json::json!({"uid": UID, "code": code, "csr": csr}));
        assert_eq!(refused.status, 400, "{what}");
        let error = refused.json();
        assert!(error["error"]["symbol"].is_string(), "{what}: {error}");
        let message = error["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{what}: {message}");
        assert_eq!(
            issued_state(&server, UID),
            before,
            "{what} changed the store"
        );
    }
    let good = make_csr(work.path(), "good", UID, false);
    let issued = post(&serde_json::json!({"uid": UID, "code": code, "csr": good}));
    assert_eq!(
        issued.status,
        200,
        "{}",
        String::from_utf8_lossy(&issued.body)
    );
    let issued = issued.json();
    assert!(issued["key"].is_null() || issued["key"] == "", "{issued}");
    // The certificate carries the device's own key (from the CSR) and CN=UID.
    let cert = write(work.path(), "issued.pem", issued["cert"].as_str().unwrap());
    let cert_key = openssl_ok(&["x509", "-in", &cert, "-noout", "-pubkey"]);
    let good_csr = work.path().join("good.csr");
    let csr_key = openssl_ok(&[
        "req",
        "-in",
        good_csr.to_str().unwrap(),
        "-noout",
        "-pubkey",
    ]);
    assert_eq!(cert_key, csr_key);
    let subject = openssl_ok(&["x509", "-in", &cert, "-noout", "-subject"]);
    assert!(subject.contains(UID), "{subject}");
    let key = work.path().join("good.key");
    assert_eq!(
        register(&server, ca, &cert, key.to_str().unwrap(), UID).status,
        200
    );
    assert_eq!(
        issued_state(&server, UID).0.as_array().map(Vec::len),
        Some(1)
    );
}

/// A copy of the store does not give away a live code: store.redb holds its SHA-256, never
/// the code itself.
#[test]
fn codes_are_stored_hashed() {
    let server = TestServer::start();
    let code = init_session(&server, UID)["code"]
        .as_str()
        .unwrap()
        .to_owned();
    let data = server.data_dir().to_owned();
    let dir = server.dir;
    server.server.stop();
    let store = std::fs::read(data.join("store.redb")).unwrap();
    let contains = |needle: &[u8]| store.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(code.as_bytes()), "the code is stored in clear");
    let digest = run(
        "sh",
        &[
            "-c",
            &format!("printf %s '{code}' | openssl dgst -sha256 -r"),
        ],
    );
    let digest = String::from_utf8_lossy(&digest.stdout);
    let digest = digest.split_whitespace().next().unwrap();
    assert_eq!(digest.len(), 64);
    assert!(
        contains(digest.as_bytes()),
        "no SHA-256 of the code in the store"
    );
    drop(dir);
}
