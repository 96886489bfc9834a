//! Starting and stopping the runtime: `init`, `Guard`, `flush`.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::clock;
use crate::collect::aggregator::{Aggregator, Identity, Tap};
use crate::config::Config;
use crate::delivery::FlushOutcome;
use crate::error::{FlushError, InitError};
use crate::propagation::seam;
use crate::report::console::ConsoleReporter;
use crate::report::events;
use crate::report::sink::{self, Sink, UserReporter};
use crate::report::stardust::{StardustOptions, StardustSink};
use crate::report::uploader::Uploader;
use crate::settings::{SETTINGS, Snapshot};
use crate::span::local;
use crate::span::mailbox::{self, BATCH_CAPACITY, Msg};
use crate::state;
use crate::util::host;

struct Running {
    tx: Sender<Msg>,
    threads: Vec<JoinHandle<()>>,
    shutdown_timeout: Duration,
    /// Tells the uploader that shutdown began.
    stopping: Arc<AtomicBool>,
    #[cfg(feature = "skywalking")]
    skywalking: Option<crate::report::skywalking::Handle>,
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
    /// Cuts the current period now and waits (bounded) until it is delivered; see
    /// [`flush`](crate::flush).
    pub fn flush(&self) -> Result<(), FlushError> {
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
    config.validate().map_err(InitError::InvalidConfig)?;
    crate::util::diag::set_stderr_fallback(config.stderr_diagnostics);
    state::set_exception_spans(config.exception_spans);
    clock::init();
    clock::set_server_offset_ms(0);
    SETTINGS.restore(Snapshot {
        max_samples: config.max_samples,
        max_errors: config.max_errors,
        timeout_ms: config.slow_threshold.as_millis().min(i32::MAX as u128) as i32,
        max_tag_length: config.max_tag_length,
    });
    SETTINGS.set_period_secs(config.period.as_secs().clamp(1, 3600) as u32);
    SETTINGS.set_excludes(config.excludes.clone());
    mailbox::reset_dropped();

    let application = config.application.as_ref();
    let identity = Identity {
        app_id: config.app_id.clone().unwrap_or_else(host::process_name),
        app_name: config
            .app_name
            .clone()
            .or_else(|| application.map(|a| a.name.clone())),
        client_id: format!("{}@{}", host::primary_ipv4(), std::process::id()),
        version: application_version(&config),
    };

    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    #[cfg_attr(not(feature = "skywalking"), allow(unused_mut))]
    let mut taps: Vec<Box<dyn Tap>> = Vec::new();
    // The seam holds one propagator beside the built-in headers.
    #[cfg_attr(not(feature = "skywalking"), allow(unused_mut))]
    let mut propagator: Option<std::sync::Arc<dyn seam::Propagator>> = None;
    #[cfg(feature = "skywalking")]
    let skywalking = if config.skywalking.backends.is_empty() {
        None
    } else {
        let started = crate::report::skywalking::start(
            &config.skywalking,
            &identity.app_id,
            config.request_timeout,
        )?;
        taps.push(started.tap);
        propagator = Some(started.propagator);
        Some(started.handle)
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
        Some(pem) => Some(crate::report::stardust::parse_ca_pem(pem).map_err(|e| {
            InitError::InvalidConfig(crate::error::ConfigError::new("Config::tls_ca_pem", e))
        })?),
        None => None,
    };
    let (waker, wake_rx) = sink::waker();
    // The uploader's inbox, and the flag set when the shutdown begins: a reporter's background
    // work gives the uploader back when either says something is waiting.
    let (up_tx, up_rx) = crossbeam_channel::bounded(1024);
    let stopping = Arc::new(AtomicBool::new(false));
    // The Stardust server's event queue, with the start-up event in it.
    let mut event_queue = None;
    if !config.servers.is_empty() {
        let (event_tx, event_rx) = events::queue();
        event_queue = Some(event_tx);
        sinks.push(Box::new(StardustSink::new(StardustOptions {
            tls_roots,
            servers: config.servers.clone(),
            app_id: identity.app_id.clone(),
            app_name: identity.app_name.clone(),
            secret: config.secret.clone(),
            version: identity.version.clone(),
            compile_ms: config.application.as_ref().map(|a| a.build_unix_ms),
            process_metrics: config.process_metrics,
            client_id: identity.client_id.clone(),
            request_timeout: config.request_timeout,
            commands: config.commands.clone(),
            command_timeout: config.command_timeout,
            waker: waker.clone(),
            events: event_rx,
            urgent: sink::Urgent::new(up_rx.clone(), stopping.clone()),
        })));
    }
    let Config {
        reporters,
        handoff_capacity,
        shutdown_timeout,
        first_report_delay,
        ..
    } = config;
    sinks.extend(
        reporters
            .into_iter()
            .map(|r| Box::new(UserReporter(r)) as Box<dyn Sink>),
    );

    // Taps that assemble span trees (SkyWalking) want every span, with its attributes.
    let generation = state::begin(
        handoff_capacity.div_ceil(BATCH_CAPACITY) * BATCH_CAPACITY,
        !taps.is_empty(),
    );
    let (tx, rx) = crossbeam_channel::bounded::<Msg>(16);
    let uploader = Uploader {
        rx: up_rx,
        sinks,
        shutdown_timeout,
        stopping: stopping.clone(),
        wake: wake_rx,
    };
    let aggregator = Aggregator::new(rx, up_tx, identity, first_report_delay, taps);

    let up_thread = std::thread::Builder::new()
        .name("stardust-uploader".into())
        .spawn(move || {
            local::suppress_this_thread();
            uploader.run()
        })
        .map_err(InitError::Spawn)?;
    let agg_thread = std::thread::Builder::new()
        .name("stardust-aggregator".into())
        .spawn(move || {
            local::suppress_this_thread();
            aggregator.run()
        })
        .map_err(InitError::Spawn)?;

    mailbox::install(generation, tx.clone());
    if let Some(event_tx) = event_queue {
        events::install(event_tx, waker);
    }
    if let Some(p) = propagator {
        seam::install(p);
    }
    // The first tick ratio, measured over the time `init` took (no busy wait: see `clock`).
    clock::recalibrate();
    state::enable();
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

/// What is sent when the application's version is not known: the lowest valid
/// `System.Version`, so it never wins the server's "newer version" comparison. A version must
/// be sent: the server leaves `excludes` out of its report replies without one.
const UNKNOWN_VERSION: &str = "0.0";

/// The version sent to the server: `StarVersion`/[`Config::version`], else the crate's
/// ([`config!`](crate::config!)), as a .NET `System.Version`; one log line when it had to be
/// changed; [`UNKNOWN_VERSION`] when none is known or none has a number.
fn application_version(config: &Config) -> Option<String> {
    let Some(given) = config
        .version
        .clone()
        .or_else(|| config.application.as_ref().map(|a| a.version.clone()))
    else {
        if !config.servers.is_empty() {
            log::info!(
                "stardust: the application's version is not known; `{UNKNOWN_VERSION}` is sent (start with init!() or config!(), or set StarVersion)"
            );
        }
        return Some(UNKNOWN_VERSION.to_owned());
    };
    match crate::config::normalize_version(&given) {
        Some(v) => {
            if v != given {
                log::info!(
                    "stardust: version `{given}` is sent as `{v}` (the server needs a .NET System.Version: 2 to 4 numbers)"
                );
            }
            Some(v)
        }
        None => {
            log::warn!(
                "stardust: version `{given}` has no number the server could read; `{UNKNOWN_VERSION}` is sent"
            );
            Some(UNKNOWN_VERSION.to_owned())
        }
    }
}

/// Cuts the current period now: every span finished before this call (on any thread whose
/// outermost span has closed, and on this thread) is reported, together with every report
/// still queued for retry, oldest first. Failed sends are retried with a short backoff (after
/// a new login on code 401, and on the next server of the list) until the deadline: the
/// [shutdown timeout](Config::shutdown_timeout), at least 1 s.
///
/// Returns only when that is done or the deadline passed, and says which: `Ok` when every
/// reporter delivered the cut and the queue before it. With the `skywalking` feature it also
/// waits until the SkyWalking reporter has posted the segments cut so far. Command replies and
/// [events](crate::event) waiting to be posted go out too, in the time left (they do not
/// change the result).
///
/// # Errors
/// [`FlushError::NotRunning`] when no runtime runs; [`FlushError::TimedOut`] when the deadline
/// passed first. What was not delivered then stays queued and is retried as usual (a log line
/// and the error say how many reports and spans).
pub fn flush() -> Result<(), FlushError> {
    local::flush_thread();
    let running = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
    let Some(r) = running.as_ref() else {
        return Err(FlushError::NotRunning);
    };
    let (tx, timeout) = (r.tx.clone(), r.shutdown_timeout);
    #[cfg(feature = "skywalking")]
    let skywalking = r.skywalking.as_ref().map(|h| h.control());
    drop(running);
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
        && skywalking.is_some_and(|ctl| !crate::report::skywalking::Handle::flush(&ctl, deadline))
    {
        return Err(FlushError::TimedOut(None));
    }
    outcome
}

/// Reports the last period when the process is asked to stop — SIGTERM (how service managers
/// and orchestrators stop a service) or SIGINT (Ctrl-C) — and then exits with the
/// conventional status, 128 + the signal's number. Without it those signals end the process
/// at once and the last period is lost. Feature `signals`, Unix only.
///
/// Call it once after [`init`](fn@crate::init); the [`Guard`] stays in `main` as usual, so a
/// normal return still reports through its drop. The report is bounded by the shutdown
/// timeout. A program that handles these signals itself should not call this, and instead
/// drop its `Guard` (or call [`flush`](crate::flush)) in its own handler before exiting.
///
/// # Errors
/// When the signal handlers cannot be installed or the waiting thread cannot start.
#[cfg(all(feature = "signals", unix))]
pub fn exit_on_signals() -> std::io::Result<()> {
    use signal_hook::consts::signal::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("stardust-signals".into())
        .spawn(move || {
            local::suppress_this_thread();
            if let Some(signal) = signals.forever().next() {
                log::info!(
                    "stardust: signal {signal} received: reporting the last period, then exiting"
                );
                shutdown();
                std::process::exit(128 + signal);
            }
        })?;
    Ok(())
}

/// True while a runtime runs (a [`Guard`] is alive).
pub(crate) fn is_running() -> bool {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// Spans lost uncounted since `init` because a thread's hand-over buffer was full (the
/// aggregator fell behind).
///
/// Spans are counted on the thread that closes them, so this stays 0 at any span rate; only a
/// span whose name has no counters of its own travels to the aggregator to be counted: names
/// opened at run time past the first 10,000 distinct ones of the process (or past 65,536
/// callsites). Drops are also logged once, and reported in the console table and at shutdown.
/// Sample records lost the same way are counted by [`dropped_samples`].
pub fn dropped_spans() -> u64 {
    mailbox::dropped()
}

/// Span records dropped since `init` because a thread's hand-over buffer was full: sample
/// candidates (and, with SkyWalking, spans on their way to a segment). Their spans were
/// counted all the same; a period may miss some samples. Logged once when it starts.
pub fn dropped_samples() -> u64 {
    mailbox::dropped_samples()
}

fn shutdown() {
    local::flush_thread();
    let Some(running) = RUNNING.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    state::disable();
    events::uninstall();
    running.stopping.store(true, Ordering::Release);
    seam::uninstall();
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
    mailbox::uninstall();
    drop(running.tx);
    if replied {
        for t in running.threads {
            let _ = t.join();
        }
    } else {
        crate::util::diag::report(
            log::Level::Warn,
            "shutdown-timeout",
            &format!(
                "shutdown did not finish within {:?}: a reporter was still busy (e.g. with a call started before the shutdown, which only the request timeout bounds); what it had not delivered is lost; background threads left to end on their own",
                running.shutdown_timeout
            ),
            "keep Config::request_timeout below Config::shutdown_timeout",
        );
    }
    // The assembler handed its last segments over in the aggregator's shutdown; the reporter
    // posts them until the same deadline.
    #[cfg(feature = "skywalking")]
    if let Some(sw) = running.skywalking {
        sw.shutdown(deadline);
    }
    let dropped = mailbox::dropped();
    if dropped > 0 {
        crate::util::diag::report(
            log::Level::Warn,
            "dropped-at-shutdown",
            &format!("{dropped} spans were dropped because the aggregator fell behind"),
            "a larger Config::handoff_capacity absorbs longer bursts",
        );
    }
    let records = mailbox::dropped_samples();
    if records > 0 {
        log::warn!(
            "stardust: {records} span records (sample candidates) were dropped because the aggregator fell behind; their spans were counted"
        );
    }
}
