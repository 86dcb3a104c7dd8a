//! Counters of the media path and of TLS handshakes, as plain data the shards own and the
//! control plane renders on `/metrics`. A shard keeps its [`MediaStats`] in its own cells (no
//! atomics, no lock: everything on a shard runs on one thread) and hands a copy to the control
//! plane inside its answer to [`crate::devices::DeviceCommand::Stats`], one message per shard per
//! scrape; the control plane keeps its own [`TlsFailures`] for the HTTPS ports it serves. The
//! types live here, below both, because the control plane cannot depend on the data plane.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use rt::tls::TlsError;

/// A TLS listener, by its role. The label is the platform's port number for that role (stable
/// across deployments that move the port, and across tests that bind port 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TlsPort {
    /// 61000: CA download.
    Ca,
    /// 61001: device credentials.
    Credentials,
    /// 61002: device registration (mutual TLS).
    Registration,
    /// 61004: RTSP over TLS.
    Rtsps,
    /// 61005: device signalling links (mutual TLS).
    Signalling,
    /// 61006: device streams (mutual TLS).
    StreamTls,
    /// 61010: the client API over HTTPS.
    ApiTls,
}

impl TlsPort {
    /// The platform's port number of this role.
    pub fn number(self) -> u16 {
        match self {
            TlsPort::Ca => 61000,
            TlsPort::Credentials => 61001,
            TlsPort::Registration => 61002,
            TlsPort::Rtsps => 61004,
            TlsPort::Signalling => 61005,
            TlsPort::StreamTls => 61006,
            TlsPort::ApiTls => 61010,
        }
    }

    /// The role's name, the `listener` label.
    pub fn name(self) -> &'static str {
        match self {
            TlsPort::Ca => "ca",
            TlsPort::Credentials => "credentials",
            TlsPort::Registration => "registration",
            TlsPort::Rtsps => "rtsps",
            TlsPort::Signalling => "signalling",
            TlsPort::StreamTls => "stream_tls",
            TlsPort::ApiTls => "api_tls",
        }
    }
}

/// A short, stable label of a failed TLS handshake.
pub fn tls_failure_reason(e: &TlsError) -> &'static str {
    use rustls::{CertificateError, Error};
    match e {
        TlsError::Handshake { source, .. } => match source {
            Error::NoCertificatesPresented => "no_certificate",
            Error::InvalidCertificate(cert) => match cert {
                CertificateError::Revoked => "revoked",
                CertificateError::Expired => "expired",
                CertificateError::UnknownIssuer => "unknown_issuer",
                CertificateError::BadSignature => "bad_signature",
                _ => "invalid_certificate",
            },
            Error::PeerIncompatible(_) => "incompatible",
            Error::AlertReceived(_) => "alert_received",
            Error::InvalidMessage(_)
            | Error::InappropriateMessage { .. }
            | Error::InappropriateHandshakeMessage { .. } => "invalid_message",
            _ => "handshake_error",
        },
        TlsError::ClosedDuringHandshake { .. } => "closed",
        TlsError::Timeout { .. } => "timeout",
        TlsError::Io { .. } => "io",
        _ => "other",
    }
}

/// Failed TLS handshakes by port and reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFailures(BTreeMap<(TlsPort, &'static str), u64>);

impl TlsFailures {
    /// Counts one failure on `port`; `reason` from [`tls_failure_reason`], or a label of a
    /// check made after the handshake (`no_device_uid`).
    pub fn record(&mut self, port: TlsPort, reason: &'static str) {
        *self.0.entry((port, reason)).or_default() += 1;
    }

    /// Counts one failed handshake on `port`.
    pub fn record_error(&mut self, port: TlsPort, e: &TlsError) {
        self.record(port, tls_failure_reason(e));
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &TlsFailures) {
        for (key, n) in &other.0 {
            *self.0.entry(*key).or_default() += n;
        }
    }

    /// Failures counted on `port` for `reason`.
    pub fn get(&self, port: TlsPort, reason: &str) -> u64 {
        self.0
            .iter()
            .filter(|((p, r), _)| *p == port && *r == reason)
            .map(|(_, n)| n)
            .sum()
    }

