//! Parsing whole files: every problem found, at its position, and the
//! defaults filled in.

use super::pools::parse_upstream;
use super::*;

fn problems(text: &str) -> Vec<String> {
    match parse(Path::new("sy.toml"), text, false) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect(),
    }
}

const MINIMAL: &str = "[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\n";

#[test]
fn minimal_config_gets_documented_defaults() {
    let config = parse(Path::new("etc/sy.toml"), MINIMAL, false).expect("valid");
    assert_eq!(config.listener.bind.to_string(), DEFAULT_LISTENER_BIND);
    assert_eq!(config.listener.max_header_bytes, DEFAULT_MAX_HEADER_BYTES);
    assert_eq!(config.state.initial_pool, "blue");
    assert_eq!(config.state.file, Path::new("etc/run/state.json"));
    assert_eq!(config.admin.socket, Path::new("etc/run/admin.sock"));
    assert_eq!(config.timeouts.upstream, DEFAULT_UPSTREAM_TIMEOUT);
    assert_eq!(config.maintenance.allow_paths, ["/health", "/status"]);
    assert!(config.preview.is_none());
}

#[test]
fn every_section_error_is_reported_with_its_position() {
    let text = "[listener]\nbind = \"nope\"\n\n[timeouts]\nconnect = \"fast\"\n\n[pools.blue]\nupstreams = [\"127.0.0.1\"]\n";
    let found = problems(text);
    assert_eq!(
        found,
        [
            "2:8: listener.bind: `nope` is not an address like 127.0.0.1:8080",
            "5:11: timeouts.connect: invalid value: string \"fast\", expected a duration",
            "8:14: pools.blue.upstreams: `127.0.0.1` needs a port, like 127.0.0.1:9001",
        ]
    );
}

#[test]
fn a_bad_value_hides_no_other_problem_of_its_section() {
    let text = format!(
            "{MINIMAL}[maintenance]\nretry_after = \"ten minutes\"\nbypass_cidrs = [\"10.0.0.0/33\"]\nallow_paths = [\"health\"]\nmessage = 5\n"
        );
    let found = problems(&text);
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(
        found[0].starts_with("4:15: maintenance.retry_after: "),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("5:17: maintenance.bypass_cidrs: "),
        "{found:?}"
    );
    assert!(
        found[2].starts_with("6:16: maintenance.allow_paths: "),
        "{found:?}"
    );
    assert!(
        found[3].starts_with("7:11: maintenance.message: "),
        "{found:?}"
    );
}

#[test]
fn retry_after_is_at_most_a_week() {
    let text = format!("{MINIMAL}[maintenance]\nretry_after = \"1000000000y\"\n");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("4:15: maintenance.retry_after: must be at most 7days"),
        "{found:?}"
    );
    let text = format!("{MINIMAL}[maintenance]\nretry_after = \"7d\"\n");
    assert!(problems(&text).is_empty());
}

#[test]
fn semantic_errors_point_at_the_offending_value() {
    let text = "[listener]\nbind = \"nope\"\n[pools.blue]\nupstreams = [\"127.0.0.1:1\", \"127.0.0.1:1\"]\n[state]\ninitial_pool = \"red\"\n";
    let found = problems(text);
    assert_eq!(
        found,
        [
            "2:8: listener.bind: `nope` is not an address like 127.0.0.1:8080",
            "4:29: pools.blue.upstreams: `127.0.0.1:1` is listed twice",
            "6:16: state.initial_pool: `red` is not a pool; expected one of: blue",
        ]
    );
}

#[test]
fn unknown_keys_and_sections_are_errors() {
    let text = format!("{MINIMAL}[listener]\nbnid = \"x\"\n[extra]\n");
    let found = problems(&text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].starts_with("4:1: listener.bnid: unknown field `bnid`"),
        "{found:?}"
    );
    assert!(
        found[1].starts_with("5:2: unknown section `extra`"),
        "{found:?}"
    );
}

