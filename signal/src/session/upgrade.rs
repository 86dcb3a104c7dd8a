//! Firmware upgrade 67 on a signalling link, as the platform's server runs it: a start request
//! (`Param012`: file name, size, factory reset) answered 200, then the file in command-67
//! requests whose extension is `<Extension><binaryData>1</binaryData></Extension>` and whose
//! body is the next 36 KiB of the file, at most 30 of them unanswered, then sleep 233. The
//! device installs and reboots; whether it came back with another firmware is the caller's to
//! watch (the link is gone by then).
//!
//! Sans-IO like the rest of the session: the session never touches the file. It asks for the
//! next bytes with [`UpgradeEvent::Read`] (one range at a time, in file order, up to the room
//! left in the window) and the caller hands them back with
//! [`super::DeviceSession::upgrade_data`], so a 256 MiB firmware is never held in memory: at
//! most the window (about 1 MiB) is, while it is being written.
//!
//! ```text
//! upgrade_start --67 Param012--> Starting --200--> Sending --Read/upgrade_data, slices, 200s-->
//!   (all slices answered) --233--> Sleeping --reply, or the link closes--> Sent
//! any error code, timeout or close before 233 is answered --> Failed
//! ```
//!
//! Device error codes (the reply's response code) map to the platform's statuses: 401
//! `same_version`, 402 `file_check_failed`, 403 `failed`, 404 `out_of_memory`, 407
//! `focus_error`, 408 `low_battery`, anything else (a timeout too) `unknown_error`.

use std::time::Duration;

/// Bytes of the file in one slice (the platform's `MAX_CORE_DATA_LEN`): with the header and
/// the extension, a slice packet stays under the 64 KiB that devices read of the length.
pub const SLICE_LEN: usize = 36 * 1024;
/// Most slices sent and not yet answered (the platform's `MAX_SLICE_FILE_SAME_TIME`).
pub const MAX_UNANSWERED_SLICES: usize = 30;

/// What the device is told when an upgrade starts (the body of the start request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// The firmware file name, as uploaded.
    pub file_name: String,
    /// Its size in bytes: exactly this many bytes are sent.
    pub file_size: u64,
    /// Restore factory settings once the upgrade succeeded.
    pub factory_reset: bool,
}

/// Where a transfer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpgradePhase {
    /// Start request sent, not answered yet.
    Starting,
    /// Slices being sent.
    Sending,
    /// Every slice answered; sleep 233 sent.
    Sleeping,
}

/// The state of a transfer, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpgradeProgress {
    /// Where it is.
    pub phase: UpgradePhase,
    /// File bytes the device acknowledged.
    pub acknowledged: u64,
    /// The file's size.
    pub file_size: u64,
}

/// What a transfer tells its caller (inside [`super::SessionEvent::Upgrade`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UpgradeEvent {
    /// Read `len` bytes of the file at `offset` and pass them to
    /// [`super::DeviceSession::upgrade_data`] (or [`super::DeviceSession::upgrade_cancel`]
    /// when the read fails). The next read is asked for only once this one was supplied.
    Read {
        /// Where in the file.
        offset: u64,
        /// How many bytes (a whole number of slices, except at the end of the file).
        len: usize,
    },
    /// The device acknowledged every slice and the sleep 233 (or closed its link after it):
    /// it installs the firmware and reboots.
    Sent,
    /// The transfer stopped.
    Failed(UpgradeFailure),
}

/// Why a transfer stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeFailure {
    /// The device answered the start request, a slice or the sleep with an error code.
    #[error("device refused {what} with response code {code}")]
    Refused {
        /// `the upgrade start`, `a firmware slice` or `the sleep request`.
        what: &'static str,
        /// Its response code (401 same version, 402 file check failed, …).
        code: u32,
    },
    /// The device did not answer in time.
    #[error("device did not answer {what} within {after:?}")]
    TimedOut {
        /// Which request.
        what: &'static str,
        /// The timeout.
        after: Duration,
    },
    /// The link closed before the sleep request was sent.
    #[error("the device's signalling link closed during the transfer")]
    LinkClosed,
    /// Our side stopped it (the file could not be read).
    #[error("internal: {0}")]
    Cancelled(String),
}

