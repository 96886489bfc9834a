//! Configuration: a builder, with the Stardust environment variables as its source in `init()`.

use std::fmt;
use std::time::Duration;

use crate::error::ConfigError;
use crate::report::commands::{DEFAULT_TIMEOUT, Handlers};
use crate::report::sink::Reporter;
use crate::util::url::{redact_url, server_url_problem, url_for_error};

/// Runtime configuration. `Config::from_env()` reads the Stardust environment variables;
/// builder methods override them.
///
/// | env var (any case) | builder | meaning |
/// |---|---|---|
/// | `StarServer` | [`server`](Config::server) / [`servers`](Config::servers) | server URL, or several separated by commas (fail-over) |
/// | `StarAppId` | [`app_id`](Config::app_id) | application id (default: the executable's name) |
/// | `StarSecret` | [`secret`](Config::secret) | application secret (never sent in plain text) |
/// | `StarAppName` | [`app_name`](Config::app_name) | display name |
/// | `StarVersion` | [`version`](Config::version) | application version, dotted numeric |
///
/// With the `skywalking` feature, the SkyWalking agents' variables also apply (names matched
/// ignoring case; see the crate guide's configuration table):
#[cfg_attr(feature = "skywalking", doc = "")]
#[cfg_attr(feature = "skywalking", doc = "| env var | builder | meaning |")]
#[cfg_attr(feature = "skywalking", doc = "|---|---|---|")]
#[cfg_attr(
    feature = "skywalking",
    doc = "| `SW_AGENT_COLLECTOR_BACKEND_SERVICES` | [`skywalking`](Config::skywalking) | OAP REST address, e.g. `http://oap:12800` (enables SkyWalking) |"
)]
#[cfg_attr(
    feature = "skywalking",
    doc = "| `SW_AGENT_NAME` | [`skywalking_service`](Config::skywalking_service) | service name (default: the app id) |"
)]
#[cfg_attr(
    feature = "skywalking",
    doc = "| `SW_AGENT_INSTANCE_NAME` | [`skywalking_instance`](Config::skywalking_instance) | instance name (default `<pid>@<hostname>`) |"
)]
#[cfg_attr(
    feature = "skywalking",
    doc = "| `SW_AGENT_COLLECTOR_HEARTBEAT_PERIOD` | [`skywalking_heartbeat`](Config::skywalking_heartbeat) | keep-alive period in seconds (default 30) |"
)]
///
/// With no Stardust server, no SkyWalking OAP and no reporter configured, reports go to the
/// console (stderr).
pub struct Config {
    pub(crate) servers: Vec<String>,
    /// Where `servers` came from, for error messages.
    pub(crate) servers_from: &'static str,
    pub(crate) app_id: Option<String>,
    pub(crate) app_id_from: &'static str,
    pub(crate) secret: Option<String>,
    pub(crate) app_name: Option<String>,
    pub(crate) version: Option<String>,
    /// The calling crate's name, version and build time (`config!()`), used where
    /// `app_name`/`version` are not set.
    pub(crate) application: Option<Application>,
    pub(crate) period: Duration,
    pub(crate) first_report_delay: Duration,
    pub(crate) max_samples: i32,
    pub(crate) max_errors: i32,
    pub(crate) slow_threshold: Duration,
    pub(crate) max_tag_length: i32,
    pub(crate) excludes: Vec<String>,
    pub(crate) console: Option<bool>,
    pub(crate) reporters: Vec<Box<dyn Reporter>>,
    /// Spans each thread may hand over before the aggregator takes them.
    pub(crate) handoff_capacity: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// PEM of the certificate authorities trusted for `https://` servers (replaces the
    /// built-in web roots when set).
    pub(crate) tls_ca_pem: Option<Vec<u8>>,
    /// Send process metrics (CPU, memory, threads, handles) in pings.
    pub(crate) process_metrics: bool,
    /// Without a `log` logger, print problems to stderr.
    pub(crate) stderr_diagnostics: bool,
    /// Errors also count under `ex:<Type>`.
    pub(crate) exception_spans: bool,
    /// Handlers of the server's commands, by name (any case).
    pub(crate) commands: Handlers,
    /// Set when a command handler was registered with an empty name.
    pub(crate) empty_command_name: bool,
    /// Bound of a command handler's run time.
    pub(crate) command_timeout: Duration,
    #[cfg(feature = "skywalking")]
    pub(crate) skywalking: crate::report::skywalking::SwConfig,
}

