//! The file store for result images: a directory on disk, served under `/files/{name}`. Names are
//! random, so a URL cannot be guessed from another.

use std::path::PathBuf;

use rand::distributions::Alphanumeric;
use rand::Rng;

#[derive(Clone)]
pub struct FileStore {
    dir: PathBuf,
    public_base_url: String,
}

impl FileStore {
    pub fn new(dir: PathBuf, public_base_url: &str) -> anyhow::Result<FileStore> {
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("files.dir: cannot create {}: {e}", dir.display()))?;
        Ok(FileStore { dir, public_base_url: public_base_url.trim_end_matches('/').to_owned() })
    }

    /// A fresh unguessable name with this extension, e.g. `Q2x…9a.png`.
    pub fn new_name(extension: &str) -> String {
        let random: String = rand::thread_rng().sample_iter(&Alphanumeric).take(32).map(char::from).collect();
        format!("{random}.{extension}")
    }

    pub fn url(&self, name: &str) -> String {
        format!("{}/files/{name}", self.public_base_url)
    }

    pub async fn exists(&self, name: &str) -> bool {
        Self::is_valid_name(name) && tokio::fs::try_exists(self.dir.join(name)).await.unwrap_or(false)
    }

    /// Writes through a temporary file and a rename, so a reader never sees half a file.
    pub async fn save(&self, name: &str, bytes: &[u8]) -> std::io::Result<()> {
        if !Self::is_valid_name(name) {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "invalid file name"));
        }
        let temporary = self.dir.join(format!(".{name}.{}.tmp", std::process::id()));
        tokio::fs::write(&temporary, bytes).await?;
        tokio::fs::rename(&temporary, self.dir.join(name)).await
    }

    /// `None` for names that are not ours or files that do not exist.
    pub async fn read(&self, name: &str) -> Option<Vec<u8>> {
        if !Self::is_valid_name(name) {
            return None;
        }
        tokio::fs::read(self.dir.join(name)).await.ok()
    }

    /// Only names this store makes: no paths, no dot files.
    fn is_valid_name(name: &str) -> bool {
        let Some((stem, extension)) = name.split_once('.') else {
            return false;
        };
        !stem.is_empty()
            && stem.len() <= 64
            && stem.bytes().all(|b| b.is_ascii_alphanumeric())
            && matches!(extension, "png" | "jpg" | "webp")
    }
}
