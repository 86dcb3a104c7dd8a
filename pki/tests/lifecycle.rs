//! Creating, reopening and protecting the PKI files.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, SystemTime};

use common::new_pki;
use pki::{InitOptions, Pki, PkiError};

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_every_file_with_private_keys_0600() {
    let (dir, pki) = new_pki(&[]);
    let paths = pki.paths().clone();
    for key in [&paths.root_key, &paths.intermediate_key, &paths.server_key] {
        assert_eq!(mode(key), 0o600, "{}", key.display());
    }
    for public in [
        &paths.root_cert,
        &paths.intermediate_cert,
        &paths.server_cert,
        &paths.crl,
    ] {
        assert!(public.exists(), "{}", public.display());
    }
    assert_eq!(paths.dir, dir.path().join("pki"));
    let names: Vec<_> = std::fs::read_dir(&paths.dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 7, "no temporary files left: {names:?}");
    assert_eq!(pki.server_hosts(), vec!["localhost", "127.0.0.1"]);
}

#[test]
fn init_refuses_to_overwrite_unless_forced() {
    let (dir, pki) = new_pki(&[]);
    let old_hash = pki.ca_hash();
    let err = Pki::init(dir.path(), &InitOptions::default()).unwrap_err();
    assert!(matches!(err, PkiError::AlreadyInitialized { .. }), "{err}");
    assert_eq!(
        Pki::open(dir.path()).unwrap().ca_hash(),
        old_hash,
        "nothing was touched"
    );

    let forced = Pki::init(
        dir.path(),
        &InitOptions {
            force: true,
            ..InitOptions::default()
        },
    )
    .unwrap();
    assert_ne!(forced.ca_hash(), old_hash);
}

#[test]
fn root_key_out_keeps_the_root_key_out_of_the_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let offline = tempfile::tempdir().unwrap();
    let out = offline.path().join("root.key");
    let options = InitOptions {
        root_key_out: Some(out.clone()),
        ..InitOptions::default()
    };
    let pki = Pki::init(dir.path(), &options).unwrap();
    assert!(!pki.paths().root_key.exists());
    assert_eq!(mode(&out), 0o600);
    let root_key = std::fs::read_to_string(&out).unwrap();
    assert!(root_key.contains("PRIVATE KEY"));
    // No file under DIR holds the root key.
    for entry in std::fs::read_dir(&pki.paths().dir).unwrap() {
        let content = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!content.contains(root_key.trim()));
    }
    // A second init must not overwrite the offline key either.
    let err = Pki::init(tempfile::tempdir().unwrap().path(), &options).unwrap_err();
    assert!(matches!(err, PkiError::AlreadyInitialized { path } if path == out));

    // Forcing with root_key_out removes a root key left in DIR by an earlier init.
    let dir2 = tempfile::tempdir().unwrap();
    Pki::init(dir2.path(), &InitOptions::default()).unwrap();
    let out2 = offline.path().join("root2.key");
    let pki2 = Pki::init(
        dir2.path(),
        &InitOptions {
            force: true,
            root_key_out: Some(out2),
            ..InitOptions::default()
        },
    )
    .unwrap();
    assert!(!pki2.paths().root_key.exists());
}

#[test]
fn open_or_init_creates_once_then_opens() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = vec!["relay.local".to_owned()];
    let (first, created) = Pki::open_or_init(dir.path(), &hosts).unwrap();
    assert!(created);
    let (second, created) = Pki::open_or_init(dir.path(), &hosts).unwrap();
    assert!(!created);
    assert_eq!(first.ca_hash(), second.ca_hash());
    assert_eq!(
        first.root_fingerprint_sha256(),
        second.root_fingerprint_sha256()
    );
    assert_eq!(second.server_hosts(), hosts);
    assert_eq!(
        first.status()[2].serial_hex,
        second.status()[2].serial_hex,
        "not reissued"
    );

    // A new host is added to the server certificate, the old ones stay.
    let (third, _) = Pki::open_or_init(dir.path(), &["10.9.8.7".to_owned()]).unwrap();
    assert_eq!(third.server_hosts(), vec!["relay.local", "10.9.8.7"]);
    assert_eq!(third.ca_hash(), first.ca_hash());
}

#[test]
fn open_without_pki_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let err = Pki::open(dir.path()).unwrap_err();
    assert!(matches!(err, PkiError::NotInitialized { .. }), "{err}");
}

#[test]
fn open_without_root_key_works_and_signs() {
    let (dir, pki) = new_pki(&[]);
    std::fs::remove_file(&pki.paths().root_key).unwrap();
    let reopened = Pki::open(dir.path()).unwrap();
    reopened
        .issue_device(
            common::UID,
            pki::DeviceKey::Generate,
            pki::DEFAULT_DEVICE_VALIDITY,
        )
        .unwrap();
}

#[test]
fn open_rejects_a_foreign_intermediate_key() {
    let (dir, pki) = new_pki(&[]);
    let (_other_dir, other) = new_pki(&[]);
    std::fs::copy(
        &other.paths().intermediate_key,
        &pki.paths().intermediate_key,
    )
    .unwrap();
    let err = Pki::open(dir.path()).unwrap_err();
    assert!(
        matches!(
            err,
            PkiError::KeyMismatch {
                what: "intermediate CA",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn open_repairs_a_server_key_left_by_an_interrupted_renewal() {
    let (dir, pki) = new_pki(&["relay.local"]);
    let (_other_dir, other) = new_pki(&[]);
    std::fs::copy(&other.paths().server_key, &pki.paths().server_key).unwrap();
    let reopened = Pki::open(dir.path()).unwrap();
    assert_eq!(reopened.server_hosts(), vec!["relay.local"]);
    assert_ne!(reopened.status()[2].serial_hex, pki.status()[2].serial_hex);
    Pki::open(dir.path()).unwrap();
}

#[test]
fn status_reports_expiry_and_renewal_need() {
    let (_dir, pki) = new_pki(&[]);
    let status = pki.status();
    let names: Vec<_> = status.iter().map(|s| s.name).collect();
    assert_eq!(names, ["root CA", "intermediate CA", "server"]);
    assert!((3648..=3650).contains(&status[0].days_left), "{status:?}");
    assert!((1823..=1825).contains(&status[1].days_left), "{status:?}");
    assert!((88..=90).contains(&status[2].days_left), "{status:?}");
    assert!(
        status[0].subject.contains("ROP Relay Root CA"),
        "{status:?}"
    );

    let now = SystemTime::now();
    assert!(!pki.server_needs_renewal(now));
    assert!(!pki.server_needs_renewal(now + Duration::from_secs(59 * 86_400)));
    assert!(pki.server_needs_renewal(now + Duration::from_secs(61 * 86_400)));
    let later = pki.status_at(now + Duration::from_secs(100 * 86_400));
    assert!(later[2].days_left < 0, "{later:?}");

    assert_eq!(pki.renew_server_if_due(now).unwrap(), None);
    let renewed = pki
        .renew_server_if_due(now + Duration::from_secs(61 * 86_400))
        .unwrap()
        .expect("due");
    assert_eq!(renewed.name, "server");
    assert_eq!(pki.status()[2].serial_hex, renewed.serial_hex);
}

#[test]
fn invalid_hosts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let err = Pki::init(
        dir.path(),
        &InitOptions {
            hosts: vec!["not a host".into()],
            ..InitOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::InvalidHost { .. }), "{err}");
    assert!(!dir.path().join("pki").exists());
}