/// The calling crate as [`Config::application`] records it.
#[derive(Clone, Debug)]
pub(crate) struct Application {
    pub name: String,
    pub version: String,
    pub build_unix_ms: i64,
}

/// The longest `Version` the server stores (its column; longer is a `{code:500}`).
const MAX_VERSION_UNITS: usize = 50;

/// `version` as a .NET `System.Version` string, as the server parses it: 2 to 4 dot-separated
/// non-negative integers of at most `i32::MAX`, 50 characters at most. A leading `v`, a
/// prerelease (`-rc.1`) and build metadata (`+g1a2b`) are dropped; a single number gets `.0`;
/// parts past the fourth, or past the first that is not a number, are dropped. `None` when no
/// number is left.
pub(crate) fn normalize_version(version: &str) -> Option<String> {
    let v = version.trim();
    let v = v.strip_prefix(['v', 'V']).unwrap_or(v);
    let v = v.split(['-', '+', ' ']).next().unwrap_or("");
    let mut parts: Vec<String> = Vec::new();
    for p in v.split('.') {
        if parts.len() == 4 || p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
            break;
        }
        let n: u64 = p.parse().unwrap_or(u64::MAX);
        if n > i32::MAX as u64 {
            break;
        }
        parts.push(n.to_string());
    }
    match parts.len() {
        0 => return None,
        1 => parts.push("0".to_owned()),
        _ => {}
    }
    let mut out = parts.join(".");
    while out.len() > MAX_VERSION_UNITS && parts.len() > 2 {
        parts.pop();
        out = parts.join(".");
    }
    (out.len() <= MAX_VERSION_UNITS).then_some(out)
}

/// Upper bound of the delays and timeouts a `Config` takes (longer values are clamped).
const HOUR: Duration = Duration::from_secs(3600);

impl Default for Config {
    fn default() -> Self {
        Config::new()
    }
}

impl Config {
    /// Defaults only (no environment): console reporter, 60 s period, first report 5 s after
    /// the first span, 1 sample and 10 error samples per operation per period, slow-span
    /// threshold 5 s, tags cut to 1024 characters.
    pub fn new() -> Config {
        Config {
            servers: Vec::new(),
            servers_from: "Config::servers",
            app_id: None,
            app_id_from: "Config::app_id",
            secret: None,
            app_name: None,
            version: None,
            application: None,
            period: Duration::from_secs(60),
            first_report_delay: Duration::from_secs(5),
            max_samples: 1,
            max_errors: 10,
            slow_threshold: Duration::from_millis(5000),
            max_tag_length: 1024,
            excludes: Vec::new(),
            console: None,
            reporters: Vec::new(),
            handoff_capacity: 64 * 1024,
            shutdown_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            tls_ca_pem: None,
            process_metrics: true,
            stderr_diagnostics: true,
            exception_spans: true,
            commands: Handlers::default(),
            empty_command_name: false,
            command_timeout: DEFAULT_TIMEOUT,
            #[cfg(feature = "skywalking")]
            skywalking: Default::default(),
        }
    }

