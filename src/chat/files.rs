//! Files: `file.upload` and its bytes, `file.cancel`, and who may download what.
//!
//! An upload's bytes go to a partial file as they arrive, hashed on the way. When the declared
//! size is reached, the file joins the batch as a message; the store writer syncs it and moves
//! it into place before committing that message, so the loop never waits on the disk.

use log::warn;
use serde_json::{json, Value};

use super::protocol::{ErrorCode, Failure};
use super::service::{fail, ConnId, Identity, Now, Reply, Service};
use super::upload::{self, Upload, WriteError};
use crate::store::{FileMeta, Target, UserId};

/// Longest file name, in bytes.
pub const MAX_FILE_NAME: usize = 255;

/// Where an upload goes, known from its `file.upload`.
#[derive(Debug, Clone)]
pub struct Destination {
    /// The `file.upload` request's id.
    pub id: Option<Value>,
    /// `@user` or `#group`, as addressed.
    pub to: String,
    /// The store's name for it.
    pub target: Target,
    /// The other user of a direct conversation.
    pub peer: Option<String>,
    /// The uploader.
    pub sender: UserId,
    /// The uploader's name.
    pub from: String,
}

/// Why a download is refused, as an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownloadRefusal {
    /// No valid token: 401.
    Unauthenticated,
    /// A signed link that is malformed, tampered with, for another file or expired: 401.
    BadLink,
    /// A token in the query string, which the configuration does not accept: 401.
    TokenInUrl,
    /// Not a participant of the conversation: 403.
    Forbidden,
    /// No such file: 404.
    NotFound,
    /// The store failed: 503.
    Unavailable,
}

impl Service {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn file_upload(
        &mut self,
        conn: ConnId,
        id: &Option<Value>,
        me: &Identity,
        to: &str,
        name: String,
        size: u64,
        mime: Option<String>,
        now: Now,
    ) -> Reply {
        if self.clients.get(&conn).is_some_and(|c| c.upload.is_some()) {
            return fail(
                ErrorCode::Conflict,
                "an upload is already in progress on this connection",
            );
        }
        let conversation = self.conversation(me, to, now)?;
        if size > self.settings.max_file_size {
            let max = self.settings.max_file_size;
            return fail(
                ErrorCode::TooLarge,
                format!("files are at most {max} bytes"),
            );
        }
        self.check_storage(me, size)?;
        if name.is_empty() || name.len() > MAX_FILE_NAME || name.chars().any(char::is_control) {
            return fail(
                ErrorCode::BadRequest,
                "name is 1-255 bytes without control characters",
            );
        }
        if mime
            .as_deref()
            .is_some_and(|m| !crate::http::download::valid_mime(m))
        {
            return fail(ErrorCode::BadRequest, "mime is a media type like image/png");
        }
        let up = Upload::start(&self.settings.files_dir, name, mime, size).map_err(|e| {
            warn!("upload could not start: {e}");
            self.upload_failed("io");
            Failure::new(ErrorCode::Unavailable, "cannot store files right now")
        })?;
        let file_id = up.id.clone();
        let destination = Destination {
            id: id.clone(),
            to: conversation.address,
            target: conversation.target,
            peer: conversation.peer,
            sender: me.id,
            from: me.name.clone(),
        };
        // An empty file is complete already; `handle` finishes it once this ok is queued.
        if let Some(c) = self.clients.get_mut(&conn) {
            c.upload = Some((up, destination));
        }
        Ok(json!({ "file_id": file_id }))
    }

    pub(super) fn file_cancel(&mut self, conn: ConnId) -> Reply {
        match self.clients.get_mut(&conn).and_then(|c| c.upload.take()) {
            Some((up, _)) => {
                up.abort();
                self.upload_failed("cancelled");
                Ok(json!({}))
            }
            None => fail(ErrorCode::NotFound, "no upload in progress"),
        }
    }

    /// Bytes of the upload in progress.
    pub(super) fn upload_bytes(&mut self, conn: ConnId, bytes: Vec<u8>, now: Now) {
        let Some(client) = self.clients.get_mut(&conn) else {
            return;
        };
        let Some((up, _)) = client.upload.as_mut() else {
            let f = Failure::new(
                ErrorCode::BadRequest,
                "binary frames carry file uploads only",
            );
            return self.answer(conn, None, Err(f));
        };
        let written = up.write(&bytes);
        if written.is_ok() {
            self.file_metrics.bytes_uploaded += bytes.len() as u64;
        }
        let (up, destination) = match written {
            Ok(false) => return,
            Ok(true) => client.upload.take().expect("checked above"),
            Err(e) => {
                let (up, _) = client.upload.take().expect("checked above");
                return self.upload_refused(conn, up, e);
            }
        };
        self.finish_upload(conn, up, destination, now);
    }

    fn upload_refused(&mut self, conn: ConnId, up: Upload, e: WriteError) {
        let (size, file_id) = (up.size, up.id.clone());
        up.abort();
        let failure = match e {
            WriteError::Overrun => {
                self.upload_failed("overrun");
                let why = format!("more bytes than the declared size ({size}); upload dropped");
                Failure::new(ErrorCode::TooLarge, why)
            }
            WriteError::Io(e) => {
                warn!("upload write failed: {e}");
                self.upload_failed("io");
                Failure::new(
                    ErrorCode::Unavailable,
                    "the file could not be stored; upload dropped",
                )
            }
        };
        self.answer(conn, None, Err(failure.for_file(&file_id)));
    }

