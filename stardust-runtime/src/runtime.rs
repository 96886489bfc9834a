//! Starting and stopping the runtime: `init`, `Guard`, `flush`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::aggregator::{Aggregator, Identity, Tap};
use crate::clock;
use crate::collector::{self, ENABLED, GENERATION, Msg};
use crate::config::Config;
use crate::console::ConsoleReporter;
use crate::settings::{SETTINGS, Snapshot};
use crate::span;
use crate::stardust::{StardustOptions, StardustSink};
use crate::sysinfo;
use crate::uploader::{FlushOutcome, Sink, Undelivered, Uploader, UserReporter};

/// Why `init` failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum InitError {
    /// The runtime is already running; drop its [`Guard`] first.
    AlreadyInitialized,
    /// A configuration value is unusable.
    InvalidConfig(String),
    /// A background thread could not be started.
    Spawn(std::io::Error),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InitError::AlreadyInitialized => {
                f.write_str("stardust runtime is already initialised (drop its Guard first)")
            }
            InitError::InvalidConfig(why) => write!(f, "invalid stardust configuration: {why}"),
            InitError::Spawn(e) => write!(f, "cannot start a stardust thread: {e}"),
        }
    }
}

impl std::error::Error for InitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InitError::Spawn(e) => Some(e),
            _ => None,
        }
    }
}

struct Running {
    tx: Sender<Msg>,
    threads: Vec<JoinHandle<()>>,
    shutdown_timeout: Duration,
    /// Tells the uploader that shutdown began.
    stopping: Arc<AtomicBool>,
    #[cfg(feature = "skywalking")]
    skywalking: Option<crate::skywalking::Handle>,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

/// Keeps the runtime running. Dropping it reports the last period and every report still queued
/// for retry, logs out and stops the background threads, within the configured
/// [shutdown timeout](Config::shutdown_timeout) (default 3 s) even when a server hangs; what
/// still fails at that deadline is lost, and one log line says how much.
#[must_use = "the runtime shuts down when the Guard is dropped"]
pub struct Guard {
    _private: (),
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Guard")
    }
}

impl Guard {
    /// Cuts the current period now and waits (bounded) until it is delivered; see [`flush`].
    pub fn flush(&self) -> bool {
        flush()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        shutdown();
    }
}

/// Starts the runtime with [`Config::from_env`]. See [`init_with`].
pub fn init() -> Result<Guard, InitError> {
    init_with(Config::from_env())
}

