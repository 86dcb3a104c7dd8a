//! The `relay` binary: `relay serve`, `relay pki …`, `relay url …`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// An io_uring, thread-per-core Core Server for the Reolink Open Platform.
#[derive(Debug, Parser)]
#[command(name = "relay", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server: device ports 61000-61007, RTSP 61008, client API 61009 (see README).
    Serve(ServeArgs),
    /// Manage the certificate authority and device certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Print a signed RTSP URL for a stream.
    Url(UrlArgs),
}

#[derive(Debug, Args)]
struct DataArg {
    /// Data directory (PKI, secrets, store).
    #[arg(long, default_value = "relay-data")]
    data: PathBuf,
}

#[derive(Debug, Args)]
struct ServeArgs {
    #[command(flatten)]
    data: DataArg,
    /// TOML configuration file (see relay.sample.toml); environment variables override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Number of shards (default: one per core).
    #[arg(long)]
    shards: Option<usize>,
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Create the root CA, intermediate CA, server certificate and an empty CRL.
    Init {
        #[command(flatten)]
        data: DataArg,
        /// DNS name or IP address for the server certificate (repeatable; default localhost and 127.0.0.1).
        #[arg(long = "host")]
        hosts: Vec<String>,
        /// Replace an existing PKI (every device must be provisioned again).
        #[arg(long)]
        force: bool,
        /// Write the root CA key to this file instead of the data directory, to keep it offline.
        #[arg(long)]
        root_key_out: Option<PathBuf>,
    },
    /// List every certificate of the PKI and every device certificate in force with its days
    /// left (asks a running server for the device certificates when it holds the store).
    Status {
        #[command(flatten)]
        data: DataArg,
        /// Client API of a running server to ask when the store is in use.
        #[arg(long, default_value = "http://127.0.0.1:61009")]
        api: String,
    },
    /// Revoke every certificate of a device (works while the server runs).
    Revoke {
        /// The device UID.
        uid: String,
        #[command(flatten)]
        data: DataArg,
        /// Client API of a running server to ask when the store is in use.
        #[arg(long, default_value = "http://127.0.0.1:61009")]
        api: String,
    },
    /// Start a new device key index for encryptTCP access keys (works while the server runs).
    /// Devices registered before keep authenticating with their old access keys; their hello
    /// is answered 400 and they register again to get one under the new index.
    RotateDeviceKey {
        #[command(flatten)]
        data: DataArg,
        /// Client API of a running server to ask when the store is in use.
        #[arg(long, default_value = "http://127.0.0.1:61009")]
        api: String,
    },
}

#[derive(Debug, Args)]
struct UrlArgs {
    /// `play` or `publish`.
    #[arg(value_parser = ["play", "publish"])]
    op: String,
    #[command(flatten)]
    data: DataArg,
    /// Device UID (or source id); with --count, a template where `{n}` is replaced by
    /// 0..count (e.g. `BENCH{n}`).
    #[arg(long)]
    uid: String,
    /// Print this many URLs, one per line, for the UIDs of the `--uid` template (for
    /// `loadgen rtsp --streams S --publish-url @FILE`).
    #[arg(long)]
    count: Option<usize>,
    /// Channel number.
    #[arg(long, default_value_t = 0)]
    channel: u8,
    /// mainStream, subStream or externStream.
    #[arg(long, default_value = "mainStream", value_parser = ["mainStream", "subStream", "externStream"])]
    stream: String,
    /// Lifetime of the URL (e.g. 30s, 10m, 2h).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Host to put in the URL (default: the configured hostname).
    #[arg(long)]
    host: Option<String>,
    /// Port to put in the URL (default: the configured RTSP port).
    #[arg(long)]
    port: Option<u16>,
    /// Use rtsps:// and the RTSPS port.
    #[arg(long)]
    tls: bool,
    /// TOML configuration file, for the hostname and ports.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            let mut config = signal::config::Config::load(args.config.as_deref())?;
            if args.shards.is_some() {
                config.shards = args.shards;
            }
            relay::server::serve(config, &args.data.data)
        }
        Command::Pki(cmd) => pki_command(cmd),
        Command::Url(args) => url_command(args),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

