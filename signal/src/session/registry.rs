//! The device sessions of one shard: every session from accept to close, keyed by connection,
//! and the online ones indexed by UID and link. Single-threaded (one per shard, no locks).
//! A newer session of a device replaces the older one on the same link; one sweeper per
//! shard closes silent sessions and expires requests, instead of a timer per connection.

use std::collections::HashMap;
use std::time::Instant;

use crate::proto::body::{BatteryState, Capabilities, Handshake};

use super::device::DeviceSession;
use super::events::OfflineReason;
use super::presence::{Now, Presence};
use super::requests::RequestOutcome;
use super::LinkKind;

/// A connection on this shard, as the registry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// The connections of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DeviceLinks {
    /// Keep-alive (61003).
    pub keep_alive: Option<ConnId>,
    /// Signalling (61005).
    pub signalling: Option<ConnId>,
}

impl DeviceLinks {
    fn slot(&mut self, link: LinkKind) -> &mut Option<ConnId> {
        match link {
            LinkKind::KeepAlive => &mut self.keep_alive,
            LinkKind::Signalling => &mut self.signalling,
        }
    }

    fn get(&self, link: LinkKind) -> Option<ConnId> {
        match link {
            LinkKind::KeepAlive => self.keep_alive,
            LinkKind::Signalling => self.signalling,
        }
    }
}

/// A session that left the registry (replaced, timed out): it is closed and holds its last
/// events (requests failed, then `Offline`). Drain them, write its output, close `conn`.
#[derive(Debug)]
pub struct Evicted {
    /// Its connection.
    pub conn: ConnId,
    /// The closed session.
    pub session: DeviceSession,
}

/// What one sweep found.
#[derive(Debug, Default)]
pub struct Sweep {
    /// Sessions closed for silence (no handshake, or no heartbeat, in time), removed.
    pub closed: Vec<Evicted>,
    /// Requests that timed out, by connection (the sessions stay).
    pub expired: Vec<(ConnId, RequestOutcome)>,
    /// Sessions that have events to poll after the sweep (a firmware transfer that timed out).
    pub events: Vec<ConnId>,
}

/// A read-only view of one device across its links.
#[derive(Debug, Clone, Copy)]
pub struct DeviceView<'a> {
    /// Keep-alive session, when online.
    pub keep_alive: Option<&'a DeviceSession>,
    /// Signalling session, when online.
    pub signalling: Option<&'a DeviceSession>,
}

impl<'a> DeviceView<'a> {
    fn presences(&self) -> impl Iterator<Item = &'a Presence> {
        // Signalling first: it is the fuller source (capabilities, alarms).
        self.signalling
            .into_iter()
            .chain(self.keep_alive)
            .map(DeviceSession::presence)
    }

    /// True when the signalling link is up (requests can be sent; a sleeping battery device
    /// has only its keep-alive link).
    pub fn is_awake(&self) -> bool {
        self.signalling.is_some()
    }

    /// Handshake information (signalling's, else keep-alive's).
    pub fn info(&self) -> Option<&'a Handshake> {
        self.presences().find_map(|p| p.info.as_ref())
    }

    /// Capabilities, when known.
    pub fn capabilities(&self) -> Option<&'a Capabilities> {
        self.presences().find_map(|p| p.capabilities.as_ref())
    }

    /// The most recent heartbeat on either link (monotonic, Unix ms).
    pub fn last_heartbeat(&self) -> Option<(Instant, u64)> {
        self.presences()
            .filter_map(|p| Some((p.last_heartbeat?, p.last_heartbeat_unix_millis?)))
            .max_by_key(|(instant, _)| *instant)
    }

    /// Battery state from the most recent heartbeat that carried one.
    pub fn battery(&self) -> Option<&'a BatteryState> {
        self.presences()
            .filter(|p| p.battery.is_some())
            .max_by_key(|p| p.last_heartbeat)
            .and_then(|p| p.battery.as_ref())
    }
}

/// Every device session of one shard.
#[derive(Debug, Default)]
pub struct DeviceRegistry {
    /// Boxed: a map's spare slots then cost a pointer each, not a whole session.
    sessions: HashMap<ConnId, Box<DeviceSession>>,
    online: HashMap<Box<str>, DeviceLinks>,
    next_conn: u64,
}

