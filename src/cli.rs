//! The command line: today's stemcell invocation (`bosh-agent -P ubuntu -C /var/vcap/bosh/agent.json`),
//! the original Ruby agent's flags, the `call` client, and the binary's other name,
//! `bosh-enable-monit-access` (chosen by the program name, as the Go agent's). Parsing only; no
//! behaviour lives here.
//! Unknown flags and bad values are a one-line error (exit code 2, see `main.rs`).

use crate::error::Context as _;
use crate::platform::PlatformKind;
use crate::settings::sources::EMBEDDED_MBUS;
use crate::supervisor::SupervisorKind;
use log::LevelFilter;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// The usage text for `--help`.
pub const USAGE: &str = "\
bosh-agent: the BOSH agent

USAGE:
  bosh-agent [OPTIONS]              run the agent
  bosh-agent call [CALL OPTIONS] METHOD [JSON-ARGS]
  bosh-enable-monit-access [-r DIR] (this binary under that name, as a job's pre-start runs it)
                                    let the calling bpm job, or else the vcap user, reach monit

OPTIONS:
  -P NAME     platform: ubuntu, linux or dummy (default: ubuntu with -C or -I, dummy without)
  -C FILE     agent.json (Go agent format); without it the agent runs on an embedded default:
              HTTPS bus on https://bosh:bosh@127.0.0.1:6868, state in ./agent-data, self-signed cert
  -M NAME     job supervisor: monit or dummy (default: monit with -C or -I, dummy without)
  -b DIR      base directory (default: /var/vcap with -C or -I, ./agent-data without)
  -r DIR      root directory for system files (default: /)
  -c          configure the VM on start (bootstrap)
  -I NAME     infrastructure (Ruby agent style): aws, openstack, vsphere, warden, dummy, ...
  -n URI      message bus URI (overrides settings)
  -a ID       agent id (overrides settings)
  -s URI      blobstore URI: a path, file://, http:// or https:// (overrides settings)
  -l LEVEL    log level: error, warn, info, debug, trace (default: info)
  -h SECS     heartbeat interval in seconds (default: 30)
  -t PORT     SMTP port for monit alerts (default: 2825)
  --no-alerts do not listen for monit alerts
  -v          print the version and exit (also --version)
  --help      print this help

  Go's flag forms work too: -P=ubuntu, --C /var/vcap/bosh/agent.json, -c=true.

CALL OPTIONS:
  --mbus URL       nats://host:port or https://user:pass@host:port (default: the embedded default)
  --ca FILE        CA certificate to verify the agent or NATS server with
  --cert FILE      client certificate (NATS mutual TLS)
  --key FILE       client private key (NATS mutual TLS)
  --agent-id ID    the agent's id (required for NATS)
  --timeout SECS   give up after this long (default: 60)
  --help           print this help
";

/// What the process was asked to do.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Run the agent.
    Run(Options),
    /// Send one request to an agent and print the answer.
    Call(CallOptions),
    /// `bosh-enable-monit-access`: add the caller's rule to the monit firewall.
    EnableMonitAccess(MonitAccessOptions),
    /// Print the usage.
    Help,
    /// Print the version.
    Version,
}

/// Options of the agent itself.
#[derive(Debug, PartialEq)]
pub struct Options {
    /// `-P`.
    pub platform: PlatformKind,
    /// `-C`; `None` selects the embedded default.
    pub config: Option<PathBuf>,
    /// `-M`.
    pub supervisor: SupervisorKind,
    /// `-b`.
    pub base: PathBuf,
    /// `-r`.
    pub root: PathBuf,
    /// `-c`.
    pub configure: bool,
    /// `-I`.
    pub infrastructure: Option<String>,
    /// `-n`.
    pub mbus: Option<String>,
    /// `-a`.
    pub agent_id: Option<String>,
    /// `-s`.
    pub blobstore: Option<String>,
    /// `-l`.
    pub log_level: LevelFilter,
    /// `-h`.
    pub heartbeat_interval: Duration,
    /// `-t`.
    pub smtp_port: u16,
    /// `--no-alerts`.
    pub no_alerts: bool,
}

