//! Bearer-token authentication of the client API (`api.auth = "token"`), with curl over HTTP
//! and HTTPS: no token or a wrong one is 401 with the platform's JSON error and a
//! `WWW-Authenticate` challenge; the token from `DATA/secrets/api-token` is accepted; /healthz
//! stays open; a refused upload writes nothing.

use tests::{curl, TestServer};

fn token(server: &TestServer) -> String {
    std::fs::read_to_string(server.data_dir().join("secrets").join("api-token"))
        .expect("the token file exists once the server runs")
        .trim()
        .to_owned()
}

fn call(server: &TestServer, path: &str, extra: &[&str]) -> tests::CurlResponse {
    let url = format!("{}{path}", server.api_url());
    let mut args: Vec<&str> = extra.to_vec();
    args.push(&url);
    curl(&args)
}

#[test]
fn missing_or_wrong_tokens_get_401_json_and_the_right_one_gets_through() {
    let server = TestServer::start_with(|c| c.api.auth = signal::config::ApiAuth::Token);
    let token = token(&server);
    assert!(token.len() >= 32, "a token worth guessing: {token:?}");

    for (what, header) in [
        ("no token", None),
        (
            "wrong token",
            Some("Authorization: Bearer not-the-token".to_owned()),
        ),
        (
            "other scheme",
            Some(format!("Authorization: Basic {token}")),
        ),
        (
            "token with a trailing byte",
            Some(format!("Authorization: Bearer {token}x")),
        ),
    ] {
        let mut extra = vec!["-D", "-"];
        if let Some(header) = &header {
            extra.extend(["-H", header.as_str()]);
        }
        for path in [
            "/v1.0/devices",
            "/metrics",
            "/openapi.json",
            "/v1.0/nowhere",
        ] {
            let response = call(&server, path, &extra);
            assert_eq!(response.status, 401, "{what} on {path}");
            let text = String::from_utf8_lossy(&response.body);
            let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
            assert!(
                head.to_ascii_lowercase()
                    .contains("www-authenticate: bearer realm=\"rop\""),
                "{head}"
            );
            let body: serde_json::Value = serde_json::from_str(body).expect("JSON error");
            assert_eq!(body["error"]["symbol"], "auth_failed", "{what} on {path}");
        }
    }

    let bearer = format!("Authorization: Bearer {token}");
    let response = call(&server, "/v1.0/devices", &["-H", &bearer]);
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json(),
        serde_json::json!({"totalRows": 0, "items": []})
    );
    assert_eq!(
        call(&server, "/healthz", &[]).status,
        200,
        "healthz is open"
    );

    // The same over HTTPS (61010), checked against the deployment's CA.
    let https = format!(
        "https://localhost:{}/v1.0/devices",
        server.server.addrs.api_tls.unwrap().port()
    );
    let ca = server.ca_file();
    let ca = ca.to_str().unwrap();
    assert_eq!(curl(&["--cacert", ca, &https]).status, 401);
    assert_eq!(curl(&["--cacert", ca, "-H", &bearer, &https]).status, 200);

    // An upload without the token is refused before a byte is stored.
    let response = call(
        &server,
        "/v1.0/firmware/fw.pak",
        &["-X", "POST", "--data-binary", "firmware"],
    );
    assert_eq!(response.status, 401);
    assert!(!server.data_dir().join("firmware").join("fw.pak").exists());

    // Every refusal was counted per address (a guesser is boxed like a code guesser).
    let metrics = call(&server, "/metrics", &["-H", &bearer]);
    let (_, samples) = tests::parse_prometheus(&String::from_utf8_lossy(&metrics.body));
    let refused = tests::prom_value(
        &samples,
        "rop_auth_failures_total",
        &[("listener", "http"), ("failure", "api_token")],
    );
    assert!(refused >= 17.0, "api token failures counted: {refused}");
}

#[test]
fn without_token_auth_the_api_is_open_as_on_the_platform() {
    let server = TestServer::start();
    assert_eq!(call(&server, "/v1.0/devices", &[]).status, 200);
    assert_eq!(
        call(
            &server,
            "/v1.0/devices",
            &["-H", "Authorization: Bearer anything"]
        )
        .status,
        200
    );
}
