//! Configuration: a builder, with the Stardust environment variables as its source in `init()`.

use std::fmt;
use std::time::Duration;

use crate::report::sink::Reporter;

/// Runtime configuration. `Config::from_env()` reads the Stardust environment variables;
/// builder methods override them.
///
/// | env var (any case) | builder | meaning |
/// |---|---|---|
/// | `StarServer` | [`server`](Config::server) | server URL, or several separated by commas (fail-over) |
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
    pub(crate) app_id: Option<String>,
    pub(crate) secret: Option<String>,
    pub(crate) app_name: Option<String>,
    pub(crate) version: Option<String>,
    pub(crate) period: Duration,
    pub(crate) first_report_delay: Duration,
    pub(crate) max_samples: i32,
    pub(crate) max_errors: i32,
    pub(crate) timeout: Duration,
    pub(crate) max_tag_length: i32,
    pub(crate) excludes: Vec<String>,
    pub(crate) console: Option<bool>,
    pub(crate) reporters: Vec<Box<dyn Reporter>>,
    pub(crate) channel_capacity: usize,
    pub(crate) shutdown_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// PEM of the certificate authorities trusted for `https://` servers (replaces the
    /// built-in web roots when set).
    pub(crate) tls_ca_pem: Option<Vec<u8>>,
    #[cfg(feature = "skywalking")]
    pub(crate) skywalking: crate::report::skywalking::SwConfig,
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
            app_id: None,
            secret: None,
            app_name: None,
            version: None,
            period: Duration::from_secs(60),
            first_report_delay: Duration::from_secs(5),
            max_samples: 1,
            max_errors: 10,
            timeout: Duration::from_millis(5000),
            max_tag_length: 1024,
            excludes: Vec::new(),
            console: None,
            reporters: Vec::new(),
            channel_capacity: 256,
            shutdown_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(5),
            tls_ca_pem: None,
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
                "starserver" => self = self.server(v),
                "starappid" => self.app_id = Some(v.to_owned()),
                "starsecret" => self.secret = Some(v.to_owned()),
                "starappname" => self.app_name = Some(v.to_owned()),
                "starversion" => self.version = Some(v.to_owned()),
                #[cfg(feature = "skywalking")]
                "sw_agent_collector_backend_services" => self.skywalking.set_backends(v),
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

    /// Stardust server URL; a comma-separated list gives fail-over servers.
    pub fn server(mut self, servers: &str) -> Config {
        self.servers = servers
            .split(',')
            .map(|s| s.trim().trim_end_matches('/').to_owned())
            .filter(|s| !s.is_empty())
            .collect();
        self
    }

    /// Application id (the app's name on the Stardust server).
    pub fn app_id(mut self, app_id: impl Into<String>) -> Config {
        self.app_id = Some(app_id.into());
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

    /// Application version, dotted numeric (e.g. `1.2.0`).
    pub fn version(mut self, version: impl Into<String>) -> Config {
        self.version = Some(version.into());
        self
    }

    /// Report period until the server says otherwise (clamped to 1 s ..= 1 h).
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
    pub fn slow_threshold(mut self, timeout: Duration) -> Config {
        self.timeout = timeout.min(HOUR);
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

    /// How many span records each thread may hand over before the aggregator takes them, in
    /// units of 256 (default 256, i.e. 65,536 records per thread). Spans are counted on their
    /// own thread whatever this is; records travel only for spans that may become samples (and,
    /// with SkyWalking, for every span). Past it records are dropped and counted
    /// ([`dropped_samples`](crate::dropped_samples)); memory stays bounded.
    pub fn channel_capacity(mut self, batches: usize) -> Config {
        self.channel_capacity = batches.max(1);
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

    /// Reports segments to the Apache SkyWalking OAP at this REST address (`http://host:12800`;
    /// several separated by commas fail over; a bare `host:port` means `http://`). Works beside
    /// the Stardust server. See [`skywalking`](crate::report::skywalking).
    #[cfg(feature = "skywalking")]
    pub fn skywalking(mut self, oap: &str) -> Config {
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

    /// Upper bound for shutdown (last report and logout), default 3 s, at most 1 h.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Config {
        self.shutdown_timeout = timeout.min(HOUR);
        self
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
                .map(|s| crate::util::url::redact_url(s))
                .collect::<Vec<_>>(),
        )
        .field("app_id", &self.app_id)
        .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
        .field("app_name", &self.app_name)
        .field("version", &self.version)
        .field("period", &self.period)
        .field("first_report_delay", &self.first_report_delay)
        .field("max_samples", &self.max_samples)
        .field("max_errors", &self.max_errors)
        .field("timeout", &self.timeout)
        .field("max_tag_length", &self.max_tag_length)
        .field("excludes", &self.excludes)
        .field("console", &self.console)
        .field("reporters", &self.reporters.len())
        .field("channel_capacity", &self.channel_capacity)
        .field("shutdown_timeout", &self.shutdown_timeout)
        .field("request_timeout", &self.request_timeout)
        .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(|p| p.len()));
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
    fn debug_redacts_the_secret() {
        let c = Config::new().secret("hunter2");
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"));
        assert!(text.contains("<redacted>"));
    }
}