    /// Prometheus text of the family `rop_tls_handshake_failures_total`.
    pub fn render_prometheus(&self, out: &mut String) {
        out.push_str("# HELP rop_tls_handshake_failures_total TLS handshakes that failed (or presented no device identity), by listener and reason.\n# TYPE rop_tls_handshake_failures_total counter\n");
        for ((port, reason), n) in &self.0 {
            let _ = writeln!(
                out,
                "rop_tls_handshake_failures_total{{port=\"{}\",listener=\"{}\",reason=\"{reason}\"}} {n}",
                port.number(),
                port.name()
            );
        }
    }
}

/// How media reaches a stream, the `mode` label of bytes received.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IngestMode {
    /// A device on 61006 (TLS plaintext bytes).
    Tls,
    /// A device on 61007 asked for encryptTCP.
    EncryptTcp,
    /// A device on 61007 asked for plain TCP.
    Tcp,
    /// An RTSP publisher (ANNOUNCE/RECORD).
    RtspPublish,
    /// A pull source (the relay's RTSP client), media mode.
    Pull,
}

impl IngestMode {
    /// Every mode, in label order.
    pub const ALL: [IngestMode; 5] = [
        IngestMode::Tls,
        IngestMode::EncryptTcp,
        IngestMode::Tcp,
        IngestMode::RtspPublish,
        IngestMode::Pull,
    ];

    /// The `mode` label.
    pub fn label(self) -> &'static str {
        match self {
            IngestMode::Tls => "tls",
            IngestMode::EncryptTcp => "encrypt_tcp",
            IngestMode::Tcp => "tcp",
            IngestMode::RtspPublish => "rtsp_publish",
            IngestMode::Pull => "pull",
        }
    }

    fn index(self) -> usize {
        match self {
            IngestMode::Tls => 0,
            IngestMode::EncryptTcp => 1,
            IngestMode::Tcp => 2,
            IngestMode::RtspPublish => 3,
            IngestMode::Pull => 4,
        }
    }
}

/// What one shard (or all, merged) did with media.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MediaStats {
    /// Streams with a publisher attached now.
    pub streams_live: u64,
    /// Streams whose publisher left and that wait for it (grace period).
    pub streams_waiting: u64,
    /// Viewers attached now.
    pub viewers: u64,
    /// Bytes received from publishers, by [`IngestMode`] (index order of `IngestMode::ALL`).
    pub bytes_in: [u64; 5],
    /// Bytes written to viewers, interleaved headers included.
    pub bytes_out: u64,
    /// Packets slow viewers skipped.
    pub packets_dropped: u64,
    /// Access units slow viewers skipped.
    pub frames_dropped: u64,
    /// Viewers evicted for being too slow.
    pub viewers_evicted: u64,
    /// Device stream ingest rejections by reason (bad_hmac, bad_sequence, uid_mismatch, …).
    pub ingest_rejections: BTreeMap<&'static str, u64>,
    /// Device stream resynchronisations after lost or rejected bytes.
    pub ingest_resyncs: u64,
    /// Previews started on demand (preview start 3 accepted by the device).
    pub previews_started: u64,
    /// Previews the device refused or did not answer.
    pub previews_refused: u64,
    /// Previews stopped after nobody watched for the linger time.
    pub previews_stopped: u64,
    /// Previews forgotten because the device never connected its stream.
    pub previews_abandoned: u64,
    /// Watched previews whose stream connection ended without preview stop (the device closed
    /// it, the connection broke or went silent): the device is asked for the stream again.
    pub previews_interrupted: u64,
    /// Interrupted previews a new stream connection continued for their viewers.
    pub previews_resumed: u64,
    /// Failed TLS handshakes on the shard's TLS ports.
    pub tls_failures: TlsFailures,
    /// RTSP and RTSPS connections the shard's listeners accepted.
    pub rtsp_accepted: u64,
    /// RTSP connections handed to the shard that owns their stream.
    pub rtsp_handed_off: u64,
    /// RTSP connections received from another shard.
    pub rtsp_received: u64,
    /// RTP packets of pull sources over UDP that never arrived (gaps in the sequence numbers;
    /// late and reordered packets are relayed as they come and not counted here).
    pub pull_udp_lost: u64,
    /// Datagrams on a pull source's UDP ports from an address other than the source's: dropped.
    pub pull_udp_stray: u64,
    /// Datagrams on a pull source's UDP ports too short (or long) to be RTP or RTCP: dropped.
    pub pull_udp_bad_size: u64,
}

