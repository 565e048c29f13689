//! The local artifact directory (`file:///dir`), written and read with std
//! file calls so gpuq controls what object_store's `LocalFileSystem` does not:
//! the modes (directory 0700, files 0600) and symlinks (never followed).
//!
//! The directory is checked when the store opens (ours, not world-writable, not
//! a symlink) and again before every access; an artifact's path is the store
//! directory plus one id component, and that component is opened with
//! `O_NOFOLLOW`. So someone who plants `dir/art_x -> /etc/passwd` gets an
//! [`ArtifactError::Unsafe`], never the file. All blocking calls run on tokio's
//! blocking threads.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;

use super::{validate_id, ArtifactError};

/// Mode of the store directory gpuq creates.
const DIR_MODE: u32 = 0o700;
/// Mode of every artifact file.
const FILE_MODE: u32 = 0o600;
/// Bytes read per step of a streamed download.
const CHUNK_BYTES: usize = 256 * 1024;
/// Name prefix of files being written (renamed to their id once complete).
const TEMP_PREFIX: &str = ".tmp-";

/// A checked local store directory.
#[derive(Debug, Clone)]
pub(super) struct LocalDir {
    root: PathBuf,
}

fn io_error(path: &Path, source: std::io::Error) -> ArtifactError {
    ArtifactError::Io {
        path: path.to_owned(),
        source,
    }
}

fn unsafe_path(path: &Path, reason: impl Into<String>) -> ArtifactError {
    ArtifactError::Unsafe {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, ArtifactError> + Send + 'static,
) -> Result<T, ArtifactError> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|join| Err(io_error(Path::new("-"), std::io::Error::other(join))))
}