/// Options of `bosh-agent call`.
#[derive(Debug, PartialEq)]
pub struct CallOptions {
    /// Where the agent listens.
    pub mbus: String,
    /// CA file.
    pub ca: Option<PathBuf>,
    /// Client certificate file.
    pub cert: Option<PathBuf>,
    /// Client key file.
    pub key: Option<PathBuf>,
    /// The agent's id (NATS subject `agent.<id>`).
    pub agent_id: Option<String>,
    /// Overall deadline.
    pub timeout: Duration,
    /// The action.
    pub method: String,
    /// The arguments array.
    pub arguments: Vec<serde_json::Value>,
}

/// Options of `bosh-enable-monit-access`.
#[derive(Debug, PartialEq)]
pub struct MonitAccessOptions {
    /// `-r`: the root whose `/etc/passwd` names vcap (an extension of ours, for tests; default `/`).
    pub root: PathBuf,
}

/// The program name under which the binary is `bosh-enable-monit-access` (Noble stemcells hard-link
/// it as `/var/vcap/bosh/etc/bosh-enable-monit-access`).
pub const ENABLE_MONIT_ACCESS: &str = "bosh-enable-monit-access";

const INFRASTRUCTURES: &[&str] = &[
    "aws",
    "openstack",
    "vsphere",
    "vcloud",
    "warden",
    "dummy",
    "google",
    "azure",
    "softlayer",
    "cloudstack",
];

/// Whether `program` (argv\[0\]) names the binary `bosh-enable-monit-access`.
pub fn is_enable_monit_access(program: &std::ffi::OsStr) -> bool {
    std::path::Path::new(program).file_name().is_some_and(|n| n == ENABLE_MONIT_ACCESS)
}

/// Parses the whole command line, program name first: under the name `bosh-enable-monit-access` the
/// binary is that command, otherwise the agent ([`parse`]).
pub fn parse_invocation(mut argv: Vec<OsString>) -> Result<Command, String> {
    let program = if argv.is_empty() { OsString::new() } else { argv.remove(0) };
    if !is_enable_monit_access(&program) {
        return parse(argv);
    }
    let mut p = pico_args::Arguments::from_vec(argv);
    let root = p.opt_value_from_str("-r").map_err(arg_err)?.unwrap_or_else(|| "/".into());
    reject_rest(p)?;
    Ok(Command::EnableMonitAccess(MonitAccessOptions { root }))
}

/// The agent's flags that take a value.
const VALUE_FLAGS: &[&str] = &["P", "C", "M", "b", "r", "I", "n", "a", "s", "l", "h", "t"];
/// The agent's flags that take none.
const BOOL_FLAGS: &[&str] = &["c", "v", "no-alerts", "help", "version"];
/// `call`'s flags that take a value.
const CALL_VALUE_FLAGS: &[&str] = &["mbus", "ca", "cert", "key", "agent-id", "timeout"];

