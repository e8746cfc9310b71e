//! The contacts the probe has paired with: `contacts.json` in its state folder, one entry per
//! peer public key (name, key, first and last seen, whether a call with it was ever
//! authenticated). A contact that once authenticated and later sends a call without `auth` is
//! a downgrade, refused by the call rules.
//!
//! The file (mode 0600) is written whole to a temporary file in the same folder, synced, then
//! renamed over `contacts.json`, so a reader never sees a torn file (a process killed mid-write
//! leaves at most a `contacts.json.tmp<pid>` beside it). A file that cannot be read as contacts
//! is an error ([`ContactsError::Corrupt`]) and is never overwritten. With
//! `--ephemeral-identity` the contacts live in memory only ([`Contacts::in_memory`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;

/// The contacts file's name in the state folder.
pub const CONTACTS_FILE: &str = "contacts.json";

/// Why the contacts could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ContactsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a contacts file (left as it is): {detail}")]
    Corrupt { path: String, detail: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no contact named {name:?} (call-probe contacts list shows them)")]
    Unknown { name: String },
    #[error("a contact is already named {name:?}")]
    NameTaken { name: String },
    #[error("a contact name must be 1 to 64 characters, not blank")]
    BadName,
}

impl ContactsError {
    /// The machine-readable kind.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unknown { .. } => ErrorKind::UnknownContact,
            Self::NameTaken { .. } | Self::BadName => ErrorKind::ContactName,
            _ => ErrorKind::StateDir,
        }
    }
}

/// One paired peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contact {
    /// A name for people, unique among the contacts: `--name` of the run that first paired
    /// with it, else the peer's pairing code then (with the key's start when taken).
    pub name: String,
    /// The peer's X25519 public key (standard base64).
    pub key: String,
    /// Unix ms of the first and the last pairing.
    pub first_seen_ms: u64,
    pub last_seen_ms: u64,
    /// Whether a call with this peer was ever authenticated.
    pub authenticated: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ContactsFile {
    contacts: Vec<Contact>,
}

/// The contacts, keyed by public key, and where they are kept (`None`: memory only).
#[derive(Debug, Default)]
pub struct Contacts {
    path: Option<PathBuf>,
    by_key: BTreeMap<String, Contact>,
}

impl Contacts {
    /// Contacts that are never written.
    pub fn in_memory() -> Self {
        Self::default()
    }

