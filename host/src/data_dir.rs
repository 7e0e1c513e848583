//! The data directory: the database, the admin token and the compiled-component cache, all
//! private to the user that runs the host.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The layout of a data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

/// Where the admin token came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// `PULSE_ADMIN_TOKEN` (or `--admin-token`).
    Configured,
    /// Read from the data directory, generated at an earlier start.
    Stored,
    /// Generated now and written to the data directory; shown to the operator once.
    Generated,
}

impl DataDir {
    /// Opens the directory, creating it (mode 0700) when missing. An existing directory that
    /// others can read is tightened, since it holds secrets.
    pub fn open(root: &Path) -> io::Result<DataDir> {
        create_private_dir(root)?;
        let mode = fs::metadata(root)?.permissions().mode();
        if mode & 0o077 != 0 {
            fs::set_permissions(root, fs::Permissions::from_mode(mode & 0o700))?;
        }
        Ok(DataDir {
            root: root.to_path_buf(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn database(&self) -> PathBuf {
        self.root.join("pulse.sqlite3")
    }

    pub fn compiled(&self) -> PathBuf {
        self.root.join("compiled")
    }

    /// Where runs' output files are kept.
    pub fn runs(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// The key that seals credentials, when none is configured.
    pub fn encryption_key(&self) -> PathBuf {
        self.root.join("encryption-key")
    }

    fn admin_token_file(&self) -> PathBuf {
        self.root.join("admin-token")
    }

    /// The admin token: `configured` when given, else the stored one, else a new random one
    /// written with mode 0600.
    pub fn admin_token(&self, configured: Option<&str>) -> io::Result<(String, TokenSource)> {
        if let Some(token) = configured.filter(|token| !token.is_empty()) {
            return Ok((token.to_string(), TokenSource::Configured));
        }
        let path = self.admin_token_file();
        match File::open(&path) {
            Ok(mut file) => {
                let mut token = String::new();
                file.read_to_string(&mut token)?;
                let token = token.trim().to_string();
                if token.is_empty() {
                    return Err(io::Error::other(format!(
                        "{} is empty: delete it to generate a new admin token",
                        path.display()
                    )));
                }
                Ok((token, TokenSource::Stored))
            }
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                let token = random_token();
                // create_new: two hosts starting at once cannot both write a token.
                let mut file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                file.write_all(token.as_bytes())?;
                file.sync_all()?;
                Ok((token, TokenSource::Generated))
            }
            Err(err) => Err(err),
        }
    }
}

/// 32 random bytes from the operating system, as URL-safe base64 (43 characters).
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system's random source works");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Creates `dir` and its parents with mode 0700 (existing ones are left as they are).
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Creates (or truncates) a file readable only by its owner.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_generated_once_private_and_kept() {
        let temp = std::env::temp_dir().join(format!("pulse-token-{}", std::process::id()));
        let dir = DataDir::open(&temp).unwrap();
        let (first, source) = dir.admin_token(None).unwrap();
        assert_eq!(source, TokenSource::Generated);
        assert_eq!(first.len(), 43);
        let mode = fs::metadata(dir.admin_token_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(
            fs::metadata(&temp).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(dir.admin_token(None).unwrap(), (first, TokenSource::Stored));
        assert_eq!(
            dir.admin_token(Some("from-env")).unwrap(),
            ("from-env".to_string(), TokenSource::Configured)
        );
        fs::remove_dir_all(temp).unwrap();
    }
}
