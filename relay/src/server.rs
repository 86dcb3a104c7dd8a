//! `relay serve`: prepares the data directory (PKI, secrets, store), binds every listener and
//! runs the control plane and the shards until shut down.
//!
//! The control plane (provisioning ports, client API, certificate and CRL watchers) runs on
//! its own executor thread: its work is rare and may block on the store's fsync, which must not
//! stall fan-out on a shard. Tests start a server in-process with [`start`] on ephemeral ports.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use rt::{Shutdown, TcpListener};
use signal::api::{ControlPlane, Port, PortHandler};
use signal::config::Config;
use signal::http_server::{serve_connection_until, ConnInfo, ServerConfig as HttpConfig};
use signal::metrics::TlsPort;
use signal::provisioning::{DeviceEndpoints, Provisioning, ProvisioningSettings};
use tracing::{debug, info, warn};

/// How long a TLS client has to finish its handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the CRL and the server certificate files are checked for changes made by another
/// process (`relay pki revoke`, an operator's renewal).
const PKI_WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How often certificate expiry is checked (renewal, warnings).
const EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// The addresses the listeners actually bound (differs from the configuration when it asks for
/// port 0).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundAddrs {
    /// CA download (61000).
    pub ca: SocketAddr,
    /// Device credentials (61001).
    pub credentials: SocketAddr,
    /// Registration, mutual TLS (61002).
    pub registration: SocketAddr,
    /// Client API, HTTP (61009).
    pub api: SocketAddr,
    /// Client API, HTTPS (61010), when enabled.
    pub api_tls: Option<SocketAddr>,
    /// RTSP (61008), bound by every shard.
    pub rtsp: SocketAddr,
    /// RTSPS (61004, server TLS with the server certificate), bound by every shard.
    pub rtsps: SocketAddr,
    /// Device keep-alive, encryptTCP (61003), bound by every shard.
    pub keepalive: SocketAddr,
    /// Device signalling, mutual TLS (61005), bound by every shard.
    pub signaling: SocketAddr,
    /// Device streams, mutual TLS (61006), bound by every shard.
    pub stream_tls: SocketAddr,
    /// Device streams, encryptTCP / TCP (61007), bound by every shard.
    pub stream_tcp: SocketAddr,
}

/// A server started by [`start`].
pub struct RunningServer {
    /// Where it listens.
    pub addrs: BoundAddrs,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The PKI (tests read the CA from it).
    pub pki: Arc<pki::Pki>,
    shutdown: Shutdown,
    control: Option<std::thread::JoinHandle<()>>,
    shards: Option<rt::shard::RunningShards<()>>,
    /// Closed by `stop()`, so the data directory can be opened again at once.
    store: Arc<signal::store::Store>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// Blocks until the server stops.
    pub fn wait(mut self) {
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
        self.join_shards();
    }

    fn join_shards(&mut self) {
        if let Some(shards) = self.shards.take() {
            if let Err(e) = shards.join() {
                tracing::error!("data plane: {e}");
            }
        }
    }