impl LocalDir {
    /// Creates `root` (mode 0700) when missing, then checks it as
    /// [`LocalDir::check_root`] does: an unsafe directory stops the process.
    pub(super) fn open(root: PathBuf) -> Result<LocalDir, ArtifactError> {
        match std::fs::symlink_metadata(&root) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(&root).map_err(|e| io_error(&root, e))?;
                std::fs::set_permissions(&root, std::fs::Permissions::from_mode(DIR_MODE))
                    .map_err(|e| io_error(&root, e))?;
            }
            Err(error) => return Err(io_error(&root, error)),
            Ok(_) => {}
        }
        let dir = LocalDir { root };
        dir.check_root()?;
        Ok(dir)
    }

    /// The directory must be a real directory (not a symlink), owned by this
    /// process's user, and not writable by everyone.
    fn check_root(&self) -> Result<(), ArtifactError> {
        let meta = std::fs::symlink_metadata(&self.root).map_err(|e| io_error(&self.root, e))?;
        if meta.file_type().is_symlink() {
            return Err(unsafe_path(&self.root, "the store directory is a symlink"));
        }
        if !meta.is_dir() {
            return Err(unsafe_path(&self.root, "not a directory"));
        }
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            return Err(unsafe_path(
                &self.root,
                format!(
                    "owned by uid {}, not by this process's uid {me}; chown it or use another directory",
                    meta.uid()
                ),
            ));
        }
        if meta.mode() & 0o002 != 0 {
            return Err(unsafe_path(
                &self.root,
                format!(
                    "writable by every user (mode {:o}); run `chmod 700` on it",
                    meta.mode() & 0o7777
                ),
            ));
        }
        Ok(())
    }

    /// The path of `id`, after checking the directory and the id.
    fn path(&self, id: &str) -> Result<PathBuf, ArtifactError> {
        validate_id(id)?;
        self.check_root()?;
        Ok(self.root.join(id))
    }

    /// Opens `id` for reading: a regular file, never through a symlink.
    fn open_file(&self, id: &str) -> Result<(File, u64), ArtifactError> {
        let path = self.path(id)?;
        match std::fs::symlink_metadata(&path) {
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Err(ArtifactError::NotFound(id.to_owned()))
            }
            Err(error) => return Err(io_error(&path, error)),
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(unsafe_path(
                    &path,
                    "the artifact is a symlink; not followed",
                ))
            }
            Ok(meta) if !meta.is_file() => {
                return Err(unsafe_path(&path, "the artifact is not a regular file"))
            }
            Ok(_) => {}
        }
        // O_NOFOLLOW closes the gap between the check and the open; O_NONBLOCK
        // keeps a FIFO swapped in meanwhile from blocking the open.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|error| match error.raw_os_error() {
                Some(libc::ELOOP) => unsafe_path(&path, "the artifact is a symlink; not followed"),
                _ if error.kind() == std::io::ErrorKind::NotFound => {
                    ArtifactError::NotFound(id.to_owned())
                }
                _ => io_error(&path, error),
            })?;
        let meta = file.metadata().map_err(|e| io_error(&path, e))?;
        if !meta.is_file() {
            return Err(unsafe_path(&path, "the artifact is not a regular file"));
        }
        Ok((file, meta.len()))
    }

    /// Writes `bytes` as `id`: a 0600 temporary file, renamed into place
    /// complete, so no reader ever sees half an artifact.
    pub(super) async fn put(&self, id: String, bytes: Bytes) -> Result<(), ArtifactError> {
        let dir = self.clone();
        blocking(move || {
            let path = dir.path(&id)?;
            let temp = dir
                .root
                .join(format!("{TEMP_PREFIX}{}", uuid::Uuid::new_v4().simple()));
            let written = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(FILE_MODE)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&temp)
                .and_then(|mut file| file.write_all(&bytes))
                .and_then(|()| std::fs::rename(&temp, &path));
            if let Err(error) = written {
                let _ = std::fs::remove_file(&temp);
                return Err(io_error(&path, error));
            }
            Ok(())
        })
        .await
    }

    /// The size of `id`, bytes.
    pub(super) async fn size(&self, id: &str) -> Result<u64, ArtifactError> {
        let (dir, id) = (self.clone(), id.to_owned());
        blocking(move || dir.open_file(&id).map(|(_, size)| size)).await
    }

    /// The whole of `id`.
    pub(super) async fn get(&self, id: &str) -> Result<Vec<u8>, ArtifactError> {
        let (dir, id) = (self.clone(), id.to_owned());
        blocking(move || {
            let (mut file, size) = dir.open_file(&id)?;
            let mut bytes = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
            file.read_to_end(&mut bytes)
                .map_err(|e| io_error(&dir.root.join(&id), e))?;
            Ok(bytes)
        })
        .await
    }

    /// `id`'s size and its bytes as a stream of chunks, read as it is consumed.
    pub(super) async fn stream(
        &self,
        id: &str,
    ) -> Result<(u64, BoxStream<'static, Result<Bytes, ArtifactError>>), ArtifactError> {
        let (dir, id) = (self.clone(), id.to_owned());
        let path = self.root.join(&id);
        let (file, size) = blocking(move || dir.open_file(&id)).await?;
        let chunks = futures_util::stream::try_unfold(Some(file), move |file| {
            let path = path.clone();
            async move {
                let Some(mut file) = file else {
                    return Ok(None);
                };
                let (file, chunk) = blocking(move || {
                    let mut chunk = vec![0; CHUNK_BYTES];
                    let read = file.read(&mut chunk).map_err(|e| io_error(&path, e))?;
                    chunk.truncate(read);
                    Ok((file, chunk))
                })
                .await?;
                Ok((!chunk.is_empty()).then(|| (Bytes::from(chunk), Some(file))))
            }
        });
        Ok((size, chunks.boxed()))
    }

    /// Deletes artifacts (and leftover temporary files) last written before
    /// `cutoff`; a planted symlink goes too (the link, never its target).
    /// Returns how many entries were removed.
    pub(super) async fn delete_older_than(&self, cutoff: SystemTime) -> Result<u64, ArtifactError> {
        let dir = self.clone();
        blocking(move || {
            dir.check_root()?;
            let entries = std::fs::read_dir(&dir.root).map_err(|e| io_error(&dir.root, e))?;
            let mut deleted = 0;
            for entry in entries {
                let entry = entry.map_err(|e| io_error(&dir.root, e))?;
                let name = entry.file_name();
                let name = name.to_string_lossy();
                if validate_id(&name).is_err() && !name.starts_with(TEMP_PREFIX) {
                    continue; // not ours: left alone
                }
                // DirEntry::metadata does not follow symlinks.
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() || meta.modified().is_ok_and(|at| at >= cutoff) {
                    continue;
                }
                match std::fs::remove_file(entry.path()) {
                    Ok(()) => deleted += 1,
                    // Another dispatcher swept it first.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                    Err(error) => return Err(io_error(&entry.path(), error)),
                }
            }
            Ok(deleted)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().mode() & 0o7777
    }

    #[tokio::test]
    async fn the_directory_is_created_0700_and_files_are_written_0600() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("a/b/store");
        let dir = LocalDir::open(root.clone()).unwrap();
        assert_eq!(mode(&root), 0o700);
        dir.put("art_one".into(), Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(mode(&root.join("art_one")), 0o600);
        assert_eq!(dir.get("art_one").await.unwrap(), b"hello");
        assert_eq!(dir.size("art_one").await.unwrap(), 5);
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, ["art_one"], "no temporary file is left behind");
    }

    #[test]
    fn a_world_writable_directory_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("store");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = LocalDir::open(root).unwrap_err();
        assert!(
            matches!(&error, ArtifactError::Unsafe { reason, .. } if reason.contains("writable by every user")),
            "{error}"
        );
    }

    #[test]
    fn a_directory_owned_by_another_user_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: chown needs root");
            return;
        }
        let parent = tempfile::tempdir().unwrap();
        let root = parent.path().join("store");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
        let error = LocalDir::open(root).unwrap_err();
        assert!(
            matches!(&error, ArtifactError::Unsafe { reason, .. } if reason.contains("owned by uid 65534")),
            "{error}"
        );
    }

    #[test]
    fn a_symlinked_store_directory_is_refused() {
        let parent = tempfile::tempdir().unwrap();
        let real = parent.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = parent.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert!(matches!(
            LocalDir::open(link),
            Err(ArtifactError::Unsafe { .. })
        ));
    }

    #[tokio::test]
    async fn a_planted_symlink_is_refused_not_followed() {
        let parent = tempfile::tempdir().unwrap();
        let secret = parent.path().join("secret");
        std::fs::write(&secret, "root:x:0:0").unwrap();
        let dir = LocalDir::open(parent.path().join("store")).unwrap();
        std::os::unix::fs::symlink(&secret, dir.root.join("art_planted")).unwrap();
        for result in [
            dir.get("art_planted").await.map(|_| ()),
            dir.size("art_planted").await.map(|_| ()),
            dir.stream("art_planted").await.map(|_| ()),
        ] {
            assert!(
                matches!(&result, Err(ArtifactError::Unsafe { reason, .. }) if reason.contains("symlink")),
                "{result:?}"
            );
        }
    }

    #[tokio::test]
    async fn old_artifacts_are_deleted_and_other_files_left_alone() {
        let parent = tempfile::tempdir().unwrap();
        let dir = LocalDir::open(parent.path().join("store")).unwrap();
        dir.put("art_old".into(), Bytes::from_static(b"x"))
            .await
            .unwrap();
        std::fs::write(dir.root.join("notes.txt"), "mine").unwrap();
        let cutoff = SystemTime::now() + std::time::Duration::from_secs(1);
        assert_eq!(dir.delete_older_than(cutoff).await.unwrap(), 1);
        assert!(!dir.root.join("art_old").exists());
        assert!(dir.root.join("notes.txt").exists());
        // A second sweep (another dispatcher) finds nothing to do.
        assert_eq!(dir.delete_older_than(cutoff).await.unwrap(), 0);
    }
}