/// Parses the process arguments (without the program name).
pub fn parse(args: Vec<OsString>) -> Result<Command, String> {
    if args.first().is_some_and(|a| a == "call") {
        let args = go_forms(args[1..].to_vec(), CALL_VALUE_FLAGS, &["help"])?;
        if args.iter().any(|a| a == "--help") {
            return Ok(Command::Help);
        }
        return parse_call(args).map(Command::Call);
    }
    if args.first().is_some_and(|a| a == "compile") {
        return Err("compile: this agent builds no compiled releases offline; `bosh export-release` \
                    makes them on a director (ARCHITECTURE.md says why)"
            .into());
    }
    let args = go_forms(args, VALUE_FLAGS, BOOL_FLAGS)?;
    if args.iter().any(|a| a == "--version") {
        return Ok(Command::Version);
    }
    // The Go agent spells it `-no-alerts`, which pico-args cannot express as a key.
    let before = args.len();
    let args: Vec<OsString> = args.into_iter().filter(|a| a != "-no-alerts" && a != "--no-alerts").collect();
    let no_alerts = args.len() != before;
    let mut p = pico_args::Arguments::from_vec(args);
    if p.contains("--help") {
        return Ok(Command::Help);
    }
    if p.contains("-v") {
        return Ok(Command::Version);
    }
    let config: Option<PathBuf> = p.opt_value_from_str("-C").map_err(arg_err)?;
    let infrastructure: Option<String> = p.opt_value_from_str("-I").map_err(arg_err)?;
    // Without -C or -I there is nowhere to get settings from: run the embedded default.
    let embedded = config.is_none() && infrastructure.is_none();
    let default = |with_config: &str, embedded_value: &str| {
        if embedded { embedded_value } else { with_config }.to_string()
    };
    let platform = p.opt_value_from_str("-P").map_err(arg_err)?.unwrap_or_else(|| default("ubuntu", "dummy"));
    let platform = PlatformKind::parse(&platform)
        .ok_or_else(|| format!("-P: unknown platform '{platform}' (expected ubuntu, linux or dummy)"))?;
    let supervisor =
        p.opt_value_from_str("-M").map_err(arg_err)?.unwrap_or_else(|| default("monit", "dummy"));
    let supervisor = SupervisorKind::parse(&supervisor)
        .ok_or_else(|| format!("-M: unknown job supervisor '{supervisor}' (expected monit or dummy)"))?;
    if let Some(i) = &infrastructure {
        if !INFRASTRUCTURES.contains(&i.as_str()) {
            return Err(format!(
                "-I: unknown infrastructure '{i}' (expected one of {})",
                INFRASTRUCTURES.join(", ")
            ));
        }
    }
    let log_level = match p.opt_value_from_str::<_, String>("-l").map_err(arg_err)? {
        None => LevelFilter::Info,
        Some(l) => l.parse().map_err(|_| {
            format!("-l: unknown log level '{l}' (expected error, warn, info, debug or trace)")
        })?,
    };
    let heartbeat: u64 = p.opt_value_from_fn("-h", positive).map_err(arg_err)?.unwrap_or(30);
    let smtp_port: u16 = p.opt_value_from_fn("-t", port).map_err(arg_err)?.unwrap_or(2825);
    let options = Options {
        platform,
        supervisor,
        base: p
            .opt_value_from_str("-b")
            .map_err(arg_err)?
            .unwrap_or_else(|| default("/var/vcap", "agent-data").into()),
        root: p.opt_value_from_str("-r").map_err(arg_err)?.unwrap_or_else(|| "/".into()),
        configure: p.contains("-c"),
        infrastructure,
        mbus: p.opt_value_from_str("-n").map_err(arg_err)?,
        agent_id: p.opt_value_from_str("-a").map_err(arg_err)?,
        blobstore: p.opt_value_from_str("-s").map_err(arg_err)?,
        log_level,
        heartbeat_interval: Duration::from_secs(heartbeat),
        smtp_port,
        no_alerts,
        config,
    };
    reject_rest(p)?;
    Ok(Command::Run(options))
}

fn parse_call(args: Vec<OsString>) -> Result<CallOptions, String> {
    let mut p = pico_args::Arguments::from_vec(args);
    let mbus = p.opt_value_from_str("--mbus").map_err(arg_err)?.unwrap_or_else(|| EMBEDDED_MBUS.to_string());
    let ca = p.opt_value_from_str("--ca").map_err(arg_err)?;
    let cert = p.opt_value_from_str("--cert").map_err(arg_err)?;
    let key = p.opt_value_from_str("--key").map_err(arg_err)?;
    let agent_id = p.opt_value_from_str("--agent-id").map_err(arg_err)?;
    let timeout = p.opt_value_from_fn("--timeout", positive).map_err(arg_err)?.unwrap_or(60);
    let rest = p.finish();
    if let Some(flag) = rest.iter().find(|a| a.to_string_lossy().starts_with('-')) {
        return Err(format!("call: unknown option '{}'", flag.to_string_lossy()));
    }
    let mut rest = rest.into_iter().map(|a| a.to_string_lossy().into_owned());
    let method = rest.next().ok_or("call: METHOD is required")?;
    let arguments = match rest.next() {
        None => Vec::new(),
        Some(json) => match serde_json::from_str(&json).context("call: JSON-ARGS is not valid JSON")? {
            serde_json::Value::Array(a) => a,
            other => vec![other],
        },
    };
    if let Some(extra) = rest.next() {
        return Err(format!("call: unexpected argument '{extra}' (pass arguments as one JSON array)"));
    }
    Ok(CallOptions {
        mbus,
        ca,
        cert,
        key,
        agent_id,
        timeout: Duration::from_secs(timeout),
        method,
        arguments,
    })
}