fn pki_command(cmd: PkiCommand) -> anyhow::Result<()> {
    match cmd {
        PkiCommand::Init {
            data,
            hosts,
            force,
            root_key_out,
        } => {
            let hosts = if hosts.is_empty() {
                pki::default_hosts()
            } else {
                hosts
            };
            let options = pki::InitOptions {
                hosts,
                force,
                root_key_out,
            };
            let pki = pki::Pki::init(&data.data, &options)?;
            println!("PKI created in {}", data.data.join("pki").display());
            println!("root CA: {}", pki.paths().root_cert.display());
            println!(
                "root CA SHA-256 fingerprint: {}",
                pki.root_fingerprint_sha256()
            );
            if let Some(path) = &options.root_key_out {
                println!(
                    "root CA key written to {} (not kept in the data directory)",
                    path.display()
                );
            }
        }
        PkiCommand::Status { data, api } => {
            let pki = pki::Pki::open(&data.data)?;
            let row = |name: &str, serial: &str, not_after: u64, days_left: i64| {
                println!(
                    "{name:<27} {serial:<42} {:<22} {days_left:>9}",
                    signal::clock::format_unix_time(not_after),
                )
            };
            println!(
                "{:<27} {:<42} {:<22} {:>9}",
                "CERTIFICATE", "SERIAL", "NOT AFTER", "DAYS LEFT"
            );
            for cert in pki.status() {
                let not_after = u64::try_from(cert.not_after).unwrap_or(0);
                row(cert.name, &cert.serial_hex, not_after, cert.days_left);
            }
            let devices = match signal::store::Store::open(&data.data) {
                Ok(store) => {
                    signal::provisioning::device_cert_status(&store, signal::clock::unix_now())?
                }
                Err(signal::store::StoreError::Locked { .. }) => {
                    // A running server holds the store: it lists them.
                    let answer =
                        ClientApi::new(&api, &data.data)?.request("GET", "/v1.0/certificates")?;
                    let body: serde_json::Value = answer.json_ok("listing the certificates")?;
                    serde_json::from_value::<Vec<DeviceCertRow>>(body["devices"].clone())
                        .context("the server's certificate list")?
                        .into_iter()
                        .map(|c| signal::provisioning::DeviceCertStatus {
                            uid: c.uid,
                            serial: c.serial,
                            not_after: c.not_after,
                            days_left: c.days_left,
                        })
                        .collect()
                }
                Err(e) => return Err(e.into()),
            };
            for cert in devices {
                row(
                    &format!("device {}", cert.uid),
                    &cert.serial,
                    cert.not_after,
                    cert.days_left,
                );
            }
        }
        PkiCommand::Revoke { uid, data, api } => {
            pki::validate_uid(&uid)?;
            match signal::store::Store::open(&data.data) {
                Ok(store) => {
                    let pki = pki::Pki::open(&data.data)?;
                    let revoked = store.revoke_device(&uid, signal::clock::unix_now())?;
                    let Some(serials) = revoked else {
                        bail!("device {uid} is not known to this server")
                    };
                    signal::provisioning::publish_crl(&pki, &store)?;
                    println!(
                        "revoked {uid}: {} certificate(s) added to {}",
                        serials.len(),
                        pki.paths().crl.display()
                    );
                }
                Err(signal::store::StoreError::Locked { .. }) => {
                    // A running server holds the store: ask it, so that it also closes the
                    // device's connections at once.
                    let answer = ClientApi::new(&api, &data.data)?
                        .request("DELETE", &format!("/v1.0/devices/{uid}"))?;
                    answer.json_ok("revoking the device")?;
                    println!("revoked {uid} through the running server");
                }
                Err(e) => return Err(e.into()),
            }
        }
        PkiCommand::RotateDeviceKey { data, api } => {
            // The store's lock tells whether a server runs: it must rotate its own copy of the
            // keys, or it would keep handing out the old index until restarted.
            match signal::store::Store::open(&data.data) {
                Ok(store) => {
                    drop(store);
                    let secrets = signal::secrets::Secrets::open_or_create(&data.data)?;
                    let index = secrets.device_keys.rotate()?;
                    println!(
                        "device key rotated: new registrations get key index {index} ({})",
                        data.data.join("secrets/device-keys.json").display()
                    );
                }
                Err(signal::store::StoreError::Locked { .. }) => {
                    let answer = ClientApi::new(&api, &data.data)?
                        .request("POST", "/v1.0/device-keys/rotation")?;
                    let body = answer.json_ok("rotating the device key")?;
                    let index = body["currentKeyIndex"].as_str().unwrap_or_default();
                    println!(
                        "device key rotated through the running server: new key index {index}"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// One device certificate as `GET /v1.0/certificates` lists it.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct DeviceCertRow {
    uid: String,
    serial: String,
    not_after: u64,
    days_left: i64,
}

/// The client API of a running server, for the commands that must go through it while it
/// holds the store. Plain HTTP/1.1 over loopback (the default API listener); the bearer token,
/// used when `[api] auth = "token"`, is read from the data directory.
struct ClientApi {
    addr: String,
    host: String,
    token: String,
}

/// A response of the client API.
struct ApiAnswer {
    status: u16,
    body: String,
    url: String,
}

/// How long the CLI waits for the running server.
const API_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer body the CLI reads (about 100 bytes per device certificate).
const MAX_API_ANSWER: usize = 64 << 20;

impl ClientApi {
    fn new(api: &str, data_dir: &std::path::Path) -> anyhow::Result<Self> {
        let Some(authority) = api.strip_prefix("http://") else {
            bail!("--api {api}: expected http://HOST:PORT (the plain client API listener)");
        };
        let authority = authority.trim_end_matches('/');
        if authority.contains('/') {
            bail!("--api {api}: expected http://HOST:PORT, without a path");
        }
        let addr = if authority
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let secrets = signal::secrets::Secrets::open_or_create(data_dir)
            .context("reading the client API token from the data directory")?;
        Ok(Self {
            addr,
            host: authority.to_owned(),
            token: secrets.api_token,
        })
    }

    fn request(&self, method: &str, path: &str) -> anyhow::Result<ApiAnswer> {
        use std::io::{Read as _, Write as _};
        use std::net::ToSocketAddrs as _;
        let url = format!("http://{}{path}", self.host);
        let target = self
            .addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {}", self.addr))?
            .next()
            .with_context(|| format!("{} resolves to no address", self.addr))?;
        let mut stream = std::net::TcpStream::connect_timeout(&target, API_TIMEOUT)
            .with_context(|| format!("connecting to the running server's client API at {url}"))?;
        stream.set_read_timeout(Some(API_TIMEOUT))?;
        stream.set_write_timeout(Some(API_TIMEOUT))?;
        let request = http::Request::builder()
            .method(method)
            .uri(&url)
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token),
            )
            .header(http::header::CONNECTION, "close")
            .body(Vec::new())
            .with_context(|| format!("building {method} {url}"))?;
        let mut out = Vec::new();
        signal::proto::http::encode_request(&request, &mut out);
        stream
            .write_all(&out)
            .with_context(|| format!("sending {method} {url}"))?;
        let mut raw = Vec::new();
        stream
            .take(MAX_API_ANSWER as u64 + 64 * 1024)
            .read_to_end(&mut raw)
            .with_context(|| format!("reading the answer to {method} {url}"))?;
        // The certificate list of a large fleet is bigger than a request body may be.
        let limits = signal::proto::http::Limits {
            max_body: MAX_API_ANSWER,
            ..Default::default()
        };
        let parsed = signal::proto::http::ResponseParser::new(limits)
            .parse_at_eof(&raw)
            .with_context(|| format!("{method} {url}: not an HTTP response"))?;
        let signal::proto::http::ParsedResponse::Complete { response, .. } = parsed else {
            bail!("{method} {url}: the answer was cut short");
        };
        let status = response.status().as_u16();
        let body = String::from_utf8_lossy(response.body()).into_owned();
        Ok(ApiAnswer { status, body, url })
    }
}

impl ApiAnswer {
    /// The JSON body of a 2xx answer; otherwise an error naming what the server said.
    fn json_ok(&self, what: &str) -> anyhow::Result<serde_json::Value> {
        if !(200..300).contains(&self.status) {
            bail!(
                "{what}: the running server answered {} ({}): {}",
                self.status,
                self.url,
                self.body.trim()
            );
        }
        if self.body.trim().is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&self.body)
            .with_context(|| format!("{what}: {} sent no JSON", self.url))
    }
}

fn url_command(args: UrlArgs) -> anyhow::Result<()> {
    let config = signal::config::Config::load(args.config.as_deref())?;
    let uids: Vec<String> = match args.count {
        Some(count) if args.uid.contains("{n}") => (0..count)
            .map(|n| args.uid.replace("{n}", &n.to_string()))
            .collect(),
        Some(_) => bail!("--count needs `{{n}}` in --uid (e.g. --uid 'BENCH{{n}}')"),
        None => vec![args.uid.clone()],
    };
    // The same check the RTSP server applies to the stream a URL names.
    let kind: relay::stream_key::StreamKind = args
        .stream
        .parse()
        .map_err(|e| anyhow::anyhow!("--stream: {e:?}"))?;
    for uid in &uids {
        relay::stream_key::StreamKey::new(uid.clone(), args.channel, kind)
            .map_err(|e| anyhow::anyhow!("{uid}: not a stream this server can serve: {e}"))?;
    }
    let secrets = signal::secrets::Secrets::open_or_create(&args.data.data)?;
    let signer = signal::tokens::TokenSigner::new(secrets.token_key);
    let op = if args.op == "play" {
        signal::tokens::TokenOp::Play
    } else {
        signal::tokens::TokenOp::Publish
    };
    let (scheme, default_port) = if args.tls {
        ("rtsps", config.listen.rtsps.port())
    } else {
        ("rtsp", config.listen.rtsp.port())
    };
    let host = args.host.unwrap_or(config.hostname);
    let exp = signal::clock::unix_now() + args.ttl.as_secs().max(1);
    for uid in uids {
        let grant = signal::tokens::StreamGrant {
            uid,
            channel: args.channel,
            stream_type: args.stream.clone(),
            op,
            exp,
            file: None,
        };
        println!(
            "{}",
            signer.sign_url(scheme, &host, args.port.unwrap_or(default_port), &grant)
        );
    }
    Ok(())
}