    /// Defaults, then the Stardust environment variables (names matched ignoring case).
    pub fn from_env() -> Config {
        Config::new().with_vars(
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// Applies `StarServer`, `StarAppId`, `StarSecret`, `StarAppName`, `StarVersion` from the
    /// given pairs (names matched ignoring case; empty values ignored).
    pub fn with_vars(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Config {
        for (k, v) in vars {
            let v = v.trim();
            if v.is_empty() {
                continue;
            }
            match k.to_ascii_lowercase().as_str() {
                "starserver" => {
                    self = self.servers(v.split(','));
                    self.servers_from = "StarServer";
                }
                "starappid" => {
                    self.app_id = Some(v.to_owned());
                    self.app_id_from = "StarAppId";
                }
                "starsecret" => self.secret = Some(v.to_owned()),
                "starappname" => self.app_name = Some(v.to_owned()),
                "starversion" => self.version = Some(v.to_owned()),
                #[cfg(feature = "skywalking")]
                "sw_agent_collector_backend_services" => {
                    self.skywalking.set_backends(v);
                    self.skywalking.backends_from = "SW_AGENT_COLLECTOR_BACKEND_SERVICES";
                }
                #[cfg(feature = "skywalking")]
                "sw_agent_name" => self.skywalking.service = Some(v.to_owned()),
                #[cfg(feature = "skywalking")]
                "sw_agent_instance_name" => self.skywalking.instance = Some(v.to_owned()),
                #[cfg(feature = "skywalking")]
                "sw_agent_collector_heartbeat_period" => match v.parse::<u64>() {
                    Ok(secs) if secs > 0 => {
                        self = self.skywalking_heartbeat(Duration::from_secs(secs))
                    }
                    _ => log::warn!(
                        "stardust: ignoring SW_AGENT_COLLECTOR_HEARTBEAT_PERIOD={v}: not a number of seconds"
                    ),
                },
                _ => {}
            }
        }
        self
    }

    /// The Stardust server's URL (`http://host:6600` or `https://…`). For fail-over across
    /// several servers use [`servers`](Config::servers); the environment variable `StarServer`
    /// takes them separated by commas.
    ///
    /// A user name and password (`http://user:password@host:6600`) never reach a log line or
    /// an error message. A URL that cannot be used as given makes `init` fail with
    /// `InvalidConfig`: a `/`, `?` or `#` in the user name or password (percent-encode them:
    /// `%2F`, `%3F`, `%23`; a `,` too, `%2C`, in `StarServer`), an `@` in the path (`%40`), a
    /// query or fragment, a character a URL cannot hold as it is (white space, a control
    /// character, a quote, a non-ASCII letter), no host, or a port that is not a number up to
    /// 65535. The error shows the URL as `scheme://host:port` at most (`scheme://…` when the
    /// host cannot be told apart), never its password.
    pub fn server(mut self, url: impl Into<String>) -> Config {
        self = self.servers([url.into()]);
        self.servers_from = "Config::server";
        self
    }

    /// Stardust servers in fail-over order: reports go to the first that answers.
    pub fn servers<S: Into<String>>(mut self, urls: impl IntoIterator<Item = S>) -> Config {
        self.servers = urls
            .into_iter()
            .map(|s| s.into().trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        self.servers_from = "Config::servers";
        self
    }

    /// Application id (the app's name on the Stardust server): not empty, at most 50
    /// characters (UTF-16 units, as the server counts), no control character (a line break,
    /// an escape). A `code` the server's login reply hands out (an auto-registration) is
    /// adopted only when it passes the same checks.
    pub fn app_id(mut self, app_id: impl Into<String>) -> Config {
        self.app_id = Some(app_id.into());
        self.app_id_from = "Config::app_id";
        self
    }

    /// Application secret. Only its salted hash is ever sent.
    pub fn secret(mut self, secret: impl Into<String>) -> Config {
        self.secret = Some(secret.into());
        self
    }

    /// Display name of the application.
    pub fn app_name(mut self, name: impl Into<String>) -> Config {
        self.app_name = Some(name.into());
        self
    }

    /// Application version (e.g. `1.2.0`), sent as the instance's version. The server needs a
    /// .NET `System.Version` (2 to 4 numeric parts): any other form is reduced to one
    /// (`v1.4.0-rc.2+g1a2b` → `1.4.0`, `7` → `7.0`), with one log line. Overrides the crate
    /// version [`config!`](crate::config!) gives; `StarVersion` overrides both.
    pub fn version(mut self, version: impl Into<String>) -> Config {
        self.version = Some(version.into());
        self
    }

    /// The application's name, version and build time (Unix ms, UTC), as
    /// [`config!`](crate::config!) and [`init!`](crate::init!) capture them from the calling
    /// crate. The name is the display name unless [`app_name`](Config::app_name) or
    /// `StarAppName` is set; the version is used unless [`version`](Config::version) or
    /// `StarVersion` is set; the build time is sent as `Compile` at login, so the server keeps
    /// the newest build's version. Never pass "now" as the build time: a restart of an older
    /// build would then look newer.
    pub fn application(
        mut self,
        name: impl Into<String>,
        version: impl Into<String>,
        build_unix_ms: i64,
    ) -> Config {
        self.application = Some(Application {
            name: name.into(),
            version: version.into(),
            build_unix_ms,
        });
        self
    }

    /// Report period until the server says otherwise (clamped to 1 s ..= 1 h). A period from the
    /// server takes effect at once: the next cut comes at most one new period after the last.
    pub fn period(mut self, period: Duration) -> Config {
        self.period = period.clamp(Duration::from_secs(1), Duration::from_secs(3600));
        self
    }

    /// Delay from the first span to the first report (default 5 s, at most 1 h).
    pub fn first_report_delay(mut self, delay: Duration) -> Config {
        self.first_report_delay = delay.min(HOUR);
        self
    }

    /// Normal samples per operation per period (default 1).
    pub fn max_samples(mut self, n: u32) -> Config {
        self.max_samples = n.min(1000) as i32;
        self
    }

    /// Error samples per operation per period (default 10).
    pub fn max_errors(mut self, n: u32) -> Config {
        self.max_errors = n.min(1000) as i32;
        self
    }

    /// Spans slower than this are sampled (up to 10× `max_samples`); zero disables (at most
    /// 1 h).
    pub fn slow_threshold(mut self, threshold: Duration) -> Config {
        self.slow_threshold = threshold.min(HOUR);
        self
    }

    /// Tags are cut to this many characters; zero disables tags.
    pub fn max_tag_length(mut self, n: u32) -> Config {
        self.max_tag_length = n.min(1 << 20) as i32;
        self
    }

    /// Operation-name patterns (`*`, `?`; whole name, any case) never reported.
    pub fn excludes<S: Into<String>>(mut self, patterns: impl IntoIterator<Item = S>) -> Config {
        self.excludes = patterns.into_iter().map(Into::into).collect();
        self
    }

    /// Forces the console reporter on or off (default: on when no server and no reporter is
    /// configured).
    pub fn console(mut self, on: bool) -> Config {
        self.console = Some(on);
        self
    }

    /// Adds a reporter that receives every period's report.
    pub fn reporter(mut self, reporter: impl Reporter) -> Config {
        self.reporters.push(Box::new(reporter));
        self
    }

    /// How many span records each thread may hand over before the aggregator takes them
    /// (default 65,536; rounded up to a multiple of 256). Spans are counted on their own
    /// thread whatever this is; records travel only for spans that may become samples (and,
    /// with SkyWalking, for every span). Past it records are dropped and counted
    /// ([`dropped_samples`](crate::dropped_samples)); memory stays bounded.
    pub fn handoff_capacity(mut self, spans: usize) -> Config {
        self.handoff_capacity = spans.max(1);
        self
    }

    /// Timeout of each HTTP call to the server (default 5 s; 10 ms ..= 10 min).
    pub fn request_timeout(mut self, timeout: Duration) -> Config {
        self.request_timeout = timeout.clamp(Duration::from_millis(10), Duration::from_secs(600));
        self
    }

    /// Trusts exactly the certificate authorities in this PEM for `https://` servers (a
    /// private CA or a self-signed server certificate), instead of the built-in web roots.
    /// A PEM without any certificate makes `init` fail with `InvalidConfig`. An untrusted
    /// server certificate is a connection error (logged, reports kept for retry); there is
    /// never a fall-back to plain HTTP.
    pub fn tls_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Config {
        self.tls_ca_pem = Some(pem.into());
        self
    }

    /// Sends the process's metrics (CPU time and usage, resident memory, threads, open
    /// handles; read from `/proc` on Linux) in every ping (default on). Off, or on a system
    /// without `/proc`, pings carry only the process's identity, and the server shows the
    /// metrics as 0.
    pub fn process_metrics(mut self, on: bool) -> Config {
        self.process_metrics = on;
        self
    }

    /// Every error also counts under an operation `ex:<Type>` (default on, as the .NET client
    /// does), which feeds Stardust's per-exception view: a child of the failing span named
    /// after the error's type (`ex:ParseIntError`; `ex:panic` for a panic), from the failing
    /// span's start to the error, not itself an error, with the error text as its tag when
    /// sampled. An error returned with `?` through several traced functions counts once.
    pub fn exception_spans(mut self, on: bool) -> Config {
        self.exception_spans = on;
        self
    }

    /// When no `log` logger is installed, the runtime's warnings and errors (server unreachable,
    /// login refused, not a Stardust server, spans dropped, data lost at shutdown) are also
    /// printed to stderr, once per condition (repeated at most every 5 minutes, with a count)
    /// and with a hint of what to check. Default on; `false` turns that off. With a logger
    /// installed they only go to the logger.
    pub fn stderr_diagnostics(mut self, on: bool) -> Config {
        self.stderr_diagnostics = on;
        self
    }

    /// Handles the Stardust server's command `name` (matched ignoring case; registering a name
    /// again replaces the handler). Commands are sent from the server's web UI or
    /// `/App/SendCommand` and delivered in the replies to the runtime's pings; the handler gets
    /// the command's argument (`""` when it has none) and its result is sent back: `Ok(text)`
    /// as status Done with `text`, `Err(text)` as status Error with `text` (the server keeps
    /// 500 characters of either).
    ///
    /// Handlers run one at a time on a thread of the runtime's (never on the thread that talks
    /// to the server), each in a span `cmd:<name>` (the name as registered here) that
    /// continues the command's trace; commands without a handler share the span name
    /// `cmd:(unknown)`, so names chosen by the server never become operation names. A
    /// handler that panics is answered Error with the panic's text; one that runs longer than
    /// [`command_timeout`](Config::command_timeout) is answered Error `timed out …` and its
    /// late result is ignored (Rust cannot stop it: keep handlers short, or let them hand the
    /// work on). A command with a start time is answered Processing at once and run at that
    /// time; an expired one is answered Cancelled without running; a command without a handler
    /// is answered Error `找不到服务[<name>]`, as the .NET client does. Each command id is run
    /// and answered once, however often the server re-sends it.
    ///
    /// Built in, unless registered here: `app/freeMemory` (the web UI's "free memory" action)
    /// on Linux with glibc, which returns the allocator's free memory to the system
    /// (`malloc_trim`) and answers with the resident memory before and after. Without a
    /// Stardust server handlers are never called.
    ///
    /// ```no_run
    /// let config = stardust_runtime::config!()
    ///     .command("app/echo", |arg: &str| Ok(format!("echo {arg}")))
    ///     .command("cache/clear", |_: &str| -> Result<String, String> {
    ///         // clear it ...
    ///         Ok("cleared".to_owned())
    ///     });
    /// let _guard = stardust_runtime::init_with(config).unwrap();
    /// ```
    pub fn command<F>(mut self, name: impl Into<String>, handler: F) -> Config
    where
        F: Fn(&str) -> Result<String, String> + Send + Sync + 'static,
    {
        let name = name.into();
        if name.trim().is_empty() {
            self.empty_command_name = true;
        } else {
            self.commands
                .insert(name.trim().to_owned(), std::sync::Arc::new(handler));
        }
        self
    }

    /// How long a command handler may run before the command is answered Error `timed out`
    /// (default 30 s; 10 ms ..= 1 h). See [`command`](Config::command).
    pub fn command_timeout(mut self, timeout: Duration) -> Config {
        self.command_timeout = timeout.clamp(Duration::from_millis(10), HOUR);
        self
    }

    /// Reports segments to the Apache SkyWalking OAP at this REST address (`http://host:12800`;
    /// several separated by commas fail over; a bare `host:port` means `http://`). Works beside
    /// the Stardust server. See [`skywalking`](crate::report::skywalking).
    #[cfg(feature = "skywalking")]
    pub fn skywalking(mut self, oap: &str) -> Config {
        self.skywalking.backends_from = "Config::skywalking";
        self.skywalking.set_backends(oap);
        self
    }

    /// The SkyWalking service name (default: the app id). Cut to 70 characters.
    #[cfg(feature = "skywalking")]
    pub fn skywalking_service(mut self, name: impl Into<String>) -> Config {
        self.skywalking.service = Some(name.into());
        self
    }

    /// The SkyWalking instance name (default `<pid>@<hostname>`). Cut to 70 characters.
    #[cfg(feature = "skywalking")]
    pub fn skywalking_instance(mut self, name: impl Into<String>) -> Config {
        self.skywalking.instance = Some(name.into());
        self
    }

    /// Period of the SkyWalking keep-alive (default 30 s, at least 100 ms); instance properties
    /// are sent at start and every 10 periods.
    #[cfg(feature = "skywalking")]
    pub fn skywalking_heartbeat(mut self, period: Duration) -> Config {
        self.skywalking.heartbeat = Some(period.max(Duration::from_millis(100)));
        self
    }

    /// Budget for shutdown, default 3 s, at most 1 h: the last period and every queued report
    /// are sent (retried, oldest first) until a quarter of it (at most 1 s) is left, which is
    /// kept for the logout; what still fails then is lost, with one log line saying how much.
    /// A longer budget waits out a server restart or fail-over instead of losing the period;
    /// shutdown ends as soon as everything is delivered. Also the deadline of
    /// [`flush`](crate::flush) (at least 1 s there).
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Config {
        self.shutdown_timeout = timeout.min(HOUR);
        self
    }
}

impl Config {
    /// Checks the values `init` cannot work with; the error names where each came from.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.empty_command_name {
            return Err(ConfigError::new(
                "Config::command",
                "a command handler was registered with an empty name",
            ));
        }
        for (i, s) in self.servers.iter().enumerate() {
            check_url(self.servers_from, "server", s, (i, self.servers.len()))?;
        }
        if let Some(id) = &self.app_id {
            if id.trim().is_empty() {
                // Said as before: the id itself is not worth quoting.
                return Err(ConfigError::new(
                    self.app_id_from,
                    "the application id is empty",
                ));
            }
            if let Some(problem) = crate::util::text::app_id_problem(id) {
                return Err(ConfigError::new(
                    self.app_id_from,
                    format!(
                        "the application id `{}` {problem}",
                        crate::util::text::escaped(id)
                    ),
                ));
            }
        }
        #[cfg(feature = "skywalking")]
        for (i, b) in self.skywalking.backends.iter().enumerate() {
            check_url(
                self.skywalking.backends_from,
                "SkyWalking OAP",
                b,
                (i, self.skywalking.backends.len()),
            )?;
        }
        Ok(())
    }
}

/// An `http://` or `https://` URL the runtime can use as it is (see
/// [`server_url_problem`]). The error never holds a password: it shows the URL as
/// [`url_for_error`] does, and says what is wrong in words of its own. `at` is the URL's place in
/// its list (0-based) and the list's length.
fn check_url(
    setting: &'static str,
    what: &str,
    url: &str,
    at: (usize, usize),
) -> Result<(), ConfigError> {
    let ok = ["http://", "https://"]
        .iter()
        .any(|scheme| url.len() > scheme.len() && url.starts_with(scheme));
    if !ok {
        return Err(ConfigError::new(
            setting,
            format!(
                "{what} `{}` is not an http:// or https:// URL",
                url_for_error(url)
            ),
        ));
    }
    match server_url_problem(url) {
        None => Ok(()),
        Some(problem) => {
            let place = if at.1 > 1 {
                format!(" ({} of {})", at.0 + 1, at.1)
            } else {
                String::new()
            };
            Err(ConfigError::new(
                setting,
                format!(
                    "{what} `{}`{place} cannot be used: {problem}",
                    url_for_error(url)
                ),
            ))
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Config");
        d.field(
            "servers",
            &self
                .servers
                .iter()
                .map(|s| redact_url(s))
                .collect::<Vec<_>>(),
        )
        .field("app_id", &self.app_id)
        .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
        .field("app_name", &self.app_name)
        .field("version", &self.version)
        .field("application", &self.application)
        .field("period", &self.period)
        .field("first_report_delay", &self.first_report_delay)
        .field("max_samples", &self.max_samples)
        .field("max_errors", &self.max_errors)
        .field("slow_threshold", &self.slow_threshold)
        .field("max_tag_length", &self.max_tag_length)
        .field("excludes", &self.excludes)
        .field("console", &self.console)
        .field("reporters", &self.reporters.len())
        .field("handoff_capacity", &self.handoff_capacity)
        .field("shutdown_timeout", &self.shutdown_timeout)
        .field("request_timeout", &self.request_timeout)
        .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(|p| p.len()))
        .field("process_metrics", &self.process_metrics)
        .field("stderr_diagnostics", &self.stderr_diagnostics)
        .field("exception_spans", &self.exception_spans)
        .field("commands", &self.commands.names())
        .field("command_timeout", &self.command_timeout);
        #[cfg(feature = "skywalking")]
        d.field("skywalking", &self.skywalking);
        d.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_names_match_ignoring_case_and_builder_overrides() {
        let c = Config::new().with_vars([
            (
                "STARSERVER".to_owned(),
                " http://a:6600/ , http://b:6600".to_owned(),
            ),
            ("starappid".to_owned(), "app".to_owned()),
            ("StarSecret".to_owned(), "s3cret".to_owned()),
            ("StarVersion".to_owned(), "".to_owned()),
            ("OTHER".to_owned(), "x".to_owned()),
        ]);
        assert_eq!(c.servers, ["http://a:6600", "http://b:6600"]);
        assert_eq!(c.app_id.as_deref(), Some("app"));
        assert_eq!(c.version, None);
        let c = c.app_id("other");
        assert_eq!(c.app_id.as_deref(), Some("other"));
    }

    #[cfg(feature = "skywalking")]
    #[test]
    fn skywalking_env_names_like_the_agents() {
        let c = Config::new().with_vars([
            (
                "SW_AGENT_COLLECTOR_BACKEND_SERVICES".to_owned(),
                "http://oap:12800/".to_owned(),
            ),
            ("SW_AGENT_NAME".to_owned(), "orders".to_owned()),
            ("sw_agent_instance_name".to_owned(), "orders-1".to_owned()),
            (
                "SW_AGENT_COLLECTOR_HEARTBEAT_PERIOD".to_owned(),
                "5".to_owned(),
            ),
        ]);
        assert_eq!(c.skywalking.backends, ["http://oap:12800"]);
        assert_eq!(c.skywalking.service.as_deref(), Some("orders"));
        assert_eq!(c.skywalking.instance.as_deref(), Some("orders-1"));
        assert_eq!(c.skywalking.heartbeat, Some(Duration::from_secs(5)));
        let c = c.skywalking("oap2:12800").skywalking_service("billing");
        assert_eq!(c.skywalking.backends, ["http://oap2:12800"]);
        assert_eq!(c.skywalking.service.as_deref(), Some("billing"));
        assert!(format!("{c:?}").contains("oap2"));
    }

    #[test]
    fn bad_values_name_their_setting() {
        let e = Config::new()
            .with_vars([("StarServer".to_owned(), "ftp://u:pw@h, http://b".to_owned())])
            .validate()
            .unwrap_err();
        assert_eq!(e.setting(), "StarServer");
        assert_eq!(
            e.problem(),
            "server `ftp://h` is not an http:// or https:// URL"
        );
        let e = Config::new()
            .server("localhost:6600")
            .validate()
            .unwrap_err();
        assert_eq!(e.setting(), "Config::server");
        assert!(e.to_string().contains("`localhost:6600`"), "{e}");
        let e = Config::new().app_id(" ").validate().unwrap_err();
        assert_eq!(e.setting(), "Config::app_id");
        let e = Config::new()
            .with_vars([("StarAppId".to_owned(), "x".repeat(51))])
            .validate()
            .unwrap_err();
        assert_eq!(e.setting(), "StarAppId");
        assert!(e.problem().contains("at most 50"), "{e}");
        let e = Config::new()
            .command(" ", |_: &str| Ok(String::new()))
            .validate()
            .unwrap_err();
        assert_eq!(e.setting(), "Config::command");
        let c = Config::new().command("App/Echo", |a: &str| Ok(a.to_owned()));
        assert!(c.validate().is_ok());
        assert!(format!("{c:?}").contains(r#"commands: ["App/Echo"]"#));
        let ok = Config::new().servers(["http://a:1/", "https://b"]);
        assert_eq!(ok.servers, ["http://a:1", "https://b"]);
        assert!(ok.validate().is_ok());
    }

    #[test]
    fn unusable_server_urls_fail_without_their_password() {
        let e = Config::new()
            .server("http://user:P4ss#w0rd@127.0.0.1:6600")
            .validate()
            .unwrap_err();
        assert_eq!(e.setting(), "Config::server");
        assert_eq!(
            e.problem(),
            "server `http://127.0.0.1:6600` cannot be used: it has an `@` after a `/`, `?` or `#`: in a user name or password write those as %2F, %3F and %23 (and an `@` in a path as %40)"
        );
        for (servers, password) in [
            ("http://user:P4ss/w0rd@h:1, http://b:1", "w0rd"),
            ("http://b:1, http://user:1234/w0rd@h:1/x", "w0rd"),
            ("http://u:s3cr3t w@h:1", "s3cr3t"),
            ("http://u:s3cr3t\r\n@h:1", "s3cr3t"),
            // A comma in the password splits the value: neither piece shows it.
            ("http://u:s3cr,et@h:1", "s3cr"),
            ("http://b:1,x:s3cr,et@h:1", "s3cr"),
            ("ftp://u:s3cr#et@h", "s3cr"),
        ] {
            let e = Config::new()
                .with_vars([("StarServer".to_owned(), servers.to_owned())])
                .validate()
                .unwrap_err();
            assert_eq!(e.setting(), "StarServer");
            assert!(!e.to_string().contains(password), "{servers}: {e}");
        }
        let e = Config::new()
            .servers(["http://a:1", "http://user:P4ss/w0rd@h:1"])
            .validate()
            .unwrap_err();
        assert!(
            e.problem().starts_with(
                "server `http://h:1` (2 of 2) cannot be used: it has an `@` after a `/`"
            ),
            "{e}"
        );
        assert!(
            Config::new()
                .server("http://user:P4ss%23w0rd@127.0.0.1:6600")
                .validate()
                .is_ok()
        );
        let e = Config::new()
            .app_id("orders\r\nERROR forged")
            .validate()
            .unwrap_err();
        assert_eq!(
            e.problem(),
            "the application id `orders\\r\\nERROR forged` holds a control character (a line break, an escape, ...)"
        );
    }

    #[test]
    fn versions_become_dotnet_versions() {
        for (given, sent) in [
            ("1.2.3", Some("1.2.3")),
            ("1.4.0-rc.2+g1a2b", Some("1.4.0")),
            ("v1.2", Some("1.2")),
            ("V3.10.2026.0801", Some("3.10.2026.801")),
            ("7", Some("7.0")),
            ("1.2.3.4.5", Some("1.2.3.4")),
            ("1..2", Some("1.0")),
            ("1.2.3.2150000000", Some("1.2.3")),
            ("beta", None),
            ("", None),
        ] {
            assert_eq!(normalize_version(given).as_deref(), sent, "{given}");
        }
    }

    #[test]
    fn debug_redacts_the_secret() {
        let c = Config::new().secret("hunter2");
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"));
        assert!(text.contains("<redacted>"));
    }
}