impl MediaStats {
    /// Bytes received in `mode`.
    pub fn bytes_in(&self, mode: IngestMode) -> u64 {
        self.bytes_in[mode.index()]
    }

    /// Adds `n` bytes received in `mode`.
    pub fn add_bytes_in(&mut self, mode: IngestMode, n: u64) {
        self.bytes_in[mode.index()] += n;
    }

    /// Adds `n` rejections of `reason` (no entry is made for 0).
    pub fn add_rejections(&mut self, reason: &'static str, n: u64) {
        if n > 0 {
            *self.ingest_rejections.entry(reason).or_default() += n;
        }
    }

    /// Adds `other` (another shard's) to these counters.
    pub fn merge(&mut self, other: &MediaStats) {
        self.streams_live += other.streams_live;
        self.streams_waiting += other.streams_waiting;
        self.viewers += other.viewers;
        for (mine, theirs) in self.bytes_in.iter_mut().zip(other.bytes_in) {
            *mine += theirs;
        }
        self.bytes_out += other.bytes_out;
        self.packets_dropped += other.packets_dropped;
        self.frames_dropped += other.frames_dropped;
        self.viewers_evicted += other.viewers_evicted;
        for (reason, n) in &other.ingest_rejections {
            *self.ingest_rejections.entry(reason).or_default() += n;
        }
        self.ingest_resyncs += other.ingest_resyncs;
        self.previews_started += other.previews_started;
        self.previews_refused += other.previews_refused;
        self.previews_stopped += other.previews_stopped;
        self.previews_abandoned += other.previews_abandoned;
        self.previews_interrupted += other.previews_interrupted;
        self.previews_resumed += other.previews_resumed;
        self.tls_failures.merge(&other.tls_failures);
        self.rtsp_accepted += other.rtsp_accepted;
        self.rtsp_handed_off += other.rtsp_handed_off;
        self.rtsp_received += other.rtsp_received;
        self.pull_udp_lost += other.pull_udp_lost;
        self.pull_udp_stray += other.pull_udp_stray;
        self.pull_udp_bad_size += other.pull_udp_bad_size;
    }

