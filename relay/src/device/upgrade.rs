//! Firmware upgrades on the owner shard: runs [`DeviceCommand::Upgrade`] for the control
//! plane. The session's transfer state machine ([`signal::session::upgrade`]) asks for the
//! file's bytes; this module reads them (in file order, one window of at most 30 slices at a
//! time, on the blocking pool, so a slow disk never stalls the shard and the file is never
//! held whole in memory), hands them back, and reports progress to the job's tracker. Once the
//! device took the file and the sleep 233 it reboots; the shard then waits for a handshake of
//! that device naming another firmware than before (on either link: battery devices may come
//! back on keep-alive first), up to the job's reboot timeout, checked by the sweeper.
//!
//! [`DeviceCommand::Upgrade`]: signal::devices::DeviceCommand::Upgrade

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use rt::xchan::OneshotSender;
use signal::session::{ConnId, LinkKind, RequestRejected, UpgradeEvent, UpgradeRequest};
use signal::upgrade::{UpgradeError, UpgradeJob, UpgradeOutcome, UpgradeStage};
use tracing::{info, warn};

use crate::hub::LocalNotify;

use super::DeviceShard;

/// A transfer running on one signalling connection.
pub(super) struct Transfer {
    uid: String,
    job: UpgradeJob,
    firmware_before: Option<String>,
    reply: OneshotSender<UpgradeOutcome>,
    /// The range the session asked for and the reader task has not read yet.
    read: Option<(u64, usize)>,
    /// Wakes the reader task (a read asked for, or the transfer over).
    notify: LocalNotify,
}

/// An upgrade whose device took the file: waiting for it to come back with another firmware.
pub(super) struct RebootWatch {
    job: UpgradeJob,
    firmware_before: Option<String>,
    deadline: Instant,
    reply: OneshotSender<UpgradeOutcome>,
}

/// Runs one upgrade: opens the file, starts the transfer on `uid`'s signalling link, and
/// reads what the session asks for until the transfer is over (its outcome is sent by the
/// event handlers: the reboot watch's, or the failure's).
pub(super) async fn run(
    shard: Rc<DeviceShard>,
    uid: String,
    job: UpgradeJob,
    reply: OneshotSender<UpgradeOutcome>,
) {
    let path = job.path.clone();
    let opened = rt::blocking::unblock(move || {
        let file = File::open(&path)?;
        let size = file.metadata()?.len();
        std::io::Result::Ok((file, size))
    })
    .await;
    let (file, size) = match opened {
        Ok(opened) => opened,
        Err(e) => {
            let error = format!("opening {}: {e}", job.path.display());
            return reply.send(Err(UpgradeError::File(error)));
        }
    };
    job.tracker.set_bytes(0, size);
    let file = Arc::new(file);
    let notify = LocalNotify::new();
    let Some(conn) = shard.start_transfer(&uid, job, size, notify.clone(), reply) else {
        return;
    };
    loop {
        let next = shard
            .transfers
            .borrow_mut()
            .get_mut(&conn)
            .map(|t| t.read.take());
        match next {
            // Over: moved to the reboot watch, or failed and answered.
            None => return,
            Some(Some((offset, len))) => {
                let file = file.clone();
                let data = rt::blocking::unblock(move || {
                    let mut buf = vec![0u8; len];
                    file.read_exact_at(&mut buf, offset).map(|()| buf)
                })
                .await;
                shard.supply(conn, offset, data);
            }
            Some(None) => {
                if shard.shutdown.until(notify.notified()).await.is_none() {
                    return;
                }
            }
        }
    }
}

impl DeviceShard {
    /// Sends the start request on `uid`'s signalling link and records the transfer; answers
    /// `reply` itself and returns `None` when it cannot start.
    fn start_transfer(
        &self,
        uid: &str,
        job: UpgradeJob,
        size: u64,
        notify: LocalNotify,
        reply: OneshotSender<UpgradeOutcome>,
    ) -> Option<ConnId> {
        let request = UpgradeRequest {
            file_name: job.file_name.clone(),
            file_size: size,
            factory_reset: job.factory_reset,
        };
        let started = {
            let mut registry = self.registry.borrow_mut();
            match registry.link_mut(uid, LinkKind::Signalling) {
                None => Err(UpgradeError::Offline),
                Some((conn, session)) => {
                    let firmware = session
                        .presence()
                        .info
                        .as_ref()
                        .and_then(|i| i.firmware.clone());
                    match session.upgrade_start(&request, Instant::now()) {
                        Ok(_) => Ok((conn, firmware)),
                        Err(RequestRejected::NotOnline { .. }) => Err(UpgradeError::Offline),
                        Err(e) => Err(UpgradeError::Busy(e.to_string())),
                    }
                }
            }
        };
        let (conn, firmware_before) = match started {
            Ok(started) => started,
            Err(e) => {
                reply.send(Err(e));
                return None;
            }
        };
        info!(
            shard = self.id,
            uid,
            session = job.session_id,
            file = job.file_name,
            size,
            firmware_before = ?firmware_before,
            "firmware upgrade started"
        );
        self.transfers.borrow_mut().insert(
            conn,
            Transfer {
                uid: uid.to_owned(),
                job,
                firmware_before,
                reply,
                read: None,
                notify,
            },
        );
        self.wake_writer(conn);
        Some(conn)
    }