#[test]
fn the_limits_are_defaulted_and_bounded() {
    let config = parse(Path::new("sy.toml"), MINIMAL, false).unwrap();
    assert_eq!(config.listener.max_discard_bytes, DEFAULT_MAX_DISCARD_BYTES);
    assert_eq!(config.listener.http2_max_streams, DEFAULT_HTTP2_MAX_STREAMS);
    assert_eq!(config.listener.http2_max_resets, DEFAULT_HTTP2_MAX_RESETS);
    assert_eq!(config.admin.max_connections, DEFAULT_ADMIN_MAX_CONNECTIONS);
    let text = format!(
            "{MINIMAL}[listener]\nmax_discard_bytes = -1\nhttp2_max_streams = 0\nhttp2_max_resets = 0\n[admin]\nmax_connections = 5000\n"
        );
    assert_eq!(
        problems(&text),
        [
            "4:21: listener.max_discard_bytes: must be a whole number from 0 to 67108864",
            "5:21: listener.http2_max_streams: must be a whole number from 1 to 10000",
            "6:20: listener.http2_max_resets: must be a whole number from 1 to 1000000",
            "8:19: admin.max_connections: must be a whole number from 1 to 4096",
        ]
    );
    let text = format!("{MINIMAL}[listener]\nmax_discard_bytes = 0\n");
    let config = parse(Path::new("sy.toml"), &text, false).unwrap();
    assert_eq!(config.listener.max_discard_bytes, 0, "0 closes instead");
}

#[test]
fn tcp_admin_requires_a_token_file() {
    let text = format!("{MINIMAL}[admin]\nbind = \"127.0.0.1:9901\"\n");
    assert_eq!(
            problems(&text),
            ["4:8: admin.bind: a TCP admin listener needs admin.token_file (the bearer token clients must send)"]
        );
}

#[test]
fn switch_rules_are_checked_and_defaulted() {
    let text = format!("{MINIMAL}[switch]\n");
    let config = parse(Path::new("sy.toml"), &text, false).unwrap();
    let rules = config.switch.expect("[switch] enables the watch");
    assert_eq!(rules.watch, DEFAULT_SWITCH_WATCH);
    assert_eq!(rules.min_requests, u64::from(DEFAULT_MIN_REQUESTS));
    let text =
        format!("{MINIMAL}[switch]\nwatch = \"10ms\"\nmax_error_rate = 5\nmin_requests = 0\n");
    let found = problems(&text);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(
        found[0].contains("switch.watch: must be at least 1s"),
        "{found:?}"
    );
    assert!(
        found[1].contains("not a share between 0 and 1"),
        "{found:?}"
    );
    assert!(found[2].contains("switch.min_requests"), "{found:?}");
    let config = parse(Path::new("sy.toml"), MINIMAL, false).unwrap();
    assert!(config.switch.is_none());
}

#[test]
fn syntax_errors_stop_before_meaning() {
    let found = problems("[pools.blue\nupstreams = 1\n");
    assert!(!found.is_empty());
    assert!(found[0].starts_with("1:"), "{found:?}");
}

#[test]
fn missing_pools_is_reported_at_the_top() {
    assert_eq!(
            problems("[listener]\nbind = \"127.0.0.1:1\"\n"),
            ["1:1: missing [pools]: define at least one pool, e.g. [pools.blue] upstreams = [\"127.0.0.1:9001\"]"]
        );
}

#[test]
fn upstreams_need_host_and_port() {
    assert!(parse_upstream("127.0.0.1:9001").is_ok());
    assert!(parse_upstream("app.internal:80").is_ok());
    assert!(parse_upstream("127.0.0.1").is_err());
    assert!(parse_upstream("http://127.0.0.1:80").is_err());
    assert!(parse_upstream("").is_err());
}

#[test]
fn position_counts_characters_not_bytes() {
    assert_eq!(position("ab\ncé d", 7), (2, 4));
    assert_eq!(position("x", 0), (1, 1));
}