    /// Stops accepting, finishes requests in progress and waits for every thread.
    pub fn stop(mut self) {
        self.shutdown.trigger();
        if let Some(control) = self.control.take() {
            let _ = control.join();
        }
        self.join_shards();
        self.store.close();
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

/// Runs the server in the foreground until it is killed.
pub fn serve(config: Config, data_dir: &Path) -> anyhow::Result<()> {
    let server = start(config, data_dir)?;
    server.wait();
    Ok(())
}

/// Prepares `data_dir`, binds every listener and starts serving; returns once everything
/// listens.
pub fn start(config: Config, data_dir: &Path) -> anyhow::Result<RunningServer> {
    config.validate()?;
    match rt::raise_fd_limit() {
        Ok((soft, hard)) => info!(soft, hard, "file descriptor limit"),
        Err(e) => warn!("could not raise the file descriptor limit: {e}"),
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("creating the data directory {}", data_dir.display()))?;
    let hosts = config.certificate_host_list();
    // open_or_init logs what it created.
    let (pki, _created) = pki::Pki::open_or_init(data_dir, &hosts)?;
    let root_ca = &pki.paths().root_cert;
    // Absolute: the operator copies it from the log, whatever the working directory was.
    let root_ca = std::fs::canonicalize(root_ca).unwrap_or_else(|_| root_ca.clone());
    info!(
        root_ca = %root_ca.display(),
        sha256 = %pki.root_fingerprint_sha256(),
        "root CA (devices check it against caHash)"
    );
    let secrets_dir = data_dir.join("secrets");
    let secrets_existed = secrets_dir.join("token.key").exists();
    let secrets = signal::secrets::Secrets::open_or_create(data_dir)?;
    if secrets_existed {
        info!(dir = %secrets_dir.display(), "secrets loaded");
    } else {
        info!(dir = %secrets_dir.display(), "secrets created (URL token key, code signing key, device keys, API token, webhook key)");
    }
    let token_key = secrets.token_key;
    let store_path = data_dir.join("store.redb");
    let store_existed = store_path.exists();
    let store = signal::store::Store::open(data_dir)?;
    if store_existed {
        info!(path = %store_path.display(), "store opened");
    } else {
        info!(path = %store_path.display(), "store created (devices, codes, certificates, revocations, access keys)");
    }
    let pki = Arc::new(pki);
    let store = Arc::new(store);
    let store_handle = store.clone();
    signal::provisioning::publish_crl(&pki, &store)?;
    // At once, not an hour from now: a server restarted with a due or expired certificate
    // must not keep serving it.
    check_expiry(&pki, &store);

    let shutdown = Shutdown::new();
    let shard_count = config.shards.unwrap_or_else(|| {
        rt::shard::allowed_cpus()
            .map(|cpus| cpus.len())
            .unwrap_or(1)
            .max(1)
    });
    let rtsp_listen = crate::shard::RtspListen {
        addrs: crate::shard::RtspAddrs {
            rtsp: config.listen.rtsp,
            rtsps: Some(config.listen.rtsps),
        },
        tls: Some(pki.server_config()),
        tls_handshake_timeout: TLS_HANDSHAKE_TIMEOUT,
    };
    // One alarm queue for the whole process: the device shards enqueue into it and the webhook
    // sender must use this same instance (its wake-up and metrics live in it).
    let alarm_queue = signal::alarms::AlarmQueue::open(
        store.clone(),
        signal::alarms::QueueSettings::from_config(&config),
        Arc::new(signal::alarms::AlarmMetrics::default()),
    )?;
    let device_settings = crate::device::DeviceSettings {
        keepalive: config.listen.keepalive,
        signalling: config.listen.signaling,
        session: Arc::new(crate::device::DeviceSettings::session_config(&config)),
        device_keys: secrets.device_keys.clone(),
        mtls: pki.mtls_config(),
        is_revoked: Some({
            let store = store.clone();
            Arc::new(move |uid: &str| {
                // Unknown to the store, or revoked: the access key must not keep a link open.
                !matches!(store.device(uid), Ok(Some(device)) if !device.revoked)
            })
        }),
        is_known: Some({
            let store = store.clone();
            Arc::new(move |uid: &str| matches!(store.device(uid), Ok(Some(_))))
        }),
        sweep_interval: Duration::from_secs(1),
        alarms: Some(alarm_queue.clone()),
    };
    // The webhook sender runs on the control plane and drains the same queue.
    let alarm_delivery = signal::alarms::AlarmDelivery::from_config(
        alarm_queue.clone(),
        &config,
        &secrets,
        signal::alarms::DeliverySettings {
            max_in_flight: config.alarm_webhook_max_in_flight,
            ..signal::alarms::DeliverySettings::default()
        },
    )?;
    let (streams_ready_tx, streams_ready) = std::sync::mpsc::channel();
    let streams = crate::stream_conn::StreamWiring {
        settings: crate::stream_conn::StreamSettings {
            tls: config.listen.stream_tls,
            tcp: config.listen.stream_tcp,
            mtls: pki.mtls_config(),
            device_keys: secrets.device_keys.clone(),
            policy: crate::ingest::IngestPolicy {
                verify_hmac: config.stream.verify_hmac,
                verify_sequence: config.stream.verify_sequence,
                bind_access_key_to_uid: config.stream.bind_access_key_to_uid,
            },
            rtp_max_payload: config.stream.rtp_max_payload,
            mode: crate::stream_conn::stream_mode(config.stream_encrypt_mode),
            start_timeout: Duration::from_secs(config.device.stream_start_timeout_secs),
            linger: Duration::from_secs(config.device.stream_linger_secs),
            wait_for_rtsp_publisher: config.device.wait_for_rtsp_publisher,
            handshake_timeout: Duration::from_secs(config.device.handshake_timeout_secs),
            media_timeout: Duration::from_secs(config.device.stream_media_timeout_secs),
            grace: Duration::from_secs(config.device.stream_grace_secs),
        },
        ready: streams_ready_tx,
    };
    // The control plane's catalog and one command queue per shard: the sources of the file and
    // the store are sent to their owner shards now and wait in the queues until the shards run.
    let (pulls, sources) =
        crate::pull::PullWiring::new(crate::pull::PullSettings::from_config(&config), shard_count);
    load_sources(&config, &store, &sources)?;
    let (devices, directory, devices_ready) =
        crate::device::DeviceWiring::new(device_settings, shard_count);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let advertised = Arc::new(signal::api::AdvertisedPorts::default());
    // One set of connection limits for every port of every thread (installed per thread).
    let limits = signal::limits::ConnectionLimits::new(config.limits.clone());
    let firmware_dir = data_dir.join("firmware");
    let control = {
        let pki = pki.clone();
        let advertised = advertised.clone();
        let shutdown = shutdown.clone();
        let limits = limits.clone();
        std::thread::Builder::new()
            .name("control".into())
            .spawn(move || {
                let result = rt::block_on_shard(move || {
                    signal::limits::install(limits);
                    async move {
                        run_control_plane(
                            ControlPlaneParts {
                                config,
                                pki,
                                store,
                                secrets,
                                directory,
                                alarm_delivery,
                                advertised,
                                sources,
                                firmware_dir,
                            },
                            shutdown,
                            ready_tx,
                        )
                        .await
                    }
                });
                if let Err(e) = result {
                    tracing::error!("control plane stopped: {e}");
                }
            })
            .context("starting the control plane thread")?
    };
    let mut addrs = ready_rx
        .recv()
        .context("the control plane stopped before it listened")??;
    let started = start_shards(
        shard_count,
        rtsp_listen,
        token_key,
        devices,
        devices_ready,
        (streams, streams_ready),
        pulls,
        &shutdown,
        limits,
    );
    let (shards, rtsp, (keepalive, signaling), (stream_tls, stream_tcp)) = match started {
        Ok(started) => started,
        Err(e) => {
            shutdown.trigger();
            let _ = control.join();
            return Err(e);
        }
    };
    addrs.rtsp = rtsp.rtsp;
    advertised.set_rtsp(rtsp.rtsp.port());
    if let Some(rtsps) = rtsp.rtsps {
        addrs.rtsps = rtsps;
        advertised.set_rtsps(rtsps.port());
    }
    addrs.keepalive = keepalive;
    addrs.signaling = signaling;
    advertised.set_device_links(keepalive.port(), signaling.port());
    addrs.stream_tls = stream_tls;
    addrs.stream_tcp = stream_tcp;
    info!(
        rtsp = %addrs.rtsp,
        rtsps = %addrs.rtsps,
        keepalive = %addrs.keepalive,
        signaling = %addrs.signaling,
        stream_tls = %addrs.stream_tls,
        stream_tcp = %addrs.stream_tcp,
        ca = %addrs.ca,
        credentials = %addrs.credentials,
        registration = %addrs.registration,
        api = %addrs.api,
        api_tls = ?addrs.api_tls,
        data = %data_dir.display(),
        "listening"
    );
    Ok(RunningServer {
        addrs,
        data_dir: data_dir.to_owned(),
        pki,
        shutdown,
        control: Some(control),
        shards: Some(shards),
        store: store_handle,
    })
}

/// Puts the pull sources of the config file, then those added through the API (kept in the
/// store), in the control plane's directory, which tells each owner shard. A stored source whose
/// UID the file also declares is shadowed by the file's.
fn load_sources(
    config: &Config,
    store: &signal::store::Store,
    directory: &signal::sources::SourceDirectory,
) -> anyhow::Result<()> {
    use signal::sources::SourceOrigin;
    for source in &config.sources {
        directory.insert(source.clone(), SourceOrigin::Config);
    }
    for source in store
        .sources()
        .context("reading the pull sources from the store")?
    {
        if directory.contains(&source.uid) {
            warn!(source = %source.uid, "stored pull source shadowed by the config file's");
            continue;
        }
        if let Err(e) = source.validate() {
            warn!(source = %source.uid, "stored pull source ignored: {e}");
            continue;
        }
        if !directory.insert(source, SourceOrigin::Api) {
            warn!("more stored pull sources than the server accepts: the rest are ignored");
            break;
        }
    }
    if !directory.is_empty() {
        info!(sources = directory.len(), "pull sources");
    }
    Ok(())
}

/// The bound (keep-alive, signalling) addresses of the device links.
type DeviceAddrs = (SocketAddr, SocketAddr);

/// Starts the data-plane shards and waits until each listens on the RTSP and device ports.
#[allow(clippy::too_many_arguments)]
fn start_shards(
    count: usize,
    rtsp_listen: crate::shard::RtspListen,
    token_key: [u8; 32],
    devices: crate::device::DeviceWiring,
    devices_ready: std::sync::mpsc::Receiver<Result<DeviceAddrs, String>>,
    (streams, streams_ready): (
        crate::stream_conn::StreamWiring,
        std::sync::mpsc::Receiver<Result<DeviceAddrs, String>>,
    ),
    pulls: crate::pull::PullWiring,
    shutdown: &Shutdown,
    limits: Arc<signal::limits::ConnectionLimits>,
) -> anyhow::Result<(
    rt::shard::RunningShards<()>,
    crate::shard::RtspAddrs,
    DeviceAddrs,
    DeviceAddrs,
)> {
    let mesh = rt::Mesh::new(count, 256);
    let mut settings = crate::shard::ShardSettings::default();
    // One grace for every stream whose source went away: devices, RTSP publishers, pulls.
    settings.hub.publisher_grace = streams.settings.grace;
    let signer = signal::tokens::TokenSigner::new(token_key);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let running = rt::ShardPool::new(count)
        .name("shard")
        .with_shutdown(shutdown.clone())
        .start(move |ctx| {
            signal::limits::install(limits.clone());
            crate::shard::run(
                ctx,
                mesh.clone(),
                settings,
                signer.clone(),
                rtsp_listen.clone(),
                ready_tx.clone(),
                Some(devices.clone()),
                Some(streams.clone()),
                Some(pulls.clone()),
            )
        })
        .context("starting the shards")?;
    let ready = (|| {
        let bound = await_shards(&ready_rx, count, "the RTSP ports")?;
        let device_addrs = await_shards(&devices_ready, count, "the device ports")?;
        let stream_addrs = await_shards(&streams_ready, count, "the stream ports")?;
        anyhow::Ok((bound, device_addrs, stream_addrs))
    })();
    match ready {
        Ok((bound, device_addrs, stream_addrs)) => Ok((running, bound, device_addrs, stream_addrs)),
        Err(e) => {
            shutdown.trigger();
            let _ = running.join();
            Err(e)
        }
    }
}

/// Waits until each of `count` shards reported that it listens on `what`; returns the address
/// the last one reported (they all bind the same).
fn await_shards<T, E: std::fmt::Display>(
    ready: &std::sync::mpsc::Receiver<Result<T, E>>,
    count: usize,
    what: &str,
) -> anyhow::Result<T> {
    let mut bound = None;
    for _ in 0..count {
        match ready.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(addr)) => bound = Some(addr),
            Ok(Err(e)) => anyhow::bail!("{e}"),
            Err(_) => anyhow::bail!("the shards did not start listening on {what}"),
        }
    }
    bound.with_context(|| format!("no shard reported its address for {what}"))
}

