//! The command line: `sluice run`, `sluice check-config`, `sluice ca init` and
//! `sluice passwd`.
//!
//! Everything lives in [`main_with_args`] so tests can drive it; `main.rs` only exits
//! with its code. Errors an operator can act on are one line on stderr, prefixed
//! `sluice: `, exit code 2; a failed start (port in use, ...) exits 1. Usage errors are
//! clap's own message (exit 2).

use crate::config::{self, Config, ConfigError, Overrides};
use clap::{Args, Parser, Subcommand};
use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;

/// Exit code for a configuration or usage problem.
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for a failure to start or run.
pub const EXIT_RUN: i32 = 1;

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about = "An io_uring intercepting HTTP proxy", propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy (on embedded defaults when given no config file and no flags).
    ///
    /// Clients speak HTTP/1.1, or HTTP/2: ALPN `h2` on intercepted TLS, or the cleartext
    /// preface (prior knowledge) on any proxy listener; `[h2]` in the config file sets its
    /// windows and limits (`h2.enabled = false` turns it off). TLS origins are offered `h2` too (`h2.origins`);
    /// cleartext origins get HTTP/1.1 unless listed in `h2.cleartext_origins` (h2c, prior knowledge).
    Run(Box<RunArgs>),
    /// Validate a config file: prints `FILE: ok`, or the error and exits 2.
    CheckConfig {
        /// The TOML config file to check.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Manage the interception CA.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Add a user to a proxy-authentication credentials file, or change their password
    /// (asked twice on the terminal, without echo). The file is written whole, mode 0600.
    Passwd {
        /// The credentials file (`auth.file`); created if missing.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// The user to add or change.
        #[arg(value_name = "USER")]
        user: String,
        /// Read the password as one line of standard input instead of asking.
        #[arg(long = "password-stdin")]
        password_stdin: bool,
    },
}

/// `sluice ca ...`
#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Create a new CA: DIR/ca.pem (certificate, give it to clients) and DIR/ca.key
    /// (private key, mode 0600, never share it). Refuses to overwrite an existing CA.
    Init {
        /// Where to write the CA [default: ./CA].
        #[arg(long, value_name = "DIR", default_value = "CA")]
        dir: PathBuf,
    },
}

/// Flags of `sluice run`. Each overrides the config file's key of the same name; a
/// repeatable flag given at least once replaces the file's whole list.
#[derive(Debug, Default, Clone, Args)]
#[command(after_help = "Flags override the config file. A repeatable flag (--listen, \
    --quic-listen, --upstream-ca, --resolve, --passthrough, --connect-port) given at least \
    once REPLACES the file's list for that key; it does not add to it.\n\n\
    The log level: --log-level wins over the file's log_level, which wins over RUST_LOG; \
    with none of them, info.")]
pub struct RunArgs {
    /// TOML config file (keys as in the README); without it, the embedded defaults.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// TCP listener for client traffic, IP:PORT [default: 127.0.0.1:8080]. Repeatable; replaces the file's `listen`.
    #[arg(long, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// UDP listener for QUIC/HTTP/3, IP:PORT. Repeatable; replaces the file's `quic_listen`.
    #[arg(long = "quic-listen", value_name = "ADDR")]
    pub quic_listen: Vec<String>,
    /// Admin endpoint (metrics, health), IP:PORT, or `off` [default: 127.0.0.1:9090].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Worker threads [default: one per CPU in the affinity mask].
    #[arg(long, value_name = "N", value_parser = parse_workers)]
    pub workers: Option<usize>,
    /// Directory of the interception CA (ca.pem, ca.key) [default: CA].
    #[arg(long = "ca-dir", value_name = "DIR")]
    pub ca_dir: Option<PathBuf>,
    /// Extra PEM trust anchor for upstream TLS. Repeatable; replaces the file's `upstream_ca`.
    #[arg(long = "upstream-ca", value_name = "FILE")]
    pub upstream_ca: Vec<PathBuf>,
    /// Pin NAME to ADDR (like curl's --resolve, without the port). Repeatable; replaces the file's `resolve`.
    #[arg(long, value_name = "NAME:ADDR")]
    pub resolve: Vec<String>,
    /// Never intercept this server name (exact, or *.suffix). Repeatable; replaces the file's `passthrough`.
    #[arg(long, value_name = "NAME")]
    pub passthrough: Vec<String>,
    /// Detect and intercept TLS inside CONNECT tunnels.
    #[arg(long = "intercept-connect")]
    pub intercept_connect: bool,
    /// Port a CONNECT may target [default: 443]. Repeatable; replaces the file's `connect_ports`.
    #[arg(long = "connect-port", value_name = "PORT",
          value_parser = clap::value_parser!(u16).range(1..))]
    pub connect_port: Vec<u16>,
    /// Diagnostics on stderr: error, warn, info, debug (each connection's lifecycle), trace,
    /// off, or directives such as `info,sluice::conn=debug`. Wins over the file's `log_level`
    /// and over RUST_LOG [default: info].
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,
}

