//! The JWT secret and service token: from the environment, else from `secrets.json` in the
//! data dir, generated there (mode 0600) on first use.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Serialize, Deserialize)]
pub struct Secrets {
    pub jwt_secret: String,
    pub service_token: String,
}

const FILE: &str = "secrets.json";

fn random_hex() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Loads the secrets, generating the missing ones into the data dir.
pub fn load(data_dir: &Path, jwt_secret: Option<&str>, service_token: Option<&str>) -> anyhow::Result<Secrets> {
    if let (Some(j), Some(s)) = (jwt_secret, service_token) {
        return Ok(Secrets { jwt_secret: j.to_string(), service_token: s.to_string() });
    }
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
    let path = data_dir.join(FILE);
    let stored = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice::<Secrets>(&bytes).with_context(|| format!("{} is not valid", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let fresh = Secrets { jwt_secret: random_hex(), service_token: random_hex() };
            write_new(&path, &serde_json::to_vec_pretty(&fresh)?)?;
            // Another process may have won the race: read back what is on disk.
            serde_json::from_slice(&std::fs::read(&path)?)?
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(Secrets {
        jwt_secret: jwt_secret.map_or(stored.jwt_secret, str::to_string),
        service_token: service_token.map_or(stored.service_token, str::to_string),
    })
}

/// The service token stored in `data_dir`, without generating one (a client of a running
/// server must find that server's token, not make a new one).
pub fn stored_service_token(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(FILE);
    let bytes = std::fs::read(&path).with_context(|| {
        format!("no secrets at {} (pass the server's --data-dir, or --service-token / SLUICE_SERVICE_TOKEN)", path.display())
    })?;
    Ok(serde_json::from_slice::<Secrets>(&bytes).with_context(|| format!("{} is not valid", path.display()))?.service_token)
}

/// Creates `path` with `bytes` atomically (a temporary file hard-linked into place), so
/// a crash never leaves a half-written secrets file; an existing file wins.
fn write_new(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create {}", path.display())),
    }
}
