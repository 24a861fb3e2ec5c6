//! The state file: round trips, refusals, and every way a write can fail.

use std::time::SystemTime;

use super::*;

/// A directory of its own for one test, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("switchyard-persist-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn decisions() -> Decisions {
    Decisions {
        live_pool: "green".to_owned(),
        previous_pool: Some("blue".to_owned()),
        maintenance: MaintenanceState {
            enabled: true,
            message: Some("back soon".to_owned()),
            retry_after: Some(Duration::from_secs(600)),
            since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)),
            mode: MaintenanceMode::Full,
            until: None,
        },
        windows: Vec::new(),
        generation: 7,
    }
}

#[test]
fn decisions_survive_a_round_trip() {
    let dir = Scratch::new("round-trip");
    let path = dir.0.join("state.json");
    assert!(load(&path).unwrap().is_none());
    save(&path, &decisions(), None).unwrap();
    assert_eq!(load(&path).unwrap(), Some((decisions(), None)));
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"version\": 1"), "{text}");
    assert!(text.contains("\"retry_after_s\": 600"), "{text}");
    assert!(!text.contains("watch"), "{text}");
    // A watch after a switch is kept with the decisions while it runs.
    let watch = PendingWatch {
        pool: "green".to_owned(),
        until: SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000),
    };
    save(&path, &decisions(), Some(&watch)).unwrap();
    assert_eq!(
        load(&path).unwrap(),
        Some((decisions(), Some(watch.clone())))
    );
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"version\": 2"), "{text}");
    // So is a read-only gate, which an older build would misread.
    let mut read_only = decisions();
    read_only.maintenance.mode = MaintenanceMode::ReadOnly;
    read_only.maintenance.until = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000));
    save(&path, &read_only, Some(&watch)).unwrap();
    assert_eq!(load(&path).unwrap(), Some((read_only, Some(watch))));
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"version\": 3"), "{text}");
    assert!(text.contains("\"mode\": \"read_only\""), "{text}");
    // And planned windows, started or not.
    let mut planned = decisions();
    for (id, started) in [("w8", true), ("w9", false)] {
        planned.windows.push(Window {
            id: id.to_owned(),
            starts_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_000_000),
            ends_at: SystemTime::UNIX_EPOCH + Duration::from_secs(1_900_003_600),
            message: started.then(|| "planned".to_owned()),
            mode: MaintenanceMode::ReadOnly,
            started,
        });
    }
    save(&path, &planned, None).unwrap();
    assert_eq!(load(&path).unwrap(), Some((planned, None)));
    let text = fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"version\": 3"), "{text}");
}

#[test]
fn a_failed_directory_fsync_puts_the_old_decisions_back_or_says_it_could_not() {
    let dir = Scratch::new("replace");
    let path = dir.0.join("state.json");
    let old = Decisions {
        live_pool: "blue".to_owned(),
        previous_pool: None,
        generation: 6,
        ..decisions()
    };
    save(&path, &old, None).unwrap();
    let failing = |_: &Path| Err(std::io::Error::other("injected"));
    let replace = |sync_dir: &dyn Fn(&Path) -> std::io::Result<()>| {
        replace_syncing(&path, (&decisions(), None), (&old, None), sync_dir)
    };

    // Only the new file's sync fails: the old one is back, durably.
    let calls = std::cell::Cell::new(0);
    let once = |dir: &Path| {
        calls.set(calls.get() + 1);
        if calls.get() == 1 {
            failing(dir)
        } else {
            sync_directory(dir)
        }
    };
    let error = replace(&once).unwrap_err();
    assert!(error.replaced_the_file(), "{error}");
    assert_eq!(load(&path).unwrap(), Some((old.clone(), None)));

    // Every sync fails: the old file is back all the same.
    assert!(replace(&failing).is_err());
    assert_eq!(load(&path).unwrap(), Some((old.clone(), None)));

    // Putting it back fails before its rename (something sits at the
    // temp path): the file holds the new decisions, and says so.
    let temp = dir.0.join(".state.json.tmp");
    let blocked = |_: &Path| {
        let _ = fs::create_dir(&temp);
        Err(std::io::Error::other("injected"))
    };
    match replace(&blocked) {
        Ok(Replaced::Unconfirmed { error, restore }) => {
            assert!(error.replaced_the_file(), "{error}");
            assert!(!restore.replaced_the_file(), "{restore}");
        }
        other => panic!("expected Unconfirmed, got {other:?}"),
    }
    assert_eq!(load(&path).unwrap(), Some((decisions(), None)));
}

#[test]
fn a_corrupt_or_newer_file_is_an_error_naming_it() {
    let dir = Scratch::new("corrupt");
    let path = dir.0.join("state.json");
    fs::write(&path, "{\"version\": 1, \"live_pool\": ").unwrap();
    let error = load(&path).unwrap_err().to_string();
    assert!(error.contains("state.json is corrupt"), "{error}");
    fs::write(&path, "{\"version\": 9}").unwrap();
    let error = load(&path).unwrap_err().to_string();
    assert!(error.contains("has version 9"), "{error}");
}

#[test]
fn times_with_an_offset_or_in_lower_case_are_read() {
    let utc = parse_rfc3339("2030-01-01T04:30:00Z").unwrap();
    for text in [
        "2030-01-01T10:00:00+05:30",
        "2029-12-31T23:30:00-05:00",
        "2030-01-01t04:30:00z",
        "2030-01-01 04:30:00Z",
        "2030-01-01T04:30:00+00:00",
    ] {
        assert_eq!(parse_rfc3339(text), Ok(utc), "{text}");
    }
    for text in [
        "2030-01-01T04:30:00+5:30",
        "tomorrow",
        "2030-13-01T00:00:00Z",
        "",
    ] {
        assert!(parse_rfc3339(text).is_err(), "{text}");
    }
}