/// Starts the runtime: the aggregator and uploader threads, and the reporters. Never blocks on
/// the network. Returns [`InitError::AlreadyInitialized`] while another [`Guard`] is alive.
pub fn init_with(config: Config) -> Result<Guard, InitError> {
    let mut running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    if running.is_some() {
        return Err(InitError::AlreadyInitialized);
    }
    for s in &config.servers {
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            return Err(InitError::InvalidConfig(format!(
                "server `{}` is not an http:// or https:// URL",
                crate::http::redact_url(s)
            )));
        }
    }
    clock::init();
    clock::set_server_offset_ms(0);
    SETTINGS.restore(Snapshot {
        max_samples: config.max_samples,
        max_errors: config.max_errors,
        timeout_ms: config.timeout.as_millis().min(i32::MAX as u128) as i32,
        max_tag_length: config.max_tag_length,
    });
    SETTINGS.period_secs.store(
        config.period.as_secs().clamp(1, 3600) as u32,
        Ordering::Relaxed,
    );
    SETTINGS.set_excludes(config.excludes.clone());
    collector::reset_dropped();

    let identity = Identity {
        app_id: config.app_id.clone().unwrap_or_else(sysinfo::process_name),
        app_name: config.app_name.clone(),
        client_id: format!("{}@{}", sysinfo::primary_ipv4(), std::process::id()),
        version: config
            .version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
    };

    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    #[cfg_attr(not(feature = "skywalking"), allow(unused_mut))]
    let mut taps: Vec<Box<dyn Tap>> = Vec::new();
    #[cfg(feature = "skywalking")]
    let skywalking = if config.skywalking.backends.is_empty() {
        None
    } else {
        let (tap, handle) =
            crate::skywalking::start(&config.skywalking, &identity.app_id, config.request_timeout)?;
        taps.push(tap);
        Some(handle)
    };
    #[cfg(feature = "skywalking")]
    let other_backend = skywalking.is_some();
    #[cfg(not(feature = "skywalking"))]
    let other_backend = false;
    let console = config
        .console
        .unwrap_or(config.servers.is_empty() && config.reporters.is_empty() && !other_backend);
    if console {
        sinks.push(Box::new(ConsoleReporter::new()));
    }
    let tls_roots = match &config.tls_ca_pem {
        Some(pem) => Some(crate::stardust::parse_ca_pem(pem).map_err(InitError::InvalidConfig)?),
        None => None,
    };
    if !config.servers.is_empty() {
        sinks.push(Box::new(StardustSink::new(StardustOptions {
            tls_roots,
            servers: config.servers.clone(),
            app_id: identity.app_id.clone(),
            app_name: identity.app_name.clone(),
            secret: config.secret.clone(),
            version: identity.version.clone(),
            client_id: identity.client_id.clone(),
            request_timeout: config.request_timeout,
        })));
    }
    let Config {
        reporters,
        channel_capacity,
        shutdown_timeout,
        first_report_delay,
        ..
    } = config;
    sinks.extend(
        reporters
            .into_iter()
            .map(|r| Box::new(UserReporter(r)) as Box<dyn Sink>),
    );

    collector::MAILBOX_CAPACITY.store(
        channel_capacity.saturating_mul(collector::BATCH_CAPACITY),
        Ordering::Relaxed,
    );
    let (tx, rx) = crossbeam_channel::bounded::<Msg>(16);
    let (up_tx, up_rx) = crossbeam_channel::bounded(1024);
    let stopping = Arc::new(AtomicBool::new(false));
    let uploader = Uploader {
        rx: up_rx,
        sinks,
        shutdown_timeout,
        stopping: stopping.clone(),
    };
    let aggregator = Aggregator::new(rx, up_tx, identity, first_report_delay, taps);

    let up_thread = std::thread::Builder::new()
        .name("stardust-uploader".into())
        .spawn(move || {
            span::suppress_this_thread();
            uploader.run()
        })
        .map_err(InitError::Spawn)?;
    let agg_thread = std::thread::Builder::new()
        .name("stardust-aggregator".into())
        .spawn(move || {
            span::suppress_this_thread();
            aggregator.run()
        })
        .map_err(InitError::Spawn)?;

    let generation = GENERATION.fetch_add(1, Ordering::AcqRel) + 1;
    collector::install(generation, tx.clone());
    ENABLED.store(true, Ordering::Release);
    *running = Some(Running {
        tx,
        threads: vec![agg_thread, up_thread],
        shutdown_timeout,
        stopping,
        #[cfg(feature = "skywalking")]
        skywalking,
    });
    Ok(Guard { _private: () })
}

/// Cuts the current period now: every span finished before this call (on any thread whose
/// outermost span has closed, and on this thread) is reported, together with every report
/// still queued for retry, oldest first. Failed sends are retried with a short backoff (after
/// a new login on code 401, and on the next server of the list) until the deadline: the
/// [shutdown timeout](Config::shutdown_timeout), at least 1 s.
///
/// Returns only when that is done or the deadline passed, and says which: `true` when every
/// reporter delivered the cut and the queue before it; `false` when the runtime is not running
/// or the deadline passed first. What was not delivered then stays queued and is retried as
/// usual (a log line says how many reports and spans). With the `skywalking` feature it also
/// waits until the SkyWalking reporter has posted the segments cut so far.
pub fn flush() -> bool {
    match flush_outcome() {
        Ok(()) => true,
        Err(e) => {
            log::debug!("stardust: flush: {e}");
            false
        }
    }
}