    /// Prometheus text of every media family (TLS failures are rendered with the control
    /// plane's, by [`TlsFailures::render_prometheus`]).
    pub fn render_prometheus(&self, out: &mut String) {
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
        family(out, "rop_streams", "gauge", "Streams by publisher state.");
        let _ = writeln!(out, "rop_streams{{state=\"live\"}} {}", self.streams_live);
        let _ = writeln!(
            out,
            "rop_streams{{state=\"waiting\"}} {}",
            self.streams_waiting
        );
        family(out, "rop_viewers", "gauge", "Viewers attached to streams.");
        let _ = writeln!(out, "rop_viewers {}", self.viewers);
        family(
            out,
            "rop_stream_bytes_in_total",
            "counter",
            "Bytes received from publishers, by stream mode.",
        );
        for mode in IngestMode::ALL {
            let _ = writeln!(
                out,
                "rop_stream_bytes_in_total{{mode=\"{}\"}} {}",
                mode.label(),
                self.bytes_in(mode)
            );
        }
        family(
            out,
            "rop_stream_bytes_out_total",
            "counter",
            "Bytes written to viewers, interleaved headers included.",
        );
        let _ = writeln!(out, "rop_stream_bytes_out_total {}", self.bytes_out);
        family(
            out,
            "rop_viewer_packets_dropped_total",
            "counter",
            "Packets skipped by viewers that fell behind.",
        );
        let _ = writeln!(
            out,
            "rop_viewer_packets_dropped_total {}",
            self.packets_dropped
        );
        family(
            out,
            "rop_viewer_frames_dropped_total",
            "counter",
            "Access units skipped by viewers that fell behind.",
        );
        let _ = writeln!(
            out,
            "rop_viewer_frames_dropped_total {}",
            self.frames_dropped
        );
        for (name, help, value) in [
            (
                "rop_rtsp_connections_accepted_total",
                "RTSP and RTSPS connections accepted.",
                self.rtsp_accepted,
            ),
            (
                "rop_rtsp_connections_handed_off_total",
                "RTSP connections handed to the shard that owns their stream.",
                self.rtsp_handed_off,
            ),
            (
                "rop_rtsp_connections_received_total",
                "RTSP connections received from another shard.",
                self.rtsp_received,
            ),
        ] {
            family(out, name, "counter", help);
            let _ = writeln!(out, "{name} {value}");
        }
        family(
            out,
            "rop_pull_udp_packets_lost_total",
            "counter",
            "RTP packets of pull sources over UDP missing from the sequence numbers.",
        );
        let _ = writeln!(
            out,
            "rop_pull_udp_packets_lost_total {}",
            self.pull_udp_lost
        );
        family(
            out,
            "rop_pull_udp_datagrams_dropped_total",
            "counter",
            "Datagrams on pull sources' UDP ports dropped, by reason.",
        );
        for (reason, n) in [
            ("stray_source", self.pull_udp_stray),
            ("bad_size", self.pull_udp_bad_size),
        ] {
            let _ = writeln!(
                out,
                "rop_pull_udp_datagrams_dropped_total{{reason=\"{reason}\"}} {n}"
            );
        }
        family(
            out,
            "rop_viewers_evicted_total",
            "counter",
            "Viewers closed for staying too slow.",
        );
        let _ = writeln!(out, "rop_viewers_evicted_total {}", self.viewers_evicted);
        family(
            out,
            "rop_ingest_rejections_total",
            "counter",
            "Device stream input rejected, by reason.",
        );
        for (reason, n) in &self.ingest_rejections {
            let _ = writeln!(
                out,
                "rop_ingest_rejections_total{{reason=\"{reason}\"}} {n}"
            );
        }
        family(
            out,
            "rop_ingest_resyncs_total",
            "counter",
            "Device stream resynchronisations after lost or rejected bytes.",
        );
        let _ = writeln!(out, "rop_ingest_resyncs_total {}", self.ingest_resyncs);
        family(
            out,
            "rop_previews_total",
            "counter",
            "Device previews on demand, by outcome.",
        );
        for (event, n) in [
            ("started", self.previews_started),
            ("refused", self.previews_refused),
            ("stopped", self.previews_stopped),
            ("abandoned", self.previews_abandoned),
            ("interrupted", self.previews_interrupted),
            ("resumed", self.previews_resumed),
        ] {
            let _ = writeln!(out, "rop_previews_total{{event=\"{event}\"}} {n}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_merge_and_render_one_sample_per_label_set() {
        let mut a = MediaStats {
            streams_live: 1,
            viewers: 2,
            ..Default::default()
        };
        a.add_bytes_in(IngestMode::Tls, 100);
        a.add_rejections("bad_hmac", 3);
        a.add_rejections("oversized", 0);
        a.tls_failures.record(TlsPort::StreamTls, "unknown_issuer");
        let mut b = MediaStats {
            viewers: 1,
            ..Default::default()
        };
        b.add_bytes_in(IngestMode::Tls, 50);
        b.add_rejections("bad_hmac", 1);
        b.tls_failures.record(TlsPort::StreamTls, "unknown_issuer");
        a.merge(&b);
        assert_eq!(a.viewers, 3);
        assert_eq!(a.bytes_in(IngestMode::Tls), 150);
        assert_eq!(a.ingest_rejections.get("bad_hmac"), Some(&4));
        assert!(!a.ingest_rejections.contains_key("oversized"));
        assert_eq!(a.tls_failures.get(TlsPort::StreamTls, "unknown_issuer"), 2);
        let mut text = String::new();
        a.render_prometheus(&mut text);
        a.tls_failures.render_prometheus(&mut text);
        assert!(text.contains("rop_stream_bytes_in_total{mode=\"tls\"} 150\n"));
        assert!(text.contains("rop_ingest_rejections_total{reason=\"bad_hmac\"} 4\n"));
        assert!(text.contains(
            "rop_tls_handshake_failures_total{port=\"61006\",listener=\"stream_tls\",reason=\"unknown_issuer\"} 2\n"
        ));
    }
}