fn parse_workers(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(_) => Err("expected a whole number of threads".to_string()),
    }
}

impl RunArgs {
    /// Parses the flags' values into config overrides.
    pub fn overrides(&self) -> Result<Overrides, ConfigError> {
        fn list<T>(
            flag: &str,
            values: &[String],
            parse: impl Fn(&str) -> Result<T, String>,
        ) -> Result<Option<Vec<T>>, ConfigError> {
            if values.is_empty() {
                return Ok(None);
            }
            values
                .iter()
                .map(|v| parse(v).map_err(|e| ConfigError::flag(flag, v, e)))
                .collect::<Result<Vec<T>, _>>()
                .map(Some)
        }
        let non_empty = |v: &[PathBuf]| (!v.is_empty()).then(|| v.to_vec());
        Ok(Overrides {
            listen: list("--listen", &self.listen, config::parse_socket_addr)?,
            quic_listen: list("--quic-listen", &self.quic_listen, config::parse_socket_addr)?,
            admin: match &self.admin {
                Some(a) => Some(config::parse_admin(a).map_err(|e| ConfigError::flag("--admin", a, e))?),
                None => None,
            },
            workers: self.workers,
            ca_dir: self.ca_dir.clone(),
            upstream_ca: non_empty(&self.upstream_ca),
            resolve: list("--resolve", &self.resolve, config::parse_resolve)?,
            passthrough: list("--passthrough", &self.passthrough, config::parse_passthrough)?,
            intercept_connect: self.intercept_connect.then_some(true),
            connect_ports: (!self.connect_port.is_empty()).then(|| self.connect_port.clone()),
            log_level: match &self.log_level {
                Some(l) => Some(config::parse_log_level(l).map_err(|e| ConfigError::flag("--log-level", l, e))?),
                None => None,
            },
        })
    }

    /// Defaults, then `--config` (if given), then the flags; validated.
    pub fn load_config(&self) -> Result<Config, ConfigError> {
        let overrides = self.overrides()?;
        config::load(self.config.as_deref(), &overrides)
    }
}

/// Runs the command line and returns the process exit code.
pub fn main_with_args(args: impl IntoIterator<Item = OsString>) -> i32 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors, --help and --version: clap's text and exit code (2, or 0).
            let _ = e.print();
            return e.exit_code();
        }
    };
    match cli.command {
        Command::Run(args) => {
            let config = match args.load_config() {
                Ok(config) => config,
                Err(e) => return fail(EXIT_CONFIG, &e),
            };
            if let Err(e) = crate::logging::init(&config) {
                return fail(EXIT_CONFIG, &e);
            }
            let reload_args = args.clone();
            let reload: crate::server::Reloader =
                Box::new(move || reload_args.load_config().map_err(|e| e.to_string()));
            match crate::server::run(config, reload) {
                Ok(()) => 0,
                Err(e) => fail(EXIT_RUN, &e),
            }
        }
        Command::CheckConfig { file } => match config::load_file(&file) {
            Ok(_) => {
                let _ = writeln!(std::io::stdout(), "{}: ok", file.display());
                0
            }
            Err(e) => fail(EXIT_CONFIG, &e),
        },
        Command::Passwd { file, user, password_stdin } => {
            use crate::auth::passwd::{run, Source};
            match run(&file, &user, if password_stdin { Source::Stdin } else { Source::Terminal }) {
                Ok(done) => {
                    let _ = writeln!(std::io::stdout(), "{done}");
                    0
                }
                Err(e) => fail(EXIT_CONFIG, &format!("passwd: {e}")),
            }
        }
        Command::Ca(CaCommand::Init { dir }) => match crate::tls::ca::init(&dir) {
            Ok(path) => {
                let _ = writeln!(
                    std::io::stdout(),
                    "wrote {} (give it to clients) and {}/ca.key (mode 0600, keep it secret)",
                    path.display(),
                    dir.display()
                );
                0
            }
            Err(e) => fail(EXIT_CONFIG, &e),
        },
    }
}

