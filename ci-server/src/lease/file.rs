//! [`FileLease`]: the lease of servers sharing one SQLite file, an exclusive
//! lock on a file beside it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::LeaseError;

/// How often a standby tries the lock.
pub const FILE_POLL: Duration = Duration::from_millis(100);

/// The lock on `<database>.lock`: whoever holds it is the active server.
///
/// The operating system lets go of the lock when its holder's process ends,
/// however it ends (exit, crash, SIGKILL), so a standby on the same machine
/// takes over within [`FILE_POLL`]. It cannot be lost while its holder lives,
/// so writes need no term: no other process can hold it meanwhile. A frozen
/// holder (SIGSTOP) keeps it; on one machine that is the operator's doing.
#[derive(Debug)]
pub struct FileLease {
    path: PathBuf,
    file: File,
    held: bool,
}

impl FileLease {
    /// Opens (creating it if needed) the lock file of the database at
    /// `database`, without taking the lock.
    ///
    /// # Errors
    /// [`LeaseError::LockFile`] when the file cannot be opened or created.
    pub fn open(database: &Path) -> Result<Self, LeaseError> {
        let mut path = database.as_os_str().to_owned();
        path.push(".lock");
        let path = PathBuf::from(path);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| LeaseError::LockFile {
                path: path.clone(),
                reason: format!("cannot open it: {e}"),
            })?;
        Ok(Self {
            path,
            file,
            held: false,
        })
    }

    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the lock if it is free and writes `holder` into the file;
    /// `Ok(false)` when another process holds it.
    ///
    /// # Errors
    /// [`LeaseError::LockFile`] when the system refuses to lock the file.
    pub fn try_take(&mut self, holder: &str) -> Result<bool, LeaseError> {
        if self.held {
            return Ok(true);
        }
        match self.file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Ok(false),
            Err(TryLockError::Error(e)) => {
                return Err(LeaseError::LockFile {
                    path: self.path.clone(),
                    reason: format!("cannot lock it: {e}"),
                });
            }
        }
        self.held = true;
        self.describe(holder);
        Ok(true)
    }

    /// Writes `holder` into the held lock file, for standbys and people to
    /// read. The lock is what counts; a failed write only loses the words.
    pub fn describe(&mut self, holder: &str) {
        if !self.held {
            return;
        }
        let file = &mut self.file;
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{holder}"))
            .and_then(|()| file.flush());
    }

    /// What the holder wrote into the lock file (empty when nothing could be
    /// read), for messages.
    pub fn holder(&mut self) -> String {
        let mut text = String::new();
        let _ = self
            .file
            .rewind()
            .and_then(|()| self.file.read_to_string(&mut text));
        text.trim().to_owned()
    }

    /// Lets go of the lock (a standby may take it at once).
    pub fn release(&mut self) {
        if self.held {
            self.describe("");
            let _ = self.file.unlock();
            self.held = false;
        }
    }
}