impl DeviceRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the session of a newly accepted connection (before its handshake).
    pub fn admit(&mut self, session: DeviceSession) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.sessions.insert(conn, Box::new(session));
        conn
    }

    /// Number of sessions (all phases).
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Number of devices with at least one online link.
    pub fn online_devices(&self) -> usize {
        self.online.len()
    }

    /// UIDs of the devices with at least one online link.
    pub fn uids(&self) -> impl Iterator<Item = &str> {
        self.online.keys().map(|uid| &**uid)
    }

    /// The session of `conn`; `None` once it was removed or evicted (the connection task
    /// then closes its socket).
    pub fn session(&self, conn: ConnId) -> Option<&DeviceSession> {
        self.sessions.get(&conn).map(|s| &**s)
    }

    /// Every session with its connection (metrics: phases, stats, memory).
    pub fn iter(&self) -> impl Iterator<Item = (ConnId, &DeviceSession)> {
        self.sessions
            .iter()
            .map(|(&conn, session)| (conn, &**session))
    }

    /// The session of `conn`, mutably (to drain events, take output, ack alarms).
    pub fn session_mut(&mut self, conn: ConnId) -> Option<&mut DeviceSession> {
        self.sessions.get_mut(&conn).map(|s| &mut **s)
    }

    /// The connections of device `uid`.
    pub fn links(&self, uid: &str) -> Option<DeviceLinks> {
        self.online.get(uid).copied()
    }

    /// The online session of `uid` on `link`, with its connection (to send requests).
    pub fn link_mut(&mut self, uid: &str, link: LinkKind) -> Option<(ConnId, &mut DeviceSession)> {
        let conn = self.online.get(uid)?.get(link)?;
        self.sessions
            .get_mut(&conn)
            .map(|session| (conn, &mut **session))
    }

    /// Device `uid` across its links; `None` when it has no online link.
    pub fn device(&self, uid: &str) -> Option<DeviceView<'_>> {
        let links = self.online.get(uid)?;
        let get = |conn: Option<ConnId>| conn.and_then(|c| self.sessions.get(&c).map(|s| &**s));
        Some(DeviceView {
            keep_alive: get(links.keep_alive),
            signalling: get(links.signalling),
        })
    }

    /// Feeds bytes to the session of `conn` (see [`DeviceSession::receive`]) and keeps the
    /// UID index in step: a session that just went online is indexed, and an older session
    /// of the same device and link is closed ([`OfflineReason::Replaced`]), removed and
    /// returned. `None` when `conn` is unknown (it was evicted: close the connection).
    pub fn receive(&mut self, conn: ConnId, input: &[u8], now: Now) -> Option<Option<Evicted>> {
        let session = self.sessions.get_mut(&conn)?;
        let was_online = session.is_online();
        session.receive(input, now);
        let (online, closed) = (session.is_online(), session.is_closed());
        let link = session.link();
        let Some(uid) = session.uid().map(Box::<str>::from) else {
            return Some(None);
        };
        if closed {
            self.unindex(&uid, link, conn);
            return Some(None);
        }
        if was_online || !online {
            return Some(None);
        }
        let previous = self.online.entry(uid).or_default().slot(link).replace(conn);
        let replaced = previous.filter(|&old| old != conn).and_then(|old| {
            let mut session = *self.sessions.remove(&old)?;
            session.close(OfflineReason::Replaced);
            Some(Evicted { conn: old, session })
        });
        Some(replaced)
    }

    /// Removes the session of `conn` (its connection ended). Call
    /// [`DeviceSession::on_connection_closed`] on it first if it is not closed yet, or use
    /// [`DeviceRegistry::disconnect`].
    pub fn remove(&mut self, conn: ConnId) -> Option<DeviceSession> {
        let session = *self.sessions.remove(&conn)?;
        if let Some(uid) = session.uid() {
            self.unindex(uid, session.link(), conn);
        }
        Some(session)
    }

    /// The connection of `conn` closed: closes its session ([`OfflineReason::ConnectionClosed`]
    /// unless it had already ended), removes and returns it with its last events.
    pub fn disconnect(&mut self, conn: ConnId) -> Option<DeviceSession> {
        let mut session = self.remove(conn)?;
        session.on_connection_closed();
        Some(session)
    }

    /// Closes every session of `uid` (revocation, operator): removed and returned.
    pub fn close_device(&mut self, uid: &str, reason: OfflineReason) -> Vec<Evicted> {
        let Some(links) = self.online.remove(uid) else {
            return Vec::new();
        };
        [links.keep_alive, links.signalling]
            .into_iter()
            .flatten()
            .filter_map(|conn| {
                let mut session = *self.sessions.remove(&conn)?;
                session.close(reason.clone());
                Some(Evicted { conn, session })
            })
            .collect()
    }

    /// The shard's periodic sweep (every second or so): closes and removes sessions silent
    /// past their timeout, and expires requests past their deadline.
    pub fn sweep(&mut self, now: Instant) -> Sweep {
        let mut sweep = Sweep::default();
        let mut silent = Vec::new();
        for (&conn, session) in &mut self.sessions {
            match session.next_deadline() {
                Some(deadline) if deadline <= now => {}
                _ => continue,
            }
            if session.check_liveness(now) {
                silent.push(conn);
                continue;
            }
            for outcome in session.expire(now) {
                sweep.expired.push((conn, outcome));
            }
            if session.has_events() {
                sweep.events.push(conn);
            }
        }
        for conn in silent {
            if let Some(session) = self.remove(conn) {
                sweep.closed.push(Evicted { conn, session });
            }
        }
        sweep
    }

    fn unindex(&mut self, uid: &str, link: LinkKind, conn: ConnId) {
        let Some(links) = self.online.get_mut(uid) else {
            return;
        };
        let slot = links.slot(link);
        if *slot == Some(conn) {
            *slot = None;
        }
        if links.keep_alive.is_none() && links.signalling.is_none() {
            self.online.remove(uid);
        }
    }
}