impl UpgradeFailure {
    /// The platform's session status for this failure.
    pub fn status(&self) -> UpgradeStatus {
        match self {
            UpgradeFailure::Refused { code, .. } => UpgradeStatus::from_device_code(*code),
            _ => UpgradeStatus::UnknownError,
        }
    }
}

/// The platform's status of an upgrade session (`GET …/upgrade-session/{id}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpgradeStatus {
    /// In progress (transfer, installation, reboot).
    Upgrading,
    /// The device came back with another firmware.
    UpgradeSuccess,
    /// 401: the device runs this firmware already.
    SameVersion,
    /// 402: the device refused the file.
    FileCheckFailed,
    /// 403: the device failed to install it.
    Failed,
    /// 404: not enough memory on the device.
    OutOfMemory,
    /// 407: focus error.
    FocusError,
    /// 408: battery too low.
    LowBattery,
    /// Any other code, a timeout, a lost link, or no reboot within the limit.
    UnknownError,
}

impl UpgradeStatus {
    /// Every status.
    pub const ALL: [UpgradeStatus; 9] = [
        UpgradeStatus::Upgrading,
        UpgradeStatus::UpgradeSuccess,
        UpgradeStatus::SameVersion,
        UpgradeStatus::FileCheckFailed,
        UpgradeStatus::Failed,
        UpgradeStatus::OutOfMemory,
        UpgradeStatus::FocusError,
        UpgradeStatus::LowBattery,
        UpgradeStatus::UnknownError,
    ];

    /// The status for a device's error code.
    pub fn from_device_code(code: u32) -> Self {
        match code {
            401 => UpgradeStatus::SameVersion,
            402 => UpgradeStatus::FileCheckFailed,
            403 => UpgradeStatus::Failed,
            404 => UpgradeStatus::OutOfMemory,
            407 => UpgradeStatus::FocusError,
            408 => UpgradeStatus::LowBattery,
            _ => UpgradeStatus::UnknownError,
        }
    }

    /// The platform's name.
    pub fn as_str(self) -> &'static str {
        match self {
            UpgradeStatus::Upgrading => "upgrading",
            UpgradeStatus::UpgradeSuccess => "upgrade_success",
            UpgradeStatus::SameVersion => "same_version",
            UpgradeStatus::FileCheckFailed => "file_check_failed",
            UpgradeStatus::Failed => "failed",
            UpgradeStatus::OutOfMemory => "out_of_memory",
            UpgradeStatus::FocusError => "focus_error",
            UpgradeStatus::LowBattery => "low_battery",
            UpgradeStatus::UnknownError => "unknown_error",
        }
    }

    /// The status named `name`.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// True for every status but `upgrading`.
    pub fn is_final(self) -> bool {
        self != UpgradeStatus::Upgrading
    }
}

/// One transfer on a session (boxed in the session: idle sessions pay a pointer).
#[derive(Debug)]
pub(crate) struct UpgradeTransfer {
    pub(crate) file_size: u64,
    pub(crate) phase: UpgradePhase,
    /// The next file offset to ask the caller for.
    pub(crate) next_read: u64,
    /// The range asked for and not supplied yet.
    pub(crate) reading: Option<(u64, usize)>,
    /// Slices sent and not answered.
    pub(crate) in_flight: usize,
    /// Slices answered 200.
    pub(crate) acknowledged_slices: u64,
    /// Timeout of each slice.
    pub(crate) slice_timeout: Duration,
}

impl UpgradeTransfer {
    pub(crate) fn new(file_size: u64, slice_timeout: Duration) -> Self {
        Self {
            file_size,
            phase: UpgradePhase::Starting,
            next_read: 0,
            reading: None,
            in_flight: 0,
            acknowledged_slices: 0,
            slice_timeout,
        }
    }

