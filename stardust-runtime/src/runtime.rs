//! Starting and stopping the runtime: `init`, `Guard`, `flush`.

use std::fmt;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;

use crate::clock;
use crate::collect::aggregator::{Aggregator, Identity, Tap};
use crate::config::Config;
use crate::error::{FlushError, InitError};
use crate::propagation::seam;
use crate::report::console::ConsoleReporter;
use crate::report::sink::{Sink, UserReporter};
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
    #[cfg(feature = "skywalking")]
    skywalking: Option<crate::report::skywalking::Handle>,
}

static RUNNING: Mutex<Option<Running>> = Mutex::new(None);

/// Keeps the runtime running. Dropping it reports the last period and stops the background
/// threads, within the configured shutdown timeout (default 3 s) even when a server hangs.
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
    /// Cuts the current period now and waits (bounded) until the reporters have handled it.
    /// See [`flush`](crate::flush).
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
    for s in &config.servers {
        if !(s.starts_with("http://") || s.starts_with("https://")) {
            return Err(InitError::InvalidConfig(format!(
                "server `{}` is not an http:// or https:// URL",
                crate::util::url::redact_url(s)
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
    mailbox::reset_dropped();

    let identity = Identity {
        app_id: config.app_id.clone().unwrap_or_else(host::process_name),
        app_name: config.app_name.clone(),
        client_id: format!("{}@{}", host::primary_ipv4(), std::process::id()),
        version: config
            .version
            .clone()
            .unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_owned()),
    };

    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    #[cfg_attr(not(feature = "skywalking"), allow(unused_mut))]
    let mut taps: Vec<Box<dyn Tap>> = Vec::new();
    #[cfg_attr(not(feature = "skywalking"), allow(unused_mut))]
    let mut propagators: Vec<std::sync::Arc<dyn seam::Propagator>> = Vec::new();
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
        propagators.push(started.propagator);
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
        Some(pem) => {
            Some(crate::report::stardust::parse_ca_pem(pem).map_err(InitError::InvalidConfig)?)
        }
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

    // Taps that assemble span trees (SkyWalking) want spans' structured attributes.
    let generation = state::begin(
        channel_capacity.saturating_mul(BATCH_CAPACITY),
        !taps.is_empty(),
        !taps.is_empty(),
    );
    let (tx, rx) = crossbeam_channel::bounded::<Msg>(16);
    let (up_tx, up_rx) = crossbeam_channel::bounded(1024);
    let uploader = Uploader {
        rx: up_rx,
        sinks,
        shutdown_timeout,
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
    for p in propagators {
        seam::install(p);
    }
    // The first tick ratio, measured over the time `init` took (no busy wait: see `clock`).
    clock::recalibrate();
    state::enable();
    *running = Some(Running {
        tx,
        threads: vec![agg_thread, up_thread],
        shutdown_timeout,
        #[cfg(feature = "skywalking")]
        skywalking,
    });
    Ok(Guard { _private: () })
}

/// Cuts the current period now: every span finished before this call (on any thread whose
/// outermost span has closed, and on this thread) is reported. Waits until the reporters have
/// handled it, at most the shutdown timeout (at least 1 s).
///
/// # Errors
/// [`FlushError::NotRunning`] when no runtime runs, [`FlushError::TimedOut`] when the wait
/// ended before every reporter had handled the cut.
pub fn flush() -> Result<(), FlushError> {
    local::flush_thread();
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
    let (reply_tx, reply_rx) = crossbeam_channel::bounded(1);
    if tx.send_deadline(Msg::Flush(reply_tx), deadline).is_err() {
        return Err(FlushError::TimedOut);
    }
    let flushed = reply_rx.recv_deadline(deadline).is_ok();
    // The segments cut so far are with the SkyWalking reporter: wait until they are posted.
    #[cfg(feature = "skywalking")]
    let flushed = flushed
        && skywalking.is_none_or(|ctl| crate::report::skywalking::Handle::flush(&ctl, deadline));
    if flushed {
        Ok(())
    } else {
        Err(FlushError::TimedOut)
    }
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
        log::warn!(
            "stardust: shutdown did not finish within {:?}; background threads left to end on their own",
            running.shutdown_timeout
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
        log::warn!("stardust: {dropped} spans were dropped because the aggregator fell behind");
    }
    let records = mailbox::dropped_samples();
    if records > 0 {
        log::warn!(
            "stardust: {records} span records (sample candidates) were dropped because the aggregator fell behind; their spans were counted"
        );
    }
}