#[test]
fn a_tls_problem_points_at_the_file_at_fault() {
    let dir = std::env::temp_dir().join(format!("switchyard-validate-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let made = rcgen::generate_simple_self_signed(vec!["a.test".to_owned()]).unwrap();
    std::fs::write(dir.join("a.pem"), made.cert.pem()).unwrap();
    let config = |cert: &str, key: &str| {
        format!(
            "{MINIMAL}[listener.tls]\n[[listener.tls.certs]]\ncert = \"{cert}\"\nkey = \"{key}\"\n"
        )
    };
    let problems_in = |text: String| match parse(&dir.join("sy.toml"), &text, false) {
        Ok(_) => Vec::new(),
        Err(problems) => problems.iter().map(ToString::to_string).collect::<Vec<_>>(),
    };
    // An unreadable key is the key's line; an unreadable certificate, the
    // certificate's.
    let found = problems_in(config("a.pem", "missing.key"));
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("6:7: listener.tls.certs: cannot read"),
        "{found:?}"
    );
    let found = problems_in(config("missing.pem", "missing.key"));
    assert!(
        found[0].starts_with("5:8: listener.tls.certs: cannot read"),
        "{found:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cluster_section_is_checked_and_defaulted() {
    let config = parse(Path::new("sy.toml"), MINIMAL, false).unwrap();
    assert_eq!(config.cluster, None, "no [cluster], no etcd");
    let text = format!(
        "{MINIMAL}[cluster]\nendpoints = [\"http://127.0.0.1:2379\"]\ninstance = \"edge-1\"\n"
    );
    let cluster = parse(Path::new("sy.toml"), &text, false)
        .unwrap()
        .cluster
        .unwrap();
    assert_eq!(cluster.endpoints, ["http://127.0.0.1:2379"]);
    assert_eq!(cluster.prefix, DEFAULT_CLUSTER_PREFIX);
    assert_eq!(cluster.instance, "edge-1");
    assert_eq!(cluster.ack_timeout, DEFAULT_ACK_TIMEOUT);
    assert_eq!(cluster.lease_ttl, DEFAULT_LEASE_TTL);
    let text = format!(
        "{MINIMAL}[cluster]\nendpoints = [\"127.0.0.1:2379\", \"https://etcd:2379\"]\nprefix = \"shop\"\ninstance = \"edge 1\"\nlease_ttl = \"1500ms\"\n"
    );
    let found = problems(&text);
    assert_eq!(found.len(), 5, "{found:?}");
    assert!(
        found[0].starts_with("4:14: cluster.endpoints: `127.0.0.1:2379` must be http://HOST:PORT"),
        "{found:?}"
    );
    assert!(
        found[1].contains("`https://etcd:2379` uses TLS"),
        "{found:?}"
    );
    assert!(
        found[2].starts_with("5:10: cluster.prefix: must start with `/`"),
        "{found:?}"
    );
    assert!(found[3].starts_with("6:12: cluster.instance:"), "{found:?}");
    assert!(
        found[4].starts_with("7:13: cluster.lease_ttl: must be at least 2s"),
        "{found:?}"
    );
}

#[test]
fn the_maintenance_message_is_one_line_of_bounded_text() {
    let text = format!("{MINIMAL}[maintenance]\nmessage = \"Back soon\\u001b[2J\"\n");
    let found = problems(&text);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("4:11: maintenance.message: no control characters"),
        "{found:?}"
    );
}

#[test]
fn files_written_are_kept_apart_from_each_other_and_the_config() {
    let text = format!(
        "{MINIMAL}[admin]\nsocket = \"run/x\"\n[state]\nfile = \"run/./x\"\n[log]\naccess = \"sy.toml\"\n"
    );
    assert_eq!(
        problems(&text),
        [
            "1:1: admin.socket and state.file are the same file (run/x); switchyard writes admin.socket, so each needs its own",
            "1:1: log.access and the config file are the same file (sy.toml); switchyard writes log.access, so each needs its own",
        ]
    );
}

#[test]
fn a_pools_section_that_cannot_be_read_is_not_also_missing() {
    let found = problems("[pools.blue]\nupstreams = [\"127.0.0.1:9001\"]\nbogus = 1\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(found[0].contains("unknown field `bogus`"), "{found:?}");
}
