//! What one link knows about its device: identity and versions from the handshake, battery
//! from heartbeats, the network report, capabilities, and when it was last heard from. Times
//! are the caller's (`Now`): nothing here reads a clock.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::proto::body::{BatteryState, Capabilities, Handshake};

/// A caller-provided reading of both clocks: monotonic for deadlines, wall for the heartbeat
/// reply (the device sets its clock from it) and for presence shown to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub instant: Instant,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_millis: u64,
}

impl Now {
    /// Both readings.
    pub fn new(instant: Instant, wall: SystemTime) -> Self {
        let unix_millis = wall
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0);
        Self {
            instant,
            unix_millis,
        }
    }

    /// This reading moved forward by `by` on both clocks (tests and simulations).
    pub fn advanced(self, by: Duration) -> Self {
        Self {
            instant: self.instant + by,
            unix_millis: self
                .unix_millis
                .saturating_add(u64::try_from(by.as_millis()).unwrap_or(u64::MAX)),
        }
    }
}

/// Presence of a device on one link.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Presence {
    /// The accepted handshake: uid, family, model, firmware, network type, carrier.
    pub info: Option<Handshake>,
    /// When the handshake was accepted (Unix ms).
    pub online_since_unix_millis: Option<u64>,
    /// Last heartbeat (or the handshake, before the first heartbeat): monotonic.
    pub last_heartbeat: Option<Instant>,
    /// Last heartbeat, Unix ms.
    pub last_heartbeat_unix_millis: Option<u64>,
    /// Battery state from the latest heartbeat that carried one.
    pub battery: Option<BatteryState>,
    /// Network type from the latest network-info report 464 (`Param020.attr001`, e.g. `wire`).
    pub network_link: Option<String>,
    /// Capabilities from the latest 199 reply.
    pub capabilities: Option<Capabilities>,
    /// Heartbeat interval in force (announced to keep-alive devices).
    pub heartbeat_interval: Option<Duration>,
    /// The device announced sleep 233 (or accepted ours) on this link and was not woken since.
    pub asleep: bool,
}

impl Presence {
    /// True when the device said it manages sleep (family `battery`): it is woken with 460 on
    /// the keep-alive link before a preview.
    pub fn is_battery_device(&self) -> bool {
        self.info.as_ref().is_some_and(Handshake::is_battery)
    }

    /// Heap bytes held (strings and capability list), for memory accounting.
    pub fn heap_bytes(&self) -> usize {
        let text = |s: &Option<String>| s.as_ref().map_or(0, String::capacity);
        let info = self.info.as_ref().map_or(0, |h| {
            h.uid.capacity()
                + text(&h.family)
                + text(&h.model)
                + text(&h.firmware)
                + text(&h.network_type)
                + text(&h.carrier)
        });
        let battery = self.battery.as_ref().map_or(0, |b| text(&b.charging));
        let capabilities = self.capabilities.as_ref().map_or(0, |c| {
            c.channels.capacity() * std::mem::size_of::<crate::proto::body::ChannelCapabilities>()
        });
        info + battery + text(&self.network_link) + capabilities
    }
}