    pub(crate) fn progress(&self) -> UpgradeProgress {
        UpgradeProgress {
            phase: self.phase,
            acknowledged: (self.acknowledged_slices * SLICE_LEN as u64).min(self.file_size),
            file_size: self.file_size,
        }
    }

    /// The next range to read, if the window has room for it: the rest of the file when it
    /// fits, else as many slices as there is room for once half the window is free (so that
    /// reads come in batches, not one per answered slice). Marks it as being read.
    pub(crate) fn next_read(&mut self) -> Option<(u64, usize)> {
        if self.phase != UpgradePhase::Sending || self.reading.is_some() {
            return None;
        }
        let remaining = self.file_size - self.next_read;
        if remaining == 0 {
            return None;
        }
        let slices_left =
            usize::try_from(remaining.div_ceil(SLICE_LEN as u64)).unwrap_or(usize::MAX);
        let room = MAX_UNANSWERED_SLICES - self.in_flight;
        let batch = room.min(slices_left);
        if batch == 0 || batch < (MAX_UNANSWERED_SLICES / 2).min(slices_left) {
            return None;
        }
        let len = (batch as u64 * SLICE_LEN as u64).min(remaining);
        let read = (self.next_read, len as usize);
        self.next_read += len;
        self.reading = Some(read);
        Some(read)
    }

    /// True once every byte was sent and every slice answered: time for the sleep request.
    pub(crate) fn all_answered(&self) -> bool {
        self.phase == UpgradePhase::Sending
            && self.reading.is_none()
            && self.next_read == self.file_size
            && self.in_flight == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fill_the_window_in_batches_and_end_with_the_tail() {
        let size = 100 * SLICE_LEN as u64 + 5;
        let mut transfer = UpgradeTransfer::new(size, Duration::from_secs(60));
        assert_eq!(transfer.next_read(), None, "not before the start reply");
        transfer.phase = UpgradePhase::Sending;
        assert_eq!(transfer.next_read(), Some((0, 30 * SLICE_LEN)));
        assert_eq!(transfer.next_read(), None, "one read at a time");
        transfer.reading = None;
        transfer.in_flight = 30;
        assert_eq!(transfer.next_read(), None, "window full");
        transfer.in_flight = 16;
        assert_eq!(transfer.next_read(), None, "less than half free");
        transfer.in_flight = 15;
        let offset = 30 * SLICE_LEN as u64;
        assert_eq!(transfer.next_read(), Some((offset, 15 * SLICE_LEN)));
        transfer.reading = None;
        transfer.in_flight = 0;
        transfer.next_read = 99 * SLICE_LEN as u64;
        // Two slices left, the last one 5 bytes: the rest fits, whatever the window.
        transfer.in_flight = 27;
        assert_eq!(
            transfer.next_read(),
            Some((99 * SLICE_LEN as u64, SLICE_LEN + 5))
        );
        transfer.reading = None;
        assert!(!transfer.all_answered());
        transfer.in_flight = 0;
        assert!(transfer.all_answered());
    }

    #[test]
    fn device_codes_map_to_the_platforms_statuses() {
        let names: Vec<&str> = [401, 402, 403, 404, 405, 407, 408, 400]
            .into_iter()
            .map(|code| UpgradeStatus::from_device_code(code).as_str())
            .collect();
        assert_eq!(
            names,
            [
                "same_version",
                "file_check_failed",
                "failed",
                "out_of_memory",
                "unknown_error",
                "focus_error",
                "low_battery",
                "unknown_error"
            ]
        );
        for status in UpgradeStatus::ALL {
            assert_eq!(UpgradeStatus::from_name(status.as_str()), Some(status));
        }
        assert!(!UpgradeStatus::Upgrading.is_final());
        let timeout = UpgradeFailure::TimedOut {
            what: "a firmware slice",
            after: Duration::from_secs(60),
        };
        assert_eq!(timeout.status(), UpgradeStatus::UnknownError);
    }
}