    /// An upload announced with size 0 is complete once its ok is queued.
    pub(super) fn finish_empty_upload(&mut self, conn: ConnId, now: Now) {
        let empty = self
            .clients
            .get_mut(&conn)
            .and_then(|c| c.upload.take_if(|(up, _)| up.is_complete()));
        if let Some((up, destination)) = empty {
            self.finish_upload(conn, up, destination, now);
        }
    }

    /// All bytes are in: post the file's message in the batch, if the sender may still post
    /// there (it may have left or been removed from the group meanwhile).
    fn finish_upload(&mut self, conn: ConnId, up: Upload, to: Destination, now: Now) {
        let file_id = up.id.clone();
        if let Target::Group(g) = to.target {
            let refusal = match self.store.role(g, to.sender) {
                Ok(Some(_)) => None,
                Ok(None) => Some((
                    "forbidden",
                    Failure::new(ErrorCode::Forbidden, "no longer a member of this group"),
                )),
                Err(e) => Some(("storage", Failure::from(e))),
            };
            if let Some((reason, f)) = refusal {
                up.abort();
                self.upload_failed(reason);
                return self.answer(conn, None, Err(f.for_file(&file_id)));
            }
        }
        let (meta, part) = up.into_part();
        self.post_file(conn, to, meta, part, now);
    }

    /// Whether `size` more bytes fit the user's quota (its stored files, plus its uploads in
    /// progress at their declared size) and leave the disk above its floor.
    fn check_storage(&mut self, me: &Identity, size: u64) -> Result<(), Failure> {
        let quota = self.settings.user_file_quota;
        if quota > 0 {
            let stored = match self.stored_bytes.get(&me.id) {
                Some(&bytes) => bytes,
                None => {
                    let bytes = self.store.stored_bytes(me.id)?;
                    self.stored_bytes.insert(me.id, bytes);
                    bytes
                }
            };
            let uploading: u64 = self
                .conns_of(&me.name)
                .iter()
                .filter_map(|c| self.clients.get(c)?.upload.as_ref())
                .map(|(up, _)| up.size)
                .sum();
            if stored + uploading + size > quota {
                self.upload_failed("quota");
                let used = stored + uploading;
                return fail(
                    ErrorCode::TooLarge,
                    format!("over your storage quota: {used} of {quota} bytes used"),
                );
            }
        }
        let floor = self.settings.min_free_disk;
        let free = upload::free_bytes(&self.settings.files_dir).map_err(|e| {
            warn!("cannot read the free disk space: {e}");
            Failure::new(ErrorCode::Unavailable, "cannot store files right now")
        })?;
        let uploading: u64 = self
            .clients
            .values()
            .filter_map(|c| c.upload.as_ref())
            .map(|(up, _)| up.size - up.received)
            .sum();
        if free.saturating_sub(uploading) < floor.saturating_add(size) {
            self.upload_failed("disk_full");
            return fail(
                ErrorCode::Unavailable,
                "the server is low on disk space; no uploads for now",
            );
        }
        Ok(())
    }

    /// Counts a failed or abandoned upload.
    pub(super) fn upload_failed(&mut self, reason: &'static str) {
        *self.file_metrics.failures.entry(reason).or_default() += 1;
    }

    /// Uploads in progress.
    pub fn uploads_in_progress(&self) -> usize {
        self.clients.values().filter(|c| c.upload.is_some()).count()
    }

    /// Checks a download: the token's user must take part in the conversation the file was
    /// posted to. Returns the metadata and the path of the bytes.
    pub fn authorize_download(
        &mut self,
        token: Option<&str>,
        file_id: &str,
        now: Now,
    ) -> Result<(FileMeta, std::path::PathBuf), DownloadRefusal> {
        let token = token.ok_or(DownloadRefusal::Unauthenticated)?;
        let user = match self.resolve_token(token, now) {
            Ok(super::accounts::Resolved::Known(identity)) => identity.id,
            Ok(super::accounts::Resolved::NewJwtUser(..)) => {
                return Err(DownloadRefusal::Forbidden)
            }
            Err(f) if f.code == ErrorCode::Unavailable => return Err(DownloadRefusal::Unavailable),
            Err(_) => return Err(DownloadRefusal::Unauthenticated),
        };
        self.readable(user, file_id)
    }

    /// Whether `user` may read the file now: a group file needs membership, a direct file
    /// being its sender or recipient. Returns the metadata and the path of the bytes.
    pub(super) fn readable(
        &mut self,
        user: UserId,
        file_id: &str,
    ) -> Result<(FileMeta, std::path::PathBuf), DownloadRefusal> {
        if !upload::valid_file_id(file_id) {
            return Err(DownloadRefusal::NotFound);
        }
        let record = self
            .store
            .file(file_id)
            .map_err(|_| DownloadRefusal::Unavailable)?
            .ok_or(DownloadRefusal::NotFound)?;
        let allowed = match record.to {
            Target::Group(g) => self
                .store
                .role(g, user)
                .map_err(|_| DownloadRefusal::Unavailable)?
                .is_some(),
            Target::Direct(recipient) => user == record.sender || user == recipient,
        };
        if !allowed {
            return Err(DownloadRefusal::Forbidden);
        }
        let path = upload::path_of(&self.settings.files_dir, &record.meta.id);
        Ok((record.meta, path))
    }
}