    /// The bytes the session asked for (or why they could not be read): sent as slices.
    fn supply(&self, conn: ConnId, offset: u64, data: std::io::Result<Vec<u8>>) {
        {
            let mut registry = self.registry.borrow_mut();
            let Some(session) = registry.session_mut(conn) else {
                return;
            };
            let now = Instant::now();
            match data {
                Ok(bytes) => {
                    if let Err(e) = session.upgrade_data(offset, &bytes, now) {
                        warn!(shard = self.id, ?conn, "firmware slices not sent: {e}");
                    }
                }
                Err(e) => {
                    session.upgrade_cancel(&format!("reading the firmware at {offset}: {e}"));
                }
            }
            self.report_progress(conn, session);
        }
        self.drain(conn);
        self.wake_writer(conn);
    }

    fn report_progress(&self, conn: ConnId, session: &signal::session::DeviceSession) {
        let (Some(progress), Some(transfer)) = (
            session.upgrade_progress(),
            self.transfers
                .borrow()
                .get(&conn)
                .map(|t| t.job.tracker.clone()),
        ) else {
            return;
        };
        let stage = match progress.phase {
            signal::session::UpgradePhase::Starting => UpgradeStage::Starting,
            _ => UpgradeStage::Uploading,
        };
        transfer.set_stage(stage);
        transfer.set_bytes(progress.acknowledged, progress.file_size);
    }

    /// An upgrade event of `conn`'s session.
    pub(super) fn on_upgrade_event(
        &self,
        conn: ConnId,
        event: UpgradeEvent,
        session: Option<&signal::session::DeviceSession>,
    ) {
        match event {
            UpgradeEvent::Read { offset, len } => {
                if let Some(session) = session {
                    self.report_progress(conn, session);
                }
                if let Some(transfer) = self.transfers.borrow_mut().get_mut(&conn) {
                    transfer.read = Some((offset, len));
                    transfer.notify.notify();
                }
            }
            UpgradeEvent::Sent => {
                let Some(transfer) = self.transfers.borrow_mut().remove(&conn) else {
                    return;
                };
                transfer.notify.notify();
                let (_, size) = transfer.job.tracker.bytes();
                transfer.job.tracker.set_bytes(size, size);
                transfer.job.tracker.set_stage(UpgradeStage::Installing);
                info!(
                    shard = self.id,
                    uid = transfer.uid,
                    session = transfer.job.session_id,
                    "firmware sent; waiting for the device to come back"
                );
                let deadline = Instant::now() + transfer.job.reboot_timeout;
                self.reboot_watches.borrow_mut().insert(
                    transfer.uid,
                    RebootWatch {
                        job: transfer.job,
                        firmware_before: transfer.firmware_before,
                        deadline,
                        reply: transfer.reply,
                    },
                );
            }
            UpgradeEvent::Failed(failure) => {
                let Some(transfer) = self.transfers.borrow_mut().remove(&conn) else {
                    return;
                };
                transfer.notify.notify();
                transfer.job.tracker.set_stage(UpgradeStage::Done);
                transfer.reply.send(Err(UpgradeError::Transfer(failure)));
            }
            _ => {}
        }
    }

    /// A link of `uid` came online saying `firmware`: an upgrade waiting for it succeeds when
    /// the firmware changed.
    pub(super) fn on_device_back(&self, uid: &str, firmware: Option<&str>) {
        let changed = self.reboot_watches.borrow().get(uid).is_some_and(|w| {
            w.firmware_before.as_deref().unwrap_or_default() != firmware.unwrap_or_default()
        });
        if !changed {
            return;
        }
        if let Some(watch) = self.reboot_watches.borrow_mut().remove(uid) {
            watch.job.tracker.set_stage(UpgradeStage::Done);
            watch.reply.send(Ok(firmware.map(str::to_owned)));
        }
    }

    /// Upgrades whose device did not come back in time end with `unknown_error`.
    pub(super) fn sweep_reboot_watches(&self, now: Instant) {
        let late: Vec<String> = self
            .reboot_watches
            .borrow()
            .iter()
            .filter(|(_, w)| w.deadline <= now)
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in late {
            if let Some(watch) = self.reboot_watches.borrow_mut().remove(&uid) {
                watch.job.tracker.set_stage(UpgradeStage::Done);
                let after = watch.job.reboot_timeout;
                watch.reply.send(Err(UpgradeError::NotBack { after }));
            }
        }
    }
}