/// Prints `sluice: <error>` on stderr (never panics on a closed stderr).
fn fail(code: i32, err: &dyn std::fmt::Display) -> i32 {
    let _ = writeln!(std::io::stderr(), "sluice: {err}");
    code
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::path::Path;
    use std::time::Duration;

    fn parse(args: &[&str]) -> RunArgs {
        let argv = std::iter::once("sluice").chain(std::iter::once("run")).chain(args.iter().copied());
        match Cli::try_parse_from(argv) {
            Ok(Cli { command: Command::Run(a) }) => *a,
            other => panic!("unexpected parse: {other:?}"),
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A config file in a fresh temp directory; removed by the caller's `TempFile`.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("sluice-cli-test-{}-{name}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let path = dir.join("sluice.toml");
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }
        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            if let Some(dir) = self.0.parent() {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }

    fn run_code(args: &[&str]) -> i32 {
        main_with_args(args.iter().map(OsString::from))
    }

    #[test]
    fn no_flags_is_the_embedded_defaults() {
        assert_eq!(parse(&[]).load_config().unwrap(), Config::default());
    }

    #[test]
    fn every_flag_reaches_the_config() {
        let a = parse(&[
            "--listen",
            "127.0.0.1:1",
            "--listen",
            "[::1]:2",
            "--quic-listen",
            "127.0.0.1:3",
            "--admin",
            "127.0.0.1:4",
            "--workers",
            "3",
            "--ca-dir",
            "/tmp/ca",
            "--upstream-ca",
            "/a.pem",
            "--upstream-ca",
            "/b.pem",
            "--resolve",
            "Origin.Test:127.0.0.5",
            "--resolve",
            "v6.test:[::1]",
            "--passthrough",
            "*.apple.com",
            "--intercept-connect",
            "--connect-port",
            "8443",
            "--log-level",
            "info,sluice::conn=debug",
        ]);
        let c = a.load_config().unwrap();
        assert_eq!(c.listen, vec![addr("127.0.0.1:1"), addr("[::1]:2")]);
        assert_eq!(c.quic_listen, vec![addr("127.0.0.1:3")]);
        assert_eq!(c.admin, Some(addr("127.0.0.1:4")));
        assert_eq!(c.workers, Some(3));
        assert_eq!(c.ca_dir, PathBuf::from("/tmp/ca"));
        assert_eq!(c.upstream_ca, vec![PathBuf::from("/a.pem"), PathBuf::from("/b.pem")]);
        assert_eq!(
            c.resolve,
            vec![
                ("origin.test".to_string(), "127.0.0.5".parse().unwrap()),
                ("v6.test".to_string(), "::1".parse().unwrap()),
            ]
        );
        assert_eq!(c.passthrough, vec!["*.apple.com".to_string()]);
        assert!(c.intercept_connect);
        assert_eq!(c.connect_ports, vec![8443]);
        assert_eq!(c.log_level.as_deref(), Some("info,sluice::conn=debug"));
        // Untouched by flags: still the defaults.
        assert_eq!(c.limits, Config::default().limits);
        assert_eq!(c.timeouts, Config::default().timeouts);
    }

    #[test]
    fn a_repeatable_flag_replaces_the_file_list() {
        let f = TempFile::new(
            "replace",
            "listen = [\"127.0.0.1:7001\", \"127.0.0.1:7002\"]\n\
             resolve = [\"a.test:10.0.0.1\"]\n\
             passthrough = [\"bank.example\"]\n\
             connect_ports = [443, 8443]\n\
             workers = 4\n\
             [timeouts]\nrequest_head = 2.5\n",
        );
        let path = f.path().to_str().unwrap();
        let c =
            parse(&["--config", path, "--listen", "127.0.0.1:9001", "--resolve", "b.test:10.0.0.2", "--workers", "1"])
                .load_config()
                .unwrap();
        assert_eq!(c.listen, vec![addr("127.0.0.1:9001")]);
        assert_eq!(c.resolve, vec![("b.test".to_string(), "10.0.0.2".parse().unwrap())]);
        assert_eq!(c.workers, Some(1));
        // Not given on the command line: the file's values stand.
        assert_eq!(c.passthrough, vec!["bank.example".to_string()]);
        assert_eq!(c.connect_ports, vec![443, 8443]);
        assert_eq!(c.timeouts.request_head, Duration::from_millis(2500));
    }

    #[test]
    fn admin_off_disables_the_endpoint() {
        let c = parse(&["--admin", "off"]).load_config().unwrap();
        assert_eq!(c.admin, None);
    }

    #[test]
    fn a_flag_can_mend_what_the_file_lacks() {
        // The file alone is invalid (no listener); the flag supplies one.
        let f = TempFile::new("mend", "listen = []\n");
        let path = f.path().to_str().unwrap();
        assert!(config::load_file(f.path()).is_err());
        let c = parse(&["--config", path, "--listen", "127.0.0.1:9002"]).load_config().unwrap();
        assert_eq!(c.listen, vec![addr("127.0.0.1:9002")]);
    }

    #[test]
    fn bad_flag_values_name_the_flag() {
        let err = parse(&["--resolve", "foo"]).load_config().unwrap_err();
        assert_eq!(err.to_string(), "--resolve \"foo\": expected NAME:ADDR");
        let err = parse(&["--listen", "localhost"]).load_config().unwrap_err();
        assert!(err.to_string().starts_with("--listen \"localhost\": expected IP:PORT"));
        let err = parse(&["--admin", "nope"]).load_config().unwrap_err();
        assert!(err.to_string().starts_with("--admin \"nope\": "), "{err}");
        let err = parse(&["--passthrough", "a b"]).load_config().unwrap_err();
        assert!(err.to_string().starts_with("--passthrough \"a b\": "), "{err}");
        let err = parse(&["--log-level", "verbose"]).load_config().unwrap_err();
        assert!(err.to_string().starts_with("--log-level \"verbose\": expected error, warn, info"), "{err}");
    }

    #[test]
    fn clap_refuses_bad_numbers() {
        for args in [
            &["sluice", "run", "--workers", "0"][..],
            &["sluice", "run", "--workers", "two"],
            &["sluice", "run", "--connect-port", "0"],
            &["sluice", "run", "--connect-port", "70000"],
            &["sluice", "run", "--no-such-flag"],
        ] {
            let err = Cli::try_parse_from(args).unwrap_err();
            assert_eq!(err.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn a_conflict_made_by_flags_is_blamed_on_the_command_line() {
        let err = parse(&["--listen", "127.0.0.1:9090", "--admin", "127.0.0.1:9090"]).load_config().unwrap_err();
        assert_eq!(err.to_string(), "command line: admin: 127.0.0.1:9090 is also a listen address");
    }

    #[test]
    fn a_validation_error_from_the_file_names_file_and_line() {
        let f = TempFile::new("invalid", "# comment\n\nslabs_per_worker = 8\n");
        let path = f.path().to_str().unwrap();
        let err = parse(&["--config", path, "--workers", "2"]).load_config().unwrap_err();
        assert_eq!(err.to_string(), format!("config {path}: slabs_per_worker: must be at least 16, got 8 (line 3)"));
    }

    #[test]
    fn missing_config_file_is_one_line() {
        let err = parse(&["--config", "/nonexistent/sluice.toml"]).load_config().unwrap_err();
        assert_eq!(err.to_string(), "config /nonexistent/sluice.toml: cannot read: No such file or directory");
    }

    #[test]
    fn exit_codes() {
        let good = TempFile::new("check-ok", "workers = 2\n");
        let bad = TempFile::new("check-bad", "listn = [\"127.0.0.1:1\"]\n");
        let good = good.path().to_str().unwrap().to_string();
        let bad_path = bad.path().to_str().unwrap().to_string();
        assert_eq!(run_code(&["sluice", "check-config", &good]), 0);
        assert_eq!(run_code(&["sluice", "check-config", &bad_path]), EXIT_CONFIG);
        assert_eq!(run_code(&["sluice", "check-config", "/nonexistent.toml"]), EXIT_CONFIG);
        assert_eq!(run_code(&["sluice", "run", "--config", &bad_path]), EXIT_CONFIG);
        assert_eq!(run_code(&["sluice", "run", "--resolve", "x"]), EXIT_CONFIG);
        assert_eq!(run_code(&["sluice", "bogus"]), 2);
        assert_eq!(run_code(&["sluice"]), 2);
        assert_eq!(run_code(&["sluice", "--help"]), 0);
        assert_eq!(run_code(&["sluice", "--version"]), 0);
    }

    #[test]
    fn help_says_lists_are_replaced() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let run = cmd.find_subcommand_mut("run").unwrap();
        let help = run.render_long_help().to_string();
        assert!(help.contains("REPLACES the file's list"), "{help}");
        assert!(help.contains("--log-level wins over the file's log_level, which wins over RUST_LOG"), "{help}");
        for flag in [
            "--config",
            "--listen",
            "--quic-listen",
            "--admin",
            "--workers",
            "--ca-dir",
            "--upstream-ca",
            "--resolve",
            "--passthrough",
            "--intercept-connect",
            "--connect-port",
            "--log-level",
        ] {
            assert!(help.contains(flag), "{flag} missing from help");
        }
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