/// Rewrites the forms Go's `flag` package also accepts into the ones parsed here: `--flag` for
/// `-flag`, `-flag=value` and `--flag=value` for `-flag value`, and `-flag=true|false` for a flag
/// without a value, so the Go agent's invocations (and habits) work unchanged. Flags are spelled
/// `-x` when one letter long and `--name` otherwise. The value after a flag is never rewritten.
fn go_forms(args: Vec<OsString>, values: &[&str], bools: &[&str]) -> Result<Vec<OsString>, String> {
    let canonical = |name: &str| if name.len() == 1 { format!("-{name}") } else { format!("--{name}") };
    let mut out = Vec::with_capacity(args.len() + 2);
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_str().unwrap_or("");
        let Some(flag) =
            text.strip_prefix("--").or_else(|| text.strip_prefix('-')).filter(|_| text.len() > 1)
        else {
            out.push(arg);
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (flag, None),
        };
        if values.contains(&name) {
            out.push(canonical(name).into());
            match inline {
                Some(value) => out.push(value.into()),
                None => out.extend(args.next()), // the value, whatever it looks like
            }
        } else if bools.contains(&name) {
            match inline.map(|v| v.to_ascii_lowercase()) {
                None => out.push(canonical(name).into()),
                Some(v) if ["1", "t", "true"].contains(&v.as_str()) => out.push(canonical(name).into()),
                Some(v) if ["0", "f", "false"].contains(&v.as_str()) => {}
                Some(_) => return Err(format!("-{name}: '{}' is not true or false", inline.unwrap_or(""))),
            }
        } else {
            out.push(arg);
        }
    }
    Ok(out)
}

fn positive(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{s}' is not a positive whole number")),
    }
}

fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("'{s}' is not a port number")),
    }
}

fn arg_err(e: pico_args::Error) -> String {
    e.to_string()
}