    /// The contacts of `state_dir` (none yet if the file does not exist).
    pub fn load(state_dir: &Path) -> Result<Self, ContactsError> {
        let path = state_dir.join(CONTACTS_FILE);
        let shown = || path.display().to_string();
        let file = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<ContactsFile>(&bytes).map_err(|error| {
                ContactsError::Corrupt {
                    path: shown(),
                    detail: error.to_string(),
                }
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => ContactsFile::default(),
            Err(source) => {
                return Err(ContactsError::Read {
                    path: shown(),
                    source,
                })
            }
        };
        Ok(Self {
            by_key: file
                .contacts
                .into_iter()
                .map(|c| (c.key.clone(), c))
                .collect(),
            path: Some(path),
        })
    }

    /// The contact with public key `key`.
    pub fn get(&self, key: &str) -> Option<&Contact> {
        self.by_key.get(key)
    }

    /// Whether a call with `key` was ever authenticated.
    pub fn authenticated_before(&self, key: &str) -> bool {
        self.get(key).is_some_and(|c| c.authenticated)
    }

    /// Every contact, by key.
    pub fn all(&self) -> impl Iterator<Item = &Contact> {
        self.by_key.values()
    }

    /// The contact named `name`.
    pub fn named(&self, name: &str) -> Result<&Contact, ContactsError> {
        self.by_key
            .values()
            .find(|c| c.name == name)
            .ok_or_else(|| ContactsError::Unknown {
                name: name.to_string(),
            })
    }

    /// Renames the contact `old` to `new` (unique), and saves.
    pub fn rename(&mut self, old: &str, new: &str) -> Result<(), ContactsError> {
        check_name(new)?;
        let key = self.named(old)?.key.clone();
        if self.by_key.values().any(|c| c.name == new && c.key != key) {
            return Err(ContactsError::NameTaken {
                name: new.to_string(),
            });
        }
        if let Some(contact) = self.by_key.get_mut(&key) {
            contact.name = new.to_string();
        }
        self.save()
    }

    /// Forgets the contact `name` (its next pairing is a new contact), and saves.
    pub fn remove(&mut self, name: &str) -> Result<Contact, ContactsError> {
        let key = self.named(name)?.key.clone();
        let removed = self.by_key.remove(&key);
        self.save()?;
        removed.ok_or(ContactsError::Unknown {
            name: name.to_string(),
        })
    }

    /// Records a pairing with `key` (named `name` if new: `name` and the key's first
    /// characters when another contact has that name) at `now_ms`, and saves.
    pub fn paired(&mut self, key: &str, name: &str, now_ms: u64) -> Result<(), ContactsError> {
        let name = if self.by_key.values().any(|c| c.name == name && c.key != key) {
            format!("{name}-{}", key.chars().take(8).collect::<String>())
        } else {
            name.to_string()
        };
        let contact = self
            .by_key
            .entry(key.to_string())
            .or_insert_with(|| Contact {
                name,
                key: key.to_string(),
                first_seen_ms: now_ms,
                last_seen_ms: now_ms,
                authenticated: false,
            });
        contact.last_seen_ms = contact.last_seen_ms.max(now_ms);
        self.save()
    }

    /// Records that a call with `key` was authenticated (never undone), and saves.
    pub fn authenticated(&mut self, key: &str, now_ms: u64) -> Result<(), ContactsError> {
        if self.authenticated_before(key) {
            return Ok(());
        }
        self.paired(key, key, now_ms)?;
        if let Some(contact) = self.by_key.get_mut(key) {
            contact.authenticated = true;
        }
        self.save()
    }

    /// Writes the file atomically (temporary file, sync, rename); nothing with `in_memory`.
    fn save(&self) -> Result<(), ContactsError> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let file = ContactsFile {
            contacts: self.by_key.values().cloned().collect(),
        };
        let text = serde_json::to_vec_pretty(&file).unwrap_or_default();
        let temp = path.with_extension(format!("json.tmp{}", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut out = options.open(&temp)?;
            out.write_all(&text)?;
            out.write_all(b"\n")?;
            out.sync_all()?;
            std::fs::rename(&temp, path)
        };
        write().map_err(|source| {
            let _ = std::fs::remove_file(&temp);
            ContactsError::Write {
                path: path.display().to_string(),
                source,
            }
        })
    }
}

/// A contact name people can type: 1 to 64 characters, not blank, no control characters.
pub fn check_name(name: &str) -> Result<(), ContactsError> {
    let ok = !name.trim().is_empty()
        && name.chars().count() <= 64
        && !name.chars().any(char::is_control);
    ok.then_some(()).ok_or(ContactsError::BadName)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contacts_are_kept_per_key_across_loads() {
        let dir = tempfile::tempdir().unwrap();
        let mut contacts = Contacts::load(dir.path()).unwrap();
        contacts.paired("KEY-A", "ABC234", 1_000).unwrap();
        contacts.paired("KEY-A", "XYZ789", 2_000).unwrap();
        contacts.paired("KEY-B", "DEF567", 1_500).unwrap();
        contacts.authenticated("KEY-A", 2_500).unwrap();
        let again = Contacts::load(dir.path()).unwrap();
        let a = again.get("KEY-A").unwrap();
        assert_eq!(
            (a.name.as_str(), a.first_seen_ms, a.last_seen_ms),
            ("ABC234", 1_000, 2_500)
        );
        assert!(again.authenticated_before("KEY-A"));
        assert!(!again.authenticated_before("KEY-B"));
        assert!(!again.authenticated_before("KEY-C"));
        assert_eq!(again.all().count(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(CONTACTS_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [CONTACTS_FILE]);
    }

    #[test]
    fn a_corrupt_contacts_file_is_an_error_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(CONTACTS_FILE);
        std::fs::write(&path, "{\"contacts\": [tor").unwrap();
        let error = Contacts::load(dir.path()).unwrap_err();
        assert!(matches!(error, ContactsError::Corrupt { .. }), "{error}");
        assert!(error.to_string().contains("not a contacts file"), "{error}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"contacts\": [tor"
        );
    }

    #[test]
    fn contacts_are_found_renamed_and_removed_by_unique_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut contacts = Contacts::load(dir.path()).unwrap();
        contacts.paired("KEY-A", "bob", 1).unwrap();
        // Another key under a taken name gets the key's start.
        contacts.paired("KEY-BBBBBBBBBB", "bob", 2).unwrap();
        assert_eq!(
            contacts.named("bob-KEY-BBBB").unwrap().key,
            "KEY-BBBBBBBBBB"
        );
        assert_eq!(contacts.named("bob").unwrap().key, "KEY-A");
        let error = contacts.rename("bob", "bob-KEY-BBBB").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ContactName);
        assert_eq!(
            contacts.rename("bob", " ").unwrap_err().kind(),
            ErrorKind::ContactName
        );
        contacts.rename("bob", "Bob Smith").unwrap();
        let error = contacts.named("bob").unwrap_err();
        assert_eq!(error.kind(), ErrorKind::UnknownContact);
        assert!(
            error.to_string().contains("no contact named \"bob\""),
            "{error}"
        );
        let again = Contacts::load(dir.path()).unwrap();
        assert_eq!(again.named("Bob Smith").unwrap().key, "KEY-A");
        let mut again = again;
        assert_eq!(again.remove("Bob Smith").unwrap().key, "KEY-A");
        assert_eq!(
            again.remove("Bob Smith").unwrap_err().kind(),
            ErrorKind::UnknownContact
        );
        assert_eq!(Contacts::load(dir.path()).unwrap().all().count(), 1);
    }

    #[test]
    fn in_memory_contacts_write_nothing() {
        let mut contacts = Contacts::in_memory();
        contacts.paired("KEY", "ABC234", 1).unwrap();
        contacts.authenticated("KEY", 2).unwrap();
        assert!(contacts.authenticated_before("KEY"));
    }
}