/// What the control plane thread is built from.
struct ControlPlaneParts {
    config: Config,
    pki: Arc<pki::Pki>,
    store: Arc<signal::store::Store>,
    secrets: signal::secrets::Secrets,
    directory: signal::devices::DeviceDirectory,
    alarm_delivery: signal::alarms::AlarmDelivery,
    advertised: Arc<signal::api::AdvertisedPorts>,
    sources: signal::sources::SourceDirectory,
    firmware_dir: PathBuf,
}

async fn run_control_plane(
    parts: ControlPlaneParts,
    shutdown: Shutdown,
    ready: std::sync::mpsc::Sender<anyhow::Result<BoundAddrs>>,
) {
    let ControlPlaneParts {
        config,
        pki,
        store,
        secrets,
        directory,
        alarm_delivery,
        advertised,
        sources,
        firmware_dir,
    } = parts;
    let bind = |what: &str, addr: SocketAddr| {
        TcpListener::bind(addr).with_context(|| format!("binding the {what} listener on {addr}"))
    };
    let listeners = (|| {
        let ca = bind("CA download", config.listen.ca)?;
        let credentials = bind("device credentials", config.listen.credentials)?;
        let registration = bind("device registration", config.listen.registration)?;
        let api = bind("client API", config.listen.api)?;
        let api_tls = if config.api.https {
            Some(bind("client API (HTTPS)", config.listen.api_tls)?)
        } else {
            None
        };
        anyhow::Ok((ca, credentials, registration, api, api_tls))
    })();
    let (ca, credentials, registration, api, api_tls) = match listeners {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let local = |l: &TcpListener| l.local_addr().unwrap_or(config.listen.api);
    let addrs = BoundAddrs {
        ca: local(&ca),
        credentials: local(&credentials),
        registration: local(&registration),
        api: local(&api),
        api_tls: api_tls.as_ref().map(local),
        // Filled in by `start` once the shards listen.
        rtsp: config.listen.rtsp,
        rtsps: config.listen.rtsps,
        keepalive: config.listen.keepalive,
        signaling: config.listen.signaling,
        stream_tls: config.listen.stream_tls,
        stream_tcp: config.listen.stream_tcp,
    };
    let endpoints = DeviceEndpoints {
        host: config.hostname.clone(),
        ca_port: addrs.ca.port(),
        credentials_port: addrs.credentials.port(),
        registration_port: addrs.registration.port(),
        keepalive_port: config.listen.keepalive.port(),
        signaling_port: config.listen.signaling.port(),
    };
    let settings = ProvisioningSettings {
        endpoints,
        code_ttl_secs: config.provisioning.code_ttl_secs,
        device_cert_days: config.provisioning.device_cert_days,
        heartbeat_interval_secs: config.provisioning.heartbeat_interval_secs,
    };
    let provisioning = Provisioning::new(pki.clone(), store.clone(), &secrets, settings);
    let crl_publisher = provisioning.crl_publisher();
    let watched_store = store.clone();
    let api_token =
        (config.api.auth == signal::config::ApiAuth::Token).then(|| secrets.api_token.clone());
    let alarm_metrics = Some(alarm_delivery.queue().metrics().clone());
    let firmware =
        signal::firmware::FirmwareStore::new(firmware_dir, config.api.firmware_max_bytes);
    let upgrades = match signal::upgrade::UpgradeSessions::open(
        store.clone(),
        signal::upgrade::UpgradeSettings::from_config(&config.upgrade),
        signal::alarms::unix_now_ms(),
    ) {
        Ok(upgrades) => Arc::new(upgrades),
        Err(e) => {
            let _ = ready.send(Err(anyhow::anyhow!(
                "opening the firmware upgrade sessions: {e}"
            )));
            return;
        }
    };
    let alarm_sender = rt::spawn_local(alarm_delivery.run(shutdown.clone()));
    let plane = Arc::new(ControlPlane {
        alarm_metrics,
        config,
        pki: pki.clone(),
        store,
        provisioning,
        tokens: signal::tokens::TokenSigner::new(secrets.token_key),
        api_token,
        on_revoke: {
            let directory = directory.clone();
            Box::new(move |uid| {
                info!(uid, "device revoked");
                // Close its open links at once; new ones are refused by the CRL (signalling)
                // and the store check (keep-alive).
                if let Err(e) = directory.close_now(uid, "device revoked") {
                    warn!(uid, "could not close the revoked device's links: {e}");
                }
            })
        },
        devices: Some(directory),
        advertised,
        wifi_scans: Default::default(),
        firmware,
        upgrades,
        tls_failures: Default::default(),
        sources,
    });
    let http = Rc::new(HttpConfig::default());
    let server_tls = pki.server_config();
    let mtls = pki.mtls_config();
    let handler = |port| {
        Rc::new(PortHandler {
            plane: plane.clone(),
            port,
        })
    };
    let mut tasks = vec![
        rt::spawn_local(accept_http(
            ca,
            handler(Port::Ca),
            Some(server_tls.clone()),
            http.clone(),
            shutdown.clone(),
        )),
        rt::spawn_local(accept_http(
            credentials,
            handler(Port::Credentials),
            Some(server_tls.clone()),
            http.clone(),
            shutdown.clone(),
        )),
        rt::spawn_local(accept_http(
            registration,
            handler(Port::Registration),
            Some(mtls),
            http.clone(),
            shutdown.clone(),
        )),
        rt::spawn_local(accept_http(
            api,
            handler(Port::Client),
            None,
            http.clone(),
            shutdown.clone(),
        )),
    ];
    if let Some(api_tls) = api_tls {
        tasks.push(rt::spawn_local(accept_http(
            api_tls,
            handler(Port::Client),
            Some(server_tls),
            http.clone(),
            shutdown.clone(),
        )));
    }
    let _ = ready.send(Ok(addrs));
    let watcher = rt::spawn_local(watch_pki(
        pki,
        watched_store,
        crl_publisher,
        shutdown.clone(),
    ));
    shutdown.wait().await;
    for task in tasks {
        task.await;
    }
    // The sender holds the store: it must be gone before `stop()` returns, so that the data
    // directory can be opened again (a restart, `relay pki revoke`).
    alarm_sender.await;
    watcher.cancel().await;
}

/// Accepts connections on `listener` and serves HTTP on each (over TLS when `tls` is given;
/// with a client certificate, the device UID reaches the handler in [`ConnInfo::client_uid`]).
async fn accept_http(
    listener: TcpListener,
    handler: Rc<PortHandler>,
    tls: Option<Arc<rustls::ServerConfig>>,
    http: Rc<HttpConfig>,
    shutdown: Shutdown,
) {
    let local = listener.local_addr().ok();
    let open = Rc::new(OpenConnections::default());
    while let Some(accepted) = listener.accept_until(&shutdown).await {
        let stream = match accepted {
            Ok(stream) => stream,
            Err(e) => {
                warn!(?local, "accept failed: {e}");
                rt::timer::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let listener = if tls.is_some() { "https" } else { "http" };
        let admitted = match stream.peer_addr() {
            Ok(peer) => signal::limits::admit(listener, peer.ip()),
            Err(_) => Ok(None),
        };
        // Refused: counted by the limits; dropping the stream closes it.
        let Ok(permit) = admitted else {
            continue;
        };
        let (handler, tls, http, shutdown) =
            (handler.clone(), tls.clone(), http.clone(), shutdown.clone());
        let guard = open.enter();
        rt::spawn_detached(async move {
            let _guard = guard;
            let _permit = permit;
            let (Ok(peer), Ok(local)) = (stream.peer_addr(), stream.local_addr()) else {
                return;
            };
            let mut info = ConnInfo {
                peer,
                local,
                tls: tls.is_some(),
                client_uid: None,
            };
            let result = match tls {
                None => {
                    serve_connection_until(stream, &*handler, info, &http, shutdown.wait()).await
                }
                Some(config) => {
                    let handshake = rt::tls::accept(stream, config, TLS_HANDSHAKE_TIMEOUT);
                    let Some(handshake) = shutdown.until(handshake).await else {
                        return;
                    };
                    match handshake {
                        Ok(tls) => {
                            info.client_uid = tls.peer_certificates().and_then(pki::peer_uid);
                            serve_connection_until(tls, &*handler, info, &http, shutdown.wait())
                                .await
                        }
                        Err(e) => {
                            let port = match handler.port {
                                Port::Ca => TlsPort::Ca,
                                Port::Credentials => TlsPort::Credentials,
                                Port::Registration => TlsPort::Registration,
                                Port::Client => TlsPort::ApiTls,
                            };
                            handler.plane.record_tls_failure(port, &e);
                            debug!(%peer, %local, "TLS handshake failed: {e}");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = result {
                debug!(%peer, "HTTP connection ended: {e}");
            }
        });
    }
    // Every connection task ends on shutdown; wait for them so that none outlives the
    // executor (a task left behind would keep the control plane, and the store, alive).
    let _ = rt::timer::timeout(SHUTDOWN_DRAIN_TIMEOUT, open.drained()).await;
}

/// How long shutdown waits for connection tasks to finish their current request.
const SHUTDOWN_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Counts the connection tasks of one listener, so that shutdown can wait for them.
#[derive(Default)]
struct OpenConnections {
    count: std::cell::Cell<usize>,
    idle: crate::hub::LocalNotify,
}

/// Held by one connection task; leaving decrements the count.
struct OpenConnection(Rc<OpenConnections>);

impl OpenConnections {
    fn enter(self: &Rc<Self>) -> OpenConnection {
        self.count.set(self.count.get() + 1);
        OpenConnection(self.clone())
    }

    async fn drained(&self) {
        while self.count.get() > 0 {
            self.idle.notified().await;
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.count.set(self.0.count.get() - 1);
        if self.0.count.get() == 0 {
            self.0.idle.notify();
        }
    }
}

/// Publishes revocations left pending by enrolments, reloads the CRL and the server certificate
/// when another process changed them, renews the server certificate when it is due, and warns
/// about certificates close to expiry.
async fn watch_pki(
    pki: Arc<pki::Pki>,
    store: Arc<signal::store::Store>,
    crl: Arc<signal::provisioning::CrlPublisher>,
    shutdown: Shutdown,
) {
    let mut since_expiry_check = Duration::ZERO;
    while !shutdown.is_triggered() {
        rt::timer::sleep(PKI_WATCH_INTERVAL).await;
        if let Err(e) = crl.publish_pending() {
            warn!("CRL with the latest revocations not published (retried in a second): {e}");
        }
        match pki.reload_crl_if_changed() {
            Ok(true) => info!("CRL reloaded"),
            Ok(false) => {}
            Err(e) => warn!("CRL not reloaded, the previous one stays in force: {e}"),
        }
        let reloaded = match pki.reload_server_cert_if_changed() {
            Ok(true) => {
                info!("server certificate reloaded");
                true
            }
            Ok(false) => false,
            Err(e) => {
                warn!("server certificate not reloaded: {e}");
                false
            }
        };
        since_expiry_check += PKI_WATCH_INTERVAL;
        // A certificate put in place by an operator is checked at once too: one that is
        // already due is renewed now rather than at the next hourly check.
        if reloaded || since_expiry_check >= EXPIRY_CHECK_INTERVAL {
            since_expiry_check = Duration::ZERO;
            check_expiry(&pki, &store);
        }
    }
}

/// Renews the server certificate when it is due (new handshakes get the new one, open
/// connections keep theirs), and warns about every certificate in force within
/// [`signal::provisioning::EXPIRY_WARNING_DAYS`] of expiry: the hierarchy's and the devices'.
fn check_expiry(pki: &pki::Pki, store: &signal::store::Store) {
    match pki.renew_server_if_due(SystemTime::now()) {
        Ok(Some(status)) => {
            info!(serial = %status.serial_hex, days_left = status.days_left, "server certificate was due and is renewed")
        }
        Ok(None) => {}
        Err(e) => warn!("server certificate renewal failed: {e}"),
    }
    let warn_days = signal::provisioning::EXPIRY_WARNING_DAYS;
    for cert in pki.status() {
        if cert.days_left < warn_days {
            warn!(certificate = cert.name, serial = %cert.serial_hex, days_left = cert.days_left, "certificate expires soon");
        }
    }
    match signal::provisioning::device_cert_status(store, signal::clock::unix_now()) {
        Ok(certs) => {
            for cert in certs.iter().filter(|c| c.days_left < warn_days) {
                warn!(uid = %cert.uid, serial = %cert.serial, days_left = cert.days_left, "device certificate expires soon (the device fetches a new one with its long-term code)");
            }
        }
        Err(e) => warn!("device certificates not checked for expiry: {e}"),
    }
}