fn reject_rest(p: pico_args::Arguments) -> Result<(), String> {
    match p.finish().first() {
        Some(a) => Err(format!("unknown argument '{}' (see --help)", a.to_string_lossy())),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Options, String> {
        match parse(args.iter().map(OsString::from).collect())? {
            Command::Run(o) => Ok(o),
            other => panic!("not a run: {other:?}"),
        }
    }

    #[test]
    fn the_program_name_picks_enable_monit_access() {
        let argv = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        let access = |root: &str| Command::EnableMonitAccess(MonitAccessOptions { root: root.into() });
        assert_eq!(parse_invocation(argv(&["/var/vcap/bosh/etc/bosh-enable-monit-access"])), Ok(access("/")));
        assert_eq!(
            parse_invocation(argv(&["bosh-enable-monit-access", "-r", "/tmp/r"])),
            Ok(access("/tmp/r"))
        );
        assert!(parse_invocation(argv(&["bosh-enable-monit-access", "1000"])).is_err());
        assert!(matches!(parse_invocation(argv(&["/x/bosh-agent", "-v"])), Ok(Command::Version)));
        assert!(matches!(
            parse_invocation(argv(&["bosh-enable-monit-access-not", "-v"])),
            Ok(Command::Version)
        ));
        assert!(matches!(parse_invocation(Vec::new()), Ok(Command::Run(_))));
        let e = parse(argv(&["compile", "r.tgz"])).unwrap_err();
        assert!(e.starts_with("compile: "), "{e}");
    }

    #[test]
    fn accepts_the_stemcell_invocation() {
        let o = run(&["-P", "ubuntu", "-C", "/var/vcap/bosh/agent.json"]).unwrap();
        assert_eq!(o.platform, PlatformKind::Ubuntu);
        assert_eq!(o.supervisor, SupervisorKind::Monit);
        assert_eq!(o.base, PathBuf::from("/var/vcap"));
        assert_eq!(o.heartbeat_interval, Duration::from_secs(30));
    }

    #[test]
    fn accepts_the_ruby_flags() {
        let o = run(&[
            "-P",
            "dummy",
            "-C",
            "a.json",
            "-M",
            "dummy",
            "-b",
            "/tmp/b",
            "-c",
            "-I",
            "aws",
            "-n",
            "nats://h:1",
            "-a",
            "id",
            "-l",
            "debug",
            "-s",
            "/blobs",
            "-h",
            "5",
            "-t",
            "2826",
            "--no-alerts",
            "-r",
            "/tmp/r",
        ])
        .unwrap();
        assert!(o.configure && o.no_alerts);
        assert_eq!(
            (o.smtp_port, o.log_level, o.heartbeat_interval),
            (2826, LevelFilter::Debug, Duration::from_secs(5))
        );
        assert_eq!(o.root, PathBuf::from("/tmp/r"));
    }

    #[test]
    fn an_infrastructure_is_not_the_embedded_default() {
        let o = run(&["-I", "aws"]).unwrap();
        assert_eq!((o.platform, o.supervisor), (PlatformKind::Ubuntu, SupervisorKind::Monit));
        assert_eq!(o.base, PathBuf::from("/var/vcap"));
    }

    #[test]
    fn embedded_default_without_config() {
        let o = run(&[]).unwrap();
        assert_eq!((o.platform, o.supervisor, o.config), (PlatformKind::Dummy, SupervisorKind::Dummy, None));
        assert_eq!(o.base, PathBuf::from("agent-data"));
    }

    #[test]
    fn rejects_bad_input_with_one_line() {
        for args in [
            &["--bogus"][..],
            &["-P", "windows"],
            &["-h", "0"],
            &["-h", "x"],
            &["-t", "70000"],
            &["-l", "loud"],
            &["-C"],
        ] {
            let e = run(args).unwrap_err();
            assert!(!e.contains('\n') && !e.is_empty(), "{args:?}: {e}");
        }
    }

    #[test]
    fn accepts_the_go_flag_forms() {
        let o = run(&["-P=dummy", "--C", "/a.json", "--b=/tmp/b", "-c=true", "-no-alerts=false", "-h=7"])
            .unwrap();
        assert_eq!(
            (o.platform, o.config, o.base),
            (PlatformKind::Dummy, Some("/a.json".into()), "/tmp/b".into())
        );
        assert!(o.configure && !o.no_alerts);
        assert_eq!(o.heartbeat_interval, Duration::from_secs(7));
        assert!(!run(&["-c=false"]).unwrap().configure);
        // A value is never taken for a flag, however it looks.
        assert_eq!(run(&["-a", "-C=x"]).unwrap().agent_id.as_deref(), Some("-C=x"));
        assert!(run(&["-c=maybe"]).is_err());
        for version in [&["--version"][..], &["-v"], &["-v=true"], &["--v"]] {
            let args = version.iter().map(OsString::from).collect();
            assert_eq!(parse(args).unwrap(), Command::Version, "{version:?}");
        }
        let Command::Call(c) =
            parse(["call", "--mbus=nats://h:1", "-agent-id=a1", "ping"].map(OsString::from).to_vec())
                .unwrap()
        else {
            panic!()
        };
        assert_eq!((c.mbus.as_str(), c.agent_id.as_deref()), ("nats://h:1", Some("a1")));
        assert_eq!(parse(["call", "--help"].map(OsString::from).to_vec()).unwrap(), Command::Help);
        assert_eq!(parse(["call", "-help"].map(OsString::from).to_vec()).unwrap(), Command::Help);
    }

    #[test]
    fn parses_call() {
        let Command::Call(c) =
            parse(["call", "--agent-id", "a1", "get_state", r#"["full"]"#].map(OsString::from).to_vec())
                .unwrap()
        else {
            panic!()
        };
        assert_eq!((c.method.as_str(), c.arguments.len(), c.mbus.as_str()), ("get_state", 1, EMBEDDED_MBUS));
        assert!(parse(["call"].map(OsString::from).to_vec()).is_err());
        assert!(parse(["call", "ping", "{bad"].map(OsString::from).to_vec()).is_err());
    }
}
