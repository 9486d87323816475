//! Signed reply tokens: `prefix+t<ticket>-<mac>@domain` in the Reply-To of outgoing mail,
//! and VERP bounce addresses `prefix+bounce-<message>-<mac>@domain`.

use std::path::Path;

use rand::RngCore;

/// Hex digits of MAC kept in a token: 64 bits, short enough for a local part.
const MAC_HEX: usize = 16;

/// Signs and verifies tokens with the gateway's secret.
#[derive(Clone)]
pub struct ReplyTokens {
    key: Vec<u8>,
}

impl std::fmt::Debug for ReplyTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyTokens(..)")
    }
}

impl ReplyTokens {
    /// Tokens signed with `key`.
    pub fn new(key: Vec<u8>) -> Self {
        Self { key }
    }

    /// Reads the secret from `path`, creating it (32 random bytes, hex, mode 0600) when missing.
    pub fn load_or_create(path: &Path) -> std::io::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) if !text.trim().is_empty() => Ok(Self::new(text.trim().as_bytes().to_vec())),
            Ok(_) => Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} is empty", path.display()),
            )),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir)?;
                }
                let mut bytes = [0u8; 32];
                rand::rng().fill_bytes(&mut bytes);
                let secret = hex::encode(bytes);
                write_private(path, &secret)?;
                Ok(Self::new(secret.into_bytes()))
            }
            Err(e) => Err(e),
        }
    }

    fn mac(&self, purpose: &str, org_id: i64, id: i64) -> String {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.key);
        let tag = ring::hmac::sign(&key, format!("{purpose}:{org_id}:{id}").as_bytes());
        hex::encode(tag.as_ref())[..MAC_HEX].to_string()
    }

    /// The `+detail` that names a ticket: `t<id>-<mac>`.
    pub fn reply_detail(&self, org_id: i64, ticket_id: i64) -> String {
        format!("t{ticket_id}-{}", self.mac("reply", org_id, ticket_id))
    }

    /// The ticket a `+detail` names, when its MAC verifies for this organization.
    pub fn verify_reply(&self, org_id: i64, detail: &str) -> Option<i64> {
        self.verify("reply", "t", org_id, detail)
    }

    /// The `+detail` of a VERP bounce address for one outgoing message.
    pub fn bounce_detail(&self, org_id: i64, message_id: i64) -> String {
        format!(
            "bounce-{message_id}-{}",
            self.mac("bounce", org_id, message_id)
        )
    }

    /// The outgoing message a bounce address names, when its MAC verifies.
    pub fn verify_bounce(&self, org_id: i64, detail: &str) -> Option<i64> {
        self.verify("bounce", "bounce-", org_id, detail)
    }

    fn verify(&self, purpose: &str, prefix: &str, org_id: i64, detail: &str) -> Option<i64> {
        let detail = detail.to_ascii_lowercase();
        let (id, mac) = detail.strip_prefix(prefix)?.split_once('-')?;
        let id: i64 = id.parse().ok()?;
        let expected = self.mac(purpose, org_id, id);
        // Constant-time comparison: the MAC is the only secret in the address.
        let same = expected.len() == mac.len()
            && expected
                .bytes()
                .zip(mac.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        same.then_some(id)
    }
}

fn write_private(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_forgery() {
        let t = ReplyTokens::new(b"k".to_vec());
        let d = t.reply_detail(1, 42);
        assert_eq!(t.verify_reply(1, &d), Some(42));
        assert_eq!(
            t.verify_reply(1, &d.to_uppercase()),
            Some(42),
            "MTAs may change case"
        );
        assert_eq!(t.verify_reply(2, &d), None, "another organization");
        assert_eq!(
            t.verify_reply(1, &d.replace("t42", "t43")),
            None,
            "another ticket"
        );
        assert_eq!(t.verify_reply(1, "t42-0000000000000000"), None);
        assert_eq!(t.verify_reply(1, "billing"), None);
        let b = t.bounce_detail(1, 7);
        assert_eq!(t.verify_bounce(1, &b), Some(7));
        assert_eq!(t.verify_reply(1, &b), None);
    }

    #[test]
    fn secret_file_is_created_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/secret");
        let a = ReplyTokens::load_or_create(&path).expect("create");
        let b = ReplyTokens::load_or_create(&path).expect("load");
        assert_eq!(a.reply_detail(1, 1), b.reply_detail(1, 1));
    }
}
