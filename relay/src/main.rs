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
    /// List every certificate of the PKI with its days left.
    Status {
        #[command(flatten)]
        data: DataArg,
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
}

#[derive(Debug, Args)]
struct UrlArgs {
    /// `play` or `publish`.
    #[arg(value_parser = ["play", "publish"])]
    op: String,
    #[command(flatten)]
    data: DataArg,
    /// Device UID (or source id).
    #[arg(long)]
    uid: String,
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
        PkiCommand::Status { data } => {
            let pki = pki::Pki::open(&data.data)?;
            println!(
                "{:<18} {:<42} {:<22} {:>9}",
                "CERTIFICATE", "SERIAL", "NOT AFTER", "DAYS LEFT"
            );
            for cert in pki.status() {
                println!(
                    "{:<18} {:<42} {:<22} {:>9}",
                    cert.name,
                    cert.serial_hex,
                    signal::clock::format_unix_time(u64::try_from(cert.not_after).unwrap_or(0)),
                    cert.days_left
                );
            }
            let store = match signal::store::Store::open(&data.data) {
                Ok(store) => Some(store),
                Err(signal::store::StoreError::Locked { .. }) => {
                    println!(
                        "(device certificates not listed: the store is in use by a running server)"
                    );
                    None
                }
                Err(e) => return Err(e.into()),
            };
            if let Some(store) = store {
                let now = signal::clock::unix_now();
                for device in store.devices()? {
                    for cert in device.certs.iter().filter(|c| !c.revoked) {
                        let days_left = (cert.not_after as i64 - now as i64).div_euclid(86_400);
                        println!(
                            "{:<18} {:<42} {:<22} {:>9}",
                            format!("device {}", device.uid),
                            cert.serial,
                            signal::clock::format_unix_time(cert.not_after),
                            days_left
                        );
                    }
                }
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
                    let url = format!("{}/v1.0/devices/{uid}", api.trim_end_matches('/'));
                    let status = std::process::Command::new("curl")
                        .args(["-sS", "--fail-with-body", "-X", "DELETE", &url])
                        .status()
                        .context("running curl to reach the server's client API")?;
                    if !status.success() {
                        bail!("the running server refused the revocation ({url})");
                    }
                    println!("\nrevoked {uid} through the running server");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

fn url_command(args: UrlArgs) -> anyhow::Result<()> {
    let config = signal::config::Config::load(args.config.as_deref())?;
    // The same check the RTSP server applies to the stream a URL names.
    let kind: relay::stream_key::StreamKind = args
        .stream
        .parse()
        .map_err(|e| anyhow::anyhow!("--stream: {e:?}"))?;
    relay::stream_key::StreamKey::new(args.uid.clone(), args.channel, kind)
        .map_err(|e| anyhow::anyhow!("not a stream this server can serve: {e}"))?;
    let secrets = signal::secrets::Secrets::open_or_create(&args.data.data)?;
    let signer = signal::tokens::TokenSigner::new(secrets.token_key);
    let op = if args.op == "play" {
        signal::tokens::TokenOp::Play
    } else {
        signal::tokens::TokenOp::Publish
    };
    let grant = signal::tokens::StreamGrant {
        uid: args.uid,
        channel: args.channel,
        stream_type: args.stream,
        op,
        exp: signal::clock::unix_now() + args.ttl.as_secs().max(1),
    };
    let (scheme, default_port) = if args.tls {
        ("rtsps", config.listen.rtsps.port())
    } else {
        ("rtsp", config.listen.rtsp.port())
    };
    let host = args.host.unwrap_or(config.hostname);
    println!(
        "{}",
        signer.sign_url(scheme, &host, args.port.unwrap_or(default_port), &grant)
    );
    Ok(())
}