/// Why [`flush`] returned false. Internal for now: `flush` may return it one day.
#[derive(Debug)]
pub(crate) enum FlushError {
    /// No runtime is running, or it stopped during the flush.
    NotRunning,
    /// The deadline passed first. The counts of what is still queued, when a reporter said so
    /// (`None`: no answer in time, e.g. a reporter busy with an earlier call).
    TimedOut(Option<Undelivered>),
}

impl fmt::Display for FlushError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushError::NotRunning => f.write_str("the runtime is not running"),
            FlushError::TimedOut(Some(u)) => {
                write!(f, "deadline passed; {u} not delivered yet (kept for retry)")
            }
            FlushError::TimedOut(None) => {
                f.write_str("deadline passed; no answer from the reporters")
            }
        }
    }
}

/// [`flush`], with the outcome.
pub(crate) fn flush_outcome() -> Result<(), FlushError> {
    span::flush_thread();
    let (tx, timeout) = {
        let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        match running.as_ref() {
            Some(r) => (r.tx.clone(), r.shutdown_timeout),
            None => return Err(FlushError::NotRunning),
        }
    };
    #[cfg(feature = "skywalking")]
    let skywalking = RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .as_ref()
        .and_then(|r| r.skywalking.as_ref().map(|h| h.control()));
    let deadline = Instant::now() + timeout.max(Duration::from_secs(1));
    // The reporters stop a little earlier, so their answer is here by the deadline.
    let reporters_deadline = deadline - Duration::from_millis(50);
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
    match tx.send_deadline(Msg::Flush(reply_tx, reporters_deadline), deadline) {
        Ok(()) => {}
        Err(crossbeam_channel::SendTimeoutError::Timeout(_)) => {
            return Err(FlushError::TimedOut(None));
        }
        Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => {
            return Err(FlushError::NotRunning);
        }
    }
    let outcome = match reply_rx.recv_deadline(deadline) {
        Ok(FlushOutcome::Delivered) => Ok(()),
        Ok(FlushOutcome::TimedOut(u)) => Err(FlushError::TimedOut(Some(u))),
        Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(FlushError::TimedOut(None)),
        Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(FlushError::NotRunning),
    };
    // The segments cut so far are with the SkyWalking reporter: wait until they are posted.
    #[cfg(feature = "skywalking")]
    if outcome.is_ok()
        && skywalking.is_some_and(|ctl| !crate::skywalking::Handle::flush(&ctl, deadline))
    {
        return Err(FlushError::TimedOut(None));
    }
    outcome
}

/// Spans dropped since `init` because a thread's hand-over buffer was full (the aggregator
/// fell behind).
/// Drops are also logged once, and reported in the console table and at shutdown.
pub fn dropped_spans() -> u64 {
    collector::DROPPED.load(Ordering::Relaxed)
}

fn shutdown() {
    span::flush_thread();
    let Some(running) = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    ENABLED.store(false, Ordering::Release);
    running.stopping.store(true, Ordering::Release);
    #[cfg(feature = "skywalking")]
    crate::segment::disable();
    let deadline = Instant::now() + running.shutdown_timeout;
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
    let replied = running
        .tx
        .send_deadline(
            Msg::Shutdown(reply_tx, deadline - Duration::from_millis(50)),
            deadline,
        )
        .is_ok()
        && reply_rx.recv_deadline(deadline).is_ok();
    collector::uninstall();
    drop(running.tx);
    if replied {
        for t in running.threads {
            let _ = t.join();
        }
    } else {
        log::warn!(
            "stardust: shutdown did not finish within {:?} (a reporter was still busy, e.g. with a call started before the shutdown, which only the request timeout bounds); what it had not delivered is lost; background threads left to end on their own",
            running.shutdown_timeout
        );
    }
    // The assembler handed its last segments over in the aggregator's shutdown; the reporter
    // posts them until the same deadline.
    #[cfg(feature = "skywalking")]
    if let Some(sw) = running.skywalking {
        sw.shutdown(deadline);
    }
    let dropped = collector::DROPPED.load(Ordering::Relaxed);
    if dropped > 0 {
        log::warn!("stardust: {dropped} spans were dropped because the aggregator fell behind");
    }
}
